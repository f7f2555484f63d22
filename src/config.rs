//! Settings: defaults, then the TOML file, then the environment, then command-line flags (each
//! overrides the one before).
//!
//! Every setting has one name: the environment variable (`BACKUP_DIR`), whose lower-case form is
//! the key in the TOML file (`backup_dir`). The spec's variables keep their meaning and defaults.
//! An unknown file key or a malformed value is an error that names the key and the problem.

use crate::codec::Compression;
use crate::database_url::{DatabaseUrl, DatabaseUrlError, Secret};
use crate::engine::PgFormat;

/// When `dbkeep backup` runs a restore drill of its series (`BACKUP_DRILL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrillPolicy {
    /// Only when asked (`dbkeep verify --restore`).
    #[default]
    Off,
    /// After every successful backup, of that backup.
    AfterBackup,
    /// After a successful backup, of that backup, when no backup of its series was drilled in
    /// the last 24 hours.
    Daily,
}
use crate::storage::S3Settings;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is invalid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{key}={value:?} is invalid: {problem}")]
    InvalidValue {
        key: &'static str,
        value: String,
        problem: &'static str,
    },
    #[error("{0}")]
    DatabaseUrl(#[from] DatabaseUrlError),
    #[error(
        "DATABASE_URL is not set: set it in the environment or as database_url in dbkeep.toml, e.g. postgresql://user:password@host/db or sqlite:///app.db"
    )]
    NoDatabaseUrl,
}

const MAX_PARTS_PROBLEM: &str =
    "expected the most parts the service accepts in one upload (100 to 10000)";
const PART_SIZE_PROBLEM: &str =
    "expected the first part's size in MiB (5 to 5120; parts grow from there)";
const MEMORY_PART_PROBLEM: &str = "expected the largest part sent from memory, in MiB (5 to 5120)";

/// `v` if it lies in `range`, else an error naming `key` and `problem`.
fn within(
    v: u32,
    range: std::ops::RangeInclusive<u32>,
    key: &'static str,
    problem: &'static str,
) -> Result<u32, ConfigError> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::InvalidValue {
            key,
            value: v.to_string(),
            problem,
        })
    }
}

/// The file name looked for in the working directory when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "dbkeep.toml";

/// Every setting, as read from one layer. Field names are the TOML keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub database_url: Option<String>,
    pub backup_dir: Option<PathBuf>,
    pub backup_retention_days: Option<u32>,
    pub backup_keep_min: Option<u32>,
    pub backup_compress: Option<bool>,
    pub backup_compression: Option<Compression>,
    pub backup_compress_level: Option<u32>,
    pub backup_log_file: Option<PathBuf>,
    pub backup_pg_bindir: Option<PathBuf>,
    pub backup_pg_maintenance_db: Option<String>,
    pub backup_restore_keep_old: Option<bool>,
    pub backup_row_counts: Option<bool>,
    pub backup_drill: Option<DrillPolicy>,
    pub backup_pg_format: Option<PgFormat>,
    pub backup_restore_jobs: Option<u32>,
    pub backup_lock_timeout: Option<u64>,
    pub backup_stall_timeout: Option<u64>,
    pub backup_encrypt_recipients: Option<String>,
    pub backup_encrypt_passphrase_file: Option<PathBuf>,
    pub backup_decrypt_identity_file: Option<PathBuf>,
    pub backup_s3_endpoint: Option<String>,
    pub backup_s3_region: Option<String>,
    pub backup_s3_path_style: Option<bool>,
    pub backup_s3_access_key_id: Option<String>,
    pub backup_s3_secret_access_key: Option<String>,
    pub backup_s3_session_token: Option<String>,
    pub backup_s3_max_parts: Option<u32>,
    pub backup_s3_part_size_mib: Option<u32>,
    pub backup_s3_memory_part_mib: Option<u32>,
    pub backup_scratch_dir: Option<PathBuf>,
    /// Comma-separated repositories each backup is also copied to (same S3 settings).
    pub backup_copy_to: Option<String>,
    /// `[[copy_to]]` tables: a repository each backup is also copied to, with its own settings.
    pub copy_to: Option<Vec<CopyToLayer>>,
    pub dbkeep_api_token: Option<String>,
    pub dbkeep_api_tokens_file: Option<PathBuf>,
    pub dbkeep_audit_log: Option<PathBuf>,
    pub dbkeep_trusted_proxies: Option<String>,
    pub dbkeep_rate_limits: Option<String>,
    pub dbkeep_health_max_age: Option<u64>,
    pub dbkeep_shutdown_grace: Option<u64>,
    pub dbkeep_body_timeout: Option<u64>,
}

