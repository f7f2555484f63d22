//! Point-in-time recovery against a real server started by the harness: `dbkeep wal check`
//! (each way a server can be unready is named with what to change, and a ready one gives the
//! cluster's real system identifier), and base backups (`backup --physical`): restored into a
//! data directory a server starts on with exactly the data of the moment of the backup,
//! checked file by file against pg_basebackup's manifest, drilled on a throwaway server.

use crate::common::{PgServer, TestEnv};
use crate::postgres::{APP_PASSWORD, assert_no_secret, setup};
use sha2::Digest;
use std::path::Path;
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

/// Rows the base-backup tests write: `n` rows in `pitr_rows` of appdb.
const ROWS: &str = "CREATE TABLE pitr_rows (id int PRIMARY KEY, note text NOT NULL); \
     INSERT INTO pitr_rows SELECT g, md5(g::text) FROM generate_series(1, 5000) g;";

#[test]
fn a_base_backup_restores_into_a_data_directory_that_a_server_starts_on() {
    let Some((pg, env)) = setup() else { return };
    let data = pg.socket_dir().join("data");
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    pg.sql_as("app", "appdb", ROWS);
    let before = pg.normalized_dump("appdb");

    let backup = env.run(&["backup", "--physical", "--name", "base_1"]);
    backup.ok();
    assert!(backup.stdout.contains("base_1.tar.gz"), "{}", backup.all());
    // Written after the backup: the restored copy must not have it.
    pg.sql_as(
        "app",
        "appdb",
        "INSERT INTO pitr_rows VALUES (999999, 'after')",
    );

    let m = env.manifest("base_1");
    assert_eq!(m["pg_format"], "physical", "{m}");
    assert_eq!(m["manifest_version"], 3, "{m}");
    assert_eq!(
        m["base_backup"]["system_identifier"],
        control_identifier(&pg.bin, &data).as_str()
    );
    assert_eq!(m["base_backup"]["timeline"], 1);
    let lsn = |v: &serde_json::Value| {
        let (hi, lo) = v.as_str().unwrap().split_once('/').unwrap();
        u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap()
    };
    assert!(lsn(&m["base_backup"]["start_lsn"]) < lsn(&m["base_backup"]["stop_lsn"]));
    assert!(
        m["tool_version"]
            .as_str()
            .unwrap()
            .starts_with("pg_basebackup ")
    );

    // verify reads every file against pg_basebackup's manifest, and the WAL it needs.
    let v = env.run(&["verify", "base_1"]);
    v.ok();
    assert!(
        v.stdout
            .contains("match pg_basebackup's manifest (SHA-256), 1 WAL segments"),
        "{}",
        v.all()
    );

    // A restore into the configured database is refused: it is not a dump.
    let r = env.run(&["restore", "base_1", "-y"]);
    r.code(2);
    assert!(r.stderr.contains("--pgdata DIR"), "{}", r.all());
    assert!(
        pg.normalized_dump("appdb").contains("999999"),
        "the live database was touched"
    );

    // Never into a directory that holds something.
    let busy = tempfile::tempdir().unwrap();
    std::fs::write(busy.path().join("PG_VERSION"), "15\n").unwrap();
    let r = env.run(&[
        "restore",
        "base_1",
        "--pgdata",
        busy.path().to_str().unwrap(),
    ]);
    r.code(2);
    assert!(r.stderr.contains("is not empty"), "{}", r.all());
    assert_eq!(std::fs::read_dir(busy.path()).unwrap().count(), 1);

    // Into a new directory: a server starts on it, with the data of the backup's moment.
    let target = tempfile::tempdir().unwrap();
    let restored_dir = target.path().join("data");
    let r = env.run(&[
        "restore",
        "base_1",
        "--pgdata",
        restored_dir.to_str().unwrap(),
    ]);
    r.ok();
    assert!(r.stdout.contains("pg_ctl -D"), "{}", r.all());
    let restored = PgServer::adopt(pg.bin.clone(), target);
    assert_eq!(restored.normalized_dump("appdb"), before);
    assert_eq!(
        restored
            .sql("appdb", "SELECT count(*) FROM pitr_rows WHERE id = 999999")
            .trim(),
        "0"
    );
    drop(restored);

    // The drill: unpacked, pg_verifybackup, a throwaway server; recorded in the manifest.
    let d = env.run(&["verify", "--restore", "base_1"]);
    d.ok();
    let m = env.manifest("base_1");
    let checks = m["verification"]["checks"].to_string();
    assert_eq!(m["verification"]["outcome"], "passed", "{m}");
    assert!(
        checks.contains("pg_verifybackup: backup successfully verified"),
        "{checks}"
    );
    assert!(
        checks.contains("reached a consistent recovery state"),
        "{checks}"
    );
    assert!(checks.contains("databases open"), "{checks}");
    assert!(
        checks.contains("appdb: amcheck bt_index_check passed on"),
        "{checks}"
    );
    assert_no_secret(&env, &[&backup.all(), &v.all(), &d.all()], APP_PASSWORD);
}

