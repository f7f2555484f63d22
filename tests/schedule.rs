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
            .contains("fast  * * * * * * (UTC)  series fast  next "),
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
        text.contains("dbkeep_backup_last_success{database=\"app.db\",series=\"api\"} 1"),
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
