//! The use cases that report to the notification channels: `backup`, `restore` and `prune`
//! wrap their work with the events it makes (started, succeeded or failed, recovered, a copy
//! or a deletion that failed), drills report from `drill`; `notify` sends one event to the
//! channels this database (or schedule) subscribes to and records how each delivery went in
//! the repository (`notifications.status.json`), for the statistics and `/metrics`. Nothing
//! here fails what it reports.

use super::*;
use crate::notify::{self, Channel, ChannelStatus, Delivery, Event, EventKind};
use std::collections::BTreeMap;

impl Ops {
    /// The channels of this database's events (its schedule's, for a scheduled run).
    fn channels(&self) -> Vec<&Channel> {
        let all = &self.settings.channels;
        match &self.settings.notify {
            Some(names) => names.iter().filter_map(|n| all.get(n)).collect(),
            None => all.values().collect(),
        }
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.channels().iter().any(|c| c.wants(kind))
    }

    /// An event of this database (and schedule).
    pub fn event(&self, kind: EventKind) -> Event {
        let mut e = Event::new(kind, &self.settings.database);
        e.schedule = self.schedule.clone();
        e
    }

    /// Sends `event` to the subscribed channels whose filter takes it; records the outcome.
    pub fn notify(&self, event: Event) -> Vec<Delivery> {
        let channels = self.channels();
        self.deliver(&channels, &event)
    }

