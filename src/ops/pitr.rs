//! `dbkeep restore --to-time T | --to-lsn L | --latest --pgdata DIR`: recovery to a point. The
//! newest base backup consistent before the target is unpacked into DIR (as `restore
//! --pgdata`), then `recovery.signal` and the recovery settings are written: `restore_command`
//! runs `dbkeep wal fetch` (exit 1 only for a file the archive does not have, 126 for anything
//! else, so an outage stops recovery instead of ending it early), the target, its action and the
//! backup's timeline. A target outside the window the backups and the archive cover is refused
//! with the window.

use super::*;
use crate::catalog::Manifest;
use crate::engine::postgres::physical::archive::Lsn;
use crate::wal::record::{Window, window};
use crate::wal::timeline::follow;
use chrono::{DateTime, Utc};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    Time(DateTime<Utc>),
    Lsn(Lsn),
    /// The end of the archived WAL.
    Latest,
}

/// What the server does once it reaches the target (`recovery_target_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    /// Stay in recovery, read-only, until `SELECT pg_wal_replay_resume()` (look first).
    Pause,
    /// End recovery and open for writes.
    Promote,
    /// Stop the server.
    Shutdown,
}

impl TargetAction {
    fn name(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// How a recovery was set up.
#[derive(Debug)]
pub struct PitrOutcome {
    pub base: Manifest,
    pub window: Window,
    pub restored: RestoreOutcome,
    pub settings: Vec<String>,
}

/// Reads a target time: RFC 3339, or `YYYY-MM-DD HH:MM:SS[.f]±HH[:MM]`; a time zone is required.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, Error> {
    let t = text.trim();
    DateTime::parse_from_rfc3339(t)
        .or_else(|_| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| {
            Error::Unsupported(format!(
                "--to-time {t:?} is not a time with its zone: write it as '2026-12-01 10:00:00+00' or 2026-12-01T10:00:00Z"
            ))
        })
}

/// Reads a target WAL position (`0/16B3748`).
pub fn parse_lsn(text: &str) -> Result<Lsn, Error> {
    Lsn::parse(text).ok_or_else(|| {
        Error::Unsupported(format!(
            "--to-lsn {text:?} is not a WAL position: write it as pg_current_wal_lsn() shows one, e.g. 0/16B3748"
        ))
    })
}

impl Ops {
    /// Sets `pgdata` up to recover to `target` (see the module's doc).
    pub fn restore_to(
        &self,
        target: RecoveryTarget,
        pgdata: &Path,
        action: TargetAction,
    ) -> Result<PitrOutcome, Error> {
        let (base, w) = self.plan_recovery(target)?;
        // Before hours of unpacking: the paths restore_command will name.
        recovery_paths(pgdata)?;
        let restored = self.restore(&base.backup_name, Some(pgdata))?;
        let settings = self
            .write_recovery(pgdata, &w, target, action, true)
            .inspect_err(|_| crate::engine::postgres::physical::archive::empty_target(pgdata))?;
        Ok(PitrOutcome {
            base,
            window: w,
            restored,
            settings,
        })
    }

