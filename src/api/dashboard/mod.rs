//! The dashboard: `GET /` and its two assets, embedded in the binary (no CDN, no files beside
//! it, nothing built with Node). The page is static and holds no data: it signs in with an API
//! token kept in the tab's session storage and calls the API like any client (its auth, rate
//! limits and audit log). Every response carries a strict Content-Security-Policy (scripts and
//! styles from this origin only, no inline script, no framing).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// The page's policy: nothing but this origin's script, style and API; no framing, no forms
/// posted elsewhere, no base URL tricks.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    page(INDEX, "text/html; charset=utf-8")
}

pub(super) async fn script() -> Response {
    page(SCRIPT, "text/javascript; charset=utf-8")
}

pub(super) async fn style() -> Response {
    page(STYLE, "text/css; charset=utf-8")
}

/// The headers every response of the server gets (the API's JSON too): the CSP, no framing,
/// no content sniffing.
pub(super) async fn secure_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}
