//! Series policies (calendar rules) with `now` injected: month ends, leap days, gaps, time
//! zones and DST, future-dated and pinned backups, failed attempts; and two properties over
//! random histories: the newest successful backup is never deleted, and a plan applied once
//! leaves nothing for a second run to delete.

use super::policy::Within;
use super::*;
use proptest::prelude::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("a test timestamp")
        .with_timezone(&Utc)
}

fn b(name: &str, at: DateTime<Utc>, success: bool) -> Candidate {
    Candidate {
        name: name.into(),
        database: "db".into(),
        series: "nightly".into(),
        timestamp: at,
        success,
        pinned: false,
        policy: Policy {
            retention_days: 30,
            keep_min: 1,
        },
    }
}

fn policy(table: SeriesTable) -> BTreeMap<String, SeriesPolicy> {
    let p = SeriesPolicy::from_table("nightly", &table).expect("a valid policy");
    BTreeMap::from([("nightly".to_owned(), p)])
}

fn run(backups: &[Candidate], policies: &BTreeMap<String, SeriesPolicy>, now: &str) -> Plan {
    plan(
        backups,
        &Rules {
            keep_min_at_least: 1,
            overrides: &|_, _| Override::default(),
            force: true,
            policies,
        },
        t(now),
    )
}

fn kept(p: &Plan) -> Vec<String> {
    let mut v: Vec<String> = p
        .decisions
        .iter()
        .filter(|d| d.action == Action::Keep)
        .map(|d| d.name.clone())
        .collect();
    v.sort();
    v
}

fn reason<'a>(p: &'a Plan, name: &str) -> &'a Reason {
    &p.decisions
        .iter()
        .find(|d| d.name == name)
        .expect("a decision for every backup")
        .reason
}

/// One successful backup a day at 02:00 UTC, `d_YYYY-MM-DD`, from `first` to `last`.
fn daily(first: &str, last: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut at = t(&format!("{first}T02:00:00Z"));
    let end = t(&format!("{last}T02:00:00Z"));
    while at <= end {
        out.push(b(&format!("d_{}", at.format("%Y-%m-%d")), at, true));
        at += Duration::days(1);
    }
    out
}

#[test]
fn seven_daily_four_weekly_twelve_monthly() {
    let backups = daily("2025-10-01", "2026-12-01");
    let policies = policy(SeriesTable {
        keep_daily: Some(7),
        keep_weekly: Some(4),
        keep_monthly: Some(12),
        ..Default::default()
    });
    let p = run(&backups, &policies, "2026-12-01T03:00:00Z");
    let mut expected: Vec<String> = [
        // Daily: the last seven days.
        "2026-11-25",
        "2026-11-26",
        "2026-11-27",
        "2026-11-28",
        "2026-11-29",
        "2026-11-30",
        "2026-12-01", // Weekly (ISO weeks end on Sunday): this week's newest, then Sundays.
        "2026-11-22",
        "2026-11-15", // Monthly: the newest of each of twelve months.
        "2026-10-31",
        "2026-09-30",
        "2026-08-31",
        "2026-07-31",
        "2026-06-30",
        "2026-05-31",
        "2026-04-30",
        "2026-03-31",
        "2026-02-28",
        "2026-01-31",
    ]
    .iter()
    .map(|d| format!("d_{d}"))
    .collect();
    expected.sort();
    assert_eq!(kept(&p), expected);
    assert_eq!(
        reason(&p, "d_2026-11-15"),
        &Reason::Policy {
            series: "nightly".into(),
            kept: vec!["weekly 2026-W46".into()]
        }
    );
    assert_eq!(
        reason(&p, "d_2026-11-30").to_string(),
        "kept by the policy of series nightly: daily 2026-11-30, monthly 2026-11"
    );
    // The newest is the one keep_min holds.
    assert!(matches!(
        reason(&p, "d_2026-12-01"),
        Reason::NewestSuccessful { rank: 1, .. }
    ));
    assert_eq!(
        reason(&p, "d_2025-12-31"),
        &Reason::OutsidePolicy {
            series: "nightly".into()
        }
    );
}

