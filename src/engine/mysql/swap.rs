//! Swapping a loaded staging database in under the live name. MySQL has neither transactional
//! DDL nor `RENAME DATABASE`, and `RENAME TABLE` moves neither views nor tables with triggers
//! to another database; so the swap is:
//!
//! 1. the live database's views, triggers, routines and events are captured as a script (a
//!    `--no-data` dump of it, through the same allowlist) and written, before anything
//!    changes, to the journal: the table `dbkeep_journal` of the aside database
//!    `BASE_dbkeep_old_TAG`, on the server itself;
//! 2. they are dropped, and one `RENAME TABLE` (atomic) moves every live table aside and every
//!    staged table under the live name;
//! 3. the backup's objects are created in the live database; the journal says `done`.
//!
//! The journal (`phase`, `target`, the number of staged tables, the live objects' script and
//! the backup's) says how far it got: `prepared`, `renamed`, `done`. A failure in the run rolls
//! back: the objects created are dropped, the tables renamed back, the captured objects created
//! again (through the allowlist); if the staged tables had been live, they are kept in the
//! staging database and the journal says `rolled-back`, for the operator. A run killed mid-way
//! is taken up by the next restore or backup on this host once its process is provably gone:
//! killed before the RENAME, rolled back; after it (the backup's tables live, clients may have
//! written to them), completed from the journal, the previous tables kept aside and named.
//! Nothing a client could have written to is ever dropped, and recovery only touches databases
//! whose names are exactly what this host would make for this database.

use super::load::Objects;
use super::*;

pub(super) const JOURNAL: &str = "dbkeep_journal";
const NEW: &str = "_dbkeep_new_";
const OLD: &str = "_dbkeep_old_";

/// `BASE_dbkeep_new_TAG` and `BASE_dbkeep_old_TAG` for a restore of `target` by this
/// process, within MySQL's 64 characters.
pub(super) fn names(target: &str) -> (String, String) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!(
        "{}_{}_{:06x}",
        process::host_tag(),
        std::process::id(),
        nanos & 0xff_ffff
    );
    let base = base_of(target, tag.len());
    (format!("{base}{NEW}{tag}"), format!("{base}{OLD}{tag}"))
}

/// Of a database made by a restore of `target` on this host: whether it is a staging (`new`)
/// or aside (`old`) database, its pid, and the name of its partner.
fn owner(name: &str, target: &str) -> Option<(bool, u32, String)> {
    let (at, new) = match (name.rfind(NEW), name.rfind(OLD)) {
        (Some(i), _) => (i, true),
        (None, Some(i)) => (i, false),
        _ => return None,
    };
    let (base, tag) = (&name[..at], &name[at + NEW.len()..]);
    // Exactly the base `names` makes of `target` for a tag of this length.
    if base != base_of(target, tag.len()) {
        return None;
    }
    let mut parts = tag.split('_');
    let (host, pid, rand) = (parts.next()?, parts.next()?, parts.next()?);
    if host != process::host_tag() || parts.next().is_some() || rand.is_empty() {
        return None;
    }
    let partner = format!("{base}{}{tag}", if new { OLD } else { NEW });
    Some((new, pid.parse().ok()?, partner))
}

/// `target` cut so that `BASE_dbkeep_xxx_TAG` fits MySQL's 64 characters.
fn base_of(target: &str, tag_len: usize) -> String {
    let mut base: String = target.to_owned();
    while base.chars().count() + NEW.len() + tag_len > 64 {
        base.pop();
    }
    base
}

/// A hex literal of `bytes` (`0x…`, or `''` when empty).
fn hex_literal(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "''".into()
    } else {
        format!("0x{}", hex::encode(bytes))
    }
}

