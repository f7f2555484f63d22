//! The recoverable window shown by `stats` (and the API): from the oldest base backup to the
//! end of the unbroken WAL run after the newest one, and the last PITR drill.

use super::*;
use crate::catalog::Manifest;
use crate::codec::Compression;

impl Ops {
    /// The recoverable window for `stats`: names listed, one record read (the end of the
    /// unbroken run after the newest base backup). `None` without base backups or an archive.
    pub fn pitr_status(&self, cat: &crate::catalog::Catalog) -> Option<crate::catalog::PitrStatus> {
        use crate::engine::postgres::physical::archive::Lsn;
        let bases: Vec<&Manifest> = cat
            .backups
            .iter()
            .filter(|m| m.success && m.base_backup.is_some())
            .collect();
        let newest = bases.iter().max_by_key(|m| m.finished_at)?;
        let oldest = bases.iter().min_by_key(|m| m.finished_at)?;
        let archive = self.wal_archive().ok()?;
        let names = archive.names().ok()?;
        let b = newest.base_backup.as_ref()?;
        // Light records: the names alone decide the run; only its last one's time is read
        // (and the first one's size: the segment size).
        let seg_size = names
            .iter()
            .find(|n| n.len() == 24)
            .and_then(|n| archive.record(n).ok().flatten())
            .map_or(16 << 20, |r| r.size);
        let light: Vec<crate::wal::SegmentRecord> = names
            .iter()
            .map(|n| crate::wal::SegmentRecord {
                name: n.clone(),
                size: seg_size,
                sha256: String::new(),
                data_file: String::new(),
                stored_size: 0,
                stored_sha256: String::new(),
                compression: Compression::None,
                encryption: crate::encryption::Encryption::None,
                completed_at: newest.finished_at,
                archived_at: newest.finished_at,
                history: None,
            })
            .collect();
        let stop = Lsn::parse(&b.stop_lsn).unwrap_or(Lsn(0));
        // Past a timeline switch (the history files' records carry their text). A history
        // that cannot be read shows no window: the backup's own timeline alone could claim
        // WAL written after a fork, which a recovery would not replay.
        let keys = self.keys().ok().flatten();
        let histories = archive.histories(keys.as_ref()).ok()?;
        let path = crate::wal::timeline::follow(b.timeline, stop, &histories, seg_size);
        let mut w = crate::wal::record::window(&light, &path, stop, newest.finished_at);
        if let Some(last) = &w.last_segment
            && let Ok(Some(r)) = archive.record(last)
        {
            w.until = w.until.max(r.completed_at - chrono::Duration::seconds(1));
        }
        let last_pitr_drill = cat
            .backups
            .iter()
            .filter_map(|m| m.pitr_verification.as_ref().map(|v| (m, v)))
            .max_by_key(|(_, v)| v.verified_at)
            .map(|(m, v)| crate::catalog::DrillSummary {
                backup_name: m.backup_name.clone(),
                verified_at: v
                    .verified_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                outcome: v.outcome,
                error: v.error.clone(),
            });
        Some(crate::catalog::PitrStatus {
            base_backups: bases.len(),
            first_recoverable: oldest
                .finished_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            last_recoverable: w.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            gap: w.gap,
            archived_segments: names.iter().filter(|n| n.len() == 24).count(),
            last_pitr_drill,
        })
    }
}
