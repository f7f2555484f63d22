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

use super::process::{self, ProcessError, Running};
use super::retarget::Retarget;
use super::{DrillLog, DumpInfo, PgFormat, RowCounts};
use crate::database_url::PgConnection;
use crate::signals;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
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
        "pg_dump {pg_dump} is older than the server ({server}): a dump needs pg_dump of the server's major version or newer; install it and point BACKUP_PG_BINDIR at its bin directory"
    )]
    ToolTooOld { pg_dump: String, server: String },
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
    #[error("cannot {what} for the dump: {problem}")]
    Snapshot { what: &'static str, problem: String },
    #[error("restore drill: {0}")]
    Drill(String),
    #[error("{tool} made no progress for {secs} s and was stopped (BACKUP_STALL_TIMEOUT)")]
    Stalled { tool: &'static str, secs: u64 },
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

/// How a restore went.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    /// The previous database, kept under this name (BACKUP_RESTORE_KEEP_OLD).
    pub kept_old: Option<String>,
}

pub struct Postgres {
    conn: PgConnection,
    bindir: Option<PathBuf>,
    maintenance_db: String,
    keep_old: bool,
    stall_timeout: Duration,
    restore_jobs: u32,
    row_counts: bool,
}

/// Counts the rows of every table the dump holds (ordinary tables and leaf partitions outside
/// the system schemas and not members of an extension), as one line of JSON:
/// `[["schema","table",rows],…]`. `count(*)` runs per table through `query_to_xml`, so one
/// statement counts them all in the caller's snapshot.
pub const COUNT_ROWS_SQL: &str = "SELECT coalesce(jsonb_agg(jsonb_build_array(n.nspname, c.relname, \
(xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM ONLY %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint) \
ORDER BY n.nspname, c.relname), '[]'::jsonb)::text \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')";

/// Parses the output of [`COUNT_ROWS_SQL`].
pub fn parse_row_counts(line: &str) -> Result<RowCounts, String> {
    let rows: Vec<(String, String, u64)> = serde_json::from_str(line.trim()).map_err(|e| {
        let start: String = line.chars().take(200).collect();
        format!("{e} in {start:?}")
    })?;
    Ok(rows
        .into_iter()
        .map(|(schema, table, n)| (format!("{schema}.{table}"), n))
        .collect())
}

/// A psql session holding a repeatable-read, read-only transaction whose snapshot pg_dump
/// imports (`--snapshot`), so that the rows counted in it are exactly the rows dumped.
struct SnapshotSession {
    psql: Option<Running>,
    stdin: Option<std::process::ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
    id: String,
}

impl SnapshotSession {
    fn export(pg: &Postgres) -> Result<Self, PostgresError> {
        let mut cmd = pg.command("psql", &pg.conn.database);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut psql = process::spawn(cmd, HINT, pg.secrets())?;
        let (stdin, stdout) = (psql.take_stdin(), psql.take_stdout());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            psql.kill();
            return Err(PostgresError::Snapshot {
                what: "export a snapshot",
                problem: "psql's pipes are missing".into(),
            });
        };
        let mut session = Self {
            psql: Some(psql),
            stdin: Some(stdin),
            out: BufReader::new(stdout),
            id: String::new(),
        };
        session.id = session.ask(
            "export a snapshot",
            // As pg_dump does: a row-level security policy that would hide rows is an error,
            // never a smaller count.
            "SET row_security = off;\nBEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSELECT pg_export_snapshot();\n",
        )?;
        if session.id.is_empty()
            || !session
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(session.fail(
                "export a snapshot",
                format!("unexpected answer {:?}", session.id),
            ));
        }
        Ok(session)
    }

    /// Sends `sql` and reads the one line it answers.
    fn ask(&mut self, what: &'static str, sql: &str) -> Result<String, PostgresError> {
        let sent = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(sql.as_bytes()).and_then(|()| stdin.flush()),
            None => Err(io::Error::other("the session has ended")),
        };
        let mut line = String::new();
        let read = sent.and_then(|()| self.out.read_line(&mut line));
        match read {
            Ok(n) if n > 0 => Ok(line.trim().to_owned()),
            Ok(_) => Err(self.fail(what, "psql ended without an answer".into())),
            Err(e) => Err(self.fail(what, e.to_string())),
        }
    }

    /// The error for a failed step: psql's own (with its scrubbed stderr) when it failed.
    fn fail(&mut self, what: &'static str, problem: String) -> PostgresError {
        self.stdin = None; // psql reads the end of its input and ends
        match self.psql.take().map(Running::wait_success) {
            Some(Err(e)) => e.into(),
            _ => PostgresError::Snapshot { what, problem },
        }
    }

    fn count_rows(&mut self) -> Result<RowCounts, PostgresError> {
        let line = self.ask("count rows", &format!("{COUNT_ROWS_SQL};\n"))?;
        parse_row_counts(&line).map_err(|problem| PostgresError::Snapshot {
            what: "count rows",
            problem,
        })
    }

    /// Ends the transaction and the session.
    fn end(mut self) -> Result<(), PostgresError> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"COMMIT;\n");
        }
        if let Some(psql) = self.psql.take() {
            psql.wait_success()?;
        }
        Ok(())
    }
}

