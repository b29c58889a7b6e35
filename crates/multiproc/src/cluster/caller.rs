//! [`Pool`]: the pool interface over Redis, on the caller's side. A thread of the pool
//! drives the pool core: it adds chunks to the caller's calls stream, reads answers
//! from its answers stream, and keeps the caller's keys alive.
//!
//! The core sees *lanes*, not nodes: a lane is a place for one chunk in the stream (the
//! pool keeps about two per node slot, so that every free slot finds a chunk waiting).
//! Which node runs a chunk, and which runs it again when a node is lost, is the
//! leases' business (see [`node`](super::node)).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use super::auth::Key;
use super::broker::{self, Broker, EXPIRY_LEASES, Keys};
use super::message::{AnswerMsg, ChunkMsg, NodeInfo, WirePart};
use crate::error::{Error, Result};
use crate::pool::core::chunking::BROKER;
use crate::pool::core::{Config as CoreConfig, Core, Limits, Part};
use crate::pool::remote::{RemotePool, Shared};
use crate::pool::{ChunkSize, Progress};
use crate::wire::values::{Data, Received};

/// Lanes (chunks in the stream at once) at least, before any node is seen.
const MIN_LANES: usize = 4;
/// How long the caller blocks on its answers stream at a time: new work waits at most
/// this long to be sent.
const READ_BLOCK: Duration = Duration::from_millis(20);

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
        let keys = Keys::new(&crate::task::hex(crate::task::build_id()));
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
        }
    }

    /// The live worker nodes (those with a heartbeat within three leases), as last
    /// read (about every second).
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
    /// Every chunk added and not answered, signed as sent, by (lane, sequence): sent
    /// again after Redis failed (an add may have been lost, or a Redis without
    /// persistence restarted empty). A second copy is harmless: the first answer counts.
    in_flight: HashMap<(u64, u64), Vec<u8>>,
    resend: bool,
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
        resend: false,
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

impl Driver<'_> {
    fn add_lanes(&mut self, want: usize) {
        let want = want.min(MAX_LANES);
        let mut st = self.shared.lock();
        while self.lanes < want {
            st.core.add_worker(self.lanes as u64, false);
            self.lanes += 1;
        }
    }

    /// One round: heartbeat, chunks out, answers in. `Ok(true)`: the pool is done.
    fn turn(&mut self, b: &mut Broker) -> Result<bool> {
        let s = &self.s;
        if self.resend {
            // After a failure: the streams may be gone (a Redis restarted without
            // persistence), and adds may have been lost.
            b.ensure_group(&self.calls)?;
            b.ensure_group(&self.answers)?;
            heartbeat(b, s)?;
            let mut p = redis::pipe();
            for msg in self.in_flight.values() {
                p.cmd("XADD").arg(&self.calls).arg("*").arg("m").arg(msg).ignore();
            }
            b.pipe::<()>("cannot add chunks again", &p)?;
            self.resend = false;
        }
        if self.beat_at.elapsed() >= s.lease / 3 {
            heartbeat(b, s)?;
            self.beat_at = Instant::now();
        }
        if self.nodes_at.elapsed() >= Duration::from_secs(1) {
            let nodes = read_nodes(b, s)?;
            let slots: usize = nodes.iter().map(|n| n.slots as usize).sum();
            self.add_lanes((2 * slots).max(MIN_LANES));
            {
                let mut st = self.shared.lock();
                st.core.set_workers(slots.clamp(1, MAX_LANES));
                let before = st.core.outstanding();
                check_acceptance(&self.s, &mut st.core, &nodes, &mut self.heard);
                if st.core.outstanding() != before {
                    self.shared.changed.notify_all();
                }
            }
            self.status.lock().unwrap_or_else(|p| p.into_inner()).nodes = nodes;
            self.nodes_at = Instant::now();
        }
        let s = &self.s;
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
            for lane in 0..self.lanes as u64 {
                while let Some(chunk) = st.core.next_chunk(lane, &limits, now) {
                    let Data::Inline(data) = chunk.data else {
                        continue; // no spilling was allowed: cannot happen
                    };
                    out.push(ChunkMsg {
                        lane,
                        seq: chunk.seq,
                        entry: chunk.entry,
                        data: ByteBuf::from(data),
                        ends: chunk.ends.iter().map(|&e| e as u64).collect(),
                        retries: s.retries,
                        timeout_ms: s
                            .task_timeout
                            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                    });
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
                    let wait = (s.lease / 3).min(Duration::from_millis(500));
                    let _ = self
                        .shared
                        .work
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|p| p.into_inner());
                    return Ok(false);
                }
            }
        }
        if !out.is_empty() {
            let mut p = redis::pipe();
            for msg in &out {
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
                self.in_flight.insert((msg.lane, msg.seq), signed);
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
            match postcard::from_bytes::<AnswerMsg>(body) {
                Ok(a) => filed.push(a),
                Err(e) => {
                    tracing::warn!(address = %s.address, "dropped an answer that does not decode: {e}")
                }
            }
        }
        // Filed before anything else can fail: these answers will not be read again.
        let mut st = self.shared.lock();
        for a in filed {
            self.heard = Instant::now();
            self.in_flight.remove(&(a.lane, a.seq));
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
                            .map(|(pos, f)| (pos, f.into_error(&a.node, pos as usize, &s.address)))
                            .collect(),
                    ),
                })
                .collect();
            if let Err(why) = st.core.on_chunk(a.lane, a.seq, parts, a.nanos, Some(host)) {
                // A second run's answer (a node was thought lost but was not), or a
                // chunk cancelled meanwhile: the first answer counts.
                tracing::debug!(node = %a.node, "ignored an answer: {why}");
            }
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

/// No answer for a while, no node busy, and nodes refusing messages lately: the nodes
/// do not share this caller's key. The pool's outstanding calls then answer an error
/// that says so.
fn check_acceptance(s: &Settings, core: &mut Core, nodes: &[NodeInfo], heard: &mut Instant) {
    let grace = (s.lease * 2).max(Duration::from_secs(2));
    let recent = broker::now_ms().saturating_sub(grace.as_millis() as u64 * 2);
    let refusing = nodes
        .iter()
        .filter(|n| n.last_refused_ms >= recent && n.refused > 0)
        .count();
    let busy = nodes.iter().any(|n| n.busy > 0);
    if core.outstanding() > 0 && refusing > 0 && !busy && heard.elapsed() > grace {
        *heard = Instant::now();
        core.fail_outstanding(&Error::Cluster {
            address: s.address.clone(),
            detail: format!(
                "no node accepts this pool's work: {refusing} of {} nodes refused its messages: \
                 wrong key? (every node must have the caller's MULTIPROC_CLUSTER_KEY)",
                nodes.len()
            ),
        });
    }
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
