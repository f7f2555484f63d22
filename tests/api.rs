//! `dbkeep serve` on a free loopback port, driven over real HTTP.

use crate::common::{TestEnv, wait_for};
use crate::sqlite::{make_db, rows, sqlite_env};
use reqwest::blocking::{Client, Response};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

pub const TOKEN: &str = "test-token-0123456789abcdef";
pub const GENEROUS: &str = "auth_failure=1000/minute,create=1000/minute,list=1000/second,restore=1000/minute,delete=1000/minute,statistics=1000/second,download=1000/minute,verify=1000/minute";

pub struct Server {
    child: Child,
    pub base: String,
    /// What the server wrote to stderr, drained on a thread (a full pipe would block it).
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts `dbkeep serve --bind 127.0.0.1:0` in `env` with a token and generous limits
    /// (unless the env sets its own).
    pub fn start(env: &TestEnv) -> Server {
        Self::start_with(env, &[])
    }

    pub fn start_with(env: &TestEnv, extra: &[&str]) -> Server {
        let mut cmd = env.command(&["serve", "--bind", "127.0.0.1:0"]);
        cmd.args(extra);
        if !env.env.iter().any(|(k, _)| k == "DBKEEP_API_TOKEN") {
            cmd.env("DBKEEP_API_TOKEN", TOKEN);
        }
        if !env.env.iter().any(|(k, _)| k == "DBKEEP_RATE_LIMITS") {
            cmd.env("DBKEEP_RATE_LIMITS", GENEROUS);
        }
        if !env.env.iter().any(|(k, _)| k == "DBKEEP_AUDIT_LOG") {
            cmd.env("DBKEEP_AUDIT_LOG", env.path().join("audit.log"));
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start dbkeep serve");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(pipe) = child.stderr.take() {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut s = stderr.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("listening line");
        let base = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        Server {
            child,
            base,
            stderr,
        }
    }

    pub fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let r = self.raw(method, path, token, body);
        let status = r.status();
        let text = r.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let client = Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let mut req = client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().expect("request")
    }

