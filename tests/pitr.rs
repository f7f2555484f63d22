//! Point-in-time recovery against a real server started by the harness. So far `dbkeep wal
//! check`: each way a server can be unready is named with what to change, and a ready one
//! gives the cluster's real system identifier.

use crate::common::TestEnv;
use crate::postgres::{APP_PASSWORD, setup};
use std::process::Command;

/// The data directory's system identifier, as pg_controldata reads it.
fn control_identifier(bin: &std::path::Path, data: &std::path::Path) -> String {
    let out = Command::new(bin.join("pg_controldata"))
        .arg("-D")
        .arg(data)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no identifier in {text}"))
}

#[test]
fn wal_check_names_what_is_missing_and_the_cluster_when_ready() {
    let Some((mut pg, env)) = setup() else { return };
    let data = pg.socket_dir().join("data");

    // The owner role has no REPLICATION: both the role and the connection fail.
    let o = env.run(&["wal", "check"]);
    o.code(1);
    assert!(o.stdout.contains("FAIL replication role"), "{}", o.all());
    assert!(
        o.stdout.contains("ALTER ROLE \"app\" REPLICATION"),
        "{}",
        o.all()
    );
    assert!(
        o.stdout.contains("FAIL replication connection"),
        "{}",
        o.all()
    );
    assert!(o.stdout.contains("ok   wal_level: wal_level is replica"));
    assert!(
        o.stdout
            .contains("advice: max_slot_wal_keep_size is unlimited")
    );
    assert!(!o.all().contains(APP_PASSWORD), "{}", o.all());

    // Ready: the identifier is the cluster's own.
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    let o = env.run(&["wal", "check"]);
    o.ok();
    assert!(!o.all().contains(APP_PASSWORD), "{}", o.all());
    let id = control_identifier(&pg.bin, &data);
    assert!(
        o.stdout
            .contains(&format!("cluster: system identifier {id}, timeline 1")),
        "{id}: {}",
        o.all()
    );
    assert!(o.stdout.contains("ready for point-in-time recovery"));
    let o = env.run(&["wal", "check", "--json"]);
    o.ok();
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["system_identifier"], id.as_str());
    assert_eq!(v["timeline"], 1);
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true)
    );

    assert!(!o.all().contains(APP_PASSWORD), "{}", o.all());

    // Senders in use by another role (a standby, here pg_receivewal as postgres) are counted.
    pg.sql("postgres", "ALTER SYSTEM SET max_wal_senders = 3");
    pg.stop();
    pg.start_again();
    let spool = tempfile::tempdir().unwrap();
    let mut receiver = pg
        .client("pg_receivewal", "postgres", "postgres")
        .arg("-D")
        .arg(spool.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let streaming = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        pg.sql("postgres", "SELECT count(*) FROM pg_stat_replication")
            .trim()
            == "1"
    });
    let o = env.run(&["wal", "check"]);
    receiver.kill().ok();
    receiver.wait().ok();
    assert!(streaming, "pg_receivewal did not start streaming");
    o.code(1);
    assert!(
        o.stdout
            .contains("FAIL max_wal_senders: 2 of max_wal_senders = 3 free (1 in use)"),
        "{}",
        o.all()
    );

    // pg_hba.conf without replication lines: the connection is refused, and named.
    let hba = data.join("pg_hba.conf");
    let kept = std::fs::read_to_string(&hba).unwrap();
    let without: String = kept
        .lines()
        .filter(|l| !l.contains("replication"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&hba, without).unwrap();
    pg.sql("postgres", "SELECT pg_reload_conf()");
    // The reload is asynchronous: until the server has read the file, the line still lets in.
    let mut o = env.run(&["wal", "check"]);
    for _ in 0..50 {
        if o.stdout.contains("pg_hba.conf") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        o = env.run(&["wal", "check"]);
    }
    o.code(1);
    assert!(
        o.stdout.contains("FAIL replication connection") && o.stdout.contains("pg_hba.conf"),
        "{}",
        o.all()
    );
    assert!(o.stdout.contains("ok   replication role"), "{}", o.all());
    std::fs::write(&hba, kept).unwrap();

    // wal_level minimal (which needs max_wal_senders 0): both named.
    pg.sql("postgres", "ALTER SYSTEM SET wal_level = 'minimal'");
    pg.sql("postgres", "ALTER SYSTEM SET max_wal_senders = 0");
    pg.stop();
    pg.start_again();
    let o = env.run(&["wal", "check"]);
    o.code(1);
    assert!(
        o.stdout.contains("FAIL wal_level: wal_level is minimal")
            && o.stdout.contains("wal_level = replica"),
        "{}",
        o.all()
    );
    assert!(
        o.stdout
            .contains("FAIL max_wal_senders: 0 of max_wal_senders = 0 free"),
        "{}",
        o.all()
    );
    assert!(
        o.stdout.contains("FAIL replication connection"),
        "{}",
        o.all()
    );
    assert!(!o.all().contains(APP_PASSWORD), "{}", o.all());
}

#[test]
fn wal_check_of_another_engine_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = TestEnv::new();
    env.set(
        "DATABASE_URL",
        format!("sqlite:///{}", dir.path().join("app.db").display()),
    );
    let o = env.run(&["wal", "check"]);
    o.code(2);
    assert!(
        o.stderr.contains(
            "point-in-time recovery is for PostgreSQL; DATABASE_URL names a sqlite database"
        ),
        "{}",
        o.all()
    );
}
