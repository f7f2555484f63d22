//! Each command: the `ops` call, what it prints, and its exit code.

use super::views::{list, print_schedules, show, stats, wal_check_text};
use super::*;
use crate::error::Error;
use crate::ops::{BackupRequest, Ops, PruneOptions, VerifyTarget};
use crate::retention::Action;
use std::io::{self, BufRead, IsTerminal, Write};

/// Runs a command, appending what it prints to `out`; returns the exit code on success.
pub(super) fn run(ops: &Ops, cli: &Cli, out: &mut String) -> Result<u8, Error> {
    use std::fmt::Write as _;
    match &cli.command {
        Command::Backup(b) => {
            let res = ops.backup(&BackupRequest {
                name: b.name.clone(),
                series: b.series.clone(),
                compress: b.no_compress.then_some(false),
                replace: b.replace,
                physical: b.physical,
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
        Command::List {
            json,
            repo,
            all_databases,
        } => {
            let other;
            let ops = match repo {
                Some(r) => {
                    other = ops.on(r)?;
                    &other
                }
                None => ops,
            };
            show(ops, *all_databases, *json, "list", list, out)?;
            Ok(0)
        }
        Command::Stats {
            json,
            all_databases,
        } => {
            show(ops, *all_databases, *json, "statistics", stats, out)?;
            Ok(0)
        }
        Command::Restore {
            pgdata: Some(dir),
            pitr,
            ..
        } if pitr.to_time.is_some() || pitr.to_lsn.is_some() || pitr.latest => {
            use crate::ops::pitr::{RecoveryTarget, parse_lsn, parse_time};
            let target = match (&pitr.to_time, &pitr.to_lsn) {
                (Some(t), _) => RecoveryTarget::Time(parse_time(t)?),
                (None, Some(l)) => RecoveryTarget::Lsn(parse_lsn(l)?),
                (None, None) => RecoveryTarget::Latest,
            };
            let r = ops.restore_to(target, dir, pitr.target_action.into())?;
            let _ = writeln!(
                out,
                "restored the base backup {} (consistent at {}) into {}; WAL is archived until {}{}\n  recovery settings (in postgresql.auto.conf, with recovery.signal):",
                r.base.backup_name,
                r.base.finished_at.to_rfc3339(),
                dir.display(),
                r.window.until.to_rfc3339(),
                r.window
                    .gap
                    .as_ref()
                    .map(|g| format!(" ({g} is missing after it)"))
                    .unwrap_or_default(),
            );
            for line in &r.settings {
                let _ = writeln!(out, "    {line}");
            }
            let _ = writeln!(
                out,
                "  start a server on it as the user who owns it (chown -R postgres {0} when run as root; that user must be able to run dbkeep and read the repository): pg_ctl -D {0} start",
                dir.display()
            );
            Ok(0)
        }
        Command::Restore {
            name: Some(name),
            pgdata: Some(dir),
            ..
        } => {
            let r = ops.restore(name, Some(dir))?;
            let _ = writeln!(
                out,
                "restored the base backup {} (taken {}) into {} in {:.1} s, every file checked against pg_basebackup's manifest\n  start a server on it as the user who owns it (chown -R postgres {2} when run as root): pg_ctl -D {2} start",
                r.manifest.backup_name,
                r.manifest.timestamp_text(),
                dir.display(),
                r.duration
            );
            Ok(0)
        }
        Command::Restore {
            name: Some(name),
            yes,
            ..
        } => {
            if !yes {
                let url = ops.settings().database_url()?;
                confirm(&format!(
                    "Restore the backup {name:?} into {url}? Its current contents will be replaced."
                ))?;
            }
            let r = ops.restore(name, None)?;
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
        Command::Restore { .. } => Err(Error::Unsupported(
            "name the backup to restore, or recover to a point with --pgdata DIR and --to-time, --to-lsn or --latest".into(),
        )),
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
        Command::Schedule { action } => match action {
            ScheduleAction::Print { cron, .. } => {
                out.push_str(&print_schedules(ops, cli, *cron)?);
                Ok(0)
            }
            ScheduleAction::Run => {
                crate::signals::install().map_err(Error::Signals)?;
                ops.run_schedules(&crate::schedule::runner::SystemClock::default(), None)?;
                Ok(0)
            }
            ScheduleAction::List { json } => {
                let list = ops.schedule_status(chrono::Utc::now())?;
                if *json {
                    let _ = writeln!(out, "{}", to_json(&list));
                } else {
                    for s in &list {
                        let last = match (&s.last_backup, s.last_success, &s.last_at) {
                            (Some(n), Some(true), Some(at)) => format!("last {n} ok at {at}"),
                            (Some(n), Some(false), Some(at)) => format!("last {n} FAILED at {at}"),
                            _ => "no backup yet".to_owned(),
                        };
                        let _ = writeln!(
                            out,
                            "{}  {} ({})  database {}  series {}  next {}  {last}",
                            s.name,
                            s.cron,
                            s.timezone,
                            s.database,
                            s.series,
                            s.next_run.as_deref().unwrap_or("never")
                        );
                    }
                }
                Ok(0)
            }
        },
        Command::Notify {
            action: NotifyAction::Test { channel },
        } => {
            let d = ops.notify_test(channel)?;
            match d.result {
                Ok(()) => {
                    let _ = writeln!(
                        out,
                        "test notification sent to {channel} ({} attempt(s))",
                        d.attempts
                    );
                    Ok(0)
                }
                Err(problem) => Err(Error::Notification {
                    channel: channel.clone(),
                    problem: format!("{problem} (after {} attempt(s))", d.attempts),
                }),
            }
        }
        Command::Wal {
            action: WalAction::Stream,
        } => {
            ops.wal_stream(None)?;
            Ok(0)
        }
        Command::Wal {
            action: WalAction::Fetch { name, dest },
        } => match ops.wal_fetch(name, dest)? {
            crate::wal::Fetched::Done => Ok(0),
            crate::wal::Fetched::Missing => Ok(1),
        },
        Command::Wal {
            action: WalAction::Status { json },
        } => {
            let s = ops.wal_status()?;
            if *json {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&s).unwrap_or_default()
                );
            } else {
                let _ = writeln!(
                    out,
                    "WAL archive {}: {} segments ({} to {}), {} history files, last completed {}",
                    s.archive,
                    s.segments,
                    s.first.as_deref().unwrap_or("-"),
                    s.last.as_deref().unwrap_or("-"),
                    s.history_files,
                    s.last_completed_at
                        .map_or_else(|| "-".into(), |t| t.to_rfc3339())
                );
                for g in &s.gaps {
                    let _ = writeln!(out, "GAP  {g}");
                }
                match &s.slot {
                    Some(h) => {
                        let _ = writeln!(
                            out,
                            "slot: {} ({}), {} bytes retained, {}",
                            h.wal_status,
                            if h.active { "streaming" } else { "not streaming" },
                            h.retained_bytes.unwrap_or(0),
                            h.safe_wal_size.map_or_else(
                                || "no max_slot_wal_keep_size".into(),
                                |b| format!("{b} bytes before it would be lost")
                            )
                        );
                    }
                    None => {
                        let _ = writeln!(out, "slot: not found (or the server did not answer)");
                    }
                }
            }
            Ok(if s.gaps.is_empty() { 0 } else { 1 })
        }
        Command::Wal {
            action: WalAction::Check { json },
        } => {
            let r = ops.wal_check()?;
            let _ = if *json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&r).unwrap_or_default()
                )
            } else {
                wal_check_text(&r, out)
            };
            Ok(if r.ready() { 0 } else { 1 })
        }
        Command::Pin { name } | Command::Unpin { name } => {
            let pin = matches!(cli.command, Command::Pin { .. });
            let m = ops.pin(name, pin)?;
            let _ = if m.pinned {
                writeln!(
                    out,
                    "pinned {name}: retention keeps it until `dbkeep unpin {name}`"
                )
            } else {
                writeln!(out, "unpinned {name}: retention applies to it again")
            };
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
                let policy = ops.settings().series.get(series.as_str());
                let days = if p.overridden.as_ref() == Some(series) {
                    format!("keep {} days (--retention-days)", pol.retention_days)
                } else if let Some(policy) = policy {
                    format!("policy [series.{series}]: {}", policy.describe())
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
            if !p.wal_removed.is_empty() {
                let verb = if *dry_run { "would remove" } else { "removed" };
                let _ = writeln!(
                    out,
                    "{verb} {} archived WAL files no kept base backup needs ({} to {})",
                    p.wal_removed.len(),
                    p.wal_removed.first().map_or("", String::as_str),
                    p.wal_removed.last().map_or("", String::as_str)
                );
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
        // Handled in main, before settings are loaded.
        Command::Serve { .. } | Command::Completions { .. } | Command::Manpages { .. } => Ok(0),
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
            to_time, to_end, ..
        } if to_time.is_some() || *to_end => {
            use crate::ops::pitr::{RecoveryTarget, parse_time};
            let target = match to_time {
                Some(t) => RecoveryTarget::Time(parse_time(t)?),
                None => RecoveryTarget::Latest,
            };
            let r = ops.pitr_drill(target)?;
            match &r.result {
                Ok(checks) => {
                    let _ = writeln!(out, "ok      {}: {}", r.name, checks.join(", "));
                    Ok(0)
                }
                Err(e) => {
                    let _ = writeln!(out, "FAILED  {}: {e}", r.name);
                    tracing::error!(backup = %r.name, "recovery drill failed: {e}");
                    Ok(1)
                }
            }
        }
        Command::Verify {
            name,
            all,
            latest: _,
            restore,
            ..
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

/// Asks on the terminal; refuses when stdin is not a terminal.
pub(super) fn confirm(question: &str) -> Result<(), Error> {
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
