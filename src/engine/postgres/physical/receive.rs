//! The WAL stream's server side: dbkeep's replication slot (created by pg_receivewal, kept
//! however long dbkeep is away, so no segment is removed before it is archived, unless
//! `max_slot_wal_keep_size` gives up on it: `wal_status` lost), and `pg_receivewal
//! --synchronous` writing each segment into the spool (the segment being written ends in
//! `.partial`; the server is told what is flushed, so at most the last moment's WAL is at risk).
//! Its stderr goes to dbkeep's log, line by line.

use super::*;
use crate::engine::seam::{EngineError, SlotHealth, WalSource};
use std::io::BufRead;
use std::process::{Child, ExitStatus};

/// A running pg_receivewal. Dropped, it is asked to stop (SIGTERM: it flushes what it has),
/// then killed if it does not within ten seconds.
pub struct Receiver {
    child: Child,
    secrets: Vec<String>,
    log: Option<std::thread::JoinHandle<String>>,
}

impl Receiver {
    /// Whether it is still running; once it has exited, how (its status and last lines).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(self.ended(status)),
            Err(e) => Some(format!("cannot tell whether pg_receivewal runs: {e}")),
        }
    }

    fn ended(&mut self, status: ExitStatus) -> String {
        let tail = self
            .log
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        format!(
            "pg_receivewal exited ({status}): {}",
            process::scrub(tail.trim(), &self.secrets)
        )
    }

    /// Asks it to stop and waits (killing it after ten seconds).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..200 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.halt();
    }
}

impl Postgres {
    /// The `pg_receivewal` command for `slot` (connection from DATABASE_URL).
    fn receivewal(&self, slot: &str) -> Command {
        let mut cmd = self.command("pg_receivewal", &self.conn.database);
        cmd.arg("-d")
            .arg(self.conninfo(&self.conn.database))
            .arg(format!("--slot={slot}"))
            .arg("--no-password")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }
}

impl WalSource for Postgres {
    fn ensure_slot(&self, slot: &str) -> Result<(), EngineError> {
        let mut cmd = self.receivewal(slot);
        cmd.args(["--create-slot", "--if-not-exists"]);
        process::output(cmd, HINT, self.secrets()).map_err(PostgresError::from)?;
        Ok(())
    }

    fn drop_slot(&self, slot: &str) -> Result<(), EngineError> {
        let mut cmd = self.receivewal(slot);
        cmd.arg("--drop-slot");
        process::output(cmd, HINT, self.secrets()).map_err(PostgresError::from)?;
        Ok(())
    }

    fn receive(&self, spool: &Path, slot: &str) -> Result<Receiver, EngineError> {
        let mut cmd = self.receivewal(slot);
        // --no-loop: dbkeep restarts it (with backoff, each exit in the log) rather than it
        // retrying silently.
        cmd.arg("-D")
            .arg(spool)
            .args(["--synchronous", "--no-loop", "--status-interval=1"])
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| {
            PostgresError::from(if source.kind() == io::ErrorKind::NotFound {
                ProcessError::NotFound {
                    program: "pg_receivewal".into(),
                    looked: "looked in BACKUP_PG_BINDIR or on PATH".into(),
                    hint: HINT,
                }
            } else {
                ProcessError::Spawn {
                    program: "pg_receivewal".into(),
                    source,
                }
            })
        })?;
        let secrets = self.secrets();
        let log = child.stderr.take().map(|pipe| {
            let secrets = secrets.clone();
            std::thread::spawn(move || {
                let mut tail = String::new();
                for line in io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let line = process::scrub(&line, &secrets);
                    tracing::info!(target: "pg_receivewal", "{line}");
                    tail = process::last_lines(&format!("{tail}\n{line}"), 5);
                }
                tail
            })
        });
        Ok(Receiver {
            child,
            secrets,
            log,
        })
    }

    fn server_timeline(&self) -> Result<Option<u32>, EngineError> {
        let sql = "SELECT CASE WHEN pg_is_in_recovery() THEN '' \
                   ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END";
        let out = self.psql(&self.conn.database, &[sql.to_owned()])?;
        let hex = out.trim();
        if hex.is_empty() {
            return Ok(None);
        }
        match u32::from_str_radix(hex, 16) {
            Ok(t) => Ok(Some(t)),
            Err(_) => Err(PostgresError::Unexpected {
                what: "the server's timeline",
                output: hex.to_owned(),
            }
            .into()),
        }
    }

    fn slot_health(&self, slot: &str) -> Result<Option<SlotHealth>, EngineError> {
        let sql = format!(
            "SELECT concat_ws('|', coalesce(wal_status, ''), \
             coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint::text, ''), \
             coalesce(safe_wal_size::text, ''), active) \
             FROM pg_replication_slots WHERE slot_name = {}",
            literal(slot)
        );
        let out = self.psql(&self.conn.database, &[sql])?;
        let line = out.trim();
        if line.is_empty() {
            return Ok(None);
        }
        let f: Vec<&str> = line.split('|').collect();
        let [status, retained, safe, active] = f[..] else {
            return Err(PostgresError::Unexpected {
                what: "the replication slot's state",
                output: line.to_owned(),
            }
            .into());
        };
        Ok(Some(SlotHealth {
            wal_status: status.to_owned(),
            retained_bytes: retained.parse().ok(),
            safe_wal_size: safe.parse().ok(),
            active: active == "t",
        }))
    }
}
