//! API errors in the spec's shape, `{"success": false, "error", "backup_name", "timestamp"}`,
//! with honest statuses. A 500 says nothing of its cause: the cause goes to the log only.

use crate::error::{Error, ErrorKind};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub backup_name: Option<String>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            backup_name: None,
            retry_after: None,
        }
    }

    pub fn with_name(mut self, name: Option<&str>) -> Self {
        self.backup_name = name.map(str::to_owned);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// Maps an operation's error to a status; a failure's cause is logged, not sent.
    pub fn from_ops(e: Error, name: Option<&str>) -> Self {
        let status = match e.kind() {
            ErrorKind::Usage => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict | ErrorKind::Busy => StatusCode::CONFLICT,
            ErrorKind::Failed if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match status {
            StatusCode::INTERNAL_SERVER_ERROR => {
                tracing::error!(backup = ?name, error = %e, "API operation failed");
                "the operation failed; the cause is in the server log".to_owned()
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                tracing::error!(backup = ?name, error = %e, "backup directory unavailable");
                "the backup directory is not writable or its disk is full".to_owned()
            }
            StatusCode::CONFLICT => match e {
                Error::Storage(_) => {
                    "another operation is running on this repository; try again when it has finished"
                        .to_owned()
                }
                e => e.to_string(),
            },
            _ => e.to_string(),
        };
        Self::new(status, message).with_name(name)
    }

    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the operation failed; the cause is in the server log",
        )
    }
}

pub fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "success": false,
            "error": self.message,
            "backup_name": self.backup_name,
            "timestamp": now_text(),
        });
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
