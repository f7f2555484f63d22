//! The route table (`ROUTES`, which the OpenAPI document is built from and a test checks
//! against the router) and the router: which routes need the token, which are public.

use super::*;

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
    (
        "get",
        "/api/operations",
        "Running operations and their progress (phase, bytes, rate)",
    ),
    (
        "get",
        "/api/operations/events",
        "Running operations as a server-sent event stream (text/event-stream)",
    ),
    (
        "get",
        "/api/databases",
        "Every configured database with its engine, statistics and schedules",
    ),
    (
        "post",
        "/api/backup/pin/{name}",
        "Pin a backup: retention keeps it",
    ),
    (
        "post",
        "/api/backup/unpin/{name}",
        "Unpin a backup: retention applies to it again",
    ),
    ("get", "/api/openapi.json", "This OpenAPI document"),
    (
        "get",
        "/",
        "The dashboard (a static page; it signs in with a token)",
    ),
    ("get", "/assets/app.js", "The dashboard's script"),
    ("get", "/assets/app.css", "The dashboard's style sheet"),
    (
        "get",
        "/metrics",
        "Prometheus metrics (OpenMetrics text; no auth with DBKEEP_METRICS_PUBLIC)",
    ),
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
        .route("/api/backup/pin/{name}", post(pin))
        .route("/api/backup/unpin/{name}", post(unpin))
        .route("/api/databases", get(databases))
        .route("/api/operations", get(operations::list))
        .route("/api/operations/events", get(operations::events))
        .route("/api/openapi.json", get(openapi_doc));
    let metrics = Router::new().route("/metrics", get(metrics_text));
    let (api, open) = if state.metrics_public {
        (api, metrics)
    } else {
        (api.merge(metrics), Router::new())
    };
    let api = api.route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(api)
        .merge(open)
        .route("/healthz", get(healthz))
        .route("/", get(dashboard::index))
        .route("/assets/app.js", get(dashboard::script))
        .route("/assets/app.css", get(dashboard::style))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(dashboard::secure_headers))
        .with_state(state)
}
