//! Retention: which backups to keep and which to delete, as a pure function of the backups, the
//! policy of each series and the current time. Nothing here touches storage: `ops` executes the
//! plan (and `prune --dry-run` only prints it).
//!
//! Rules, per series of one database (two databases sharing a folder and a series name never
//! count each other's backups):
//! 1. The `keep_min` newest *successful* backups are kept whatever their age, so backups that keep
//!    failing never cost the last good one.
//! 2. Any other backup, successful or a failed attempt, is deleted once it is older than
//!    `retention_days`; `retention_days = 0` turns the age rule off (keep everything).

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// How long a series keeps its backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub retention_days: u32,
    pub keep_min: u32,
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

/// Plans retention for every (database, series) present in `backups`, using
/// `policy_of(database, series)`. Decisions come out grouped (sorted), newest first in a group.
pub fn plan(
    backups: &[Candidate],
    policy_of: impl Fn(&str, &str) -> Policy,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut groups: BTreeMap<(&str, &str), Vec<&Candidate>> = BTreeMap::new();
    for b in backups {
        groups
            .entry((b.database.as_str(), b.series.as_str()))
            .or_default()
            .push(b);
    }
    let mut out = Vec::with_capacity(backups.len());
    for ((database, series), mut members) in groups {
        let policy = policy_of(database, series);
        // Newest first; the name breaks ties so the plan is deterministic.
        members.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then(b.name.cmp(&a.name)));
        let mut successful_seen = 0u32;
        for b in members {
            let (action, reason) = if b.success && successful_seen < policy.keep_min {
                successful_seen += 1;
                (
                    Action::Keep,
                    Reason::NewestSuccessful {
                        rank: successful_seen,
                        keep_min: policy.keep_min,
                    },
                )
            } else {
                if b.success {
                    successful_seen += 1;
                }
                age_rule(b.timestamp, policy.retention_days, now)
            };
            out.push(Decision {
                name: b.name.clone(),
                database: b.database.clone(),
                series: b.series.clone(),
                success: b.success,
                action,
                reason,
            });
        }
    }
    out
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
mod tests {
    use super::*;

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-03-01T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + Duration::days(day)
    }

    fn c(name: &str, series: &str, day: i64, success: bool) -> Candidate {
        Candidate {
            name: name.into(),
            database: "db".into(),
            series: series.into(),
            timestamp: at(day),
            success,
        }
    }

    fn deleted(plan: &[Decision]) -> Vec<&str> {
        let mut v: Vec<&str> = plan
            .iter()
            .filter(|d| d.action == Action::Delete)
            .map(|d| d.name.as_str())
            .collect();
        v.sort();
        v
    }

    const P30: Policy = Policy {
        retention_days: 30,
        keep_min: 1,
    };

    #[test]
    fn deletes_only_what_is_older_than_the_period() {
        let b = vec![
            c("d_old", "d", -31, true),
            c("d_edge", "d", -30, true),
            c("d_new", "d", 0, true),
        ];
        let p = plan(&b, |_, _| P30, at(0));
        assert_eq!(deleted(&p), vec!["d_old"]);
    }

    #[test]
    fn forty_days_of_failures_keep_the_last_good_backup() {
        let mut b = vec![
            c("good", "daily", -41, true),
            c("older_good", "daily", -42, true),
        ];
        for day in 0..40 {
            b.push(c(&format!("fail_{day}"), "daily", -day, false));
        }
        let p = plan(&b, |_, _| P30, at(0));
        let d = deleted(&p);
        assert!(!d.contains(&"good"), "the last good backup must survive");
        assert!(d.contains(&"older_good"));
        // Failed attempts age out by the same rule.
        assert!(d.contains(&"fail_31") && d.contains(&"fail_39"));
        assert!(!d.contains(&"fail_30") && !d.contains(&"fail_0"));
        let good = p.iter().find(|x| x.name == "good").unwrap();
        assert_eq!(
            good.reason,
            Reason::NewestSuccessful {
                rank: 1,
                keep_min: 1
            }
        );
    }

    #[test]
    fn daily_weekly_monthly_in_one_folder_keep_each_other() {
        let mut b = Vec::new();
        for day in 0..400 {
            b.push(c(&format!("daily_{day}"), "daily", -day, true));
            if day % 7 == 0 {
                b.push(c(&format!("weekly_{day}"), "weekly", -day, true));
            }
            if day % 30 == 0 {
                b.push(c(&format!("monthly_{day}"), "monthly", -day, true));
            }
        }
        let policy = |_: &str, s: &str| Policy {
            retention_days: match s {
                "daily" => 7,
                "weekly" => 30,
                _ => 365,
            },
            keep_min: 1,
        };
        let p = plan(&b, policy, at(0));
        let kept = |series: &str| {
            p.iter()
                .filter(|d| d.series == series && d.action == Action::Keep)
                .count()
        };
        assert_eq!(kept("daily"), 8); // days 0..=7
        assert_eq!(kept("weekly"), 5); // days 0, 7, 14, 21, 28
        assert_eq!(kept("monthly"), 13); // days 0, 30, …, 360
        // The daily policy never reached into another series.
        assert!(
            p.iter()
                .filter(|d| d.series != "daily" && d.action == Action::Delete)
                .all(|d| d.reason
                    != Reason::Expired {
                        age_days: 8,
                        retention_days: 7
                    })
        );
    }

    #[test]
    fn keep_min_counts_only_successes_and_keeps_the_newest() {
        let b = vec![
            c("s1", "x", -100, true),
            c("s2", "x", -90, true),
            c("s3", "x", -80, true),
            c("f1", "x", -70, false),
        ];
        let p = plan(
            &b,
            |_, _| Policy {
                retention_days: 30,
                keep_min: 2,
            },
            at(0),
        );
        assert_eq!(deleted(&p), vec!["f1", "s1"]);
    }

    #[test]
    fn keep_min_zero_may_delete_everything_old() {
        let b = vec![c("s1", "x", -100, true)];
        let p = plan(
            &b,
            |_, _| Policy {
                retention_days: 30,
                keep_min: 0,
            },
            at(0),
        );
        assert_eq!(deleted(&p), vec!["s1"]);
    }

    #[test]
    fn zero_days_turns_the_age_rule_off() {
        let b = vec![c("s1", "x", -1000, true), c("s2", "x", -2000, false)];
        let p = plan(
            &b,
            |_, _| Policy {
                retention_days: 0,
                keep_min: 1,
            },
            at(0),
        );
        assert!(deleted(&p).is_empty());
    }

    #[test]
    fn two_databases_in_one_folder_never_count_each_other() {
        // A's nightly backups succeed; B's have failed for 40 days. Same default series.
        let mut b = vec![
            Candidate {
                database: "B".into(),
                ..c("b_good", "backup", -41, true)
            },
            Candidate {
                database: "A".into(),
                ..c("a_new", "backup", 0, true)
            },
        ];
        for day in 1..40 {
            b.push(Candidate {
                database: "B".into(),
                ..c(&format!("b_fail_{day}"), "backup", -day, false)
            });
        }
        let p = plan(&b, |_, _| P30, at(0));
        assert!(
            !deleted(&p).contains(&"b_good"),
            "B keeps its last good backup"
        );
    }

    #[test]
    fn future_timestamps_are_kept() {
        let b = vec![c("s1", "x", 5, true), c("s2", "x", 3, true)];
        assert!(deleted(&plan(&b, |_, _| P30, at(0))).is_empty());
    }

    #[test]
    fn empty_input_gives_empty_plan() {
        assert!(plan(&[], |_, _| P30, at(0)).is_empty());
    }
}
