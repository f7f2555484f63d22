//! `dbkeep serve`: the spec's REST API on axum, calling the same `ops` as the CLI.
//!
//! The middleware stack, outermost first (see [`router`]):
//! 1. every `/api` route passes [`authenticate`]: a bearer token, compared in constant time;
//!    failed attempts are rate-limited per client;
//! 2. each handler takes one request from its endpoint's per-client limit;
//! 3. the handler runs the operation on a blocking thread and writes one audit line.
//!
//! Long operations: list, statistics and healthz never wait for a backup or restore (they read
//! manifests without the lock). A create, restore or delete while another one holds the
//! repository gets 409 at once (the lock is tried, not awaited). An operation keeps running when
//! its client disconnects, so a backup completes and is listed (or fails and is recorded), never
//! half-done.

pub mod audit;
pub mod auth;
pub mod error;
pub mod limits;
pub mod openapi;

use crate::catalog::{Catalog, ListResponse};
use crate::config::Settings;
use crate::naming::BackupName;
use crate::ops::{BackupRequest, Ops, VerifyTarget};
use audit::{Audit, AuditEntry};
use auth::Tokens;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use error::{ApiError, now_text};
use limits::{Endpoint, Limits};
use serde::Deserialize;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;

/// Request bodies larger than this get 413.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(
        "no API token is configured: set DBKEEP_API_TOKEN or DBKEEP_API_TOKENS_FILE (or pass --no-auth on a loopback address)"
    )]
    NoTokens,
    #[error("--no-auth is only allowed on a loopback address, not {0}")]
    NoAuthNotLoopback(SocketAddr),
    #[error(transparent)]
    Tokens(#[from] auth::AuthError),
    #[error(transparent)]
    RateLimits(#[from] limits::RateLimitError),
    #[error("cannot open the audit log: {0}")]
    Audit(std::io::Error),
    #[error(transparent)]
    Repository(#[from] crate::storage::StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// What every handler shares.
pub struct AppState {
    ops: Arc<Ops>,
    tokens: Tokens,
    no_auth: bool,
    limits: Limits,
    audit: Audit,
    trusted_proxies: Vec<IpAddr>,
    health_max_age: Duration,
    body_timeout: Duration,
    running: Arc<AtomicUsize>,
    cache: Mutex<Option<CatalogCache>>,
    /// Held while the catalog is re-read, so concurrent misses wait for one read.
    rebuild: Mutex<()>,
}

/// The catalog and the list response made from it, valid while the backup directory's mtime is
/// unchanged (and, for the response, whose free-space figure ages, for [`LIST_TTL`]). A
/// repository without such a stamp (object storage: a LIST per check would cost what the cache
/// saves) is cached for [`CATALOG_TTL`], and every write of this server invalidates it.
struct CatalogCache {
    /// The backup directory's mtime when the catalog was read; `None` on object storage.
    stamp: Option<SystemTime>,
    read: Instant,
    catalog: Arc<Catalog>,
    list: Option<(Instant, Bytes)>,
}

impl CatalogCache {
    /// Whether this is still the repository as it is (its stamp now is `stamp`).
    fn fresh(&self, stamp: Option<SystemTime>) -> bool {
        match stamp {
            Some(_) => self.stamp == stamp,
            None => self.stamp.is_none() && self.read.elapsed() < CATALOG_TTL,
        }
    }
}

/// How long a catalog of object storage is served from the cache.
const CATALOG_TTL: Duration = Duration::from_secs(5);

/// A catalog read at least this long after the directory's last change saw that change: a later
/// change gives the directory a later mtime, even with a coarse file-system clock.
const MTIME_SLACK: Duration = Duration::from_millis(50);

const LIST_TTL: Duration = Duration::from_secs(5);

type Shared = Arc<AppState>;

impl AppState {
    /// Builds the state; the API never waits for the repository lock (409 instead).
    pub fn new(settings: &Settings, no_auth: bool) -> Result<Self, ServeError> {
        let mut ops_settings = settings.clone();
        ops_settings.lock_timeout = Duration::ZERO;
        Ok(Self {
            ops: Arc::new(Ops::new(ops_settings)?.without_signal_handlers()),
            tokens: Tokens::load(&settings.api)?,
            no_auth,
            limits: Limits::new(settings.api.rate_limits.as_deref())?,
            audit: Audit::open(settings.api.audit_log.as_deref()).map_err(ServeError::Audit)?,
            trusted_proxies: settings.api.trusted_proxies.clone(),
            health_max_age: settings.api.health_max_age,
            body_timeout: settings.api.body_timeout,
            running: Arc::new(AtomicUsize::new(0)),
            cache: Mutex::new(None),
            rebuild: Mutex::new(()),
        })
    }

    /// Operations still running on blocking threads.
    pub fn running(&self) -> Arc<AtomicUsize> {
        self.running.clone()
    }
}

/// Who is calling: set by [`authenticate`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub ip: IpAddr,
    pub token: Option<String>,
}

/// Every route: (method, path, summary). The router and the OpenAPI document are both built from
/// this table, and a test calls each route without a token.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("post", "/api/backup/create", "Create a backup"),
    (
        "get",
        "/api/backup/list",
        "List backups, newest first, with statistics",
    ),
    (
        "post",
        "/api/backup/restore/{name}",
        "Restore a backup into the database",
    ),
    ("delete", "/api/backup/delete/{name}", "Delete a backup"),
    ("get", "/api/backup/statistics", "Repository statistics"),
    (
        "get",
        "/api/backup/download/{name}",
        "Download the stored file of a backup",
    ),
    (
        "post",
        "/api/backup/verify/{name}",
        "Verify a stored backup (?restore=true: a restore drill into a throwaway target)",
    ),
    ("get", "/api/openapi.json", "This OpenAPI document"),
    (
        "get",
        "/healthz",
        "Liveness and the age of the last successful backup (no auth)",
    ),
];

/// The application: every `/api` route behind authentication.
pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/api/backup/create", post(create))
        .route("/api/backup/list", get(list))
        .route("/api/backup/restore/{name}", post(restore))
        .route("/api/backup/delete/{name}", delete(delete_backup))
        .route("/api/backup/statistics", get(statistics))
        .route("/api/backup/download/{name}", get(download))
        .route("/api/backup/verify/{name}", post(verify))
        .route("/api/openapi.json", get(openapi_doc))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint: see /api/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint: see /api/openapi.json",
    )
}

