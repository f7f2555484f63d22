//! Several databases in one configuration: `[databases.NAME]` tables beside the unnamed
//! database of `DATABASE_URL`, through the CLI (`--database`, `--all-databases`) and the API
//! (`?database=`, `GET /api/databases`, `/healthz` over all of them).

use crate::api::{Server, TOKEN};
use crate::common::TestEnv;
use crate::sqlite::{make_db, rows, sqlite_env};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// The unnamed database (app.db) and a named one, shop (shop.db, 7 rows), in its own
/// repository below the default one.
fn two_databases() -> TestEnv {
    let env = sqlite_env(3);
    make_db(&env.path().join("shop.db"), 7);
    std::fs::write(
        env.path().join("dbkeep.toml"),
        "[databases.shop]\ndatabase_url = \"sqlite:///shop.db\"\nbackup_compression = \"zstd\"\n",
    )
    .unwrap();
    env
}

fn json_of(o: &crate::common::Out) -> serde_json::Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", o.stdout))
}

#[test]
fn each_database_has_its_own_repository_and_the_default_keeps_working() {
    let env = two_databases();
    env.run(&["backup", "--name", "main_20261201"]).ok();
    env.run(&["--database", "shop", "backup", "--name", "shop_20261201"])
        .ok();
    // The default repository holds only the default database's backup.
    let names: Vec<String> = env.backups().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["main_20261201"]);
    let shop_dir = env.backup_dir().join("shop");
    assert!(
        shop_dir.join("shop_20261201.manifest.json").is_file(),
        "the named database's backups go below the default repository, in shop/"
    );
    let o = env.run(&["--database", "shop", "list", "--json"]);
    o.ok();
    let shop = json_of(&o);
    assert_eq!(shop["backups"][0]["backup_name"], "shop_20261201");
    assert_eq!(
        shop["backups"][0]["compression"], "zstd",
        "its own defaults"
    );
    assert_eq!(shop["statistics"]["database"], "shop");

    let o = env.run(&["list", "--all-databases", "--json"]);
    o.ok();
    let all = json_of(&o);
    let dbs: Vec<&str> = all["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["database"].as_str().unwrap())
        .collect();
    assert_eq!(dbs, ["default", "shop"]);
    let o = env.run(&["stats", "--all-databases"]);
    o.ok();
    assert!(o.stdout.contains("== database shop =="), "{}", o.stdout);

    // A restore of the named database restores its own file.
    make_db(&env.path().join("shop.db"), 9);
    env.run(&["--database", "shop", "restore", "--yes", "shop_20261201"])
        .ok();
    assert_eq!(rows(&env.path().join("shop.db")).len(), 7);
    assert_eq!(rows(&env.path().join("app.db")).len(), 3);

    // An unknown name is a usage error naming the configured ones.
    let o = env.run(&["--database", "nope", "list"]);
    o.code(2);
    assert!(o.stderr.contains("\"nope\""), "{}", o.stderr);
    assert!(o.stderr.contains("default, shop"), "{}", o.stderr);
}

