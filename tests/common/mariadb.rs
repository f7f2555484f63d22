//! A throwaway MariaDB server the harness starts itself: `mariadb-install-db` into a temp dir,
//! `mariadbd` on a free port and a socket in that dir, stopped (or killed) when dropped.
//! `root` has a password over the socket; the application user `app` connects over TCP with a
//! password full of characters URLs and option files must escape.

use super::{free_port, require, run_checked};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const ROOT_PASSWORD: &str = "root-Secret-9";
/// Percent-encoded in URLs; quoted in option files.
pub const APP_PASSWORD: &str = "a\"p p#;\\w'd@:/%x";

pub struct MariaServer {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn server_binary() -> Option<PathBuf> {
    ["/usr/sbin/mariadbd", "/usr/bin/mariadbd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl MariaServer {
    /// Starts a server, or `None` (skip) when MariaDB is missing outside CI.
    pub fn start() -> Option<Self> {
        let found = server_binary().is_some()
            && super::have("mariadb-install-db")
            && super::have("mariadb-dump");
        if !require(
            "the MariaDB server and client (mariadbd, mariadb-install-db, mariadb-dump)",
            found,
            "mariadb-server mariadb-client",
        ) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("dbkeep-maria")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmpdir");
        run_checked(
            Command::new("mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--user=root",
                ])
                .arg(format!("--datadir={}", data.display()))
                // A server starting cleans temporary files out of its tmpdir: each its own.
                .arg(format!("--tmpdir={}", tmp.display())),
        );
        let mut server = MariaServer {
            dir,
            port: 0,
            child: None,
        };
        for _ in 0..5 {
            server.port = free_port();
            if server.launch() {
                server.root_sql(&format!(
                    "ALTER USER root@localhost IDENTIFIED BY '{ROOT_PASSWORD}';"
                ));
                let app = APP_PASSWORD.replace('\\', "\\\\").replace('\'', "\\'");
                server.sql(
                    "mysql",
                    &format!(
                        "CREATE USER app@'%' IDENTIFIED BY '{app}'; GRANT ALL ON *.* TO app@'%' WITH GRANT OPTION;"
                    ),
                );
                return Some(server);
            }
        }
        panic!(
            "could not start MariaDB: {}",
            std::fs::read_to_string(server.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    fn tmpdir(&self) -> PathBuf {
        let d = self.dir.path().join("tmp");
        let _ = std::fs::create_dir_all(&d);
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    /// Starts `mariadbd`; whether it answers within a minute.
    fn launch(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log");
        let child = Command::new(server_binary().expect("mariadbd"))
            .arg("--no-defaults")
            .arg(format!(
                "--datadir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--port={}", self.port))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("pid").display()
            ))
            // Its own temporary directory: a server starting cleans temporary files out of
            // its tmpdir, and other tests start servers.
            .arg(format!("--tmpdir={}", self.tmpdir().display()))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=128M",
                "--innodb-log-file-size=64M",
                "--innodb-flush-log-at-trx-commit=2",
                "--event-scheduler=ON",
                "--max-allowed-packet=64M",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mariadbd");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return false;
            }
            let ping = Command::new("mariadb-admin")
                .args(["--no-defaults", "--connect-timeout=2", "-uroot"])
                .arg(format!("-S{}", self.socket().display()))
                .arg(format!("-p{ROOT_PASSWORD}"))
                .arg("ping")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let ping_nopw = Command::new("mariadb-admin")
                .args(["--no-defaults", "--connect-timeout=2", "-uroot"])
                .arg(format!("-S{}", self.socket().display()))
                .arg("ping")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            // Up on the socket, and listening on its own TCP port (not another's).
            let tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if tcp && (ping.is_ok_and(|s| s.success()) || ping_nopw.is_ok_and(|s| s.success())) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }

    /// Stops the server cleanly.
    pub fn stop(&mut self) {
        let _ = Command::new("mariadb-admin")
            .args(["--no-defaults", "-uroot"])
            .arg(format!("-S{}", self.socket().display()))
            .arg(format!("-p{ROOT_PASSWORD}"))
            .arg("shutdown")
            .status();
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): it holds its connections and answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    pub fn start_again(&mut self) {
        assert!(self.launch(), "MariaDB did not start again");
    }

    fn root_sql(&self, sql: &str) {
        let mut c = Command::new("mariadb");
        c.args(["--no-defaults", "-uroot"])
            .arg(format!("-S{}", self.socket().display()))
            .args(["-e", sql]);
        run_checked(&mut c);
    }

    /// The client as root over the socket, on `db`.
    pub fn client(&self, tool: &str, db: &str) -> Command {
        let mut c = Command::new(tool);
        c.args(["--no-defaults", "-uroot", "--default-character-set=utf8mb4"])
            .arg(format!("-S{}", self.socket().display()))
            .arg(format!("-p{ROOT_PASSWORD}"));
        if !db.is_empty() {
            c.arg(db);
        }
        c
    }

    /// Runs SQL as root on `db`; its tab-separated output, or the client's error.
    pub fn try_sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut c = self.client("mariadb", db);
        c.args(["--batch", "--skip-column-names", "--raw"]);
        super::feed(&mut c, sql.as_bytes())
    }

    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.try_sql(db, sql)
            .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"))
    }

    /// `mariadb < dump` into `db` (a plain restore, for comparison).
    pub fn load(&self, db: &str, dump: &[u8]) {
        if let Err(e) = super::feed(&mut self.client("mariadb", db), dump) {
            panic!("mariadb < dump failed: {e}");
        }
    }

    /// A dump of `db` (structure, rows, views, triggers, routines, events) without what
    /// differs between two dumps of equal databases (the header's database name).
    pub fn normalized_dump(&self, db: &str) -> String {
        let mut c = self.client("mariadb-dump", "");
        c.args([
            "--single-transaction",
            "--routines",
            "--events",
            "--triggers",
            "--skip-dump-date",
            "--hex-blob",
            "--skip-comments",
            db,
        ]);
        // AUTO_INCREMENT is the table's counter, which a server restart recomputes from the
        // rows (a bulk insert leaves it ahead of them): not data.
        let counter = |l: &str| match l.find(" AUTO_INCREMENT=") {
            Some(i) => {
                let rest = &l[i + " AUTO_INCREMENT=".len()..];
                let end = rest.find(' ').unwrap_or(rest.len());
                format!("{}{}", &l[..i], &rest[end..])
            }
            None => l.to_owned(),
        };
        run_checked(&mut c)
            .lines()
            .filter(|l| !l.contains("ALTER DATABASE"))
            .map(counter)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The databases on the server other than the system ones, sorted.
    pub fn databases(&self) -> Vec<String> {
        self.sql(
            "mysql",
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT IN ('mysql','information_schema','performance_schema','sys') ORDER BY 1",
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// DATABASE_URL for `app` over TCP, its password percent-encoded.
    pub fn url(&self, db: &str) -> String {
        let pw: String =
            percent_encoding::utf8_percent_encode(APP_PASSWORD, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        format!("mysql+pymysql://app:{pw}@127.0.0.1:{}/{db}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- the end of the MariaDB server's log ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