/// The client: the peer address, or the forwarded-for address when the peer is a trusted proxy.
fn client_ip(state: &AppState, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !state.trusted_proxies.contains(&peer) {
        return peer;
    }
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The rightmost address that is not one of our proxies.
            v.split(',')
                .map(str::trim)
                .rev()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .find(|a| !state.trusted_proxies.contains(a))
        })
        .unwrap_or(peer)
}

async fn authenticate(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let ip = client_ip(&state, peer.ip(), req.headers());
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = if state.no_auth {
        None
    } else {
        let name = presented.and_then(|t| state.tokens.check(t));
        if name.is_none() {
            let mut err = ApiError::new(
                StatusCode::UNAUTHORIZED,
                if presented.is_some() {
                    "invalid token"
                } else {
                    "missing token: send Authorization: Bearer <token>"
                },
            );
            if let Err(wait) = state.limits.check(Endpoint::AuthFailure, ip) {
                err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentication attempts; try again later",
                );
                err.retry_after = Some(wait);
            }
            tracing::warn!(client = %ip, path = %req.uri().path(), status = err.status.as_u16(), "API authentication failed");
            return err.into_response();
        }
        name.map(str::to_owned)
    };
    req.extensions_mut().insert(Caller { ip, token });
    next.run(req).await
}

/// Takes one request from the caller's limit on `endpoint`.
fn limit(state: &AppState, endpoint: Endpoint, caller: &Caller) -> Result<(), ApiError> {
    state.limits.check(endpoint, caller.ip).map_err(|wait| {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "rate limit of the {} endpoint reached; retry after {wait} s",
                endpoint.name()
            ),
        );
        e.retry_after = Some(wait);
        e
    })
}

/// Counts a running operation in `AppState::running` until dropped (also when it panics).
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(state: &AppState) -> Self {
        state.running.fetch_add(1, Ordering::SeqCst);
        Self(state.running.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `work` on a blocking thread, counted as running until it ends (also when the client has
/// gone away).
async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&Ops) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (ops, running) = (state.ops.clone(), Running::start(state));
    tokio::task::spawn_blocking(move || {
        let _running = running;
        work(&ops)
    })
    .await
    .map_err(|e| ApiError::internal("an operation panicked", e))
}

/// How much lower than the server's request handling long operations run: a backup's
/// compression (and its pg_dump, which inherits the thread's niceness) yields the CPU to list,
/// statistics and healthz requests.
const BACKGROUND_NICE: i32 = 10;

/// Like [`blocking`], for long operations: on a dedicated thread with lower CPU priority.
async fn background<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&Ops) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (ops, running) = (state.ops.clone(), Running::start(state));
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("dbkeep-op".into())
        .spawn(move || {
            let _running = running;
            lower_priority(BACKGROUND_NICE);
            let _ = tx.send(work(&ops));
        })
        .map_err(|e| ApiError::internal("cannot start an operation thread", e))?;
    rx.await
        .map_err(|e| ApiError::internal("an operation thread ended without an answer", e))
}

