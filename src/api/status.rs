//! The views over every configured database: `GET /healthz`, `GET /metrics` and
//! `GET /api/databases`. Each reads the catalogs (cached, see [`super::state`]) on a blocking
//! thread.

use super::*;
use crate::catalog::{Catalog, Manifest};
use axum::Json;
use serde_json::{Value, json};
use state::Db;

/// Each database's catalog (or the error reading it), read on a blocking thread.
async fn catalogs(
    dbs: Vec<Arc<Db>>,
) -> Result<Vec<(Arc<Db>, Result<Arc<Catalog>, crate::error::Error>)>, ApiError> {
    tokio::task::spawn_blocking(move || {
        dbs.into_iter()
            .map(|db| {
                let cat = db.catalog();
                (db, cat)
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::internal("reading the catalogs panicked", e))
}

/// `GET /metrics`: see [`super::metrics`].
pub(super) async fn metrics_text(State(state): State<Shared>) -> Response {
    let dbs: Vec<Arc<Db>> = state.all_dbs().cloned().collect();
    // A repository that cannot be read is one database's problem: the others are scraped,
    // and `dbkeep_repository_readable` says which.
    let read = tokio::task::spawn_blocking(move || {
        dbs.into_iter()
            .map(|db| {
                let cat = db.catalog();
                if let Err(e) = &cat {
                    tracing::warn!(database = %db.name, error = %e, "metrics: the repository cannot be read");
                }
                let free = db.ops.storage().free_space();
                let notes = db.ops.notification_status();
                let pitr = cat.as_ref().ok().and_then(|c| db.ops.pitr_status(c));
                (db, cat.ok(), free, notes, pitr)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let read = match read {
        Ok(read) => read,
        Err(e) => return ApiError::internal("reading the catalog panicked", e).into_response(),
    };
    let at = chrono::Utc::now();
    let empty = Catalog::default();
    let scrapes: Vec<metrics::Scrape<'_>> = read
        .iter()
        .map(|(db, cat, free, notes, pitr)| metrics::Scrape {
            database: &db.name,
            readable: cat.is_some(),
            catalog: cat.as_deref().unwrap_or(&empty),
            free_bytes: *free,
            next_runs: next_runs(db, at),
            notifications: notes.clone(),
            pitr: pitr.clone(),
        })
        .collect();
    let now = metrics::Now {
        running: state.running.load(Ordering::SeqCst),
        at,
    };
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(&scrapes, &now),
    )
        .into_response()
}

/// This database's schedules: (schedule, series, next run in Unix seconds).
fn next_runs(db: &Db, at: chrono::DateTime<chrono::Utc>) -> Vec<(String, String, f64)> {
    let s = db.ops.settings();
    s.schedules
        .iter()
        .filter(|sch| sch.database == s.database)
        .filter_map(|sch| {
            crate::schedule::plan::next_slot(sch, at).map(|t| {
                (
                    sch.name.clone(),
                    sch.series.clone(),
                    t.timestamp_millis() as f64 / 1000.0,
                )
            })
        })
        .collect()
}

/// One database's health: whether it is healthy, and its details.
fn health(cat: &Catalog, max_age: i64) -> (bool, Value) {
    // A backup dated in the future (a skewed clock) never stands in for the newest.
    let now = chrono::Utc::now();
    let dated = |m: &&Manifest| m.timestamp <= now + crate::retention::FUTURE_SLACK;
    let last = cat.backups.iter().find(dated);
    let last_ok = cat.backups.iter().filter(dated).find(|m| m.success);
    let copy_failed = last_ok.is_some_and(|m| m.copies.iter().any(|c| !c.ok));
    let age = last_ok.map(|m| (now - m.timestamp).num_seconds().max(0));
    // The most recent restore drill: a failed one fails the check until a later one passes.
    let drill = cat.last_drill().map(|(_, v)| v);
    let drill_failed = drill.is_some_and(|v| v.outcome == crate::catalog::DrillOutcome::Failed);
    let (healthy, reason) = match (last, age) {
        (None, _) => (false, "no backup yet"),
        (Some(l), _) if !l.success => (false, "the last backup failed"),
        (_, Some(a)) if a > max_age => (false, "the last successful backup is too old"),
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
        "max_age_seconds": max_age,
        "unreadable_manifests": cat.unreadable.len(),
        "failed_copies": last_ok.map_or(0, |m| m.copies.iter().filter(|c| !c.ok).count()),
        "last_drill": drill.map(|v| json!({
            "verified_at": v.verified_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "outcome": v.outcome,
        })),
    });
    (healthy, body)
}

/// `GET /healthz`'s query: unknown parameters (a monitor's cache-buster) are ignored.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct HealthQuery {
    database: Option<String>,
}

/// `GET /healthz`: healthy when every configured database is (or the one `?database=` names).
/// The top-level fields are the default database's (the spec's shape). Without a valid token it
/// names no database: `databases` (each one's details) and the failing one's name come with a
/// token only.
pub(super) async fn healthz(
    State(state): State<Shared>,
    headers: HeaderMap,
    q: Result<axum::extract::Query<HealthQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let authorized = state.no_auth
        || bearer(&headers)
            .and_then(|t| state.tokens.check(t))
            .is_some();
    let wanted = q
        .map(|axum::extract::Query(q)| q.database)
        .unwrap_or_default();
    let chosen = match wanted {
        Some(n) => match state.db(Some(&n)) {
            Ok(db) => vec![db],
            Err(e) if authorized => return e.into_response(),
            Err(_) => {
                return ApiError::new(StatusCode::NOT_FOUND, "no such database").into_response();
            }
        },
        None => state.all_dbs().cloned().collect(),
    };
    let read = match catalogs(chosen).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let max = state.health_max_age.as_secs() as i64;
    let mut all_healthy = true;
    let mut each = serde_json::Map::new();
    for (db, cat) in &read {
        let (healthy, body) = match cat {
            Ok(cat) => health(cat, max),
            Err(_) => (
                false,
                json!({"status": "failing", "reason": "the backup directory cannot be read"}),
            ),
        };
        all_healthy &= healthy;
        each.insert(db.name.clone(), body);
    }
    // The top level: the default database's fields (the first one's without a default).
    let main = state
        .default_db
        .as_ref()
        .and_then(|n| each.get(n))
        .or_else(|| each.values().next())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut body = main;
    if let Some(obj) = body.as_object_mut() {
        obj.insert(
            "status".into(),
            json!(if all_healthy { "ok" } else { "failing" }),
        );
        if !all_healthy && let Some((name, bad)) = each.iter().find(|(_, b)| b["status"] != "ok") {
            let why = bad["reason"].as_str().unwrap_or("failing");
            obj.insert(
                "reason".into(),
                json!(match (each.len() > 1, authorized) {
                    (false, _) => why.to_owned(),
                    (true, true) => format!("database {name}: {why}"),
                    (true, false) => format!("a database: {why}"),
                }),
            );
        }
        obj.insert(
            "running_operations".into(),
            json!(state.running.load(Ordering::SeqCst)),
        );
        obj.insert(
            "databases_failing".into(),
            json!(each.values().filter(|b| b["status"] != "ok").count()),
        );
        if authorized {
            obj.insert("databases".into(), Value::Object(each));
        }
    }
    let status = if all_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /api/databases`: every configured database with its engine, statistics and schedules.
pub(super) async fn databases(
    State(state): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    let st = state.clone();
    audited(&state, &caller, "databases", None, async {
        limit(&st, Endpoint::Statistics, &caller)?;
        let read = catalogs(st.all_dbs().cloned().collect()).await?;
        let mut out = Vec::new();
        for (db, cat) in read {
            // One unreadable repository does not hide the others.
            let cat = match cat {
                Ok(cat) => cat,
                Err(e) => {
                    out.push(json!({
                        "name": db.name,
                        "default": st.default_db.as_deref() == Some(db.name.as_str()),
                        "statistics": null,
                        "error": ApiError::from_ops(e, None).message,
                    }));
                    continue;
                }
            };
            let engine = db
                .ops
                .settings()
                .database_url()
                .map(|u| match u {
                    crate::database_url::DatabaseUrl::Postgres(_) => "postgresql",
                    crate::database_url::DatabaseUrl::Sqlite { .. } => "sqlite",
                    crate::database_url::DatabaseUrl::Mysql(_) => "mysql",
                })
                .ok();
            out.push(json!({
                "name": db.name,
                "type": engine,
                "default": st.default_db.as_deref() == Some(db.name.as_str()),
                "statistics": db.ops.statistics(&cat),
            }));
        }
        Ok(Json(json!({ "databases": out })).into_response())
    })
    .await
}
