//! The command line (clap): parse, load settings, call `ops`, print, and map the outcome to the
//! documented exit codes: 0 success, 1 operation failed, 2 bad usage or configuration.

mod docs;
mod output;
mod progress;
mod run;
mod views;

use crate::config::{Overrides, Settings};
use crate::error::Error;
use crate::logging::{self, OUTCOME_TARGET, Verbosity};
use crate::ops::Ops;
use clap::{Args, Parser, Subcommand};
use output::{human_bytes, to_json};
use run::run;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "dbkeep",
    version,
    about = "Complete, checksummed, restorable backups of PostgreSQL, MySQL/MariaDB and SQLite databases",
    after_help = "Settings come from dbkeep.toml (or --config), then the environment (DATABASE_URL, \
BACKUP_DIR, BACKUP_RETENTION_DAYS, BACKUP_COMPRESS, BACKUP_LOG_FILE, …), then flags.\n\
Exit codes: 0 success, 1 operation failed, 2 bad usage or configuration."
)]
pub struct Cli {
    /// A TOML settings file (default: dbkeep.toml in the working directory, if present).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The configured database to work on: a [databases.NAME] table of the config file
    /// (default: the unnamed one, DATABASE_URL's).
    #[arg(long, global = true, value_name = "NAME")]
    database: Option<String>,
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
enum ScheduleAction {
    /// Run the configured schedules until SIGTERM or SIGINT (between runs; a running backup
    /// is stopped and recorded as failed).
    Run,
    /// Each schedule's next run and the newest backup of its series.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print the schedules as crontab lines or as systemd service and timer files.
    Print {
        #[arg(long, conflicts_with = "systemd", required_unless_present = "systemd")]
        cron: bool,
        #[arg(long)]
        systemd: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WalAction {
    /// Check that the server can serve point-in-time recovery (PostgreSQL): wal_level, free
    /// WAL senders, a role with REPLICATION, a replication connection pg_hba.conf lets in; prints
    /// the cluster's system identifier, timeline and WAL position. Exit 1 when a check fails.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Stream WAL into the repository's archive (`wal/`) until SIGTERM: dbkeep's replication
    /// slot (BACKUP_WAL_SLOT), pg_receivewal restarted with backoff, each completed segment
    /// compressed, encrypted and recorded; gaps and a lost slot notified (wal_failed).
    Stream,
    /// Copy the archived WAL file NAME to DEST: PostgreSQL's restore_command. Exit 0 done, 1
    /// when the archive has no such file, 126 on any other error (recovery then stops rather
    /// than end early).
    Fetch { name: String, dest: PathBuf },
    /// What the WAL archive holds, its gaps, and the replication slot.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NotifyAction {
    /// Send a test event to one channel ([channels.NAME]) and say how it went.
    Test { channel: String },
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
        #[arg(long, value_name = "REPO", conflicts_with = "all_databases")]
        repo: Option<String>,
        /// List the backups of every configured database.
        #[arg(long)]
        all_databases: bool,
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
        /// The statistics of every configured database.
        #[arg(long)]
        all_databases: bool,
    },
    /// Restore a backup into the configured database (replaces its contents).
    Restore {
        /// The backup (not needed with --to-time, --to-lsn or --latest: the base backup is
        /// chosen by the target).
        #[arg(required_unless_present_any = ["to_time", "to_lsn", "latest"])]
        name: Option<String>,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
        /// A base backup: unpack it into this new (or empty) data directory instead, checked
        /// file by file; no database is touched.
        #[arg(long, value_name = "DIR")]
        pgdata: Option<std::path::PathBuf>,
        #[command(flatten)]
        pitr: PitrArgs,
    },
    /// Delete a backup.
    Delete {
        name: String,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// The scheduler: `run` it in the foreground (no HTTP; `dbkeep serve` runs it too), or
    /// `list` each schedule's next run and last outcome.
    Schedule {
        #[command(subcommand)]
        action: ScheduleAction,
    },
    /// Notification channels: `test` one.
    Notify {
        #[command(subcommand)]
        action: NotifyAction,
    },
    /// Point-in-time recovery's write-ahead log: `check` the server's readiness.
    Wal {
        #[command(subcommand)]
        action: WalAction,
    },
    /// Exempt a backup from retention (prune and the retention after a backup keep it).
    Pin { name: String },
    /// Let retention have a pinned backup again.
    Unpin { name: String },
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
    /// Print the completion script for SHELL on stdout, e.g. `dbkeep completions bash >
    /// /etc/bash_completion.d/dbkeep` (the Debian package installs them for bash, zsh and fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (dbkeep(1) and one per command) into DIR, for packagers.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
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
        /// A recovery drill (with --restore): the base backup before TIME, a throwaway server
        /// recovering from the WAL archive to TIME and promoting; recorded in that backup's
        /// manifest (`pitr_verification`).
        #[arg(long, value_name = "TIME", requires = "restore", conflicts_with_all = ["name", "all", "to_end"])]
        to_time: Option<String>,
        /// A recovery drill to the end of the archived WAL (with --restore).
        #[arg(long, requires = "restore", conflicts_with_all = ["name", "all"])]
        to_end: bool,
    },
}

/// Recovery to a point (`restore --pgdata DIR` with one of these; NAME is then `-`, or any
/// name: the base backup is chosen by the target).
#[derive(Debug, Args)]
struct PitrArgs {
    /// Recover to this time ('2026-12-01 10:00:00+00'): every transaction committed before it.
    #[arg(long, value_name = "TIME", requires = "pgdata", conflicts_with_all = ["to_lsn", "latest"])]
    to_time: Option<String>,
    /// Recover to this WAL position (0/16B3748).
    #[arg(
        long,
        value_name = "LSN",
        requires = "pgdata",
        conflicts_with = "latest"
    )]
    to_lsn: Option<String>,
    /// Recover to the end of the archived WAL.
    #[arg(long, requires = "pgdata")]
    latest: bool,
    /// What the server does at the target: pause (the default: look, then
    /// `SELECT pg_wal_replay_resume()`), promote, or shutdown.
    #[arg(long, value_enum, default_value = "pause")]
    target_action: TargetActionArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TargetActionArg {
    Pause,
    Promote,
    Shutdown,
}

impl From<TargetActionArg> for crate::ops::pitr::TargetAction {
    fn from(a: TargetActionArg) -> Self {
        match a {
            TargetActionArg::Pause => Self::Pause,
            TargetActionArg::Promote => Self::Promote,
            TargetActionArg::Shutdown => Self::Shutdown,
        }
    }
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
    /// A base backup of the whole PostgreSQL cluster (pg_basebackup, with the WAL it needs),
    /// whatever BACKUP_PG_FORMAT says: restored with `restore --pgdata`.
    #[arg(long)]
    physical: bool,
}

/// `wal fetch`'s exit code for anything but "the archive has no such file".
const FETCH_FAILED: u8 = 126;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // restore_command's arguments that this dbkeep cannot parse are an error, never "no such
    // file" (exit 2 would read as that).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let maybe_fetch = args.windows(2).any(|w| w[0] == "wal" && w[1] == "fetch");
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            let code = match (e.use_stderr(), maybe_fetch) {
                (false, _) => 0,
                (true, true) => FETCH_FAILED,
                (true, false) => 2,
            };
            return ExitCode::from(code);
        }
    };
    // Documentation needs no settings: a broken config file must not hide it.
    match &cli.command {
        Command::Completions { shell } => return docs::completions(*shell),
        Command::Manpages { dir } => return docs::manpages(dir),
        _ => {}
    }
    // restore_command: PostgreSQL takes exit 1 for "no such file" and ends recovery there, so
    // every other failure, a panic included, must be 126 (recovery stops instead).
    let fetch = matches!(
        cli.command,
        Command::Wal {
            action: WalAction::Fetch { .. }
        }
    );
    if fetch {
        std::panic::set_hook(Box::new(|info| {
            eprintln!("error: dbkeep wal fetch panicked: {info}");
            std::process::exit(FETCH_FAILED.into());
        }));
    }
    let overrides = Overrides {
        database: cli.database.clone(),
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
            return ExitCode::from(if fetch { FETCH_FAILED } else { 2 });
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
    // The scheduler logs its runs instead: a spinner would hide the log lines.
    let spinner = match &cli.command {
        Command::Schedule { .. } => None,
        _ => progress::start(cli.quiet),
    };
    let result = Ops::new(settings)
        .map_err(Error::from)
        .and_then(|ops| run(&ops, &cli, &mut out));
    drop(spinner);
    if !cli.quiet && write_stdout(&out).is_err() {
        return ExitCode::from(if fetch { FETCH_FAILED } else { 1 });
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let subject = match &cli.command {
                Command::Backup(b) => b.name.as_deref(),
                Command::Restore { name, .. } => name.as_deref(),
                Command::Delete { name, .. } | Command::Pin { name } | Command::Unpin { name } => {
                    Some(name.as_str())
                }
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
            ExitCode::from(if fetch {
                FETCH_FAILED
            } else {
                e.kind().exit_code()
            })
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
        Command::Schedule { .. } => "schedule",
        Command::Notify { .. } => "notify",
        Command::Wal { .. } => "wal",
        Command::Pin { .. } => "pin",
        Command::Unpin { .. } => "unpin",
        Command::Prune { .. } => "prune",
        Command::Verify { .. } => "verify",
        Command::Serve { .. } => "serve",
        Command::Keygen { .. } => "keygen",
        Command::Completions { .. } => "completions",
        Command::Manpages { .. } => "manpages",
    }
}
