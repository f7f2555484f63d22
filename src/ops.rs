//! The use cases: backup, restore, verify, delete, prune, list and statistics. The CLI calls
//! these (and so will the API and the scheduler); nothing here knows clap or HTTP.
//!
//! Every command that changes the repository holds its lock, so two runs never interleave and a
//! restore never overlaps a backup, delete or prune. Reading (list, statistics, verify) needs no
//! lock: manifests appear atomically.

use crate::catalog::{self, Catalog, CopyRecord, DrillOutcome, Manifest, Statistics, Verification};
use crate::codec::{self, Compression, Digest256, Encoder, HashingReader, HashingWriter, Tail};
use crate::config::{CopyTarget, Settings};
use crate::database_url::DatabaseUrl;
use crate::encryption::{self, Encryption, Keys, Sealed};
use crate::engine::postgres::{self, Postgres};
use crate::engine::sqlite::{self, Sqlite};
use crate::engine::{DatabaseType, DrillLog, DumpInfo, PgFormat};
use crate::error::Error;
use crate::naming::{self, BackupName};
use crate::retention::{self, Action, Candidate, Decision, Policy};
use crate::signals;
use crate::storage::{self, RepoLock, Storage, TEMP_PREFIX};
use chrono::Utc;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tracing::{info, warn};

/// What data files end with (before `.age`).
const DATA_SUFFIXES: [&str; 9] = [
    ".sql",
    ".sql.gz",
    ".sql.zst",
    ".dump",
    ".dump.gz",
    ".dump.zst",
    ".db",
    ".db.gz",
    ".db.zst",
];

/// Data files without a manifest younger than this are left alone by prune: a backup may be
/// between writing its data and its manifest.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Written before a PostgreSQL restore moves the live database aside, removed when the restore
/// has ended either way: if it is still there, that restore was killed.
pub const RESTORE_JOURNAL: &str = ".dbkeep-restore.json";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RestoreJournal {
    database: String,
    aside: String,
    backup: String,
    started: chrono::DateTime<Utc>,
}

/// A configured database engine.
pub enum Engine {
    Postgres(Postgres),
    Sqlite(Sqlite),
}

impl Engine {
    pub fn from_settings(settings: &Settings) -> Result<(Self, DatabaseUrl), Error> {
        let url = settings.database_url()?;
        let engine = match &url {
            DatabaseUrl::Postgres(conn) => Engine::Postgres(Postgres::new(
                conn.clone(),
                settings.pg_bindir.clone(),
                settings.pg_maintenance_db.clone(),
                settings.restore_keep_old,
                settings.stall_timeout,
                settings.restore_jobs,
                settings.row_counts,
            )),
            DatabaseUrl::Sqlite { path } => Engine::Sqlite(Sqlite::new(path.clone())),
        };
        Ok((engine, url))
    }

    pub fn database_type(&self) -> DatabaseType {
        match self {
            Engine::Postgres(_) => DatabaseType::Postgresql,
            Engine::Sqlite(_) => DatabaseType::Sqlite,
        }
    }
}

/// A scratch file removed (with SQLite's side files) when dropped.
pub struct ScratchFile {
    path: PathBuf,
}

impl ScratchFile {
    /// Creates an empty scratch file (mode 0600) in `dir`.
    pub fn create(dir: &Path, what: &str) -> Result<Self, Error> {
        let path = storage::temp_path(dir, what);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| Error::Io {
                io_context: format!("create the scratch file {}", path.display()),
                source,
            })?;
        Ok(Self { path })
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
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
}

#[derive(Debug)]
pub struct BackupOutcome {
    pub manifest: Manifest,
    /// Copies to other repositories that failed (the backup itself is complete).
    pub copy_errors: Vec<String>,
    /// Retention decisions for the backup's series.
    pub retention: Vec<Decision>,
    /// Deletions that retention planned but could not carry out.
    pub retention_errors: Vec<String>,
}

