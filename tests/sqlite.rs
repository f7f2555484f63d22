//! SQLite: backups through the online backup API, restores into a live database.

use crate::common::TestEnv;
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub fn make_db(path: &Path, rows: i64) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL, photo BLOB);
         CREATE TABLE IF NOT EXISTS empty_one (x TEXT);",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO people (name, score, photo) VALUES (?1, ?2, ?3)",
            rusqlite::params![
                format!("person {i} ünïcødé ✓"),
                i as f64 / 3.0,
                vec![i as u8; 64]
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// One row of `people`.
pub type Person = (i64, String, Option<f64>, Option<Vec<u8>>);

pub fn rows(path: &Path) -> Vec<Person> {
    let c = Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT id, name, score, photo FROM people ORDER BY id")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

pub fn sqlite_env(rows: i64) -> TestEnv {
    let mut env = TestEnv::new();
    make_db(&env.path().join("app.db"), rows);
    env.set("DATABASE_URL", "sqlite:///app.db");
    env
}

#[test]
fn round_trip_keeps_every_row() {
    let env = sqlite_env(500);
    let db = env.path().join("app.db");
    let before = rows(&db);
    env.run(&["backup", "--name", "rt_20240101"]).ok();
    let m = env.manifest("rt_20240101");
    assert_eq!(m["success"], true);
    assert_eq!(m["database_type"], "sqlite");
    assert_eq!(m["compression"], "gzip");
    assert_eq!(m["series"], "rt");
    // The manifest holds the row counts; the catalog (and so `list`) does not (REVIEW D4).
    assert_eq!(m["row_counts"]["people"], 500);
    let listed = env.list();
    assert!(listed["backups"][0].get("row_counts").is_none(), "{listed}");
    // gzip -t accepts the stored file.
    let stored = env.backup_dir().join("rt_20240101.db.gz");
    assert!(crate::common::tool_accepts("gzip", &stored));

    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "DELETE FROM people WHERE id % 2 = 0; INSERT INTO people (name) VALUES ('new');",
    )
    .unwrap();
    drop(c);
    assert_ne!(rows(&db), before);
    env.run(&["restore", "rt_20240101", "--yes"]).ok();
    assert_eq!(rows(&db), before);
}

#[test]
fn uncompressed_backup_is_a_plain_database() {
    let env = sqlite_env(10);
    env.run(&["backup", "--name", "plain", "--no-compress"])
        .ok();
    let file = env.backup_dir().join("plain.db");
    assert_eq!(rows(&file).len(), 10);
    assert_eq!(env.manifest("plain")["compressed"], false);
    env.run(&["verify", "plain"]).ok();
}

#[test]
fn backup_during_continuous_writes_is_consistent() {
    let env = sqlite_env(20_000);
    let db = env.path().join("app.db");
    {
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT);",
        )
        .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let db = db.clone();
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Each transaction adds one row to both tables: any consistent snapshot has
                // equal counts and no gaps.
                let tx = c.unchecked_transaction().unwrap();
                tx.execute("INSERT INTO a (id, v) VALUES (?1, 'x')", [i])
                    .unwrap();
                tx.execute("INSERT INTO b (id, v) VALUES (?1, 'y')", [i])
                    .unwrap();
                tx.commit().unwrap();
            }
            i
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    for n in 0..3 {
        env.run(&["backup", "--name", &format!("busy_{n}"), "--no-compress"])
            .ok();
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 0);
    for n in 0..3 {
        let copy = env.backup_dir().join(format!("busy_{n}.db"));
        let c = Connection::open(&copy).unwrap();
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let (ca, maxa): (i64, Option<i64>) = c
            .query_row("SELECT count(*), max(id) FROM a", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let cb: i64 = c
            .query_row("SELECT count(*) FROM b", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ca, cb, "a and b were written together");
        assert_eq!(
            maxa.unwrap_or(0),
            ca,
            "a prefix of the writes, without gaps"
        );
        assert!(ca <= written);
        // The manifest counts the rows of exactly this copy, writes going on meanwhile.
        let counts = &env.manifest(&format!("busy_{n}"))["row_counts"];
        assert_eq!(counts["a"], ca, "{counts}");
        assert_eq!(counts["b"], cb, "{counts}");
        assert_eq!(counts["people"], 20_000, "{counts}");
        assert_eq!(counts["empty_one"], 0, "{counts}");
        env.run(&["verify", &format!("busy_{n}")]).ok();
    }
}

