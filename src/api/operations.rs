//! `GET /api/operations` (the running operations and their progress, from
//! [`crate::progress`]) and `GET /api/operations/events`, the same as a server-sent event
//! stream: one `operations` event at once and then every half second while anything runs (a
//! comment line keeps an idle stream open), until the client goes or the server stops.

use super::*;
use axum::Json;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use handlers::{DbQuery, QueryResult, query};
use serde_json::json;

/// The running operations (of one database with `?database=`).
fn operations(database: Option<&str>) -> Vec<crate::progress::Snapshot> {
    crate::progress::running()
        .into_iter()
        .filter(|s| database.is_none_or(|d| s.database == d))
        .collect()
}

/// The database a request names, checked against the configured ones.
fn chosen(state: &AppState, q: QueryResult<DbQuery>) -> Result<Option<String>, ApiError> {
    let q = query(q)?;
    if let Some(n) = &q.database {
        state.db(Some(n))?;
    }
    Ok(q.database)
}

pub(super) async fn list(
    State(state): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    q: QueryResult<DbQuery>,
) -> Response {
    let st = state.clone();
    audited(&state, &caller, "operations", None, async {
        limit(&st, Endpoint::Operations, &caller)?;
        let database = chosen(&st, q)?;
        Ok(Json(json!({ "operations": operations(database.as_deref()) })).into_response())
    })
    .await
}

/// How often the stream sends the operations while something runs.
const EVERY: Duration = Duration::from_millis(500);

pub(super) async fn events(
    State(state): State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    q: QueryResult<DbQuery>,
) -> Response {
    let (st, who) = (state.clone(), caller.clone());
    audited(&state, &caller, "operations", None, async move {
        limit(&st, Endpoint::Operations, &who)?;
        let database = chosen(&st, q)?;
        Ok(stream(st, database))
    })
    .await
}

/// The event stream of `database`'s operations (all with `None`).
fn stream(state: Shared, database: Option<String>) -> Response {
    // (first, what was sent last): an unchanged idle list is not sent again.
    let start = (true, None::<Vec<crate::progress::Snapshot>>);
    let st = state.clone();
    let stream = futures_util::stream::unfold(start, move |(first, last)| {
        let st = st.clone();
        let database = database.clone();
        async move {
            let mut wait = !first;
            loop {
                if wait {
                    tokio::time::sleep(EVERY).await;
                }
                wait = true;
                if st.stopping.load(Ordering::SeqCst) {
                    return None;
                }
                let now = operations(database.as_deref());
                let idle_again = now.is_empty() && last.as_ref().is_some_and(Vec::is_empty);
                if first || !idle_again {
                    let event = SseEvent::default()
                        .event("operations")
                        .json_data(json!({ "operations": now }))
                        .unwrap_or_else(|_| SseEvent::default().comment("encoding failed"));
                    return Some((Ok::<_, std::convert::Infallible>(event), (false, Some(now))));
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
