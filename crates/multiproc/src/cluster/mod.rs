//! The same pool on many machines that come and go, through Redis (feature `cluster`,
//! on by default).
//!
//! A caller's [`Pool`] puts chunks of calls in a Redis stream; worker nodes — the same
//! executable, started anywhere with `MULTIPROC_CLUSTER=redis://host:6379/0` (or
//! calling [`serve`]) — take them through a consumer group, run them in their own local
//! process pool, and answer on the caller's answers stream. Redis streams give the
//! leases: a chunk taken by a node is in the group's pending-entries list until its
//! answer is stored (`XACK`); the node renews the lease every third of the lease time
//! while the chunk runs (a call may run for an hour); a node that stops renewing
//! (killed, cut off, frozen) loses the chunk after the lease time and another node takes
//! it over (`XPENDING` … `IDLE`, `XCLAIM`).
//!
//! What each failure costs:
//! - **A call panics** on a node: that call answers [`Error::Panicked`](crate::Error::Panicked) (inside
//!   [`Error::OnNode`](crate::Error::OnNode), which names the node); it is not run again.
//! - **A worker process of a node dies** (a segfault, the OOM killer): that call
//!   answers [`Error::Killed`](crate::Error::Killed) (inside [`Error::OnNode`](crate::Error::OnNode)); the node replaces the worker.
//! - **A node is lost** (SIGKILL, a machine that fails, a network cut): within about a
//!   lease the caller logs a warning (`tracing`) and drops it from
//!   [`Pool::workers`]; the chunks it held run again elsewhere after the lease time,
//!   at most [`PoolBuilder::retries`] more times (default 2; the caller warns which
//!   calls run again); then their calls answer [`Error::Cluster`](crate::Error::Cluster)
//!   naming the node (and the caller warns that they gave up). Errors and warnings
//!   number calls as the caller does (their index in the map). A call may therefore
//!   **run twice**: if its node was lost after running it but before its answer was
//!   stored. The caller keeps exactly one answer per call (the first).
//! - **A node is stopped with SIGTERM** (preemption, a batch system's time limit): it
//!   takes no new chunk; running ones (its first included) finish within the drain time
//!   ([`ServeOptions::drain`]) and are answered, and the node exits 0 as soon as none
//!   runs. What still runs when the drain time ends is handed back at once (no lease
//!   wait) and runs again elsewhere; that run counts against [`PoolBuilder::retries`],
//!   and with none left the calls answer "handed back by node host:pid (SIGTERM)".
//! - **No node can take the work** (none connected, or only nodes of other builds):
//!   after [`PoolBuilder::wait_for_nodes`] (default 10 s) the waiting calls answer
//!   [`Error::Cluster`](crate::Error::Cluster) saying which: "no node connected", or
//!   "no node of this build (3 nodes of other builds are connected: rebuild/restart
//!   them)".
//! - **The caller dies**: its keys expire 4 leases after its last heartbeat; nodes
//!   check that the caller lives before running a chunk of it and drop the chunks of
//!   a caller that is gone. Nothing of it stays in Redis.
//! - **Redis goes away**: the caller's calls answer [`Error::Cluster`](crate::Error::Cluster) with the address
//!   and the cause after [`PoolBuilder::unreachable_after`] (default 5 s), never a hang;
//!   nodes retry the connection with backoff and log it.
//!
//! **Clocks need not agree.** Heartbeats and the registry of nodes are timestamped
//! on the Redis server's clock (each process measures its offset from it with `TIME`
//! every 10 seconds), so a machine whose clock is minutes off still sees, and is seen
//! by, the others. Leases and timeouts are measured on each machine's monotonic clock.
//! A node's SIGTERM handling: see [`serve`].
//!
//! **Only the same build.** Calls name their task by code offsets, so every key lives
//! under the build id: a node sees only work of its own build, and says so when it
//! sees none. One key is shared by every build, a registry of nodes and their build ids
//! (`multiproc:nodes`), so that a caller no node serves can say that nodes of other
//! builds are there.
//!
//! **Security.** Anyone who can write to the Redis database could make a node jump to
//! an offset in its code, so every message that carries work (chunk, answer) is signed with
//! HMAC-SHA256 under a key shared by the caller and its nodes ([`Key`]:
//! `MULTIPROC_CLUSTER_KEY`, or a file named by `MULTIPROC_CLUSTER_KEY_FILE`), and
//! checked in constant time before anything is decoded. A node without a key refuses to
//! start. A message that fails the check is not run: it is counted in the node's
//! heartbeat ([`NodeInfo::refused`]) and handed to another node, and deleted after 5
//! refusals; a caller whose work no node accepts gets "N nodes refused its messages:
//! wrong key?". Heartbeats, the registry of nodes and the consumer names that say how
//! a chunk's last run ended are not signed: they carry no work, and a forged one
//! changes only the words of an error or a log line. Redis passwords, ACL users and TLS (`rediss://`, feature `cluster-tls`)
//! go in the URL.
//!
//! **Values.** The same codec and frame limit as the local pool. OS handles (pipes,
//! queues, shared memory) cannot cross machines: such an argument answers an
//! [`Error::Encode`](crate::Error::Encode) that says so, before anything is sent.
//!
//! **Chunks sized for a broker.** Each chunk costs about six Redis operations (add,
//! read, answer, acknowledge, delete, read the answer) plus a lease renewal per third
//! of a lease; one Redis serves on the order of 10^5 operations a second. So
//! [`ChunkSize::Auto`](crate::ChunkSize::Auto) targets chunks of 100 ms to 1 s of calls
//! (the local pool's are 250 µs to 5 ms): at 100 ms a chunk, one Redis feeds on the order
//! of 10^5 / 6 × 0.1 s ≈ 1,600 busy slots.

mod auth;
mod broker;
mod caller;
mod message;
mod node;

pub use auth::{KEY_ENV, KEY_FILE_ENV, Key};
pub use caller::{Pool, PoolBuilder};
pub use message::NodeInfo;
pub(crate) use node::enter_if_node;
pub use node::{CLUSTER_ENV, ServeOptions, serve};

/// This machine's host name, as nodes are named.
pub(super) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}
