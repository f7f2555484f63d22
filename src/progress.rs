//! Progress of running operations, one source for every view: a use case `begin`s an
//! operation (backup, restore, drill, copy, verify) on its thread, sets its phase, and the
//! readers and writers of its streams count bytes into it ([`counting_reader`],
//! [`CountingWriter`]). Every running operation of the process is in one registry, which the
//! CLI draws on a terminal, and the API lists (`GET /api/operations`) and streams
//! (`GET /api/operations/events`).
//!
//! The operation of a thread is a thread-local: the streams deep in `ops` and the engines find
//! it without being handed it, and one thread runs one operation at a time (the API runs each on
//! a thread of its own).

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One running operation.
#[derive(Debug)]
pub struct Progress {
    pub id: u64,
    pub kind: &'static str,
    pub database: String,
    backup_name: Mutex<Option<String>>,
    phase: Mutex<&'static str>,
    /// Bytes read: from the database's tool (a backup) or from the repository (the others).
    read: AtomicU64,
    /// Bytes written: into the repository (a backup, a copy) or to the database (a restore).
    written: AtomicU64,
    /// Rows counted so far (drills).
    rows: AtomicU64,
    started: Instant,
    started_at: DateTime<Utc>,
}

/// What a view shows of an operation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    pub id: u64,
    pub kind: &'static str,
    pub database: String,
    pub backup_name: Option<String>,
    pub phase: &'static str,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub rows: u64,
    pub started_at: String,
    pub elapsed_seconds: f64,
    /// Bytes read per second since the start.
    pub rate_bytes_per_second: f64,
}

impl Progress {
    pub fn set_phase(&self, phase: &'static str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase;
        }
    }

    pub fn set_backup_name(&self, name: &str) {
        if let Ok(mut n) = self.backup_name.lock() {
            *n = Some(name.to_owned());
        }
    }

    pub fn add_read(&self, n: u64) {
        self.read.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_rows(&self, n: u64) {
        self.rows.store(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let elapsed = self.started.elapsed().as_secs_f64();
        let read = self.read.load(Ordering::Relaxed);
        Snapshot {
            id: self.id,
            kind: self.kind,
            database: self.database.clone(),
            backup_name: self.backup_name.lock().ok().and_then(|n| n.clone()),
            phase: self.phase.lock().map(|p| *p).unwrap_or("running"),
            bytes_read: read,
            bytes_written: self.written.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            started_at: self
                .started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            elapsed_seconds: (elapsed * 10.0).round() / 10.0,
            rate_bytes_per_second: if elapsed > 0.0 {
                (read as f64 / elapsed).round()
            } else {
                0.0
            },
        }
    }
}

static RUNNING: Mutex<Vec<Arc<Progress>>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CURRENT: RefCell<Option<Arc<Progress>>> = const { RefCell::new(None) };
}

/// Every running operation of this process, oldest first.
pub fn running() -> Vec<Snapshot> {
    RUNNING
        .lock()
        .map(|r| r.iter().map(|p| p.snapshot()).collect())
        .unwrap_or_default()
}

/// The operation this thread runs, if any.
pub fn current() -> Option<Arc<Progress>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Sets the phase of this thread's operation, if any.
pub fn phase(phase: &'static str) {
    if let Some(p) = current() {
        p.set_phase(phase);
    }
}

/// A running operation: registered until dropped, this thread's current one meanwhile (the one
/// before it comes back after it).
pub struct Operation {
    progress: Arc<Progress>,
    previous: Option<Arc<Progress>>,
}

impl Operation {
    pub fn progress(&self) -> &Progress {
        &self.progress
    }
}

/// Begins an operation of `kind` on `database` (of backup `name`, when known).
pub fn begin(kind: &'static str, database: &str, name: Option<&str>) -> Operation {
    let progress = Arc::new(Progress {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        kind,
        database: database.to_owned(),
        backup_name: Mutex::new(name.map(str::to_owned)),
        phase: Mutex::new("starting"),
        read: AtomicU64::new(0),
        written: AtomicU64::new(0),
        rows: AtomicU64::new(0),
        started: Instant::now(),
        started_at: Utc::now(),
    });
    if let Ok(mut r) = RUNNING.lock() {
        r.push(progress.clone());
    }
    let previous = CURRENT.with(|c| c.replace(Some(progress.clone())));
    Operation { progress, previous }
}

impl Drop for Operation {
    fn drop(&mut self) {
        if let Ok(mut r) = RUNNING.lock() {
            r.retain(|p| !Arc::ptr_eq(p, &self.progress));
        }
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// Which count a stream adds to.
#[derive(Debug, Clone, Copy)]
pub enum Count {
    Read,
    Written,
}

fn add(p: &Progress, count: Count, n: usize) {
    match count {
        Count::Read => p.add_read(n as u64),
        Count::Written => p.add_written(n as u64),
    }
}

/// `inner`, counting what is read from it into this thread's operation (unchanged without one).
pub fn counting_reader(inner: Box<dyn Read + Send>, count: Count) -> Box<dyn Read + Send> {
    if current().is_none() {
        return inner;
    }
    Box::new(CountingReader::new(inner, count))
}

/// A reader counting what passes into this thread's operation (when there is one).
pub struct CountingReader<R> {
    inner: R,
    progress: Option<Arc<Progress>>,
    count: Count,
}

impl<R: Read> CountingReader<R> {
    pub fn new(inner: R, count: Count) -> Self {
        Self {
            inner,
            progress: current(),
            count,
        }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(p) = &self.progress {
            add(p, self.count, n);
        }
        Ok(n)
    }
}

/// A writer counting what passes into this thread's operation (when there is one).
pub struct CountingWriter<W> {
    inner: W,
    progress: Option<Arc<Progress>>,
    count: Count,
}

impl<W: Write> CountingWriter<W> {
    pub fn new(inner: W, count: Count) -> Self {
        Self {
            inner,
            progress: current(),
            count,
        }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(p) = &self.progress {
            add(p, self.count, n);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_is_listed_while_it_runs_and_counts_its_streams() {
        let op = begin("backup", "shop", Some("nightly_1"));
        phase("dumping");
        let mut w = CountingWriter::new(Vec::new(), Count::Read);
        w.write_all(b"12345").unwrap();
        let mut r = counting_reader(Box::new(&b"abc"[..]), Count::Written);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let mine: Vec<Snapshot> = running()
            .into_iter()
            .filter(|s| s.id == op.progress().id)
            .collect();
        assert_eq!(mine.len(), 1);
        let s = &mine[0];
        assert_eq!(
            (s.kind, s.phase, s.bytes_read, s.bytes_written),
            ("backup", "dumping", 5, 3)
        );
        assert_eq!(s.backup_name.as_deref(), Some("nightly_1"));
        let id = op.progress().id;
        drop(op);
        assert!(current().is_none());
        assert!(!running().iter().any(|s| s.id == id));
    }

    #[test]
    fn a_drills_counted_rows_show_in_its_progress() {
        let op = begin("drill", "default", Some("n"));
        let counts: crate::engine::RowCounts = [("a".to_owned(), 3u64), ("b".to_owned(), 4)]
            .into_iter()
            .collect();
        crate::engine::compare_counts(Some(&counts), &counts).unwrap();
        let s = op.progress().snapshot();
        assert_eq!((s.rows, s.phase), (7, "comparing row counts"));
    }
}
