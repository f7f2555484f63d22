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

use crate::config::Settings;
use crate::naming::BackupName;
use crate::ops::Ops;
use audit::AuditEntry;
use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use error::{ApiError, now_text};
use limits::Endpoint;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

pub mod audit;

mod dashboard;

pub mod auth;

pub mod error;

pub mod limits;

mod handlers;
pub mod metrics;
pub mod openapi;
mod operations;
mod routes;
mod state;
mod status;

use handlers::*;
pub use routes::{ROUTES, router};
pub use state::AppState;
use status::{databases, healthz, metrics_text};

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
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

type Shared = Arc<AppState>;

/// Who is calling: set by [`authenticate`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub ip: IpAddr,
    pub token: Option<String>,
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

/// The client: the peer address, or, when the peer is a trusted proxy, the `X-Forwarded-For`
/// address its proxies vouch for: every header line in order (a proxy may append a line of its
/// own after the client's), read right to left, up to the first address that is not a trusted
/// proxy. An entry that does not parse ends the walk at the last address vouched for, so what
/// a client writes to the left of it is never believed.
/// The token a request presents (`Authorization: Bearer …`), if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn client_ip(state: &AppState, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    client_ip_from(&state.trusted_proxies, peer, headers)
}

fn client_ip_from(trusted: &[IpAddr], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let mut client = peer;
    if !trusted.contains(&peer) {
        return client;
    }
    let lines: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for line in lines.iter().rev() {
        let Ok(line) = std::str::from_utf8(line) else {
            return client;
        };
        for entry in line.split(',').map(str::trim).rev() {
            let parsed = entry
                .parse::<IpAddr>()
                .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()));
            let Ok(addr) = parsed else {
                return client;
            };
            client = addr;
            if !trusted.contains(&addr) {
                return client;
            }
        }
    }
    client
}

async fn authenticate(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let ip = client_ip(&state, peer.ip(), req.headers());
    let presented = bearer(req.headers());
    let too_many = |wait: u64| {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentication attempts; try again later",
        );
        err.retry_after = Some(wait);
        err
    };
    let token = if state.no_auth {
        None
    } else {
        // Over the failure budget, whatever it sends: its token is not even looked at.
        if let Some(wait) = state.limits.barred(ip) {
            let err = too_many(wait);
            tracing::warn!(client = %ip, path = %req.uri().path(), status = err.status.as_u16(), "API authentication refused: too many failures");
            return err.into_response();
        }
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
            if let Some(wait) = state.limits.auth_failed(ip) {
                err = too_many(wait);
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
        state.metrics.rate_limited(endpoint.name());
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
    db: &state::Db,
    work: impl FnOnce(&Ops) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (ops, running) = (db.ops.clone(), Running::start(state));
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
    db: &state::Db,
    work: impl FnOnce(&Ops) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (ops, running) = (db.ops.clone(), Running::start(state));
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
    state.metrics.operation(action, status.as_u16());
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
    // The scheduler, when schedules are configured: on a thread of its own, with the
    // repository lock waited for like any backup; it stops starting runs at SIGTERM, and its
    // running backup counts for the grace period.
    let scheduler_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if !settings.schedules.is_empty() {
        let ops = Ops::new(settings.clone())?.without_signal_handlers();
        // Each schedule runs on its own database (`Ops::run_schedules`).
        let clock = crate::schedule::runner::SystemClock {
            stop: Some(scheduler_stop.clone()),
        };
        let running = state.running();
        std::thread::spawn(move || {
            if let Err(e) = ops.run_schedules(&clock, Some(&running)) {
                tracing::error!(error = %e, "the scheduler stopped");
            }
        });
    }
    // The WAL streams of the databases that ask for one (BACKUP_WAL_STREAM), each on a
    // thread of its own; stopped with the scheduler.
    let mut streams = Vec::new();
    for (name, db) in settings.databases.iter().filter(|(_, d)| d.wal_stream) {
        let ops = Ops::new(db.clone())?.without_signal_handlers();
        let stop = scheduler_stop.clone();
        let name = name.clone();
        streams.push(std::thread::spawn(move || {
            if let Err(e) = ops.wal_stream(Some(&stop)) {
                tracing::error!(database = %name, error = %e, "the WAL stream stopped");
            }
        }));
    }
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
    state.stopping.store(true, Ordering::SeqCst);
    scheduler_stop.store(true, Ordering::SeqCst);
    for s in streams {
        let _ = s.join();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// REVIEW B5: every header line, right to left, stopping at the first address that is not
    /// a trusted proxy or does not parse.
    #[test]
    fn forwarded_for_is_read_right_to_left_over_every_line() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted = [proxy, "10.0.0.2".parse().unwrap()];
        let ip = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append("x-forwarded-for", l.parse().unwrap());
            }
            client_ip_from(&trusted, proxy, &h).to_string()
        };
        // HAProxy appends its own line after the client's forged one.
        assert_eq!(ip(&["6.6.6.6", "203.0.113.7"]), "203.0.113.7");
        assert_eq!(ip(&["6.6.6.6, 203.0.113.7, 10.0.0.2"]), "203.0.113.7");
        // A proxy writing ip:port.
        assert_eq!(ip(&["6.6.6.6, 203.0.113.7:5123"]), "203.0.113.7");
        // Garbage ends the walk at the last vouched-for address, never further left.
        assert_eq!(ip(&["6.6.6.6, garbage, 10.0.0.2"]), "10.0.0.2");
        assert_eq!(ip(&[]), "10.0.0.1");
        // An untrusted peer's header is never read.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        let peer: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(client_ip_from(&trusted, peer, &h), peer);
    }
}