/// What a restore loads: a plain SQL stream (fed to psql), or a custom archive staged in a
/// seekable file (loaded by `pg_restore -j N`).
pub enum Source<'a> {
    Sql(&'a mut dyn Read),
    Archive(&'a Path),
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
        }
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

    /// A command for `tool` connecting to `database`: a clean environment (no `PG*` variable, no
    /// DATABASE_URL or API token of ours) plus the connection settings from DATABASE_URL.
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
        cmd
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
        let mut cmd = self.command("psql", database);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        for s in statements {
            cmd.arg("-c").arg(s);
        }
        Ok(process::output(cmd, HINT, self.secrets())?)
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

    /// Streams a dump into `out`. Fails unless pg_dump exits 0 and the stream ends with the
    /// completion trailer (plain SQL) or starts with the archive header (custom format, written
    /// with pg_dump's own compression off so that dbkeep's codec applies).
    pub fn dump(&self, format: PgFormat, out: &mut dyn Write) -> Result<DumpInfo, PostgresError> {
        let tool_version = self.tool_version("pg_dump")?;
        let (server_version, server_major) = self.server_version()?;
        if major(&tool_version) < server_major {
            return Err(PostgresError::ToolTooOld {
                pg_dump: tool_version,
                server: server_version,
            });
        }
        // The dump and the row counts read one snapshot: exported by a repeatable-read
        // transaction that stays open until pg_dump is done.
        let session = if self.row_counts {
            Some(SnapshotSession::export(self)?)
        } else {
            None
        };
        let mut cmd = self.command("pg_dump", &self.conn.database);
        if let Some(s) = &session {
            cmd.arg(format!("--snapshot={}", s.id));
        }
        match format {
            PgFormat::Sql => cmd.args(["--format=plain", "--clean", "--if-exists", "--create"]),
            PgFormat::Custom => cmd.args(["--format=custom", "--compress=0"]),
        };
        cmd.arg("--no-password")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = process::spawn(cmd, HINT, self.secrets())?;
        let session_pid = session
            .as_ref()
            .and_then(|s| s.psql.as_ref().map(Running::pid));
        let counting = session.map(|mut session| {
            std::thread::spawn(move || {
                let counts = session.count_rows();
                (session, counts)
            })
        });
        let stdout = child.take_stdout();
        let mut tail = crate::codec::Tail::new(TRAILER_WINDOW);
        let mut head = Vec::with_capacity(ARCHIVE_MAGIC.len());
        // A reader thread keeps pg_dump running while this thread compresses: a bounded queue
        // of chunks, so memory stays flat.
        let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(16);
        let reader = std::thread::spawn(move || {
            let Some(mut stdout) = stdout else { return };
            loop {
                let mut buf = vec![0u8; CHUNK];
                match stdout.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(buf)).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        let result = (|| {
            let mut last_progress = Instant::now();
            loop {
                if signals::interrupted() {
                    return Err(PostgresError::Interrupted);
                }
                if last_progress.elapsed() > self.stall_timeout {
                    return Err(PostgresError::Stalled {
                        tool: "pg_dump",
                        secs: self.stall_timeout.as_secs(),
                    });
                }
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(Ok(chunk)) => {
                        last_progress = Instant::now();
                        tail.push(&chunk);
                        let want = ARCHIVE_MAGIC.len().saturating_sub(head.len());
                        head.extend_from_slice(&chunk[..want.min(chunk.len())]);
                        out.write_all(&chunk).map_err(PostgresError::Output)?;
                    }
                    Ok(Err(e)) => {
                        return Err(PostgresError::Process(ProcessError::Output {
                            program: "pg_dump".into(),
                            source: e,
                        }));
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
        })();
        drop(rx);
        if result.is_err() {
            child.kill();
            // The reader ends at EOF, which a grandchild holding the pipe may delay: not joined.
            drop(reader);
        } else {
            let _ = reader.join();
        }
        let waited = child.wait_success();
        if result.is_err() || waited.is_err() {
            // The dump failed: the counts are of no use.
            if let Some(pid) = session_pid {
                process::kill_pid(pid);
            }
        }
        let counted = match counting.map(std::thread::JoinHandle::join) {
            None => None,
            Some(Ok((session, counts))) => {
                // Only now may the snapshot's transaction end: pg_dump has long imported it.
                Some(session.end().and(counts))
            }
            Some(Err(_)) => Some(Err(PostgresError::Snapshot {
                what: "count rows",
                problem: "the counting thread panicked".into(),
            })),
        };
        result?;
        waited?;
        let counts = counted.transpose()?;
        match format {
            PgFormat::Sql if !has_trailer(tail.bytes()) => return Err(PostgresError::Incomplete),
            PgFormat::Custom if head != ARCHIVE_MAGIC => return Err(PostgresError::NotArchive),
            _ => {}
        }
        Ok(DumpInfo {
            server_version: Some(server_version),
            tool_version: Some(format!("pg_dump {tool_version}")),
            row_counts: counts,
        })
    }

    /// Restores a dump of the database `backup_db`: moves the live database aside, loads the
    /// dump (plain SQL made with `--create` through `psql -v ON_ERROR_STOP=1` on the maintenance
    /// database; a custom archive with `pg_restore --create --exit-on-error -j N`), and on any
    /// failure drops what was restored and puts the original back.
    ///
    /// `aside` is the name the live database is moved to meanwhile ([`Postgres::aside_name`]);
    /// the caller records it first, so that a run killed mid-way can be undone by
    /// [`Postgres::recover`].
    pub fn restore(
        &self,
        source: Source<'_>,
        backup_db: &str,
        aside: &str,
        on_loaded: &mut dyn FnMut(),
    ) -> Result<RestoreReport, PostgresError> {
        let target = self.conn.database.clone();
        let app_name = restore_app_name(aside);
        if backup_db != target {
            return Err(PostgresError::DatabaseMismatch {
                backup: backup_db.to_owned(),
                configured: target,
            });
        }
        if signals::interrupted() {
            return Err(PostgresError::Interrupted);
        }
        let found = self.maintenance(&[format!(
            "SELECT datallowconn FROM pg_database WHERE datname = {}",
            literal(&target)
        )])?;
        let allow_conn = match found.trim() {
            "" => None,
            v => Some(v == "t"),
        };
        let aside = match allow_conn {
            Some(allow) => Some(self.move_aside(&target, aside, allow)?),
            None => None,
        };
        let loaded = match source {
            Source::Sql(input) => self.load_sql(&self.maintenance_db, input, &app_name),
            Source::Archive(path) => self.load_archive(path, None, &app_name),
        };
        match loaded {
            Ok(()) => {
                on_loaded();
                let mut report = RestoreReport::default();
                if let Some(aside) = aside {
                    if self.keep_old {
                        if let Err(e) = self.maintenance(&[format!(
                            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}",
                            ident(&aside),
                            allow_conn.unwrap_or(true)
                        )]) {
                            tracing::warn!(database = %aside, error = %e, "the restore succeeded but the kept previous database still refuses connections");
                        }
                        report.kept_old = Some(aside);
                    } else if let Err(e) = self.drop_database(&aside) {
                        tracing::warn!(database = %aside, error = %e, "the restore succeeded but the previous database could not be dropped");
                    }
                }
                Ok(report)
            }
            Err(restore) => {
                let Some(aside) = aside else {
                    let _ = self.drop_database(&target);
                    return Err(restore);
                };
                match self.put_back(&target, &aside, allow_conn.unwrap_or(true)) {
                    Ok(()) => Err(restore),
                    Err(rollback) => Err(PostgresError::RollbackFailed {
                        restore: Box::new(restore),
                        rollback: Box::new(rollback),
                        aside,
                        target,
                    }),
                }
            }
        }
    }

    /// A restore drill: loads the dump into a new scratch database `dbkeep_drill_…` on the same
    /// server (a plain dump through [`Retarget`], so its preamble never touches the live
    /// database; a custom archive with `pg_restore -j N` into it), then checks every table's row
    /// count against `expected` (the manifest's) and every btree index with amcheck's
    /// `bt_index_check` where the extension can be created. The scratch database is dropped
    /// however the drill ends; one left by a killed drill of this machine is dropped by the
    /// next. Returns what was checked.
    pub fn drill(
        &self,
        source: Source<'_>,
        expected: Option<&RowCounts>,
        log: &mut DrillLog,
    ) -> Result<(), PostgresError> {
        log.step("restore");
        self.drop_stale_drills();
        let name = drill_name(std::process::id());
        self.maintenance(&[format!(
            "CREATE DATABASE {} TEMPLATE template0",
            ident(&name)
        )])
        .map_err(|e| {
            PostgresError::Drill(format!(
                "cannot create the scratch database {name} (the role needs CREATEDB): {}",
                error_line(&e)
            ))
        })?;
        let scratch = ScratchDatabase { pg: self, name };
        let name = scratch.name.as_str();
        let app_name = format!("dbkeep drill {name}");
        match source {
            Source::Sql(input) => {
                let mut retargeted = Retarget::new(io::BufReader::with_capacity(CHUNK, input));
                self.load_sql(name, &mut retargeted, &app_name)?;
            }
            Source::Archive(path) => self.load_archive(path, Some(name), &app_name)?,
        }
        log.pass(format!("restored into the scratch database {name}"));
        log.step("row counts");
        let counted = parse_row_counts(&self.psql(
            name,
            &["SET row_security = off".into(), COUNT_ROWS_SQL.into()],
        )?)
        .map_err(|e| PostgresError::Drill(format!("cannot count the rows: {e}")))?;
        log.pass(super::compare_counts(expected, &counted).map_err(PostgresError::Drill)?);
        log.step("amcheck");
        self.amcheck(name, log)
    }

    /// amcheck's `bt_index_check` on every leaf btree index of `database` (valid, ready, not
    /// temporary), each on its own: an index that amcheck finds damaged fails the drill; one it
    /// could not check for another reason (a privilege, a lock, an operator class whose
    /// functions fail) is named as not checked, as are the index kinds amcheck does not cover.
    fn amcheck(&self, database: &str, log: &mut DrillLog) -> Result<(), PostgresError> {
        let installed = self
            .psql(
                database,
                &[
                    "CREATE SCHEMA IF NOT EXISTS dbkeep_amcheck".into(),
                    "CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA dbkeep_amcheck".into(),
                    AMCHECK_SCHEMA_SQL.into(),
                ],
            )
            .map(|s| s.trim().to_owned());
        let schema = match installed {
            Ok(schema) if !schema.is_empty() => schema,
            Ok(_) => {
                log.pass("amcheck not available, btree indexes not checked");
                return Ok(());
            }
            Err(e) => {
                log.pass(format!(
                    "amcheck not available, btree indexes not checked: {}",
                    error_line(&e)
                ));
                return Ok(());
            }
        };
        let mut cmd = self.command("psql", database);
        cmd.env("PGAPPNAME", format!("dbkeep amcheck {database}"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-c")
            .arg("SET search_path = pg_catalog, pg_temp")
            .arg("-c")
            .arg(AMCHECK_SQL.replace("@SCHEMA@", &literal(&schema)))
            .arg("-c")
            .arg("SELECT current_setting('dbkeep.amcheck')");
        let out = process::output(cmd, HINT, self.secrets())?;
        let report: AmcheckReport = serde_json::from_str(out.trim()).map_err(|e| {
            let start: String = out.chars().take(200).collect();
            PostgresError::Drill(format!("cannot read amcheck's report: {e} in {start:?}"))
        })?;
        report.into_checks(log)
    }

    /// Drops scratch databases of drills of this machine whose process is gone.
    fn drop_stale_drills(&self) {
        let Ok(found) = self.maintenance(&[
            "SELECT datname FROM pg_database WHERE datname LIKE 'dbkeep\\_drill\\_%'".into(),
        ]) else {
            return;
        };
        for name in found.lines().map(str::trim) {
            // Only "no such process" means gone: a drill of another user answers EPERM.
            let gone = drill_owner(name).is_some_and(|pid| {
                i32::try_from(pid).is_ok_and(|pid| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                        == Err(nix::errno::Errno::ESRCH)
                })
            });
            if gone {
                tracing::warn!(database = %name, "dropping the scratch database of a killed drill");
                if let Err(e) = self.drop_database(name) {
                    tracing::warn!(database = %name, error = %e, "could not drop it");
                }
            }
        }
    }

    /// Blocks connections, ends other sessions and renames `target` aside; returns the new name.
    fn move_aside(&self, target: &str, aside: &str, allow: bool) -> Result<String, PostgresError> {
        self.maintenance(&[format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            ident(target)
        )])?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.maintenance(&[
                terminate_sql(target),
                format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    ident(target),
                    ident(aside)
                ),
            ]);
            match r {
                Ok(_) => return Ok(aside.to_owned()),
                // Terminated sessions take a moment to go.
                Err(e)
                    if attempt < 50 && e.to_string().contains("being accessed by other users") =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    let _ = self.maintenance(&[format!(
                        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}",
                        ident(target)
                    )]);
                    return Err(e);
                }
            }
        }
    }

    /// The name the live database is moved to during a restore.
    pub fn aside_name(&self) -> String {
        aside_name(&self.conn.database, chrono::Utc::now())
    }

    /// Undoes a restore that was killed before it finished: if the original database is still
    /// aside under `aside`, drops whatever stands under the target name (a partial restore) and
    /// renames the original back. Returns what it did, if anything.
    pub fn recover(&self, aside: &str) -> Result<Option<String>, PostgresError> {
        let target = self.conn.database.clone();
        // The killed run's psql may still be executing what it had read: end its sessions
        // first, or it could recreate the database behind our back.
        let app = literal(&restore_app_name(aside));
        for _ in 0..100 {
            let left = self.maintenance(&[format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = {app} AND pid <> pg_backend_pid()"
            )])?;
            if left.trim() == "0" {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let exists = |db: &str| -> Result<bool, PostgresError> {
            let out = self.maintenance(&[format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                literal(db)
            )])?;
            Ok(out.trim() == "1")
        };
        if !exists(aside)? {
            // Finished (or never moved): make sure the target accepts connections again.
            if exists(&target)? {
                self.maintenance(&[format!(
                    "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                    ident(&target)
                )])?;
            }
            return Ok(None);
        }
        self.put_back(&target, aside, true)?;
        Ok(Some(format!(
            "an interrupted restore left the original database aside as {aside:?}; it is back as {target:?}"
        )))
    }

    fn put_back(&self, target: &str, aside: &str, allow: bool) -> Result<(), PostgresError> {
        self.drop_database(target)?;
        self.maintenance(&[
            format!(
                "ALTER DATABASE {} RENAME TO {}",
                ident(aside),
                ident(target)
            ),
            format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}",
                ident(target)
            ),
        ])?;
        Ok(())
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
                Err(e)
                    if attempt < 50 && e.to_string().contains("being accessed by other users") =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Feeds a plain dump to psql on the maintenance database. The dump must end with pg_dump's
    /// trailer: a stream that stops early (psql may well have run it all without an error) is a
    /// failed restore, which the caller rolls back.
    fn load_sql(
        &self,
        database: &str,
        input: &mut dyn Read,
        app_name: &str,
    ) -> Result<(), PostgresError> {
        let mut cmd = self.command("psql", database);
        // Marks the restore's sessions, so that a later recovery can end them.
        cmd.env("PGAPPNAME", app_name);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let child: Running = process::spawn(cmd, HINT, self.secrets())?;
        let mut tracked = TailReader {
            inner: input,
            tail: crate::codec::Tail::new(TRAILER_WINDOW),
        };
        feed_child(child, &mut tracked, Some(self.stall_timeout))?;
        if has_trailer(tracked.tail.bytes()) {
            Ok(())
        } else {
            Err(PostgresError::TruncatedInput)
        }
    }

    /// Loads a staged custom archive with `pg_restore -j N`: with `--create` from the
    /// maintenance database (a restore), or `into` an existing database without owners and
    /// privileges (a drill). pg_restore and its workers run in their own process group, so that
    /// a signal stops all of them.
    fn load_archive(
        &self,
        path: &Path,
        into: Option<&str>,
        app_name: &str,
    ) -> Result<(), PostgresError> {
        use std::os::unix::process::CommandExt;
        let database = into.unwrap_or(&self.maintenance_db);
        let mut cmd = self.command("pg_restore", database);
        cmd.env("PGAPPNAME", app_name);
        match into {
            None => cmd.arg("--create"),
            // A subscription would make the scratch database impossible to drop (and its
            // slot is the publisher's): never restored by a drill.
            Some(_) => cmd.args(["--no-owner", "--no-privileges", "--no-subscriptions"]),
        };
        cmd.args(["--exit-on-error", "--no-password"])
            .arg(format!("--jobs={}", self.restore_jobs))
            .arg(format!("--dbname={database}"))
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0);
        let mut child = process::spawn(cmd, HINT, self.secrets())?;
        // No data flows through dbkeep here: only signals are watched. The group is killed
        // before the child is reaped, so a reused pid is never signalled.
        while !child.has_exited() {
            if signals::interrupted() {
                process::kill_group(child.pid());
                let _ = child.wait();
                return Err(PostgresError::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_success()?;
        Ok(())
    }
}

/// Checks a custom archive completely without a database: streams it through
/// `pg_restore --file=/dev/null`, which reads every entry and data block.
pub fn check_archive(bindir: Option<&Path>, input: &mut dyn Read) -> Result<(), PostgresError> {
    let mut cmd = process::clean_command(&process::program_path(bindir, "pg_restore"));
    cmd.args(["--file=/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let child = process::spawn(cmd, HINT, vec![])?;
    feed_child(child, input, None)
}

/// Reads a staged custom archive's table of contents (`pg_restore --list`): proves this
/// pg_restore reads the archive before anything is changed.
pub fn list_archive(bindir: Option<&Path>, path: &Path) -> Result<(), PostgresError> {
    let mut cmd = process::clean_command(&process::program_path(bindir, "pg_restore"));
    cmd.arg("--list").arg(path);
    process::output(cmd, HINT, vec![])?;
    Ok(())
}

/// A reader that keeps the last bytes it passed on.
struct TailReader<'a> {
    inner: &'a mut dyn Read,
    tail: crate::codec::Tail,
}

impl Read for TailReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tail.push(&buf[..n]);
        Ok(n)
    }
}

