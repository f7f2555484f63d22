//! The read path shared by verify, drills and restores: one pass over the stored file (size,
//! SHA-256, decryption, decompression, the engine's content check), staging into scratch files.

use super::*;
use crate::catalog::Manifest;
use crate::codec::{self, Compression, HashingReader};
use crate::encryption::{self, Encryption, Keys};
use crate::engine::format::Format;
use crate::engine::seam::Source;
use crate::error::Error;
use crate::storage;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A scratch file in a private directory of its own ([`storage::scratch::private_dir`]),
/// removed with that directory (and SQLite's side files in it) when dropped.
pub struct ScratchFile {
    dir: PathBuf,
    path: PathBuf,
}

impl ScratchFile {
    /// Creates an empty scratch file (mode 0600) in a new private directory in `base`.
    pub fn create(base: &Path, what: &str) -> Result<Self, Error> {
        Self::create_open(base, what).map(|(file, _)| file)
    }

    /// A path in a new private directory in `base`, with nothing there yet (for a tool that
    /// creates it itself: pg_basebackup's spool).
    pub fn reserve(base: &Path, what: &str) -> Result<Self, Error> {
        let dir = storage::scratch::private_dir(base, what)?;
        let path = dir.join(what);
        Ok(Self { dir, path })
    }

    /// As [`Self::create`], with the handle that created the file, for writing it.
    pub fn create_open(base: &Path, what: &str) -> Result<(Self, std::fs::File), Error> {
        let dir = storage::scratch::private_dir(base, what)?;
        let path = dir.join(what);
        let file = Self { dir, path };
        let handle = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file.path)
            .map_err(|source| Error::Io {
                io_context: format!("create the scratch file {}", file.path.display()),
                source,
            })?;
        Ok((file, handle))
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The private directory it is in (removed with it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a restore or drill loads from a file: a checked copy in a scratch file, or the stored
/// file itself.
pub enum Staged {
    Scratch(ScratchFile),
    /// The repository's own file: a custom archive that pg_dump compressed, stored without
    /// dbkeep's codec or encryption in a local directory, is read by pg_restore where it is
    /// (nothing copied). dbkeep never rewrites a data file in place: what is read is what the
    /// check hashed, unless the file is deleted meanwhile, and then the load fails.
    InPlace(PathBuf),
}

impl Staged {
    pub fn path(&self) -> &Path {
        match self {
            Staged::Scratch(f) => f.path(),
            Staged::InPlace(p) => p,
        }
    }
}

pub(super) use crate::engine::format::Depth;

/// What a PostgreSQL restore or drill loads: the plain dump's stream, or the staged archive.
pub(super) fn engine_source<'a>(
    name: &str,
    sql: &'a mut Option<Box<dyn Read>>,
    staged: Option<&'a Staged>,
) -> Result<Source<'a>, Error> {
    match (sql, staged) {
        (Some(r), _) => Ok(Source::Stream(r.as_mut())),
        (None, Some(f)) => Ok(Source::File(f.path())),
        (None, None) => Err(Error::Damaged {
            name: name.to_owned(),
            problem: "no staged archive to restore from".into(),
        }),
    }
}

impl Ops {
    /// A plain SQL backup's dump, decrypted and decompressed, streamed from the repository
    /// (`None` for a custom archive or a SQLite copy, which [`Ops::check`] stages instead).
    pub(super) fn sql_stream(
        &self,
        m: &Manifest,
        keys: Option<&Keys>,
    ) -> Result<Option<Box<dyn Read>>, Error> {
        if !Format::of(m.database_type, m.pg_format).streams() {
            return Ok(None);
        }
        let key = m.data_file.as_deref().unwrap_or_default();
        let stored = self.storage.open(key)?;
        let plain: Box<dyn Read> = match m.encryption {
            Encryption::None => stored,
            Encryption::Age => encryption::open(keys, stored)?,
        };
        // What the database is fed: the operation's bytes written (the check before it read
        // the stored file).
        codec::decoder(m.stream_compression(), plain)
            .map(|d| {
                Some(Box::new(crate::progress::CountingReader::new(
                    d,
                    crate::progress::Count::Written,
                )) as Box<dyn Read>)
            })
            .map_err(io_err("start the decompressor"))
    }

