//! Retention: which backups to keep and which to delete, as a pure function of the backups (each
//! with the policy it recorded when it was taken), what the run may override, and the current
//! time. Nothing here touches storage: `ops` executes the plan (and `prune --dry-run` only
//! prints it).
//!
//! Rules, per series of one database (two databases sharing a folder and a series name never
//! count each other's backups):
//! 1. The `keep_min` newest *successful* backups are kept whatever their age, so backups that keep
//!    failing never cost the last good one. A series' `keep_min` is the largest any of its
//!    backups recorded or the run asks for: a run can raise it, never lower it (only `prune
//!    --keep-min N --series S` can).
//! 2. Any other backup, successful or a failed attempt, is deleted once it is older than its
//!    *own* `retention_days`, the one it recorded: a run with a shorter retention never cuts a
//!    series' history (only `prune --retention-days N --series S` can). `0` keeps it forever.
//! 3. A backup dated in the future (more than [`FUTURE_SLACK`] ahead of now: a skewed clock) is
//!    kept, and holds no keep slot, so it can never stand in for the newest good backup.
//! 4. One run deletes at most half of a series' successful backups (the oldest first); what
//!    it spares says so. A clock that jumped a year ahead costs at most half. `force` lifts it.
//! 5. A pinned backup (`dbkeep pin`) is kept, and holds no keep slot.
//! 6. A series with a policy in the configuration (`[series.NAME]`, [`policy`]) keeps, besides
//!    rules 1, 3, 4 and 5, the successful backups its calendar rules name and deletes the other
//!    successful ones (its `retention_days`, if set, keeps younger ones too); failed attempts
//!    go by that `retention_days`, else by their own. `prune --retention-days/--keep-min` for
//!    the series set the policy aside for that run (rules 1 to 4).

pub mod policy;

use chrono::{DateTime, Duration, Utc};
pub use policy::{PolicyError, SeriesPolicy, SeriesTable};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// How far ahead of now a backup's timestamp may be before it counts as dated in the future.
pub const FUTURE_SLACK: Duration = Duration::hours(1);

/// How long a backup is kept, as recorded in its manifest, or as an override asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub retention_days: u32,
    pub keep_min: u32,
}

/// What a run may change of the policies the backups recorded, for one series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Override {
    pub retention_days: Option<u32>,
    pub keep_min: Option<u32>,
}

/// How a run applies retention.
pub struct Rules<'a> {
    /// The run's own `keep_min` (the settings'): raises a series' `keep_min`, never lowers it.
    pub keep_min_at_least: u32,
    /// `prune --retention-days / --keep-min` for the series named with `--series`.
    pub overrides: &'a dyn Fn(&str, &str) -> Override,
    /// `prune --force`: no limit on how much one run deletes.
    pub force: bool,
    /// The policies of the configuration, by series name.
    pub policies: &'a BTreeMap<String, SeriesPolicy>,
}

/// What retention needs to know of one backup.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    /// Which database the backup is of (type, host, name): retention groups by it and the series.
    pub database: String,
    pub series: String,
    pub timestamp: DateTime<Utc>,
    pub success: bool,
    /// `dbkeep pin`: never deleted by retention.
    pub pinned: bool,
    /// The policy the backup recorded when it was taken.
    pub policy: Policy,
}

/// The decisions, and what the run has to say about them (a limit that spared backups).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Delete,
}

