//! Point-in-time recovery's use cases. So far `wal check`: whether the configured server can
//! serve base backups and a WAL stream, each check with what to change (the engine says; only
//! PostgreSQL can).

use super::*;
use crate::engine::seam::Readiness;

impl Ops {
    /// `dbkeep wal check`: the server's readiness for point-in-time recovery.
    pub fn wal_check(&self) -> Result<Readiness, Error> {
        let (engine, _url) = Engine::from_settings(&self.settings)?;
        Ok(engine.pitr_readiness()?)
    }
}
