//! `dbkeep verify`: each chosen backup's stored file read back and checked.

use super::*;
use crate::catalog::{Catalog, Manifest};
use crate::error::Error;
use crate::naming::BackupName;

impl Ops {
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
