//! Restores and drills. A restore loads the dump's tables and rows into a staging database
//! `BASE_dbkeep_new_TAG` while the live database stays online and untouched, creates the
//! backup's views, triggers and routines there too (proving they load; events are left out, as
//! they would run), drops them again, and swaps ([`super::swap`]). A drill loads into a
//! scratch database `dbkeep_drill_HOST_PID_…`, compares the row counts with the manifest's,
//! runs `CHECK TABLE` on every table, and drops it.

use super::*;
use crate::engine::{DrillLog, RowCounts, compare_counts};
use std::io::Read;

/// A database of dbkeep's, dropped when this goes unless disarmed.
struct Scratch<'a> {
    my: &'a Mysql,
    flavor: Flavor,
    name: String,
    armed: bool,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.my.drop_database(self.flavor, &self.name)
        {
            tracing::error!(database = %self.name, error = %e, "could not drop dbkeep's scratch database: the next restore or drill on this host drops it, or drop it by hand");
        }
    }
}

/// The scratch database of a drill by this process.
fn drill_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "dbkeep_drill_{}_{}_{:06x}",
        process::host_tag(),
        std::process::id(),
        nanos & 0xff_ffff
    )
}

/// The pid of the drill of this machine that made the scratch database `name`.
fn drill_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("dbkeep_drill_")?;
    let mut parts = rest.split('_');
    let (host, pid) = (parts.next()?, parts.next()?);
    (host == process::host_tag())
        .then(|| pid.parse().ok())
        .flatten()
}

impl Mysql {
    fn create_like(
        &self,
        flavor: Flavor,
        name: &str,
        like: &str,
    ) -> Result<Scratch<'_>, MysqlError> {
        let charset = self.query(
            flavor,
            "information_schema",
            &format!(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
                literal(like)
            ),
        )?;
        let mut sql = format!("CREATE DATABASE {}", ident(name));
        if let Some((cs, coll)) = charset.trim().split_once('\t') {
            sql.push_str(&format!(
                " CHARACTER SET {} COLLATE {}",
                ident(cs),
                ident(coll)
            ));
        }
        self.query(flavor, "information_schema", &sql)?;
        Ok(Scratch {
            my: self,
            flavor,
            name: name.to_owned(),
            armed: true,
        })
    }

    /// Restores a dump into the live database; see the module. Returns the database the
    /// previous tables are kept in, if they are.
    pub fn restore(&self, input: &mut dyn Read) -> Result<Option<String>, MysqlError> {
        let (_, flavor) = self.server_version()?;
        let target = self.conn.database.clone();
        // A dump of one database has no CREATE DATABASE: the live one is made if missing.
        self.query(
            flavor,
            "information_schema",
            &format!("CREATE DATABASE IF NOT EXISTS {}", ident(&target)),
        )?;
        let (staging, aside) = swap::names(&target);
        let mut scratch = self.create_like(flavor, &staging, &target)?;
        let (objects, rows) = self.load_tables(flavor, &staging, input)?;
        tracing::info!(
            rows,
            objects = objects.count,
            "loaded into the staging database {staging}"
        );
        self.load_objects(flavor, &staging, &objects, false)?;
        self.drop_objects(flavor, &staging)?;
        crate::faults::point("mysql-restore-staged");
        // From here the swap owns the staging database.
        scratch.armed = false;
        let kept = self.swap(flavor, &target, &staging, &aside, &objects)?;
        Ok(kept.then_some(aside))
    }

    /// A drill; see the module.
    pub fn drill(
        &self,
        input: &mut dyn Read,
        expected: Option<&RowCounts>,
        log: &mut DrillLog,
    ) -> Result<(), MysqlError> {
        let (_, flavor) = self.server_version()?;
        let name = drill_name();
        let _scratch = self.create_like(flavor, &name, &self.conn.database)?;
        log.step("restore");
        let (objects, rows) = self.load_tables(flavor, &name, input)?;
        self.load_objects(flavor, &name, &objects, false)?;
        log.pass(format!(
            "loaded into a scratch database: {rows} rows, {} views, triggers and routines{}",
            objects.count - objects.events,
            match objects.events {
                0 => String::new(),
                n => format!(" ({n} events not created: they would run)"),
            }
        ));
        log.step("row counts");
        let tables = self.base_tables(flavor, &name)?;
        let mut found = RowCounts::new();
        for batch in tables.chunks(200) {
            let sql: Vec<String> = batch
                .iter()
                .map(|t| format!("SELECT {}, COUNT(*) FROM {}", literal(t), ident(t)))
                .collect();
            let out = self.query(flavor, &name, &sql.join(" UNION ALL "))?;
            for line in out.lines() {
                if let Some((t, n)) = line.rsplit_once('\t') {
                    let n = n.trim().parse().map_err(|_| {
                        MysqlError::Drill(format!("cannot read a row count from {line:?}"))
                    })?;
                    found.insert(t.to_owned(), n);
                }
            }
        }
        log.pass(compare_counts(expected, &found).map_err(MysqlError::Drill)?);
        log.step("CHECK TABLE");
        let mut bad = Vec::new();
        for batch in tables.chunks(200) {
            let list: Vec<String> = batch.iter().map(|t| ident(t)).collect();
            let out = self.query(flavor, &name, &format!("CHECK TABLE {}", list.join(", ")))?;
            for line in out.lines() {
                let f: Vec<&str> = line.split('\t').collect();
                if let [table, _, kind, text] = f[..]
                    && (kind.eq_ignore_ascii_case("error")
                        || kind.eq_ignore_ascii_case("status") && !text.eq_ignore_ascii_case("OK"))
                {
                    bad.push(format!("{table}: {text}"));
                }
            }
        }
        if !bad.is_empty() {
            bad.truncate(10);
            return Err(MysqlError::Drill(format!(
                "CHECK TABLE: {}",
                bad.join("; ")
            )));
        }
        log.pass(format!("CHECK TABLE: all {} tables OK", tables.len()));
        Ok(())
    }

    /// Drops the scratch databases of drills of this host whose process is gone.
    pub(super) fn recover_drills(&self, flavor: Flavor) -> Result<Vec<String>, MysqlError> {
        let all = self.query(
            flavor,
            "information_schema",
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'dbkeep\\_drill\\_%'",
        )?;
        let mut done = Vec::new();
        for name in all.lines() {
            if drill_owner(name).is_some_and(process::process_gone) {
                self.drop_database(flavor, name)?;
                done.push(format!(
                    "dropped {name}, the scratch database of a drill that was killed"
                ));
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drill_names_carry_their_owner() {
        let n = drill_name();
        assert!(n.len() <= 64);
        assert_eq!(drill_owner(&n), Some(std::process::id()));
        assert_eq!(drill_owner("dbkeep_drill_00000000_1_a"), None);
    }
}