/// Why a backup is kept or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Reason {
    /// One of the `keep_min` newest successful backups of its series.
    NewestSuccessful { rank: u32, keep_min: u32 },
    /// Younger than the retention period.
    WithinRetention { age_days: i64, retention_days: u32 },
    /// Older than the retention period.
    Expired { age_days: i64, retention_days: u32 },
    /// `retention_days = 0`: the age rule is off.
    AgeRuleOff,
    /// Dated in the future: kept, and holds no keep slot.
    FutureDated { hours_ahead: i64 },
    /// Would be deleted, but one run deletes at most half of a series' successful backups.
    Capped { limit: u32, successful: u32 },
    /// `dbkeep pin`.
    Pinned,
    /// Named by the calendar rules of the series' policy.
    Policy { series: String, kept: Vec<String> },
    /// Successful, but named by no rule of the series' policy.
    OutsidePolicy { series: String },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NewestSuccessful { rank, keep_min } => write!(
                f,
                "newest successful backup #{rank} of the series (at least {keep_min} are always kept)"
            ),
            Reason::WithinRetention {
                age_days,
                retention_days,
            } => write!(f, "{age_days} days old, within {retention_days} days"),
            Reason::Expired {
                age_days,
                retention_days,
            } => write!(f, "{age_days} days old, older than {retention_days} days"),
            Reason::AgeRuleOff => f.write_str("retention days is 0: the age rule is off"),
            Reason::FutureDated { hours_ahead } => write!(
                f,
                "dated {hours_ahead} hours in the future (a clock ahead?): kept, and it does not count as a newest backup"
            ),
            Reason::Capped { limit, successful } => write!(
                f,
                "expired, but kept: one run deletes at most {limit} of the series' {successful} successful backups (prune --force lifts the limit)"
            ),
            Reason::Pinned => {
                f.write_str("pinned: retention never deletes it (dbkeep unpin lifts that)")
            }
            Reason::Policy { series, kept } => {
                write!(
                    f,
                    "kept by the policy of series {series}: {}",
                    kept.join(", ")
                )
            }
            Reason::OutsidePolicy { series } => {
                write!(f, "kept by no rule of the policy of series {series}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub name: String,
    pub database: String,
    pub series: String,
    pub success: bool,
    pub action: Action,
    pub reason: Reason,
}

/// Plans retention for every (database, series) present in `backups` by the rules of the module.
/// Decisions come out grouped (sorted), newest first in a group.
pub fn plan(backups: &[Candidate], rules: &Rules<'_>, now: DateTime<Utc>) -> Plan {
    let mut groups: BTreeMap<(&str, &str), Vec<&Candidate>> = BTreeMap::new();
    for b in backups {
        groups
            .entry((b.database.as_str(), b.series.as_str()))
            .or_default()
            .push(b);
    }
    let mut out = Plan::default();
    for ((database, series), mut members) in groups {
        let over = (rules.overrides)(database, series);
        // An explicit override for the series sets its policy aside for this run.
        let policy = rules
            .policies
            .get(series)
            .filter(|_| over == Override::default());
        let recorded = members.iter().map(|b| b.policy.keep_min).max().unwrap_or(0);
        let asked = policy.and_then(|p| p.keep_min).unwrap_or(0);
        // Never 0: the newest good backup is always kept.
        let keep_min = over
            .keep_min
            .unwrap_or(recorded.max(rules.keep_min_at_least).max(asked))
            .max(1);
        // Newest first; the name breaks ties so the plan is deterministic.
        members.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then(b.name.cmp(&a.name)));
        let future = |b: &Candidate| b.timestamp.signed_duration_since(now) > FUTURE_SLACK;
        // The calendar rules see the successful backups that are not dated in the future.
        let mut calendar: HashMap<&str, Vec<String>> = HashMap::new();
        if let Some(p) = policy {
            let counted: Vec<&&Candidate> =
                members.iter().filter(|b| b.success && !future(b)).collect();
            let times: Vec<DateTime<Utc>> = counted.iter().map(|b| b.timestamp).collect();
            calendar = counted
                .iter()
                .map(|b| b.name.as_str())
                .zip(p.reasons(&times, now))
                .collect();
        }
        let mut successful_seen = 0u32;
        let first = out.decisions.len();
        for b in &members {
            let ahead = b.timestamp.signed_duration_since(now);
            let (action, reason) = if future(b) {
                (
                    Action::Keep,
                    Reason::FutureDated {
                        hours_ahead: ahead.num_hours(),
                    },
                )
            } else if b.pinned {
                (Action::Keep, Reason::Pinned)
            } else if b.success && successful_seen < keep_min {
                successful_seen += 1;
                (
                    Action::Keep,
                    Reason::NewestSuccessful {
                        rank: successful_seen,
                        keep_min,
                    },
                )
            } else if let Some(p) = policy {
                let kept = calendar.remove(b.name.as_str()).unwrap_or_default();
                if !kept.is_empty() {
                    let series = series.to_owned();
                    (Action::Keep, Reason::Policy { series, kept })
                } else if let Some(days) = p.retention_days {
                    age_rule(b.timestamp, days, now)
                } else if !b.success {
                    age_rule(b.timestamp, b.policy.retention_days, now)
                } else {
                    let series = series.to_owned();
                    (Action::Delete, Reason::OutsidePolicy { series })
                }
            } else {
                let retention_days = over.retention_days.unwrap_or(b.policy.retention_days);
                age_rule(b.timestamp, retention_days, now)
            };
            out.decisions.push(Decision {
                name: b.name.clone(),
                database: b.database.clone(),
                series: b.series.clone(),
                success: b.success,
                action,
                reason,
            });
        }
        if !rules.force {
            cap(&mut out, first, database, series);
        }
    }
    out
}

/// Spares the newest of the successful backups a group's decisions (from `first` on) would
/// delete beyond half of the group's successful backups, and says so.
fn cap(out: &mut Plan, first: usize, database: &str, series: &str) {
    let group = &mut out.decisions[first..];
    let successful = u32::try_from(group.iter().filter(|d| d.success).count()).unwrap_or(u32::MAX);
    let limit = successful / 2;
    let mut deleting = 0u32;
    let mut spared = 0u32;
    // Oldest first: the oldest are deleted, the newer spared.
    for d in group.iter_mut().rev() {
        if d.success && d.action == Action::Delete {
            if deleting < limit {
                deleting += 1;
            } else {
                d.action = Action::Keep;
                d.reason = Reason::Capped { limit, successful };
                spared += 1;
            }
        }
    }
    if spared > 0 {
        out.notes.push(format!(
            "retention would have deleted {} of the {successful} successful backups of series {series} of {database}; one run deletes at most half, so {spared} are kept for now: check the clock and the retention settings, then run `dbkeep prune --force` if that is right",
            deleting + spared
        ));
    }
}

fn age_rule(timestamp: DateTime<Utc>, retention_days: u32, now: DateTime<Utc>) -> (Action, Reason) {
    if retention_days == 0 {
        return (Action::Keep, Reason::AgeRuleOff);
    }
    let age = now.signed_duration_since(timestamp);
    let age_days = age.num_days();
    if age > Duration::days(i64::from(retention_days)) {
        (
            Action::Delete,
            Reason::Expired {
                age_days,
                retention_days,
            },
        )
    } else {
        (
            Action::Keep,
            Reason::WithinRetention {
                age_days,
                retention_days,
            },
        )
    }
}

#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