    /// Sends `METHOD PATH` with the token, exactly as written; returns status and JSON body.
    pub fn raw_request(&self, method: &str, path: &str) -> (u16, Value) {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).unwrap();
        let status: u16 = resp
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad response: {resp}"));
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
        (
            status,
            serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for the exit; returns what the server wrote to stderr.
    pub fn stop_and_stderr(self) -> String {
        let stderr = self.stderr.clone();
        self.stop();
        std::thread::sleep(Duration::from_millis(100));
        stderr.lock().unwrap().clone()
    }

    /// SIGTERM, then wait for the exit; returns the exit code.
    pub fn stop(mut self) -> i32 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = self.child.wait().expect("wait");
        status.code().unwrap_or(-1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn error_shape(v: &Value) {
    assert_eq!(v["success"], false, "{v}");
    assert!(v["error"].is_string(), "{v}");
    assert!(
        v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    assert!(v.get("backup_name").is_some(), "{v}");
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.to_uppercase().as_bytes()).unwrap()
}

#[test]
fn every_api_route_requires_a_token() {
    let env = sqlite_env(3);
    let s = Server::start(&env);
    for (m, path, _) in dbkeep::api::ROUTES {
        let path = path.replace("{name}", "some_backup");
        // Public: the health check, and the dashboard's static page (which holds no data:
        // hostile_http checks it).
        if path == "/healthz" || path == "/" || path.starts_with("/assets/") {
            continue;
        }
        for token in [None, Some("wrong-token-wrong-token")] {
            let (status, body) = s.call(method(m), &path, token, None);
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{m} {path} with {token:?}: {body}"
            );
            error_shape(&body);
        }
    }
    // Unknown /api paths answer 404 in our shape, without revealing anything.
    let (status, body) = s.call(Method::GET, "/api/backup/secret", None, None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    error_shape(&body);
    assert!(!env.backup_dir().exists(), "nothing was written");
}

#[test]
fn openapi_document_matches_the_router() {
    let env = sqlite_env(3);
    let s = Server::start(&env);
    let (status, doc) = s.call(Method::GET, "/api/openapi.json", Some(TOKEN), None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = 0;
    for (path, ops) in paths {
        for m in ops.as_object().unwrap().keys() {
            documented += 1;
            assert!(
                dbkeep::api::ROUTES
                    .iter()
                    .any(|(rm, rp, _)| rm == m && rp == path),
                "{m} {path} is documented but not in ROUTES"
            );
        }
    }
    assert_eq!(documented, dbkeep::api::ROUTES.len());
    // Each documented route exists in the router: never the fallback's 404 or a 405.
    for (m, path, _) in dbkeep::api::ROUTES {
        let concrete = path.replace("{name}", "no_such_backup");
        if concrete.ends_with("/events") {
            // A stream that does not end: its status only.
            let r = s.raw(method(m), &concrete, Some(TOKEN), None);
            assert_eq!(r.status(), StatusCode::OK, "{m} {path}");
            continue;
        }
        let (status, body) = s.call(method(m), &concrete, Some(TOKEN), None);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
        if status == StatusCode::NOT_FOUND {
            assert!(
                !body["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("no such endpoint"),
                "{m} {path}: {body}"
            );
        }
    }
}

#[test]
fn spec_flow_on_sqlite_create_list_restore_delete_statistics() {
    let env = sqlite_env(50);
    let db = env.path().join("app.db");
    let before = rows(&db);
    let s = Server::start(&env);

    let (status, created) = s.call(
        Method::POST,
        "/api/backup/create",
        Some(TOKEN),
        Some(json!({"backup_name": "manual_backup", "compress": true})),
    );
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["success"], true);
    assert_eq!(created["backup_name"], "manual_backup");
    assert_eq!(created["file_path"], "./backups/manual_backup.db.gz");
    assert!(created["file_size"].as_u64().unwrap() > 0);
    assert!(created["duration"].is_number());
    assert!(created["timestamp"].as_str().unwrap().ends_with('Z'));

    let (status, list) = s.call(Method::GET, "/api/backup/list", Some(TOKEN), None);
    assert_eq!(status, StatusCode::OK);
    let b = &list["backups"][0];
    assert_eq!(b["backup_name"], "manual_backup");
    assert_eq!(b["file_path"], created["file_path"]);
    assert_eq!(b["file_size"], created["file_size"]);
    assert_eq!(b["compressed"], true);
    assert_eq!(b["database_type"], "sqlite");
    assert_eq!(b["timestamp"], created["timestamp"]);
    assert_eq!(b["success"], true);
    assert_eq!(list["statistics"]["total_backups"], 1);
    assert_eq!(list["statistics"]["backup_directory"], "./backups");
    // Per-table row counts only when asked for (REVIEW D4): a list stays small.
    assert!(b.get("row_counts").is_none(), "{b}");
    let (status, full) = s.call(
        Method::GET,
        "/api/backup/list?row_counts=true",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{full}");
    assert!(full["backups"][0]["row_counts"].is_object(), "{full}");
    let (status, _) = s.call(Method::GET, "/api/backup/list?bogus=1", Some(TOKEN), None);
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The same name again: 409, and the backup is untouched.
    let (status, body) = s.call(
        Method::POST,
        "/api/backup/create",
        Some(TOKEN),
        Some(json!({"backup_name": "manual_backup"})),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    error_shape(&body);

    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM people", [])
        .unwrap();
    let (status, restored) = s.call(
        Method::POST,
        "/api/backup/restore/manual_backup",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert_eq!(restored["success"], true);
    assert_eq!(rows(&db), before, "the data came back");

    let (status, verified) = s.call(
        Method::POST,
        "/api/backup/verify/manual_backup",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{verified}");
    assert!(verified["checks"].as_array().unwrap().len() >= 3);

    let dl = s.raw(
        Method::GET,
        "/api/backup/download/manual_backup",
        Some(TOKEN),
        None,
    );
    assert_eq!(dl.status(), StatusCode::OK);
    let bytes = dl.bytes().unwrap();
    assert_eq!(
        bytes.as_ref(),
        std::fs::read(env.backup_dir().join("manual_backup.db.gz")).unwrap()
    );

    let (status, deleted) = s.call(
        Method::DELETE,
        "/api/backup/delete/manual_backup",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["success"], true);
    let (status, stats) = s.call(Method::GET, "/api/backup/statistics", Some(TOKEN), None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["total_backups"], 0);
    assert_eq!(stats["backup_directory"], "./backups");

    let (status, body) = s.call(
        Method::POST,
        "/api/backup/restore/manual_backup",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    error_shape(&body);
    assert_eq!(body["backup_name"], "manual_backup");
    assert_eq!(rows(&db), before, "a 404 restore leaves the database alone");

    // The audit log has one line per call, with the token's name and never the token.
    let audit = std::fs::read_to_string(env.path().join("audit.log")).unwrap();
    assert!(audit.lines().count() >= 8, "{audit}");
    assert!(!audit.contains(TOKEN));
    for line in audit.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["token"], "default");
        for k in [
            "time",
            "client",
            "action",
            "outcome",
            "status",
            "duration_ms",
        ] {
            assert!(!v[k].is_null(), "{k} missing: {line}");
        }
    }
}

#[test]
fn the_fourth_create_within_an_hour_is_rate_limited_per_client() {
    let mut env = sqlite_env(3);
    env.set("DBKEEP_RATE_LIMITS", "list=100/second");
    let s = Server::start(&env);
    for i in 0..3 {
        let (status, body) = s.call(
            Method::POST,
            "/api/backup/create",
            Some(TOKEN),
            Some(json!({"backup_name": format!("r{i}")})),
        );
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let r = s.raw(
        Method::POST,
        "/api/backup/create",
        Some(TOKEN),
        Some(json!({"backup_name": "r3"})),
    );
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 3600, "{retry}");
    error_shape(&r.json::<Value>().unwrap());
    assert!(!env.backup_dir().join("r3.manifest.json").exists());
    // Another client (another loopback address) still has its own allowance.
    let other = Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = other
        .post(format!("{}/api/backup/create", s.base))
        .bearer_auth(TOKEN)
        .json(&json!({"backup_name": "other_client"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Failed authentication is limited too (10 a minute by default): then 429 with Retry-After.
    let mut last = StatusCode::OK;
    for _ in 0..11 {
        let r = s.raw(
            Method::GET,
            "/api/backup/list",
            Some("guessing-guessing-guessing"),
            None,
        );
        last = r.status();
        if last == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            break;
        }
        assert_eq!(last, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    // Over its budget, the client gets 429 whatever it sends, the right token too (REVIEW B4:
    // else guessing is not slowed at all); another client is not affected.
    let (status, _) = s.call(Method::GET, "/api/backup/list", Some(TOKEN), None);
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let r = other
        .get(format!("{}/api/backup/list", s.base))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[test]
fn bad_requests_get_the_right_4xx_and_write_nothing() {
    let env = sqlite_env(3);
    let s = Server::start(&env);
    let client = Client::new();
    let post = |body: Vec<u8>, ct: &str| {
        let r = client
            .post(format!("{}/api/backup/create", s.base))
            .bearer_auth(TOKEN)
            .header("content-type", ct)
            .body(body)
            .send()
            .unwrap();
        let status = r.status();
        (status, r.json::<Value>().unwrap())
    };
    let cases: Vec<(Vec<u8>, &str, StatusCode)> = vec![
        (
            b"{not json".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            br#"{"backup_name": 5}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            br#"{"compress": "yes"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            br#"{"backup_name": "x", "evil": true}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            br#"{"backup_name": "../x"}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
        (
            br#"{"backup_name": "x"}"#.to_vec(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            format!("[{}]", "[".repeat(5000) + &"]".repeat(5000)).into_bytes(),
            "application/json",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, ct, want) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        let (status, v) = post(body, ct);
        assert_eq!(status, want, "{shown}: {v}");
        error_shape(&v);
    }
    // A 1 MiB body: refused from its declared length (sent raw: the server answers before it
    // has read the body, which an HTTP client library reports as a broken request).
    {
        use std::io::{Read, Write};
        let addr = s.base.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let head = format!(
            "POST /api/backup/create HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            1 << 20
        );
        conn.write_all(head.as_bytes()).unwrap();
        let _ = conn.write_all(&[b' '; 8192]);
        let mut resp = Vec::new();
        let _ = conn.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("\"success\":false"), "{text}");
    }
    for path in [
        "/api/backup/restore/..%2F..%2Fetc%2Fpasswd",
        "/api/backup/restore/%2e%2e",
        "/api/backup/delete/..%2Fapp.db",
        "/api/backup/download/%2e%2e%2fapp.db",
        "/api/backup/verify/a%2Fb",
        "/api/backup/delete/%00",
    ] {
        let m = if path.contains("delete") {
            "DELETE"
        } else if path.contains("download") {
            "GET"
        } else {
            "POST"
        };
        // Sent byte for byte: an HTTP client library would normalise `%2e%2e` away.
        let (status, v) = s.raw_request(m, path);
        assert_eq!(status, 400, "{path}: {v}");
        error_shape(&v);
    }
    assert!(
        env.path().join("app.db").exists(),
        "nothing outside the backup directory was touched"
    );
    assert_eq!(rows(&env.path().join("app.db")).len(), 3);
    assert!(
        env.files().is_empty(),
        "nothing was written: {:?}",
        env.files()
    );
}

#[test]
fn healthz_reports_the_last_backup_without_auth() {
    let mut env = sqlite_env(3);
    let s = Server::start(&env);
    let (status, h) = s.call(Method::GET, "/healthz", None, None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{h}");
    env.run(&["backup", "--name", "h1"]).ok();
    let (status, h) = s.call(Method::GET, "/healthz", None, None);
    assert_eq!(status, StatusCode::OK, "{h}");
    assert_eq!(h["last_backup_success"], true);
    assert!(h["last_success_age_seconds"].as_i64().unwrap() < 60);
    drop(s);
    // A failed last backup makes it fail; so does an old last success.
    env.set("DATABASE_URL", "sqlite:///gone.db");
    env.run(&["backup", "--name", "h2"]).code(1);
    let s = Server::start(&env);
    let (status, h) = s.call(Method::GET, "/healthz", None, None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{h}");
    assert_eq!(h["reason"], "the last backup failed");
    let text = serde_json::to_string(&h).unwrap();
    assert!(
        !text.contains("gone.db"),
        "healthz shows no error detail: {text}"
    );
    drop(s);
    env.run(&["delete", "h2", "--yes"]).ok();
    env.set("DBKEEP_HEALTH_MAX_AGE", "0");
    std::thread::sleep(Duration::from_millis(1100));
    let s = Server::start(&env);
    let (status, h) = s.call(Method::GET, "/healthz", None, None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{h}");
    assert_eq!(h["reason"], "the last successful backup is too old");
    drop(s);
    // A failed copy of the last successful backup (3-2-1 broken) fails it, and so does a
    // manifest that cannot be read (a backup that can be neither verified nor restored).
    env.set("DBKEEP_HEALTH_MAX_AGE", "3600");
    env.set("DATABASE_URL", "sqlite:///app.db");
    let not_a_dir = env.path().join("not-a-directory");
    std::fs::write(&not_a_dir, b"").unwrap();
    env.set(
        "BACKUP_COPY_TO",
        not_a_dir.join("copies").display().to_string(),
    );
    env.run(&["backup", "--name", "h3"]).code(1);
    env.unset("BACKUP_COPY_TO");
    let s = Server::start(&env);
    let (status, h) = s.call(Method::GET, "/healthz", None, None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{h}");
    assert_eq!(h["reason"], "a copy of the last successful backup failed");
    assert_eq!(h["failed_copies"], 1);
    drop(s);
    env.run(&["backup", "--name", "h4"]).ok();
    let junk = env.backup_dir().join("junk.manifest.json");
    std::fs::write(&junk, b"{ not json").unwrap();
    let s = Server::start(&env);
    let (status, h) = s.call(Method::GET, "/healthz", None, None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{h}");
    assert_eq!(h["reason"], "a manifest cannot be read");
    assert_eq!(h["unreadable_manifests"], 1);
    drop(s);
    std::fs::remove_file(&junk).unwrap();
    let s = Server::start(&env);
    let (status, h) = s.call(Method::GET, "/healthz", None, None);
    assert_eq!(status, StatusCode::OK, "{h}");
}

#[test]
fn serve_refuses_to_start_without_a_token_unless_loopback_no_auth() {
    let mut env = TestEnv::new();
    make_db(&env.path().join("app.db"), 1);
    env.set("DATABASE_URL", "sqlite:///app.db");
    let o = env.run(&["serve", "--bind", "127.0.0.1:0"]);
    o.code(2);
    assert!(o.stderr.contains("DBKEEP_API_TOKEN"), "{}", o.stderr);
    let o = env.run(&["serve", "--bind", "0.0.0.0:0", "--no-auth"]);
    o.code(2);
    assert!(o.stderr.contains("loopback"), "{}", o.stderr);
    env.set("DBKEEP_API_TOKEN", "");
    env.set("DBKEEP_RATE_LIMITS", GENEROUS);
    let s = Server::start_with(&env, &["--no-auth"]);
    let (status, _) = s.call(Method::GET, "/api/backup/list", None, None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.stop(), 0);
}

/// Sends a create over a raw connection and returns it (the caller may drop it to disconnect).
fn start_create(s: &Server, name: &str) -> std::net::TcpStream {
    use std::io::Write;
    let addr = s.base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let body = format!("{{\"backup_name\": \"{name}\"}}");
    write!(
        conn,
        "POST /api/backup/create HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    conn
}

/// A lock that makes pg_dump wait on `sales.items` until the returned child is killed.
fn hold_table_lock(pg: &crate::common::PgServer) -> std::process::Child {
    let mut holder = pg.client("psql", "app", "appdb");
    holder
        .args([
            "-X",
            "-c",
            "BEGIN; LOCK TABLE sales.items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = holder.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    child
}

fn has_temp(env: &TestEnv) -> bool {
    env.files().iter().any(|f| f.starts_with(".dbkeep-tmp-"))
}

#[test]
fn spec_flow_on_postgres_with_secrets_kept() {
    let Some((pg, env)) = crate::postgres::setup() else {
        return;
    };
    let before = pg.normalized_dump("appdb");
    let s = Server::start(&env);
    let (status, created) = s.call(
        Method::POST,
        "/api/backup/create",
        Some(TOKEN),
        Some(json!({"backup_name": "pg_api"})),
    );
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["file_path"], "./backups/pg_api.sql.gz");
    let (_, list) = s.call(Method::GET, "/api/backup/list", Some(TOKEN), None);
    assert_eq!(list["backups"][0]["database_type"], "postgresql");
    assert_eq!(list["backups"][0]["success"], true);
    pg.sql_as(
        "app",
        "appdb",
        "DELETE FROM sales.items; DROP VIEW sales.expensive;",
    );
    let (status, restored) = s.call(
        Method::POST,
        "/api/backup/restore/pg_api",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert_eq!(
        pg.normalized_dump("appdb"),
        before,
        "the restored database equals the original"
    );
    let (status, stats) = s.call(Method::GET, "/api/backup/statistics", Some(TOKEN), None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["total_backups"], 1);
    // A failing backup: generic 500, cause only in the log; the password nowhere.
    let mut bad = TestEnv::new();
    bad.set("DATABASE_URL", pg.url("app", "Wrong-Secret-42", "appdb"));
    bad.set("BACKUP_PG_BINDIR", pg.bin.display().to_string());
    let s2 = Server::start(&bad);
    let r = s2.raw(
        Method::POST,
        "/api/backup/create",
        Some(TOKEN),
        Some(json!({"backup_name": "bad"})),
    );
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let headers = format!("{:?}", r.headers());
    let body = r.text().unwrap();
    assert!(
        !body.contains("password authentication"),
        "the cause is not sent: {body}"
    );
    let (_, list) = s2.call(Method::GET, "/api/backup/list", Some(TOKEN), None);
    assert_eq!(list["backups"][0]["success"], false);
    let list_text = list.to_string();
    for secret in [crate::postgres::APP_PASSWORD, "Wrong-Secret-42", TOKEN] {
        for (what, text) in [
            ("body", body.as_str()),
            ("headers", headers.as_str()),
            ("list", list_text.as_str()),
            ("created", &created.to_string()),
            (
                "audit",
                &std::fs::read_to_string(env.path().join("audit.log")).unwrap(),
            ),
            (
                "audit2",
                &std::fs::read_to_string(bad.path().join("audit.log")).unwrap(),
            ),
            ("log", &env.log()),
            ("log2", &bad.log()),
        ] {
            assert!(!text.contains(secret), "{what} shows a secret: {text}");
        }
    }
}

#[test]
fn list_answers_during_a_backup_conflicts_get_409_and_a_disconnected_create_completes() {
    let Some((pg, env)) = crate::postgres::setup() else {
        return;
    };
    let s = Server::start(&env);
    let mut holder = hold_table_lock(&pg);
    let conn = start_create(&s, "slow");
    wait_for("the backup to start", || has_temp(&env));
    drop(conn); // the client goes away mid-create
    let t = std::time::Instant::now();
    let (status, _) = s.call(Method::GET, "/api/backup/list", Some(TOKEN), None);
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.call(Method::GET, "/api/backup/statistics", Some(TOKEN), None);
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.call(Method::GET, "/healthz", None, None);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE); // no backup yet, but it answers
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "reads do not wait for the backup"
    );
    for (m, path) in [
        (Method::POST, "/api/backup/create"),
        (Method::POST, "/api/backup/restore/slow"),
        (Method::DELETE, "/api/backup/delete/slow"),
    ] {
        let body = (path == "/api/backup/create").then(|| json!({"backup_name": "second"}));
        let (status, v) = s.call(m.clone(), path, Some(TOKEN), body);
        assert_eq!(status, StatusCode::CONFLICT, "{m} {path}: {v}");
        error_shape(&v);
    }
    // A refused request is not a failed backup: nothing is recorded for it.
    assert!(
        !env.backup_dir()
            .join("second.manifest.failed.json")
            .exists()
    );
    pg.release(&mut holder);
    wait_for("the disconnected create to finish", || {
        env.backup_dir().join("slow.manifest.json").exists()
    });
    let (_, list) = s.call(Method::GET, "/api/backup/list", Some(TOKEN), None);
    assert_eq!(list["backups"][0]["backup_name"], "slow");
    assert_eq!(list["backups"][0]["success"], true);
    env.run(&["verify", "slow"]).ok();
}

#[test]
fn sigterm_lets_a_running_backup_finish_or_aborts_it_after_the_grace_period() {
    let Some((pg, mut env)) = crate::postgres::setup() else {
        return;
    };
    // 1. The backup finishes within the grace period: it completes, the server exits 0.
    env.set("DBKEEP_SHUTDOWN_GRACE", "30");
    let s = Server::start(&env);
    let mut holder = hold_table_lock(&pg);
    let _conn = start_create(&s, "finishes");
    wait_for("the backup to start", || has_temp(&env));
    let stopper = std::thread::spawn(move || s.stop());
    std::thread::sleep(Duration::from_millis(500));
    pg.release(&mut holder);
    assert_eq!(stopper.join().unwrap(), 0);
    assert!(env.backup_dir().join("finishes.manifest.json").exists());
    assert!(!has_temp(&env));

    // 2. It does not finish in time: it is aborted, recorded as failed, and leaves no temp file.
    env.set("DBKEEP_SHUTDOWN_GRACE", "1");
    let s = Server::start(&env);
    let mut holder = hold_table_lock(&pg);
    let _conn = start_create(&s, "aborted");
    wait_for("the backup to start", || has_temp(&env));
    let t = std::time::Instant::now();
    assert_eq!(s.stop(), 0);
    assert!(t.elapsed() < Duration::from_secs(40));
    pg.release(&mut holder);
    assert!(!has_temp(&env), "{:?}", env.files());
    assert!(!env.backup_dir().join("aborted.manifest.json").exists());
    assert!(
        env.backup_dir()
            .join("aborted.manifest.failed.json")
            .exists()
    );
}

#[test]
fn a_full_disk_gets_503_and_keeps_the_older_backup() {
    let mut env = TestEnv::new();
    let db = env.path().join("app.db");
    make_db(&db, 10);
    env.set("DATABASE_URL", "sqlite:///app.db");
    let dir = env.backup_dir();
    let Some(_tmpfs) = crate::common::mount_tmpfs(&dir, "512k") else {
        return;
    };
    let s = Server::start(&env);
    let (status, v) = s.call(
        Method::POST,
        "/api/backup/create",
        Some(TOKEN),
        Some(json!({"backup_name": "small"})),
    );
    assert_eq!(status, StatusCode::OK, "{v}");
    // Now a database that cannot fit.
    make_db(&db, 20_000);
    let (status, v) = s.call(
        Method::POST,
        "/api/backup/create",
        Some(TOKEN),
        Some(json!({"backup_name": "big", "compress": false})),
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    error_shape(&v);
    assert!(v["error"].as_str().unwrap().contains("disk is full"), "{v}");
    assert!(!has_temp(&env), "{:?}", env.files());
    assert!(!dir.join("big.db").exists());
    drop(s);
    env.run(&["verify", "small"]).ok();
}

#[test]
fn list_sees_backups_made_by_the_cli_at_once() {
    let env = sqlite_env(3);
    let s = Server::start(&env);
    for i in 0..5 {
        let (status, _) = s.call(Method::GET, "/api/backup/list", Some(TOKEN), None);
        assert_eq!(status, StatusCode::OK);
        env.run(&["backup", "--name", &format!("cli_{i}")]).ok();
        let (_, list) = s.call(Method::GET, "/api/backup/list", Some(TOKEN), None);
        assert_eq!(list["backups"].as_array().unwrap().len(), i + 1, "{list}");
        let (_, stats) = s.call(Method::GET, "/api/backup/statistics", Some(TOKEN), None);
        assert_eq!(stats["total_backups"], i + 1);
    }
    env.run(&["delete", "cli_0", "--yes"]).ok();
    let (_, list) = s.call(Method::GET, "/api/backup/list", Some(TOKEN), None);
    assert_eq!(list["backups"].as_array().unwrap().len(), 4);
}

/// The value of the sample `metric` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn scrape(s: &Server, token: Option<&str>) -> (String, prometheus_parse::Scrape) {
    let r = s.raw(Method::GET, "/metrics", token, None);
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = r.text().unwrap();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("a Prometheus text parser reads it");
    (text, parsed)
}

#[test]
fn metrics_show_the_repository_and_the_servers_counters_behind_auth() {
    let mut env = sqlite_env(3);
    env.run(&["backup", "--name", "nightly_20261130"]).ok();
    env.run(&["backup", "--name", "nightly_20261201"]).ok();
    env.run(&["verify", "--restore", "nightly_20261201"]).ok();
    // The API's backup of series api makes retention delete the older one.
    std::fs::write(
        env.path().join("dbkeep.toml"),
        "[series.api]\nkeep_last = 1\n",
    )
    .unwrap();
    env.run(&["backup", "--name", "api_20261130"]).ok();
    env.set("DBKEEP_RATE_LIMITS", "statistics=1/minute");
    // A failed attempt of another series (its database is missing).
    let missing = format!("sqlite:///{}", env.path().join("gone/x.db").display());
    env.run_with(
        &[("DATABASE_URL", &missing)],
        &["backup", "--name", "weekly_20261201"],
    );
    let s = Server::start(&env);
    let (status, _) = s.call(Method::GET, "/metrics", None, None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = s.call(
        Method::POST,
        "/api/backup/create",
        Some(TOKEN),
        Some(json!({"backup_name": "api_20261201"})),
    );
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.call(
        Method::DELETE,
        "/api/backup/delete/nope_20200101",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    for expected in [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS] {
        let (status, _) = s.call(Method::GET, "/api/backup/statistics", Some(TOKEN), None);
        assert_eq!(status, expected);
    }

    let (text, m) = scrape(&s, Some(TOKEN));
    assert!(!text.contains(TOKEN), "no secret in the metrics");
    let newest = env.manifest("nightly_20261201");
    let nightly = [("series", "nightly"), ("database", "default")];
    let at = chrono::DateTime::parse_from_rfc3339(newest["timestamp"].as_str().unwrap())
        .unwrap()
        .timestamp() as f64;
    assert_eq!(
        sample(&m, "dbkeep_backup_last_success_timestamp_seconds", &nightly),
        Some(at),
        "{text}"
    );
    assert_eq!(
        sample(&m, "dbkeep_backup_last_size_bytes", &nightly),
        newest["file_size"].as_f64()
    );
    assert_eq!(
        sample(&m, "dbkeep_backup_last_success", &nightly),
        Some(1.0)
    );
    assert_eq!(sample(&m, "dbkeep_drill_last_success", &nightly), Some(1.0));
    assert!(sample(&m, "dbkeep_drill_last_timestamp_seconds", &nightly).is_some_and(|t| t >= at));
    let weekly = [("series", "weekly")];
    assert_eq!(
        sample(&m, "dbkeep_backup_last_success", &weekly),
        Some(0.0),
        "{text}"
    );
    assert!(sample(&m, "dbkeep_backup_last_failure_timestamp_seconds", &weekly).is_some());
    assert_eq!(
        sample(&m, "dbkeep_backup_last_success_timestamp_seconds", &weekly),
        None
    );
    let default = [("database", "default")];
    assert_eq!(sample(&m, "dbkeep_repository_backups", &default), Some(3.0));
    assert_eq!(
        sample(&m, "dbkeep_repository_failed_attempts", &default),
        Some(1.0)
    );
    assert!(sample(&m, "dbkeep_repository_size_bytes", &[]).is_some_and(|b| b > 0.0));
    assert_eq!(sample(&m, "dbkeep_operations_in_flight", &[]), Some(0.0));
    let ops = |operation: &str, outcome: &str| {
        sample(
            &m,
            "dbkeep_operations_total",
            &[("operation", operation), ("outcome", outcome)],
        )
    };
    assert_eq!(ops("create", "success"), Some(1.0), "{text}");
    assert_eq!(ops("delete", "refused"), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &m,
            "dbkeep_rate_limited_requests_total",
            &[("endpoint", "statistics")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&m, "dbkeep_retention_deleted_backups_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert!(
        !env.backups().iter().any(|(n, _)| n == "api_20261130"),
        "retention deleted the older backup of the series"
    );
    drop(s);

    // Public metrics: /metrics without a token, every other route still behind it.
    env.set("DBKEEP_METRICS_PUBLIC", "true");
    env.unset("DBKEEP_RATE_LIMITS");
    let s = Server::start(&env);
    let (_, m) = scrape(&s, None);
    assert_eq!(sample(&m, "dbkeep_repository_backups", &[]), Some(3.0));
    let (status, _) = s.call(Method::GET, "/api/backup/list", None, None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A SQLite database of about `mb` MiB of incompressible data, so a backup of it takes a while.
fn big_sqlite(env: &TestEnv, mb: usize) {
    let c = rusqlite::Connection::open(env.path().join("big.db")).unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {})
         INSERT INTO blobs (b) SELECT randomblob(1048576) FROM n;",
        mb
    ))
    .unwrap();
}

#[test]
fn running_operations_are_listed_and_streamed_with_their_progress() {
    let mut env = TestEnv::new();
    big_sqlite(&env, 96);
    env.set("DATABASE_URL", "sqlite:///big.db");
    let s = Server::start(&env);
    let (status, body) = s.call(Method::GET, "/api/operations", Some(TOKEN), None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["operations"], json!([]));
    // The stream answers at once with the (empty) list.
    let mut stream = s.raw(Method::GET, "/api/operations/events", Some(TOKEN), None);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut first = [0u8; 256];
    let n = std::io::Read::read(&mut stream, &mut first).unwrap();
    let text = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(
        text.starts_with("event: operations\ndata: {\"operations\":[]}"),
        "{text}"
    );
    let base = s.base.clone();
    let create = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .post(format!("{base}/api/backup/create"))
            .bearer_auth(TOKEN)
            .json(&json!({"backup_name": "big_20261201"}))
            .timeout(Duration::from_secs(300))
            .send()
            .unwrap()
            .status()
    });
    let mut seen = Value::Null;
    wait_for("the backup in /api/operations with bytes moved", || {
        let (_, body) = s.call(Method::GET, "/api/operations", Some(TOKEN), None);
        let op = &body["operations"][0];
        if op["kind"] == "backup" && op["bytes_written"].as_u64().unwrap_or(0) > 0 {
            seen = op.clone();
        }
        !seen.is_null() || create.is_finished()
    });
    assert_eq!(seen["backup_name"], "big_20261201", "{seen}");
    assert_eq!(seen["database"], "default");
    assert!(seen["bytes_read"].as_u64().unwrap() > 0, "{seen}");
    assert!(seen["phase"].is_string());
    // The stream saw it too (read on a thread: it never ends by itself).
    let streamed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = streamed.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stream, &mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    wait_for("the backup in the event stream", || {
        streamed.lock().unwrap().contains("\"kind\":\"backup\"")
    });
    assert_eq!(create.join().unwrap(), StatusCode::OK);
    let (status, _) = s.call(
        Method::GET,
        "/api/operations?database=nope",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s.call(Method::GET, "/api/operations", None, None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // SIGTERM with the stream still open: the server ends it and exits.
    assert_eq!(s.stop(), 0);
}

#[test]
fn the_cli_draws_progress_on_a_terminal_and_stays_silent_without_one() {
    if !crate::common::require("script", crate::common::have("script"), "bsdutils") {
        return;
    }
    let mut env = TestEnv::new();
    big_sqlite(&env, 96);
    env.set("DATABASE_URL", "sqlite:///big.db");
    // Without a terminal: nothing but the outcome.
    let o = env.run(&["backup", "--name", "quiet_20261201"]);
    o.ok();
    assert!(!o.stderr.contains("dumping"), "{}", o.stderr);
    // On a terminal (script gives it one): the progress line.
    let bin = env!("CARGO_BIN_EXE_dbkeep");
    let on_a_terminal = |args: &str| {
        std::process::Command::new("script")
            .args(["-qec", &format!("{bin} {args}"), "/dev/null"])
            .current_dir(env.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", "sqlite:///big.db")
            .env("TERM", "xterm")
            .output()
            .unwrap()
    };
    let o = on_a_terminal("backup --name tty_20261201");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("backup tty_20261201"), "{text}");
    assert!(text.contains(" read") && text.contains("/s"), "{text}");
    // --quiet on a terminal: silent.
    let o = on_a_terminal("--quiet backup --name q_20261201");
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).trim().is_empty(),
        "{:?}",
        o.stdout
    );
}
