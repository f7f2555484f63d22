//! Hostile MySQL dumps, each planted as an intact backup: neither a drill nor a restore lets
//! anything in them reach the live database or the machine.

use crate::mysql::{assert_same, setup};
use crate::postgres::plant;
use std::io::Write;

/// Hostile dumps, each planted as an intact backup (a correct size and SHA-256): neither a
/// drill nor a restore lets anything in them reach the live database or the machine.
#[test]
fn nothing_in_a_hostile_dump_reaches_the_live_database() {
    let Some((my, env)) = setup() else { return };
    env.run(&["backup", "--name", "good_20240115"]).ok();
    my.sql(
        "mysql",
        "CREATE DATABASE live; CREATE TABLE live.t (a INT); INSERT INTO live.t VALUES (1);",
    );
    let before = my.normalized_dump("shop");
    let live_before = my.normalized_dump("live");
    let marker = env.path().join("pwned");
    let head = "/*!40101 SET NAMES utf8mb4 */;\nCREATE TABLE `x` (`a` int);\n";
    let tail = "\n-- Dump completed\n";
    let cases = [
        ("use", "USE `live`;\nDROP TABLE `t`;".to_owned(), "USE"),
        ("qualified", "INSERT INTO `live`.`t` VALUES (2);".into(), "another database"),
        ("dropdb", "DROP DATABASE `live`;".into(), "DROP DATABASE"),
        ("shell", format!("\\! touch {}\n", marker.display()), "client command"),
        ("system", format!("system touch {}\n;", marker.display()), "system"),
        ("view", "CREATE VIEW `live`.`v` AS SELECT 1;".into(), "another database"),
        (
            "smuggled",
            "DELIMITER ;;\nCREATE PROCEDURE `p`() BEGIN SELECT 1; END; DROP DATABASE `live`;;\nDELIMITER ;".into(),
            "second statement",
        ),
        ("grant", "GRANT ALL ON *.* TO `app`@`%`;".into(), "GRANT"),
        ("global", "SET GLOBAL read_only = 1;".into(), "more than this session"),
        ("truncated", "INSERT INTO `x` VALUES (1".into(), "ends inside a statement"),
        (
            "no-backslash-escapes",
            "SET sql_mode = 'NO_BACKSLASH_ESCAPES';\nINSERT INTO `x` VALUES ('a\\'); DROP DATABASE `live`; -- ');".into(),
            "NO_BACKSLASH_ESCAPES",
        ),
        ("gbk", "SET NAMES gbk;".into(), "GBK"),
        ("call", "INSERT INTO `x` VALUES (`live`.`f`());".into(), "function call"),
        ("subquery", "INSERT INTO `x` VALUES ((SELECT a FROM `live`.`t`));".into(), "SELECT"),
        ("set-call", "SET @a = `live`.`f`();".into(), "expression"),
        (
            "repeat-smuggle",
            "DELIMITER ;;\nCREATE PROCEDURE `p`() SELECT REPEAT('a',2); DROP DATABASE `live`;;\nDELIMITER ;".into(),
            "second statement",
        ),
        (
            "dash-control",
            "INSERT INTO `x` VALUES (1) --\x01;DROP DATABASE `live`;\n;".into(),
            "control character",
        ),
        (
            "quoted-delimiter",
            "DELIMITER 'ab'\nSET @a=1ab DROP DATABASE `live`ab'ab'".into(),
            "delimiter",
        ),
        (
            "skipped-version",
            "INSERT INTO `x` VALUES (1) /*!99999 '*/;DROP DATABASE `live`;#'*/;".into(),
            "versioned comment",
        ),
        // The engine's name quoted, where no keyword check sees it: refused before it runs.
        (
            "quoted-engine",
            "CREATE TABLE `m` (`a` int) ENGINE='MRG_MyISAM';\nINSERT INTO `m` VALUES (1);".into(),
            "storage engine a quoted name",
        ),
        (
            "default-engine",
            "SET default_storage_engine = 'MRG_MyISAM';\nCREATE TABLE `m` (`a` int);".into(),
            "never set",
        ),
        (
            "comment-glued",
            "CREATE TABLE `m` (`a` text) DATA/*!*/DIRECTORY='/tmp';".into(),
            "DIRECTORY",
        ),
        ("glued-keyword", "INSERT INTO `x` VALUES (1.0SELECT 1);".into(), "SELECT"),
    ];
    for (i, (what, body, expected)) in cases.iter().enumerate() {
        let name = format!("evil_20240{:03}", 101 + i);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(format!("{head}{body}{tail}").as_bytes())
            .unwrap();
        plant(
            &env,
            "good_20240115",
            &name,
            ".sql.gz",
            &enc.finish().unwrap(),
        );
        for args in [
            vec!["verify", "--restore", name.as_str()],
            vec!["restore", name.as_str(), "--yes"],
        ] {
            let o = env.run(&args);
            assert_ne!(o.code, 0, "{what}: {args:?} succeeded");
            assert!(o.all().contains(expected), "{what}: {args:?}: {}", o.all());
        }
        assert!(!marker.exists(), "{what}: a shell command ran");
        assert_same(
            &my.normalized_dump("shop"),
            &before,
            "{what}: the live database changed",
        );
        assert_same(&my.normalized_dump("live"), &live_before, "{what}");
        assert_eq!(
            my.databases(),
            ["live", "shop"],
            "{what}: something was left"
        );
        assert_eq!(my.sql("mysql", "SELECT @@GLOBAL.read_only"), "0");
    }
    // A table whose engine the text does not name takes the server's default: the server is
    // asked what it made (here an administrator's odd default).
    my.sql("mysql", "SET GLOBAL default_storage_engine = 'MRG_MyISAM'");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(format!("{head}{tail}").as_bytes()).unwrap();
    plant(
        &env,
        "good_20240115",
        "evil_20240301",
        ".sql.gz",
        &enc.finish().unwrap(),
    );
    let o = env.run(&["verify", "--restore", "evil_20240301"]);
    my.sql("mysql", "SET GLOBAL default_storage_engine = 'InnoDB'");
    assert_ne!(o.code, 0, "a MERGE table was loaded");
    assert!(o.all().contains("storage engine MRG_MyISAM"), "{}", o.all());
    assert_eq!(my.databases(), ["live", "shop"]);
    // A server whose sessions start with NO_BACKSLASH_ESCAPES (the client would then read a
    // backslash in a string as no escape) still restores the good backup exactly: the load's
    // session starts without it.
    my.sql(
        "mysql",
        "SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',NO_BACKSLASH_ESCAPES')",
    );
    let r = env.run(&["restore", "good_20240115", "--yes"]);
    my.sql(
        "mysql",
        "SET GLOBAL sql_mode = REPLACE(@@GLOBAL.sql_mode, 'NO_BACKSLASH_ESCAPES', '')",
    );
    r.ok();
    assert_same(&my.normalized_dump("shop"), &before, "shop");
}

