//! The bad-input suite, part two: a corpus of hostile requests thrown at a real `dbkeep serve`
//! over raw TCP — oversized headers, bodies and URLs, slow bodies, invalid UTF-8, JSON bombs,
//! huge numbers, traversal in every path parameter, unsupported methods, malformed HTTP. Zero
//! 5xx, zero panics, the server keeps answering, and nothing is written outside the backup
//! directory. Prints a table of what came back.

use crate::api::{Server, TOKEN};
use crate::sqlite::sqlite_env;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Sends raw bytes, returns the status (None: the server closed without answering).
fn send(addr: &str, request: &[u8]) -> Option<u16> {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The server may answer (and close) before it has read all: a failed write is fine.
    let _ = conn.write_all(request);
    let mut resp = Vec::new();
    let _ = conn.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    text.strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Every file under `dir` (recursively), except under `skip`, with its size.
fn files(dir: &Path, skip: &Path, out: &mut BTreeMap<String, u64>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.starts_with(skip) {
            continue;
        }
        if p.is_dir() {
            files(&p, skip, out);
        } else {
            out.insert(p.display().to_string(), e.metadata().map_or(0, |m| m.len()));
        }
    }
}

#[test]
fn hostile_requests_get_4xx_never_5xx_and_write_nothing_outside_the_backup_directory() {
    let mut env = sqlite_env(50);
    env.set("DBKEEP_BODY_TIMEOUT", "2");
    env.run(&["backup", "--name", "target"]).ok();
    let s = Server::start(&env);
    let addr = s.base.trim_start_matches("http://").to_owned();
    let auth = format!("Bearer {TOKEN}");
    let auth = auth.as_str();
    let json = ("Content-Type", "application/json");
    let marker = format!("pwned{}", std::process::id());

    let mut before = BTreeMap::new();
    files(env.path(), &env.backup_dir(), &mut before);

    let mut corpus: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |what: &str, bytes: Vec<u8>| corpus.push((what.to_owned(), bytes));

    // Sizes.
    let big = "a".repeat(100 * 1024);
    add(
        "100 KiB header",
        request(
            "GET",
            "/api/backup/list",
            &[("Authorization", auth), ("X-Big", &big)],
            b"",
        ),
    );
    let many: Vec<(String, String)> = (0..2000).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    add(
        "2,000 headers",
        request("GET", "/api/backup/list", &many, b""),
    );
    add(
        "100 KiB URL",
        request(
            "GET",
            &format!("/api/backup/list?{big}"),
            &[("Authorization", auth)],
            b"",
        ),
    );
    add(
        "10 MiB body",
        request(
            "POST",
            "/api/backup/create",
            &[("Authorization", auth), json],
            &vec![b' '; 10 << 20],
        ),
    );
    add("declared 10 GiB body", format!("POST /api/backup/create HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 10737418240\r\nConnection: close\r\n\r\n{{").into_bytes());
    add(
        "huge token",
        request(
            "GET",
            "/api/backup/list",
            &[("Authorization", &format!("Bearer {big}"))],
            b"",
        ),
    );

    // Bodies.
    let bomb = format!("{}{}", "[".repeat(60_000), "]".repeat(60_000));
    add(
        "JSON bomb (60,000 deep)",
        request(
            "POST",
            "/api/backup/create",
            &[("Authorization", auth), json],
            bomb.as_bytes(),
        ),
    );
    let bomb = format!(
        "{{\"backup_name\": {}1{}}}",
        "{\"a\":".repeat(5000),
        "}".repeat(5000)
    );
    add(
        "JSON bomb in a field",
        request(
            "POST",
            "/api/backup/create",
            &[("Authorization", auth), json],
            bomb.as_bytes(),
        ),
    );
    add(
        "huge number",
        request(
            "POST",
            "/api/backup/create",
            &[("Authorization", auth), json],
            br#"{"backup_name": "x", "compress": 1e999999}"#,
        ),
    );
    add(
        "huge integer",
        request(
            "POST",
            "/api/backup/create",
            &[("Authorization", auth), json],
            format!("{{\"compress\": {}}}", "9".repeat(10_000)).as_bytes(),
        ),
    );
    add(
        "invalid UTF-8 body",
        request(
            "POST",
            "/api/backup/create",
            &[("Authorization", auth), json],
            b"{\"backup_name\": \"\xff\xfe\"}",
        ),
    );
    add(
        "NUL in a name",
        request(
            "POST",
            "/api/backup/create",
            &[("Authorization", auth), json],
            br#"{"backup_name": "a\u0000b"}"#,
        ),
    );
    add(
        "traversal in the body",
        request(
            "POST",
            "/api/backup/create",
            &[("Authorization", auth), json],
            format!("{{\"backup_name\": \"../../{marker}\"}}").as_bytes(),
        ),
    );
    add(
        "unknown field",
        request(
            "POST",
            "/api/backup/create",
            &[("Authorization", auth), json],
            br#"{"backup_name": "x", "shell": "rm -rf /"}"#,
        ),
    );
    add(
        "wrong content type",
        request(
            "POST",
            "/api/backup/create",
            &[("Authorization", auth), ("Content-Type", "text/plain")],
            b"{}",
        ),
    );
    add("chunked garbage", format!("POST /api/backup/create HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n").into_bytes());
    add("length and chunked", format!("POST /api/backup/create HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n16\r\n{{\"backup_name\":\"../x\"}}\r\n0\r\n\r\n").into_bytes());

    // Traversal and odd bytes in every path parameter.
    let payloads = [
        format!("..%2F..%2F{marker}"),
        format!("%2e%2e%2f%2e%2e%2f{marker}"),
        format!("..%5C..%5C{marker}"),
        format!("{marker}%00.manifest.json"),
        "%ff%fe".to_owned(),
        "target%2F..%2Ftarget".to_owned(),
        ".dbkeep.lock".to_owned(),
        "target.manifest.json".to_owned(),
        "%252e%252e%252f".to_owned(),
        "a".repeat(5000),
    ];
    for (method, route) in [
        ("POST", "/api/backup/restore/"),
        ("DELETE", "/api/backup/delete/"),
        ("GET", "/api/backup/download/"),
        ("POST", "/api/backup/verify/"),
    ] {
        for p in &payloads {
            add(
                &format!(
                    "{method} {route}<{}>",
                    p.chars().take(24).collect::<String>()
                ),
                request(
                    method,
                    &format!("{route}{p}"),
                    &[("Authorization", auth)],
                    b"",
                ),
            );
        }
        add(
            &format!("{method} {route}../.. raw"),
            request(
                method,
                &format!("{route}../../{marker}"),
                &[("Authorization", auth)],
                b"",
            ),
        );
    }
    add(
        "verify with ?restore=maybe",
        request(
            "POST",
            "/api/backup/verify/target?restore=maybe",
            &[("Authorization", auth)],
            b"",
        ),
    );
    add(
        "verify with an unknown query",
        request(
            "POST",
            "/api/backup/verify/target?x=1&x=2",
            &[("Authorization", auth)],
            b"",
        ),
    );

    // Methods and malformed HTTP.
    for method in ["PUT", "PATCH", "TRACE", "OPTIONS", "CONNECT", "FOO", "GET"] {
        for route in [
            "/api/backup/create",
            "/api/backup/list",
            "/api/backup/delete/target",
            "/api/backup/statistics",
        ] {
            add(
                &format!("{method} {route}"),
                request(method, route, &[("Authorization", auth)], b""),
            );
        }
    }
    add(
        "garbage request line",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
    );
    add("HTTP/0.9", b"GET /api/backup/list\r\n\r\n".to_vec());
    add(
        "NUL in a header",
        request(
            "GET",
            "/api/backup/list",
            &[("Authorization", auth), ("X-A", "a\0b")],
            b"",
        ),
    );
    add(
        "invalid UTF-8 path",
        b"GET /api/backup/download/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            .to_vec(),
    );
    add(
        "no Host",
        format!(
            "GET /api/backup/list HTTP/1.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
    );
    add(
        "bad bearer bytes",
        request(
            "GET",
            "/api/backup/list",
            &[("Authorization", "Bearer \x7f\x01")],
            b"",
        ),
    );

    // A slow body: the server keeps answering others meanwhile, and gives up on it with 408.
    let slow = {
        let addr = addr.clone();
        let head = format!(
            "POST /api/backup/create HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
        );
        std::thread::spawn(move || {
            let mut conn = TcpStream::connect(&addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            conn.write_all(head.as_bytes()).unwrap();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(4) {
                if conn.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            let mut resp = Vec::new();
            let _ = conn.read_to_end(&mut resp);
            String::from_utf8_lossy(&resp).get(9..12).map(str::to_owned)
        })
    };

    let mut table: BTreeMap<String, usize> = BTreeMap::new();
    let mut server_errors = Vec::new();
    let mut accepted = Vec::new();
    for (what, bytes) in &corpus {
        let status = send(&addr, bytes);
        let class = match status {
            Some(code) => format!("{}xx", code / 100),
            None => "closed".into(),
        };
        *table.entry(class).or_default() += 1;
        if status.is_some_and(|c| c < 300) {
            accepted.push(what.clone());
        }
        if status.is_some_and(|c| c >= 500) {
            server_errors.push(format!("{what}: {status:?}"));
        }
        // It still answers.
        let ok = send(&addr, &request("GET", "/healthz", &[], b""));
        assert_eq!(ok, Some(200), "after {what} the server does not answer");
    }
    let slow = slow.join().unwrap();
    assert_eq!(slow.as_deref(), Some("408"), "a slow body is cut off");

    eprintln!("hostile requests: {} sent", corpus.len() + 1);
    for (class, n) in &table {
        eprintln!("  {class:>6}: {n}");
    }
    assert!(server_errors.is_empty(), "5xx: {server_errors:?}");
    // What was answered 2xx only read: list and statistics (with a big header, without Host).
    eprintln!("  accepted: {accepted:?}");
    for what in &accepted {
        assert!(
            [
                "100 KiB header",
                "GET /api/backup/list",
                "GET /api/backup/statistics",
                "no Host"
            ]
            .contains(&what.as_str()),
            "a hostile request was carried out: {what}"
        );
    }

    // Nothing written outside the backup directory but the logs; the backup is intact.
    let mut after = BTreeMap::new();
    files(env.path(), &env.backup_dir(), &mut after);
    let before: Vec<&String> = before.keys().collect();
    let after_keys: Vec<&String> = after.keys().filter(|k| !k.ends_with("audit.log")).collect();
    assert_eq!(
        after_keys,
        before
            .into_iter()
            .filter(|k| !k.ends_with("audit.log"))
            .collect::<Vec<_>>()
    );
    let tmp = env.path().parent().unwrap();
    assert!(
        !std::fs::read_dir(tmp)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(&marker)),
        "a traversal wrote outside"
    );
    assert_eq!(env.files(), vec!["target.db.gz", "target.manifest.json"]);
    env.run(&["verify", "target"]).ok();
    let stderr = s.stop_and_stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The dashboard's routes under the same treatment: a strict policy on every response, nothing
/// but static text without a token, no inline script, no traversal out of the assets.
#[test]
fn the_dashboards_routes_are_static_strict_and_reveal_nothing() {
    let env = sqlite_env(5);
    env.run(&["backup", "--name", "secret_named_20261201"]).ok();
    let s = Server::start(&env);
    let addr = s.base.trim_start_matches("http://").to_owned();
    for path in [
        "/",
        "/assets/app.js",
        "/assets/app.css",
        "/api/backup/list",
        "/healthz",
        "/nope",
    ] {
        let r = s.raw(reqwest::Method::GET, path, None, None);
        let h = r.headers();
        let csp = h
            .get("content-security-policy")
            .unwrap_or_else(|| panic!("{path}: no CSP"))
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{path}: {csp}"
        );
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let body = r.text().unwrap();
        assert!(
            !body.contains("secret_named"),
            "{path} shows a backup without a token"
        );
        assert!(!body.contains(TOKEN), "{path}");
    }
    let page = s.raw(reqwest::Method::GET, "/", None, None).text().unwrap();
    // Every script comes from a file of this origin: no inline script, no handler attribute.
    for (i, _) in page.match_indices("<script") {
        let tag = &page[i..i + page[i..].find('>').unwrap()];
        assert!(
            tag.contains("src=\"/assets/"),
            "inline or foreign script: {tag}"
        );
    }
    assert!(
        !page.contains(" onclick=") && !page.contains(" onload="),
        "{page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no CDN: {page}"
    );
    for (what, req) in [
        ("POST /", request("POST", "/", &[], b"x")),
        (
            "traversal out of the assets",
            request("GET", "/assets/../Cargo.toml", &[], b""),
        ),
        (
            "encoded traversal",
            request("GET", "/assets/%2e%2e/%2e%2e/etc/passwd", &[], b""),
        ),
        (
            "another asset",
            request("GET", "/assets/app.js.map", &[], b""),
        ),
    ] {
        let status = send(&addr, &req).unwrap_or(0);
        assert!((400..500).contains(&status), "{what}: {status}");
    }
    assert_eq!(s.stop(), 0);
}
