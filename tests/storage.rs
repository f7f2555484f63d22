//! The storage suite, written once and run against the local backend and the S3 backend (a real
//! S3 server on loopback): the same semantics on both.

use crate::common::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use dbkeep::database_url::Secret;
use dbkeep::storage::{self, S3Settings, Storage, StorageError};
use std::io::{Read, Write};
use std::time::Duration;

pub fn s3_settings(server: &S3Server) -> S3Settings {
    S3Settings {
        endpoint: Some(server.endpoint()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(Secret::new(SECRET_KEY)),
        ..s3_settings_for_parts()
    }
}

/// 5, 10, 20 MiB parts: the first from memory, the next through a temporary object that the
/// server copies in (UploadPartCopy).
fn s3_settings_for_parts() -> S3Settings {
    S3Settings {
        region: Some("us-east-1".into()),
        part_size: 5 << 20,
        max_parts: 100,
        memory_part: 5 << 20,
        ..S3Settings::default()
    }
}

/// Bytes that do not compress, reproducibly.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn keys(s: &dyn Storage) -> Vec<String> {
    s.list().unwrap().into_iter().map(|o| o.key).collect()
}

/// Everything a repository must do, the same on every backend.
fn suite(s: &dyn Storage, after_abort: &dyn Fn()) {
    assert!(keys(s).is_empty(), "a new repository is empty");
    assert!(s.stat("a.sql.gz").unwrap().is_none());
    assert!(matches!(
        s.open("a.sql.gz").err(),
        Some(StorageError::NotFound { .. })
    ));

    // Invisible until committed.
    let mut w = s.create("a.sql.gz").unwrap();
    w.write_all(b"hello").unwrap();
    assert!(s.stat("a.sql.gz").unwrap().is_none());
    w.commit().unwrap();
    assert_eq!(s.read_all("a.sql.gz").unwrap(), b"hello");
    assert_eq!(s.stat("a.sql.gz").unwrap().unwrap().size, 5);

    // More than one part on S3 (5 MiB from memory, the rest through a temporary object), written
    // in odd pieces: byte for byte, and no temporary object is left.
    let big = noise(18 * 1024 * 1024 + 12_345, 7);
    let mut w = s.create_new("big.sql.zst").unwrap();
    for piece in big.chunks(333_333) {
        w.write_all(piece).unwrap();
    }
    w.commit().unwrap();
    let mut back = Vec::new();
    s.open("big.sql.zst")
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == big, "the large object reads back byte for byte");

    // A writer dropped uncommitted leaves nothing (on S3: the upload is aborted).
    {
        let mut w = s.create("dropped.sql.gz").unwrap();
        w.write_all(&noise(11 * 1024 * 1024, 3)).unwrap();
    }
    after_abort();
    assert_eq!(keys(s), vec!["a.sql.gz", "big.sql.zst"]);

    // A conditional create never replaces; a plain one does.
    s.put_new("m.manifest.json", b"first").unwrap();
    let err = s.put_new("m.manifest.json", b"second").unwrap_err();
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
    assert_eq!(s.read_all("m.manifest.json").unwrap(), b"first");
    s.put("m.manifest.json", b"replaced").unwrap();
    assert_eq!(s.read_all("m.manifest.json").unwrap(), b"replaced");

    // Delete, twice.
    s.delete("a.sql.gz").unwrap();
    s.delete("a.sql.gz").unwrap();
    assert_eq!(keys(s), vec!["big.sql.zst", "m.manifest.json"]);

    // One lock holder at a time; the waiter is told who holds it; released on drop.
    let held = s.lock("backup one", Duration::from_secs(5)).unwrap();
    let err = s
        .lock("backup two", Duration::from_millis(600))
        .err()
        .expect("second lock");
    assert!(err.to_string().contains("backup one"), "{err}");
    drop(held);
    let _again = s.lock("backup three", Duration::from_secs(5)).unwrap();
    assert_eq!(
        keys(s),
        vec!["big.sql.zst", "m.manifest.json"],
        "the lock is not an object of the repository"
    );
}

#[test]
fn local_storage_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage::open(
        &dir.path().join("repo").display().to_string(),
        &S3Settings::default(),
        None,
    )
    .unwrap();
    suite(s.as_ref(), &|| {});
}

#[test]
fn s3_storage_passes_the_suite() {
    let server = S3Server::start();
    let s = storage::open(
        &format!("s3://{BUCKET}/suite/x"),
        &s3_settings(&server),
        Some(server.root.path()),
    )
    .unwrap();
    suite(s.as_ref(), &|| {
        assert_eq!(server.open_uploads(), 0, "the dropped upload was aborted");
    });
    assert_eq!(
        server.objects("suite/x"),
        vec!["big.sql.zst", "m.manifest.json"]
    );
}

#[test]
fn s3_errors_are_clear_and_show_no_secret() {
    let server = S3Server::start();
    let mut wrong = s3_settings(&server);
    wrong.secret_access_key = Some(Secret::new("not-the-secret-Q7"));
    let s = storage::open(&format!("s3://{BUCKET}/p"), &wrong, None).unwrap();
    let err = s.list().unwrap_err().to_string();
    assert!(err.contains("credentials"), "{err}");
    assert!(
        !err.contains("not-the-secret-Q7") && !err.contains(SECRET_KEY),
        "{err}"
    );

    let s = storage::open("s3://no-such-bucket/p", &s3_settings(&server), None).unwrap();
    let err = s.list().unwrap_err().to_string();
    assert!(err.contains("bucket"), "{err}");
    let err = s
        .lock("backup", Duration::from_secs(1))
        .err()
        .expect("no lock in a missing bucket")
        .to_string();
    assert!(err.contains("bucket"), "{err}");

    let err = storage::open("s3://bad bucket/p", &S3Settings::default(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("bucket name"), "{err}");
    let err = storage::open("gcs://b/p", &S3Settings::default(), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not built in"), "{err}");
}

#[test]
fn s3_storage_passes_the_suite_on_moto() {
    let Some(moto) = crate::common::moto::Moto::start() else {
        return;
    };
    let settings = S3Settings {
        endpoint: Some(moto.endpoint()),
        access_key_id: Some(crate::common::moto::KEY_ID.into()),
        secret_access_key: Some(Secret::new(crate::common::moto::SECRET)),
        ..s3_settings_for_parts()
    };
    let scratch = tempfile::tempdir().unwrap();
    let s = storage::open("s3://backups/suite", &settings, Some(scratch.path())).unwrap();
    suite(s.as_ref(), &|| {
        assert!(moto.open_uploads().is_empty(), "{:?}", moto.open_uploads());
    });
    // An upload left open: found (and, outside a dry run, aborted) once past the grace; moto
    // dates every upload 2010.
    moto.begin_upload("suite/left.db");
    let day = Duration::from_secs(86_400);
    assert_eq!(s.sweep_uploads(day, true).unwrap(), vec!["left.db"]);
    assert_eq!(moto.open_uploads(), vec!["suite/left.db"]);
    assert_eq!(s.sweep_uploads(day, false).unwrap(), vec!["left.db"]);
    assert!(moto.open_uploads().is_empty());
}