    /// Streams the stored file of `m` into `f`, decrypted and decompressed, hashing what is
    /// stored as it goes: once `f` is done the rest is read, and unless the size and SHA-256
    /// are the manifest's the result is an error whatever `f` said (a file replaced or damaged
    /// since it was listed never passes on one read).
    pub(super) fn read_checked<T>(
        &self,
        m: &Manifest,
        keys: Option<&Keys>,
        f: impl FnOnce(&mut dyn Read) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let damaged = damaged_fn(m);
        let key = data_key(m)?;
        let mut hashing = HashingReader::new(crate::progress::counting_reader(
            self.storage.open(key)?,
            crate::progress::Count::Read,
        ));
        let result = {
            let plain: Box<dyn Read + '_> = match m.encryption {
                Encryption::None => Box::new(&mut hashing),
                Encryption::Age => encryption::open(keys, &mut hashing)?,
            };
            let mut dec = codec::decoder(m.stream_compression(), plain)
                .map_err(io_err("start the decompressor"))?;
            f(&mut dec)
        };
        let digest = hashing
            .finish()
            .map_err(|e| damaged(format!("reading its data file failed: {e}")))?;
        let expected = m.sha256.as_deref().unwrap_or_default();
        if digest.sha256 != expected || digest.size != m.file_size {
            return Err(damaged(format!(
                "{key} has {} bytes with SHA-256 {}, the manifest says {} bytes, {expected}: the file changed after the backup",
                digest.size, digest.sha256, m.file_size
            )));
        }
        result
    }

    /// Reads the stored file once: size and SHA-256 against the manifest and, as deep as `depth`
    /// says, decryption, decompression and the engine's content check. What a restore loads from
    /// a file (a SQLite copy, checked; a custom archive) is returned staged. An encrypted backup
    /// without `keys` gets the size and SHA-256 checks only.
    pub(super) fn check(
        &self,
        m: &Manifest,
        keys: Option<&Keys>,
        depth: Depth,
        checks: &mut Vec<String>,
    ) -> Result<Option<Staged>, Error> {
        let damaged = damaged_fn(m);
        let key = data_key(m)?;
        let expected_sha = m.sha256.as_deref().unwrap_or_default();
        crate::faults::stop("before-reading-data");
        let Some(stat) = self.storage.stat(key)? else {
            // Retention or a delete may have removed the backup since the catalog was read:
            // not damage.
            if self.storage.stat(&m.key())?.is_none() {
                return Err(Error::DeletedMeanwhile {
                    name: m.backup_name.clone(),
                });
            }
            return Err(damaged(format!("its data file {key} is missing")));
        };
        if stat.size != m.file_size {
            return Err(damaged(format!(
                "its data file {key} has {} bytes but the manifest says {} (truncated or replaced)",
                stat.size, m.file_size
            )));
        }
        checks.push(format!("size {} bytes", stat.size));
        let mut hashing = HashingReader::new(crate::progress::counting_reader(
            self.storage.open(key)?,
            crate::progress::Count::Read,
        ));
        let format = Format::of(m.database_type, m.pg_format);
        let mut scratch = None;
        let mut not_decrypted = false;
        let mut key_error = None;
        let content: Result<String, String> = {
            let plain: Result<Box<dyn Read + '_>, String> = match (m.encryption, keys) {
                (Encryption::None, _) => Ok(Box::new(&mut hashing)),
                (Encryption::Age, None) => {
                    not_decrypted = true;
                    Err("not decrypted".into())
                }
                (Encryption::Age, Some(k)) => {
                    encryption::open(Some(k), &mut hashing).map_err(|e| {
                        let text = e.to_string();
                        if matches!(e, encryption::EncryptionError::WrongKey) {
                            key_error = Some(e);
                        }
                        text
                    })
                }
            };
            let dec = plain.and_then(|p| {
                codec::decoder(m.stream_compression(), p)
                    .map_err(|e| format!("cannot start the decompressor: {e}"))
            });
            match dec {
                Err(e) => Err(e),
                Ok(mut dec) => {
                    let bindir = self.settings.pg_bindir.as_deref();
                    match format.staging(depth) {
                        None => {
                            // The catalog's entries leave the row counts out: the manifest
                            // has them.
                            let full = (format.checks_counts()
                                && depth == Depth::Full
                                && m.row_counts.is_none())
                            .then(|| self.committed(&m.backup_name).ok())
                            .flatten();
                            let counts = full.as_ref().unwrap_or(m).row_counts.as_ref();
                            format.check_stream(depth, &mut dec, counts, bindir)
                        }
                        Some(staging) => {
                            let in_place = (staging.in_place
                                && m.stream_compression() == Compression::None
                                && m.encryption == Encryption::None)
                                .then(|| self.storage.local_path(key))
                                .flatten();
                            let staged = match in_place {
                                // Read to its end: the SHA-256 below is of the very file.
                                Some(path) => io::copy(&mut dec, &mut io::sink())
                                    .map(|_| Staged::InPlace(path))
                                    .map_err(|e| format!("reading it failed: {e}")),
                                None => self.stage(&mut dec, staging.file).map(Staged::Scratch),
                            };
                            staged.and_then(|file| {
                                let how = format.check_staged(
                                    depth,
                                    file.path(),
                                    matches!(file, Staged::InPlace(_)),
                                    bindir,
                                )?;
                                scratch = Some(file);
                                Ok(how)
                            })
                        }
                    }
                }
            }
        };
        let digest = hashing
            .finish()
            .map_err(|e| damaged(format!("reading its data file failed: {e}")))?;
        if digest.sha256 != expected_sha {
            return Err(damaged(format!(
                "SHA-256 of {key} is {} but the manifest says {expected_sha}: the file changed after the backup",
                digest.sha256
            )));
        }
        checks.push("sha256 matches".into());
        // The stored bytes are intact: a key that does not fit is the key's fault.
        if let Some(e) = key_error {
            return Err(e.into());
        }
        if not_decrypted {
            checks.push(
                "encrypted with age: contents not checked without a key (BACKUP_DECRYPT_IDENTITY_FILE)"
                    .into(),
            );
            return Ok(None);
        }
        if m.encryption == Encryption::Age {
            checks.push("age decryption complete".into());
        }
        if m.stream_compression() != Compression::None {
            checks.push(format!("{} stream complete", m.compression.name()));
        }
        checks.push(content.map_err(damaged)?);
        Ok(scratch)
    }

    /// Writes `dec` into a new scratch file (read back at once: no fsync). Decompression and
    /// writing overlap: a second thread writes while this one reads the next megabyte.
    pub(super) fn stage(&self, dec: &mut dyn Read, what: &str) -> Result<ScratchFile, String> {
        let dir = self.storage.scratch_dir().map_err(|e| e.to_string())?;
        let (file, handle) = ScratchFile::create_open(&dir, what).map_err(|e| e.to_string())?;
        write_overlapped(dec, handle)
            .map_err(|e| format!("decompressing into {} failed: {e}", file.path().display()))?;
        Ok(file)
    }
}

