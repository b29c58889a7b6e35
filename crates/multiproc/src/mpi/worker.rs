//! A worker rank (rank ≥ 1): greet rank 0, run the chunks it sends, exit on `Exit`.
//!
//! The loop is the process worker's (`child::serve`) over MPI instead of a socket: the
//! same `Request`/`Reply` messages, the same `run_chunk`, the same build-id check in
//! the hello. What differs is failure: a worker that cannot go on calls `MPI_Abort`
//! (with a message on stderr) instead of exiting, because a rank that exits alone
//! leaves the job hanging or killed without a word.

use std::cell::Cell;
use std::io::Write;

use mpi::Threading;
use mpi::point_to_point::Source;
use mpi::topology::{Communicator, SimpleCommunicator};
use serde_bytes::ByteBuf;

use super::link::{self, Greeting, TAG_GREETING, TAG_REPLY, TAG_REQUEST};
use super::message::{Batch, Failure, PROTOCOL_VERSION, Refusal, Reply, Request, TaskRef};
use super::{EXIT_PANIC, EXIT_PROTOCOL};
use crate::task::Invocation;
use crate::wire::values::ValueBuf;

thread_local! {
    /// Set while a chunk's tasks run: a panic there is the task's, caught and returned
    /// to rank 0; anywhere else it is the worker's own, and ends the job.
    static IN_CHUNK: Cell<bool> = const { Cell::new(false) };
}

/// Panics in tasks are recorded for their reply; any other panic (or any panic under
/// `panic = "abort"`) calls `MPI_Abort`, since unwinding into `MPI_Finalize` would hang
/// the whole job waiting for this rank.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if IN_CHUNK.get() && !cfg!(panic = "abort") {
            crate::child::record_panic(info);
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
    let root = world.process_at_rank(0);
    let mut greeted = false;
    loop {
        let (msg, status) = root.matched_probe_with_tag(TAG_REQUEST);
        let bytes = match link::receive(msg, status) {
            Ok(b) => b,
            Err(len) => link::abort_job(
                EXIT_PROTOCOL,
                &format!(
                    "rank 0 sent a request of {len} bytes, over the maximum frame size of {} bytes",
                    link::limit()
                ),
            ),
        };
        let request = match Request::decode(&bytes) {
            Ok(r) => r,
            Err(e) => link::abort_job(EXIT_PROTOCOL, &format!("undecodable request: {e}")),
        };
        match request {
            Request::Hello {
                version,
                build_id,
                max_frame,
                ..
            } => {
                let pid = std::process::id();
                let host = mpi::environment::processor_name().unwrap_or_default();
                let refusal = if version != PROTOCOL_VERSION {
                    Some(Refusal::Version {
                        child: PROTOCOL_VERSION,
                    })
                } else if build_id.as_slice() != crate::task::build_id() {
                    Some(Refusal::Build {
                        child: ByteBuf::from(crate::task::build_id().to_vec()),
                    })
                } else {
                    None
                };
                greeted = refusal.is_none();
                if greeted {
                    crate::wire::set_max_frame_size(
                        usize::try_from(max_frame).unwrap_or(usize::MAX),
                    );
                }
                let greeting = match refusal {
                    None => Greeting::Ready { pid, host },
                    Some(reason) => Greeting::Refused { pid, host, reason },
                };
                send_or_abort(&world, TAG_GREETING, &greeting);
            }
            Request::Run { job, entry, args } => {
                if !greeted {
                    link::abort_job(EXIT_PROTOCOL, "work from rank 0 before a valid hello");
                }
                send_or_abort(&world, TAG_REPLY, &run(job, entry, &args));
            }
            Request::Exit => break,
        }
    }
    let _ = std::io::stdout().flush();
    drop(world);
    drop(universe); // MPI_Finalize
    crate::sys::proc::exit_now(0)
}