    /// The base backup a recovery to `target` starts from, and its window; an error naming
    /// the window when the target is outside it.
    pub(super) fn plan_recovery(
        &self,
        target: RecoveryTarget,
    ) -> Result<(Manifest, Window), Error> {
        let cat = self.catalog()?;
        let mut bases: Vec<&Manifest> = cat
            .backups
            .iter()
            .filter(|m| m.success && m.base_backup.is_some())
            .collect();
        bases.sort_by_key(|m| std::cmp::Reverse(m.finished_at));
        let location = self.storage.location();
        if bases.is_empty() {
            return Err(Error::Unsupported(format!(
                "{location} holds no base backup: take one with `dbkeep backup --physical` (with `dbkeep wal stream` running) before recovering to a point"
            )));
        }
        let windows = self.base_windows()?;
        let window_of = |m: &Manifest| windows(m);
        let oldest = bases.last().map(|m| m.finished_at);
        let newest_window = window_of(bases[0]);
        let describe = || {
            format!(
                "the base backups and the WAL archive cover {} to {}{}",
                oldest.map_or_else(String::new, |t| t.to_rfc3339()),
                newest_window.until.to_rfc3339(),
                newest_window
                    .gap
                    .as_ref()
                    .map(|g| format!(" (the archive misses {g} after the newest base backup)"))
                    .unwrap_or_default()
            )
        };
        let chosen = match target {
            RecoveryTarget::Time(t) => bases.iter().find(|m| m.finished_at <= t),
            RecoveryTarget::Lsn(l) => bases.iter().find(|m| {
                m.base_backup
                    .as_ref()
                    .and_then(|b| Lsn::parse(&b.stop_lsn))
                    .is_some_and(|s| s <= l)
            }),
            RecoveryTarget::Latest => bases.first(),
        };
        let Some(base) = chosen.copied() else {
            return Err(Error::Unsupported(format!(
                "the target is before the oldest base backup: {}",
                describe()
            )));
        };
        let w = window_of(base);
        if let RecoveryTarget::Lsn(l) = target
            && l > w.end
        {
            return Err(Error::Unsupported(format!(
                "the target {l} is past the WAL that can be recovered from {}: it ends at {}{}; {}",
                base.backup_name,
                w.end,
                w.gap
                    .as_ref()
                    .map(|g| format!(" (then {g} is missing)"))
                    .unwrap_or_default(),
                describe()
            )));
        }
        if target == RecoveryTarget::Latest
            && let Some(g) = &w.gap
        {
            return Err(Error::Unsupported(format!(
                "the WAL archive misses {g} after {}: recovery to its end would stop there, short of later archived WAL; recover to a time before {} with --to-time, or take a new base backup",
                base.backup_name,
                w.until.to_rfc3339()
            )));
        }
        if let RecoveryTarget::Time(t) = target
            && t > w.until
        {
            return Err(Error::Unsupported(format!(
                "the target {} is after what can be recovered from {}: WAL is archived until {}{}; {}",
                t.to_rfc3339(),
                base.backup_name,
                w.until.to_rfc3339(),
                w.gap
                    .as_ref()
                    .map(|g| format!(" (then {g} is missing)"))
                    .unwrap_or_default(),
                describe()
            )));
        }
        Ok((base.clone(), w))
    }

    /// How far each base backup recovers with the archive as it is now (its timeline path
    /// followed): one read of the records and histories, then a window per backup.
    pub(super) fn base_windows(&self) -> Result<impl Fn(&Manifest) -> Window, Error> {
        let archive = self.wal_archive()?;
        let records = archive.records()?;
        let keys = self.keys()?;
        let histories = archive.histories(keys.as_ref())?;
        let seg_size = crate::wal::record::segment_size(&records);
        Ok(move |m: &Manifest| {
            let (timeline, stop) = m.base_backup.as_ref().map_or((1, Lsn(0)), |b| {
                (b.timeline, Lsn::parse(&b.stop_lsn).unwrap_or(Lsn(0)))
            });
            let path = follow(timeline, stop, &histories, seg_size);
            window(&records, &path, stop, m.finished_at)
        })
    }

