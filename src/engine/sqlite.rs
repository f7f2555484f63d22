//! SQLite through its online backup API (in process, via rusqlite).
//!
//! - A backup copies every page in one step into a scratch file (no journal, no fsync: the
//!   file is read back at once, and only the stored copy must be durable), so a busy writer
//!   cannot starve it and the copy is one consistent snapshot; the copy must pass `PRAGMA
//!   quick_check` (every page, cell, record and constraint; run while it is compressed). The
//!   full `integrity_check`, which also proves every index equals its table, is O(N log N)
//!   and about five times as costly: `verify` and every drill run it.
//! - The source is opened read-only and without the create flag: a missing database is an
//!   error, never a new empty file.
//! - A restore checks the backup first (size, SHA-256: the copy that passed its check at
//!   backup time), then writes it into the live database through the backup API, so a program holding the database open sees the restored data. The copy is one
//!   transaction on the live database: if it fails, the live database is as it was.

use super::seam::{DatabaseEngine, DumpRequest, EngineError, RestoreReport, Source};
use super::{DatabaseType, DrillLog, DumpInfo, RowCounts};
use crate::signals;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long to wait for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum SqliteError {
    #[error(
        "the SQLite database {0} does not exist: check DATABASE_URL (sqlite:///relative.db or sqlite:////absolute.db)"
    )]
    Missing(PathBuf),
    #[error("SQLite: {what} {path}: {source}{hint}", hint = sqlite_hint(source))]
    Sqlite {
        what: &'static str,
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path} fails PRAGMA {check}: {problems}")]
    Corrupt {
        path: PathBuf,
        check: &'static str,
        problems: String,
    },
    #[error("the database {path} stayed locked by another connection for {secs} s")]
    Busy { path: PathBuf, secs: u64 },
    #[error("interrupted by a signal")]
    Interrupted,
}

/// What to do about a SQLite failure, where that is clear.
fn sqlite_hint(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => {
            " (the disk of the backup directory, where the copy is staged, is full: free space or move BACKUP_DIR)"
        }
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::PermissionDenied) => {
            " (check that the user running dbkeep may write there)"
        }
        _ => "",
    }
}

pub struct Sqlite {
    path: PathBuf,
    /// Count every table's rows in the snapshot (`BACKUP_ROW_COUNTS`).
    row_counts: bool,
}

fn err(what: &'static str, path: &Path) -> impl FnOnce(rusqlite::Error) -> SqliteError {
    let path = path.to_owned();
    move |source| SqliteError::Sqlite { what, path, source }
}

impl Sqlite {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            row_counts: true,
        }
    }

    pub fn with_row_counts(mut self, on: bool) -> Self {
        self.row_counts = on;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies the live database into `dest` (a new file). The caller checks the copy with
    /// [`quick_check`] before it counts.
    pub fn snapshot(&self, dest: &Path) -> Result<DumpInfo, SqliteError> {
        if !self.path.is_file() {
            return Err(SqliteError::Missing(self.path.clone()));
        }
        let src = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err("open", &self.path))?;
        src.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("configure", &self.path))?;
        let mut dst = Connection::open(dest).map_err(err("create", dest))?;
        dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
            .map_err(err("configure", dest))?;
        copy_all(&src, &mut dst, &self.path)?;
        drop(dst);
        Ok(DumpInfo {
            server_version: None,
            tool_version: Some(format!("SQLite {}", rusqlite::version())),
            row_counts: None, // counted by the caller in the copy (`count_rows`)
            base_backup: None,
        })
    }

    /// Writes the backup file `from` (the copy that passed [`quick_check`] at backup time,
    /// as its SHA-256 proved) into the live database, in one transaction.
    pub fn restore_from(&self, from: &Path) -> Result<(), SqliteError> {
        let src = Connection::open_with_flags(
            from,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err("open", from))?;
        let mut dst = Connection::open(&self.path).map_err(err("open", &self.path))?;
        dst.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("configure", &self.path))?;
        copy_all(&src, &mut dst, &self.path)?;
        Ok(())
    }
}