/// The error for `m` being damaged in the way `problem` says.
fn damaged_fn(m: &Manifest) -> impl Fn(String) -> Error + '_ {
    |problem| Error::Damaged {
        name: m.backup_name.clone(),
        problem,
    }
}

/// The data file `m` names.
fn data_key(m: &Manifest) -> Result<&str, Error> {
    m.data_file
        .as_deref()
        .ok_or_else(|| damaged_fn(m)("the manifest names no data file".into()))
}

/// Copies `from` into `to` with the writes in a thread of their own (a few megabytes in flight).
fn write_overlapped(from: &mut dyn Read, mut to: std::fs::File) -> io::Result<()> {
    use std::io::Write;
    const CHUNK: u64 = 1 << 20;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let writer = scope.spawn(move || -> io::Result<()> {
            for chunk in rx {
                to.write_all(&chunk)?;
            }
            Ok(())
        });
        let read = (|| -> io::Result<()> {
            loop {
                let mut chunk = Vec::with_capacity(CHUNK as usize);
                if (&mut *from).take(CHUNK).read_to_end(&mut chunk)? == 0 {
                    return Ok(());
                }
                if tx.send(chunk).is_err() {
                    // The writer failed: its error says why.
                    return Ok(());
                }
            }
        })();
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the writing thread panicked")));
        read.and(written)
    })
}
