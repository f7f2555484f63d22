//! The catalog: one JSON manifest per backup, and what is derived from the manifests (the list,
//! the statistics).
//!
//! Keys in the repository, for a backup named `N`:
//! - `N.manifest.json`: the manifest of the successful backup `N`;
//! - `N.manifest.failed.json`: the manifest of the latest failed attempt at `N` (so a failed
//!   `--replace` never overwrites the good backup's manifest);
//! - the data file named by the manifest: `N` + `.sql` (PostgreSQL plain), `.dump` (PostgreSQL
//!   custom) or `.db` (SQLite) + `.gz`/`.zst` when compressed + `.age` when encrypted.
//!
//! Architecture Invariant: the manifest is written last and is the commit point. A data file
//! without a manifest does not exist for list, restore or retention.

use crate::codec::Compression;
use crate::engine::{DatabaseType, PgFormat};
use crate::storage::{Storage, StorageError};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The newest manifest version this dbkeep reads.
pub const MANIFEST_VERSION: u32 = 3;
/// A base backup's manifest (a dbkeep reading version 2 would take it for a dump).
pub const MANIFEST_VERSION_3: u32 = 3;
/// A manifest that a dbkeep reading version 2 would misread (an archive pg_dump compressed, a
/// pin).
pub const MANIFEST_VERSION_2: u32 = 2;
/// What a manifest is written as unless it needs more ([`Manifest::required_version`]).
pub const MANIFEST_VERSION_BASE: u32 = 1;
const OK_SUFFIX: &str = ".manifest.json";
const FAILED_SUFFIX: &str = ".manifest.failed.json";

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the manifest {key} is not valid: {problem}")]
    Invalid { key: String, problem: String },
    #[error("cannot encode the manifest of {name}: {source}")]
    Encode {
        name: String,
        source: serde_json::Error,
    },
}

mod rfc3339_seconds {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// One backup, or one failed attempt. The first eight fields are the spec's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub backup_name: String,
    /// Where the data file is, as the spec shows it (`./backups/x.sql.gz`); `null` when failed.
    pub file_path: Option<String>,
    /// Bytes stored (after compression).
    pub file_size: u64,
    pub compressed: bool,
    pub database_type: DatabaseType,
    /// When the backup started, RFC 3339 UTC.
    #[serde(with = "rfc3339_seconds")]
    pub timestamp: DateTime<Utc>,
    /// Seconds the backup took.
    pub duration: f64,
    pub success: bool,
    /// Why a failed attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// SHA-256 of the stored bytes.
    pub sha256: Option<String>,
    pub compression: Compression,
    /// A custom archive whose data pg_dump compressed (`compression`: gzip), as `pg_dump -Fc`
    /// does: the stored bytes (before `.age`) are the archive itself, which pg_restore reads in
    /// place; dbkeep's codec did not run. Such a manifest is `manifest_version` 2.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archive_compressed: bool,
    /// `dbkeep pin`: retention never deletes it. A pinned manifest is `manifest_version` 2, so
    /// that a dbkeep that does not know pins keeps it (as unreadable) rather than age it out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    /// `age` when the stored bytes are an age file (compress, then encrypt).
    #[serde(default)]
    pub encryption: crate::encryption::Encryption,
    /// PostgreSQL only: the dump's format (absent in manifests before it existed: `sql`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_format: Option<PgFormat>,
    /// The data file's key in the repository.
    pub data_file: Option<String>,
    pub series: String,
    pub database_name: String,
    /// Host (and port) of the database, never credentials; `null` for SQLite.
    pub database_host: Option<String>,
    pub server_version: Option<String>,
    /// Version of the dump tool (pg_dump, or the SQLite library).
    pub tool_version: Option<String>,
    /// Rows per table, counted in the snapshot the dump holds (PostgreSQL: the transaction whose
    /// snapshot pg_dump imported; SQLite: the copy); what a restore drill checks against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_counts: Option<crate::engine::RowCounts>,
    /// A base backup's cluster and WAL range (`pg_format`: physical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_backup: Option<crate::engine::BaseBackup>,
    /// The latest recovery drill from this base backup to a point (`dbkeep verify --restore
    /// --to-time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr_verification: Option<Verification>,
    /// The latest restore drill of this backup (`dbkeep verify --restore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// The retention this backup's run asked for; `prune` applies it to the series.
    pub retention_days: u32,
    pub keep_min: u32,
    /// When the manifest was written.
    pub finished_at: DateTime<Utc>,
    /// Copies of this backup in other repositories (`copy_to`, `dbkeep copy`), and failed ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyRecord>,
    pub dbkeep_version: String,
    pub manifest_version: u32,
}

