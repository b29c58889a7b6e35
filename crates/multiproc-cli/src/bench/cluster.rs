//! Cluster workloads: [`multiproc::cluster::Pool`] over a `redis-server` of the bench's
//! own (127.0.0.1, a free port, no persistence), with two worker nodes that are this
//! very binary re-run with `MULTIPROC_CLUSTER` set (a node must be the caller's own
//! build), each with half the CPUs as slots — held against the local process
//! [`Pool`](multiproc::Pool) with as many workers in the same run. Tiny calls and the
//! tutorial's job show what Redis costs per chunk; "node loss" shows what a node lost
//! mid-call costs: the lease.
//!
//! Each workload starts its own Redis and nodes in [`Workload::setup`] and stops them
//! when its cases are dropped: the pool first (it deletes its keys), then the nodes
//! (SIGTERM, then SIGKILL after 10 s), then Redis (which writes no file). Every server
//! is started with a parent-death signal, so none outlives a bench that is killed. Skipped, with a note, where `redis-server` is not on the PATH.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::error::Error;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multiproc::cluster::{self, Key};

use super::pool::{self, double};
use super::{Case, CaseResult, Kind, Row, Workload, find};
use crate::sys;
use crate::work::work;

const REDIS_SERVER: &str = "redis-server";
/// The lease of the bench's caller and nodes.
const LEASE: Duration = Duration::from_secs(1);
/// Worker nodes the bench starts.
const NODES: usize = 2;
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// The call that runs while its node is killed.
const NAP_MS: u64 = 300;

/// Slots of each node: half the CPUs, at least 1.
fn slots_per_node() -> usize {
    (multiproc::cpu_count() / 2).max(1)
}

/// Workers of the cluster in all, and of the local pool beside it.
fn total_workers() -> usize {
    NODES * slots_per_node()
}

/// Sleeps `ms` milliseconds in a worker; returns `ms`.
pub fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Whether `program` is an executable file in a directory of the PATH.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn unavailable() -> Option<String> {
    (!on_path(REDIS_SERVER)).then(|| {
        format!(
            "no {REDIS_SERVER} on the PATH (Debian: apt install redis-server): the cluster \
             workloads need a Redis of their own"
        )
    })
}

/// `n` bytes from the kernel's random source, in hex.
fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Waits at most `timeout` for `child` to exit; whether it did (and was reaped).
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => return false,
        }
    }
}

