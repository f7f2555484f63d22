//! The audit log: one JSON line per API call that reads or changes backups, to
//! `DBKEEP_AUDIT_LOG` (mode 0600, appended) and to the tracing output. It holds the token's
//! name, never the token, and never a database URL.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    pub time: String,
    pub client: String,
    pub token: Option<&'a str>,
    pub action: &'a str,
    pub backup: Option<&'a str>,
    pub outcome: &'a str,
    pub status: u16,
    pub duration_ms: u64,
}

pub struct Audit {
    file: Option<Mutex<File>>,
}

impl Audit {
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            Some(p) => Some(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)?,
            )),
            None => None,
        };
        Ok(Self { file })
    }

    pub fn record(&self, entry: &AuditEntry<'_>) {
        let line = serde_json::to_string(entry).unwrap_or_default();
        tracing::info!(target: "dbkeep::audit", "{line}");
        if let Some(f) = &self.file
            && let Ok(mut f) = f.lock()
            && let Err(e) = writeln!(f, "{line}")
        {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}
