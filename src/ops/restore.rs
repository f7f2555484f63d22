//! `dbkeep restore`: the backup checked, then loaded by the engine (PostgreSQL through a
//! staging database swapped in at the end; SQLite in one transaction). A restore needs no write
//! access to the repository.

use super::*;
use crate::encryption::{self, Encryption};
use crate::engine::format::Format;
use crate::engine::postgres::physical::archive;
use crate::error::Error;
use crate::naming::BackupName;

use std::time::Instant;
use tracing::{info, warn};

/// Where dbkeep before the staging restore kept the journal of a restore under way. One left
/// by such a version is reported, never acted on: what it names may have been written to since.
pub const RESTORE_JOURNAL: &str = ".dbkeep-restore.json";

impl Ops {
    /// Restores `name` into the configured database, after checking its size, SHA-256 and key
    /// (see [`Depth::Restore`]).
    pub(super) fn restore_unreported(&self, name: &str) -> Result<RestoreOutcome, Error> {
        let op = crate::progress::begin("restore", &self.settings.database, Some(name));
        BackupName::parse(name)?;
        let (engine, url) = Engine::from_settings(&self.settings)?;
        self.install_signals()?;
        // Read-only credentials or mounts may restore: without the lock then (a backup or
        // prune meanwhile cannot harm the live database: the load is checked as it goes).
        let _lock = self.restore_lock(name)?;
        self.recover_interrupted_restore(&engine)?;
        let m = self.committed(name)?;
        if Format::of(m.database_type, m.pg_format).physical() {
            return Err(Error::Unsupported(format!(
                "{name} is a base backup of the whole cluster, not a dump: restore it into a new data directory with `dbkeep restore {name} --pgdata DIR`, then start a server on it"
            )));
        }
        if m.database_type != engine.database_type() {
            return Err(Error::WrongDatabaseType {
                name: name.to_owned(),
                backup: m.database_type,
                configured: engine.database_type(),
            });
        }
        info!(backup = %name, database = %url, "restore started: checking the backup");
        op.progress().set_phase("checking the backup");
        let clock = Instant::now();
        let keys = self.keys()?;
        if m.encryption == Encryption::Age && keys.is_none() {
            return Err(encryption::EncryptionError::NoKey.into());
        }
        let scratch = self.check(&m, keys.as_ref(), Depth::Restore, &mut Vec::new())?;
        info!(backup = %name, "backup checked; restoring");
        op.progress().set_phase("restoring into the database");
        // Plain SQL streams from the repository a second time (its size, SHA-256 and key
        // were checked above; the load checks the rest); a custom archive or a SQLite copy was
        // staged by the check.
        let mut sql_reader = self.sql_stream(&m, keys.as_ref())?;
        let source = engine_source(name, &mut sql_reader, scratch.as_ref())?;
        let report = engine
            .restore(source, &m.database_name)
            .map_err(|e| match e {
                crate::engine::seam::EngineError::Source(problem) => Error::Damaged {
                    name: name.to_owned(),
                    problem,
                },
                e => e.into(),
            })?;
        let kept_old = report.kept_old;
        let unavailable = report.unavailable.map(|d| round3(d.as_secs_f64()));
        let duration = round3(clock.elapsed().as_secs_f64());
        info!(backup = %name, duration, "restore completed");
        Ok(RestoreOutcome {
            manifest: m,
            duration,
            kept_old,
            unavailable,
        })
    }

    /// Unpacks the base backup `name` into `pgdata` (absent or empty; never a data directory in
    /// use), after checking its size, SHA-256 and key; every file is checked against
    /// pg_basebackup's manifest as it is written, and a backup that fails leaves `pgdata`
    /// empty. Needs no database connection, only the repository.
    pub(super) fn restore_base_unreported(
        &self,
        name: &str,
        pgdata: &std::path::Path,
    ) -> Result<RestoreOutcome, Error> {
        let op = crate::progress::begin("restore", &self.settings.database, Some(name));
        BackupName::parse(name)?;
        self.install_signals()?;
        // A backup or prune meanwhile must not delete what is being read (read-only
        // repositories restore without the lock, as dumps do).
        let _lock = self.restore_lock(name)?;
        let m = self.committed(name)?;
        if !Format::of(m.database_type, m.pg_format).physical() {
            return Err(Error::Unsupported(format!(
                "{name} is a dump, not a base backup: --pgdata is for backups taken with `dbkeep backup --physical`; restore a dump into the configured database without --pgdata"
            )));
        }
        let clock = Instant::now();
        let keys = self.keys()?;
        if m.encryption == Encryption::Age && keys.is_none() {
            return Err(encryption::EncryptionError::NoKey.into());
        }
        let dir = archive::prepare_target(pgdata).map_err(Error::Unsupported)?;
        info!(backup = %name, pgdata = %dir.display(), "restoring the base backup into a data directory");
        op.progress().set_phase("unpacking into the data directory");
        // One pass: every file against pg_basebackup's manifest as it is written, the stored
        // bytes against dbkeep's SHA-256 at the end; any failure empties the directory.
        let unpacked = self.read_checked(&m, keys.as_ref(), |stream| {
            archive::read(stream, Some(&dir)).map_err(|problem| Error::Damaged {
                name: name.to_owned(),
                problem,
            })
        });
        let summary = match unpacked {
            Ok(s) => s,
            Err(e) => {
                // Nothing half-unpacked is left to start a server on.
                archive::empty_target(&dir);
                return Err(e);
            }
        };
        let duration = round3(clock.elapsed().as_secs_f64());
        info!(backup = %name, files = summary.files, duration, "base backup restored");
        Ok(RestoreOutcome {
            manifest: m,
            duration,
            kept_old: None,
            unavailable: None,
        })
    }

    /// The repository's lock for a restore of `name`; none on a repository that cannot be
    /// written (read-only credentials or mounts may restore: a backup or prune meanwhile
    /// cannot harm what is restored, which is checked as it is read).
    fn restore_lock(&self, name: &str) -> Result<Option<crate::storage::RepoLock>, Error> {
        match self.lock(&format!("restore {name}")) {
            Ok(lock) => Ok(Some(lock)),
            Err(e) if e.is_unavailable() || e.is_denied() => {
                warn!(error = %e, "the repository cannot be written: restoring without its lock");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Cleans up after a restore of the configured database killed on this host (see
    /// [`postgres::Postgres::recover_interrupted`]): nothing a client could have written to is
    /// ever dropped. A journal left by an older dbkeep is reported, never acted on.
    pub(super) fn recover_interrupted_restore(&self, engine: &Engine) -> Result<(), Error> {
        for done in engine.recover_interrupted()? {
            warn!("{done}");
        }
        if matches!(self.storage.stat(RESTORE_JOURNAL), Ok(Some(_))) {
            warn!(
                "{RESTORE_JOURNAL} in the repository: an older dbkeep's restore was interrupted; the database it moved aside (NAME_dbkeep_old_…) is left as it is: compare it with the live one, then drop or rename it by hand and remove {RESTORE_JOURNAL}"
            );
        }
        Ok(())
    }
}
