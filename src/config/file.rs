//! The TOML configuration file: its keys (`Layer`, unknown ones refused) and its errors, which
//! never echo a value (it may be a misplaced secret).

use super::*;
use crate::codec::Compression;
use crate::engine::PgFormat;
use serde::Deserialize;
use std::path::{Path, PathBuf};

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
    pub backup_drill_sandbox: Option<bool>,
    pub backup_drill_query: Option<String>,
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
    pub backup_wal_slot: Option<String>,
    pub backup_wal_spool: Option<PathBuf>,
    pub backup_wal_stream: Option<bool>,
    /// Comma-separated repositories each backup is also copied to (same S3 settings).
    pub backup_copy_to: Option<String>,
    /// `[[copy_to]]` tables: a repository each backup is also copied to, with its own settings.
    pub copy_to: Option<Vec<CopyToLayer>>,
    /// `[series.NAME]` tables: a series' retention policy (`retention::policy`).
    pub series: Option<std::collections::BTreeMap<String, crate::retention::SeriesTable>>,
    /// `[[schedule]]` tables: the scheduler's (`schedule`).
    pub schedule: Option<Vec<crate::schedule::ScheduleTable>>,
    /// `[channels.NAME]` tables: where notifications go (`notify::channel`).
    pub channels: Option<std::collections::BTreeMap<String, crate::notify::ChannelTable>>,
    /// The channels this database's events go to (default: every channel).
    pub notify: Option<Vec<String>>,
    /// `[databases.NAME]` tables: a named database, with the same keys as the top level but
    /// the service-wide ones (`databases::global_key`).
    pub databases: Option<std::collections::BTreeMap<String, Layer>>,
    pub dbkeep_api_token: Option<String>,
    pub dbkeep_api_tokens_file: Option<PathBuf>,
    pub dbkeep_audit_log: Option<PathBuf>,
    pub dbkeep_trusted_proxies: Option<String>,
    pub dbkeep_rate_limits: Option<String>,
    pub dbkeep_health_max_age: Option<u64>,
    pub dbkeep_metrics_public: Option<bool>,
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

pub(super) fn read_file(path: &Path) -> Result<Layer, ConfigError> {
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
pub(super) fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
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