/// The outcome of a restore drill: the backup was restored into a throwaway target and checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Full precision: which drill came last decides healthz.
    pub verified_at: DateTime<Utc>,
    pub outcome: DrillOutcome,
    /// What was checked (row counts, integrity, indexes, …), in order; of a failed drill,
    /// what passed before the failure.
    pub checks: Vec<String>,
    /// Of a failed drill: the check that failed (`stored file`, `restore`, `row counts`,
    /// `amcheck`, `foreign_key_check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_check: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds the drill took.
    pub duration: f64,
    /// Of a recovery drill: the point recovered to (a time, a WAL position, or `end of the
    /// archive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillOutcome {
    Passed,
    Failed,
}

/// A copy of a backup in another repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyRecord {
    /// The repository, as a path or URL without credentials.
    pub repository: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(with = "rfc3339_seconds")]
    pub at: DateTime<Utc>,
}

impl Manifest {
    /// The `manifest_version` this manifest needs: 3 for a base backup (a dbkeep reading
    /// version 2 would take it for a dump), 2 when a dbkeep reading version 1 would misread it
    /// (an archive pg_dump compressed, a pin), else 1.
    pub fn required_version(&self) -> u32 {
        if self.base_backup.is_some() || self.pg_format == Some(PgFormat::Physical) {
            MANIFEST_VERSION_3
        } else if self.archive_compressed || self.pinned {
            MANIFEST_VERSION_2
        } else {
            MANIFEST_VERSION_BASE
        }
    }

    /// The codec dbkeep decodes the stored stream with (after decryption): none when pg_dump
    /// compressed the archive itself.
    pub fn stream_compression(&self) -> Compression {
        if self.archive_compressed {
            Compression::None
        } else {
            self.compression
        }
    }

    /// Records the outcome of a copy to `repository`, replacing an earlier record of it.
    pub fn record_copy(&mut self, record: CopyRecord) {
        self.copies.retain(|c| c.repository != record.repository);
        self.copies.push(record);
    }

    /// The copies that failed and were not completed since.
    pub fn failed_copies(&self) -> impl Iterator<Item = &CopyRecord> {
        self.copies.iter().filter(|c| !c.ok)
    }

    pub fn key(&self) -> String {
        manifest_key(&self.backup_name, self.success)
    }

    pub fn to_json(&self) -> Result<Vec<u8>, CatalogError> {
        let mut v = serde_json::to_vec_pretty(self).map_err(|source| CatalogError::Encode {
            name: self.backup_name.clone(),
            source,
        })?;
        v.push(b'\n');
        Ok(v)
    }

    pub fn timestamp_text(&self) -> String {
        self.timestamp.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    pub fn size_mb(&self) -> f64 {
        bytes_to_mb(self.file_size)
    }
}

pub fn bytes_to_mb(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 100.0).round() / 100.0
}

/// The manifest key of `name`: successful or failed.
pub fn manifest_key(name: &str, success: bool) -> String {
    format!("{name}{}", if success { OK_SUFFIX } else { FAILED_SUFFIX })
}

/// The backup name a manifest key is of.
pub fn backup_name_of(key: &str) -> Option<&str> {
    key.strip_suffix(OK_SUFFIX)
        .or_else(|| key.strip_suffix(FAILED_SUFFIX))
}

/// Whether `key` is a manifest (of either kind).
pub fn is_manifest_key(key: &str) -> bool {
    !key.starts_with('.') && (key.ends_with(OK_SUFFIX) || key.ends_with(FAILED_SUFFIX))
}

/// Every manifest in the repository, newest first, with the manifests that could not be read.
#[derive(Debug, Default)]
pub struct Catalog {
    pub backups: Vec<Manifest>,
    /// Manifests that exist but cannot be read (damaged, edited, or written by a newer dbkeep),
    /// with the reason. Retention never deletes them, and nothing that may be their data is
    /// deleted while they exist ([`Catalog::may_own`]).
    pub unreadable: Vec<CatalogError>,
}

