//! Backup names and series.
//!
//! A name is `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`: it can never hold a path separator, start with a
//! dot (so never `..` nor one of our hidden temp files) or leave ASCII. Names are checked before
//! anything touches the disk.
//!
//! A series groups the backups that one schedule makes (`daily_20240115`, `daily_20240116`, …):
//! retention applies per series, so the daily job never deletes the monthly backups that share its
//! folder.

use chrono::{DateTime, Utc};
use std::fmt;
use std::sync::LazyLock;
use thiserror::Error;

/// The longest name we accept.
pub const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("the {what} is empty: use ASCII letters, digits, '.', '_' or '-'")]
    Empty { what: &'static str },
    #[error("the {what} is {len} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong { what: &'static str, len: usize },
    #[error("the {what} {shown:?} must start with an ASCII letter or digit")]
    BadStart { what: &'static str, shown: String },
    #[error(
        "the {what} {shown:?} contains {ch:?}: only ASCII letters, digits, '.', '_' and '-' are allowed"
    )]
    BadChar {
        what: &'static str,
        shown: String,
        ch: char,
    },
}

/// A validated backup name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupName(String);

impl BackupName {
    pub fn parse(input: &str) -> Result<Self, NameError> {
        validate("backup name", input)?;
        Ok(Self(input.to_owned()))
    }

    /// `backup_YYYYMMDD_HHMMSS` in UTC, as the spec's script names its backups.
    pub fn default_at(now: DateTime<Utc>) -> Self {
        Self::default_with("backup", now)
    }

    /// A default name with another prefix (`base` for base backups).
    pub fn default_with(prefix: &str, now: DateTime<Utc>) -> Self {
        Self(format!("{prefix}_{}", now.format("%Y%m%d_%H%M%S")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a series given with `--series`: the same alphabet as names.
pub fn parse_series(input: &str) -> Result<String, NameError> {
    validate("series", input)?;
    Ok(input.to_owned())
}

fn validate(what: &'static str, input: &str) -> Result<(), NameError> {
    // Show at most a short prefix of hostile input in the error.
    let shown = || input.chars().take(40).collect::<String>();
    let Some(first) = input.chars().next() else {
        return Err(NameError::Empty { what });
    };
    let len = input.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong { what, len });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart {
            what,
            shown: shown(),
        });
    }
    if let Some(ch) = input
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar {
            what,
            shown: shown(),
            ch,
        });
    }
    Ok(())
}

/// A trailing date or time stamp: `_20240115`, `_202401`, `_20240115_103000`, `-2024-01-15`,
/// `_2024-01-15T10-30-00Z`, `_1705312200` (Unix seconds), after a `_`, `-` or `.`.
static STAMP: LazyLock<regex_lite::Regex> = LazyLock::new(|| {
    regex_lite::Regex::new(
        r"^(.+?)[_.-](?:\d{6,14}|\d{8}[_T-]\d{4,6}Z?|\d{4}-\d{2}(?:-\d{2}(?:[_T-]\d{2}-?\d{2}(?:-?\d{2})?Z?)?)?)$",
    )
    .expect("the stamp pattern is a valid regex")
});

/// The series a backup belongs to when `--series` is not given: its name without a trailing
/// date/time stamp (`daily_20240115` → `daily`, `backup_20240115_103000` → `backup`,
/// `manual_backup` → `manual_backup`).
pub fn derive_series(name: &BackupName) -> String {
    match STAMP.captures(name.as_str()).and_then(|c| c.get(1)) {
        Some(prefix) => prefix.as_str().to_owned(),
        None => name.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_names() {
        for n in [
            "a",
            "daily_20240115",
            "manual_backup",
            "A.b-c_9",
            &"x".repeat(128),
        ] {
            assert!(BackupName::parse(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("../x", "must start"),
            ("..", "must start"),
            (".hidden", "must start"),
            ("a/b", "contains '/'"),
            ("a\\b", "contains '\\\\'"),
            ("a b", "contains ' '"),
            ("naïve", "contains 'ï'"),
            ("a\0b", "contains '\\0'"),
        ];
        for (input, expected) in cases {
            let err = BackupName::parse(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
        let long = "a".repeat(200);
        assert!(
            BackupName::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("200 characters")
        );
    }

    #[test]
    fn default_name_is_utc_stamp() {
        let t = DateTime::parse_from_rfc3339("2024-01-15T10:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(BackupName::default_at(t).as_str(), "backup_20240115_103000");
    }

    #[test]
    fn series_table() {
        let cases = [
            ("daily_20240115", "daily"),
            ("monthly_202401", "monthly"),
            ("weekly_20240114", "weekly"),
            ("backup_20240115_103000", "backup"),
            ("manual_backup", "manual_backup"),
            ("daily_backup_20240115", "daily_backup"),
            ("db-2024-01-15", "db"),
            ("db_2024-01-15T10-30-00Z", "db"),
            ("nightly.20240115103000", "nightly"),
            ("app_1705312200", "app"),
            ("20240115", "20240115"),
            ("v_12", "v_12"),
            ("release-2024", "release-2024"),
        ];
        for (name, series) in cases {
            let n = BackupName::parse(name).unwrap();
            assert_eq!(derive_series(&n), series, "{name}");
        }
    }
}