#[test]
fn a_leap_day_and_month_ends_are_their_months_newest() {
    let backups = daily("2028-02-27", "2028-03-01");
    let policies = policy(SeriesTable {
        keep_monthly: Some(2),
        ..Default::default()
    });
    let p = run(&backups, &policies, "2028-03-01T12:00:00Z");
    assert_eq!(kept(&p), ["d_2028-02-29", "d_2028-03-01"]);
}

#[test]
fn buckets_without_a_backup_do_not_count() {
    // Three backups in the last month, then one a month for a year: keep_daily = 5 reaches
    // back past the gap to the five newest days that hold one.
    let mut backups = vec![
        b("a", t("2026-12-01T02:00:00Z"), true),
        b("b", t("2026-11-20T02:00:00Z"), true),
        b("c", t("2026-11-05T02:00:00Z"), true),
    ];
    for m in 1..=10 {
        let at = t("2026-10-15T02:00:00Z") - Duration::days(30 * (m - 1));
        backups.push(b(&format!("m{m}"), at, true));
    }
    let policies = policy(SeriesTable {
        keep_daily: Some(5),
        ..Default::default()
    });
    let p = run(&backups, &policies, "2026-12-01T03:00:00Z");
    assert_eq!(kept(&p), ["a", "b", "c", "m1", "m2"]);
}

#[test]
fn days_are_the_series_time_zone_days() {
    // 14:00 and 16:00 UTC are one day in UTC, two in Tokyo (23:00, then 01:00 the next day).
    let backups = vec![
        b("early", t("2026-06-10T14:00:00Z"), true),
        b("late", t("2026-06-10T16:00:00Z"), true),
        b("older", t("2026-06-08T16:00:00Z"), true),
    ];
    let table = SeriesTable {
        keep_daily: Some(2),
        ..Default::default()
    };
    let utc = run(&backups, &policy(table.clone()), "2026-06-11T00:00:00Z");
    assert_eq!(kept(&utc), ["late", "older"]);
    let tokyo = run(
        &backups,
        &policy(SeriesTable {
            timezone: Some("Asia/Tokyo".into()),
            ..table
        }),
        "2026-06-11T00:00:00Z",
    );
    assert_eq!(kept(&tokyo), ["early", "late"]);
}

#[test]
fn dst_neither_skips_nor_doubles_a_local_day_or_hour() {
    // New York falls back on 2026-11-01: 01:00 local comes twice (05:00 and 06:00 UTC).
    let backups = vec![
        b("h00", t("2026-11-01T04:00:00Z"), true),
        b("h01_edt", t("2026-11-01T05:00:00Z"), true),
        b("h01_est", t("2026-11-01T06:00:00Z"), true),
        b("h02", t("2026-11-01T07:00:00Z"), true),
        b("prev_day", t("2026-10-31T20:00:00Z"), true),
    ];
    let p = run(
        &backups,
        &policy(SeriesTable {
            timezone: Some("America/New_York".into()),
            keep_hourly: Some(3),
            keep_daily: Some(2),
            ..Default::default()
        }),
        "2026-11-01T08:00:00Z",
    );
    // One local hour 01 (the newest of its two), one local day 2026-11-01, then the day before.
    assert_eq!(kept(&p), ["h00", "h01_est", "h02", "prev_day"]);
    // And spring forward (2026-03-08: 02:00 local does not exist): two daily backups at
    // 01:30 and 03:30 local are one day, the day before another.
    let spring = vec![
        b("before", t("2026-03-08T06:30:00Z"), true),
        b("after", t("2026-03-08T07:30:00Z"), true),
        b("sat", t("2026-03-07T06:30:00Z"), true),
    ];
    let p = run(
        &spring,
        &policy(SeriesTable {
            timezone: Some("America/New_York".into()),
            keep_daily: Some(2),
            ..Default::default()
        }),
        "2026-03-08T12:00:00Z",
    );
    assert_eq!(kept(&p), ["after", "sat"]);
}

