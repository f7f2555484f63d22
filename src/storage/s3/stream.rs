//! Reading and writing objects as streams: [`S3Reader`] on OpenDAL's reader, [`S3Writer`] a
//! multipart upload whose parts grow ([`PartSchedule`]); large parts spill into temporary objects
//! that the server copies in, so memory stays flat; an upload not committed is aborted.

use super::*;
use super::{ObjectWriter, StorageError};
use bytes::Bytes;
use futures_util::StreamExt;
use opendal::{Buffer, ErrorKind as DalErrorKind, Operator};
use std::io::{self, Read, Write};
use std::pin::Pin;

/// Streams an object: OpenDAL reads ahead in 8 MiB chunks, two at a time.
pub(super) struct S3Reader {
    pub(super) stream: Pin<Box<opendal::FuturesBytesStream>>,
    pub(super) current: Bytes,
}

impl Read for S3Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match block_on(self.stream.next())? {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A multipart upload whose parts grow by a [`PartSchedule`]. A part up to `memory_part` is
/// gathered in memory and sent as one OpenDAL write (two in flight); a larger part streams into
/// a temporary object (`.dbkeep-tmp-…`, itself uploaded in 8 MiB chunks) that the server then
/// copies in as the part (UploadPartCopy) — memory stays flat whatever the size. Committing
/// completes the upload; dropping it uncommitted aborts it and removes a temporary object.
pub(super) struct S3Writer {
    pub(super) op: Operator,
    pub(super) writer: Option<opendal::Writer>,
    pub(super) buf: Vec<u8>,
    pub(super) spill: Option<Spill>,
    /// Temporary objects copied in as parts: deleted once the upload is complete (the copies
    /// run in the background until then) or aborted.
    pub(super) copied: Vec<String>,
    pub(super) parts: u32,
    pub(super) schedule: PartSchedule,
    pub(super) memory_part: u64,
    pub(super) key: String,
    pub(super) location: String,
    pub(super) secrets: Vec<String>,
}

/// A large part on its way through a temporary object.
pub(super) struct Spill {
    pub(super) key: String,
    pub(super) writer: opendal::Writer,
    pub(super) written: u64,
}

impl S3Writer {
    pub(super) fn target(&self) -> u64 {
        self.schedule.size(self.parts)
    }

    pub(super) fn io_err(&self, e: &opendal::Error) -> io::Error {
        io::Error::other(crate::engine::process::scrub(&e.to_string(), &self.secrets))
    }

    pub(super) fn main_writer(&mut self) -> io::Result<&mut opendal::Writer> {
        self.writer
            .as_mut()
            .ok_or_else(|| io::Error::other("write after commit"))
    }

    pub(super) fn count_part(&mut self) -> io::Result<()> {
        self.parts += 1;
        if self.parts >= self.schedule.max_parts {
            return Err(io::Error::other(format!(
                "the upload would need more than {} parts (BACKUP_S3_MAX_PARTS), {} bytes",
                self.schedule.max_parts,
                self.schedule.capacity()
            )));
        }
        Ok(())
    }

    /// Sends the part gathered in memory.
    pub(super) fn send_part(&mut self) -> io::Result<()> {
        let next = usize::try_from(self.schedule.size(self.parts + 1).min(self.memory_part))
            .unwrap_or(usize::MAX);
        let part = std::mem::replace(&mut self.buf, Vec::with_capacity(next));
        let writer = self.main_writer()?;
        let sent = block_on(writer.write(Buffer::from(part)))?;
        sent.map_err(|e| self.io_err(&e))?;
        self.count_part()
    }

    /// Streams `data` into the temporary object of the current large part.
    pub(super) fn spill(&mut self, data: &[u8]) -> io::Result<()> {
        if self.spill.is_none() {
            let key = crate::storage::temp_key(&format!("{}.part{}", self.key, self.parts));
            let writer =
                block_on(async { self.op.writer_with(&key).chunk(8 << 20).concurrent(2).await })?
                    .map_err(|e| self.io_err(&e))?;
            self.spill = Some(Spill {
                key,
                writer,
                written: 0,
            });
        }
        let Some(spill) = self.spill.as_mut() else {
            return Err(io::Error::other("no temporary part"));
        };
        let written = block_on(spill.writer.write(Buffer::from(data.to_vec())))?;
        spill.written += data.len() as u64;
        written.map_err(|e| self.io_err(&e))
    }

