//! The repository: where backups live. One small trait, [`Storage`], of flat keys (file names)
//! and whole objects; [`LocalStorage`] implements it on a directory. An object-storage backend
//! implements the same trait.
//!
//! Architecture Invariant: an object becomes visible under its key only complete. Writers stream
//! into a hidden temporary object (`.dbkeep-tmp-…`) and [`ObjectWriter::commit`] makes it visible
//! atomically (fsync + rename on local disk); dropping a writer without committing removes it.
//! Temporary objects left by a killed run are removed by the next run that holds the lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;

/// Prefix of temporary objects: never a valid backup name (names start with a letter or digit).
pub const TEMP_PREFIX: &str = ".dbkeep-tmp-";
const LOCK_FILE: &str = ".dbkeep.lock";

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("{op} {path}: {source}{hint}", hint = io_hint(source))]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("interrupted by a signal while waiting for the repository lock")]
    Interrupted,
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

/// Held while a command changes the repository; released on drop.
pub struct RepoLock {
    _file: File,
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
    fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Free bytes where new backups go, when the backend can tell.
    fn free_space(&self) -> Option<u64>;
    /// Takes the repository's exclusive lock, waiting up to `timeout`. `purpose` says who holds
    /// it, for the message another process shows while it waits.
    fn lock(&self, purpose: &str, timeout: Duration) -> Result<RepoLock, StorageError>;
    /// A local directory for scratch files (a SQLite copy being checked, a restore being
    /// staged); the caller removes what it puts there.
    fn scratch_dir(&self) -> Result<PathBuf, StorageError>;

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
        let mut w = self.create(key)?;
        w.write_all(bytes).map_err(|source| StorageError::Io {
            op: "write",
            path: PathBuf::from(self.display_path(key)),
            source,
        })?;
        w.commit()
    }

    /// Removes temporary objects left behind by a killed run. Call only under the lock. A
    /// temp object of a process that is still running on this machine (a `verify`, which takes
    /// no lock) is left alone.
    fn remove_stale_temps(&self) -> Result<usize, StorageError> {
        let mut n = 0;
        for o in self.list()? {
            if o.key.starts_with(TEMP_PREFIX) && !owner_alive(&o.key) {
                self.delete(&o.key)?;
                n += 1;
            }
        }
        Ok(n)
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
        Some(pid) if pid > 0 => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        }
        _ => false,
    }
}

/// A repository in a directory on the local file system.
pub struct LocalStorage {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary file name in `dir` for `what`.
pub fn temp_path(dir: &Path, what: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}-{n}-{what}", std::process::id()))
}

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io(&self, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
        let path = path.to_owned();
        move |source| StorageError::Io { op, path, source }
    }

    /// Creates the directory (mode 0700) if it does not exist.
    pub fn ensure_dir(&self) -> Result<(), StorageError> {
        if self.root.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(self.io("create the backup directory", &self.root))
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(self.io("sync the directory", &self.root))
    }
}

