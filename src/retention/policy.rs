//! A series' retention policy from the configuration file (`[series.NAME]`): calendar rules with
//! restic's semantics. For each of `keep_hourly`, `keep_daily`, `keep_weekly` (ISO weeks, Monday
//! to Sunday), `keep_monthly` and `keep_yearly` = N, the newest backup of each of the last N
//! buckets that hold one is kept, the buckets taken in the series' time zone; `keep_last` = N
//! keeps the N newest; `keep_within` keeps what is younger than a duration; `retention_days`
//! keeps what is younger than that many days. The rules are OR-ed, and only successful backups
//! count for them. What keeps a backup is said in words ("monthly 2026-10, weekly 2026-W44").

use chrono::{DateTime, Datelike, Duration, Months, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use thiserror::Error;

/// One `[series.NAME]` table, as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SeriesTable {
    pub timezone: Option<String>,
    pub retention_days: Option<u32>,
    pub keep_min: Option<u32>,
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "[series.{series}]: timezone {value:?} is not an IANA time zone: use a name such as UTC, Europe/Berlin or America/New_York"
    )]
    TimeZone { series: String, value: String },
    #[error(
        "[series.{series}]: keep_within {value:?} is not a duration: use a number with h, d, w, m (months) or y, such as \"36h\", \"30d\", \"6m\" or \"1y6m\""
    )]
    Within { series: String, value: String },
    #[error(
        "[series.{series}]: the policy keeps nothing: set at least one of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within or retention_days (or remove the table to keep each backup's own retention)"
    )]
    Empty { series: String },
    #[error(
        "[series.{series}]: keep_min = 0 would let retention delete the newest good backup: use 1 or more"
    )]
    KeepMinZero { series: String },
}

/// `keep_within`: years, months, days and hours back from now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Within {
    months: u32,
    hours: i64,
    text: String,
}

impl Within {
    /// `36h`, `30d`, `2w`, `6m`, `1y6m`, `1y2m3d4h`: units in that order, each at most once.
    pub fn parse(value: &str) -> Option<Self> {
        let mut months = 0u32;
        let mut hours = 0i64;
        let mut digits = String::new();
        let mut order = 0;
        for ch in value.trim().chars() {
            if ch.is_ascii_digit() {
                digits.push(ch);
                continue;
            }
            let n: u32 = digits.parse().ok()?;
            digits.clear();
            let rank = match ch {
                'y' => 1,
                'm' => 2,
                'w' => 3,
                'd' => 4,
                'h' => 5,
                _ => return None,
            };
            if rank <= order {
                return None;
            }
            order = rank;
            match ch {
                'y' => months = months.checked_add(n.checked_mul(12)?)?,
                'm' => months = months.checked_add(n)?,
                'w' => hours += i64::from(n) * 24 * 7,
                'd' => hours += i64::from(n) * 24,
                _ => hours += i64::from(n),
            }
        }
        if !digits.is_empty() || order == 0 || (months == 0 && hours == 0) {
            return None;
        }
        Some(Within {
            months,
            hours,
            text: value.trim().to_owned(),
        })
    }

    /// The oldest time still within, seen from `now`.
    pub fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now.checked_sub_months(Months::new(self.months))
            .and_then(|t| t.checked_sub_signed(Duration::hours(self.hours)))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// A series' policy, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPolicy {
    pub tz: Tz,
    pub retention_days: Option<u32>,
    pub keep_min: Option<u32>,
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    pub within: Option<Within>,
}

impl SeriesPolicy {
    pub fn from_table(series: &str, t: &SeriesTable) -> Result<Self, PolicyError> {
        let tz = match &t.timezone {
            None => Tz::UTC,
            Some(v) => v.parse().map_err(|_| PolicyError::TimeZone {
                series: series.to_owned(),
                value: v.clone(),
            })?,
        };
        let within = match &t.keep_within {
            None => None,
            Some(v) => Some(Within::parse(v).ok_or_else(|| PolicyError::Within {
                series: series.to_owned(),
                value: v.clone(),
            })?),
        };
        if t.keep_min == Some(0) {
            return Err(PolicyError::KeepMinZero {
                series: series.to_owned(),
            });
        }
        let p = SeriesPolicy {
            tz,
            retention_days: t.retention_days,
            keep_min: t.keep_min,
            last: t.keep_last.unwrap_or(0),
            hourly: t.keep_hourly.unwrap_or(0),
            daily: t.keep_daily.unwrap_or(0),
            weekly: t.keep_weekly.unwrap_or(0),
            monthly: t.keep_monthly.unwrap_or(0),
            yearly: t.keep_yearly.unwrap_or(0),
            within,
        };
        let counts = [p.last, p.hourly, p.daily, p.weekly, p.monthly, p.yearly];
        if counts.iter().all(|n| *n == 0) && p.within.is_none() && p.retention_days.is_none() {
            return Err(PolicyError::Empty {
                series: series.to_owned(),
            });
        }
        Ok(p)
    }

    /// The policy in the configuration's words: `keep_daily 7, keep_weekly 4 (UTC)`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = [
            ("keep_last", self.last),
            ("keep_hourly", self.hourly),
            ("keep_daily", self.daily),
            ("keep_weekly", self.weekly),
            ("keep_monthly", self.monthly),
            ("keep_yearly", self.yearly),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
        if let Some(w) = &self.within {
            parts.push(format!("keep_within {}", w.text));
        }
        if let Some(d) = self.retention_days {
            parts.push(format!("retention_days {d}"));
        }
        format!("{} ({})", parts.join(", "), self.tz.name())
    }

    /// For each of `times` (successful backups, newest first): what in the policy keeps it
    /// (empty: nothing does).
    pub fn reasons(&self, times: &[DateTime<Utc>], now: DateTime<Utc>) -> Vec<Vec<String>> {
        type Bucket = fn(&DateTime<Tz>) -> String;
        let kinds: [(u32, Bucket); 5] = [
            (self.hourly, |t| {
                format!("hourly {}", t.format("%Y-%m-%d %Hh"))
            }),
            (self.daily, |t| format!("daily {}", t.format("%Y-%m-%d"))),
            (self.weekly, |t| {
                let w = t.iso_week();
                format!("weekly {}-W{:02}", w.year(), w.week())
            }),
            (self.monthly, |t| format!("monthly {}", t.format("%Y-%m"))),
            (self.yearly, |t| format!("yearly {}", t.format("%Y"))),
        ];
        let mut left: Vec<u32> = kinds.iter().map(|k| k.0).collect();
        let mut seen: Vec<Option<String>> = vec![None; kinds.len()];
        let cutoff = self
            .within
            .as_ref()
            .map(|w| (w.cutoff(now), w.text.as_str()));
        let mut out = Vec::with_capacity(times.len());
        for (i, t) in times.iter().enumerate() {
            let local = t.with_timezone(&self.tz);
            let mut why = Vec::new();
            if (i as u64) < u64::from(self.last) {
                why.push(format!("last {}", i + 1));
            }
            for (k, (_, bucket)) in kinds.iter().enumerate() {
                let b = bucket(&local);
                if left[k] > 0 && seen[k].as_deref() != Some(b.as_str()) {
                    left[k] -= 1;
                    why.push(b.clone());
                    seen[k] = Some(b);
                }
            }
            if let Some((c, text)) = cutoff
                && *t >= c
            {
                why.push(format!("within {text}"));
            }
            out.push(why);
        }
        out
    }
}
