//! The WAL archive: every WAL segment and timeline history file that pg_receivewal completed,
//! kept under the repository's `wal/` (a directory beside the backups, or the bucket prefix
//! `wal/`, which the backups' listing does not descend into). A segment is stored compressed
//! and encrypted as backups are (`NAME.zst.age`), then its record `NAME.json` — the commit
//! point, as a backup's manifest is — with the plain file's size and SHA-256, the stored
//! object's, and when it was archived.
//!
//! Architecture Invariant: a name once archived never changes. The same payload again is a
//! no-op; a different one under an existing name is refused, and the archived one is kept.

pub mod record;
pub mod timeline;

use crate::codec::{self, Compression, Encoder, HashingReader, HashingWriter};
use crate::encryption::{self, Encryption, EncryptionError, Keys, Sealed, Sealer};
use crate::storage::{Storage, StorageError};
pub use record::{Gap, SegmentRecord, Window, is_wal_name};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::path::Path;
use thiserror::Error;

/// The WAL archive's place under the repository.
pub const WAL_DIR: &str = "wal";
const RECORD_SUFFIX: &str = ".json";
/// Written with the first file archived: an archive without it does not exist (an unmounted
/// disk, a wrong prefix), and `fetch` then fails instead of answering "no such file".
pub const MARKER: &str = "ARCHIVE";

#[derive(Debug, Error)]
pub enum WalError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Encryption(#[from] EncryptionError),
    #[error(
        "the WAL archive already holds {name} with other contents (SHA-256 {archived}, this one {offered}): two clusters, or a restored copy, are streaming into one archive; the archived file is kept and this one is refused"
    )]
    Conflict {
        name: String,
        archived: String,
        offered: String,
    },
    #[error("the archived {name} is damaged: {problem}")]
    Damaged { name: String, problem: String },
    #[error(
        "the WAL archive {location} does not exist (no {MARKER} marker): the repository is not reachable or not the one written to; nothing can be fetched from it"
    )]
    NoArchive { location: String },
    #[error("the record of {key} is not valid: {problem}")]
    Record { key: String, problem: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
}

/// How a put went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    /// The same payload was archived already.
    AlreadyThere,
}

/// How a fetch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Done,
    /// The archive has no such file (an answer, not an outage).
    Missing,
}

/// The WAL archive of one repository.
pub struct WalArchive {
    storage: Box<dyn Storage>,
    compression: Compression,
    level: u32,
}

impl WalArchive {
    /// The archive in `storage` (the repository's `wal/`), writing with `compression` at `level`.
    pub fn new(storage: Box<dyn Storage>, compression: Compression, level: u32) -> Self {
        Self {
            storage,
            compression,
            level,
        }
    }

    pub fn location(&self) -> String {
        self.storage.location()
    }