/// One `[[copy_to]]` table of the config file. Unset S3 settings are the primary's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyToLayer {
    pub url: String,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: Option<bool>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    pub s3_session_token: Option<String>,
}

/// A repository backups are copied to.
#[derive(Debug, Clone, Default)]
pub struct CopyTarget {
    pub location: String,
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key: Option<Secret>,
    session_token: Option<Secret>,
}

impl CopyTarget {
    pub fn new(location: &str) -> Self {
        Self {
            location: location.trim().trim_end_matches('/').to_owned(),
            ..Self::default()
        }
    }

    /// Its S3 settings: its own where given, else the primary's (`base`).
    pub fn s3(&self, base: &S3Settings) -> S3Settings {
        let own_keys = self.access_key_id.is_some();
        S3Settings {
            endpoint: self.endpoint.clone().or_else(|| base.endpoint.clone()),
            region: self.region.clone().or_else(|| base.region.clone()),
            path_style: self.path_style.or(base.path_style),
            access_key_id: self
                .access_key_id
                .clone()
                .or_else(|| base.access_key_id.clone()),
            secret_access_key: if own_keys {
                self.secret_access_key.clone()
            } else {
                base.secret_access_key.clone()
            },
            session_token: if own_keys {
                self.session_token.clone()
            } else {
                base.session_token.clone()
            },
            ..base.clone()
        }
    }
}

impl From<CopyToLayer> for CopyTarget {
    fn from(l: CopyToLayer) -> Self {
        Self {
            endpoint: l.s3_endpoint,
            region: l.s3_region,
            path_style: l.s3_path_style,
            access_key_id: l.s3_access_key_id,
            secret_access_key: l.s3_secret_access_key.map(Secret::new),
            session_token: l.s3_session_token.map(Secret::new),
            ..CopyTarget::new(&l.url)
        }
    }
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kept as text until a command needs it, so `list` works without a database. A [`Secret`],
    /// so `Debug` of the settings never shows the password.
    database_url: Option<Secret>,
    pub backup_dir: PathBuf,
    pub retention_days: u32,
    pub keep_min: u32,
    /// The spec's switch: false stores backups uncompressed whatever `compression` says.
    pub compress: bool,
    /// The codec when compressing (`BACKUP_COMPRESSION`; default gzip, the spec's).
    pub compression: Compression,
    /// The codec's level; `None` is the codec's default (gzip 6, zstd 3).
    pub compress_level: Option<u32>,
    /// `None` when `BACKUP_LOG_FILE` is `off`.
    pub log_file: Option<PathBuf>,
    pub pg_bindir: Option<PathBuf>,
    pub pg_maintenance_db: String,
    pub restore_keep_old: bool,
    /// Count every table's rows in the dump's snapshot (`BACKUP_ROW_COUNTS`, default true).
    pub row_counts: bool,
    /// When `dbkeep backup` runs a restore drill (`BACKUP_DRILL`).
    pub drill: DrillPolicy,
    /// PostgreSQL dump format (`BACKUP_PG_FORMAT`: sql, the spec's, or custom).
    pub pg_format: PgFormat,
    /// Parallel jobs of `pg_restore` for custom-format backups (`BACKUP_RESTORE_JOBS`).
    pub restore_jobs: u32,
    pub lock_timeout: Duration,
    /// A dump or restore that moves no data for this long is aborted.
    pub stall_timeout: Duration,
    /// age recipients (public keys), comma- or newline-separated: backups are encrypted to them.
    pub encrypt_recipients: Option<String>,
    /// A passphrase file: backups are encrypted with it (scrypt) and it opens them.
    pub encrypt_passphrase_file: Option<PathBuf>,
    /// age identities (or an SSH private key) that open encrypted backups for verify and restore.
    pub decrypt_identity_file: Option<PathBuf>,
    /// Object storage: endpoint, region, addressing, credentials, part sizes (`BACKUP_S3_*`,
    /// else the standard `AWS_*` variables).
    pub s3: S3Settings,
    /// Where scratch files go when the repository is not a local directory.
    pub scratch_dir: Option<PathBuf>,
    /// Repositories each backup is also copied to (`[[copy_to]]`, `BACKUP_COPY_TO`).
    pub copy_to: Vec<CopyTarget>,
    /// Settings of `dbkeep serve`.
    pub api: ApiSettings,
}

