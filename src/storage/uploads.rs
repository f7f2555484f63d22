//! Incomplete multipart uploads on S3-compatible storage: listed (ListMultipartUploads) and
//! aborted (AbortMultipartUpload).
//!
//! A writer that is dropped uncommitted aborts its own upload. An upload whose process was
//! killed, or whose server went away in the middle of it, stays open on the server — invisible
//! to every listing of objects, and billed — until someone aborts it. OpenDAL 0.59 does not make
//! these two calls, so they are made here, signed with the SigV4 signer OpenDAL itself uses
//! (reqsign) and the same credentials.

use super::s3::S3Settings;
use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqsign_aws_v4::{
    Credential, DefaultCredentialProvider, RequestSigner, StaticCredentialProvider,
};
use reqsign_core::{Context, OsEnv, Signer};
use serde::Deserialize;
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// What SigV4 leaves unencoded in a query value or a path segment.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Debug, Error)]
pub enum UploadError {
    #[error("the server does not implement {0}")]
    Unsupported(&'static str),
    #[error("{call} answered {status}: {code} {message}")]
    Refused {
        call: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{call} failed: {0}", call = .1)]
    Transport(String, &'static str),
    #[error("cannot sign {call}: {0}", call = .1)]
    Sign(String, &'static str),
    #[error("cannot read the answer to {call}: {0}", call = .1)]
    Parse(String, &'static str),
}

/// An upload begun and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    /// The key, relative to the repository's prefix.
    pub key: String,
    pub upload_id: String,
    /// When the server says it began (`None`: the server did not say, or said it unreadably).
    pub initiated: Option<SystemTime>,
}

impl OpenUpload {
    /// Whether the upload began more than `grace` before `now` (an upload of unknown age is
    /// never stale: it may be one in progress).
    pub fn is_stale(&self, grace: Duration, now: SystemTime) -> bool {
        self.initiated
            .is_some_and(|t| now.duration_since(t).is_ok_and(|age| age > grace))
    }
}

/// The two calls, for one bucket prefix.
pub struct Uploads {
    client: reqwest::Client,
    signer: Signer<Credential>,
    /// `https://endpoint/bucket` (path style) or `https://bucket.endpoint`.
    bucket_url: String,
    /// The repository's prefix with a trailing `/`, or empty.
    prefix: String,
}

impl Uploads {
    pub fn new(settings: &S3Settings, bucket: &str, prefix: &str) -> Result<Self, String> {
        let region = settings.region.as_deref().unwrap_or("us-east-1");
        let path_style = settings.path_style.unwrap_or(settings.endpoint.is_some());
        let bucket_url = bucket_url(settings.endpoint.as_deref(), region, bucket, path_style);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot set up an HTTP client: {e}"))?;
        let ctx = Context::new()
            .with_file_read(reqsign_file_read_tokio::TokioFileRead)
            .with_env(OsEnv)
            .with_http_send(Transport(client.clone()));
        let signer = match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(id), Some(secret)) => {
                let mut provider = StaticCredentialProvider::new(id, secret.expose());
                if let Some(token) = &settings.session_token {
                    provider = provider.with_session_token(token.expose());
                }
                Signer::new(ctx, provider, RequestSigner::new("s3", region))
            }
            _ => Signer::new(
                ctx,
                DefaultCredentialProvider::new(),
                RequestSigner::new("s3", region),
            ),
        };
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Ok(Self {
            client,
            signer,
            bucket_url,
            prefix,
        })
    }

    /// Every open upload under the prefix (all pages).
    pub async fn list(&self) -> Result<Vec<OpenUpload>, UploadError> {
        const CALL: &str = "ListMultipartUploads";
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = format!("uploads=&prefix={}", enc(&self.prefix));
            if let Some((key, id)) = &markers {
                query.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    enc(key),
                    enc(id)
                ));
            }
            let url = format!("{}/?{query}", self.bucket_url);
            let body = self.send(CALL, http::Method::GET, &url).await?;
            let page: ListResult = quick_xml::de::from_str(&body)
                .map_err(|e| UploadError::Parse(e.to_string(), CALL))?;
            for u in page.uploads {
                // The server filters by prefix already; a key outside it is never ours.
                let Some(key) = u.key.strip_prefix(&self.prefix) else {
                    continue;
                };
                out.push(OpenUpload {
                    key: key.to_owned(),
                    upload_id: u.upload_id,
                    initiated: u
                        .initiated
                        .as_deref()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| SystemTime::from(t.with_timezone(&Utc))),
                });
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(k), Some(id)) if markers.as_ref() != Some(&(k.clone(), id.clone())) => {
                    markers = Some((k, id));
                }
                _ => return Ok(out),
            }
        }
    }

    /// Aborts one upload; one that is already gone counts as aborted.
    pub async fn abort(&self, upload: &OpenUpload) -> Result<(), UploadError> {
        const CALL: &str = "AbortMultipartUpload";
        let path: Vec<String> = format!("{}{}", self.prefix, upload.key)
            .split('/')
            .map(enc)
            .collect();
        let url = format!(
            "{}/{}?uploadId={}",
            self.bucket_url,
            path.join("/"),
            enc(&upload.upload_id)
        );
        match self.send(CALL, http::Method::DELETE, &url).await {
            Err(UploadError::Refused { code, .. }) if code == "NoSuchUpload" => Ok(()),
            other => other.map(drop),
        }
    }

    /// Signs and sends a request without a body; the answer's body on success.
    async fn send(
        &self,
        call: &'static str,
        method: http::Method,
        url: &str,
    ) -> Result<String, UploadError> {
        let req = http::Request::builder()
            .method(method)
            .uri(url)
            .body(())
            .map_err(|e| UploadError::Sign(e.to_string(), call))?;
        let (mut parts, ()) = req.into_parts();
        self.signer
            .sign(&mut parts, None)
            .await
            .map_err(|e| UploadError::Sign(e.to_string(), call))?;
        // reqwest sets the host itself (as OpenDAL does).
        parts.headers.remove(http::header::HOST);
        let req = reqwest::Request::try_from(http::Request::from_parts(parts, Vec::<u8>::new()))
            .map_err(|e| UploadError::Sign(e.to_string(), call))?;
        let resp = self
            .client
            .execute(req)
            .await
            .map_err(|e| UploadError::Transport(e.to_string(), call))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| UploadError::Transport(e.to_string(), call))?;
        if status.is_success() {
            return Ok(body);
        }
        let err: ErrorXml = quick_xml::de::from_str(&body).unwrap_or_default();
        if status == http::StatusCode::NOT_IMPLEMENTED || err.code == "NotImplemented" {
            return Err(UploadError::Unsupported(call));
        }
        Err(UploadError::Refused {
            call,
            status: status.as_u16(),
            code: err.code,
            message: err.message,
        })
    }
}

