//! The retention rules, table-driven, with `now` injected.

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
        pinned: false,
        policy: P30,
    }
}

/// Candidates that recorded `policy`.
fn with(policy: Policy, b: Vec<Candidate>) -> Vec<Candidate> {
    b.into_iter().map(|c| Candidate { policy, ..c }).collect()
}

fn no_override(_: &str, _: &str) -> Override {
    Override::default()
}

/// The plan of a run whose own keep_min is 1, without overrides.
fn plan_at(b: &[Candidate], now: DateTime<Utc>, force: bool) -> Vec<Decision> {
    plan(
        b,
        &Rules {
            keep_min_at_least: 1,
            overrides: &no_override,
            force,
            policies: &BTreeMap::new(),
        },
        now,
    )
    .decisions
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
    let p = plan_at(&b, at(0), false);
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
    let p = plan_at(&b, at(0), false);
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
    let b: Vec<Candidate> = b
        .into_iter()
        .map(|c| {
            let retention_days = match c.series.as_str() {
                "daily" => 7,
                "weekly" => 30,
                _ => 365,
            };
            Candidate {
                policy: Policy {
                    retention_days,
                    keep_min: 1,
                },
                ..c
            }
        })
        .collect();
    let p = plan_at(&b, at(0), true);
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
    let b = with(
        Policy {
            retention_days: 30,
            keep_min: 2,
        },
        b,
    );
    assert_eq!(deleted(&plan_at(&b, at(0), false)), vec!["f1", "s1"]);
}

#[test]
fn keep_min_zero_still_keeps_the_newest_good_backup() {
    let b = with(
        Policy {
            retention_days: 30,
            keep_min: 0,
        },
        vec![c("s1", "x", -100, true), c("s0", "x", -200, true)],
    );
    let p = plan(
        &b,
        &Rules {
            keep_min_at_least: 0,
            overrides: &|_, _| Override {
                retention_days: None,
                keep_min: Some(0),
            },
            force: true,
            policies: &BTreeMap::new(),
        },
        at(0),
    )
    .decisions;
    assert_eq!(deleted(&p), vec!["s0"]);
}

#[test]
fn zero_days_turns_the_age_rule_off() {
    let b = with(
        Policy {
            retention_days: 0,
            keep_min: 1,
        },
        vec![c("s1", "x", -1000, true), c("s2", "x", -2000, false)],
    );
    assert!(deleted(&plan_at(&b, at(0), false)).is_empty());
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
    let p = plan_at(&b, at(0), false);
    assert!(
        !deleted(&p).contains(&"b_good"),
        "B keeps its last good backup"
    );
}

#[test]
fn future_dated_backups_are_kept_but_hold_no_keep_slot() {
    // A host with its clock in 2030 wrote one backup; the real ones go on failing, and the
    // last good one (60 days old) must not age out behind the skewed one.
    let mut b = vec![c("skewed", "x", 2000, true), c("last_good", "x", -60, true)];
    for day in 0..50 {
        b.push(c(&format!("fail_{day}"), "x", -day, false));
    }
    let p = plan_at(&b, at(0), false);
    assert!(!deleted(&p).contains(&"skewed"));
    assert!(!deleted(&p).contains(&"last_good"), "{p:?}");
    let good = p.iter().find(|d| d.name == "last_good").unwrap();
    assert_eq!(
        good.reason,
        Reason::NewestSuccessful {
            rank: 1,
            keep_min: 1
        }
    );
    let skewed = p.iter().find(|d| d.name == "skewed").unwrap();
    assert!(matches!(skewed.reason, Reason::FutureDated { .. }));
    // Within the slack, a timestamp a little ahead is an ordinary newest backup.
    let b = vec![c("ahead", "x", 0, true), c("old", "x", -40, true)];
    let now = at(0) - Duration::minutes(10);
    assert_eq!(deleted(&plan_at(&b, now, false)), vec!["old"]);
}

#[test]
fn a_backup_keeps_the_retention_it_recorded() {
    // Monthly backups kept for a year; a manual monthly taken with the default 30 days.
    let mut b: Vec<Candidate> = (1..=11)
        .map(|m| c(&format!("monthly_{m}"), "monthly", -30 * m, true))
        .collect();
    b = with(
        Policy {
            retention_days: 365,
            keep_min: 1,
        },
        b,
    );
    b.push(c("monthly_manual", "monthly", 0, true)); // recorded P30
    assert!(deleted(&plan_at(&b, at(0), false)).is_empty());
    // Only an explicit override shortens it, and then the cap still holds.
    let p = plan(
        &b,
        &Rules {
            keep_min_at_least: 1,
            overrides: &|_, s| Override {
                retention_days: (s == "monthly").then_some(30),
                keep_min: None,
            },
            force: false,
            policies: &BTreeMap::new(),
        },
        at(0),
    );
    assert_eq!(deleted(&p.decisions).len(), 6, "half of 12");
    assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
    assert!(p.notes[0].contains("prune --force"), "{:?}", p.notes);
}

#[test]
fn one_run_deletes_at_most_half_unless_forced() {
    // A clock that jumped a year ahead: everything is "expired".
    let b: Vec<Candidate> = (0..10)
        .map(|d| c(&format!("d{d}"), "d", -d, true))
        .collect();
    let later = at(400);
    let p = plan_at(&b, later, false);
    let gone = deleted(&p);
    assert_eq!(gone, vec!["d5", "d6", "d7", "d8", "d9"], "the oldest half");
    assert!(p.iter().any(|d| matches!(
        d.reason,
        Reason::Capped {
            limit: 5,
            successful: 10
        }
    )));
    assert_eq!(
        deleted(&plan_at(&b, later, true)).len(),
        9,
        "forced: all but keep_min"
    );
    // Failed attempts are not capped.
    let f: Vec<Candidate> = (0..10)
        .map(|d| c(&format!("f{d}"), "f", -40 - d, false))
        .collect();
    assert_eq!(deleted(&plan_at(&f, at(0), false)).len(), 10);
}

#[test]
fn a_run_raises_keep_min_but_never_lowers_it() {
    let b = with(
        Policy {
            retention_days: 30,
            keep_min: 3,
        },
        (0..4)
            .map(|d| c(&format!("d{d}"), "d", -40 - d, true))
            .collect(),
    );
    // The run asks for 1, the backups recorded 3: 3 are kept.
    assert_eq!(deleted(&plan_at(&b, at(0), true)), vec!["d3"]);
}

#[test]
fn empty_input_gives_empty_plan() {
    assert!(plan_at(&[], at(0), false).is_empty());
}
