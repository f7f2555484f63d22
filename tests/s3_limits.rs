//! Object storage that withholds something: write-once credentials (no delete, no listing of
//! multipart uploads), and a service that ignores conditional writes.

use crate::common::TestEnv;
use crate::common::s3::{BUCKET, S3Server, WRITE_ONCE_ACCESS_KEY, WRITE_ONCE_SECRET_KEY};
use crate::sqlite::sqlite_env;

/// Points `env` at `s3://BUCKET/prefix` on `server` with the write-once credentials.
fn write_once(env: &mut TestEnv, server: &S3Server, prefix: &str) {
    crate::common::s3::point_at(
        env,
        &format!("s3://{BUCKET}/{prefix}"),
        &server.endpoint(),
        WRITE_ONCE_ACCESS_KEY,
        WRITE_ONCE_SECRET_KEY,
    );
}

/// REVIEW D9 and C1: under write-once credentials a stale temp object that cannot be deleted
/// never stops a backup (a warning), and a `prune` whose sweep of incomplete uploads is denied
/// exits 1 naming it, with and without `--dry-run` (the two modes agree).
#[test]
fn write_once_credentials_never_block_a_backup_and_a_denied_sweep_fails_prune() {
    let server = S3Server::start();
    let mut env = sqlite_env(50);
    write_once(&mut env, &server, "worm");
    env.run(&["backup", "--name", "first"]).ok();
    // A temp object of a dead run, two days old: stale, and not deletable with these keys.
    let stale = server.dir("worm").join(".dbkeep-tmp-999999999-0-x.db.gz");
    std::fs::write(&stale, b"left by a killed run").unwrap();
    crate::common::two_days_old(&stale);
    let o = env.run(&["backup", "--name", "second"]);
    o.ok();
    assert!(
        o.all().contains("could not remove the temporary files"),
        "{}",
        o.all()
    );
    assert!(stale.exists());
    env.run(&["verify", "second"]).ok();
    for args in [vec!["prune", "--dry-run"], vec!["prune"]] {
        let o = env.run(&args);
        o.code(1);
        assert!(
            o.all()
                .contains("write-once credentials may not delete or list uploads"),
            "{args:?}: {}",
            o.all()
        );
    }
    assert_eq!(env.backups().len(), 2);
}

/// REVIEW A3 (the probe): a service that ignores conditional writes is refused before anything
/// is taken, with an error that names it; nothing is left there but the record of the failed
/// attempt (the probe's own object aside).
#[test]
fn a_service_that_ignores_conditional_writes_is_refused() {
    let server = S3Server::start_ignoring_conditions();
    let mut env = sqlite_env(50);
    server.configure(&mut env, "lax");
    let o = env.run(&["backup", "--name", "never"]);
    o.code(2);
    let all = o.all();
    assert!(all.contains("conditional writes"), "{all}");
    assert!(all.contains(&server.endpoint()), "names the service: {all}");
    assert!(
        server
            .objects("lax")
            .iter()
            .all(|k| k.ends_with(".dbkeep-probe") || k.ends_with("never.manifest.failed.json")),
        "{:?}",
        server.objects("lax")
    );
}

/// REVIEW A6: an offsite copy under write-once credentials (every delete denied) works; data
/// left there by a copy that died is never deleted, nor reused unless it is the same bytes; a
/// `--replace` reaches the copy; a copy manifest that cannot be read is never taken for a
/// missing one (its data stays).
#[test]
fn copies_never_delete_in_the_destination() {
    use crate::common::s3::{WRITE_ONCE_ACCESS_KEY, WRITE_ONCE_SECRET_KEY};
    let server = S3Server::start();
    let mut env = sqlite_env(50);
    let offsite = format!("s3://{BUCKET}/worm");
    env.set("BACKUP_COPY_TO", offsite.as_str());
    env.set("AWS_ENDPOINT_URL", server.endpoint());
    env.set("AWS_ACCESS_KEY_ID", WRITE_ONCE_ACCESS_KEY);
    env.set("AWS_SECRET_ACCESS_KEY", WRITE_ONCE_SECRET_KEY);
    env.set("AWS_REGION", "us-east-1");
    let there = server.dir("worm");
    env.run(&["backup", "--name", "w_20240101"]).ok();
    assert!(there.join("w_20240101.manifest.json").exists());

    // Data of a copy that died before its manifest (here: other bytes) stays as it is.
    std::fs::write(there.join("w_20240102.db.gz"), b"an earlier, partial copy").unwrap();
    let o = env.run(&["backup", "--name", "w_20240102"]);
    o.ok();
    assert_eq!(
        std::fs::read(there.join("w_20240102.db.gz")).unwrap(),
        b"an earlier, partial copy"
    );
    let offsite_env = |args: &[&str]| env.run_with(&[("BACKUP_DIR", offsite.as_str())], args);
    offsite_env(&["verify", "w_20240102"]).ok();

    // A --replace at the primary reaches the copy.
    let o = env.run(&["backup", "--name", "w_20240101", "--replace"]);
    o.ok();
    let sha = |dir: &std::path::Path| {
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("w_20240101.manifest.json")).unwrap(),
        )
        .unwrap();
        m["sha256"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        sha(&there),
        sha(&env.backup_dir()),
        "the copy is the replacement"
    );
    offsite_env(&["verify", "w_20240101"]).ok();

    // A copy manifest that cannot be read: the copy fails, and nothing there is deleted.
    let before = server.objects("worm");
    std::fs::write(there.join("w_20240102.manifest.json"), b"{ not json").unwrap();
    let o = env.run(&["copy", "w_20240102", "--to", &offsite]);
    o.code(1);
    assert!(o.all().contains("w_20240102.manifest.json"), "{}", o.all());
    assert_eq!(server.objects("worm"), before);
}

/// REVIEW D10: on object storage a temp object (a long copy's spilled part) is stale only once
/// it is a day old, whoever named it: a young one survives a backup's tidy-up, an old one goes.
#[test]
fn s3_temp_objects_are_stale_after_a_day_not_minutes() {
    let server = S3Server::start();
    let mut env = sqlite_env(20);
    server.configure(&mut env, "tmp");
    env.run(&["backup", "--name", "one"]).ok();
    // Named by a process that no longer exists, but young: another host's copy may own it.
    let temp = server.dir("tmp").join(".dbkeep-tmp-999999999-0-part.bin");
    std::fs::write(&temp, b"a spilled part").unwrap();
    env.run(&["backup", "--name", "two"]).ok();
    assert!(temp.exists(), "a young temp object is kept");
    crate::common::two_days_old(&temp);
    env.run(&["backup", "--name", "three"]).ok();
    assert!(!temp.exists(), "a day-old temp object is removed");
}
