//! Restores through a staging database: the dump loads into a new database
//! `NAME_dbkeep_new_…` (created with the dump's encoding, locale and owner), never under the live
//! name, while the live database stays online and untouched. Then the whole-database properties
//! the dump holds (settings, comment, grants, role settings in it) are applied to the staging
//! database by name, the live database's sessions end, and one transaction renames the live
//! database aside and the staging database to the live name. Any failure before that commit
//! drops the staging database and leaves the live one as it was.
//!
//! A run killed mid-way leaves at most a staging database (nobody else knows its name, so no
//! client wrote to it) whose name says which host and process made it, and whether the live
//! database had connections blocked: [`Postgres::recover_interrupted`] drops it once that
//! process is provably gone, and unblocks the live database. It never drops anything a client
//! could have written to: a previous database left aside after the swap is only reported.

use super::*;
use crate::engine::process;
use crate::engine::retarget::{Captured, Retarget};
use crate::signals;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How a restore went.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    /// The previous database, kept under this name (BACKUP_RESTORE_KEEP_OLD).
    pub kept_old: Option<String>,
    /// How long the live name refused connections: from blocking them to the swap's commit.
    pub unavailable: Duration,
}

/// `name_dbkeep_old_20240115103000`, cut to PostgreSQL's 63-byte identifier limit.
pub(super) fn aside_name(target: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let suffix = format!("_dbkeep_old_{}", now.format("%Y%m%d%H%M%S"));
    aside_base(target) + &suffix
}

/// The part of an aside name before `_dbkeep_old_`.
fn aside_base(target: &str) -> String {
    base_within(target, 63 - "_dbkeep_old_YYYYmmddHHMMSS".len())
}

/// `target` cut at a character boundary to at most `max` bytes.
fn base_within(target: &str, max: usize) -> String {
    let mut base = target.to_owned();
    while base.len() > max {
        base.pop();
    }
    base
}

const STAGING_MARK: &str = "_dbkeep_new_";

/// The staging database of a restore of `target` by process `pid` of this host:
/// `BASE_dbkeep_new_<host>_<pid>_<a|n><random>`, `a` when the live database accepted
/// connections (so that recovery knows to allow them again), within 63 bytes.
fn staging_name(target: &str, pid: u32, live_allowed: bool) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let flag = if live_allowed { 'a' } else { 'n' };
    let suffix = format!(
        "{STAGING_MARK}{}_{pid}_{flag}{:06x}",
        super::drill::host_tag(),
        nanos & 0xff_ffff
    );
    base_within(target, 63 - suffix.len()) + &suffix
}

/// Of a staging database of `target` made on this host: the pid of its restore, and whether
/// the live database accepted connections before.
fn staging_owner(name: &str, target: &str) -> Option<(u32, bool)> {
    let at = name.rfind(STAGING_MARK)?;
    let (base, rest) = (&name[..at], &name[at + STAGING_MARK.len()..]);
    if !target.starts_with(base) || base.is_empty() && !target.is_empty() {
        return None;
    }
    let mut parts = rest.split('_');
    let (host, pid, flag) = (parts.next()?, parts.next()?, parts.next()?);
    if host != super::drill::host_tag() || parts.next().is_some() {
        return None;
    }
    Some((pid.parse().ok()?, flag.starts_with('a')))
}

/// `stmt` with the database it names (`DATABASE name`, bare or quoted as pg_dump writes it)
/// renamed to `to`; `None` if it names no such database.
fn renamed(stmt: &str, from: &str, to: &str) -> Option<String> {
    let quoted = ident(from);
    let mut search = 0;
    while let Some(i) = stmt[search..].find("DATABASE ") {
        let start = search + i + "DATABASE ".len();
        let rest = &stmt[start..];
        let len = if rest.starts_with(&quoted) {
            Some(quoted.len())
        } else if rest.starts_with(from)
            && rest[from.len()..]
                .chars()
                .next()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '$'))
        {
            Some(from.len())
        } else {
            None
        };
        if let Some(len) = len {
            return Some(format!("{}{}{}", &stmt[..start], ident(to), &rest[len..]));
        }
        search = start;
    }
    None
}

/// A staging database, dropped when this goes unless the swap took it.
struct Staging<'a> {
    pg: &'a Postgres,
    name: String,
    swapped: bool,
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if !self.swapped
            && let Err(e) = self.pg.drop_database(&self.name)
        {
            tracing::error!(database = %self.name, error = %e, "could not drop the restore's staging database: the next run drops it, or drop it by hand");
        }
    }
}

