//! A drill's sandbox: the role its load runs as, and the one way out of that role it has, a
//! function that creates the extensions the live database has.
//!
//! A drill's input is hostile by assumption (whoever can write to the backup storage wrote
//! it). When DATABASE_URL's role is a superuser (or has CREATEROLE), the drill therefore loads
//! as a role of its own,
//! made for the drill and dropped with it: `LOGIN` with a random password that only the load's
//! children get (in their environment), not a superuser, no CREATEDB, CREATEROLE, REPLICATION
//! or BYPASSRLS, member of nothing (but, as the owner of its database, `pg_database_owner`), owner of the scratch database alone. So `COPY … TO
//! PROGRAM`, `lo_export`, untrusted languages and whatever a function planted in a CHECK
//! constraint or an index expression does run without privileges, and no statement of the
//! dump can act on the live database (it owns nothing there). A role switch inside the
//! superuser's own session (`SET ROLE`, `SET SESSION AUTHORIZATION`) would not do: any function
//! of the dump can undo it with `set_config`.
//!
//! Extensions that only a superuser may create (PostGIS, say) go through
//! `create_extension(name, schema)`, a `SECURITY DEFINER` function of the drill's in a schema
//! of its own: it creates only an extension the live database has, into a schema in which the
//! dump has made nothing yet (pg_dump creates extensions before the objects in their schemas:
//! a function of the load role's there could capture the extension script's calls), from a
//! session without temporary tables. A plain dump's `CREATE EXTENSION` statements become calls
//! of it ([`Retarget::with_extension_helper`]); a custom archive's are made by dbkeep after the
//! archive's schemas.
//!
//! After the load, the counts and amcheck run as the connecting role, in sessions whose
//! `search_path` is `pg_catalog, pg_temp` whatever the load role set for its database.

use super::*;
use crate::database_url::Secret;
use std::io::Cursor;

/// A role that a tool connects as instead of DATABASE_URL's, with its password.
pub(super) struct LoadRole {
    pub name: String,
    pub password: Secret,
}

/// How a drill loads: as its own role when DATABASE_URL's role is a superuser or has
/// CREATEROLE (with the extension helper in the schema `helper` when a superuser); otherwise as
/// DATABASE_URL's role, whose own objects (the live database it owns) a crafted dump can then
/// reach through dynamic SQL.
pub(super) struct Sandbox<'a> {
    pg: &'a Postgres,
    pub role: Option<LoadRole>,
    pub helper: Option<String>,
}

impl Drop for Sandbox<'_> {
    fn drop(&mut self) {
        if let Some(role) = &self.role {
            // Never wait forever on a lock a prepared transaction of the role holds.
            let drop = [
                "SET lock_timeout = '10s'".into(),
                format!("DROP ROLE IF EXISTS {}", ident(&role.name)),
            ];
            if let Err(e) = self.pg.maintenance(&drop) {
                tracing::error!(role = %role.name, error = %e, "could not drop the drill's load role: drop it by hand");
            }
        }
    }
}

/// Extensions that open connections to other databases (the live one): never made for a
/// load role, which may set its own password and log in anywhere PUBLIC may connect.
const CONNECTING: &[&str] = &["dblink", "postgres_fdw"];

/// The `create_extension` helper; `@H@` is its quoted schema, `@ALLOWED@` the array of the
/// live database's extensions, `@ROLE@` the load role.
const HELPER_SQL: &str = r#"CREATE SCHEMA @H@;
CREATE FUNCTION @H@.create_extension(name text, schema text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $dbkeep_helper$
DECLARE
  ns oid;
  cfg record;
BEGIN
  IF NOT name = ANY (@ALLOWED@::text[]) THEN
    RAISE EXCEPTION 'the dump creates the extension %, which the live database does not have: a drill creates only the extensions the live database has', name
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  SELECT oid INTO ns FROM pg_namespace WHERE nspname = schema;
  IF ns IS NULL THEN
    RAISE EXCEPTION 'schema % does not exist', schema USING ERRCODE = 'invalid_schema_name';
  END IF;
  IF EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = pg_my_temp_schema())
     OR EXISTS (SELECT 1 FROM (
          SELECT relowner AS owner FROM pg_class WHERE relnamespace = ns
          UNION ALL SELECT proowner FROM pg_proc WHERE pronamespace = ns
          UNION ALL SELECT typowner FROM pg_type WHERE typnamespace = ns
          UNION ALL SELECT oprowner FROM pg_operator WHERE oprnamespace = ns
          UNION ALL SELECT conowner FROM pg_conversion WHERE connamespace = ns
          UNION ALL SELECT opcowner FROM pg_opclass WHERE opcnamespace = ns
          UNION ALL SELECT opfowner FROM pg_opfamily WHERE opfnamespace = ns
          UNION ALL SELECT cfgowner FROM pg_ts_config WHERE cfgnamespace = ns
          UNION ALL SELECT dictowner FROM pg_ts_dict WHERE dictnamespace = ns
          UNION ALL SELECT stxowner FROM pg_statistic_ext WHERE stxnamespace = ns
        ) o JOIN pg_roles r ON r.oid = o.owner WHERE NOT r.rolsuper) THEN
    RAISE EXCEPTION 'the dump made objects in the schema % before it creates the extension % there, which pg_dump never does: the backup was altered or not made by pg_dump', schema, name
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  EXECUTE format('CREATE EXTENSION IF NOT EXISTS %I WITH SCHEMA %I', name, schema);
  -- pg_dump writes the rows of an extension's configuration tables (PostGIS's
  -- spatial_ref_sys) and its sequences' values: the load role may.
  FOR cfg IN SELECT c.oid::regclass AS rel, r.relkind FROM pg_extension e,
      unnest(e.extconfig) c(oid) JOIN pg_class r ON r.oid = c.oid WHERE e.extname = name LOOP
    IF cfg.relkind = 'S' THEN
      EXECUTE format('GRANT SELECT, UPDATE, USAGE ON SEQUENCE %s TO @ROLE@', cfg.rel);
    ELSE
      EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON %s TO @ROLE@', cfg.rel);
    END IF;
  END LOOP;