struct LocalWriter {
    file: Option<BufWriter<File>>,
    temp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("write after commit")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(mut self: Box<Self>) -> Result<(), StorageError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| StorageError::Io { op, path, source }
        };
        let writer = self
            .file
            .take()
            .ok_or_else(|| io("commit", &self.dest)(io::Error::other("committed twice")))?;
        let file = writer
            .into_inner()
            .map_err(|e| io("write", &self.temp)(e.into_error()))?;
        file.sync_all().map_err(io("sync", &self.temp))?;
        drop(file);
        fs::rename(&self.temp, &self.dest).map_err(io("rename into place", &self.dest))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync the directory", &self.dir))?;
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn display_path(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    fn list(&self) -> Result<Vec<ObjectInfo>, StorageError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("list", &self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(self.io("list", &self.root))?;
            let Ok(key) = entry.file_name().into_string() else {
                continue; // not a name dbkeep wrote
            };
            if key == LOCK_FILE {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
                Err(e) => return Err(self.io("stat", &entry.path())(e)),
            };
            if !meta.is_file() {
                continue;
            }
            out.push(ObjectInfo {
                key,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn stat(&self, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size: m.len(),
                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("stat", &path)(e)),
        }
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StorageError> {
        let path = self.path(key);
        match File::open(&path) {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound {
                key: key.to_owned(),
                location: self.location(),
            }),
            Err(e) => Err(self.io("open", &path)(e)),
        }
    }

    fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.ensure_dir()?;
        let temp = temp_path(&self.root, key);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(self.io("create", &temp))?;
        Ok(Box::new(LocalWriter {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            temp,
            dest: self.path(key),
            dir: self.root.clone(),
        }))
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("delete", &path)(e)),
        }
    }

    fn free_space(&self) -> Option<u64> {
        // The nearest existing ancestor: the directory may not exist yet.
        let mut dir = self.root.as_path();
        loop {
            if dir.exists() {
                break;
            }
            dir = dir.parent()?;
            if dir.as_os_str().is_empty() {
                dir = Path::new(".");
            }
        }
        let st = nix::sys::statvfs::statvfs(dir).ok()?;
        Some(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    fn lock(&self, purpose: &str, timeout: Duration) -> Result<RepoLock, StorageError> {
        self.ensure_dir()?;
        let path = self.path(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(self.io("open the lock file", &path))?;
        let start = Instant::now();
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if crate::signals::interrupted() => {
                    return Err(StorageError::Interrupted);
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = File::open(&path).and_then(|mut f| f.read_to_string(&mut holder));
                    let holder = holder.trim().to_owned();
                    if start.elapsed() >= timeout {
                        return Err(StorageError::LockTimeout {
                            location: self.location(),
                            holder,
                            waited_secs: start.elapsed().as_secs(),
                        });
                    }
                    if !announced {
                        tracing::warn!(holder = %holder, "waiting for the repository lock");
                        announced = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(fs::TryLockError::Error(e)) => return Err(self.io("lock", &path)(e)),
            }
        }
        // Say who holds the lock, for whoever waits next.
        let _ = file.set_len(0);
        let _ = writeln!(file, "pid {}: {purpose}", std::process::id());
        Ok(RepoLock { _file: file })
    }

    fn scratch_dir(&self) -> Result<PathBuf, StorageError> {
        self.ensure_dir()?;
        Ok(self.root.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_makes_visible_and_drop_removes_temp() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().join("repo"));
        let mut w = s.create("a.sql").unwrap();
        w.write_all(b"data").unwrap();
        assert!(
            s.stat("a.sql").unwrap().is_none(),
            "invisible before commit"
        );
        w.commit().unwrap();
        assert_eq!(s.read_all("a.sql").unwrap(), b"data");
        {
            let mut w = s.create("b.sql").unwrap();
            w.write_all(b"partial").unwrap();
        }
        let keys: Vec<String> = s.list().unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["a.sql"]);
    }

    #[test]
    fn modes_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path().join("new"));
        s.put("m.json", b"{}").unwrap();
        let dmode = fs::metadata(s.root()).unwrap().permissions().mode() & 0o777;
        let fmode = fs::metadata(s.root().join("m.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!((dmode, fmode), (0o700, 0o600));
    }

    #[test]
    fn stale_temps_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        // A dead process's temp file goes; a live one's (a `verify` running now) stays.
        fs::write(
            dir.path()
                .join(format!("{TEMP_PREFIX}999999999-0-x.sql.gz")),
            b"x",
        )
        .unwrap();
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let kept = format!("{TEMP_PREFIX}{}-0-verify.db", live.id());
        fs::write(dir.path().join(&kept), b"x").unwrap();
        // This process's own temp files belong to its running operations (the server).
        let own = format!("{TEMP_PREFIX}{}-0-scratch.db", std::process::id());
        fs::write(dir.path().join(&own), b"x").unwrap();
        let _lock = s.lock("test", Duration::from_secs(1)).unwrap();
        assert_eq!(s.remove_stale_temps().unwrap(), 1);
        let mut keys: Vec<String> = s.list().unwrap().into_iter().map(|o| o.key).collect();
        keys.sort();
        let mut want = vec![kept, own];
        want.sort();
        assert_eq!(keys, want);
        live.kill().unwrap();
        live.wait().unwrap();
    }

    #[test]
    fn second_lock_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        let _held = s.lock("backup x", Duration::from_secs(1)).unwrap();
        let err = s
            .lock("backup y", Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(err.to_string().contains("backup x"), "{err}");
    }
}
