//! The pure part of the scheduler: slots, what is due at start, retry delays and names, as
//! functions of the schedule and the time given (never the clock).

use super::Schedule;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The first slot strictly after `after`.
pub fn next_slot(s: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    s.cron
        .find_next_occurrence(&after.with_timezone(&s.tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The latest slot at or before `now`.
pub fn last_slot(s: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local = now.with_timezone(&s.tz);
    if s.cron.is_time_matching(&local).unwrap_or(false) {
        return Some(now);
    }
    s.cron
        .find_previous_occurrence(&local, false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// What a schedule has to do when the service starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtStart {
    /// The latest slot has a successful backup (or there was no slot yet).
    UpToDate,
    /// The latest slot has none: run it now (`catch_up`).
    CatchUp(DateTime<Utc>),
    /// The latest slot has none and `catch_up` is off: a `missed` event.
    Missed(DateTime<Utc>),
}

/// Whether the latest slot before `now` is done, by `last_success` (the start of the newest
/// successful backup of the schedule's series). A slot is done by a backup that started at or
/// after it; a backup dated in the future does not count.
pub fn at_start(s: &Schedule, last_success: Option<DateTime<Utc>>, now: DateTime<Utc>) -> AtStart {
    let Some(slot) = last_slot(s, now) else {
        return AtStart::UpToDate;
    };
    let done = last_success.is_some_and(|t| t >= slot && t <= now + crate::retention::FUTURE_SLACK);
    match (done, s.catch_up) {
        (true, _) => AtStart::UpToDate,
        (false, true) => AtStart::CatchUp(slot),
        (false, false) => AtStart::Missed(slot),
    }
}

/// The delay before retry `attempt` (1 for the first): the schedule's delay, doubled each
/// time, at most an hour.
pub fn retry_delay(s: &Schedule, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    s.retry_delay
        .saturating_mul(factor)
        .min(Duration::from_secs(3600))
}

/// The backup name of `slot`: the template with `{series}`, `{date}` (`YYYYMMDD`) and
/// `{datetime}` (`YYYYMMDD_HHMMSS`), in the schedule's time zone.
pub fn backup_name(s: &Schedule, slot: DateTime<Utc>) -> String {
    let local = slot.with_timezone(&s.tz);
    s.name_template
        .replace("{series}", &s.series)
        .replace("{datetime}", &local.format("%Y%m%d_%H%M%S").to_string())
        .replace("{date}", &local.format("%Y%m%d").to_string())
}