/// The bucket's base URL: `endpoint/bucket` in path style, `scheme://bucket.host` else; AWS's
/// regional endpoint when none is set.
fn bucket_url(endpoint: Option<&str>, region: &str, bucket: &str, path_style: bool) -> String {
    let endpoint = endpoint.map_or_else(
        || format!("https://s3.{region}.amazonaws.com"),
        |e| {
            let e = e.trim_end_matches('/');
            if e.contains("://") {
                e.to_owned()
            } else {
                format!("https://{e}")
            }
        },
    );
    if path_style {
        return format!("{endpoint}/{bucket}");
    }
    match endpoint.split_once("://") {
        Some((scheme, host)) => format!("{scheme}://{bucket}.{host}"),
        None => format!("https://{bucket}.{endpoint}"),
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// reqsign's HTTP client (for credentials from instance metadata or STS), on reqwest.
#[derive(Debug, Clone)]
struct Transport(reqwest::Client);

impl reqsign_core::HttpSend for Transport {
    async fn http_send(
        &self,
        req: http::Request<bytes::Bytes>,
    ) -> reqsign_core::Result<http::Response<bytes::Bytes>> {
        let fail = |e: reqwest::Error| {
            reqsign_core::Error::unexpected("an HTTP request for credentials failed").with_source(e)
        };
        let req = reqwest::Request::try_from(req).map_err(fail)?;
        let resp = self.0.execute(req).await.map_err(fail)?;
        let mut out = http::Response::builder().status(resp.status());
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        let body = resp.bytes().await.map_err(fail)?;
        out.body(body).map_err(|e| {
            reqsign_core::Error::unexpected("an HTTP answer for credentials was malformed")
                .with_source(e)
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListResult {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<UploadXml>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadXml {
    key: String,
    upload_id: String,
    #[serde(default)]
    initiated: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ErrorXml {
    code: String,
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls() {
        assert_eq!(
            bucket_url(Some("http://127.0.0.1:9000/"), "x", "b", true),
            "http://127.0.0.1:9000/b"
        );
        assert_eq!(
            bucket_url(None, "eu-west-1", "b", false),
            "https://b.s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            bucket_url(Some("minio.lan:9000"), "x", "b", false),
            "https://b.minio.lan:9000"
        );
    }

    #[test]
    fn a_listing_parses_and_only_old_uploads_are_stale() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker/><UploadIdMarker/>
  <NextKeyMarker>p/y.db</NextKeyMarker><NextUploadIdMarker>2</NextUploadIdMarker>
  <MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>p/x.sql.gz</Key><UploadId>1</UploadId><Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload>
  <Upload><Key>p/y.db</Key><UploadId>2</UploadId><Initiated>bad</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page: ListResult = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("2"));
        assert_eq!(page.uploads.len(), 2);
        let now = SystemTime::now();
        let old = OpenUpload {
            key: "x".into(),
            upload_id: "1".into(),
            initiated: Some(now - Duration::from_secs(25 * 3600)),
        };
        let young = OpenUpload {
            initiated: Some(now - Duration::from_secs(3600)),
            ..old.clone()
        };
        let unknown = OpenUpload {
            initiated: None,
            ..old.clone()
        };
        let day = Duration::from_secs(24 * 3600);
        assert!(old.is_stale(day, now));
        assert!(!young.is_stale(day, now));
        assert!(!unknown.is_stale(day, now));
        let empty: ListResult = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(empty.uploads.is_empty());
        let err: ErrorXml = quick_xml::de::from_str(
            "<Error><Code>NotImplemented</Code><Message>no</Message></Error>",
        )
        .unwrap();
        assert_eq!(err.code, "NotImplemented");
    }
}
