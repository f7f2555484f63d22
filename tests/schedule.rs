//! The scheduler for real: `dbkeep schedule run` and `dbkeep serve` with schedules of a few
//! seconds on a SQLite database, a slot missed while nothing ran, SIGTERM between runs.

use crate::api::{Server, TOKEN};
use crate::common::{TestEnv, wait_for};
use crate::sqlite::sqlite_env;
use reqwest::Method;
use std::process::{Child, Stdio};
use std::time::Duration;

fn config(env: &TestEnv, text: &str) {
    std::fs::write(env.path().join("dbkeep.toml"), text).unwrap();
}

fn names(env: &TestEnv, prefix: &str) -> Vec<String> {
    env.backups()
        .into_iter()
        .filter(|(n, ok)| *ok && n.starts_with(prefix))
        .map(|(n, _)| n)
        .collect()
}

fn start(env: &TestEnv) -> Child {
    env.command(&["schedule", "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dbkeep schedule run")
}

fn sigterm(child: &mut Child) -> i32 {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait().expect("wait").code().unwrap_or(-1)
}

#[test]
fn schedule_run_makes_each_schedules_backups_and_stops_on_sigterm() {
    let env = sqlite_env(50);
    config(
        &env,
        r#"
[[schedule]]
name = "fast"
cron = "* * * * * *"

[[schedule]]
name = "slow"
cron = "*/2 * * * * *"
series = "two"
name_template = "{series}_{datetime}"
compression = "zstd"
"#,
    );
    let o = env.run(&["schedule", "list"]);
    o.ok();
    assert!(
        o.stdout
            .contains("fast  * * * * * * (UTC)  database default  series fast  next "),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("no backup yet"), "{}", o.stdout);
    let mut child = start(&env);
    wait_for("three fast and two slow backups", || {
        names(&env, "fast_").len() >= 3 && names(&env, "two_").len() >= 2
    });
    assert_eq!(
        sigterm(&mut child),
        0,
        "SIGTERM between runs ends the loop cleanly"
    );
    let fast = names(&env, "fast_");
    let mut unique = fast.clone();
    unique.dedup();
    assert_eq!(fast, unique, "one backup per slot");
    for n in &fast {
        assert_eq!(n.len(), "fast_20261201_101010".len(), "{n}");
        assert_eq!(env.manifest(n)["series"], "fast");
    }
    let slow = names(&env, "two_")[0].clone();
    let m = env.manifest(&slow);
    assert_eq!(m["series"], "two");
    assert_eq!(m["compression"], "zstd", "the schedule's own codec");
    let o = env.run(&["schedule", "list"]);
    assert!(
        o.stdout.contains(&format!("last {} ok", fast[0])),
        "{}",
        o.stdout
    );
}

#[test]
fn a_slot_missed_while_nothing_ran_runs_once_at_start() {
    let env = sqlite_env(5);
    // A yearly slot whose last occurrence (1 January) has no backup: caught up at start, once.
    config(
        &env,
        "[[schedule]]\nname = \"yearly\"\ncron = \"@yearly\"\nname_template = \"{series}_{date}\"\n",
    );
    let year = chrono::Utc::now().format("%Y").to_string();
    let mut child = start(&env);
    wait_for("the catch-up backup", || !names(&env, "yearly_").is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sigterm(&mut child), 0);
    assert_eq!(names(&env, "yearly_"), [format!("yearly_{year}0101")]);
    // Started again: the slot is done, nothing runs.
    let mut child = start(&env);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sigterm(&mut child), 0);
    assert_eq!(names(&env, "yearly_").len(), 1);
}

