//! PostgreSQL behind the engine seam ([`crate::engine::seam`]): the inherent methods of
//! [`Postgres`] (dump, restore through a staging database, drill in a scratch database,
//! recovery), each error kept as the `PostgresError` it is.

use super::*;
use crate::engine::seam::{DatabaseEngine, DumpRequest, EngineError, Readiness, RestoreReport};
use crate::engine::{DatabaseType, DrillLog, DumpInfo, RowCounts};
use std::io::Write;

impl DatabaseEngine for Postgres {
    fn database_type(&self) -> DatabaseType {
        DatabaseType::Postgresql
    }

    fn dump(&self, req: DumpRequest<'_>, out: &mut dyn Write) -> Result<DumpInfo, EngineError> {
        if req.format == crate::engine::PgFormat::Physical {
            let spool = req.spool_dir.ok_or_else(|| {
                EngineError::Source("a base backup needs a spool directory".into())
            })?;
            return Ok(Postgres::base_backup(self, spool, out)?);
        }
        Ok(Postgres::dump(self, req.format, req.archive_level, out)?)
    }

    fn restore(&self, source: Source<'_>, backup_db: &str) -> Result<RestoreReport, EngineError> {
        let r = Postgres::restore(self, source, backup_db)?;
        Ok(RestoreReport {
            kept_old: r.kept_old,
            unavailable: Some(r.unavailable),
        })
    }

    fn drill(
        &self,
        source: Source<'_>,
        expected: Option<&RowCounts>,
        log: &mut DrillLog,
    ) -> Result<(), EngineError> {
        Postgres::drill(self, source, expected, log).map_err(|e| match e {
            PostgresError::Drill(problem) => EngineError::Drill(problem),
            e => e.into(),
        })
    }

    fn pitr_readiness(&self) -> Result<Readiness, EngineError> {
        Ok(Postgres::pitr_readiness(self)?)
    }

    fn wal_source(&self) -> Option<&dyn crate::engine::seam::WalSource> {
        Some(self)
    }

    fn recover_interrupted(&self) -> Result<Vec<String>, EngineError> {
        Ok(Postgres::recover_interrupted(self)?)
    }
}
