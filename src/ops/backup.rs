//! `dbkeep backup`: the dump streamed through the codec, encryption and hashing into the
//! repository, the manifest as the commit point, a failed attempt recorded, then copies and the
//! series' retention.

use super::*;
use crate::catalog::{self, Manifest};
use crate::codec::{Compression, Digest256, Encoder, HashingWriter};
use crate::database_url::DatabaseUrl;
use crate::encryption::{self, Encryption, Sealed};
use crate::engine::seam::DumpRequest;
use crate::engine::{DatabaseType, DumpInfo, PgFormat};
use crate::error::Error;
use crate::naming::{self, BackupName};
use crate::progress::{self, Count, CountingWriter};
use crate::retention::{self, Candidate};

use chrono::Utc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What a PostgreSQL dump is asked for (SQLite ignores it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Dump {
    pub format: PgFormat,
    /// A custom archive that pg_dump compresses itself with gzip at this level.
    pub archive_level: Option<u32>,
}

impl Ops {
    pub(super) fn take_backup(&self, req: &BackupRequest) -> Result<BackupOutcome, Error> {
        let op = progress::begin("backup", &self.settings.database, req.name.as_deref());
        let given = req.name.as_deref().map(BackupName::parse).transpose()?;
        let series = req
            .series
            .as_deref()
            .map(naming::parse_series)
            .transpose()?;
        let (engine, url) = Engine::from_settings(&self.settings)?;
        // A base backup's default name (and so series) is base_…: kept apart from the dumps'.
        let physical =
            req.physical || self.pg_format(engine.database_type()) == Some(PgFormat::Physical);
        let default_name =
            |at| BackupName::default_with(if physical { "base" } else { "backup" }, at);
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
        op.progress().set_phase("waiting for the repository lock");
        let lock = match self.lock(&format!(
            "backup {}",
            given.as_ref().map_or("(default name)", |n| n.as_str())
        )) {
            Ok(lock) => lock,
            // A run that waited out BACKUP_LOCK_TIMEOUT is recorded, so that
            // `.backups[0].success` shows it; the API's immediate 409 (no wait) is not a failed
            // backup, only a refused request.
            Err(e) if self.settings.lock_timeout.is_zero() => return Err(e),
            Err(e) => {
                let name = given.clone().unwrap_or_else(|| default_name(Utc::now()));
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
                let n = default_name(started);
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
        op.progress().set_backup_name(name.as_str());
        op.progress().set_phase("dumping");
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
        let pg_format = if req.physical {
            if db_type != DatabaseType::Postgresql {
                return Err(Error::Unsupported(format!(
                    "a base backup (--physical) is of a PostgreSQL cluster; DATABASE_URL names a {db_type} database"
                )));
            }
            Some(PgFormat::Physical)
        } else {
            self.pg_format(db_type)
        };
        // A custom archive with gzip is compressed by pg_dump, as `pg_dump -Fc` does: pg_restore
        // then reads the stored archive in place, each of its jobs decompressing its own
        // tables, instead of a decompressed copy of it (which costs more than the restore's
        // budget to write). zstd stays dbkeep's multi-threaded codec on the stream.
        let archive_compressed =
            pg_format == Some(PgFormat::Custom) && compression == Compression::Gzip;
        let stream_compression = if archive_compressed {
            Compression::None
        } else {
            compression
        };
        let suffix = format!(
            "{}{}{}",
            pg_format.map_or(db_type.extension(), PgFormat::extension),
            stream_compression.suffix(),
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
        manifest.pg_format = pg_format;
        manifest.archive_compressed = archive_compressed;
        manifest.manifest_version = manifest.required_version();

        let dumped = self.recover_interrupted_restore(&engine).and_then(|()| {
            self.dump_into(
                &engine,
                Dump {
                    format: pg_format.unwrap_or_default(),
                    archive_level: archive_compressed.then_some(level.max(1)),
                },
                &key,
                stream_compression,
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
        manifest.base_backup = info_.base_backup;
        manifest.manifest_version = manifest.required_version();
        // The commit point. A new name is created only if nobody else took it meanwhile (object
        // storage shared by several instances); --replace overwrites on purpose.
        let json = manifest.to_json()?;
        // Only while the lock is still this run's (a lease may have been lost to a stall).
        crate::faults::stop("before-commit");
        lock.ensure()?;
        let committed = if req.replace {
            self.storage.put(&manifest.key(), &json)
        } else {
            self.storage.put_new(&manifest.key(), &json)
        };
        if let Err(e) = committed {
            self.commit_failed(&manifest, &key, e)?;
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
        if !self.settings.copy_to.is_empty() {
            op.progress().set_phase("copying to the other repositories");
        }
        let copy_errors = self.copy_to_targets(&mut manifest, &self.settings.copy_to, &lock);
        op.progress().set_phase("applying retention");

        let cat = match self.catalog() {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("retention skipped: cannot read the catalog: {e}");
                warn!("{msg}");
                return Ok(BackupOutcome {
                    manifest,
                    copy_errors,
                    retention: Vec::new(),
                    retention_notes: Vec::new(),
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
        // Each backup keeps the retention it recorded: this run's settings never shorten it.
        let plan = retention::plan(
            &candidates,
            &retention::Rules {
                keep_min_at_least: self.settings.keep_min,
                overrides: &|_, _| retention::Override::default(),
                force: false,
                policies: &self.settings.series,
            },
            Utc::now(),
        );
        for note in &plan.notes {
            warn!("{note}");
        }
        let retention_errors = self.execute(&cat, &plan.decisions, &lock);
        Ok(BackupOutcome {
            manifest,
            copy_errors,
            retention: plan.decisions,
            retention_notes: plan.notes,
            retention_errors,
        })
    }

    /// After the manifest's create answered an error: read it back, since a create whose answer
    /// was lost may have landed (a retry then meets "already exists"). This run's manifest in
    /// place (same data file and SHA-256) means committed: `Ok`. Another's, or none: the data
    /// goes too and the attempt is recorded. Unknown (it cannot be read back): the data is kept,
    /// for a manifest may name it; prune removes it a day later if none does.
    pub(super) fn commit_failed(
        &self,
        manifest: &Manifest,
        key: &str,
        e: storage::StorageError,
    ) -> Result<(), Error> {
        let there = catalog::read_manifest(self.storage.as_ref(), &manifest.key());
        let remove_data = match &there {
            Ok(m) if m.data_file == manifest.data_file && m.sha256 == manifest.sha256 => {
                warn!(backup = %manifest.backup_name, error = %e, "the manifest's commit answered an error, but this run's manifest is in place: the backup is committed");
                return Ok(());
            }
            Ok(_) | Err(catalog::CatalogError::Storage(storage::StorageError::NotFound { .. })) => {
                true
            }
            Err(read) => {
                warn!(backup = %manifest.backup_name, error = %read, "cannot tell whether the manifest landed: its data is kept");
                false
            }
        };
        // No manifest of ours, no backup: the data goes too, and the attempt is recorded.
        if remove_data && let Err(d) = self.storage.delete(key) {
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
        Err(e)
    }

    /// The dump format a new backup of `db_type` gets (PostgreSQL only).
    pub(super) fn pg_format(&self, db_type: DatabaseType) -> Option<PgFormat> {
        crate::engine::format::Format::pg_format_of_new(db_type, self.settings.pg_format)
    }

    /// The manifest of an attempt that has not succeeded (yet).
    pub(super) fn attempt_manifest(
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
            archive_compressed: false,
            pinned: false,
            encryption,
            pg_format: self.pg_format(database_type),
            data_file: None,
            series,
            database_name: url.database_name(),
            database_host: url.host_display(),
            server_version: None,
            tool_version: None,
            row_counts: None,
            base_backup: None,
            pitr_verification: None,
            verification: None,
            retention_days: self.settings.retention_days,
            keep_min: self.settings.keep_min,
            finished_at: Utc::now(),
            copies: Vec::new(),
            dbkeep_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest_version: catalog::MANIFEST_VERSION_BASE,
        }
    }

    /// Writes a failed attempt's manifest; a failure to do so is only logged.
    pub(super) fn record_failure(&self, m: &Manifest) {
        let written = m
            .to_json()
            .map_err(Error::from)
            .and_then(|json| self.storage.put(&m.key(), &json).map_err(Error::from));
        if let Err(e) = written {
            warn!(error = %e, "could not record the failed attempt");
        }
    }

    /// Dumps the database (as `dump` says) into a new object `key`, through `compression`; returns what the engine reported and the
    /// stored size and SHA-256. Nothing is visible under `key` unless this returns `Ok`.
    pub(super) fn dump_into(
        &self,
        engine: &Engine,
        dump: Dump,
        key: &str,
        compression: Compression,
        level: u32,
        sealer: Option<&encryption::Sealer>,
    ) -> Result<(DumpInfo, Digest256), Error> {
        // The data key is always new (a replaced backup's file gets a stamped name).
        let writer = CountingWriter::new(self.storage.create_new(key)?, Count::Written);
        // Compress, then encrypt, then hash what is stored.
        let sealed = Sealed::new(sealer, HashingWriter::new(writer))?;
        let mut enc =
            Encoder::new(compression, level, sealed).map_err(io_err("start the compressor"))?;
        // An engine that snapshots to a file first (SQLite) gets a private scratch file.
        let scratch = if engine.snapshots_to_a_file() {
            Some(ScratchFile::create(
                &self.storage.scratch_dir()?,
                "snapshot.db",
            )?)
        } else {
            None
        };
        // A base backup is spooled by pg_basebackup in a private directory.
        let spool = if dump.format == PgFormat::Physical {
            Some(ScratchFile::reserve(
                &self.storage.scratch_dir()?,
                "basebackup",
            )?)
        } else {
            None
        };
        let req = DumpRequest {
            format: dump.format,
            archive_level: dump.archive_level,
            scratch_file: scratch.as_ref().map(ScratchFile::path),
            spool_dir: spool.as_ref().map(ScratchFile::path),
        };
        let info = engine.dump(req, &mut CountingWriter::new(&mut enc, Count::Read))?;
        drop(scratch);
        drop(spool);
        let (writer, digest) = enc
            .finish()
            .map_err(io_err("finish the compressed stream"))?
            .finish()
            .map_err(io_err("finish the encrypted stream"))?
            .finish();
        writer.into_inner().commit()?;
        crate::faults::point("after-data-commit");
        Ok((info, digest))
    }
}
