//! The use cases, one module each: backup, copy, verify (and the read path they share), drill,
//! restore, delete and prune; list and statistics here. The CLI and the API call these;
//! nothing here knows clap or HTTP.
//!
//! Every command that changes the repository holds its lock, so two runs never interleave and a
//! restore never overlaps a backup, delete or prune. Reading (list, statistics, verify) needs no
//! lock: manifests appear atomically.

mod backup;
mod copy;
mod drill;
mod notify;
mod pin;
pub mod pitr;
mod pitr_status;
mod prune;
mod read;
mod restore;
mod schedule;
mod verify;
mod wal;
mod wal_prune;

pub use prune::{PruneOptions, PruneOutcome};
use read::{Depth, engine_source};
pub use read::{ScratchFile, Staged};
pub use restore::RESTORE_JOURNAL;
pub use schedule::ScheduleStatus;

use crate::catalog::{self, Catalog, Manifest, Statistics};
use crate::config::Settings;
use crate::database_url::DatabaseUrl;
use crate::encryption::{self, Keys};
use crate::engine::mysql::Mysql;
use crate::engine::postgres::Postgres;
use crate::engine::seam::DatabaseEngine;
use crate::engine::sqlite::Sqlite;
use crate::error::Error;
use crate::retention::{Candidate, Decision, Policy};
use crate::signals;
use crate::storage::{self, RepoLock, Storage};
use std::io;

use std::time::Duration;
use tracing::{info, warn};

/// What data files end with (before `.age`).
const DATA_SUFFIXES: [&str; 12] = [
    ".sql",
    ".sql.gz",
    ".sql.zst",
    ".dump",
    ".dump.gz",
    ".dump.zst",
    ".db",
    ".db.gz",
    ".db.zst",
    ".tar",
    ".tar.gz",
    ".tar.zst",
];

/// Data files without a manifest younger than this are left alone by prune: a backup may be
/// between writing its data and its manifest.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The configured database engine, behind the seam (`engine::seam`): `ops` never matches on
/// the database type.
pub struct Engine(Box<dyn DatabaseEngine>);

