//! Loading a dump into a database that exists: a restore's staging database, or a drill's
//! scratch database (as its sandbox's role): a plain dump through psql, a custom archive with
//! `pg_restore` in the passes [`toc`] plans.

use super::sandbox::{LoadRole, Sandbox};
use super::toc;
use super::*;
use crate::engine::process::{self, Running};
use std::io::Write;

impl Postgres {
    /// Feeds a plain dump to psql on `database`. The dump must end with pg_dump's trailer: a
    /// stream that stops early (psql may well have run it all without an error) is a failed
    /// restore, which the caller rolls back.
    pub(super) fn load_sql(
        &self,
        database: &str,
        input: &mut dyn Read,
        app_name: &str,
        role: Option<&LoadRole>,
    ) -> Result<(), PostgresError> {
        let mut cmd = self.command_as("psql", database, role);
        cmd.arg("-d")
            .arg(self.conninfo_for(database, self.user_of(role)));
        // Marks the restore's sessions, so that a later recovery can end them.
        cmd.env("PGAPPNAME", app_name);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let child: Running = process::spawn(cmd, HINT, self.secrets_with(role))?;
        let mut tracked = TailReader {
            inner: input,
            tail: crate::codec::Tail::new(TRAILER_WINDOW),
        };
        feed_child(child, &mut tracked, Some(self.stall(app_name)))?;
        if has_trailer(tracked.tail.bytes()) {
            Ok(())
        } else {
            Err(PostgresError::TruncatedInput)
        }
    }

    /// Loads a staged custom archive with `pg_restore -j N` into the existing database `into`:
    /// a restore's staging database, or a drill's scratch database (`drill`: without owners,
    /// privileges, subscriptions and event triggers, as the sandbox's role, its schemas and
    /// extensions first when it has the extension helper: [`toc::drill_plan`]), in the passes
    /// [`toc::passes`] plans so that parallel jobs cannot deadlock. pg_restore and its workers
    /// run in their own process group, so that a signal stops all of them. Returns how many
    /// entries a drill left out.
    pub(super) fn load_archive(
        &self,
        path: &Path,
        database: &str,
        app_name: &str,
        drill: Option<&Sandbox<'_>>,
    ) -> Result<usize, PostgresError> {
        let role = drill.and_then(|d| d.role.as_ref());
        let mut list = self.command_as("pg_restore", database, role);
        list.args(["--list", "--verbose"])
            .arg(path)
            .stdin(Stdio::null());
        let listing = process::output(list, HINT, self.secrets())?;
        let Some(sandbox) = drill else {
            for pass in toc::passes(&listing) {
                self.restore_pass(path, database, app_name, None, &pass)?;
            }
            return Ok(0);
        };
        let plan = toc::drill_plan(&listing, sandbox.helper.is_some());
        if let Some(schemas) = plan.schemas {
            let pass = toc::Pass {
                list: Some(schemas),
                parallel: false,
            };
            self.restore_pass(path, database, app_name, drill, &pass)?;
        }
        if let (Some(entries), Some(helper)) = (plan.extensions, &sandbox.helper) {
            for (name, schema) in self.archive_extensions(path, entries)? {
                self.create_extension(helper, database, &name, &schema)?;
            }
        }
        for pass in &plan.passes {
            self.restore_pass(path, database, app_name, drill, pass)?;
        }
        Ok(plan.left_out)
    }

    /// The extensions (name, schema) that the archive's EXTENSION entries `entries` create,
    /// each read from the statement pg_restore writes for it; any other statement there is
    /// not pg_dump's.
    fn archive_extensions(
        &self,
        path: &Path,
        entries: String,
    ) -> Result<Vec<(String, String)>, PostgresError> {
        let mut cmd = self.command("pg_restore", &self.maintenance_db);
        cmd.args(["--file=-", "--use-list=/dev/stdin"])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = process::spawn(cmd, HINT, self.secrets())?;
        if let Some(mut stdin) = child.take_stdin() {
            std::thread::spawn(move || {
                let _ = stdin.write_all(entries.as_bytes());
            });
        }
        let mut sql = String::new();
        if let Some(mut out) = child.take_stdout() {
            out.read_to_string(&mut sql).map_err(PostgresError::Input)?;
        }
        child.wait_success()?;
        let mut found = Vec::new();
        for line in sql.lines().map(str::trim) {
            if !line.to_ascii_uppercase().starts_with("CREATE EXTENSION") {
                continue;
            }
            let ext = crate::engine::retarget::pg_dump_extension(line.as_bytes()).ok_or_else(|| {
                PostgresError::Drill(format!(
                    "the archive creates an extension with {line:?}, which is not how pg_dump writes it: the backup was altered or not made by pg_dump"
                ))
            })?;
            found.push(ext);
        }
        Ok(found)
    }

    /// One `pg_restore` run of [`Self::load_archive`]; its `--use-list` goes in on stdin.
    fn restore_pass(
        &self,
        path: &Path,
        database: &str,
        app_name: &str,
        drill: Option<&Sandbox<'_>>,
        pass: &toc::Pass,
    ) -> Result<(), PostgresError> {
        use std::os::unix::process::CommandExt;
        let role = drill.and_then(|d| d.role.as_ref());
        let mut cmd = self.command_as("pg_restore", database, role);
        cmd.env("PGAPPNAME", app_name);
        if drill.is_some() {
            // A subscription would make the scratch database impossible to drop (and its
            // slot is the publisher's): never restored by a drill.
            cmd.args(["--no-owner", "--no-privileges", "--no-subscriptions"]);
        }
        let jobs = if pass.parallel { self.restore_jobs } else { 1 };
        cmd.args(["--exit-on-error", "--no-password"])
            .arg(format!("--jobs={jobs}"))
            .arg(format!(
                "--dbname={}",
                self.conninfo_for(database, self.user_of(role))
            ));
        if pass.list.is_some() {
            cmd.arg("--use-list=/dev/stdin").stdin(Stdio::piped());
        } else {
            cmd.stdin(Stdio::null());
        }
        cmd.arg(path).stdout(Stdio::null()).process_group(0);
        let mut child = process::spawn(cmd, HINT, self.secrets_with(role))?;
        if let (Some(list), Some(mut stdin)) = (pass.list.clone(), child.take_stdin()) {
            // pg_restore reads the whole list before it connects; a pg_restore that ends
            // first closes the pipe, and its exit status tells why.
            std::thread::spawn(move || {
                let _ = stdin.write_all(list.as_bytes());
            });
        }
        // No data flows through dbkeep here: the group's reads and writes are its progress,
        // and the server says whether its sessions still work when they stop.
        let watched = watch::watch_child(&mut child, true, Some(self.stall(app_name)), None);
        watch::conclude(child, watched, self.stall_timeout.as_secs())?;
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
