//! The configuration's unit tests: layers, precedence, and errors that name the key.

use super::*;
use std::collections::HashMap;

/// The names of every configured database.
fn database_names(s: &Settings) -> Vec<&str> {
    s.all_databases()
        .iter()
        .map(|d| d.database.as_str())
        .collect()
}

fn load(file: Option<&str>, env: &[(&str, &str)], o: Overrides) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    if let Some(text) = file {
        std::fs::write(&path, text).unwrap();
    }
    let map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load(file.map(|_| path.as_path()), &|k| map.get(k).cloned(), &o)
}

#[test]
fn s3_settings_take_the_aws_variables_and_copy_targets_inherit_them() {
    let file = "[[copy_to]]\nurl = \"s3://other/x/\"\ns3_endpoint = \"http://site-b:9000\"\n\n[[copy_to]]\nurl = \"/mnt/usb\"\ns3_access_key_id = \"own\"\ns3_secret_access_key = \"own-secret\"\n";
    let s = load(
        Some(file),
        &[
            ("BACKUP_DIR", "s3://b/p"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_REGION", "eu-west-3"),
            ("AWS_ACCESS_KEY_ID", "AKIA1"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
            ("BACKUP_S3_REGION", "eu-central-1"),
        ],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(
        s.s3.region.as_deref(),
        Some("eu-central-1"),
        "dbkeep's name wins"
    );
    assert_eq!(s.s3.access_key_id.as_deref(), Some("AKIA1"));
    assert!(!format!("{s:?}").contains("aws-secret") && !format!("{s:?}").contains("own-secret"));
    assert_eq!(s.copy_to.len(), 2);
    let other = s.copy_target("s3://other/x").s3(&s.s3);
    assert_eq!(other.endpoint.as_deref(), Some("http://site-b:9000"));
    assert_eq!(other.access_key_id.as_deref(), Some("AKIA1"), "inherited");
    let usb = s.copy_target("/mnt/usb/").s3(&s.s3);
    assert_eq!(usb.access_key_id.as_deref(), Some("own"));
    assert_eq!(
        usb.secret_access_key
            .map(|k| k.expose().to_owned())
            .as_deref(),
        Some("own-secret")
    );
    let err = load(None, &[("BACKUP_S3_MAX_PARTS", "50")], Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("BACKUP_S3_MAX_PARTS") && err.contains("100 to 10000"),
        "{err}"
    );
    let err = load(
        Some("[[copy_to]]\nurl = \"x\"\nbucket = \"y\"\n"),
        &[],
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bucket"), "{err}");
}

#[test]
fn defaults_follow_the_spec() {
    let s = load(None, &[], Overrides::default()).unwrap();
    assert_eq!(s.backup_dir, PathBuf::from("./backups"));
    assert_eq!(s.retention_days, 30);
    assert!(s.compress);
    assert_eq!(s.log_file, Some(PathBuf::from("./backup.log")));
    assert!(matches!(s.database_url(), Err(ConfigError::NoDatabaseUrl)));
}

#[test]
fn flags_override_env_override_file() {
    let file = "backup_dir = \"/from/file\"\nbackup_retention_days = 5\nbackup_compress = false\n";
    let s = load(Some(file), &[], Overrides::default()).unwrap();
    assert_eq!(s.backup_dir, PathBuf::from("/from/file"));
    assert_eq!(s.retention_days, 5);
    assert!(!s.compress);
    let s = load(
        Some(file),
        &[("BACKUP_DIR", "/from/env"), ("BACKUP_COMPRESS", "true")],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.backup_dir, PathBuf::from("/from/env"));
    assert!(s.compress);
    assert_eq!(s.retention_days, 5);
    let s = load(
        Some(file),
        &[("BACKUP_DIR", "/from/env")],
        Overrides {
            database: None,
            backup_dir: Some("/from/flag".into()),
            compress: Some(false),
        },
    )
    .unwrap();
    assert_eq!(s.backup_dir, PathBuf::from("/from/flag"));
    assert!(!s.compress);
}

#[test]
fn unknown_file_key_is_named() {
    let err = load(Some("backup_retention = 3\n"), &[], Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("backup_retention"), "{err}");
}

#[test]
fn malformed_values_are_named() {
    let err = load(
        Some("backup_retention_days = \"ten\"\n"),
        &[],
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("backup_retention_days"), "{err}");
    for (k, v) in [
        ("BACKUP_RETENTION_DAYS", "ten"),
        ("BACKUP_RETENTION_DAYS", "-1"),
        ("BACKUP_COMPRESS", "maybe"),
        ("BACKUP_COMPRESS_LEVEL", "12"),
        ("BACKUP_KEEP_MIN", "1.5"),
    ] {
        let err = load(None, &[(k, v)], Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(k) && err.contains(v), "{k}={v}: {err}");
    }
}

#[test]
fn codec_follows_the_spec_switch_and_backup_compression() {
    let s = load(None, &[], Overrides::default()).unwrap();
    assert_eq!(
        (s.codec(), s.level(s.codec()).unwrap()),
        (Compression::Gzip, 6)
    );
    let s = load(
        None,
        &[("BACKUP_COMPRESSION", "zstd")],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        (s.codec(), s.level(s.codec()).unwrap()),
        (Compression::Zstd, 3)
    );
    let s = load(
        None,
        &[("BACKUP_COMPRESSION", "zstd"), ("BACKUP_COMPRESS", "false")],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.codec(), Compression::None);
    let s = load(
        Some("backup_compression = \"zstd\"\nbackup_compress_level = 15\n"),
        &[],
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.level(s.codec()).unwrap(), 15);
    for (k, v) in [
        ("BACKUP_COMPRESSION", "lz4"),
        ("BACKUP_COMPRESS_LEVEL", "12"),
    ] {
        let err = load(None, &[(k, v)], Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(k) && err.contains(v), "{err}");
    }
    // 12 is fine for zstd.
    load(
        None,
        &[
            ("BACKUP_COMPRESSION", "zstd"),
            ("BACKUP_COMPRESS_LEVEL", "12"),
        ],
        Overrides::default(),
    )
    .unwrap();
}

#[test]
fn file_errors_never_show_a_secret() {
    for text in [
        "databse_url = \"postgresql://u:hunter2@h/d\"\n",
        "database_url = \"postgresql://u:hunter2@h/d\n",
        "dbkeep_api_token = 5\nbackup_dir = \"hunter2\"\nbackup_retention_days = \"hunter2\"\n",
    ] {
        let err = load(Some(text), &[], Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("line "), "{err}");
    }
}

#[test]
fn spec_boolean_spellings() {
    for (v, want) in [
        ("true", true),
        ("TRUE", true),
        ("false", false),
        ("0", false),
    ] {
        let s = load(None, &[("BACKUP_COMPRESS", v)], Overrides::default()).unwrap();
        assert_eq!(s.compress, want, "{v}");
    }
}

#[test]
fn debug_never_shows_the_password() {
    let s = load(
        None,
        &[("DATABASE_URL", "postgresql://u:hunter2@h/d")],
        Overrides::default(),
    )
    .unwrap();
    assert!(!format!("{s:?}").contains("hunter2"));
    let url = s.database_url().unwrap();
    assert!(!format!("{url:?}").contains("hunter2"));
    assert!(!url.to_string().contains("hunter2"));
}

#[test]
fn series_tables_give_series_their_policies_and_typos_name_the_key() {
    let file = "[series.nightly]\ntimezone = \"Europe/Berlin\"\nkeep_daily = 7\nkeep_weekly = 4\nkeep_monthly = 12\n\n[series.hourly]\nkeep_hourly = 48\nkeep_within = \"3d\"\n";
    let s = load(Some(file), &[], Overrides::default()).unwrap();
    assert_eq!(s.series.len(), 2);
    let n = &s.series["nightly"];
    assert_eq!((n.daily, n.weekly, n.monthly, n.yearly), (7, 4, 12, 0));
    assert_eq!(
        n.describe(),
        "keep_daily 7, keep_weekly 4, keep_monthly 12 (Europe/Berlin)"
    );
    assert_eq!(
        s.series["hourly"].describe(),
        "keep_hourly 48, keep_within 3d (UTC)"
    );
    let err = load(
        Some("[series.nightly]\nkeep_dayly = 7\n"),
        &[],
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 2, key keep_dayly"), "{err}");
    let err = load(
        Some("[series.nightly]\nkeep_daily = 7\ntimezone = \"Berlin\"\n"),
        &[],
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("[series.nightly]: timezone \"Berlin\""),
        "{err}"
    );
}

#[test]
fn named_databases_inherit_the_top_level_but_not_its_repository_and_flags_apply_to_one() {
    let file = "backup_compression = \"zstd\"\nbackup_retention_days = 9\n\n[[copy_to]]\nurl = \"s3://offsite/dbkeep/\"\n\n[databases.shop]\ndatabase_url = \"postgresql://u@h/shop\"\nbackup_retention_days = 3\n\n[databases.crm]\ndatabase_url = \"sqlite:///crm.db\"\nbackup_dir = \"s3://crm-bucket/b\"\n[[databases.crm.copy_to]]\nurl = \"/mnt/usb/crm\"\n";
    let env = [
        ("DATABASE_URL", "sqlite:///app.db"),
        ("BACKUP_DIR", "/srv/b"),
    ];
    let s = load(Some(file), &env, Overrides::default()).unwrap();
    assert_eq!(s.database, DEFAULT_DATABASE);
    assert_eq!(s.backup_dir, PathBuf::from("/srv/b"));
    let names = database_names(&s);
    assert_eq!(names, ["crm", "default", "shop"]);
    let shop = s.for_database("shop").unwrap();
    assert_eq!(shop.backup_dir, PathBuf::from("/srv/b/shop"));
    assert_eq!(shop.retention_days, 3, "its own");
    assert_eq!(shop.compression, Compression::Zstd, "inherited");
    assert_eq!(shop.copy_to[0].location, "s3://offsite/dbkeep/shop");
    assert!(matches!(shop.database_url(), Ok(DatabaseUrl::Postgres(_))));
    let crm = s.for_database("crm").unwrap();
    assert_eq!(crm.backup_dir, PathBuf::from("s3://crm-bucket/b"));
    assert_eq!(crm.copy_to.len(), 1);
    assert_eq!(crm.copy_to[0].location, "/mnt/usb/crm");
    // --database with --backup-dir: the flag applies to the chosen database only.
    let o = Overrides {
        database: Some("shop".into()),
        backup_dir: Some("/elsewhere".into()),
        compress: None,
    };
    let s = load(Some(file), &env, o).unwrap();
    assert_eq!(s.database, "shop");
    assert_eq!(s.backup_dir, PathBuf::from("/elsewhere"));
    assert_eq!(
        s.for_database("default").unwrap().backup_dir,
        PathBuf::from("/srv/b")
    );
    let o = Overrides {
        database: Some("nope".into()),
        ..Overrides::default()
    };
    let e = load(Some(file), &env, o).unwrap_err().to_string();
    assert!(e.contains("crm, default, shop"), "{e}");
    // Without DATABASE_URL the unnamed database is not one of all.
    let s = load(Some(file), &[], Overrides::default()).unwrap();
    let names = database_names(&s);
    assert_eq!(names, ["crm", "shop"]);
    // An inherited copy shared on purpose is refused like a shared repository.
    let shared = "[databases.a]\ndatabase_url = \"sqlite:///a.db\"\n[[databases.a.copy_to]]\nurl = \"/mnt/x\"\n[databases.b]\ndatabase_url = \"sqlite:///b.db\"\n[[databases.b.copy_to]]\nurl = \"/mnt/x/\"\n";
    let e = load(Some(shared), &[], Overrides::default()).unwrap_err();
    assert!(matches!(e, ConfigError::SharedRepository { .. }), "{e}");
}

/// The README's complete configuration loads as documented.
#[test]
fn the_readmes_complete_configuration_loads() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme
        .find("### A complete configuration")
        .expect("the README has the section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let text = &section[start..start + section[start..].find("```").expect("its end")];
    let s = load(Some(text), &[], Overrides::default()).unwrap();
    let names = database_names(&s);
    assert_eq!(names, ["crm", "shop"]);
    assert_eq!(s.schedules.len(), 2);
    assert_eq!(s.schedules[0].database, "shop");
    assert_eq!(s.channels.len(), 2);
    let crm = s.for_database("crm").unwrap();
    assert_eq!(crm.notify.as_deref(), Some(&["ops".to_owned()][..]));
    let shop = s.for_database("shop").unwrap();
    assert_eq!(shop.backup_dir, PathBuf::from("/var/backups/dbkeep/shop"));
    assert_eq!(shop.compression, Compression::Zstd);
    assert!(s.series.contains_key("nightly"));
}
