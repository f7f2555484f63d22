//! How a stored dump is read back, by the format its manifest records (not the configured
//! engine: a repository may hold an older format): whether a restore streams it or needs it
//! staged in a file, and what checks its content. `ops/read.rs` asks this and never matches on
//! the database type; a new engine adds its format here.

use super::{DatabaseType, PgFormat, RowCounts, mysql, postgres, sqlite};
use crate::codec::Tail;
use std::io::{self, Read};
use std::path::Path;

/// How much of a backup a check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Everything: decryption, decompression, the engine's content check (`verify`).
    Full,
    /// What a restore needs before it touches the database: size, SHA-256 (the stored bytes are
    /// exactly what the successful backup wrote) and the key. A stream is then checked while
    /// it loads; a custom archive is staged and listed; a SQLite copy is staged only: its
    /// SHA-256 proves it is the very copy that passed `quick_check` when it was backed up.
    Restore,
    /// A drill's: as [`Depth::Restore`], and a SQLite copy's full `integrity_check` (every
    /// index against its table: more than the backup's `quick_check` proved).
    Drill,
}

/// A stored dump's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// pg_dump's plain SQL: streamed into psql.
    PgSql,
    /// pg_dump's custom archive: pg_restore -j needs a seekable file.
    PgCustom,
    /// A SQLite database file.
    Sqlite,
    /// mariadb-dump/mysqldump SQL: streamed into the client.
    Mysql,
    /// A PostgreSQL base backup: a tar of the data directory, read as a stream (unpacked into
    /// a data directory, or checked file by file against pg_basebackup's manifest).
    PgPhysical,
}

/// Where a restore or drill of a format reads from a file: its scratch name, and whether the
/// stored file itself will do when it is local and neither compressed nor encrypted by dbkeep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staging {
    pub file: &'static str,
    pub in_place: bool,
}

impl Format {
    /// The format of a backup whose manifest records `db` (and, for PostgreSQL, `pg`).
    pub fn of(db: DatabaseType, pg: Option<PgFormat>) -> Self {
        match (db, pg.unwrap_or_default()) {
            (DatabaseType::Postgresql, PgFormat::Sql) => Format::PgSql,
            (DatabaseType::Postgresql, PgFormat::Custom) => Format::PgCustom,
            (DatabaseType::Postgresql, PgFormat::Physical) => Format::PgPhysical,
            (DatabaseType::Sqlite, _) => Format::Sqlite,
            (DatabaseType::Mysql, _) => Format::Mysql,
        }
    }

    /// The `pg_format` a new backup of `db` records, given `BACKUP_PG_FORMAT`.
    pub fn pg_format_of_new(db: DatabaseType, configured: PgFormat) -> Option<PgFormat> {
        (db == DatabaseType::Postgresql).then_some(configured)
    }

    /// Whether a restore or drill reads it as a stream from the repository.
    pub fn streams(self) -> bool {
        matches!(self, Format::PgSql | Format::Mysql | Format::PgPhysical)
    }

    /// Whether it is a base backup (restored into a data directory, not a live database).
    pub fn physical(self) -> bool {
        self == Format::PgPhysical
    }

    /// Whether its full check compares the rows it holds with the manifest's counts.
    pub fn checks_counts(self) -> bool {
        self == Format::Mysql
    }

    /// Where a check at `depth` stages it (`None`: it reads the stream through).
    pub fn staging(self, depth: Depth) -> Option<Staging> {
        match (self, depth) {
            (Format::PgCustom, Depth::Restore | Depth::Drill) => Some(Staging {
                file: "restore.dump",
                in_place: true,
            }),
            (Format::Sqlite, Depth::Restore) => Some(Staging {
                file: "restore.db",
                in_place: false,
            }),
            (Format::Sqlite, Depth::Full | Depth::Drill) => Some(Staging {
                file: "verify.db",
                in_place: false,
            }),
            _ => None,
        }
    }

