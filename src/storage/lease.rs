//! The repository lock on object storage: a fenced lease in the object `.dbkeep.lock`.
//!
//! - Taken with a create that only succeeds if the object does not exist (`If-None-Match: *`),
//!   or by overwriting a lease that is over, conditionally on the very version that was judged
//!   over (`If-Match: <ETag>`): two waiters that both judge it over cannot both take it.
//! - A lease is over when it says it was released, when its holder is a process of this host
//!   that is provably gone (ESRCH), or when this waiter has seen the same version of it for a
//!   whole lease length (60 s) on its own monotonic clock: no clock of two hosts is ever
//!   compared, so a host whose clock runs fast cannot break a live lease.
//! - Renewed, and released, only with `If-Match` on the version this holder wrote last; never
//!   deleted (write-once credentials work). A renewal that fails its condition means the lease
//!   was taken: the holder is told ([`RepoLock::ensure`] fails), and `ops` calls that before
//!   every commit and delete, which renews once more (so a holder stalled past its lease, a
//!   paused VM or SIGSTOP, notices before it changes anything).
//! - Before the first lease, the service is probed once: a second create of `.dbkeep-probe`
//!   must fail, and so must an overwrite on an ETag it does not have; a service that ignores
//!   either is refused, since neither the lock nor the commits would be safe there.

