//! What the WAL archive knows of each file (its record), and what follows from the records:
//! the names it holds, gaps between segments, and the window a base backup can be recovered
//! through.

use super::timeline::TimelinePath;
use crate::codec::Compression;
use crate::encryption::Encryption;
use crate::engine::postgres::physical::archive::{Lsn, parse_segment, segment_name};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One archived WAL segment or history file: the commit point of its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub name: String,
    /// The plain file's size and SHA-256.
    pub size: u64,
    pub sha256: String,
    /// The stored object's key, size and SHA-256 (compress, then encrypt, then hash).
    pub data_file: String,
    pub stored_size: u64,
    pub stored_sha256: String,
    pub compression: Compression,
    #[serde(default)]
    pub encryption: Encryption,
    /// When pg_receivewal completed it (the file's last change): every commit before this
    /// time is in this segment or an earlier one.
    pub completed_at: DateTime<Utc>,
    pub archived_at: DateTime<Utc>,
    /// A history file's text (positions and reasons, no data): readable without the keys,
    /// for the window and the stream's checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<String>,
}

/// Whether `name` is a WAL segment's (24 hex digits) or a timeline history file's
/// (`0000000A.history`): the only names the archive takes or serves.
pub fn is_wal_name(name: &str) -> bool {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    };
    (name.len() == 24 && hex(name))
        || name
            .strip_suffix(".history")
            .is_some_and(|t| t.len() == 8 && hex(t))
}

/// Segments missing between two archived ones of a timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub timeline: u32,
    /// The first and last missing segment.
    pub first: String,
    pub last: String,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "the WAL segment {} is missing", self.first)
        } else {
            write!(
                f,
                "the WAL segments {} to {} are missing",
                self.first, self.last
            )
        }
    }
}

/// The segment size of the archive (its segments' size; 16 MiB, the default, when empty).
pub fn segment_size(records: &[SegmentRecord]) -> u64 {
    records
        .iter()
        .find(|r| r.name.len() == 24)
        .map_or(16 << 20, |r| r.size)
}

/// The segments of `records` on `timeline`, by number, with the segment size.
fn segments_on(records: &[SegmentRecord], timeline: u32) -> (Vec<(u64, &SegmentRecord)>, u64) {
    let seg_size = segment_size(records);
    let mut segs: Vec<(u64, &SegmentRecord)> = records
        .iter()
        .filter_map(|r| {
            parse_segment(&r.name, seg_size)
                .filter(|(t, _)| *t == timeline)
                .map(|(_, n)| (n, r))
        })
        .collect();
    segs.sort_by_key(|(n, _)| *n);
    (segs, seg_size)
}

/// Every gap between archived segments of each timeline.
pub fn gaps(records: &[SegmentRecord]) -> Vec<Gap> {
    let mut timelines: Vec<u32> = records
        .iter()
        .filter(|r| r.name.len() == 24)
        .filter_map(|r| u32::from_str_radix(&r.name[..8], 16).ok())
        .collect();
    timelines.sort_unstable();
    timelines.dedup();
    let mut out = Vec::new();
    for t in timelines {
        let (segs, seg_size) = segments_on(records, t);
        for pair in segs.windows(2) {
            let (a, b) = (pair[0].0, pair[1].0);
            if b > a + 1 {
                out.push(Gap {
                    timeline: t,
                    first: segment_name(t, a + 1, seg_size),
                    last: segment_name(t, b - 1, seg_size),
                });
            }
        }
    }
    out
}

/// How far a base backup can be recovered with the archive: from where it is consistent to
/// the end of the unbroken run of segments after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The last segment of the run (none: only the backup's own WAL).
    pub last_segment: Option<String>,
    /// Every commit before this time can be recovered (the run's last segment's completion;
    /// the backup's own end when the run is empty).
    pub until: DateTime<Utc>,
    /// The first segment missing after the run, when a later one is archived (a gap).
    pub gap: Option<String>,
    /// Where the archived WAL ends: recovery can replay up to here.
    pub end: Lsn,
    /// The timelines recovery follows.
    pub path: TimelinePath,
}