    /// The content check of a stream read through (formats that [`Format::staging`] does not
    /// stage at `depth`); `expected` are the manifest's row counts.
    pub fn check_stream(
        self,
        depth: Depth,
        dec: &mut dyn Read,
        expected: Option<&RowCounts>,
        pg_bindir: Option<&Path>,
    ) -> Result<String, String> {
        match (self, depth) {
            (Format::PgSql, Depth::Full) => check_pg_sql(dec),
            (Format::PgCustom, _) => postgres::check_archive(pg_bindir, dec)
                .map(|()| "complete custom archive (pg_restore read every entry)".into())
                .map_err(|e| format!("the archive is not complete: {e}")),
            (Format::Mysql, Depth::Full) => check_mysql(dec, expected),
            (Format::PgPhysical, Depth::Full) => check_physical(dec),
            (Format::PgPhysical, _) => Ok(
                "base backup: every file checked against pg_basebackup's manifest as it unpacks"
                    .into(),
            ),
            (Format::PgSql, _) => {
                Ok("plain SQL: decompression and completeness checked while it loads".into())
            }
            (Format::Mysql, _) => Ok(
                "SQL dump: decompression, statements and completeness checked while it loads"
                    .into(),
            ),
            (Format::Sqlite, _) => Err("a SQLite copy is checked staged".into()),
        }
    }

    /// The content check of a staged file.
    pub fn check_staged(
        self,
        depth: Depth,
        path: &Path,
        in_place: bool,
        pg_bindir: Option<&Path>,
    ) -> Result<String, String> {
        match (self, depth) {
            (Format::PgCustom, _) => {
                postgres::list_archive(pg_bindir, path)
                    .map_err(|e| format!("pg_restore cannot read the archive: {e}"))?;
                let how = if in_place {
                    "custom archive read in place"
                } else {
                    "custom archive staged"
                };
                Ok(format!("{how}; pg_restore reads its table of contents"))
            }
            (Format::Sqlite, Depth::Restore) => {
                Ok("SQLite copy staged (the copy that passed quick_check at backup time)".into())
            }
            (Format::Sqlite, _) => sqlite::integrity_check(path)
                .map(|()| "SQLite integrity_check ok".into())
                .map_err(|e| e.to_string()),
            _ => Err("this format is checked as a stream".into()),
        }
    }
}

/// Reads a plain dump to its end: it must decompress and end with pg_dump's trailer.
pub fn check_pg_sql(dec: &mut dyn Read) -> Result<String, String> {
    let mut tail = Tail::new(postgres::TRAILER_WINDOW);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => tail.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("decompressing failed: {e}")),
        }
    }
    if postgres::has_trailer(tail.bytes()) {
        Ok("complete pg_dump output (trailer present)".into())
    } else {
        Err("the dump does not end with pg_dump's completion trailer (incomplete dump)".into())
    }
}

/// Reads a whole base backup: every file against pg_basebackup's manifest, and the WAL from
/// its start to its end.
pub fn check_physical(dec: &mut dyn Read) -> Result<String, String> {
    let s = postgres::physical::archive::read(dec, None)?;
    Ok(summary_of(&s))
}

/// What a base backup holds, for a check's line.
pub fn summary_of(s: &postgres::physical::archive::Summary) -> String {
    format!(
        "base backup complete: {} files ({} bytes) match pg_basebackup's manifest (SHA-256), {} WAL segments cover {} to {}",
        s.files - s.segments,
        s.bytes,
        s.segments,
        // WAL-Ranges lists the newest timeline first.
        s.manifest
            .wal
            .last()
            .map(|r| r.start.to_string())
            .unwrap_or_default(),
        s.manifest
            .wal
            .first()
            .map(|r| r.end.to_string())
            .unwrap_or_default(),
    )
}

/// Reads a whole MySQL dump: every statement one a restore loads, the trailer at its end, and
/// the rows it holds equal to the manifest's counts.
pub fn check_mysql(dec: &mut dyn Read, expected: Option<&RowCounts>) -> Result<String, String> {
    let mut tail = Tail::new(4096);
    let mut teed = crate::codec::TeeTail {
        inner: dec,
        tail: &mut tail,
    };
    let counts =
        mysql::count_rows(&mut teed).map_err(|e| format!("the dump cannot be restored: {e}"))?;
    if !mysql::has_trailer(tail.bytes()) {
        return Err("the dump does not end with \"-- Dump completed\" (incomplete dump)".into());
    }
    match expected {
        Some(expected) if *expected != counts => Err(format!(
            "the dump's rows differ from the manifest's counts: {}",
            super::compare_counts(Some(expected), &counts)
                .err()
                .unwrap_or_default()
        )),
        Some(_) => Ok(format!(
            "complete dump (trailer present; every statement loadable; {} rows in {} tables, as the manifest says)",
            counts.values().sum::<u64>(),
            counts.len()
        )),
        None => Ok("complete dump (trailer present; every statement loadable)".into()),
    }
}