/// Writes `input` to the child's stdin and waits for it to succeed. A watchdog kills the child
/// when a signal arrives or, with `stall`, when no data moved for that long (a blocked write
/// cannot time out by itself).
fn feed_child(
    mut child: Running,
    input: &mut dyn Read,
    stall: Option<Duration>,
) -> Result<(), PostgresError> {
    let program = child.program().to_owned();
    let mut stdin = child.take_stdin();
    let mut buf = vec![0u8; CHUNK];
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let guard = watchdog(
        child.pid(),
        stall.map(|limit| (progress.clone(), limit)),
        done.clone(),
    );
    let fed: Result<(), PostgresError> = (|| {
        let Some(stdin) = stdin.as_mut() else {
            return Ok(());
        };
        loop {
            if signals::interrupted() {
                return Err(PostgresError::Interrupted);
            }
            let n = match input.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PostgresError::Input(e)),
            };
            match stdin.write_all(&buf[..n]) {
                Ok(()) => {
                    progress.fetch_add(n as u64, Ordering::Relaxed);
                }
                // The child stopped reading: its exit status and stderr say why.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(PostgresError::Output(e)),
            }
        }
    })();
    drop(stdin);
    // Once the input is fed, the child's last statements may take long (an index build): the
    // watchdog stops here, and before the child is reaped so it can never signal a reused pid.
    done.store(true, Ordering::Relaxed);
    let stalled = guard.join().unwrap_or(false);
    if fed.is_err() {
        child.kill();
    }
    let waited = child.wait_success();
    if stalled {
        return Err(PostgresError::Stalled {
            tool: if program == "psql" {
                "psql"
            } else {
                "pg_restore"
            },
            secs: stall.map_or(0, |d| d.as_secs()),
        });
    }
    if signals::interrupted() {
        return Err(PostgresError::Interrupted);
    }
    fed?;
    waited?;
    Ok(())
}