/// Runs a chunk; a malformed one (descriptors never cross MPI) ends the job.
fn run(job: u64, entry: TaskRef, args: &Batch) -> Reply {
    if args.total_fds() != 0 {
        link::abort_job(
            EXIT_PROTOCOL,
            "rank 0 sent descriptors, which cannot cross MPI",
        );
    }
    let started = std::time::Instant::now();
    let mut values = Batch::with_capacity(args.len(), args.data.len());
    let mut failures = Vec::new();
    for i in 0..args.len() {
        let Some((bytes, _)) = args.get(i) else {
            link::abort_job(EXIT_PROTOCOL, "rank 0 sent a malformed chunk");
        };
        let mut out = ValueBuf::new(crate::wire::max_frame_size(), false);
        let mut out_fds = Vec::new();
        let mut no_flush = |_: &mut ValueBuf, _: &mut Vec<std::os::fd::OwnedFd>| false;
        let mut input = crate::wire::Values::new(bytes);
        let mut inv = Invocation {
            input: &mut input,
            out: &mut out,
            out_fds: &mut out_fds,
            // Descriptors cannot cross MPI: a result holding one is refused.
            max_fds: 0,
            flush: &mut no_flush,
            outcome: Ok(()),
        };
        IN_CHUNK.set(true);
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::sys::image::call(entry.trampoline, entry.function, &mut inv)
        }));
        IN_CHUNK.set(false);
        let outcome = match ran {
            Ok(true) => inv.outcome,
            Ok(false) => Err(Failure::BadEntry),
            Err(payload) => Err(crate::child::take_panic(&*payload)),
        };
        match (outcome, out.heap()) {
            (Ok(()), Some(bytes)) => values.push(bytes, 0),
            (Ok(()), None) => unreachable_spill(),
            (Err(f), _) => {
                values.push(&[], 0);
                failures.push((i as u32, f));
            }
        }
    }
    Reply::Done {
        job,
        values,
        failures,
        nanos: started.elapsed().as_nanos().min(u64::MAX as u128) as u64,
    }
}

/// A buffer made with spilling off never spills.
fn unreachable_spill() -> ! {
    link::abort_job(
        EXIT_PROTOCOL,
        "a result went to shared memory, which cannot cross MPI",
    )
}

/// Encodes and sends to rank 0. A reply over the frame limit is replaced by one that
/// says so for each of its calls, as in the process pool.
fn send_or_abort<T: serde::Serialize>(world: &SimpleCommunicator, tag: i32, message: &T) {
    let bytes = match crate::wire::encode(message) {
        Ok(b) => b,
        Err(e) => link::abort_job(EXIT_PROTOCOL, &format!("cannot encode a reply: {e}")),
    };
    match link::send(world, 0, tag, &bytes) {
        Ok(()) => {}
        Err(crate::Error::FrameTooLarge { len, max, .. }) => {
            let fallback = too_large(&bytes, len, max);
            let sent = crate::wire::encode(&fallback)
                .map_err(|e| e.to_string())
                .and_then(|b| link::send(world, 0, tag, &b).map_err(|e| e.to_string()));
            if let Err(e) = sent {
                link::abort_job(EXIT_PROTOCOL, &format!("cannot send a reply: {e}"));
            }
        }
        Err(e) => link::abort_job(EXIT_PROTOCOL, &format!("cannot send a reply: {e}")),
    }
}

/// The reply for a `Done` whose encoding (`bytes`) is over the limit: every call fails
/// with the reason.
fn too_large(bytes: &[u8], len: u64, max: u64) -> Reply {
    let (job, calls, nanos) = match Reply::decode(bytes) {
        Ok(Reply::Done {
            job, values, nanos, ..
        }) => (job, values.len(), nanos),
        _ => link::abort_job(EXIT_PROTOCOL, "a greeting over the frame limit"),
    };
    let reason =
        format!("the encoded results are {len} bytes, over the maximum frame size of {max} bytes");
    let mut values = Batch::with_capacity(calls, 0);
    let failures = (0..calls)
        .map(|i| {
            values.close_value(0);
            (
                i as u32,
                Failure::BadResult {
                    type_name: "task result".into(),
                    reason: reason.clone(),
                },
            )
        })
        .collect();
    Reply::Done {
        job,
        values,
        failures,
        nanos,
    }
}
