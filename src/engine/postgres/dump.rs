//! `pg_dump` streamed into a writer, with the row counts taken in the dump's own snapshot.

use super::copy_count::CopyCounter;
use super::*;
use crate::engine::process::{self, Running};
use crate::engine::{DumpInfo, PgFormat, RowCounts};
use std::io::{self, BufRead, BufReader, Write};
use std::process::Stdio;

/// The tables whose rows are counted: ordinary tables and leaf partitions outside the system
/// schemas and not members of an extension.
macro_rules! counted_tables {
    () => {
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')"
    };
}

/// Counts the rows of every table the dump holds ([`counted_tables`]), as one line of JSON:
/// `[["schema","table",rows],…]`. `count(*)` runs per table through `query_to_xml`, so one
/// statement counts them all in the caller's snapshot.
pub const COUNT_ROWS_SQL: &str = concat!(
    "SELECT coalesce(jsonb_agg(jsonb_build_array(n.nspname, c.relname, \
(xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM ONLY %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint) \
ORDER BY n.nspname, c.relname), '[]'::jsonb)::text ",
    counted_tables!()
);

/// The tables [`COUNT_ROWS_SQL`] counts, without counting them: `[["schema","table"],…]`.
const LIST_TABLES_SQL: &str = concat!(
    "SELECT coalesce(jsonb_agg(jsonb_build_array(n.nspname, c.relname) ORDER BY n.nspname, c.relname), '[]'::jsonb)::text ",
    counted_tables!()
);

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
pub(super) struct SnapshotSession {
    psql: Option<Running>,
    stdin: Option<std::process::ChildStdin>,
    out: BufReader<std::process::ChildStdout>,
    id: String,
}

/// Marks the snapshot session, whose counting the stall watch asks the server about.
fn session_app_name() -> String {
    format!("dbkeep row counts {}", std::process::id())
}

impl SnapshotSession {
    pub(super) fn export(pg: &Postgres) -> Result<Self, PostgresError> {
        let mut cmd = pg.command("psql", &pg.conn.database);
        cmd.arg("-d").arg(pg.conninfo(&pg.conn.database));
        cmd.env("PGAPPNAME", session_app_name());
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
    pub(super) fn ask(&mut self, what: &'static str, sql: &str) -> Result<String, PostgresError> {
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
    pub(super) fn fail(&mut self, what: &'static str, problem: String) -> PostgresError {
        self.stdin = None; // psql reads the end of its input and ends
        match self.psql.take().map(Running::wait_success) {
            Some(Err(e)) => e.into(),
            _ => PostgresError::Snapshot { what, problem },
        }
    }

    /// The tables to count, in the snapshot (`schema.table`).
    fn list_tables(&mut self) -> Result<Vec<String>, PostgresError> {
        let line = self.ask("list the tables", &format!("{LIST_TABLES_SQL};\n"))?;
        let rows: Vec<(String, String)> =
            serde_json::from_str(&line).map_err(|e| PostgresError::Snapshot {
                what: "list the tables",
                problem: e.to_string(),
            })?;
        Ok(rows.into_iter().map(|(s, t)| format!("{s}.{t}")).collect())
    }

    /// The row counts of a plain dump: the dump's own (`stream`, counted as it streamed) for
    /// the tables of the snapshot; counted in the snapshot when the stream's do not cover
    /// them all (the counter gave up, or a table had no COPY block).
    fn counts_for(
        &mut self,
        stream: &std::sync::mpsc::Receiver<Option<RowCounts>>,
    ) -> Result<RowCounts, PostgresError> {
        let tables = self.list_tables()?;
        let seen = stream.recv().ok().flatten();
        let picked = seen.and_then(|seen| {
            tables
                .into_iter()
                .map(|t| seen.get(&t).map(|n| (t, *n)))
                .collect::<Option<RowCounts>>()
        });
        match picked {
            Some(counts) => {
                tracing::info!(
                    tables = counts.len(),
                    "row counts read from the dump's COPY blocks"
                );
                Ok(counts)
            }
            None => {
                tracing::info!(
                    "row counts counted in the snapshot: the dump's COPY blocks did not cover every table"
                );
                self.count_rows()
            }
        }
    }

    pub(super) fn count_rows(&mut self) -> Result<RowCounts, PostgresError> {
        let line = self.ask("count rows", &format!("{COUNT_ROWS_SQL};\n"))?;
        parse_row_counts(&line).map_err(|problem| PostgresError::Snapshot {
            what: "count rows",
            problem,
        })
    }

    /// Ends the transaction and the session.
    pub(super) fn end(mut self) -> Result<(), PostgresError> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"COMMIT;\n");
        }
        if let Some(psql) = self.psql.take() {
            psql.wait_success()?;
        }
        Ok(())
    }
}

/// The first and last bytes of a dump, seen as it streams, and a plain dump's row counts.
struct Ends {
    tail: crate::codec::Tail,
    head: Vec<u8>,
    copies: Option<CopyCounter>,
}