#[test]
fn future_dated_backups_hold_no_calendar_slot() {
    let mut backups = daily("2026-11-28", "2026-12-01");
    backups.push(b("ahead", t("2026-12-05T02:00:00Z"), true));
    let p = run(
        &backups,
        &policy(SeriesTable {
            keep_last: Some(2),
            ..Default::default()
        }),
        "2026-12-01T03:00:00Z",
    );
    assert_eq!(kept(&p), ["ahead", "d_2026-11-30", "d_2026-12-01"]);
    assert!(matches!(reason(&p, "ahead"), Reason::FutureDated { .. }));
}

#[test]
fn within_and_retention_days_keep_the_young_and_pins_keep_the_old() {
    let mut backups = daily("2026-10-01", "2026-12-01");
    backups[0].pinned = true;
    backups.push(b("failed_new", t("2026-11-30T03:00:00Z"), false));
    backups.push(b("failed_old", t("2026-10-02T03:00:00Z"), false));
    let p = run(
        &backups,
        &policy(SeriesTable {
            keep_within: Some("1w".into()),
            retention_days: Some(10),
            ..Default::default()
        }),
        "2026-12-01T03:00:00Z",
    );
    let k = kept(&p);
    // 10 days by retention_days (the 7 of keep_within among them), the pin, the young failure.
    assert_eq!(k.len(), 1 + 10 + 1, "{k:?}");
    assert!(k.contains(&"d_2026-10-01".to_owned()) && k.contains(&"failed_new".to_owned()));
    assert_eq!(reason(&p, "d_2026-10-01"), &Reason::Pinned);
    assert_eq!(
        reason(&p, "d_2026-11-28").to_string(),
        "kept by the policy of series nightly: within 1w"
    );
    assert!(matches!(reason(&p, "failed_old"), Reason::Expired { .. }));
}

#[test]
fn an_override_sets_the_policy_aside_and_other_series_keep_their_own_retention() {
    let mut backups = daily("2026-11-01", "2026-12-01");
    let mut other = b("other_old", t("2026-11-10T02:00:00Z"), true);
    other.series = "manual".into();
    backups.push(other);
    let policies = policy(SeriesTable {
        keep_last: Some(1),
        ..Default::default()
    });
    let p = run(&backups, &policies, "2026-12-01T03:00:00Z");
    assert_eq!(kept(&p), ["d_2026-12-01", "other_old"]);
    let p = plan(
        &backups,
        &Rules {
            keep_min_at_least: 1,
            overrides: &|_, _| Override {
                retention_days: Some(20),
                keep_min: None,
            },
            force: true,
            policies: &policies,
        },
        t("2026-12-01T03:00:00Z"),
    );
    // 20 days of nightly, and the only backup of series manual (the keep-min guard).
    assert_eq!(kept(&p).len(), 21);
}

