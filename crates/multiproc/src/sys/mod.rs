//! Every `unsafe` block of the crate lives under this module, each with a `// SAFETY:`
//! comment that states the invariant it relies on. The rest of the crate is safe Rust.
//!
//! - [`proc`]: fork, clone, pidfd (and the exit status it keeps), wait, signals, `_exit`,
//!   the parent-death signal.
//! - [`image`]: this executable's code range, and calling a task by its offset.
//! - [`build_id`]: this build's identity (safe code, beside `image`).
//! - [`spawn`]: fork + exec of this executable with an inherited socket; the variable
//!   that tells an exec'd child its role.
//! - [`mem`]: faulting in a big buffer's pages in one call.
//! - [`scatter`]: a vector of plain values filled in any order, a run at a time.
//! - [`lend`]: a vector of plain values lent run by run without a copy, which can take
//!   a `map`'s results in place.
//! - [`fd`]: passing descriptors over Unix sockets; what a forked child keeps.
//! - [`poll`]: a `poll(2)` set with tokens, and deadlines as `poll` timeouts.
//! - [`shm`]: memfd and named segments, mappings, bounds-checked access.
//! - [`futex`]: futex wait/wake on shared words.
//! - [`pmutex`]: robust process-shared pthread mutexes.
//! - [`tracker`]: starting the shared-memory tracker (no parent-death signal).
//! - `term`: SIGTERM as a request to stop (cluster nodes), and whether a worker leaves
//!   SIGTERM to its parent (a node's pool).
//! - [`bootstrap`]: the load-time constructor, which runs the function the crate's
//!   bootstrap hands it (`before_main!`).

pub(crate) mod bootstrap;
pub(crate) mod build_id;
pub(crate) mod fd;
pub(crate) mod futex;
pub(crate) mod image;
pub(crate) mod lend;
pub(crate) mod mem;
pub(crate) mod plain;
pub(crate) mod pmutex;
pub(crate) mod poll;
pub(crate) mod scatter;
pub(crate) mod proc;
pub(crate) mod shm;
pub(crate) mod spawn;
pub(crate) mod tracker;
pub(crate) mod term;