impl std::ops::Deref for Engine {
    type Target = dyn DatabaseEngine;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl Engine {
    pub fn from_settings(settings: &Settings) -> Result<(Self, DatabaseUrl), Error> {
        let url = settings.database_url()?;
        let engine: Box<dyn DatabaseEngine> = match &url {
            DatabaseUrl::Postgres(conn) => Box::new(
                Postgres::new(
                    conn.clone(),
                    settings.pg_bindir.clone(),
                    settings.pg_maintenance_db.clone(),
                    settings.restore_keep_old,
                    settings.stall_timeout,
                    settings.restore_jobs,
                    settings.row_counts,
                )
                .with_drill_sandbox(settings.drill_sandbox),
            ),
            DatabaseUrl::Sqlite { path } => {
                Box::new(Sqlite::new(path.clone()).with_row_counts(settings.row_counts))
            }
            DatabaseUrl::Mysql(conn) => Box::new(Mysql::new(
                conn.clone(),
                settings.restore_keep_old,
                settings.stall_timeout,
                settings.row_counts,
            )),
        };
        Ok((Engine(engine), url))
    }
}

/// What `backup` was asked to do.
#[derive(Debug, Default, Clone)]
pub struct BackupRequest {
    pub name: Option<String>,
    pub series: Option<String>,
    /// Overrides `BACKUP_COMPRESS` (the API's `compress` field; `--no-compress`).
    pub compress: Option<bool>,
    pub replace: bool,
    /// A base backup of the whole cluster (PostgreSQL), whatever `BACKUP_PG_FORMAT` says.
    pub physical: bool,
}

#[derive(Debug)]
pub struct BackupOutcome {
    pub manifest: Manifest,
    /// Copies to other repositories that failed (the backup itself is complete).
    pub copy_errors: Vec<String>,
    /// Retention decisions for the backup's series.
    pub retention: Vec<Decision>,
    /// What retention has to say (a limit that spared backups).
    pub retention_notes: Vec<String>,
    /// Deletions that retention planned but could not carry out.
    pub retention_errors: Vec<String>,
}

#[derive(Debug)]
pub struct RestoreOutcome {
    pub manifest: Manifest,
    pub duration: f64,
    /// PostgreSQL: the previous database, kept under this name.
    pub kept_old: Option<String>,
    /// PostgreSQL: seconds the live name refused connections (blocked until the swap).
    pub unavailable: Option<f64>,
}

#[derive(Debug)]
pub struct VerifyReport {
    pub name: String,
    pub result: Result<Vec<String>, Error>,
}

#[derive(Debug)]
pub enum VerifyTarget {
    Latest,
    Named(String),
    All,
}

pub struct Ops {
    settings: Settings,
    storage: Box<dyn Storage>,
    catch_signals: bool,
    /// The schedule whose run this is (in its events).
    schedule: Option<String>,
}

/// The first line of an error, at most 300 characters.
fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

fn database_identity(m: &Manifest) -> String {
    // Base backups are kept apart from dumps: a series' keep_min counts each kind on its own,
    // so daily dumps never age out the last base backup (nor the other way round).
    let kind = if m.pg_format == Some(crate::engine::PgFormat::Physical) {
        "+base"
    } else {
        ""
    };
    format!(
        "{}{kind}://{}/{}",
        m.database_type,
        m.database_host.as_deref().unwrap_or(""),
        m.database_name
    )
}

fn candidate(m: &Manifest) -> Candidate {
    Candidate {
        name: m.backup_name.clone(),
        database: database_identity(m),
        series: m.series.clone(),
        timestamp: m.timestamp,
        success: m.success,
        pinned: m.pinned,
        policy: Policy {
            retention_days: m.retention_days,
            keep_min: m.keep_min,
        },
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io {
        io_context: what.to_owned(),
        source,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Ops {
    /// Operations on the repository `BACKUP_DIR` names (a directory or an `s3://` URL).
    pub fn new(settings: Settings) -> Result<Self, storage::StorageError> {
        let location = settings.backup_dir.to_string_lossy().into_owned();
        let storage = storage::open(&location, &settings.s3, settings.scratch_dir.as_deref())?;
        Ok(Self::with_storage(settings, storage))
    }

    /// The same operations on another repository (a path or URL; a configured `copy_to`
    /// brings its own settings).
    pub fn on(&self, location: &str) -> Result<Self, Error> {
        let target = self.settings.copy_target(location);
        Ok(Self {
            settings: self.settings.clone(),
            storage: self.open_target(&target)?,
            catch_signals: self.catch_signals,
            schedule: self.schedule.clone(),
        })
    }

    /// The same operations on the configured database `name` (its own repository and
    /// settings).
    pub fn for_database(&self, name: &str) -> Result<Self, Error> {
        let ops = Ops::new(self.settings.for_database(name)?)?;
        Ok(Self {
            catch_signals: self.catch_signals,
            ..ops
        })
    }

    /// Operations on every configured database, by name.
    pub fn all_databases(&self) -> Result<Vec<Self>, Error> {
        self.settings
            .all_databases()
            .iter()
            .map(|s| self.for_database(&s.database))
            .collect()
    }

    pub fn with_storage(settings: Settings, storage: Box<dyn Storage>) -> Self {
        Self {
            settings,
            storage,
            catch_signals: true,
            schedule: None,
        }
    }

    /// For the server: operations do not install signal handlers (the server decides when to
    /// abort them, with [`signals::request_abort`]).
    pub fn without_signal_handlers(mut self) -> Self {
        self.catch_signals = false;
        self
    }

    fn install_signals(&self) -> Result<(), Error> {
        if self.catch_signals {
            signals::install().map_err(Error::Signals)?;
        }
        Ok(())
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    fn lock(&self, purpose: &str) -> Result<RepoLock, Error> {
        let lock = self.storage.lock(purpose, self.settings.lock_timeout)?;
        // Tidying up never stops the run (a temp object the credentials may not delete).
        match self.storage.remove_stale_temps() {
            Ok(0) => {}
            Ok(removed) => info!(
                removed,
                "removed temporary files left by an interrupted run"
            ),
            Err(e) => {
                warn!(error = %e, "could not remove the temporary files of an interrupted run")
            }
        }
        Ok(lock)
    }

    pub fn catalog(&self) -> Result<Catalog, Error> {
        let cat = Catalog::load(self.storage.as_ref())?;
        for e in &cat.unreadable {
            warn!(error = %e, "skipping an unreadable manifest");
        }
        Ok(cat)
    }

    pub fn statistics(&self, cat: &Catalog) -> Statistics {
        let mut stats = catalog::statistics(cat, self.storage.as_ref());
        stats.database = self.settings.database.clone();
        stats.schedules = self.schedules_of(cat, chrono::Utc::now());
        stats.notifications = self.notification_status();
        stats.pitr = self.pitr_status(cat);
        stats
    }

    /// The configured keys for encrypted backups, if any.
    fn keys(&self) -> Result<Option<Keys>, Error> {
        Ok(encryption::keys(
            self.settings.decrypt_identity_file.as_deref(),
            self.settings.encrypt_passphrase_file.as_deref(),
        )?)
    }

    fn not_found(&self, name: &str) -> Error {
        Error::NotFound {
            name: name.to_owned(),
            location: self.storage.location(),
        }
    }
}
