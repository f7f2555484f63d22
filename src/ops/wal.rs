//! Point-in-time recovery's use cases: `wal check` (whether the server can serve it: the
//! engine says; only PostgreSQL can), `wal stream` (dbkeep's slot, pg_receivewal supervised and
//! restarted with backoff, each completed file archived, gaps and a lost slot reported when
//! they happen), `wal fetch` (what `restore_command` runs) and `wal status`.

use super::*;
use crate::engine::seam::{Readiness, SlotHealth};
use crate::notify::EventKind;
use crate::wal::{Fetched, Stored, WalArchive, is_wal_name};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How often the spool is looked at.
const POLL: Duration = Duration::from_millis(500);
/// How often the slot's state is asked.
const SLOT_EVERY: Duration = Duration::from_secs(30);
/// The longest wait between two restarts of pg_receivewal.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The WAL stream's current failures, by kind (receiver, slot, spool, archive, gap).
#[derive(Default)]
struct Failures(std::collections::BTreeMap<&'static str, String>);

impl Failures {
    fn clear(&mut self, kind: &str) {
        self.0.remove(kind);
    }
}

/// What `wal status` shows.
#[derive(Debug, serde::Serialize)]
pub struct WalStatus {
    pub archive: String,
    pub segments: usize,
    pub history_files: usize,
    pub first: Option<String>,
    pub last: Option<String>,
    pub last_completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub gaps: Vec<String>,
    pub slot: Option<SlotHealth>,
}

impl Ops {
    /// `dbkeep wal check`: the server's readiness for point-in-time recovery.
    pub fn wal_check(&self) -> Result<Readiness, Error> {
        let (engine, _url) = Engine::from_settings(&self.settings)?;
        Ok(engine.pitr_readiness()?)
    }

    /// The repository's WAL archive (`wal/` under it).
    pub fn wal_archive(&self) -> Result<WalArchive, Error> {
        let location = self.settings.backup_dir.to_string_lossy();
        let wal = format!("{}/{}", location.trim_end_matches('/'), crate::wal::WAL_DIR);
        let storage = storage::open(
            &wal,
            &self.settings.s3,
            self.settings.scratch_dir.as_deref(),
        )?;
        let compression = self.settings.codec();
        Ok(WalArchive::new(
            storage,
            compression,
            self.settings.level(compression)?,
        ))
    }

    /// Where pg_receivewal writes: `BACKUP_WAL_SPOOL`, else `.wal-spool` in a local repository.
    fn wal_spool(&self) -> Result<PathBuf, Error> {
        if let Some(p) = &self.settings.wal_spool {
            return Ok(p.clone());
        }
        if self.storage.local_path("x").is_some() {
            return Ok(self.settings.backup_dir.join(".wal-spool"));
        }
        Err(Error::Unsupported(
            "the repository is not a local directory: set BACKUP_WAL_SPOOL to a local directory that survives a restart (pg_receivewal writes there before each segment is archived)".into(),
        ))
    }

    /// `dbkeep wal stream`: runs until SIGTERM or SIGINT, or until `stop` is set (`dbkeep
    /// serve`'s shutdown); see the module's doc.
    pub fn wal_stream(&self, stop: Option<&std::sync::atomic::AtomicBool>) -> Result<(), Error> {
        self.install_signals()?;
        let (engine, _url) = Engine::from_settings(&self.settings)?;
        let source = engine.wal_source().ok_or_else(|| {
            Error::Unsupported(format!(
                "WAL streaming is for PostgreSQL; DATABASE_URL names a {} database",
                engine.database_type()
            ))
        })?;
        let sealer = encryption::sealer(
            self.settings.encrypt_recipients.as_deref(),
            self.settings.encrypt_passphrase_file.as_deref(),
        )?;
        let archive = self.wal_archive()?;
        let spool = self.wal_spool()?;
        create_private_dir(&spool)?;
        let slot = self.settings.wal_slot.clone();
        source.ensure_slot(&slot)?;
        info!(slot = %slot, spool = %spool.display(), archive = %archive.location(), "WAL stream started");
        let mut known = archive
            .records()?
            .into_iter()
            .map(|r| r.name)
            .collect::<Vec<_>>();
        known.sort();
        let mut receiver = None;
        let mut backoff = Duration::from_secs(1);
        let mut next_start = Instant::now();
        let mut started_at = Instant::now();
        let mut slot_checked: Option<Instant> = None;
        let mut failing = Failures::default();
        let mut need_base = false;
        // The segment the last base backup taken here starts in.
        let mut base_from: Option<String> = None;
        let mut quick_exits = 0u32;
        loop {
            let stopping = signals::interrupted()
                || stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
            if stopping {
                if let Some(r) = receiver.take() {
                    crate::engine::seam::Receiver::stop(r);
                }
            } else if receiver.is_none() && Instant::now() >= next_start {
                // A server on a newer timeline than the spool's (restored and promoted, or a
                // promoted standby): pg_receivewal would ask it for the old timeline, which it
                // may not have; it starts from the slot instead, at the start of its segment.
                // Every complete segment of the old timeline is archived first; while one is
                // not (the archive failing), nothing is set aside and the receiver waits.
                let mut ready = true;
                if let Ok(Some(server)) = source.server_timeline()
                    && let Some(old) = spool_timeline(&spool).filter(|t| *t < server)
                {
                    self.ingest(&archive, &spool, sealer.as_ref(), &mut known, &mut failing);
                    ready = set_aside(&spool, &known);
                    if ready {
                        info!(
                            "the server writes timeline {server}, the spool holds timeline {old}: streaming timeline {server} from the server's current segment"
                        );
                    } else {
                        warn!(
                            "the server writes timeline {server}; the spool's timeline {old} segments are not all archived yet: waiting before streaming the new timeline"
                        );
                        next_start = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                match ready.then(|| source.receive(&spool, &slot)) {
                    None => {}
                    Some(Ok(r)) => {
                        receiver = Some(r);
                        started_at = Instant::now();
                    }
                    Some(Err(e)) => {
                        self.wal_failed(
                            &mut failing,
                            "receiver",
                            &format!("cannot start pg_receivewal: {e}"),
                        );
                        next_start = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            if let Some(ended) = receiver.as_mut().and_then(|r| r.exited()) {
                receiver = None;
                // Restarted at once after a long run; with backoff after quick failures, and
                // reported once it keeps failing (WAL is then only kept by the slot).
                if started_at.elapsed() > Duration::from_secs(300) {
                    backoff = Duration::from_secs(1);
                    quick_exits = 0;
                } else {
                    quick_exits += 1;
                }
                warn!("{ended}; restarting in {} s", backoff.as_secs());
                if quick_exits >= 5 {
                    self.wal_failed(
                        &mut failing,
                        "receiver",
                        &format!(
                            "pg_receivewal keeps failing ({quick_exits} times in a row): {ended}"
                        ),
                    );
                }
                next_start = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            // A gap needs a new base backup, unless one was taken after it already.
            if let Some(after) =
                self.ingest(&archive, &spool, sealer.as_ref(), &mut known, &mut failing)
                && base_from.as_ref().is_none_or(|b| *b < after)
            {
                need_base = true;
            }
            // After a gap or a lost slot, at once: recovery past it needs a new base backup.
            if need_base && !stopping {
                need_base = false;
                info!("taking a new base backup after a gap in the WAL");
                let req = BackupRequest {
                    name: None,
                    series: None,
                    compress: None,
                    replace: false,
                    physical: true,
                };
                match self.backup(&req) {
                    Ok(out) => {
                        info!(backup = %out.manifest.backup_name, "new base backup after the gap");
                        base_from = out.manifest.base_backup.as_ref().and_then(|b| {
                            let lsn = crate::engine::postgres::physical::archive::Lsn::parse(&b.start_lsn)?;
                            Some(crate::engine::postgres::physical::archive::segment_name(
                                b.timeline,
                                lsn.0 / (16 << 20),
                                16 << 20,
                            ))
                        });
                    }
                    Err(e) => self.wal_failed(
                        &mut failing,
                        "base backup",
                        &format!("the base backup after a gap in the WAL failed: {e}; take one with dbkeep backup --physical"),
                    ),
                }
            }
            if slot_checked.is_none_or(|t| t.elapsed() >= SLOT_EVERY) {
                slot_checked = Some(Instant::now());
                match source.slot_health(&slot) {
                    Ok(Some(h)) if h.wal_status == "lost" => {
                        self.wal_failed(
                            &mut failing,
                            "slot",
                            &format!(
                                "the replication slot {slot} is lost (max_slot_wal_keep_size removed WAL it needed): WAL since the last archived segment is gone; dbkeep starts over with a new slot and a new base backup"
                            ),
                        );
                        // Start over: the receiver stopped, a new slot, the unarchivable
                        // partial segment set aside (never deleted), then a new base backup
                        // from which recovery can start again.
                        if let Some(r) = receiver.take() {
                            crate::engine::seam::Receiver::stop(r);
                        }
                        // What pg_receivewal completed is archived first; while the archive
                        // fails, the slot is kept and this is tried again at the next check.
                        self.ingest(&archive, &spool, sealer.as_ref(), &mut known, &mut failing);
                        if !set_aside(&spool, &known) {
                            warn!("the spool holds segments not archived yet: the lost slot is made again once they are");
                        } else {
                            match source.drop_slot(&slot).and_then(|()| source.ensure_slot(&slot)) {
                                Ok(()) => {
                                    info!(slot = %slot, "replication slot created again");
                                    need_base = true;
                                }
                                Err(e) => warn!(error = %e, "cannot create the replication slot again"),
                            }
                        }
                        next_start = Instant::now();
                    }
                    Ok(Some(h)) => {
                        failing.clear("slot");
                        if h.active {
                            failing.clear("receiver");
                            quick_exits = 0;
                        }
                        info!(slot = %slot, wal_status = %h.wal_status, retained_bytes = h.retained_bytes.unwrap_or(-1), safe_wal_size = h.safe_wal_size.unwrap_or(-1), "replication slot");
                    }
                    Ok(None) => self.wal_failed(
                        &mut failing,
                        "slot",
                        &format!("the replication slot {slot} does not exist (dropped?): the server no longer keeps WAL for dbkeep; it is created again when the stream restarts, and a new base backup is needed (dbkeep backup --physical)"),
                    ),
                    Err(e) => warn!(error = %e, "cannot read the replication slot's state"),
                }
            }
            if stopping {
                info!("WAL stream stopped");
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Archives every completed file in the spool, oldest first; the newest segment stays in
    /// the spool once archived (pg_receivewal starts again after it). The segment after a gap,
    /// if it met one.
    fn ingest(
        &self,
        archive: &WalArchive,
        spool: &Path,
        sealer: Option<&encryption::Sealer>,
        known: &mut Vec<String>,
        failing: &mut Failures,
    ) -> Option<String> {
        let mut gap_met = None;
        let mut names: Vec<String> = match std::fs::read_dir(spool) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| is_wal_name(n))
                .collect(),
            Err(e) => {
                self.wal_failed(
                    failing,
                    "spool",
                    &format!("cannot read the WAL spool {}: {e}", spool.display()),
                );
                return None;
            }
        };
        failing.clear("spool");
        names.sort();
        let newest_segment = names.iter().filter(|n| n.len() == 24).max().cloned();
        for name in names {
            let path = spool.join(&name);
            let keep = Some(&name) == newest_segment.as_ref() || name.len() != 24;
            if known.binary_search(&name).is_ok() {
                // Archived already: the newest segment and history files stay, the rest go.
                if !keep {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            match archive.put(&name, &path, sealer) {
                Ok(stored) => {
                    failing.clear("archive");
                    if stored == Stored::New {
                        if let Some(gap) = gap_before(known, &name, size, spool, archive) {
                            gap_met = Some(name.clone());
                            self.wal_failed(failing, "gap", &format!("{gap}: recovery cannot pass it; take a new base backup (dbkeep backup --physical)"));
                        }
                        self.check_followed(known, &name, failing);
                        info!(file = %name, "WAL archived");
                    }
                    if let Err(i) = known.binary_search(&name) {
                        known.insert(i, name.clone());
                    }
                    if !keep && let Err(e) = std::fs::remove_file(&path) {
                        warn!(file = %name, error = %e, "cannot remove an archived segment from the spool");
                    }
                }
                Err(e) => {
                    self.wal_failed(failing, "archive", &format!("cannot archive {name}: {e}"));
                    // In order: a later file is not archived before an earlier one.
                    return gap_met;
                }
            }
        }
        gap_met
    }

    /// A segment of a timeline older than one whose history is archived: another server
    /// was promoted or restored from this archive, and this one was not left.
    fn check_followed(&self, known: &[String], name: &str, failing: &mut Failures) {
        let Some(timeline) = (name.len() == 24)
            .then(|| u32::from_str_radix(&name[..8], 16).ok())
            .flatten()
        else {
            return;
        };
        let newer = known
            .iter()
            .filter_map(|k| crate::wal::timeline::history_timeline(k))
            .filter(|t| *t > timeline)
            .max();
        match newer {
            Some(newer) => self.wal_failed(
                failing,
                "timeline",
                &format!(
                    "the archive holds timeline {newer}'s history, but this server still writes timeline {timeline}: another server was promoted or restored from this archive; point DATABASE_URL at the new primary, or give this server a repository of its own"
                ),
            ),
            None => failing.clear("timeline"),
        }
    }

    /// Logs a WAL failure and notifies it once per kind of failure (until that kind clears,
    /// or its message changes).
    fn wal_failed(&self, failing: &mut Failures, kind: &'static str, problem: &str) {
        error!("{problem}");
        if failing.0.get(kind).map(String::as_str) != Some(problem) {
            failing.0.insert(kind, problem.to_owned());
            let mut e = self.event(EventKind::WalFailed);
            e.error = Some(problem.to_owned());
            self.notify(e);
        }
    }

    /// `dbkeep wal fetch NAME DEST`: what `restore_command` runs.
    pub fn wal_fetch(&self, name: &str, dest: &Path) -> Result<Fetched, Error> {
        if !is_wal_name(name) {
            // PostgreSQL also asks for backup history files and the like: not archived.
            return Ok(Fetched::Missing);
        }
        let keys = self.keys()?;
        Ok(self.wal_archive()?.fetch(name, dest, keys.as_ref())?)
    }

    /// `dbkeep wal status`: what the archive holds, its gaps, and the slot (when the server
    /// answers).
    pub fn wal_status(&self) -> Result<WalStatus, Error> {
        let archive = self.wal_archive()?;
        let records = archive.records()?;
        let segments: Vec<&crate::wal::SegmentRecord> =
            records.iter().filter(|r| r.name.len() == 24).collect();
        let slot = Engine::from_settings(&self.settings)
            .ok()
            .and_then(|(engine, _)| {
                engine
                    .wal_source()
                    .and_then(|s| s.slot_health(&self.settings.wal_slot).ok().flatten())
            });
        Ok(WalStatus {
            archive: archive.location(),
            segments: segments.len(),
            history_files: records.len() - segments.len(),
            first: segments.first().map(|r| r.name.clone()),
            last: segments.last().map(|r| r.name.clone()),
            last_completed_at: segments.last().map(|r| r.completed_at),
            gaps: crate::wal::record::gaps(&records)
                .iter()
                .map(ToString::to_string)
                .collect(),
            slot,
        })
    }
}

/// The gap between the archived segments `known` and the new segment `name` (of `seg_size`
/// bytes), if any; the first segment of a new timeline must be the one its history file (in
/// `spool`, else the archive's record of it) says it began in.
fn gap_before(
    known: &[String],
    name: &str,
    seg_size: u64,
    spool: &Path,
    archive: &WalArchive,
) -> Option<crate::wal::Gap> {
    use crate::engine::postgres::physical::archive::{parse_segment, segment_name};
    if !seg_size.is_power_of_two() {
        return None;
    }
    let (timeline, n) = parse_segment(name, seg_size)?;
    let previous = known
        .iter()
        .filter_map(|k| parse_segment(k, seg_size))
        .filter(|(t, m)| *t == timeline && *m < n)
        .map(|(_, m)| m)
        .max();
    let first_missing = match previous {
        Some(p) => p + 1,
        None => {
            // Its history file, in the spool or (its text in the record) in the archive.
            let file = format!("{timeline:08X}.history");
            let history = std::fs::read_to_string(spool.join(&file))
                .ok()
                .or_else(|| archive.record(&file).ok().flatten()?.history)?;
            let switches = crate::wal::timeline::parse_history(&history).ok()?;
            switches.last()?.at.0 / seg_size
        }
    };
    (n > first_missing).then(|| crate::wal::Gap {
        timeline,
        first: segment_name(timeline, first_missing, seg_size),
        last: segment_name(timeline, n - 1, seg_size),
    })
}

/// The newest timeline of the segments in the spool (complete or partial).
fn spool_timeline(spool: &Path) -> Option<u32> {
    std::fs::read_dir(spool)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let seg = name.strip_suffix(".partial").unwrap_or(&name);
            (seg.len() == 24 && is_wal_name(seg))
                .then(|| u32::from_str_radix(&seg[..8], 16).ok())
                .flatten()
        })
        .max()
}

/// After a lost slot or a timeline switch: the spool's archived segments removed, and what could not be archived
/// (the partial segment, whose WAL cannot be completed any more) renamed aside
/// (`NAME.lost`), kept for whoever wants it; pg_receivewal then starts from the new slot.
/// Refused (false, nothing touched) while a complete segment is not archived: that is WAL
/// recovery needs.
fn set_aside(spool: &Path, known: &[String]) -> bool {
    let names: Vec<String> = std::fs::read_dir(spool)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let complete = |n: &String| n.len() == 24 && is_wal_name(n);
    if names
        .iter()
        .any(|n| complete(n) && known.binary_search(n).is_err())
    {
        return false;
    }
    for name in names {
        if complete(&name) {
            let _ = std::fs::remove_file(spool.join(&name));
        } else if name.ends_with(".partial") {
            let _ = std::fs::rename(spool.join(&name), spool.join(format!("{name}.lost")));
        }
    }
    true
}

/// Creates `dir` (mode 0700) unless it exists.
fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Io {
            io_context: format!("create the WAL spool {}", dir.display()),
            source,
        })
}
