//! Scheduled base backups with drills: a `[[schedule]]` of `kind = "physical"` with
//! `drill = "after-backup"` takes base backups while `dbkeep wal stream` runs; each one is
//! drilled, and from the second on a recovery drill replays the WAL from the previous base
//! backup to the position the new one started at, recorded in the previous one's manifest.

use crate::pitr_recovery::Stream;
use crate::postgres::setup;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn a_physical_schedule_drills_each_base_backup_and_the_wal_between_them() {
    let Some((pg, env)) = setup() else { return };
    pg.sql("postgres", "ALTER ROLE app REPLICATION");
    pg.sql_as(
        "app",
        "appdb",
        "CREATE TABLE ticks (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    );
    std::fs::write(
        env.path().join("dbkeep.toml"),
        "[[schedule]]\nname = \"base\"\ncron = \"*/10 * * * * *\"\nkind = \"physical\"\ndrill = \"after-backup\"\n",
    )
    .unwrap();
    let o = env.run(&["schedule", "print", "--systemd"]);
    o.ok();
    assert!(
        o.stdout.contains("BACKUP_PG_FORMAT=physical"),
        "{}",
        o.stdout
    );
    let stream = Stream::start(&pg, &env);
    let mut scheduler = env
        .command(&["schedule", "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Commits the whole time; until a base backup's recovery drill is recorded.
    let deadline = Instant::now() + Duration::from_secs(240);
    let drilled = loop {
        pg.sql_as("app", "appdb", "INSERT INTO ticks DEFAULT VALUES");
        let found = env
            .backups()
            .into_iter()
            .filter(|(n, ok)| *ok && n.starts_with("base_"))
            .map(|(n, _)| env.manifest(&n))
            .find(|m| !m["pitr_verification"].is_null());
        if let Some(m) = found {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery drill after four minutes: {:?}\n{}",
            env.backups(),
            env.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(scheduler.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(scheduler.wait().unwrap().success());
    stream.stop();

    let v = &drilled["pitr_verification"];
    assert_eq!(v["outcome"], "passed", "{drilled}");
    assert!(
        v["checks"]
            .to_string()
            .contains("WAL replayed from the archive"),
        "{v}"
    );
    // The target is the start of a later base backup, each of which had its own drill.
    let bases: Vec<serde_json::Value> = env
        .backups()
        .into_iter()
        .filter(|(n, ok)| *ok && n.starts_with("base_"))
        .map(|(n, _)| env.manifest(&n))
        .collect();
    assert!(bases.len() >= 2, "{bases:?}");
    let later = bases
        .iter()
        .find(|m| m["base_backup"]["start_lsn"] == v["target"])
        .unwrap_or_else(|| panic!("no base backup started at the target {v}: {bases:?}"));
    assert!(later["timestamp"].as_str() > drilled["timestamp"].as_str());
    assert_eq!(later["verification"]["outcome"], "passed", "{later}");
}
