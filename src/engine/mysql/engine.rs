//! MySQL and MariaDB behind the engine seam ([`crate::engine::seam`]).

use super::*;
use crate::engine::seam::{DatabaseEngine, DumpRequest, EngineError, RestoreReport, Source};
use crate::engine::{DatabaseType, DrillLog, DumpInfo, RowCounts};
use std::io::{BufReader, Read, Write};

/// A dump to load, from a stream or a file.
fn reader(source: Source<'_>) -> Result<Box<dyn Read + '_>, EngineError> {
    match source {
        Source::Stream(r) => Ok(Box::new(r)),
        Source::File(path) => std::fs::File::open(path)
            .map(|f| Box::new(BufReader::new(f)) as Box<dyn Read>)
            .map_err(|source| EngineError::Io {
                what: "open the staged dump",
                source,
            }),
    }
}

impl DatabaseEngine for Mysql {
    fn database_type(&self) -> DatabaseType {
        DatabaseType::Mysql
    }

    fn dump(&self, _req: DumpRequest<'_>, out: &mut dyn Write) -> Result<DumpInfo, EngineError> {
        Ok(Mysql::dump(self, out)?)
    }

    fn restore(&self, source: Source<'_>, _backup_db: &str) -> Result<RestoreReport, EngineError> {
        let kept_old = Mysql::restore(self, &mut reader(source)?)?;
        Ok(RestoreReport {
            kept_old,
            unavailable: None,
        })
    }

    fn drill(
        &self,
        source: Source<'_>,
        expected: Option<&RowCounts>,
        log: &mut DrillLog,
    ) -> Result<(), EngineError> {
        Mysql::drill(self, &mut reader(source)?, expected, log).map_err(|e| match e {
            MysqlError::Drill(problem) => EngineError::Drill(problem),
            e => e.into(),
        })
    }

    fn recover_interrupted(&self) -> Result<Vec<String>, EngineError> {
        Ok(Mysql::recover_interrupted(self)?)
    }
}
