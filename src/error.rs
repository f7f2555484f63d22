//! The top-level error, and how it maps to exit codes (and, later, HTTP statuses).
//!
//! Rules:
//! - Each module owns a `thiserror` enum for its own failures (`ConfigError`, `StorageError`,
//!   `PostgresError`, …). `ops` returns [`Error`], which wraps them; `cli` (and `api`) turn an
//!   [`Error`] into an exit code through [`Error::kind`]. `anyhow` is not used in the library.
//! - Every message says what was wrong and, where it can, what to do.
//! - No message contains a password: URLs are shown redacted and child output is scrubbed.

use crate::catalog::CatalogError;
use crate::config::ConfigError;
use crate::engine::DatabaseType;
use crate::engine::postgres::PostgresError;
use crate::engine::sqlite::SqliteError;
use crate::naming::NameError;
use crate::storage::StorageError;
use thiserror::Error;

/// What kind of failure an [`Error`] is: decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad usage or configuration: fix the command or the settings. Exit code 2.
    Usage,
    /// The named backup does not exist. Exit code 2.
    NotFound,
    /// The name is taken. Exit code 2.
    Conflict,
    /// Another run holds the repository (the lock timed out), or a write met an object another
    /// writer made meanwhile: the operation failed, exit code 1 (HTTP 409).
    Busy,
    /// The operation failed. Exit code 1.
    Failed,
}

impl ErrorKind {
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage | ErrorKind::NotFound | ErrorKind::Conflict => 2,
            ErrorKind::Failed | ErrorKind::Busy => 1,
        }
    }
}

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(
        "a backup named {name:?} already exists: choose another --name, or pass --replace to replace it once the new backup is complete"
    )]
    NameExists { name: String },
    #[error(
        "there is no successful backup named {name:?} in {location}: `dbkeep list` shows the backups"
    )]
    NotFound { name: String, location: String },
    #[error("there is no successful backup in {location} yet")]
    NoBackups { location: String },
    #[error("{0}")]
    NotConfirmed(String),
    #[error(
        "no schedule is configured: add [[schedule]] tables (name, cron, …) to the config file (see the README's Scheduling section)"
    )]
    NoSchedules,
    #[error(
        "the backup {name:?} is a {backup} backup but DATABASE_URL names a {configured} database"
    )]
    WrongDatabaseType {
        name: String,
        backup: DatabaseType,
        configured: DatabaseType,
    },
    /// What the configured database's engine does not do.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Sqlite(#[from] SqliteError),
    #[error(transparent)]
    Mysql(#[from] crate::engine::mysql::MysqlError),
    #[error(
        "the backup {name:?} was deleted while it was being checked (retention or a delete ran meanwhile)"
    )]
    DeletedMeanwhile { name: String },
    #[error("interrupted by a signal before every backup was checked")]
    Interrupted,
    #[error("{0}: its backup can be neither verified nor restored")]
    UnreadableManifest(String),
    #[error("the backup {name:?} is damaged: {problem}")]
    Damaged { name: String, problem: String },
    #[error("the restore drill of {name:?} failed: {problem}")]
    DrillFailed { name: String, problem: String },
    #[error("{io_context}: {source}")]
    Io {
        io_context: String,
        source: std::io::Error,
    },
    #[error(
        "the backup {name} is complete in the primary repository, but {failed} copy(ies) failed: {first}. Run `dbkeep copy {name} --to REPOSITORY` once it is reachable"
    )]
    CopyFailed {
        name: String,
        failed: usize,
        first: String,
    },
    #[error("retention could not delete {failed} backup(s): {first}")]
    Retention { failed: usize, first: String },
    #[error("{0}")]
    Engine(String),
    #[error("the notification channel {channel} failed: {problem}")]
    Notification { channel: String, problem: String },
    #[error("cannot catch termination signals: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Serve(#[from] crate::api::ServeError),
    #[error(transparent)]
    Encryption(#[from] crate::encryption::EncryptionError),
}

impl From<crate::engine::seam::EngineError> for Error {
    fn from(e: crate::engine::seam::EngineError) -> Self {
        use crate::engine::seam::EngineError as E;
        match e {
            E::Postgres(e) => Error::Postgres(e),
            E::Sqlite(e) => Error::Sqlite(e),
            E::Mysql(e) => Error::Mysql(e),
            E::Io { what, source } => Error::Io {
                io_context: what.to_owned(),
                source,
            },
            E::Drill(problem) | E::Source(problem) => Error::Engine(problem),
            E::Unsupported(problem) => Error::Unsupported(problem),
        }
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_)
            | Error::Name(_)
            | Error::NotConfirmed(_)
            | Error::NoSchedules
            | Error::WrongDatabaseType { .. }
            | Error::Unsupported(_)
            | Error::Storage(StorageError::Setup { .. } | StorageError::Unsupported { .. }) => {
                ErrorKind::Usage
            }
            Error::Postgres(PostgresError::DatabaseMismatch { .. }) => ErrorKind::Usage,
            Error::NotFound { .. } | Error::NoBackups { .. } | Error::DeletedMeanwhile { .. } => {
                ErrorKind::NotFound
            }
            Error::NameExists { .. } => ErrorKind::Conflict,
            Error::Storage(
                StorageError::LockTimeout { .. } | StorageError::AlreadyExists { .. },
            ) => ErrorKind::Busy,
            Error::Serve(crate::api::ServeError::Serve(_)) => ErrorKind::Failed,
            Error::Encryption(
                crate::encryption::EncryptionError::Decrypt(_)
                | crate::encryption::EncryptionError::Encrypt(_),
            ) => ErrorKind::Failed,
            Error::Encryption(_) => ErrorKind::Usage,
            Error::Serve(_) => ErrorKind::Usage,
            _ => ErrorKind::Failed,
        }
    }

    /// The repository refused the operation to these credentials or this user.
    pub fn is_denied(&self) -> bool {
        matches!(self, Error::Storage(e) if e.is_denied())
    }

    /// The backup directory cannot take writes: not writable, or its disk is full.
    pub fn is_unavailable(&self) -> bool {
        use std::io::ErrorKind as K;
        let io_unavailable = |e: &std::io::Error| {
            matches!(
                e.kind(),
                K::StorageFull | K::PermissionDenied | K::ReadOnlyFilesystem
            )
        };
        match self {
            Error::Storage(StorageError::Io { source, .. }) => io_unavailable(source),
            Error::Postgres(PostgresError::Output(e)) => io_unavailable(e),
            Error::Mysql(crate::engine::mysql::MysqlError::Output(e)) => io_unavailable(e),
            Error::Io { source, .. } => source.kind() == K::StorageFull,
            Error::Sqlite(SqliteError::Sqlite {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            }) => matches!(
                e.code,
                rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::ReadOnly
            ),
            _ => false,
        }
    }
}
