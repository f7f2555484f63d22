//! The dashboard end to end in headless Chromium (Debian's chromium and chromium-driver,
//! driven over WebDriver with fantoccini) against a real `dbkeep serve` with a real SQLite
//! database and a real PostgreSQL server: sign in (a wrong token first), create a backup, drill
//! it, restore after a change while watching its progress, pin, delete; at desktop and phone
//! widths, with axe-core's accessibility check of the rendered page. Screenshots go to
//! `target/dashboard/`.

use crate::api::{Server, TOKEN};
use crate::common::{PgServer, TestEnv, free_port, have, require};
use crate::sqlite::{make_db, rows};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A headless Chromium through chromedriver, with blocking calls for the test.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
}

impl Browser {
    pub fn start() -> Option<Self> {
        if !require("chromedriver", have("chromedriver"), "chromium-driver")
            || !require("chromium", have("chromium"), "chromium")
        {
            return None;
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let client = rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut b =
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
                b.capabilities(caps.clone());
                match b.connect(&format!("http://127.0.0.1:{port}")).await {
                    Ok(c) => break c,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("cannot reach chromedriver: {e}"),
                }
            }
        });
        Some(Self {
            rt,
            client: Some(client),
            driver,
        })
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    pub fn goto(&self, url: &str) {
        self.rt.block_on(self.c().goto(url)).unwrap();
    }

    /// Runs `script` (a function body: `return …`) in the page.
    fn js(&self, script: &str) -> Value {
        self.rt
            .block_on(self.c().execute(script, vec![]))
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    pub fn text(&self, css: &str) -> String {
        self.js(&format!(
            "const e = document.querySelector({css:?}); return e ? e.textContent : null;"
        ))
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    pub fn visible(&self, css: &str) -> bool {
        self.js(&format!(
            "const e = document.querySelector({css:?}); return !!e && !e.closest('[hidden]') && e.offsetParent !== null;"
        ))
        .as_bool()
        .unwrap_or(false)
    }

    /// Clicks the element `css` finds. An element the page replaced between the find and the
    /// click (a refresh re-rendering the table) is found again, a few times, rather than failing.
    pub fn click(&self, css: &str) {
        let mut tries = 0;
        loop {
            let r = self
                .rt
                .block_on(async { self.c().find(Locator::Css(css)).await?.click().await });
            match r {
                Ok(()) => return,
                Err(e) if tries < 10 && e.to_string().contains("stale element") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    pub fn type_into(&self, css: &str, text: &str) {
        self.rt
            .block_on(async {
                let e = self.c().find(Locator::Css(css)).await?;
                e.clear().await?;
                e.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    fn select(&self, css: &str, value: &str) {
        self.js(&format!(
            "const s = document.querySelector({css:?}); s.value = {value:?}; s.dispatchEvent(new Event('change')); return s.value;"
        ));
    }

    fn accept_alert(&self) {
        self.rt.block_on(self.c().accept_alert()).unwrap();
    }

    fn size(&self, w: u32, h: u32) {
        self.rt.block_on(self.c().set_window_size(w, h)).unwrap();
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.rt.block_on(self.c().screenshot()).unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    /// Waits until `cond` holds (polling), naming `what` when it does not within a minute.
    #[track_caller]
    pub fn wait(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// axe-core's violations on the page as it is (`id: help (n nodes)`).
    fn axe(&self) -> Vec<String> {
        let source = std::fs::read_to_string(axe_js()).expect("read axe.min.js");
        self.js(&format!("{source}\nreturn true;"));
        let v = self
            .rt
            .block_on(self.c().execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                   .then(r => done(r.violations.map(v => v.id + ': ' + v.help + ' (' + v.nodes.length + ' nodes: ' + v.nodes.map(n => n.target.join(' ')).join(', ') + ')')))
                   .catch(e => done(['axe failed: ' + e]));",
                vec![],
            ))
            .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(c.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// axe-core's script: `DBKEEP_AXE_JS`, else the copy `.ci/run` installs from PyPI.
fn axe_js() -> PathBuf {
    if let Some(p) = std::env::var_os("DBKEEP_AXE_JS") {
        return p.into();
    }
    let base = std::path::Path::new("/opt/dbkeep-axe/lib");
    let found = std::fs::read_dir(base).ok().and_then(|rd| {
        rd.flatten()
            .map(|e| {
                e.path()
                    .join("site-packages/axe_playwright_python/axe.min.js")
            })
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("axe-core is missing: run .ci/run (it installs axe-playwright-python into /opt/dbkeep-axe) or set DBKEEP_AXE_JS")
    })
}

#[test]
fn the_dashboard_signs_in_backs_up_drills_restores_pins_and_deletes_in_a_real_browser() {
    let Some(pg) = PgServer::start() else { return };
    let Some(b) = Browser::start() else { return };
    // A PostgreSQL database large enough that its restore shows progress for a while.
    pg.sql("postgres", "CREATE DATABASE shop");
    pg.sql(
        "shop",
        "CREATE TABLE orders AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS note FROM generate_series(1, 600000) g; ALTER TABLE orders ADD PRIMARY KEY (id);",
    );
    let mut env = TestEnv::new();
    make_db(&env.path().join("app.db"), 12);
    env.set("DATABASE_URL", "sqlite:///app.db");
    env.set(
        "DBKEEP_RATE_LIMITS",
        "create=100/hour,list=1000/minute,restore=100/hour,delete=100/hour,statistics=1000/minute,verify=100/hour,download=100/hour,pin=100/hour,operations=1000/minute",
    );
    std::fs::write(
        env.path().join("dbkeep.toml"),
        format!(
            "[databases.shop]\ndatabase_url = \"{}\"\n",
            pg.superuser_url("shop")
        ),
    )
    .unwrap();
    let s = Server::start(&env);
    b.goto(&format!("{}/", s.base));

    // The page without a token shows nothing but the sign-in form.
    assert!(b.visible("#token"));
    assert!(!b.visible("#app"));
    assert_eq!(b.axe(), Vec::<String>::new(), "axe on the sign-in page");
    // The check can fail: an image without a text alternative is found.
    b.js("const i = document.createElement('img'); i.id = 'probe'; i.src = 'data:,'; document.body.append(i); return 1;");
    let found = b.axe();
    assert!(
        found.iter().any(|v| v.starts_with("image-alt")),
        "{found:?}"
    );
    b.js("document.getElementById('probe').remove(); return 1;");
    b.type_into("#token", "not-the-token-at-all");
    b.click("#signin-form button[type=submit]");
    b.wait("the wrong token's error", |b| b.visible("#signin-error"));
    assert!(
        b.text("#signin-error").contains("refused"),
        "{}",
        b.text("#signin-error")
    );
    assert!(!b.visible("#app"));
    b.type_into("#token", TOKEN);
    b.click("#signin-form button[type=submit]");
    b.wait("the dashboard", |b| b.visible("#overview .card"));
    assert_eq!(
        b.js(
            "return sessionStorage.getItem('dbkeep-token') !== null && localStorage.length === 0;"
        ),
        json!(true),
        "the token is in session storage only"
    );

    // Create a backup of the SQLite database and see it listed.
    b.select("#create-database", "default");
    b.type_into("#create-name", "web_20261201");
    b.click("#create-form button[type=submit]");
    b.wait("the new backup in the table", |b| {
        b.visible("#backups tr[data-name='web_20261201']")
    });
    assert!(
        b.text("#message").contains("backup web_20261201 done"),
        "{}",
        b.text("#message")
    );
    // A drill passes.
    b.click(
        "#backups tr[data-name='web_20261201'] button[aria-label='Restore drill of web_20261201']",
    );
    b.wait("the drill's outcome", |b| {
        b.text("#message").contains("passed")
    });
    b.wait("the drill in the table", |b| {
        b.text("#backups tr[data-name='web_20261201']")
            .contains("passed")
    });
    // Pin it, then unpin it.
    b.click("#backups tr[data-name='web_20261201'] button[aria-label='Pin web_20261201']");
    b.wait("the pin mark", |b| {
        b.text("#backups tr[data-name='web_20261201']")
            .contains("(pinned)")
    });
    assert_eq!(env.manifest("web_20261201")["pinned"], true);
    b.click("#backups tr[data-name='web_20261201'] button[aria-label='Unpin web_20261201']");
    b.wait("no pin mark", |b| {
        !b.text("#backups tr[data-name='web_20261201']")
            .contains("(pinned)")
    });
    // A keyboard user's focus survives the table's refresh: the Download button holds it while
    // a pin (pressed by script, which moves no focus) re-renders the rows.
    b.js("document.querySelector(\"#backups button[aria-label='Download web_20261201']\").focus(); return null;");
    b.js("document.querySelector(\"#backups button[aria-label='Pin web_20261201']\").click(); return null;");
    b.wait("the pin mark again", |b| {
        b.text("#backups tr[data-name='web_20261201']")
            .contains("(pinned)")
    });
    assert_eq!(
        b.js("return document.activeElement.getAttribute('aria-label');"),
        json!("Download web_20261201"),
        "focus after the table's refresh"
    );
    b.click("#backups tr[data-name='web_20261201'] button[aria-label='Unpin web_20261201']");
    b.wait("no pin mark", |b| {
        !b.text("#backups tr[data-name='web_20261201']")
            .contains("(pinned)")
    });

    // Restore the SQLite database after a change: the rows come back.
    rusqlite::Connection::open(env.path().join("app.db"))
        .unwrap()
        .execute("DELETE FROM people WHERE id > 3", [])
        .unwrap();
    b.click("#backups tr[data-name='web_20261201'] button[aria-label='Restore web_20261201']");
    b.wait("the restore dialog", |b| {
        b.js("return document.querySelector('#restore-dialog').open;") == json!(true)
    });
    assert!(
        b.text("#restore-warning")
            .contains("replaces the live database default")
    );
    assert_eq!(
        b.js("return document.querySelector('#restore-go').disabled;"),
        json!(true)
    );
    b.type_into("#restore-confirm", "web_20261201");
    b.click("#restore-go");
    b.wait("the restore", |b| {
        b.text("#message").contains("restored web_20261201")
    });
    assert_eq!(rows(&env.path().join("app.db")).len(), 12);

    // PostgreSQL: a backup from the page, then a restore whose progress the page shows live.
    b.select("#create-database", "shop");
    b.type_into("#create-name", "shop_20261201");
    b.click("#create-form button[type=submit]");
    b.wait("the shop backup", |b| {
        b.visible("#backups tr[data-name='shop_20261201']")
    });
    let chart_count = b.js("return document.querySelectorAll('#charts svg polyline').length;");
    assert!(
        chart_count.as_u64().unwrap() >= 2,
        "size and duration charts"
    );
    pg.sql("shop", "DELETE FROM orders WHERE id > 1000");
    b.click("#backups tr[data-name='shop_20261201'] button[aria-label='Restore shop_20261201']");
    b.type_into("#restore-confirm", "shop_20261201");
    b.click("#restore-go");
    let mut seen = String::new();
    b.wait("the restore's progress or its end", |b| {
        let t = b.text("#running .op[data-kind='restore']");
        if !t.is_empty() {
            seen = t;
        }
        !seen.is_empty() || b.text("#message").contains("restored shop_20261201")
    });
    assert!(
        seen.contains("restore shop_20261201 (shop)"),
        "progress was shown: {seen:?}"
    );
    b.screenshot("restore-progress.png");
    b.wait("the shop restore", |b| {
        b.text("#message").contains("restored shop_20261201")
    });
    assert_eq!(
        pg.sql("shop", "SELECT count(*) FROM orders").trim(),
        "600000"
    );
    b.wait("nothing running", |b| {
        b.text("#running").contains("Nothing is running")
    });
    // A second backup of the series, so its charts have a line; the README's screenshot.
    b.type_into("#create-name", "shop_20261202");
    b.click("#create-form button[type=submit]");
    b.wait("the second shop backup", |b| {
        b.visible("#backups tr[data-name='shop_20261202']")
    });
    b.size(1280, 1500);
    b.screenshot("desktop.png");
    assert_eq!(
        b.axe(),
        Vec::<String>::new(),
        "axe on the dashboard with backups"
    );

    // An error shows the API's message: delete is confirmed, then the backup is gone.
    b.select("#filter-database", "default");
    b.wait("the default database's table", |b| {
        b.visible("#backups tr[data-name='web_20261201']")
    });
    b.click("#backups tr[data-name='web_20261201'] button[aria-label='Delete web_20261201']");
    b.accept_alert();
    b.wait("the deletion", |b| {
        !b.visible("#backups tr[data-name='web_20261201']")
    });
    assert!(b.text("#message").contains("deleted web_20261201"));
    assert!(!env.backups().iter().any(|(n, _)| n == "web_20261201"));
    b.type_into("#create-name", "bad name!");
    b.js("document.querySelector('#create-name').removeAttribute('pattern'); return 1;");
    b.click("#create-form button[type=submit]");
    b.wait("the API's error", |b| {
        b.text("#message").contains("backup failed")
    });
    assert!(
        b.text("#message").to_lowercase().contains("name"),
        "{}",
        b.text("#message")
    );

    // Phone width: nothing wider than the screen but the table's own scroller.
    b.size(390, 844);
    b.select("#filter-database", "shop");
    b.wait("the shop table", |b| {
        b.visible("#backups tr[data-name='shop_20261201']")
    });
    let overflow = b.js("return document.documentElement.scrollWidth - window.innerWidth;");
    assert!(
        overflow.as_i64().unwrap() <= 1,
        "no horizontal scroll of the page: {overflow}"
    );
    b.screenshot("phone.png");
    assert_eq!(b.axe(), Vec::<String>::new(), "axe at phone width");
    // Sign out: the token is gone.
    b.click("#signout");
    assert_eq!(
        b.js("return sessionStorage.getItem('dbkeep-token');"),
        Value::Null
    );
    assert!(b.visible("#token"));
    drop(b);
    assert_eq!(s.stop(), 0);
}
