//! SIGTERM as a request: a cluster node finishes or hands back its work and exits
//! cleanly when a batch system or an orchestrator asks it to stop.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Set by the SIGTERM handler.
static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    TERMINATE.store(true, Ordering::SeqCst);
}

/// Installs the SIGTERM handler (once) and returns the flag it sets.
pub(crate) fn catch_terminate() -> std::io::Result<&'static AtomicBool> {
    static INSTALLED: OnceLock<std::result::Result<(), i32>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let action = SigAction::new(
            SigHandler::Handler(on_term),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler only stores into a static atomic, which is
        // async-signal-safe, and touches nothing a signal could find half-updated.
        unsafe { sigaction(Signal::SIGTERM, &action) }
            .map(|_| ())
            .map_err(|e| e as i32)
    });
    match installed {
        Ok(()) => Ok(&TERMINATE),
        Err(errno) => Err(std::io::Error::from_raw_os_error(*errno)),
    }
}
