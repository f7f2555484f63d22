//! What point-in-time recovery needs from the server, checked before base backups and a WAL
//! stream are set up, as `pgbackrest check` does: `wal_level` replica or logical, free WAL
//! senders and a free replication slot, a role with REPLICATION, and a pg_hba line that lets it open a replication
//! connection — proven by opening one, whose `IDENTIFY_SYSTEM` gives the cluster's system
//! identifier (one archive per cluster), timeline and WAL position. An unbounded
//! `max_slot_wal_keep_size` is advice, not a failure.

use super::*;
use crate::engine::seam::{Check, Readiness};

/// WAL senders a base backup with `-X stream` takes (two) plus a WAL stream (one).
const SENDERS_NEEDED: u32 = 3;

impl Postgres {
    /// Each check of the server's readiness for point-in-time recovery; an error only when the
    /// server cannot be asked at all.
    pub fn pitr_readiness(&self) -> Result<Readiness, PostgresError> {
        // pg_stat_replication and pg_replication_slots show every row to any role (the
        // senders' backend_type in pg_stat_activity is hidden from roles without
        // pg_read_all_stats); the walsender checks the login role, so session_user.
        let sql = "SELECT concat_ws('|', current_setting('wal_level'), \
                   current_setting('max_wal_senders'), \
                   (SELECT count(*) FROM pg_stat_replication), \
                   current_setting('max_replication_slots'), \
                   (SELECT count(*) FROM pg_replication_slots), \
                   current_setting('max_slot_wal_keep_size'), \
                   (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = session_user), \
                   session_user)";
        let out = self.psql(&self.conn.database, &[sql.into()])?;
        let line = out.trim();
        let unexpected = || PostgresError::Unexpected {
            what: "the replication settings",
            output: line.to_owned(),
        };
        let fields: Vec<&str> = line.split('|').collect();
        let [
            wal_level,
            senders,
            used,
            slots,
            slots_used,
            keep,
            role_ok,
            user,
        ] = fields[..]
        else {
            return Err(unexpected());
        };
        let number = |v: &str| v.parse::<u32>().map_err(|_| unexpected());
        let (senders, used) = (number(senders)?, number(used)?);
        let (slots, slots_used) = (number(slots)?, number(slots_used)?);
        let mut r = Readiness::default();
        r.checks.push(Check::new(
            "wal_level",
            matches!(wal_level, "replica" | "logical"),
            format!("wal_level is {wal_level}"),
            "WAL then lacks what recovery needs; set wal_level = replica (ALTER SYSTEM SET wal_level = 'replica') and restart the server",
        ));
        let free = senders.saturating_sub(used);
        r.free_senders = Some(free);
        r.checks.push(Check::new(
            "max_wal_senders",
            free >= SENDERS_NEEDED,
            format!("{free} of max_wal_senders = {senders} free ({used} in use)"),
            &format!("a base backup and the WAL stream need {SENDERS_NEEDED}; raise max_wal_senders (it needs a restart)"),
        ));
        let slots_free = slots.saturating_sub(slots_used);
        r.checks.push(Check::new(
            "max_replication_slots",
            slots_free >= 1,
            format!("{slots_free} of max_replication_slots = {slots} free"),
            "the WAL stream needs a slot of its own; raise max_replication_slots (it needs a restart) or drop a slot nobody reads",
        ));
        let role_ok = role_ok == "t";
        r.checks.push(Check {
            name: "replication role",
            ok: role_ok,
            detail: if role_ok {
                format!("the role {user} may replicate")
            } else {
                format!(
                    "the role {user} has neither REPLICATION nor SUPERUSER: ALTER ROLE {} REPLICATION",
                    ident(user)
                )
            },
        });
        // Only a replication connection proves pg_hba.conf lets one in.
        let replication = self.identify_system();
        match replication {
            Ok((system, timeline, lsn)) => {
                r.checks.push(Check {
                    name: "replication connection",
                    ok: true,
                    detail: format!("system identifier {system}, timeline {timeline}"),
                });
                r.system_identifier = Some(system);
                r.timeline = Some(timeline);
                r.lsn = Some(lsn);
            }
            Err(e) => {
                let text = e.to_string();
                let line = if self.conn.host.as_deref().is_none_or(|h| h.starts_with('/')) {
                    format!("local replication {user} peer")
                } else {
                    format!("host replication {user} <dbkeep's address>/32 scram-sha-256")
                };
                let hint = if text.contains("pg_hba.conf") {
                    format!(
                        "; add a replication line for the role {user} to pg_hba.conf (e.g. `{line}`) and reload the server"
                    )
                } else if role_ok {
                    String::new()
                } else {
                    "; the role needs REPLICATION (above)".into()
                };
                r.checks.push(Check {
                    name: "replication connection",
                    ok: false,
                    detail: format!("cannot open a replication connection: {text}{hint}"),
                });
            }
        }
        if keep == "-1" {
            r.advice.push(
                "max_slot_wal_keep_size is unlimited: a replication slot whose reader stops keeps WAL until the server's disk is full; set a limit (e.g. ALTER SYSTEM SET max_slot_wal_keep_size = '10GB') that leaves the disk room".into(),
            );
        }
        Ok(r)
    }

    /// `IDENTIFY_SYSTEM` over a physical replication connection: the system identifier,
    /// timeline and current WAL position.
    fn identify_system(&self) -> Result<(String, u32, String), PostgresError> {
        let mut cmd = self.command("psql", &self.conn.database);
        cmd.arg("-d")
            .arg(format!(
                "{} replication=true",
                self.conninfo(&self.conn.database)
            ))
            .args(["-X", "-q", "-A", "-t", "-c", "IDENTIFY_SYSTEM"]);
        let out = process::output(cmd, HINT, self.secrets())?;
        let line = out.trim();
        let mut f = line.split('|');
        match (f.next(), f.next().map(str::parse::<u32>), f.next()) {
            (Some(system), Some(Ok(timeline)), Some(lsn)) if !system.is_empty() => {
                Ok((system.to_owned(), timeline, lsn.to_owned()))
            }
            _ => Err(PostgresError::Unexpected {
                what: "IDENTIFY_SYSTEM's system identifier, timeline and WAL position",
                output: line.to_owned(),
            }),
        }
    }
}
