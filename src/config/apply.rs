//! One layer (the file, the environment, a `[databases.NAME]` table) applied over the
//! settings before it: each key it sets replaces the setting, checked.

use super::*;

impl Settings {
    pub(super) fn apply(&mut self, l: Layer) -> Result<(), ConfigError> {
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
        if let Some(v) = l.backup_drill_sandbox {
            self.drill_sandbox = v;
        }
        if let Some(v) = l.backup_drill_query {
            self.drill_query = Some(v);
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
        if let Some(v) = l.backup_wal_slot {
            let ok = !v.is_empty()
                && v.len() <= 63
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(ConfigError::InvalidValue {
                    key: "BACKUP_WAL_SLOT",
                    value: v,
                    problem: "a replication slot's name is 1 to 63 lower-case letters, digits and underscores",
                });
            }
            self.wal_slot = v;
        }
        if let Some(v) = l.backup_wal_spool {
            self.wal_spool = Some(v);
        }
        if let Some(v) = l.backup_wal_stream {
            self.wal_stream = v;
        }
        if let Some(tables) = l.series {
            for (name, table) in tables {
                let policy = crate::retention::SeriesPolicy::from_table(&name, &table)?;
                self.series.insert(name, policy);
            }
        }
        if let Some(tables) = l.channels {
            let mut channels = std::collections::BTreeMap::new();
            for (name, table) in &tables {
                channels.insert(
                    name.clone(),
                    crate::notify::Channel::from_table(name, table)?,
                );
            }
            self.channels = std::sync::Arc::new(channels);
        }
        if let Some(v) = l.notify {
            self.notify = Some(v);
        }
        if let Some(tables) = l.schedule {
            self.schedules = crate::schedule::Schedule::all(&tables)?;
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
        if let Some(v) = l.dbkeep_metrics_public {
            self.api.metrics_public = v;
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
}
