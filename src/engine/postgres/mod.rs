//! PostgreSQL through its own tools, as child processes: `pg_dump` (plain SQL with `--clean
//! --if-exists --create`, or the custom archive format), `psql` (plain restores, metadata) and
//! `pg_restore` (custom-format restores with parallel jobs, archive checks).
//!
//! - The password reaches a child only through that child's environment (`PGPASSWORD`); every
//!   other `PG*` variable of dbkeep's environment is removed from the child's, so `DATABASE_URL`
//!   alone decides where it connects. dbkeep's own environment is never changed.
//! - A dump counts only if pg_dump exited 0 and its output ends with the completion trailer
//!   (plain) or starts with the archive header (custom).
//! - A restore moves the live database aside first and puts it back if anything fails.

mod copy_count;
mod drill;
mod dump;
mod engine;
mod load;
pub mod physical;
mod restore;
mod sandbox;
mod toc;

use super::process::{self, ProcessError};
use super::retarget::Retarget;
use super::watch::{self, Stall, WatchError, feed_child};
use crate::database_url::PgConnection;
pub use crate::engine::seam::Source;
pub use dump::{COUNT_ROWS_SQL, parse_row_counts};
pub use restore::RestoreReport;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use thiserror::Error;

/// What pg_dump writes at the end of a complete plain dump.
pub const TRAILER: &[u8] = b"-- PostgreSQL database dump complete";

/// How far from the end the trailer may stand (newer pg_dump prints `\unrestrict KEY` after it).
pub const TRAILER_WINDOW: usize = 4096;

const HINT: &str = "install the PostgreSQL client tools of the server's major version or newer (Debian: apt-get install postgresql-client)";

const CHUNK: usize = 256 * 1024;

/// The first bytes of a custom-format archive.
const ARCHIVE_MAGIC: &[u8] = b"PGDMP";

#[derive(Debug, Error)]
pub enum PostgresError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(
        "{tool} {version} is older than the server ({server}): a backup needs {tool} of the server's major version or newer; install it and point BACKUP_PG_BINDIR at its bin directory"
    )]
    ToolTooOld {
        tool: &'static str,
        version: String,
        server: String,
    },
    #[error("the server cannot give a base backup: {0}; `dbkeep wal check` shows every check")]
    NotReady(String),
    #[error("the base backup failed: {0}")]
    BaseBackup(String),
    #[error("cannot read the version of {tool} from {output:?}")]
    Version { tool: &'static str, output: String },
    #[error(
        "the dump is incomplete: pg_dump exited 0 but its output does not end with \"PostgreSQL database dump complete\""
    )]
    Incomplete,
    #[error(
        "the dump is not a custom-format archive: pg_dump exited 0 but its output does not start with \"PGDMP\""
    )]
    NotArchive,
    #[error(
        "the dump being restored does not end with pg_dump's completion trailer: the backup is incomplete, so what was loaded is discarded"
    )]
    TruncatedInput,
    #[error("writing the dump: {0}")]
    Output(io::Error),
    #[error("reading the backup: {0}")]
    Input(io::Error),
    #[error("interrupted by a signal")]
    Interrupted,
    #[error(
        "the dump has no CREATE DATABASE statement: a plain dump to restore must be made with pg_dump --create (dbkeep's are)"
    )]
    NoCreateDatabase,
    #[error("the dump holds more than 16 MiB of statements on the database as a whole")]
    TooManyDatabaseStatements,
    #[error("cannot {what} for the dump: {problem}")]
    Snapshot { what: &'static str, problem: String },
    #[error("cannot read {what} from the server's answer {output:?}")]
    Unexpected { what: &'static str, output: String },
    #[error("restore drill: {0}")]
    Drill(String),
    #[error("{tool} made no progress for {secs} s and was stopped (BACKUP_STALL_TIMEOUT)")]
    Stalled { tool: String, secs: u64 },
    #[error(
        "the backup holds the database {backup:?} but DATABASE_URL names {configured:?}: a plain dump made with --create restores into its own database; point DATABASE_URL at {backup:?}"
    )]
    DatabaseMismatch { backup: String, configured: String },
    #[error(
        "the restore failed and the original database could NOT be put back: {restore}; then: {rollback}. The original is kept as {aside:?}: rename it with ALTER DATABASE \"{aside}\" RENAME TO \"{target}\""
    )]
    RollbackFailed {
        restore: Box<PostgresError>,
        rollback: Box<PostgresError>,
        aside: String,
        target: String,
    },
}

