//! SIGTERM as a request: a cluster node finishes or hands back its work and exits
//! cleanly when a batch system or an orchestrator asks it to stop.

#[cfg(feature = "cluster")]
use std::sync::OnceLock;
#[cfg(feature = "cluster")]
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, pthread_sigmask, sigaction,
};

/// Set by the SIGTERM handler.
#[cfg(feature = "cluster")]
static TERMINATE: AtomicBool = AtomicBool::new(false);

#[cfg(feature = "cluster")]
extern "C" fn on_term(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    TERMINATE.store(true, Ordering::SeqCst);
}

/// A worker that leaves SIGTERM to its parent takes it with this: nothing happens.
extern "C" fn ignore_term(_: libc::c_int) {}

fn sigterm() -> SigSet {
    SigSet::from(Signal::SIGTERM)
}

/// Blocks SIGTERM in the calling thread (a worker at its start, before it has other
/// threads): one sent before [`settle_terminate`] stays pending until then.
pub(crate) fn hold_terminate() {
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigterm()), None);
}

/// A worker's SIGTERM disposition, once its parent said which, then unblocks SIGTERM
/// (see [`hold_terminate`]).
///
/// `leave` (a cluster node's worker): SIGTERM does nothing. systemd (`KillMode` left at
/// `control-group`) and Slurm send it to every process of the service or job; the
/// node, told to stop, lets running calls finish for its drain time, then stops its
/// workers itself. Installed here with `sigaction`, whatever a parent this process was
/// forked from had installed (its [`catch_terminate`] flag is of no use here). A
/// handler, not `SIG_IGN`: programs the task execs get the default disposition back.
/// Otherwise SIGTERM keeps its default, ending the process.
pub(crate) fn settle_terminate(leave: bool) {
    if leave {
        let action = SigAction::new(
            SigHandler::Handler(ignore_term),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing at all, which is async-signal-safe.
        let _ = unsafe { sigaction(Signal::SIGTERM, &action) };
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&sigterm()), None);
}

/// Installs the SIGTERM handler (once) and returns the flag it sets.
#[cfg(feature = "cluster")]
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