/// The connection a load runs a dump's statements on takes one statement per request: a text
/// holding two is refused by the server before either runs, whatever the allowlist missed;
/// one statement with a compound body, or a trailing `;`, runs.
#[test]
fn the_load_connection_runs_one_statement_per_request() {
    use dbkeep::database_url::DatabaseUrl;
    use dbkeep::engine::mysql::connection::{Connection, ConnectionError};
    let Some((my, _env)) = setup() else { return };
    my.sql("shop", "CREATE TABLE one (a INT)");
    let DatabaseUrl::Mysql(conn) = DatabaseUrl::parse(&my.url("shop")).unwrap() else {
        panic!("a MySQL URL")
    };
    let mut c = Connection::open(&conn, "shop", std::time::Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    for text in [
        "INSERT INTO one VALUES (1); DROP DATABASE shop",
        "DO 1; DROP TABLE one",
        "INSERT INTO one VALUES (2);\n-- a comment\nDROP TABLE one",
        "/*!50003 INSERT INTO one VALUES (3)*/; DROP TABLE one",
        "SET @a = 1; DROP TABLE one",
    ] {
        let e = c.run(text.as_bytes()).expect_err(text);
        assert!(
            matches!(e, ConnectionError::Statement { code: 1064, .. }),
            "{text}: {e}"
        );
    }
    c.run(b"INSERT INTO one VALUES (4);").unwrap();
    c.run(
        b"CREATE PROCEDURE p() BEGIN INSERT INTO one VALUES (5); INSERT INTO one VALUES (6); END",
    )
    .unwrap();
    c.run(b"CALL p()").unwrap();
    assert_eq!(
        my.sql("shop", "SELECT GROUP_CONCAT(a ORDER BY a) FROM one")
            .trim(),
        "4,5,6"
    );
    let e = c
        .run(b"INSERT INTO nowhere VALUES (1)")
        .expect_err("no such table");
    assert!(
        e.to_string().contains("INSERT INTO nowhere") && e.to_string().contains("1146"),
        "{e}"
    );
}