/// Watches a child until `done`: kills it when a signal arrives, or when the `progress` counter
/// has not moved for its limit. Returns whether it killed for a stall.
fn watchdog(
    pid: u32,
    progress: Option<(Arc<AtomicU64>, Duration)>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let mut seen = 0;
        let mut since = Instant::now();
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if signals::interrupted() {
                process::kill_pid(pid);
                return false;
            }
            if let Some((counter, limit)) = &progress {
                let now = counter.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    since = Instant::now();
                } else if since.elapsed() > *limit {
                    process::kill_pid(pid);
                    return true;
                }
            }
        }
        false
    })
}

/// The schema amcheck's functions are in (dbkeep's own, or where the dump had put it).
const AMCHECK_SCHEMA_SQL: &str = "SELECT n.nspname FROM pg_extension e \
JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'";

/// Checks every leaf btree index outside the system schemas, each in its own subtransaction,
/// and leaves a JSON report in the session's `dbkeep.amcheck` setting ([`AmcheckReport`]):
/// nothing is created in the database, so no event trigger of the dump's fires. `@SCHEMA@` is
/// the quoted literal of amcheck's schema.
const AMCHECK_SQL: &str = r#"DO $dbkeep_amcheck$
DECLARE
  r record;
  checked bigint := 0;
  damaged jsonb := '[]';
  unchecked jsonb := '[]';
  other jsonb;
  partitioned bigint;