impl Mysql {
    /// The tables (and sequences) of `database`.
    fn movable(&self, flavor: Flavor, database: &str) -> Result<Vec<String>, MysqlError> {
        let out = self.query(
            flavor,
            "information_schema",
            &format!(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_TYPE <> 'VIEW' ORDER BY TABLE_NAME",
                literal(database)
            ),
        )?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// The triggers, routines and events of `database` as a script (a `--no-data` dump of it,
    /// through the allowlist), and each of its views as a script of its own (from `SHOW CREATE
    /// VIEW`, which reads a view whose tables are gone, where the dump tool fails: a restore is
    /// when the live database may be broken).
    pub(super) fn capture_objects(
        &self,
        flavor: Flavor,
        database: &str,
    ) -> Result<(Objects, Vec<Vec<u8>>), MysqlError> {
        let views: Vec<String> = self
            .query(
                flavor,
                "information_schema",
                &format!(
                    "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {}",
                    literal(database)
                ),
            )?
            .lines()
            .map(str::to_owned)
            .collect();
        let mut cmd = self.command(flavor.dump_tool())?;
        cmd.args([
            "--no-data",
            "--single-transaction",
            "--routines",
            "--events",
            "--triggers",
            "--no-tablespaces",
            "--skip-dump-date",
        ]);
        for v in &views {
            cmd.arg(format!("--ignore-table={database}.{v}"));
        }
        cmd.args(["--", database]);
        let dump = watch::output(
            cmd,
            HINT,
            self.secrets(),
            Some(Stall::silence(self.stall_timeout)),
        )?;
        let mut filter = super::load::Filter::for_server(self.versions());
        filter.scan(&mut dump.as_bytes(), &mut |_| true)?;
        let mut scripts = Vec::new();
        for v in &views {
            let out = self.query(flavor, database, &format!("SHOW CREATE VIEW {}", ident(v)))?;
            let f: Vec<&str> = out.trim_end_matches('\n').split('\t').collect();
            if let [_, create, cs, coll] = f[..] {
                scripts.push(
                    format!(
                        "SET character_set_client = {};\nSET collation_connection = {};\n{create};\n-- Dump completed\n",
                        literal(cs),
                        literal(coll)
                    )
                    .into_bytes(),
                );
            }
        }
        Ok((filter.objects, scripts))
    }

    /// Creates captured views in `target`, in as many passes as their dependencies need; one
    /// that cannot be made (its tables were already gone) is named in a warning.
    fn replay_views(&self, flavor: Flavor, target: &str, views: &[Vec<u8>]) {
        let mut pending: Vec<&Vec<u8>> = views.iter().collect();
        while !pending.is_empty() {
            let mut failed = Vec::new();
            let mut last_error = None;
            for v in &pending {
                if let Err(e) = self.replay(flavor, target, v) {
                    failed.push(*v);
                    last_error = Some(e);
                }
            }
            if failed.len() == pending.len() {
                for v in &failed {
                    tracing::warn!(view = %String::from_utf8_lossy(v).lines().nth(2).unwrap_or_default().chars().take(200).collect::<String>(), error = ?last_error.as_ref().map(ToString::to_string), "a view of the previous database could not be made again (it was broken before the restore)");
                }
                return;
            }
            pending = failed;
        }
    }

    /// Drops every view, trigger, routine and event of `database`.
    pub(super) fn drop_objects(&self, flavor: Flavor, database: &str) -> Result<(), MysqlError> {
        let db = literal(database);
        let list = self.query(
            flavor,
            "information_schema",
            &format!(
                "SELECT 'TRIGGER', TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {db} \
                 UNION ALL SELECT 'VIEW', TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {db} \
                 UNION ALL SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {db} \
                 UNION ALL SELECT 'EVENT', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {db}"
            ),
        )?;
        let drops: Vec<String> = list
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(kind, name)| {
                format!("DROP {kind} IF EXISTS {}.{}", ident(database), ident(name))
            })
            .collect();
        if drops.is_empty() {
            return Ok(());
        }
        self.run_own(flavor, database, &drops)
    }

