//! SIGINT, SIGTERM and SIGHUP during a CLI backup or restore: instead of dying mid-way, dbkeep
//! notes the signal, stops its child process, cleans up (a restore puts the original database
//! back) and exits with an error. Installed only by the commands that change something.
//!
//! The server (`dbkeep serve`) does not install these handlers: on SIGTERM it lets a running
//! operation finish for a grace period, then calls [`request_abort`], which running operations
//! see exactly as a signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Once};

static FLAG: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));
static INSTALL: Once = Once::new();

/// Starts catching the termination signals. Idempotent.
pub fn install() -> std::io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&FLAG)) {
                result = Err(e);
                return;
            }
        }
    });
    result
}

/// Asks every running operation to stop and clean up, as a signal would.
pub fn request_abort() {
    FLAG.store(true, Ordering::Relaxed);
}

/// Whether a termination signal arrived (or [`request_abort`] was called).
pub fn interrupted() -> bool {
    FLAG.load(Ordering::Relaxed)
}
