//! Private scratch space: each staged file lives in a directory of its own, made for it
//! (mode 0700, this user's, checked after it was made) inside a base that no other user can
//! rename it out of (owned by this user or root, and not writable by others unless sticky, as
//! `/tmp` is). Nobody else can read what is staged there (decrypted plaintext) or swap it for
//! their own file between the check and the load.

use super::{StorageError, TEMP_PREFIX, owner_alive, temp_path};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Makes a new private directory for `what` in `base` (named like every temporary file, so a
/// run killed meanwhile leaves nothing that the next one does not sweep).
pub fn private_dir(base: &Path, what: &str) -> Result<PathBuf, StorageError> {
    check_base(base)?;
    let dir = temp_path(base, &format!("{what}.d"));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|source| StorageError::Io {
            op: "create the private scratch directory",
            path: dir.clone(),
            source,
        })?;
    let meta = fs::symlink_metadata(&dir).map_err(|source| StorageError::Io {
        op: "check the private scratch directory",
        path: dir.clone(),
        source,
    })?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(not_private(
            &dir,
            "it is not a directory of this user's with mode 0700",
        ));
    }
    Ok(dir)
}

/// A base for private directories: this user's or root's, and not open to others' writes
/// unless sticky.
pub fn check_base(base: &Path) -> Result<(), StorageError> {
    let meta = fs::metadata(base).map_err(|source| StorageError::Io {
        op: "check the scratch directory",
        path: base.to_owned(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(not_private(
            base,
            &format!("it belongs to the user with uid {}", meta.uid()),
        ));
    }
    let sticky = meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o022 != 0 && !sticky {
        return Err(not_private(
            base,
            "other users may write to it (and it is not sticky, as /tmp is)",
        ));
    }
    Ok(())
}

fn not_private(path: &Path, why: &str) -> StorageError {
    StorageError::Setup {
        location: path.display().to_string(),
        problem: format!(
            "{why}; another user could replace what dbkeep stages there: point BACKUP_SCRATCH_DIR at a directory only this user can write"
        ),
    }
}

/// Removes the private directories in `base` of processes that are gone; returns how many.
pub fn sweep(base: &Path) -> Result<usize, StorageError> {
    let entries = match fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(StorageError::Io {
                op: "list",
                path: base.to_owned(),
                source,
            });
        }
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && name.starts_with(TEMP_PREFIX) && name.ends_with(".d") && !owner_alive(&name) {
            fs::remove_dir_all(entry.path()).map_err(|source| StorageError::Io {
                op: "remove the stale scratch directory",
                path: entry.path(),
                source,
            })?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_directories_are_this_users_and_shut() {
        let base = tempfile::tempdir().unwrap();
        let dir = private_dir(base.path(), "restore.dump").unwrap();
        let meta = fs::symlink_metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        // Two runs never share one.
        assert_ne!(private_dir(base.path(), "restore.dump").unwrap(), dir);
    }

    #[test]
    fn a_base_others_can_write_to_is_refused() {
        let base = tempfile::tempdir().unwrap();
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(base.path(), "x").unwrap_err().to_string();
        assert!(
            e.contains("other users may write") && e.contains("BACKUP_SCRATCH_DIR"),
            "{e}"
        );
        // Sticky, as /tmp: fine.
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(private_dir(base.path(), "x").is_ok());
        // Another user's base.
        if nix::unistd::geteuid().is_root() {
            let theirs = base.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let e = private_dir(&theirs, "x").unwrap_err().to_string();
            assert!(e.contains("uid 65534"), "{e}");
        }
    }

    #[test]
    fn directories_of_gone_processes_are_swept() {
        let base = tempfile::tempdir().unwrap();
        let gone = base
            .path()
            .join(format!("{TEMP_PREFIX}999999999-0-restore.dump.d"));
        fs::create_dir(&gone).unwrap();
        fs::write(gone.join("restore.dump"), b"plaintext").unwrap();
        let ours = private_dir(base.path(), "verify.db").unwrap();
        assert_eq!(sweep(base.path()).unwrap(), 1);
        assert!(!gone.exists() && ours.exists());
    }
}
