//! The corpus of real-world objects (`tests/corpus/`): each database goes through backup (both
//! PostgreSQL formats), verify, a restore drill and a restore, and the plain tools are the
//! oracle: the restored database's normalized dump equals what `pg_dump | psql` (and
//! `pg_dump -Fc | pg_restore`) give for the same database, which in turn equals the original's
//! but for what PostgreSQL's own tools cannot keep (named in [`PG_CANNOT_KEEP`]); every table's
//! row count is the original's; the drill passes with amcheck on every leaf btree index.

use crate::common::{PgServer, TestEnv, have, require};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

const PG_CORPUS: &str = include_str!("corpus/postgres.sql");
const SQLITE_CORPUS: &str = include_str!("corpus/sqlite.sql");

/// Tables whose column order pg_dump cannot keep: a column added to an inheritance parent
/// after the child was made, and a child that joined its parent later. pg_dump writes them
/// as `CREATE TABLE … INHERITS`, which puts the parent's columns first; the data follows the
/// columns by name, so only the order differs.
const PG_CANNOT_KEEP: [&str; 2] = ["hist.measure_child", "hist.measure_orphan"];

/// Every table's rows, counted by the oracle (not by dbkeep's query).
fn pg_row_counts(pg: &PgServer, db: &str) -> BTreeMap<String, u64> {
    let tables = pg.sql(
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
         ORDER BY 1",
    );
    tables
        .lines()
        .map(|t| {
            let n = pg.sql(db, &format!("SELECT count(*) FROM ONLY {t}"));
            (t.to_owned(), n.trim().parse().expect("a count"))
        })
        .collect()
}

/// The parts of a normalized dump about `tables`' columns and rows, taken out: per table its
/// column definitions (as a set) and its rows (as column → value maps, sorted). The rest of
/// the dump comes back unchanged.
type Unordered = BTreeMap<String, (BTreeSet<String>, Vec<BTreeMap<String, String>>)>;

fn take_out_column_order(dump: &str, tables: &[&str]) -> (String, Unordered) {
    let mut rest = Vec::new();
    let mut taken: Unordered = BTreeMap::new();
    let mut lines = dump.lines();
    while let Some(line) = lines.next() {
        let create = tables
            .iter()
            .find(|t| line == format!("CREATE TABLE {t} ("));
        let copy = tables
            .iter()
            .find(|t| line.starts_with(&format!("COPY {t} (")));
        if let Some(t) = create {
            rest.push(line.to_owned());
            let entry = taken.entry(t.to_string()).or_default();
            for col in lines.by_ref() {
                if col.starts_with(')') {
                    rest.push(col.to_owned());
                    break;
                }
                entry.0.insert(col.trim().trim_end_matches(',').to_owned());
            }
        } else if let Some(t) = copy {
            let cols: Vec<String> = line
                [line.find('(').expect("(") + 1..line.rfind(')').expect(")")]
                .split(", ")
                .map(str::to_owned)
                .collect();
            rest.push(format!("COPY {t} FROM stdin;"));
            let entry = taken.entry(t.to_string()).or_default();
            for row in lines.by_ref() {
                if row == "\\." {
                    rest.push(row.to_owned());
                    break;
                }
                entry.1.push(
                    cols.iter()
                        .cloned()
                        .zip(row.split('\t').map(str::to_owned))
                        .collect(),
                );
            }
            entry.1.sort();
        } else {
            rest.push(line.to_owned());
        }
    }
    (rest.join("\n"), taken)
}