#[test]
fn restore_reaches_a_connection_that_holds_the_database_open() {
    let env = sqlite_env(100);
    let db = env.path().join("app.db");
    env.run(&["backup", "--name", "held"]).ok();
    let held = Connection::open(&db).unwrap();
    held.execute("DELETE FROM people", []).unwrap();
    let count = |c: &Connection| -> i64 {
        c.query_row("SELECT count(*) FROM people", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&held), 0);
    env.run(&["restore", "held", "--yes"]).ok();
    // The same connection, opened before the restore, reads the restored rows.
    assert_eq!(count(&held), 100);
}

#[test]
fn missing_database_fails_cleanly_and_creates_nothing() {
    let mut env = TestEnv::new();
    env.set("DATABASE_URL", "sqlite:///does/not/exist.db");
    let o = env.run(&["backup", "--name", "nope"]);
    o.code(1);
    assert!(o.stderr.contains("does not exist"), "{}", o.stderr);
    assert!(!env.path().join("does/not/exist.db").exists());
    assert!(
        env.log().lines().any(|l| l.contains("ERROR")),
        "{}",
        env.log()
    );
    assert_eq!(env.files(), vec!["nope.manifest.failed.json"]);
    let list = env.list();
    assert_eq!(list["backups"][0]["success"], false);
    assert!(
        list["backups"][0]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
    // The same with an existing directory but a missing file: still nothing created.
    env.set("DATABASE_URL", "sqlite:///missing.db");
    env.run(&["backup", "--name", "nope2"]).code(1);
    assert!(!env.path().join("missing.db").exists());
}

#[test]
fn flipped_byte_fails_verify_and_restore_leaves_the_database() {
    let env = sqlite_env(300);
    let db = env.path().join("app.db");
    env.run(&["backup", "--name", "flip"]).ok();
    env.run(&["verify", "flip"]).ok();
    let file = env.backup_dir().join("flip.db.gz");
    crate::common::flip_byte(&file, 0x01);
    let o = env.run(&["verify", "flip"]);
    o.code(1);
    assert!(
        o.stdout.contains("FAILED") && o.stdout.contains("SHA-256"),
        "{}",
        o.stdout
    );

    let c = Connection::open(&db).unwrap();
    c.execute("DELETE FROM people WHERE id > 10", []).unwrap();
    drop(c);
    let before = rows(&db);
    let o = env.run(&["restore", "flip", "--yes"]);
    o.code(1);
    assert!(o.stderr.contains("damaged"), "{}", o.stderr);
    assert_eq!(rows(&db), before, "the live database is untouched");
}

#[test]
fn truncated_and_missing_data_files_are_reported() {
    let env = sqlite_env(300);
    env.run(&["backup", "--name", "cut"]).ok();
    env.run(&["backup", "--name", "gone"]).ok();
    let file = env.backup_dir().join("cut.db.gz");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 2).unwrap();
    std::fs::remove_file(env.backup_dir().join("gone.db.gz")).unwrap();
    let o = env.run(&["verify", "--all"]);
    o.code(1);
    assert!(
        o.stdout.contains("FAILED  cut") && o.stdout.contains("truncated"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("FAILED  gone") && o.stdout.contains("missing"),
        "{}",
        o.stdout
    );
}

#[test]
fn restore_needs_confirmation_without_a_terminal() {
    let env = sqlite_env(5);
    env.run(&["backup", "--name", "c1"]).ok();
    let o = env.run(&["restore", "c1"]);
    o.code(2);
    assert!(o.stderr.contains("--yes"), "{}", o.stderr);
    let o = env.run(&["delete", "c1"]);
    o.code(2);
    assert!(env.backup_dir().join("c1.manifest.json").exists());
    env.run(&["delete", "c1", "--yes"]).ok();
    assert!(env.files().is_empty(), "{:?}", env.files());
    env.run(&["delete", "c1", "--yes"]).code(2);
}

#[test]
fn zstd_backups_round_trip_and_open_with_the_zstd_tool() {
    let mut env = sqlite_env(400);
    env.set("BACKUP_COMPRESSION", "zstd");
    let db = env.path().join("app.db");
    let before = rows(&db);
    env.run(&["backup", "--name", "z1"]).ok();
    let m = env.manifest("z1");
    assert_eq!(
        (m["compression"].as_str(), m["compressed"].as_bool()),
        (Some("zstd"), Some(true))
    );
    let file = env.backup_dir().join("z1.db.zst");
    if crate::common::require("the zstd command", crate::common::have("zstd"), "zstd") {
        assert!(
            crate::common::tool_accepts("zstd", &file),
            "zstd -t accepts the stored file"
        );
    }
    env.run(&["verify", "z1"]).ok();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM people", [])
        .unwrap();
    env.run(&["restore", "z1", "--yes"]).ok();
    assert_eq!(rows(&db), before);
    // A flipped byte is caught.
    crate::common::flip_byte(&file, 0x10);
    env.run(&["verify", "z1"]).code(1);
    // --no-compress still means none.
    env.run(&["backup", "--name", "z2", "--no-compress"]).ok();
    assert_eq!(env.manifest("z2")["compression"], "none");
}

/// REVIEW D7: a virtual table of an extension dbkeep does not load (sqlite-vec, spatialite)
/// fails neither the backup's row counts nor the drill's: it is left out of both.
#[test]
fn a_virtual_table_of_a_missing_module_is_not_counted() {
    let env = sqlite_env(20);
    let db = env.path().join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA writable_schema = ON;
         INSERT INTO sqlite_schema (type, name, tbl_name, rootpage, sql)
         VALUES ('table', 'embeddings', 'embeddings', 0,
                 'CREATE VIRTUAL TABLE embeddings USING vec0(v float[4])');
         PRAGMA writable_schema = OFF;",
    )
    .unwrap();
    drop(c);
    env.run(&["backup", "--name", "vt_20240101"]).ok();
    let counts = &env.manifest("vt_20240101")["row_counts"];
    assert!(counts.get("embeddings").is_none(), "{counts}");
    assert!(!counts.as_object().unwrap().is_empty(), "{counts}");
    env.run(&["verify", "--restore", "vt_20240101"]).ok();
}

/// A database whose pages are damaged is copied byte for byte by the backup API, so the copy
/// is damaged too: its quick_check fails, the backup fails naming it, and no data file is
/// committed (the older backup stays the newest good one).
#[test]
fn a_damaged_database_fails_its_backup_and_commits_nothing() {
    let env = sqlite_env(2000);
    let db = env.path().join("app.db");
    env.run(&["backup", "--name", "good_20240101"]).ok();
    // Page 3 is a leaf of `people`: a page type that does not exist.
    let page_size: u64 = {
        let c = Connection::open(&db).unwrap();
        c.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    };
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.seek(SeekFrom::Start(2 * page_size)).unwrap();
        f.write_all(&[0x07]).unwrap();
    }
    let o = env.run(&["backup", "--name", "bad_20240102"]);
    o.code(1);
    assert!(o.stderr.contains("quick_check"), "{}", o.all());
    assert!(
        !env.backup_dir().join("bad_20240102.db.gz").exists(),
        "a damaged copy was committed"
    );
    let listed = env.list();
    let newest_good = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["success"] == true)
        .unwrap();
    assert_eq!(newest_good["backup_name"], "good_20240101", "{listed}");
}
