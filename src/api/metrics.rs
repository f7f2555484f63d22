//! `GET /metrics`: the repository's state and this server's counters in the OpenMetrics text
//! format (prometheus-client), which Prometheus scrapes. The state is read from the catalog at
//! each scrape, so backups made by the CLI or another host count too; the counters are this
//! process's since it started. Behind authentication unless `DBKEEP_METRICS_PUBLIC`.

use crate::catalog::{Catalog, DrillOutcome, Manifest};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct SeriesLabels {
    database: String,
    series: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// This process's counters.
#[derive(Default)]
pub struct Metrics {
    operations: Family<OperationLabels, Counter>,
    rate_limited: Family<EndpointLabels, Counter>,
    retention_deleted: Counter,
}

/// What a scrape shows besides the catalog.
pub struct Now {
    pub running: usize,
    pub free_bytes: Option<u64>,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Metrics {
    /// One API operation of this server ended (`create`, `restore`, `delete`, `verify`,
    /// `download`) with the HTTP `status`: success (2xx), refused (4xx: a bad request, a
    /// conflict, a rate limit) or failure.
    pub fn operation(&self, operation: &str, status: u16) {
        let outcome = match status {
            200..=299 => "success",
            400..=499 => "refused",
            _ => "failure",
        };
        self.operations
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// A request refused by the rate limit of `endpoint`.
    pub fn rate_limited(&self, endpoint: &str) {
        self.rate_limited
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .inc();
    }

    /// Backups retention deleted after a backup of this server.
    pub fn retention_deleted(&self, n: u64) {
        self.retention_deleted.inc_by(n);
    }

    /// The scrape's text.
    pub fn render(&self, cat: &Catalog, now: &Now) -> String {
        let mut r = Registry::default();
        let series = per_series(cat, now.at);
        let gauge = |f: &dyn Fn(&Latest) -> Option<f64>| {
            let family = Family::<SeriesLabels, FloatGauge>::default();
            for (labels, latest) in &series {
                if let Some(v) = f(latest) {
                    family.get_or_create(labels).set(v);
                }
            }
            family
        };
        let ts = |m: &Manifest| m.timestamp.timestamp_millis() as f64 / 1000.0;
        r.register_with_unit(
            "dbkeep_backup_last_success_timestamp",
            "When the newest successful backup of the series started (Unix time)",
            Unit::Seconds,
            gauge(&|l| l.success.map(ts)),
        );
        r.register_with_unit(
            "dbkeep_backup_last_failure_timestamp",
            "When the newest failed backup attempt of the series started (Unix time)",
            Unit::Seconds,
            gauge(&|l| l.failure.map(ts)),
        );
        r.register_with_unit(
            "dbkeep_backup_last_duration",
            "How long the newest successful backup of the series took",
            Unit::Seconds,
            gauge(&|l| l.success.map(|m| m.duration)),
        );
        r.register_with_unit(
            "dbkeep_backup_last_size",
            "Bytes stored by the newest successful backup of the series",
            Unit::Bytes,
            gauge(&|l| l.success.map(|m| m.file_size as f64)),
        );
        r.register(
            "dbkeep_backup_last_success",
            "1 when the newest backup attempt of the series succeeded, else 0",
            gauge(&|l| l.newest.map(|m| f64::from(u8::from(m.success)))),
        );
        r.register_with_unit(
            "dbkeep_drill_last_timestamp",
            "When the newest restore drill of a backup of the series ran (Unix time)",
            Unit::Seconds,
            gauge(&|l| l.drill.map(|(at, _)| at)),
        );
        r.register(
            "dbkeep_drill_last_success",
            "1 when the newest restore drill of the series passed, 0 when it failed",
            gauge(&|l| l.drill.map(|(_, ok)| f64::from(u8::from(ok)))),
        );
        let count = Gauge::<i64>::default();
        count.set(cat.backups.iter().filter(|m| m.success).count() as i64);
        r.register(
            "dbkeep_repository_backups",
            "Successful backups in the repository",
            count,
        );
        let failed = Gauge::<i64>::default();
        failed.set(cat.backups.iter().filter(|m| !m.success).count() as i64);
        r.register(
            "dbkeep_repository_failed_attempts",
            "Failed backup attempts recorded in the repository",
            failed,
        );
        let bytes = Gauge::<i64>::default();
        bytes.set(
            i64::try_from(cat.backups.iter().map(|m| m.file_size).sum::<u64>()).unwrap_or(i64::MAX),
        );
        r.register_with_unit(
            "dbkeep_repository_size",
            "Bytes stored by the repository's backups",
            Unit::Bytes,
            bytes,
        );
        let unreadable = Gauge::<i64>::default();
        unreadable.set(cat.unreadable.len() as i64);
        r.register(
            "dbkeep_repository_unreadable_manifests",
            "Manifests this dbkeep cannot read (their backups are kept, and nothing is pruned)",
            unreadable,
        );
        if let Some(free) = now.free_bytes {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(free).unwrap_or(i64::MAX));
            r.register_with_unit(
                "dbkeep_repository_free",
                "Free bytes where new backups go",
                Unit::Bytes,
                g,
            );
        }
        let running = Gauge::<i64>::default();
        running.set(now.running as i64);
        r.register(
            "dbkeep_operations_in_flight",
            "Operations of this server running now",
            running,
        );
        r.register(
            "dbkeep_operations",
            "Operations of this server since it started, by outcome",
            self.operations.clone(),
        );
        r.register(
            "dbkeep_rate_limited_requests",
            "Requests this server refused for a rate limit, by endpoint",
            self.rate_limited.clone(),
        );
        r.register(
            "dbkeep_retention_deleted_backups",
            "Backups deleted by the retention that follows this server's backups",
            self.retention_deleted.clone(),
        );
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &r);
        text
    }
}

/// The newest attempt, success, failure and drill of one series.
#[derive(Default)]
struct Latest<'a> {
    newest: Option<&'a Manifest>,
    success: Option<&'a Manifest>,
    failure: Option<&'a Manifest>,
    drill: Option<(f64, bool)>,
}

/// By (database, series): the catalog is newest first, so the first of each kind wins. A
/// backup dated in the future (a skewed clock) never stands in for the newest.
fn per_series(
    cat: &Catalog,
    now: chrono::DateTime<chrono::Utc>,
) -> BTreeMap<SeriesLabels, Latest<'_>> {
    let mut out: BTreeMap<SeriesLabels, Latest<'_>> = BTreeMap::new();
    for m in cat
        .backups
        .iter()
        .filter(|m| m.timestamp <= now + crate::retention::FUTURE_SLACK)
    {
        let l = out
            .entry(SeriesLabels {
                database: m.database_name.clone(),
                series: m.series.clone(),
            })
            .or_default();
        l.newest.get_or_insert(m);
        if m.success {
            l.success.get_or_insert(m);
        } else {
            l.failure.get_or_insert(m);
        }
        if let Some(v) = &m.verification {
            let at = v.verified_at.timestamp_millis() as f64 / 1000.0;
            if l.drill.is_none_or(|(t, _)| at > t) {
                l.drill = Some((at, v.outcome == DrillOutcome::Passed));
            }
        }
    }
    out
}
