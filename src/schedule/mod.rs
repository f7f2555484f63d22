//! The scheduler: `[[schedule]]` tables of the config file, each a cron pattern (5 or 6 fields,
//! `@daily`-style shortcuts; croner) in an IANA time zone, whose slots become backups of a
//! series. The repository is its state: a slot counts as done only when a successful backup of
//! the series exists from it on, so a failed run is never counted as done, and a slot missed
//! while the service was down is found at start. Slots in a DST gap run at the first valid time
//! after it, slots in an overlap once, at the first (croner's rules): a daily run is neither
//! skipped nor doubled.
//!
//! - [`plan`]: the pure part (next slot, what is due at start, retry delays, names), tested
//!   with an injected clock;
//! - [`runner`]: the loop of `dbkeep schedule run` and `dbkeep serve`.

pub mod export;
pub mod plan;
pub mod runner;
#[cfg(test)]
mod tests;

use crate::codec::Compression;
use crate::config::DrillPolicy;
use chrono_tz::Tz;
use croner::Cron;
use serde::Deserialize;
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

/// One `[[schedule]]` table, as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTable {
    pub name: String,
    /// The `[databases.NAME]` it backs up (default: the unnamed one, `DATABASE_URL`'s).
    pub database: Option<String>,
    pub cron: String,
    pub timezone: Option<String>,
    pub series: Option<String>,
    pub name_template: Option<String>,
    pub compression: Option<Compression>,
    /// `dump` (the default: the engine's dump) or `physical` (a PostgreSQL base backup).
    pub kind: Option<ScheduleKind>,
    pub drill: Option<DrillPolicy>,
    pub catch_up: Option<bool>,
    pub retries: Option<u32>,
    pub retry_delay_secs: Option<u64>,
    /// The channels this schedule's events go to (default: its database's).
    pub notify: Option<Vec<String>>,
}

/// What a schedule takes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Dump,
    Physical,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error(
        "[[schedule]] {name:?}: cron {cron:?} is not a cron pattern ({problem}): use 5 fields (minute hour day month weekday), 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly"
    )]
    Cron {
        name: String,
        cron: String,
        problem: String,
    },
    #[error(
        "[[schedule]] {name:?}: timezone {value:?} is not an IANA time zone: use a name such as UTC, Europe/Berlin or America/New_York"
    )]
    TimeZone { name: String, value: String },
    #[error(
        "[[schedule]] {name:?}: name_template {template:?} does not make a valid backup name ({problem}): use {{series}}, {{date}} and {{datetime}} with letters, digits, '_', '-' and '.'"
    )]
    Template {
        name: String,
        template: String,
        problem: String,
    },
    #[error("two [[schedule]] tables are named {0:?}: give each its own name")]
    Duplicate(String),
    #[error("a [[schedule]] table has an empty name: name each schedule")]
    NoName,
}

/// A schedule, checked.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub database: String,
    pub cron: Cron,
    pub cron_text: String,
    pub tz: Tz,
    pub series: String,
    pub name_template: String,
    pub compression: Option<Compression>,
    /// A base backup (`kind = "physical"`) rather than a dump.
    pub physical: bool,
    pub drill: Option<DrillPolicy>,
    /// A slot missed while the service was down runs once at start (default on).
    pub catch_up: bool,
    /// How many times a failed run is tried again (default 3).
    pub retries: u32,
    /// The first retry's delay; each next one doubles it (default 60 s).
    pub retry_delay: Duration,
    pub notify: Option<Vec<String>>,
}

/// A schedule as `dbkeep schedule list` and the statistics show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScheduleStatus {
    pub name: String,
    pub database: String,
    pub cron: String,
    pub timezone: String,
    pub series: String,
    pub next_run: Option<String>,
    /// The newest backup attempt of the series: its name, whether it succeeded, when.
    pub last_backup: Option<String>,
    pub last_success: Option<bool>,
    pub last_at: Option<String>,
}

/// The default name of a schedule's backups.
pub const DEFAULT_TEMPLATE: &str = "{series}_{datetime}";

impl Schedule {
    pub fn from_table(t: &ScheduleTable) -> Result<Self, ScheduleError> {
        if t.name.trim().is_empty() {
            return Err(ScheduleError::NoName);
        }
        let cron = Cron::from_str(t.cron.trim()).map_err(|e| ScheduleError::Cron {
            name: t.name.clone(),
            cron: t.cron.clone(),
            problem: e.to_string(),
        })?;
        let tz = match &t.timezone {
            None => Tz::UTC,
            Some(v) => v.parse().map_err(|_| ScheduleError::TimeZone {
                name: t.name.clone(),
                value: v.clone(),
            })?,
        };
        let s = Schedule {
            name: t.name.clone(),
            database: t
                .database
                .clone()
                .unwrap_or_else(|| crate::config::DEFAULT_DATABASE.to_owned()),
            cron,
            cron_text: t.cron.trim().to_owned(),
            tz,
            series: t.series.clone().unwrap_or_else(|| t.name.clone()),
            name_template: t
                .name_template
                .clone()
                .unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned()),
            compression: t.compression,
            physical: t.kind == Some(ScheduleKind::Physical),
            drill: t.drill,
            catch_up: t.catch_up.unwrap_or(true),
            retries: t.retries.unwrap_or(3),
            retry_delay: Duration::from_secs(t.retry_delay_secs.unwrap_or(60).max(1)),
            notify: t.notify.clone(),
        };
        // The template must make a valid name (checked on a sample slot).
        let sample = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
        if let Err(e) = crate::naming::BackupName::parse(&plan::backup_name(&s, sample)) {
            return Err(ScheduleError::Template {
                name: s.name,
                template: s.name_template,
                problem: e.to_string(),
            });
        }
        Ok(s)
    }

    /// All the tables of a config file, checked (names unique).
    pub fn all(tables: &[ScheduleTable]) -> Result<Vec<Self>, ScheduleError> {
        let mut out: Vec<Schedule> = Vec::new();
        for t in tables {
            let s = Self::from_table(t)?;
            if out.iter().any(|o| o.name == s.name) {
                return Err(ScheduleError::Duplicate(s.name));
            }
            out.push(s);
        }
        Ok(out)
    }
}
