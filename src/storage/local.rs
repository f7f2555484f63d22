//! [`LocalStorage`]: a repository in a directory on the local file system.

use super::{LOCK_FILE, ObjectInfo, ObjectWriter, RepoLock, Storage, StorageError, temp_path};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// A repository in a directory on the local file system.
pub struct LocalStorage {
    root: PathBuf,
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

    fn writer(&self, key: &str, new: bool) -> Result<Box<dyn ObjectWriter>, StorageError> {
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
            new,
            location: self.location(),
        }))
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
    /// Fail instead of replacing an existing `dest`.
    new: bool,
    location: String,
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
        if self.dest.to_string_lossy().ends_with(".manifest.json") {
            crate::faults::point("manifest-before-rename");
        }
        if self.new {
            // link() fails if the name exists: a create that never replaces.
            match fs::hard_link(&self.temp, &self.dest) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = fs::remove_file(&self.temp);
                    return Err(StorageError::AlreadyExists {
                        key: self
                            .dest
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        location: self.location.clone(),
                    });
                }
                Err(e) => return Err(io("link into place", &self.dest)(e)),
            }
            fs::remove_file(&self.temp).map_err(io("remove", &self.temp))?;
        } else {
            fs::rename(&self.temp, &self.dest).map_err(io("rename into place", &self.dest))?;
        }
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

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.path(key))
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
        self.writer(key, false)
    }

    fn create_new(&self, key: &str) -> Result<Box<dyn ObjectWriter>, StorageError> {
        self.writer(key, true)
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
        Ok(RepoLock::new(file))
    }

    fn scratch_dir(&self) -> Result<PathBuf, StorageError> {
        self.ensure_dir()?;
        Ok(self.root.clone())
    }

    fn changed_at(&self) -> Option<SystemTime> {
        fs::metadata(&self.root).and_then(|m| m.modified()).ok()
    }

    fn sweep_scratch(&self) -> Result<usize, StorageError> {
        super::scratch::sweep(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::TEMP_PREFIX;

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