    fn rename(&self, flavor: Flavor, moves: &[(String, &str, &str)]) -> Result<(), MysqlError> {
        if moves.is_empty() {
            return Ok(());
        }
        let pairs: Vec<String> = moves
            .iter()
            .map(|(t, from, to)| {
                format!("{}.{} TO {}.{}", ident(from), ident(t), ident(to), ident(t))
            })
            .collect();
        // The RENAME waits for the tables' metadata locks; a client holding one for long must
        // not queue the application behind dbkeep for the server's default year.
        self.query(
            flavor,
            "information_schema",
            &format!(
                "SET SESSION lock_wait_timeout = 60; RENAME TABLE {}",
                pairs.join(", ")
            ),
        )
        .map(drop)
    }

    fn journal_phase(&self, flavor: Flavor, aside: &str, phase: &str) -> Result<(), MysqlError> {
        self.query(
            flavor,
            aside,
            &format!("UPDATE {JOURNAL} SET phase = {}", literal(phase)),
        )
        .map(drop)
    }

    fn journal(&self, flavor: Flavor, aside: &str) -> Result<Journal, MysqlError> {
        let out = self.query(
            flavor,
            aside,
            &format!(
                "SELECT phase, target, staged, HEX(old_objects), HEX(new_objects), HEX(old_views) FROM {JOURNAL}"
            ),
        )?;
        let f: Vec<&str> = out.trim_end_matches('\n').split('\t').collect();
        let damaged = || MysqlError::Unreadable(format!("the journal in {aside} is damaged"));
        let [phase, target, staged, old, new, views] = f[..] else {
            return Err(damaged());
        };
        let views = hex::decode(views).map_err(|_| damaged())?;
        Ok(Journal {
            phase: phase.to_owned(),
            target: target.to_owned(),
            staged: staged.parse().map_err(|_| damaged())?,
            old: hex::decode(old).map_err(|_| damaged())?,
            new: hex::decode(new).map_err(|_| damaged())?,
            old_views: if views.is_empty() {
                Vec::new()
            } else {
                serde_json::from_slice(&views).map_err(|_| damaged())?
            },
        })
    }

    /// Creates the objects of a journal's script in `target`, through the allowlist (a journal
    /// is found by its database's name, which others may be able to create).
    fn replay(&self, flavor: Flavor, target: &str, script: &[u8]) -> Result<(), MysqlError> {
        let (objects, _) = self.load_tables(flavor, target, &mut &script[..])?;
        self.load_objects(flavor, target, &objects, true)
    }

    /// Swaps `staging` (loaded, with no objects) in under `target`; `objects` are the backup's.
    /// Returns whether the previous tables were kept in `aside`.
    pub(super) fn swap(
        &self,
        flavor: Flavor,
        target: &str,
        staging: &str,
        aside: &str,
        objects: &Objects,
    ) -> Result<bool, MysqlError> {
        let (live_objects, live_views) = self.capture_objects(flavor, target)?;
        let staged = self.movable(flavor, staging)?.len();
        self.query(
            flavor,
            "information_schema",
            &format!(
                "CREATE DATABASE {}; CREATE TABLE {}.{JOURNAL} (phase VARCHAR(32) NOT NULL, target VARCHAR(64) NOT NULL, staged INT NOT NULL, old_objects LONGBLOB NOT NULL, new_objects LONGBLOB NOT NULL, old_views LONGBLOB NOT NULL)",
                ident(aside),
                ident(aside)
            ),
        )?;
        self.run_own(
            flavor,
            aside,
            &[format!(
                "INSERT INTO {JOURNAL} VALUES ('prepared', {}, {staged}, {}, {}, {})",
                literal(target),
                hex_literal(&script_with_trailer(&live_objects)),
                hex_literal(&script_with_trailer(objects)),
                hex_literal(&serde_json::to_vec(&live_views).unwrap_or_default()),
            )],
        )?;
        crate::faults::point("mysql-swap-journaled");
        let swapped = (|| {
            self.drop_objects(flavor, target)?;
            let old = self.movable(flavor, target)?;
            let new = self.movable(flavor, staging)?;
            let mut moves: Vec<(String, &str, &str)> =
                old.into_iter().map(|t| (t, target, aside)).collect();
            moves.extend(new.into_iter().map(|t| (t, staging, target)));
            self.rename(flavor, &moves)?;
            crate::faults::point("mysql-swap-renamed");
            self.journal_phase(flavor, aside, "renamed")?;
            self.load_objects(flavor, target, objects, true)?;
            self.journal_phase(flavor, aside, "done")
        })();
        if let Err(restore) = swapped {
            return match self.roll_back(flavor, target, staging, aside) {
                Ok(_) => Err(restore),
                Err(rollback) => Err(MysqlError::RollbackFailed {
                    restore: Box::new(restore),
                    rollback: Box::new(rollback),
                    aside: aside.to_owned(),
                    target: target.to_owned(),
                }),
            };
        }
        self.drop_database(flavor, staging)?;
        if self.keep_old {
            Ok(true)
        } else {
            self.drop_database(flavor, aside)?;
            Ok(false)
        }
    }