/// Lowers this thread's CPU priority (Linux: niceness is per thread, and threads and processes
/// started from it inherit it). Best effort.
fn lower_priority(nice: i32) {
    // SAFETY: gettid and setpriority only read their integer arguments; no memory is shared.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

/// Runs a handler body and writes its audit line.
async fn audited<F>(
    state: &AppState,
    caller: &Caller,
    action: &'static str,
    backup: Option<&str>,
    body: F,
) -> Response
where
    F: std::future::Future<Output = Result<Response, ApiError>>,
{
    let started = Instant::now();
    let resp = match body.await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let status = resp.status();
    state.audit.record(&AuditEntry {
        time: now_text(),
        client: caller.ip.to_string(),
        token: caller.token.as_deref(),
        action,
        backup,
        outcome: if status.is_success() { "ok" } else { "error" },
        status: status.as_u16(),
        duration_ms: started.elapsed().as_millis() as u64,
    });
    resp
}

/// A handler on `/…/{name}`: checks the name, takes one request from `endpoint`'s limit, runs
/// `body` with the name, and writes the audit line (with the raw name, even when invalid).
async fn with_name<F, Fut>(
    state: &AppState,
    caller: &Caller,
    action: &'static str,
    endpoint: Endpoint,
    p: Result<Path<String>, PathRejection>,
    body: F,
) -> Response
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let raw = raw_name(&p);
    audited(state, caller, action, raw.as_deref(), async {
        let name = name_param(p).map_err(|e| e.with_name(raw.as_deref()))?;
        limit(state, endpoint, caller)?;
        body(name).await
    })
    .await
}

fn name_param(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = p.map_err(|e| ApiError::bad_request(format!("invalid backup name: {e}")))?;
    BackupName::parse(&name)
        .map_err(|e| ApiError::bad_request(e.to_string()))
        .map(|n| n.to_string())
}

/// The raw name for error bodies and the audit line, even when it is invalid (escaped on output).
fn raw_name(p: &Result<Path<String>, PathRejection>) -> Option<String> {
    p.as_ref().ok().map(|Path(n)| n.chars().take(200).collect())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    backup_name: Option<String>,
    compress: Option<bool>,
}

