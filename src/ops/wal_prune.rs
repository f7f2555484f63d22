//! WAL retention, run by `prune`: archived segments below the oldest kept base backup's start,
//! per timeline; conservative whenever a manifest or a start cannot be read.

use super::*;
use crate::catalog::Manifest;

/// What WAL retention removed, or would.
#[derive(Debug, Default)]
pub struct WalPrune {
    pub removed: Vec<String>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

impl Ops {
    /// WAL retention: removes the archived segments that no kept base backup needs — on each
    /// timeline that has a base backup, those below the oldest one's start. Nothing when there
    /// is no base backup, when a manifest cannot be read (it may be a base backup's), or on
    /// timelines without one; history files are always kept.
    pub(super) fn prune_wal(
        &self,
        kept: &[&Manifest],
        unreadable: bool,
        lock: Option<&storage::RepoLock>,
    ) -> WalPrune {
        use crate::engine::postgres::physical::archive::{Lsn, parse_segment};
        let mut out = WalPrune::default();
        let archive = match self.wal_archive() {
            Ok(a) => a,
            Err(e) => {
                out.errors.push(format!("WAL retention skipped: {e}"));
                return out;
            }
        };
        let records = match archive.records() {
            Ok(r) => r,
            Err(e) => {
                out.errors.push(format!("WAL retention skipped: {e}"));
                return out;
            }
        };
        if records.is_empty() {
            return out;
        }
        if unreadable {
            out.notes.push(
                "WAL retention skipped: a manifest cannot be read (it may be a base backup's that needs the WAL)".into(),
            );
            return out;
        }
        let seg_size = records
            .iter()
            .find(|r| r.name.len() == 24)
            .map_or(16 << 20, |r| r.size);
        // The oldest start of a kept base backup, per timeline.
        let mut oldest: std::collections::BTreeMap<u32, u64> = Default::default();
        for b in kept
            .iter()
            .filter(|m| m.success)
            .filter_map(|m| m.base_backup.as_ref())
        {
            let Some(start) = Lsn::parse(&b.start_lsn) else {
                out.notes
                    .push("WAL retention skipped: a base backup's start cannot be read".into());
                return out;
            };
            let seg = start.0 / seg_size;
            oldest
                .entry(b.timeline)
                .and_modify(|s| *s = (*s).min(seg))
                .or_insert(seg);
        }
        if oldest.is_empty() {
            return out;
        }
        for r in &records {
            let Some((timeline, segno)) = parse_segment(&r.name, seg_size) else {
                continue;
            };
            if oldest.get(&timeline).is_none_or(|first| segno >= *first) {
                continue;
            }
            match lock {
                None => out.removed.push(r.name.clone()),
                Some(lock) => match lock
                    .ensure()
                    .map_err(Error::from)
                    .and_then(|()| archive.remove(&r.name).map_err(Error::from))
                {
                    Ok(()) => out.removed.push(r.name.clone()),
                    Err(e) => {
                        out.errors
                            .push(format!("cannot remove the archived {}: {e}", r.name));
                        break;
                    }
                },
            }
        }
        out
    }
}
