//! The fault-injection suite: each fault is caused for real (SIGKILL at a moment found by
//! watching the backup directory or by `DBKEEP_FAULT` points, a full tmpfs, a PostgreSQL server
//! stopped mid-way, damaged files, concurrent runs), and each asserts the same four things: no
//! false success, no earlier backup lost, a clear error where there is someone to tell, and a
//! clean next run. Each test prints its table: fault, expected, observed. (The S3 server going
//! away mid-upload is in `s3.rs`.)

use crate::common::{FaultTable as Table, PgServer, TestEnv, flip_byte, wait_for};
use crate::sqlite::{make_db, rows, sqlite_env};
use std::process::Stdio;
use std::time::Duration;

/// A kind of damage: its name, what the error must say, and the act.
type Damage<'a> = (&'static str, &'static str, Box<dyn Fn() + 'a>);

fn no_success(env: &TestEnv, name: &str) -> bool {
    !env.backups().contains(&(name.to_owned(), true))
}

fn temp_files(env: &TestEnv) -> Vec<String> {
    env.files()
        .into_iter()
        .filter(|f| f.starts_with(".dbkeep-tmp-"))
        .collect()
}

/// Runs the backup `name` with `DBKEEP_FAULT=point`; it must die of SIGKILL.
fn killed_at(env: &TestEnv, point: &str, name: &str) {
    let status = env
        .command(&["backup", "--name", name])
        .env("DBKEEP_FAULT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{point}: killed by SIGKILL");
}

/// After a fault: the earlier backup still verifies and restores; the next backup succeeds and
/// leaves no temporary file.
fn clean_next_run(env: &TestEnv, next: &str) -> String {
    env.run(&["verify", "good"]).ok();
    env.run(&["backup", "--name", next]).ok();
    let temps = temp_files(env);
    assert!(
        temps.is_empty(),
        "temporary files after the next run: {temps:?}"
    );
    format!("good verifies; {next} ok, no temp file")
}

