//! MySQL/MariaDB faults against a real MariaDB server: the server killed mid-dump and
//! mid-restore, dbkeep killed in the swap, a server that stops answering mid-restore. The
//! live database is as it was after each (or, past the swap's point of no return, the restore
//! is completed), and the next run cleans up.

use crate::common::mariadb::MariaServer;
use crate::common::{TestEnv, wait_for};
use crate::mysql::{assert_same, fill_big, setup};
use std::io::Read;
use std::process::{Child, Command, Stdio};

#[test]
fn a_server_lost_mid_dump_or_mid_restore_and_a_killed_swap_leave_the_live_database_as_it_was() {
    let Some((mut my, env)) = setup() else { return };
    env.run(&["backup", "--name", "small_20240115"]).ok();
    fill_big(&my, 400_000);
    env.run(&["backup", "--name", "big_20240115"]).ok();

    // The server dies while a backup dumps: the backup fails, the older ones stay good.
    let mut child = env.command(&["backup", "--name", "lost_20240115"]);
    child.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = child.spawn().unwrap();
    let parent = child.id().to_string();
    wait_for("mariadb-dump", || {
        Command::new("pgrep")
            .args(["-P", &parent, "-x", "mariadb-dump"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    my.kill();
    let status = child.wait().unwrap();
    let err = stderr_of(&mut child);
    assert!(!status.success(), "the backup of a dying server succeeded");
    assert!(
        err.contains("mariadb-dump"),
        "the failure names the tool: {err}"
    );
    my.start_again();
    let backups = env.backups();
    assert!(
        backups.contains(&("big_20240115".to_owned(), true)),
        "{backups:?}"
    );
    assert!(
        !backups.contains(&("lost_20240115".to_owned(), true)),
        "{backups:?}"
    );
    env.run(&["verify", "small_20240115"]).ok();

    // The server dies while a restore loads: the live database is as it was.
    let before = my.normalized_dump("shop");
    let mut child = restore_until(
        &env,
        &my,
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE '%dbkeep_new%'",
    );
    my.kill();
    assert!(!child.wait().unwrap().success());
    my.start_again();
    assert_same(&my.normalized_dump("shop"), &before, "shop");

    // What a restore of the small backup gives, for reference; then back to the big one.
    env.run(&["restore", "small_20240115", "--yes"]).ok();
    let small = my.normalized_dump("shop");
    env.run(&["restore", "big_20240115", "--yes"]).ok();
    assert_same(&my.normalized_dump("shop"), &before, "shop");

    // dbkeep killed in the swap before any live change (journal written): the next restore on
    // this host rolls it back, from the journal on the server.
    let o = env.run_with(
        &[("DBKEEP_FAULT", "mysql-swap-journaled")],
        &["restore", "small_20240115", "--yes"],
    );
    assert_ne!(o.code, 0);
    let o = env.run(&["restore", "no_such_backup", "--yes"]);
    o.code(2);
    assert!(o.all().contains("rolled back a restore"), "{}", o.all());
    assert!(o.all().contains("as it was before"), "{}", o.all());
    assert_same(&my.normalized_dump("shop"), &before, "shop");
    assert_eq!(my.databases(), ["shop"]);

    // Killed after the RENAME (the backup's tables live, its objects not yet created): clients
    // may have written to them since, so the next run completes the restore from the journal
    // rather than undo it, and keeps the previous tables aside, naming them. Run twice: the
    // second run has nothing left to do.
    let o = env.run_with(
        &[("DBKEEP_FAULT", "mysql-swap-renamed")],
        &["restore", "small_20240115", "--yes"],
    );
    assert_ne!(o.code, 0);
    assert_ne!(
        my.normalized_dump("shop"),
        small,
        "the kill left a half-done swap"
    );
    let o = env.run(&["restore", "no_such_backup", "--yes"]);
    o.code(2);
    assert!(o.all().contains("completed a restore"), "{}", o.all());
    assert_same(&my.normalized_dump("shop"), &small, "shop");
    let left: Vec<String> = my.databases().into_iter().filter(|d| d != "shop").collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("_dbkeep_old_"), "{left:?}");
    assert!(o.all().contains(&left[0]), "{}", o.all());
    assert_eq!(
        my.sql(&left[0], "SELECT COUNT(*) FROM big"),
        "400000",
        "the previous tables are kept"
    );
    let again = env.run(&["restore", "no_such_backup", "--yes"]);
    assert!(
        again.all().contains(&left[0]),
        "reported, not acted on: {}",
        again.all()
    );
    assert_same(&my.normalized_dump("shop"), &small, "shop");
    assert_eq!(my.databases().len(), 2);
    my.sql("mysql", &format!("DROP DATABASE `{}`", left[0]));

    // And a restore that runs to its end puts the big backup's database back.
    env.run(&["restore", "big_20240115", "--yes"]).ok();
    assert_same(&my.normalized_dump("shop"), &before, "shop");
    assert_eq!(my.databases(), ["shop"]);
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    err
}

/// Starts `dbkeep restore big_20240115` and returns once `probe` (a query) has rows.
fn restore_until(env: &TestEnv, my: &MariaServer, probe: &str) -> Child {
    let mut child = env.command(&["restore", "big_20240115", "--yes"]);
    child.stdout(Stdio::null()).stderr(Stdio::piped());
    let child = child.spawn().unwrap();
    wait_for(probe, || {
        my.try_sql("mysql", probe).is_ok_and(|s| !s.is_empty())
    });
    child
}

/// Waits up to `secs` for `child` (a restore with BACKUP_STALL_TIMEOUT 3 s) to exit; past that
/// it is killed, `before_panic` runs (a frozen server resumed, say) and the test fails.
fn exit_within(
    child: &mut Child,
    secs: u64,
    before_panic: impl FnOnce(),
    after: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            before_panic();
            panic!("the restore still ran {secs} s after {after} (BACKUP_STALL_TIMEOUT 3 s)");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A server that stops answering mid-restore (SIGSTOP) does not hang the restore: after
/// BACKUP_STALL_TIMEOUT without progress the load is cut and named, the restore fails, the
/// live database is as it was once the server answers again, and the next run drops the
/// staging database.
#[test]
fn a_frozen_server_stops_a_restore_and_the_live_database_stays() {
    let Some((my, mut env)) = setup() else { return };
    fill_big(&my, 400_000);
    env.run(&["backup", "--name", "big_20240115"]).ok();
    let before = my.normalized_dump("shop");
    env.set(
        "DATABASE_URL",
        format!("{}?connect_timeout=3", my.url("shop")),
    );
    env.set("BACKUP_STALL_TIMEOUT", "3");
    // Frozen while the big table's rows load.
    let mut child = restore_until(
        &env,
        &my,
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA LIKE '%dbkeep_new%' AND TABLE_NAME = 'big'",
    );
    my.pause();
    // Without the watchdog the restore would wait for the server forever: a deadline makes
    // that a failure, not a hung test.
    let status = exit_within(&mut child, 120, || my.resume(), "the server froze");
    my.resume();
    let err = stderr_of(&mut child);
    assert!(
        !status.success(),
        "a restore against a frozen server succeeded"
    );
    assert!(
        err.contains("made no progress for 3 s"),
        "the stall is named: {err}"
    );
    assert_same(&my.normalized_dump("shop"), &before, "shop");
    let o = env.run(&["restore", "no_such_backup", "--yes"]);
    o.code(2);
    assert_eq!(my.databases(), ["shop"], "{}", o.all());
}

/// A server that goes silent at the load connection's first statement (the proof that one
/// request is one statement) does not hang the restore: the load's setup is under the
/// watchdog too, the stall is named, and the live database is as it was.
#[test]
fn a_server_silent_at_the_loads_first_statement_stops_the_restore() {
    let Some((my, mut env)) = setup() else { return };
    env.run(&["backup", "--name", "small_20240115"]).ok();
    let before = my.normalized_dump("shop");
    let proxy =
        crate::common::proxy::Proxy::start(format!("127.0.0.1:{}", my.port).parse().unwrap());
    let url = my.url("shop").replace(
        &format!("127.0.0.1:{}/", my.port),
        &format!("127.0.0.1:{}/", proxy.addr.port()),
    );
    env.set("DATABASE_URL", url);
    env.set("BACKUP_STALL_TIMEOUT", "3");
    proxy.withhold_answer_to("DO 1; DO 1");
    let mut child = env.command(&["restore", "small_20240115", "--yes"]);
    child.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = child.spawn().unwrap();
    let status = exit_within(&mut child, 120, || {}, "the server went silent");
    let err = stderr_of(&mut child);
    assert!(
        proxy.lost_an_answer(),
        "the proof never went through the proxy: {err}"
    );
    assert!(
        !status.success(),
        "a restore against a silent server succeeded"
    );
    assert!(
        err.contains("made no progress for 3 s"),
        "the stall is named: {err}"
    );
    assert_same(&my.normalized_dump("shop"), &before, "shop");
}
