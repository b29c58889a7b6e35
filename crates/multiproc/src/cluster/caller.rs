//! [`Pool`]: the pool interface over Redis, on the caller's side. A thread of the pool
//! drives the pool core: it adds chunks to the caller's calls stream, reads answers
//! from its answers stream, and keeps the caller's keys alive.
//!
//! The core sees *lanes*, not nodes: a lane is a place for one chunk in the stream (the
//! pool keeps about two per node slot, so that every free slot finds a chunk waiting).
//! Which node runs a chunk, and which runs it again when a node is lost, is the
//! leases' business (see [`node`](super::node)).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use super::auth::Key;
use super::broker::{self, Broker, EXPIRY_LEASES, Keys};
use super::message::{AnswerMsg, ChunkMsg, NodeFailure, NodeInfo, NodeMsg, WirePart};
use crate::error::{Error, Result};
use crate::pool::core::chunking::BROKER;
use crate::pool::core::{Config as CoreConfig, Core, Limits, Part, SlotState};
use crate::pool::remote::{RemotePool, Shared};
use crate::pool::{ChunkSize, Progress};
use crate::wire::values::{Data, Received};

/// Lanes (chunks in the stream at once) at least, before any node is seen.
const MIN_LANES: usize = 4;
/// How long the caller blocks on its answers stream at a time: new work waits at most
/// this long to be sent.
const READ_BLOCK: Duration = Duration::from_millis(20);
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

/// What the driver learns of the cluster.
#[derive(Default)]
struct Status {
    nodes: Vec<NodeInfo>,
}

/// Options for a cluster [`Pool`].
#[derive(Debug)]
pub struct PoolBuilder {
    url: String,
    key: Option<Key>,
    lease: Duration,
    retries: u32,
    task_timeout: Option<Duration>,
    chunk: ChunkSize,
    progress: Progress,
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

    /// How many times a chunk whose node was lost runs again (default 2) before its
    /// calls answer an [`Error::Cluster`] naming the node. A panic is answered, never
    /// retried.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// A call running longer than this on a node has its worker killed there and
    /// answers [`Error::Timeout`]; with it, [`ChunkSize::Auto`] sends one call at a
    /// time.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Chunk size policy; default [`ChunkSize::Auto`], sized for a broker: chunks of
    /// 100 ms to 1 s of calls (see the [module docs](super)).
    pub fn chunk_size(mut self, chunk: ChunkSize) -> Self {
        self.chunk = chunk;
        self
    }

