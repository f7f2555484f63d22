//! Restore drills: a dump loaded into a scratch database of its own, its rows counted and its
//! btree indexes checked with amcheck, the scratch database dropped however it ends.

use super::restore::read_some;
use super::sandbox::{LoadRole, Sandbox};
use super::*;
use crate::engine::compare_counts;
use crate::engine::process;
use crate::engine::retarget::Retarget;
use crate::engine::{DrillLog, RowCounts};
use std::io;

/// The schema amcheck's functions are in (dbkeep's own, or where the dump had put it).
pub(super) const AMCHECK_SCHEMA_SQL: &str = "SELECT n.nspname FROM pg_extension e \
JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'";

/// Checks every leaf btree index outside the system schemas, each in its own subtransaction,
/// and leaves a JSON report in the session's `dbkeep.amcheck` setting ([`AmcheckReport`]):
/// nothing is created in the database, so no event trigger of the dump's fires. `@SCHEMA@` is
/// the quoted literal of amcheck's schema.
pub(super) const AMCHECK_SQL: &str = r#"DO $dbkeep_amcheck$
DECLARE
  r record;
  checked bigint := 0;
  damaged jsonb := '[]';
  unchecked jsonb := '[]';
  other jsonb;
  partitioned bigint;
BEGIN
  FOR r IN
    SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'i' AND a.amname = 'btree' AND i.indisready AND i.indisvalid
      AND c.relpersistence <> 't'
      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
    ORDER BY n.nspname, c.relname
  LOOP
    BEGIN
      -- regclass: the extension's own function, which no overload in its schema can shadow.
      EXECUTE format('SELECT %I.bt_index_check($1::regclass)', @SCHEMA@) USING r.oid;
      checked := checked + 1;
    EXCEPTION
      WHEN index_corrupted OR data_corrupted THEN
        damaged := damaged || jsonb_build_array(jsonb_build_array(r.name, SQLERRM));
      WHEN OTHERS THEN
        unchecked := unchecked || jsonb_build_array(jsonb_build_array(r.name, SQLERRM));
    END;
  END LOOP;
  SELECT coalesce(jsonb_object_agg(amname, n), '{}') INTO other FROM (
    SELECT a.amname, count(*) AS n
    FROM pg_class c JOIN pg_am a ON a.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'i' AND a.amname <> 'btree'
      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
    GROUP BY a.amname) kinds;
  SELECT count(*) INTO partitioned
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'I' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%';
  PERFORM set_config('dbkeep.amcheck', jsonb_build_object('checked', checked,
    'damaged', damaged, 'unchecked', unchecked, 'other', other,
    'partitioned', partitioned)::text, false);
END
$dbkeep_amcheck$"#;

/// What [`AMCHECK_SQL`] found: how many btree indexes passed, which are damaged, which could
/// not be checked and why, the other index kinds by access method, the partitioned indexes.
#[derive(Debug, serde::Deserialize)]
pub(super) struct AmcheckReport {
    checked: u64,
    damaged: Vec<(String, String)>,
    unchecked: Vec<(String, String)>,
    other: std::collections::BTreeMap<String, u64>,
    partitioned: u64,
}

impl AmcheckReport {
    /// The report as the drill's checks; a damaged index fails the drill.
    pub(super) fn into_checks(self, log: &mut DrillLog) -> Result<(), PostgresError> {
        let mut passed = format!(
            "amcheck bt_index_check passed on {} btree indexes",
            self.checked
        );
        if self.partitioned > 0 {
            passed.push_str(&format!(
                " (partitioned indexes: {}, checked through their partitions' indexes)",
                self.partitioned
            ));
        }
        if self.damaged.is_empty() {
            log.pass(passed);
        }
        for (index, why) in &self.unchecked {
            log.pass(format!("could not check {index}: {why}"));
        }
        if !self.other.is_empty() {
            let kinds: Vec<String> = self
                .other
                .iter()
                .map(|(am, n)| format!("{n} {am}"))
                .collect();
            log.pass(format!(
                "not checked by amcheck, which covers btree only: {} indexes",
                kinds.join(", ")
            ));
        }
        match self.damaged.first() {
            None => Ok(()),
            Some((index, why)) => Err(PostgresError::Drill(format!(
                "amcheck found {} damaged index{}, the first {index}: {why}",
                self.damaged.len(),
                if self.damaged.len() == 1 { "" } else { "es" }
            ))),
        }
    }
}

/// A drill's scratch database, dropped when this goes.
pub(super) struct ScratchDatabase<'a> {
    pg: &'a Postgres,
    name: String,
    /// The load role that owns it, which may have prepared transactions in it.
    role: Option<&'a LoadRole>,
}