use super::s3::{block_on, remote};
use super::{RepoLock, StorageError};
use opendal::{ErrorKind as DalErrorKind, Operator};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a lease lasts without renewal, as its waiters see it (`DBKEEP_LEASE_SECS`, for
/// the tests: 2 or more).
fn lease() -> Duration {
    let secs = std::env::var("DBKEEP_LEASE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s >= 2)
        .unwrap_or(60);
    Duration::from_secs(secs)
}
pub(super) const LOCK_KEY: &str = super::LOCK_FILE;
pub(super) const PROBE_KEY: &str = ".dbkeep-probe";

/// What the lease object holds. `expires_unix` is written for older dbkeep versions and for
/// people; nothing here reads it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Lease {
    holder: String,
    host: String,
    pid: u32,
    #[serde(default)]
    expires_unix: u64,
    #[serde(default)]
    released: bool,
}

/// The repository the lease is in.
#[derive(Clone)]
pub(super) struct Ctx {
    pub op: Operator,
    pub location: String,
    /// The service, for an error naming it.
    pub endpoint: String,
    pub secrets: Vec<String>,
}

impl Ctx {
    fn runtime(&self, e: io::Error) -> StorageError {
        StorageError::Remote {
            op: "lock",
            key: LOCK_KEY.into(),
            location: self.location.clone(),
            message: e.to_string(),
            hint: "",
            denied: false,
        }
    }

    fn err(&self, op: &'static str, key: &str, e: &opendal::Error) -> StorageError {
        remote(op, key, &self.location, e, &self.secrets)
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn body(holder: &str, released: bool) -> Vec<u8> {
    let expires_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| (d + lease()).as_secs());
    serde_json::to_vec(&Lease {
        holder: holder.to_owned(),
        host: hostname(),
        pid: std::process::id(),
        expires_unix,
        released,
    })
    .unwrap_or_default()
}

/// A conditional write of `key`: `Ok(Some(etag))` written, `Ok(None)` its condition failed
/// (or the object is gone).
fn write(
    c: &Ctx,
    key: &str,
    data: Vec<u8>,
    create: bool,
    if_match: Option<&str>,
) -> Result<Option<String>, StorageError> {
    let written = block_on(async {
        let mut w = c.op.write_with(key, data);
        if create {
            w = w.if_not_exists(true);
        }
        if let Some(m) = if_match {
            w = w.if_match(m);
        }
        w.await
    })
    .map_err(|e| c.runtime(e))?;
    match written {
        Ok(meta) => match meta.etag() {
            Some(etag) => Ok(Some(etag.to_owned())),
            // Not every service answers the ETag of a write: read it back.
            None => Ok(Some(stat_etag(c, key)?.unwrap_or_default())),
        },
        Err(e)
            if matches!(
                e.kind(),
                DalErrorKind::ConditionNotMatch | DalErrorKind::NotFound
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(c.err("write", key, &e)),
    }
}

fn stat_etag(c: &Ctx, key: &str) -> Result<Option<String>, StorageError> {
    match block_on(c.op.stat(key)).map_err(|e| c.runtime(e))? {
        Ok(m) => Ok(Some(m.etag().unwrap_or_default().to_owned())),
        Err(e) if e.kind() == DalErrorKind::NotFound => Ok(None),
        Err(e) => Err(c.err("stat", key, &e)),
    }
}

/// The version of the lease object now (empty if it changed while it was read), and what it
/// says (`None` when it cannot be read); `None` when there is none.
fn read(c: &Ctx) -> Result<Option<(String, Option<Lease>)>, StorageError> {
    let Some(etag) = stat_etag(c, LOCK_KEY)? else {
        return Ok(None);
    };
    // The body of exactly that version: a read of another fails its condition.
    let read = block_on(async { c.op.read_with(LOCK_KEY).if_match(&etag).await })
        .map_err(|e| c.runtime(e))?;
    match read {
        Ok(buf) => Ok(Some((etag, serde_json::from_slice(&buf.to_vec()).ok()))),
        Err(e)
            if matches!(
                e.kind(),
                DalErrorKind::ConditionNotMatch | DalErrorKind::NotFound
            ) =>
        {
            Ok(Some((String::new(), None)))
        }
        Err(e) => Err(c.err("read", LOCK_KEY, &e)),
    }
}

/// Refuses a service that ignores conditional writes.
pub(super) fn probe(r: &Ctx) -> Result<(), StorageError> {
    let unsupported = |what: &str| StorageError::Unsupported {
        location: r.location.clone(),
        what: format!(
            "conditional writes ({what}; the service at {} ignored it), which dbkeep needs to lock the repository and commit safely: use a service that honours them (AWS S3, MinIO, Ceph RGW, R2, …)",
            r.endpoint
        ),
    };
    write(r, PROBE_KEY, b"probe".to_vec(), true, None)?;
    if write(r, PROBE_KEY, b"probe".to_vec(), true, None)?.is_some() {
        return Err(unsupported(
            "If-None-Match: a second create of .dbkeep-probe succeeded",
        ));
    }
    if write(
        r,
        PROBE_KEY,
        b"probe".to_vec(),
        false,
        Some("\"dbkeep-no-such-etag\""),
    )?
    .is_some()
    {
        return Err(unsupported(
            "If-Match: an overwrite on a wrong ETag succeeded",
        ));
    }
    Ok(())
}

/// Takes the lease, waiting up to `timeout` for its holder.
pub(super) fn acquire(r: &Ctx, purpose: &str, timeout: Duration) -> Result<RepoLock, StorageError> {
    let holder = format!("{} pid {}: {purpose}", hostname(), std::process::id());
    let start = Instant::now();
    let mut announced = false;
    // The version of the lease this waiter has seen, and since when.
    let mut seen: Option<(String, Instant)> = None;
    let etag = loop {
        if let Some(etag) = write(r, LOCK_KEY, body(&holder, false), true, None)? {
            break etag;
        }
        let Some((etag, current_lease)) = read(r)? else {
            continue; // gone meanwhile
        };
        if etag.is_empty() {
            continue; // changed while it was read
        }
        let same = seen.as_ref().is_some_and(|(e, _)| *e == etag);
        if !same {
            seen = Some((etag.clone(), Instant::now()));
        }
        let unchanged_for = seen.as_ref().map_or(Duration::ZERO, |(_, t)| t.elapsed());
        let current = current_lease
            .as_ref()
            .map_or_else(|| "another dbkeep".to_owned(), |l| l.holder.clone());
        let over = current_lease.as_ref().is_some_and(|l| {
            l.released
                || (l.host == hostname()
                    && l.pid != std::process::id()
                    && crate::engine::process::process_gone(l.pid))
        }) || unchanged_for > lease();
        if over {
            if current_lease.as_ref().is_some_and(|l| !l.released) {
                tracing::warn!(holder = %current, "breaking the lease of a dbkeep that is gone or stopped renewing");
            }
            if let Some(etag) = write(r, LOCK_KEY, body(&holder, false), false, Some(&etag))? {
                break etag;
            }
            continue; // another waiter took it first
        }
        if crate::signals::interrupted() {
            return Err(StorageError::Interrupted);
        }
        if start.elapsed() >= timeout {
            return Err(StorageError::LockTimeout {
                location: r.location.clone(),
                holder: current,
                waited_secs: start.elapsed().as_secs(),
            });
        }
        if !announced {
            tracing::warn!(holder = %current, "waiting for the repository lock");
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let held = Arc::new(Held {
        etag: Mutex::new(etag),
        lost: Mutex::new(None),
        holder,
        location: r.location.clone(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (stop, held, remote) = (stop.clone(), held.clone(), r.clone());
        std::thread::spawn(move || {
            let mut last = Instant::now();
            let renew = lease() / 4;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= renew {
                    if let Err(e) = held.renew(&remote) {
                        tracing::warn!(error = %e, "could not renew the repository lease");
                    }
                    last = Instant::now();
                }
            }
        })
    };
    Ok(RepoLock::new(LeaseGuard {
        held,
        stop,
        thread: Some(thread),
        remote: r.clone(),
    }))
}

/// The lease as held: the version last written, and why it was lost, if it was.
struct Held {
    etag: Mutex<String>,
    lost: Mutex<Option<String>>,
    holder: String,
    location: String,
}

impl Held {
    fn lost(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    fn lose(&self, why: String) -> StorageError {
        if let Ok(mut l) = self.lost.lock() {
            *l = Some(why.clone());
        }
        StorageError::LeaseLost {
            location: self.location.clone(),
            why,
        }
    }

    /// Writes the lease again on the version this holder wrote last.
    fn renew(&self, r: &Ctx) -> Result<(), StorageError> {
        if let Some(why) = self.lost() {
            return Err(StorageError::LeaseLost {
                location: self.location.clone(),
                why,
            });
        }
        let mut etag = self.etag.lock().map_err(|_| self.lose("poisoned".into()))?;
        match write(r, LOCK_KEY, body(&self.holder, false), false, Some(&etag))? {
            Some(new) => {
                *etag = new;
                Ok(())
            }
            None => Err(self.lose(
                "the lease was taken over: this run stalled past its lease, or the service lost it"
                    .into(),
            )),
        }
    }
}

struct LeaseGuard {
    held: Arc<Held>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    remote: Ctx,
}

impl super::LockGuard for LeaseGuard {
    fn ensure(&self) -> Result<(), StorageError> {
        self.held.renew(&self.remote)
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.held.lost().is_some() {
            return; // not ours to release
        }
        let etag = self.held.etag.lock().map(|e| e.clone()).unwrap_or_default();
        match write(
            &self.remote,
            LOCK_KEY,
            body(&self.held.holder, true),
            false,
            Some(&etag),
        ) {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!("the repository lease had been taken over before it was released")
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not release the repository lease: it expires by itself")
            }
        }
    }
}
