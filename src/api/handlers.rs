//! The route handlers: each rate-limits, runs the `ops` call on a blocking thread, and writes
//! its audit line.

use super::*;
use crate::catalog::ListResponse;
use crate::naming::BackupName;
use crate::ops::{BackupRequest, VerifyTarget};
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use error::{ApiError, now_text};
use limits::Endpoint;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// `?database=NAME`: the configured database a route works on (default: the unnamed one).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DbQuery {
    pub(super) database: Option<String>,
}

pub(super) type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// The query, or 400 naming what was wrong with it.
pub(super) fn query<T>(q: QueryResult<T>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    backup_name: Option<String>,
    compress: Option<bool>,
}

/// Parses an optional JSON body: 415 for another content type, 413 past the limit, 400 for
/// malformed JSON, wrong types or unknown fields.
pub(super) async fn json_body<T: Default + for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: Body,
    timeout: Duration,
) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {BODY_LIMIT} bytes"),
        )
    };
    // A declared length over the limit is refused before any of the body is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(too_large());
    }
    // A client that dribbles its body (or stops sending) does not hold the handler forever.
    let bytes: Bytes = tokio::time::timeout(timeout, axum::body::to_bytes(body, BODY_LIMIT))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s (DBKEEP_BODY_TIMEOUT)",
                    timeout.as_secs()
                ),
            )
        })?
        .map_err(|_| too_large())?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as Content-Type: application/json",
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

