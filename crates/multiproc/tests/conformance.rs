//! One contract for every pool: the same checks (`conformance/contract.rs`), run against
//! the process [`Pool`](multiproc::Pool), the [`ThreadPool`](multiproc::ThreadPool) and
//! the cluster pool (a real `redis-server` and two nodes, shared by this binary's cluster
//! tests). Where a pool differs on purpose (what `cancel` and `terminate` can stop), its
//! [`Caps`](contract::Caps) say so; anything else that differs is a bug.
//!
//! With feature `mpi`, the MPI pool too: each of its tests re-runs this binary under
//! `mpirun -n 3` (one pool per process: MPI is initialized once), rank 0 running the
//! check and ranks 1 and 2 serving as its workers.

// The cluster flavour stops its shared servers in an atexit handler.
#![allow(unsafe_code)]

mod common;
#[path = "conformance/contract.rs"]
mod contract;

use contract::{Caps, Flavour, WORKERS, conformance};

/// The process pool.
struct Processes;

impl Flavour for Processes {
    type P = multiproc::Pool;
    const CAPS: Caps = Caps {
        cancel_stops_running: true,
        terminate_stops_running: true,
        terminate_delivers_running: false,
    };

    fn with_pool(f: impl FnOnce(&Self::P)) {
        let pool = multiproc::Pool::new(WORKERS).unwrap();
        f(&pool);
        let pids: Vec<u32> = pool.workers().iter().map(|w| w.pid).collect();
        drop(pool);
        // Dropping a pool waits for its workers: none is left, not even a zombie.
        for pid in pids {
            assert!(
                common::wait_dead(pid, std::time::Duration::from_secs(5)),
                "worker {pid} outlived its pool"
            );
        }
    }

    fn workers(p: &Self::P) -> usize {
        p.workers().len()
    }
}

/// The thread pool: a thread cannot be killed, so neither cancel nor terminate stops a
/// running call (documented on `ThreadPool`'s `terminate` and `AsyncResult::cancel`);
/// after `terminate` a running call's answer still arrives ("calls already running on
/// a thread finish"), where the remote pools answer `PoolTerminated` at once.
struct Threads;

impl Flavour for Threads {
    type P = multiproc::ThreadPool;
    const CAPS: Caps = Caps {
        cancel_stops_running: false,
        terminate_stops_running: false,
        terminate_delivers_running: true,
    };

    fn with_pool(f: impl FnOnce(&Self::P)) {
        let pool = multiproc::ThreadPool::new(WORKERS).unwrap();
        f(&pool);
    }

    /// `ThreadPool` has no `workers()` (see the report of the suite): its thread count.
    fn workers(p: &Self::P) -> usize {
        p.threads()
    }
}

conformance!(processes, Processes);
conformance!(threads, Threads);

#[cfg(feature = "cluster")]
#[path = "conformance/cluster_flavour.rs"]
mod cluster_flavour;
#[cfg(feature = "cluster")]
conformance!(cluster, cluster_flavour::Cluster);

#[cfg(feature = "mpi")]
#[path = "conformance/mpi_flavour.rs"]
mod mpi_flavour;
#[cfg(feature = "mpi")]
conformance!(mpi, mpi_flavour::Mpi);
