//! Settings: defaults, then the TOML file, then the environment, then command-line flags (each
//! overrides the one before).
//!
//! Every setting has one name: the environment variable (`BACKUP_DIR`), whose lower-case form is
//! the key in the TOML file (`backup_dir`). The spec's variables keep their meaning and defaults.
//! An unknown file key or a malformed value is an error that names the key and the problem.

mod apply;
mod copy;
mod databases;
mod env;
mod file;
#[cfg(test)]
mod tests;

use crate::codec::Compression;
use crate::database_url::{DatabaseUrl, DatabaseUrlError, Secret};
use crate::engine::PgFormat;
use crate::storage::S3Settings;
pub use copy::CopyTarget;
pub use databases::DEFAULT_DATABASE;
use env::env_layer;
use file::read_file;
pub use file::{CopyToLayer, Layer};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

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
    #[error(
        "BACKUP_ENCRYPT_RECIPIENTS and BACKUP_ENCRYPT_PASSPHRASE_FILE are both set, but age cannot encrypt one backup to public keys and a passphrase at once (every backup would fail): set one of them, the passphrase instead of the keys or the keys instead of the passphrase"
    )]
    RecipientsAndPassphrase,
    #[error("{0}")]
    DatabaseUrl(#[from] DatabaseUrlError),
    #[error("{0}")]
    Policy(#[from] crate::retention::PolicyError),
    #[error("{0}")]
    Schedule(#[from] crate::schedule::ScheduleError),
    #[error("{0}")]
    Channel(#[from] crate::notify::ChannelError),
    #[error("{0}")]
    Export(#[from] crate::schedule::export::ExportError),
    #[error(
        "DATABASE_URL is not set: set it in the environment or as database_url in dbkeep.toml, e.g. postgresql://user:password@host/db or sqlite:///app.db"
    )]
    NoDatabaseUrl,
    #[error(
        "[databases.{0}] has no database_url: give each named database its own, e.g. database_url = \"postgresql://user@host/db\""
    )]
    DatabaseNoUrl(String),
    #[error(
        "[databases.{database}] sets {key}, which applies to the whole service: set it at the top level of the config file"
    )]
    DatabaseKey { database: String, key: &'static str },
    #[error(
        "[databases.{0:?}]: a database name is 1 to 64 letters, digits, '_' and '-', starting with a letter or digit, and not \"default\" (the name of DATABASE_URL's database)"
    )]
    DatabaseName(String),
    #[error(
        "no database named {name:?} is configured (configured: {known}): name one of them, or add a [databases.{name}] table to the config file"
    )]
    UnknownDatabase { name: String, known: String },
    #[error(
        "the databases {a:?} and {b:?} share the repository {location}: give each its own backup_dir and copies (retention and the lock work per repository)"
    )]
    SharedRepository {
        a: String,
        b: String,
        location: String,
    },
    #[error(
        "[[schedule]] {schedule:?} backs up the database {database:?}, which is not configured (configured: {known}): set its database to one of them"
    )]
    ScheduleDatabase {
        schedule: String,
        database: String,
        known: String,
    },
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

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This database's name: [`DEFAULT_DATABASE`] for `DATABASE_URL`'s, else its
    /// `[databases.NAME]` table's.
    pub database: String,
    /// Every database of the configuration by name, the unnamed one included, as configured
    /// (without command-line overrides; their own `databases` is empty).
    pub databases: std::sync::Arc<std::collections::BTreeMap<String, Settings>>,
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
    /// A PostgreSQL drill loads as a temporary role that is not a superuser
    /// (`BACKUP_DRILL_SANDBOX`, default true; see `engine/postgres/sandbox.rs`).
    pub drill_sandbox: bool,
    /// A query a base backup's drill and a recovery drill run in the recovered database
    /// (`BACKUP_DRILL_QUERY`): an error, no row or `false` fails the drill; its value is in the
    /// report.
    pub drill_query: Option<String>,
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
    /// The replication slot of `dbkeep wal stream` (`BACKUP_WAL_SLOT`, default `dbkeep`).
    pub wal_slot: String,
    /// Where pg_receivewal writes before a segment is archived (`BACKUP_WAL_SPOOL`; default
    /// `.wal-spool` in a local repository). It must survive a restart: what is there is
    /// flushed as far as the server knows.
    pub wal_spool: Option<PathBuf>,
    /// `dbkeep serve` runs `wal stream` for this database (`BACKUP_WAL_STREAM`, default false).
    pub wal_stream: bool,
    /// Repositories each backup is also copied to (`[[copy_to]]`, `BACKUP_COPY_TO`).
    pub copy_to: Vec<CopyTarget>,
    /// Retention policies by series name (`[series.NAME]` in the config file).
    pub series: std::collections::BTreeMap<String, crate::retention::SeriesPolicy>,
    /// The scheduler's schedules (`[[schedule]]` in the config file).
    pub schedules: Vec<crate::schedule::Schedule>,
    /// Notification channels by name (`[channels.NAME]`).
    pub channels: std::sync::Arc<std::collections::BTreeMap<String, crate::notify::Channel>>,
    /// The channels this database's events go to (`notify`); `None`: every channel.
    pub notify: Option<Vec<String>>,
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
    /// `DBKEEP_METRICS_PUBLIC`: `/metrics` answers without a token (default false).
    pub metrics_public: bool,
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
            metrics_public: false,
            body_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database: DEFAULT_DATABASE.to_owned(),
            databases: Default::default(),
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
            drill_sandbox: true,
            drill_query: None,
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
            wal_slot: "dbkeep".into(),
            wal_spool: None,
            wal_stream: false,
            copy_to: Vec::new(),
            series: std::collections::BTreeMap::new(),
            schedules: Vec::new(),
            channels: Default::default(),
            notify: None,
            api: ApiSettings::default(),
        }
    }
}

/// Command-line flags that override settings.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--database NAME`: the database the command works on.
    pub database: Option<String>,
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
        let mut base = Settings::default();
        let mut named = std::collections::BTreeMap::new();
        if let Some(mut file) = file {
            named = file.databases.take().unwrap_or_default();
            base.apply(file)?;
        }
        base.apply(env_layer(env)?)?;
        let mut all = std::collections::BTreeMap::new();
        for (name, layer) in named {
            let s = databases::named(&base, &name, layer)?;
            s.check()?;
            all.insert(name, s);
        }
        base.check()?;
        all.insert(DEFAULT_DATABASE.to_owned(), base);
        databases::check(&all)?;
        let name = overrides.database.as_deref().unwrap_or(DEFAULT_DATABASE);
        let mut s = all
            .get(name)
            .cloned()
            .ok_or_else(|| databases::unknown(name, &all))?;
        if let Some(dir) = &overrides.backup_dir {
            s.backup_dir = dir.clone();
            // --backup-dir must not point one database at another's repository either.
            let mut with_flag = all.clone();
            with_flag.insert(s.database.clone(), s.clone());
            databases::check(&with_flag)?;
        }
        if let Some(c) = overrides.compress {
            s.compress = c;
        }
        s.check()?;
        s.databases = std::sync::Arc::new(all);
        Ok(s)
    }

    /// What no setting may be alone: a level outside its codec's range, two kinds of encryption.
    fn check(&self) -> Result<(), ConfigError> {
        self.level(self.compression)?;
        if self
            .encrypt_recipients
            .as_deref()
            .is_some_and(|r| !r.trim().is_empty())
            && self.encrypt_passphrase_file.is_some()
        {
            return Err(ConfigError::RecipientsAndPassphrase);
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