BEGIN
  FOR r IN
    SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'i' AND a.amname = 'btree' AND i.indisready AND i.indisvalid
      AND c.relpersistence <> 't'
      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
    ORDER BY n.nspname, c.relname
  LOOP
    BEGIN
      EXECUTE format('SELECT %I.bt_index_check($1)', @SCHEMA@) USING r.oid;
      checked := checked + 1;
    EXCEPTION
      WHEN index_corrupted OR data_corrupted THEN
        damaged := damaged || jsonb_build_array(jsonb_build_array(r.name, SQLERRM));
      WHEN OTHERS THEN
        unchecked := unchecked || jsonb_build_array(jsonb_build_array(r.name, SQLERRM));
    END;
  END LOOP;
  SELECT coalesce(jsonb_object_agg(amname, n), '{}') INTO other FROM (
    SELECT a.amname, count(*) AS n
    FROM pg_class c JOIN pg_am a ON a.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'i' AND a.amname <> 'btree'
      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
    GROUP BY a.amname) kinds;
  SELECT count(*) INTO partitioned
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'I' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%';
  PERFORM set_config('dbkeep.amcheck', jsonb_build_object('checked', checked,
    'damaged', damaged, 'unchecked', unchecked, 'other', other,
    'partitioned', partitioned)::text, false);
