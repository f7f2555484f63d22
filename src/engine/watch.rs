//! Watching a child while it works: a signal stops it, and so does a stall. A child has stalled
//! when, for the stall limit, it moved no byte (what `/proc/PID/io` says it read and wrote: a
//! psql fed a dump, a pg_restore and its workers reading the archive and writing to the server)
//! *and* its server says none of its sessions is doing work (the caller's `working` probe: a
//! long index build or foreign-key check is work; a lock wait, an idle session, a server that
//! does not answer are not). So a restore blocked behind another session's lock, a dead server or
//! a frozen client ends with a clear error instead of hanging, and a long statement is never cut.
//!
//! Every child here is killed before it is reaped, so a reused pid is never signalled.

use super::process::{self, ProcessError, Running};
use crate::signals;
use std::io::{self, Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How much a fed child gets per write.
const FEED_CHUNK: usize = 256 * 1024;
/// How often the child's byte counters are read.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Why a watched child did not succeed.
#[derive(Debug, Error)]
pub enum WatchError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("interrupted by a signal")]
    Interrupted,
    #[error("{program} made no progress for {secs} s and was stopped (BACKUP_STALL_TIMEOUT)")]
    Stalled { program: String, secs: u64 },
    #[error("reading the input: {0}")]
    Input(io::Error),
    #[error("writing to the child: {0}")]
    Output(io::Error),
}

/// When a child counts as stalled: no byte moved for `limit`, and `working` (asked only then,
/// and again each `limit` after) answers false.
pub struct Stall<'a> {
    pub limit: Duration,
    pub working: Box<dyn FnMut() -> bool + Send + 'a>,
}

impl<'a> Stall<'a> {
    /// A plain deadline on silence: nothing else can vouch for the child.
    pub fn silence(limit: Duration) -> Self {
        Stall {
            limit,
            working: Box::new(|| false),
        }
    }
}

/// How a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    Exited,
    Interrupted,
    Stalled,
}

/// Bytes that `pid` (with `group`, every process of its process group) has read and written,
/// from `/proc/PID/io`; 0 where that cannot be read.
pub fn io_bytes(pid: u32, group: bool) -> u64 {
    fn one(pid: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/io"))
            .map(|s| {
                s.lines()
                    .filter_map(|l| l.strip_prefix("rchar:").or(l.strip_prefix("wchar:")))
                    .filter_map(|v| v.trim().parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0)
    }
    let me = pid.to_string();
    if !group {
        return one(&me);
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return one(&me);
    };
    let mut total = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // "pid (comm) state ppid pgrp …": comm may hold anything, so split after its ')'.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) else {
            continue;
        };
        let pgrp = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(2));
        if pgrp == Some(me.as_str()) {
            total += one(name);
        }
    }
    total
}