impl watch::Look for Ends {
    fn see(&mut self, chunk: &[u8]) {
        if let Some(c) = self.copies.as_mut() {
            c.see(chunk);
        }
        self.tail.push(chunk);
        let want = ARCHIVE_MAGIC.len().saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..want.min(chunk.len())]);
    }
}

impl Postgres {
    /// Streams a dump into `out`. Fails unless pg_dump exits 0 and the stream ends with the
    /// completion trailer (plain SQL) or starts with the archive header (custom format: its
    /// data compressed by pg_dump with gzip at `archive_level`, or not at all so that dbkeep's
    /// codec applies).
    pub fn dump(
        &self,
        format: PgFormat,
        archive_level: Option<u32>,
        out: &mut dyn Write,
    ) -> Result<DumpInfo, PostgresError> {
        let tool_version = self.tool_version("pg_dump")?;
        if !has_restrict(&tool_version) {
            tracing::warn!(pg_dump = %tool_version, "this pg_dump predates the August 2025 minor releases (CVE-2025-8714: a plain dump of a hostile server can carry psql meta-commands): install a newer PostgreSQL client");
        }
        let server_version = self.server_not_newer_than("pg_dump", &tool_version)?;
        // The dump and the row counts read one snapshot: exported by a repeatable-read
        // transaction that stays open until pg_dump is done.
        let session = if self.row_counts {
            Some(SnapshotSession::export(self)?)
        } else {
            None
        };
        let mut cmd = self.command("pg_dump", &self.conn.database);
        cmd.arg("-d").arg(self.conninfo(&self.conn.database));
        if let Some(s) = &session {
            cmd.arg(format!("--snapshot={}", s.id));
        }
        match format {
            PgFormat::Sql => cmd.args(["--format=plain", "--clean", "--if-exists", "--create"]),
            PgFormat::Custom => cmd
                .arg("--format=custom")
                .arg(format!("--compress={}", archive_level.unwrap_or(0))),
            PgFormat::Physical => {
                return Err(PostgresError::BaseBackup(
                    "pg_dump takes no base backup (Postgres::base_backup does)".into(),
                ));
            }
        };
        cmd.arg("--no-password")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = process::spawn(cmd, HINT, self.secrets())?;
        let session_pid = session
            .as_ref()
            .and_then(|s| s.psql.as_ref().map(Running::pid));
        // A plain dump's rows are counted in the stream (no second scan of every table); a
        // custom archive's in the snapshot session, while pg_dump runs.
        let from_stream = format == PgFormat::Sql;
        let (stream_counts, seen_counts) = std::sync::mpsc::channel();
        let counting = session.map(|mut session| {
            std::thread::spawn(move || {
                let counts = if from_stream {
                    session.counts_for(&seen_counts)
                } else {
                    session.count_rows()
                };
                (session, counts)
            })
        });
        let look = Ends {
            tail: crate::codec::Tail::new(TRAILER_WINDOW),
            head: Vec::with_capacity(ARCHIVE_MAGIC.len()),
            copies: (from_stream && self.row_counts).then(CopyCounter::new),
        };
        let (result, mut looked) =
            watch::pump(&mut child, look, out, Stall::silence(self.stall_timeout));
        // The counting thread waits for these (None: counted in the snapshot instead).
        let _ = stream_counts.send(
            looked
                .as_mut()
                .and_then(|l| l.copies.take())
                .and_then(CopyCounter::finish),
        );
        let result = result.map_err(PostgresError::from);
        let waited = child.wait_success();
        if result.is_err() || waited.is_err() {
            // The dump failed: the counts are of no use.
            if let Some(pid) = session_pid {
                process::kill_pid(pid);
            }
        }
        // The counts may still be running (the dump of an empty table is quick, its count in
        // a session blocked behind a lock is not): they are waited for under the stall watch.
        let mut stalled = false;
        if let (Some(handle), Some(pid)) = (&counting, session_pid) {
            let app_name = session_app_name();
            let watched = watch::watch(
                pid,
                false,
                &mut || handle.is_finished(),
                &|| process::kill_pid(pid),
                Some(self.stall(&app_name)),
                None,
            );
            stalled = watched == watch::Watched::Stalled;
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
        if stalled {
            return Err(PostgresError::Stalled {
                tool: "the row-count session (psql)".into(),
                secs: self.stall_timeout.as_secs(),
            });
        }
        let counts = counted.transpose()?;
        // The reader saw the whole stream: the pump succeeded.
        let (tail, head) = looked
            .map(|l| (l.tail.bytes().to_vec(), l.head))
            .unwrap_or_default();
        match format {
            PgFormat::Sql if !has_trailer(&tail) => return Err(PostgresError::Incomplete),
            PgFormat::Custom if head != ARCHIVE_MAGIC => return Err(PostgresError::NotArchive),
            _ => {}
        }
        Ok(DumpInfo {
            server_version: Some(server_version),
            tool_version: Some(format!("pg_dump {tool_version}")),
            row_counts: counts,
            base_backup: None,
        })
    }
}
