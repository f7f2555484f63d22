//! Restore drills (`dbkeep verify --restore`, `?restore=true`, `BACKUP_DRILL`): the backup is
//! restored into a throwaway target and checked there; the live database is never touched; the
//! outcome lands in the manifest, list, statistics and healthz.

use crate::api::{Server, TOKEN};
use crate::common::TestEnv;
use crate::sqlite::sqlite_env;
use reqwest::{Method, StatusCode};

/// The names of the drills' scratch databases left on the server.
fn scratch_databases(pg: &crate::common::PgServer) -> Vec<String> {
    pg.sql(
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'dbkeep\\_drill\\_%'",
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Sets the manifest's row count of `table` to `n` (what a drill must then catch).
fn tamper_count(env: &TestEnv, name: &str, table: &str, n: u64) {
    let path = env.backup_dir().join(format!("{name}.manifest.json"));
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["row_counts"][table] = n.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn sqlite_drills_restore_into_a_temporary_file_and_are_recorded() {
    let mut env = sqlite_env(500);
    let db = env.path().join("app.db");
    let live_before = std::fs::read(&db).unwrap();
    env.run(&["backup", "--name", "d_20240101"]).ok();

    let o = env.run(&["verify", "--restore", "d_20240101"]);
    o.ok();
    for check in [
        "sha256 matches",
        "integrity_check ok",
        "restored into a temporary file",
        "foreign_key_check: no violations",
        "row counts of all 2 tables equal the manifest's (500 rows)",
    ] {
        assert!(o.stdout.contains(check), "{check}: {}", o.stdout);
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        live_before,
        "the live database is untouched"
    );
    let v = &env.manifest("d_20240101")["verification"];
    assert_eq!(v["outcome"], "passed", "{v}");
    assert!(v["verified_at"].as_str().unwrap().ends_with('Z'));
    assert!(v["duration"].as_f64().unwrap() >= 0.0);
    assert!(!v["checks"].as_array().unwrap().is_empty());
    assert!(env.run(&["list"]).stdout.contains("drill passed"));
    let stats: serde_json::Value =
        serde_json::from_str(&env.run(&["stats", "--json"]).stdout).unwrap();
    assert_eq!(stats["last_drill"]["backup_name"], "d_20240101");
    assert_eq!(stats["last_drill"]["outcome"], "passed");
    assert_eq!(
        env.files(),
        vec!["d_20240101.db.gz", "d_20240101.manifest.json"],
        "no scratch file is left"
    );

    // A drill that finds other counts than the backup recorded fails, says where, and is
    // recorded as failed; healthz then fails too.
    tamper_count(&env, "d_20240101", "people", 499);
    let o = env.run(&["verify", "--restore", "--latest"]);
    o.code(1);
    assert!(
        o.stdout.contains("people: 500 rows, the backup had 499"),
        "{}",
        o.stdout
    );
    let v = &env.manifest("d_20240101")["verification"];
    assert_eq!(v["outcome"], "failed", "{v}");
    assert!(env.run(&["list"]).stdout.contains("DRILL FAILED"));
    let s = Server::start(&env);
    let (status, h) = s.call(Method::GET, "/healthz", None, None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{h}");
    assert_eq!(h["reason"], "the last restore drill failed");
    assert_eq!(h["last_drill"]["outcome"], "failed");
    drop(s);

    // BACKUP_DRILL=after-backup drills each new backup; through the API too (?restore=true);
    // a passing drill makes healthz well again.
    env.set("BACKUP_DRILL", "after-backup");
    let o = env.run(&["backup", "--name", "d_20240102"]);
    o.ok();
    assert!(o.stdout.contains("drill  passed"), "{}", o.stdout);
    assert_eq!(
        env.manifest("d_20240102")["verification"]["outcome"],
        "passed"
    );
    let s = Server::start(&env);
    let (status, body) = s.call(
        Method::POST,
        "/api/backup/create",
        Some(TOKEN),
        Some(serde_json::json!({"backup_name": "d_20240102b"})),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["drill"]["outcome"], "passed", "{body}");
    assert_eq!(
        env.manifest("d_20240102b")["verification"]["outcome"],
        "passed"
    );
    let (status, body) = s.call(
        Method::POST,
        "/api/backup/verify/d_20240102?restore=true",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["restore_drill"], true);
    assert!(
        body["checks"].to_string().contains("foreign_key_check"),
        "{body}"
    );
    let (status, h) = s.call(Method::GET, "/healthz", None, None);
    assert_eq!(status, StatusCode::OK, "{h}");
    assert_eq!(h["last_drill"]["outcome"], "passed");
    drop(s);

    // BACKUP_DRILL=daily: the series was drilled less than a day ago, so not again.
    env.set("BACKUP_DRILL", "daily");
    let o = env.run(&["backup", "--name", "d_20240103"]);
    o.ok();
    assert!(!o.stdout.contains("drill"), "{}", o.stdout);
    assert!(env.manifest("d_20240103").get("verification").is_none());
}

#[test]
fn sqlite_drill_finds_broken_foreign_keys() {
    let env = TestEnv::new();
    let db = env.path().join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE parent (id INTEGER PRIMARY KEY);
         CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id));
         INSERT INTO parent VALUES (1);
         INSERT INTO child VALUES (1, 1), (2, 7);",
    )
    .unwrap();
    drop(c);
    let mut env = env;
    env.set("DATABASE_URL", "sqlite:///app.db");
    env.run(&["backup", "--name", "fk"]).ok();
    let o = env.run(&["verify", "--restore", "fk"]);
    o.code(1);
    assert!(
        o.stdout.contains("foreign_key_check finds 1 violation")
            && o.stdout
                .contains("a row of child (rowid 2) refers to a missing row of parent"),
        "{}",
        o.stdout
    );
    assert_eq!(env.manifest("fk")["verification"]["outcome"], "failed");
}

#[test]
fn postgres_drills_use_a_scratch_database_and_never_touch_the_live_one() {
    let Some((pg, mut env)) = crate::postgres::setup() else {
        return;
    };
    // A hostile owner: a comment on the database whose second line is SQL, and a table comment
    // with lines that look like statements on databases. A line-based filter would run the
    // first and break the second; the drill must do neither.
    pg.sql_as(
        "app",
        "appdb",
        "COMMENT ON DATABASE appdb IS E'x\nALTER ROLE app CONNECTION LIMIT 7; --'; \
         COMMENT ON TABLE sales.items IS E'a\nDROP DATABASE appdb;\n\\connect postgres\nb';",
    );
    let conn_limit = || {
        pg.sql(
            "postgres",
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app'",
        )
    };
    assert_eq!(conn_limit().trim(), "-1");
    let before = pg.normalized_dump("appdb");
    for format in ["sql", "custom"] {
        env.set("BACKUP_PG_FORMAT", format);
        let name = format!("drill_{format}");
        env.run(&["backup", "--name", &name]).ok();
        // As the owner (no superuser): amcheck cannot be installed, and the drill says so.
        let o = env.run(&["verify", "--restore", &name]);
        o.ok();
        assert!(
            o.stdout
                .contains("restored into the scratch database dbkeep_drill_"),
            "{}",
            o.stdout
        );
        assert!(
            o.stdout
                .contains("row counts of all 3 tables equal the manifest's (6000 rows)"),
            "{}",
            o.stdout
        );
        assert!(o.stdout.contains("amcheck not available"), "{}", o.stdout);
        if format == "custom" {
            // Compressed by pg_dump (gzip, the default codec), in a local directory: pg_restore
            // reads the stored archive itself, no copy is written.
            assert!(
                o.stdout.contains("custom archive read in place"),
                "{}",
                o.stdout
            );
        }
        assert_eq!(
            pg.normalized_dump("appdb"),
            before,
            "{format}: live database untouched"
        );
        assert_eq!(
            conn_limit().trim(),
            "-1",
            "{format}: no SQL smuggled in a comment ran"
        );
        assert!(
            scratch_databases(&pg).is_empty(),
            "{:?}",
            scratch_databases(&pg)
        );
        assert_eq!(env.manifest(&name)["verification"]["outcome"], "passed");
    }

    // As a superuser (over the socket): amcheck checks every btree index.
    let superuser = pg.superuser_url("appdb");
    let o = env.run_with(
        &[("DATABASE_URL", &superuser)],
        &["verify", "--restore", "drill_sql"],
    );
    o.ok();
    assert!(
        o.stdout
            .contains("amcheck bt_index_check passed on 2 btree indexes"),
        "{}",
        o.stdout
    );

    // A failed drill (counts that differ) drops its scratch database too.
    tamper_count(&env, "drill_custom", "audit.log", 1);
    let o = env.run(&["verify", "--restore", "drill_custom"]);
    o.code(1);
    assert!(
        o.stdout.contains("audit.log: 3000 rows, the backup had 1"),
        "{}",
        o.stdout
    );
    assert!(scratch_databases(&pg).is_empty());
    assert_eq!(
        env.manifest("drill_custom")["verification"]["outcome"],
        "failed"
    );

    // A drill stopped by SIGTERM drops its scratch database before it exits.
    let child = env
        .command(&["verify", "--restore", "drill_sql"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::common::wait_for("a drill's scratch database", || {
        !scratch_databases(&pg).is_empty()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        scratch_databases(&pg).is_empty(),
        "{:?} {}",
        scratch_databases(&pg),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.normalized_dump("appdb"), before);

    // A drill killed mid-way leaves its scratch database; the next drill drops it.
    let mut child = env
        .command(&["verify", "--restore", "drill_sql"])
        .spawn()
        .unwrap();
    crate::common::wait_for("a drill's scratch database", || {
        !scratch_databases(&pg).is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = env.run(&["verify", "--restore", "drill_sql"]);
    o.ok();
    assert!(
        scratch_databases(&pg).is_empty(),
        "{:?}",
        scratch_databases(&pg)
    );
    assert_eq!(pg.normalized_dump("appdb"), before);
}

/// Operator classes whose comparison misbehaves only when amcheck calls it (its session's
/// application_name is `dbkeep amcheck …`): `touchy_ops` raises an error (amcheck cannot
/// check the index: not damage), `flip_ops` reverses the order the index was built in (what
/// amcheck reports as a damaged index).
const TOUCHY_OPCLASSES: &str = r#"
CREATE FUNCTION touchy_cmp(int, int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF current_setting('application_name') LIKE 'dbkeep amcheck%' THEN
    RAISE EXCEPTION 'touchy comparison refused';
  END IF;
  RETURN btint4cmp($1, $2);
END $$;
CREATE OPERATOR CLASS touchy_ops FOR TYPE int USING btree AS
  OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >,
  FUNCTION 1 touchy_cmp(int, int);
CREATE FUNCTION flip_cmp(int, int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF current_setting('application_name') LIKE 'dbkeep amcheck%' THEN
    RETURN btint4cmp($2, $1);
  END IF;
  RETURN btint4cmp($1, $2);
END $$;
CREATE OPERATOR CLASS flip_ops FOR TYPE int USING btree AS
  OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >,
  FUNCTION 1 flip_cmp(int, int);
"#;

#[test]
fn postgres_drill_checks_leaf_btree_indexes_and_tells_damage_from_what_it_cannot_check() {
    let Some((pg, mut env)) = crate::postgres::setup() else {
        return;
    };
    // A partitioned table with a primary key: its partitioned index has the btree access
    // method, but amcheck refuses it (only its partitions' indexes can be checked).
    pg.sql(
        "appdb",
        &format!(
            "{TOUCHY_OPCLASSES}
             CREATE TABLE pk (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
             CREATE TABLE pk_1 PARTITION OF pk FOR VALUES FROM (0) TO (1000);
             CREATE TABLE pk_2 PARTITION OF pk FOR VALUES FROM (1000) TO (2000);
             INSERT INTO pk SELECT g, 'v' || g FROM generate_series(0, 1999) g;
             CREATE TABLE other (x int, tags text[]);
             INSERT INTO other SELECT g, ARRAY['a', 'b' || g] FROM generate_series(1, 500) g;
             CREATE INDEX other_tags ON other USING gin (tags);
             CREATE INDEX other_touchy ON other (x touchy_ops);"
        ),
    );
    env.set("DATABASE_URL", pg.superuser_url("appdb"));
    // Operator classes are a superuser's to create: this dump is drilled as one.
    env.set("BACKUP_DRILL_SANDBOX", "false");
    for format in ["sql", "custom"] {
        env.set("BACKUP_PG_FORMAT", format);
        let name = format!("am_{format}");
        env.run(&["backup", "--name", &name]).ok();
        let o = env.run(&["verify", "--restore", &name]);
        o.ok();
        for check in [
            // sales.items, audit.log and the two partitions' primary keys.
            "amcheck bt_index_check passed on 4 btree indexes (partitioned indexes: 1, checked through their partitions' indexes)",
            "could not check public.other_touchy: touchy comparison refused",
            "not checked by amcheck, which covers btree only: 1 gin indexes",
        ] {
            assert!(o.stdout.contains(check), "{format}: {check}: {}", o.stdout);
        }
        assert!(!o.stdout.contains("damaged"), "{}", o.stdout);
        assert_eq!(env.manifest(&name)["verification"]["outcome"], "passed");
    }

    // A damaged index fails the drill, named as damaged; the manifest keeps what passed
    // before (the restore, the row counts) and says which check failed.
    pg.sql("appdb", "CREATE INDEX other_flipped ON other (x flip_ops);");
    env.set("BACKUP_PG_FORMAT", "custom");
    env.run(&["backup", "--name", "am_bad"]).ok();
    let o = env.run(&["verify", "--restore", "am_bad"]);
    o.code(1);
    assert!(
        o.stdout
            .contains("amcheck found 1 damaged index, the first public.other_flipped: "),
        "{}",
        o.stdout
    );
    assert!(!o.stdout.contains("could not check public.other_flipped"));
    let v = &env.manifest("am_bad")["verification"];
    assert_eq!(v["outcome"], "failed", "{v}");
    assert_eq!(v["failed_check"], "amcheck", "{v}");
    let checks = v["checks"].to_string();
    for passed in [
        "sha256 matches",
        "restored into the scratch database dbkeep_drill_",
        "row counts of all 6 tables equal the manifest's",
        "could not check public.other_touchy",
    ] {
        assert!(checks.contains(passed), "{passed}: {v}");
    }
    assert!(scratch_databases(&pg).is_empty());
}

/// REVIEW D8: drills through the API run one at a time on the production server, however many
/// clients ask at once.
#[test]
fn api_drills_run_one_at_a_time() {
    let Some((pg, env)) = crate::postgres::setup() else {
        return;
    };
    pg.sql_as(
        "app",
        "appdb",
        "CREATE TABLE public.bulk AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 200000) g;",
    );
    env.run(&["backup", "--name", "d_20240101"]).ok();
    let s = Server::start(&env);
    let done = std::sync::atomic::AtomicBool::new(false);
    let most = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(scratch_databases(&pg).len());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            most
        });
        let calls: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    s.call(
                        Method::POST,
                        "/api/backup/verify/d_20240101?restore=true",
                        Some(TOKEN),
                        None,
                    )
                })
            })
            .collect();
        for c in calls {
            let (status, body) = c.join().unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        watcher.join().unwrap()
    });
    assert_eq!(most, 1, "never two scratch databases at once");
}

/// REVIEW C7: the scratch database has the dump's encoding and locale (a LATIN1 database whose
/// check constraint counts bytes drills as it restores, where the server's UTF8 default failed
/// it), and a role that is not a superuser drills a plain dump whose objects belong to
/// other roles (owners and privileges left out, as pg_restore --no-owner --no-privileges).
#[test]
fn postgres_drills_take_the_dumps_encoding_and_need_no_superuser() {
    let Some((pg, mut env)) = crate::postgres::setup() else {
        return;
    };
    pg.sql(
        "postgres",
        "CREATE ROLE bob; CREATE ROLE carol; \
         CREATE DATABASE bytes OWNER app TEMPLATE template0 ENCODING 'LATIN1' LOCALE 'C';",
    );
    pg.sql(
        "bytes",
        "SET client_encoding = 'UTF8'; CREATE TABLE public.raw (b text CHECK (octet_length(b) = 4)); INSERT INTO public.raw VALUES ('café'), ('okay'); \
         ALTER TABLE public.raw OWNER TO app; \
         CREATE TABLE public.bobs (x int); INSERT INTO public.bobs VALUES (1); \
         ALTER TABLE public.bobs OWNER TO bob; GRANT SELECT ON public.bobs TO carol, app;",
    );
    env.set(
        "DATABASE_URL",
        pg.url("app", crate::postgres::APP_PASSWORD, "bytes"),
    );
    for format in ["sql", "custom"] {
        env.set("BACKUP_PG_FORMAT", format);
        let name = format!("bytes_{format}");
        env.run(&["backup", "--name", &name]).ok();
        let o = env.run(&["verify", "--restore", &name]);
        o.ok();
        assert!(
            o.stdout.contains("row counts of all 2 tables equal"),
            "{}",
            o.stdout
        );
    }
    assert!(scratch_databases(&pg).is_empty());
}

/// REVIEW B3: with `?service=` in DATABASE_URL and a service file whose section names the live
/// database, a drill (plain and custom) still loads only into its scratch database, and a
/// restore only into its staging one: every tool is given its database on the command line,
/// which a service file cannot override. (A table dropped after the backup must not come back.)
#[test]
fn a_service_file_never_turns_a_drill_toward_the_live_database() {
    let Some((pg, mut env)) = crate::postgres::setup() else {
        return;
    };
    let home = env.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join(".pg_service.conf"),
        format!("[svc]\ndbname=appdb\nhost=127.0.0.1\nport={}\n", pg.port),
    )
    .unwrap();
    env.set("HOME", home.display().to_string());
    let url = format!(
        "{}?service=svc",
        pg.url("app", crate::postgres::APP_PASSWORD, "appdb")
    );
    env.set("DATABASE_URL", url);
    for format in ["sql", "custom"] {
        env.set("BACKUP_PG_FORMAT", format);
        let name = format!("svc_{format}");
        env.run(&["backup", "--name", &name]).ok();
        pg.sql_as("app", "appdb", "DROP TABLE IF EXISTS public.empty_table;");
        let after = pg.normalized_dump("appdb");
        env.run(&["verify", "--restore", &name]).ok();
        assert_eq!(
            pg.normalized_dump("appdb"),
            after,
            "the {format} drill touched the live database"
        );
        assert!(scratch_databases(&pg).is_empty());
    }
}

/// Rewrites the plain dump of the backup `name` (gzip) with `edit`, and its manifest's size and
/// SHA-256 to match: what anyone who can write to the backup storage can do.
fn rewrite_plain_backup(env: &TestEnv, name: &str, edit: impl FnOnce(String) -> String) {
    use sha2::Digest;
    use std::io::{Read, Write};
    let data = env.backup_dir().join(format!("{name}.sql.gz"));
    let mut sql = String::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(&data).unwrap())
        .read_to_string(&mut sql)
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(edit(sql).as_bytes()).unwrap();
    let bytes = gz.finish().unwrap();
    std::fs::write(&data, &bytes).unwrap();
    let path = env.backup_dir().join(format!("{name}.manifest.json"));
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["sha256"] = hex::encode(sha2::Sha256::digest(&bytes)).into();
    m["file_size"] = bytes.len().into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// REVIEW B1 (and CVE-2025-8715's way in): a plain dump rewritten by a writer of the backup
/// storage to hold psql meta-commands (a shell escape, a pipe, a `\c<TAB>` to the live database)
/// fails the drill and the restore: nothing runs on the host or on the live database. And the
/// statement filter: a statement on the live database in another case, spacing or with comments
/// is still found and never runs, and a dump that turns `standard_conforming_strings` off (so
/// that psql would read `'a\' ; '` as one string and run what follows) fails before that
/// statement ends. Without either, the drill's psql drops the live database from the scratch one.
#[test]
fn meta_commands_planted_in_a_dump_run_nowhere() {
    let Some((pg, env)) = crate::postgres::setup() else {
        return;
    };
    let marker = env.path().join("pwned");
    let planted = [
        (format!("\\! touch {}\n", marker.display()), Some("meta-command")),
        (format!("\\o |touch {}\nSELECT 1;\n", marker.display()), Some("meta-command")),
        ("\\c\tpostgres\nDROP TABLE sales.items CASCADE;\n".to_owned(), Some("meta-command")),
        ("drop\t/* x */ Database appdb;\n".to_owned(), None),
        (
            "SET standard_conforming_strings = off;\nSELECT 'a\\' ; ' ; DROP DATABASE appdb; --';\n"
                .to_owned(),
            Some("standard_conforming_strings"),
        ),
    ];
    for (i, (line, refused)) in planted.iter().enumerate() {
        let name = format!("planted_{i}");
        plant_after_connect(&env, &name, line);
        let before = pg.normalized_dump("appdb");
        for args in [
            vec!["verify", "--restore", &name],
            vec!["restore", &name, "--yes"],
        ] {
            let o = env.run(&args);
            match refused {
                None => {
                    o.ok();
                }
                Some(word) => {
                    o.code(1);
                    assert!(o.all().contains(word), "{args:?}: {}", o.all());
                }
            }
            assert!(!marker.exists(), "{args:?}: a shell command ran");
            assert_eq!(
                pg.normalized_dump("appdb"),
                before,
                "{args:?}: live database touched"
            );
        }
        assert!(scratch_databases(&pg).is_empty());
    }
}

#[test]
fn privileged_statements_planted_in_a_dump_run_without_privileges() {
    let Some((pg, mut env)) = crate::postgres::setup() else {
        return;
    };
    // The server's own user must be able to write it, or nothing could show a shell ran.
    let marker = std::path::PathBuf::from(format!("/tmp/dbkeep-pwned-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let m = marker.display();
    let mut planted: Vec<(String, i32)> = [
        format!("COPY (SELECT 1) TO PROGRAM 'touch {m}';\n"),
        format!("SELECT lo_export(lo_from_bytea(0, 'x'), '{m}');\n"),
        // A function in a CHECK constraint, run by the load's COPY or INSERT, that first tries
        // to undo a role switch (which is why the drill's role is a login of its own).
        format!(
            "CREATE FUNCTION public.trap(int) RETURNS bool LANGUAGE plpgsql AS $t$ BEGIN \
             PERFORM set_config('session_authorization', 'postgres', false); \
             EXECUTE 'RESET ROLE'; COPY (SELECT 1) TO PROGRAM 'touch {m}'; RETURN true; END $t$;\n\
             CREATE TABLE public.trapped (x int CHECK (public.trap(x)));\n\
             INSERT INTO public.trapped VALUES (1);\n"
        ),
        // Dynamic SQL that the statement filter cannot see: as the live database's owner (or
        // a superuser) it would rename the live database from the scratch one.
        "DO $d$ BEGIN EXECUTE 'ALTER DATABASE ' || 'appdb RENAME TO appdb_gone'; END $d$;\n"
            .to_owned(),
    ]
    .into_iter()
    .map(|l| (l, 1))
    .collect();
    // What a load role may do to keep its database or to reach dbkeep's later sessions: the
    // drill still ends clean, amcheck still runs.
    for keep in [
        "DO $d$ BEGIN EXECUTE format('ALTER DATABASE %I IS_TEMPLATE true', current_database()); END $d$;\n",
        "DO $d$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', current_database()); END $d$;\n",
        "BEGIN;\nCREATE TABLE public.pinned (x int);\nPREPARE TRANSACTION 'pin';\n",
    ] {
        planted.push((keep.to_owned(), 0));
    }
    // As a superuser, and as the live database's owner with CREATEROLE: either way the load
    // runs as a role of the drill's own.
    pg.sql("postgres", "ALTER ROLE app CREATEROLE");
    let app_url = pg.url("app", crate::postgres::APP_PASSWORD, "appdb");
    for (i, (line, code)) in planted.iter().enumerate() {
        let name = format!("privileged_{i}");
        plant_after_connect(&env, &name, line);
        let before = pg.normalized_dump("appdb");
        for (url, superuser) in [(pg.superuser_url("appdb"), true), (app_url.clone(), false)] {
            env.set("DATABASE_URL", url);
            let o = env.run(&["verify", "--restore", &name]);
            o.code(*code);
            // Only a superuser may create amcheck.
            if superuser {
                assert!(!o.stdout.contains("amcheck not available"), "{}", o.stdout);
            }
            assert!(
                !marker.exists(),
                "{line}: the server wrote a file or ran a program"
            );
            assert_eq!(
                pg.normalized_dump("appdb"),
                before,
                "{line}: live database touched"
            );
        }
        assert!(scratch_databases(&pg).is_empty());
        let roles = pg.sql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'dbkeep\\_drill\\_%'",
        );
        assert_eq!(roles.trim(), "0", "the drill's load role is left");
    }
    // The same backups, drilled as the superuser itself (what the sandbox prevents): the
    // planted statements do run, so the checks above can fail.
    env.set("DATABASE_URL", pg.superuser_url("appdb"));
    env.set("BACKUP_DRILL_SANDBOX", "false");
    env.run(&["verify", "--restore", "privileged_0"]);
    assert!(
        marker.exists(),
        "COPY TO PROGRAM did not run as the superuser"
    );
    let _ = std::fs::remove_file(&marker);
}

/// Backs up as `name` and writes `line` into the plain dump right after its `\connect`, where
/// a statement would run in the target.
fn plant_after_connect(env: &TestEnv, name: &str, line: &str) {
    env.run(&["backup", "--name", name]).ok();
    rewrite_plain_backup(env, name, |sql| {
        let at = sql.find("\\connect").unwrap();
        let eol = at + sql[at..].find('\n').unwrap() + 1;
        format!("{}{line}{}", &sql[..eol], &sql[eol..])
    });
}
