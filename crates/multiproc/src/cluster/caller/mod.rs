//! [`Pool`]: the pool interface over Redis, on the caller's side. A thread of the pool
//! drives the pool core: it adds chunks to the caller's calls stream, reads answers
//! from its answers stream, and keeps the caller's keys alive.
//!
//! The core sees *lanes*, not nodes: a lane is a place for one chunk in the stream (the
//! pool keeps about two per node slot, so that every free slot finds a chunk waiting).
//! Which node runs a chunk, and which runs it again when a node is lost, is the
//! leases' business (see [`node`](super::node)).
//!
//! This file: the pool's handle and its builder. The thread that drives the pool, and
//! renews the caller's keys, is in [`driver`]; what it knows of the nodes (listing,
//! loss, no node of this build, refused messages), in [`nodes`]; the settings they
//! share, in [`settings`].

mod driver;
mod nodes;
mod settings;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::auth::Key;
use super::broker::{self, Broker, Keys};
use super::message::NodeInfo;
use crate::error::{Error, Result};
use crate::pool::core::chunking::BROKER;
use crate::pool::core::{Config as CoreConfig, Core};
use crate::pool::options::{PoolOptions, option_setters};
use crate::pool::remote::{RemotePool, Shared};
use crate::pool::{ChunkSize, Progress};

use self::driver::{drive, heartbeat};
use self::nodes::{MIN_LANES, Status};
use self::settings::Settings;

/// How long calls wait for a node of the caller's build by default.
const WAIT_FOR_NODES: Duration = Duration::from_secs(10);

/// A pool whose workers are the nodes of a cluster, reached through Redis (feature
/// `cluster`, on by default).
///
/// ```no_run
/// use multiproc::prelude::*;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// fn main() -> multiproc::Result<()> {
///     multiproc::init(); // with MULTIPROC_CLUSTER set, this process is a node instead
///     let pool = multiproc::cluster::Pool::connect("redis://127.0.0.1:6379/0")?;
///     assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
///     Ok(())
/// }
/// ```
///
/// Needs the cluster key (`MULTIPROC_CLUSTER_KEY`, or [`PoolBuilder::key`]). See the
/// [module docs](super) for what each failure costs.
pub struct Pool {
    remote: RemotePool,
    status: Arc<Mutex<Status>>,
    address: String,
}

/// Options for a cluster [`Pool`].
#[derive(Debug)]
pub struct PoolBuilder {
    url: String,
    key: Option<Key>,
    lease: Duration,
    options: PoolOptions,
    unreachable: Duration,
    wait_for_nodes: Option<Duration>,
}

impl PoolBuilder {
    /// The key shared with the nodes (default: [`Key::from_env`]).
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// The lease time (default 5 s): a node that stops renewing a chunk's lease (it was
    /// killed, cut off, frozen) loses the chunk after this long, and another node runs
    /// it. Nodes must be started with the same lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    option_setters! { options;
        /// How many times a chunk whose node was lost runs again (default 2) before its
        /// calls answer an [`Error::Cluster`] naming the node. A panic is answered, never
        /// retried.
        fn retries(n: u32);

        /// A call running longer than this on a node has its worker killed there and
        /// answers [`Error::Timeout`]; with it, [`ChunkSize::Auto`] sends one call at a
        /// time.
        fn task_timeout(timeout: Duration);

        /// Chunk size policy; default [`ChunkSize::Auto`], sized for a broker: chunks of
        /// 100 ms to 1 s of calls (see the [module docs](super)).
        fn chunk_size(chunk: ChunkSize);

