//! Cluster workloads: [`multiproc::cluster::Pool`] over a `redis-server` of the bench's
//! own (127.0.0.1, a free port, no persistence), with two worker nodes that are this
//! very binary re-run with `MULTIPROC_CLUSTER` set (a node must be the caller's own
//! build), each with half the CPUs as slots — held against the local process
//! [`Pool`](multiproc::Pool) with as many workers in the same run. Tiny calls and the
//! tutorial's job show what Redis costs per chunk; "node loss" shows what a node lost
//! mid-call costs: the lease.
//!
//! Each workload starts its own Redis and nodes in [`Workload::setup`](crate::bench::Workload::setup) (`fixture.rs`,
//! over the Redis and nodes of crate `multiproc-testkit`, which the library's tests use
//! too) and stops them when its cases are dropped: the pool first (it deletes its keys),
//! then the nodes (SIGTERM, then SIGKILL after 10 s), then Redis (which writes no file).
//! Every server is started with a parent-death signal, so none outlives a bench that is
//! killed. Skipped, with a note, where `redis-server` is not on the PATH.
//!
//! One file per workload: `tiny_calls.rs`, `tutorial_job.rs`, `node_loss.rs`.

mod fixture;
mod node_loss;
mod tiny_calls;
mod tutorial_job;

pub use node_loss::NodeLoss;
pub use tiny_calls::TinyCalls;
pub use tutorial_job::TutorialJob;

use std::time::Duration;

use multiproc_testkit::REDIS_SERVER;

/// The lease of the bench's caller and nodes.
const LEASE: Duration = Duration::from_secs(1);
/// Worker nodes the bench starts.
const NODES: usize = 2;

/// Slots of each node: half the CPUs, at least 1.
fn slots_per_node() -> usize {
    (multiproc::cpu_count() / 2).max(1)
}

/// Workers of the cluster in all, and of the local pool beside it.
fn total_workers() -> usize {
    NODES * slots_per_node()
}

fn unavailable() -> Option<String> {
    (!multiproc_testkit::on_path(REDIS_SERVER)).then(|| {
        format!(
            "no {REDIS_SERVER} on the PATH (Debian: apt install redis-server): the cluster \
             workloads need a Redis of their own"
        )
    })
}

const GROUP: &str = "cluster";
const LOCAL: &str = "local Pool";
const CLUSTER: &str = "cluster Pool";

fn topology() -> String {
    format!(
        "{NODES} nodes × {} slots on this machine (lease {} s), against a local Pool of {} \
         processes; Redis, the nodes and the caller's thread share the same CPUs.",
        slots_per_node(),
        LEASE.as_secs_f64(),
        total_workers()
    )
}

fn chunk_rule() -> String {
    "Redis round trips per chunk: each chunk costs about six Redis operations (add, read, \
     answer, acknowledge, delete, read the answer), so the cluster's automatic rule sizes \
     chunks to run 100 ms to 1 s of calls (the local pool's: 250 µs to 5 ms), at most \
     131,072 calls; a job starts with one-call probes, whose answers teach it the call time"
        .into()
}

fn start_wait() -> String {
    "when nothing is out, the caller's thread sleeps until work is submitted (no wait); \
     work submitted while chunks are out is sent between the thread's blocking reads of \
     answers (asked for 20 ms; Redis, at its default hz 10, ends such a wait only on its \
     100 ms clock), so it may wait up to ~100 ms."
        .into()
}

/// "1.23 M calls/s".
fn rate(calls: u64, median_us: f64) -> String {
    let per_s = calls as f64 / (median_us / 1e6);
    if per_s >= 1e6 {
        format!("{:.2} M calls/s", per_s / 1e6)
    } else {
        format!("{:.1} k calls/s", per_s / 1e3)
    }
}
