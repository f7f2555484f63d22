//! The repository: where backups live. One small trait, [`Storage`], of flat keys (file names)
//! and whole objects; [`LocalStorage`] implements it on a directory, [`S3Storage`] on a bucket
//! prefix of S3-compatible object storage (through Apache OpenDAL).
//!
//! Architecture Invariant: an object becomes visible under its key only complete. Writers stream
//! into a hidden temporary object (`.dbkeep-tmp-…`, local disk) or a multipart upload (object
//! storage), and [`ObjectWriter::commit`] makes it visible atomically (fsync + rename; complete
//! the upload); dropping a writer without committing removes it (or aborts the upload).
//! Temporary objects left by a killed run are removed by the next run that holds the lock.

mod lease;
mod local;
mod s3;
pub mod scratch;
mod uploads;

pub use local::LocalStorage;
pub use s3::{S3Settings, S3Storage};

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// Prefix of temporary objects: never a valid backup name (names start with a letter or digit).
pub const TEMP_PREFIX: &str = ".dbkeep-tmp-";
/// The repository's lock (a file on local disk, a lease object in a bucket).
pub const LOCK_FILE: &str = ".dbkeep.lock";

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("{op} {path}: {source}{hint}", hint = io_hint(source))]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{op} {key} in {location}: {message}{hint}")]
    Remote {
        op: &'static str,
        key: String,
        location: String,
        message: String,
        hint: &'static str,
        /// The service refused the credentials this (403).
        denied: bool,
    },
    #[error("the repository {location} cannot be used: {problem}")]
    Setup { location: String, problem: String },
    #[error("{key} already exists in the repository {location} (another dbkeep wrote it first)")]
    AlreadyExists { key: String, location: String },
    #[error("interrupted by a signal while waiting for the repository lock")]
    Interrupted,
    #[error("{location} does not support {what}")]
    Unsupported { location: String, what: String },
    #[error(
        "the lock of the repository {location} was lost ({why}): another dbkeep may hold it now, so this run stopped before changing anything more; run it again"
    )]
    LeaseLost { location: String, why: String },
    #[error("{key} does not exist in the repository {location}")]
    NotFound { key: String, location: String },
    #[error(
        "the repository {location} is locked by another dbkeep ({holder}); waited {waited_secs} s (BACKUP_LOCK_TIMEOUT)"
    )]
    LockTimeout {
        location: String,
        holder: String,
        waited_secs: u64,
    },
}

impl StorageError {
    /// True when the repository refused the operation to these credentials (a read-only
    /// mount, a read-only or write-once key).
    pub fn is_denied(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ),
            StorageError::Remote { denied, .. } => *denied,
            _ => false,
        }
    }

    /// True when the file system is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}

fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            " (check that the user running dbkeep may write to the backup directory)"
        }
        io::ErrorKind::StorageFull => " (the disk is full: free space or move BACKUP_DIR)",
        _ => "",
    }
}

/// An object in the repository.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// A stream into a new object; nothing is visible under the key until `commit`.
pub trait ObjectWriter: Write + Send {
    fn commit(self: Box<Self>) -> Result<(), StorageError>;
}

/// Held while a command changes the repository; released on drop (whatever the backend keeps
/// in `_guard` releases it: a locked file, a lease object's keeper).
pub struct RepoLock {
    guard: Box<dyn LockGuard>,
}

/// What holds a repository lock: released when dropped.
pub trait LockGuard: Send {
    /// Proves the lock is still this run's, right before a commit or a delete (a lease on
    /// object storage may have been lost to a stall); a lock of the file system cannot be.
    fn ensure(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

impl LockGuard for std::fs::File {}

impl RepoLock {
    pub fn new(guard: impl LockGuard + 'static) -> Self {
        Self {
            guard: Box::new(guard),
        }
    }

    /// Fails with [`StorageError::LeaseLost`] when another run may hold the lock now: call it
    /// before every commit and delete.
    pub fn ensure(&self) -> Result<(), StorageError> {
        self.guard.ensure()
    }
}

pub trait Storage: Send + Sync {
    /// Where the repository is, for people: a path or URL without credentials.
    fn location(&self) -> String;
    /// How to show the object `key` (the spec's `file_path`).
    fn display_path(&self, key: &str) -> String;
    /// All objects, temporary ones included.
    fn list(&self) -> Result<Vec<ObjectInfo>, StorageError>;
    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError>;
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StorageError>;
    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError>;
    /// Like [`Storage::create`], but the commit fails with [`StorageError::AlreadyExists`] when
    /// something else created `key` first (a conditional create on object storage, for
    /// instances that share a bucket without sharing a lock).
    fn create_new(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.create(key)
    }
    fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Free bytes where new backups go, when the backend can tell.
    fn free_space(&self) -> Option<u64>;
    /// Takes the repository's exclusive lock, waiting up to `timeout`. `purpose` says who holds
    /// it, for the message another process shows while it waits.
    fn lock(&self, purpose: &str, timeout: Duration) -> Result<RepoLock, StorageError>;
    /// Where the object `key` is on this machine's file system, when the backend keeps it
    /// there (a directory): a program may then read it in place.
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }
    /// A local directory for scratch files (a SQLite copy being checked, a restore being
    /// staged); the caller removes what it puts there.
    fn scratch_dir(&self) -> Result<PathBuf, StorageError>;
    /// Whether every object in the repository is dbkeep's (a bucket prefix), so that a data
    /// object no manifest names is a leftover; a directory may hold the user's own files.
    fn owns_every_object(&self) -> bool {
        false
    }

    /// When the repository last changed, where that is cheap to know (a directory's mtime);
    /// `None` makes callers that cache the catalog fall back to a short time to live.
    fn changed_at(&self) -> Option<SystemTime> {
        None
    }

    /// Reads a small object whole (manifests).
    fn read_all(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let mut buf = Vec::new();
        self.open(key)?
            .read_to_end(&mut buf)
            .map_err(|source| StorageError::Io {
                op: "read",
                path: PathBuf::from(self.display_path(key)),
                source,
            })?;
        Ok(buf)
    }

    /// Writes a small object whole, atomically.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.write_whole(self.create(key)?, key, bytes)
    }