impl Postgres {
    /// Restores a dump of the database `backup_db` through a staging database (see the
    /// module): the live database is untouched until the load and every whole-database
    /// property are in, then swapped in one transaction.
    pub fn restore(
        &self,
        source: Source<'_>,
        backup_db: &str,
    ) -> Result<RestoreReport, PostgresError> {
        let target = self.conn.database.clone();
        if backup_db != target {
            return Err(PostgresError::DatabaseMismatch {
                backup: backup_db.to_owned(),
                configured: target,
            });
        }
        if signals::interrupted() {
            return Err(PostgresError::Interrupted);
        }
        self.recover_interrupted()?;
        let found = self.maintenance(&[format!(
            "SELECT datallowconn FROM pg_database WHERE datname = {}",
            literal(&target)
        )])?;
        let live_allowed = match found.trim() {
            "" => None,
            v => Some(v == "t"),
        };
        let staging_db = staging_name(&target, std::process::id(), live_allowed == Some(true));
        let app_name = format!("dbkeep restore {staging_db}");
        match source {
            Source::Stream(input) => {
                let mut retarget = self.restrict(Retarget::for_restore(BufReader::with_capacity(
                    CHUNK, input,
                )));
                // Reading the first bytes runs the preamble through: CREATE DATABASE is known.
                let mut first = vec![0u8; CHUNK];
                let n = read_some(&mut retarget, &mut first).map_err(PostgresError::Input)?;
                first.truncate(n);
                let preamble = captured(&retarget)?.to_vec();
                let staging = self.create_staging(&preamble, &target, &staging_db)?;
                let mut rest = io::Cursor::new(first).chain(&mut retarget);
                self.load_sql(&staging.name, &mut rest, &app_name, None)?;
                let statements = captured(&retarget)?.to_vec();
                self.finish(staging, &statements, &target, live_allowed)
            }
            Source::File(path) => {
                let statements = self.archive_statements(path)?;
                let staging = self.create_staging(&statements, &target, &staging_db)?;
                self.load_archive(path, &staging.name, &app_name, None)?;
                self.finish(staging, &statements, &target, live_allowed)
            }
        }
    }

    /// The whole-database statements of a custom archive, as `pg_restore --create` writes them.
    pub(super) fn archive_statements(&self, path: &Path) -> Result<Vec<Captured>, PostgresError> {
        let mut cmd = self.command("pg_restore", &self.maintenance_db);
        cmd.args(["--create", "--schema-only", "--file=-"])
            .arg(path)
            .stdin(Stdio::null());
        let sql = process::output(cmd, HINT, self.secrets())?;
        let mut retarget = Retarget::for_restore(io::Cursor::new(sql.into_bytes()));
        io::copy(&mut retarget, &mut io::sink()).map_err(PostgresError::Input)?;
        Ok(captured(&retarget)?.to_vec())
    }

    /// Creates the staging database as the dump's `CREATE DATABASE` and owner say.
    fn create_staging(
        &self,
        statements: &[Captured],
        target: &str,
        staging_db: &str,
    ) -> Result<Staging<'_>, PostgresError> {
        let mut create = statements
            .iter()
            .filter(|c| !c.after_connect)
            .filter_map(|c| renamed(&c.sql, target, staging_db));
        let Some(first) = create.next().filter(|s| s.starts_with("CREATE DATABASE")) else {
            return Err(PostgresError::NoCreateDatabase);
        };
        self.maintenance(&[first])?;
        let staging = Staging {
            pg: self,
            name: staging_db.to_owned(),
            swapped: false,
        };
        for stmt in create {
            self.maintenance(&[stmt])?;
        }
        Ok(staging)
    }

    /// Applies the whole-database statements of after the dump's `\connect` to the staging
    /// database, then swaps it in for the live one.
    fn finish(
        &self,
        mut staging: Staging<'_>,
        statements: &[Captured],
        target: &str,
        live_allowed: Option<bool>,
    ) -> Result<RestoreReport, PostgresError> {
        for c in statements.iter().filter(|c| c.after_connect) {
            if let Some(stmt) = renamed(&c.sql, target, &staging.name) {
                self.maintenance(&[stmt])?;
            }
        }
        if signals::interrupted() {
            return Err(PostgresError::Interrupted);
        }
        let mut report = RestoreReport::default();
        let Some(allowed) = live_allowed else {
            // No live database: the staging one takes the name.
            self.maintenance(&[format!(
                "ALTER DATABASE {} RENAME TO {}",
                ident(&staging.name),
                ident(target)
            )])?;
            staging.swapped = true;
            return Ok(report);
        };
        let aside = aside_name(target, chrono::Utc::now());
        let blocked = Instant::now();
        if allowed {
            self.maintenance(&[format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
                ident(target)
            )])?;
        }
        crate::faults::point("restore-before-swap");
        let swap = self.swap(target, &aside, &staging.name);
        report.unavailable = blocked.elapsed();
        if let Err(e) = swap {
            if allowed {
                let _ = self.maintenance(&[format!(
                    "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                    ident(target)
                )]);
            }
            return Err(e);
        }
        staging.swapped = true;
        tracing::info!(database = %target, unavailable_ms = report.unavailable.as_millis() as u64, "restored database swapped in");
        crate::faults::point("restore-after-swap");
        if self.keep_old {
            if let Err(e) = self.maintenance(&[format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allowed}",
                ident(&aside)
            )]) {
                tracing::warn!(database = %aside, error = %e, "the restore succeeded but the kept previous database still refuses connections");
            }
            report.kept_old = Some(aside);
        } else if let Err(e) = self.drop_database(&aside) {
            tracing::warn!(database = %aside, error = %e, "the restore succeeded but the previous database could not be dropped: drop it by hand");
        }
        Ok(report)
    }

    /// Ends the live database's sessions and, in one transaction, renames it aside and the
    /// staging database to its name. Retries while ended sessions are still going.
    fn swap(&self, target: &str, aside: &str, staging: &str) -> Result<(), PostgresError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.maintenance(&[
                terminate_sql(target),
                format!(
                    "ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}",
                    ident(target),
                    ident(aside),
                    ident(staging),
                    ident(target)
                ),
            ]);
            match r {
                Ok(_) => return Ok(()),
                // Terminated sessions take a moment to go.
                Err(e) if attempt < 50 && sqlstate_is(&e, OBJECT_IN_USE) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Cleans up after restores of the live database killed on this host: drops each staging
    /// database whose restore process is provably gone (no client knew its name) and allows
    /// connections to the live database again if that restore had blocked them. A previous
    /// database left aside after a swap is only reported, never dropped. Returns what it did.
    pub fn recover_interrupted(&self) -> Result<Vec<String>, PostgresError> {
        let target = self.conn.database.clone();
        let found = self.maintenance(&[format!(
            "SELECT datname || '|' || datallowconn FROM pg_database WHERE datname LIKE '%\\_dbkeep\\_new\\_%' OR datname LIKE {} OR datname = {}",
            literal(&format!("{}\\_dbkeep\\_old\\_%", aside_base(&target).replace('_', "\\_").replace('%', "\\%"))),
            literal(&target)
        )])?;
        let mut done = Vec::new();
        let mut live_blocked = false;
        let mut staging = Vec::new();
        let mut aside = Vec::new();
        for line in found.lines() {
            let Some((name, allow)) = line.rsplit_once('|') else {
                continue;
            };
            if name == target {
                live_blocked = allow == "false";
            } else if let Some(owner) = staging_owner(name, &target) {
                staging.push((name.to_owned(), owner));
            } else if name.contains("_dbkeep_old_") {
                aside.push(name.to_owned());
            }
        }
        for (name, (pid, allowed_before)) in staging {
            if !process::process_gone(pid) {
                continue;
            }
            if allowed_before && live_blocked {
                self.maintenance(&[format!(
                    "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                    ident(&target)
                )])?;
                live_blocked = false;
                done.push(format!(
                    "an interrupted restore had blocked connections to {target:?}: allowed again"
                ));
            }
            self.drop_database(&name)?;
            done.push(format!(
                "dropped {name:?}, the staging database of an interrupted restore (the live database was never touched)"
            ));
        }
        if !self.keep_old {
            for name in aside {
                tracing::warn!(database = %name, "a previous database left by an interrupted restore (after its swap): it is kept; drop it once you are sure");
            }
        }
        Ok(done)
    }
}