    /// Progress reporting for `map`, `map_results` and `imap`.
    pub fn progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
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
        let build = crate::task::hex(crate::task::build_id());
        let keys = Keys::new(&build);
        redis.ensure_group(&keys.calls(&caller))?;
        // The answers stream must exist: nodes add to it only if it does (so that the
        // answers of a caller that is gone do not make it again).
        redis.ensure_group(&keys.answers(&caller))?;
        let settings = Settings {
            url: self.url,
            key,
            lease: self.lease,
            retries: self.retries,
            task_timeout: self.task_timeout,
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
            task_timeout: self.task_timeout,
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
            remote: RemotePool::new(shared, driver, self.chunk, self.progress),
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
            retries: 2,
            task_timeout: None,
            chunk: ChunkSize::Auto,
            progress: Progress::default(),
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

struct Settings {
    url: String,
    key: Key,
    lease: Duration,
    retries: u32,
    task_timeout: Option<Duration>,
    unreachable: Duration,
    wait_for_nodes: Option<Duration>,
    /// This build's id (hex).
    build: String,
    keys: Keys,
    caller: String,
    address: String,
}

impl Settings {
    fn ttl_ms(&self) -> u64 {
        (self.lease * EXPIRY_LEASES).as_millis() as u64
    }
}

/// Keeps the caller's keys alive and listed.
fn heartbeat(b: &mut Broker, s: &Settings) -> Result<()> {
    b.sync_clock();
    let ttl = s.ttl_ms();
    let now = broker::now_ms();
    let mut p = redis::pipe();
    p.cmd("SET")
        .arg(s.keys.alive(&s.caller))
        .arg(1)
        .arg("PX")
        .arg(ttl)
        .ignore();
    p.cmd("PEXPIRE")
        .arg(s.keys.calls(&s.caller))
        .arg(ttl)
        .ignore();
    p.cmd("PEXPIRE")
        .arg(s.keys.answers(&s.caller))
        .arg(ttl)
        .ignore();
    p.cmd("ZADD")
        .arg(s.keys.callers())
        .arg(now)
        .arg(&s.caller)
        .ignore();
    p.cmd("ZREMRANGEBYSCORE")
        .arg(s.keys.callers())
        .arg("-inf")
        .arg(now.saturating_sub(ttl))
        .ignore();
    p.cmd("PEXPIRE").arg(s.keys.callers()).arg(ttl).ignore();
    b.pipe("cannot renew the caller's keys", &p)
}

/// Slots a node may claim, at most: its info is not signed (see the node's
/// heartbeat), and lanes are allocated from it.
const MAX_SLOTS_PER_NODE: u32 = 1024;
/// Lanes at most, whatever the nodes say.
const MAX_LANES: usize = 1 << 14;

/// The live nodes' info (unsigned: informational; see the node's heartbeat).
fn read_nodes(b: &mut Broker, s: &Settings) -> Result<Vec<NodeInfo>> {
    let since = broker::now_ms().saturating_sub((s.lease * 3).as_millis() as u64);
    let names: Vec<String> = b.run(
        "cannot list nodes",
        redis::cmd("ZRANGEBYSCORE")
            .arg(s.keys.nodes())
            .arg(since)
            .arg("+inf"),
    )?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = names.iter().map(|n| s.keys.node(n)).collect();
    let raw: Vec<Option<Vec<u8>>> = b.run("cannot read nodes", redis::cmd("MGET").arg(&keys))?;
    Ok(raw
        .into_iter()
        .filter_map(|v| postcard::from_bytes::<NodeInfo>(v.as_deref()?).ok())
        .map(|mut n| {
            n.slots = n.slots.min(MAX_SLOTS_PER_NODE);
            n
        })
        .collect())
}

/// A chunk added to the calls stream and not answered.
struct Sent {
    /// Where the core holds it.
    lane: u64,
    seq: u64,
    /// The message, signed as sent.
    signed: Vec<u8>,
}

/// What the caller saw of a node's heartbeats.
struct Seen {
    heartbeat_ms: u64,
    /// When its heartbeat last changed (the caller's clock: nodes' clocks may differ).
    changed: Instant,
    lost: bool,
}

/// The driving thread's state between rounds.
struct Driver<'a> {
    s: Settings,
    shared: &'a Shared,
    status: &'a Mutex<Status>,
    calls: String,
    answers: String,
    lanes: usize,
    last_id: String,
    beat_at: Instant,
    nodes_at: Instant,
    /// When the caller last heard an answer, or started waiting for one.
    heard: Instant,
    /// Every chunk added and not answered, by tag: sent again after Redis failed (an
    /// add may have been lost, or a Redis without persistence restarted empty). A
    /// second copy is harmless: the first answer counts.
    in_flight: HashMap<u64, Sent>,
    next_tag: u64,
    resend: bool,
    /// The nodes of this build listed lately, by name.
    seen: HashMap<String, Seen>,
    /// Since when work waits and no node of this build is listed, and whether the
    /// pool said so.
    no_node_since: Option<(Instant, bool)>,
}

fn drive(s: Settings, redis: Broker, shared: &Shared, status: &Mutex<Status>) {
    let mut d = Driver {
        calls: s.keys.calls(&s.caller),
        answers: s.keys.answers(&s.caller),
        s,
        shared,
        status,
        lanes: 0,
        last_id: "0-0".to_owned(),
        beat_at: Instant::now(),
        nodes_at: Instant::now() - Duration::from_secs(60),
        heard: Instant::now(),
        in_flight: HashMap::new(),
        next_tag: 0,
        resend: false,
        seen: HashMap::new(),
        no_node_since: None,
    };
    d.add_lanes(MIN_LANES);
    let mut redis = Some(redis);
    let mut down_since: Option<(Instant, String)> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        shared.settle();
        let Some(b) = redis.as_mut() else {
            match Broker::connect(&d.s.url, Duration::from_secs(1)) {
                Ok(b) => {
                    tracing::info!(address = %d.s.address, "reconnected to Redis");
                    redis = Some(b);
                }
                Err(e) => {
                    if give_up(shared, &d.s, &mut down_since, &e) {
                        break;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
            continue;
        };
        match d.turn(b) {
            Ok(true) => break,
            Ok(false) => {
                // Only a whole round that worked says Redis is back.
                down_since = None;
                backoff = Duration::from_millis(50);
            }
            Err(e) => {
                tracing::warn!(address = %d.s.address, "{e}");
                redis = None;
                d.resend = true;
                if give_up(shared, &d.s, &mut down_since, &e) {
                    break;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    if let Some(b) = redis.as_mut() {
        let mut p = redis::pipe();
        for k in [d.s.keys.alive(&d.s.caller), d.calls.clone(), d.answers.clone()] {
            p.cmd("DEL").arg(k).ignore();
        }
        p.cmd("ZREM").arg(d.s.keys.callers()).arg(&d.s.caller).ignore();
        let _ = b.pipe::<()>("cannot remove the caller's keys", &p);
    }
    let mut st = shared.lock();
    st.stopped = true;
    // A pool broken by an unreachable Redis keeps answering that error.
    if !st.core.is_broken() {
        st.core.terminate();
    }
    drop(st);
    shared.changed.notify_all();
    shared.settle();
}

/// Redis failed: `true` once it has been failing for longer than allowed (the pool is
/// then broken with an error that says so).
fn give_up(
    shared: &Shared,
    s: &Settings,
    down_since: &mut Option<(Instant, String)>,
    e: &Error,
) -> bool {
    let cause = match e {
        Error::Cluster { detail, .. } => detail.clone(),
        other => other.to_string(),
    };
    let (since, _) = down_since.get_or_insert_with(|| (Instant::now(), cause.clone()));
    if since.elapsed() < s.unreachable {
        return false;
    }
    let error = Error::Cluster {
        address: s.address.clone(),
        detail: format!(
            "Redis unreachable for {:?}, the pool stopped: {cause}",
            s.unreachable
        ),
    };
    tracing::error!("{error}");
    let mut st = shared.lock();
    st.core.stop(error);
    drop(st);
    shared.changed.notify_all();
    true
}

/// The numbers of `calls` for a log line, the first few of them.
fn call_list(calls: impl IntoIterator<Item = usize>) -> String {
    const SHOWN: usize = 10;
    let mut calls = calls.into_iter();
    let mut out: Vec<String> = calls.by_ref().take(SHOWN).map(|i| i.to_string()).collect();
    let more = calls.count();
    if more > 0 {
        out.push(format!("… ({} in all)", SHOWN + more));
    }
    format!("[{}]", out.join(", "))
}

impl Driver<'_> {
    fn add_lanes(&mut self, want: usize) {
        let want = want.min(MAX_LANES);
        let mut st = self.shared.lock();
        while self.lanes < want {
            st.core.add_worker(self.lanes as u64, SlotState::Working);
            self.lanes += 1;
        }
    }

    /// How often the nodes' heartbeats are read: often enough to see a live node's
    /// heartbeat change within a lease.
    fn nodes_period(&self) -> Duration {
        (self.s.lease / 3).min(Duration::from_secs(1))
    }

    /// The live nodes among those listed: a node whose heartbeat has not changed for a
    /// lease has stopped renewing its leases (its chunks go to other nodes): it is
    /// lost, and the pool says so once.
    fn track(&mut self, listed: Vec<NodeInfo>) -> Vec<NodeInfo> {
        let now = Instant::now();
        let mut live = Vec::with_capacity(listed.len());
        let mut names = HashSet::with_capacity(listed.len());
        for n in listed {
            let name = n.name();
            let seen = self.seen.entry(name.clone()).or_insert_with(|| {
                tracing::debug!(address = %self.s.address, node = %name, slots = n.slots, "a cluster node is connected");
                Seen {
                    heartbeat_ms: n.heartbeat_ms,
                    changed: now,
                    lost: false,
                }
            });
            if seen.heartbeat_ms != n.heartbeat_ms {
                seen.heartbeat_ms = n.heartbeat_ms;
                seen.changed = now;
                if seen.lost {
                    seen.lost = false;
                    tracing::warn!(address = %self.s.address, node = %name, "cluster node {name} is back (its heartbeat resumed); chunks it held may have run elsewhere meanwhile");
                }
            }
            let silent = now.saturating_duration_since(seen.changed);
            if silent > self.s.lease {
                if !seen.lost {
                    seen.lost = true;
                    let then = match self.s.retries {
                        0 => "the calls it held give up (retries: 0)".to_owned(),
                        n => format!("the chunks it held run again on other nodes (retries: {n})"),
                    };
                    tracing::warn!(
                        address = %self.s.address, node = %name,
                        "cluster node {name} lost: no heartbeat for {silent:.1?} (killed, cut off \
                         or frozen); {then}"
                    );
                }
            } else {
                live.push(n);
            }
            names.insert(name);
        }
        let address = &self.s.address;
        self.seen.retain(|name, seen| {
            let listed = names.contains(name);
            if !listed && !seen.lost {
                tracing::debug!(%address, node = %name, "a cluster node left");
            }
            listed
        });
        live
    }

    /// Nodes of other builds in the registry of every build's nodes.
    fn other_builds(&self, b: &mut Broker) -> Result<usize> {
        let members: Vec<String> = b.run(
            "cannot list the nodes of every build",
            redis::cmd("ZRANGEBYSCORE")
                .arg(Keys::registry())
                .arg(broker::now_ms())
                .arg("+inf"),
        )?;
        let mine = format!("{}/", self.s.build);
        Ok(members.iter().filter(|m| !m.starts_with(&mine)).count())
    }

    /// Work waits and no node of this build is listed: say so at once, and after
    /// [`PoolBuilder::wait_for_nodes`] answer the waiting calls with an error that
    /// says why.
    fn check_nodes(&mut self, b: &mut Broker, live: &[NodeInfo]) -> Result<()> {
        let waiting = self.shared.lock().core.outstanding() > 0;
        if !live.is_empty() || !waiting {
            self.no_node_since = None;
            return Ok(());
        }
        let (since, warned) = *self
            .no_node_since
            .get_or_insert_with(|| (Instant::now(), false));
        // Said once the wait outlasts a node's start (nodes often start with the
        // caller), unless the error comes first.
        let wait = self.s.wait_for_nodes;
        let warn_after = wait.map_or(self.s.lease, |w| self.s.lease.min(w / 2));
        if !warned && since.elapsed() >= warn_after {
            self.no_node_since = Some((since, true));
            let others = self.other_builds(b)?;
            let then = match wait {
                Some(w) => format!("the calls give up {w:?} after it started waiting"),
                None => "waiting for one (PoolBuilder::wait_for_nodes)".to_owned(),
            };
            tracing::warn!(
                address = %self.s.address,
                "no cluster node of this build is connected{}; {then}",
                others_note(others)
            );
        }
        let Some(wait) = wait else {
            return Ok(());
        };
        if since.elapsed() < wait {
            return Ok(());
        }
        let others = self.other_builds(b)?;
        let lost: Vec<&str> = self
            .seen
            .iter()
            .filter(|(_, s)| s.lost)
            .map(|(n, _)| n.as_str())
            .collect();
        let detail = if others > 0 {
            format!(
                "no node of this build{} (waited {wait:?}; a node runs only work of its own build)",
                others_note(others)
            )
        } else if !lost.is_empty() {
            format!(
                "no node connected: the last ones ({}) were lost (waited {wait:?} for another; \
                 PoolBuilder::wait_for_nodes waits longer)",
                lost.join(", ")
            )
        } else {
            format!(
                "no node connected (waited {wait:?}): start nodes of this program with \
                 MULTIPROC_CLUSTER=<this Redis URL> and the same MULTIPROC_CLUSTER_KEY, or wait \
                 longer with PoolBuilder::wait_for_nodes"
            )
        };
        self.no_node_since = None;
        self.fail_waiting(
            b,
            Error::Cluster {
                address: self.s.address.clone(),
                detail,
            },
        )
    }

    /// Answers every call not answered with `error`, and takes the chunks sent back
    /// out of Redis: nobody waits for their answers any more (an answer that comes
    /// anyway finds no chunk of its tag).
    fn fail_waiting(&mut self, b: &mut Broker, error: Error) -> Result<()> {
        tracing::warn!(address = %self.s.address, "calls not answered give up: {error}");
        {
            let mut st = self.shared.lock();
            st.core.fail_outstanding(&error);
        }
        self.shared.changed.notify_all();
        self.in_flight.clear();
        b.run::<redis::Value>(
            "cannot take back chunks",
            redis::cmd("XTRIM").arg(&self.calls).arg("MAXLEN").arg(0),
        )
        .map(|_| ())
    }

    /// One round: heartbeat, chunks out, answers in. `Ok(true)`: the pool is done.
    fn turn(&mut self, b: &mut Broker) -> Result<bool> {
        if self.resend {
            // After a failure: the streams may be gone (a Redis restarted without
            // persistence), and adds may have been lost.
            b.ensure_group(&self.calls)?;
            b.ensure_group(&self.answers)?;
            heartbeat(b, &self.s)?;
            let mut p = redis::pipe();
            for sent in self.in_flight.values() {
                p.cmd("XADD")
                    .arg(&self.calls)
                    .arg("*")
                    .arg("m")
                    .arg(&sent.signed)
                    .ignore();
            }
            b.pipe::<()>("cannot add chunks again", &p)?;
            self.resend = false;
        }
        if self.beat_at.elapsed() >= self.s.lease / 3 {
            heartbeat(b, &self.s)?;
            self.beat_at = Instant::now();
        }
        if self.nodes_at.elapsed() >= self.nodes_period() {
            let listed = read_nodes(b, &self.s)?;
            let nodes = self.track(listed);
            let slots: usize = nodes.iter().map(|n| n.slots as usize).sum();
            self.add_lanes((2 * slots).max(MIN_LANES));
            let refused = {
                let mut st = self.shared.lock();
                st.core.set_workers(slots.clamp(1, MAX_LANES));
                check_acceptance(&self.s, &st.core, &nodes, &mut self.heard)
            };
            if let Some(error) = refused {
                self.fail_waiting(b, error)?;
            }
            self.check_nodes(b, &nodes)?;
            self.status.lock().unwrap_or_else(|p| p.into_inner()).nodes = nodes;
            self.nodes_at = Instant::now();
        }
        // Chunks out.
        let mut out = Vec::new();
        {
            let mut st = self.shared.lock();
            if st.terminate {
                st.core.terminate();
                return Ok(true);
            }
            let limits = Limits {
                max_value: crate::wire::max_frame_size(),
                max_fds: 0,
                may_spill: false,
                ends: true,
            };
            let now = Instant::now();
            let before = st.core.outstanding();
            let timeout_ms = self
                .s
                .task_timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
            for lane in 0..self.lanes as u64 {
                while let Some(chunk) = st.core.next_chunk(lane, &limits, now) {
                    let Data::Inline(data) = chunk.data else {
                        continue; // no spilling was allowed: cannot happen
                    };
                    let tag = self.next_tag;
                    self.next_tag += 1;
                    let msg = ChunkMsg {
                        tag,
                        entry: chunk.entry,
                        data: ByteBuf::from(data),
                        ends: chunk.ends.offsets().map(|e| e as u64).collect(),
                        retries: self.s.retries,
                        timeout_ms,
                    };
                    out.push((lane, chunk.seq, msg));
                }
            }
            if st.core.outstanding() != before {
                self.shared.changed.notify_all();
            }
            if st.closed && st.core.outstanding() == 0 {
                return Ok(true);
            }
            if st.core.outstanding() == 0 {
                self.heard = Instant::now();
                if self.in_flight.is_empty() {
                    // Nothing out, no answer to wait for: sleep until work comes (a
                    // submit notifies), not in a blocking read, which Redis ends only
                    // on its own 100 ms clock.
                    let wait = (self.s.lease / 3).min(Duration::from_millis(500));
                    let _ = self
                        .shared
                        .work
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|p| p.into_inner());
                    return Ok(false);
                }
            }
        }
        let s = &self.s;
        if !out.is_empty() {
            let mut p = redis::pipe();
            for (lane, seq, msg) in &out {
                let body = postcard::to_stdvec(msg).map_err(|e| Error::Cluster {
                    address: s.address.clone(),
                    detail: format!("a chunk did not encode: {e}"),
                })?;
                let signed = s.key.sign(self.calls.as_bytes(), &body);
                p.cmd("XADD")
                    .arg(&self.calls)
                    .arg("*")
                    .arg("m")
                    .arg(&signed)
                    .ignore();
                // Kept before it is sent: if the add fails, the resend covers it.
                let sent = Sent {
                    lane: *lane,
                    seq: *seq,
                    signed,
                };
                self.in_flight.insert(msg.tag, sent);
            }
            b.pipe::<()>("cannot add chunks", &p)?;
        }
        // Answers in.
        let block = if out.is_empty() {
            READ_BLOCK
        } else {
            Duration::from_millis(1)
        };
        let entries = b.read(&self.answers, &self.last_id, 256, block)?;
        if entries.is_empty() {
            return Ok(false);
        }
        let mut filed = Vec::with_capacity(entries.len());
        for entry in &entries {
            self.last_id.clone_from(&entry.id);
            let Some(body) =
                broker::message(entry).and_then(|m| s.key.open(self.answers.as_bytes(), m))
            else {
                tracing::warn!(address = %s.address, "dropped an answer whose signature is wrong");
                continue;
            };
            match postcard::from_bytes::<NodeMsg>(body) {
                Ok(m) => filed.push(m),
                Err(e) => {
                    tracing::warn!(address = %s.address, "dropped an answer that does not decode: {e}")
                }
            }
        }
        // Filed before anything else can fail: these answers will not be read again.
        let mut st = self.shared.lock();
        for m in filed {
            let a = match m {
                NodeMsg::Answer(a) => a,
                NodeMsg::Rerun {
                    tag,
                    node,
                    run,
                    previous,
                } => {
                    if let Some(calls) = self
                        .in_flight
                        .get(&tag)
                        .and_then(|f| st.core.chunk_indices(f.lane, f.seq))
                    {
                        tracing::warn!(
                            address = %s.address, %node, run,
                            "calls {} run again on node {node} (run {run} of at most {}): {previous}",
                            call_list(calls.iter()),
                            u64::from(s.retries) + 1
                        );
                    }
                    continue;
                }
            };
            self.heard = Instant::now();
            let Some(sent) = self.in_flight.remove(&a.tag) else {
                // A second run's answer (a node was thought lost but was not), or a
                // chunk given up on meanwhile: the first answer counts.
                tracing::debug!(node = %a.node, "ignored an answer to a chunk answered or given up");
                continue;
            };
            file_answer(&mut st.core, s, sent, a);
        }
        drop(st);
        self.shared.changed.notify_all();
        // Trimming read answers is housekeeping: a failure here loses nothing.
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        if let Err(e) = b.run::<redis::Value>(
            "cannot trim answers",
            redis::cmd("XDEL").arg(&self.answers).arg(&ids),
        ) {
            tracing::debug!(address = %s.address, "{e}");
        }
        Ok(false)
    }
}

/// " (N nodes of other builds are connected: rebuild/restart them)", or nothing.
fn others_note(others: usize) -> String {
    match others {
        0 => String::new(),
        1 => " (1 node of another build is connected: rebuild/restart it)".to_owned(),
        n => format!(" ({n} nodes of other builds are connected: rebuild/restart them)"),
    }
}

/// Files the answers of chunk `sent` in the core, naming calls in errors and logs as
/// the caller numbers them.
fn file_answer(core: &mut Core, s: &Settings, sent: Sent, a: AnswerMsg) {
    let indices = core
        .chunk_indices(sent.lane, sent.seq)
        .cloned()
        .unwrap_or_default();
    let index_of = |pos: u32| indices.get(pos as usize).unwrap_or(pos as usize);
    let mut gave_up = Vec::new();
    let mut why = None;
    let host: Arc<str> = Arc::from(a.node.as_str());
    let parts = a
        .parts
        .into_iter()
        .map(|p| match p {
            WirePart::Values {
                pid,
                positions,
                failures,
                data,
            } => Part::Values {
                pid,
                positions,
                failures,
                data: Received::Inline(data.into_vec(), 0),
            },
            WirePart::Failed(failed) => Part::Failed(
                failed
                    .into_iter()
                    .map(|(pos, f)| {
                        let index = index_of(pos);
                        if let NodeFailure::Lost { last, runs } = &f {
                            gave_up.push(index);
                            why.get_or_insert_with(|| (*runs, last.to_string()));
                        }
                        (pos, f.into_error(&a.node, index, &s.address))
                    })
                    .collect(),
            ),
        })
        .collect();
    if let Some((runs, why)) = why {
        tracing::warn!(
            address = %s.address,
            "calls {} gave up after {runs} run(s), no retry left (PoolBuilder::retries): {why}",
            call_list(gave_up.iter().copied()),
        );
    }
    if let Err(why) = core.on_chunk(sent.lane, sent.seq, parts, a.nanos, Some(host)) {
        // A chunk cancelled meanwhile: its answers go nowhere.
        tracing::debug!(node = %a.node, "ignored an answer: {why}");
    }
}

/// No answer for a while, no node busy, and nodes refusing messages lately: the nodes
/// do not share this caller's key. Then the error the pool's outstanding calls answer.
fn check_acceptance(
    s: &Settings,
    core: &Core,
    nodes: &[NodeInfo],
    heard: &mut Instant,
) -> Option<Error> {
    let grace = (s.lease * 2).max(Duration::from_secs(2));
    let recent = broker::now_ms().saturating_sub(grace.as_millis() as u64 * 2);
    let refusing = nodes
        .iter()
        .filter(|n| n.last_refused_ms >= recent && n.refused > 0)
        .count();
    let busy = nodes.iter().any(|n| n.busy > 0);
    if core.outstanding() > 0 && refusing > 0 && !busy && heard.elapsed() > grace {
        *heard = Instant::now();
        return Some(Error::Cluster {
            address: s.address.clone(),
            detail: format!(
                "no node accepts this pool's work: {refusing} of {} nodes refused its messages: \
                 wrong key? (every node must have the caller's MULTIPROC_CLUSTER_KEY)",
                nodes.len()
            ),
        });
    }
    None
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