    /// Archives the completed file `path` as `name` (see the module's doc).
    pub fn put(
        &self,
        name: &str,
        path: &Path,
        sealer: Option<&Sealer>,
    ) -> Result<Stored, WalError> {
        let io = |what| {
            let path = path.display().to_string();
            move |source| WalError::Io { what, path, source }
        };
        let bytes = std::fs::read(path).map_err(io("read"))?;
        let completed_at: chrono::DateTime<chrono::Utc> = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(io("stat"))?
            .into();
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let record_key = format!("{name}{RECORD_SUFFIX}");
        if let Some(there) = self.record(name)? {
            return if there.sha256 == sha256 {
                Ok(Stored::AlreadyThere)
            } else {
                Err(WalError::Conflict {
                    name: name.to_owned(),
                    archived: there.sha256,
                    offered: sha256,
                })
            };
        }
        let encryption = if sealer.is_some() {
            Encryption::Age
        } else {
            Encryption::None
        };
        if self.storage.stat(MARKER)?.is_none() {
            let text = format!(
                "dbkeep WAL archive, created {}\n",
                chrono::Utc::now().to_rfc3339()
            );
            match self.storage.put_new(MARKER, text.as_bytes()) {
                Ok(()) | Err(StorageError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Each attempt has a data key of its own (named by the record that commits it): two
        // writers never overwrite each other's data.
        let mut tag = [0u8; 4];
        getrandom::fill(&mut tag).map_err(|e| WalError::Io {
            what: "draw a random name for",
            path: name.to_owned(),
            source: io::Error::other(e.to_string()),
        })?;
        let data_file = format!(
            "{name}.{}{}{}",
            hex::encode(tag),
            self.compression.suffix(),
            encryption.suffix()
        );
        let writer = self.storage.create_new(&data_file)?;
        let sealed = Sealed::new(sealer, HashingWriter::new(writer))?;
        let mut enc = Encoder::new(self.compression, self.level, sealed).map_err(io("compress"))?;
        enc.write_all(&bytes).map_err(io("compress"))?;
        let (writer, digest) = enc
            .finish()
            .map_err(io("compress"))?
            .finish()
            .map_err(io("encrypt"))?
            .finish();
        writer.commit()?;
        let record = SegmentRecord {
            name: name.to_owned(),
            size: bytes.len() as u64,
            sha256,
            data_file,
            stored_size: digest.size,
            stored_sha256: digest.sha256,
            compression: self.compression,
            encryption,
            completed_at,
            archived_at: chrono::Utc::now(),
            history: name
                .ends_with(".history")
                .then(|| String::from_utf8_lossy(&bytes).into_owned()),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| WalError::Record {
            key: record_key.clone(),
            problem: e.to_string(),
        })?;
        match self.storage.put_new(&record_key, &json) {
            Ok(()) => Ok(Stored::New),
            // Another writer committed it meanwhile: the same payload is no conflict.
            Err(StorageError::AlreadyExists { .. }) => match self.record(name)? {
                Some(there) if there.sha256 == record.sha256 => Ok(Stored::AlreadyThere),
                Some(there) => Err(WalError::Conflict {
                    name: name.to_owned(),
                    archived: there.sha256,
                    offered: record.sha256,
                }),
                None => Err(WalError::Record {
                    key: record_key,
                    problem: "it was reported to exist but cannot be found".into(),
                }),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The record of `name`, if it is archived.
    pub fn record(&self, name: &str) -> Result<Option<SegmentRecord>, WalError> {
        let key = format!("{name}{RECORD_SUFFIX}");
        let mut text = Vec::new();
        match self.storage.open(&key) {
            Ok(mut r) => r.read_to_end(&mut text).map_err(|source| WalError::Io {
                what: "read",
                path: self.storage.display_path(&key),
                source,
            })?,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let record: SegmentRecord =
            serde_json::from_slice(&text).map_err(|e| WalError::Record {
                key: key.clone(),
                problem: e.to_string(),
            })?;
        if record.name != name {
            return Err(WalError::Record {
                key,
                problem: format!("it is the record of {}", record.name),
            });
        }
        Ok(Some(record))
    }

    /// Every archived file's name (its record's key; no record is read).
    pub fn names(&self) -> Result<Vec<String>, WalError> {
        let mut out: Vec<String> = self
            .storage
            .list()?
            .into_iter()
            .filter_map(|o| o.key.strip_suffix(RECORD_SUFFIX).map(str::to_owned))
            .filter(|n| is_wal_name(n))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every archived file's record, by name.
    pub fn records(&self) -> Result<Vec<SegmentRecord>, WalError> {
        let mut out = Vec::new();
        for obj in self.storage.list()? {
            let Some(name) = obj.key.strip_suffix(RECORD_SUFFIX) else {
                continue;
            };
            if !is_wal_name(name) {
                continue;
            }
            if let Some(r) = self.record(name)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the archived `name`: its record first (then it is no longer archived), then
    /// its data.
    pub fn remove(&self, name: &str) -> Result<(), WalError> {
        let Some(record) = self.record(name)? else {
            return Ok(());
        };
        self.storage.delete(&format!("{name}{RECORD_SUFFIX}"))?;
        self.storage.delete(&record.data_file)?;
        Ok(())
    }

    /// Writes the archived `name` to `dest` (through a temporary file beside it, renamed once
    /// its size and SHA-256 are the record's): what `restore_command` runs. Not synced: the
    /// server fetches again whatever a crash loses (recovery restarts from its last
    /// restartpoint), as it does after `cp`.
    pub fn fetch(&self, name: &str, dest: &Path, keys: Option<&Keys>) -> Result<Fetched, WalError> {
        let Some(record) = self.record(name)? else {
            // "No such file" only from an archive that exists.
            if self.storage.stat(MARKER)?.is_none() {
                return Err(WalError::NoArchive {
                    location: self.storage.location(),
                });
            }
            return Ok(Fetched::Missing);
        };
        let tmp = dest.with_file_name(format!(
            ".{}.dbkeep-fetch",
            dest.file_name()
                .map_or("wal".into(), |n| n.to_string_lossy())
        ));
        let written = std::fs::File::create(&tmp)
            .map_err(|source| WalError::Io {
                what: "create",
                path: tmp.display().to_string(),
                source,
            })
            .and_then(|file| {
                let mut out = io::BufWriter::with_capacity(256 * 1024, file);
                self.decode(&record, keys, &mut out, &tmp)?;
                out.into_inner().map_err(|e| WalError::Io {
                    what: "write",
                    path: tmp.display().to_string(),
                    source: e.into_error(),
                })
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, dest).map_err(|source| WalError::Io {
            what: "rename into",
            path: dest.display().to_string(),
            source,
        })?;
        Ok(Fetched::Done)
    }

    /// Every archived timeline history, by timeline: what recovery follows past a switch.
    pub fn histories(
        &self,
        keys: Option<&Keys>,
    ) -> Result<std::collections::BTreeMap<u32, Vec<timeline::Switch>>, WalError> {
        let mut out = std::collections::BTreeMap::new();
        for name in self.names()? {
            let Some(tli) = timeline::history_timeline(&name) else {
                continue;
            };
            let Some(record) = self.record(&name)? else {
                continue;
            };
            let text = match record.history.clone() {
                Some(text) => text,
                None => {
                    let mut text = Vec::new();
                    self.decode(&record, keys, &mut text, Path::new(&name))?;
                    String::from_utf8_lossy(&text).into_owned()
                }
            };
            let switches = timeline::parse_history(&text)
                .map_err(|problem| WalError::Damaged { name, problem })?;
            out.insert(tli, switches);
        }
        Ok(out)
    }

    /// Decodes the stored data of `record` into `out` (which writes to `path`), checking the
    /// stored and the plain size and SHA-256 against the record.
    fn decode(
        &self,
        record: &SegmentRecord,
        keys: Option<&Keys>,
        out: &mut dyn Write,
        path: &Path,
    ) -> Result<(), WalError> {
        let damaged = |problem: String| WalError::Damaged {
            name: record.name.clone(),
            problem,
        };
        let stored = match self.storage.open(&record.data_file) {
            Ok(r) => r,
            Err(StorageError::NotFound { .. }) => {
                return Err(damaged(format!(
                    "its record is there but its data {} is missing",
                    record.data_file
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let mut hashing = HashingReader::new(stored);
        let (size, sha) = {
            let plain: Box<dyn Read + '_> = match record.encryption {
                Encryption::None => Box::new(&mut hashing),
                Encryption::Age => encryption::open(keys, &mut hashing)?,
            };
            let mut dec = codec::decoder(record.compression, plain)
                .map_err(|e| damaged(format!("cannot start the decompressor: {e}")))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = match dec.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(damaged(format!("reading it failed: {e}"))),
                };
                h.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|source| WalError::Io {
                    what: "write",
                    path: path.display().to_string(),
                    source,
                })?;
                size += n as u64;
            }
            (size, hex::encode(h.finalize()))
        };
        let stored = hashing
            .finish()
            .map_err(|e| damaged(format!("reading it failed: {e}")))?;
        if stored.sha256 != record.stored_sha256 || stored.size != record.stored_size {
            return Err(damaged(format!(
                "the stored {} differs from its record (SHA-256 {}, {} bytes; the record says {}, {} bytes)",
                record.data_file,
                stored.sha256,
                stored.size,
                record.stored_sha256,
                record.stored_size
            )));
        }
        if sha != record.sha256 || size != record.size {
            return Err(damaged(format!(
                "it decodes to {size} bytes with SHA-256 {sha}, the record says {} bytes, {}",
                record.size, record.sha256
            )));
        }
        Ok(())
    }
}
