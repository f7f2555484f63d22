//! PostgreSQL against a real server started by the harness: round trip, failed restores that
//! leave the original, failures that leak no secret, a run killed mid-dump.

use crate::common::{PgServer, TestEnv};
use std::io::{Read, Write};

/// The owner's password holds every character that breaks naive quoting.
pub const APP_PASSWORD: &str = "p@:/%$'\"x";

const SCHEMA: &str = r#"
CREATE SCHEMA sales;
CREATE SCHEMA audit;
CREATE TYPE sales.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE sales.items (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    price numeric(14,4),
    tags text[],
    attrs jsonb,
    blob bytea,
    created timestamptz,
    feeling sales.mood
);
CREATE SEQUENCE audit.counter;
SELECT setval('audit.counter', 42);
CREATE TABLE audit.log (id bigserial PRIMARY KEY, item_id int, note text);
CREATE TABLE public.empty_table (x int);
CREATE FUNCTION audit.log_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit.log (item_id, note) VALUES (NEW.id, 'inserted ' || NEW.name);
  RETURN NEW;
END $$;
CREATE TRIGGER items_audit AFTER INSERT ON sales.items FOR EACH ROW EXECUTE FUNCTION audit.log_insert();
CREATE VIEW sales.expensive AS SELECT name, price FROM sales.items WHERE price > 100;
INSERT INTO sales.items (name, price, tags, attrs, blob, created, feeling)
SELECT 'item ' || g || ' ünïcødé ✓ 日本 "q" ''s', g * 1.2345, ARRAY['a' || g, 'b'],
       jsonb_build_object('g', g, 'nested', jsonb_build_object('x', g)),
       decode(md5(g::text), 'hex'),
       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour',
       (ARRAY['sad', 'ok', 'happy']::sales.mood[])[1 + g % 3]
FROM generate_series(1, 3000) g;
"#;

/// A server with the database `appdb` owned by `app`, and a TestEnv pointing at it over TCP.
pub fn setup() -> Option<(PgServer, TestEnv)> {
    let pg = PgServer::start()?;
    pg.sql(
        "postgres",
        &format!(
            "CREATE ROLE app LOGIN CREATEDB PASSWORD '{}'; CREATE DATABASE appdb OWNER app;",
            APP_PASSWORD.replace('\'', "''")
        ),
    );
    pg.sql_as("app", "appdb", SCHEMA);
    let mut env = TestEnv::new();
    env.set("DATABASE_URL", pg.url("app", APP_PASSWORD, "appdb"));
    env.set("BACKUP_PG_BINDIR", pg.bin.display().to_string());
    Some((pg, env))
}

/// The password (plain or percent-encoded) appears nowhere dbkeep wrote or printed.
pub fn assert_no_secret(env: &TestEnv, outputs: &[&str], secret: &str) {
    let encoded = percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let mut texts: Vec<(String, String)> = outputs
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("output {i}"), t.to_string()))
        .collect();
    texts.push(("backup.log".into(), env.log()));
    for f in env.files() {
        if f.ends_with(".json") {
            texts.push((
                f.clone(),
                std::fs::read_to_string(env.backup_dir().join(&f)).unwrap(),
            ));
        }
    }
    for (what, text) in texts {
        assert!(!text.contains(secret), "{what} shows the password: {text}");
        assert!(
            !text.contains(&encoded),
            "{what} shows the encoded password: {text}"
        );
    }
}

pub fn aside_databases(pg: &PgServer) -> String {
    pg.sql(
        "postgres",
        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE '%dbkeep_old%'",
    )
}

