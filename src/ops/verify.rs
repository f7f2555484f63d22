//! `dbkeep verify`: each chosen backup's stored file read back and checked.

use super::*;
use crate::catalog::{Catalog, Manifest};
use crate::error::Error;
use crate::naming::BackupName;

impl Ops {
    /// Verifies one or more backups; each report says what was checked or what is wrong.
    pub fn verify(&self, target: &VerifyTarget) -> Result<Vec<VerifyReport>, Error> {
        let op = crate::progress::begin("verify", &self.settings.database, None);
        op.progress().set_phase("reading the stored files");
        let keys = self.keys()?;
        let cat = self.catalog()?;
        let chosen = self.choose(&cat, target)?;
        let mut reports: Vec<VerifyReport> = chosen
            .into_iter()
            .map(|m| VerifyReport {
                name: m.backup_name.clone(),
                result: {
                    let mut checks = Vec::new();
                    self.check(m, keys.as_ref(), Depth::Full, &mut checks)
                        .map(|_| checks)
                },
            })
            .collect();
        if matches!(target, VerifyTarget::All) {
            reports.extend(unreadable_reports(&cat));
        }
        Ok(reports)
    }

    /// The successful backups `target` names.
    pub(super) fn choose<'c>(
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
}

/// A failed report for each manifest that cannot be read: its backup can be neither verified
/// nor restored.
pub(super) fn unreadable_reports(cat: &Catalog) -> Vec<VerifyReport> {
    cat.unreadable
        .iter()
        .map(|e| {
            let name = match e {
                crate::catalog::CatalogError::Invalid { key, .. } => {
                    crate::catalog::backup_name_of(key)
                        .unwrap_or(key)
                        .to_owned()
                }
                other => other.to_string(),
            };
            VerifyReport {
                name,
                result: Err(Error::UnreadableManifest(e.to_string())),
            }
        })
        .collect()
}
