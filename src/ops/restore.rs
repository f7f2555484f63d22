//! `dbkeep restore`: the backup checked, then loaded by the engine; the journal that lets a run
//! killed mid-way be undone.

use super::*;
use crate::encryption::{self, Encryption};
use crate::engine::postgres;
use crate::error::Error;
use crate::naming::BackupName;
use crate::storage;
use chrono::Utc;

use std::time::Instant;
use tracing::{info, warn};

/// Written before a PostgreSQL restore moves the live database aside, removed when the restore
/// has ended either way: if it is still there, that restore was killed.
pub const RESTORE_JOURNAL: &str = ".dbkeep-restore.json";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct RestoreJournal {
    database: String,
    aside: String,
    backup: String,
    started: chrono::DateTime<Utc>,
}

impl Ops {
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
    pub(super) fn recover_interrupted_restore(&self, engine: &Engine) -> Result<(), Error> {
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
}
