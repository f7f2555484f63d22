//! Point-in-time recovery with the repository on S3 (s3s-fs on loopback): the WAL stream
//! archives into the bucket's `wal/` prefix, and the recovering server's `restore_command`
//! fetches from the bucket, with the credentials in the 0600 settings file beside the data
//! directory, never on a command line.

use crate::common::s3::S3Server;
use crate::pitr_recovery::{Stream, archive_segment_into, recover, server_now};
use crate::postgres::{APP_PASSWORD, setup};
use std::time::Duration;

#[test]
fn recovery_to_a_point_from_an_s3_repository() {
    let Some((pg, mut env)) = setup() else { return };
    let server = S3Server::start();
    server.configure(&mut env, "pitr");
    env.set(
        "BACKUP_WAL_SPOOL",
        env.path().join("spool").display().to_string(),
    );
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    pg.sql_as(
        "app",
        "appdb",
        "CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    );
    let stream = Stream::start(&pg, &env);
    env.run(&["backup", "--physical", "--name", "base_s3"]).ok();
    pg.sql_as(
        "app",
        "appdb",
        "INSERT INTO ticks (id) SELECT g FROM generate_series(1, 100) g",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let target = server_now(&pg);
    std::thread::sleep(Duration::from_millis(2600));
    pg.sql_as(
        "app",
        "appdb",
        "INSERT INTO ticks (id) SELECT g FROM generate_series(101, 200) g",
    );
    archive_segment_into(&pg, &server.dir("pitr").join("wal"));
    stream.stop();
    let status = env.run(&["wal", "status", "--json"]);
    status.ok();
    assert!(status.stdout.contains("s3://"), "{}", status.all());

    let got = recover(
        &pg,
        &env,
        &["--to-time", &target, "--target-action", "promote"],
    );
    assert_eq!(got, "100|100");
    assert_eq!(recover(&pg, &env, &["--latest"]), "200|200");
    let d = env.run(&["verify", "--restore", "--to-time", &target]);
    d.ok();
    assert!(
        d.stdout.contains("recovery stopping before commit"),
        "{}",
        d.all()
    );
    for o in [&status, &d] {
        assert!(!o.all().contains(APP_PASSWORD), "{}", o.all());
        assert!(
            !o.all().contains(crate::common::s3::SECRET_KEY),
            "{}",
            o.all()
        );
    }
}
