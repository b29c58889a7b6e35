//! The worker side: what a process (or an MPI rank) does with the frames its parent
//! sends. One loop over a small [`Link`](link::Link) (frames in, frames out): answer the hello or
//! refuse it, run each chunk, answer it, exit on `Exit` or end of stream.
//!
//! - `child`: a child process's life as a worker, from its socket to `_exit`.
//! - `serve`: the loop.
//! - `chunk`: running one chunk, answering it in pieces.
//! - `link`: the `Link` trait, the socket to the parent, the frame limits.
//! - `panic`: the panic hook, and the running call's context it reads.
//! - `identity`: how this process came to be a worker, its parent's pid and the name
//!   it was given.
//! - `exit`: exit codes, and how a worker process ends.
//!
//! The folder imports only what lies below it: `task` (one invocation), `wire`, `sys`,
//! `error`; the start methods, the bootstrap and MPI, above it, enter it. Inside, each
//! file imports its siblings directly (never through this file's re-exports), in one
//! direction: `child` uses `serve`, which uses `chunk`; these rest on `link`, `panic`
//! and `exit`, and those on `identity`, which imports nothing.

mod child;
mod chunk;
mod exit;
mod identity;
mod link;
mod panic;
mod serve;

pub(crate) use child::serve_socket;
pub(crate) use exit::{EXIT_ORPHANED, EXIT_PROTOCOL, EXIT_REFUSED};
pub(crate) use identity::{Origin, name, parent_pid};
pub(crate) use link::frame_limit;
pub(crate) use panic::install_panic_hook;
// For other worker loops, which install their own panic hook and transport.
#[cfg(feature = "mpi")]
pub(crate) use link::{ENVELOPE_ROOM, Link};
#[cfg(feature = "mpi")]
pub(crate) use panic::{in_task, record_panic};
#[cfg(feature = "mpi")]
pub(crate) use serve::serve;