/// Parses an optional JSON body: 415 for another content type, 413 past the limit, 400 for
/// malformed JSON, wrong types or unknown fields.
async fn json_body<T: Default + for<'de> Deserialize<'de>>(
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

async fn create(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let st = state.clone();
    let parsed: Result<CreateBody, ApiError> = json_body(&headers, body, state.body_timeout).await;
    let name = parsed.as_ref().ok().and_then(|b| b.backup_name.clone());
    audited(&state, &caller, "create", name.as_deref(), async {
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
        };
        // BACKUP_DRILL: the drill runs once the backup (and its lock) is done; its outcome is
        // part of the answer, the backup stands either way.
        let out = background(&st, move |ops| {
            ops.backup(&req).map(|out| {
                let drill = ops.drill_after_backup(&out.manifest);
                (out, drill)
            })
        })
        .await?;
        let (out, drill) = out.map_err(|e| ApiError::from_ops(e, body.backup_name.as_deref()))?;
        st.invalidate();
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

impl AppState {
    /// When the repository last changed (the backup directory's mtime).
    fn stamp(&self) -> Option<SystemTime> {
        self.ops.storage().changed_at()
    }

    /// The cached catalog, if the repository has not changed since it was read.
    fn cached(&self, stamp: Option<SystemTime>) -> Option<Arc<Catalog>> {
        let cache = self.cache.lock().ok()?;
        let c = cache.as_ref()?;
        c.fresh(stamp).then(|| c.catalog.clone())
    }

    /// The catalog, cached until the backup directory changes. One caller re-reads it; the
    /// others wait for that read.
    fn catalog(&self) -> Result<Arc<Catalog>, crate::error::Error> {
        if let Some(cat) = self.cached(self.stamp()) {
            return Ok(cat);
        }
        let _one_reader = self.rebuild.lock();
        let stamp = self.stamp();
        if let Some(cat) = self.cached(stamp) {
            return Ok(cat);
        }
        let read_at = SystemTime::now();
        let read = Instant::now();
        let cat = Arc::new(self.ops.catalog()?);
        // Cache only a read that began well after the change it is keyed on (see MTIME_SLACK).
        let keyed = stamp.is_none_or(|stamp| {
            read_at
                .duration_since(stamp)
                .is_ok_and(|gap| gap >= MTIME_SLACK)
        });
        if keyed && let Ok(mut cache) = self.cache.lock() {
            *cache = Some(CatalogCache {
                stamp,
                read,
                catalog: cat.clone(),
                list: None,
            });
        }
        Ok(cat)
    }

    /// The list response from the cache, without touching the disk beyond one stat.
    fn cached_list(&self) -> Option<Bytes> {
        let stamp = self.stamp();
        let cache = self.cache.lock().ok()?;
        let c = cache.as_ref()?;
        let (made, body) = c.list.as_ref()?;
        (c.fresh(stamp) && made.elapsed() < LIST_TTL).then(|| body.clone())
    }

    fn store_list(&self, catalog: &Arc<Catalog>, body: &Bytes) {
        if let Ok(mut cache) = self.cache.lock()
            && let Some(c) = cache.as_mut()
            && Arc::ptr_eq(&c.catalog, catalog)
        {
            c.list = Some((Instant::now(), body.clone()));
        }
    }

    fn invalidate(&self) {
        if let Ok(mut c) = self.cache.lock() {
            *c = None;
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Include every backup's per-table row counts (left out by default: a database of many
    /// tables would make every list response and the cache that large).
    row_counts: Option<bool>,
}

async fn list(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let st = state.clone();
    audited(&state, &caller, "list", None, async {
        limit(&st, Endpoint::List, &caller)?;
        let Query(q) = q.map_err(|e| ApiError::bad_request(e.to_string()))?;
        if q.row_counts == Some(true) {
            let cat = blocking(&st, {
                let st2 = st.clone();
                move |_| st2.catalog()
            })
            .await?
            .map_err(|e| ApiError::from_ops(e, None))?;
            let stats = st.ops.statistics(&cat);
            return Ok(Json(json!(ListResponse {
                backups: &cat.backups,
                statistics: stats,
            }))
            .into_response());
        }
        let body = match st.cached_list() {
            Some(body) => body,
            None => {
                let st2 = st.clone();
                blocking(&st, move |ops| {
                    let cat = st2.catalog()?;
                    // One request serialises; the others wait and take its bytes.
                    let _one_writer = st2.rebuild.lock();
                    if let Some(body) = st2.cached_list() {
                        return Ok(body);
                    }
                    let stats = ops.statistics(&cat);
                    let lean: Vec<crate::catalog::Manifest> = cat
                        .backups
                        .iter()
                        .map(|m| crate::catalog::Manifest {
                            row_counts: None,
                            ..m.clone()
                        })
                        .collect();
                    let body = Bytes::from(
                        serde_json::to_vec(&ListResponse {
                            backups: &lean,
                            statistics: stats,
                        })
                        .map_err(|e| crate::error::Error::Io {
                            io_context: "encode the list".into(),
                            source: e.into(),
                        })?,
                    );
                    st2.store_list(&cat, &body);
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

async fn statistics(State(state): State<Shared>, Extension(caller): Extension<Caller>) -> Response {
    let st = state.clone();
    audited(&state, &caller, "statistics", None, async {
        limit(&st, Endpoint::Statistics, &caller)?;
        let st2 = st.clone();
        let stats = blocking(&st, move |ops| st2.catalog().map(|c| ops.statistics(&c)))
            .await?
            .map_err(|e| ApiError::from_ops(e, None))?;
        Ok(Json(stats).into_response())
    })
    .await
}

async fn restore(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    let st = state.clone();
    with_name(
        &state,
        &caller,
        "restore",
        Endpoint::Restore,
        p,
        |name| async move {
            let n = name.clone();
            let out = background(&st, move |ops| ops.restore(&n))
                .await?
                .map_err(|e| ApiError::from_ops(e, Some(&name)))?;
            Ok(Json(json!({
                "success": true,
                "backup_name": name,
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

async fn delete_backup(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    let st = state.clone();
    with_name(
        &state,
        &caller,
        "delete",
        Endpoint::Delete,
        p,
        |name| async move {
            let n = name.clone();
            blocking(&st, move |ops| ops.delete(&n))
                .await?
                .map_err(|e| ApiError::from_ops(e, Some(&name)))?;
            st.invalidate();
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyQuery {
    restore: Option<bool>,
}

async fn verify(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<VerifyQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let st = state.clone();
    with_name(
        &state,
        &caller,
        "verify",
        Endpoint::Verify,
        p,
        |name| async move {
            let Query(q) = q.map_err(|e| ApiError::bad_request(e.to_string()))?;
            let drill = q.restore == Some(true);
            let n = name.clone();
            let reports = background(&st, move |ops| {
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

async fn download(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    let st = state.clone();
    with_name(
        &state,
        &caller,
        "download",
        Endpoint::Download,
        p,
        |name| async move {
            let st2 = st.clone();
            let n = name.clone();
            let (key, size, reader) = blocking(&st, move |ops| {
                let cat = st2.catalog()?;
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
fn receiver_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn openapi_doc(Extension(_caller): Extension<Caller>) -> Response {
    Json(openapi::document()).into_response()
}

async fn healthz(State(state): State<Shared>) -> Response {
    let st = state.clone();
    let cat = tokio::task::spawn_blocking(move || st.catalog()).await;
    let Ok(Ok(cat)) = cat else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failing", "reason": "the backup directory cannot be read"})),
        )
            .into_response();
    };
    // A backup dated in the future (a skewed clock) never stands in for the newest.
    let now = chrono::Utc::now();
    let dated = |m: &&crate::catalog::Manifest| m.timestamp <= now + crate::retention::FUTURE_SLACK;
    let last = cat.backups.iter().find(dated);
    let last_ok = cat.backups.iter().filter(dated).find(|m| m.success);
    let copy_failed = last_ok.is_some_and(|m| m.copies.iter().any(|c| !c.ok));
    let age = last_ok.map(|m| (chrono::Utc::now() - m.timestamp).num_seconds().max(0));
    let max = state.health_max_age.as_secs() as i64;
    // The most recent restore drill: a failed one fails the check until a later one passes.
    let drill = cat.last_drill().map(|(_, v)| v);
    let drill_failed = drill.is_some_and(|v| v.outcome == crate::catalog::DrillOutcome::Failed);
    let (healthy, reason) = match (last, age) {
        (None, _) => (false, "no backup yet"),
        (Some(l), _) if !l.success => (false, "the last backup failed"),
        (_, Some(a)) if a > max => (false, "the last successful backup is too old"),
        _ if drill_failed => (false, "the last restore drill failed"),
        _ if copy_failed => (false, "a copy of the last successful backup failed"),
        _ if !cat.unreadable.is_empty() => (false, "a manifest cannot be read"),
        _ => (true, "ok"),
    };
    let body = json!({
        "status": if healthy { "ok" } else { "failing" },
        "reason": reason,
        "last_backup_success": last.map(|m| m.success),
        "last_success": last_ok.map(|m| m.timestamp_text()),
        "last_success_age_seconds": age,
        "max_age_seconds": max,
        "running_operations": state.running.load(Ordering::SeqCst),
        "unreadable_manifests": cat.unreadable.len(),
        "failed_copies": last_ok.map_or(0, |m| m.copies.iter().filter(|c| !c.ok).count()),
        "last_drill": drill.map(|v| json!({
            "verified_at": v.verified_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "outcome": v.outcome,
        })),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Runs the server until SIGTERM or SIGINT; then stops accepting, lets running operations finish
/// for the grace period, then aborts them (they clean up their temp files) and returns.
pub async fn serve(
    settings: Settings,
    bind: SocketAddr,
    no_auth: bool,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let state = Arc::new(AppState::new(&settings, no_auth)?);
    if state.tokens.is_empty() {
        if !no_auth {
            return Err(ServeError::NoTokens);
        }
        if !bind.ip().is_loopback() {
            return Err(ServeError::NoAuthNotLoopback(bind));
        }
    }
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|source| ServeError::Bind { addr: bind, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr: bind, source })?;
    on_listening(local);
    tracing::info!(address = %local, auth = !no_auth, "dbkeep serve listening");

    let limits_state = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            limits_state.limits.shrink();
        }
    });
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let app = router(state.clone());
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await
    });
    shutdown_signal().await;
    tracing::info!("shutting down: no new requests");
    let _ = stop_tx.send(true);
    let running = state.running();
    let grace_end = Instant::now() + settings.api.shutdown_grace;
    while running.load(Ordering::SeqCst) > 0 && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if running.load(Ordering::SeqCst) > 0 {
        tracing::warn!("running operations did not finish within the grace period: aborting them");
        crate::signals::request_abort();
        let hard_end = Instant::now() + Duration::from_secs(30);
        while running.load(Ordering::SeqCst) > 0 && Instant::now() < hard_end {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => Err(ServeError::Serve(e)),
        _ => Ok(()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