pub(super) async fn create(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    q: QueryResult<DbQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let st = state.clone();
    let parsed: Result<CreateBody, ApiError> = json_body(&headers, body, state.body_timeout).await;
    let name = parsed.as_ref().ok().and_then(|b| b.backup_name.clone());
    audited(&state, &caller, "create", name.as_deref(), async {
        let db = st.db(query(q)?.database.as_deref())?;
        let body = parsed?;
        if let Some(n) = &body.backup_name {
            BackupName::parse(n)
                .map_err(|e| ApiError::bad_request(e.to_string()).with_name(Some(n)))?;
        }
        limit(&st, Endpoint::Create, &caller)?;
        let req = BackupRequest {
            name: body.backup_name.clone(),
            series: None,
            compress: body.compress,
            replace: false,
            physical: false,
        };
        // BACKUP_DRILL: the drill runs once the backup (and its lock) is done; its outcome is
        // part of the answer, the backup stands either way.
        let out = background(&st, &db, move |ops| {
            ops.backup(&req).map(|out| {
                let drill = ops.drill_after_backup(&out.manifest);
                (out, drill)
            })
        })
        .await?;
        let (out, drill) = out.map_err(|e| ApiError::from_ops(e, body.backup_name.as_deref()))?;
        db.invalidate();
        let deleted = out
            .retention
            .iter()
            .filter(|d| d.action == crate::retention::Action::Delete)
            .count()
            .saturating_sub(out.retention_errors.len());
        st.metrics.retention_deleted(deleted as u64);
        let drill = match drill {
            Ok(None) => serde_json::Value::Null,
            Ok(Some(r)) => match r.result {
                Ok(checks) => json!({"outcome": "passed", "checks": checks}),
                Err(e) => json!({"outcome": "failed", "error": e.to_string()}),
            },
            Err(e) => json!({"outcome": "failed", "error": e.to_string()}),
        };
        let m = &out.manifest;
        Ok(Json(json!({
            "success": true,
            "backup_name": m.backup_name,
            "file_path": m.file_path,
            "file_size": m.file_size,
            "duration": m.duration,
            "timestamp": m.timestamp_text(),
            "sha256": m.sha256,
            "copies": m.copies,
            "copy_errors": out.copy_errors,
            "drill": drill,
        }))
        .into_response())
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Include every backup's per-table row counts (left out by default: a database of many
    /// tables would make every list response and the cache that large).
    row_counts: Option<bool>,
    database: Option<String>,
}

pub(super) async fn list(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    q: QueryResult<ListQuery>,
) -> Response {
    let st = state.clone();
    audited(&state, &caller, "list", None, async {
        limit(&st, Endpoint::List, &caller)?;
        let q = query(q)?;
        let db = st.db(q.database.as_deref())?;
        if q.row_counts == Some(true) {
            // The catalog leaves the counts out: each manifest is read again for them.
            let (cat, full) = blocking(&st, &db, {
                let db2 = db.clone();
                move |ops| {
                    let cat = db2.catalog()?;
                    let full: Vec<crate::catalog::Manifest> = cat
                        .backups
                        .iter()
                        .map(|m| crate::catalog::Manifest {
                            row_counts: crate::catalog::read_row_counts(ops.storage(), m)
                                .ok()
                                .flatten(),
                            ..m.clone()
                        })
                        .collect();
                    Ok::<_, crate::error::Error>((cat, full))
                }
            })
            .await?
            .map_err(|e| ApiError::from_ops(e, None))?;
            let stats = db.ops.statistics(&cat);
            return Ok(Json(json!(ListResponse {
                backups: &full,
                statistics: stats,
            }))
            .into_response());
        }
        let body = match db.cached_list() {
            Some(body) => body,
            None => {
                let db2 = db.clone();
                blocking(&st, &db, move |ops| {
                    let cat = db2.catalog()?;
                    // One request serialises; the others wait and take its bytes.
                    let _one_writer = db2.rebuild.lock();
                    if let Some(body) = db2.cached_list() {
                        return Ok(body);
                    }
                    let stats = ops.statistics(&cat);
                    // The catalog holds no row counts ([`crate::catalog::Catalog::load`]).
                    let body = Bytes::from(
                        serde_json::to_vec(&ListResponse {
                            backups: &cat.backups,
                            statistics: stats,
                        })
                        .map_err(|e| crate::error::Error::Io {
                            io_context: "encode the list".into(),
                            source: e.into(),
                        })?,
                    );
                    db2.store_list(&cat, &body);
                    Ok::<_, crate::error::Error>(body)
                })
                .await?
                .map_err(|e| ApiError::from_ops(e, None))?
            }
        };
        Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
    })
    .await
}

pub(super) async fn statistics(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    q: QueryResult<DbQuery>,
) -> Response {
    let st = state.clone();
    audited(&state, &caller, "statistics", None, async {
        limit(&st, Endpoint::Statistics, &caller)?;
        let db = st.db(query(q)?.database.as_deref())?;
        let db2 = db.clone();
        let stats = blocking(&st, &db, move |ops| {
            db2.catalog().map(|c| ops.statistics(&c))
        })
        .await?
        .map_err(|e| ApiError::from_ops(e, None))?;
        Ok(Json(stats).into_response())
    })
    .await
}

pub(super) async fn restore(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
    q: QueryResult<DbQuery>,
) -> Response {
    let st = state.clone();
    with_name(
        &state,
        &caller,
        "restore",
        Endpoint::Restore,
        p,
        |name| async move {
            let db = st.db(query(q)?.database.as_deref())?;
            let n = name.clone();
            let out = background(&st, &db, move |ops| ops.restore(&n, None))
                .await?
                .map_err(|e| ApiError::from_ops(e, Some(&name)))?;
            Ok(Json(json!({
                "success": true,
                "backup_name": name,
                "database": db.name,
                "message": "the database was restored from the backup",
                "duration": out.duration,
                "backup_timestamp": out.manifest.timestamp_text(),
                "timestamp": now_text(),
            }))
            .into_response())
        },
    )
    .await
}

pub(super) async fn delete_backup(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
    q: QueryResult<DbQuery>,
) -> Response {
    let st = state.clone();
    with_name(
        &state,
        &caller,
        "delete",
        Endpoint::Delete,
        p,
        |name| async move {
            let db = st.db(query(q)?.database.as_deref())?;
            let n = name.clone();
            blocking(&st, &db, move |ops| ops.delete(&n))
                .await?
                .map_err(|e| ApiError::from_ops(e, Some(&name)))?;
            db.invalidate();
            Ok(Json(json!({
                "success": true,
                "backup_name": name,
                "message": "the backup was deleted",
                "timestamp": now_text(),
            }))
            .into_response())
        },
    )
    .await
}

/// `POST /api/backup/pin/{name}` and `/unpin/{name}`: retention keeps a pinned backup.
pub(super) async fn pin(
    state: State<Shared>,
    caller: Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
    q: QueryResult<DbQuery>,
) -> Response {
    set_pin(state, caller, p, q, true).await
}

pub(super) async fn unpin(
    state: State<Shared>,
    caller: Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
    q: QueryResult<DbQuery>,
) -> Response {
    set_pin(state, caller, p, q, false).await
}

async fn set_pin(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
    q: QueryResult<DbQuery>,
    pinned: bool,
) -> Response {
    let st = state.clone();
    let action = if pinned { "pin" } else { "unpin" };
    with_name(
        &state,
        &caller,
        action,
        Endpoint::Pin,
        p,
        |name| async move {
            let db = st.db(query(q)?.database.as_deref())?;
            let n = name.clone();
            let m = blocking(&st, &db, move |ops| ops.pin(&n, pinned))
                .await?
                .map_err(|e| ApiError::from_ops(e, Some(&name)))?;
            db.invalidate();
            Ok(Json(json!({
                "success": true,
                "backup_name": name,
                "pinned": m.pinned,
                "timestamp": now_text(),
            }))
            .into_response())
        },
    )
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyQuery {
    restore: Option<bool>,
    database: Option<String>,
}

pub(super) async fn verify(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
    q: QueryResult<VerifyQuery>,
) -> Response {
    let st = state.clone();
    with_name(
        &state,
        &caller,
        "verify",
        Endpoint::Verify,
        p,
        |name| async move {
            let q = query(q)?;
            let db = st.db(q.database.as_deref())?;
            let drill = q.restore == Some(true);
            let n = name.clone();
            let reports = background(&st, &db, move |ops| {
                let target = VerifyTarget::Named(n);
                if drill {
                    ops.drill(&target)
                } else {
                    ops.verify(&target)
                }
            })
            .await?
            .map_err(|e| ApiError::from_ops(e, Some(&name)))?;
            let report = reports.into_iter().next();
            match report.map(|r| r.result) {
                Some(Ok(checks)) => Ok(Json(json!({
                    "success": true,
                    "backup_name": name,
                    "restore_drill": drill,
                    "checks": checks,
                    "timestamp": now_text(),
                }))
                .into_response()),
                Some(Err(e)) => Err(
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
                        .with_name(Some(&name)),
                ),
                None => {
                    Err(ApiError::new(StatusCode::NOT_FOUND, "no such backup")
                        .with_name(Some(&name)))
                }
            }
        },
    )
    .await
}

pub(super) async fn download(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
    q: QueryResult<DbQuery>,
) -> Response {
    let st = state.clone();
    with_name(
        &state,
        &caller,
        "download",
        Endpoint::Download,
        p,
        |name| async move {
            let db = st.db(query(q)?.database.as_deref())?;
            let db2 = db.clone();
            let n = name.clone();
            let (key, size, reader) = blocking(&st, &db, move |ops| {
                let cat = db2.catalog()?;
                let m = cat
                    .successful(&n)
                    .ok_or_else(|| crate::error::Error::NotFound {
                        name: n.clone(),
                        location: ops.storage().location(),
                    })?;
                let key = m.data_file.clone().unwrap_or_default();
                let reader = ops.storage().open(&key)?;
                Ok::<_, crate::error::Error>((key, m.file_size, reader))
            })
            .await?
            .map_err(|e| ApiError::from_ops(e, Some(&name)))?;
            // Stream the file from a blocking thread through a bounded channel.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
            tokio::task::spawn_blocking(move || {
                let mut reader = reader;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match std::io::Read::read(&mut reader, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if tx
                                .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                                .is_err()
                            {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e));
                            break;
                        }
                    }
                }
            });
            let stream = receiver_stream(rx);
            Ok((
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (header::CONTENT_LENGTH, size.to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{key}\""),
                    ),
                ],
                Body::from_stream(stream),
            )
                .into_response())
        },
    )
    .await
}

/// A `Stream` over an mpsc receiver.
pub(super) fn receiver_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub(super) async fn openapi_doc(Extension(_caller): Extension<Caller>) -> Response {
    Json(openapi::document()).into_response()
}
