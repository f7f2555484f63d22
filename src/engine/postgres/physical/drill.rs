//! A base backup's drill, once it is unpacked into a private scratch directory: pg_verifybackup
//! on it (every file, and the WAL parsed by pg_waldump), then a throwaway server started on it —
//! on a free port, its socket in the drill's own directory, no TCP, no archiving, no
//! replication, an hba file of the drill's own — until recovery reaches consistency and it
//! accepts connections; every database is opened and its btree indexes checked with amcheck,
//! the user's drill query run, then the server is stopped. The production server is never
//! connected to.

use super::super::drill::{AMCHECK_SCHEMA_SQL, AMCHECK_SQL, AmcheckReport};
use super::*;
use crate::engine::DrillLog;
use std::os::unix::process::CommandExt;

const SERVER_HINT: &str = "a base backup's drill starts a server on it: install the PostgreSQL server of the backup's major version (Debian: apt-get install postgresql-N) or point BACKUP_PG_BINDIR at its bin directory";

/// Where the server binaries of `major` are: `bindir` when it has them, else Debian's
/// `/usr/lib/postgresql/MAJOR/bin`.
pub fn server_bindir(bindir: Option<&Path>, major: u32) -> Result<PathBuf, String> {
    let candidates = bindir
        .map(Path::to_path_buf)
        .into_iter()
        .chain(std::iter::once(PathBuf::from(format!(
            "/usr/lib/postgresql/{major}/bin"
        ))));
    for dir in candidates {
        if !(dir.join("pg_ctl").is_file() && dir.join("postgres").is_file()) {
            continue;
        }
        // A server of another major version cannot start on the data directory.
        let mut cmd = process::clean_command(&dir.join("postgres"));
        cmd.arg("--version");
        let version = process::output(cmd, SERVER_HINT, vec![]).unwrap_or_default();
        let found = version
            .split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .map_or(0, super::super::major);
        if found == major {
            return Ok(dir);
        }
    }
    Err(format!(
        "no PostgreSQL {major} server binaries (pg_ctl, postgres) were found: {SERVER_HINT}"
    ))
}

/// Who runs the drill's server: this user, or `postgres` when dbkeep runs as root (the server
/// refuses to run as root); the data directory is given to it.
fn server_user(dirs: &[&Path]) -> Result<Option<(u32, u32)>, String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or("dbkeep runs as root and there is no postgres user to run the drill's server as (the server refuses root)")?;
    for dir in dirs {
        chown_tree(dir, user.uid, user.gid)
            .map_err(|e| format!("cannot give {} to the postgres user: {e}", dir.display()))?;
    }
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

/// Gives `path` and everything under it to `uid`: children before their directory (which
/// stays root's until they are done) and never through a symbolic link.
fn chown_tree(path: &Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(uid),
        Some(gid),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)
}

/// A server started by a drill, stopped (immediately: the copy is thrown away) when dropped.
struct DrillServer<'a> {
    pg_ctl: PathBuf,
    data: &'a Path,
    user: Option<(u32, u32)>,
}

impl Drop for DrillServer<'_> {
    fn drop(&mut self) {
        let mut cmd = tool(&self.pg_ctl, self.user);
        cmd.arg("-D")
            .arg(self.data)
            .args(["-m", "immediate", "-w", "-t", "60", "stop"]);
        if let Err(e) = process::output(cmd, SERVER_HINT, vec![]) {
            // Never left running: the postmaster's pid is the first line of postmaster.pid.
            let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
            tracing::warn!(error = %e, pid, "could not stop the drill's server: killing it");
            if let Some(pid) = pid {
                process::kill_pid(pid);
            }
        }
    }
}

