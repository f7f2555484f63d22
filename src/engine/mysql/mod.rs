//! MySQL and MariaDB: `mariadb-dump` (MariaDB) or `mysqldump` (MySQL), chosen from the
//! server's version, for dumps, and `mariadb`/`mysql` for dbkeep's own queries, as child
//! processes; a dump's statements are loaded over a [`connection`] of the MariaDB client
//! library that runs one statement per request.
//!
//! - The password reaches a child only in a 0600 option file in a private directory, passed
//!   first with `--defaults-extra-file`; the child's `HOME` is that directory, so no
//!   `~/.my.cnf` overrides it, and no `MYSQL_*` variable of dbkeep's reaches it.
//! - A dump counts only if the tool exited 0, its output ends with `-- Dump completed`, and
//!   its statements scan cleanly; its row counts are counted from the stream itself
//!   ([`scan`]), and its table list must equal the database's before and after.
//! - Loads (restores and drills) go through [`classify`]'s allowlist: tables and rows first,
//!   then views, triggers, routines and events; each statement the allowlist passed is sent
//!   alone, on a connection without multi-statements, so the server runs exactly it.

mod allowlist;
mod classify;
pub mod connection;
mod dump;
mod engine;
mod load;
mod restore;
mod runner;
mod scan;
mod session;
mod swap;
mod tokens;

pub use dump::{count_rows, has_trailer};

use super::process::{self, ProcessError};
use super::watch::{self, Stall, WatchError};
use crate::database_url::MyConnection;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use thiserror::Error;

/// What mysqldump and mariadb-dump write at the end of a complete dump (with
/// `--skip-dump-date`, nothing follows it on the line).
pub const TRAILER: &[u8] = b"-- Dump completed";

const HINT: &str =
    "install the MariaDB or MySQL client tools (Debian: apt-get install mariadb-client)";

#[derive(Debug, Error)]
pub enum MysqlError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("cannot read the server's version from {0:?}")]
    Version(String),
    #[error(
        "the dump is incomplete: {tool} exited 0 but its output does not end with \"-- Dump completed\""
    )]
    Incomplete { tool: &'static str },
    #[error("the dump cannot be read: {0}")]
    Unreadable(String),
    #[error(
        "tables changed while the dump ran (DDL is not isolated by --single-transaction): {0}; run the backup again when no schema change is under way"
    )]
    TablesChanged(String),
    #[error("the backup cannot be loaded: {0}")]
    Refused(String),
    #[error(
        "the dump being restored does not end with \"-- Dump completed\": the backup is incomplete, so what was loaded is discarded"
    )]
    TruncatedInput,
    #[error("writing the dump: {0}")]
    Output(io::Error),
    #[error("reading the backup: {0}")]
    Input(io::Error),
    #[error("cannot write the client's option file: {0}")]
    OptionFile(io::Error),
    #[error("interrupted by a signal")]
    Interrupted,
    #[error("{tool} made no progress for {secs} s and was stopped (BACKUP_STALL_TIMEOUT)")]
    Stalled { tool: String, secs: u64 },
    #[error(transparent)]
    Connection(#[from] connection::ConnectionError),
    #[error("restore drill: {0}")]
    Drill(String),
    #[error(
        "the restore failed and the original database could NOT be put back: {restore}; then: {rollback}. Its tables are in {aside:?} and its views, triggers, routines and events in that database's table dbkeep_journal: move them back by hand (RENAME TABLE `{aside}`.t TO `{target}`.t)"
    )]
    RollbackFailed {
        restore: Box<MysqlError>,
        rollback: Box<MysqlError>,
        aside: String,
        target: String,
    },
}

impl From<WatchError> for MysqlError {
    fn from(e: WatchError) -> Self {
        match e {
            WatchError::Process(e) => MysqlError::Process(e),
            WatchError::Interrupted => MysqlError::Interrupted,
            WatchError::Stalled { program, secs } => MysqlError::Stalled {
                tool: program,
                secs,
            },
            WatchError::Input(e) => MysqlError::Input(e),
            WatchError::Output(e) => MysqlError::Output(e),
        }
    }
}

/// Which server: it decides the dump tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Mariadb,
    Mysql,
}

impl Flavor {
    pub fn dump_tool(self) -> &'static str {
        match self {
            Flavor::Mariadb => "mariadb-dump",
            Flavor::Mysql => "mysqldump",
        }
    }
    /// The MariaDB client's `--sandbox` (no `\\!`, `source`, `tee` …); MySQL's has none, and
    /// the allowlist refuses client commands for both.
    pub fn sandbox(self) -> &'static [&'static str] {
        match self {
            Flavor::Mariadb => &["--sandbox"],
            Flavor::Mysql => &[],
        }
    }
    pub fn client(self) -> &'static str {
        match self {
            Flavor::Mariadb => "mariadb",
            Flavor::Mysql => "mysql",
        }
    }
}

