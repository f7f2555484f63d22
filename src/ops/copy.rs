//! Copies to other repositories: `dbkeep copy` and the `copy_to` targets after a backup.

use super::*;
use crate::catalog::{self, CopyRecord, Manifest};
use crate::codec::HashingReader;
use crate::config::CopyTarget;
use crate::error::Error;
use crate::naming::BackupName;
use crate::storage::{self, RepoLock, Storage};
use chrono::Utc;
use std::io;
use tracing::warn;

impl Ops {
    /// Copies the backup `name` to the repository `to` (a configured `copy_to` with its
    /// settings, or any path or URL with the primary's S3 settings).
    pub fn copy(&self, name: &str, to: &str) -> Result<Manifest, Error> {
        let op = crate::progress::begin("copy", &self.settings.database, Some(name));
        op.progress().set_phase("copying");
        BackupName::parse(name)?;
        let lock = self.lock(&format!("copy {name}"))?;
        let mut m = self.committed(name)?;
        let errors = self.copy_to_targets(&mut m, &[self.settings.copy_target(to)], &lock);
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
    pub(super) fn committed(&self, name: &str) -> Result<Manifest, Error> {
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
    pub(super) fn open_target(&self, target: &CopyTarget) -> Result<Box<dyn Storage>, Error> {
        Ok(storage::open(
            &target.location,
            &target.s3(&self.settings.s3),
            self.settings.scratch_dir.as_deref(),
        )?)
    }

    /// Copies the committed backup `m` to each target and records every outcome in its
    /// manifests (here and in each repository that now holds it). Returns the failures.
    pub(super) fn copy_to_targets(
        &self,
        m: &mut Manifest,
        targets: &[CopyTarget],
        lock: &RepoLock,
    ) -> Vec<String> {
        if targets.is_empty() {
            return Vec::new();
        }
        let mut errors = Vec::new();
        let mut holders: Vec<(Box<dyn Storage>, String)> = Vec::new();
        for t in targets {
            let copied = self.open_target(t).and_then(|dest| {
                let data_key = self.copy_into(m, dest.as_ref())?;
                Ok((dest, data_key))
            });
            let (ok, error) = match copied {
                Ok(held) => {
                    holders.push(held);
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
        let mut lost = None;
        match lock.ensure() {
            Ok(()) => write(self.storage.as_ref(), m),
            Err(e) => lost = Some(format!("recording the copies: {e}")),
        }
        for (dest, data_key) in &holders {
            let mut there = m.clone();
            there.data_file = Some(data_key.clone());
            there.file_path = Some(dest.display_path(data_key));
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
        errors.extend(lost);
        errors
    }

    /// Copies the stored bytes of `m` into `dest`, checking their SHA-256 on the way, then its
    /// manifest; returns the data file's key there. A copy already complete there is left as it
    /// is. Nothing is ever deleted there (write-once credentials and object lock work): data
    /// already under the key is reused when it is these very bytes, else the copy goes under a
    /// key of its own. The manifest there is replaced only by a newer backup of the same
    /// database under the same name (a `--replace`), and only a manifest that is not there
    /// (not one that cannot be read) counts as missing.
    pub(super) fn copy_into(&self, m: &Manifest, dest: &dyn Storage) -> Result<String, Error> {
        let key = m.data_file.as_deref().ok_or_else(|| Error::Damaged {
            name: m.backup_name.clone(),
            problem: "the manifest names no data file".into(),
        })?;
        let replacing = match catalog::read_manifest(dest, &m.key()) {
            Ok(there) if there.sha256 == m.sha256 => {
                return Ok(there.data_file.unwrap_or_else(|| key.to_owned()));
            }
            Ok(there)
                if database_identity(&there) == database_identity(m)
                    && there.finished_at < m.finished_at =>
            {
                true
            }
            Ok(_) => {
                return Err(storage::StorageError::AlreadyExists {
                    key: m.key(),
                    location: dest.location(),
                }
                .into());
            }
            Err(catalog::CatalogError::Storage(storage::StorageError::NotFound { .. })) => false,
            Err(e) => return Err(e.into()),
        };
        let mut data_key = key.to_owned();
        let reuse = match dest.stat(key)? {
            None => false,
            Some(_) => {
                // An earlier copy that died before its manifest, or the replaced backup's data.
                let mut there = HashingReader::new(dest.open(key)?);
                io::copy(&mut there, &mut io::sink()).map_err(io_err("read the copy's data"))?;
                let digest = there.finish().map_err(io_err("read the copy's data"))?;
                if Some(&digest.sha256) != m.sha256.as_ref() {
                    data_key = format!(
                        "{}.{}{}",
                        m.backup_name,
                        Utc::now().format("%Y%m%dT%H%M%S%3fZ"),
                        &key[m.backup_name.len()..]
                    );
                    false
                } else {
                    true
                }
            }
        };
        if !reuse {
            let mut src = HashingReader::new(crate::progress::counting_reader(
                self.storage.open(key)?,
                crate::progress::Count::Read,
            ));
            let mut w = dest.create_new(&data_key)?;
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
        }
        let mut there = m.clone();
        there.data_file = Some(data_key.clone());
        there.file_path = Some(dest.display_path(&data_key));
        let json = there.to_json()?;
        if replacing {
            dest.put(&there.key(), &json)?;
        } else {
            dest.put_new(&there.key(), &json)?;
        }
        Ok(data_key)
    }
}
