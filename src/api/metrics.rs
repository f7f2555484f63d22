//! `GET /metrics`: the repository's state and this server's counters in the OpenMetrics text
//! format (prometheus-client), which Prometheus scrapes. The state is read from the catalog at
//! each scrape, so backups made by the CLI or another host count too; the counters are this
//! process's since it started. The `database` label is the configured database's name
//! (`default` for `DATABASE_URL`'s), every database of the configuration in one scrape. Behind authentication unless `DBKEEP_METRICS_PUBLIC`.

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
struct DatabaseLabels {
    database: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    database: String,
    schedule: String,
    series: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    database: String,
    channel: String,
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

/// One configured database as a scrape shows it.
pub struct Scrape<'a> {
    /// Its configured name (`default` for `DATABASE_URL`'s): the `database` label.
    pub database: &'a str,
    /// Whether its repository could be read (else `catalog` is empty and not shown).
    pub readable: bool,
    pub catalog: &'a Catalog,
    pub free_bytes: Option<u64>,
    /// Its schedules: (schedule, series, next run in Unix seconds).
    pub next_runs: Vec<(String, String, f64)>,
    /// Its notification channels' record (`notifications.status.json`).
    pub notifications: std::collections::BTreeMap<String, crate::notify::ChannelStatus>,
    /// Its recoverable window, when it has base backups.
    pub pitr: Option<crate::catalog::PitrStatus>,
}

/// What a scrape shows besides the catalogs.
pub struct Now {
    pub running: usize,
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
    pub fn render(&self, dbs: &[Scrape<'_>], now: &Now) -> String {
        let mut r = Registry::default();
        let mut series = BTreeMap::new();
        for db in dbs.iter().filter(|d| d.readable) {
            series.extend(per_series(db.database, db.catalog, now.at));
        }
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
        let per_db = |f: &dyn Fn(&Scrape<'_>) -> Option<i64>| {
            let family = Family::<DatabaseLabels, Gauge>::default();
            for db in dbs.iter().filter(|d| d.readable) {
                if let Some(v) = f(db) {
                    family
                        .get_or_create(&DatabaseLabels {
                            database: db.database.to_owned(),
                        })
                        .set(v);
                }
            }
            family
        };
        let count = |ok: bool| {
            move |db: &Scrape<'_>| {
                Some(
                    db.catalog
                        .backups
                        .iter()
                        .filter(|m| m.success == ok)
                        .count() as i64,
                )
            }
        };
        let readable = Family::<DatabaseLabels, Gauge>::default();
        for db in dbs {
            readable
                .get_or_create(&DatabaseLabels {
                    database: db.database.to_owned(),
                })
                .set(i64::from(db.readable));
        }
        r.register(
            "dbkeep_repository_readable",
            "1 when the database's repository could be read for this scrape, else 0",
            readable,
        );
        r.register(
            "dbkeep_repository_backups",
            "Successful backups in the database's repository",
            per_db(&count(true)),
        );
        r.register(
            "dbkeep_repository_failed_attempts",
            "Failed backup attempts recorded in the database's repository",
            per_db(&count(false)),
        );
        r.register_with_unit(
            "dbkeep_repository_size",
            "Bytes stored by the backups of the database's repository",
            Unit::Bytes,
            per_db(&|db| {
                let sum: u64 = db.catalog.backups.iter().map(|m| m.file_size).sum();
                Some(i64::try_from(sum).unwrap_or(i64::MAX))
            }),
        );
        r.register(
            "dbkeep_repository_unreadable_manifests",
            "Manifests this dbkeep cannot read (their backups are kept, and nothing is pruned)",
            per_db(&|db| Some(db.catalog.unreadable.len() as i64)),
        );
        r.register_with_unit(
            "dbkeep_repository_free",
            "Free bytes where the database's new backups go",
            Unit::Bytes,
            per_db(&|db| db.free_bytes.map(|f| i64::try_from(f).unwrap_or(i64::MAX))),
        );
        let unix = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|t| t.timestamp())
        };
        r.register_with_unit(
            "dbkeep_pitr_first_recoverable_timestamp",
            "The earliest time the database can be recovered to (its oldest base backup's end; Unix time)",
            Unit::Seconds,
            per_db(&|db| db.pitr.as_ref().and_then(|p| unix(&p.first_recoverable))),
        );
        r.register_with_unit(
            "dbkeep_pitr_last_recoverable_timestamp",
            "The latest time the database can be recovered to (the end of the unbroken archived WAL; Unix time)",
            Unit::Seconds,
            per_db(&|db| db.pitr.as_ref().and_then(|p| unix(&p.last_recoverable))),
        );
        r.register(
            "dbkeep_pitr_gap",
            "1 when a WAL segment is missing after the newest base backup (recovery stops there), else 0",
            per_db(&|db| db.pitr.as_ref().map(|p| i64::from(p.gap.is_some()))),
        );
        r.register(
            "dbkeep_pitr_archived_segments",
            "WAL segments in the database's archive",
            per_db(&|db| db.pitr.as_ref().map(|p| p.archived_segments as i64)),
        );
        r.register_with_unit(
            "dbkeep_pitr_drill_last_timestamp",
            "When the newest recovery drill to a point in time ran (Unix time)",
            Unit::Seconds,
            per_db(&|db| {
                db.pitr
                    .as_ref()
                    .and_then(|p| p.last_pitr_drill.as_ref())
                    .and_then(|d| unix(&d.verified_at))
            }),
        );
        r.register(
            "dbkeep_pitr_drill_last_success",
            "1 when the newest recovery drill to a point in time passed, 0 when it failed",
            per_db(&|db| {
                db.pitr
                    .as_ref()
                    .and_then(|p| p.last_pitr_drill.as_ref())
                    .map(|d| i64::from(d.outcome == crate::catalog::DrillOutcome::Passed))
            }),
        );
        let next = Family::<ScheduleLabels, FloatGauge>::default();
        for db in dbs {
            for (schedule, series, at) in &db.next_runs {
                next.get_or_create(&ScheduleLabels {
                    database: db.database.to_owned(),
                    schedule: schedule.clone(),
                    series: series.clone(),
                })
                .set(*at);
            }
        }
        let failures = Family::<ChannelLabels, Counter>::default();
        for db in dbs {
            for (channel, st) in &db.notifications {
                failures
                    .get_or_create(&ChannelLabels {
                        database: db.database.to_owned(),
                        channel: channel.clone(),
                    })
                    .inc_by(st.failures);
            }
        }
        r.register(
            "dbkeep_notification_failures",
            "Notifications that could not be delivered after their retries, by channel (recorded in the repository)",
            failures,
        );
        r.register_with_unit(
            "dbkeep_schedule_next_run_timestamp",
            "When the schedule runs next (Unix time)",
            Unit::Seconds,
            next,
        );
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
fn per_series<'a>(
    database: &str,
    cat: &'a Catalog,
    now: chrono::DateTime<chrono::Utc>,
) -> BTreeMap<SeriesLabels, Latest<'a>> {
    let mut out: BTreeMap<SeriesLabels, Latest<'_>> = BTreeMap::new();
    for m in cat
        .backups
        .iter()
        .filter(|m| m.timestamp <= now + crate::retention::FUTURE_SLACK)
    {
        let l = out
            .entry(SeriesLabels {
                database: database.to_owned(),
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