/// Waits until the recovering server has reached its target and promoted; fails on a FATAL
/// in its log (a segment the archive could not give, a target never reached).
fn wait_promoted(
    psql: &dyn Fn(&str, &str) -> Result<String, String>,
    server_log: &Path,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(6 * 3600);
    loop {
        if psql("postgres", "SELECT pg_is_in_recovery()").is_ok_and(|v| v.trim() == "f") {
            return Ok(());
        }
        let text = std::fs::read_to_string(server_log).unwrap_or_default();
        if text.contains("FATAL") || text.contains("PANIC") {
            return Err(format!(
                "recovery failed: {}",
                process::last_lines(&text, 8)
            ));
        }
        if crate::signals::interrupted() {
            return Err("interrupted by a signal".into());
        }
        if std::time::Instant::now() > deadline {
            return Err("recovery did not end within six hours".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A path for the server's command line: `pg_ctl -o` goes through the shell, so no quote or
/// backslash.
fn option_path(p: &Path) -> Result<String, String> {
    let text = p.display().to_string();
    if text.contains(['\'', '\\', '"', '\n']) {
        return Err(format!(
            "{text} holds a quote or backslash, which the drill's server options cannot carry: use another BACKUP_SCRATCH_DIR or TMPDIR"
        ));
    }
    Ok(text)
}

fn tool(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut cmd = process::clean_command(program);
    cmd.env("LC_ALL", "C");
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Who the drill connects as and what it asks of the recovered databases.
pub struct Checks<'a> {
    /// The role to connect as (trusted on the drill's socket only).
    pub role: &'a str,
    /// The database the backup was configured for, where `query` runs.
    pub database: &'a str,
    /// `BACKUP_DRILL_QUERY`: an error, no row or `f` fails the drill.
    pub query: Option<&'a str>,
}

/// amcheck's `bt_index_check` on every leaf btree index of `db` (the drill's server is a
/// throwaway copy, so the extension may be created in it): a damaged index fails the drill;
/// a server without amcheck is named as such.
fn amcheck(
    psql: &dyn Fn(&str, &str) -> Result<String, String>,
    db: &str,
    log: &mut DrillLog,
) -> Result<(), String> {
    let installed = psql(
        db,
        &format!(
            "CREATE SCHEMA IF NOT EXISTS dbkeep_amcheck; CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA dbkeep_amcheck; {AMCHECK_SCHEMA_SQL}"
        ),
    );
    let schema = match installed {
        Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
        Ok(_) => {
            log.pass(format!(
                "{db}: amcheck not available, btree indexes not checked"
            ));
            return Ok(());
        }
        Err(e) => {
            log.pass(format!(
                "{db}: amcheck not available, btree indexes not checked: {}",
                e.lines().last().unwrap_or_default()
            ));
            return Ok(());
        }
    };
    let out = psql(
        db,
        &format!(
            "SET search_path = pg_catalog, pg_temp; {}; SELECT current_setting('dbkeep.amcheck')",
            AMCHECK_SQL.replace("@SCHEMA@", &literal(&schema))
        ),
    )?;
    let report: AmcheckReport = serde_json::from_str(out.trim()).map_err(|e| {
        let start: String = out.chars().take(200).collect();
        format!("{db}: cannot read amcheck's report: {e} in {start:?}")
    })?;
    let mut checks = DrillLog::default();
    let result = report.into_checks(&mut checks);
    for line in checks.passed {
        log.pass(format!("{db}: {line}"));
    }
    result.map_err(|e| match e {
        PostgresError::Drill(why) => format!("{db}: {why}"),
        e => format!("{db}: {e}"),
    })
}

/// The user's drill query in `db`: its first value is in the report; an error, no row or
/// `f` (false) fails the drill.
fn drill_query(
    psql: &dyn Fn(&str, &str) -> Result<String, String>,
    db: &str,
    query: &str,
    log: &mut DrillLog,
) -> Result<(), String> {
    let out = psql(db, query).map_err(|e| format!("the drill query ({query}) failed in {e}"))?;
    let value = out.lines().next().unwrap_or_default().trim();
    match value {
        "" => Err(format!("the drill query ({query}) returned no row in {db}")),
        "f" => Err(format!("the drill query ({query}) returned false in {db}")),
        _ => {
            log.pass(format!("drill query in {db}: {query} returned {value}"));
            Ok(())
        }
    }
}

/// Checks the data directory `data` (a base backup unpacked by the drill) in its private
/// directory `private`, as the module's doc says.
pub fn check_data_dir(
    bindir: &Path,
    data: &Path,
    private: &Path,
    socket: &Path,
    checks: &Checks,
    log: &mut DrillLog,
    recovery: &mut dyn FnMut() -> Result<Vec<String>, String>,
) -> Result<(), String> {
    let hba = private.join("drill_hba.conf");
    let ident = private.join("drill_ident.conf");
    let conf = private.join("drill.conf");
    let write = |p: &Path, text: &str| {
        std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    write(&hba, "local all all trust\n")?;
    write(&ident, "")?;
    // The cluster's own postgresql.conf may live elsewhere (Debian's /etc/postgresql) and
    // names production's paths, libraries and archive: the drill's server reads only this.
    write(
        &conf,
        &format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nhba_file = '{}'\nident_file = '{}'\n\
             archive_mode = off\narchive_command = ''\nrestore_command = ''\nprimary_conninfo = ''\n\
             max_wal_senders = 0\nwal_level = replica\nmax_logical_replication_workers = 0\n\
             max_sync_workers_per_subscription = 0\nssl = off\nlogging_collector = off\n\
             log_destination = 'stderr'\nlc_messages = 'C'\nexternal_pid_file = ''\n\
             shared_preload_libraries = ''\nmax_connections = 20\nmax_prepared_transactions = 64\nhot_standby = off\nshared_buffers = '64MB'\nfsync = off\n",
            option_path(socket)?,
            option_path(&hba)?,
            option_path(&ident)?,
        ),
    )?;
    let user = server_user(&[private, socket])?;

    log.step("pg_verifybackup");
    let mut verify = tool(&bindir.join("pg_verifybackup"), user);
    verify.arg(data);
    let said = process::output(verify, SERVER_HINT, vec![])
        .map_err(|e| format!("pg_verifybackup: {e}"))?;
    log.pass(format!(
        "pg_verifybackup: {}",
        said.lines()
            .last()
            .unwrap_or("backup successfully verified")
            .trim()
    ));

    // pg_verifybackup checked postgresql.auto.conf; the drill's server must not read what
    // production set with ALTER SYSTEM (archive_command, primary_conninfo, libraries).
    let auto = data.join("postgresql.auto.conf");
    if auto.exists() {
        std::fs::write(&auto, "").map_err(|e| format!("cannot empty {}: {e}", auto.display()))?;
    }
    // A recovery to a point: its settings (and recovery.signal) once pg_verifybackup is done.
    let settings = recovery()?;
    if !settings.is_empty() {
        let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
        for line in &settings {
            text.push_str(line);
            text.push('\n');
        }
        write(&conf, &text)?;
        server_user(&[private, socket])?;
    }

    log.step("server start");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port for the drill's server: {e}"))?;
    let options = format!("-p {port} -c config_file='{}'", option_path(&conf)?);
    let psql_as = |role: &str, db: &str, sql: &str| {
        let mut cmd = tool(&bindir.join("psql"), user);
        cmd.env("PGHOST", socket)
            .env("PGPORT", port.to_string())
            .env("PGUSER", role)
            .env("PGDATABASE", db)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        process::output(cmd, SERVER_HINT, vec![]).map_err(|e| format!("{db}: {e}"))
    };
    let psql = |db: &str, sql: &str| psql_as(checks.role, db, sql);
    let server_log = private.join("server.log");
    let mut start = tool(&bindir.join("pg_ctl"), user);
    start
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(&server_log)
        .arg("-o")
        .arg(&options)
        .args(["-w", "-t", "3600", "start"]);
    let server = DrillServer {
        pg_ctl: bindir.join("pg_ctl"),
        data,
        user,
    };
    if let Err(e) = process::output(start, SERVER_HINT, vec![]) {
        let tail = std::fs::read_to_string(&server_log).unwrap_or_default();
        return Err(format!(
            "the server did not start on the restored data directory: {e}; its log: {}",
            process::last_lines(&tail, 8)
        ));
    }
    let text = std::fs::read_to_string(&server_log).unwrap_or_default();
    if !text.contains("consistent recovery state reached") {
        return Err(format!(
            "the server started but its log does not show a consistent recovery state: {}",
            process::last_lines(&text, 8)
        ));
    }
    log.pass("a server started on it and reached a consistent recovery state");
    if !settings.is_empty() {
        log.step("recovery to the target");
        wait_promoted(&psql, &server_log)?;
        let text = std::fs::read_to_string(&server_log).unwrap_or_default();
        let line = |what: &str| {
            text.lines()
                .rev()
                .find_map(|l| l.find(what).map(|i| l[i..].trim().to_owned()))
        };
        let stop = line("recovery stopping")
            .or_else(|| line("redo done at"))
            .unwrap_or_else(|| "recovery ended".into());
        log.pass(format!("WAL replayed from the archive; {stop}; promoted"));
    }

    log.step("databases");
    let list = psql(
        "postgres",
        "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1",
    )
    .or_else(|_| {
        psql(
            "template1",
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1",
        )
    })?;
    let databases: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    let mut relations = 0u64;
    for db in &databases {
        let n = psql(db, "SELECT count(*) FROM pg_class")?;
        relations += n.trim().parse::<u64>().unwrap_or(0);
    }
    log.pass(format!(
        "all {} databases open ({relations} relations in their catalogs)",
        databases.len()
    ));
    // amcheck needs a superuser to create the extension: the cluster's bootstrap superuser
    // (OID 10), trusted on the drill's socket like every role; the backup's role if it has
    // none that may log in.
    let first = databases.first().copied().unwrap_or("postgres");
    let superuser = psql(
        first,
        "SELECT rolname FROM pg_roles WHERE oid = 10 AND rolcanlogin",
    )
    .ok()
    .map(|s| s.trim().to_owned())
    .filter(|s| !s.is_empty())
    .unwrap_or_else(|| checks.role.to_owned());
    let psql_super = |db: &str, sql: &str| psql_as(&superuser, db, sql);
    log.step("amcheck");
    for db in &databases {
        amcheck(&psql_super, db, log)?;
    }
    if let Some(query) = checks.query {
        log.step("drill query");
        drill_query(&psql_super, checks.database, query, log)?;
    }
    drop(server);
    Ok(())
}
