//! `dbkeep schedule run` (and the scheduler of `dbkeep serve`): the configured schedules'
//! backups, each with the schedule's compression and drill, waiting for the repository lock
//! like any backup; and `dbkeep schedule list`: each schedule's next run and last outcome,
//! read from the repository.

use super::*;
use crate::error::Error;
use crate::schedule::runner::{self, Clock, Event};
use crate::schedule::{Schedule, plan};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{error, info, warn};

/// A schedule as `dbkeep schedule list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleStatus {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub series: String,
    pub next_run: Option<String>,
    /// The newest backup attempt of the series: its name, whether it succeeded, when.
    pub last_backup: Option<String>,
    pub last_success: Option<bool>,
    pub last_at: Option<String>,
}

impl Ops {
    /// Each schedule's next run after `now` and the newest attempt of its series.
    pub fn schedule_status(&self, now: DateTime<Utc>) -> Result<Vec<ScheduleStatus>, Error> {
        let cat = self.catalog()?;
        Ok(self
            .settings
            .schedules
            .iter()
            .map(|s| {
                let last = cat.backups.iter().find(|m| m.series == s.series);
                ScheduleStatus {
                    name: s.name.clone(),
                    cron: s.cron_text.clone(),
                    timezone: s.tz.name().to_owned(),
                    series: s.series.clone(),
                    next_run: plan::next_slot(s, now).map(|t| t.with_timezone(&s.tz).to_rfc3339()),
                    last_backup: last.map(|m| m.backup_name.clone()),
                    last_success: last.map(|m| m.success),
                    last_at: last.map(|m| m.timestamp_text()),
                }
            })
            .collect())
    }

    /// Runs the schedules until `clock` says stop (a termination signal for the system clock);
    /// `running` counts a backup under way (the server's grace period waits for it).
    pub fn run_schedules(
        &self,
        clock: &dyn Clock,
        running: Option<&std::sync::atomic::AtomicUsize>,
    ) -> Result<(), Error> {
        let schedules = &self.settings.schedules;
        if schedules.is_empty() {
            return Err(Error::NoSchedules);
        }
        // Each schedule's own settings: its compression and drill.
        let mut runners: Vec<Ops> = Vec::with_capacity(schedules.len());
        for s in schedules {
            let mut settings = self.settings.clone();
            if let Some(c) = s.compression {
                settings.compression = c;
                settings.compress = c != crate::codec::Compression::None;
            }
            if let Some(d) = s.drill {
                settings.drill = d;
            }
            let ops = Ops::new(settings)?;
            runners.push(if self.catch_signals {
                ops
            } else {
                ops.without_signal_handlers()
            });
        }
        let cat = self.catalog()?;
        let last_success = |s: &Schedule| {
            cat.backups
                .iter()
                .find(|m| m.success && m.series == s.series)
                .map(|m| m.timestamp)
        };
        let mut backup = |s: &Schedule, name: &str| {
            use std::sync::atomic::Ordering;
            let i = schedules.iter().position(|o| o.name == s.name).unwrap_or(0);
            let ops = &runners[i];
            let req = BackupRequest {
                name: Some(name.to_owned()),
                series: Some(s.series.clone()),
                compress: None,
                replace: false,
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
        info!(schedules = schedules.len(), "scheduler started");
        runner::run(schedules, clock, &mut backup, &last_success, &mut log_event);
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
