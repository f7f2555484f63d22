//! Point-in-time recovery end to end against a real server: `dbkeep wal stream` archives WAL
//! while rows are committed in batches, a base backup is taken, and recovery to chosen times
//! (and to the end) gives a server holding exactly the rows committed before each target; a
//! target outside the window is refused with the window. `restore_command` is dbkeep's own
//! `wal fetch`, run by the recovering server.

use crate::common::{PgServer, TestEnv, wait_for};
use crate::postgres::{APP_PASSWORD, assert_no_secret, setup};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `dbkeep wal stream`, stopped with SIGTERM when dropped.
pub struct Stream(pub Child);

impl Stream {
    /// Starts it and waits until its slot is being read.
    pub fn start(pg: &PgServer, env: &TestEnv) -> Self {
        let stream = Stream(
            env.command(&["wal", "stream"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dbkeep wal stream"),
        );
        wait_for("the WAL stream's slot to be read", || {
            pg.sql(
                "postgres",
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'dbkeep' AND active",
            )
            .trim()
                == "1"
        });
        stream
    }

    /// SIGTERM; it must exit 0.
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "wal stream exited {status}");
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server's clock now, as a recovery target.
pub fn server_now(pg: &PgServer) -> String {
    pg.sql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
    .trim()
    .to_owned()
}

/// Completes the current WAL segment and waits until the stream has archived it.
fn archive_current_segment(pg: &PgServer, env: &TestEnv) -> String {
    archive_segment_into(pg, &env.backup_dir().join("wal"))
}

/// [`archive_current_segment`] for the archive whose objects are in `wal` (a bucket's prefix
/// on disk).
pub fn archive_segment_into(pg: &PgServer, wal: &std::path::Path) -> String {
    // A record first: a switch of an empty segment does nothing.
    pg.sql(
        "postgres",
        "SELECT pg_logical_emit_message(false, 'dbkeep-test', 'x')",
    );
    let segment = pg
        .sql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
        .trim()
        .to_owned();
    let record = wal.join(format!("{segment}.json"));
    wait_for(&format!("{segment} archived"), || record.exists());
    segment
}

/// Gives the repository to the postgres user when we are root: the recovering server runs
/// `restore_command` as that user.
pub fn let_the_server_read(env: &TestEnv) {
    if nix::unistd::geteuid().is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(env.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown the repository");
    }
}

/// Recovers into a new directory with `args`, starts a server on it, waits until it has
/// promoted, and returns the rows it holds (`count|max`).
pub fn recover(pg: &PgServer, env: &TestEnv, args: &[&str]) -> String {
    ticks(&recover_server(pg, env, args))
}

/// The rows of `ticks` (`count|max`).
pub fn ticks(pg: &PgServer) -> String {
    pg.sql(
        "appdb",
        "SELECT count(*) || '|' || coalesce(max(id), 0) FROM ticks",
    )
    .trim()
    .to_owned()
}

/// [`recover`], returning the promoted server.
pub fn recover_server(pg: &PgServer, env: &TestEnv, args: &[&str]) -> PgServer {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut all = vec!["restore", "--pgdata", data.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = env.run(&all);
    o.ok();
    assert!(o.stdout.contains("restore_command = '"), "{}", o.all());
    assert!(!o.all().contains(APP_PASSWORD), "{}", o.all());
    let restored = PgServer::adopt(pg.bin.clone(), dir);
    wait_for("the recovered server to promote", || {
        restored
            .try_sql_as("postgres", "postgres", "SELECT pg_is_in_recovery()")
            .is_ok_and(|v| v.trim() == "f")
    });
    restored
}

#[test]
fn recovery_to_a_point_holds_exactly_the_rows_committed_before_it() {
    let Some((pg, env)) = setup() else { return };
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    pg.sql_as(
        "app",
        "appdb",
        "CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    );
    let stream = Stream::start(&pg, &env);
    let backup = env.run(&["backup", "--physical", "--name", "base_pitr"]);
    backup.ok();

    // Three batches of 100 rows, a target after each: recovery to target i holds batches ≤ i.
    let mut targets = Vec::new();
    for batch in 0..3 {
        pg.sql_as(
            "app",
            "appdb",
            &format!(
                "INSERT INTO ticks (id) SELECT g FROM generate_series({}, {}) g",
                batch * 100 + 1,
                batch * 100 + 100
            ),
        );
        std::thread::sleep(Duration::from_millis(1100));
        targets.push((server_now(&pg), (batch + 1) * 100));
        std::thread::sleep(Duration::from_millis(1100));
    }
    // A last commit after the last target, so that recovery can tell it reached it, more
    // than the window's one-second margin after it.
    std::thread::sleep(Duration::from_millis(1500));
    pg.sql_as(
        "app",
        "appdb",
        "INSERT INTO ticks (id) SELECT g FROM generate_series(301, 400) g",
    );
    let last = archive_current_segment(&pg, &env);
    stream.stop();

    let status = env.run(&["wal", "status", "--json"]);
    status.ok();
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(s["gaps"], serde_json::json!([]), "{s}");
    assert!(s["last"].as_str().unwrap() >= last.as_str(), "{s}");
    let_the_server_read(&env);

    for (target, rows) in &targets {
        let got = recover(
            &pg,
            &env,
            &["--to-time", target, "--target-action", "promote"],
        );
        assert_eq!(got, format!("{rows}|{rows}"), "recovered to {target}");
    }
    assert_eq!(recover(&pg, &env, &["--latest"]), "400|400");

    // Outside the window: refused, naming it, and nothing left in the directory.
    for (time, says) in [
        ("2999-01-01 00:00:00+00", "is after what can be recovered"),
        ("2000-01-01 00:00:00+00", "before the oldest base backup"),
    ] {
        let far = tempfile::tempdir().unwrap();
        let dir = far.path().join("d");
        let o = env.run(&[
            "restore",
            "--pgdata",
            dir.to_str().unwrap(),
            "--to-time",
            time,
        ]);
        o.code(2);
        assert!(o.stderr.contains(says), "{}", o.all());
        assert!(
            o.stderr.contains("cover"),
            "the window is named: {}",
            o.all()
        );
        assert!(!dir.exists() || dir.read_dir().unwrap().count() == 0);
    }

    // The recovery drill: recorded in the base backup's manifest. The user's drill query sees
    // exactly the rows committed before the target.
    let (t2, _) = &targets[1];
    let count = [("BACKUP_DRILL_QUERY", "SELECT count(*) FROM ticks")];
    let d = env.run_with(&count, &["verify", "--restore", "--to-time", t2]);
    d.ok();
    let m = env.manifest("base_pitr");
    let v = &m["pitr_verification"];
    assert_eq!(v["outcome"], "passed", "{m}");
    let checks = v["checks"].to_string();
    assert!(checks.contains("WAL replayed from the archive"), "{checks}");
    assert!(
        checks.contains("recovery stopping before commit"),
        "{checks}"
    );
    assert!(checks.contains("databases open"), "{checks}");
    assert!(
        checks.contains("appdb: amcheck bt_index_check passed on 3 btree indexes"),
        "{checks}"
    );
    assert!(
        checks.contains("drill query in appdb: SELECT count(*) FROM ticks returned 200"),
        "{checks}"
    );
    assert!(v["target"].as_str().unwrap().starts_with(&t2[..10]), "{v}");
    // stats shows the window and the drill.
    let st = env.run(&["stats", "--json"]);
    st.ok();
    let stats: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let p = if stats["pitr"].is_object() {
        &stats["pitr"]
    } else {
        &stats["statistics"]["pitr"]
    };
    assert_eq!(p["base_backups"], 1, "{stats}");
    assert_eq!(p["last_pitr_drill"]["outcome"], "passed", "{stats}");
    assert!(p["gap"].is_null(), "{stats}");
    let last =
        chrono::DateTime::parse_from_rfc3339(p["last_recoverable"].as_str().unwrap()).unwrap();
    let t3 = chrono::DateTime::parse_from_str(&targets[2].0, "%Y-%m-%d %H:%M:%S%.f%#z").unwrap();
    assert!(last >= t3, "the window reaches the last target: {stats}");

    // A drill query that returns false fails the drill, naming it.
    let wrong = [("BACKUP_DRILL_QUERY", "SELECT count(*) = 300 FROM ticks")];
    let d = env.run_with(&wrong, &["verify", "--restore", "--to-time", t2]);
    d.code(1);
    assert!(
        d.all()
            .contains("the drill query (SELECT count(*) = 300 FROM ticks) returned false in appdb"),
        "{}",
        d.all()
    );
    assert_eq!(
        env.manifest("base_pitr")["pitr_verification"]["outcome"],
        "failed"
    );
    // A damaged segment in the archive: the drill fails naming it.
    let damaged = std::fs::read_dir(env.backup_dir().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.len() > 24 && !n.ends_with(".json") && n[..24] > *s["first"].as_str().unwrap()
        })
        .min()
        .unwrap();
    crate::common::flip_byte(&damaged, 0x01);
    let segment = damaged.file_name().unwrap().to_string_lossy()[..24].to_owned();
    let d = env.run(&["verify", "--restore", "--to-end"]);
    d.code(1);
    assert!(d.stdout.contains(&segment), "{segment}: {}", d.all());
    assert_eq!(
        env.manifest("base_pitr")["pitr_verification"]["outcome"],
        "failed"
    );
    assert_no_secret(
        &env,
        &[&backup.all(), &status.all(), &d.all()],
        APP_PASSWORD,
    );
}

#[test]
fn wal_fetch_says_missing_with_1_and_anything_else_with_126() {
    let Some((pg, env)) = setup() else { return };
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    let stream = Stream::start(&pg, &env);
    let segment = archive_current_segment(&pg, &env);
    stream.stop();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("RECOVERYXLOG");
    let dest = dest.to_str().unwrap();

    // Archived: fetched, byte for byte what the server wrote.
    env.run(&["wal", "fetch", &segment, dest]).ok();
    let fetched = std::fs::read(dest).unwrap();
    assert_eq!(fetched.len(), 16 << 20);
    // Not archived: 1, which PostgreSQL reads as "no such file".
    let o = env.run(&["wal", "fetch", "0000000100000000000000FF", dest]);
    o.code(1);
    let o = env.run(&["wal", "fetch", "00000002.history", dest]);
    o.code(1);
    // A damaged archive: 126, so recovery stops instead of ending early.
    let data_file = std::fs::read_dir(env.backup_dir().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&segment) && !n.ends_with(".json")
        })
        .unwrap();
    crate::common::flip_byte(&data_file, 0x01);
    let o = env.run(&["wal", "fetch", &segment, dest]);
    o.code(126);
    assert!(o.stderr.contains("damaged"), "{}", o.all());
    // An unreachable repository: 126 too.
    let o = env.run_with(
        &[
            ("BACKUP_DIR", "s3://nowhere/x"),
            ("BACKUP_S3_ENDPOINT", "http://127.0.0.1:9"),
        ],
        &["wal", "fetch", &segment, dest],
    );
    o.code(126);
    // No archive where the settings point (an unmounted disk): 126, never "no such file".
    let o = env.run_with(
        &[("BACKUP_DIR", "/nonexistent/repo")],
        &["wal", "fetch", "0000000100000000000000FF", dest],
    );
    o.code(126);
    assert!(o.stderr.contains("does not exist"), "{}", o.all());
    // Arguments this dbkeep cannot parse: 126.
    let o = env.run(&["wal", "fetch", &segment, dest, "--no-such-flag"]);
    o.code(126);
    // A configuration that cannot be read: 126.
    let o = env.run(&[
        "--config",
        "/nonexistent/dbkeep.toml",
        "wal",
        "fetch",
        &segment,
        dest,
    ]);
    o.code(126);
}

/// The archived segments, by name.
fn archived(env: &TestEnv) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.backup_dir().join("wal"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_suffix(".json")
                        .filter(|s| s.len() == 24)
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The segment a base backup's WAL starts in.
fn start_segment(env: &TestEnv, name: &str) -> String {
    let m = env.manifest(name);
    let (hi, lo) = m["base_backup"]["start_lsn"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap();
    let lsn = u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap();
    let seg = lsn / (16 << 20);
    format!("00000001{:08X}{:08X}", seg / 256, seg % 256)
}

#[test]
fn the_stream_survives_a_killed_receiver_and_a_server_restart_without_a_gap() {
    let Some((mut pg, env)) = setup() else { return };
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    let stream = Stream::start(&pg, &env);
    env.run(&["backup", "--physical", "--name", "base_k"]).ok();
    let first = archive_current_segment(&pg, &env);
    // pg_receivewal killed under dbkeep: restarted, from where it was.
    let receiver = Command::new("pgrep")
        .args(["-P", &stream.0.id().to_string(), "pg_receivewal"])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&receiver.stdout).trim().to_owned();
    assert!(!pid.is_empty(), "no pg_receivewal under dbkeep");
    Command::new("kill").args(["-9", &pid]).status().unwrap();
    let second = archive_current_segment(&pg, &env);
    // The server restarted under the stream.
    pg.stop();
    pg.start_again();
    let third = archive_current_segment(&pg, &env);
    stream.stop();
    let names = archived(&env);
    assert!(first < second && second < third, "{names:?}");
    let status = env.run(&["wal", "status", "--json"]);
    status.ok();
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(s["gaps"], serde_json::json!([]), "{s}");
    assert!(names.contains(&first) && names.contains(&second) && names.contains(&third));

    // A segment lost from the archive: a gap, and recovery to the end is refused.
    for e in std::fs::read_dir(env.backup_dir().join("wal")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&second)
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let status = env.run(&["wal", "status"]);
    status.code(1);
    assert!(
        status
            .stdout
            .contains(&format!("GAP  the WAL segment {second} is missing")),
        "{}",
        status.all()
    );
    let dir = tempfile::tempdir().unwrap();
    let o = env.run(&[
        "restore",
        "--pgdata",
        dir.path().join("d").to_str().unwrap(),
        "--latest",
    ]);
    o.code(2);
    assert!(
        o.stderr.contains(&format!("misses {second}")),
        "{}",
        o.all()
    );
    let o = env.run(&[
        "restore",
        "--pgdata",
        dir.path().join("d").to_str().unwrap(),
        "--to-lsn",
        "FF/0",
    ]);
    o.code(2);
    assert!(
        o.stderr.contains("is past the WAL that can be recovered"),
        "{}",
        o.all()
    );
}

#[test]
fn wal_retention_keeps_what_the_oldest_kept_base_backup_needs() {
    let Some((pg, env)) = setup() else { return };
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    pg.sql_as("app", "appdb", "CREATE TABLE ticks (id int PRIMARY KEY)");
    let stream = Stream::start(&pg, &env);
    archive_current_segment(&pg, &env);
    archive_current_segment(&pg, &env);
    env.run(&["backup", "--physical", "--name", "base_20240101"])
        .ok();
    archive_current_segment(&pg, &env);
    env.run(&["backup", "--physical", "--name", "base_20240102"])
        .ok();
    archive_current_segment(&pg, &env);
    stream.stop();
    let before = archived(&env);
    let first_needed = start_segment(&env, "base_20240101");
    let below: Vec<&String> = before.iter().filter(|n| **n < first_needed).collect();
    assert!(
        !below.is_empty(),
        "segments before the first base backup: {before:?}"
    );

    // A manifest that cannot be read may be a base backup's: nothing goes.
    std::fs::write(env.backup_dir().join("junk_20240103.manifest.json"), "{").unwrap();
    let o = env.run(&["prune"]);
    o.ok();
    assert!(o.stdout.contains("WAL retention skipped"), "{}", o.all());
    assert_eq!(archived(&env), before);
    std::fs::remove_file(env.backup_dir().join("junk_20240103.manifest.json")).unwrap();

    // Both base backups kept: only what is below the older one's start goes.
    let o = env.run(&["prune", "--dry-run"]);
    o.ok();
    assert!(
        o.stdout
            .contains(&format!("would remove {} archived WAL files", below.len())),
        "{}",
        o.all()
    );
    assert_eq!(archived(&env), before, "a dry run removes nothing");
    let o = env.run(&["prune"]);
    o.ok();
    let after = archived(&env);
    assert!(after.iter().all(|n| *n >= first_needed), "{after:?}");
    assert_eq!(after.len(), before.len() - below.len(), "{after:?}");

    // The older base backup deleted: its WAL goes too, the newer one's stays and recovers.
    env.run(&["delete", "base_20240101", "--yes"]).ok();
    env.run(&["prune"]).ok();
    let second_needed = start_segment(&env, "base_20240102");
    let left = archived(&env);
    assert!(left.iter().all(|n| *n >= second_needed), "{left:?}");
    assert!(left.contains(&second_needed) || second_needed > *before.last().unwrap());
    let_the_server_read(&env);
    let got = recover(&pg, &env, &["--latest"]);
    assert!(got.starts_with("0|"), "{got}");
}

#[test]
fn a_slot_lost_to_max_slot_wal_keep_size_is_reported_and_the_stream_starts_over_with_a_base_backup()
{
    let Some((pg, env)) = setup() else { return };
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    pg.sql(
        "postgres",
        "ALTER SYSTEM SET max_slot_wal_keep_size = '16MB'",
    );
    pg.sql("postgres", "SELECT pg_reload_conf()");
    let stream = Stream::start(&pg, &env);
    let before = archive_current_segment(&pg, &env);
    stream.stop();
    // While dbkeep is away, more WAL than the slot may keep: the checkpoint removes it.
    for _ in 0..6 {
        pg.sql(
            "postgres",
            "SELECT pg_logical_emit_message(false, 'dbkeep-test', repeat('x', 12000000))",
        );
        pg.sql("postgres", "SELECT pg_switch_wal()");
    }
    pg.sql("postgres", "CHECKPOINT");
    pg.sql("postgres", "CHECKPOINT");
    assert_eq!(
        pg.sql(
            "postgres",
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'dbkeep'"
        )
        .trim(),
        "lost"
    );
    assert!(env.backups().is_empty());

    // Back: the loss is reported, the slot made again, a base backup taken, and archiving goes on.
    let stream = Stream(
        env.command(&["wal", "stream"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("a new base backup", || {
        env.backups()
            .iter()
            .any(|(n, ok)| *ok && n.starts_with("base_"))
    });
    let after = archive_current_segment(&pg, &env);
    stream.stop();
    assert!(after > before);
    let log = env.log();
    assert!(log.contains("is lost"), "{log}");
    assert_eq!(
        pg.sql(
            "postgres",
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'dbkeep'"
        )
        .trim(),
        "reserved"
    );
}