END
$dbkeep_amcheck$"#;

/// What [`AMCHECK_SQL`] found: how many btree indexes passed, which are damaged, which could
/// not be checked and why, the other index kinds by access method, the partitioned indexes.
#[derive(Debug, serde::Deserialize)]
struct AmcheckReport {
    checked: u64,
    damaged: Vec<(String, String)>,
    unchecked: Vec<(String, String)>,
    other: std::collections::BTreeMap<String, u64>,
    partitioned: u64,
}

impl AmcheckReport {
    /// The report as the drill's checks; a damaged index fails the drill.
    fn into_checks(self, log: &mut DrillLog) -> Result<(), PostgresError> {
        let mut passed = format!(
            "amcheck bt_index_check passed on {} btree indexes",
            self.checked
        );
        if self.partitioned > 0 {
            passed.push_str(&format!(
                " (partitioned indexes: {}, checked through their partitions' indexes)",
                self.partitioned
            ));
        }
        if self.damaged.is_empty() {
            log.pass(passed);
        }
        for (index, why) in &self.unchecked {
            log.pass(format!("could not check {index}: {why}"));
        }
        if !self.other.is_empty() {
            let kinds: Vec<String> = self
                .other
                .iter()
                .map(|(am, n)| format!("{n} {am}"))
                .collect();
            log.pass(format!(
                "not checked by amcheck, which covers btree only: {} indexes",
                kinds.join(", ")
            ));
        }
        match self.damaged.first() {
            None => Ok(()),
            Some((index, why)) => Err(PostgresError::Drill(format!(
                "amcheck found {} damaged index{}, the first {index}: {why}",
                self.damaged.len(),
                if self.damaged.len() == 1 { "" } else { "es" }
            ))),
        }
    }
}