    /// Whether the swap recorded in `aside` had put the staged tables under the live name.
    fn exposed(
        &self,
        flavor: Flavor,
        j: &Journal,
        staging: &str,
        aside: &str,
    ) -> Result<bool, MysqlError> {
        if ["renamed", "done", "rolling-back-exposed", "rolled-back"].contains(&j.phase.as_str()) {
            return Ok(true);
        }
        if j.phase == "rolling-back" {
            return Ok(false);
        }
        let aside_tables = self.movable(flavor, aside)?.iter().any(|t| t != JOURNAL);
        let staging_empty = self.movable(flavor, staging)?.is_empty();
        Ok(aside_tables || (j.staged > 0 && staging_empty))
    }

    /// Puts `target` back as the journal in `aside` says it was (see the module). Returns
    /// whether the staged tables had been live: then they stay in `staging`, and `aside`
    /// keeps the journal (`rolled-back`), for the operator; nothing a client could have written
    /// to is dropped. Safe to run again after a kill at any point.
    fn roll_back(
        &self,
        flavor: Flavor,
        target: &str,
        staging: &str,
        aside: &str,
    ) -> Result<bool, MysqlError> {
        let j = self.journal(flavor, aside)?;
        let exposed = self.exposed(flavor, &j, staging, aside)?;
        let phase = if exposed {
            "rolling-back-exposed"
        } else {
            "rolling-back"
        };
        self.journal_phase(flavor, aside, phase)?;
        self.drop_objects(flavor, target)?;
        let aside_tables: Vec<String> = self
            .movable(flavor, aside)?
            .into_iter()
            .filter(|t| t != JOURNAL)
            .collect();
        // Whatever is under the live name now is moved into the staging database: from here
        // it holds tables that were live, and is never dropped (a forged or confused journal
        // cannot make recovery drop live data).
        let exposed = exposed || !aside_tables.is_empty();
        if !aside_tables.is_empty() {
            self.query(
                flavor,
                "information_schema",
                &format!("CREATE DATABASE IF NOT EXISTS {}", ident(staging)),
            )?;
            let current = self.movable(flavor, target)?;
            let mut moves: Vec<(String, &str, &str)> =
                current.into_iter().map(|t| (t, target, staging)).collect();
            moves.extend(aside_tables.into_iter().map(|t| (t, aside, target)));
            self.rename(flavor, &moves)?;
        }
        self.replay(flavor, target, &j.old)?;
        self.replay_views(flavor, target, &j.old_views);
        if exposed {
            self.journal_phase(flavor, aside, "rolled-back")?;
            tracing::warn!(database = %staging, "the restore was rolled back after its tables had been live: they are kept in {staging} (and its journal in {aside}); drop both once you are sure nothing written there is needed");
        } else {
            self.drop_database(flavor, staging)?;
            self.drop_database(flavor, aside)?;
        }
        Ok(exposed)
    }

