//! The bad-input suite, part one: property tests of every parser that takes what a user (or an
//! attacker with write access to the repository) hands dbkeep — the database URL, backup names
//! and series, manifests, the config file and the environment. For each: no panic, and every
//! rejected input gets an error that names the problem, without showing a secret.

use dbkeep::catalog;
use dbkeep::config::{Overrides, Settings};
use dbkeep::database_url::DatabaseUrl;
use dbkeep::naming::{self, BackupName, MAX_NAME_LEN};
use dbkeep::storage::{LocalStorage, Storage};
use proptest::prelude::*;
use std::collections::HashMap;

/// Cases per property (PROPTEST_CASES raises it for a longer run).
const CASES: u32 = 1500;
/// A password no error may show.
const SECRET: &str = "S3cr3tPw";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Strings that look like URLs: a known or odd scheme, then anything.
fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        Just("postgresql://"),
        Just("postgres://"),
        Just("postgresql+psycopg2://"),
        Just("sqlite:///"),
        Just("sqlite:////"),
        Just("mysql://"),
        Just(""),
    ];
    (scheme, ".{0,80}").prop_map(|(s, rest)| format!("{s}{rest}"))
}

/// URLs with the secret as the password and a hostile rest.
fn url_with_secret() -> impl Strategy<Value = String> {
    (
        "[a-z]{0,8}",
        "[a-z0-9.:\\[\\]-]{0,20}",
        "[ -~]{0,30}",
        "[ -~]{0,30}",
    )
        .prop_map(|(user, host, path, query)| {
            format!("postgresql://{user}:{SECRET}@{host}/{path}?{query}")
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn database_urls_never_panic_and_errors_name_the_problem(input in prop_oneof![url_like(), ".{0,120}"]) {
        if let Err(e) = DatabaseUrl::parse(&input) {
            let text = e.to_string();
            prop_assert!(text.contains("DATABASE_URL"), "{text}");
        }
    }

    #[test]
    fn database_url_errors_and_displays_never_show_the_password(input in url_with_secret()) {
        match DatabaseUrl::parse(&input) {
            Err(e) => prop_assert!(!e.to_string().contains(SECRET), "{e}"),
            Ok(url) => {
                prop_assert!(!url.to_string().contains(SECRET), "{url}");
                prop_assert!(!format!("{url:?}").contains(SECRET), "{url:?}");
            }
        }
    }

    #[test]
    fn names_are_safe_file_names_or_named_errors(input in prop_oneof![".{0,200}", "[a-z0-9._/-]{0,40}", "[A-Za-z0-9][A-Za-z0-9._-]{0,140}"]) {
        match BackupName::parse(&input) {
            Ok(name) => {
                let s = name.as_str();
                prop_assert!(!s.is_empty() && s.chars().count() <= MAX_NAME_LEN);
                prop_assert!(s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()));
                prop_assert!(!s.contains('/') && !s.contains('\\') && !s.contains('\0'));
                // The series derived from it is itself a valid series.
                let series = naming::derive_series(&name);
                prop_assert!(naming::parse_series(&series).is_ok(), "{series:?} from {s:?}");
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.contains("backup name"), "{text}");
                // A hostile name is shown shortened, never whole.
                prop_assert!(text.chars().count() < 400, "{text}");
            }
        }
    }

    #[test]
    fn series_are_checked_like_names(input in ".{0,200}") {
        if let Err(e) = naming::parse_series(&input) {
            prop_assert!(e.to_string().contains("series"), "{e}");
        }
    }

    #[test]
    fn damaged_manifests_are_rejected_by_key_never_a_panic(edits in proptest::collection::vec((0usize..2000, any::<u8>()), 0..8), cut in 0usize..2000, raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        let key = "nightly.manifest.json";
        // A valid manifest, damaged by byte edits and a cut; and plain noise.
        let mut bytes = VALID_MANIFEST.as_bytes().to_vec();
        for (at, b) in &edits {
            let i = at % bytes.len();
            bytes[i] = *b;
        }
        bytes.truncate(cut.max(1));
        for candidate in [bytes, raw] {
            storage.put(key, &candidate).unwrap();
            match catalog::read_manifest(&storage, key) {
                Ok(m) => prop_assert_eq!(m.backup_name, "nightly"),
                Err(e) => {
                    let text = e.to_string();
                    prop_assert!(text.contains(key), "{text}");
                }
            }
        }
    }

    #[test]
    fn config_files_never_panic_and_never_show_a_secret(lines in proptest::collection::vec(config_line(), 0..6)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dbkeep.toml");
        std::fs::write(&path, lines.join("\n")).unwrap();
        if let Err(e) = Settings::load(Some(&path), &|_| None, &Overrides::default()) {
            let text = e.to_string();
            prop_assert!(!text.is_empty());
            prop_assert!(!text.contains(SECRET), "{text}");
        }
    }

    #[test]
    fn environment_values_never_panic_and_errors_name_the_variable(values in proptest::collection::vec((env_key(), ".{0,40}"), 0..6)) {
        let env: HashMap<String, String> = values.into_iter().collect();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let get = |k: &str| env.get(k).cloned();
        // No file: only the environment.
        let _ = std::fs::remove_file(&missing);
        if let Err(e) = Settings::load(None, &get, &Overrides::default()) {
            let text = e.to_string();
            prop_assert!(
                env.keys().any(|k| text.contains(k.as_str())),
                "the error names a variable that was set: {text} ({env:?})"
            );
        }
    }
}