/// A drill's scratch database, dropped when this goes.
struct ScratchDatabase<'a> {
    pg: &'a Postgres,
    name: String,
}

impl Drop for ScratchDatabase<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.pg.drop_database(&self.name) {
            tracing::error!(database = %self.name, error = %e, "could not drop the drill's scratch database: drop it by hand");
        }
    }
}

/// `dbkeep_drill_<host>_<pid>_<random>`: the host (a hash of its name) and pid tell the next
/// drill on this machine whether the one that made it is gone.
fn drill_name(pid: u32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("dbkeep_drill_{}_{pid}_{nanos:08x}", host_tag())
}

fn host_tag() -> String {
    use sha2::Digest;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(host.as_bytes())[..4])
}

/// The pid of the drill of this machine that made the scratch database `name`.
fn drill_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("dbkeep_drill_")?;
    let mut parts = rest.split('_');
    let (host, pid) = (parts.next()?, parts.next()?);
    (host == host_tag()).then(|| pid.parse().ok()).flatten()
}

/// The `ERROR:` line of a failed psql, else the error's first line.
fn error_line(e: &PostgresError) -> String {
    let text = e.to_string();
    text.lines()
        .find(|l| l.contains("ERROR:"))
        .or_else(|| text.lines().next())
        .unwrap_or_default()
        .trim()
        .to_owned()
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

fn terminate_sql(db: &str) -> String {
    format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = {} AND pid <> pg_backend_pid()",
        literal(db)
    )
}

