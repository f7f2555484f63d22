//! Reading a file while a child writes it: pg_basebackup cannot stream WAL into a tar on
//! stdout, so it writes `base.tar` into a spool directory and dbkeep reads it as it grows,
//! punching out what it has read (the spool holds the unread tail, not the whole database).
//! The end of the file is where the child has exited and nothing more is left to read. A
//! signal or a stall (the file and the child's I/O both still for the stall limit) kills the
//! child and fails the read.

use crate::engine::process::Running;
use crate::engine::watch;
use crate::signals;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// How much is read before the spool's read part is punched out.
const PUNCH_EVERY: u64 = 8 << 20;
/// How long a read waits for the file to grow before it looks again.
const POLL: Duration = Duration::from_millis(5);

/// Why a follow ended before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Interrupted,
    Stalled,
}

/// A file that `child` is writing, read to its end.
pub struct Follow<'a> {
    file: File,
    child: &'a mut Running,
    read: u64,
    punched: u64,
    exited: bool,
    stall_limit: Duration,
    quiet_since: Instant,
    io_seen: u64,
    /// Set when the follow killed the child: the read's error is this.
    pub stopped: Option<Stopped>,
}

impl<'a> Follow<'a> {
    pub fn new(file: File, child: &'a mut Running, stall_limit: Duration) -> Self {
        let io_seen = watch::io_bytes(child.pid(), false);
        Self {
            file,
            child,
            read: 0,
            punched: 0,
            exited: false,
            stall_limit,
            quiet_since: Instant::now(),
            io_seen,
            stopped: None,
        }
    }

    fn stop(&mut self, why: Stopped) -> io::Error {
        self.child.kill();
        self.stopped = Some(why);
        io::Error::other(match why {
            Stopped::Interrupted => "interrupted by a signal",
            Stopped::Stalled => "pg_basebackup made no progress",
        })
    }

    /// Gives the read part of the file back to the file system (where it can: a file system
    /// without hole punching keeps it until the spool is removed).
    fn punch(&mut self) {
        let upto = self.read - self.read % PUNCH_EVERY;
        if upto > self.punched {
            let flags = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
            let (from, len) = (self.punched as i64, (upto - self.punched) as i64);
            if nix::fcntl::fallocate(self.file.as_fd(), flags, from, len).is_ok() {
                self.punched = upto;
            } else {
                // Not supported here: stop trying.
                self.punched = u64::MAX;
            }
        }
    }
}

impl Read for Follow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Also while data flows: a slow sink never hides a signal.
            if signals::interrupted() {
                return Err(self.stop(Stopped::Interrupted));
            }
            let n = self.file.read(buf)?;
            if n > 0 {
                self.read += n as u64;
                if self.punched != u64::MAX {
                    self.punch();
                }
                self.quiet_since = Instant::now();
                return Ok(n);
            }
            if self.exited || buf.is_empty() {
                return Ok(0);
            }
            if self.child.has_exited() {
                // Whatever it wrote before it exited is in the file now: one more read.
                self.exited = true;
                continue;
            }
            let io = watch::io_bytes(self.child.pid(), false);
            if io != self.io_seen {
                self.io_seen = io;
                self.quiet_since = Instant::now();
            } else if self.quiet_since.elapsed() > self.stall_limit {
                return Err(self.stop(Stopped::Stalled));
            }
            std::thread::sleep(POLL);
        }
    }
}
