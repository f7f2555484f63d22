//! Fault injection for the test suite: with `DBKEEP_FAULT=<point>` in its environment, dbkeep
//! kills itself with SIGKILL when it reaches `<point>`, so that a test can prove what a crash at
//! exactly that moment leaves behind (the fault-injection suite in `tests/faults.rs`). Without
//! the variable — always, outside the tests — a point is one environment lookup.
//!
//! Points: `during-compression` (a SQLite copy's first MiB went into the compressor),
//! `after-data-commit` (the data object is in place, its manifest not yet written),
//! `manifest-before-rename` (the new manifest is complete in its temporary file, not yet
//! renamed into place), `restore-before-swap` (a PostgreSQL restore has blocked connections to
//! the live database, not yet swapped), `restore-after-swap` (swapped, the previous database
//! not yet dropped).

/// With `DBKEEP_STOP=<point>`, stops this process (SIGSTOP) at `point`, as a paused VM or a
/// stalled host would, until a test sends SIGCONT. Points: `before-commit` (a backup's data is
/// in place, its manifest not yet written), `before-reading-data` (a verify, drill or restore
/// read the manifest, not yet the data), `between-drills` (a drill of several backups, before
/// each after the first).
pub fn stop(point: &str) {
    if std::env::var_os("DBKEEP_STOP").is_some_and(|v| v == point) {
        tracing::warn!(point, "DBKEEP_STOP: this process stops itself here");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

/// Kills this process with SIGKILL if `DBKEEP_FAULT` names `point`.
pub fn point(point: &str) {
    if std::env::var_os("DBKEEP_FAULT").is_some_and(|v| v == point) {
        tracing::warn!(point, "DBKEEP_FAULT: this process kills itself here");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// A reader that reaches the point `point` once `after` bytes have been read through it.
pub struct AfterBytes<R> {
    inner: R,
    read: u64,
    after: u64,
    point: &'static str,
}

impl<R> AfterBytes<R> {
    pub fn new(inner: R, after: u64, point: &'static str) -> Self {
        Self {
            inner,
            read: 0,
            after,
            point,
        }
    }
}

impl<R: std::io::Read> std::io::Read for AfterBytes<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = self.read;
        self.read += n as u64;
        if before <= self.after && self.read > self.after {
            point(self.point);
        }
        Ok(n)
    }
}