    /// Writes a small object whole, atomically, unless `key` exists
    /// ([`StorageError::AlreadyExists`]).
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.write_whole(self.create_new(key)?, key, bytes)
    }

    /// Writes `bytes` to `w` (a writer for `key`) and commits it.
    fn write_whole(
        &self,
        mut w: Box<dyn ObjectWriter>,
        key: &str,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        w.write_all(bytes).map_err(|source| StorageError::Io {
            op: "write",
            path: PathBuf::from(self.display_path(key)),
            source,
        })?;
        w.commit()
    }

    /// Multipart uploads begun more than `grace` ago and never completed or aborted (a killed
    /// run, or a server that went away mid-upload): aborted, unless `dry_run`. Returns their
    /// keys. Backends without such uploads have none; `StorageError::Unsupported` when the
    /// server cannot list them.
    fn sweep_uploads(&self, grace: Duration, dry_run: bool) -> Result<Vec<String>, StorageError> {
        let _ = (grace, dry_run);
        Ok(Vec::new())
    }

    /// Removes temporary objects left behind by a killed run. Call only under the lock. A
    /// temp object of a process that is still running on this machine (a `verify`, which takes
    /// no lock) is left alone. On object storage (shared by machines, so a pid says nothing) a
    /// temporary object (a large part spilled before the server copies it in) lives until its
    /// whole upload commits, which for a long upload or a copy into a repository that is not
    /// locked meanwhile can be hours: one is stale only once it is a day old.
    fn remove_stale_temps(&self) -> Result<usize, StorageError> {
        let mut n = 0;
        // One that cannot be removed does not keep the others: the first error is returned
        // once every stale one was tried.
        let mut failed = None;
        let now = SystemTime::now();
        for o in self.list()? {
            let stale = if self.owns_every_object() {
                now.duration_since(o.modified)
                    .is_ok_and(|age| age > Duration::from_secs(24 * 3600))
            } else {
                !owner_alive(&o.key)
            };
            if o.key.starts_with(TEMP_PREFIX) && stale {
                match self.delete(&o.key) {
                    Ok(()) => n += 1,
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        match self.sweep_scratch() {
            Ok(k) => n += k,
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(n), Err)
    }

    /// Removes the private scratch directories ([`scratch::private_dir`]) of processes that
    /// are gone; returns how many.
    fn sweep_scratch(&self) -> Result<usize, StorageError> {
        Ok(0)
    }
}

/// The repository `location` names: a local directory, or `s3://bucket/prefix` with `s3`.
/// Scratch files of an object-storage repository go to `scratch` (else the system's temp dir).
pub fn open(
    location: &str,
    s3: &S3Settings,
    scratch: Option<&Path>,
) -> Result<Box<dyn Storage>, StorageError> {
    if location.starts_with("s3://") {
        let scratch = scratch.map_or_else(std::env::temp_dir, Path::to_path_buf);
        Ok(Box::new(S3Storage::new(location, s3, scratch)?))
    } else if let Some((scheme, _)) = location.split_once("://") {
        Err(StorageError::Setup {
            location: location.to_owned(),
            problem: format!(
                "{scheme}:// repositories are not built in: use a local path or s3://bucket/prefix"
            ),
        })
    } else {
        Ok(Box::new(LocalStorage::new(location)))
    }
}

/// Whether the process that named the temp object `key` (`.dbkeep-tmp-PID-…`) is alive (this
/// one included).
fn owner_alive(key: &str) -> bool {
    let pid = key
        .strip_prefix(TEMP_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|p| p.parse::<i32>().ok());
    match pid {
        // Our own temp files belong to operations still running in this process (the server).
        Some(pid) if pid as u32 == std::process::id() => true,
        // A process of another user (EPERM) is alive: only "no such process" is gone.
        Some(pid) if pid > 0 => !crate::engine::process::process_gone(pid as u32),
        _ => false,
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary file name in `dir` for `what`.
pub fn temp_path(dir: &Path, what: &str) -> PathBuf {
    dir.join(temp_key(what))
}

/// A unique temporary key for `what`: `.dbkeep-tmp-PID-N-what` (removed by the next run under
/// the lock once its process is gone).
pub fn temp_key(what: &str) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_PREFIX}{}-{n}-{what}", std::process::id())
}