#[derive(Debug)]
pub struct RestoreOutcome {
    pub manifest: Manifest,
    pub duration: f64,
    /// PostgreSQL: the previous database, kept under this name.
    pub kept_old: Option<String>,
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

#[derive(Debug, Default)]
pub struct PruneOutcome {
    pub decisions: Vec<Decision>,
    /// The policy of each (database, series).
    pub policies: BTreeMap<(String, String), Policy>,
    /// Temporary files of killed runs, removed (or, in a dry run, that would be).
    pub leftovers: Vec<String>,
    /// Data-like files that no manifest names, older than [`ORPHAN_GRACE`]: reported, never
    /// deleted (the backup directory may hold files dbkeep did not write).
    pub orphans: Vec<String>,
    /// Keys of multipart uploads begun more than [`ORPHAN_GRACE`] ago and never finished (a
    /// killed run, a server that went away mid-upload): aborted (or, in a dry run, that would be).
    pub stale_uploads: Vec<String>,
    /// What prune could not look at, and what to do about it (not an error).
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

/// Overrides for `prune`; otherwise each series keeps the policy its newest backup recorded.
#[derive(Debug, Default, Clone, Copy)]
pub struct PruneOptions {
    pub dry_run: bool,
    pub retention_days: Option<u32>,
    pub keep_min: Option<u32>,
}

pub struct Ops {
    settings: Settings,
    storage: Box<dyn Storage>,
    catch_signals: bool,
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
        })
    }

    pub fn with_storage(settings: Settings, storage: Box<dyn Storage>) -> Self {
        Self {
            settings,
            storage,
            catch_signals: true,
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
        let removed = self.storage.remove_stale_temps()?;
        if removed > 0 {
            info!(
                removed,
                "removed temporary files left by an interrupted run"
            );
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
        catalog::statistics(cat, self.storage.as_ref())
    }

    // ----- backup ---------------------------------------------------------------------------

    pub fn backup(&self, req: &BackupRequest) -> Result<BackupOutcome, Error> {
        let given = req.name.as_deref().map(BackupName::parse).transpose()?;
        let series = req
            .series
            .as_deref()
            .map(naming::parse_series)
            .transpose()?;
        let (engine, url) = Engine::from_settings(&self.settings)?;
        // Fail closed: an unusable recipient stops the backup before anything is written.
        let sealer = encryption::sealer(
            self.settings.encrypt_recipients.as_deref(),
            self.settings.encrypt_passphrase_file.as_deref(),
        )?;
        let encryption = if sealer.is_some() {
            Encryption::Age
        } else {
            Encryption::None
        };
        self.install_signals()?;
        let _lock = match self.lock(&format!(
            "backup {}",
            given.as_ref().map_or("(default name)", |n| n.as_str())
        )) {
            Ok(lock) => lock,
            // A run that waited out BACKUP_LOCK_TIMEOUT is recorded, so that
            // `.backups[0].success` shows it; the API's immediate 409 (no wait) is not a failed
            // backup, only a refused request.
            Err(e) if self.settings.lock_timeout.is_zero() => return Err(e),
            Err(e) => {
                let name = given
                    .clone()
                    .unwrap_or_else(|| BackupName::default_at(Utc::now()));
                let series = series
                    .clone()
                    .unwrap_or_else(|| naming::derive_series(&name));
                let mut m = self.attempt_manifest(
                    &name,
                    series,
                    engine.database_type(),
                    &url,
                    self.settings.codec(),
                    encryption,
                );
                m.error = Some(e.to_string());
                self.record_failure(&m);
                return Err(e);
            }
        };

        // The default name is taken once we hold the lock; a run in the same second waits for
        // the next one instead of failing.
        let mut started = Utc::now();
        let name = match given {
            Some(n) => {
                if !req.replace
                    && self
                        .storage
                        .stat(&catalog::manifest_key(n.as_str(), true))?
                        .is_some()
                {
                    return Err(Error::NameExists {
                        name: n.to_string(),
                    });
                }
                n
            }
            None => loop {
                let n = BackupName::default_at(started);
                if self
                    .storage
                    .stat(&catalog::manifest_key(n.as_str(), true))?
                    .is_none()
                {
                    break n;
                }
                std::thread::sleep(Duration::from_millis(200));
                started = Utc::now();
            },
        };
        let series = series.unwrap_or_else(|| naming::derive_series(&name));
        // The request's `compress` switch (the API's field, `--no-compress`) picks between none
        // and the configured codec (gzip when the configuration says none).
        let compression = match req.compress {
            None => self.settings.codec(),
            Some(false) => Compression::None,
            Some(true) if self.settings.compression == Compression::None => Compression::Gzip,
            Some(true) => self.settings.compression,
        };
        // A level configured for another codec does not apply to the one the request chose.
        let level = if compression == self.settings.compression {
            self.settings.level(compression)?
        } else {
            compression.default_level()
        };
        let db_type = engine.database_type();
        let pg_format = self.pg_format(db_type);
        let suffix = format!(
            "{}{}{}",
            pg_format.map_or(db_type.extension(), PgFormat::extension),
            compression.suffix(),
            encryption.suffix()
        );
        let mut key = format!("{name}{suffix}");
        if self.storage.stat(&key)?.is_some() {
            // Never write over an existing file: with --replace the old backup's data stays
            // intact until the new manifest is committed (then it is deleted).
            key = format!("{name}.{}{suffix}", started.format("%Y%m%dT%H%M%S%3fZ"));
        }
        info!(backup = %name, series = %series, database = %url, "backup started");
        let clock = Instant::now();

        let previous = if req.replace {
            catalog::read_manifest(
                self.storage.as_ref(),
                &catalog::manifest_key(name.as_str(), true),
            )
            .ok()
        } else {
            None
        };
        let mut manifest =
            self.attempt_manifest(&name, series, db_type, &url, compression, encryption);
        manifest.timestamp = started;

        let dumped = self.recover_interrupted_restore(&engine).and_then(|()| {
            self.dump_into(
                &engine,
                pg_format.unwrap_or_default(),
                &key,
                compression,
                level,
                sealer.as_ref(),
            )
        });
        manifest.duration = round3(clock.elapsed().as_secs_f64());
        manifest.finished_at = Utc::now();
        let (info_, digest) = match dumped {
            Ok(v) => v,
            Err(e) => {
                manifest.error = Some(e.to_string());
                self.record_failure(&manifest);
                return Err(e);
            }
        };
        manifest.success = true;
        manifest.file_path = Some(self.storage.display_path(&key));
        manifest.file_size = digest.size;
        manifest.sha256 = Some(digest.sha256);
        manifest.data_file = Some(key.clone());
        manifest.server_version = info_.server_version;
        manifest.tool_version = info_.tool_version;
        manifest.row_counts = info_.row_counts;
        // The commit point. A new name is created only if nobody else took it meanwhile (object
        // storage shared by several instances); --replace overwrites on purpose.
        let json = manifest.to_json()?;
        let committed = if req.replace {
            self.storage.put(&manifest.key(), &json)
        } else {
            self.storage.put_new(&manifest.key(), &json)
        };
        if let Err(e) = committed {
            // No manifest, no backup: the data goes too, and the attempt is recorded.
            if let Err(d) = self.storage.delete(&key) {
                warn!(error = %d, "could not remove the data file of a backup that failed to commit");
            }
            let e = Error::from(e);
            let mut failed = manifest.clone();
            failed.success = false;
            failed.error = Some(e.to_string());
            failed.file_path = None;
            failed.file_size = 0;
            failed.sha256 = None;
            failed.data_file = None;
            self.record_failure(&failed);
            return Err(e);
        }
        // From here on the backup exists: tidying up can only warn.
        if let Err(e) = self
            .storage
            .delete(&catalog::manifest_key(name.as_str(), false))
        {
            warn!(error = %e, "could not remove the record of an earlier failed attempt");
        }
        if let Some(old_key) = previous.and_then(|p| p.data_file).filter(|k| *k != key)
            && let Err(e) = self.storage.delete(&old_key)
        {
            warn!(error = %e, "could not remove the replaced backup's data file");
        }
        info!(
            backup = %name,
            size = manifest.file_size,
            sha256 = manifest.sha256.as_deref().unwrap_or(""),
            duration = manifest.duration,
            "backup completed"
        );

        // Then the copies (3-2-1): a failed one is reported, the primary copy stays.
        let copy_errors = self.copy_to_targets(&mut manifest, &self.settings.copy_to);

        let policy = Policy {
            retention_days: self.settings.retention_days,
            keep_min: self.settings.keep_min,
        };
        let cat = match self.catalog() {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("retention skipped: cannot read the catalog: {e}");
                warn!("{msg}");
                return Ok(BackupOutcome {
                    manifest,
                    copy_errors,
                    retention: Vec::new(),
                    retention_errors: vec![msg],
                });
            }
        };
        let candidates: Vec<Candidate> = cat
            .backups
            .iter()
            .filter(|m| {
                m.series == manifest.series && database_identity(m) == database_identity(&manifest)
            })
            .map(candidate)
            .collect();
        let retention = retention::plan(&candidates, |_, _| policy, Utc::now());
        let retention_errors = self.execute(&cat, &retention);
        Ok(BackupOutcome {
            manifest,
            copy_errors,
            retention,
            retention_errors,
        })
    }

    /// The dump format a new backup of `db_type` gets (PostgreSQL only).
    fn pg_format(&self, db_type: DatabaseType) -> Option<PgFormat> {
        match db_type {
            DatabaseType::Postgresql => Some(self.settings.pg_format),
            DatabaseType::Sqlite => None,
        }
    }

    /// The manifest of an attempt that has not succeeded (yet).
    fn attempt_manifest(
        &self,
        name: &BackupName,
        series: String,
        database_type: DatabaseType,
        url: &DatabaseUrl,
        compression: Compression,
        encryption: Encryption,
    ) -> Manifest {
        let started = Utc::now();
        Manifest {
            backup_name: name.to_string(),
            file_path: None,
            file_size: 0,
            compressed: compression != Compression::None,
            database_type,
            timestamp: started,
            duration: 0.0,
            success: false,
            error: None,
            sha256: None,
            compression,
            encryption,
            pg_format: self.pg_format(database_type),
            data_file: None,
            series,
            database_name: url.database_name(),
            database_host: match url {
                DatabaseUrl::Postgres(c) => Some(c.host_display()),
                DatabaseUrl::Sqlite { .. } => None,
            },
            server_version: None,
            tool_version: None,
            row_counts: None,
            verification: None,
            retention_days: self.settings.retention_days,
            keep_min: self.settings.keep_min,
            finished_at: Utc::now(),
            copies: Vec::new(),
            dbkeep_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest_version: catalog::MANIFEST_VERSION,
        }
    }

    /// Writes a failed attempt's manifest; a failure to do so is only logged.
    fn record_failure(&self, m: &Manifest) {
        let written = m
            .to_json()
            .map_err(Error::from)
            .and_then(|json| self.storage.put(&m.key(), &json).map_err(Error::from));
        if let Err(e) = written {
            warn!(error = %e, "could not record the failed attempt");
        }
    }

    /// Dumps the database into a new object `key`; returns what the engine reported and the
    /// stored size and SHA-256. Nothing is visible under `key` unless this returns `Ok`.
    fn dump_into(
        &self,
        engine: &Engine,
        format: PgFormat,
        key: &str,
        compression: Compression,
        level: u32,
        sealer: Option<&encryption::Sealer>,
    ) -> Result<(DumpInfo, Digest256), Error> {
        // The data key is always new (a replaced backup's file gets a stamped name).
        let writer = self.storage.create_new(key)?;
        // Compress, then encrypt, then hash what is stored.
        let sealed = Sealed::new(sealer, HashingWriter::new(writer))?;
        let mut enc =
            Encoder::new(compression, level, sealed).map_err(io_err("start the compressor"))?;
        let info = match engine {
            Engine::Postgres(pg) => pg.dump(format, &mut enc)?,
            Engine::Sqlite(sq) => {
                let scratch = ScratchFile::create(&self.storage.scratch_dir()?, "snapshot.db")?;
                let info = sq.snapshot(scratch.path())?;
                // The copy is checked while it is compressed and stored (another core); a copy
                // that fails the check is never committed.
                let path = scratch.path().to_owned();
                let count = self.settings.row_counts;
                let check = std::thread::spawn(move || {
                    sqlite::integrity_check(&path)?;
                    count.then(|| sqlite::count_rows(&path)).transpose()
                });
                let f = File::open(scratch.path()).map_err(io_err("read the SQLite copy"))?;
                let mut f = crate::faults::AfterBytes::new(f, 1 << 20, "during-compression");
                let stored = io::copy(&mut f, &mut enc).map_err(io_err("store the SQLite copy"));
                let checked = check.join().map_err(|_| Error::Io {
                    io_context: "check the SQLite copy".into(),
                    source: io::Error::other("the integrity check panicked"),
                })?;
                let counts = checked?;
                stored?;
                DumpInfo {
                    row_counts: counts,
                    ..info
                }
            }
        };
        let (writer, digest) = enc
            .finish()
            .map_err(io_err("finish the compressed stream"))?
            .finish()
            .map_err(io_err("finish the encrypted stream"))?
            .finish();
        writer.commit()?;
        crate::faults::point("after-data-commit");
        Ok((info, digest))
    }

    // ----- copies ---------------------------------------------------------------------------

    /// Copies the backup `name` to the repository `to` (a configured `copy_to` with its
    /// settings, or any path or URL with the primary's S3 settings).
    pub fn copy(&self, name: &str, to: &str) -> Result<Manifest, Error> {
        BackupName::parse(name)?;
        let _lock = self.lock(&format!("copy {name}"))?;
        let mut m = self.committed(name)?;
        let errors = self.copy_to_targets(&mut m, &[self.settings.copy_target(to)]);
        if let Some(first) = errors.first() {
            return Err(Error::CopyFailed {
                name: name.to_owned(),
                failed: errors.len(),
                first: first.clone(),
            });
        }
        Ok(m)
    }

    /// The manifest of the successful backup `name`.
    fn committed(&self, name: &str) -> Result<Manifest, Error> {
        catalog::read_manifest(self.storage.as_ref(), &catalog::manifest_key(name, true)).map_err(
            |e| match e {
                catalog::CatalogError::Storage(storage::StorageError::NotFound { .. }) => {
                    self.not_found(name)
                }
                e => e.into(),
            },
        )
    }

    /// Opens the repository of a copy target.
    fn open_target(&self, target: &CopyTarget) -> Result<Box<dyn Storage>, Error> {
        Ok(storage::open(
            &target.location,
            &target.s3(&self.settings.s3),
            self.settings.scratch_dir.as_deref(),
        )?)
    }

    /// Copies the committed backup `m` to each target and records every outcome in its
    /// manifests (here and in each repository that now holds it). Returns the failures.
    fn copy_to_targets(&self, m: &mut Manifest, targets: &[CopyTarget]) -> Vec<String> {
        if targets.is_empty() {
            return Vec::new();
        }
        let mut errors = Vec::new();
        let mut holders: Vec<Box<dyn Storage>> = Vec::new();
        for t in targets {
            let copied = self.open_target(t).and_then(|dest| {
                self.copy_into(m, dest.as_ref())?;
                Ok(dest)
            });
            let (ok, error) = match copied {
                Ok(dest) => {
                    holders.push(dest);
                    (true, None)
                }
                Err(e) => {
                    warn!(backup = %m.backup_name, repository = %t.location, error = %e, "copy failed");
                    errors.push(format!("{}: {e}", t.location));
                    (false, Some(e.to_string()))
                }
            };
            m.record_copy(CopyRecord {
                repository: t.location.clone(),
                ok,
                error,
                at: Utc::now(),
            });
        }
        let mut write = |storage: &dyn Storage, manifest: &Manifest| {
            if let Err(e) = manifest
                .to_json()
                .map_err(Error::from)
                .and_then(|json| Ok(storage.put(&manifest.key(), &json)?))
            {
                errors.push(format!("{}: recording the copies: {e}", storage.location()));
            }
        };
        write(self.storage.as_ref(), m);
        for dest in &holders {
            let mut there = m.clone();
            there.file_path = m.data_file.as_deref().map(|k| dest.display_path(k));
            // Seen from there, the primary is one of the copies.
            there.copies.retain(|c| c.repository != dest.location());
            there.copies.insert(
                0,
                CopyRecord {
                    repository: self.storage.location(),
                    ok: true,
                    error: None,
                    at: m.finished_at,
                },
            );
            write(dest.as_ref(), &there);
        }
        errors
    }

    /// Copies the stored bytes of `m` into `dest`, checking their SHA-256 on the way, then its
    /// manifest. A copy already complete there is left as it is.
    fn copy_into(&self, m: &Manifest, dest: &dyn Storage) -> Result<(), Error> {
        let key = m.data_file.as_deref().ok_or_else(|| Error::Damaged {
            name: m.backup_name.clone(),
            problem: "the manifest names no data file".into(),
        })?;
        match catalog::read_manifest(dest, &m.key()) {
            Ok(there) if there.sha256 == m.sha256 => return Ok(()),
            Ok(_) => {
                return Err(storage::StorageError::AlreadyExists {
                    key: m.key(),
                    location: dest.location(),
                }
                .into());
            }
            Err(_) => {}
        }
        // Data without a manifest: an earlier copy that died before its manifest.
        dest.delete(key)?;
        let mut src = HashingReader::new(self.storage.open(key)?);
        let mut w = dest.create_new(key)?;
        io::copy(&mut src, &mut w).map_err(io_err("copy the data file"))?;
        let digest = src.finish().map_err(io_err("read the data file"))?;
        if Some(&digest.sha256) != m.sha256.as_ref() {
            // `w` is dropped uncommitted: nothing appears there.
            return Err(Error::Damaged {
                name: m.backup_name.clone(),
                problem: format!(
                    "its data file {key} has SHA-256 {} but the manifest says {}: not copied",
                    digest.sha256,
                    m.sha256.as_deref().unwrap_or("")
                ),
            });
        }
        w.commit()?;
        let mut there = m.clone();
        there.file_path = Some(dest.display_path(key));
        dest.put(&there.key(), &there.to_json()?)?;
        Ok(())
    }

    // ----- verify ---------------------------------------------------------------------------

    /// Verifies one or more backups; each report says what was checked or what is wrong.
    pub fn verify(&self, target: &VerifyTarget) -> Result<Vec<VerifyReport>, Error> {
        let keys = self.keys()?;
        let cat = self.catalog()?;
        let chosen = self.choose(&cat, target)?;
        Ok(chosen
            .into_iter()
            .map(|m| VerifyReport {
                name: m.backup_name.clone(),
                result: {
                    let mut checks = Vec::new();
                    self.check(m, keys.as_ref(), Depth::Full, &mut checks)
                        .map(|_| checks)
                },
            })
            .collect())
    }

    /// The successful backups `target` names.
    fn choose<'c>(
        &self,
        cat: &'c Catalog,
        target: &VerifyTarget,
    ) -> Result<Vec<&'c Manifest>, Error> {
        Ok(match target {
            VerifyTarget::Latest => {
                vec![cat.latest_successful().ok_or_else(|| Error::NoBackups {
                    location: self.storage.location(),
                })?]
            }
            VerifyTarget::Named(name) => {
                BackupName::parse(name)?;
                vec![cat.successful(name).ok_or_else(|| self.not_found(name))?]
            }
            VerifyTarget::All => cat.backups.iter().filter(|m| m.success).collect(),
        })
    }

    // ----- restore drills -------------------------------------------------------------------

    /// Restore drills: each chosen backup is restored into a throwaway target (PostgreSQL: a
    /// scratch database on the same server; SQLite: a temporary file) and checked there; the
    /// outcome is recorded in its manifest (`verification`). A failed drill is a report with
    /// an error, not an `Err`: the others still run.
    pub fn drill(&self, target: &VerifyTarget) -> Result<Vec<VerifyReport>, Error> {
        let (engine, _url) = Engine::from_settings(&self.settings)?;
        self.install_signals()?;
        let keys = self.keys()?;
        let cat = self.catalog()?;
        let mut reports = Vec::new();
        for m in self.choose(&cat, target)? {
            if signals::interrupted() {
                break;
            }
            info!(backup = %m.backup_name, "restore drill started");
            let clock = Instant::now();
            let mut log = DrillLog::default();
            let result = self
                .drill_one(&engine, m, keys.as_ref(), &mut log)
                .map(|()| log.passed.clone());
            let duration = round3(clock.elapsed().as_secs_f64());
            let record = match &result {
                Ok(_) => Verification {
                    verified_at: Utc::now(),
                    outcome: DrillOutcome::Passed,
                    checks: log.passed,
                    failed_check: None,
                    error: None,
                    duration,
                },
                // Manifests are never encrypted: keep the error's first line, not the tool's
                // stderr, whose DETAIL and CONTEXT lines may quote rows.
                Err(e) => Verification {
                    verified_at: Utc::now(),
                    outcome: DrillOutcome::Failed,
                    checks: log.passed,
                    failed_check: Some(log.step.to_owned()),
                    error: Some(first_line(&e.to_string())),
                    duration,
                },
            };
            match &result {
                Ok(_) => info!(backup = %m.backup_name, duration, "restore drill passed"),
                Err(e) => {
                    tracing::error!(backup = %m.backup_name, error = %e, "restore drill failed")
                }
            }
            // An interrupted drill proved nothing either way: not recorded.
            if !signals::interrupted()
                && let Err(e) =
                    self.record_verification(&m.backup_name, m.sha256.as_deref(), record)
            {
                warn!(backup = %m.backup_name, error = %e, "could not record the drill's outcome in the manifest");
            }
            reports.push(VerifyReport {
                name: m.backup_name.clone(),
                result,
            });
        }
        Ok(reports)
    }

    /// The drill `BACKUP_DRILL` asks for after the successful backup `m` (run once the
    /// backup's lock is released): of `m`, always (`after-backup`) or when no backup of its
    /// series and database was drilled in the last 24 hours (`daily`).
    pub fn drill_after_backup(&self, m: &Manifest) -> Result<Option<VerifyReport>, Error> {
        match self.settings.drill {
            crate::config::DrillPolicy::Off => return Ok(None),
            crate::config::DrillPolicy::AfterBackup => {}
            crate::config::DrillPolicy::Daily => {
                let cat = self.catalog()?;
                let identity = database_identity(m);
                let recent = cat
                    .backups
                    .iter()
                    .filter(|b| b.series == m.series && database_identity(b) == identity)
                    .filter_map(|b| b.verification.as_ref())
                    .any(|v| Utc::now() - v.verified_at < chrono::Duration::hours(24));
                if recent {
                    return Ok(None);
                }
            }
        }
        Ok(self
            .drill(&VerifyTarget::Named(m.backup_name.clone()))?
            .into_iter()
            .next())
    }

    /// One drill of `m`; what passed, and the step it is in, go to `log` as it goes.
    fn drill_one(
        &self,
        engine: &Engine,
        m: &Manifest,
        keys: Option<&Keys>,
        log: &mut DrillLog,
    ) -> Result<(), Error> {
        let name = &m.backup_name;
        log.step("stored file");
        if m.database_type != engine.database_type() {
            return Err(Error::WrongDatabaseType {
                name: name.clone(),
                backup: m.database_type,
                configured: engine.database_type(),
            });
        }
        if m.encryption == Encryption::Age && keys.is_none() {
            return Err(encryption::EncryptionError::NoKey.into());
        }
        let failed = |problem: String| Error::DrillFailed {
            name: name.clone(),
            problem,
        };
        let scratch = self.check(m, keys, Depth::Restore, &mut log.passed)?;
        match engine {
            Engine::Postgres(pg) => {
                let mut sql_reader = self.sql_stream(m, keys)?;
                let source = pg_source(name, &mut sql_reader, scratch.as_ref())?;
                pg.drill(source, m.row_counts.as_ref(), log)
                    .map_err(|e| match e {
                        postgres::PostgresError::Drill(problem) => failed(problem),
                        e => e.into(),
                    })?;
            }
            Engine::Sqlite(_) => {
                log.step("restore");
                let file = scratch.ok_or_else(|| failed("no restored copy to check".into()))?;
                log.pass("restored into a temporary file");
                log.step("foreign_key_check");
                let (violations, first) = sqlite::foreign_key_check(file.path())?;
                if violations > 0 {
                    return Err(failed(format!(
                        "PRAGMA foreign_key_check finds {violations} violation(s), the first: {}",
                        first.unwrap_or_default()
                    )));
                }
                log.pass("foreign_key_check: no violations");
                log.step("row counts");
                let counts = sqlite::count_rows(file.path())?;
                log.pass(
                    crate::engine::compare_counts(m.row_counts.as_ref(), &counts)
                        .map_err(failed)?,
                );
            }
        }
        Ok(())
    }

    /// Records a drill's outcome in the manifest of the successful backup `name`, under the
    /// lock (the manifest is read again: a copy may have changed it meanwhile).
    /// Only if the backup is still the one drilled (same SHA-256: not replaced meanwhile). It
    /// waits for the lock a minute at least, also in the API (whose other calls never wait):
    /// a backup running meanwhile must not make the outcome go unrecorded.
    fn record_verification(
        &self,
        name: &str,
        sha256: Option<&str>,
        record: Verification,
    ) -> Result<(), Error> {
        let wait = self
            .settings
            .lock_timeout
            .max(std::time::Duration::from_secs(60));
        let _lock = self
            .storage
            .lock(&format!("record the drill of {name}"), wait)?;
        let mut m = self.committed(name)?;
        if m.sha256.as_deref() != sha256 {
            warn!(backup = %name, "the backup was replaced during its drill: the outcome is not recorded");
            return Ok(());
        }
        m.verification = Some(record);
        self.storage.put(&m.key(), &m.to_json()?)?;
        Ok(())
    }

    /// A plain SQL backup's dump, decrypted and decompressed, streamed from the repository
    /// (`None` for a custom archive, which [`Ops::check`] stages instead).
    fn sql_stream(
        &self,
        m: &Manifest,
        keys: Option<&Keys>,
    ) -> Result<Option<Box<dyn Read>>, Error> {
        if m.pg_format.unwrap_or_default() != PgFormat::Sql {
            return Ok(None);
        }
        let key = m.data_file.as_deref().unwrap_or_default();
        let stored = self.storage.open(key)?;
        let plain: Box<dyn Read> = match m.encryption {
            Encryption::None => stored,
            Encryption::Age => encryption::open(keys, stored)?,
        };
        codec::decoder(m.compression, plain)
            .map(Some)
            .map_err(io_err("start the decompressor"))
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

    /// Reads the stored file once: size and SHA-256 against the manifest and, as deep as `depth`
    /// says, decryption, decompression and the engine's content check. What a restore loads from
    /// a file (a SQLite copy, checked; a custom archive) is returned staged. An encrypted backup
    /// without `keys` gets the size and SHA-256 checks only.
    fn check(
        &self,
        m: &Manifest,
        keys: Option<&Keys>,
        depth: Depth,
        checks: &mut Vec<String>,
    ) -> Result<Option<ScratchFile>, Error> {
        let damaged = |problem: String| Error::Damaged {
            name: m.backup_name.clone(),
            problem,
        };
        let key = m
            .data_file
            .as_deref()
            .ok_or_else(|| damaged("the manifest names no data file".into()))?;
        let expected_sha = m.sha256.as_deref().unwrap_or_default();
        let stat = self
            .storage
            .stat(key)?
            .ok_or_else(|| damaged(format!("its data file {key} is missing")))?;
        if stat.size != m.file_size {
            return Err(damaged(format!(
                "its data file {key} has {} bytes but the manifest says {} (truncated or replaced)",
                stat.size, m.file_size
            )));
        }
        checks.push(format!("size {} bytes", stat.size));
        let mut hashing = HashingReader::new(self.storage.open(key)?);
        let mut scratch = None;
        let mut not_decrypted = false;
        let mut key_error = None;
        let content: Result<String, String> = {
            let plain: Result<Box<dyn Read + '_>, String> = match (m.encryption, keys) {
                (Encryption::None, _) => Ok(Box::new(&mut hashing)),
                (Encryption::Age, None) => {
                    not_decrypted = true;
                    Err("not decrypted".into())
                }
                (Encryption::Age, Some(k)) => {
                    encryption::open(Some(k), &mut hashing).map_err(|e| {
                        let text = e.to_string();
                        if matches!(e, encryption::EncryptionError::WrongKey) {
                            key_error = Some(e);
                        }
                        text
                    })
                }
            };
            let dec = plain.and_then(|p| {
                codec::decoder(m.compression, p)
                    .map_err(|e| format!("cannot start the decompressor: {e}"))
            });
            match dec {
                Err(e) => Err(e),
                Ok(mut dec) => match (m.database_type, m.pg_format.unwrap_or_default(), depth) {
                    // Checked while psql loads it (decompression, trailer); a failure there
                    // puts the original database back.
                    (DatabaseType::Postgresql, PgFormat::Sql, Depth::Restore) => Ok(
                        "plain SQL: decompression and completeness checked while it loads".into(),
                    ),
                    (DatabaseType::Postgresql, PgFormat::Sql, Depth::Full) => check_sql(&mut dec),
                    // pg_restore -j needs a seekable file.
                    (DatabaseType::Postgresql, PgFormat::Custom, Depth::Restore) => {
                        self.stage(&mut dec, "restore.dump").and_then(|file| {
                            postgres::list_archive(self.settings.pg_bindir.as_deref(), file.path())
                                .map_err(|e| format!("pg_restore cannot read the archive: {e}"))?;
                            scratch = Some(file);
                            Ok(
                                "custom archive staged; pg_restore reads its table of contents"
                                    .into(),
                            )
                        })
                    }
                    (DatabaseType::Postgresql, PgFormat::Custom, Depth::Full) => {
                        postgres::check_archive(self.settings.pg_bindir.as_deref(), &mut dec)
                            .map(|()| {
                                "complete custom archive (pg_restore read every entry)".into()
                            })
                            .map_err(|e| format!("the archive is not complete: {e}"))
                    }
                    (DatabaseType::Sqlite, _, _) => {
                        self.stage(&mut dec, "verify.db").and_then(|file| {
                            sqlite::integrity_check(file.path()).map_err(|e| e.to_string())?;
                            scratch = Some(file);
                            Ok("SQLite integrity_check ok".into())
                        })
                    }
                },
            }
        };
        let digest = hashing
            .finish()
            .map_err(|e| damaged(format!("reading its data file failed: {e}")))?;
        if digest.sha256 != expected_sha {
            return Err(damaged(format!(
                "SHA-256 of {key} is {} but the manifest says {expected_sha}: the file changed after the backup",
                digest.sha256
            )));
        }
        checks.push("sha256 matches".into());
        // The stored bytes are intact: a key that does not fit is the key's fault.
        if let Some(e) = key_error {
            return Err(e.into());
        }
        if not_decrypted {
            checks.push(
                "encrypted with age: contents not checked without a key (BACKUP_DECRYPT_IDENTITY_FILE)"
                    .into(),
            );
            return Ok(None);
        }
        if m.encryption == Encryption::Age {
            checks.push("age decryption complete".into());
        }
        if m.compression != Compression::None {
            checks.push(format!("{} stream complete", m.compression.name()));
        }
        checks.push(content.map_err(damaged)?);
        Ok(scratch)
    }

    /// Writes `dec` into a new scratch file (read back at once: no fsync).
    fn stage(&self, dec: &mut dyn Read, what: &str) -> Result<ScratchFile, String> {
        let dir = self.storage.scratch_dir().map_err(|e| e.to_string())?;
        let file = ScratchFile::create(&dir, what).map_err(|e| e.to_string())?;
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(file.path())
            .and_then(|f| {
                let mut w = io::BufWriter::with_capacity(1 << 20, f);
                io::copy(dec, &mut w)?;
                w.into_inner()
                    .map_err(io::IntoInnerError::into_error)
                    .map(drop)
            })
            .map_err(|e| format!("decompressing into {} failed: {e}", file.path().display()))?;
        Ok(file)
    }

    // ----- restore --------------------------------------------------------------------------

    /// Restores `name` into the configured database, after checking its size, SHA-256 and key
    /// (see [`Depth::Restore`]).
    pub fn restore(&self, name: &str) -> Result<RestoreOutcome, Error> {
        BackupName::parse(name)?;
        let (engine, url) = Engine::from_settings(&self.settings)?;
        self.install_signals()?;
        let _lock = self.lock(&format!("restore {name}"))?;
        self.recover_interrupted_restore(&engine)?;
        let m = self.committed(name)?;
        if m.database_type != engine.database_type() {
            return Err(Error::WrongDatabaseType {
                name: name.to_owned(),
                backup: m.database_type,
                configured: engine.database_type(),
            });
        }
        info!(backup = %name, database = %url, "restore started: checking the backup");
        let clock = Instant::now();
        let keys = self.keys()?;
        if m.encryption == Encryption::Age && keys.is_none() {
            return Err(encryption::EncryptionError::NoKey.into());
        }
        let scratch = self.check(&m, keys.as_ref(), Depth::Restore, &mut Vec::new())?;
        info!(backup = %name, "backup checked; restoring");
        let mut kept_old = None;
        match &engine {
            Engine::Postgres(pg) => {
                // Plain SQL streams from the repository a second time (its size, SHA-256 and
                // key were checked above; the load checks the rest); a custom archive was staged
                // by the check.
                let mut sql_reader = self.sql_stream(&m, keys.as_ref())?;
                let source = pg_source(name, &mut sql_reader, scratch.as_ref())?;
                // Record where the live database goes before it moves, so that a run killed
                // mid-way is undone by the next one.
                let journal = RestoreJournal {
                    database: m.database_name.clone(),
                    aside: pg.aside_name(),
                    backup: name.to_owned(),
                    started: Utc::now(),
                };
                self.storage.put(
                    RESTORE_JOURNAL,
                    &serde_json::to_vec(&journal).map_err(|e| Error::Io {
                        io_context: "encode the restore journal".into(),
                        source: e.into(),
                    })?,
                )?;
                // Once the dump has loaded, the journal must go before anything else: recovery
                // would otherwise put the old database back over the restored one.
                let mut loaded = || {
                    if let Err(e) = self.storage.delete(RESTORE_JOURNAL) {
                        tracing::error!(error = %e, "could not remove the restore journal {RESTORE_JOURNAL}: remove it by hand, or the next run would undo this restore");
                    }
                };
                let restored = pg.restore(source, &m.database_name, &journal.aside, &mut loaded);
                // After a failed rollback the journal stays, so the next run tries again.
                if !matches!(
                    restored,
                    Err(postgres::PostgresError::RollbackFailed { .. })
                ) {
                    self.storage.delete(RESTORE_JOURNAL)?;
                }
                kept_old = restored?.kept_old;
            }
            Engine::Sqlite(sq) => {
                let file = scratch.ok_or_else(|| Error::Damaged {
                    name: name.to_owned(),
                    problem: "no checked copy to restore from".into(),
                })?;
                sq.restore_from(file.path())?;
            }
        }
        let duration = round3(clock.elapsed().as_secs_f64());
        info!(backup = %name, duration, "restore completed");
        Ok(RestoreOutcome {
            manifest: m,
            duration,
            kept_old,
        })
    }

    /// Puts back a database that a killed restore left aside (see [`RESTORE_JOURNAL`]).
    fn recover_interrupted_restore(&self, engine: &Engine) -> Result<(), Error> {
        let Engine::Postgres(pg) = engine else {
            return Ok(());
        };
        let bytes = match self.storage.read_all(RESTORE_JOURNAL) {
            Ok(b) => b,
            Err(storage::StorageError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let journal: RestoreJournal = match serde_json::from_slice(&bytes) {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, "ignoring an unreadable restore journal");
                self.storage.delete(RESTORE_JOURNAL)?;
                return Ok(());
            }
        };
        if journal.database != pg.database() {
            // Another database's restore: not ours to touch with this DATABASE_URL.
            return Ok(());
        }
        if let Some(done) = pg.recover(&journal.aside)? {
            warn!(backup = %journal.backup, "{done}");
        }
        self.storage.delete(RESTORE_JOURNAL)?;
        Ok(())
    }

    // ----- delete ---------------------------------------------------------------------------

    /// Deletes the backup `name` (and a failed attempt of that name); returns the keys removed.
    pub fn delete(&self, name: &str) -> Result<Vec<String>, Error> {
        BackupName::parse(name)?;
        let _lock = self.lock(&format!("delete {name}"))?;
        let mut removed = Vec::new();
        for success in [true, false] {
            let key = catalog::manifest_key(name, success);
            if self.storage.stat(&key)?.is_none() {
                continue;
            }
            let data = catalog::read_manifest(self.storage.as_ref(), &key)
                .ok()
                .and_then(|m| m.data_file);
            // The manifest first: once it is gone the backup no longer exists.
            self.storage.delete(&key)?;
            removed.push(key);
            if let Some(data) = data {
                self.storage.delete(&data)?;
                removed.push(data);
            }
        }
        if removed.is_empty() {
            return Err(self.not_found(name));
        }
        info!(backup = %name, "backup deleted");
        Ok(removed)
    }

    // ----- prune ----------------------------------------------------------------------------

    /// Applies retention to every series, and removes leftovers: temporary files and data files
    /// that no manifest names, older than [`ORPHAN_GRACE`].
    pub fn prune(&self, opts: PruneOptions) -> Result<PruneOutcome, Error> {
        let _lock = if opts.dry_run {
            None
        } else {
            Some(self.lock("prune")?)
        };
        let cat = self.catalog()?;
        let mut policies: BTreeMap<(String, String), Policy> = BTreeMap::new();
        // Newest first: the first manifest seen of a (database, series) sets its policy.
        for m in &cat.backups {
            let key = (database_identity(m), m.series.clone());
            policies.entry(key).or_insert(Policy {
                retention_days: opts.retention_days.unwrap_or(m.retention_days),
                keep_min: opts.keep_min.unwrap_or(m.keep_min),
            });
        }
        let candidates: Vec<Candidate> = cat.backups.iter().map(candidate).collect();
        let fallback = Policy {
            retention_days: self.settings.retention_days,
            keep_min: self.settings.keep_min,
        };
        let decisions = retention::plan(
            &candidates,
            |d, s| {
                policies
                    .get(&(d.to_owned(), s.to_owned()))
                    .copied()
                    .unwrap_or(fallback)
            },
            Utc::now(),
        );
        let (leftovers, orphans) = self.leftovers(&cat)?;
        let mut errors = Vec::new();
        let mut notes = Vec::new();
        let stale_uploads = match self.storage.sweep_uploads(ORPHAN_GRACE, opts.dry_run) {
            Ok(keys) => keys,
            Err(e @ storage::StorageError::Unsupported { .. }) => {
                notes.push(e.to_string());
                Vec::new()
            }
            Err(e) => {
                errors.push(e.to_string());
                Vec::new()
            }
        };
        if !opts.dry_run {
            errors = self.execute(&cat, &decisions);
            for key in &leftovers {
                if let Err(e) = self.storage.delete(key) {
                    errors.push(e.to_string());
                }
            }
        }
        Ok(PruneOutcome {
            decisions,
            policies,
            leftovers,
            orphans,
            stale_uploads,
            notes,
            errors,
        })
    }

    /// (what prune removes: temporary files of killed runs, and on object storage data objects
    /// that no manifest names; what it only reports: data-like files in a directory that no
    /// manifest names), all older than [`ORPHAN_GRACE`].
    fn leftovers(&self, cat: &Catalog) -> Result<(Vec<String>, Vec<String>), Error> {
        let referenced: std::collections::HashSet<&str> = cat.referenced_data().collect();
        let now = SystemTime::now();
        let (mut temps, mut orphans) = (Vec::new(), Vec::new());
        for o in self.storage.list()? {
            let old = now
                .duration_since(o.modified)
                .is_ok_and(|age| age > ORPHAN_GRACE);
            if !old {
                continue;
            }
            let is_data = DATA_SUFFIXES
                .iter()
                .any(|s| o.key.ends_with(s) || o.key.ends_with(&format!("{s}.age")));
            if o.key.starts_with(TEMP_PREFIX) {
                temps.push(o.key);
            } else if is_data && !referenced.contains(o.key.as_str()) {
                // In a directory, such a file may be the user's own (a live app.db): reported.
                // A bucket prefix holds only what dbkeep wrote: an upload whose manifest never
                // came is removed.
                if self.storage.owns_every_object() {
                    temps.push(o.key);
                } else {
                    orphans.push(o.key);
                }
            }
        }
        Ok((temps, orphans))
    }

    /// Carries out the deletions of a retention plan; returns the errors (it goes on after one).
    fn execute(&self, cat: &Catalog, plan: &[Decision]) -> Vec<String> {
        let mut errors = Vec::new();
        for d in plan.iter().filter(|d| d.action == Action::Delete) {
            let Some(m) = cat
                .backups
                .iter()
                .find(|m| m.backup_name == d.name && m.success == d.success)
            else {
                continue;
            };
            let result = self
                .storage
                .delete(&m.key())
                .and_then(|()| match &m.data_file {
                    Some(data) => self.storage.delete(data),
                    None => Ok(()),
                });
            match result {
                Ok(()) => {
                    info!(backup = %d.name, series = %d.series, reason = %d.reason, "retention deleted a backup")
                }
                Err(e) => {
                    warn!(backup = %d.name, error = %e, "retention could not delete a backup");
                    errors.push(format!("{}: {e}", d.name));
                }
            }
        }
        errors
    }
}