impl Catalog {
    /// Reads every manifest. Their per-table row counts are left out (`row_counts: None`):
    /// a schema-per-tenant database of 50,000 tables and a year of backups would otherwise
    /// hold gigabytes in every catalog (and the API's cache); the drill that compares them
    /// reads them from the one manifest it drills ([`read_row_counts`]).
    pub fn load(storage: &dyn Storage) -> Result<Self, CatalogError> {
        let mut cat = Catalog::default();
        for obj in storage.list()? {
            if !is_manifest_key(&obj.key) {
                continue;
            }
            match read_manifest(storage, &obj.key) {
                Ok(mut m) => {
                    m.row_counts = None;
                    cat.backups.push(m);
                }
                Err(e @ CatalogError::Invalid { .. }) => cat.unreadable.push(e),
                Err(CatalogError::Storage(StorageError::NotFound { .. })) => {} // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        cat.backups.sort_by(|a, b| {
            b.timestamp
                .cmp(&a.timestamp)
                .then(b.finished_at.cmp(&a.finished_at))
                .then(a.backup_name.cmp(&b.backup_name))
        });
        Ok(cat)
    }

    /// The successful backup `name`, if any.
    pub fn successful(&self, name: &str) -> Option<&Manifest> {
        self.backups
            .iter()
            .find(|m| m.success && m.backup_name == name)
    }

    /// The newest successful backup.
    pub fn latest_successful(&self) -> Option<&Manifest> {
        self.backups.iter().find(|m| m.success)
    }

    /// Data files that some readable manifest names.
    pub fn referenced_data(&self) -> impl Iterator<Item = &str> {
        self.backups.iter().filter_map(|m| m.data_file.as_deref())
    }

    /// Whether the object `key` may belong to a backup: a readable manifest names it, or it is
    /// of the name of a backup whose manifest cannot be read (`NAME.…` for `NAME.manifest.json`).
    pub fn may_own(&self, key: &str) -> bool {
        self.referenced_data().any(|d| d == key)
            || self.unreadable.iter().any(|e| match e {
                CatalogError::Invalid { key: manifest, .. } => backup_name_of(manifest)
                    .is_some_and(|name| key.starts_with(&format!("{name}."))),
                _ => true,
            })
    }
}

impl Catalog {
    /// The most recent restore drill of any backup, with its backup.
    pub fn last_drill(&self) -> Option<(&Manifest, &Verification)> {
        self.backups
            .iter()
            .filter_map(|m| m.verification.as_ref().map(|v| (m, v)))
            .max_by_key(|(_, v)| v.verified_at)
    }
}

/// The row counts that the manifest of `m` holds, read again from storage (the catalog leaves
/// them out): `None` when it has none; an error when the manifest is gone or is no longer the
/// one `m` describes (another data file or SHA-256: replaced meanwhile).
pub fn read_row_counts(
    storage: &dyn Storage,
    m: &Manifest,
) -> Result<Option<crate::engine::RowCounts>, CatalogError> {
    let full = read_manifest(storage, &m.key())?;
    if full.sha256 != m.sha256 || full.data_file != m.data_file {
        return Err(CatalogError::Invalid {
            key: m.key(),
            problem: "it was replaced while it was being read (another data file or SHA-256)"
                .into(),
        });
    }
    Ok(full.row_counts)
}

/// Reads and checks one manifest.
pub fn read_manifest(storage: &dyn Storage, key: &str) -> Result<Manifest, CatalogError> {
    let bytes = storage.read_all(key)?;
    // The version first: a newer dbkeep's manifest may hold values this one cannot read, and
    // must then be unreadable (kept, with its data), never half understood.
    let version = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.get("manifest_version")
                .and_then(serde_json::Value::as_u64)
        });
    if let Some(v) = version.filter(|v| *v > u64::from(MANIFEST_VERSION)) {
        return Err(CatalogError::Invalid {
            key: key.to_owned(),
            problem: format!(
                "it was written by a newer dbkeep (manifest_version {v}; this one reads up to {MANIFEST_VERSION}): upgrade dbkeep to use it; it and its data are kept"
            ),
        });
    }
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| CatalogError::Invalid {
        key: key.to_owned(),
        problem: e.to_string(),
    })?;
    if manifest_key(&m.backup_name, m.success) != key {
        return Err(CatalogError::Invalid {
            key: key.to_owned(),
            problem: format!(
                "it names the backup {:?} (success: {}), which belongs under another key",
                m.backup_name, m.success
            ),
        });
    }
    // The data file must be one of this backup's own names: never a path.
    if let Some(d) = &m.data_file
        && (!d.starts_with(&format!("{}.", m.backup_name)) || d.contains('/') || d.contains('\\'))
    {
        return Err(CatalogError::Invalid {
            key: key.to_owned(),
            problem: format!(
                "its data_file {d:?} is not a file of the backup {:?}",
                m.backup_name
            ),
        });
    }
    if m.success && (m.sha256.is_none() || m.data_file.is_none()) {
        return Err(CatalogError::Invalid {
            key: key.to_owned(),
            problem: "a successful backup without sha256 or data_file".into(),
        });
    }
    Ok(m)
}