/// The flavour a `SELECT VERSION()` answer names: `10.11.19-MariaDB-0+deb12u1` → MariaDB.
pub fn flavor_of(version: &str) -> Flavor {
    if version.to_ascii_lowercase().contains("mariadb") {
        Flavor::Mariadb
    } else {
        Flavor::Mysql
    }
}

pub struct Mysql {
    conn: MyConnection,
    keep_old: bool,
    stall_timeout: Duration,
    row_counts: bool,
    /// The server's `VERSION()`, once asked: which versioned comments a load may hold.
    server: std::sync::OnceLock<String>,
    /// The clients' option file, written once and removed with this value.
    options: std::sync::OnceLock<OptionFile>,
}

/// A private directory holding the client's option file; removed when dropped.
pub(crate) struct OptionFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

/// An option-file value, quoted: `\` and `"` escaped.
fn option_value(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Removes the option-file directories of dbkeep processes of this machine that are gone (a
/// SIGKILL leaves one behind, password and all).
fn sweep_option_files() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("dbkeep-my-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && process::process_gone(pid)
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl OptionFile {
    fn write(conn: &MyConnection) -> Result<Self, MysqlError> {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_option_files);
        let dir = tempfile::Builder::new()
            .prefix(&format!("dbkeep-my-{}-", std::process::id()))
            .tempdir()
            .map_err(MysqlError::OptionFile)?;
        let path = dir.path().join("client.cnf");
        let mut text = String::from("[client]\n");
        let mut line = |k: &str, v: &str| text.push_str(&format!("{k}={}\n", option_value(v)));
        if let Some(u) = &conn.user {
            line("user", u);
        }
        if let Some(p) = &conn.password {
            line("password", p.expose());
        }
        match (&conn.socket, &conn.host) {
            (Some(s), _) => {
                line("socket", s);
                line("protocol", "socket");
            }
            (None, Some(h)) => {
                line("host", h);
                line("protocol", "tcp");
            }
            (None, None) => {}
        }
        if let Some(p) = conn.port {
            line("port", &p.to_string());
        }
        for (k, v) in conn
            .options
            .iter()
            .filter(|(k, _)| **k != "connect-timeout")
        {
            line(k, v);
        }
        line("default-character-set", "utf8mb4");
        line("max-allowed-packet", "1G");
        // Only the client has a connect timeout (mariadb-dump refuses the option): never wait
        // forever for a server that does not answer (as PGCONNECT_TIMEOUT=30).
        text.push_str("[mysql]\n");
        text.push_str(&format!(
            "connect-timeout={}\n",
            conn.connect_timeout().as_secs()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(MysqlError::OptionFile)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(MysqlError::OptionFile)?;
        Ok(Self { dir, path })
    }
}

/// A quoted identifier.
pub fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// A quoted string literal (backslashes escaped too, whatever the sql_mode).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

impl Mysql {
    pub fn new(
        conn: MyConnection,
        keep_old: bool,
        stall_timeout: Duration,
        row_counts: bool,
    ) -> Self {
        Self {
            conn,
            keep_old,
            stall_timeout,
            row_counts,
            server: std::sync::OnceLock::new(),
            options: std::sync::OnceLock::new(),
        }
    }

    pub fn database(&self) -> &str {
        &self.conn.database
    }

    fn secrets(&self) -> Vec<String> {
        self.conn
            .password
            .iter()
            .map(|p| p.expose().to_owned())
            .collect()
    }

    /// A command for `tool` with the option file first (written on the first call, kept
    /// until this value goes).
    fn command(&self, tool: &str) -> Result<Command, MysqlError> {
        let opts = match self.options.get() {
            Some(o) => o,
            None => {
                let written = OptionFile::write(&self.conn)?;
                self.options.get_or_init(|| written)
            }
        };
        let mut cmd = process::clean_command(Path::new(tool));
        cmd.arg(format!("--defaults-extra-file={}", opts.path.display()));
        cmd.env("HOME", opts.dir.path());
        Ok(cmd)
    }

    /// Runs `sql` (statements separated by `;`) on `database` with the client; returns its
    /// tab-separated output, without column names.
    fn query(&self, flavor: Flavor, database: &str, sql: &str) -> Result<String, MysqlError> {
        self.query_within(
            flavor,
            database,
            sql,
            Duration::from_secs(600).max(self.stall_timeout),
        )
    }

    /// [`Mysql::query`], stopped after `limit` without an answer.
    fn query_within(
        &self,
        flavor: Flavor,
        database: &str,
        sql: &str,
        limit: Duration,
    ) -> Result<String, MysqlError> {
        let mut cmd = self.command(flavor.client())?;
        cmd.args(["--batch", "--skip-column-names", "--raw"])
            .args(flavor.sandbox())
            .arg(format!("--database={database}"))
            .arg("-e")
            .arg(sql);
        Ok(watch::output(
            cmd,
            HINT,
            self.secrets(),
            Some(Stall::silence(limit)),
        )?)
    }

    /// The server's `VERSION()` and flavour (also proves we can connect). Asked with the
    /// `mariadb` client, else `mysql` when only that one is installed.
    pub fn server_version(&self) -> Result<(String, Flavor), MysqlError> {
        let sql = "SELECT VERSION()";
        let out = match self.query(Flavor::Mariadb, &self.conn.database, sql) {
            Err(MysqlError::Process(ProcessError::NotFound { .. })) => {
                self.query(Flavor::Mysql, &self.conn.database, sql)?
            }
            r => r?,
        };
        let version = out.trim().to_owned();
        if version.is_empty() || !version.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(MysqlError::Version(version));
        }
        let _ = self.server.set(version.clone());
        Ok((version.clone(), flavor_of(&version)))
    }

    /// Which versioned comments the server runs (as asked by [`Mysql::server_version`]).
    fn versions(&self) -> scan::Versions {
        scan::Versions::of(self.server.get().map_or("", String::as_str))
    }

    /// `mariadb-dump --version` → `mariadb-dump 10.19 Distrib 10.11.19-MariaDB`.
    fn tool_version(&self, tool: &str) -> Result<String, MysqlError> {
        let mut cmd = process::clean_command(Path::new(tool));
        cmd.arg("--version");
        let out = process::output(cmd, HINT, vec![])?;
        Ok(out
            .trim()
            .split_once(' ')
            .map_or(out.trim(), |(_, v)| v.trim())
            .trim_start_matches("Ver ")
            .to_owned())
    }

    /// The base tables of `database`, sorted.
    fn base_tables(&self, flavor: Flavor, database: &str) -> Result<Vec<String>, MysqlError> {
        let out = self.query(
            flavor,
            database,
            &format!(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY TABLE_NAME",
                literal(database)
            ),
        )?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Whether one of dbkeep's sessions on `database` is running a statement (asked when a
    /// child moved no byte for the stall limit: an index build). `database` is dbkeep's own
    /// (a staging or scratch database nobody else knows) or, for a dump, the live one, where
    /// only the dump tool's own `SELECT /*!40001 SQL_NO_CACHE */` counts, not the
    /// application's queries.
    fn server_busy(&self, flavor: Flavor, database: &str, dump: bool) -> bool {
        let only_dump = if dump {
            " AND INFO LIKE 'SELECT /*!40001 SQL_NO_CACHE */%'"
        } else {
            ""
        };
        let sql = format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = {} AND COMMAND = 'Query' AND ID <> CONNECTION_ID() AND STATE NOT LIKE 'Waiting for%'{only_dump}",
            literal(database)
        );
        // Asked of a server that may not answer: never longer than a stall itself.
        let limit = self
            .stall_timeout
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        match self.query_within(flavor, "information_schema", &sql, limit) {
            Ok(out) => out.trim().parse::<u64>().is_ok_and(|n| n > 0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the server whether dbkeep's sessions still work");
                false
            }
        }
    }

    fn stall<'a>(&'a self, flavor: Flavor, database: &'a str) -> Stall<'a> {
        Stall {
            limit: self.stall_timeout,
            working: Box::new(move || self.server_busy(flavor, database, false)),
        }
    }

    fn drop_database(&self, flavor: Flavor, name: &str) -> Result<(), MysqlError> {
        self.query(
            flavor,
            "information_schema",
            &format!("DROP DATABASE IF EXISTS {}", ident(name)),
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavours_and_quoting() {
        assert_eq!(flavor_of("10.11.19-MariaDB-0+deb12u1"), Flavor::Mariadb);
        assert_eq!(flavor_of("8.0.36"), Flavor::Mysql);
        assert_eq!(ident("we`ird"), "`we``ird`");
        assert_eq!(literal("o'k\\"), "'o''k\\\\'");
        assert_eq!(option_value("p\"a\\ss#;x"), "\"p\\\"a\\\\ss#;x\"");
    }
}