    /// `dbkeep notify test CHANNEL`: a test event to that channel alone.
    pub fn notify_test(&self, channel: &str) -> Result<Delivery, Error> {
        let c = self.settings.channels.get(channel).ok_or_else(|| {
            crate::config::ConfigError::from(crate::notify::ChannelError::Unknown {
                place: "dbkeep notify test".into(),
                name: channel.to_owned(),
                known: self
                    .settings
                    .channels
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })?;
        let mut e = self.event(EventKind::Test);
        e.error = None;
        let mut d = self.deliver(&[c], &e);
        d.pop().ok_or_else(|| Error::Notification {
            channel: channel.to_owned(),
            problem: "nothing was sent".into(),
        })
    }

    fn deliver(&self, channels: &[&Channel], event: &Event) -> Vec<Delivery> {
        if channels.is_empty() {
            return Vec::new();
        }
        let deliveries = notify::send(channels, event);
        if !deliveries.is_empty() {
            let mut status = self.notification_status();
            notify::record(&mut status, &deliveries, &event.timestamp);
            let written = serde_json::to_vec_pretty(&status)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    self.storage
                        .put(notify::STATUS_KEY, &b)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = written {
                warn!(error = %e, "could not record the notifications' outcome in the repository");
            }
        }
        deliveries
    }

    /// Each channel's record in this repository (empty when none was ever used here).
    pub fn notification_status(&self) -> BTreeMap<String, ChannelStatus> {
        match self.storage.stat(notify::STATUS_KEY) {
            Ok(Some(_)) => self
                .storage
                .read_all(notify::STATUS_KEY)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
            _ => BTreeMap::new(),
        }
    }

    /// Takes a backup (see `ops/backup.rs`) and reports it.
    pub fn backup(&self, req: &BackupRequest) -> Result<BackupOutcome, Error> {
        let given_series = req.series.clone().or_else(|| {
            req.name
                .as_deref()
                .and_then(|n| crate::naming::BackupName::parse(n).ok())
                .map(|n| crate::naming::derive_series(&n))
        });
        if self.wants(EventKind::BackupStarted) {
            let mut e = self.event(EventKind::BackupStarted);
            e.backup_name = req.name.clone();
            e.series = given_series.clone();
            self.notify(e);
        }
        // The series' newest attempt before this one: a failed try of the same name is
        // replaced by its successful retry, so it is read now.
        let before_failed = given_series
            .as_ref()
            .filter(|_| self.wants(EventKind::Recovered))
            .and_then(|series| self.newest_attempt_failed(series));
        let result = self.take_backup(req);
        match &result {
            Ok(out) => {
                let m = &out.manifest;
                let mut e = self.event(EventKind::BackupSucceeded);
                e.backup_name = Some(m.backup_name.clone());
                e.series = Some(m.series.clone());
                e.file_size = Some(m.file_size);
                e.duration = Some(m.duration);
                self.notify(e.clone());
                let recovered = before_failed.unwrap_or_else(|| self.previous_attempt_failed(m));
                if self.wants(EventKind::Recovered) && recovered {
                    e.event = EventKind::Recovered;
                    self.notify(e.clone());
                }
                e.file_size = None;
                e.duration = None;
                for problem in &out.copy_errors {
                    e.event = EventKind::CopyFailed;
                    e.success = false;
                    e.error = Some(problem.clone());
                    self.notify(e.clone());
                }
                if !out.retention_errors.is_empty() {
                    e.event = EventKind::PruneFailed;
                    e.success = false;
                    e.error = Some(out.retention_errors.join("; "));
                    self.notify(e);
                }
            }
            Err(err) => {
                let mut e = self.event(EventKind::BackupFailed);
                e.backup_name = req.name.clone();
                e.series = given_series;
                e.error = Some(first_line(&err.to_string()));
                self.notify(e);
            }
        }
        result
    }

    /// Whether the newest attempt of `series` failed (`None`: it has none, or the catalog
    /// cannot be read).
    fn newest_attempt_failed(&self, series: &str) -> Option<bool> {
        let cat = self.catalog().ok()?;
        cat.backups
            .iter()
            .find(|b| b.series == series)
            .map(|b| !b.success)
    }

    /// Whether the attempt of `m`'s series before `m` failed (for a backup whose series was
    /// known only once it was named).
    fn previous_attempt_failed(&self, m: &Manifest) -> bool {
        let Ok(cat) = self.catalog() else {
            return false;
        };
        cat.backups
            .iter()
            .filter(|b| b.series == m.series && b.timestamp <= m.timestamp)
            .find(|b| !(b.success && b.backup_name == m.backup_name))
            .is_some_and(|b| !b.success)
    }

    /// Restores a backup (see `ops/restore.rs`) and reports it: into the configured database,
    /// or a base backup into the new data directory `pgdata`.
    pub fn restore(
        &self,
        name: &str,
        pgdata: Option<&std::path::Path>,
    ) -> Result<RestoreOutcome, Error> {
        let result = match pgdata {
            None => self.restore_unreported(name),
            Some(dir) => self.restore_base_unreported(name, dir),
        };
        let mut e = self.event(match &result {
            Ok(_) => EventKind::RestoreDone,
            Err(_) => EventKind::RestoreFailed,
        });
        e.backup_name = Some(name.to_owned());
        match &result {
            Ok(out) => {
                e.series = Some(out.manifest.series.clone());
                e.duration = Some(out.duration);
            }
            Err(err) => e.error = Some(first_line(&err.to_string())),
        }
        self.notify(e);
        result
    }

    /// Applies retention (see `ops/prune.rs`); deletions that failed are reported.
    pub fn prune(&self, opts: PruneOptions) -> Result<PruneOutcome, Error> {
        let dry_run = opts.dry_run;
        let result = self.prune_unreported(opts);
        let problem = match &result {
            Ok(out) if !out.errors.is_empty() => Some(out.errors.join("; ")),
            Err(err) if !dry_run => Some(first_line(&err.to_string())),
            _ => None,
        };
        if let Some(problem) = problem {
            let mut e = self.event(EventKind::PruneFailed);
            e.error = Some(problem);
            self.notify(e);
        }
        result
    }

    /// A drill's outcome (from `drill`).
    pub(super) fn notify_drill(&self, m: &Manifest, result: &Result<Vec<String>, Error>) {
        let mut e = self.event(match result {
            Ok(_) => EventKind::DrillPassed,
            Err(_) => EventKind::DrillFailed,
        });
        e.backup_name = Some(m.backup_name.clone());
        e.series = Some(m.series.clone());
        if let Err(err) = result {
            e.error = Some(first_line(&err.to_string()));
        }
        self.notify(e);
    }
}
