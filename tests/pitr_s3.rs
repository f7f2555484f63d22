//! Point-in-time recovery with the repository on S3 (s3s-fs on loopback): the WAL stream
//! archives into the bucket's `wal/` prefix, and the recovering server's `restore_command`
//! fetches from the bucket, with the credentials in the 0600 settings file beside the data
//! directory, never on a command line.

use crate::common::s3::S3Server;
use crate::pitr_recovery::{Stream, archive_segment_into, recover, server_now};
use crate::postgres::{APP_PASSWORD, setup};
use std::time::Duration;

#[test]
fn recovery_to_a_point_from_an_s3_repository() {
    let Some((pg, mut env)) = setup() else { return };
    let mut server = S3Server::start();
    server.configure(&mut env, "pitr");
    env.set(
        "BACKUP_WAL_SPOOL",
        env.path().join("spool").display().to_string(),
    );
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    pg.sql_as(
        "app",
        "appdb",
        "CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    );
    let stream = Stream::start(&pg, &env);
    env.run(&["backup", "--physical", "--name", "base_s3"]).ok();
    pg.sql_as(
        "app",
        "appdb",
        "INSERT INTO ticks (id) SELECT g FROM generate_series(1, 100) g",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let target = server_now(&pg);
    std::thread::sleep(Duration::from_millis(2600));
    pg.sql_as(
        "app",
        "appdb",
        "INSERT INTO ticks (id) SELECT g FROM generate_series(101, 200) g",
    );
    archive_segment_into(&pg, &server.dir("pitr").join("wal"));
    stream.stop();
    let status = env.run(&["wal", "status", "--json"]);
    status.ok();
    assert!(status.stdout.contains("s3://"), "{}", status.all());

    let got = recover(
        &pg,
        &env,
        &["--to-time", &target, "--target-action", "promote"],
    );
    assert_eq!(got, "100|100");
    assert_eq!(recover(&pg, &env, &["--latest"]), "200|200");

    // The bucket unreachable while the server recovers: restore_command exits 126, so the
    // server stops recovery instead of ending it early on the WAL it has (which would
    // promote a database missing the rows after the base backup). Once the bucket is back,
    // the same data directory recovers everything.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    env.run(&["restore", "--pgdata", data.to_str().unwrap(), "--latest"])
        .ok();
    server.stop();
    let mut restored = crate::common::PgServer::adopt_stopped(pg.bin.clone(), dir);
    let started = restored.try_start();
    let log = restored.server_log();
    assert!(!started, "the server started without its archive: {log}");
    assert!(
        log.contains("restore_command") || log.contains("could not restore file"),
        "{log}"
    );
    for early in [
        "archive recovery complete",
        "selected new timeline ID",
        "database system is ready to accept connections",
    ] {
        assert!(
            !log.contains(early),
            "recovery ended early ({early}): {log}"
        );
    }
    server.restart();
    assert!(restored.try_start(), "{}", restored.server_log());
    crate::common::wait_for("the recovered server to promote", || {
        restored
            .try_sql_as("postgres", "postgres", "SELECT pg_is_in_recovery()")
            .is_ok_and(|v| v.trim() == "f")
    });
    assert_eq!(crate::pitr_recovery::ticks(&restored), "200|200");
    let d = env.run(&["verify", "--restore", "--to-time", &target]);
    d.ok();
    assert!(
        d.stdout.contains("recovery stopping before commit"),
        "{}",
        d.all()
    );
    // A damaged segment in the bucket: the drill fails naming it.
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let first = s["first"].as_str().unwrap().to_owned();
    let damaged = std::fs::read_dir(server.dir("pitr").join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.len() > 24 && !n.ends_with(".json") && n[..24] > *first
        })
        .min()
        .unwrap();
    crate::common::flip_byte(&damaged, 0x01);
    let segment = damaged.file_name().unwrap().to_string_lossy()[..24].to_owned();
    let broken = env.run(&["verify", "--restore", "--to-end"]);
    broken.code(1);
    assert!(
        broken.stdout.contains(&segment),
        "{segment}: {}",
        broken.all()
    );
    for o in [&status, &d, &broken] {
        assert!(!o.all().contains(APP_PASSWORD), "{}", o.all());
        assert!(
            !o.all().contains(crate::common::s3::SECRET_KEY),
            "{}",
            o.all()
        );
    }
}