#[test]
fn serve_runs_the_scheduler_and_metrics_see_its_backups() {
    let env = sqlite_env(5);
    config(
        &env,
        "[[schedule]]\nname = \"api\"\ncron = \"* * * * * *\"\n",
    );
    let s = Server::start(&env);
    wait_for("a scheduled backup", || !names(&env, "api_").is_empty());
    let r = s.raw(Method::GET, "/metrics", Some(TOKEN), None);
    let text = r.text().unwrap();
    assert!(
        text.contains("dbkeep_backup_last_success{database=\"default\",series=\"api\"} 1"),
        "{text}"
    );
    assert_eq!(s.stop(), 0);
}

#[test]
fn schedule_run_without_schedules_or_with_a_bad_one_is_refused() {
    let env = sqlite_env(1);
    let o = env.run(&["schedule", "run"]);
    o.code(2);
    assert!(o.stderr.contains("[[schedule]]"), "{}", o.stderr);
    config(&env, "[[schedule]]\nname = \"x\"\ncron = \"every day\"\n");
    let o = env.run(&["schedule", "list"]);
    o.code(2);
    assert!(o.stderr.contains("is not a cron pattern"), "{}", o.stderr);
}

/// Issue 13's whole picture, for real for a minute: two databases, each on its own schedule
/// every ten seconds, one of them failing (its file is gone), inside `dbkeep serve`.
#[test]
fn two_databases_on_two_schedules_for_a_minute_with_one_failing() {
    use crate::common::receiver::HttpReceiver;
    let rx = HttpReceiver::start();
    let env = TestEnv::new();
    crate::sqlite::make_db(&env.path().join("good.db"), 20);
    config(
        &env,
        &format!(
            r#"
[databases.good]
database_url = "sqlite:///good.db"

[databases.bad]
database_url = "sqlite:///gone/bad.db"

[[schedule]]
name = "good-fast"
database = "good"
cron = "*/10 * * * * *"
series = "fast"

[[schedule]]
name = "bad-fast"
database = "bad"
cron = "*/10 * * * * *"
series = "broken"
retries = 1
retry_delay_secs = 1

[channels.all]
type = "webhook"
url = "{}/events"
on = ["all"]
"#,
            rx.url
        ),
    );
    let s = Server::start(&env);
    std::thread::sleep(Duration::from_secs(60));
    let events: Vec<serde_json::Value> = rx.to("/events").iter().map(|r| r.json()).collect();
    let of = |db: &str, kind: &str| {
        events
            .iter()
            .filter(|e| e["database"] == db && e["event"] == kind)
            .collect::<Vec<_>>()
    };
    // Six slots a minute (the first may come late, the last may be under way).
    let good = of("good", "backup_succeeded");
    assert!(good.len() >= 5, "{events:#?}");
    assert!(
        good.iter()
            .all(|e| e["schedule"] == "good-fast" && e["series"] == "fast")
    );
    assert!(of("good", "backup_failed").is_empty(), "{events:#?}");
    let bad = of("bad", "backup_failed");
    assert!(bad.len() >= 8, "each slot and its retry: {events:#?}");
    assert!(bad.iter().all(|e| e["schedule"] == "bad-fast"));
    assert!(of("bad", "backup_succeeded").is_empty());
    let failed_slots: std::collections::BTreeSet<&str> = bad
        .iter()
        .map(|e| e["backup_name"].as_str().unwrap())
        .collect();
    assert!(
        bad.len() >= 2 * failed_slots.len() - 1,
        "every failed slot was retried once: {bad:#?}"
    );

    // The repositories: one each, with what the schedules made.
    let list = |db: &str| {
        let o = env.run(&["--database", db, "list", "--json"]);
        o.ok();
        serde_json::from_str::<serde_json::Value>(&o.stdout).unwrap()["backups"]
            .as_array()
            .unwrap()
            .clone()
    };
    let good_list = list("good");
    assert!(good_list.len() >= 5);
    assert!(
        good_list
            .iter()
            .all(|b| b["success"] == true && b["series"] == "fast")
    );
    let bad_list = list("bad");
    assert!(bad_list.len() >= 4, "{bad_list:#?}");
    assert!(
        bad_list
            .iter()
            .all(|b| b["success"] == false && b["series"] == "broken")
    );
    assert!(env.backup_dir().join("good").is_dir() && env.backup_dir().join("bad").is_dir());

    // Metrics and health see both.
    let text = s
        .raw(Method::GET, "/metrics", Some(TOKEN), None)
        .text()
        .unwrap();
    for line in [
        "dbkeep_backup_last_success{database=\"good\",series=\"fast\"} 1",
        "dbkeep_backup_last_success{database=\"bad\",series=\"broken\"} 0",
        "dbkeep_schedule_next_run_timestamp_seconds{database=\"good\",schedule=\"good-fast\",series=\"fast\"}",
        "dbkeep_schedule_next_run_timestamp_seconds{database=\"bad\",schedule=\"bad-fast\",series=\"broken\"}",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    let (status, h) = s.call(Method::GET, "/healthz", Some(TOKEN), None);
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h["databases"]["good"]["status"], "ok", "{h}");
    assert_eq!(
        h["databases"]["bad"]["reason"], "the last backup failed",
        "{h}"
    );
    let (_, stats) = s.call(
        Method::GET,
        "/api/backup/statistics?database=good",
        Some(TOKEN),
        None,
    );
    assert_eq!(stats["schedules"][0]["name"], "good-fast", "{stats}");
    assert_eq!(stats["schedules"][0]["last_success"], true, "{stats}");
    let o = env.run(&["schedule", "list"]);
    o.ok();
    assert!(
        o.stdout.contains("bad-fast") && o.stdout.contains("FAILED"),
        "{}",
        o.stdout
    );
    assert_eq!(s.stop(), 0);
}

