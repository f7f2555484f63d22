//! Streaming adapters between a dump and the stored bytes: compression, SHA-256 of the stored
//! bytes, and a window on the last bytes of a stream (for pg_dump's completion trailer).
//!
//! Nothing here buffers a whole backup: every adapter is a `Write` or `Read` wrapper that holds at
//! most one buffer.

use flate2::Compression as Level;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// How the stored bytes are compressed. Recorded in the manifest; readers choose the decoder from
/// the manifest, never from the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    /// Multi-threaded zstd; the `.zst` file is a standard zstd stream.
    Zstd,
}

impl Compression {
    /// The file-name suffix after the engine's own (`.sql` + `.gz`).
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    pub fn default_level(self) -> u32 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 6,
            Compression::Zstd => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// A compressing writer; `finish` flushes the codec and hands back the inner writer.
#[allow(clippy::large_enum_variant)] // one per backup, never in a collection
pub enum Encoder<W: Write> {
    Plain(W),
    Gzip(GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn new(compression: Compression, level: u32, inner: W) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Encoder::Plain(inner),
            Compression::Gzip => Encoder::Gzip(GzEncoder::new(inner, Level::new(level))),
            Compression::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(inner, level as i32)?;
                // Worker threads compress while this thread keeps reading the dump.
                let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
                z.multithread(workers)?;
                z.include_checksum(true)?;
                Encoder::Zstd(z)
            }
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Encoder::Gzip(g) => g.finish(),
            Encoder::Zstd(z) => z.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(g) => g.write(buf),
            Encoder::Zstd(z) => z.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.write_all(buf),
            Encoder::Gzip(g) => g.write_all(buf),
            Encoder::Zstd(z) => z.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(g) => g.flush(),
            Encoder::Zstd(z) => z.flush(),
        }
    }
}

/// A decompressing reader for `compression`. Gzip accepts several concatenated members, as
/// `gunzip` does, and zstd several frames; trailing bytes that are neither are an error.
pub fn decoder<'a, R: Read + 'a>(
    compression: Compression,
    inner: R,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(inner),
        Compression::Gzip => Box::new(MultiGzDecoder::new(inner)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(inner)?),
    })
}

/// Size and SHA-256 of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest256 {
    pub size: u64,
    pub sha256: String,
}

/// Counts and hashes what passes through to `inner`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }
    pub fn finish(self) -> (W, Digest256) {
        let digest = Digest256 {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        };
        (self.inner, digest)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts and hashes what is read from `inner`.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }
    /// Reads what is left (so the digest covers every byte) and returns the digest.
    pub fn finish(mut self) -> io::Result<Digest256> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(Digest256 {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Keeps the last `capacity` bytes written to it.
#[derive(Debug)]
pub struct Tail {
    buf: Vec<u8>,
    capacity: usize,
}

impl Tail {
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity * 2),
            capacity,
        }
    }
    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= self.capacity {
            self.buf.clear();
            self.buf
                .extend_from_slice(&data[data.len() - self.capacity..]);
            return;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() > self.capacity * 2 {
            let cut = self.buf.len() - self.capacity;
            self.buf.drain(..cut);
        }
    }
    pub fn bytes(&self) -> &[u8] {
        let start = self.buf.len().saturating_sub(self.capacity);
        &self.buf[start..]
    }
}

/// Writes through to `inner` and keeps a [`Tail`] of what passed.
pub struct TailWriter<W> {
    pub inner: W,
    pub tail: Tail,
}

impl<W: Write> Write for TailWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tail.push(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zstd];

    #[test]
    fn round_trip_and_digest_of_stored_bytes() {
        let data: Vec<u8> = (0..400_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for c in CODECS {
            let mut enc =
                Encoder::new(c, c.default_level(), HashingWriter::new(Vec::new())).unwrap();
            enc.write_all(&data).unwrap();
            let (stored, digest) = enc.finish().unwrap().finish();
            assert_eq!(digest.size, stored.len() as u64);
            assert_eq!(digest.sha256, hex::encode(Sha256::digest(&stored)));
            let mut back = Vec::new();
            let mut r = HashingReader::new(&stored[..]);
            decoder(c, &mut r).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{c:?}");
            assert_eq!(r.finish().unwrap(), digest);
        }
    }

    #[test]
    fn truncated_streams_are_an_error() {
        for c in [Compression::Gzip, Compression::Zstd] {
            let mut enc = Encoder::new(c, c.default_level(), Vec::new()).unwrap();
            let data: Vec<u8> = (0..100_000u32)
                .flat_map(|i| (i * 7).to_le_bytes())
                .collect();
            enc.write_all(&data).unwrap();
            let stored = enc.finish().unwrap();
            let cut = &stored[..stored.len() - 10];
            let mut out = Vec::new();
            let r = decoder(c, cut).and_then(|mut d| d.read_to_end(&mut out));
            assert!(r.is_err(), "{c:?}");
        }
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(8);
        for chunk in [&b"hello "[..], b"world", b"!", &[b'x'; 3]] {
            t.push(chunk);
        }
        assert_eq!(t.bytes(), b"orld!xxx");
        t.push(&[b'y'; 20]);
        assert_eq!(t.bytes(), &[b'y'; 8]);
    }
}
