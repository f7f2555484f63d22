//! The command line (clap): parse, load settings, call `ops`, print, and map the outcome to the
//! documented exit codes: 0 success, 1 operation failed, 2 bad usage or configuration.

use crate::catalog::{ListResponse, Manifest};
use crate::config::{Overrides, Settings};
use crate::error::Error;
use crate::logging::{self, OUTCOME_TARGET, Verbosity};
use crate::ops::{BackupRequest, Ops, PruneOptions, VerifyTarget};
use crate::retention::Action;
use clap::{Args, Parser, Subcommand};
use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "dbkeep",
    version,
    about = "Complete, checksummed, restorable backups of PostgreSQL and SQLite databases",
    after_help = "Settings come from dbkeep.toml (or --config), then the environment (DATABASE_URL, \
BACKUP_DIR, BACKUP_RETENTION_DAYS, BACKUP_COMPRESS, BACKUP_LOG_FILE, …), then flags.\n\
Exit codes: 0 success, 1 operation failed, 2 bad usage or configuration."
)]
pub struct Cli {
    /// A TOML settings file (default: dbkeep.toml in the working directory, if present).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The backup directory (overrides BACKUP_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    backup_dir: Option<PathBuf>,
    /// Print nothing on success, only the error on failure (for cron).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Also print progress (INFO events) on stderr.
    #[arg(long, short, global = true, conflicts_with = "quiet")]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take a backup, record its manifest, then apply retention to its series.
    Backup(BackupArgs),
    /// List backups, newest first.
    List {
        /// The spec's JSON list response: {"backups": [...], "statistics": {...}}.
        #[arg(long)]
        json: bool,
        /// List another repository (a path or s3:// URL) instead of BACKUP_DIR.
        #[arg(long, value_name = "REPO")]
        repo: Option<String>,
    },
    /// Copy a backup to another repository (a path or s3:// URL), e.g. to complete a failed copy.
    Copy {
        name: String,
        #[arg(long, value_name = "REPO")]
        to: String,
    },
    /// Show repository statistics.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into the configured database (replaces its contents).
    Restore {
        name: String,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Delete a backup.
    Delete {
        name: String,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Apply retention to every series and remove leftovers; prints each decision with its reason.
    /// Each backup is kept for the retention it recorded when it was taken.
    Prune {
        /// Print the plan without deleting anything.
        #[arg(long)]
        dry_run: bool,
        /// Apply retention to this series only (required by --retention-days and --keep-min).
        #[arg(long, value_name = "SERIES")]
        series: Option<String>,
        /// Keep the series' backups this many days instead of what each recorded (0: forever).
        #[arg(long, value_name = "DAYS", requires = "series")]
        retention_days: Option<u32>,
        /// Keep at least this many newest successful backups of the series (1 or more).
        #[arg(long, value_name = "N", requires = "series", value_parser = clap::value_parser!(u32).range(1..))]
        keep_min: Option<u32>,
        /// Lift the limit of deleting at most half of a series' successful backups in one run.
        #[arg(long)]
        force: bool,
    },
    /// Write a new age identity (X25519) to a file (mode 0600) and print its public key, for
    /// BACKUP_ENCRYPT_RECIPIENTS; keep the file safe and away from the backups.
    Keygen {
        /// The identity file to create (refuses to overwrite).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Serve the REST API (the spec's endpoints, bearer-token auth, rate limits, audit log).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:5000")]
        bind: std::net::SocketAddr,
        /// Serve without authentication (only allowed on a loopback address).
        #[arg(long)]
        no_auth: bool,
    },
    /// Check stored backups: size, SHA-256, complete decompression, complete dump content.
    /// With --restore, a restore drill: restore into a throwaway target and check it there.
    Verify {
        /// The backup to check (default: the newest successful backup).
        #[arg(conflicts_with_all = ["all", "latest"])]
        name: Option<String>,
        /// Check every successful backup.
        #[arg(long, conflicts_with = "latest")]
        all: bool,
        /// Check the newest successful backup (the default).
        #[arg(long)]
        latest: bool,
        /// Restore drill: restore into a scratch database on the same server (PostgreSQL) or a
        /// temporary file (SQLite), compare every table's row count with the manifest's, check
        /// indexes (amcheck) or integrity and foreign keys, drop the target; the outcome goes
        /// into the manifest.
        #[arg(long)]
        restore: bool,
    },
}

#[derive(Debug, Args)]
struct BackupArgs {
    /// The backup's name (default: backup_YYYYMMDD_HHMMSS, UTC).
    #[arg(long)]
    name: Option<String>,
    /// The retention series (default: the name without its trailing date stamp).
    #[arg(long)]
    series: Option<String>,
    /// Store the dump uncompressed.
    #[arg(long)]
    no_compress: bool,
    /// Replace an existing backup of the same name, once the new one is complete.
    #[arg(long)]
    replace: bool,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let overrides = Overrides {
        backup_dir: cli.backup_dir.clone(),
        compress: match &cli.command {
            Command::Backup(b) if b.no_compress => Some(false),
            _ => None,
        },
    };
    let settings = match Settings::load(
        cli.config.as_deref(),
        &|k| std::env::var(k).ok(),
        &overrides,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let verbosity = if cli.quiet {
        Verbosity::Quiet
    } else if cli.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    if let Some(w) = logging::init(verbosity, settings.log_file.as_deref()) {
        eprintln!("{w}");
    }
    if let Command::Serve { bind, no_auth } = &cli.command {
        return match serve(settings, *bind, *no_auth) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(target: OUTCOME_TARGET, command = "serve", "{e}");
                eprintln!("error: {e}");
                ExitCode::from(e.kind().exit_code())
            }
        };
    }
    let mut out = String::new();
    let result = Ops::new(settings)
        .map_err(Error::from)
        .and_then(|ops| run(&ops, &cli, &mut out));
    if !cli.quiet && write_stdout(&out).is_err() {
        return ExitCode::from(1);
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let subject = match &cli.command {
                Command::Backup(b) => b.name.as_deref(),
                Command::Restore { name, .. } | Command::Delete { name, .. } => Some(name.as_str()),
                Command::Verify { name, .. } => name.as_deref(),
                _ => None,
            };
            // Debug formatting escapes whatever a hostile name holds (newlines, quotes).
            tracing::error!(
                target: OUTCOME_TARGET,
                command = command_name(&cli.command),
                backup = ?subject.unwrap_or("-"),
                "{e}"
            );
            eprintln!("error: {e}");
            ExitCode::from(e.kind().exit_code())
        }
    }
}

