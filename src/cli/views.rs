//! What `run` prints for the commands that show things: `wal check`'s text, the list, the
//! statistics, the schedules, one backup.

use super::output::list_table;
use super::*;
use crate::catalog::ListResponse;

/// `dbkeep wal check`'s lines: each check, the cluster's identity, advice, the verdict.
pub(super) fn wal_check_text(
    r: &crate::engine::seam::Readiness,
    out: &mut String,
) -> std::fmt::Result {
    use std::fmt::Write as _;
    for c in &r.checks {
        writeln!(
            out,
            "{} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        )?;
    }
    if let (Some(id), Some(tli), Some(lsn)) = (&r.system_identifier, r.timeline, &r.lsn) {
        writeln!(
            out,
            "cluster: system identifier {id}, timeline {tli}, WAL at {lsn}"
        )?;
    }
    for a in &r.advice {
        writeln!(out, "advice: {a}")?;
    }
    writeln!(
        out,
        "{}",
        if r.ready() {
            "ready for point-in-time recovery"
        } else {
            "not ready for point-in-time recovery: change what FAIL says, then run dbkeep wal check again"
        }
    )
}

/// A repository's list: its JSON (the spec's response) or, as a string, its table.
pub(super) fn list(ops: &Ops, json: bool) -> Result<serde_json::Value, Error> {
    use std::fmt::Write as _;
    let cat = ops.catalog()?;
    let stats = ops.statistics(&cat);
    if json {
        let body = ListResponse {
            backups: &cat.backups,
            statistics: stats,
        };
        return Ok(serde_json::to_value(&body).unwrap_or_default());
    }
    let mut text = String::new();
    {
        let out = &mut text;
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
        if let Some(p) = &stats.pitr {
            let _ = writeln!(out, "{}", p.describe());
        }
        for e in &cat.unreadable {
            let _ = writeln!(out, "unreadable: {e}");
        }
    }
    Ok(serde_json::Value::String(text))
}

/// A repository's statistics: their JSON or, as a string, their text.
pub(super) fn stats(ops: &Ops, json: bool) -> Result<serde_json::Value, Error> {
    use std::fmt::Write as _;
    let cat = ops.catalog()?;
    let s = ops.statistics(&cat);
    if json {
        return Ok(serde_json::to_value(&s).unwrap_or_default());
    }
    let mut text = String::new();
    {
        let out = &mut text;
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
        if let Some(p) = &s.pitr {
            let _ = writeln!(out, "point in time      {}", p.describe());
        }
        if s.unreadable_manifests > 0 {
            let _ = writeln!(out, "unreadable manifests {}", s.unreadable_manifests);
        }
    }
    Ok(serde_json::Value::String(text))
}

/// `dbkeep schedule print`: the schedules as crontab lines (`cron`) or systemd units.
pub(super) fn print_schedules(ops: &Ops, cli: &Cli, cron: bool) -> Result<String, Error> {
    use crate::schedule::export;
    let schedules = &ops.settings().schedules;
    if schedules.is_empty() {
        return Err(Error::NoSchedules);
    }
    let cwd = std::env::current_dir().map_err(|source| Error::Io {
        io_context: "read the working directory".into(),
        source,
    })?;
    let config = cli
        .config
        .clone()
        .or_else(|| {
            let d = std::path::Path::new(crate::config::DEFAULT_CONFIG_FILE);
            d.is_file().then(|| d.to_owned())
        })
        .map(|p| cwd.join(p).to_string_lossy().into_owned());
    let inv = export::Invocation {
        program: std::env::current_exe()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "dbkeep".into()),
        config,
        working_dir: cwd.to_string_lossy().into_owned(),
    };
    let text = if cron {
        export::crontab(schedules, &inv)
    } else {
        export::systemd(schedules, &inv)
    }
    .map_err(|e| Error::Config(crate::config::ConfigError::Export(e)))?;
    Ok(text)
}

/// Prints `view` of this database, or of every configured one (`all`): in JSON, each under
/// `{"database": NAME, key: …}` in `{"databases": [...]}`; as text, each after a heading.
pub(super) fn show(
    ops: &Ops,
    all: bool,
    json: bool,
    key: &str,
    view: fn(&Ops, bool) -> Result<serde_json::Value, Error>,
    out: &mut String,
) -> Result<(), Error> {
    use std::fmt::Write as _;
    if !all {
        match view(ops, json)? {
            serde_json::Value::String(text) => out.push_str(&text),
            v => {
                let _ = writeln!(out, "{}", to_json(&v));
            }
        }
        return Ok(());
    }
    let mut each = Vec::new();
    for db in ops.all_databases()? {
        let name = db.settings().database.clone();
        if json {
            each.push(serde_json::json!({"database": name, key: view(&db, true)?}));
        } else {
            let _ = writeln!(out, "== database {name} ==");
            out.push_str(view(&db, false)?.as_str().unwrap_or_default());
            out.push('\n');
        }
    }
    if json {
        let _ = writeln!(
            out,
            "{}",
            to_json(&serde_json::json!({ "databases": each }))
        );
    }
    Ok(())
}