impl Drop for ScratchDatabase<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.pg.drop_scratch(&self.name, self.role) {
            tracing::error!(database = %self.name, error = %e, "could not drop the drill's scratch database: drop it by hand");
        }
    }
}

/// `dbkeep_drill_<host>_<pid>_<random>`: the host (a hash of its name) and pid tell the next
/// drill on this machine whether the one that made it is gone.
/// The encoding and locale options of a dump's `CREATE DATABASE`, re-quoted: nothing else of it
/// (a template, an owner, a tablespace) reaches the scratch database, whose input is hostile by
/// assumption.
pub(super) fn scratch_options(create: &str) -> String {
    const KEPT: &[&str] = &[
        "ENCODING",
        "LOCALE",
        "LC_COLLATE",
        "LC_CTYPE",
        "LOCALE_PROVIDER",
        "ICU_LOCALE",
        "ICU_RULES",
        "BUILTIN_LOCALE",
    ];
    // Words and quoted strings or names (a doubled quote inside), as the options are written;
    // `=` and the rest between them.
    let mut tokens: Vec<(bool, String)> = Vec::new();
    let mut chars = create.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' || c == '"' {
            let mut s = String::new();
            while let Some(q) = chars.next() {
                if q == c {
                    if chars.peek() == Some(&c) {
                        chars.next();
                    } else {
                        break;
                    }
                }
                s.push(q);
            }
            tokens.push((true, s));
        } else if c.is_alphanumeric() || c == '_' || c == '-' || c == '.' {
            let mut s = String::from(c);
            while let Some(&n) = chars.peek() {
                if n.is_alphanumeric() || n == '_' || n == '-' || n == '.' {
                    s.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push((false, s));
        }
    }
    let mut out = String::new();
    // After CREATE DATABASE name.
    let mut i = 3;
    while i + 1 < tokens.len() {
        let (quoted, key) = &tokens[i];
        let key = key.to_ascii_uppercase();
        if !quoted && KEPT.contains(&key.as_str()) {
            let value = &tokens[i + 1].1;
            out.push_str(&format!(" {key} = {}", literal(value)));
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

/// A load that failed for want of a superuser, said so, with the way out.
fn superuser_hint(e: PostgresError, sandboxed: bool) -> PostgresError {
    let line = error_line(&e);
    if sandboxed && line.contains("must be superuser") {
        PostgresError::Drill(format!(
            "{line}: the drill loads as a role of its own that is not a superuser, and the dump holds an object only a superuser may create; BACKUP_DRILL_SANDBOX=false drills as DATABASE_URL's role instead, which trusts whoever can write to the backup storage"
        ))
    } else {
        e
    }
}

pub(super) fn drill_name(pid: u32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("dbkeep_drill_{}_{pid}_{nanos:08x}", host_tag())
}

pub(super) fn host_tag() -> String {
    process::host_tag()
}

/// The pid of the drill of this machine that made the scratch database `name`.
pub(super) fn drill_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("dbkeep_drill_")?;
    let mut parts = rest.split('_');
    let (host, pid) = (parts.next()?, parts.next()?);
    (host == host_tag()).then(|| pid.parse().ok()).flatten()
}

impl Postgres {
    /// A restore drill: loads the dump into a new scratch database `dbkeep_drill_…` on the same
    /// server (a plain dump through [`Retarget`], so its preamble never touches the live
    /// database; a custom archive with `pg_restore -j N` into it), then checks every table's row
    /// count against `expected` (the manifest's) and every btree index with amcheck's
    /// `bt_index_check` where the extension can be created. The scratch database is dropped
    /// however the drill ends; one left by a killed drill of this machine is dropped by the
    /// next. Returns what was checked.
    pub fn drill(
        &self,
        source: Source<'_>,
        expected: Option<&RowCounts>,
        log: &mut DrillLog,
    ) -> Result<(), PostgresError> {
        log.step("restore");
        self.drop_stale_drills();
        let name = drill_name(std::process::id());
        let app_name = format!("dbkeep drill {name}");
        // Declared before the scratch database, dropped after it: the role owns it.
        let sandbox = self.sandbox(&name)?;
        let role = sandbox.role.as_ref();
        match source {
            Source::Stream(input) => {
                let mut retarget =
                    self.restrict(Retarget::new(io::BufReader::with_capacity(CHUNK, input)));
                if let Some(helper) = &sandbox.helper {
                    retarget = retarget.with_extension_helper(ident(helper));
                }
                // Reading the first bytes runs the preamble through: CREATE DATABASE is known.
                let mut first = vec![0u8; CHUNK];
                let n = read_some(&mut retarget, &mut first).map_err(PostgresError::Input)?;
                first.truncate(n);
                let create = retarget
                    .captured()
                    .and_then(|c| c.first())
                    .map(|c| c.sql.clone());
                let scratch = self.create_scratch(create.as_deref(), &name, role)?;
                self.prepare_sandbox(&sandbox, &scratch.name)?;
                let mut rest = io::Cursor::new(first).chain(&mut retarget);
                self.load_sql(&scratch.name, &mut rest, &app_name, role)
                    .map_err(|e| superuser_hint(e, role.is_some()))?;
                let left_out = retarget.left_out();
                self.check_scratch(scratch, &sandbox, left_out, expected, log)
            }
            Source::File(path) => {
                let statements = self.archive_statements(path)?;
                let create = statements
                    .iter()
                    .find(|c| !c.after_connect && c.sql.starts_with("CREATE DATABASE"));
                let scratch = self.create_scratch(create.map(|c| c.sql.as_str()), &name, role)?;
                self.prepare_sandbox(&sandbox, &scratch.name)?;
                let left_out = self
                    .load_archive(path, &scratch.name, &app_name, Some(&sandbox))
                    .map_err(|e| superuser_hint(e, role.is_some()))?;
                self.check_scratch(scratch, &sandbox, left_out, expected, log)
            }
        }
    }

    /// Creates the scratch database with the encoding and locale of the dump's own `CREATE
    /// DATABASE` (so a drill fails where a restore would, on a locale this server lacks, and
    /// passes where it would), owned by the drill's load role when it has one.
    fn create_scratch<'a>(
        &'a self,
        create: Option<&str>,
        name: &str,
        role: Option<&'a LoadRole>,
    ) -> Result<ScratchDatabase<'a>, PostgresError> {
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE template0{}{}",
            ident(name),
            create.map(scratch_options).unwrap_or_default(),
            role.map(|r| format!(" OWNER {}", ident(&r.name)))
                .unwrap_or_default()
        );
        self.maintenance(&[sql]).map_err(|e| {
            PostgresError::Drill(format!(
                "cannot create the scratch database {name} with the dump's encoding and locale (the role needs CREATEDB, the server the locale): {}",
                error_line(&e)
            ))
        })?;
        Ok(ScratchDatabase {
            pg: self,
            name: name.to_owned(),
            role,
        })
    }

    /// The checks after the load, as the connecting role: row counts against `expected`,
    /// then amcheck.
    fn check_scratch(
        &self,
        scratch: ScratchDatabase<'_>,
        sandbox: &Sandbox<'_>,
        left_out: usize,
        expected: Option<&RowCounts>,
        log: &mut DrillLog,
    ) -> Result<(), PostgresError> {
        let name = scratch.name.as_str();
        if sandbox.role.is_some() {
            // The load role owns the database: whatever it set on it (`ALTER DATABASE … SET`,
            // dynamic SQL included) goes before the connecting role's sessions open there.
            self.maintenance(&[format!("ALTER DATABASE {} RESET ALL", ident(name))])?;
        }
        log.pass(match &sandbox.role {
            Some(role) => format!(
                "restored into the scratch database {name} as the drill's own role {}, not a superuser",
                role.name
            ),
            None => format!("restored into the scratch database {name}"),
        });
        if left_out > 0 {
            log.pass(format!(
                "left out {left_out} event trigger statements and comments on extensions: only a superuser may make them, and the drill loads as none"
            ));
        }
        log.step("row counts");
        crate::progress::phase("counting rows");
        let counted = parse_row_counts(&self.psql_watched(
            name,
            &["SET row_security = off".into(), COUNT_ROWS_SQL.into()],
            &format!("dbkeep drill counts {name}"),
        )?)
        .map_err(|e| PostgresError::Drill(format!("cannot count the rows: {e}")))?;
        log.pass(compare_counts(expected, &counted).map_err(PostgresError::Drill)?);
        log.step("amcheck");
        crate::progress::phase("checking indexes (amcheck)");
        self.amcheck(name, sandbox.helper.as_deref(), log)
    }

    /// amcheck's `bt_index_check` on every leaf btree index of `database` (valid, ready, not
    /// temporary), each on its own: an index that amcheck finds damaged fails the drill; one it
    /// could not check for another reason (a privilege, a lock, an operator class whose
    /// functions fail) is named as not checked, as are the index kinds amcheck does not cover.
    /// `into`: the schema to create the extension in, when not `dbkeep_amcheck` (a drill's
    /// helper schema, which its load role could not create objects in).
    pub(super) fn amcheck(
        &self,
        database: &str,
        into: Option<&str>,
        log: &mut DrillLog,
    ) -> Result<(), PostgresError> {
        let schema = ident(into.unwrap_or("dbkeep_amcheck"));
        let installed = self
            .psql(
                database,
                &[
                    format!("CREATE SCHEMA IF NOT EXISTS {schema}"),
                    format!("CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA {schema}"),
                    AMCHECK_SCHEMA_SQL.into(),
                ],
            )
            .map(|s| s.trim().to_owned());
        let schema = match installed {
            Ok(schema) if !schema.is_empty() => schema,
            Ok(_) => {
                log.pass("amcheck not available, btree indexes not checked");
                return Ok(());
            }
            Err(e) => {
                log.pass(format!(
                    "amcheck not available, btree indexes not checked: {}",
                    error_line(&e)
                ));
                return Ok(());
            }
        };
        let out = self.psql_watched(
            database,
            &[
                "SET search_path = pg_catalog, pg_temp".into(),
                AMCHECK_SQL.replace("@SCHEMA@", &literal(&schema)),
                "SELECT current_setting('dbkeep.amcheck')".into(),
            ],
            &format!("dbkeep amcheck {database}"),
        )?;
        let report: AmcheckReport = serde_json::from_str(out.trim()).map_err(|e| {
            let start: String = out.chars().take(200).collect();
            PostgresError::Drill(format!("cannot read amcheck's report: {e} in {start:?}"))
        })?;
        report.into_checks(log)
    }

    /// Drops scratch databases of drills of this machine whose process is gone.
    pub(super) fn drop_stale_drills(&self) {
        for name in self.stale_drills("SELECT datname FROM pg_database") {
            tracing::warn!(database = %name, "dropping the scratch database of a killed drill");
            if let Err(e) = self.drop_scratch(&name, None) {
                tracing::warn!(database = %name, error = %e, "could not drop it");
            }
        }
        for name in self.stale_drills("SELECT rolname FROM pg_roles") {
            tracing::warn!(role = %name, "dropping the load role of a killed drill");
            let drop = [
                "SET lock_timeout = '10s'".into(),
                format!("DROP ROLE IF EXISTS {}", ident(&name)),
            ];
            if let Err(e) = self.maintenance(&drop) {
                tracing::warn!(role = %name, error = %e, "could not drop it");
            }
        }
    }

    /// Drops a scratch database whatever its load role did to keep it: made it a template,
    /// closed it to connections, left prepared transactions in it (rolled back as that role,
    /// which a connecting role that is no superuser may not do for it).
    pub(super) fn drop_scratch(
        &self,
        name: &str,
        role: Option<&LoadRole>,
    ) -> Result<(), PostgresError> {
        let db = ident(name);
        let _ = self.maintenance(&[format!(
            "ALTER DATABASE {db} IS_TEMPLATE false ALLOW_CONNECTIONS true"
        )]);
        let prepared = format!(
            "SELECT gid FROM pg_prepared_xacts WHERE database = {}",
            literal(name)
        );
        if let Ok(gids) = self.maintenance(&[prepared]) {
            for gid in gids.lines().filter(|g| !g.is_empty()) {
                let _ = self.psql_as(name, role, &format!("ROLLBACK PREPARED {}", literal(gid)));
            }
        }
        self.drop_database(name)
    }

    /// The names `select` (of databases or roles) gives that are `dbkeep_drill_…` of this
    /// machine whose drill is gone.
    fn stale_drills(&self, select: &str) -> Vec<String> {
        let Ok(found) = self.maintenance(&[select.to_owned()]) else {
            return Vec::new();
        };
        found
            .lines()
            .map(str::trim)
            // Only "no such process" means gone: a drill of another user answers EPERM.
            .filter(|n| drill_owner(n).is_some_and(process::process_gone))
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_databases_keep_only_encoding_and_locale() {
        let pg15 = "CREATE DATABASE appdb WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE_PROVIDER = libc LOCALE = 'C.UTF-8';";
        assert_eq!(
            scratch_options(pg15),
            " ENCODING = 'UTF8' LOCALE_PROVIDER = 'libc' LOCALE = 'C.UTF-8'"
        );
        // A hostile name and options: the template, owner and tablespace go; quotes are ours.
        let hostile = "CREATE DATABASE \"locale \"\" ENCODING\" WITH TEMPLATE = live OWNER = root TABLESPACE = t LC_COLLATE = 'x''; DROP DATABASE live; --' ICU_LOCALE = 'und';";
        assert_eq!(
            scratch_options(hostile),
            " LC_COLLATE = 'x''; DROP DATABASE live; --' ICU_LOCALE = 'und'"
        );
    }
}
