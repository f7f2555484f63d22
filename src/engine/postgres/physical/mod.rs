//! Physical backups of a PostgreSQL cluster, for point-in-time recovery: whether the server can
//! serve them (`readiness`), taking a base backup with pg_basebackup (`base`, reading its spool
//! as it grows: `follow`), its drill on a throwaway server (`drill`), the WAL stream's slot and pg_receivewal (`receive`), and the stored archive, checked against pg_basebackup's manifest
//! when it is read back or unpacked into a data directory (`archive`).

pub mod archive;
mod base;
pub mod drill;
mod follow;
mod readiness;
pub mod receive;

use super::*;