#[test]
fn round_trip_restores_exactly_what_was_dumped() {
    let Some((pg, env)) = setup() else { return };
    let before = pg.normalized_dump("appdb");
    let o = env.run(&["backup", "--name", "rt_20240115"]);
    o.ok();
    let m = env.manifest("rt_20240115");
    assert_eq!(m["database_type"], "postgresql");
    assert_eq!(m["database_name"], "appdb");
    assert_eq!(m["database_host"], format!("127.0.0.1:{}", pg.port));
    assert!(
        m["server_version"]
            .as_str()
            .unwrap()
            .starts_with(|c: char| c.is_ascii_digit())
    );
    assert!(m["tool_version"].as_str().unwrap().starts_with("pg_dump "));
    let file = env.backup_dir().join("rt_20240115.sql.gz");
    assert!(crate::common::tool_accepts("gzip", &file));
    env.run(&["verify", "rt_20240115"]).ok();
    // The same database with zstd: `zstd -t` accepts it, and it is what restores below.
    let mut zenv_cmd = env.command(&["backup", "--name", "rt_zstd"]);
    zenv_cmd.env("BACKUP_COMPRESSION", "zstd");
    assert!(zenv_cmd.status().unwrap().success());
    let zfile = env.backup_dir().join("rt_zstd.sql.zst");
    assert!(crate::common::tool_accepts("zstd", &zfile));

    // Change everything a careless restore would miss, and hold a session open on the database.
    pg.sql_as(
        "app",
        "appdb",
        "DELETE FROM sales.items WHERE id < 100; DROP VIEW sales.expensive; CREATE TABLE junk (x int);
         SELECT nextval('audit.counter'); ALTER TYPE sales.mood ADD VALUE 'angry';",
    );
    assert_ne!(pg.normalized_dump("appdb"), before);
    let mut idle = pg.client("psql", "app", "appdb");
    idle.args(["-X", "-c", "SELECT pg_sleep(60)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut idle = idle.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));

    let r = env.run(&["restore", "rt_zstd", "--yes"]);
    r.ok();
    let _ = idle.kill();
    let _ = idle.wait();
    assert_eq!(pg.normalized_dump("appdb"), before);
    assert_eq!(aside_databases(&pg), "", "the previous database is dropped");
    // And the gzip one restores the same.
    pg.sql_as("app", "appdb", "DELETE FROM sales.items WHERE id > 2000;");
    env.run(&["restore", "rt_20240115", "--yes"]).ok();
    assert_eq!(pg.normalized_dump("appdb"), before);
    assert_no_secret(
        &env,
        &[&o.stdout, &o.stderr, &r.stdout, &r.stderr],
        APP_PASSWORD,
    );
}

/// Writes a backup named `name` whose data is `sql` (gzip), with a correct manifest, so that only
/// the content is wrong.
fn plant_backup(env: &TestEnv, template: &str, name: &str, sql: &[u8]) {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(sql).unwrap();
    plant(env, template, name, ".sql.gz", &enc.finish().unwrap());
}

/// Writes `bytes` as backup `name` (data file `name` + `ext`) with a manifest copied from
/// `template` and a matching size and SHA-256, so that only the content is wrong.
pub fn plant(env: &TestEnv, template: &str, name: &str, ext: &str, bytes: &[u8]) {
    let key = format!("{name}{ext}");
    std::fs::write(env.backup_dir().join(&key), bytes).unwrap();
    let mut m = env.manifest(template);
    m["backup_name"] = name.into();
    m["data_file"] = key.into();
    m["file_size"] = bytes.len().into();
    use sha2::Digest;
    m["sha256"] = hex::encode(sha2::Sha256::digest(bytes)).into();
    std::fs::write(
        env.backup_dir().join(format!("{name}.manifest.json")),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
}

/// A flipped byte in backup `name`'s data file `file`: verify and restore refuse it, and the
/// live database stays `live`.
pub fn flipped_byte_is_refused(env: &TestEnv, pg: &PgServer, live: &str, name: &str, file: &str) {
    crate::common::flip_byte(&env.backup_dir().join(file), 0x40);
    env.run(&["verify", name]).code(1);
    let o = env.run(&["restore", name, "--yes"]);
    o.code(1);
    assert!(o.stderr.contains("damaged"), "{}", o.stderr);
    assert_untouched(pg, live);
}

/// Backup `name` is intact (verify passes) but fails while it loads: the restore fails with the
/// tool's error (`expected` in it), and the live database stays `live`.
pub fn intact_backup_fails_to_load(
    env: &TestEnv,
    pg: &PgServer,
    live: &str,
    name: &str,
    expected: &str,
) {
    env.run(&["verify", name]).ok();
    let o = env.run(&["restore", name, "--yes"]);
    o.code(1);
    assert!(
        o.stderr.contains(expected),
        "the tool's error: {}",
        o.stderr
    );
    assert_untouched(pg, live);
}

/// Takes the backup `good`, then changes the database; returns the changed (live) state.
pub fn good_backup_then_a_change(env: &TestEnv, pg: &PgServer) -> String {
    env.run(&["backup", "--name", "good"]).ok();
    pg.sql_as(
        "app",
        "appdb",
        "INSERT INTO sales.items (name) VALUES ('added after the backup');",
    );
    pg.normalized_dump("appdb")
}

/// Backup `name` is incomplete though its checksum matches: verify fails saying `verify_says`,
/// restore fails saying `restore_says`, and the live database stays `live`.
pub fn incomplete_backup_fails(
    env: &TestEnv,
    pg: &PgServer,
    live: &str,
    name: &str,
    verify_says: &str,
    restore_says: &str,
) {
    let o = env.run(&["verify", name]);
    o.code(1);
    assert!(o.stderr.contains(verify_says), "{}", o.stderr);
    let o = env.run(&["restore", name, "--yes"]);
    o.code(1);
    assert!(o.stderr.contains(restore_says), "{}", o.stderr);
    assert_untouched(pg, live);
}

/// The live database is `live`, nothing is left aside, and it accepts connections.
pub fn assert_untouched(pg: &PgServer, live: &str) {
    assert_eq!(pg.normalized_dump("appdb"), live);
    assert_eq!(aside_databases(pg), "");
    assert_eq!(
        pg.sql(
            "postgres",
            "SELECT datallowconn FROM pg_database WHERE datname = 'appdb'"
        ),
        "t"
    );
}

fn read_dump(env: &TestEnv, name: &str) -> Vec<u8> {
    let f = std::fs::File::open(env.backup_dir().join(format!("{name}.sql.gz"))).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn failed_restores_leave_the_live_database_as_it_was() {
    let Some((pg, env)) = setup() else { return };
    let live = good_backup_then_a_change(&env, &pg);

    // 1. An SQL error halfway through a dump whose checksum is right: psql stops, the partial
    //    database is dropped and the original comes back.
    let dump = String::from_utf8(read_dump(&env, "good")).unwrap();
    let cut = dump.find("CREATE TABLE audit.log").expect("table in dump");
    let broken = format!("{}THIS IS NOT SQL;\n{}", &dump[..cut], &dump[cut..]);
    plant_backup(&env, "good", "broken", broken.as_bytes());
    intact_backup_fails_to_load(&env, &pg, &live, "broken", "syntax error");

    // 2. A flipped byte: refused before the database is touched.
    flipped_byte_is_refused(&env, &pg, &live, "good", "good.sql.gz");

    // 3. A dump cut off at a statement boundary, with a matching checksum (psql runs all of it
    //    without an error): verify calls it incomplete, and a restore loads it, sees no trailer
    //    and puts the original back.
    plant_backup(&env, "good", "truncated", &dump.as_bytes()[..cut]);
    incomplete_backup_fails(&env, &pg, &live, "truncated", "trailer", "trailer");

    // 4. Cut in the middle of COPY data: psql's error, and the original is back.
    plant_backup(&env, "good", "halved", &dump.as_bytes()[..dump.len() / 2]);
    env.run(&["restore", "halved", "--yes"]).code(1);
    assert_untouched(&pg, &live);
}

#[test]
fn failures_are_recorded_and_leak_no_password() {
    let Some((pg, mut env)) = setup() else { return };
    let wrong = "Wrong-Secret-42%@";
    let cases: Vec<(&str, String, Option<&str>, &str)> = vec![
        (
            "wrong_password",
            pg.url("app", wrong, "appdb"),
            None,
            "password authentication failed",
        ),
        (
            "missing_db",
            pg.url("app", APP_PASSWORD, "nosuchdb"),
            None,
            "nosuchdb",
        ),
        (
            "unreachable",
            format!(
                "postgresql://app:{}@127.0.0.1:1/appdb",
                percent_encoding::utf8_percent_encode(
                    APP_PASSWORD,
                    percent_encoding::NON_ALPHANUMERIC
                )
            ),
            None,
            "127.0.0.1",
        ),
        (
            "no_pg_dump",
            pg.url("app", APP_PASSWORD, "appdb"),
            Some("/nonexistent/bin"),
            "not found",
        ),
    ];
    let mut outputs = Vec::new();
    for (name, url, bindir, expected) in &cases {
        env.set("DATABASE_URL", url.clone());
        env.set(
            "BACKUP_PG_BINDIR",
            bindir
                .map(str::to_owned)
                .unwrap_or_else(|| pg.bin.display().to_string()),
        );
        let o = env.run(&["backup", "--name", name]);
        o.code(1);
        assert!(o.stderr.contains(expected), "{name}: {}", o.stderr);
        let list = env.list();
        assert_eq!(list["backups"][0]["backup_name"], *name);
        assert_eq!(list["backups"][0]["success"], false);
        assert!(
            list["backups"][0]["error"]
                .as_str()
                .unwrap()
                .contains(expected)
        );
        outputs.push(o.stdout.clone());
        outputs.push(o.stderr.clone());
        outputs.push(serde_json::to_string(&list).unwrap());
    }
    // No data file, no temp file: only the failed attempts' manifests.
    assert!(
        env.files()
            .iter()
            .all(|f| f.ends_with(".manifest.failed.json")),
        "{:?}",
        env.files()
    );
    let errors = env.log().lines().filter(|l| l.contains("ERROR")).count();
    assert!(errors >= cases.len(), "{}", env.log());
    let refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    assert_no_secret(&env, &refs, APP_PASSWORD);
    assert_no_secret(&env, &refs, wrong);
}

#[test]
fn pg_dump_too_old_incomplete_or_missing_is_a_failed_backup() {
    let Some((pg, mut env)) = setup() else { return };
    // A bin directory whose pg_dump reports an old version; psql is the real one.
    let bin = env.path().join("oldbin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(pg.bin.join("psql"), bin.join("psql")).unwrap();
    let fake = bin.join("pg_dump");
    std::fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.set("BACKUP_PG_BINDIR", bin.display().to_string());
    let o = env.run(&["backup", "--name", "old_tool"]);
    o.code(1);
    assert!(o.stderr.contains("older than the server"), "{}", o.stderr);

    // A pg_dump that exits 0 after printing only part of a dump (the restic pitfall): the
    // missing completion trailer makes it a failed backup, with no data file.
    // (The child's environment is clean, so the script carries the real path itself.)
    fake_pg_dump(&pg, &mut env, "echo 'CREATE TABLE half (x int);'\nexit 0");
    let o = env.run(&["backup", "--name", "half"]);
    o.code(1);
    assert!(o.stderr.contains("incomplete"), "{}", o.stderr);
    assert!(
        env.files()
            .iter()
            .all(|f| f.ends_with(".manifest.failed.json")),
        "{:?}",
        env.files()
    );

    // The child's environment holds the connection settings, never DATABASE_URL or an API
    // token of ours (a pg_dump that prints its environment as its error shows it).
    fake_pg_dump(&pg, &mut env, "env >&2\nexit 1");
    env.set("DBKEEP_API_TOKEN", "token-that-must-not-leak-1234");
    let o = env.run(&["backup", "--name", "env_dump"]);
    o.code(1);
    assert!(o.stderr.contains("PGDATABASE=appdb"), "{}", o.stderr);
    assert!(
        !o.stderr.contains("DATABASE_URL=") && !o.stderr.contains("token-that-must-not-leak"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("DBKEEP_API_TOKEN"), "{}", o.stderr);

    // pg_dump not on PATH at all.
    let empty = env.path().join("emptybin");
    std::fs::create_dir(&empty).unwrap();
    env.set("BACKUP_PG_BINDIR", "");
    env.set("PATH", empty.display().to_string());
    let o = env.run(&["backup", "--name", "no_path"]);
    o.code(1);
    assert!(
        o.stderr.contains("was not found")
            && o.stderr.contains("apt-get install postgresql-client"),
        "{}",
        o.stderr
    );
}

#[test]
fn killed_mid_dump_leaves_no_success_and_next_run_cleans_up() {
    let Some((pg, env)) = setup() else { return };
    // Hold a lock that makes pg_dump wait, so the kill lands in the middle of the dump.
    let mut holder = pg.client("psql", "app", "appdb");
    holder
        .args([
            "-X",
            "-c",
            "BEGIN; LOCK TABLE sales.items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut holder = holder.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut child = env
        .command(&["backup", "--name", "killed"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !env.files().iter().any(|f| f.starts_with(".dbkeep-tmp-")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no temp file appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    pg.release(&mut holder);
    assert!(
        env.files().iter().any(|f| f.starts_with(".dbkeep-tmp-")),
        "the killed run left its temp file"
    );
    let list = env.list();
    assert!(
        list["backups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["success"] != true),
        "{list}"
    );
    env.run(&["backup", "--name", "after_kill"]).ok();
    assert_eq!(
        env.files(),
        vec!["after_kill.manifest.json", "after_kill.sql.gz"]
    );
}

/// Staging databases on the server.
fn staging_databases(pg: &PgServer) -> String {
    pg.sql(
        "postgres",
        "SELECT coalesce(string_agg(datname, ','), '') FROM pg_database WHERE datname LIKE '%\\_dbkeep\\_new\\_%'",
    )
}

/// A client's write to the live database; whether it got in.
fn client_writes(pg: &PgServer, note: &str) -> bool {
    pg.try_sql_as(
        "app",
        "appdb",
        &format!("INSERT INTO sales.items (name) VALUES ('{note}');"),
    )
    .is_ok()
}

fn has_row(pg: &PgServer, note: &str) -> bool {
    pg.sql(
        "appdb",
        &format!("SELECT count(*) FROM sales.items WHERE name = '{note}'"),
    ) == "1"
}

/// REVIEW A4: a restore killed by SIGKILL at each phase (during the load, between blocking
/// the live database and the swap, after the swap), then a client writing, then the nightly
/// backup: nothing a client wrote is ever lost, the live database is whole at every moment,
/// and the backup only cleans up what provably nobody wrote to.
#[test]
fn restore_killed_at_each_phase_loses_no_write() {
    let Some((pg, mut env)) = setup() else { return };
    // Enough data that loading it takes a moment.
    pg.sql_as(
        "app",
        "appdb",
        "CREATE TABLE public.bulk AS SELECT g AS id, md5(g::text) AS h, repeat('x', 100) AS pad FROM generate_series(1, 400000) g;",
    );
    env.run(&["backup", "--name", "big"]).ok();
    let restored = pg.normalized_dump("appdb");
    for phase in ["during-load", "restore-before-swap", "restore-after-swap"] {
        let before = format!("before {phase}");
        assert!(client_writes(&pg, &before));
        let live = pg.normalized_dump("appdb");
        let mut cmd = if phase == "during-load" {
            env.command(&["restore", "big", "--yes"])
        } else {
            env.set("DBKEEP_FAULT", phase);
            let c = env.command(&["restore", "big", "--yes"]);
            env.unset("DBKEEP_FAULT");
            c
        };
        let mut child = cmd.spawn().unwrap();
        if phase == "during-load" {
            crate::common::wait_for("the staging database", || {
                !staging_databases(&pg).is_empty()
            });
            std::thread::sleep(std::time::Duration::from_millis(300));
            child.kill().unwrap(); // SIGKILL: no cleanup of its own
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "{phase}: the restore was killed");
        match phase {
            "restore-after-swap" => {
                assert_eq!(pg.normalized_dump("appdb"), restored, "{phase}: swapped in");
                assert_ne!(
                    aside_databases(&pg),
                    "",
                    "{phase}: the previous one is aside"
                );
            }
            _ => {
                assert_eq!(
                    pg.sql(
                        "postgres",
                        "SELECT datallowconn FROM pg_database WHERE datname = 'appdb'"
                    ),
                    if phase == "during-load" { "t" } else { "f" },
                    "{phase}"
                );
                // Blocked connections refuse even a superuser: looked at after the backup.
                if phase == "during-load" {
                    assert_eq!(pg.normalized_dump("appdb"), live, "{phase}: untouched");
                }
            }
        }
        // A client writes after the kill (it cannot while connections are blocked), then the
        // nightly backup runs, then the client writes again.
        let after_kill = format!("after the kill {phase}");
        let got_in = client_writes(&pg, &after_kill);
        assert_eq!(got_in, phase != "restore-before-swap", "{phase}");
        env.run(&[
            "backup",
            "--name",
            &format!("after_{}", phase.replace('-', "_")),
        ])
        .ok();
        assert_eq!(
            staging_databases(&pg),
            "",
            "{phase}: no staging database left"
        );
        if phase == "restore-before-swap" {
            // Unblocked by the backup run's recovery: as it was before the restore.
            assert_eq!(pg.normalized_dump("appdb"), live, "{phase}: untouched");
        }
        let after_backup = format!("after the backup {phase}");
        assert!(
            client_writes(&pg, &after_backup),
            "{phase}: connections allowed"
        );
        if phase != "restore-after-swap" {
            assert!(
                has_row(&pg, &before),
                "{phase}: the write before the restore is kept"
            );
        }
        if got_in {
            assert!(
                has_row(&pg, &after_kill),
                "{phase}: the write after the kill is kept"
            );
        }
        assert!(has_row(&pg, &after_backup));
        if phase == "restore-after-swap" {
            // The previous database (clients wrote to it before the swap) is never dropped
            // by a later run: reported, and left to the operator.
            let aside = aside_databases(&pg);
            assert_ne!(aside, "", "{phase}: the previous database is kept");
            pg.sql("postgres", &format!("DROP DATABASE \"{aside}\""));
        }
    }
}

/// REVIEW A4: clients polling the live name during a restore see the database as it was or
/// as restored, never a partial one; the time it refused connections is printed.
#[test]
fn clients_never_see_a_partial_database_during_a_restore() {
    let Some((pg, env)) = setup() else { return };
    pg.sql_as(
        "app",
        "appdb",
        "CREATE TABLE public.bulk AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 300000) g;",
    );
    env.run(&["backup", "--name", "full"]).ok();
    pg.sql_as("app", "appdb", "DELETE FROM public.bulk WHERE id > 100000;");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let (socket, port) = (pg.socket_dir().to_owned(), pg.port);
        let bin = pg.bin.clone();
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::<String, u32>::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let out = std::process::Command::new(bin.join("psql"))
                    .env_clear()
                    .env("PGHOST", &socket)
                    .env("PGPORT", port.to_string())
                    .env("PGUSER", "app")
                    .env("PGDATABASE", "appdb")
                    .args(["-X", "-A", "-t", "-c", "SELECT count(*) FROM public.bulk"])
                    .output()
                    .unwrap();
                let key = if out.status.success() {
                    String::from_utf8_lossy(&out.stdout).trim().to_owned()
                } else {
                    "refused".into()
                };
                *seen.entry(key).or_default() += 1;
            }
            seen
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = env.run(&["restore", "full", "--yes"]);
    o.ok();
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = poller.join().unwrap();
    println!(
        "clients during the restore saw: {seen:?}; {}",
        o.stdout.trim()
    );
    assert!(seen.get("100000").is_some_and(|n| *n > 0), "{seen:?}");
    assert!(seen.get("300000").is_some_and(|n| *n > 0), "{seen:?}");
    for k in seen.keys() {
        assert!(
            ["100000", "300000", "refused"].contains(&k.as_str()),
            "a client saw {k}: {seen:?}"
        );
    }
    assert!(o.stdout.contains("refused connections for"), "{}", o.stdout);
}

/// Makes `BACKUP_PG_BINDIR` a directory whose pg_dump runs `script` (after answering --version
/// with the real one) and whose psql is the real one.
pub fn fake_pg_dump(pg: &PgServer, env: &mut TestEnv, script: &str) {
    let bin = env.path().join("fakebin");
    let _ = std::fs::create_dir(&bin);
    let _ = std::os::unix::fs::symlink(pg.bin.join("psql"), bin.join("psql"));
    let fake = bin.join("pg_dump");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec '{}' --version; fi\n{script}\n",
            pg.bin.join("pg_dump").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.set("BACKUP_PG_BINDIR", bin.display().to_string());
}

#[test]
fn a_dump_without_progress_is_stopped_and_recorded_as_failed() {
    let Some((pg, mut env)) = setup() else { return };
    fake_pg_dump(
        &pg,
        &mut env,
        "echo '-- PostgreSQL database dump'\nexec sleep 120",
    );
    env.set("BACKUP_STALL_TIMEOUT", "2");
    let started = std::time::Instant::now();
    let o = env.run(&["backup", "--name", "stuck"]);
    o.code(1);
    assert!(o.stderr.contains("no progress for 2 s"), "{}", o.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(env.list()["backups"][0]["success"], false);
    assert_eq!(env.files(), vec!["stuck.manifest.failed.json"]);
}

/// The manifest's row counts are taken in the very snapshot pg_dump reads: rows that a
/// transaction commits after the snapshot was exported (while the dump waits for its lock) are
/// neither dumped nor counted, and the restored database has exactly the counted rows.
#[test]
fn row_counts_are_taken_in_the_dumps_own_snapshot() {
    let Some((pg, env)) = setup() else { return };
    let count = |table: &str| -> u64 {
        pg.sql("appdb", &format!("SELECT count(*) FROM {table}"))
            .trim()
            .parse()
            .unwrap()
    };
    // A transaction adds 100 items (and 100 audit rows by trigger), holds the table's lock for
    // a while, then commits.
    let mut late = pg.client("psql", "app", "appdb");
    late.args([
        "-X",
        "-c",
        "BEGIN; INSERT INTO sales.items (name) SELECT 'late ' || g FROM generate_series(1, 100) g; \
         LOCK TABLE sales.items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(5); COMMIT;",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut late = late.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The backup exports its snapshot at once (the late rows are not committed yet), then waits
    // for the lock; the late rows are committed before it reads a single row.
    env.run(&["backup", "--name", "snap"]).ok();
    assert!(late.wait().unwrap().success());
    assert_eq!(count("sales.items"), 3100, "the late rows are committed");

    let m = env.manifest("snap");
    let counts = &m["row_counts"];
    assert_eq!(counts["sales.items"], 3000, "{counts}");
    assert_eq!(counts["audit.log"], 3000, "{counts}");
    assert_eq!(counts["public.empty_table"], 0, "{counts}");
    assert_eq!(
        counts.as_object().unwrap().len(),
        3,
        "only the user's tables: {counts}"
    );

    // A plain dump's rows were read from its COPY blocks: no second scan of the tables.
    assert!(
        env.log()
            .contains("row counts read from the dump's COPY blocks"),
        "{}",
        env.log()
    );
    assert!(
        !env.log().contains("counted in the snapshot"),
        "{}",
        env.log()
    );

    env.run(&["restore", "snap", "--yes"]).ok();
    assert_eq!(count("sales.items"), 3000);
    assert_eq!(count("audit.log"), 3000);

    // A function whose body holds a line that reads like a COPY block (pg_dump writes bodies
    // as they are) does not fool the counts: the stream's are not trusted, the snapshot counts.
    pg.sql_as(
        "app",
        "appdb",
        "CREATE FUNCTION public.looks_like_copy() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN /*\nCOPY sales.items (name) FROM stdin;\n1\n*/ END $f$",
    );
    env.run(&["backup", "--name", "tricky"]).ok();
    let tricky = env.manifest("tricky");
    assert_eq!(tricky["row_counts"], m["row_counts"], "{tricky}");
    assert!(
        env.log().contains("counted in the snapshot"),
        "{}",
        env.log()
    );
    env.run(&["verify", "--restore", "tricky"]).ok();

    // Counting can be turned off: no second session, no counts, the same dump.
    env.run_with(
        &[("BACKUP_ROW_COUNTS", "false")],
        &["backup", "--name", "uncounted"],
    )
    .ok();
    assert!(env.manifest("uncounted").get("row_counts").is_none());
    env.run(&["verify", "uncounted"]).ok();
}

/// REVIEW D1: common production timeouts on the role (a statement_timeout, an
/// idle_in_transaction_session_timeout) never fail a backup, its row counts, a drill or a
/// restore: every dbkeep session turns them off for itself.
#[test]
fn role_timeouts_break_no_backup_drill_or_restore() {
    let Some((pg, mut env)) = setup() else { return };
    pg.sql_as(
        "app",
        "appdb",
        "CREATE TABLE public.big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 400000) g;",
    );
    pg.sql(
        "postgres",
        "ALTER ROLE app SET statement_timeout = '5ms'; \
         ALTER ROLE app SET idle_in_transaction_session_timeout = '50ms';",
    );
    for format in ["sql", "custom"] {
        env.set("BACKUP_PG_FORMAT", format);
        let name = format!("timeouts_{format}");
        env.run(&["backup", "--name", &name]).ok();
        assert_eq!(env.manifest(&name)["row_counts"]["public.big"], 400_000);
        env.run(&["verify", "--restore", &name]).ok();
        env.run(&["restore", &name, "--yes"]).ok();
    }
    assert_eq!(pg.sql("appdb", "SELECT count(*) FROM public.big"), "400000");
}

/// REVIEW D2: dbkeep retries on a SQLSTATE, never on an English message. With the server's
/// messages in German, a stale scratch database that a prepared transaction holds for a
/// moment (DROP DATABASE: 55006, "wird von anderen Benutzern verwendet"; another role's, which
/// DATABASE_URL's role cannot roll back) is dropped by the next
/// drill once the transaction ends; a retry that read the English text would give up at once.
#[test]
fn retries_follow_the_sqlstate_whatever_the_servers_language() {
    use sha2::Digest;
    let found = std::process::Command::new("locale")
        .arg("-a")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("de_DE.utf8"))
        .unwrap_or(false);
    if !crate::common::require(
        "the de_DE.UTF-8 locale",
        found,
        "locales, then locale-gen de_DE.UTF-8",
    ) {
        return;
    }
    let Some((pg, env)) = setup() else {
        return;
    };
    // DATABASE_URL's role (app) is no superuser: it cannot roll back the postgres role's
    // prepared transaction, so it must wait for it to end.
    pg.sql("postgres", "ALTER SYSTEM SET lc_messages = 'de_DE.UTF-8'");
    pg.sql("postgres", "SELECT pg_reload_conf()");
    assert_eq!(pg.sql("postgres", "SHOW lc_messages").trim(), "de_DE.UTF-8");
    env.run(&["backup", "--name", "german"]).ok();

    // A scratch database of a drill of this host whose process is gone.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let host = nix::unistd::gethostname().unwrap();
    let tag = hex::encode(&sha2::Sha256::digest(host.to_string_lossy().as_bytes())[..4]);
    let stale = format!("dbkeep_drill_{tag}_{pid}_00000000");
    pg.sql("postgres", &format!("CREATE DATABASE {stale} OWNER app"));
    pg.sql(&stale, "BEGIN; PREPARE TRANSACTION 'held'");
    let err = pg
        .try_sql_as("postgres", "postgres", &format!("DROP DATABASE {stale}"))
        .expect_err("a prepared transaction holds it");
    assert!(err.contains("55006") || err.contains("verwendet"), "{err}");
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            pg.sql(&stale, "COMMIT PREPARED 'held'");
        });
        env.run(&["verify", "--restore", "german"]).ok();
    });
    let left = pg.sql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{stale}'"),
    );
    assert_eq!(
        left.trim(),
        "0",
        "the stale scratch database was not dropped"
    );
}
