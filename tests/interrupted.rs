//! Runs that meet something else halfway, made deterministic with `DBKEEP_STOP` points (the
//! process stops itself; the test acts, then sends SIGCONT): a verify whose backup a delete
//! removes meanwhile (REVIEW C4), a drill of several backups interrupted between two (C5).

use crate::common::TestEnv;
use crate::sqlite::sqlite_env;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::process::{Child, Stdio};

/// Starts `args` with `DBKEEP_STOP=point` and waits until the process stopped itself there.
fn stopped_at(env: &TestEnv, point: &str, args: &[&str]) -> Child {
    let child = env
        .command(args)
        .env("DBKEEP_STOP", point)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stat = format!("/proc/{}/stat", child.id());
    crate::common::wait_for(point, || {
        std::fs::read_to_string(&stat).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    });
    child
}

fn resume(child: Child) -> (Option<i32>, String) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// C4: a backup deleted (as retention would) between a verify's reading of its manifest and
/// of its data is reported gone, never damaged; a data file missing under a manifest that is
/// still there is damage.
#[test]
fn a_backup_deleted_during_its_verify_is_gone_not_damaged() {
    let env = sqlite_env(200);
    env.run(&["backup", "--name", "doomed"]).ok();
    env.run(&["backup", "--name", "kept"]).ok();
    for args in [
        vec!["verify", "doomed"],
        vec!["verify", "--restore", "doomed"],
    ] {
        if env.backups().iter().all(|(n, _)| n != "doomed") {
            env.run(&["backup", "--name", "doomed"]).ok();
        }
        let child = stopped_at(&env, "before-reading-data", &args);
        env.run(&["delete", "doomed", "--yes"]).ok();
        let (code, text) = resume(child);
        assert!(text.contains("gone    doomed"), "{args:?}: {text}");
        assert!(!text.contains("FAILED"), "{args:?}: {text}");
        assert_eq!(code, Some(0), "{args:?}: {text}");
    }
    // The manifest still there, its data file gone: damage, exit 1.
    let data = env
        .files()
        .into_iter()
        .find(|f| f.starts_with("kept.") && !f.contains("manifest"))
        .unwrap();
    let child = stopped_at(&env, "before-reading-data", &["verify", "kept"]);
    std::fs::remove_file(env.backup_dir().join(&data)).unwrap();
    let (code, text) = resume(child);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAILED  kept") && text.contains("missing"),
        "{text}"
    );
}

/// C5: `verify --restore --all` interrupted between two drills exits with the interruption,
/// never 0 with the drills it did.
#[test]
fn drills_interrupted_between_two_exit_nonzero() {
    let env = sqlite_env(200);
    for name in ["one", "two", "three"] {
        env.run(&["backup", "--name", name]).ok();
    }
    let child = stopped_at(&env, "between-drills", &["verify", "--restore", "--all"]);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let (code, text) = resume(child);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    // The one drill that ran is recorded; the others were never reached.
    let drilled: Vec<String> = ["one", "two", "three"]
        .into_iter()
        .filter(|n| env.manifest(n).get("verification").is_some())
        .map(str::to_owned)
        .collect();
    assert_eq!(drilled.len(), 1, "{drilled:?}");
}