    /// Completes the temporary object and has the server copy it in as the next part.
    pub(super) fn finish_spill(&mut self) -> io::Result<()> {
        let Some(mut spill) = self.spill.take() else {
            return Ok(());
        };
        let closed = block_on(spill.writer.close())?;
        if let Err(e) = closed {
            let op = self.op.clone();
            let _ = block_on(async move { op.delete(&spill.key).await });
            return Err(self.io_err(&e));
        }
        let (key, size) = (spill.key.clone(), spill.written);
        self.copied.push(key.clone());
        let writer = self.main_writer()?;
        let copied = block_on(writer.copy_from(&key, 0..size))?;
        copied.map_err(|e| self.io_err(&e))?;
        self.count_part()
    }

    /// Deletes the temporary objects of large parts.
    pub(super) fn remove_copied(&mut self) {
        for key in std::mem::take(&mut self.copied) {
            let op = self.op.clone();
            if !matches!(block_on(async move { op.delete(&key).await }), Ok(Ok(()))) {
                tracing::warn!("could not remove a temporary part; the next run removes it");
            }
        }
    }
}

impl Write for S3Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let target = self.target();
        if target > self.memory_part {
            let written = self.spill.as_ref().map_or(0, |s| s.written);
            let room = usize::try_from(target - written)
                .unwrap_or(usize::MAX)
                .max(1);
            let n = data.len().min(room);
            self.spill(&data[..n])?;
            if self.spill.as_ref().map_or(0, |s| s.written) >= target {
                self.finish_spill()?;
            }
            return Ok(n);
        }
        let target = usize::try_from(target).unwrap_or(usize::MAX);
        let room = target.saturating_sub(self.buf.len()).max(1);
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= target {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer {
    fn commit(mut self: Box<Self>) -> Result<(), StorageError> {
        let upload_err = |this: &Self, e: io::Error| StorageError::Remote {
            op: "upload",
            key: this.key.clone(),
            location: this.location.clone(),
            message: e.to_string(),
            hint: "",
            denied: e.kind() == io::ErrorKind::PermissionDenied,
        };
        if self.spill.is_some() {
            if let Err(e) = self.finish_spill() {
                return Err(upload_err(&self, e));
            }
        } else if !self.buf.is_empty() || self.parts == 0 {
            let last = std::mem::take(&mut self.buf);
            let sent = self
                .main_writer()
                .and_then(|w| block_on(w.write(Buffer::from(last))));
            match sent {
                Err(e) => return Err(upload_err(&self, e)),
                Ok(Err(e)) => {
                    return Err(remote(
                        "upload",
                        &self.key,
                        &self.location,
                        &e,
                        &self.secrets,
                    ));
                }
                Ok(Ok(())) => {}
            }
        }
        let Some(mut writer) = self.writer.take() else {
            return Err(upload_err(&self, io::Error::other("committed twice")));
        };
        let closed = match block_on(writer.close()) {
            Ok(c) => c,
            Err(e) => return Err(upload_err(&self, e)),
        };
        match closed {
            Ok(_) => {
                self.remove_copied();
                Ok(())
            }
            Err(e) => {
                let _ = block_on(writer.abort());
                self.remove_copied();
                if e.kind() == DalErrorKind::ConditionNotMatch {
                    Err(StorageError::AlreadyExists {
                        key: self.key.clone(),
                        location: self.location.clone(),
                    })
                } else {
                    Err(remote(
                        "complete the upload of",
                        &self.key,
                        &self.location,
                        &e,
                        &self.secrets,
                    ))
                }
            }
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if let Some(mut spill) = self.spill.take() {
            let _ = block_on(spill.writer.abort());
            let op = self.op.clone();
            let _ = block_on(async move { op.delete(&spill.key).await });
        }
        if let Some(mut writer) = self.writer.take() {
            // Not committed: abort the multipart upload, so no parts are left behind.
            let _ = block_on(writer.abort());
        }
        self.remove_copied();
    }
}
