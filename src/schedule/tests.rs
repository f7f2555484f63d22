//! The scheduler with an injected clock (nothing sleeps): DST in both directions, catch-up and
//! missed slots at start, retries with backoff that never count a failure as done, no
//! overlapping runs, names from the template.

use super::plan::{self, AtStart};
use super::runner::{self, Clock, Event};
use super::*;
use chrono::{DateTime, Utc};
use std::cell::{Cell, RefCell};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("a test time")
        .with_timezone(&Utc)
}

fn schedule(cron: &str, tz: &str) -> Schedule {
    Schedule::from_table(&ScheduleTable {
        name: "nightly".into(),
        cron: cron.into(),
        timezone: Some(tz.into()),
        ..Default::default()
    })
    .expect("a valid schedule")
}

/// The slots from `from` until `until`.
fn slots(s: &Schedule, from: &str, until: &str) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut at = t(from);
    while let Some(next) = plan::next_slot(s, at) {
        if next > t(until) {
            break;
        }
        out.push(next);
        at = next;
    }
    out
}

#[test]
fn a_daily_run_is_neither_skipped_nor_doubled_by_dst() {
    // Berlin springs forward on 2026-03-29 (02:00 → 03:00: 02:30 does not exist) and falls
    // back on 2026-10-25 (02:30 comes twice).
    let s = schedule("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        slots(&s, "2026-03-27T12:00:00Z", "2026-03-31T12:00:00Z"),
        [
            t("2026-03-28T01:30:00Z"), // 02:30 CET
            t("2026-03-29T01:00:00Z"), // the gap: 03:00 CEST, the first valid time after it
            t("2026-03-30T00:30:00Z"), // 02:30 CEST
            t("2026-03-31T00:30:00Z"),
        ]
    );
    assert_eq!(
        slots(&s, "2026-10-23T12:00:00Z", "2026-10-27T12:00:00Z"),
        [
            t("2026-10-24T00:30:00Z"), // 02:30 CEST
            t("2026-10-25T00:30:00Z"), // the first of the two 02:30s, once
            t("2026-10-26T01:30:00Z"), // 02:30 CET
            t("2026-10-27T01:30:00Z"),
        ]
    );
}

#[test]
fn shortcuts_seconds_and_bad_tables() {
    let s = schedule("@daily", "UTC");
    assert_eq!(
        plan::next_slot(&s, t("2026-12-01T10:00:00Z")),
        Some(t("2026-12-02T00:00:00Z"))
    );
    let s = schedule("*/10 * * * * *", "UTC");
    assert_eq!(
        plan::next_slot(&s, t("2026-12-01T10:00:01Z")),
        Some(t("2026-12-01T10:00:10Z"))
    );
    let refuse = |cron: &str, tz: Option<&str>, template: Option<&str>| {
        Schedule::from_table(&ScheduleTable {
            name: "n".into(),
            cron: cron.into(),
            timezone: tz.map(Into::into),
            name_template: template.map(Into::into),
            ..Default::default()
        })
        .expect_err("refused")
        .to_string()
    };
    assert!(refuse("61 * * * *", None, None).contains("is not a cron pattern"));
    assert!(refuse("@sometimes", None, None).contains("@daily"));
    assert!(refuse("@daily", Some("Berlin"), None).contains("IANA"));
    assert!(refuse("@daily", None, Some("{series}/../x")).contains("name_template"));
    let dup = ScheduleTable {
        name: "a".into(),
        cron: "@daily".into(),
        ..Default::default()
    };
    assert_eq!(
        Schedule::all(&[dup.clone(), dup]).expect_err("refused"),
        ScheduleError::Duplicate("a".into())
    );
}

#[test]
fn names_come_from_the_template_in_the_schedules_time_zone() {
    let mut s = schedule("0 30 23 * * *", "Asia/Tokyo");
    let slot = t("2026-12-01T14:30:00Z"); // 23:30 in Tokyo
    assert_eq!(plan::backup_name(&s, slot), "nightly_20261201_233000");
    s.name_template = "{series}_{date}".into();
    s.series = "db1".into();
    assert_eq!(plan::backup_name(&s, slot), "db1_20261201");
}

