//! Fault injection for the test suite: with `DBKEEP_FAULT=<point>` in its environment, dbkeep
//! kills itself with SIGKILL when it reaches `<point>`, so that a test can prove what a crash at
//! exactly that moment leaves behind (the fault-injection suite in `tests/faults.rs`). Without
//! the variable — always, outside the tests — a point is one environment lookup.
//!
//! Points: `after-data-commit` (the data object is in place, its manifest not yet written),
//! `manifest-before-rename` (the new manifest is complete in its temporary file, not yet
//! renamed into place).

/// Kills this process with SIGKILL if `DBKEEP_FAULT` names `point`.
pub fn point(point: &str) {
    if std::env::var_os("DBKEEP_FAULT").is_some_and(|v| v == point) {
        tracing::warn!(point, "DBKEEP_FAULT: this process kills itself here");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