#[test]
fn a_shared_repository_or_a_bad_table_is_refused() {
    let env = sqlite_env(1);
    let cases = [
        (
            "[databases.a]\ndatabase_url = \"sqlite:///a.db\"\nbackup_dir = \"./backups\"\n",
            "share the repository",
        ),
        (
            "[databases.a]\ndatabase_url = \"sqlite:///a.db\"\nbackup_dir = \"x\"\n[databases.b]\ndatabase_url = \"sqlite:///b.db\"\nbackup_dir = \"x/\"\n",
            "share the repository",
        ),
        (
            "[databases.a]\ndatabase_url = \"sqlite:///a.db\"\nbackup_dir = \"./backups/../backups//\"\n",
            "share the repository",
        ),
        (
            "[channels.hc]\ntype = \"healthchecks\"\nurl = \"http://127.0.0.1:9/x\"\n[databases.a]\ndatabase_url = \"sqlite:///a.db\"\n",
            "healthchecks check of both databases",
        ),
        ("[databases.a]\nbackup_dir = \"x\"\n", "has no database_url"),
        (
            "[databases.a]\ndatabase_url = \"sqlite:///a.db\"\ndbkeep_api_token = \"s3cret-token\"\n",
            "applies to the whole service",
        ),
        (
            "[databases.default]\ndatabase_url = \"sqlite:///a.db\"\n",
            "a database name is",
        ),
        (
            "[databases.\"../up\"]\ndatabase_url = \"sqlite:///a.db\"\n",
            "a database name is",
        ),
        (
            "[[schedule]]\nname = \"n\"\ncron = \"@daily\"\ndatabase = \"ghost\"\n",
            "not configured",
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(env.path().join("dbkeep.toml"), text).unwrap();
        let o = env.run(&["list"]);
        o.code(2);
        assert!(o.stderr.contains(expected), "{text}: {}", o.stderr);
        assert!(!o.stderr.contains("s3cret-token"), "{}", o.stderr);
    }
    // --backup-dir cannot point a database at another's repository either.
    std::fs::write(
        env.path().join("dbkeep.toml"),
        "[databases.a]\ndatabase_url = \"sqlite:///a.db\"\n",
    )
    .unwrap();
    env.run(&["--database", "a", "list"]).ok();
    let o = env.run(&["--database", "a", "--backup-dir", "backups", "list"]);
    o.code(2);
    assert!(o.stderr.contains("share the repository"), "{}", o.stderr);
}

#[test]
fn the_api_takes_the_database_as_a_query_parameter_and_healthz_covers_all() {
    let env = two_databases();
    let s = Server::start(&env);
    let (status, body) = s.call(
        Method::POST,
        "/api/backup/create?database=shop",
        Some(TOKEN),
        Some(json!({"backup_name": "shop_20261201"})),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, list) = s.call(
        Method::GET,
        "/api/backup/list?database=shop",
        Some(TOKEN),
        None,
    );
    assert_eq!(list["backups"][0]["backup_name"], "shop_20261201");
    let (_, list) = s.call(Method::GET, "/api/backup/list", Some(TOKEN), None);
    assert_eq!(
        list["backups"].as_array().unwrap().len(),
        0,
        "the default database has no backup yet"
    );
    // healthz: shop is healthy, the default has no backup: failing, naming which.
    let (status, h) = s.call(Method::GET, "/healthz", Some(TOKEN), None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{h}");
    assert_eq!(h["databases"]["shop"]["status"], "ok", "{h}");
    assert_eq!(h["databases"]["default"]["status"], "failing", "{h}");
    assert!(
        h["reason"].as_str().unwrap().contains("database default"),
        "{h}"
    );
    // Without a token: the same verdict, no database named.
    let (status, anon) = s.call(Method::GET, "/healthz?nocache=1", None, None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{anon}");
    assert!(!anon.to_string().contains("shop"), "{anon}");
    assert_eq!(anon["databases_failing"], 1, "{anon}");
    let (status, body) = s.call(Method::GET, "/healthz?database=nope", None, None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!body.to_string().contains("shop"), "{body}");
    let (status, _) = s.call(Method::GET, "/healthz?database=shop", None, None);
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.call(
        Method::POST,
        "/api/backup/create",
        Some(TOKEN),
        Some(json!({"backup_name": "main_20261201"})),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, h) = s.call(Method::GET, "/healthz", None, None);
    assert_eq!(status, StatusCode::OK, "{h}");

    let (status, dbs) = s.call(Method::GET, "/api/databases", Some(TOKEN), None);
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = dbs["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "shop"], "{dbs}");
    assert_eq!(dbs["databases"][1]["type"], "sqlite");
    assert_eq!(dbs["databases"][1]["statistics"]["total_backups"], 1);
    assert!(
        !dbs.to_string().contains("sqlite:///"),
        "no URL in the answer"
    );

    // A restore through the API on the named database.
    make_db(&env.path().join("shop.db"), 20);
    let (status, body) = s.call(
        Method::POST,
        "/api/backup/restore/shop_20261201?database=shop",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(rows(&env.path().join("shop.db")).len(), 7);
    // The default database's repository has no such backup.
    let (status, _) = s.call(
        Method::POST,
        "/api/backup/restore/shop_20261201",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = s.call(
        Method::GET,
        "/api/backup/statistics?database=nope",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"].as_str().unwrap().contains("default, shop"),
        "{body}"
    );
    let (status, _) = s.call(
        Method::GET,
        "/api/backup/statistics?databse=shop",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "a misspelt parameter");
    // Metrics label each database by its configured name.
    let text = s
        .raw(Method::GET, "/metrics", Some(TOKEN), None)
        .text()
        .unwrap();
    assert!(
        text.contains("dbkeep_repository_backups{database=\"shop\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("dbkeep_repository_backups{database=\"default\"} 1"),
        "{text}"
    );
    assert_eq!(s.stop(), 0);
}
