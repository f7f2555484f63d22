//! Per-client, per-endpoint rate limits (GCRA, governor), shared by all connections. Defaults
//! are the spec's: create 3/hour, list 20/minute, restore 2/hour, delete 10/hour, statistics
//! 30/minute; `DBKEEP_RATE_LIMITS=create=10/hour,list=100/second` overrides.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Create,
    List,
    Restore,
    Delete,
    Statistics,
    Download,
    Verify,
    /// Pin and unpin.
    Pin,
    /// The running operations and their event stream.
    Operations,
    /// Failed authentication attempts.
    AuthFailure,
}

impl Endpoint {
    pub const ALL: [Endpoint; 10] = [
        Endpoint::Create,
        Endpoint::List,
        Endpoint::Restore,
        Endpoint::Delete,
        Endpoint::Statistics,
        Endpoint::Download,
        Endpoint::Verify,
        Endpoint::Pin,
        Endpoint::Operations,
        Endpoint::AuthFailure,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Create => "create",
            Endpoint::List => "list",
            Endpoint::Restore => "restore",
            Endpoint::Delete => "delete",
            Endpoint::Statistics => "statistics",
            Endpoint::Download => "download",
            Endpoint::Verify => "verify",
            Endpoint::Pin => "pin",
            Endpoint::Operations => "operations",
            Endpoint::AuthFailure => "auth_failure",
        }
    }

    /// (count, per seconds)
    fn default_rate(self) -> (u32, u64) {
        match self {
            Endpoint::Create => (3, 3600),
            Endpoint::List => (20, 60),
            Endpoint::Restore => (2, 3600),
            Endpoint::Delete => (10, 3600),
            Endpoint::Statistics => (30, 60),
            Endpoint::Download => (10, 3600),
            Endpoint::Verify => (10, 3600),
            Endpoint::Pin => (30, 3600),
            Endpoint::Operations => (60, 60),
            Endpoint::AuthFailure => (10, 60),
        }
    }
}

#[derive(Debug, Error)]
#[error("DBKEEP_RATE_LIMITS entry {entry:?}: {problem}")]
pub struct RateLimitError {
    entry: String,
    problem: String,
}

pub struct Limits {
    limiters: HashMap<Endpoint, DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
    /// Clients over their authentication-failure budget, and until when: they get 429 before
    /// any token they send is looked at, so guessing is slowed, not just answered differently.
    barred: std::sync::Mutex<HashMap<IpAddr, std::time::Instant>>,
}

fn quota(count: u32, per_secs: u64) -> Option<Quota> {
    let n = NonZeroU32::new(count)?;
    let period = Duration::from_secs(per_secs) / count;
    Quota::with_period(period).map(|q| q.allow_burst(n))
}

impl Limits {
    pub fn new(overrides: Option<&str>) -> Result<Self, RateLimitError> {
        let mut rates: HashMap<Endpoint, (u32, u64)> = Endpoint::ALL
            .iter()
            .map(|e| (*e, e.default_rate()))
            .collect();
        for entry in overrides
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let err = |problem: String| RateLimitError {
                entry: entry.to_owned(),
                problem,
            };
            let (name, rate) = entry
                .split_once('=')
                .ok_or_else(|| err("expected ENDPOINT=COUNT/UNIT, e.g. create=3/hour".into()))?;
            let endpoint = Endpoint::ALL
                .iter()
                .find(|e| e.name() == name.trim())
                .ok_or_else(|| {
                    err(format!(
                        "unknown endpoint; known: {}",
                        Endpoint::ALL.map(|e| e.name()).join(", ")
                    ))
                })?;
            let (count, unit) = rate
                .split_once('/')
                .ok_or_else(|| err("expected COUNT/UNIT".into()))?;
            let count: u32 = count
                .trim()
                .parse()
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| err("the count must be a whole number above 0".into()))?;
            let per = match unit.trim() {
                "second" | "s" => 1,
                "minute" | "min" | "m" => 60,
                "hour" | "h" => 3600,
                "day" | "d" => 86400,
                _ => return Err(err("the unit must be second, minute, hour or day".into())),
            };
            rates.insert(*endpoint, (count, per));
        }
        let mut limiters = HashMap::new();
        for (e, (count, per)) in rates {
            let q = quota(count, per).ok_or_else(|| RateLimitError {
                entry: e.name().into(),
                problem: "invalid rate".into(),
            })?;
            limiters.insert(e, RateLimiter::keyed(q));
        }
        Ok(Self {
            limiters,
            clock: DefaultClock::default(),
            barred: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Seconds `client` is still barred for after too many failed authentications.
    pub fn barred(&self, client: IpAddr) -> Option<u64> {
        let now = std::time::Instant::now();
        let barred = self
            .barred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        barred
            .get(&client)
            .filter(|until| **until > now)
            .map(|until| ((*until - now).as_secs_f64().ceil() as u64).max(1))
    }

    /// Counts a failed authentication of `client`; over the budget, bars it and returns the
    /// seconds to wait.
    pub fn auth_failed(&self, client: IpAddr) -> Option<u64> {
        let wait = self.check(Endpoint::AuthFailure, client).err()?.max(1);
        self.barred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                client,
                std::time::Instant::now() + Duration::from_secs(wait),
            );
        Some(wait)
    }

    /// Takes one request of `client` on `endpoint`; `Err(seconds)` to wait when over the limit.
    pub fn check(&self, endpoint: Endpoint, client: IpAddr) -> Result<(), u64> {
        let Some(l) = self.limiters.get(&endpoint) else {
            return Ok(());
        };
        l.check_key(&client).map_err(|not_until| {
            not_until
                .wait_time_from(self.clock.now())
                .as_secs_f64()
                .ceil() as u64
        })
    }

    /// Forgets clients whose limits have fully recovered (keeps memory bounded).
    pub fn shrink(&self) {
        for l in self.limiters.values() {
            l.retain_recent();
        }
        let now = std::time::Instant::now();
        self.barred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_defaults_and_per_client() {
        let l = Limits::new(None).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            l.check(Endpoint::Create, a).unwrap();
        }
        let wait = l.check(Endpoint::Create, a).unwrap_err();
        assert!(wait > 60 && wait <= 1200, "{wait}");
        l.check(Endpoint::Create, b).unwrap();
        l.check(Endpoint::Restore, a).unwrap();
        l.check(Endpoint::Restore, a).unwrap();
        assert!(l.check(Endpoint::Restore, a).is_err());
    }

    #[test]
    fn overrides_parse_and_errors_name_the_entry() {
        let l = Limits::new(Some("list=2/second, create=100/day")).unwrap();
        let a: IpAddr = "::1".parse().unwrap();
        l.check(Endpoint::List, a).unwrap();
        l.check(Endpoint::List, a).unwrap();
        assert!(l.check(Endpoint::List, a).is_err());
        for bad in ["lst=1/hour", "list=0/hour", "list=3/fortnight", "list"] {
            let e = Limits::new(Some(bad)).err().unwrap().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
