//! Child processes (pg_dump, psql, pg_restore): argv vectors, never a shell; stderr drained on its own thread
//! so a chatty child cannot deadlock, and kept (its tail) for the error message; secrets scrubbed
//! from anything the child printed before it reaches an error.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use thiserror::Error;

/// How much of a child's stderr is kept for the error message.
const STDERR_KEEP: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("{program} was not found ({looked}): {hint}")]
    NotFound {
        program: String,
        looked: String,
        hint: &'static str,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("reading the output of {program}: {source}")]
    Output {
        program: String,
        source: std::io::Error,
    },
}

/// Where to find a tool: in `bindir` when given, else on `PATH`.
pub fn program_path(bindir: Option<&Path>, name: &str) -> PathBuf {
    match bindir {
        Some(d) => d.join(name),
        None => PathBuf::from(name),
    }
}

/// Variables a child keeps from dbkeep's environment; everything else (DATABASE_URL, API
/// tokens, cloud credentials, stray `PG*` settings) is left out.
const KEPT_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

/// A command for `program` with a clean environment: [`KEPT_ENV`] and the `LC_*` locale variables.
pub fn clean_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for (key, value) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if KEPT_ENV.contains(&k.as_ref()) || k.starts_with("LC_") {
            cmd.env(&key, &value);
        }
    }
    cmd
}

/// A running child whose stderr is being collected. Dropped before it was waited for (an early
/// return on an error), it is killed and reaped: no zombie is left in a long-lived server.
pub struct Running {
    child: Child,
    program: String,
    stderr: Option<JoinHandle<Vec<u8>>>,
    secrets: Vec<String>,
    waited: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `cmd` with stderr captured. `hint` says what to install when the program is missing;
/// `secrets` are scrubbed from its stderr.
pub fn spawn(
    mut cmd: Command,
    hint: &'static str,
    secrets: Vec<String>,
) -> Result<Running, ProcessError> {
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            let p = Path::new(cmd.get_program());
            ProcessError::NotFound {
                program: program.clone(),
                looked: if p.components().count() > 1 {
                    format!("looked for {}", p.display())
                } else {
                    "looked on PATH; BACKUP_PG_BINDIR names another directory".into()
                },
                hint,
            }
        } else {
            ProcessError::Spawn {
                program: program.clone(),
                source,
            }
        }
    })?;
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut kept: Vec<u8> = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > 2 * STDERR_KEEP {
                            kept.drain(..kept.len() - STDERR_KEEP);
                        }
                    }
                }
            }
            kept
        })
    });
    Ok(Running {
        child,
        program,
        stderr,
        secrets,
        waited: false,
    })
}

impl Running {
    pub fn program(&self) -> &str {
        &self.program
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child has exited (it is reaped; [`Running::wait`] still gives its status).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the child (it may already have exited).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the child; returns its status and (scrubbed) stderr.
    pub fn wait(mut self) -> Result<(ExitStatus, String), ProcessError> {
        let status = self.child.wait().map_err(|source| ProcessError::Output {
            program: self.program.clone(),
            source,
        })?;
        self.waited = true;
        let raw = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok((status, scrub(&String::from_utf8_lossy(&raw), &self.secrets)))
    }

    /// Waits for the child and fails unless it exited 0; returns its stderr.
    pub fn wait_success(self) -> Result<String, ProcessError> {
        let program = self.program.clone();
        let (status, stderr) = self.wait()?;
        if status.success() {
            Ok(stderr)
        } else {
            Err(ProcessError::Failed {
                program,
                status: describe(status),
                stderr: last_lines(&stderr, 30),
            })
        }
    }
}

/// Sends SIGKILL to `pid` (a child we started and have not yet waited for).
pub fn kill_pid(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Sends SIGKILL to the process group `pgid` (a child started with `process_group(0)` and not
/// yet waited for, and everything it started).
pub fn kill_group(pgid: u32) {
    if let Ok(pid) = i32::try_from(pgid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

/// The last `n` non-empty lines of `text`, joined with " | " ("no error output" when empty).
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "no error output".into();
    }
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Replaces each secret (and its percent-encoded form) in `text` with `***`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), "***");
        let encoded = percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
        out = out.replace(&encoded, "***");
    }
    out
}

/// Runs `cmd` to completion, returning its stdout; fails with stderr unless it exited 0.
pub fn output(
    mut cmd: Command,
    hint: &'static str,
    secrets: Vec<String>,
) -> Result<String, ProcessError> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut running = spawn(cmd, hint, secrets)?;
    let mut out = String::new();
    if let Some(mut so) = running.take_stdout() {
        let program = running.program().to_owned();
        so.read_to_string(&mut out)
            .map_err(|source| ProcessError::Output { program, source })?;
    }
    running.wait_success()?;
    Ok(out)
}

/// Whether our child `pid` has exited, without reaping it (so that it, or its process group, may
/// still be signalled safely until [`Running::wait`]).
pub fn has_exited_unreaped(pid: u32) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(nix::unistd::Pid::from_raw(raw)), flags) {
        Ok(WaitStatus::StillAlive) => false,
        Err(nix::errno::Errno::EINTR) => false,
        // Exited, or not ours to wait for any more (already reaped).
        _ => true,
    }
}

/// This machine in the names of the databases a restore or drill makes: 8 hex digits of its
/// host name's SHA-256, so that recovery on another host leaves them alone.
pub fn host_tag() -> String {
    use sha2::Digest;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(host.as_bytes())[..4])
}

/// Whether the process `pid` of this machine is provably gone: only "no such process" (ESRCH)
/// says so; a process of another user (EPERM) is alive. The one pid check of dbkeep.
pub fn process_gone(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| {
        pid > 0
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// REVIEW D5: a child dropped before it was waited for (an early return) is killed and
    /// reaped: no zombie, no orphan, in a long-lived server.
    #[test]
    fn a_dropped_child_is_killed_and_reaped() {
        let mut cmd = Command::new("sleep");
        cmd.arg("300");
        let running = spawn(cmd, "coreutils", vec![]).expect("sleep");
        let pid = running.pid();
        assert!(!process_gone(pid));
        drop(running);
        // Reaped: the pid no longer exists at all (a zombie would still answer kill(pid, 0)).
        assert!(
            process_gone(pid),
            "pid {pid} is left as a zombie or still runs"
        );
    }

    #[test]
    fn scrub_removes_plain_and_encoded_secrets() {
        let s = scrub("pw p@ss and p%40ss", &["p@ss".into()]);
        assert_eq!(s, "pw *** and ***");
    }

    #[test]
    fn failure_carries_stderr_tail() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo first >&2; echo 'bad thing hunter2' >&2; exit 3"]);
        let err = output(cmd, "", vec!["hunter2".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exit code 3") && err.contains("bad thing ***"),
            "{err}"
        );
    }

    #[test]
    fn missing_program_names_the_package() {
        let cmd = Command::new("/nonexistent/pg_dump");
        let err = output(cmd, "install postgresql-client", vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("pg_dump was not found") && err.contains("postgresql-client"));
    }
}
