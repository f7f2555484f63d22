//! The engine seam: what `ops` asks of every database engine, so that the use cases never
//! `match` on the database type. An engine takes a consistent dump into a sink (with its row
//! counts and tool versions), restores from a checked source without ever leaving the live
//! database half-done, drills into a scratch target of its own, and cleans up after a restore
//! it was killed in. A new engine is a folder beside `postgres/` with one `impl` of
//! [`DatabaseEngine`].

use super::mysql::MysqlError;
use super::postgres::PostgresError;
pub use super::postgres::physical::receive::Receiver;
use super::sqlite::SqliteError;
use super::{DatabaseType, DrillLog, DumpInfo, PgFormat, RowCounts};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// What a restore or drill loads: the dump as a stream, or a file (a staged custom archive, a
/// checked SQLite copy).
pub enum Source<'a> {
    Stream(&'a mut dyn Read),
    File(&'a Path),
}

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Sqlite(#[from] SqliteError),
    #[error(transparent)]
    Mysql(#[from] MysqlError),
    /// A drill found the restored copy wrong: what, for the drill's report.
    #[error("{0}")]
    Drill(String),
    /// The source is not what this engine loads (a stream where it needs a file).
    #[error("{0}")]
    Source(String),
    /// What this engine does not do (point-in-time recovery of SQLite, say).
    #[error("{0}")]
    Unsupported(String),
    /// Reading the snapshot or writing the sink failed (the sink is the repository's writer: a
    /// full disk shows here).
    #[error("cannot {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What a dump is asked for (engines ignore what does not apply to them).
#[derive(Debug, Clone, Copy)]
pub struct DumpRequest<'a> {
    pub format: PgFormat,
    /// A custom archive that pg_dump compresses itself with gzip at this level.
    pub archive_level: Option<u32>,
    /// A private scratch file, for an engine that snapshots to a file first
    /// ([`DatabaseEngine::snapshots_to_a_file`]).
    pub scratch_file: Option<&'a Path>,
    /// A private, empty directory, for an engine that spools there first (a PostgreSQL base
    /// backup: [`PgFormat::Physical`]).
    pub spool_dir: Option<&'a Path>,
}

/// How a restore went.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// The previous database, kept under this name.
    pub kept_old: Option<String>,
    /// How long the live name refused connections (blocked until the swap), if it did.
    pub unavailable: Option<Duration>,
}

/// One check of a server's readiness for point-in-time recovery.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was found, and when not ok, what to change.
    pub detail: String,
}

/// What a server says about its readiness for point-in-time recovery (`dbkeep wal check`):
/// each check, and the cluster's identity when a replication connection could be made.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Readiness {
    pub checks: Vec<Check>,
    /// The cluster's system identifier (`IDENTIFY_SYSTEM`): one archive per cluster.
    pub system_identifier: Option<String>,
    pub timeline: Option<u32>,
    /// The server's current WAL write position.
    pub lsn: Option<String>,
    /// WAL senders not in use (a base backup needs two).
    #[serde(skip)]
    pub free_senders: Option<u32>,
    /// Advice that does not make the server unready (an unbounded slot, say).
    pub advice: Vec<String>,
}

impl Check {
    /// A check that found `found`; when not `ok`, its detail also says `fix`.
    pub fn new(name: &'static str, ok: bool, found: String, fix: &str) -> Self {
        let detail = if ok { found } else { format!("{found}: {fix}") };
        Self { name, ok, detail }
    }
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// A replication slot's state (`pg_replication_slots`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotHealth {
    /// reserved, extended, unreserved or lost (WAL it needed was removed).
    pub wal_status: String,
    /// WAL the server keeps for the slot.
    pub retained_bytes: Option<i64>,
    /// How much more WAL may be written before the slot is lost (`max_slot_wal_keep_size`).
    pub safe_wal_size: Option<i64>,
    pub active: bool,
}

/// An engine that streams WAL for point-in-time recovery (PostgreSQL).
pub trait WalSource {
    /// Creates the replication slot `slot` unless it exists.
    fn ensure_slot(&self, slot: &str) -> Result<(), EngineError>;
    /// Drops the replication slot `slot` (a lost one, to start over).
    fn drop_slot(&self, slot: &str) -> Result<(), EngineError>;
    /// Starts receiving WAL on `slot` into the directory `spool`.
    fn receive(&self, spool: &Path, slot: &str) -> Result<Receiver, EngineError>;
    /// The slot's state; `None` when it does not exist.
    fn slot_health(&self, slot: &str) -> Result<Option<SlotHealth>, EngineError>;
    /// The timeline the server writes; `None` while it is in recovery (a standby).
    fn server_timeline(&self) -> Result<Option<u32>, EngineError>;
}

/// A database engine, as `ops` uses it.
pub trait DatabaseEngine: Send + Sync {
    fn database_type(&self) -> DatabaseType;

    /// Whether [`DatabaseEngine::dump`] needs a scratch file (SQLite's snapshot).
    fn snapshots_to_a_file(&self) -> bool {
        false
    }

    /// A consistent dump into `out` (the codec's input), with the row counts it holds and the
    /// versions of the server and tool; an error if it is not complete.
    fn dump(&self, req: DumpRequest<'_>, out: &mut dyn Write) -> Result<DumpInfo, EngineError>;

    /// Replaces the live database with `source` (of a backup of the database `backup_db`),
    /// never leaving it half-done: on any failure it is as it was.
    fn restore(&self, source: Source<'_>, backup_db: &str) -> Result<RestoreReport, EngineError>;

    /// Restores `source` into a scratch target and checks it there (row counts against
    /// `expected`, the engine's own checks), recording each check in `log`; the target is
    /// removed afterwards, and the live database never touched.
    fn drill(
        &self,
        source: Source<'_>,
        expected: Option<&RowCounts>,
        log: &mut DrillLog,
    ) -> Result<(), EngineError>;

    /// Whether the server can serve point-in-time recovery (base backups and a WAL stream).
    fn pitr_readiness(&self) -> Result<Readiness, EngineError> {
        Err(EngineError::Unsupported(format!(
            "point-in-time recovery is for PostgreSQL; DATABASE_URL names a {} database",
            self.database_type()
        )))
    }

    /// The engine's WAL stream, if it has one.
    fn wal_source(&self) -> Option<&dyn WalSource> {
        None
    }

    /// Cleans up after a restore killed on this host; says what it did.
    fn recover_interrupted(&self) -> Result<Vec<String>, EngineError> {
        Ok(Vec::new())
    }
}
