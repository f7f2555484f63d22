//! MySQL/MariaDB against a real MariaDB server the harness starts: round trips of a tricky
//! schema compared with a plain `mariadb < dump`, drills, row counts under concurrent writes,
//! hostile dumps that must not reach the live database, faults, bad URLs.

use crate::common::TestEnv;
use crate::common::mariadb::{APP_PASSWORD, MariaServer};
use crate::postgres::assert_no_secret;
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Every kind of object and value a careless dump or restore gets wrong.
const SCHEMA: &str = r#"
SET SESSION sql_mode = '';
CREATE TABLE parent (
  id INT PRIMARY KEY AUTO_INCREMENT,
  name VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  body MEDIUMTEXT CHARACTER SET utf8mb4,
  len INT AS (CHAR_LENGTH(name)) STORED,
  up VARCHAR(100) CHARACTER SET utf8mb4 AS (UPPER(name)) VIRTUAL,
  born DATE,
  seen DATETIME(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE child (
  id INT PRIMARY KEY,
  parent_id INT NOT NULL,
  blobby LONGBLOB,
  amount DECIMAL(20,6),
  FOREIGN KEY (parent_id) REFERENCES parent(id) ON DELETE CASCADE
) ENGINE=InnoDB;
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(200) CHARACTER SET utf8mb4);
CREATE TABLE `we;ird ``name` (`col;--` INT);
CREATE TABLE empty_one (a INT);
DELIMITER //
CREATE TRIGGER parent_ai AFTER INSERT ON parent FOR EACH ROW
BEGIN
  IF NEW.name LIKE 'a%' THEN
    INSERT INTO audit (what) VALUES (CONCAT('a: ', NEW.name));
  END IF;
  INSERT INTO audit (what) VALUES (NEW.name);
END//
CREATE PROCEDURE tally(OUT total INT)
BEGIN
  DECLARE x INT DEFAULT 0;
  SELECT COUNT(*) INTO x FROM child;
  IF x > 0 THEN SET total = x; ELSE SET total = 0; END IF;
END//
CREATE PROCEDURE busywork(IN n INT)
lbl: BEGIN
  DECLARE i INT DEFAULT 0;
  DECLARE s TEXT DEFAULT REPEAT('ab', 2);
  SET s = IF(n > 1, CONCAT(s, ';'), s);
  IF (n > 2) THEN SET i = 1; ELSEIF n > 3 THEN SET i = 2; ELSE SET i = 3; END IF;
  CASE n WHEN 1 THEN SET i = 4; ELSE BEGIN END; END CASE;
  WHILE i < 10 DO SET i = i + 1; END WHILE;
  REPEAT SET i = i - 1; UNTIL i < 0 END REPEAT;
  l2: LOOP LEAVE l2; END LOOP l2;
END//
DELIMITER ;
INSERT INTO parent (name, body, born, seen) VALUES
  ('😀 emoji 𝄞', 'line1\nline2;\t''quoted'' "dq" \\ back', '0000-00-00', '2024-01-15 10:30:00.123456'),
  ('apple ünïcödé', REPEAT('x', 100000), '2024-02-29', NULL),
  ('-- not a comment', '/* nor this */ ; DROP DATABASE shop; \\! touch /tmp/x', NULL, NULL);
INSERT INTO child VALUES (1, 1, UNHEX(REPEAT('00FF7F5C27220A0D1A', 30)), 1.5), (2, 2, NULL, -0.000001), (3, 3, '', 0);
INSERT INTO `we;ird ``name` VALUES (1), (2);
CREATE VIEW parent_children AS SELECT p.name, COUNT(c.id) AS n FROM parent p LEFT JOIN child c ON c.parent_id = p.id GROUP BY p.name;
CREATE VIEW busy AS SELECT name FROM parent_children WHERE n > 0;
CREATE FUNCTION shout(s TEXT) RETURNS TEXT DETERMINISTIC RETURN CONCAT(UPPER(s), '!');
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DO DELETE FROM audit WHERE id < 0;
"#;

pub fn setup() -> Option<(MariaServer, TestEnv)> {
    let my = MariaServer::start()?;
    my.sql("mysql", "CREATE DATABASE shop CHARACTER SET utf8mb4");
    my.sql("shop", SCHEMA);
    let mut env = TestEnv::new();
    env.set("DATABASE_URL", my.url("shop"));
    Some((my, env))
}

/// Two dumps are equal, or the first line where they differ is shown (not both dumps).
#[track_caller]
pub fn assert_same(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let i = g
        .iter()
        .zip(&w)
        .position(|(a, b)| a != b)
        .unwrap_or(g.len().min(w.len()));
    let cut = |l: Option<&&str>| l.map(|l| l.chars().take(200).collect::<String>());
    panic!(
        "{what}: the dumps differ at line {i} ({} vs {} lines):\n got: {:?}\nwant: {:?}",
        g.len(),
        w.len(),
        cut(g.get(i)),
        cut(w.get(i))
    );
}

/// The data file of backup `name`, decompressed.
fn dump_of(env: &TestEnv, name: &str) -> Vec<u8> {
    let m = env.manifest(name);
    let file = env.backup_dir().join(m["data_file"].as_str().unwrap());
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(file).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn a_tricky_schema_round_trips_and_its_objects_match_a_plain_restore() {
    let Some((my, env)) = setup() else { return };
    let before = my.normalized_dump("shop");
    let b = env.run(&["backup", "--name", "rt_20240115"]);
    b.ok();
    let m = env.manifest("rt_20240115");
    assert_eq!(m["database_type"], "mysql");
    assert_eq!(m["database_name"], "shop");
    assert_eq!(m["database_host"], format!("127.0.0.1:{}", my.port));
    assert!(m["server_version"].as_str().unwrap().contains("MariaDB"));
    assert!(
        m["tool_version"]
            .as_str()
            .unwrap()
            .starts_with("mariadb-dump ")
    );
    let counts = &m["row_counts"];
    assert_eq!(counts["parent"], 3);
    assert_eq!(counts["child"], 3);
    assert_eq!(counts["audit"], 4, "{counts}");
    assert_eq!(counts["we;ird `name"], 2);
    assert_eq!(counts["empty_one"], 0);
    assert_eq!(
        counts.as_object().unwrap().len(),
        5,
        "views are not tables: {counts}"
    );
    env.run(&["verify", "rt_20240115"]).ok();
    let mut z = env.command(&["backup", "--name", "rt_zstd"]);
    z.env("BACKUP_COMPRESSION", "zstd");
    assert!(z.status().unwrap().success());
    assert!(crate::common::tool_accepts(
        "zstd",
        &env.backup_dir().join("rt_zstd.sql.zst")
    ));

    // What a plain `mariadb < dump` makes of the same dump, for comparison.
    my.sql("mysql", "CREATE DATABASE plain CHARACTER SET utf8mb4");
    my.load("plain", &dump_of(&env, "rt_20240115"));
    assert_same(&my.normalized_dump("plain"), &before, "plain");

    // Change what a careless restore would miss, then restore.
    my.sql(
        "shop",
        "DELETE FROM child WHERE id = 3; DROP VIEW busy; DROP PROCEDURE tally; CREATE TABLE junk (x INT);
         ALTER EVENT nightly DISABLE; INSERT INTO parent (name) VALUES ('later');",
    );
    assert_ne!(my.normalized_dump("shop"), before);
    let r = env.run(&["restore", "rt_zstd", "--yes"]);
    r.ok();
    assert_same(&my.normalized_dump("shop"), &before, "shop");
    assert_eq!(my.normalized_dump("shop"), my.normalized_dump("plain"));
    assert_eq!(
        my.databases(),
        ["plain", "shop"],
        "nothing of the restore is left"
    );
    // The objects work: the trigger fires, the routines run, the view reads the live tables.
    my.sql("shop", "INSERT INTO parent (name) VALUES ('avocado')");
    assert_eq!(
        my.sql("shop", "SELECT COUNT(*) FROM audit WHERE what LIKE 'a: %'"),
        "2"
    );
    assert_eq!(my.sql("shop", "CALL tally(@t); SELECT @t"), "3");
    assert_eq!(my.sql("shop", "SELECT shout('hi')"), "HI!");
    assert_eq!(
        my.sql("shop", "SELECT COUNT(*) FROM busy"),
        "3",
        "the view reads the restored tables"
    );
    assert_no_secret(
        &env,
        &[&b.stdout, &b.stderr, &r.stdout, &r.stderr],
        APP_PASSWORD,
    );
}

#[test]
fn drills_restore_into_a_scratch_database_count_and_check() {
    let Some((my, env)) = setup() else { return };
    env.run(&["backup", "--name", "d_20240115"]).ok();
    let before = my.normalized_dump("shop");
    let v = env.run(&["verify", "--restore", "d_20240115"]);
    v.ok();
    assert!(
        v.stdout.contains("row counts of all 5 tables equal"),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout.contains("CHECK TABLE: all 5 tables OK"),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout
            .contains("6 views, triggers and routines (1 events not created"),
        "{}",
        v.stdout
    );
    let m = env.manifest("d_20240115");
    assert_eq!(
        m["verification"]["outcome"], "passed",
        "{}",
        m["verification"]
    );
    assert_same(&my.normalized_dump("shop"), &before, "shop");
    assert_eq!(my.databases(), ["shop"]);

    // A backup whose rows differ from its manifest's counts fails its drill, naming the table.
    let mut m = env.manifest("d_20240115");
    m["row_counts"]["child"] = 7.into();
    std::fs::write(
        env.backup_dir().join("d_20240115.manifest.json"),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    let v = env.run(&["verify", "--restore", "d_20240115"]);
    v.code(1);
    assert!(
        v.all().contains("child: 3 rows, the backup had 7"),
        "{}",
        v.all()
    );
    let v = env.run(&["verify", "d_20240115"]);
    v.code(1);
    assert!(v.all().contains("differ from the manifest"), "{}", v.all());
    assert_eq!(my.databases(), ["shop"]);
}

/// A client session that runs statements fed to it one by one.
struct Session(std::process::Child);

impl Session {
    fn open(my: &MariaServer, db: &str) -> Self {
        let mut c = my.client("mariadb", db);
        c.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Session(c.spawn().unwrap())
    }
    fn run(&mut self, sql: &str) -> bool {
        let stdin = self.0.stdin.as_mut().unwrap();
        stdin.write_all(sql.as_bytes()).is_ok() && stdin.flush().is_ok()
    }
    fn close(mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

pub fn fill_big(my: &MariaServer, rows: u32) {
    my.sql(
        "shop",
        &format!(
            "CREATE TABLE big (id INT AUTO_INCREMENT PRIMARY KEY, v INT, pad VARCHAR(200));
             INSERT INTO big (v, pad) SELECT seq, REPEAT('p', 150) FROM seq_1_to_{rows};"
        ),
    );
}

#[test]
fn row_counts_are_those_of_the_dump_under_concurrent_writes() {
    let Some((my, env)) = setup() else { return };
    fill_big(&my, 200_000);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let mut s = Session::open(&my, "shop");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if !s
                    .run("INSERT INTO big (v) VALUES (0); INSERT INTO audit (what) VALUES ('w');\n")
                {
                    break;
                }
                written.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            s.close();
        })
    };
    crate::common::wait_for("the writer", || written.load(Ordering::Relaxed) > 20);
    let big_before: u64 = my.sql("shop", "SELECT COUNT(*) FROM big").parse().unwrap();
    // While the backup runs, no process on the machine shows the password in its command line
    // or environment (it is in the tools' 0600 option file only).
    let mut backup = env.command(&["backup", "--name", "c_20240115"]);
    backup.stdout(Stdio::null()).stderr(Stdio::null());
    let mut backup = backup.spawn().unwrap();
    let mut looked = 0;
    while backup.try_wait().unwrap().is_none() {
        looked += assert_no_process_shows(APP_PASSWORD);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(backup.wait().unwrap().success());
    assert!(looked > 0, "no dump tool was seen running");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let m = env.manifest("c_20240115");
    let big: u64 = m["row_counts"]["big"].as_u64().unwrap();
    let live: u64 = my.sql("shop", "SELECT COUNT(*) FROM big").parse().unwrap();
    // Rows were written while the backup ran, and the count is one moment of it.
    assert!(live > big_before, "no write happened during the backup");
    assert!(
        big_before <= big && big <= live,
        "{big_before} <= {big} <= {live}"
    );
    // The drill loads the dump and finds exactly the counted rows in every table.
    let v = env.run(&["verify", "--restore", "c_20240115"]);
    v.ok();
    assert!(v.stdout.contains("equal the manifest's"), "{}", v.stdout);
}

#[test]
fn bad_urls_and_wrong_credentials_are_named_without_the_password() {
    let Some((my, mut env)) = setup() else { return };
    let cases = [
        (my.url("shop").replace("app:", "nobody:"), "Access denied"),
        (my.url("no_such_db"), "no_such_db"),
        (
            format!("mysql://app:{}@127.0.0.1:1/shop", "hunter2"),
            "Can't connect",
        ),
        (
            "mysql://app:hunter2@127.0.0.1/shop?sslmode=require".into(),
            "\"sslmode\"",
        ),
        ("mysql://app:hunter2@127.0.0.1/".into(), "names no database"),
    ];
    for (url, expected) in cases {
        env.set("DATABASE_URL", url.clone());
        let o = env.run(&["backup"]);
        assert_ne!(o.code, 0, "{url}");
        assert!(o.all().contains(expected), "{url}: {}", o.all());
        assert!(!o.all().contains("hunter2"), "{}", o.all());
        assert_no_secret(&env, &[&o.stdout, &o.stderr], APP_PASSWORD);
    }
}

/// Reads every process's command line and environment; fails if one holds `secret`. Returns
/// how many MariaDB tools it saw.
fn assert_no_process_shows(secret: &str) -> usize {
    let mut tools = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = entry.path();
        let (Ok(cmdline), environ) = (
            std::fs::read(p.join("cmdline")),
            std::fs::read(p.join("environ")).unwrap_or_default(),
        ) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmdline);
        if cmd.contains("mariadb-dump") {
            tools += 1;
        }
        for text in [cmd.as_ref(), String::from_utf8_lossy(&environ).as_ref()] {
            assert!(
                !text.contains(secret),
                "a process shows the password: {cmd}"
            );
        }
    }
    tools
}

/// The layers above the engine work for MySQL as for the others: zstd with age encryption to
/// S3 (s3s on loopback), a copy to a second repository, the API's create, list and drill, the
/// metrics, a webhook, and a restore from the copy alone.
#[test]
fn encryption_s3_copies_the_api_metrics_and_notifications_work_for_mysql() {
    use crate::api::{Server, TOKEN};
    use reqwest::{Method, StatusCode};
    let Some((my, mut env)) = setup() else { return };
    let s3 = crate::common::s3::S3Server::start();
    s3.configure(&mut env, "shop");
    let copy = env.path().join("offsite");
    env.set("BACKUP_COPY_TO", copy.display().to_string());
    let public = crate::encryption::keygen(&env, "key.txt");
    env.set("BACKUP_ENCRYPT_RECIPIENTS", public);
    let key = env.path().join("key.txt").display().to_string();
    env.set("BACKUP_DECRYPT_IDENTITY_FILE", key);
    env.set("BACKUP_COMPRESSION", "zstd");
    let rx = crate::common::receiver::HttpReceiver::start();
    std::fs::write(
        env.path().join("dbkeep.toml"),
        format!(
            "[channels.hook]\ntype = \"webhook\"\nurl = \"{}/hook\"\non = [\"all\"]\n",
            rx.url
        ),
    )
    .unwrap();
    let before = my.normalized_dump("shop");

    let server = Server::start(&env);
    let (status, body) = server.call(
        Method::POST,
        "/api/backup/create",
        Some(TOKEN),
        Some(serde_json::json!({"backup_name": "api_20240115"})),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = s3.objects("shop");
    assert!(
        stored.iter().any(|o| o == "api_20240115.sql.zst.age"),
        "{stored:?}"
    );
    let copied = std::fs::read(copy.join("api_20240115.sql.zst.age")).unwrap();
    assert!(copied.starts_with(b"age-encryption.org/v1"), "not age");
    let (status, list) = server.call(Method::GET, "/api/backup/list", Some(TOKEN), None);
    assert_eq!(status, StatusCode::OK);
    assert!(list.to_string().contains("api_20240115"), "{list}");
    assert!(list.to_string().contains("mysql"), "{list}");
    let (status, drill) = server.call(
        Method::POST,
        "/api/backup/verify/api_20240115?restore=true",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{drill}");
    assert!(drill.to_string().contains("CHECK TABLE"), "{drill}");
    let metrics = server
        .raw(Method::GET, "/metrics", Some(TOKEN), None)
        .text()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dbkeep_backup_last_success{") && l.ends_with(" 1.0")),
        "{metrics}"
    );
    drop(server);
    let hook = rx.to("/hook");
    let kinds: Vec<String> = hook
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(kinds.iter().any(|k| k == "backup_succeeded"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "drill_passed"), "{kinds:?}");

    // The offsite copy alone restores it (the primary repository gone).
    my.sql("shop", "DROP TABLE child; DROP VIEW busy;");
    let mut offsite = TestEnv::new();
    offsite.set("DATABASE_URL", my.url("shop"));
    offsite.set("BACKUP_DIR", copy.display().to_string());
    offsite.set(
        "BACKUP_DECRYPT_IDENTITY_FILE",
        env.path().join("key.txt").display().to_string(),
    );
    offsite.run(&["restore", "api_20240115", "--yes"]).ok();
    assert_same(
        &my.normalized_dump("shop"),
        &before,
        "restored from the copy",
    );
}