/// Watches the process `pid` until `exited` says it is gone: `kill` stops it on a signal, on
/// `abort`, or on a stall.
pub fn watch(
    pid: u32,
    group: bool,
    exited: &mut dyn FnMut() -> bool,
    kill: &dyn Fn(),
    mut stall: Option<Stall<'_>>,
    abort: Option<&AtomicBool>,
) -> Watched {
    let mut seen = io_bytes(pid, group);
    let mut looked = Instant::now();
    let mut since = Instant::now();
    loop {
        if exited() {
            return Watched::Exited;
        }
        if signals::interrupted() || abort.is_some_and(|a| a.load(Ordering::Relaxed)) {
            kill();
            return Watched::Interrupted;
        }
        if let Some(stall) = stall.as_mut()
            && looked.elapsed() >= LOOK_EVERY
        {
            looked = Instant::now();
            let now = io_bytes(pid, group);
            if now != seen {
                seen = now;
                since = Instant::now();
            } else if since.elapsed() > stall.limit {
                if (stall.working)() {
                    since = Instant::now();
                } else if !exited() {
                    kill();
                    return Watched::Stalled;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Watches a [`Running`] child until it exits (it is not reaped: [`Running::wait`] follows).
pub fn watch_child(
    child: &mut Running,
    group: bool,
    stall: Option<Stall<'_>>,
    abort: Option<&AtomicBool>,
) -> Watched {
    let pid = child.pid();
    let kill = move || {
        if group {
            process::kill_group(pid);
        } else {
            process::kill_pid(pid);
        }
    };
    // `try_wait` is not used: it would reap the child before a group kill.
    let mut exited = || process::has_exited_unreaped(pid);
    watch(pid, group, &mut exited, &kill, stall, abort)
}

/// Waits for a watched child and turns how the watch ended into its result.
pub fn conclude(child: Running, watched: Watched, secs: u64) -> Result<String, WatchError> {
    let program = child.program().to_owned();
    let waited = child.wait_success();
    match watched {
        Watched::Stalled => Err(WatchError::Stalled { program, secs }),
        Watched::Interrupted => Err(WatchError::Interrupted),
        Watched::Exited => Ok(waited?),
    }
}

/// Runs `cmd` to completion under watch, returning its stdout; fails with stderr unless it
/// exited 0.
pub fn output(
    mut cmd: Command,
    hint: &'static str,
    secrets: Vec<String>,
    stall: Option<Stall<'_>>,
) -> Result<String, WatchError> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut child = process::spawn(cmd, hint, secrets)?;
    let secs = stall.as_ref().map_or(0, |s| s.limit.as_secs());
    let stdout = child.take_stdout();
    let program = child.program().to_owned();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        match stdout {
            Some(mut so) => so.read_to_string(&mut out).map(|_| out),
            None => Ok(out),
        }
    });
    let watched = watch_child(&mut child, false, stall, None);
    let result = conclude(child, watched, secs);
    let out = reader
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the reading thread panicked")));
    let stdout = result.and_then(|_| {
        out.map_err(|source| WatchError::Process(ProcessError::Output { program, source }))
    })?;
    Ok(stdout)
}

/// What watches the bytes [`pump`] streams, on its reader thread.
pub trait Look: Send + 'static {
    fn see(&mut self, chunk: &[u8]);
}

/// Streams `child`'s stdout into `out`: a reader thread reads it (and shows each chunk to
/// `look`, a scanner say) while this thread writes (compresses), through a bounded queue so
/// memory stays flat. Stops, killing the child, on a signal, on a failed write, and when no
/// byte came for `stall.limit` and `stall.working` does not vouch for the child. Returns the
/// outcome and `look` once the reader is done (`None` when it was left behind: a grandchild
/// holding the pipe may delay its end). The child is not waited for.
pub fn pump<L: Look>(
    child: &mut Running,
    mut look: L,
    out: &mut dyn Write,
    mut stall: Stall<'_>,
) -> (Result<(), WatchError>, Option<L>) {
    // A pipe's capacity: 256 KiB hand-overs measured slower and 12 MB larger (zstd's workers
    // then hold more input).
    const CHUNK: usize = 64 * 1024;
    const BUFFERS: usize = 16;
    const PIPE: i32 = 1 << 20;
    let program = child.program().to_owned();
    let stdout = child.take_stdout();
    if let Some(out) = &stdout {
        // A larger pipe: the dump tool keeps writing while this side scans a buffer (1 MiB,
        // the unprivileged maximum; a refusal leaves the default).
        let _ = nix::fcntl::fcntl(out, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE));
    }
    // Full buffers go to the writer with their length; empty ones come back to be filled
    // again: no buffer is allocated or zeroed per read, and short reads are gathered until a
    // buffer is full (fewer wake-ups of the writer).
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(BUFFERS);
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    // When the reader last got a byte (ms from `start`): a buffer still filling is progress.
    let start = Instant::now();
    let read_at = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let read_at_reader = read_at.clone();
    let reader = std::thread::spawn(move || {
        let Some(mut stdout) = stdout else {
            return look;
        };
        let mut made = 0;
        loop {
            let mut buf = match back_rx.try_recv() {
                Ok(b) => b,
                Err(_) if made < BUFFERS + 2 => {
                    made += 1;
                    vec![0u8; CHUNK]
                }
                Err(_) => match back_rx.recv() {
                    Ok(b) => b,
                    Err(_) => break,
                },
            };
            let mut n = 0;
            let mut failed = None;
            let mut ended = false;
            while n < CHUNK {
                match stdout.read(&mut buf[n..]) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(k) => {
                        n += k;
                        let ms = start.elapsed().as_millis() as u64;
                        read_at_reader.store(ms, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if n > 0 {
                look.see(&buf[..n]);
                if tx.send(Ok((buf, n))).is_err() {
                    break;
                }
            }
            if let Some(e) = failed {
                let _ = tx.send(Err(e));
                break;
            }
            if ended {
                break;
            }
        }
        look
    });
    let result = (|| {
        let mut last = Instant::now();
        loop {
            if signals::interrupted() {
                return Err(WatchError::Interrupted);
            }
            let read =
                start + Duration::from_millis(read_at.load(std::sync::atomic::Ordering::Relaxed));
            last = last.max(read);
            if last.elapsed() > stall.limit {
                if (stall.working)() {
                    last = Instant::now();
                } else {
                    return Err(WatchError::Stalled {
                        program: program.clone(),
                        secs: stall.limit.as_secs(),
                    });
                }
            }
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok((chunk, n))) => {
                    last = Instant::now();
                    out.write_all(&chunk[..n]).map_err(WatchError::Output)?;
                    let _ = back_tx.send(chunk);
                }
                Ok(Err(source)) => {
                    return Err(WatchError::Process(ProcessError::Output {
                        program: program.clone(),
                        source,
                    }));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    })();
    drop(rx);
    if result.is_err() {
        child.kill();
        return (result, None);
    }
    (result, reader.join().ok())
}

/// Writes `input` to the child's stdin and waits for it to succeed, under watch: the child's
/// reading of its input is its progress, and once the input is fed its last statements (an
/// index build) are covered by `stall`'s probe.
pub fn feed_child(
    mut child: Running,
    input: &mut dyn Read,
    stall: Option<Stall<'_>>,
) -> Result<(), WatchError> {
    let mut stdin = child.take_stdin();
    let secs = stall.as_ref().map_or(0, |s| s.limit.as_secs());
    let abort = AtomicBool::new(false);
    let (fed, watched) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch_child(&mut child, false, stall, Some(&abort)));
        let fed: Result<(), WatchError> = (|| {
            let Some(stdin) = stdin.as_mut() else {
                return Ok(());
            };
            let mut buf = vec![0u8; FEED_CHUNK];
            loop {
                if signals::interrupted() {
                    return Err(WatchError::Interrupted);
                }
                let n = match input.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(WatchError::Input(e)),
                };
                match stdin.write_all(&buf[..n]) {
                    Ok(()) => {}
                    // The child stopped reading: its exit status and stderr say why.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(WatchError::Output(e)),
                }
            }
        })();
        // On a failed input the child is killed before its stdin closes: psql runs what it
        // holds of an unfinished statement when its input ends.
        if fed.is_err() {
            abort.store(true, Ordering::Relaxed);
        } else {
            drop(stdin.take());
        }
        let watched = watcher.join().unwrap_or(Watched::Interrupted);
        drop(stdin.take());
        (fed, watched)
    });
    let concluded = conclude(child, watched, secs);
    if watched == Watched::Stalled {
        return concluded.map(drop);
    }
    if signals::interrupted() {
        return Err(WatchError::Interrupted);
    }
    fed?;
    concluded?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(usize);
    impl Look for Count {
        fn see(&mut self, chunk: &[u8]) {
            self.0 += chunk.len();
        }
    }

    #[test]
    fn a_child_that_trickles_is_not_stalled() {
        // Two bytes every half second for 3 s, far below a buffer's 64 KiB, under a stall limit
        // of 2 s: every byte read is progress, though no buffer fills before the end.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "for i in 1 2 3 4 5 6; do echo x; sleep 0.5; done"])
            .stdout(std::process::Stdio::piped());
        let mut child = process::spawn(cmd, "coreutils", vec![]).unwrap();
        let mut out = Vec::new();
        let (r, look) = pump(
            &mut child,
            Count(0),
            &mut out,
            Stall::silence(Duration::from_secs(2)),
        );
        r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, b"x\n".repeat(6));
        assert_eq!(look.map(|l| l.0), Some(12));
    }

    #[test]
    fn a_silent_child_is_stopped_and_a_busy_one_is_not() {
        // Silent: sleep reads and writes nothing.
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let err = output(
            cmd,
            "coreutils",
            vec![],
            Some(Stall::silence(Duration::from_secs(1))),
        )
        .expect_err("a silent child is stopped");
        assert!(matches!(err, WatchError::Stalled { .. }), "{err}");
        assert!(
            err.to_string().contains("sleep made no progress for 1 s"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));

        // Silent too, but its "server" vouches for it: it runs to the end.
        let mut cmd = Command::new("sleep");
        cmd.arg("2");
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = asked.clone();
        let stall = Stall {
            limit: Duration::from_millis(500),
            working: Box::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
                true
            }),
        };
        output(cmd, "coreutils", vec![], Some(stall)).expect("vouched for");
        assert!(asked.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn group_counters_cover_the_children() {
        use std::os::unix::process::CommandExt;
        // The shell itself moves next to nothing; the cat it started, a lot.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat /dev/zero > /dev/null; :"])
            .process_group(0);
        let mut child = cmd.spawn().expect("sh");
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(500));
        let alone = io_bytes(pid, false);
        let group = io_bytes(pid, true);
        process::kill_group(pid);
        let _ = child.wait();
        assert!(group > alone + 1_000_000, "group {group}, shell {alone}");
    }
}