/// Which database a backup is of, for grouping retention: type, host and name.
/// How much of a backup [`Ops::check`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// Everything: decryption, decompression, the engine's content check (`verify`).
    Full,
    /// What a restore needs before it touches the database: size, SHA-256 (the stored bytes are
    /// exactly what the successful backup wrote) and the key. Plain SQL is then checked while
    /// it loads; a custom archive and a SQLite copy are staged (and checked).
    Restore,
}

/// Reads a plain dump to its end: it must decompress and end with pg_dump's trailer.
fn check_sql(dec: &mut dyn Read) -> Result<String, String> {
    let mut tail = Tail::new(postgres::TRAILER_WINDOW);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => tail.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("decompressing failed: {e}")),
        }
    }
    if postgres::has_trailer(tail.bytes()) {
        Ok("complete pg_dump output (trailer present)".into())
    } else {
        Err("the dump does not end with pg_dump's completion trailer (incomplete dump)".into())
    }
}

/// What a PostgreSQL restore or drill loads: the plain dump's stream, or the staged archive.
fn pg_source<'a>(
    name: &str,
    sql: &'a mut Option<Box<dyn Read>>,
    staged: Option<&'a ScratchFile>,
) -> Result<postgres::Source<'a>, Error> {
    match (sql, staged) {
        (Some(r), _) => Ok(postgres::Source::Sql(r.as_mut())),
        (None, Some(f)) => Ok(postgres::Source::Archive(f.path())),
        (None, None) => Err(Error::Damaged {
            name: name.to_owned(),
            problem: "no staged archive to restore from".into(),
        }),
    }
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
    format!(
        "{}://{}/{}",
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