/// The statements a [`Retarget`] kept aside, or the error when there were too many.
fn captured<R: io::BufRead>(r: &Retarget<R>) -> Result<&[Captured], PostgresError> {
    r.captured().ok_or(PostgresError::TooManyDatabaseStatements)
}

/// Reads until `buf` has some bytes or the input ends.
/// Reads until `buf` is full or the input ends (the preamble of a dump fits in the first).
pub(super) fn read_some(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_statements_are_renamed_whether_bare_or_quoted() {
        assert_eq!(
            renamed(
                "ALTER DATABASE shop SET search_path TO 'a';",
                "shop",
                "shop_new"
            )
            .as_deref(),
            Some("ALTER DATABASE \"shop_new\" SET search_path TO 'a';")
        );
        assert_eq!(
            renamed(
                "COMMENT ON DATABASE \"Shop DB\" IS 'x DATABASE shop';",
                "Shop DB",
                "n"
            )
            .as_deref(),
            Some("COMMENT ON DATABASE \"n\" IS 'x DATABASE shop';")
        );
        assert_eq!(
            renamed(
                "ALTER ROLE r IN DATABASE shop SET work_mem TO '1MB';",
                "shop",
                "n"
            )
            .as_deref(),
            Some("ALTER ROLE r IN DATABASE \"n\" SET work_mem TO '1MB';")
        );
        assert_eq!(
            renamed("GRANT CONNECT ON DATABASE shopping TO r;", "shop", "n"),
            None
        );
        assert_eq!(
            renamed("ALTER DATABASE other OWNER TO r;", "shop", "n"),
            None
        );
    }

    #[test]
    fn staging_names_fit_and_tell_their_restore() {
        let long = "x".repeat(63);
        for target in [
            "shop",
            long.as_str(),
            "日本語のデータベース名前がとても長い場合のテスト",
        ] {
            let name = staging_name(target, 4_194_304, true);
            assert!(name.len() <= 63, "{name}");
            assert_eq!(
                staging_owner(&name, target),
                Some((4_194_304, true)),
                "{name}"
            );
            assert_eq!(staging_owner(&name, "other"), None);
        }
        assert_eq!(
            staging_owner(&staging_name("shop", 7, false), "shop"),
            Some((7, false))
        );
        assert_eq!(
            staging_owner("shop_dbkeep_new_00000000_7_a000000", "shop"),
            None
        );
    }
}
