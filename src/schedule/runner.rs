//! The scheduler's loop: one thread runs every schedule's slots one at a time, so runs of one
//! schedule never overlap and runs on the repository queue behind each other (and behind its
//! lock, which each backup takes). The clock is injected: tests move it without sleeping.

use super::Schedule;
use super::plan::{self, AtStart};
use chrono::{DateTime, Utc};

/// Where the time comes from, and how the loop waits.
pub trait Clock {
    fn now(&self) -> DateTime<Utc>;
    /// Waits until `t`; false when the loop must stop instead (a signal, the end of a test).
    fn sleep_until(&self, t: DateTime<Utc>) -> bool;
}

/// The system clock; stops when a termination signal arrived ([`crate::signals`]) or `stop`
/// is set (`dbkeep serve` shutting down).
#[derive(Default)]
pub struct SystemClock {
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> bool {
        loop {
            let stopped = self
                .stop
                .as_ref()
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
            if crate::signals::interrupted() || stopped {
                return false;
            }
            let left = t - Utc::now();
            if left <= chrono::Duration::zero() {
                return true;
            }
            let step = left
                .to_std()
                .unwrap_or_default()
                .min(std::time::Duration::from_millis(200));
            std::thread::sleep(step);
        }
    }
}

/// What the scheduler did, as it happens (for the log, and later notifications and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Started {
        schedule: String,
        backup: String,
        slot: DateTime<Utc>,
    },
    Succeeded {
        schedule: String,
        backup: String,
        slot: DateTime<Utc>,
    },
    /// A run failed; it is tried again at `retry_at`, or the slot is given up (`None`).
    Failed {
        schedule: String,
        backup: String,
        slot: DateTime<Utc>,
        attempt: u32,
        error: String,
        retry_at: Option<DateTime<Utc>>,
    },
    /// A slot found undone at start, with `catch_up` off.
    Missed {
        schedule: String,
        slot: DateTime<Utc>,
    },
}

/// A schedule's next run: when, for which slot, which attempt.
struct Due {
    at: DateTime<Utc>,
    slot: DateTime<Utc>,
    attempt: u32,
}

/// Runs `schedules` until the clock says stop. `backup` makes one backup (schedule, name) and
/// says how it went; `last_success` is the start of the newest successful backup of a
/// schedule's series (read from the repository at start).
pub fn run(
    schedules: &[Schedule],
    clock: &dyn Clock,
    backup: &mut dyn FnMut(&Schedule, &str) -> Result<(), String>,
    last_success: &dyn Fn(&Schedule) -> Option<DateTime<Utc>>,
    on_event: &mut dyn FnMut(&Event),
) {
    let now = clock.now();
    let mut due: Vec<Option<Due>> = Vec::with_capacity(schedules.len());
    for s in schedules {
        let next = |after| {
            plan::next_slot(s, after).map(|slot| Due {
                at: slot,
                slot,
                attempt: 0,
            })
        };
        due.push(match plan::at_start(s, last_success(s), now) {
            AtStart::CatchUp(slot) => Some(Due {
                at: now,
                slot,
                attempt: 0,
            }),
            AtStart::Missed(slot) => {
                on_event(&Event::Missed {
                    schedule: s.name.clone(),
                    slot,
                });
                next(now)
            }
            AtStart::UpToDate => next(now),
        });
    }
    loop {
        // The earliest due run; ties go to the schedule listed first.
        let Some((i, at)) = due
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.as_ref().map(|d| (i, d.at)))
            .min_by_key(|(i, at)| (*at, *i))
        else {
            return;
        };
        if !clock.sleep_until(at) {
            return;
        }
        let s = &schedules[i];
        let Some(d) = due[i].take() else { return };
        let name = plan::backup_name(s, d.slot);
        on_event(&Event::Started {
            schedule: s.name.clone(),
            backup: name.clone(),
            slot: d.slot,
        });
        let result = backup(s, &name);
        let now = clock.now();
        due[i] = match result {
            Ok(()) => {
                on_event(&Event::Succeeded {
                    schedule: s.name.clone(),
                    backup: name,
                    slot: d.slot,
                });
                plan::next_slot(s, now.max(d.slot)).map(|slot| Due {
                    at: slot,
                    slot,
                    attempt: 0,
                })
            }
            Err(error) => {
                let attempt = d.attempt + 1;
                let next_slot = plan::next_slot(s, now.max(d.slot));
                // A retry that would come after the next slot gives way to it.
                let retry_at = (attempt <= s.retries)
                    .then(|| {
                        now + chrono::Duration::from_std(plan::retry_delay(s, attempt))
                            .unwrap_or_default()
                    })
                    .filter(|r| next_slot.is_none_or(|n| *r < n));
                on_event(&Event::Failed {
                    schedule: s.name.clone(),
                    backup: name,
                    slot: d.slot,
                    attempt,
                    error,
                    retry_at,
                });
                match retry_at {
                    Some(at) => Some(Due {
                        at,
                        slot: d.slot,
                        attempt,
                    }),
                    None => next_slot.map(|slot| Due {
                        at: slot,
                        slot,
                        attempt: 0,
                    }),
                }
            }
        };
    }
}