#[test]
fn at_start_a_missed_slot_runs_once_or_is_reported() {
    let mut s = schedule("0 2 * * *", "UTC");
    let now = t("2026-12-01T09:00:00Z");
    let slot = t("2026-12-01T02:00:00Z");
    assert_eq!(
        plan::at_start(&s, Some(t("2026-12-01T02:00:03Z")), now),
        AtStart::UpToDate
    );
    assert_eq!(
        plan::at_start(&s, Some(t("2026-11-30T02:00:03Z")), now),
        AtStart::CatchUp(slot)
    );
    assert_eq!(plan::at_start(&s, None, now), AtStart::CatchUp(slot));
    // A backup dated in the future (a skewed clock) does not count as done.
    assert_eq!(
        plan::at_start(&s, Some(t("2026-12-03T00:00:00Z")), now),
        AtStart::CatchUp(slot)
    );
    s.catch_up = false;
    assert_eq!(plan::at_start(&s, None, now), AtStart::Missed(slot));
}

#[test]
fn retry_delays_double_and_are_bounded() {
    let s = schedule("@daily", "UTC");
    let secs: Vec<u64> = (1..=8)
        .map(|a| plan::retry_delay(&s, a).as_secs())
        .collect();
    assert_eq!(secs, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
}

/// A clock that jumps to whatever the loop waits for, and stops the loop after `end`.
struct FakeClock {
    now: Cell<DateTime<Utc>>,
    end: DateTime<Utc>,
    /// How long each backup takes, in the fake time.
    run_takes: chrono::Duration,
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        self.now.get()
    }
    fn sleep_until(&self, t: DateTime<Utc>) -> bool {
        if t > self.end {
            return false;
        }
        if t > self.now.get() {
            self.now.set(t);
        }
        true
    }
}

#[test]
fn the_loop_catches_up_retries_with_backoff_and_never_overlaps() {
    let s = schedule("0 2 * * *", "UTC");
    let clock = FakeClock {
        now: Cell::new(t("2026-12-01T09:00:00Z")),
        end: t("2026-12-03T03:00:00Z"),
        run_takes: chrono::Duration::seconds(30),
    };
    let events = RefCell::new(Vec::new());
    let runs = RefCell::new(Vec::new());
    // The catch-up run of 12-01 fails twice, then works; 12-02 works; 12-03 fails for good.
    let mut failures_left = 2;
    let mut backup = |_: &Schedule, name: &str| {
        let started = clock.now();
        // Never two at once: each run starts after the previous one ended.
        if let Some((_, _, end)) = runs.borrow().last() {
            assert!(started >= *end);
        }
        clock.now.set(started + clock.run_takes);
        runs.borrow_mut()
            .push((name.to_owned(), started, clock.now()));
        if name.ends_with("20261203_020000") || failures_left > 0 {
            failures_left -= i32::from(!name.ends_with("20261203_020000"));
            Err("the database is down".to_owned())
        } else {
            Ok(())
        }
    };
    runner::run(
        std::slice::from_ref(&s),
        &clock,
        &mut backup,
        &|_| Some(t("2026-11-30T02:00:05Z")),
        &mut |e| events.borrow_mut().push(e.clone()),
    );
    let runs = runs.into_inner();
    let names: Vec<&str> = runs.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "nightly_20261201_020000", // caught up at start
            "nightly_20261201_020000", // retry 1, 60 s after the failure
            "nightly_20261201_020000", // retry 2, 120 s after the next
            "nightly_20261202_020000",
            "nightly_20261203_020000",
            "nightly_20261203_020000",
            "nightly_20261203_020000",
            "nightly_20261203_020000", // three retries, then given up
        ]
    );
    assert_eq!(runs[0].1, t("2026-12-01T09:00:00Z"));
    assert_eq!(runs[1].1, runs[0].2 + chrono::Duration::seconds(60));
    assert_eq!(runs[2].1, runs[1].2 + chrono::Duration::seconds(120));
    assert_eq!(runs[3].1, t("2026-12-02T02:00:00Z"));
    let events = events.into_inner();
    let gave_up = events.iter().filter(|e| {
        matches!(e, Event::Failed { retry_at: None, backup, .. } if backup == "nightly_20261203_020000")
    });
    assert_eq!(gave_up.count(), 1, "{events:?}");
    let succeeded: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Succeeded { .. }))
        .collect();
    assert_eq!(
        succeeded.len(),
        2,
        "a failed run is never counted as done: {events:?}"
    );
}

