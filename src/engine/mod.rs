//! Database engines: take a consistent dump, and restore one, for each kind of database.
//!
//! Architecture Invariant: an engine knows nothing of compression, checksums or storage. It writes
//! a dump to a `Write` (PostgreSQL) or a local file (SQLite) and restores from a `Read` or a file;
//! `ops` wires it to `codec` and `storage`.

pub mod format;
pub mod mysql;
pub mod postgres;
pub mod process;
pub mod retarget;
pub mod seam;
pub mod sqlite;
pub mod watch;

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseType {
    Postgresql,
    Sqlite,
    /// MySQL or MariaDB (the server's version in the manifest says which).
    Mysql,
}

impl DatabaseType {
    /// The data file's extension before any compression suffix.
    pub fn extension(self) -> &'static str {
        match self {
            DatabaseType::Postgresql | DatabaseType::Mysql => ".sql",
            DatabaseType::Sqlite => ".db",
        }
    }
}

impl fmt::Display for DatabaseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatabaseType::Postgresql => "postgresql",
            DatabaseType::Sqlite => "sqlite",
            DatabaseType::Mysql => "mysql",
        })
    }
}

/// The format of a PostgreSQL dump (`BACKUP_PG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgFormat {
    /// Plain SQL (`pg_dump --format=plain --clean --if-exists --create`), restored with psql:
    /// the spec's format, readable with any text tool.
    #[default]
    Sql,
    /// pg_dump's custom archive (`-Fc`, pg_dump's own compression off), restored with
    /// `pg_restore -j N`: parallel restore, and selective restore by hand.
    Custom,
    /// A base backup of the whole cluster (pg_basebackup, with the WAL it needs): restored
    /// into a data directory (`restore --pgdata`), the start of point-in-time recovery.
    Physical,
}

impl PgFormat {
    pub fn name(self) -> &'static str {
        match self {
            PgFormat::Sql => "sql",
            PgFormat::Custom => "custom",
            PgFormat::Physical => "physical",
        }
    }

    /// The data file's extension before any compression suffix.
    pub fn extension(self) -> &'static str {
        match self {
            PgFormat::Sql => ".sql",
            PgFormat::Custom => ".dump",
            PgFormat::Physical => ".tar",
        }
    }
}

/// Rows per table (`schema.table` for PostgreSQL, the table's name for SQLite), counted in the
/// very snapshot the dump holds.
pub type RowCounts = std::collections::BTreeMap<String, u64>;

/// What an engine tells about the dump it took, for the manifest.
#[derive(Debug, Clone, Default)]
pub struct DumpInfo {
    pub server_version: Option<String>,
    pub tool_version: Option<String>,
    pub row_counts: Option<RowCounts>,
    /// Of a base backup: its WAL range and cluster.
    pub base_backup: Option<BaseBackup>,
}

/// What a base backup's manifest records beside the rest: the cluster it is of (one archive
/// per cluster) and the WAL from its start to the point where it is consistent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseBackup {
    /// The cluster's system identifier (`IDENTIFY_SYSTEM`, pg_controldata's).
    pub system_identifier: String,
    pub timeline: u32,
    pub start_lsn: String,
    /// Where the backup is consistent: recovery must replay at least to here.
    pub stop_lsn: String,
}

/// Compares a drill's row counts with the manifest's; says what matched or what differs.
pub fn compare_counts(expected: Option<&RowCounts>, found: &RowCounts) -> Result<String, String> {
    // The drill's progress shows the rows it counted.
    if let Some(p) = crate::progress::current() {
        p.set_phase("comparing row counts");
        p.set_rows(found.values().sum());
    }
    let Some(expected) = expected else {
        return Ok(format!(
            "{} tables, {} rows (the manifest has no row counts to compare: a backup made before dbkeep counted rows, or BACKUP_ROW_COUNTS=false)",
            found.len(),
            found.values().sum::<u64>()
        ));
    };
    let mut differences = Vec::new();
    for (table, want) in expected {
        match found.get(table) {
            Some(got) if got == want => {}
            Some(got) => differences.push(format!("{table}: {got} rows, the backup had {want}")),
            None => differences.push(format!("{table}: missing, the backup had {want} rows")),
        }
    }
    for table in found.keys().filter(|t| !expected.contains_key(*t)) {
        differences.push(format!("{table}: not in the backup's counts"));
    }
    if differences.is_empty() {
        Ok(format!(
            "row counts of all {} tables equal the manifest's ({} rows)",
            found.len(),
            found.values().sum::<u64>()
        ))
    } else {
        let n = differences.len();
        differences.truncate(10);
        Err(format!(
            "row counts differ from the manifest's in {n} tables: {}",
            differences.join("; ")
        ))
    }
}

/// What a restore drill has checked so far, and the step it is in: a drill that fails
/// records both, so the manifest says what passed before the failure and which check failed.
#[derive(Debug, Clone, Default)]
pub struct DrillLog {
    pub passed: Vec<String>,
    pub step: &'static str,
}

impl DrillLog {
    /// Enters the check `step` (`"stored file"`, `"restore"`, `"row counts"`, `"amcheck"`, …).
    pub fn step(&mut self, step: &'static str) {
        self.step = step;
    }

    /// Records a check that passed.
    pub fn pass(&mut self, what: impl Into<String>) {
        self.passed.push(what.into());
    }
}