/// A line of a config file: a known key with a good, bad or hostile value, or noise.
fn config_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("backup_dir"),
        Just("backup_retention_days"),
        Just("backup_compress"),
        Just("backup_compression"),
        Just("backup_s3_secret_access_key"),
        Just("database_url"),
        Just("backup_drill"),
        Just("unknown_key"),
    ];
    let value = prop_oneof![
        Just(format!("\"{SECRET}\"")),
        Just(format!("\"{SECRET}")),
        Just(SECRET.to_owned()),
        Just(format!("\"postgresql://u:{SECRET}@h/db\"")),
        Just("7".to_owned()),
        Just("-1".to_owned()),
        Just("true".to_owned()),
        "[ -~]{0,20}",
    ];
    prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "[ -~]{0,40}",
        1 => Just("[[copy_to]]".to_owned()),
    ]
}

fn env_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("BACKUP_RETENTION_DAYS"),
        Just("BACKUP_KEEP_MIN"),
        Just("BACKUP_COMPRESS"),
        Just("BACKUP_COMPRESSION"),
        Just("BACKUP_COMPRESS_LEVEL"),
        Just("BACKUP_PG_FORMAT"),
        Just("BACKUP_DRILL"),
        Just("BACKUP_ROW_COUNTS"),
        Just("BACKUP_S3_MAX_PARTS"),
        Just("BACKUP_LOCK_TIMEOUT"),
        Just("DBKEEP_RATE_LIMITS"),
    ]
    .prop_map(str::to_owned)
}

const VALID_MANIFEST: &str = r#"{
  "backup_name": "nightly",
  "file_path": "./backups/nightly.sql.gz",
  "file_size": 1234,
  "compressed": true,
  "database_type": "postgresql",
  "timestamp": "2024-01-15T10:30:00Z",
  "duration": 1.5,
  "success": true,
  "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
  "compression": "gzip",
  "encryption": "none",
  "pg_format": "sql",
  "data_file": "nightly.sql.gz",
  "series": "nightly",
  "database_name": "app",
  "database_host": "localhost:5432",
  "server_version": "15.18",
  "tool_version": "pg_dump 15.18",
  "row_counts": {"public.t": 3},
  "retention_days": 7,
  "keep_min": 1,
  "finished_at": "2024-01-15T10:30:02Z",
  "dbkeep_version": "0.1.0",
  "manifest_version": 1
}"#;
