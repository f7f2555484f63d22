//! Restore drills: a backup restored into a throwaway target, checked, and the outcome recorded
//! in its manifest.

use super::*;
use crate::catalog::{DrillOutcome, Manifest, Verification};
use crate::encryption::{self, Encryption, Keys};
use crate::engine::DrillLog;
use crate::engine::format::Format;
use crate::engine::postgres::physical;
use crate::error::Error;
use crate::ops::pitr::{RecoveryTarget, TargetAction};
use crate::signals;
use crate::wal::Window;

use chrono::Utc;
use std::time::Instant;
use tracing::{info, warn};

/// Serialises the drills of this process.
static DRILLS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Ops {
    /// Restore drills: each chosen backup is restored into a throwaway target (PostgreSQL: a
    /// scratch database on the same server; SQLite: a temporary file) and checked there; the
    /// outcome is recorded in its manifest (`verification`). A failed drill is a report with
    /// an error, not an `Err`: the others still run.
    pub fn drill(&self, target: &VerifyTarget) -> Result<Vec<VerifyReport>, Error> {
        // One drill at a time in this process (the API server): each restores a whole backup
        // on the production server, so concurrent requests wait their turn.
        let _one = DRILLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (engine, _url) = Engine::from_settings(&self.settings)?;
        self.install_signals()?;
        let keys = self.keys()?;
        let cat = self.catalog()?;
        let mut reports = Vec::new();
        for (i, m) in self.choose(&cat, target)?.into_iter().enumerate() {
            if i > 0 {
                crate::faults::stop("between-drills");
            }
            if signals::interrupted() {
                break;
            }
            info!(backup = %m.backup_name, "restore drill started");
            let op = crate::progress::begin("drill", &self.settings.database, Some(&m.backup_name));
            op.progress().set_phase("restoring into a scratch target");
            let clock = Instant::now();
            let mut log = DrillLog::default();
            let result = self
                .drill_one(&engine, m, keys.as_ref(), &mut log)
                .map(|()| log.passed.clone());
            let duration = round3(clock.elapsed().as_secs_f64());
            let record = match &result {
                Ok(_) => Verification {
                    verified_at: Utc::now(),
                    outcome: DrillOutcome::Passed,
                    checks: log.passed,
                    failed_check: None,
                    error: None,
                    duration,
                    target: None,
                },
                // Manifests are never encrypted: keep the error's first line, not the tool's
                // stderr, whose DETAIL and CONTEXT lines may quote rows.
                Err(e) => Verification {
                    verified_at: Utc::now(),
                    outcome: DrillOutcome::Failed,
                    checks: log.passed,
                    failed_check: Some(log.step.to_owned()),
                    error: Some(first_line(&e.to_string())),
                    duration,
                    target: None,
                },
            };
            if !signals::interrupted() {
                self.notify_drill(m, &result);
            }
            match &result {
                Ok(_) => info!(backup = %m.backup_name, duration, "restore drill passed"),
                Err(e) => {
                    tracing::error!(backup = %m.backup_name, error = %e, "restore drill failed")
                }
            }
            // An interrupted drill proved nothing either way: not recorded.
            if !signals::interrupted()
                && let Err(e) =
                    self.record_verification(&m.backup_name, m.sha256.as_deref(), record)
            {
                warn!(backup = %m.backup_name, error = %e, "could not record the drill's outcome in the manifest");
            }
            reports.push(VerifyReport {
                name: m.backup_name.clone(),
                result,
            });
        }
        // An interrupted run proved nothing of the backups it did not reach.
        if signals::interrupted() {
            return Err(Error::Interrupted);
        }
        if matches!(target, VerifyTarget::All) {
            reports.extend(super::verify::unreadable_reports(&cat));
        }
        Ok(reports)
    }

    /// The drill `BACKUP_DRILL` asks for after the successful backup `m` (run once the
    /// backup's lock is released): of `m`, always (`after-backup`) or when no backup of its
    /// series and database was drilled in the last 24 hours (`daily`).
    pub fn drill_after_backup(&self, m: &Manifest) -> Result<Option<VerifyReport>, Error> {
        match self.settings.drill {
            crate::config::DrillPolicy::Off => return Ok(None),
            crate::config::DrillPolicy::AfterBackup => {}
            crate::config::DrillPolicy::Daily => {
                let cat = self.catalog()?;
                let identity = database_identity(m);
                let recent = cat
                    .backups
                    .iter()
                    .filter(|b| b.series == m.series && database_identity(b) == identity)
                    .filter_map(|b| b.verification.as_ref())
                    .any(|v| Utc::now() - v.verified_at < chrono::Duration::hours(24));
                if recent {
                    return Ok(None);
                }
            }
        }
        let report = self
            .drill(&VerifyTarget::Named(m.backup_name.clone()))?
            .into_iter()
            .next();
        // A base backup whose own drill passed: then the recovery drill across the WAL since
        // the previous one; its failure is the outcome the caller reports.
        if m.base_backup.is_some() && report.as_ref().is_some_and(|r| r.result.is_ok()) {
            match self.pitr_drill_after_base(m) {
                Ok(Some(r)) if r.result.is_err() => return Ok(Some(r)),
                Ok(_) => {}
                Err(e) => {
                    warn!(backup = %m.backup_name, error = %e, "the recovery drill after the base backup could not run");
                }
            }
        }
        Ok(report)
    }

    /// After the base backup `m`: a recovery drill from the previous base backup to `m`'s
    /// start position, which replays the whole WAL between the two (what a recovery to any
    /// time in between needs). A position, not a time: the records at `m`'s start (its
    /// checkpoint) are always there to stop at, on an idle database too. The stream archives
    /// the segment `m` stopped in moments after `m` ends: half a minute is given for that.
    /// None for the first base backup (its own drill is the proof).
    fn pitr_drill_after_base(&self, m: &Manifest) -> Result<Option<VerifyReport>, Error> {
        let cat = self.catalog()?;
        let Some(previous) = cat
            .backups
            .iter()
            .filter(|b| {
                b.success
                    && b.base_backup.is_some()
                    && b.backup_name != m.backup_name
                    && b.finished_at <= m.timestamp
            })
            .max_by_key(|b| b.finished_at)
        else {
            return Ok(None);
        };
        let lsn = |s: Option<&String>| s.and_then(|s| physical::archive::Lsn::parse(s));
        let b = m.base_backup.as_ref();
        let (Some(start), Some(stop)) = (lsn(b.map(|b| &b.start_lsn)), lsn(b.map(|b| &b.stop_lsn)))
        else {
            return Ok(None);
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let end = self.base_windows()?(previous).end;
            if end >= stop {
                break;
            }
            if Instant::now() >= deadline || signals::interrupted() {
                return Err(Error::Unsupported(format!(
                    "the WAL archive ends at {end}, before {} stopped at {stop}: is dbkeep wal stream running?",
                    m.backup_name
                )));
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        self.pitr_drill(RecoveryTarget::Lsn(start)).map(Some)
    }

    /// One drill of `m`; what passed, and the step it is in, go to `log` as it goes.
    pub(super) fn drill_one(
        &self,
        engine: &Engine,
        m: &Manifest,
        keys: Option<&Keys>,
        log: &mut DrillLog,
    ) -> Result<(), Error> {
        let name = &m.backup_name;
        log.step("stored file");
        if Format::of(m.database_type, m.pg_format).physical() {
            return self.drill_base(m, keys, log, None);
        }
        if m.database_type != engine.database_type() {
            return Err(Error::WrongDatabaseType {
                name: name.clone(),
                backup: m.database_type,
                configured: engine.database_type(),
            });
        }
        if m.encryption == Encryption::Age && keys.is_none() {
            return Err(encryption::EncryptionError::NoKey.into());
        }
        let failed = |problem: String| Error::DrillFailed {
            name: name.clone(),
            problem,
        };
        let scratch = self.check(m, keys, Depth::Drill, &mut log.passed)?;
        let expected = match crate::catalog::read_row_counts(self.storage.as_ref(), m) {
            Ok(counts) => counts,
            Err(crate::catalog::CatalogError::Storage(
                crate::storage::StorageError::NotFound { .. },
            )) => {
                return Err(Error::DeletedMeanwhile { name: name.clone() });
            }
            Err(e) => return Err(e.into()),
        };
        let mut sql_reader = self.sql_stream(m, keys)?;
        let source = engine_source(name, &mut sql_reader, scratch.as_ref())?;
        engine
            .drill(source, expected.as_ref(), log)
            .map_err(|e| match e {
                crate::engine::seam::EngineError::Drill(problem) => failed(problem),
                e => e.into(),
            })?;
        Ok(())
    }

    /// The drill of a base backup: checked, unpacked into a private scratch directory file by
    /// file against pg_basebackup's manifest, then pg_verifybackup and a throwaway server on it
    /// ([`physical::drill`]); the production server is not connected to.
    /// With `target`, the server recovers from the WAL archive to it first (a recovery drill).
    fn drill_base(
        &self,
        m: &Manifest,
        keys: Option<&Keys>,
        log: &mut DrillLog,
        target: Option<(RecoveryTarget, &Window)>,
    ) -> Result<(), Error> {
        let failed = |problem: String| Error::DrillFailed {
            name: m.backup_name.clone(),
            problem,
        };
        if m.encryption == Encryption::Age && keys.is_none() {
            return Err(encryption::EncryptionError::NoKey.into());
        }
        log.step("unpack");
        let major = crate::engine::postgres::major(m.server_version.as_deref().unwrap_or(""));
        let bindir = physical::drill::server_bindir(self.settings.pg_bindir.as_deref(), major)
            .map_err(failed)?;
        // As root the server runs as postgres, which cannot pass the repository's 0700
        // directory: the copy is then unpacked under TMPDIR (sticky, as /tmp is).
        let base = if nix::unistd::geteuid().is_root() {
            std::env::temp_dir()
        } else {
            self.storage.scratch_dir()?
        };
        let scratch = ScratchFile::reserve(&base, "drill")?;
        // The socket's path must stay short (107 bytes): a directory of its own in TMPDIR.
        let socket = ScratchFile::reserve(&std::env::temp_dir(), "sock")?;
        let data = physical::archive::prepare_target(scratch.path()).map_err(failed)?;
        // One pass: the files against pg_basebackup's manifest, the stored bytes against the
        // manifest's SHA-256.
        let summary = self.read_checked(m, keys, |stream| {
            physical::archive::read(stream, Some(&data)).map_err(failed)
        })?;
        log.pass(format!(
            "size {} bytes, sha256 matches; {}",
            m.file_size,
            crate::engine::format::summary_of(&summary)
        ));
        let role = match self.settings.database_url() {
            Ok(crate::database_url::DatabaseUrl::Postgres(c)) => c.user,
            _ => None,
        }
        .unwrap_or_else(|| "postgres".into());
        physical::drill::check_data_dir(
            &bindir,
            &data,
            scratch.dir(),
            socket.dir(),
            &physical::drill::Checks {
                role: &role,
                database: &m.database_name,
                query: self.settings.drill_query.as_deref(),
            },
            log,
            &mut || match target {
                None => Ok(Vec::new()),
                Some((t, w)) => self
                    .drill_recovery(m, &data, t, w, keys)
                    .map_err(|e| e.to_string()),
            },
        )
        .map_err(failed)
    }

    /// A recovery drill's settings: `restore_command` is dbkeep's own `wal fetch`; as root
    /// (the server runs as postgres, which cannot read the repository) dbkeep fetches the
    /// segments up to the target into `pg_wal` itself, through the same checks, and the
    /// server reads them there.
    fn drill_recovery(
        &self,
        m: &Manifest,
        data: &std::path::Path,
        target: RecoveryTarget,
        window: &Window,
        keys: Option<&Keys>,
    ) -> Result<Vec<String>, Error> {
        let mut settings =
            self.write_recovery(data, window, target, TargetAction::Promote, false)?;
        if !nix::unistd::geteuid().is_root() {
            return Ok(settings);
        }
        let archive = self.wal_archive()?;
        let records = archive.records()?;
        let stop = m
            .base_backup
            .as_ref()
            .and_then(|b| physical::archive::Lsn::parse(&b.stop_lsn))
            .unwrap_or(physical::archive::Lsn(0));
        let seg_size = crate::wal::record::segment_size(&records);
        // The history files of the timelines followed (the server reads them in pg_wal too),
        // then the segments the path reads from the backup's stop on.
        for r in &records {
            let followed = crate::wal::timeline::history_timeline(&r.name)
                .is_some_and(|t| window.path.follows(t));
            if followed {
                archive.fetch(&r.name, &data.join("pg_wal").join(&r.name), keys)?;
            }
        }
        for r in &records {
            let ours = physical::archive::parse_segment(&r.name, seg_size)
                .is_some_and(|(t, n)| window.path.reads(t, n) && n >= stop.0 / seg_size);
            if !ours {
                continue;
            }
            archive.fetch(&r.name, &data.join("pg_wal").join(&r.name), keys)?;
            if let RecoveryTarget::Time(t) = target
                && r.completed_at >= t
            {
                break;
            }
        }
        for s in settings
            .iter_mut()
            .filter(|s| s.starts_with("restore_command"))
        {
            *s = "restore_command = '/bin/false'".into();
        }
        Ok(settings)
    }

    /// A recovery drill (`dbkeep verify --restore --to-time T`, or to the end of the archive):
    /// the base backup a recovery to `target` starts from, unpacked into a scratch directory,
    /// a throwaway server recovering from the WAL archive to the target and promoting, every
    /// database opened; the outcome recorded in the base backup's manifest
    /// (`pitr_verification`).
    pub fn pitr_drill(&self, target: RecoveryTarget) -> Result<VerifyReport, Error> {
        let _one = DRILLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.install_signals()?;
        let keys = self.keys()?;
        let (base, window) = self.plan_recovery(target)?;
        let shown = match target {
            RecoveryTarget::Time(t) => t.to_rfc3339(),
            RecoveryTarget::Lsn(l) => l.to_string(),
            RecoveryTarget::Latest => {
                format!("the end of the archive ({})", window.until.to_rfc3339())
            }
        };
        info!(backup = %base.backup_name, target = %shown, "recovery drill started");
        let op = crate::progress::begin("drill", &self.settings.database, Some(&base.backup_name));
        op.progress()
            .set_phase("recovering into a scratch directory");
        let clock = Instant::now();
        let mut log = DrillLog::default();
        let result = self
            .drill_base(&base, keys.as_ref(), &mut log, Some((target, &window)))
            .map(|()| {
                let mut checks = log.passed.clone();
                checks.push(format!("recovered to {shown}"));
                checks
            });
        let duration = round3(clock.elapsed().as_secs_f64());
        let record = Verification {
            verified_at: Utc::now(),
            outcome: if result.is_ok() {
                DrillOutcome::Passed
            } else {
                DrillOutcome::Failed
            },
            checks: result
                .as_ref()
                .map_or_else(|_| log.passed.clone(), Clone::clone),
            failed_check: result.as_ref().err().map(|_| log.step.to_owned()),
            error: result.as_ref().err().map(|e| first_line(&e.to_string())),
            duration,
            target: Some(shown),
        };
        if !signals::interrupted() {
            self.notify_drill(&base, &result);
            if let Err(e) =
                self.record_verification(&base.backup_name, base.sha256.as_deref(), record)
            {
                warn!(backup = %base.backup_name, error = %e, "could not record the recovery drill's outcome");
            }
        }
        Ok(VerifyReport {
            name: base.backup_name.clone(),
            result,
        })
    }

    /// Records a drill's outcome in the manifest of the successful backup `name`, under the
    /// lock (the manifest is read again: a copy may have changed it meanwhile).
    /// Only if the backup is still the one drilled (same SHA-256: not replaced meanwhile). It
    /// waits for the lock a minute at least, also in the API (whose other calls never wait):
    /// a backup running meanwhile must not make the outcome go unrecorded.
    pub(super) fn record_verification(
        &self,
        name: &str,
        sha256: Option<&str>,
        record: Verification,
    ) -> Result<(), Error> {
        let wait = self
            .settings
            .lock_timeout
            .max(std::time::Duration::from_secs(60));
        let _lock = self
            .storage
            .lock(&format!("record the drill of {name}"), wait)?;
        let mut m = self.committed(name)?;
        if m.sha256.as_deref() != sha256 {
            warn!(backup = %name, "the backup was replaced during its drill: the outcome is not recorded");
            return Ok(());
        }
        if record.target.is_some() {
            m.pitr_verification = Some(record);
        } else {
            m.verification = Some(record);
        }
        self.storage.put(&m.key(), &m.to_json()?)?;
        Ok(())
    }
}