/// Settings of the HTTP API (`dbkeep serve`).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `DBKEEP_API_TOKEN`: one token, named `default` in the audit log.
    pub token: Option<Secret>,
    /// `DBKEEP_API_TOKENS_FILE`: lines of `NAME TOKEN` (or `NAME:TOKEN`).
    pub tokens_file: Option<PathBuf>,
    /// `DBKEEP_AUDIT_LOG`: JSON lines, one per API call on backups.
    pub audit_log: Option<PathBuf>,
    /// `DBKEEP_TRUSTED_PROXIES`: comma-separated IP addresses whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `DBKEEP_RATE_LIMITS`: overrides such as `create=3/hour,list=20/minute`.
    pub rate_limits: Option<String>,
    /// `DBKEEP_HEALTH_MAX_AGE`: seconds; `/healthz` fails when the last success is older.
    pub health_max_age: Duration,
    /// `DBKEEP_SHUTDOWN_GRACE`: seconds a running operation may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// `DBKEEP_BODY_TIMEOUT`: seconds a client may take to send a request body.
    pub body_timeout: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            token: None,
            tokens_file: None,
            audit_log: None,
            trusted_proxies: Vec::new(),
            rate_limits: None,
            health_max_age: Duration::from_secs(26 * 3600),
            shutdown_grace: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            backup_dir: PathBuf::from("./backups"),
            retention_days: 30,
            keep_min: 1,
            compress: true,
            compression: Compression::Gzip,
            compress_level: None,
            log_file: Some(PathBuf::from("./backup.log")),
            pg_bindir: None,
            pg_maintenance_db: "postgres".into(),
            restore_keep_old: false,
            row_counts: true,
            drill: DrillPolicy::Off,
            pg_format: PgFormat::Sql,
            restore_jobs: std::thread::available_parallelism().map_or(2, |n| n.get().min(8) as u32),
            lock_timeout: Duration::from_secs(3600),
            stall_timeout: Duration::from_secs(1800),
            encrypt_recipients: None,
            encrypt_passphrase_file: None,
            decrypt_identity_file: None,
            s3: S3Settings::default(),
            scratch_dir: None,
            copy_to: Vec::new(),
            api: ApiSettings::default(),
        }
    }
}

/// Command-line flags that override settings.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub backup_dir: Option<PathBuf>,
    pub compress: Option<bool>,
}

impl Settings {
    /// Loads the settings: `config` names a TOML file (else `dbkeep.toml` in the working
    /// directory if present), `env` reads a variable (the process environment in `main`).
    pub fn load(
        config: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let file = match config {
            Some(path) => Some(read_file(path)?),
            None => {
                let default = Path::new(DEFAULT_CONFIG_FILE);
                if default.is_file() {
                    Some(read_file(default)?)
                } else {
                    None
                }
            }
        };
        let mut s = Settings::default();
        if let Some(file) = file {
            s.apply(file)?;
        }
        s.apply(env_layer(env)?)?;
        if let Some(dir) = &overrides.backup_dir {
            s.backup_dir = dir.clone();
        }
        if let Some(c) = overrides.compress {
            s.compress = c;
        }
        s.level(s.compression)?;
        Ok(s)
    }

