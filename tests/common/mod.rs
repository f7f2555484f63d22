//! Test context: isolated temp dirs, the real `dbkeep` binary, and a throwaway PostgreSQL server
//! that the harness starts (initdb + pg_ctl on a free port, socket in the temp dir) and stops.

#![allow(dead_code)]

pub mod mariadb;
pub mod moto;
pub mod proxy;
pub mod receiver;
pub mod s3;
pub mod s3_server;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Waits (polling every 10 ms, at most a minute) until `cond` holds; fails naming `what`.
#[track_caller]
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A missing prerequisite: skip with a visible message on a laptop, fail when `CI` is set.
pub fn require(what: &str, found: bool, package: &str) -> bool {
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing: install it (apt-get install {package})");
    }
    eprintln!("SKIPPED: {what} is missing (apt-get install {package})");
    false
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether `tool -t file` (gzip, zstd) accepts a stored file as intact.
pub fn tool_accepts(tool: &str, file: &Path) -> bool {
    Command::new(tool)
        .arg("-t")
        .arg(file)
        .status()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"))
        .success()
}

/// The table a fault test prints: fault, expected, observed.
pub struct FaultTable {
    title: &'static str,
    rows: Vec<[String; 3]>,
}

impl FaultTable {
    pub fn new(title: &'static str) -> Self {
        Self {
            title,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, fault: &str, expected: &str, observed: impl Into<String>) {
        // Without terminal colours: the table goes into notes.
        let mut plain = String::new();
        let mut escape = false;
        for c in observed.into().chars() {
            match (escape, c) {
                (false, '\x1b') => escape = true,
                (true, 'm') => escape = false,
                (true, _) => {}
                (false, c) => plain.push(c),
            }
        }
        self.rows
            .push([fault.to_owned(), expected.to_owned(), plain]);
    }

    pub fn print(&self) {
        let mut out = format!(
            "\n{}\n| fault | expected | observed |\n|---|---|---|\n",
            self.title
        );
        for [f, e, o] in &self.rows {
            out.push_str(&format!("| {f} | {e} | {o} |\n"));
        }
        eprintln!("{out}");
    }
}

/// A small tmpfs mounted on a new directory `dir` (root only: CI runs as root); unmounted when
/// dropped. `None` (skipped, with a message) when not root and `CI` is not set.
pub fn mount_tmpfs(dir: &Path, size: &str) -> Option<Tmpfs> {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root to mount a tmpfs"
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    Some(Tmpfs(dir.to_owned()))
}

pub struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Flips bits of the middle byte of `file` (`mask`), keeping its size.
/// Makes `file` look two days old (past every one-day grace).
pub fn two_days_old(file: &Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

pub fn flip_byte(file: &Path, mask: u8) {
    let mut bytes = std::fs::read(file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= mask;
    std::fs::write(file, &bytes).unwrap();
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    #[track_caller]
    pub fn code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A working directory with its own backup directory and log file, and its own environment.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl TestEnv {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            dir,
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.path().join("backups")
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn unset(&mut self, key: &str) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("backup.log")).unwrap_or_default()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbkeep"));
        cmd.args(args)
            .current_dir(self.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Out {
        self.run_with(&[], args)
    }

    /// Runs dbkeep with `vars` set on top of this environment.
    pub fn run_with(&self, vars: &[(&str, &str)], args: &[&str]) -> Out {
        let mut cmd = self.command(args);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("run dbkeep");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// `dbkeep list --json` parsed.
    pub fn list(&self) -> serde_json::Value {
        let o = self.run(&["list", "--json"]);
        o.ok();
        serde_json::from_str(&o.stdout).expect("list --json is JSON")
    }

    /// Every file in the backup directory.
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.backup_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|f| f != ".dbkeep.lock")
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// (name, success) of every entry of `list`, newest first.
    pub fn backups(&self) -> Vec<(String, bool)> {
        self.list()["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["backup_name"].as_str().unwrap().to_owned(),
                    b["success"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    pub fn manifest(&self, name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.backup_dir().join(format!("{name}.manifest.json")))
            .expect("manifest");
        serde_json::from_str(&text).expect("manifest JSON")
    }
}

/// Runs `cmd` with `input` on its stdin: its stdout trimmed, or its stderr when it fails.
pub fn feed(cmd: &mut Command, input: &[u8]) -> Result<String, String> {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn run_checked(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway PostgreSQL server. Local (socket) connections are trusted; TCP connections on
/// 127.0.0.1 need a password (scram-sha-256).
pub struct PgServer {
    dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub port: u16,
    running: bool,
    as_root: bool,
}

/// The server binaries: `PG_BINDIR`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn pg_bindir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PG_BINDIR") {
        return Some(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Gives `dir` to the postgres user when we are root (the server refuses to run as root);
/// whether we are.
fn give_to_postgres(dir: &Path) -> bool {
    let as_root = nix::unistd::geteuid().is_root();
    if as_root {
        run_checked(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir),
        );
    }
    as_root
}

pub const SUPERUSER_PASSWORD: &str = "super-Secret-7";

impl PgServer {
    /// Starts a server, or returns `None` (skip) when the binaries are missing outside CI.
    pub fn start() -> Option<Self> {
        let bin = pg_bindir();
        if !require(
            "PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)",
            bin.is_some(),
            "postgresql",
        ) {
            return None;
        }
        let bin = bin?;
        let dir = tempfile::Builder::new()
            .prefix("dbkeep-pg")
            .tempdir()
            .expect("temp dir");
        let as_root = give_to_postgres(dir.path());
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("pwfile");
        if as_root {
            run_checked(Command::new("chown").arg("postgres").arg(&pwfile));
        }
        let server = PgServer {
            dir,
            bin,
            port: 0,
            running: false,
            as_root,
        };
        let data = server.dir.path().join("data");
        let mut initdb = server.tool("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        run_checked(&mut initdb);
        Some(server.on_a_free_port())
    }

    /// The server started on a free port (five tries); panics with its log if it cannot be.
    fn on_a_free_port(mut self) -> Self {
        for _ in 0..5 {
            self.port = free_port();
            if self.launch() {
                return self;
            }
        }
        panic!(
            "could not start PostgreSQL: {}",
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// A server on a data directory made by someone else (a restored base backup in
    /// `dir/data`): given to the postgres user when we are root, started on a free port with
    /// its socket in `dir`.
    pub fn adopt(bin: PathBuf, dir: tempfile::TempDir) -> Self {
        let as_root = give_to_postgres(dir.path());
        PgServer {
            dir,
            bin,
            port: 0,
            running: false,
            as_root,
        }
        .on_a_free_port()
    }

    /// [`PgServer::adopt`] without starting it, on a free port: for a test whose server
    /// may not come up ([`PgServer::try_start`]).
    pub fn adopt_stopped(bin: PathBuf, dir: tempfile::TempDir) -> Self {
        let as_root = give_to_postgres(dir.path());
        PgServer {
            dir,
            bin,
            port: free_port(),
            running: false,
            as_root,
        }
    }

    /// `pg_ctl start`: whether the server came up.
    pub fn try_start(&mut self) -> bool {
        self.launch()
    }

    /// What the server wrote to its log.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `pg_ctl start` on the data directory and port; whether it came up.
    fn launch(&mut self) -> bool {
        let mut ctl = self.tool("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=40 -c max_prepared_transactions=4",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "-t", "60", "start"]);
        self.running = ctl.status().map(|s| s.success()).unwrap_or(false);
        self.running
    }

    /// Starts the server again after [`PgServer::stop`], on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.launch(), "PostgreSQL did not start again");
    }

    /// A command for a server tool, run as the `postgres` user when we are root (initdb
    /// refuses to run as root).
    fn tool(&self, name: &str) -> Command {
        if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(name));
            c
        } else {
            Command::new(self.bin.join(name))
        }
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client tool connecting through the socket as `user` (trusted).
    pub fn client(&self, name: &str, user: &str, db: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PGHOST", self.socket_dir())
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", user)
            .env("PGDATABASE", db);
        c
    }

    /// Runs SQL (a script, possibly many statements) as `user` on `db`; panics on error.
    pub fn sql_as(&self, user: &str, db: &str, sql: &str) -> String {
        self.try_sql_as(user, db, sql)
            .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"))
    }

    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.sql_as("postgres", db, sql)
    }

    pub fn try_sql_as(&self, user: &str, db: &str, sql: &str) -> Result<String, String> {
        let mut c = self.client("psql", user, db);
        c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
        feed(&mut c, sql.as_bytes())
    }

    /// pg_dump of `db` without the lines that differ from one dump to the next.
    pub fn normalized_dump(&self, db: &str) -> String {
        let mut c = self.client("pg_dump", "postgres", db);
        c.args(["--clean", "--if-exists", "--create"]);
        run_checked(&mut c)
            .lines()
            .filter(|l| {
                !(l.starts_with("\\restrict")
                    || l.starts_with("\\unrestrict")
                    || l.starts_with("-- Dumped from")
                    || l.starts_with("-- Dumped by"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A DATABASE_URL as the superuser `postgres`, over the socket (trusted).
    pub fn superuser_url(&self, db: &str) -> String {
        format!(
            "postgresql://postgres@/{db}?host={}&port={}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Runs a client tool as `postgres` on `db` with `args`; panics with its stderr on failure.
    pub fn run_tool(&self, tool: &str, db: &str, args: &[&std::ffi::OsStr]) {
        let out = self
            .client(tool, "postgres", db)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A DATABASE_URL over TCP with the password percent-encoded.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}",
            enc(user),
            enc(password),
            self.port,
            db
        )
    }

    /// Ends the server sessions sleeping in `pg_sleep` (a lock holder whose client was killed
    /// keeps its lock until the backend notices), and reaps the client `child`.
    pub fn release(&self, child: &mut std::process::Child) {
        let _ = child.kill();
        let _ = child.wait();
        self.sql(
            "postgres",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
        );
    }

    pub fn stop(&mut self) {
        if self.running {
            let mut ctl = self.tool("pg_ctl");
            ctl.arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = ctl.status();
            self.running = false;
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