/// The application_name of a restore's psql sessions: unique per restore (the aside name's
/// timestamp), within PostgreSQL's 63 bytes.
fn restore_app_name(aside: &str) -> String {
    let stamp: String = aside
        .chars()
        .rev()
        .take(14)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("dbkeep-restore-{stamp}")
}

/// `name_dbkeep_old_20240115103000`, cut to PostgreSQL's 63-byte identifier limit.
fn aside_name(target: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let suffix = format!("_dbkeep_old_{}", now.format("%Y%m%d%H%M%S"));
    let mut base = target.to_owned();
    while base.len() + suffix.len() > 63 {
        base.pop();
    }
    base + &suffix
}

/// A quoted SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A quoted SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_counts_parse_and_bad_answers_are_named() {
        let c = parse_row_counts("[[\"public\",\"t\",3],[\"s\",\"x|y\",0]]\n").unwrap();
        assert_eq!(c.get("public.t"), Some(&3));
        assert_eq!(c.get("s.x|y"), Some(&0));
        assert!(parse_row_counts("[]").unwrap().is_empty());
        let err = parse_row_counts("ERROR: permission denied").unwrap_err();
        assert!(err.contains("permission denied"), "{err}");
    }

    #[test]
    fn majors() {
        assert_eq!(major("15.18"), 15);
        assert_eq!(major("9.6.24"), 9);
        assert_eq!(major("17beta1"), 17);
    }

    #[test]
    fn trailer_detection() {
        let dump = b"...\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n";
        assert!(has_trailer(dump));
        assert!(!has_trailer(b"COPY public.t (a) FROM stdin;\n1\n"));
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("o'k"), "'o''k'");
    }

    #[test]
    fn aside_names_fit_63_bytes() {
        let now = chrono::Utc::now();
        let long = "x".repeat(63);
        assert!(aside_name(&long, now).len() <= 63);
        assert!(aside_name("shop", now).starts_with("shop_dbkeep_old_"));
    }
}