END
$dbkeep_helper$;
REVOKE ALL ON FUNCTION @H@.create_extension(text, text) FROM PUBLIC;
GRANT USAGE ON SCHEMA @H@ TO @ROLE@;
GRANT EXECUTE ON FUNCTION @H@.create_extension(text, text) TO @ROLE@;
"#;

impl Postgres {
    /// The sandbox of the drill `name`: its load role is created here (named as the drill)
    /// when DATABASE_URL's role is a superuser or has CREATEROLE.
    pub(super) fn sandbox(&self, name: &str) -> Result<Sandbox<'_>, PostgresError> {
        let rights = self.maintenance(&[
            "SELECT rolsuper::text || rolcreaterole::text FROM pg_roles WHERE rolname = current_user"
                .into(),
        ])?;
        let (superuser, createrole) = match rights.trim() {
            "truetrue" | "truefalse" => (true, true),
            "falsetrue" => (false, true),
            _ => (false, false),
        };
        if superuser && !self.drill_sandbox {
            tracing::warn!(
                "BACKUP_DRILL_SANDBOX is off: the drill loads the dump as a superuser, so whoever can write to the backup storage can run anything the server can"
            );
        }
        if !createrole || !self.drill_sandbox {
            if !createrole && self.drill_sandbox {
                tracing::warn!(
                    "the drill loads as DATABASE_URL's role, which can neither create roles nor is a superuser: a crafted backup can act on whatever that role owns, the live database too; give the role CREATEROLE and the drill loads as a role of its own"
                );
            }
            return Ok(Sandbox {
                pg: self,
                role: None,
                helper: None,
            });
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| {
            PostgresError::Drill(format!("no random password for the drill's load role: {e}"))
        })?;
        let password = hex::encode(key);
        let until = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
        // The password goes in on psql's stdin, never on a command line, and as its SCRAM
        // verifier only, which no server log or pg_stat_statements can turn back into it.
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| {
            PostgresError::Drill(format!("no random salt for the drill's load role: {e}"))
        })?;
        let verifier = scram_verifier(&password, &salt);
        let sql = format!(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
             NOBYPASSRLS CONNECTION LIMIT {} VALID UNTIL {} PASSWORD {};\n",
            ident(name),
            self.restore_jobs + 2,
            literal(&until),
            literal(&verifier)
        );
        // A role with CREATEROLE only must be a member of the role to make it the owner of
        // the scratch database (which gives the connecting role the load role's rights, not
        // the other way round).
        let grant = if superuser {
            String::new()
        } else {
            format!("GRANT {} TO CURRENT_USER;\n", ident(name))
        };
        let script = format!("BEGIN;\n{sql}{grant}COMMIT;\n");
        self.psql_input(&self.maintenance_db, &script, &password)
            .map_err(|e| {
                PostgresError::Drill(format!(
                    "cannot create the drill's load role {name}: {}",
                    error_line(&e)
                ))
            })?;
        Ok(Sandbox {
            pg: self,
            role: Some(LoadRole {
                name: name.to_owned(),
                password: Secret::new(password),
            }),
            helper: superuser.then(|| name.to_owned()),
        })
    }

    /// Installs the extension helper into the scratch database and proves that the load role
    /// can log in to it.
    pub(super) fn prepare_sandbox(
        &self,
        sandbox: &Sandbox<'_>,
        scratch: &str,
    ) -> Result<(), PostgresError> {
        let (Some(role), Some(helper)) = (&sandbox.role, &sandbox.helper) else {
            return Ok(());
        };
        let live = self.psql(
            &self.conn.database,
            &["SELECT extname FROM pg_extension ORDER BY 1".into()],
        )?;
        let allowed: Vec<String> = live
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty() && !n.contains('$') && !CONNECTING.contains(n))
            .map(literal)
            .collect();
        let sql = HELPER_SQL
            .replace("@H@", &ident(helper))
            .replace("@ROLE@", &ident(&role.name))
            .replace("@ALLOWED@", &format!("ARRAY[{}]", allowed.join(", ")));
        self.psql_input(scratch, &sql, "")?;
        self.psql_as(scratch, Some(role), "SELECT 1").map_err(|e| {
            PostgresError::Drill(format!(
                "the drill loads as a role of its own, {}, which cannot log in ({}): let it log in with a password where DATABASE_URL connects (pg_hba.conf: a scram-sha-256 or md5 line for it before any peer or ident line; a DATABASE_URL over TCP with a password meets Debian's defaults)",
                role.name,
                error_line(&e)
            ))
        })?;
        Ok(())
    }

    /// Creates the extension `name` in `schema` of `database` through the helper, as the
    /// connecting role (a custom archive's extensions, after its schemas).
    pub(super) fn create_extension(
        &self,
        helper: &str,
        database: &str,
        name: &str,
        schema: &str,
    ) -> Result<(), PostgresError> {
        self.psql(
            database,
            &[format!(
                "SELECT {}.create_extension({}, {})",
                ident(helper),
                literal(name),
                literal(schema)
            )],
        )?;
        Ok(())
    }

    /// One statement on `database` as `role` (or DATABASE_URL's role); returns stdout.
    pub(super) fn psql_as(
        &self,
        database: &str,
        role: Option<&LoadRole>,
        sql: &str,
    ) -> Result<String, PostgresError> {
        let cmd = self.psql_command_as(database, role, &[sql.to_owned()]);
        Ok(process::output(cmd, HINT, self.secrets_with(role))?)
    }

    /// [`Postgres::command`] connecting as `role` instead of DATABASE_URL's role.
    pub(super) fn command_as(
        &self,
        tool: &str,
        database: &str,
        role: Option<&LoadRole>,
    ) -> Command {
        let mut cmd = self.command(tool, database);
        if let Some(r) = role {
            cmd.env("PGUSER", &r.name);
            cmd.env("PGPASSWORD", r.password.expose());
        }
        cmd
    }

    /// The secrets to scrub from a child's stderr when it connects as `role`.
    pub(super) fn secrets_with(&self, role: Option<&LoadRole>) -> Vec<String> {
        let mut s = self.secrets();
        s.extend(role.map(|r| r.password.expose().to_owned()));
        s
    }

    /// Runs `sql` through psql's stdin on `database` (a script, or a statement holding a
    /// secret, scrubbed from any error).
    pub(super) fn psql_input(
        &self,
        database: &str,
        sql: &str,
        secret: &str,
    ) -> Result<(), PostgresError> {
        let mut cmd = self.command("psql", database);
        cmd.arg("-d").arg(self.conninfo(database));
        cmd.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
        let mut secrets = self.secrets();
        if !secret.is_empty() {
            secrets.push(secret.to_owned());
        }
        let child = process::spawn(cmd, HINT, secrets)?;
        feed_child(child, &mut Cursor::new(sql.as_bytes()), None)?;
        Ok(())
    }
}