impl From<WatchError> for PostgresError {
    fn from(e: WatchError) -> Self {
        match e {
            WatchError::Process(e) => PostgresError::Process(e),
            WatchError::Interrupted => PostgresError::Interrupted,
            WatchError::Stalled { program, secs } => PostgresError::Stalled {
                tool: program,
                secs,
            },
            WatchError::Input(e) => PostgresError::Input(e),
            WatchError::Output(e) => PostgresError::Output(e),
        }
    }
}

pub struct Postgres {
    conn: PgConnection,
    bindir: Option<PathBuf>,
    maintenance_db: String,
    keep_old: bool,
    stall_timeout: Duration,
    restore_jobs: u32,
    row_counts: bool,
    drill_sandbox: bool,
}

/// Checks a custom archive completely without a database: streams it through
/// `pg_restore --file=/dev/null`, which reads every entry and data block.
pub fn check_archive(bindir: Option<&Path>, input: &mut dyn Read) -> Result<(), PostgresError> {
    let mut cmd = process::clean_command(&process::program_path(bindir, "pg_restore"));
    cmd.args(["--file=/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let child = process::spawn(cmd, HINT, vec![])?;
    Ok(feed_child(child, input, None)?)
}

/// Reads a staged custom archive's table of contents (`pg_restore --list`): proves this
/// pg_restore reads the archive before anything is changed.
pub fn list_archive(bindir: Option<&Path>, path: &Path) -> Result<(), PostgresError> {
    let mut cmd = process::clean_command(&process::program_path(bindir, "pg_restore"));
    cmd.arg("--list").arg(path);
    process::output(cmd, HINT, vec![])?;
    Ok(())
}

/// Whether a PostgreSQL client of `version` (`15.18`) has `\\restrict`: the August 2025 minor
/// releases (CVE-2025-8714, CVE-2025-8715) and later.
pub fn has_restrict(version: &str) -> bool {
    // `18beta1`, `19devel`: the major's digits; the minor is what follows the first dot.
    let minor = version.split_once('.').map_or(0, |(_, rest)| major(rest));
    match major(version) {
        13 => minor >= 22,
        14 => minor >= 19,
        15 => minor >= 14,
        16 => minor >= 10,
        17 => minor >= 6,
        m => m >= 18,
    }
}

/// The `ERROR:` line of a failed psql, else the error's first line.
fn error_line(e: &PostgresError) -> String {
    let text = e.to_string();
    text.lines()
        .find(|l| sqlstate_of(l).is_some())
        .or_else(|| text.lines().find(|l| l.contains("ERROR:")))
        .or_else(|| text.lines().next())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// SQLSTATE `object_in_use`: a database others are connected to (their sessions were ended
/// and take a moment to go).
pub(super) const OBJECT_IN_USE: &str = "55006";

/// The SQLSTATE of a psql error line printed with `VERBOSITY=verbose`
/// (`SEVERITY:  XXXXX: message`, the severity word in the server's language).
fn sqlstate_of(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(":  ")?;
    let code = rest.get(..5)?;
    (rest.get(5..7) == Some(": ")
        && code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()))
    .then_some(code)
}

/// Whether a failed psql reported the SQLSTATE `code`, whatever the server's lc_messages.
pub(super) fn sqlstate_is(e: &PostgresError, code: &str) -> bool {
    e.to_string().lines().any(|l| sqlstate_of(l) == Some(code))
}

/// The major version of a version text: `15.18` → 15, `9.6.24` → 9.
pub fn major(version: &str) -> u32 {
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// Whether a dump's last bytes hold pg_dump's completion trailer.
pub fn has_trailer(tail: &[u8]) -> bool {
    tail.windows(TRAILER.len()).any(|w| w == TRAILER)
}

/// A quoted SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A quoted SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Postgres {
    pub fn new(
        conn: PgConnection,
        bindir: Option<PathBuf>,
        maintenance_db: String,
        keep_old: bool,
        stall_timeout: Duration,
        restore_jobs: u32,
        row_counts: bool,
    ) -> Self {
        Self {
            conn,
            bindir,
            maintenance_db,
            keep_old,
            stall_timeout,
            restore_jobs: restore_jobs.max(1),
            row_counts,
            drill_sandbox: true,
        }
    }

    /// Whether a drill loads as a role of its own that is not a superuser (the default; off:
    /// as DATABASE_URL's role, for dumps with objects only a superuser may create).
    pub fn with_drill_sandbox(mut self, on: bool) -> Self {
        self.drill_sandbox = on;
        self
    }

    /// The database DATABASE_URL names.
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

    /// The conninfo string that names `database` (and the host, port and user DATABASE_URL
    /// gives) explicitly, for `-d`: what the command line names wins over a service file's
    /// values (`service=`), which win over the environment, so no service file can turn a
    /// drill or a staging load toward another database. Never a password.
    pub(super) fn conninfo(&self, database: &str) -> String {
        self.conninfo_for(database, self.conn.user.as_deref())
    }

    /// [`Postgres::conninfo`] with `user` for DATABASE_URL's role.
    pub(super) fn conninfo_for(&self, database: &str, user: Option<&str>) -> String {
        fn value(v: &str) -> String {
            format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
        }
        let c = &self.conn;
        let mut out = format!("dbname={}", value(database));
        if let Some(h) = &c.host {
            out.push_str(&format!(" host={}", value(h)));
        }
        if let Some(p) = c.port {
            out.push_str(&format!(" port={p}"));
        }
        if let Some(u) = user {
            out.push_str(&format!(" user={}", value(u)));
        }
        out
    }

    /// A command for `tool` connecting to `database`: a clean environment (no `PG*` variable, no
    /// DATABASE_URL or API token of ours) plus the connection settings from DATABASE_URL; the
    /// caller passes [`Postgres::conninfo`] as the tool's `-d` (pg_restore writing a script
    /// takes none).
    fn command(&self, tool: &str, database: &str) -> Command {
        let mut cmd = process::clean_command(&process::program_path(self.bindir.as_deref(), tool));
        let c = &self.conn;
        if let Some(h) = &c.host {
            cmd.env("PGHOST", h);
        }
        if let Some(p) = c.port {
            cmd.env("PGPORT", p.to_string());
        }
        if let Some(u) = &c.user {
            cmd.env("PGUSER", u);
        }
        if let Some(p) = &c.password {
            cmd.env("PGPASSWORD", p.expose());
        }
        cmd.env("PGDATABASE", database);
        // Never wait forever for a server that does not answer.
        cmd.env("PGCONNECT_TIMEOUT", "30");
        for (k, v) in &c.env {
            cmd.env(k, v);
        }
        // The server's or role's timeouts (`ALTER ROLE app SET statement_timeout = '30s'`, common
        // in production) must not end dbkeep's sessions: the snapshot session counts rows and
        // then idles in its transaction while pg_dump runs. pg_dump sets these on its own
        // connection; every other session of dbkeep's gets them here.
        // And standard_conforming_strings starts on, whatever the role or database says, so
        // that psql splits a plain dump's statements as Retarget's lexer does; and search_path
        // is pg_catalog's, so that no `ALTER DATABASE … SET search_path` of a database's owner
        // (a drill's load role, say) puts its functions under dbkeep's unqualified calls
        // (pg_dump and pg_restore set their own, as plain dumps do).
        let ours = "-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0 -c standard_conforming_strings=on -c search_path=pg_catalog,pg_temp";
        let options = match c.env.get("PGOPTIONS") {
            Some(theirs) => format!("{theirs} {ours}"),
            None => ours.to_owned(),
        };
        cmd.env("PGOPTIONS", options);
        cmd
    }

    /// Wraps a plain dump's stream in dbkeep's own `\\restrict` with a fresh random key when
    /// this psql has the command (the August 2025 minor releases and later: 13.22, 14.19, 15.14,
    /// 16.10, 17.6, 18): psql then runs no meta-command of the dump's whatever it holds, a second
    /// wall behind [`Retarget`]'s allowlist. An older psql gets the allowlist alone, and a warning.
    pub(super) fn restrict<R: io::BufRead>(&self, r: Retarget<R>) -> Retarget<R> {
        let version = self.tool_version("psql").unwrap_or_default();
        let has_restrict = has_restrict(&version);
        let mut key = [0u8; 24];
        match (has_restrict, getrandom::fill(&mut key)) {
            (true, Ok(())) => {
                let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
                r.restricted(key)
            }
            (true, Err(e)) => {
                tracing::warn!(error = %e, "no random key for psql's \\restrict: the dump's meta-commands are refused by dbkeep's allowlist only");
                r
            }
            (false, _) => {
                tracing::warn!(psql = %version, "this psql predates \\restrict (the August 2025 minor releases, CVE-2025-8714): install a newer PostgreSQL client; the dump's meta-commands are refused by dbkeep's allowlist only");
                r
            }
        }
    }

    /// `pg_dump --version` → `15.18`.
    pub fn tool_version(&self, tool: &'static str) -> Result<String, PostgresError> {
        let mut cmd = process::clean_command(&process::program_path(self.bindir.as_deref(), tool));
        cmd.arg("--version");
        let out = process::output(cmd, HINT, vec![])?;
        out.split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .map(str::to_owned)
            .ok_or(PostgresError::Version {
                tool,
                output: out.trim().to_owned(),
            })
    }

    /// Runs SQL statements one by one (each its own transaction) on `database`; returns stdout.
    fn psql(&self, database: &str, statements: &[String]) -> Result<String, PostgresError> {
        let cmd = self.psql_command(database, statements);
        Ok(process::output(cmd, HINT, self.secrets())?)
    }

    /// [`Postgres::psql`] for long work (a drill's counts, amcheck) under the stall watch: its
    /// sessions are marked `app_name`, by which the server is asked whether they still work.
    fn psql_watched(
        &self,
        database: &str,
        statements: &[String],
        app_name: &str,
    ) -> Result<String, PostgresError> {
        let mut cmd = self.psql_command(database, statements);
        cmd.env("PGAPPNAME", app_name);
        let stall = self.stall(app_name);
        Ok(watch::output(cmd, HINT, self.secrets(), Some(stall))?)
    }

    /// The stall watch of a child whose sessions are marked `app_name`.
    fn stall<'a>(&'a self, app_name: &'a str) -> Stall<'a> {
        Stall {
            limit: self.stall_timeout,
            working: Box::new(move || self.server_busy(app_name)),
        }
    }

    /// Whether a session marked `app_name` is running a statement on the server that is not
    /// waiting for a lock or for its client. Asked only after a child moved no byte for the
    /// stall limit; a server that does not answer within a minute is not working.
    fn server_busy(&self, app_name: &str) -> bool {
        // The server keeps the first 63 bytes of a session's application_name.
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND coalesce(wait_event_type, '') NOT IN ('Lock', 'Client') \
             AND application_name <> '' AND starts_with({name}, application_name) \
             AND octet_length(application_name) >= least(octet_length({name}), 60)",
            name = literal(app_name)
        );
        let cmd = self.psql_command(&self.maintenance_db, &[sql]);
        let answer = watch::output(
            cmd,
            HINT,
            self.secrets(),
            Some(Stall::silence(Duration::from_secs(60))),
        );
        match answer {
            Ok(out) => out.trim().parse::<u64>().is_ok_and(|n| n > 0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the server whether dbkeep's sessions still work");
                false
            }
        }
    }

    fn psql_command(&self, database: &str, statements: &[String]) -> Command {
        self.psql_command_as(database, None, statements)
    }

    /// [`Postgres::psql_command`] connecting as `role` (a drill's load role) when given.
    fn psql_command_as(
        &self,
        database: &str,
        role: Option<&sandbox::LoadRole>,
        statements: &[String],
    ) -> Command {
        let mut cmd = self.command_as("psql", database, role);
        cmd.arg("-d")
            .arg(self.conninfo_for(database, self.user_of(role)));
        // VERBOSITY=verbose puts the SQLSTATE in every error line, which does not depend on
        // the server's lc_messages (see [`sqlstate_is`]).
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ]);
        for s in statements {
            cmd.arg("-c").arg(s);
        }
        cmd
    }

    fn maintenance(&self, statements: &[String]) -> Result<String, PostgresError> {
        self.psql(&self.maintenance_db, statements)
    }

    /// The server's version text and major version; also proves we can connect.
    pub fn server_version(&self) -> Result<(String, u32), PostgresError> {
        let out = self.psql(
            &self.conn.database,
            &["SELECT current_setting('server_version') || '|' || current_setting('server_version_num')".into()],
        )?;
        let line = out.trim();
        let (text, num) = line.split_once('|').ok_or_else(|| PostgresError::Version {
            tool: "the server",
            output: line.to_owned(),
        })?;
        let num: u32 = num.trim().parse().map_err(|_| PostgresError::Version {
            tool: "the server",
            output: line.to_owned(),
        })?;
        let text = text.split_whitespace().next().unwrap_or(text).to_owned();
        Ok((text, num / 10000))
    }

    /// The server's version, once it is known to be no newer than `tool` at `tool_version`
    /// (a dump or base backup needs a tool of the server's major version or newer).
    fn server_not_newer_than(
        &self,
        tool: &'static str,
        tool_version: &str,
    ) -> Result<String, PostgresError> {
        let (server_version, server_major) = self.server_version()?;
        if major(tool_version) < server_major {
            return Err(PostgresError::ToolTooOld {
                tool,
                version: tool_version.to_owned(),
                server: server_version,
            });
        }
        Ok(server_version)
    }

    fn drop_database(&self, name: &str) -> Result<(), PostgresError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.maintenance(&[
                terminate_sql(name),
                format!("DROP DATABASE IF EXISTS {}", ident(name)),
            ]);
            match r {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 50 && sqlstate_is(&e, OBJECT_IN_USE) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn terminate_sql(db: &str) -> String {
    format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = {} AND pid <> pg_backend_pid()",
        literal(db)
    )
}

#[cfg(test)]
mod tests;