#[test]
fn sqlite_faults_lose_nothing_and_the_next_run_is_clean() {
    let mut t = Table::new("Fault injection (SQLite, local repository)");
    let env = sqlite_env(0);
    let db = env.path().join("app.db");
    make_db(&db, 150_000);
    let before = rows(&db);
    env.run(&["backup", "--name", "good"]).ok();

    // SIGKILL while compressing (once the copy's first MiB went into the compressor).
    killed_at(&env, "during-compression", "cut_compress");
    let left = temp_files(&env).len();
    assert!(left > 0, "the killed run left its temp files");
    assert!(no_success(&env, "cut_compress"));
    let next = clean_next_run(&env, "after_compress");
    t.row(
        "SIGKILL during compression",
        "no success listed; earlier backup intact; temp files removed by the next run",
        format!("not listed; {left} temp file(s) left, removed by the next run; {next}"),
    );

    // SIGKILL between the data file's rename and the manifest's write.
    killed_at(&env, "after-data-commit", "cut_data");
    assert!(env.backup_dir().join("cut_data.db.gz").exists());
    assert!(no_success(&env, "cut_data"));
    // Once past the one-day grace, prune reports it (in a directory it never deletes a file no
    // manifest names: it may be the user's).
    crate::common::two_days_old(&env.backup_dir().join("cut_data.db.gz"));
    let pruned = env.run(&["prune", "--dry-run"]);
    pruned.ok();
    assert!(
        pruned.stdout.contains("cut_data.db.gz"),
        "{}",
        pruned.stdout
    );
    let next = clean_next_run(&env, "after_data");
    // The same name again: a new data file beside the orphan, never over it.
    env.run(&["backup", "--name", "cut_data"]).ok();
    t.row(
        "SIGKILL after the data rename, before the manifest",
        "the data file without a manifest does not exist for list/restore; prune reports it; the name can be used again",
        format!("not listed; prune reports cut_data.db.gz; {next}; backup cut_data again ok"),
    );

    // SIGKILL during the manifest's write (complete in its temp file, not renamed).
    killed_at(&env, "manifest-before-rename", "cut_manifest");
    assert!(no_success(&env, "cut_manifest"));
    assert!(!env.backup_dir().join("cut_manifest.manifest.json").exists());
    let temps = temp_files(&env);
    assert!(
        temps
            .iter()
            .any(|f| f.contains("cut_manifest.manifest.json")),
        "{temps:?}"
    );
    let next = clean_next_run(&env, "after_manifest");
    t.row(
        "SIGKILL during the manifest write",
        "no manifest in place, no success; the temp manifest removed by the next run",
        format!("not listed; temp manifest left, removed; {next}"),
    );

    // Damaged files: each found by verify, refused by restore, the live database untouched.
    let dir = env.backup_dir();
    let damage: [Damage; 5] = [
        (
            "flipped byte",
            "SHA-256",
            Box::new(|| flip_byte(&dir.join("after_compress.db.gz"), 0x40)),
        ),
        (
            "truncated data file",
            "truncated",
            Box::new(|| {
                let f = dir.join("after_data.db.gz");
                let len = std::fs::metadata(&f).unwrap().len();
                std::fs::File::options()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }),
        ),
        (
            "missing data file",
            "missing",
            Box::new(|| std::fs::remove_file(dir.join("after_manifest.db.gz")).unwrap()),
        ),
        (
            "manifest with a wrong checksum",
            "SHA-256",
            Box::new(|| {
                let p = dir.join("cut_data.manifest.json");
                let text = std::fs::read_to_string(&p).unwrap();
                let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
                m["sha256"] = "0".repeat(64).into();
                std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
            }),
        ),
        (
            "manifest that is not JSON",
            "not valid",
            Box::new(|| {
                std::fs::write(dir.join("after_manifest.manifest.json"), b"{ not json").unwrap()
            }),
        ),
    ];
    let victims = [
        "after_compress",
        "after_data",
        "after_manifest",
        "cut_data",
        "after_manifest",
    ];
    for ((what, needle, act), victim) in damage.iter().zip(victims) {
        act();
        let live = std::fs::read(&db).unwrap();
        let v = env.run(&["verify", victim]);
        let r = env.run(&["restore", victim, "--yes"]);
        assert_ne!(v.code, 0, "{what}: verify must fail");
        assert_ne!(r.code, 0, "{what}: restore must fail");
        let said = format!("{}{}", v.stdout, v.stderr);
        assert!(said.contains(needle), "{what}: {said}");
        assert_eq!(
            std::fs::read(&db).unwrap(),
            live,
            "{what}: live database untouched"
        );
        env.run(&["verify", "good"]).ok();
        let first = said
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_default()
            .chars()
            .take(90)
            .collect::<String>();
        t.row(
            what,
            "verify and restore fail naming it; live database untouched; others intact",
            format!("exit {}/{}: {first}…", v.code, r.code),
        );
    }
    let stats = env.run(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(stats["unreadable_manifests"], 1, "{stats}");

    // Two backups and a restore started at the same moment: the lock orders them.
    let spawn = |args: &[&str]| {
        env.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn(&["backup", "--name", "same_a"]);
    let b = spawn(&["backup", "--name", "same_b"]);
    let r = spawn(&["restore", "good", "--yes"]);
    let outs: Vec<_> = [a, b, r]
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(!no_success(&env, "same_a") && !no_success(&env, "same_b"));
    assert_eq!(rows(&db), before, "the restore put back the good backup");
    env.run(&["verify", "same_a"]).ok();
    env.run(&["verify", "same_b"]).ok();
    t.row(
        "two backups and a restore at the same moment",
        "all three succeed one after the other (the repository lock)",
        "3 × exit 0; both backups verify; the database equals the restored backup",
    );
    t.print();
}

/// A full disk: a small tmpfs as the backup directory (root only; CI runs as root).
#[test]
fn full_disks_fail_clearly_and_keep_what_was_there() {
    let mut env = TestEnv::new();
    let dir = env.backup_dir();
    let Some(_tmpfs) = crate::common::mount_tmpfs(&dir, "1m") else {
        return;
    };
    let mut t = Table::new("Fault injection: full disks");
    let db = env.path().join("app.db");
    make_db(&db, 2_000);
    env.set("DATABASE_URL", "sqlite:///app.db");
    env.run(&["backup", "--name", "good"]).ok();

    // The database outgrows the disk: the backup fails and says so.
    make_db(&db, 30_000);
    let o = env.run(&["backup", "--name", "big", "--no-compress"]);
    o.code(1);
    assert!(o.stderr.contains("disk is full"), "{}", o.stderr);
    assert!(no_success(&env, "big"));
    assert!(temp_files(&env).is_empty(), "{:?}", env.files());
    env.run(&["verify", "good"]).ok();
    t.row(
        "disk full during a backup",
        "exit 1 saying the disk is full; no temp file; the earlier backup intact",
        o.stderr
            .lines()
            .last()
            .unwrap_or_default()
            .chars()
            .take(100)
            .collect::<String>(),
    );

    // A backup that fits, whose restore then cannot stage its copy on the full disk.
    let filler = dir.join("filler");
    std::fs::remove_file(&db).unwrap();
    make_db(&db, 2_500);
    let grown = rows(&db);
    env.run(&["backup", "--name", "fits"]).ok();
    let free = nix::sys::statvfs::statvfs(&dir).unwrap();
    let room = free.blocks_available() * free.fragment_size();
    std::fs::write(&filler, vec![0u8; room.saturating_sub(64 * 1024) as usize]).unwrap();
    make_db(&db, 10); // the live database changes
    let live = std::fs::read(&db).unwrap();
    let o = env.run(&["restore", "fits", "--yes"]);
    o.code(1);
    assert!(
        o.stderr.contains("No space left") || o.stderr.contains("disk is full"),
        "{}",
        o.stderr
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        live,
        "the live database untouched"
    );
    std::fs::remove_file(&filler).unwrap();
    env.run(&["restore", "fits", "--yes"]).ok();
    assert_eq!(rows(&db), grown);
    t.row(
        "disk full during a restore's staging",
        "exit 1; the live database as it was; the restore works once there is room",
        "exit 1 (No space left); live database unchanged; restore ok after freeing space",
    );
    t.print();
}

/// Hold an exclusive lock on a table so pg_dump waits on it.
fn hold_lock(pg: &PgServer) -> std::process::Child {
    pg.client("psql", "app", "appdb")
        .args([
            "-X",
            "-c",
            "BEGIN; LOCK TABLE sales.items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn postgres_server_stopped_mid_way_loses_nothing() {
    let Some((mut pg, env)) = crate::postgres::setup() else {
        return;
    };
    let mut t = Table::new("Fault injection (PostgreSQL)");
    // A bigger database, so that a restore takes long enough to be stopped in the middle.
    pg.sql_as(
        "app",
        "appdb",
        "INSERT INTO audit.log (item_id, note) SELECT g, repeat('x', 200) FROM generate_series(1, 400000) g;",
    );
    let before = pg.normalized_dump("appdb");
    env.run(&["backup", "--name", "good"]).ok();

    // SIGKILL of dbkeep while pg_dump runs (held up by a lock, so the kill lands mid-dump).
    let mut holder = hold_lock(&pg);
    std::thread::sleep(Duration::from_millis(500));
    let mut child = env
        .command(&["backup", "--name", "cut_kill"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the dump's temp file", || !temp_files(&env).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    pg.release(&mut holder);
    assert!(no_success(&env, "cut_kill"));
    let next = clean_next_run(&env, "after_kill");
    t.row(
        "SIGKILL of dbkeep during pg_dump",
        "no success listed; earlier backup intact; the next run removes the temp file",
        format!("not listed; {next}"),
    );

    // The server stopped while pg_dump waits for a lock.
    let mut holder = hold_lock(&pg);
    std::thread::sleep(Duration::from_millis(500));
    let child = env
        .command(&["backup", "--name", "cut_dump"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the dump's temp file", || !temp_files(&env).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    pg.stop();
    let out = child.wait_with_output().unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains(crate::postgres::APP_PASSWORD));
    pg.start_again();
    assert!(no_success(&env, "cut_dump"));
    let next = clean_next_run(&env, "after_dump");
    t.row(
        "PostgreSQL stopped during pg_dump",
        "exit 1 with pg_dump's error; no success; the next run is clean",
        format!(
            "exit 1: {}; {next}",
            stderr
                .lines()
                .last()
                .unwrap_or_default()
                .chars()
                .take(80)
                .collect::<String>()
        ),
    );

    // The server stopped while a restore loads: the live database was never touched, and the
    // next run drops the staging database.
    pg.sql_as("app", "appdb", "DELETE FROM sales.items WHERE id < 10;");
    let changed = pg.normalized_dump("appdb");
    let child = env
        .command(&["restore", "good", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the staging database", || {
        pg.try_sql_as(
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'appdb\\_dbkeep\\_new\\_%'",
        )
        .is_ok_and(|n| n.trim() == "1")
    });
    std::thread::sleep(Duration::from_millis(200));
    pg.stop();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    pg.start_again();
    assert_eq!(
        pg.normalized_dump("appdb"),
        changed,
        "the live database as it was before the failed restore"
    );
    env.run(&["verify", "good"]).ok();
    env.run(&["backup", "--name", "after_restore"]).ok();
    assert_eq!(
        pg.sql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE '%dbkeep\\_new%'"
        ),
        "0",
        "the next run dropped the staging database"
    );
    assert_eq!(pg.normalized_dump("appdb"), changed);
    t.row(
        "PostgreSQL stopped during a restore",
        "the restore fails; the live database as it was; the next run drops the staging database",
        format!(
            "{}; live database unchanged (equal re-dump); staging dropped by the next backup",
            out.status
        ),
    );
    env.run(&["restore", "good", "--yes"]).ok();
    assert_eq!(pg.normalized_dump("appdb"), before);
    t.print();
}

/// The pid of a child of `parent` running `program` whose environment holds `marker`.
fn child_with(parent: u32, program: &str, marker: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if ppid == Some(parent)
            && first.ends_with(program.as_bytes())
            && environ
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
        {
            return pid.parse().ok();
        }
    }
    None
}

/// REVIEW D6: the stall timeout covers what moves no data through dbkeep. A pg_restore that
/// stops (SIGSTOP) during a custom-format restore, and a psql that stops reading a plain drill,
/// are stopped after BACKUP_STALL_TIMEOUT with a clear error: their sessions are idle on the
/// server, so nothing works. The live database is as it was.
#[test]
fn stalled_restores_and_drills_are_stopped() {
    let Some((pg, mut env)) = crate::postgres::setup() else {
        return;
    };
    let mut t = Table::new("Stalls where no data flows through dbkeep (PostgreSQL)");
    pg.sql_as(
        "app",
        "appdb",
        "INSERT INTO audit.log (item_id, note) SELECT g, repeat('x', 200) FROM generate_series(1, 400000) g;",
    );
    env.set("BACKUP_STALL_TIMEOUT", "3");
    let cases = [
        ("custom", "pg_restore", "PGAPPNAME=dbkeep restore", true),
        ("sql", "psql", "PGAPPNAME=dbkeep drill", false),
    ];
    for (format, program, marker, restore) in cases {
        env.set("BACKUP_PG_FORMAT", format);
        let name = format!("stall_{format}");
        env.run(&["backup", "--name", &name]).ok();
        let before = pg.normalized_dump("appdb");
        let args: Vec<&str> = if restore {
            vec!["restore", &name, "--yes"]
        } else {
            vec!["verify", "--restore", &name]
        };
        let started = std::time::Instant::now();
        let child = env
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let parent = child.id();
        let mut stopped = None;
        wait_for(program, || {
            stopped = child_with(parent, program, marker);
            stopped.is_some()
        });
        let pid = nix::unistd::Pid::from_raw(stopped.unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        let said = format!("{program} made no progress for 3 s");
        assert!(
            stderr.contains(&said) || stdout.contains(&said),
            "{stdout}{stderr}"
        );
        let took = started.elapsed();
        assert!(took < Duration::from_secs(120), "{took:?}");
        assert_eq!(
            pg.normalized_dump("appdb"),
            before,
            "live database untouched"
        );
        assert_eq!(
            pg.sql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname LIKE '%dbkeep%'"
            ),
            "0",
            "no staging or scratch database left"
        );
        t.row(
            &format!("{program} stopped (SIGSTOP) during a {format} {}", args[0]),
            "stopped after BACKUP_STALL_TIMEOUT; exit 1; live database unchanged",
            format!("exit 1 after {:.1} s: {said}", took.as_secs_f64()),
        );
    }
    env.run(&["verify", "--restore", "stall_custom"]).ok();

    // Long work that moves no byte is not a stall: an index build of 6 s (an expression that
    // sleeps 2 ms a row) under a 3 s limit, in a custom restore and in a plain drill.
    pg.sql_as(
        "app",
        "appdb",
        "CREATE FUNCTION public.slow(x integer) RETURNS integer LANGUAGE plpgsql IMMUTABLE \
         AS $$ BEGIN PERFORM pg_catalog.pg_sleep(0.002); RETURN x; END $$; \
         CREATE INDEX items_slow ON sales.items (public.slow(id));",
    );
    let slow = pg.normalized_dump("appdb");
    for (format, command) in [("custom", "restore"), ("sql", "verify")] {
        env.set("BACKUP_PG_FORMAT", format);
        let name = format!("slow_{format}");
        env.run(&["backup", "--name", &name]).ok();
        let started = std::time::Instant::now();
        match command {
            "restore" => env.run(&["restore", &name, "--yes"]).ok(),
            _ => env.run(&["verify", "--restore", &name]).ok(),
        };
        let took = started.elapsed();
        assert!(
            took > Duration::from_secs(5),
            "the index was built: {took:?}"
        );
        assert_eq!(pg.normalized_dump("appdb"), slow);
        t.row(
            &format!("a 6 s index build in a {format} {command}, limit 3 s"),
            "not a stall: the server says the session works",
            format!("ok in {:.1} s", took.as_secs_f64()),
        );
    }
    t.print();
}