#[test]
fn a_retry_gives_way_to_the_next_slot_and_a_missed_slot_is_an_event() {
    let mut s = schedule("*/5 * * * *", "UTC");
    s.catch_up = false;
    s.retry_delay = std::time::Duration::from_secs(600);
    let clock = FakeClock {
        now: Cell::new(t("2026-12-01T09:01:00Z")),
        end: t("2026-12-01T09:11:00Z"),
        run_takes: chrono::Duration::seconds(1),
    };
    let names = RefCell::new(Vec::new());
    let events = RefCell::new(Vec::new());
    runner::run(
        std::slice::from_ref(&s),
        &clock,
        &mut |_, name| {
            clock.now.set(clock.now() + clock.run_takes);
            names.borrow_mut().push(name.to_owned());
            Err("down".into())
        },
        &|_| None,
        &mut |e| events.borrow_mut().push(e.clone()),
    );
    assert_eq!(
        names.into_inner(),
        ["nightly_20261201_090500", "nightly_20261201_091000"]
    );
    let events = events.into_inner();
    assert_eq!(
        events[0],
        Event::Missed {
            schedule: "nightly".into(),
            slot: t("2026-12-01T09:00:00Z")
        }
    );
}

#[test]
fn cron_patterns_become_on_calendar_expressions_or_are_refused() {
    use super::export::on_calendar;
    let cal = |cron: &str, tz: &str| on_calendar(&schedule(cron, tz));
    assert_eq!(
        cal("30 2 * * *", "Europe/Berlin").unwrap(),
        "*-*-* 02:30:00 Europe/Berlin"
    );
    assert_eq!(
        cal("0 3 * * 1-5", "UTC").unwrap(),
        "Mon..Fri *-*-* 03:00:00 UTC"
    );
    assert_eq!(
        cal("*/15 * 1 */2 *", "UTC").unwrap(),
        "*-01/2-01 *:00/15:00 UTC"
    );
    assert_eq!(cal("*/10 * * * * *", "UTC").unwrap(), "*-*-* *:*:00/10 UTC");
    assert_eq!(cal("@weekly", "UTC").unwrap(), "Sun *-*-* 00:00:00 UTC");
    assert_eq!(
        cal("0 0 * * SUN,sat", "UTC").unwrap(),
        "Sun,Sat *-*-* 00:00:00 UTC"
    );
    // cron ORs the day of the month and the weekday; OnCalendar cannot.
    let e = cal("0 0 1 * 1", "UTC").unwrap_err().to_string();
    assert!(e.contains("OR the weekday"), "{e}");
    assert!(cal("0 0 L * *", "UTC").is_err());
}

#[test]
fn crontab_lines_refuse_seconds_and_name_the_time_zone() {
    use super::export::{Invocation, crontab};
    let inv = Invocation {
        program: "/usr/bin/dbkeep".into(),
        config: Some("/etc/dbkeep/my config.toml".into()),
        working_dir: "/var/lib/dbkeep".into(),
    };
    let text = crontab(&[schedule("30 2 * * *", "Europe/Berlin")], &inv).unwrap();
    assert!(text.contains("CRON_TZ=Europe/Berlin\n30 2 * * * /usr/bin/dbkeep --config '/etc/dbkeep/my config.toml' --database default --quiet backup --series nightly\n"), "{text}");
    let e = crontab(&[schedule("*/10 * * * * *", "UTC")], &inv).unwrap_err();
    assert!(e.to_string().contains("no seconds field"), "{e}");
}
