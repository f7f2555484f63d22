//! `dbkeep schedule print --cron` / `--systemd`: the configured schedules as crontab lines, or
//! as a systemd service and timer per schedule, for those who would rather have cron or
//! systemd start each backup. A pattern the target cannot express is refused with the reason,
//! never approximated (a timer that runs at other times than the schedule would be worse than
//! none).

use super::Schedule;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExportError {
    #[error(
        "[[schedule]] {name:?}: cron {cron:?} cannot be written as {target}: {problem}; write that line by hand or let `dbkeep schedule run` (or `dbkeep serve`) run it"
    )]
    Unsupported {
        name: String,
        cron: String,
        target: &'static str,
        problem: &'static str,
    },
}

/// How the printed commands start dbkeep: its path, the config file, the working directory.
pub struct Invocation {
    pub program: String,
    pub config: Option<String>,
    pub working_dir: String,
}

/// The schedule's own settings as the variables `dbkeep backup` reads.
fn environment(s: &Schedule) -> Vec<String> {
    let mut env = Vec::new();
    if let Some(c) = s.compression {
        env.push(format!("BACKUP_COMPRESSION={}", c.name()));
    }
    if let Some(d) = s.drill {
        let d = match d {
            crate::config::DrillPolicy::Off => "off",
            crate::config::DrillPolicy::AfterBackup => "after-backup",
            crate::config::DrillPolicy::Daily => "daily",
        };
        env.push(format!("BACKUP_DRILL={d}"));
    }
    if s.physical {
        env.push("BACKUP_PG_FORMAT=physical".into());
    }
    env
}

/// What the printed line cannot carry, for a comment.
fn not_carried(s: &Schedule) -> Option<String> {
    let mut left = Vec::new();
    if s.name_template != super::DEFAULT_TEMPLATE {
        left.push("name_template (backups get the default name)");
    }
    if s.retries > 0 {
        left.push("retries");
    }
    if s.notify.is_some() {
        left.push("notify (the database's channels apply)");
    }
    (!left.is_empty()).then(|| format!("# not carried over: {}\n", left.join(", ")))
}

