//! Timelines: what a history file (`0000000N.history`) says, and the timelines a recovery
//! from a base backup follows. A promote or a recovery that ends starts a new timeline; its
//! history file lists each earlier timeline with the position where it was left. Recovery
//! from a base backup on timeline B follows B up to its switch point, then each later
//! timeline of the chain, to the newest timeline whose history passes through the backup.

use crate::engine::postgres::physical::archive::Lsn;
use std::collections::BTreeMap;

/// One line of a history file: timeline `timeline` was left at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    pub timeline: u32,
    pub at: Lsn,
}

/// The switches a history file lists, oldest first; an error naming the line it cannot read.
pub fn parse_history(text: &str) -> Result<Vec<Switch>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(tli), Some(at)) = (f.next(), f.next()) else {
            return Err(format!("the line {line:?} has no timeline and position"));
        };
        let (Ok(timeline), Some(at)) = (tli.parse::<u32>(), Lsn::parse(at)) else {
            return Err(format!("the line {line:?} has no timeline and position"));
        };
        // Each line leaves a later timeline, at a position no earlier than the last.
        if out
            .last()
            .is_some_and(|p: &Switch| p.timeline >= timeline || p.at > at)
        {
            return Err(format!(
                "the line {line:?} does not follow the one before it (timelines rise, positions do not fall)"
            ));
        }
        out.push(Switch { timeline, at });
    }
    Ok(out)
}

/// The timeline a history file is of (`0000000A.history` → 10).
pub fn history_timeline(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".history")?;
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

/// The timelines a recovery follows, each with the first segment it supplies, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePath {
    steps: Vec<(u32, u64)>,
}

impl TimelinePath {
    /// One timeline, no switch.
    pub fn single(timeline: u32) -> Self {
        TimelinePath {
            steps: vec![(timeline, 0)],
        }
    }

    /// The timeline recovery ends on (`recovery_target_timeline`).
    pub fn target(&self) -> u32 {
        self.steps.last().map_or(1, |s| s.0)
    }

    /// The timeline whose copy of segment `segno` recovery reads: the switch segment is the
    /// new timeline's (it holds the old one's WAL up to the switch).
    pub fn timeline_of(&self, segno: u64) -> u32 {
        self.steps
            .iter()
            .rev()
            .find(|(_, first)| *first <= segno)
            .map_or(self.target(), |s| s.0)
    }

    /// Whether `timeline` is one of the path's.
    pub fn follows(&self, timeline: u32) -> bool {
        self.steps.iter().any(|s| s.0 == timeline)
    }

    /// Whether the path reads the segment `segno` of `timeline`.
    pub fn reads(&self, timeline: u32, segno: u64) -> bool {
        self.timeline_of(segno) == timeline
    }
}

/// The path from a base backup on `timeline`, consistent at `stop`: to the newest timeline
/// whose history (in `histories`, by timeline) leaves `timeline` at or after `stop`; a
/// timeline that branched off before the backup is not one of its futures.
pub fn follow(
    timeline: u32,
    stop: Lsn,
    histories: &BTreeMap<u32, Vec<Switch>>,
    seg_size: u64,
) -> TimelinePath {
    for (&target, switches) in histories.iter().rev() {
        if target <= timeline {
            break;
        }
        let Some(i) = switches
            .iter()
            .position(|s| s.timeline == timeline && s.at >= stop)
        else {
            continue;
        };
        let mut steps = vec![(timeline, 0)];
        for (j, s) in switches.iter().enumerate().skip(i) {
            let next = switches.get(j + 1).map_or(target, |n| n.timeline);
            steps.push((next, s.at.0 / seg_size));
        }
        return TimelinePath { steps };
    }
    TimelinePath::single(timeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn history_files_and_paths() {
        let h2 = parse_history("1\t0/5000A28\tbefore 2026-12-01 10:00:00+00\n").unwrap();
        let h3 = parse_history(
            "# comment\n1\t0/5000A28\tx\n\n2\t0/9000000\tno recovery target specified\n",
        )
        .unwrap();
        assert_eq!(
            h2,
            vec![Switch {
                timeline: 1,
                at: Lsn(0x5000A28)
            }]
        );
        assert!(
            parse_history("1\tnot-an-lsn\n")
                .unwrap_err()
                .contains("not-an-lsn")
        );
        assert_eq!(history_timeline("0000000A.history"), Some(10));
        assert_eq!(history_timeline("000000010000000000000001"), None);

        let all: BTreeMap<u32, Vec<Switch>> = [(2, h2.clone()), (3, h3)].into();
        // From timeline 1 before the first switch: 1, then 2 from segment 5, then 3 from 9.
        let p = follow(1, Lsn(0x3000000), &all, SEG);
        assert_eq!(p.target(), 3);
        assert_eq!(
            (
                p.timeline_of(4),
                p.timeline_of(5),
                p.timeline_of(8),
                p.timeline_of(9)
            ),
            (1, 2, 2, 3)
        );
        assert!(p.reads(2, 5) && !p.reads(1, 5));
        // A backup on timeline 1 past the switch to 2: timeline 2 is not its future.
        assert_eq!(
            follow(1, Lsn(0x6000000), &all, SEG),
            TimelinePath::single(1)
        );
        // From timeline 2: to 3.
        assert_eq!(follow(2, Lsn(0x6000000), &all, SEG).target(), 3);
        assert_eq!(
            follow(3, Lsn(0xA000000), &all, SEG),
            TimelinePath::single(3)
        );
        let only2: BTreeMap<u32, Vec<Switch>> = [(2, h2)].into();
        assert_eq!(follow(1, Lsn(0x3000000), &only2, SEG).target(), 2);
        assert!(parse_history("2\t0/9000000\tx\n1\t0/5000000\ty\n").is_err());

        // A switch exactly on a segment boundary: that segment is the new timeline's, the one
        // before the old one's.
        let edge: BTreeMap<u32, Vec<Switch>> = [(
            2,
            vec![Switch {
                timeline: 1,
                at: Lsn(5 * SEG),
            }],
        )]
        .into();
        let p = follow(1, Lsn(SEG), &edge, SEG);
        assert_eq!((p.timeline_of(4), p.timeline_of(5)), (1, 2));
        // Two switches in one segment: the newest timeline's copy holds them both.
        let two: BTreeMap<u32, Vec<Switch>> = [(
            3,
            vec![
                Switch {
                    timeline: 1,
                    at: Lsn(5 * SEG + 0x100),
                },
                Switch {
                    timeline: 2,
                    at: Lsn(5 * SEG + 0x900),
                },
            ],
        )]
        .into();
        let p = follow(1, Lsn(SEG), &two, SEG);
        assert_eq!(
            (p.timeline_of(4), p.timeline_of(5), p.timeline_of(6)),
            (1, 3, 3)
        );
        assert!(p.follows(2) && !p.reads(2, 5));
    }
}
