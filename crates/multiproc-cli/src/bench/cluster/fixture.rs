//! Redis, the nodes and the caller's pool of one cluster workload, from its `setup` to
//! the drop of its cases; Redis and the nodes are `multiproc-testkit`'s.

use std::cell::{Cell, RefCell};
use std::error::Error;
use std::io::Read;
use std::rc::Rc;
use std::time::{Duration, Instant};

use multiproc::cluster::{self, Key};
use multiproc_testkit::{Redis, die_with_parent};

use super::{LEASE, NODES, slots_per_node, total_workers};
use crate::bench::pool::double;

/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// `n` bytes from the kernel's random source, in hex.
fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A worker node: this binary, re-run with `MULTIPROC_CLUSTER` set (it becomes a node
/// in `multiproc::init()`, the first thing `main` does); SIGTERM then SIGKILL on drop.
struct Node(multiproc_testkit::Node);

impl Node {
    fn start(url: &str, key: &str) -> Result<Node, Box<dyn Error>> {
        let exe = std::env::current_exe()?;
        let mut cmd =
            multiproc_testkit::Node::command(&exe, &[], url, key.as_bytes(), slots_per_node());
        cmd.env("MULTIPROC_CLUSTER_LEASE_MS", LEASE.as_millis().to_string())
            // Nothing runs when the bench stops its nodes: no reason to wait long.
            .env("MULTIPROC_CLUSTER_DRAIN_MS", "200");
        // This program's main thread starts the bench's servers: they get SIGTERM when
        // it ends, even by SIGKILL.
        die_with_parent(&mut cmd, libc::SIGTERM);
        let node = multiproc_testkit::Node::spawn(cmd)
            .map_err(|e| format!("cannot start a node ({}): {e}", exe.display()))?;
        Ok(Node(node.stop_wait(STOP_WAIT)))
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }
}

/// Redis, the nodes, and the caller's pool of one workload.
pub(super) struct Cluster {
    /// Dropped first: it deletes its keys while Redis is still there.
    pool: Option<cluster::Pool>,
    nodes: RefCell<Vec<Node>>,
    /// Nodes this workload SIGKILLed: their records stay in Redis until they expire.
    killed: Cell<usize>,
    key: String,
    redis: Redis,
}

impl Cluster {
    /// Starts Redis and the nodes, connects a pool, waits until it sees every node, and
    /// runs a first map (so that every worker has started before timing).
    pub(super) fn start() -> Result<Cluster, Box<dyn Error>> {
        // Random per run: the bench's Redis is open to every local user, and the key
        // is what stops them from giving our nodes work.
        let key = random_hex(32)?;
        let redis = Redis::try_start_with(true)?;
        let nodes = (0..NODES)
            .map(|_| Node::start(&redis.url(), &key))
            .collect::<Result<Vec<_>, _>>()?;
        let pool = cluster::Pool::builder(&redis.url())
            .key(Key::new(key.as_bytes())?)
            .lease(LEASE)
            .build()?;
        let c = Cluster {
            pool: Some(pool),
            nodes: RefCell::new(nodes),
            killed: Cell::new(0),
            key,
            redis,
        };
        c.wait_for_nodes()?;
        let n = 4 * total_workers() as u64;
        let out = c.pool().map(double, 0..n)?;
        if out != (0..n).map(double).collect::<Vec<_>>() {
            return Err("the cluster's first map gave wrong values".into());
        }
        Ok(c)
    }

    pub(super) fn pool(&self) -> &cluster::Pool {
        self.pool.as_ref().expect("the pool lives until drop")
    }

    /// Waits until the pool lists every node of ours (it reads them about every second).
    fn wait_for_nodes(&self) -> Result<(), Box<dyn Error>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pids: Vec<u32> = {
                let mut nodes = self.nodes.borrow_mut();
                for n in nodes.iter_mut() {
                    if let Some(status) = n.0.try_wait() {
                        return Err(format!(
                            "a cluster node (pid {}) exited ({status}); its stderr is above",
                            n.pid()
                        )
                        .into());
                    }
                }
                nodes.iter().map(Node::pid).collect()
            };
            let workers = self.pool().workers();
            if pids.iter().all(|p| workers.iter().any(|w| w.pid == *p)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the pool did not see nodes {pids:?} within 30 s (it sees {:?})",
                    workers.iter().map(|w| w.pid).collect::<Vec<_>>()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts nodes until there are [`NODES`] again, and waits until the pool sees them.
    pub(super) fn ensure_nodes(&self) -> Result<(), Box<dyn Error>> {
        let missing = NODES.saturating_sub(self.nodes.borrow().len());
        if missing == 0 {
            return Ok(());
        }
        for _ in 0..missing {
            let node = Node::start(&self.redis.url(), &self.key)?;
            self.nodes.borrow_mut().push(node);
        }
        self.wait_for_nodes()
    }

    /// The pid of the node that holds the lease of the one pending chunk, as soon as a
    /// node has taken it (from the lease table: the calls stream's pending entries).
    pub(super) fn lease_holder(&self, timeout: Duration) -> Result<u32, Box<dyn Error>> {
        let streams: Vec<String> = self
            .redis
            .query(redis::cmd("KEYS").arg("multiproc:*:calls"))?;
        let [stream] = streams.as_slice() else {
            return Err(format!("expected one calls stream in Redis, found {streams:?}").into());
        };
        let deadline = Instant::now() + timeout;
        loop {
            let pending: redis::streams::StreamPendingCountReply = self.redis.query(
                redis::cmd("XPENDING")
                    .arg(stream)
                    .arg("nodes")
                    .arg("-")
                    .arg("+")
                    .arg(10),
            )?;
            // Consumers are named host:pid.
            let holder = pending.ids.iter().find_map(|p| {
                let pid: u32 = p.consumer.rsplit(':').next()?.parse().ok()?;
                self.nodes
                    .borrow()
                    .iter()
                    .any(|n| n.pid() == pid)
                    .then_some(pid)
            });
            if let Some(pid) = holder {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                return Err(format!("no node of ours took the call within {timeout:?}").into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILLs our node `pid` and reaps it.
    pub(super) fn kill(&self, pid: u32) -> Result<(), Box<dyn Error>> {
        let mut nodes = self.nodes.borrow_mut();
        let i = nodes
            .iter()
            .position(|n| n.pid() == pid)
            .ok_or_else(|| format!("no node of ours has pid {pid}"))?;
        nodes.remove(i).0.kill()?;
        self.killed.set(self.killed.get() + 1);
        Ok(())
    }

    /// Keys in Redis other than the records of killed nodes (which expire 3 leases
    /// after their last heartbeat).
    fn keys_left(&self) -> redis::RedisResult<Vec<String>> {
        let keys: Vec<String> = self.redis.try_keys()?;
        let killed = self.killed.get() > 0;
        Ok(keys
            .into_iter()
            .filter(|k| !(killed && (k.contains(":node:") || k.ends_with(":nodes"))))
            .collect())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.pool.take());
        let mut nodes = std::mem::take(self.nodes.get_mut());
        for n in &nodes {
            n.0.signal(libc::SIGTERM);
        }
        for n in nodes.drain(..) {
            let pid = n.pid();
            if !n.0.stop() {
                eprintln!(
                    "bench: cluster node {} did not stop within {STOP_WAIT:?} of SIGTERM; killed",
                    pid
                );
            }
        }
        match self.keys_left() {
            Ok(left) if left.is_empty() => {}
            Ok(left) => eprintln!(
                "bench: cluster: keys left in Redis after its pool and nodes stopped: {left:?}"
            ),
            Err(e) => eprintln!("bench: cluster: cannot list the keys left in Redis: {e}"),
        }
        // Then Redis stops (a field), and its directory goes.
    }
}

/// A workload's cluster, from [`Workload::setup`](crate::bench::Workload::setup) to its cases.
#[derive(Default)]
pub(super) struct Slot(RefCell<Option<Rc<Cluster>>>);

impl Slot {
    pub(super) fn start(&self) -> Result<(), Box<dyn Error>> {
        *self.0.borrow_mut() = Some(Rc::new(Cluster::start()?));
        Ok(())
    }

    /// The cluster started by `setup`, for the cases (which stop it when dropped).
    pub(super) fn take(&self) -> Option<Rc<Cluster>> {
        let c = self.0.borrow_mut().take();
        if c.is_none() {
            eprintln!("bench: the cluster was not started (setup did not run)");
        }
        c
    }
}
