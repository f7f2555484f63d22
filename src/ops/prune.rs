//! `dbkeep delete` and `dbkeep prune`: retention decisions carried out, leftovers removed.

use super::*;
use crate::catalog::{self, Catalog};
use crate::error::Error;
use crate::naming::BackupName;
use crate::retention::{self, Action, Candidate, Decision, Override, Policy, Rules};
use crate::storage::{self, RepoLock, TEMP_PREFIX};
use chrono::Utc;
use std::collections::BTreeMap;
use std::time::SystemTime;
use tracing::{info, warn};

#[derive(Debug, Default)]
pub struct PruneOutcome {
    pub decisions: Vec<Decision>,
    /// The policy of each (database, series): the newest backup's retention days (each backup
    /// keeps its own) or the override, and the series' keep_min.
    pub policies: BTreeMap<(String, String), Policy>,
    /// The series whose recorded policy was overridden (`--series` with `--retention-days` or
    /// `--keep-min`).
    pub overridden: Option<String>,
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
    /// Archived WAL files no kept base backup needs, removed (or, in a dry run, that would be).
    pub wal_removed: Vec<String>,
}

/// How `prune` runs. Each backup keeps the retention it recorded; `retention_days` and
/// `keep_min` override it only for the one `series` named (and prune then plans that series
/// only).
#[derive(Debug, Default, Clone)]
pub struct PruneOptions {
    pub dry_run: bool,
    pub series: Option<String>,
    pub retention_days: Option<u32>,
    pub keep_min: Option<u32>,
    /// Lifts the limit of half a series' successful backups per run.
    pub force: bool,
}

impl Ops {
    /// Deletes the backup `name` (and a failed attempt of that name); returns the keys removed.
    pub fn delete(&self, name: &str) -> Result<Vec<String>, Error> {
        BackupName::parse(name)?;
        let lock = self.lock(&format!("delete {name}"))?;
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
            lock.ensure()?;
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

    /// Applies retention to every series, and removes leftovers: temporary files and data files
    /// that no manifest names, older than [`ORPHAN_GRACE`].
    pub(super) fn prune_unreported(&self, opts: PruneOptions) -> Result<PruneOutcome, Error> {
        let lock = if opts.dry_run {
            None
        } else {
            Some(self.lock("prune")?)
        };
        let cat = self.catalog()?;
        let wanted = |m: &Manifest| opts.series.as_ref().is_none_or(|s| *s == m.series);
        let over = Override {
            retention_days: opts.retention_days,
            keep_min: opts.keep_min,
        };
        let mut policies: BTreeMap<(String, String), Policy> = BTreeMap::new();
        // Newest first: the first manifest seen of a (database, series) is its newest.
        for m in cat.backups.iter().filter(|m| wanted(m)) {
            let key = (database_identity(m), m.series.clone());
            let keep_min = cat
                .backups
                .iter()
                .filter(|b| b.series == m.series && database_identity(b) == key.0)
                .map(|b| b.keep_min)
                .max()
                .unwrap_or(1)
                .max(self.settings.keep_min);
            policies.entry(key).or_insert(Policy {
                retention_days: opts.retention_days.unwrap_or(m.retention_days),
                keep_min: opts.keep_min.unwrap_or(keep_min),
            });
        }
        let candidates: Vec<Candidate> = cat
            .backups
            .iter()
            .filter(|m| wanted(m))
            .map(candidate)
            .collect();
        let plan = retention::plan(
            &candidates,
            &Rules {
                keep_min_at_least: self.settings.keep_min,
                overrides: &|_, _| over,
                force: opts.force,
                policies: &self.settings.series,
            },
            Utc::now(),
        );
        let decisions = plan.decisions;
        let (leftovers, orphans) = self.leftovers(&cat)?;
        let mut errors = Vec::new();
        let mut notes = plan.notes;
        if !cat.unreadable.is_empty() {
            notes.push(format!(
                "{} manifest(s) cannot be read (the first: {}): their backups are kept, and no data object is removed while one is unreadable; repair or delete the manifest, or upgrade dbkeep if a newer one wrote it",
                cat.unreadable.len(),
                cat.unreadable[0]
            ));
        }
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
        if let Some(lock) = &lock {
            errors.extend(self.execute(&cat, &decisions, lock));
            for key in &leftovers {
                if let Err(e) = lock.ensure().and_then(|()| self.storage.delete(key)) {
                    errors.push(e.to_string());
                    if matches!(e, storage::StorageError::LeaseLost { .. }) {
                        break;
                    }
                }
            }
        }
        // WAL retention, from what is kept now: a backup whose delete failed still needs its WAL.
        let wal = match &lock {
            None => {
                let deleted: std::collections::BTreeSet<&str> = decisions
                    .iter()
                    .filter(|d| d.action == Action::Delete)
                    .map(|d| d.name.as_str())
                    .collect();
                let kept: Vec<&Manifest> = cat
                    .backups
                    .iter()
                    .filter(|m| !deleted.contains(m.backup_name.as_str()))
                    .collect();
                self.prune_wal(&kept, !cat.unreadable.is_empty(), None)
            }
            Some(lock) => match self.catalog() {
                Ok(now) => {
                    let kept: Vec<&Manifest> = now.backups.iter().collect();
                    self.prune_wal(&kept, !now.unreadable.is_empty(), Some(lock))
                }
                Err(e) => super::wal_prune::WalPrune {
                    errors: vec![format!(
                        "WAL retention skipped: cannot read the catalog: {e}"
                    )],
                    ..Default::default()
                },
            },
        };
        notes.extend(wal.notes);
        errors.extend(wal.errors);
        Ok(PruneOutcome {
            wal_removed: wal.removed,
            decisions,
            policies,
            overridden: opts.series.filter(|_| over != Override::default()),
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
    ///
    /// Conservative when unsure: while any manifest cannot be read, no data object is removed
    /// (a renamed or damaged manifest may own any of them); they are reported instead.
    pub(super) fn leftovers(&self, cat: &Catalog) -> Result<(Vec<String>, Vec<String>), Error> {
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
            } else if is_data && !cat.may_own(&o.key) {
                // In a directory, such a file may be the user's own (a live app.db): reported.
                // A bucket prefix holds only what dbkeep wrote: an upload whose manifest never
                // came is removed, unless some manifest cannot be read.
                if self.storage.owns_every_object() && cat.unreadable.is_empty() {
                    temps.push(o.key);
                } else {
                    orphans.push(o.key);
                }
            }
        }
        Ok((temps, orphans))
    }

    /// Carries out the deletions of a retention plan; returns the errors (it goes on after one).
    /// Each delete only while the lock is still this run's: a lost lease stops it there.
    pub(super) fn execute(&self, cat: &Catalog, plan: &[Decision], lock: &RepoLock) -> Vec<String> {
        let mut errors = Vec::new();
        for d in plan.iter().filter(|d| d.action == Action::Delete) {
            if let Err(e) = lock.ensure() {
                errors.push(e.to_string());
                break;
            }
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
