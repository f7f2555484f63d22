//! One integration test binary (one link step): the real `dbkeep` binary against real SQLite
//! files and a real PostgreSQL server.

mod api;
mod bad_input;
mod cli;
mod common;
mod corpus;
mod dashboard;
mod databases;
mod drills;
mod encryption;
mod faults;
mod formats;
mod hostile_http;
mod interrupted;
mod mysql;
mod mysql_faults;
mod mysql_hostile;
mod notify;
mod package;
mod pitr;
mod pitr_recovery;
mod pitr_s3;
mod pitr_schedule;
mod pitr_timeline;
mod postgres;
mod s3;
mod s3_limits;
mod schedule;
mod soak;
mod sqlite;
mod storage;