    /// Writes `recovery.signal`, the recovery settings (appended to `postgresql.auto.conf`)
    /// and the settings `dbkeep wal fetch` reads there (`dbkeep-recovery.toml`, mode 0600: the
    /// repository and its keys, for the server's `restore_command`).
    /// With `auto_conf` false (a drill, whose server reads a configuration of its own) the
    /// settings are only returned.
    pub(super) fn write_recovery(
        &self,
        pgdata: &Path,
        window: &Window,
        target: RecoveryTarget,
        action: TargetAction,
        auto_conf: bool,
    ) -> Result<Vec<String>, Error> {
        let io = |what: &str, path: &Path| {
            let context = format!("{what} {}", path.display());
            move |source| Error::Io {
                io_context: context,
                source,
            }
        };
        let dir = std::fs::canonicalize(pgdata).map_err(io("find", pgdata))?;
        let (exe, config) = recovery_paths(&dir)?;
        // Beside the data directory, not in it: a later base backup of the recovered cluster
        // must not carry the repository's credentials.
        let _ = std::fs::remove_file(&config);
        write_private(&config, self.recovery_toml().as_bytes()).map_err(io("write", &config))?;
        let mut settings = vec![format!(
            "restore_command = '{exe} --config {} wal fetch \"%f\" \"%p\"'",
            config.display()
        )];
        // An earlier recovery's target, left in postgresql.auto.conf, must not apply too.
        for key in [
            "recovery_target",
            "recovery_target_time",
            "recovery_target_lsn",
            "recovery_target_xid",
            "recovery_target_name",
        ] {
            settings.push(format!("{key} = ''"));
        }
        match target {
            RecoveryTarget::Time(t) => settings.push(format!(
                "recovery_target_time = '{}'",
                t.format("%Y-%m-%d %H:%M:%S%.6f+00")
            )),
            RecoveryTarget::Lsn(l) => settings.push(format!("recovery_target_lsn = '{l}'")),
            RecoveryTarget::Latest => {}
        }
        if target != RecoveryTarget::Latest {
            settings.push(format!("recovery_target_action = '{}'", action.name()));
        }
        // The newest timeline whose history passes through the base backup (its own when
        // there is none): recovery follows each switch on the way.
        settings.push(format!(
            "recovery_target_timeline = '{}'",
            window.path.target()
        ));
        let signal = dir.join("recovery.signal");
        std::fs::write(&signal, b"").map_err(io("write", &signal))?;
        if !auto_conf {
            return Ok(settings);
        }
        let auto = dir.join("postgresql.auto.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&auto)
            .map_err(io("open", &auto))?;
        let mut text = String::from(
            "\n# Written by dbkeep restore for point-in-time recovery: remove these lines and the dbkeep-recovery.toml beside the data directory once the server is promoted.\n",
        );
        for s in &settings {
            text.push_str(s);
            text.push('\n');
        }
        f.write_all(text.as_bytes()).map_err(io("write", &auto))?;
        Ok(settings)
    }

    /// The settings `dbkeep wal fetch` needs, as a config file: the repository, its object
    /// storage settings and the keys (paths only; the files stay where they are).
    fn recovery_toml(&self) -> String {
        let s = &self.settings;
        let q = |v: &str| toml_string(v);
        let mut out =
            String::from("# dbkeep restore wrote this for restore_command (dbkeep wal fetch).\n");
        let repo = std::fs::canonicalize(&s.backup_dir).unwrap_or_else(|_| s.backup_dir.clone());
        let repo = if s.backup_dir.to_string_lossy().starts_with("s3://") {
            s.backup_dir.clone()
        } else {
            repo
        };
        out.push_str(&format!("backup_dir = {}\n", q(&repo.to_string_lossy())));
        out.push_str("backup_log_file = \"off\"\n");
        let path = |k: &str, v: &Option<PathBuf>, out: &mut String| {
            if let Some(p) = v {
                let p = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                out.push_str(&format!("{k} = {}\n", q(&p.to_string_lossy())));
            }
        };
        path(
            "backup_decrypt_identity_file",
            &s.decrypt_identity_file,
            &mut out,
        );
        path(
            "backup_encrypt_passphrase_file",
            &s.encrypt_passphrase_file,
            &mut out,
        );
        path("backup_scratch_dir", &s.scratch_dir, &mut out);
        let s3 = &s.s3;
        let text = |k: &str, v: Option<&str>, out: &mut String| {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {}\n", q(v)));
            }
        };
        text("backup_s3_endpoint", s3.endpoint.as_deref(), &mut out);
        text("backup_s3_region", s3.region.as_deref(), &mut out);
        if let Some(p) = s3.path_style {
            out.push_str(&format!("backup_s3_path_style = {p}\n"));
        }
        text(
            "backup_s3_access_key_id",
            s3.access_key_id.as_deref(),
            &mut out,
        );
        text(
            "backup_s3_secret_access_key",
            s3.secret_access_key.as_ref().map(|v| v.expose()),
            &mut out,
        );
        text(
            "backup_s3_session_token",
            s3.session_token.as_ref().map(|v| v.expose()),
            &mut out,
        );
        out
    }
}

/// The server runs restore_command through the shell: only paths that need no quoting.
fn plain(p: &Path) -> Result<String, Error> {
    let text = p.display().to_string();
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        Ok(text)
    } else {
        Err(Error::Unsupported(format!(
            "{text} has characters a shell would read: restore_command needs dbkeep and the data directory at paths of letters, digits and /._-+ only"
        )))
    }
}

/// dbkeep's own path and the recovery settings' file beside the data directory `dir`
/// (`DIR.dbkeep-recovery.toml`), both checked for restore_command.
pub(super) fn recovery_paths(dir: &Path) -> Result<(String, PathBuf), Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        io_context: "find dbkeep's own path".into(),
        source,
    })?;
    let dir = std::path::absolute(dir).map_err(|source| Error::Io {
        io_context: format!("find {}", dir.display()),
        source,
    })?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Unsupported(format!("{} names no directory", dir.display())))?;
    let config = dir.with_file_name(format!("{name}.dbkeep-recovery.toml"));
    let exe = plain(&exe)?;
    plain(&config)?;
    Ok((exe, config))
}

/// A TOML basic string.
fn toml_string(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes a new file of mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_need_their_zone() {
        let t = parse_time("2026-12-01 10:00:00+00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-01T10:00:00+00:00");
        let t = parse_time("2026-12-01 11:00:00.5+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-01T10:00:00.500+00:00");
        assert!(parse_time("2026-12-01T10:00:00Z").is_ok());
        assert!(parse_time("2026-12-01 10:00:00").is_err());
        assert!(parse_lsn("0/16B3748").is_ok());
        assert!(parse_lsn("16B3748").is_err());
        assert_eq!(toml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