impl Invocation {
    fn command(&self, s: &Schedule) -> String {
        let mut argv = vec![self.program.clone()];
        if let Some(c) = &self.config {
            argv.push("--config".into());
            argv.push(c.clone());
        }
        argv.extend([
            "--database".into(),
            s.database.clone(),
            "--quiet".into(),
            "backup".into(),
            "--series".into(),
            s.series.clone(),
        ]);
        argv.iter()
            .map(|a| shell_word(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `a` quoted for a crontab line or an ExecStart= (single quotes unless plain).
fn shell_word(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,@+".contains(c))
    {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn unsupported(s: &Schedule, target: &'static str, problem: &'static str) -> ExportError {
    ExportError::Unsupported {
        name: s.name.clone(),
        cron: s.cron_text.clone(),
        target,
        problem,
    }
}

/// The schedules as crontab lines (with comments saying what cron cannot do).
pub fn crontab(schedules: &[Schedule], inv: &Invocation) -> Result<String, ExportError> {
    let mut out = String::from(
        "# dbkeep's schedules as crontab lines (dbkeep schedule print --cron).\n# Environment (DATABASE_URL, …) comes from the config file or lines such as VAR=value above.\n# CRON_TZ is honoured by cronie and systemd-cron; Debian's cron runs every line in the system's zone.\n",
    );
    for s in schedules {
        let fields: Vec<&str> = s.cron_text.split_whitespace().collect();
        if fields.len() == 6 {
            return Err(unsupported(
                s,
                "a crontab line",
                "cron has no seconds field",
            ));
        }
        let mut command = environment(s);
        command.push(inv.command(s));
        // cron reads an unescaped % as a newline.
        let command = command.join(" ").replace('%', "\\%");
        out.push_str(&format!(
            "# schedule {} (database {}, series {})\n{}CRON_TZ={}\n{} {command}\n",
            s.name,
            s.database,
            s.series,
            not_carried(s).unwrap_or_default(),
            s.tz.name(),
            s.cron_text,
        ));
    }
    Ok(out)
}

/// One cron field (minute, hour, day, month: numbers) as an OnCalendar component.
fn calendar_field(field: &str, first: u32) -> Option<String> {
    if field == "*" {
        return Some("*".into());
    }
    let parts: Option<Vec<String>> = field
        .split(',')
        .map(|p| {
            if let Some(step) = p.strip_prefix("*/") {
                step.parse::<u32>().ok().map(|n| format!("{first:02}/{n}"))
            } else if let Some((a, b)) = p.split_once('-') {
                let (a, b) = (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?);
                Some(format!("{a:02}..{b:02}"))
            } else {
                p.parse::<u32>().ok().map(|n| format!("{n:02}"))
            }
        })
        .collect();
    parts.map(|p| p.join(","))
}

/// The weekday field as OnCalendar names (`*` → none).
fn weekday_field(field: &str) -> Option<Option<String>> {
    if field == "*" || field == "?" {
        return Some(None);
    }
    const NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    let day = |d: &str| -> Option<&'static str> {
        match d.parse::<usize>() {
            Ok(n) => NAMES.get(n % 7).copied(),
            Err(_) => NAMES
                .iter()
                .find(|n| n.eq_ignore_ascii_case(&d[..d.len().min(3)]) && d.len() == 3)
                .copied(),
        }
    };
    let parts: Option<Vec<String>> = field
        .split(',')
        .map(|p| match p.split_once('-') {
            Some((a, b)) => Some(format!("{}..{}", day(a)?, day(b)?)),
            None => day(p).map(str::to_owned),
        })
        .collect();
    parts.map(|p| Some(p.join(",")))
}

/// The schedule's pattern as a systemd OnCalendar= expression, in its time zone.
pub fn on_calendar(s: &Schedule) -> Result<String, ExportError> {
    let target = "a systemd OnCalendar=";
    let text = s.cron_text.trim();
    let shortcut = match text.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => Some("*-01-01 00:00:00"),
        "@monthly" => Some("*-*-01 00:00:00"),
        "@weekly" => Some("Sun *-*-* 00:00:00"),
        "@daily" | "@midnight" => Some("*-*-* 00:00:00"),
        "@hourly" => Some("*-*-* *:00:00"),
        _ => None,
    };
    let expr = match shortcut {
        Some(e) => e.to_owned(),
        None => {
            let f: Vec<&str> = text.split_whitespace().collect();
            let (sec, rest) = match f.len() {
                5 => ("0", &f[..]),
                6 => (f[0], &f[1..]),
                _ => return Err(unsupported(s, target, "expected 5 or 6 fields")),
            };
            let bad = || {
                unsupported(
                    s,
                    target,
                    "only numbers, lists, ranges and */N steps convert",
                )
            };
            let (min, hour, dom, mon, dow) = (rest[0], rest[1], rest[2], rest[3], rest[4]);
            if dom != "*" && dom != "?" && dow != "*" && dow != "?" {
                return Err(unsupported(
                    s,
                    target,
                    "cron runs when the day of the month OR the weekday matches; OnCalendar needs both",
                ));
            }
            let dom = if dom == "?" { "*" } else { dom };
            let days = weekday_field(dow).ok_or_else(bad)?;
            let date = format!(
                "*-{}-{}",
                calendar_field(mon, 1).ok_or_else(bad)?,
                calendar_field(dom, 1).ok_or_else(bad)?
            );
            let time = format!(
                "{}:{}:{}",
                calendar_field(hour, 0).ok_or_else(bad)?,
                calendar_field(min, 0).ok_or_else(bad)?,
                calendar_field(sec, 0).ok_or_else(bad)?
            );
            match days {
                Some(d) => format!("{d} {date} {time}"),
                None => format!("{date} {time}"),
            }
        }
    };
    Ok(format!("{expr} {}", s.tz.name()))
}

/// A `dbkeep-NAME.service` and `dbkeep-NAME.timer` per schedule, each file after a
/// `# file: …` line.
pub fn systemd(schedules: &[Schedule], inv: &Invocation) -> Result<String, ExportError> {
    let mut out = String::new();
    for s in schedules {
        let unit = format!(
            "dbkeep-{}",
            s.name.replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
                "-"
            )
        );
        let env: String = environment(s)
            .iter()
            .map(|e| format!("Environment={e}\n"))
            .collect();
        out.push_str(&format!(
            "# file: {unit}.service\n{}[Unit]\nDescription=dbkeep backup of database {} (schedule {})\nWants=network-online.target\nAfter=network-online.target\n\n[Service]\nType=oneshot\nWorkingDirectory={}\nEnvironmentFile=-/etc/dbkeep/dbkeep.env\n{env}ExecStart={}\nNoNewPrivileges=yes\nPrivateTmp=yes\n\n",
            not_carried(s).unwrap_or_default(),
            s.database,
            s.name,
            inv.working_dir,
            inv.command(s).replace('%', "%%"),
        ));
        out.push_str(&format!(
            "# file: {unit}.timer\n[Unit]\nDescription=dbkeep schedule {} ({})\n\n[Timer]\nOnCalendar={}\nPersistent={}\nUnit={unit}.service\n\n[Install]\nWantedBy=timers.target\n\n",
            s.name,
            s.cron_text,
            on_calendar(s)?,
            if s.catch_up { "true" } else { "false" },
        ));
    }
    Ok(out)
}