impl Postgres {
    /// The user a tool connecting as `role` names: the role's, else DATABASE_URL's.
    pub(super) fn user_of<'a>(&'a self, role: Option<&'a LoadRole>) -> Option<&'a str> {
        role.map(|r| r.name.as_str()).or(self.conn.user.as_deref())
    }
}

/// PostgreSQL's SCRAM-SHA-256 verifier of `password` (RFC 5802, 4096 iterations as the server's
/// own default): `SCRAM-SHA-256$4096:salt$StoredKey:ServerKey`. The password itself is ASCII,
/// which SASLprep leaves as it is.
pub(super) fn scram_verifier(password: &str, salt: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};
    const ITERATIONS: u32 = 4096;
    let mac = |key: &[u8], data: &[&[u8]]| -> Vec<u8> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
        for d in data {
            m.update(d);
        }
        m.finalize().into_bytes().to_vec()
    };
    // PBKDF2-HMAC-SHA-256, one block.
    let mut u = mac(password.as_bytes(), &[salt, &1u32.to_be_bytes()]);
    let mut salted = u.clone();
    for _ in 1..ITERATIONS {
        u = mac(password.as_bytes(), &[&u]);
        salted.iter_mut().zip(&u).for_each(|(s, x)| *s ^= x);
    }
    let client_key = mac(&salted, &[b"Client Key"]);
    let stored_key = Sha256::digest(&client_key);
    let server_key = mac(&salted, &[b"Server Key"]);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        b64(salt),
        b64(&stored_key),
        b64(&server_key)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn scram_verifiers_are_postgresqls() {
        // From Python's hashlib.pbkdf2_hmac and hmac, an implementation of its own.
        let salt: Vec<u8> = (0u8..16).collect();
        assert_eq!(
            super::scram_verifier("pencil", &salt),
            "SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$zHCdol2044/ZyWzPLi7oxApCkamKw9Z+E4U/QApd/5Y=:dd5peBOitVnLNFu7VmwP+HiDaaw4OUCv396eVCWhYiE="
        );
    }
}