#[test]
fn a_base_backup_whose_files_differ_from_its_manifest_is_refused_and_restores_nothing() {
    let Some((pg, env)) = setup() else { return };
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    env.run(&["backup", "--physical", "--no-compress", "--name", "base_2"])
        .ok();
    // PG_VERSION's content changed inside the stored tar, and dbkeep's manifest made to agree
    // with the changed bytes: only pg_basebackup's manifest can tell.
    let key = env.manifest("base_2")["data_file"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = env.backup_dir().join(&key);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = find_entry(&bytes, "PG_VERSION");
    assert_eq!(
        &bytes[at..at + 3],
        b"15\n",
        "the test expects PostgreSQL 15"
    );
    bytes[at + 1] = b'9';
    std::fs::write(&file, &bytes).unwrap();
    let manifest_path = env.backup_dir().join("base_2.manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    m["sha256"] = hex::encode(sha2::Sha256::digest(&bytes)).into();
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();

    let v = env.run(&["verify", "base_2"]);
    v.code(1);
    assert!(
        v.stdout
            .contains("PG_VERSION's SHA-256 differs from the manifest's"),
        "{}",
        v.all()
    );
    let target = tempfile::tempdir().unwrap();
    let r = env.run(&[
        "restore",
        "base_2",
        "--pgdata",
        target.path().to_str().unwrap(),
    ]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("PG_VERSION"), "{}", r.all());
    assert_eq!(
        std::fs::read_dir(target.path()).unwrap().count(),
        0,
        "a failed restore leaves the directory empty"
    );
    let d = env.run(&["verify", "--restore", "base_2"]);
    assert_ne!(d.code, 0, "{}", d.all());
    let m = env.manifest("base_2");
    assert_eq!(m["verification"]["outcome"], "failed", "{m}");
    assert_eq!(m["verification"]["failed_check"], "unpack", "{m}");
}

/// Where the data of the tar entry `name` starts in an uncompressed tar.
fn find_entry(tar: &[u8], name: &str) -> usize {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let header = &tar[at..at + 512];
        let end = header[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let size_text = String::from_utf8_lossy(&header[124..136]);
        let size = u64::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .unwrap_or(0) as usize;
        if &header[..end] == name.as_bytes() {
            return at + 512;
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    panic!("no entry {name} in the tar");
}

#[test]
fn a_base_backup_without_replication_rights_fails_naming_the_fix_and_keeps_nothing() {
    let Some((_pg, env)) = setup() else { return };
    let o = env.run(&["backup", "--physical", "--name", "base_3"]);
    assert_ne!(o.code, 0, "{}", o.all());
    assert!(
        o.stderr.contains("cannot give a base backup"),
        "{}",
        o.all()
    );
    assert!(
        o.stderr.contains("ALTER ROLE \"app\" REPLICATION"),
        "{}",
        o.all()
    );
    assert!(o.stderr.contains("dbkeep wal check"), "{}", o.all());
    assert_eq!(env.backups(), vec![("base_3".to_owned(), false)]);
    assert!(
        env.files().iter().all(|f| !f.contains(".tar")),
        "{:?}",
        env.files()
    );
    assert_no_secret(&env, &[&o.all()], APP_PASSWORD);
}

#[test]
fn a_base_backup_of_another_engine_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = TestEnv::new();
    env.set(
        "DATABASE_URL",
        format!("sqlite:///{}", dir.path().join("app.db").display()),
    );
    let o = env.run(&["backup", "--physical"]);
    o.code(2);
    assert!(
        o.stderr
            .contains("a base backup (--physical) is of a PostgreSQL cluster"),
        "{}",
        o.all()
    );
    assert!(
        Path::new(&env.backup_dir())
            .read_dir()
            .map_or(true, |mut d| d.all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tar")))
    );
}