    fn apply(&mut self, l: Layer) -> Result<(), ConfigError> {
        if let Some(v) = l.database_url {
            self.database_url = Some(Secret::new(v));
        }
        if let Some(v) = l.backup_dir {
            self.backup_dir = v;
        }
        if let Some(v) = l.backup_retention_days {
            self.retention_days = v;
        }
        if let Some(v) = l.backup_keep_min {
            self.keep_min = within(
                v,
                1..=u32::MAX,
                "BACKUP_KEEP_MIN",
                "expected 1 or more: the newest good backup of a series is always kept",
            )?;
        }
        if let Some(v) = l.backup_compress {
            self.compress = v;
        }
        if let Some(v) = l.backup_compression {
            self.compression = v;
        }
        if let Some(v) = l.backup_compress_level {
            self.compress_level = Some(v);
        }
        if let Some(v) = l.backup_log_file {
            self.log_file = if v.as_os_str() == "off" {
                None
            } else {
                Some(v)
            };
        }
        if let Some(v) = l.backup_pg_bindir {
            self.pg_bindir = Some(v);
        }
        if let Some(v) = l.backup_pg_maintenance_db {
            self.pg_maintenance_db = v;
        }
        if let Some(v) = l.backup_restore_keep_old {
            self.restore_keep_old = v;
        }
        if let Some(v) = l.backup_row_counts {
            self.row_counts = v;
        }
        if let Some(v) = l.backup_drill {
            self.drill = v;
        }
        if let Some(v) = l.backup_pg_format {
            self.pg_format = v;
        }
        if let Some(v) = l.backup_restore_jobs {
            if v == 0 {
                return Err(ConfigError::InvalidValue {
                    key: "BACKUP_RESTORE_JOBS",
                    value: "0".into(),
                    problem: "expected how many parallel pg_restore jobs to run (1 or more)",
                });
            }
            self.restore_jobs = v;
        }
        if let Some(v) = l.backup_lock_timeout {
            self.lock_timeout = Duration::from_secs(v);
        }
        if let Some(v) = l.backup_stall_timeout {
            self.stall_timeout = Duration::from_secs(v.max(1));
        }
        if let Some(v) = l.backup_encrypt_recipients {
            self.encrypt_recipients = Some(v);
        }
        if let Some(v) = l.backup_encrypt_passphrase_file {
            self.encrypt_passphrase_file = Some(v);
        }
        if let Some(v) = l.backup_decrypt_identity_file {
            self.decrypt_identity_file = Some(v);
        }
        let s3 = &mut self.s3;
        if let Some(v) = l.backup_s3_endpoint {
            s3.endpoint = Some(v);
        }
        if let Some(v) = l.backup_s3_region {
            s3.region = Some(v);
        }
        if let Some(v) = l.backup_s3_path_style {
            s3.path_style = Some(v);
        }
        if let Some(v) = l.backup_s3_access_key_id {
            s3.access_key_id = Some(v);
        }
        if let Some(v) = l.backup_s3_secret_access_key {
            s3.secret_access_key = Some(Secret::new(v));
        }
        if let Some(v) = l.backup_s3_session_token {
            s3.session_token = Some(Secret::new(v));
        }
        if let Some(v) = l.backup_s3_max_parts {
            s3.max_parts = within(v, 100..=10_000, "BACKUP_S3_MAX_PARTS", MAX_PARTS_PROBLEM)?;
        }
        if let Some(v) = l.backup_s3_part_size_mib {
            let v = within(v, 5..=5120, "BACKUP_S3_PART_SIZE_MIB", PART_SIZE_PROBLEM)?;
            s3.part_size = u64::from(v) << 20;
        }
        if let Some(v) = l.backup_s3_memory_part_mib {
            let v = within(
                v,
                5..=5120,
                "BACKUP_S3_MEMORY_PART_MIB",
                MEMORY_PART_PROBLEM,
            )?;
            s3.memory_part = u64::from(v) << 20;
        }
        if let Some(v) = l.backup_scratch_dir {
            self.scratch_dir = Some(v);
        }
        if let Some(tables) = l.copy_to {
            self.copy_to = tables.into_iter().map(CopyTarget::from).collect();
        }
        if let Some(v) = l.backup_copy_to {
            self.copy_to = v
                .split(',')
                .filter(|u| !u.trim().is_empty())
                .map(CopyTarget::new)
                .collect();
        }
        if let Some(v) = l.dbkeep_api_token {
            self.api.token = Some(Secret::new(v));
        }
        if let Some(v) = l.dbkeep_api_tokens_file {
            self.api.tokens_file = Some(v);
        }
        if let Some(v) = l.dbkeep_audit_log {
            self.api.audit_log = Some(v);
        }
        if let Some(v) = l.dbkeep_trusted_proxies {
            self.api.trusted_proxies = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse().map_err(|_| ConfigError::InvalidValue {
                        key: "DBKEEP_TRUSTED_PROXIES",
                        value: s.to_owned(),
                        problem: "expected comma-separated IP addresses",
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = l.dbkeep_rate_limits {
            self.api.rate_limits = Some(v);
        }
        if let Some(v) = l.dbkeep_health_max_age {
            self.api.health_max_age = Duration::from_secs(v);
        }
        if let Some(v) = l.dbkeep_shutdown_grace {
            self.api.shutdown_grace = Duration::from_secs(v);
        }
        if let Some(v) = l.dbkeep_body_timeout {
            self.api.body_timeout = Duration::from_secs(v.max(1));
        }
        Ok(())
    }

    /// The copy target for `location`: a configured one (with its settings), else one with the
    /// primary's S3 settings.
    pub fn copy_target(&self, location: &str) -> CopyTarget {
        let wanted = location.trim().trim_end_matches('/');
        self.copy_to
            .iter()
            .find(|t| t.location == wanted)
            .cloned()
            .unwrap_or_else(|| CopyTarget::new(wanted))
    }

    /// The codec a backup uses: `none` when compression is off.
    pub fn codec(&self) -> Compression {
        if self.compress {
            self.compression
        } else {
            Compression::None
        }
    }

    /// The level for `codec`: the configured one, checked against the codec's range, or its
    /// default.
    pub fn level(&self, codec: Compression) -> Result<u32, ConfigError> {
        let Some(level) = self.compress_level else {
            return Ok(codec.default_level());
        };
        let (range, problem) = match codec {
            Compression::Gzip => (
                1..=9,
                "expected a gzip level from 1 (fastest) to 9 (smallest)",
            ),
            Compression::Zstd => (
                1..=19,
                "expected a zstd level from 1 (fastest) to 19 (smallest)",
            ),
            Compression::None => return Ok(0),
        };
        if range.contains(&level) {
            Ok(level)
        } else {
            Err(ConfigError::InvalidValue {
                key: "BACKUP_COMPRESS_LEVEL",
                value: level.to_string(),
                problem,
            })
        }
    }

    /// The database to back up or restore; an error if none is configured or it is malformed.
    pub fn database_url(&self) -> Result<DatabaseUrl, ConfigError> {
        let raw = self
            .database_url
            .as_ref()
            .ok_or(ConfigError::NoDatabaseUrl)?
            .expose();
        Ok(DatabaseUrl::parse(raw)?)
    }
}

fn read_file(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        message: describe_toml_error(&text, &e),
    })
}

/// The line, the key and the problem of a TOML error, without the line's text or any quoted
/// value (a typo'd `database_url` or token line must not print its secret).
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    static QUOTED: std::sync::LazyLock<regex_lite::Regex> = std::sync::LazyLock::new(|| {
        regex_lite::Regex::new(r#""(?:[^"\\]|\\.)*"|'[^']*'"#).expect("a valid regex")
    });
    static VARIANT: std::sync::LazyLock<regex_lite::Regex> = std::sync::LazyLock::new(|| {
        regex_lite::Regex::new(r"unknown variant `[^`]*`").expect("a valid regex")
    });
    let message = QUOTED.replace_all(e.message().trim(), "\"…\"");
    // serde names a wrong enum value in backticks: the value may be a misplaced secret.
    let message = VARIANT.replace_all(&message, "unknown value").into_owned();
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.contains('"') => {
            format!("line {line_no}, key {}: {message}", key.trim())
        }
        _ => format!("line {line_no}: {message}"),
    }
}

