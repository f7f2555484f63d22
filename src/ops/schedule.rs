//! `dbkeep schedule run` (and the scheduler of `dbkeep serve`): the configured schedules'
//! backups, each with the schedule's compression and drill, waiting for the repository lock
//! like any backup; and `dbkeep schedule list`: each schedule's next run and last outcome,
//! read from the repository.

use super::*;
use crate::error::Error;
pub use crate::schedule::ScheduleStatus;
use crate::schedule::runner::{self, Clock, Event};
use crate::schedule::{Schedule, plan};
use chrono::{DateTime, Utc};
use tracing::{error, info, warn};

impl Ops {
    /// This database's schedules: each one's next run after `now` and the newest attempt of
    /// its series in `cat` (this repository's catalog).
    pub fn schedules_of(&self, cat: &Catalog, now: DateTime<Utc>) -> Vec<ScheduleStatus> {
        self.settings
            .schedules
            .iter()
            .filter(|s| s.database == self.settings.database)
            .map(|s| {
                let last = cat.backups.iter().find(|m| m.series == s.series);
                ScheduleStatus {
                    name: s.name.clone(),
                    database: s.database.clone(),
                    cron: s.cron_text.clone(),
                    timezone: s.tz.name().to_owned(),
                    series: s.series.clone(),
                    next_run: plan::next_slot(s, now).map(|t| t.with_timezone(&s.tz).to_rfc3339()),
                    last_backup: last.map(|m| m.backup_name.clone()),
                    last_success: last.map(|m| m.success),
                    last_at: last.map(|m| m.timestamp_text()),
                }
            })
            .collect()
    }

    /// Every schedule of the configuration, in the order of the config file, each read from
    /// its own database's repository.
    pub fn schedule_status(&self, now: DateTime<Utc>) -> Result<Vec<ScheduleStatus>, Error> {
        let mut all = Vec::new();
        for db in self.all_databases()? {
            all.extend(db.schedules_of(&db.catalog()?, now));
        }
        let order = |n: &str| self.settings.schedules.iter().position(|s| s.name == n);
        all.sort_by_key(|s| order(&s.name));
        Ok(all)
    }

    /// Runs the schedules of every database until `clock` says stop (a termination signal for
    /// the system clock); `running` counts a backup under way (the server's grace period waits
    /// for it).
    pub fn run_schedules(
        &self,
        clock: &dyn Clock,
        running: Option<&std::sync::atomic::AtomicUsize>,
    ) -> Result<(), Error> {
        let schedules = &self.settings.schedules;
        if schedules.is_empty() {
            return Err(Error::NoSchedules);
        }
        // Each schedule's own operations: its database, its compression and drill.
        let mut runners: Vec<Ops> = Vec::with_capacity(schedules.len());
        let mut last_success = Vec::with_capacity(schedules.len());
        for s in schedules {
            let mut settings = self.settings.for_database(&s.database)?;
            if let Some(c) = s.compression {
                settings.compression = c;
                settings.compress = c != crate::codec::Compression::None;
            }
            if let Some(d) = s.drill {
                settings.drill = d;
            }
            if let Some(n) = &s.notify {
                settings.notify = Some(n.clone());
            }
            let ops = Ops {
                catch_signals: self.catch_signals,
                schedule: Some(s.name.clone()),
                ..Ops::new(settings)?
            };
            // A repository that cannot be read now (an S3 outage at start) stops no schedule:
            // its slot runs (and fails, and is retried) like any other.
            let last = match ops.catalog() {
                Ok(cat) => cat
                    .backups
                    .iter()
                    .find(|m| m.success && m.series == s.series)
                    .map(|m| m.timestamp),
                Err(e) => {
                    warn!(schedule = %s.name, error = %e, "the repository cannot be read at start: the schedule runs as if it had no backup yet");
                    None
                }
            };
            last_success.push(last);
            runners.push(ops);
        }
        let index = |s: &Schedule| schedules.iter().position(|o| o.name == s.name);
        let last_success = |s: &Schedule| index(s).and_then(|i| last_success[i]);
        let mut backup = |s: &Schedule, name: &str| {
            use std::sync::atomic::Ordering;
            let Some(ops) = index(s).map(|i| &runners[i]) else {
                return Err(format!("no schedule named {:?}", s.name));
            };
            let req = BackupRequest {
                name: Some(name.to_owned()),
                series: Some(s.series.clone()),
                compress: None,
                replace: false,
                physical: s.physical,
            };
            if let Some(r) = running {
                r.fetch_add(1, Ordering::SeqCst);
            }
            let result = ops.backup(&req).map_err(|e| e.to_string()).map(|out| {
                match ops.drill_after_backup(&out.manifest) {
                    Ok(Some(r)) if r.result.is_err() => {
                        warn!(schedule = %s.name, backup = %name, "the restore drill after the scheduled backup failed");
                    }
                    Err(e) => warn!(schedule = %s.name, backup = %name, error = %e, "the restore drill after the scheduled backup could not run"),
                    _ => {}
                }
            });
            if let Some(r) = running {
                r.fetch_sub(1, Ordering::SeqCst);
            }
            result
        };
        // A missed slot is an event of its own; the others come from the backups.
        let mut on_event = |e: &Event| {
            log_event(e);
            if let Event::Missed { schedule, slot } = e
                && let Some(i) = schedules.iter().position(|o| o.name == *schedule)
            {
                let ops = &runners[i];
                let mut n = ops.event(crate::notify::EventKind::ScheduleMissed);
                n.series = Some(schedules[i].series.clone());
                n.error = Some(format!(
                    "the slot of {} was missed while dbkeep was not running (catch_up is off)",
                    slot.to_rfc3339()
                ));
                ops.notify(n);
            }
        };
        info!(schedules = schedules.len(), "scheduler started");
        runner::run(schedules, clock, &mut backup, &last_success, &mut on_event);
        info!("scheduler stopped");
        Ok(())
    }
}

fn log_event(e: &Event) {
    match e {
        Event::Started {
            schedule,
            backup,
            slot,
        } => {
            info!(%schedule, %backup, slot = %slot.to_rfc3339(), "scheduled backup started");
        }
        Event::Succeeded {
            schedule, backup, ..
        } => {
            info!(%schedule, %backup, "scheduled backup succeeded");
        }
        Event::Failed {
            schedule,
            backup,
            attempt,
            error,
            retry_at,
            ..
        } => match retry_at {
            Some(at) => {
                warn!(%schedule, %backup, attempt, %error, retry_at = %at.to_rfc3339(), "scheduled backup failed; it is tried again");
            }
            None => {
                error!(%schedule, %backup, attempt, %error, "scheduled backup failed; this slot is given up, the next one runs on schedule");
            }
        },
        Event::Missed { schedule, slot } => {
            error!(%schedule, slot = %slot.to_rfc3339(), "a scheduled backup was missed while dbkeep was not running (catch_up is off)");
        }
    }
}