/// Copies every page of `src` into `dst` in one step, retrying while the other side is locked.
fn copy_all(src: &Connection, dst: &mut Connection, live: &Path) -> Result<(), SqliteError> {
    let backup = Backup::new(src, dst).map_err(err("start the backup of", live))?;
    let start = Instant::now();
    loop {
        if signals::interrupted() {
            return Err(SqliteError::Interrupted);
        }
        match backup.step(-1).map_err(err("copy", live))? {
            StepResult::Done => return Ok(()),
            StepResult::More => continue,
            StepResult::Busy | StepResult::Locked => {
                if start.elapsed() > BUSY_TIMEOUT {
                    return Err(SqliteError::Busy {
                        path: live.to_owned(),
                        secs: BUSY_TIMEOUT.as_secs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn open_read_only(path: &Path) -> Result<Connection, SqliteError> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err("open", path))
}

/// Opens `path` read-only and runs `PRAGMA integrity_check`: the pages, and every index
/// against its table.
pub fn integrity_check(path: &Path) -> Result<(), SqliteError> {
    pragma_check(path, "integrity_check")
}

/// Opens `path` read-only and runs `PRAGMA quick_check`: every page, cell, record format and
/// constraint, but not whether each index holds exactly its table's rows.
pub fn quick_check(path: &Path) -> Result<(), SqliteError> {
    pragma_check(path, "quick_check")
}

fn pragma_check(path: &Path, check: &'static str) -> Result<(), SqliteError> {
    let conn = open_read_only(path)?;
    let mut stmt = conn
        .prepare(&format!("PRAGMA {check}"))
        .map_err(err("check", path))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.take(10).collect())
        .map_err(|source| match source {
            // A file that is not a database at all.
            rusqlite::Error::SqliteFailure(..) => SqliteError::Corrupt {
                path: path.to_owned(),
                check,
                problems: source.to_string(),
            },
            source => SqliteError::Sqlite {
                what: "check",
                path: path.to_owned(),
                source,
            },
        })?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(SqliteError::Corrupt {
            path: path.to_owned(),
            check,
            problems: rows.join("; "),
        })
    }
}

/// `io::copy` with 1 MiB pieces (its own are 8 KiB): a system call and a compressor call per
/// MiB of the copy.
fn copy_in_large_pieces(from: &mut dyn std::io::Read, to: &mut dyn Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// The rows of every table of the database at `path` (SQLite's own `sqlite_%` tables left
/// out), opened read-only: run on a backup's copy, they describe exactly what it holds.
pub fn count_rows(path: &Path) -> Result<RowCounts, SqliteError> {
    let conn = open_read_only(path)?;
    let tables: Vec<(String, bool)> = conn
        .prepare("SELECT name, coalesce(sql, '') LIKE 'CREATE VIRTUAL TABLE%' FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")
        .and_then(|mut stmt| stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(err("list the tables of", path))?;
    let mut counts = RowCounts::new();
    for (t, is_virtual) in tables {
        let quoted = format!("\"{}\"", t.replace('"', "\"\""));
        match conn.query_row(&format!("SELECT count(*) FROM {quoted}"), [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(n) => {
                counts.insert(t, u64::try_from(n).unwrap_or(0));
            }
            // A virtual table of an extension dbkeep does not load (sqlite-vec, spatialite):
            // not counted, here as in the drill; its shadow tables are.
            Err(e) if is_virtual => {
                tracing::debug!(table = %t, error = %e, "virtual table not counted");
            }
            Err(e) => return Err(err("count the rows of", path)(e)),
        }
    }
    Ok(counts)
}

/// `PRAGMA foreign_key_check` on the database at `path`: how many violations, and the first.
pub fn foreign_key_check(path: &Path) -> Result<(usize, Option<String>), SqliteError> {
    let conn = open_read_only(path)?;
    let mut stmt = conn
        .prepare("PRAGMA foreign_key_check")
        .map_err(err("check the foreign keys of", path))?;
    let violations: Vec<String> = stmt
        .query_map([], |r| {
            let table: String = r.get(0)?;
            let rowid: Option<i64> = r.get(1)?;
            let parent: String = r.get(2)?;
            Ok(format!(
                "a row of {table} (rowid {}) refers to a missing row of {parent}",
                rowid.map_or_else(|| "-".into(), |id| id.to_string())
            ))
        })
        .and_then(Iterator::collect)
        .map_err(err("check the foreign keys of", path))?;
    Ok((violations.len(), violations.into_iter().next()))
}

impl DatabaseEngine for Sqlite {
    fn database_type(&self) -> DatabaseType {
        DatabaseType::Sqlite
    }

    fn snapshots_to_a_file(&self) -> bool {
        true
    }

    /// The snapshot into the scratch file, then streamed into `out`; the copy is checked
    /// (`quick_check`, and counted) on another core while it is compressed and stored, and a
    /// copy that fails the check is never committed.
    fn dump(&self, req: DumpRequest<'_>, out: &mut dyn Write) -> Result<DumpInfo, EngineError> {
        let path = req
            .scratch_file
            .ok_or_else(|| EngineError::Source("no scratch file for the SQLite snapshot".into()))?
            .to_owned();
        let info = self.snapshot(&path)?;
        let count = self.row_counts;
        let checked_path = path.clone();
        let check = std::thread::spawn(move || {
            quick_check(&checked_path)?;
            count.then(|| count_rows(&checked_path)).transpose()
        });
        let stored = std::fs::File::open(&path)
            .map_err(|source| EngineError::Io {
                what: "read the SQLite copy",
                source,
            })
            .and_then(|f| {
                let mut f = crate::faults::AfterBytes::new(f, 1 << 20, "during-compression");
                copy_in_large_pieces(&mut f, out).map_err(|source| EngineError::Io {
                    what: "store the SQLite copy",
                    source,
                })
            });
        let counts = check.join().map_err(|_| EngineError::Io {
            what: "check the SQLite copy",
            source: std::io::Error::other("the integrity check panicked"),
        })??;
        stored?;
        Ok(DumpInfo {
            row_counts: counts,
            ..info
        })
    }

    fn restore(&self, source: Source<'_>, _backup_db: &str) -> Result<RestoreReport, EngineError> {
        let Source::File(file) = source else {
            return Err(EngineError::Source(
                "no checked copy to restore from".into(),
            ));
        };
        self.restore_from(file)?;
        Ok(RestoreReport::default())
    }

    /// The checked copy is the scratch target: its foreign keys and row counts.
    fn drill(
        &self,
        source: Source<'_>,
        expected: Option<&RowCounts>,
        log: &mut DrillLog,
    ) -> Result<(), EngineError> {
        log.step("restore");
        let Source::File(file) = source else {
            return Err(EngineError::Drill("no restored copy to check".into()));
        };
        log.pass("restored into a temporary file");
        log.step("foreign_key_check");
        let (violations, first) = foreign_key_check(file)?;
        if violations > 0 {
            return Err(EngineError::Drill(format!(
                "PRAGMA foreign_key_check finds {violations} violation(s), the first: {}",
                first.unwrap_or_default()
            )));
        }
        log.pass("foreign_key_check: no violations");
        log.step("row counts");
        let counts = count_rows(file)?;
        log.pass(super::compare_counts(expected, &counts).map_err(EngineError::Drill)?);
        Ok(())
    }
}