#[test]
fn bad_policies_are_refused_with_what_to_write() {
    let refuse = |t: SeriesTable| {
        SeriesPolicy::from_table("nightly", &t)
            .expect_err("refused")
            .to_string()
    };
    assert!(refuse(SeriesTable::default()).contains("keeps nothing"));
    assert!(
        refuse(SeriesTable {
            keep_daily: Some(0),
            ..Default::default()
        })
        .contains("keeps nothing")
    );
    let tz = refuse(SeriesTable {
        keep_daily: Some(7),
        timezone: Some("Mars/Olympus".into()),
        ..Default::default()
    });
    assert!(tz.contains("IANA") && tz.contains("Europe/Berlin"), "{tz}");
    for bad in ["30", "d", "3x", "1d1y", "0d", "1d2d"] {
        let e = refuse(SeriesTable {
            keep_within: Some(bad.into()),
            ..Default::default()
        });
        assert!(e.contains("not a duration"), "{bad}: {e}");
    }
    assert!(
        refuse(SeriesTable {
            keep_daily: Some(7),
            keep_min: Some(0),
            ..Default::default()
        })
        .contains("keep_min = 0")
    );
    for good in ["36h", "30d", "2w", "6m", "1y6m", "1y2m3d4h"] {
        assert!(Within::parse(good).is_some(), "{good}");
    }
    let w = Within::parse("1m").expect("valid");
    assert_eq!(
        w.cutoff(t("2026-03-31T00:00:00Z")),
        t("2026-02-28T00:00:00Z")
    );
}

fn history() -> impl Strategy<Value = Vec<(i64, bool, bool)>> {
    // Hours back from now (a few ahead: skewed clocks), success, pinned.
    prop::collection::vec(
        (
            -30i64..24 * 800,
            prop::bool::weighted(0.85),
            prop::bool::weighted(0.05),
        ),
        1..60,
    )
}

fn table() -> impl Strategy<Value = SeriesTable> {
    (
        0u32..4,
        0u32..5,
        0u32..8,
        0u32..5,
        0u32..13,
        0u32..3,
        prop::option::of(0u32..40),
    )
        .prop_map(
            |(last, hourly, daily, weekly, monthly, yearly, days)| SeriesTable {
                keep_last: Some(last),
                keep_hourly: Some(hourly),
                keep_daily: Some(daily),
                keep_weekly: Some(weekly),
                keep_monthly: Some(monthly),
                keep_yearly: Some(yearly),
                retention_days: days,
                timezone: Some("Europe/Berlin".into()),
                ..Default::default()
            },
        )
        .prop_filter("a policy that keeps something", |t| {
            SeriesPolicy::from_table("nightly", t).is_ok()
        })
}

proptest! {
    #[test]
    fn no_policy_deletes_the_newest_good_backup_and_a_second_run_deletes_nothing(
        h in history(), table in table(), force in any::<bool>()
    ) {
        let now = t("2026-12-01T03:00:00Z");
        let backups: Vec<Candidate> = h
            .iter()
            .enumerate()
            .map(|(i, (hours, ok, pin))| {
                let mut c = b(&format!("b{i}"), now - Duration::hours(*hours), *ok);
                c.pinned = *pin;
                c
            })
            .collect();
        let policies = policy(table);
        let rules = |force| Rules {
            keep_min_at_least: 1,
            overrides: &|_, _| Override::default(),
            force,
            policies: &policies,
        };
        let first = plan(&backups, &rules(force), now);
        let newest_good = backups
            .iter()
            .filter(|c| c.success && c.timestamp <= now + FUTURE_SLACK)
            .max_by(|a, b| a.timestamp.cmp(&b.timestamp).then(a.name.cmp(&b.name)));
        if let Some(n) = newest_good {
            let d = first.decisions.iter().find(|d| d.name == n.name).expect("decided");
            prop_assert_eq!(d.action, Action::Keep);
        }
        for c in backups.iter().filter(|c| c.pinned) {
            let d = first.decisions.iter().find(|d| d.name == c.name).expect("decided");
            prop_assert_eq!(d.action, Action::Keep);
        }
        if force {
            let left: Vec<Candidate> = backups
                .iter()
                .filter(|c| first.decisions.iter().any(|d| d.name == c.name && d.action == Action::Keep))
                .cloned()
                .collect();
            let second = plan(&left, &rules(true), now);
            let again: Vec<&str> = second
                .decisions
                .iter()
                .filter(|d| d.action == Action::Delete)
                .map(|d| d.name.as_str())
                .collect();
            prop_assert!(again.is_empty(), "a second run deletes {:?}", again);
        }
    }
}