fn serve(settings: Settings, bind: std::net::SocketAddr, no_auth: bool) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            io_context: "start the async runtime".into(),
            source,
        })?;
    runtime.block_on(crate::api::serve(settings, bind, no_auth, |addr| {
        // The first line on stdout, for whoever started us (tests bind port 0).
        println!("dbkeep serve: listening on http://{addr}");
        let _ = io::stdout().flush();
    }))?;
    Ok(())
}

/// Writes to stdout; a closed pipe (`dbkeep list | head`) is not an error.
fn write_stdout(text: &str) -> io::Result<()> {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Backup(_) => "backup",
        Command::List { .. } => "list",
        Command::Copy { .. } => "copy",
        Command::Stats { .. } => "stats",
        Command::Restore { .. } => "restore",
        Command::Delete { .. } => "delete",
        Command::Prune { .. } => "prune",
        Command::Verify { .. } => "verify",
        Command::Serve { .. } => "serve",
        Command::Keygen { .. } => "keygen",
    }
}

/// Runs a command, appending what it prints to `out`; returns the exit code on success.
fn run(ops: &Ops, cli: &Cli, out: &mut String) -> Result<u8, Error> {
    use std::fmt::Write as _;
    match &cli.command {
        Command::Backup(b) => {
            let res = ops.backup(&BackupRequest {
                name: b.name.clone(),
                series: b.series.clone(),
                compress: b.no_compress.then_some(false),
                replace: b.replace,
            })?;
            let m = &res.manifest;
            let _ = writeln!(
                out,
                "backup {} done: {} ({}) in {:.1} s\n  file   {}\n  sha256 {}\n  series {}",
                m.backup_name,
                human_bytes(m.file_size),
                m.compression.name(),
                m.duration,
                m.file_path.as_deref().unwrap_or("-"),
                m.sha256.as_deref().unwrap_or("-"),
                m.series,
            );
            for c in &m.copies {
                let state = if c.ok { "ok" } else { "FAILED" };
                let _ = writeln!(out, "  copy   {} {state}", c.repository);
            }
            for n in &res.retention_notes {
                let _ = writeln!(out, "note: {n}");
            }
            for d in res.retention.iter().filter(|d| d.action == Action::Delete) {
                let _ = writeln!(out, "retention deleted {}: {}", d.name, d.reason);
            }
            // BACKUP_DRILL: the backup is complete either way; a failed drill fails the run.
            let drill_error = match ops.drill_after_backup(m) {
                Ok(None) => None,
                Ok(Some(r)) => match r.result {
                    Ok(checks) => {
                        let _ = writeln!(out, "  drill  passed: {}", checks.join(", "));
                        None
                    }
                    Err(e) => Some(e.to_string()),
                },
                Err(e) => Some(e.to_string()),
            };
            if let Some(problem) = drill_error {
                return Err(Error::DrillFailed {
                    name: m.backup_name.clone(),
                    problem: format!("{problem} (the backup itself is complete)"),
                });
            }
            if let Some(first) = res.copy_errors.first() {
                return Err(Error::CopyFailed {
                    name: m.backup_name.clone(),
                    failed: res.copy_errors.len(),
                    first: first.clone(),
                });
            }
            if let Some(first) = res.retention_errors.first() {
                return Err(Error::Retention {
                    failed: res.retention_errors.len(),
                    first: format!("{first} (the backup {} itself is complete)", m.backup_name),
                });
            }
            Ok(0)
        }
        Command::Copy { name, to } => {
            let m = ops.copy(name, to)?;
            let _ = writeln!(out, "backup {} copied to {to}", m.backup_name);
            Ok(0)
        }
        Command::List { json, repo } => {
            let other;
            let ops = match repo {
                Some(r) => {
                    other = ops.on(r)?;
                    &other
                }
                None => ops,
            };
            let cat = ops.catalog()?;
            let stats = ops.statistics(&cat);
            if *json {
                let body = ListResponse {
                    backups: &cat.backups,
                    statistics: stats,
                };
                let _ = writeln!(out, "{}", to_json(&body));
            } else {
                list_table(out, &cat.backups);
                let _ = writeln!(
                    out,
                    "{} backups ({} ok, {} failed), {} in {}",
                    stats.total_backups,
                    stats.successful_backups,
                    stats.failed_backups,
                    human_bytes(cat.backups.iter().map(|m| m.file_size).sum()),
                    stats.backup_directory
                );
                for e in &cat.unreadable {
                    let _ = writeln!(out, "unreadable: {e}");
                }
            }
            Ok(0)
        }
        Command::Stats { json } => {
            let cat = ops.catalog()?;
            let s = ops.statistics(&cat);
            if *json {
                let _ = writeln!(out, "{}", to_json(&s));
            } else {
                let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "never".into());
                let _ = writeln!(out, "backup directory   {}", s.backup_directory);
                let _ = writeln!(out, "total backups      {}", s.total_backups);
                let _ = writeln!(out, "  successful       {}", s.successful_backups);
                let _ = writeln!(out, "  failed           {}", s.failed_backups);
                let total: u64 = cat.backups.iter().map(|m| m.file_size).sum();
                let _ = writeln!(out, "total size         {}", human_bytes(total));
                let _ = writeln!(out, "last success       {}", opt(&s.last_success));
                let _ = writeln!(out, "last failure       {}", opt(&s.last_failure));
                if let Some(d) = &s.last_drill {
                    let outcome = match d.outcome {
                        crate::catalog::DrillOutcome::Passed => "passed",
                        crate::catalog::DrillOutcome::Failed => "FAILED",
                    };
                    let _ = writeln!(
                        out,
                        "last restore drill {} of {}: {outcome}",
                        d.verified_at, d.backup_name
                    );
                }
                let _ = writeln!(
                    out,
                    "free space         {}",
                    s.free_space_bytes.map_or("unknown".into(), human_bytes)
                );
                if s.unreadable_manifests > 0 {
                    let _ = writeln!(out, "unreadable manifests {}", s.unreadable_manifests);
                }
            }
            Ok(0)
        }
        Command::Restore { name, yes } => {
            if !yes {
                let url = ops.settings().database_url()?;
                confirm(&format!(
                    "Restore the backup {name:?} into {url}? Its current contents will be replaced."
                ))?;
            }
            let r = ops.restore(name)?;
            let _ = writeln!(
                out,
                "restored {} (taken {}) in {:.1} s",
                r.manifest.backup_name,
                r.manifest.timestamp_text(),
                r.duration
            );
            if let Some(secs) = r.unavailable {
                let _ = writeln!(
                    out,
                    "the database refused connections for {:.0} ms while the restored one was swapped in",
                    secs * 1000.0
                );
            }
            if let Some(old) = r.kept_old {
                let _ = writeln!(out, "the previous database is kept as {old}");
            }
            Ok(0)
        }
        Command::Delete { name, yes } => {
            if !yes {
                confirm(&format!(
                    "Delete the backup {name:?}? This cannot be undone."
                ))?;
            }
            let removed = ops.delete(name)?;
            let _ = writeln!(out, "deleted {name} ({})", removed.join(", "));
            Ok(0)
        }
        Command::Prune {
            dry_run,
            series,
            retention_days,
            keep_min,
            force,
        } => {
            let p = ops.prune(PruneOptions {
                dry_run: *dry_run,
                series: series.clone(),
                retention_days: *retention_days,
                keep_min: *keep_min,
                force: *force,
            })?;
            if *dry_run {
                let _ = writeln!(out, "dry run: nothing is deleted");
            }
            for ((database, series), pol) in &p.policies {
                let days = if p.overridden.as_ref() == Some(series) {
                    format!("keep {} days (--retention-days)", pol.retention_days)
                } else {
                    format!(
                        "each backup kept for the days it recorded (the newest: {})",
                        pol.retention_days
                    )
                };
                let _ = writeln!(
                    out,
                    "series {series} of {database}: {days}, at least {} newest successful",
                    pol.keep_min
                );
            }
            for d in &p.decisions {
                let verb = match (d.action, dry_run) {
                    (Action::Keep, _) => "keep  ",
                    (Action::Delete, true) => "would delete",
                    (Action::Delete, false) => "delete",
                };
                let failed = if d.success { "" } else { " (failed attempt)" };
                let _ = writeln!(out, "{verb} {}{failed}: {}", d.name, d.reason);
            }
            for l in &p.leftovers {
                let verb = if *dry_run { "would remove" } else { "removed" };
                let _ = writeln!(out, "{verb} leftover {l}");
            }
            for u in &p.stale_uploads {
                let verb = if *dry_run { "would abort" } else { "aborted" };
                let _ = writeln!(
                    out,
                    "{verb} incomplete upload of {u} (begun over a day ago)"
                );
            }
            for n in &p.notes {
                let _ = writeln!(out, "note: {n}");
            }
            for o in &p.orphans {
                let _ = writeln!(
                    out,
                    "not a backup of this repository (no manifest names it; left alone, remove it by hand if it is a leftover): {o}"
                );
            }
            if let Some(first) = p.errors.first() {
                return Err(Error::Retention {
                    failed: p.errors.len(),
                    first: first.clone(),
                });
            }
            Ok(0)
        }
        Command::Serve { .. } => Ok(0), // handled in main
        Command::Keygen { output } => {
            use std::os::unix::fs::OpenOptionsExt;
            let (text, public) = crate::encryption::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(output)
                .map_err(|source| Error::Io {
                    io_context: format!("create the identity file {}", output.display()),
                    source,
                })?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|source| Error::Io {
                    io_context: format!("write the identity file {}", output.display()),
                    source,
                })?;
            let _ = writeln!(out, "{public}");
            Ok(0)
        }
        Command::Verify {
            name,
            all,
            latest: _,
            restore,
        } => {
            let target = match (name, all) {
                (Some(n), _) => VerifyTarget::Named(n.clone()),
                (None, true) => VerifyTarget::All,
                (None, false) => VerifyTarget::Latest,
            };
            let reports = if *restore {
                ops.drill(&target)?
            } else {
                ops.verify(&target)?
            };
            let mut failed = 0;
            for r in &reports {
                match &r.result {
                    Ok(checks) => {
                        let _ = writeln!(out, "ok      {}: {}", r.name, checks.join(", "));
                    }
                    // Not damage: retention removed it meanwhile.
                    Err(e @ Error::DeletedMeanwhile { .. }) => {
                        let _ = writeln!(out, "gone    {}: {e}", r.name);
                    }
                    Err(e) => {
                        failed += 1;
                        let _ = writeln!(out, "FAILED  {}: {e}", r.name);
                        tracing::error!(backup = %r.name, "verify failed: {e}");
                    }
                }
            }
            if reports.is_empty() {
                let _ = writeln!(out, "no successful backups to verify");
            }
            Ok(if failed > 0 { 1 } else { 0 })
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn list_table(out: &mut String, backups: &[Manifest]) {
    use std::fmt::Write as _;
    let width = backups
        .iter()
        .map(|m| m.backup_name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:<width$}  {:<20}  {:>10}  {:>8}  {:<10}  STATUS",
        "NAME", "TIMESTAMP", "SIZE", "DURATION", "TYPE"
    );
    for m in backups {
        let failed_copies: Vec<&str> = m.failed_copies().map(|c| c.repository.as_str()).collect();
        let drill = match &m.verification {
            Some(v) if v.outcome == crate::catalog::DrillOutcome::Passed => {
                format!(", drill passed {}", v.verified_at.format("%Y-%m-%d %H:%M"))
            }
            Some(v) => format!(", DRILL FAILED {}", v.verified_at.format("%Y-%m-%d %H:%M")),
            None => String::new(),
        };
        let status = if m.success && !failed_copies.is_empty() {
            format!("ok{drill}, COPY FAILED to {}", failed_copies.join(", "))
        } else if m.success {
            format!("ok{drill}")
        } else {
            let e = m.error.as_deref().unwrap_or("failed");
            let short: String = e.chars().take(100).collect();
            format!("FAILED: {short}")
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<20}  {:>10}  {:>7.1}s  {:<10}  {}",
            m.backup_name,
            m.timestamp_text(),
            if m.success {
                human_bytes(m.file_size)
            } else {
                "-".into()
            },
            m.duration,
            m.database_type.to_string(),
            status
        );
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Asks on the terminal; refuses when stdin is not a terminal.
fn confirm(question: &str) -> Result<(), Error> {
    if !io::stdin().is_terminal() {
        return Err(Error::NotConfirmed(format!(
            "{question} Refusing without confirmation: stdin is not a terminal; pass --yes to confirm"
        )));
    }
    eprint!("{question} Type yes to continue: ");
    let _ = io::stderr().flush();
    let mut answer = String::new();
    io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::NotConfirmed(format!("could not read the answer: {e}")))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "yes" | "y") {
        Ok(())
    } else {
        Err(Error::NotConfirmed(
            "not confirmed: nothing was changed".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(crate::catalog::bytes_to_mb(1048576), 1.0);
    }
}