/// The `statistics` object of the spec's list response, with more.
#[derive(Debug, Clone, Serialize)]
pub struct Statistics {
    pub total_backups: usize,
    pub total_size_mb: f64,
    pub backup_directory: String,
    pub successful_backups: usize,
    pub failed_backups: usize,
    pub last_success: Option<String>,
    pub last_failure: Option<String>,
    pub unreadable_manifests: usize,
    pub free_space_bytes: Option<u64>,
    pub free_space_mb: Option<f64>,
    /// The most recent restore drill of any backup, if one ran.
    pub last_drill: Option<DrillSummary>,
    /// The configured database these are of (`default` for `DATABASE_URL`'s).
    pub database: String,
    /// Its schedules: each one's next run and last outcome.
    pub schedules: Vec<crate::schedule::ScheduleStatus>,
    /// Each notification channel's deliveries from this repository: failures, last error.
    pub notifications: std::collections::BTreeMap<String, crate::notify::ChannelStatus>,
    /// Point-in-time recovery, when the repository holds base backups: the window they and
    /// the WAL archive cover, and the last recovery drill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pitr: Option<PitrStatus>,
}

/// The recoverable window (`stats`): from the oldest base backup's consistency to the end of
/// the unbroken WAL after the newest.
#[derive(Debug, Clone, Serialize)]
pub struct PitrStatus {
    pub base_backups: usize,
    pub first_recoverable: String,
    pub last_recoverable: String,
    /// The first segment missing after the newest base backup, when a later one is archived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap: Option<String>,
    pub archived_segments: usize,
    /// The most recent recovery drill (`verify --restore --to-time`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_pitr_drill: Option<DrillSummary>,
}

impl PitrStatus {
    /// One line for `list` and `stats`: the window, a gap, the last recovery drill.
    pub fn describe(&self) -> String {
        let gap = self
            .gap
            .as_ref()
            .map(|g| format!(" (GAP: {g} is missing after the newest base backup)"))
            .unwrap_or_default();
        let drill = match &self.last_pitr_drill {
            None => "no recovery drill yet".to_owned(),
            Some(d) => format!(
                "last recovery drill {} ({}) {}",
                match d.outcome {
                    DrillOutcome::Passed => "passed",
                    DrillOutcome::Failed => "FAILED",
                },
                d.backup_name,
                d.verified_at
            ),
        };
        format!(
            "recoverable to any second from {} to {}{gap}: {} base backups, {} WAL segments; {drill}",
            self.first_recoverable,
            self.last_recoverable,
            self.base_backups,
            self.archived_segments
        )
    }
}

/// Which backup the most recent restore drill restored, when, and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct DrillSummary {
    pub backup_name: String,
    pub verified_at: String,
    pub outcome: DrillOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The statistics of `cat`, read from `storage` (`Ops::statistics` adds the database's
/// name, schedules and notification channels).
pub fn statistics(cat: &Catalog, storage: &dyn Storage) -> Statistics {
    let ok = cat.backups.iter().filter(|m| m.success);
    let total_bytes: u64 = cat.backups.iter().map(|m| m.file_size).sum();
    let free = storage.free_space();
    Statistics {
        total_backups: cat.backups.len(),
        total_size_mb: bytes_to_mb(total_bytes),
        backup_directory: storage.location(),
        successful_backups: ok.clone().count(),
        failed_backups: cat.backups.iter().filter(|m| !m.success).count(),
        last_success: ok.map(|m| m.timestamp_text()).next(),
        last_failure: cat
            .backups
            .iter()
            .find(|m| !m.success)
            .map(|m| m.timestamp_text()),
        unreadable_manifests: cat.unreadable.len(),
        free_space_bytes: free,
        free_space_mb: free.map(bytes_to_mb),
        last_drill: cat.last_drill().map(|(m, v)| DrillSummary {
            backup_name: m.backup_name.clone(),
            verified_at: v.verified_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            outcome: v.outcome,
            error: v.error.clone(),
        }),
        database: String::new(),
        schedules: Vec::new(),
        notifications: Default::default(),
        pitr: None,
    }
}

/// The spec's list response: `{"backups": [...], "statistics": {...}}`, newest first.
#[derive(Debug, Serialize)]
pub struct ListResponse<'a> {
    pub backups: &'a [Manifest],
    pub statistics: Statistics,
}