    /// Cleans up after restores of this database killed on this host (see the module): one
    /// killed before its tables were live is rolled back; one killed after is completed (its
    /// objects created from the journal), since clients may have written to it since; the
    /// previous tables are kept and reported.
    pub fn recover_interrupted(&self) -> Result<Vec<String>, MysqlError> {
        let (_, flavor) = self.server_version()?;
        let target = &self.conn.database;
        let all = self.query(
            flavor,
            "information_schema",
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA",
        )?;
        let mut done = self.recover_drills(flavor)?;
        for name in all.lines() {
            let Some((new, pid, partner)) = owner(name, target) else {
                continue;
            };
            if !process::process_gone(pid) {
                continue;
            }
            if new {
                if all.lines().any(|n| n == partner) {
                    continue; // handled with its aside database
                }
                self.drop_database(flavor, name)?;
                done.push(format!("dropped {name}, the staging database of a restore that was killed before its swap"));
                continue;
            }
            let j = match self.journal(flavor, name) {
                Ok(j) if j.target == *target => j,
                Ok(_) => continue,
                Err(e) => {
                    done.push(format!("{name} looks like the aside database of a restore of {target} but its journal cannot be read ({e}): left alone"));
                    continue;
                }
            };
            match j.phase.as_str() {
                "done" => {
                    if self.movable(flavor, &partner)?.is_empty() {
                        self.drop_database(flavor, &partner)?;
                    }
                    done.push(format!("{name} holds the tables {target} had before a restore that completed but was killed before cleaning up: compare, then drop it by hand"));
                }
                "rolled-back" => done.push(format!("{partner} holds the tables of a restore of {target} that was rolled back after they had been live (journal in {name}): drop both once you are sure nothing written there is needed")),
                _ if j.phase != "rolling-back-exposed" && j.phase != "rolling-back" && self.exposed(flavor, &j, &partner, name)? => {
                    self.drop_objects(flavor, target)?;
                    self.replay(flavor, target, &j.new)?;
                    self.journal_phase(flavor, name, "done")?;
                    // Its staging database gave its tables to the live name: empty now.
                    if self.movable(flavor, &partner)?.is_empty() {
                        self.drop_database(flavor, &partner)?;
                    }
                    done.push(format!("completed a restore of {target} killed in its swap after its tables were live (its views, triggers, routines and events created from the journal); the previous tables are kept in {name}: compare, then drop it by hand"));
                }
                _ => {
                    let exposed = self.roll_back(flavor, target, &partner, name)?;
                    done.push(if exposed {
                        format!("rolled back a restore of {target} (journal in {name}); its tables, live for a moment, are kept in {partner}")
                    } else {
                        format!("rolled back a restore of {target} killed in its swap (journal in {name}): the database is as it was before")
                    });
                }
            }
        }
        Ok(done)
    }
}

/// What the journal of a swap holds.
struct Journal {
    phase: String,
    target: String,
    staged: usize,
    old: Vec<u8>,
    new: Vec<u8>,
    /// Each view of the previous database, a script of its own.
    old_views: Vec<Vec<u8>>,
}

/// An objects script as a dump the allowlist reads (with its trailer).
fn script_with_trailer(objects: &Objects) -> Vec<u8> {
    let mut v = objects.script(true);
    v.extend_from_slice(b"\n-- Dump completed\n");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_are_recognised() {
        let (new, old) = names("shop");
        assert!(new.starts_with("shop_dbkeep_new_") && old.starts_with("shop_dbkeep_old_"));
        let (is_new, pid, partner) = owner(&new, "shop").unwrap();
        assert!(is_new);
        assert_eq!(pid, std::process::id());
        assert_eq!(partner, old);
        assert_eq!(owner(&old, "shop").map(|o| o.2), Some(new.clone()));
        assert_eq!(owner("other_dbkeep_old_x_1_a", "shop"), None);
        // Another database whose name starts like this one's is not ours.
        assert_eq!(owner(&new.replacen("shop", "shopping", 1), "shop"), None);
        assert_eq!(owner(&new, "shopping"), None);
        let long = "x".repeat(64);
        let (new, old) = names(&long);
        assert!(new.len() <= 64 && old.len() <= 64);
        assert!(owner(&new, &long).is_some());
    }
}