/// Stops `child`: SIGTERM, then SIGKILL if it has not exited after `timeout`; reaps it.
fn stop(child: &mut Child, timeout: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = sys::send_signal(child.id(), libc::SIGTERM);
    if !wait_exit(child, timeout) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A redis-server of the bench's own: 127.0.0.1, a free port, no persistence (it
/// writes no file: nothing of it can stay behind, even if the bench is killed); its log
/// (stdout) is kept, its last lines, to say why it failed to start.
struct Redis {
    child: Child,
    port: u16,
    con: RefCell<Option<redis::Connection>>,
}

/// Lines of Redis's log kept.
const LOG_LINES: usize = 8;

impl Redis {
    fn start() -> Result<Redis, Box<dyn Error>> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            // Its working directory; with no persistence it writes nothing there.
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        sys::die_with_parent(&mut cmd, libc::SIGTERM);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {REDIS_SERVER}: {e}"))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            let log = log.clone();
            // Ends at Redis's exit (end of its stdout).
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == LOG_LINES {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        // From here on, Drop stops it.
        let mut redis = Redis {
            child,
            port,
            con: RefCell::new(None),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong: redis::RedisResult<String> = redis.query(&redis::cmd("PING"));
            if pong.is_ok() {
                return Ok(redis);
            }
            let exited = matches!(redis.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                if exited {
                    std::thread::sleep(Duration::from_millis(50)); // its last lines
                }
                let log = log.lock().unwrap_or_else(|p| p.into_inner());
                let tail: Vec<&str> = log.iter().map(String::as_str).collect();
                return Err(format!(
                    "{REDIS_SERVER} on port {port} {}; its log ends: {}",
                    if exited {
                        "exited at start"
                    } else {
                        "did not answer within 10 s"
                    },
                    tail.join(" | ")
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs one command on the bench's own connection (opened on first use, reopened
    /// after an error).
    fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut con = self.con.borrow_mut();
        if con.is_none() {
            let client = redis::Client::open(self.url())?;
            let c = client.get_connection_with_timeout(Duration::from_secs(2))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            *con = Some(c);
        }
        let result = cmd.query(con.as_mut().expect("opened above"));
        if result.is_err() {
            *con = None;
        }
        result
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        drop(self.con.get_mut().take());
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// A worker node: this binary, re-run with `MULTIPROC_CLUSTER` set (it becomes a node
/// in `multiproc::init()`, the first thing `main` does).
struct Node {
    child: Child,
}

impl Node {
    fn start(url: &str, key: &str) -> Result<Node, Box<dyn Error>> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(&exe);
        cmd.env(cluster::CLUSTER_ENV, url)
            .env(cluster::KEY_ENV, key)
            .env_remove(cluster::KEY_FILE_ENV)
            .env("MULTIPROC_CLUSTER_SLOTS", slots_per_node().to_string())
            .env("MULTIPROC_CLUSTER_LEASE_MS", LEASE.as_millis().to_string())
            // Nothing runs when the bench stops its nodes: no reason to wait long.
            .env("MULTIPROC_CLUSTER_DRAIN_MS", "200")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        sys::die_with_parent(&mut cmd, libc::SIGTERM);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start a node ({}): {e}", exe.display()))?;
        Ok(Node { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        stop(&mut self.child, STOP_WAIT);
    }
}

/// Redis, the nodes, and the caller's pool of one workload.
struct Cluster {
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
    fn start() -> Result<Cluster, Box<dyn Error>> {
        // Random per run: the bench's Redis is open to every local user, and the key
        // is what stops them from giving our nodes work.
        let key = random_hex(32)?;
        let redis = Redis::start()?;
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

    fn pool(&self) -> &cluster::Pool {
        self.pool.as_ref().expect("the pool lives until drop")
    }

    /// Waits until the pool lists every node of ours (it reads them about every second).
    fn wait_for_nodes(&self) -> Result<(), Box<dyn Error>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pids: Vec<u32> = {
                let mut nodes = self.nodes.borrow_mut();
                for n in nodes.iter_mut() {
                    if let Ok(Some(status)) = n.child.try_wait() {
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
    fn ensure_nodes(&self) -> Result<(), Box<dyn Error>> {
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
    fn lease_holder(&self, timeout: Duration) -> Result<u32, Box<dyn Error>> {
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
    fn kill(&self, pid: u32) -> Result<(), Box<dyn Error>> {
        let mut nodes = self.nodes.borrow_mut();
        let i = nodes
            .iter()
            .position(|n| n.pid() == pid)
            .ok_or_else(|| format!("no node of ours has pid {pid}"))?;
        let mut node = nodes.remove(i);
        node.child.kill()?;
        node.child.wait()?;
        self.killed.set(self.killed.get() + 1);
        Ok(())
    }

    /// Keys in Redis other than the records of killed nodes (which expire 3 leases
    /// after their last heartbeat).
    fn keys_left(&self) -> redis::RedisResult<Vec<String>> {
        let keys: Vec<String> = self.redis.query(redis::cmd("KEYS").arg("*"))?;
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
            let _ = sys::send_signal(n.pid(), libc::SIGTERM);
        }
        for n in &mut nodes {
            if !wait_exit(&mut n.child, STOP_WAIT) {
                eprintln!(
                    "bench: cluster node {} did not stop within {STOP_WAIT:?} of SIGTERM; killed",
                    n.pid()
                );
            }
        }
        drop(nodes); // kills and reaps any that did not stop
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

/// A workload's cluster, from [`Workload::setup`] to its cases.
#[derive(Default)]
struct Slot(RefCell<Option<Rc<Cluster>>>);

impl Slot {
    fn start(&self) -> Result<(), Box<dyn Error>> {
        *self.0.borrow_mut() = Some(Rc::new(Cluster::start()?));
        Ok(())
    }

    /// The cluster started by `setup`, for the cases (which stop it when dropped).
    fn take(&self) -> Option<Rc<Cluster>> {
        let c = self.0.borrow_mut().take();
        if c.is_none() {
            eprintln!("bench: the cluster was not started (setup did not run)");
        }
        c
    }
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

/// 200,000 calls of `x -> 2x` through the cluster and through the local pool.
#[derive(Default)]
pub struct TinyCalls {
    cluster: Slot,
}

impl Workload for TinyCalls {
    fn name(&self) -> &'static str {
        "cluster tiny calls"
    }

    fn description(&self) -> &'static str {
        "map x -> 2x over 200,000 inputs through Redis to 2 nodes, and through a local Pool \
         of as many workers (pools started before timing)"
    }

    fn reference(&self) -> &'static str {
        LOCAL
    }

    fn group(&self) -> Option<&'static str> {
        Some(GROUP)
    }

    fn unavailable(&self) -> Option<String> {
        unavailable()
    }

    fn setup(&self) -> Result<(), Box<dyn Error>> {
        self.cluster.start()
    }

    fn max_iters(&self) -> Option<u64> {
        Some(5)
    }

    fn cases(&self) -> Vec<Case> {
        let Some(c) = self.cluster.take() else {
            return Vec::new();
        };
        let mut cases = Vec::new();
        match pool::started_pool(total_workers()) {
            Ok(p) => cases.push(Case::new(LOCAL, Kind::Multiproc, move |_| {
                pool::timed_map(|| p.map(double, 0..pool::TINY))
            })),
            Err(e) => eprintln!("bench: no local Pool: {e}"),
        }
        cases.push(Case::new(CLUSTER, Kind::Multiproc, move |_| {
            pool::timed_map(|| c.pool().map(double, 0..pool::TINY))
        }));
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            topology(),
            format!(
                "what dominates the cluster's time: {}. So 200,000 calls of ~nothing go as a \
                 few probes, then a few chunks of up to 131,072 calls, each waiting its round \
                 trips (caller → Redis → node → its local pool → Redis → caller), its values \
                 encoded, copied through Redis and decoded; the calls themselves are ~nothing.",
                chunk_rule()
            ),
            format!("and when work is sent: {}", start_wait()),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        [LOCAL, CLUSTER]
            .iter()
            .filter_map(|name| find(rows, name))
            .map(|r| format!("{}: {}", r.name, rate(pool::TINY, r.median_us)))
            .collect()
    }
}

/// The tutorial's job split over the cluster's slots, and over a local pool.
#[derive(Default)]
pub struct TutorialJob {
    cluster: Slot,
}

impl Workload for TutorialJob {
    fn name(&self) -> &'static str {
        "cluster tutorial job"
    }

    fn description(&self) -> &'static str {
        "sum 0..50,000,000 twice, split over the 2 nodes' slots through Redis, and over a \
         local Pool of as many workers (pools started before timing)"
    }

    fn reference(&self) -> &'static str {
        LOCAL
    }

    fn group(&self) -> Option<&'static str> {
        Some(GROUP)
    }

    fn unavailable(&self) -> Option<String> {
        unavailable()
    }

    fn setup(&self) -> Result<(), Box<dyn Error>> {
        self.cluster.start()
    }

    fn max_iters(&self) -> Option<u64> {
        Some(21)
    }

    fn cases(&self) -> Vec<Case> {
        let Some(c) = self.cluster.take() else {
            return Vec::new();
        };
        let pieces = pool::split(total_workers() as u64);
        let mut cases = Vec::new();
        match multiproc::Pool::new(total_workers()) {
            Ok(p) => {
                let pieces = pieces.clone();
                cases.push(Case::new(LOCAL, Kind::Multiproc, move |_| {
                    pool::timed_sum(|| Ok(p.map(work, pieces.iter().copied())?.iter().sum()))
                }));
            }
            Err(e) => eprintln!("bench: no local Pool: {e}"),
        }
        cases.push(Case::new(CLUSTER, Kind::Multiproc, move |_| {
            pool::timed_sum(|| Ok(c.pool().map(work, pieces.iter().copied())?.iter().sum()))
        }));
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            topology(),
            format!(
                "what dominates the difference: {}. The job is {} pieces of ~15-30 ms, each \
                 sent as a one-call chunk (probes, and far below the 100 ms a chunk aims \
                 for), so the cluster adds a few Redis round trips per piece to the same work, \
                 and when work is sent: {}",
                chunk_rule(),
                pool::split(total_workers() as u64).len(),
                start_wait()
            ),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        match (find(rows, CLUSTER), find(rows, LOCAL)) {
            (Some(c), Some(l)) => vec![format!(
                "the cluster adds {:.2} ms to the local Pool's {:.2} ms ({:.2}x its time)",
                (c.median_us - l.median_us) / 1e3,
                l.median_us / 1e3,
                c.ratio / l.ratio
            )],
            _ => Vec::new(),
        }
    }
}

const NAP_REF: &str = "apply_async(nap 300 ms), no node lost";
const NAP_KILLED: &str = "its node SIGKILLed: kill → answer (lease 1 s)";

/// A node SIGKILLed while it runs a call: how long until another node answers it.
#[derive(Default)]
pub struct NodeLoss {
    cluster: Slot,
}

impl Workload for NodeLoss {
    fn name(&self) -> &'static str {
        "cluster node loss"
    }

    fn description(&self) -> &'static str {
        "apply_async of a 300 ms nap on 2 nodes; SIGKILL the node that took it, time until \
         the answer comes from the other (a new node replaces the dead one between \
         repetitions, untimed)"
    }

    fn reference(&self) -> &'static str {
        NAP_REF
    }

    fn group(&self) -> Option<&'static str> {
        Some(GROUP)
    }

    fn unavailable(&self) -> Option<String> {
        unavailable()
    }

    fn setup(&self) -> Result<(), Box<dyn Error>> {
        self.cluster.start()
    }

    fn max_iters(&self) -> Option<u64> {
        Some(5)
    }

    fn cases(&self) -> Vec<Case> {
        let Some(c) = self.cluster.take() else {
            return Vec::new();
        };
        let answer = |r: multiproc::AsyncResult<u64>| -> Result<(), Box<dyn Error>> {
            match r.get_timeout(Duration::from_secs(60))? {
                NAP_MS => Ok(()),
                other => Err(format!("nap({NAP_MS}) answered {other}").into()),
            }
        };
        let reference = {
            let c = c.clone();
            move |_| -> CaseResult {
                c.ensure_nodes()?;
                let t = Instant::now();
                answer(c.pool().apply_async(nap, NAP_MS)?)?;
                Ok(t.elapsed())
            }
        };
        let killed = move |_| -> CaseResult {
            c.ensure_nodes()?;
            let r = c.pool().apply_async(nap, NAP_MS)?;
            let holder = c.lease_holder(Duration::from_secs(10))?;
            let t = Instant::now();
            c.kill(holder)?;
            answer(r)?;
            let d = t.elapsed();
            // The next repetition has two nodes again (untimed).
            c.ensure_nodes()?;
            Ok(d)
        };
        vec![
            Case::new(NAP_REF, Kind::Multiproc, reference),
            Case::new(NAP_KILLED, Kind::Multiproc, killed),
        ]
    }

    fn notes(&self) -> Vec<String> {
        vec![
            topology(),
            format!(
                "what dominates: the lease. The bench kills the node a few ms after it took \
                 the call (seen in the calls stream's pending entries); the chunk stays \
                 leased to the dead node until its lease is {} s old (a live node renews \
                 every third of a lease); the other node, between reads that block 200 ms \
                 (up to 300 ms on Redis's 100 ms clock), finds it expired, claims it \
                 (XCLAIM) and runs the {NAP_MS} ms nap again from its start. So kill → \
                 answer ≈ lease + ≤ 300 ms + the nap; a shorter lease (PoolBuilder::lease and \
                 MULTIPROC_CLUSTER_LEASE_MS) recovers sooner but renews more often.",
                LEASE.as_secs_f64()
            ),
            format!(
                "the reference row is the same call with no node lost (submit → answer): the \
                 nap, a few Redis round trips, and when work is sent: {}",
                start_wait()
            ),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        let Some(k) = find(rows, NAP_KILLED) else {
            return Vec::new();
        };
        let lease_ms = LEASE.as_secs_f64() * 1e3;
        let mut out = vec![format!(
            "kill → answer: median {:.0} ms (min {:.0}, max {:.0}) with a {:.0} ms lease: the \
             lease + {:.0} ms",
            k.median_us / 1e3,
            k.min_us / 1e3,
            k.max_us / 1e3,
            lease_ms,
            k.median_us / 1e3 - lease_ms
        )];
        if let Some(r) = find(rows, NAP_REF) {
            out.push(format!(
                "losing the node cost {:.0} ms over the call's {:.0} ms without a loss \
                 (lease {:.0} ms)",
                (k.median_us - r.median_us) / 1e3,
                r.median_us / 1e3,
                lease_ms
            ));
        }
        out
    }
}
