//! Recovery across a timeline switch: a point-in-time restore that is promoted starts
//! timeline 2; `dbkeep wal stream` pointed at the new primary archives its history file and
//! its WAL (from the switch segment on), and a recovery from the base backup taken on
//! timeline 1 follows the switch to a time on timeline 2. The old primary writing on in the
//! same archive is reported.

use crate::pitr_recovery::{
    Stream, archive_segment_into, let_the_server_read, recover, recover_server, server_now, ticks,
};
use crate::postgres::setup;
use std::time::Duration;

/// Inserts the ids `from..=to` into ticks on `pg`.
fn insert(pg: &crate::common::PgServer, from: u32, to: u32) {
    pg.sql_as(
        "app",
        "appdb",
        &format!("INSERT INTO ticks (id) SELECT g FROM generate_series({from}, {to}) g"),
    );
}

#[test]
fn recovery_follows_a_timeline_switch_and_the_old_timeline_writing_on_is_reported() {
    let Some((pg, mut env)) = setup() else { return };
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    pg.sql_as(
        "app",
        "appdb",
        "CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    );
    let wal = env.backup_dir().join("wal");
    let stream = Stream::start(&pg, &env);
    env.run(&["backup", "--physical", "--name", "base_tl1"])
        .ok();
    insert(&pg, 1, 100);
    std::thread::sleep(Duration::from_millis(1100));
    let first = server_now(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    // Committed on timeline 1 after the target: not in the restored cluster's future.
    insert(&pg, 101, 200);
    std::thread::sleep(Duration::from_millis(1500));
    insert(&pg, 201, 210);
    archive_segment_into(&pg, &wal);
    stream.stop();
    let_the_server_read(&env);

    // Restored to the first target and promoted: timeline 2.
    let restored = recover_server(
        &pg,
        &env,
        &["--to-time", &first, "--target-action", "promote"],
    );
    assert_eq!(ticks(&restored), "100|100");
    let timeline = restored.sql(
        "postgres",
        "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
    );
    assert_eq!(timeline.trim(), "00000002");

    // The stream moves to the new primary (the same spool, which holds timeline 1).
    let old_url = pg.url("app", crate::postgres::APP_PASSWORD, "appdb");
    env.set(
        "DATABASE_URL",
        restored.url("app", crate::postgres::APP_PASSWORD, "appdb"),
    );
    let stream = Stream::start(&restored, &env);
    insert(&restored, 1001, 1100);
    std::thread::sleep(Duration::from_millis(1100));
    let second = server_now(&restored);
    std::thread::sleep(Duration::from_millis(1500));
    insert(&restored, 1101, 1200);
    let last = archive_segment_into(&restored, &wal);
    stream.stop();
    assert!(last.starts_with("00000002"), "{last}");
    // Timeline 2 is archived from the segment its switch is in (the gap check cannot see a
    // later start: it compares segments within a timeline).
    let history: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wal.join("00000002.history.json")).unwrap()).unwrap();
    let text = history["history"].as_str().unwrap().to_owned();
    let switch = text.split_whitespace().nth(1).unwrap();
    let (hi, lo) = switch.split_once('/').unwrap();
    let at = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let first_tl2 = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("00000002") && n.ends_with(".json") && n.len() == 29)
        .min()
        .unwrap();
    assert_eq!(
        &first_tl2[..24],
        format!("00000002{:08X}{:08X}", at >> 32, (at & 0xFFFF_FFFF) >> 24),
        "{text}"
    );
    let status = env.run(&["wal", "status", "--json"]);
    status.ok();
    let s: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(s["gaps"], serde_json::json!([]), "{s}");
    assert!(
        env.log()
            .contains("streaming timeline 2 from the server's current segment"),
        "{}",
        env.log()
    );
    let_the_server_read(&env);

    // From the base backup of timeline 1, across the switch: timeline 1 to the first target,
    // then timeline 2's rows up to the second.
    let bases: Vec<String> = env.backups().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        bases,
        ["base_tl1"],
        "no base backup after the switch: the recovery crosses it"
    );
    assert_eq!(
        recover(
            &restored,
            &env,
            &["--to-time", &second, "--target-action", "promote"]
        ),
        "200|1100"
    );
    assert_eq!(recover(&restored, &env, &["--latest"]), "300|1200");
    // The recovery drill crosses it too.
    env.run(&["verify", "--restore", "--to-time", &second]).ok();
    let m = env.manifest("base_tl1");
    assert_eq!(m["pitr_verification"]["outcome"], "passed", "{m}");
    let stats = env.run(&["stats", "--json"]);
    stats.ok();
    let st: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    let until = st["pitr"]["last_recoverable"].as_str().unwrap().to_owned();
    assert!(
        until.as_str() >= second.replace(' ', "T").as_str().get(..19).unwrap(),
        "{st}"
    );

    // The window in list, metrics and the dashboard.
    let list = env.run(&["list"]);
    list.ok();
    assert!(
        list.stdout.contains(&format!(
            "recoverable to any second from {}",
            st["pitr"]["first_recoverable"].as_str().unwrap()
        )),
        "{}",
        list.stdout
    );
    let server = crate::api::Server::start(&env);
    let metrics = server
        .raw(
            reqwest::Method::GET,
            "/metrics",
            Some(crate::api::TOKEN),
            None,
        )
        .text()
        .unwrap();
    let until_unix = chrono::DateTime::parse_from_rfc3339(&until)
        .unwrap()
        .timestamp();
    assert!(
        metrics.contains(&format!(
            "dbkeep_pitr_last_recoverable_timestamp_seconds{{database=\"default\"}} {until_unix}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("dbkeep_pitr_gap{database=\"default\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dbkeep_pitr_drill_last_success{database=\"default\"} 1"),
        "{metrics}"
    );
    if let Some(b) = crate::dashboard::Browser::start() {
        b.goto(&format!("{}/", server.base));
        b.type_into("#token", crate::api::TOKEN);
        b.click("#signin-form button[type=submit]");
        b.wait("the recoverable window", |b| {
            b.visible("[data-pitr=window]")
        });
        let shown = b.text("[data-pitr=window]");
        assert!(shown.starts_with("any second from "), "{shown}");
        assert!(!shown.contains("missing"), "{shown}");
    }
    drop(server);

    // The old primary writing on into the same archive (another spool): reported.
    env.set("DATABASE_URL", old_url);
    env.set(
        "BACKUP_WAL_SPOOL",
        env.path().join("old-spool").display().to_string(),
    );
    let stream = Stream::start(&pg, &env);
    insert(&pg, 211, 220);
    archive_segment_into(&pg, &wal);
    stream.stop();
    let log = env.log();
    assert!(log.contains("this server still writes timeline 1"), "{log}");
    // Timeline 1 going on in the archive changes nothing for the recovery.
    assert_eq!(recover(&restored, &env, &["--latest"]), "300|1200");
}
