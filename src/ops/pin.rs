//! `dbkeep pin` / `unpin`: exempt a backup from retention, or give it back. The flag lives in
//! the backup's manifest, written under the repository lock; a pinned manifest is
//! `manifest_version` 2, so that a dbkeep that does not know pins keeps the backup as
//! unreadable rather than delete it by age.

use super::*;
use crate::catalog::Manifest;
use crate::error::Error;
use crate::naming::BackupName;
use tracing::info;

impl Ops {
    /// Sets the pin of the backup `name`; returns its manifest as written (unchanged when it
    /// already was so).
    pub fn pin(&self, name: &str, pinned: bool) -> Result<Manifest, Error> {
        BackupName::parse(name)?;
        let what = if pinned { "pin" } else { "unpin" };
        let lock = self.lock(&format!("{what} {name}"))?;
        let mut m = self.committed(name)?;
        if m.pinned == pinned {
            return Ok(m);
        }
        m.pinned = pinned;
        m.manifest_version = m.required_version();
        let json = m.to_json()?;
        lock.ensure()?;
        self.storage.put(&m.key(), &json)?;
        info!(backup = %name, pinned, "pin changed");
        Ok(m)
    }
}