fn env_layer(env: &dyn Fn(&str) -> Option<String>) -> Result<Layer, ConfigError> {
    let get = |key: &str| env(key).filter(|v| !v.trim().is_empty());
    let num = |key: &'static str, problem: &'static str| -> Result<Option<u64>, ConfigError> {
        get(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| ConfigError::InvalidValue {
                        key,
                        value: v.clone(),
                        problem,
                    })
            })
            .transpose()
    };
    let num32 = |key: &'static str, problem: &'static str| -> Result<Option<u32>, ConfigError> {
        num(key, problem)?
            .map(|v| {
                u32::try_from(v).map_err(|_| ConfigError::InvalidValue {
                    key,
                    value: v.to_string(),
                    problem,
                })
            })
            .transpose()
    };
    let boolean = |key: &'static str| -> Result<Option<bool>, ConfigError> {
        get(key)
            .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::InvalidValue {
                    key,
                    value: v.clone(),
                    problem: "expected true or false",
                }),
            })
            .transpose()
    };
    Ok(Layer {
        database_url: get("DATABASE_URL"),
        backup_dir: get("BACKUP_DIR").map(PathBuf::from),
        backup_retention_days: num32(
            "BACKUP_RETENTION_DAYS",
            "expected a whole number of days (0 turns the age rule off)",
        )?,
        backup_keep_min: num32(
            "BACKUP_KEEP_MIN",
            "expected how many newest successful backups to always keep (a whole number)",
        )?,
        backup_compress: boolean("BACKUP_COMPRESS")?,
        backup_compression: get("BACKUP_COMPRESSION")
            .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                "gzip" => Ok(Compression::Gzip),
                "zstd" => Ok(Compression::Zstd),
                "none" => Ok(Compression::None),
                _ => Err(ConfigError::InvalidValue {
                    key: "BACKUP_COMPRESSION",
                    value: v.clone(),
                    problem: "expected gzip, zstd or none",
                }),
            })
            .transpose()?,
        backup_compress_level: num32(
            "BACKUP_COMPRESS_LEVEL",
            "expected a compression level (gzip 1-9, zstd 1-19)",
        )?,
        backup_log_file: get("BACKUP_LOG_FILE").map(PathBuf::from),
        backup_pg_bindir: get("BACKUP_PG_BINDIR").map(PathBuf::from),
        backup_pg_maintenance_db: get("BACKUP_PG_MAINTENANCE_DB"),
        backup_restore_keep_old: boolean("BACKUP_RESTORE_KEEP_OLD")?,
        backup_row_counts: boolean("BACKUP_ROW_COUNTS")?,
        backup_drill: get("BACKUP_DRILL")
            .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                "off" | "false" | "no" => Ok(DrillPolicy::Off),
                "after-backup" | "after_backup" => Ok(DrillPolicy::AfterBackup),
                "daily" => Ok(DrillPolicy::Daily),
                _ => Err(ConfigError::InvalidValue {
                    key: "BACKUP_DRILL",
                    value: v.clone(),
                    problem: "expected off, after-backup or daily",
                }),
            })
            .transpose()?,
        backup_pg_format: get("BACKUP_PG_FORMAT")
            .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                "sql" | "plain" => Ok(PgFormat::Sql),
                "custom" => Ok(PgFormat::Custom),
                _ => Err(ConfigError::InvalidValue {
                    key: "BACKUP_PG_FORMAT",
                    value: v.clone(),
                    problem: "expected sql or custom",
                }),
            })
            .transpose()?,
        backup_restore_jobs: num32(
            "BACKUP_RESTORE_JOBS",
            "expected how many parallel pg_restore jobs to run (1 or more)",
        )?,
        backup_lock_timeout: num(
            "BACKUP_LOCK_TIMEOUT",
            "expected how many seconds to wait for the repository lock",
        )?,
        backup_stall_timeout: num(
            "BACKUP_STALL_TIMEOUT",
            "expected how many seconds without progress abort a dump or restore",
        )?,
        backup_encrypt_recipients: get("BACKUP_ENCRYPT_RECIPIENTS"),
        backup_encrypt_passphrase_file: get("BACKUP_ENCRYPT_PASSPHRASE_FILE").map(PathBuf::from),
        backup_decrypt_identity_file: get("BACKUP_DECRYPT_IDENTITY_FILE").map(PathBuf::from),
        // dbkeep's own names first, then the standard AWS variables.
        backup_s3_endpoint: get("BACKUP_S3_ENDPOINT")
            .or_else(|| get("AWS_ENDPOINT_URL_S3"))
            .or_else(|| get("AWS_ENDPOINT_URL")),
        backup_s3_region: get("BACKUP_S3_REGION")
            .or_else(|| get("AWS_REGION"))
            .or_else(|| get("AWS_DEFAULT_REGION")),
        backup_s3_path_style: boolean("BACKUP_S3_PATH_STYLE")?,
        backup_s3_access_key_id: get("BACKUP_S3_ACCESS_KEY_ID")
            .or_else(|| get("AWS_ACCESS_KEY_ID")),
        backup_s3_secret_access_key: get("BACKUP_S3_SECRET_ACCESS_KEY")
            .or_else(|| get("AWS_SECRET_ACCESS_KEY")),
        backup_s3_session_token: get("BACKUP_S3_SESSION_TOKEN")
            .or_else(|| get("AWS_SESSION_TOKEN")),
        backup_s3_max_parts: num32("BACKUP_S3_MAX_PARTS", MAX_PARTS_PROBLEM)?,
        backup_s3_part_size_mib: num32("BACKUP_S3_PART_SIZE_MIB", PART_SIZE_PROBLEM)?,
        backup_s3_memory_part_mib: num32("BACKUP_S3_MEMORY_PART_MIB", MEMORY_PART_PROBLEM)?,
        backup_scratch_dir: get("BACKUP_SCRATCH_DIR").map(PathBuf::from),
        backup_copy_to: get("BACKUP_COPY_TO"),
        copy_to: None,
        dbkeep_api_token: get("DBKEEP_API_TOKEN"),
        dbkeep_api_tokens_file: get("DBKEEP_API_TOKENS_FILE").map(PathBuf::from),
        dbkeep_audit_log: get("DBKEEP_AUDIT_LOG").map(PathBuf::from),
        dbkeep_trusted_proxies: get("DBKEEP_TRUSTED_PROXIES"),
        dbkeep_rate_limits: get("DBKEEP_RATE_LIMITS"),
        dbkeep_health_max_age: num(
            "DBKEEP_HEALTH_MAX_AGE",
            "expected seconds (the age of the last successful backup that /healthz accepts)",
        )?,
        dbkeep_shutdown_grace: num(
            "DBKEEP_SHUTDOWN_GRACE",
            "expected seconds a running operation may take to finish after SIGTERM",
        )?,
        dbkeep_body_timeout: num(
            "DBKEEP_BODY_TIMEOUT",
            "expected seconds a client may take to send a request body",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        o: Overrides,
    ) -> Result<Settings, ConfigError> {
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
        assert!(
            !format!("{s:?}").contains("aws-secret") && !format!("{s:?}").contains("own-secret")
        );
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
        let file =
            "backup_dir = \"/from/file\"\nbackup_retention_days = 5\nbackup_compress = false\n";
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
}
