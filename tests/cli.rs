//! The command line: names, flags, JSON shapes, retention, exit codes, concurrency.

use crate::common::TestEnv;
use crate::sqlite::sqlite_env;
use std::path::Path;

#[test]
fn bad_names_are_refused_before_anything_is_written() {
    let env = sqlite_env(3);
    let long = "a".repeat(200);
    for (name, expected) in [
        ("../x", "must start"),
        ("a/b", "contains '/'"),
        ("", "empty"),
        (long.as_str(), "200 characters"),
        ("bäckup", "contains 'ä'"),
        ("x y", "contains ' '"),
    ] {
        let o = env.run(&["backup", "--name", name]);
        o.code(2);
        assert!(o.stderr.contains(expected), "{name:?}: {}", o.stderr);
        assert!(
            !env.backup_dir().exists(),
            "{name:?} created the backup directory"
        );
        for cmd in ["restore", "delete", "verify"] {
            let args: Vec<&str> = if cmd == "verify" {
                vec![cmd, name]
            } else {
                vec![cmd, name, "--yes"]
            };
            env.run(&args).code(2);
        }
    }
    env.run(&["backup", "--name", "ok", "--series", "../evil"])
        .code(2);
    assert!(!env.backup_dir().exists());
    assert!(!env.path().parent().unwrap().join("x.db.gz").exists());
}

#[test]
fn existing_name_is_refused_unless_replace() {
    let env = sqlite_env(3);
    env.run(&["backup", "--name", "same"]).ok();
    let first = env.manifest("same");
    let o = env.run(&["backup", "--name", "same"]);
    o.code(2);
    assert!(o.stderr.contains("already exists") && o.stderr.contains("--replace"));
    assert_eq!(
        env.manifest("same"),
        first,
        "the existing backup is untouched"
    );
    // --replace with another compression: the new data file replaces the old one.
    env.run(&["backup", "--name", "same", "--replace", "--no-compress"])
        .ok();
    let second = env.manifest("same");
    assert_ne!(second["timestamp"].as_str(), None);
    assert_eq!(second["compressed"], false);
    assert_eq!(env.files(), vec!["same.db", "same.manifest.json"]);
    env.run(&["verify", "same"]).ok();
    // --replace with the same codec: the new data goes to a new file, so the old one is never
    // overwritten before the new manifest is committed; the old file is removed after.
    env.run(&["backup", "--name", "same", "--replace", "--no-compress"])
        .ok();
    let third = env.manifest("same");
    let data = third["data_file"].as_str().unwrap().to_owned();
    assert!(
        data.starts_with("same.") && data.ends_with(".db") && data != "same.db",
        "{data}"
    );
    assert_eq!(env.files(), vec![data.as_str(), "same.manifest.json"]);
    env.run(&["verify", "same"]).ok();
}

#[test]
fn prune_never_deletes_files_it_did_not_write() {
    let env = sqlite_env(3);
    env.run(&["backup", "--name", "mine"]).ok();
    // A file that looks like a backup but that no manifest names, two days old.
    let stranger = env.backup_dir().join("app.db");
    std::fs::write(&stranger, b"someone's database").unwrap();
    crate::common::two_days_old(&stranger);
    let o = env.run(&["prune"]);
    o.ok();
    assert!(stranger.exists(), "prune left the stranger alone");
    assert!(o.stdout.contains("app.db"), "and said so: {}", o.stdout);
}

#[test]
fn failed_replace_keeps_the_good_backup_and_is_listed_first() {
    let mut env = sqlite_env(3);
    env.run(&["backup", "--name", "keepme"]).ok();
    env.set("DATABASE_URL", "sqlite:///gone.db");
    env.run(&["backup", "--name", "keepme", "--replace"])
        .code(1);
    assert_eq!(env.manifest("keepme")["success"], true);
    let list = env.list();
    assert_eq!(
        list["backups"][0]["success"], false,
        "the alert script reads .backups[0].success"
    );
    assert_eq!(list["backups"][1]["success"], true);
    env.run(&["verify", "keepme"]).ok();
}

#[test]
fn quiet_prints_nothing_on_success_and_only_the_error_on_failure() {
    let mut env = sqlite_env(3);
    let o = env.run(&["backup", "--quiet"]);
    o.ok();
    assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("", ""));
    assert!(env.log().contains("INFO"), "{}", env.log());
    env.set("DATABASE_URL", "sqlite:///gone.db");
    let o = env.run(&["backup", "--quiet"]);
    o.code(1);
    assert_eq!(o.stdout, "");
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.starts_with("error: "));
    assert!(
        env.log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("gone.db"))
    );
}

