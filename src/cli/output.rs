//! How results are shown to people: the list table, sizes, JSON.

use crate::catalog::Manifest;

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

pub(super) fn list_table(out: &mut String, backups: &[Manifest]) {
    use std::fmt::Write as _;
    let width = backups
        .iter()
        .map(|m| m.backup_name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:<width$}  {:<20}  {:>10}  {:>8}  {:<10}  STATUS",
        "NAME", "TIMESTAMP", "SIZE", "DURATION", "TYPE"
    );
    for m in backups {
        let failed_copies: Vec<&str> = m.failed_copies().map(|c| c.repository.as_str()).collect();
        let drill = match &m.verification {
            Some(v) if v.outcome == crate::catalog::DrillOutcome::Passed => {
                format!(", drill passed {}", v.verified_at.format("%Y-%m-%d %H:%M"))
            }
            Some(v) => format!(", DRILL FAILED {}", v.verified_at.format("%Y-%m-%d %H:%M")),
            None => String::new(),
        };
        let drill = if m.pinned {
            format!("{drill}, pinned")
        } else {
            drill
        };
        let status = if m.success && !failed_copies.is_empty() {
            format!("ok{drill}, COPY FAILED to {}", failed_copies.join(", "))
        } else if m.success {
            format!("ok{drill}")
        } else {
            let e = m.error.as_deref().unwrap_or("failed");
            let short: String = e.chars().take(100).collect();
            format!("FAILED: {short}")
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:<20}  {:>10}  {:>7.1}s  {:<10}  {}",
            m.backup_name,
            m.timestamp_text(),
            if m.success {
                human_bytes(m.file_size)
            } else {
                "-".into()
            },
            m.duration,
            m.database_type.to_string(),
            status
        );
    }
}

pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(crate::catalog::bytes_to_mb(1048576), 1.0);
    }
}
