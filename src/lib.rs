//! dbkeep: a database backup manager.
//!
//! The library holds every use case; the `dbkeep` binary (`src/main.rs`) is a thin shell around
//! [`cli`]. See `ARCHITECTURE.md` for the code map and the invariants.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod codec;
pub mod config;
pub mod database_url;
pub mod encryption;
pub mod engine;
pub mod error;
pub mod faults;
pub mod logging;
pub mod naming;
pub mod notify;
pub mod ops;
pub mod progress;
pub mod retention;
pub mod schedule;
pub mod signals;
pub mod storage;
pub mod wal;