        /// Progress reporting for `map`, `map_results` and `imap`.
        fn progress(progress: Progress);
    }

    /// How long Redis may be unreachable before the pool gives up and its calls answer
    /// [`Error::Cluster`] (default 5 s).
    pub fn unreachable_after(mut self, d: Duration) -> Self {
        self.unreachable = d;
        self
    }

    /// How long calls may wait while no node of this program's build is connected
    /// (default 10 s): then every call not answered answers [`Error::Cluster`] saying
    /// why — "no node connected", or "no node of this build (N nodes of other builds
    /// are connected: rebuild/restart them)" (a node runs only work of its own build).
    /// `None`: wait for nodes as long as it takes (the pool logs a warning when it
    /// starts waiting). The clock starts when work is waiting and no node is listed,
    /// and restarts whenever one is.
    ///
    /// ```no_run
    /// # fn main() -> multiproc::Result<()> {
    /// use std::time::Duration;
    /// // Nodes come from a batch queue and may take a while to start.
    /// let pool = multiproc::cluster::Pool::builder("redis://10.0.0.1:6379/0")
    ///     .wait_for_nodes(Some(Duration::from_secs(600)))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn wait_for_nodes(mut self, wait: Option<Duration>) -> Self {
        self.wait_for_nodes = wait;
        self
    }

    /// Connects to Redis and starts the pool's thread.
    pub fn build(self) -> Result<Pool> {
        let key = match self.key {
            Some(k) => k,
            None => Key::from_env()?,
        };
        let mut redis = Broker::connect(&self.url, Duration::from_secs(5))?;
        let address = redis.address.clone();
        let host = super::hostname();
        let caller = format!("{host}-{}-{:016x}", std::process::id(), random_u64());
        let build = crate::sys::build_id::hex(crate::sys::build_id::build_id());
        let keys = Keys::new(&build);
        redis.ensure_group(&keys.calls(&caller))?;
        // The answers stream must exist: nodes add to it only if it does (so that the
        // answers of a caller that is gone do not make it again).
        redis.ensure_group(&keys.answers(&caller))?;
        let settings = Settings {
            url: self.url,
            key,
            lease: self.lease,
            retries: self.options.retries,
            task_timeout: self.options.task_timeout,
            unreachable: self.unreachable,
            wait_for_nodes: self.wait_for_nodes,
            build,
            keys,
            caller,
            address: address.clone(),
        };
        let core = Core::new(CoreConfig {
            workers: MIN_LANES,
            retries: 0,
            task_timeout: self.options.task_timeout,
            max_tasks_per_child: None,
            pipeline: false,
            chunk_time: BROKER,
        });
        let shared = Arc::new(Shared::new(core));
        let status = Arc::new(Mutex::new(Status::default()));
        heartbeat(&mut redis, &settings)?;
        let driver = {
            let shared = shared.clone();
            let status = status.clone();
            std::thread::Builder::new()
                .name("multiproc-cluster".into())
                .spawn(move || drive(settings, redis, &shared, &status))
                .map_err(|e| Error::io("starting the cluster pool's thread", e))?
        };
        Ok(Pool {
            remote: RemotePool::new(shared, driver, self.options.chunk, self.options.progress),
            status,
            address,
        })
    }
}

impl Pool {
    /// A pool on the cluster whose Redis is at `url` (`redis://[user:password@]host:port/db`;
    /// `rediss://` with feature `cluster-tls`), with default options.
    pub fn connect(url: &str) -> Result<Pool> {
        Pool::builder(url).build()
    }

    /// A [`PoolBuilder`] for the cluster at `url`.
    pub fn builder(url: &str) -> PoolBuilder {
        PoolBuilder {
            url: url.to_owned(),
            key: None,
            lease: Duration::from_secs(5),
            options: PoolOptions {
                retries: 2,
                ..PoolOptions::default()
            },
            unreachable: Duration::from_secs(5),
            wait_for_nodes: Some(WAIT_FOR_NODES),
        }
    }

    /// The live worker nodes of this build, as last read (every third of a lease, at
    /// least every second). A node is listed while its heartbeat (every third of a
    /// lease) keeps coming; one that stops renewing its leases (killed, cut off,
    /// frozen) leaves the list within a lease and a read, and the pool logs a warning;
    /// one stopped cleanly (SIGTERM) leaves it when it exits.
    pub fn workers(&self) -> Vec<NodeInfo> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .clone()
    }

    /// The Redis server, as errors name it.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn parallelism_now(&self) -> usize {
        self.workers().iter().map(|n| n.slots as usize).sum()
    }
}

/// 64 random bits (std's per-process random hash keys, drawn from the OS), so that two
/// callers never share a name: same host name and pid (containers), same millisecond.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(broker::now_ms());
    h.finish()
}

crate::pool::remote::remote_pool_impls!(Pool);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("cluster::Pool")
            .field("address", &self.address)
            .field("chunk", &self.remote.chunk)
            .field("closed", &self.remote.is_closed())
            .finish()
    }
}
