//! Logging with `tracing`: readable lines on stderr for people, and the backup log file
//! (`BACKUP_LOG_FILE`, default `./backup.log`) with one line per event carrying the level word
//! (`INFO`, `WARN`, `ERROR`), greppable as in the spec (`grep ERROR backup.log`).
//!
//! No event carries a password: URLs are logged through their redacting `Display`, and child
//! output is scrubbed before it becomes an error.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use tracing::Level;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// The target of the one event that reports a command's final failure: written to the log file,
/// not to stderr (the CLI prints the error itself, once).
pub const OUTCOME_TARGET: &str = "dbkeep::outcome";

/// How much goes to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Nothing (cron's `--quiet`): the CLI prints only a final error.
    Quiet,
    /// Warnings and errors.
    Normal,
    /// Everything from INFO up.
    Verbose,
}

/// Installs the subscriber. Returns a warning to show when the log file cannot be opened (the
/// command still runs: losing a log line must not cost a backup).
pub fn init(verbosity: Verbosity, log_file: Option<&Path>) -> Option<String> {
    let stderr_level = match verbosity {
        Verbosity::Quiet => LevelFilter::OFF,
        Verbosity::Normal => LevelFilter::WARN,
        Verbosity::Verbose => LevelFilter::INFO,
    };
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_filter(
            Targets::new()
                .with_target(OUTCOME_TARGET, LevelFilter::OFF)
                .with_target("dbkeep", stderr_level),
        );
    let mut warning = None;
    let file_layer = log_file.and_then(|path| {
        match OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
        {
            Ok(file) => Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(Mutex::new(file))
                    .with_ansi(false)
                    .with_target(false)
                    .with_filter(Targets::new().with_target("dbkeep", Level::INFO)),
            ),
            Err(e) => {
                warning = Some(format!(
                    "warning: cannot open the log file {} ({e}); logging to stderr only (set BACKUP_LOG_FILE, or BACKUP_LOG_FILE=off)",
                    path.display()
                ));
                None
            }
        }
    });
    let _ = tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .try_init();
    warning
}