#[test]
fn postgres_corpus_round_trips_through_backup_verify_drill_and_restore() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    pg.sql(
        "postgres",
        // Not the server's default locale: a restore must create the database as the dump says.
        "CREATE ROLE corpus_owner; CREATE ROLE corpus_reader; \
         CREATE DATABASE corpus TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C';",
    );
    pg.sql("corpus", PG_CORPUS);
    let original = pg.normalized_dump("corpus");
    let counts = pg_row_counts(&pg, "corpus");
    assert_eq!(counts.len(), 22, "{counts:?}");
    let leaf_btree: u64 = pg
        .sql(
            "corpus",
            "SELECT count(*) FROM pg_class c JOIN pg_am a ON a.oid = c.relam \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'i' AND a.amname = 'btree' \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
        )
        .trim()
        .parse()
        .expect("a count");

    // The plain tools' dumps of the same database, taken beside dbkeep's backups.
    let mut env = TestEnv::new();
    let plain = env.path().join("oracle.sql");
    let archive = env.path().join("oracle.dump");
    let to_plain = format!("--file={}", plain.display());
    let to_archive = format!("--file={}", archive.display());
    let plain_args = ["--create", "--clean", "--if-exists", &to_plain];
    pg.run_tool("pg_dump", "corpus", &plain_args.map(OsStr::new));
    let archive_args = ["--format=custom", &to_archive];
    pg.run_tool("pg_dump", "corpus", &archive_args.map(OsStr::new));
    env.set("DATABASE_URL", pg.superuser_url("corpus"));
    env.set("BACKUP_PG_BINDIR", pg.bin.display().to_string());
    for format in ["sql", "custom"] {
        env.set("BACKUP_PG_FORMAT", format);
        env.run(&["backup", "--name", &format!("corpus_{format}")])
            .ok();
    }
    assert_eq!(
        pg.normalized_dump("corpus"),
        original,
        "backups change nothing"
    );

    for format in ["sql", "custom"] {
        let name = format!("corpus_{format}");
        let m = env.manifest(&name);
        assert_eq!(
            m["row_counts"].as_object().map(|o| o.len()),
            Some(counts.len()),
            "{name}"
        );
        env.run(&["verify", &name]).ok();
        let o = env.run(&["verify", "--restore", &name]);
        o.ok();
        let all = o.all();
        assert!(
            all.contains(&format!(
                "amcheck bt_index_check passed on {leaf_btree} btree indexes"
            )),
            "{name}: {all}"
        );
        assert!(
            all.contains("not checked by amcheck, which covers btree only: 8 brin, 7 gin, 2 gist, 1 hash, 2 spgist indexes"),
            "{name}: {all}"
        );
        assert!(
            all.contains(&format!(
                "row counts of all {} tables equal the manifest's",
                counts.len()
            )),
            "{name}: {all}"
        );
        assert!(!all.contains("could not check"), "{name}: {all}");
        assert_eq!(env.manifest(&name)["verification"]["outcome"], "passed");
        assert_eq!(
            pg.normalized_dump("corpus"),
            original,
            "{name}: drills touch nothing"
        );
    }

    // What the plain tools make of the database differs from the original only where
    // PostgreSQL cannot keep it: the column order of two inheritance children.
    let psql = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"].map(OsStr::new);
    pg.run_tool(
        "psql",
        "postgres",
        &[&psql[..], &[plain.as_os_str()]].concat(),
    );
    let by_psql = pg.normalized_dump("corpus");
    let (orig_rest, orig_cols) = take_out_column_order(&original, &PG_CANNOT_KEEP);
    let (psql_rest, psql_cols) = take_out_column_order(&by_psql, &PG_CANNOT_KEEP);
    assert_eq!(
        psql_rest, orig_rest,
        "pg_dump | psql keeps all but the column order"
    );
    assert_eq!(
        psql_cols, orig_cols,
        "the same columns and rows, in another order"
    );
    assert_eq!(orig_cols.len(), 2, "{orig_cols:?}");
    assert_ne!(by_psql, original, "PostgreSQL still cannot keep that order");

    // dbkeep's restores give exactly what the plain tools give.
    env.set("BACKUP_PG_FORMAT", "sql");
    env.run(&["restore", "corpus_sql", "--yes"]).ok();
    assert_eq!(
        pg.normalized_dump("corpus"),
        by_psql,
        "plain restore = pg_dump | psql"
    );
    assert_eq!(pg_row_counts(&pg, "corpus"), counts);

    let pg_restore = [
        "--create",
        "--clean",
        "--if-exists",
        "--exit-on-error",
        "-d",
        "postgres",
    ];
    let pg_restore = pg_restore.map(OsStr::new);
    pg.run_tool(
        "pg_restore",
        "postgres",
        &[&pg_restore[..], &[archive.as_os_str()]].concat(),
    );
    let by_pg_restore = pg.normalized_dump("corpus");
    assert_eq!(by_pg_restore, by_psql, "pg_restore and psql agree");
    env.run(&["restore", "corpus_custom", "--yes"]).ok();
    assert_eq!(
        pg.normalized_dump("corpus"),
        by_pg_restore,
        "custom restore = pg_dump -Fc | pg_restore"
    );
    assert_eq!(pg_row_counts(&pg, "corpus"), counts);
}

/// `sqlite3 FILE .dump`, the oracle for SQLite (bytes: text values need not be UTF-8).
fn sqlite_dump(file: &Path) -> Vec<u8> {
    let out = Command::new("sqlite3")
        .arg(file)
        .arg(".dump")
        .output()
        .expect("run sqlite3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sqlite_header(file: &Path) -> (i64, i64) {
    let c = rusqlite::Connection::open(file).unwrap();
    let get = |p: &str| {
        c.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
            .unwrap()
    };
    (get("user_version"), get("application_id"))
}

#[test]
fn sqlite_corpus_round_trips_through_backup_verify_drill_and_restore() {
    if !require("the sqlite3 shell", have("sqlite3"), "sqlite3") {
        return;
    }
    let mut env = TestEnv::new();
    let db = env.path().join("app.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(SQLITE_CORPUS)
        .unwrap();
    let original = sqlite_dump(&db);
    let text = String::from_utf8_lossy(&original);
    for kind in [
        "STRICT",
        "WITHOUT ROWID",
        "GENERATED ALWAYS",
        "USING fts5",
        "CREATE TRIGGER",
        "CREATE VIEW",
        "WHERE price < 10",
    ] {
        assert!(text.contains(kind), "the corpus has {kind}");
    }
    assert_eq!(sqlite_header(&db), (42, 1684171632));
    env.set("DATABASE_URL", "sqlite:///app.db");
    env.run(&["backup", "--name", "corpus"]).ok();
    env.run(&["verify", "corpus"]).ok();
    let o = env.run(&["verify", "--restore", "corpus"]);
    o.ok();
    assert!(
        o.stdout.contains("foreign_key_check: no violations"),
        "{}",
        o.stdout
    );
    let tables = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    assert!(
        o.stdout.contains(&format!(
            "row counts of all {tables} tables equal the manifest's"
        )),
        "{}",
        o.stdout
    );

    // The live file changes after the backup; the restore brings back the backup's state.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "PRAGMA user_version = 7; DELETE FROM tags; DROP VIEW author_books; \
             INSERT INTO books_fts (title, body) VALUES ('new', 'after the backup');",
        )
        .unwrap();
    assert!(sqlite_dump(&db) != original, "the live file changed");
    env.run(&["restore", "corpus", "--yes"]).ok();
    assert!(
        sqlite_dump(&db) == original,
        "the restored file dumps as the original"
    );
    assert_eq!(sqlite_header(&db), (42, 1684171632));
    let check: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let hits: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM books_fts WHERE books_fts MATCH 'drill'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(hits, 810, "the full-text index answers as before");
}
