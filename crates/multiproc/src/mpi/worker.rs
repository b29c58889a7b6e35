//! A worker rank (rank ≥ 1): greet rank 0, run the chunks it sends, exit on `Exit`.
//!
//! The loop is the process worker's (`worker::serve`) over an MPI [`Link`] instead of
//! a socket: the same messages, the same chunk runner, the same build-id check in the
//! hello. What differs: no descriptors and no shared memory cross (results holding
//! descriptors fail, big data stays inline), the hello is answered with a greeting
//! (pid and host) whether or not the rank refuses, and a rank that cannot go on calls
//! `MPI_Abort` (with a message on stderr) instead of exiting, because a rank that exits
//! alone leaves the job hanging or killed without a word.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use mpi::Threading;
use mpi::point_to_point::Source;
use mpi::topology::{Communicator, SimpleCommunicator};

use super::link::{self, Greeting, TAG_GREETING, TAG_REPLY, TAG_REQUEST};
use super::{EXIT_PANIC, EXIT_PROTOCOL};
use crate::error::{Error, Result};
use crate::wire::message::Refusal;
use crate::worker::{Link, Origin};

/// Panics in tasks are recorded for their reply; any other panic (or any panic under
/// `panic = "abort"`) calls `MPI_Abort`, since unwinding into `MPI_Finalize` would hang
/// the whole job waiting for this rank.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if crate::worker::in_task() && !cfg!(panic = "abort") {
            crate::worker::record_panic(info);
        } else {
            link::abort_job(EXIT_PANIC, &format!("panicked: {info}"));
        }
    }));
}

/// Serves rank 0 until it says `Exit`, finalizes MPI and exits; never returns.
pub(crate) fn serve() -> ! {
    let Some((universe, _)) = mpi::initialize_with_threading(Threading::Funneled) else {
        let _ = writeln!(
            std::io::stderr(),
            "multiproc: MPI was initialized before multiproc::init(); call init() first in main"
        );
        crate::sys::proc::exit_now(EXIT_PROTOCOL)
    };
    install_panic_hook();
    let world = universe.world();
    if world.rank() == 0 {
        // A launcher variable inherited by a process the launcher did not start.
        link::abort_job(
            EXIT_PROTOCOL,
            "the environment names this process an MPI worker rank, but MPI says it is rank 0 \
             (an MPI variable leaked into a program not started by mpirun?)",
        );
    }
    let mut link = MpiLink { world };
    let code = crate::worker::serve(&mut link, Origin::Execd);
    if code != 0 {
        link::abort_job(code, "rank 0 broke the protocol");
    }
    let _ = std::io::stdout().flush();
    drop(link);
    drop(universe); // MPI_Finalize
    crate::sys::proc::exit_now(0)
}

/// A worker rank's link to rank 0.
struct MpiLink {
    world: SimpleCommunicator,
}

impl Link for MpiLink {
    fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        let (msg, status) = self
            .world
            .process_at_rank(0)
            .matched_probe_with_tag(TAG_REQUEST);
        match link::receive(msg, status) {
            Ok(body) => Ok(Some(body)),
            Err(len) => link::abort_job(
                EXIT_PROTOCOL,
                &format!(
                    "rank 0 sent a request of {len} bytes, over the maximum frame size of {} bytes",
                    link::limit()
                ),
            ),
        }
    }

    fn take_fds(&mut self, n: usize) -> Result<Vec<OwnedFd>> {
        match n {
            0 => Ok(Vec::new()),
            _ => Err(Error::Protocol {
                pid: 0,
                detail: "rank 0 sent descriptors, which cannot cross MPI".into(),
            }),
        }
    }

    fn send(&mut self, head: &[u8], data: &[u8], fds: &[OwnedFd]) -> Result<()> {
        if !fds.is_empty() {
            return Err(Error::Protocol {
                pid: 0,
                detail: "descriptors cannot cross MPI".into(),
            });
        }
        link::send_frame(&self.world, 0, TAG_REPLY, head, data)
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn max_fds(&self) -> usize {
        0
    }

    fn set_max_frame(&mut self, _max: usize) {}

    fn abort_channel(&self) -> Option<Rc<OwnedFd>> {
        // A panic under `panic = "abort"` on a rank ends the job (the hook aborts it).
        None
    }

    /// Rank 0 needs every rank's pid and host, and its refusal: a rank that refuses
    /// stays, runs nothing, and waits for `Exit` (exiting alone would kill the job).
    fn greeted(&mut self, refusal: Option<Refusal>) -> Result<bool> {
        let pid = std::process::id();
        let host = mpi::environment::processor_name().unwrap_or_default();
        let greeting = match refusal {
            None => Greeting::Ready { pid, host },
            Some(reason) => Greeting::Refused { pid, host, reason },
        };
        link::send(
            &self.world,
            0,
            TAG_GREETING,
            &crate::wire::encode(&greeting)?,
        )?;
        Ok(true)
    }
}
