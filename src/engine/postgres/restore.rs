//! Restores: the live database moved aside, the dump loaded (psql or `pg_restore -j`), the
//! original put back on any failure; recovery of a run killed mid-way.

use super::*;
use crate::engine::process::feed_child;
use crate::engine::process::{self, Running};
use crate::signals;
use std::io::{self, Read};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// How a restore went.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    /// The previous database, kept under this name (BACKUP_RESTORE_KEEP_OLD).
    pub kept_old: Option<String>,
}

/// The application_name of a restore's psql sessions: unique per restore (the aside name's
/// timestamp), within PostgreSQL's 63 bytes.
pub(super) fn restore_app_name(aside: &str) -> String {
    let stamp: String = aside
        .chars()
        .rev()
        .take(14)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("dbkeep-restore-{stamp}")
}

/// `name_dbkeep_old_20240115103000`, cut to PostgreSQL's 63-byte identifier limit.
pub(super) fn aside_name(target: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let suffix = format!("_dbkeep_old_{}", now.format("%Y%m%d%H%M%S"));
    let mut base = target.to_owned();
    while base.len() + suffix.len() > 63 {
        base.pop();
    }
    base + &suffix
}

impl Postgres {
    /// Restores a dump of the database `backup_db`: moves the live database aside, loads the
    /// dump (plain SQL made with `--create` through `psql -v ON_ERROR_STOP=1` on the maintenance
    /// database; a custom archive with `pg_restore --create --exit-on-error -j N`), and on any
    /// failure drops what was restored and puts the original back.
    ///
    /// `aside` is the name the live database is moved to meanwhile ([`Postgres::aside_name`]);
    /// the caller records it first, so that a run killed mid-way can be undone by
    /// [`Postgres::recover`].
    pub fn restore(
        &self,
        source: Source<'_>,
        backup_db: &str,
        aside: &str,
        on_loaded: &mut dyn FnMut(),
    ) -> Result<RestoreReport, PostgresError> {
        let target = self.conn.database.clone();
        let app_name = restore_app_name(aside);
        if backup_db != target {
            return Err(PostgresError::DatabaseMismatch {
                backup: backup_db.to_owned(),
                configured: target,
            });
        }
        if signals::interrupted() {
            return Err(PostgresError::Interrupted);
        }
        let found = self.maintenance(&[format!(
            "SELECT datallowconn FROM pg_database WHERE datname = {}",
            literal(&target)
        )])?;
        let allow_conn = match found.trim() {
            "" => None,
            v => Some(v == "t"),
        };
        let aside = match allow_conn {
            Some(allow) => Some(self.move_aside(&target, aside, allow)?),
            None => None,
        };
        let loaded = match source {
            Source::Sql(input) => self.load_sql(&self.maintenance_db, input, &app_name),
            Source::Archive(path) => self.load_archive(path, None, &app_name),
        };
        match loaded {
            Ok(()) => {
                on_loaded();
                let mut report = RestoreReport::default();
                if let Some(aside) = aside {
                    if self.keep_old {
                        if let Err(e) = self.maintenance(&[format!(
                            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}",
                            ident(&aside),
                            allow_conn.unwrap_or(true)
                        )]) {
                            tracing::warn!(database = %aside, error = %e, "the restore succeeded but the kept previous database still refuses connections");
                        }
                        report.kept_old = Some(aside);
                    } else if let Err(e) = self.drop_database(&aside) {
                        tracing::warn!(database = %aside, error = %e, "the restore succeeded but the previous database could not be dropped");
                    }
                }
                Ok(report)
            }
            Err(restore) => {
                let Some(aside) = aside else {
                    let _ = self.drop_database(&target);
                    return Err(restore);
                };
                match self.put_back(&target, &aside, allow_conn.unwrap_or(true)) {
                    Ok(()) => Err(restore),
                    Err(rollback) => Err(PostgresError::RollbackFailed {
                        restore: Box::new(restore),
                        rollback: Box::new(rollback),
                        aside,
                        target,
                    }),
                }
            }
        }
    }

    /// Blocks connections, ends other sessions and renames `target` aside; returns the new name.
    pub(super) fn move_aside(
        &self,
        target: &str,
        aside: &str,
        allow: bool,
    ) -> Result<String, PostgresError> {
        self.maintenance(&[format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            ident(target)
        )])?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.maintenance(&[
                terminate_sql(target),
                format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    ident(target),
                    ident(aside)
                ),
            ]);
            match r {
                Ok(_) => return Ok(aside.to_owned()),
                // Terminated sessions take a moment to go.
                Err(e)
                    if attempt < 50 && e.to_string().contains("being accessed by other users") =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    let _ = self.maintenance(&[format!(
                        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}",
                        ident(target)
                    )]);
                    return Err(e);
                }
            }
        }
    }

    /// The name the live database is moved to during a restore.
    pub fn aside_name(&self) -> String {
        aside_name(&self.conn.database, chrono::Utc::now())
    }

    /// Undoes a restore that was killed before it finished: if the original database is still
    /// aside under `aside`, drops whatever stands under the target name (a partial restore) and
    /// renames the original back. Returns what it did, if anything.
    pub fn recover(&self, aside: &str) -> Result<Option<String>, PostgresError> {
        let target = self.conn.database.clone();
        // The killed run's psql may still be executing what it had read: end its sessions
        // first, or it could recreate the database behind our back.
        let app = literal(&restore_app_name(aside));
        for _ in 0..100 {
            let left = self.maintenance(&[format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = {app} AND pid <> pg_backend_pid()"
            )])?;
            if left.trim() == "0" {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let exists = |db: &str| -> Result<bool, PostgresError> {
            let out = self.maintenance(&[format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                literal(db)
            )])?;
            Ok(out.trim() == "1")
        };
        if !exists(aside)? {
            // Finished (or never moved): make sure the target accepts connections again.
            if exists(&target)? {
                self.maintenance(&[format!(
                    "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
                    ident(&target)
                )])?;
            }
            return Ok(None);
        }
        self.put_back(&target, aside, true)?;
        Ok(Some(format!(
            "an interrupted restore left the original database aside as {aside:?}; it is back as {target:?}"
        )))
    }

    pub(super) fn put_back(
        &self,
        target: &str,
        aside: &str,
        allow: bool,
    ) -> Result<(), PostgresError> {
        self.drop_database(target)?;
        self.maintenance(&[
            format!(
                "ALTER DATABASE {} RENAME TO {}",
                ident(aside),
                ident(target)
            ),
            format!(
                "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}",
                ident(target)
            ),
        ])?;
        Ok(())
    }

    /// Feeds a plain dump to psql on the maintenance database. The dump must end with pg_dump's
    /// trailer: a stream that stops early (psql may well have run it all without an error) is a
    /// failed restore, which the caller rolls back.
    pub(super) fn load_sql(
        &self,
        database: &str,
        input: &mut dyn Read,
        app_name: &str,
    ) -> Result<(), PostgresError> {
        let mut cmd = self.command("psql", database);
        // Marks the restore's sessions, so that a later recovery can end them.
        cmd.env("PGAPPNAME", app_name);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let child: Running = process::spawn(cmd, HINT, self.secrets())?;
        let mut tracked = TailReader {
            inner: input,
            tail: crate::codec::Tail::new(TRAILER_WINDOW),
        };
        feed_child(child, &mut tracked, Some(self.stall_timeout))?;
        if has_trailer(tracked.tail.bytes()) {
            Ok(())
        } else {
            Err(PostgresError::TruncatedInput)
        }
    }

    /// Loads a staged custom archive with `pg_restore -j N`: with `--create` from the
    /// maintenance database (a restore), or `into` an existing database without owners and
    /// privileges (a drill). pg_restore and its workers run in their own process group, so that
    /// a signal stops all of them.
    pub(super) fn load_archive(
        &self,
        path: &Path,
        into: Option<&str>,
        app_name: &str,
    ) -> Result<(), PostgresError> {
        use std::os::unix::process::CommandExt;
        let database = into.unwrap_or(&self.maintenance_db);
        let mut cmd = self.command("pg_restore", database);
        cmd.env("PGAPPNAME", app_name);
        match into {
            None => cmd.arg("--create"),
            // A subscription would make the scratch database impossible to drop (and its
            // slot is the publisher's): never restored by a drill.
            Some(_) => cmd.args(["--no-owner", "--no-privileges", "--no-subscriptions"]),
        };
        cmd.args(["--exit-on-error", "--no-password"])
            .arg(format!("--jobs={}", self.restore_jobs))
            .arg(format!("--dbname={database}"))
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0);
        let mut child = process::spawn(cmd, HINT, self.secrets())?;
        // No data flows through dbkeep here: only signals are watched. The group is killed
        // before the child is reaped, so a reused pid is never signalled.
        while !child.has_exited() {
            if signals::interrupted() {
                process::kill_group(child.pid());
                let _ = child.wait();
                return Err(PostgresError::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_success()?;
        Ok(())
    }
}

/// A reader that keeps the last bytes it passed on.
pub(super) struct TailReader<'a> {
    inner: &'a mut dyn Read,
    tail: crate::codec::Tail,
}

impl Read for TailReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tail.push(&buf[..n]);
        Ok(n)
    }
}