/// The window of a base backup that is consistent at `stop` at `consistent_at`, recovered
/// along `path` (its timeline, then any later one whose history passes through it).
pub fn window(
    records: &[SegmentRecord],
    path: &TimelinePath,
    stop: Lsn,
    consistent_at: DateTime<Utc>,
) -> Window {
    let seg_size = segment_size(records);
    // The segments the path reads, by number.
    let mut segs: Vec<(u64, &SegmentRecord)> = records
        .iter()
        .filter_map(|r| {
            parse_segment(&r.name, seg_size)
                .filter(|(t, n)| path.reads(*t, *n))
                .map(|(_, n)| (n, r))
        })
        .collect();
    segs.sort_by_key(|(n, _)| *n);
    // The backup's own copy of its stop segment ends at the stop position: recovery past it
    // needs the archived one, then each next segment.
    let stop_segment = stop.0 / seg_size;
    let mut next = stop_segment;
    let mut last = None;
    let mut until = consistent_at;
    let mut expected = stop_segment;
    for (n, r) in segs.iter().filter(|(n, _)| *n >= stop_segment) {
        if *n != expected {
            break;
        }
        next = *n;
        expected = *n + 1;
        last = Some(r.name.clone());
        // A commit stamped just before a segment's end may be written into the next one,
        // and the server's clock may run a little ahead of this host's: a second's margin.
        until = until.max(r.completed_at - chrono::Duration::seconds(1));
    }
    let missing = if last.is_none() {
        stop_segment
    } else {
        next + 1
    };
    let gap = segs
        .iter()
        .any(|(n, _)| *n > missing)
        .then(|| segment_name(path.timeline_of(missing), missing, seg_size));
    let end = if last.is_some() {
        Lsn((next + 1) * seg_size)
    } else {
        stop
    };
    Window {
        last_segment: last,
        until,
        gap,
        end,
        path: path.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, minute: u32) -> SegmentRecord {
        let at = chrono::DateTime::parse_from_rfc3339(&format!("2026-12-01T10:{minute:02}:00Z"))
            .unwrap()
            .with_timezone(&Utc);
        SegmentRecord {
            name: name.into(),
            size: 16 << 20,
            sha256: String::new(),
            data_file: String::new(),
            stored_size: 0,
            stored_sha256: String::new(),
            compression: Compression::Zstd,
            encryption: Encryption::None,
            completed_at: at,
            archived_at: at,
            history: None,
        }
    }

    #[test]
    fn names() {
        assert!(is_wal_name("000000010000000000000002"));
        assert!(is_wal_name("00000002.history"));
        assert!(!is_wal_name("000000010000000000000002.partial"));
        assert!(!is_wal_name("00000001000000000000000a"));
        assert!(!is_wal_name("../00000001000000000002"));
        assert!(!is_wal_name("x.history"));
    }

    #[test]
    fn gaps_and_windows() {
        let records = vec![
            rec("000000010000000000000003", 1),
            rec("000000010000000000000004", 2),
            rec("000000010000000000000006", 4),
            rec("00000002.history", 5),
        ];
        assert_eq!(
            gaps(&records),
            vec![Gap {
                timeline: 1,
                first: "000000010000000000000005".into(),
                last: "000000010000000000000005".into(),
            }]
        );
        let start = rec("x", 0).completed_at;
        let one = TimelinePath::single(1);
        let second = chrono::Duration::seconds(1);
        // A backup consistent in segment 3: 3 and 4 are archived, 5 is missing.
        let w = window(&records, &one, Lsn(3 * (16 << 20) + 100), start);
        assert_eq!(w.last_segment.as_deref(), Some("000000010000000000000004"));
        assert_eq!(w.until, rec("x", 2).completed_at - second);
        assert_eq!(w.gap.as_deref(), Some("000000010000000000000005"));
        // Consistent in segment 2, which is not archived: nothing past the backup itself.
        let w = window(&records, &one, Lsn(2 * (16 << 20) + 100), start);
        assert_eq!(w.last_segment, None);
        assert_eq!(w.until, start);
        assert_eq!(w.gap.as_deref(), Some("000000010000000000000002"));
        // Consistent in segment 6, the last: nothing after it yet.
        let w = window(&records, &one, Lsn(6 * (16 << 20)), start);
        assert_eq!(w.last_segment.as_deref(), Some("000000010000000000000006"));
        assert_eq!(w.gap, None);
    }

    #[test]
    fn windows_across_a_timeline_switch() {
        use super::super::timeline::{Switch, follow};
        let seg: u64 = 16 << 20;
        let histories = [(
            2,
            vec![Switch {
                timeline: 1,
                at: Lsn(5 * seg + 0x100),
            }],
        )]
        .into();
        let path = follow(1, Lsn(3 * seg + 100), &histories, seg);
        let start = rec("x", 0).completed_at;
        let mut records = vec![
            rec("000000010000000000000003", 1),
            rec("000000010000000000000004", 2),
            // The old timeline went on past the switch: not on the path.
            rec("000000010000000000000005", 3),
            rec("000000010000000000000006", 4),
            rec("00000002.history", 5),
            rec("000000020000000000000006", 7),
        ];
        // Timeline 2's copy of the switch segment is missing: the window ends before it.
        let w = window(&records, &path, Lsn(3 * seg + 100), start);
        assert_eq!(w.last_segment.as_deref(), Some("000000010000000000000004"));
        assert_eq!(w.gap.as_deref(), Some("000000020000000000000005"));
        assert_eq!(w.path.target(), 2);
        records.push(rec("000000020000000000000005", 6));
        let w = window(&records, &path, Lsn(3 * seg + 100), start);
        assert_eq!(w.last_segment.as_deref(), Some("000000020000000000000006"));
        assert_eq!(
            w.until,
            rec("x", 7).completed_at - chrono::Duration::seconds(1)
        );
        assert_eq!(w.gap, None);
        assert_eq!(w.end, Lsn(7 * seg));
    }
}
