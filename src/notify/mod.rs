//! Notifications: typed events (a backup succeeded or failed, a drill passed or failed, …)
//! sent to the channels of the config file's `[channels.NAME]` tables that the event's
//! database or schedule subscribes to (`notify = [...]`) and whose `on = [...]` filter takes it.
//!
//! - [`channel`]: the tables, checked, and each kind's request (a generic JSON webhook signed
//!   with HMAC-SHA256, Slack, Discord, Microsoft Teams, ntfy, a healthchecks.io-style ping);
//! - [`email`]: SMTP through lettre (STARTTLS, TLS, or plain to a loopback relay only).
//!
//! Sending never fails what it reports: each channel is tried a bounded number of times with a
//! doubling delay, and a channel that still fails is logged (by name: its URL may hold a token)
//! and returned as a failed [`Delivery`], which `ops` records in the repository for the
//! statistics and `/metrics`. Payloads carry what the spec's results carry — never a URL, a
//! password or a key.

pub mod channel;
pub mod email;
#[cfg(test)]
mod tests;

pub use channel::{Channel, ChannelError, ChannelTable};
use serde::Serialize;
use std::collections::BTreeMap;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    BackupStarted,
    BackupSucceeded,
    BackupFailed,
    DrillPassed,
    DrillFailed,
    RestoreDone,
    RestoreFailed,
    CopyFailed,
    PruneFailed,
    /// A scheduled slot found undone at start, with `catch_up` off.
    ScheduleMissed,
    /// A backup succeeded after the series' previous attempt had failed.
    Recovered,
    /// The WAL stream met a gap, a lost slot, a conflicting segment or an archive it cannot
    /// write: point-in-time recovery past it is at risk.
    WalFailed,
    /// `dbkeep notify test`.
    Test,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        EventKind::BackupStarted,
        EventKind::BackupSucceeded,
        EventKind::BackupFailed,
        EventKind::DrillPassed,
        EventKind::DrillFailed,
        EventKind::RestoreDone,
        EventKind::RestoreFailed,
        EventKind::CopyFailed,
        EventKind::PruneFailed,
        EventKind::ScheduleMissed,
        EventKind::Recovered,
        EventKind::WalFailed,
        EventKind::Test,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::BackupStarted => "backup_started",
            EventKind::BackupSucceeded => "backup_succeeded",
            EventKind::BackupFailed => "backup_failed",
            EventKind::DrillPassed => "drill_passed",
            EventKind::DrillFailed => "drill_failed",
            EventKind::RestoreDone => "restore_done",
            EventKind::RestoreFailed => "restore_failed",
            EventKind::CopyFailed => "copy_failed",
            EventKind::PruneFailed => "prune_failed",
            EventKind::ScheduleMissed => "schedule_missed",
            EventKind::Recovered => "recovered",
            EventKind::WalFailed => "wal_failed",
            EventKind::Test => "test",
        }
    }

    /// Whether this reports something that went wrong.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            EventKind::BackupFailed
                | EventKind::DrillFailed
                | EventKind::RestoreFailed
                | EventKind::CopyFailed
                | EventKind::PruneFailed
                | EventKind::ScheduleMissed
                | EventKind::WalFailed
        )
    }

    /// Whether this reports something that went well (not a start).
    pub fn is_success(self) -> bool {
        matches!(
            self,
            EventKind::BackupSucceeded | EventKind::DrillPassed | EventKind::RestoreDone
        )
    }

    fn headline(self) -> &'static str {
        match self {
            EventKind::BackupStarted => "backup started",
            EventKind::BackupSucceeded => "backup succeeded",
            EventKind::BackupFailed => "backup FAILED",
            EventKind::DrillPassed => "restore drill passed",
            EventKind::DrillFailed => "restore drill FAILED",
            EventKind::RestoreDone => "restore done",
            EventKind::RestoreFailed => "restore FAILED",
            EventKind::CopyFailed => "copy to another repository FAILED",
            EventKind::PruneFailed => "retention could not delete",
            EventKind::ScheduleMissed => "scheduled backup MISSED",
            EventKind::WalFailed => "WAL archiving FAILED",
            EventKind::Recovered => "backups recovered",
            EventKind::Test => "test notification",
        }
    }
}

/// One event, as every channel receives it (the generic webhook's JSON body).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: EventKind,
    /// Whether it reports success (the spec's `success` field).
    pub success: bool,
    /// The configured database (`default` for `DATABASE_URL`'s).
    pub database: String,
    pub backup_name: Option<String>,
    pub series: Option<String>,
    pub schedule: Option<String>,
    /// What went wrong (dbkeep's error text: it never holds a secret).
    pub error: Option<String>,
    pub file_size: Option<u64>,
    pub duration: Option<f64>,
    pub timestamp: String,
    pub host: String,
}

impl Event {
    pub fn new(event: EventKind, database: &str) -> Self {
        Self {
            event,
            success: !event.is_failure(),
            database: database.to_owned(),
            backup_name: None,
            series: None,
            schedule: None,
            error: None,
            file_size: None,
            duration: None,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// One line for people: `dbkeep: backup FAILED: nightly_… of database shop (host): …`.
    pub fn summary(&self) -> String {
        let mut s = format!("dbkeep: {}", self.event.headline());
        if let Some(n) = &self.backup_name {
            s.push_str(&format!(": {n}"));
        }
        s.push_str(&format!(" of database {}", self.database));
        if let Some(sch) = &self.schedule {
            s.push_str(&format!(" (schedule {sch})"));
        }
        if !self.host.is_empty() {
            s.push_str(&format!(" on {}", self.host));
        }
        if let Some(e) = &self.error {
            let short: String = e.chars().take(500).collect();
            s.push_str(&format!(": {short}"));
        }
        s
    }
}

/// How sending an event to one channel went.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub channel: String,
    pub attempts: u32,
    pub result: Result<(), String>,
}

/// Sends `event` to each of `channels` whose filter takes it (all of them for a test event),
/// in parallel; returns how each went. Never panics, never fails.
pub fn send(channels: &[&Channel], event: &Event) -> Vec<Delivery> {
    let wanted: Vec<&&Channel> = channels
        .iter()
        .filter(|c| event.event == EventKind::Test || c.wants(event.event))
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = wanted
            .iter()
            .map(|c| scope.spawn(|| c.deliver(event)))
            .collect();
        handles
            .into_iter()
            .zip(&wanted)
            .map(|(h, c)| {
                h.join().unwrap_or_else(|_| Delivery {
                    channel: c.name.clone(),
                    attempts: 0,
                    result: Err("sending panicked".into()),
                })
            })
            .collect()
    })
}

/// Each channel's record in a repository (`notifications.status.json`): failures since it
/// was first used there, and the last of each outcome. Shown by the statistics and
/// `/metrics`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ChannelStatus {
    pub failures: u64,
    pub last_failure: Option<String>,
    pub last_error: Option<String>,
    pub last_success: Option<String>,
}

/// The repository key of [`ChannelStatus`]es by channel name.
pub const STATUS_KEY: &str = "notifications.status.json";

/// `status` with `deliveries` counted in.
pub fn record(status: &mut BTreeMap<String, ChannelStatus>, deliveries: &[Delivery], at: &str) {
    for d in deliveries {
        let s = status.entry(d.channel.clone()).or_default();
        match &d.result {
            Ok(()) => s.last_success = Some(at.to_owned()),
            Err(e) => {
                s.failures += 1;
                s.last_failure = Some(at.to_owned());
                s.last_error = Some(e.chars().take(300).collect());
            }
        }
    }
}