#[test]
fn list_json_has_the_spec_shape_newest_first() {
    let env = sqlite_env(3);
    env.run(&["backup", "--name", "first"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.run(&["backup", "--name", "second"]).ok();
    let list = env.list();
    let b = &list["backups"];
    assert_eq!(b[0]["backup_name"], "second");
    assert_eq!(b[1]["backup_name"], "first");
    for key in [
        "backup_name",
        "file_path",
        "file_size",
        "compressed",
        "database_type",
        "timestamp",
        "duration",
        "success",
        "sha256",
    ] {
        assert!(!b[0][key].is_null(), "missing {key}: {}", b[0]);
    }
    let ts = b[0]["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == 20, "RFC 3339 UTC: {ts}");
    assert_eq!(b[0]["file_path"], "./backups/second.db.gz");
    let s = &list["statistics"];
    assert_eq!(s["total_backups"], 2);
    assert_eq!(s["backup_directory"], "./backups");
    assert!(s["total_size_mb"].is_number());

    let o = env.run(&["stats", "--json"]);
    o.ok();
    let st: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(st["successful_backups"], 2);
    assert_eq!(st["failed_backups"], 0);
    assert!(st["free_space_bytes"].as_u64().unwrap() > 0);
    assert_eq!(st["last_success"], b[0]["timestamp"]);
    // The human table names both.
    let o = env.run(&["list"]);
    assert!(o.stdout.contains("first") && o.stdout.contains("second"));
}

/// Moves a backup's timestamp `days` into the past (as if it had been taken then).
fn age(dir: &Path, name: &str, days: i64) {
    let p = dir.join(format!("{name}.manifest.json"));
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let t = chrono::Utc::now() - chrono::Duration::days(days);
    m["timestamp"] = t.format("%Y-%m-%dT%H:%M:%SZ").to_string().into();
    std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
}

#[test]
fn retention_per_series_from_the_cli() {
    let mut env = sqlite_env(3);
    let dir = env.backup_dir();
    // The spec's three cron lines sharing one folder with different BACKUP_RETENTION_DAYS.
    for (series, days, ages) in [
        ("daily", "7", 3),
        ("weekly", "30", 3),
        ("monthly", "365", 3),
    ] {
        env.set("BACKUP_RETENTION_DAYS", days);
        for i in 0..ages {
            env.run(&["backup", "--name", &format!("{series}_2024010{i}")])
                .ok();
        }
    }
    for (series, ages) in [
        ("daily", [20i64, 10, 8]),
        ("weekly", [60, 35, 14]),
        ("monthly", [400, 200, 100]),
    ] {
        for (i, a) in ages.iter().enumerate() {
            age(&dir, &format!("{series}_2024010{i}"), *a);
        }
    }
    let o = env.run(&["prune", "--dry-run"]);
    o.ok();
    assert!(
        o.stdout.contains("would delete daily_20240100"),
        "{}",
        o.stdout
    );
    assert_eq!(env.files().len(), 18, "a dry run deletes nothing");
    // One run deletes at most half of a series' successful backups, and says so.
    let o = env.run(&["prune"]);
    o.ok();
    assert!(
        o.stdout.contains(
            "note: retention would have deleted 2 of the 3 successful backups of series daily"
        ),
        "{}",
        o.stdout
    );
    assert_eq!(env.files().len(), 12, "one backup of each series");
    env.run(&["prune", "--force"]).ok();
    let names: Vec<String> = env.list()["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_name"].as_str().unwrap().to_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(
        names,
        vec![
            "daily_20240102", // newest of its series: kept whatever its age
            "monthly_20240101",
            "monthly_20240102",
            "weekly_20240102",
        ]
    );
    // A new daily backup applies its own 7 days to its own series only.
    env.set("BACKUP_RETENTION_DAYS", "7");
    let o = env.run(&["backup", "--name", "daily_20240201"]);
    o.ok();
    assert!(
        o.stdout.contains("retention deleted daily_20240102"),
        "{}",
        o.stdout
    );
    assert_eq!(env.list()["backups"].as_array().unwrap().len(), 4);
}

/// REVIEW A2: a manual monthly backup taken with the default 30 days must not cut a year of
/// monthlies kept with 365; only `prune --series monthly --retention-days N` may shorten them.
#[test]
fn a_run_with_a_shorter_retention_never_cuts_a_series_history() {
    let mut env = sqlite_env(3);
    let dir = env.backup_dir();
    env.set("BACKUP_RETENTION_DAYS", "365");
    for m in 1..=11 {
        let name = format!("monthly_2026{m:02}20");
        env.run(&["backup", "--name", &name]).ok();
        age(&dir, &name, 30 * (12 - i64::from(m)));
    }
    env.unset("BACKUP_RETENTION_DAYS");
    let o = env.run(&["backup", "--name", "monthly_20261201"]);
    o.ok();
    assert!(!o.stdout.contains("retention deleted"), "{}", o.stdout);
    assert_eq!(env.backups().len(), 12);
    // The API's create is the same use case: no deletions either.
    let o = env.run(&["prune"]);
    o.ok();
    assert!(!o.stdout.contains("delete "), "{}", o.stdout);
    assert_eq!(env.backups().len(), 12);
    // Shortening is explicit, for one series, and still at most half a run.
    let o = env.run(&["prune", "--retention-days", "30"]);
    o.code(2);
    assert!(o.stderr.contains("--series"), "{}", o.stderr);
    let o = env.run(&[
        "prune",
        "--series",
        "monthly",
        "--retention-days",
        "30",
        "--dry-run",
    ]);
    o.ok();
    assert_eq!(o.stdout.matches("would delete").count(), 6, "{}", o.stdout);
    assert!(
        o.stdout.contains("keep 30 days (--retention-days)"),
        "{}",
        o.stdout
    );
    // keep_min 0 would let retention delete the newest good backup: refused.
    let o = env.run_with(&[("BACKUP_KEEP_MIN", "0")], &["prune"]);
    o.code(2);
    assert!(o.stderr.contains("BACKUP_KEEP_MIN"), "{}", o.stderr);
    assert_eq!(env.backups().len(), 12);
}

#[test]
fn a_series_policy_keeps_its_calendar_and_a_pin_outlasts_it() {
    let mut env = sqlite_env(3);
    let dir = env.backup_dir();
    // Eight nightly backups ten days apart (ages 70 … 0 days), taken before the policy with a
    // retention that keeps them all.
    env.set("BACKUP_RETENTION_DAYS", "365");
    let name = |i: i64| format!("nightly_2026010{i}");
    for i in 0..8 {
        env.run(&["backup", "--name", &name(i), "--series", "nightly"])
            .ok();
        age(&dir, &name(i), 10 * (7 - i));
    }
    let o = env.run(&["pin", &name(0)]);
    o.ok();
    assert!(o.stdout.contains("pinned nightly_20260100"), "{}", o.stdout);
    assert_eq!(env.manifest(&name(0))["pinned"], true);
    assert_eq!(env.manifest(&name(0))["manifest_version"], 2);
    let o = env.run(&["list"]);
    assert!(o.stdout.contains("ok, pinned"), "{}", o.stdout);
    std::fs::write(
        env.path().join("dbkeep.toml"),
        "[series.nightly]\nkeep_daily = 2\nkeep_monthly = 2\n",
    )
    .unwrap();
    let o = env.run(&["prune", "--dry-run"]);
    o.ok();
    assert!(
        o.stdout
            .contains("policy [series.nightly]: keep_daily 2, keep_monthly 2 (UTC)"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("kept by the policy of series nightly: daily "),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("would delete nightly_20260101: kept by no rule"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("keep   nightly_20260100: pinned"),
        "{}",
        o.stdout
    );
    assert_eq!(env.backups().len(), 8, "a dry run deletes nothing");
    env.run(&["prune", "--force"]).ok();
    let names =
        |env: &TestEnv| -> Vec<String> { env.backups().into_iter().map(|(n, _)| n).collect() };
    let left = names(&env);
    for kept in [name(0), name(6), name(7)] {
        assert!(left.contains(&kept), "{kept} kept: {left:?}");
    }
    assert!(!left.contains(&name(1)), "{left:?}");
    // At most one of ages 20 to 60 is a month's newest.
    assert!(left.len() <= 4, "{left:?}");
    // Unpinned, the old backup is retention's again; its manifest reads as version 1 again.
    env.run(&["unpin", &name(0)]).ok();
    assert!(env.manifest(&name(0)).get("pinned").is_none());
    assert_eq!(env.manifest(&name(0))["manifest_version"], 1);
    env.run(&["prune"]).ok();
    assert!(!names(&env).contains(&name(0)));
    // A policy that keeps nothing is refused before anything runs.
    std::fs::write(
        env.path().join("dbkeep.toml"),
        "[series.nightly]\nkeep_daily = 0\n",
    )
    .unwrap();
    let o = env.run(&["prune"]);
    o.code(2);
    assert!(
        o.stderr
            .contains("[series.nightly]: the policy keeps nothing"),
        "{}",
        o.stderr
    );
}

#[test]
fn configuration_errors_exit_2_and_name_the_key() {
    let mut env = sqlite_env(1);
    std::fs::write(
        env.path().join("dbkeep.toml"),
        "backup_dir = \"b\"\nretention = 3\n",
    )
    .unwrap();
    let o = env.run(&["list"]);
    o.code(2);
    assert!(o.stderr.contains("retention"), "{}", o.stderr);
    std::fs::remove_file(env.path().join("dbkeep.toml")).unwrap();
    env.set("BACKUP_RETENTION_DAYS", "ten");
    let o = env.run(&["backup"]);
    o.code(2);
    assert!(o.stderr.contains("BACKUP_RETENTION_DAYS"));
    env.set("BACKUP_RETENTION_DAYS", "3");
    env.set("DATABASE_URL", "mongodb://u:hunter2@h/d");
    let o = env.run(&["backup"]);
    o.code(2);
    assert!(o.stderr.contains("mongodb") && !o.stderr.contains("hunter2"));
    let o = env.run(&["frobnicate"]);
    o.code(2);
    env.run(&["--help"]).ok();
}

#[test]
fn config_file_settings_apply_and_env_overrides() {
    let mut env = TestEnv::new();
    crate::sqlite::make_db(&env.path().join("f.db"), 2);
    std::fs::write(
        env.path().join("custom.toml"),
        "database_url = \"sqlite:///f.db\"\nbackup_dir = \"from_file\"\nbackup_compress = false\n",
    )
    .unwrap();
    env.run(&["--config", "custom.toml", "backup", "--name", "f1"])
        .ok();
    assert!(env.path().join("from_file/f1.db").exists());
    env.set("BACKUP_DIR", "from_env");
    env.run(&["--config", "custom.toml", "backup", "--name", "f2"])
        .ok();
    assert!(env.path().join("from_env/f2.db").exists());
    env.run(&[
        "--config",
        "custom.toml",
        "--backup-dir",
        "from_flag",
        "backup",
        "--name",
        "f3",
    ])
    .ok();
    assert!(env.path().join("from_flag/f3.db").exists());
}

#[test]
fn concurrent_backups_both_succeed() {
    let env = sqlite_env(2000);
    let spawn = |args: &[&str]| {
        env.command(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Two named and two default-named runs at the same moment.
    let mut children = vec![
        spawn(&["backup", "--name", "para_a"]),
        spawn(&["backup", "--name", "para_b"]),
        spawn(&["backup"]),
        spawn(&["backup"]),
    ];
    for c in &mut children {
        assert!(c.wait().unwrap().success());
    }
    let list = env.list();
    let backups = list["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 4, "{list}");
    assert!(backups.iter().all(|b| b["success"] == true));
    env.run(&["verify", "--all"]).ok();
    assert!(
        !env.files().iter().any(|f| f.starts_with(".dbkeep-tmp")),
        "{:?}",
        env.files()
    );
}

#[test]
fn files_and_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = sqlite_env(2);
    env.run(&["backup", "--name", "p"]).ok();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.backup_dir()), 0o700);
    assert_eq!(mode(&env.backup_dir().join("p.db.gz")), 0o600);
    assert_eq!(mode(&env.backup_dir().join("p.manifest.json")), 0o600);
    assert_eq!(mode(&env.path().join("backup.log")), 0o600);
}

#[test]
fn a_run_that_cannot_get_the_lock_is_recorded_as_failed() {
    let mut env = sqlite_env(3);
    env.run(&["backup", "--name", "first"]).ok();
    // Another process holds the repository lock.
    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .open(env.backup_dir().join(".dbkeep.lock"))
        .unwrap();
    lock.lock().unwrap();
    env.set("BACKUP_LOCK_TIMEOUT", "1");
    // A backup that waited out the lock failed: exit 1, not "bad usage" (2).
    let o = env.run(&["backup", "--name", "blocked"]);
    o.code(1);
    assert!(
        o.stderr.contains("locked by another dbkeep"),
        "{}",
        o.stderr
    );
    lock.unlock().unwrap();
    let list = env.list();
    assert_eq!(list["backups"][0]["backup_name"], "blocked");
    assert_eq!(list["backups"][0]["success"], false);
    env.run(&["backup", "--name", "blocked"]).ok();
}
