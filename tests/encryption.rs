//! age encryption: standard files, keys the user holds, fail closed.

use crate::common::{TestEnv, have, require};
use crate::sqlite::{rows, sqlite_env};
use std::process::{Command, Stdio};

pub fn keygen(env: &TestEnv, file: &str) -> String {
    let o = env.run(&["keygen", "--output", file]);
    o.ok();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.path().join(file))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let public = o.stdout.trim().to_owned();
    assert!(public.starts_with("age1"), "{public}");
    public
}

#[test]
fn encrypted_sqlite_backups_open_with_age_and_need_the_right_key() {
    let mut env = sqlite_env(200);
    let db = env.path().join("app.db");
    let before = rows(&db);
    let public = keygen(&env, "key.txt");
    let _other = keygen(&env, "other.txt");
    env.run(&["keygen", "--output", "key.txt"]).code(1); // never overwrites a key
    env.set("BACKUP_ENCRYPT_RECIPIENTS", public);
    env.run(&["backup", "--name", "sec"]).ok();
    let m = env.manifest("sec");
    assert_eq!(m["encryption"], "age");
    let file = env.backup_dir().join("sec.db.gz.age");
    assert!(
        std::fs::read(&file)
            .unwrap()
            .starts_with(b"age-encryption.org/v1")
    );

    // The standard tools give the database back without dbkeep.
    if require("the age command", have("age"), "age") {
        let mut age = Command::new("age")
            .args(["-d", "-i"])
            .arg(env.path().join("key.txt"))
            .arg(&file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = env.path().join("plain.db");
        let gunzip = Command::new("gunzip")
            .stdin(age.stdout.take().unwrap())
            .stdout(std::fs::File::create(&out).unwrap())
            .status()
            .unwrap();
        assert!(age.wait().unwrap().success(), "age -d");
        assert!(gunzip.success());
        assert_eq!(rows(&out), before);
    }

    // Without a key: size and checksum only; a flipped byte is still caught.
    let o = env.run(&["verify", "sec"]);
    o.ok();
    assert!(
        o.stdout.contains("not checked without a key"),
        "{}",
        o.stdout
    );
    // Restore without a key, or with the wrong one: refused, database untouched.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM people", [])
        .unwrap();
    let emptied = rows(&db);
    let o = env.run(&["restore", "sec", "--yes"]);
    o.code(2);
    assert!(
        o.stderr.contains("encrypted") && o.stderr.contains("BACKUP_DECRYPT_IDENTITY_FILE"),
        "{}",
        o.stderr
    );
    env.set("BACKUP_DECRYPT_IDENTITY_FILE", "other.txt");
    let o = env.run(&["restore", "sec", "--yes"]);
    o.code(2);
    assert!(
        o.stderr.contains("none of the configured keys"),
        "{}",
        o.stderr
    );
    assert_eq!(rows(&db), emptied);
    // The right key: verify decrypts completely, restore brings the rows back.
    env.set("BACKUP_DECRYPT_IDENTITY_FILE", "key.txt");
    let o = env.run(&["verify", "sec"]);
    o.ok();
    assert!(
        o.stdout.contains("age decryption complete") && o.stdout.contains("integrity_check ok"),
        "{}",
        o.stdout
    );
    env.run(&["restore", "sec", "--yes"]).ok();
    assert_eq!(rows(&db), before);

    crate::common::flip_byte(&file, 0x01);
    env.set("BACKUP_DECRYPT_IDENTITY_FILE", "");
    env.run(&["verify", "sec"]).code(1);
}

#[test]
fn a_bad_recipient_writes_nothing() {
    let mut env = sqlite_env(3);
    for bad in ["age1notakey", "not-a-key", "ssh-ed25519 AAAAbroken"] {
        env.set("BACKUP_ENCRYPT_RECIPIENTS", bad);
        let o = env.run(&["backup", "--name", "x"]);
        o.code(2);
        assert!(o.stderr.contains("nothing was written"), "{}", o.stderr);
        assert!(env.files().is_empty(), "{:?}", env.files());
    }
}

#[test]
fn passphrase_encrypted_backups_round_trip() {
    let mut env = sqlite_env(50);
    let db = env.path().join("app.db");
    let before = rows(&db);
    std::fs::write(env.path().join("pass"), "correct horse battery staple\n").unwrap();
    env.set("BACKUP_ENCRYPT_PASSPHRASE_FILE", "pass");
    env.set("BACKUP_COMPRESSION", "zstd");
    env.run(&["backup", "--name", "pw"]).ok();
    assert!(env.backup_dir().join("pw.db.zst.age").exists());
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM people", [])
        .unwrap();
    env.run(&["restore", "pw", "--yes"]).ok();
    assert_eq!(rows(&db), before);

    // Public keys as well: age cannot mix them with a passphrase, so the configuration is
    // refused at start (exit 2, naming both settings), before anything is written.
    let public = keygen(&env, "key.txt");
    env.set("BACKUP_ENCRYPT_RECIPIENTS", public);
    let files = env.files();
    let o = env.run(&["backup", "--name", "mixed"]);
    o.code(2);
    assert!(
        o.stderr.contains("BACKUP_ENCRYPT_RECIPIENTS")
            && o.stderr.contains("BACKUP_ENCRYPT_PASSPHRASE_FILE"),
        "{}",
        o.stderr
    );
    assert_eq!(env.files(), files, "nothing written");
}

#[test]
fn encrypted_postgres_backup_round_trips() {
    let Some((pg, mut env)) = crate::postgres::setup() else {
        return;
    };
    let before = pg.normalized_dump("appdb");
    let public = keygen(&env, "key.txt");
    env.set("BACKUP_ENCRYPT_RECIPIENTS", public);
    env.set("BACKUP_COMPRESSION", "zstd");
    env.set("BACKUP_DECRYPT_IDENTITY_FILE", "key.txt");
    env.run(&["backup", "--name", "pgsec"]).ok();
    assert!(env.backup_dir().join("pgsec.sql.zst.age").exists());
    env.run(&["verify", "pgsec"]).ok();
    pg.sql_as(
        "app",
        "appdb",
        "DELETE FROM sales.items; DROP VIEW sales.expensive;",
    );
    env.run(&["restore", "pgsec", "--yes"]).ok();
    assert_eq!(pg.normalized_dump("appdb"), before);
}
