//! The environment as a configuration layer: one variable per setting (`BACKUP_DIR` ↔
//! `backup_dir`), the standard `AWS_*` variables as fallbacks of `BACKUP_S3_*`.

use super::*;
use crate::codec::Compression;
use crate::engine::PgFormat;
use std::path::PathBuf;

pub(super) fn env_layer(env: &dyn Fn(&str) -> Option<String>) -> Result<Layer, ConfigError> {
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
        databases: None,
        channels: None,
        notify: None,
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
        backup_drill_sandbox: boolean("BACKUP_DRILL_SANDBOX")?,
        backup_drill_query: get("BACKUP_DRILL_QUERY"),
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
                "physical" => Ok(PgFormat::Physical),
                _ => Err(ConfigError::InvalidValue {
                    key: "BACKUP_PG_FORMAT",
                    value: v.clone(),
                    problem: "expected sql, custom or physical",
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
        backup_wal_slot: get("BACKUP_WAL_SLOT"),
        backup_wal_spool: get("BACKUP_WAL_SPOOL").map(PathBuf::from),
        backup_wal_stream: boolean("BACKUP_WAL_STREAM")?,
        backup_copy_to: get("BACKUP_COPY_TO"),
        copy_to: None,
        series: None,
        schedule: None,
        dbkeep_api_token: get("DBKEEP_API_TOKEN"),
        dbkeep_api_tokens_file: get("DBKEEP_API_TOKENS_FILE").map(PathBuf::from),
        dbkeep_audit_log: get("DBKEEP_AUDIT_LOG").map(PathBuf::from),
        dbkeep_trusted_proxies: get("DBKEEP_TRUSTED_PROXIES"),
        dbkeep_rate_limits: get("DBKEEP_RATE_LIMITS"),
        dbkeep_metrics_public: boolean("DBKEEP_METRICS_PUBLIC")?,
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