#[test]
fn schedule_print_writes_crontab_lines_and_systemd_units_that_systemd_accepts() {
    let env = sqlite_env(1);
    config(
        &env,
        "[[schedule]]\nname = \"nightly\"\ncron = \"30 2 * * 1-5\"\ntimezone = \"Europe/Berlin\"\n\n[[schedule]]\nname = \"hourly\"\ncron = \"@hourly\"\ncatch_up = false\n",
    );
    let o = env.run(&["schedule", "print", "--cron"]);
    o.ok();
    assert!(
        o.stdout.contains("CRON_TZ=Europe/Berlin\n30 2 * * 1-5 "),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains(" --database default --quiet backup --series nightly\n"),
        "{}",
        o.stdout
    );
    let o = env.run(&["schedule", "print", "--systemd"]);
    o.ok();
    assert!(
        o.stdout
            .contains("OnCalendar=Mon..Fri *-*-* 02:30:00 Europe/Berlin"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("OnCalendar=*-*-* *:00:00 UTC\nPersistent=false"),
        "{}",
        o.stdout
    );
    // Split into files and let systemd check them.
    let dir = env.path().join("units");
    std::fs::create_dir(&dir).unwrap();
    let mut files = Vec::new();
    for chunk in o.stdout.split("# file: ").skip(1) {
        let (name, body) = chunk.split_once('\n').unwrap();
        std::fs::write(dir.join(name), body).unwrap();
        files.push(dir.join(name));
    }
    assert_eq!(files.len(), 4);
    if crate::common::require(
        "systemd-analyze",
        crate::common::have("systemd-analyze"),
        "systemd",
    ) {
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "timer"))
        {
            let text = std::fs::read_to_string(f).unwrap();
            let cal = text
                .lines()
                .find_map(|l| l.strip_prefix("OnCalendar="))
                .unwrap();
            let out = std::process::Command::new("systemd-analyze")
                .args(["calendar", cal])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cal}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Seconds cannot go into a crontab line: refused, with the reason.
    config(
        &env,
        "[[schedule]]\nname = \"s\"\ncron = \"*/10 * * * * *\"\n",
    );
    let o = env.run(&["schedule", "print", "--cron"]);
    o.code(2);
    assert!(o.stderr.contains("no seconds field"), "{}", o.stderr);
}
