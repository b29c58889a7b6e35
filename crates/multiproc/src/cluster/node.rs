//! A worker node: takes chunks from the calls streams of live callers (its build's),
//! runs them in its own local process pool, answers, and renews its leases while they
//! run.
//!
//! Three threads, each with its own Redis connection: the *taker* (this thread) reads
//! new chunks and claims expired leases whenever a slot is free; the *answerer* sends
//! each finished chunk's answers and ends its lease (`XACK`, `XDEL`); the *heartbeat*
//! renews the leases of running chunks (`XCLAIM … JUSTID`, which resets their idle
//! time), enforces task timeouts, and publishes the node's [`NodeInfo`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use redis::streams::StreamId;
use serde_bytes::ByteBuf;

use super::auth::Key;
use super::broker::{self, Broker, GROUP, Keys};
use super::message::{AnswerMsg, ChunkMsg, NodeFailure, NodeInfo, NodeMsg, Previous, WirePart};
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::pool::backend::Control;
use crate::pool::core::{Answers, Sink};
use crate::start::StartMethod;

/// The environment variable that makes a program a worker node in [`crate::init`].
pub const CLUSTER_ENV: &str = "MULTIPROC_CLUSTER";

/// A message that fails its signature check this many times (on any node) is deleted:
/// it was forged, or no node has the key it was signed with.
const MAX_REFUSALS: usize = 5;

/// A chunk handed back on SIGTERM is left to the consumer `sigterm:<node>` (and one
/// whose signature a node refused, to `refused:<node>`), so that the node that takes
/// it next knows how its previous run ended: a drain, not a lost node. (Consumer names
/// are not signed: anyone who can write to Redis could change them, and with them only
/// the words of an error.)
const HANDED_BACK: &str = "sigterm:";
const REFUSED: &str = "refused:";

/// Options of [`serve`].
#[derive(Clone, Debug)]
pub struct ServeOptions {
    key: Option<Key>,
    slots: Option<usize>,
    lease: Duration,
    drain: Duration,
    method: Option<StartMethod>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            key: None,
            slots: None,
            lease: Duration::from_secs(5),
            drain: Duration::from_secs(30),
            method: None,
        }
    }
}

impl ServeOptions {
    /// Defaults: the key from the environment (see [`Key::from_env`]), one slot per
    /// CPU, 5 s leases, 30 s to finish running work on SIGTERM.
    pub fn new() -> Self {
        ServeOptions::default()
    }

    /// The key shared with callers (default: [`Key::from_env`]).
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// Calls the node runs at once: its local pool's worker processes (default
    /// [`cpu_count`](crate::cpu_count)).
    pub fn slots(mut self, n: usize) -> Self {
        self.slots = Some(n.max(1));
        self
    }

    /// How long a chunk stays leased to this node without a renewal (default 5 s;
    /// renewed every third of it). It must match the callers'.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// On SIGTERM, how long running chunks may take to finish before the node hands
    /// them back (default 30 s). Chunks that finish in time are answered, and the node
    /// exits as soon as none runs; a handed-back chunk runs again on another node, and
    /// that run counts against the caller's retries.
    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// How the local pool starts its workers.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Options from the environment: `MULTIPROC_CLUSTER_SLOTS`,
    /// `MULTIPROC_CLUSTER_LEASE_MS`, `MULTIPROC_CLUSTER_DRAIN_MS` (each optional).
    pub fn from_env() -> Self {
        let num = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let mut o = ServeOptions::new();
        if let Some(n) = num("MULTIPROC_CLUSTER_SLOTS") {
            o = o.slots(n as usize);
        }
        if let Some(ms) = num("MULTIPROC_CLUSTER_LEASE_MS") {
            o = o.lease(Duration::from_millis(ms));
        }
        if let Some(ms) = num("MULTIPROC_CLUSTER_DRAIN_MS") {
            o = o.drain(Duration::from_millis(ms));
        }
        o
    }
}

/// Becomes a worker node if `MULTIPROC_CLUSTER` is set: serves until SIGTERM, then
/// exits (0 after a clean stop, 1 with the error on stderr).
pub(crate) fn enter_if_node() {
    let Some(url) = std::env::var_os(CLUSTER_ENV) else {
        return;
    };
    let url = url.to_string_lossy().into_owned();
    let code = match serve(&url, ServeOptions::from_env()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("multiproc cluster node: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// The filter a node logs with when the program installed no subscriber and
/// `RUST_LOG` is unset: warnings and errors, and the node's start and stop.
const DEFAULT_NODE_LOG: &str = "warn,multiproc::cluster=info";

/// A node is a service: it says what it does on stderr even when the program installed
/// no `tracing` subscriber. Where one is installed, it is left alone; `RUST_LOG`
/// chooses the filter (`RUST_LOG=off` silences the node).
fn log_to_stderr_by_default() {
    if tracing::dispatcher::has_been_set() {
        return;
    }
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_NODE_LOG.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("multiproc cluster node: ignoring RUST_LOG={spec}: {e}");
        tracing_subscriber::EnvFilter::new(DEFAULT_NODE_LOG)
    });
    // Another thread may have installed one since the check: then theirs stays.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A chunk this node runs.
struct Held {
    started: Instant,
    deadline: Option<Instant>,
    job: u64,
    control: Arc<dyn Control>,
    collector: Arc<Collector>,
}

/// A finished chunk, for the answerer.
struct Done {
    caller: String,
    id: String,
    answer: AnswerMsg,
}

struct Node {
    keys: Keys,
    /// This build's id (hex), as the registry of every build's nodes lists it.
    build: String,
    name: String,
    host: String,
    key: Key,
    lease: Duration,
    slots: usize,
    /// Running chunks by (calls stream, entry id).
    held: Mutex<HashMap<(String, String), Held>>,
    freed: Condvar,
    refused: AtomicU64,
    last_refused_ms: AtomicU64,
    stop: &'static AtomicBool,
    /// The answerer and heartbeat threads end.
    quit: AtomicBool,
}

/// Serves as a worker node of the cluster at `url` until SIGTERM (then finishes or
/// hands back its chunks) or an error that cannot be retried (no key, a bad URL).
/// Lost connections are retried with backoff.
///
/// The node's own pool workers leave SIGTERM to the node (whichever start method
/// starts them, and whether the node was started by `MULTIPROC_CLUSTER` or by calling
/// this), so a SIGTERM sent to the node's whole process group (systemd's default
/// `KillMode=control-group`, Slurm) still lets running calls finish within the drain
/// time. Processes and pools that tasks start keep SIGTERM's default:
/// [`Process::terminate`](crate::Process::terminate) ends them.
///
/// A node logs to stderr: if the program installed no `tracing` subscriber, `serve`
/// installs one that prints warnings, errors and the node's start and stop
/// (`RUST_LOG` overrides the filter, e.g. `RUST_LOG=multiproc=debug`; `RUST_LOG=off`
/// silences it). A program with a subscriber of its own keeps it.
///
/// ```no_run
/// // A program with a `node` subcommand, on each machine of the cluster:
/// //   MULTIPROC_CLUSTER_KEY=... ./app node redis://10.0.0.1:6379/0
/// fn main() -> multiproc::Result<()> {
///     multiproc::init();
///     let url = std::env::args().nth(2).unwrap_or_default();
///     multiproc::cluster::serve(&url, multiproc::cluster::ServeOptions::new())
/// }
/// ```
pub fn serve(url: &str, options: ServeOptions) -> Result<()> {
    log_to_stderr_by_default();
    let key = match options.key {
        Some(k) => k,
        None => Key::from_env()?,
    };
    let address = broker::address_of(url);
    let stop = crate::sys::term::catch_terminate()
        .map_err(|e| Error::io("installing the node's SIGTERM handler", e))?;
    let slots = options.slots.unwrap_or_else(crate::cpu_count);
    // Only this pool's own workers leave SIGTERM to the node; processes and pools
    // that tasks start keep the default.
    let mut pool = Pool::builder().processes(slots).workers_leave_sigterm();
    if let Some(m) = options.method {
        pool = pool.start_method(m);
    }
    let pool = pool.build()?;
    let host = super::hostname();
    let build = crate::task::hex(crate::task::build_id());
    let node = Arc::new(Node {
        keys: Keys::new(&build),
        build,
        name: format!("{host}:{}", std::process::id()),
        host,
        key,
        lease: options.lease,
        slots,
        held: Mutex::new(HashMap::new()),
        freed: Condvar::new(),
        refused: AtomicU64::new(0),
        last_refused_ms: AtomicU64::new(0),
        stop,
        quit: AtomicBool::new(false),
    });
    tracing::info!(node = %node.name, %address, slots, "cluster node serving");
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let answerer = {
        let node = node.clone();
        let url = url.to_owned();
        std::thread::Builder::new()
            .name("multiproc-node-answers".into())
            .spawn(move || answer_loop(&node, &url, done_rx))
            .map_err(|e| Error::io("starting a node thread", e))?
    };
    let heartbeat = {
        let node = node.clone();
        let url = url.to_owned();
        std::thread::Builder::new()
            .name("multiproc-node-heartbeat".into())
            .spawn(move || heartbeat_loop(&node, &url))
            .map_err(|e| Error::io("starting a node thread", e))?
    };
    take_loop(&node, url, &pool, &done_tx);
    // SIGTERM: let running chunks finish for a while, then hand the rest back.
    let deadline = Instant::now().checked_add(options.drain);
    {
        let mut held = node.held.lock().unwrap_or_else(|p| p.into_inner());
        while !held.is_empty() && deadline.is_none_or(|d| Instant::now() < d) {
            held = node
                .freed
                .wait_timeout(held, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
    hand_back(&node, url);
    node.quit.store(true, Ordering::SeqCst);
    drop(done_tx);
    let _ = answerer.join();
    let _ = heartbeat.join();
    pool.terminate();
    tracing::info!(node = %node.name, "cluster node stopped");
    Ok(())
}

/// Connects, retrying with backoff until it works or the thread must end: the taker
/// (`taker`) ends on SIGTERM (it takes no new work then); the answerer and the
/// heartbeat go on through the drain, when running chunks still need their answers
/// sent and their leases renewed, and end when the node quits.
fn connect(node: &Node, url: &str, taker: bool) -> Option<Broker> {
    let mut backoff = Duration::from_millis(100);
    loop {
        if node.quit.load(Ordering::SeqCst) || (taker && node.stop.load(Ordering::SeqCst)) {
            return None;
        }
        match Broker::connect(url, Duration::from_secs(5)) {
            Ok(b) => return Some(b),
            Err(e) => {
                tracing::warn!(node = %node.name, "{e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn take_loop(node: &Arc<Node>, url: &str, pool: &Pool, done: &mpsc::Sender<Done>) {
    let mut redis: Option<Broker> = None;
    let mut callers: Vec<String> = Vec::new();
    let mut listed = Instant::now() - Duration::from_secs(60);
    let mut warned_empty = false;
    while !node.stop.load(Ordering::SeqCst) {
        let Some(b) = redis.as_mut() else {
            if node.stop.load(Ordering::SeqCst) {
                return;
            }
            redis = connect(node, url, true);
            continue;
        };
        let free = node.slots.saturating_sub(node.busy());
        if free == 0 {
            let held = node.held.lock().unwrap_or_else(|p| p.into_inner());
            let _ = node.freed.wait_timeout(held, Duration::from_millis(200));
            continue;
        }
        if listed.elapsed() >= Duration::from_millis(500) {
            match list_callers(node, b) {
                Ok(c) => {
                    if c.is_empty() && !warned_empty {
                        tracing::info!(
                            node = %node.name,
                            "no caller of this build is connected (a node runs only work of its own build); waiting"
                        );
                    }
                    warned_empty = c.is_empty();
                    callers = c;
                }
                Err(e) => {
                    tracing::warn!(node = %node.name, "{e}");
                    redis = None;
                    continue;
                }
            }
            listed = Instant::now();
        }
        if callers.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        match take(node, b, &mut callers, free, pool, done) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(node = %node.name, "{e}");
                redis = None;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

impl Node {
    fn busy(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn calls_of(&self, caller: &str) -> String {
        self.keys.calls(caller)
    }

    fn info(&self) -> NodeInfo {
        NodeInfo {
            host: self.host.clone(),
            pid: std::process::id(),
            slots: self.slots as u32,
            busy: self.busy() as u32,
            heartbeat_ms: broker::now_ms(),
            refused: self.refused.load(Ordering::Relaxed),
            last_refused_ms: self.last_refused_ms.load(Ordering::Relaxed),
        }
    }
}

/// Callers whose heartbeat is recent.
fn list_callers(node: &Node, b: &mut Broker) -> Result<Vec<String>> {
    let since =
        broker::now_ms().saturating_sub((node.lease * broker::EXPIRY_LEASES).as_millis() as u64);
    b.run(
        "cannot list callers",
        redis::cmd("ZRANGEBYSCORE")
            .arg(node.keys.callers())
            .arg(since)
            .arg("+inf"),
    )
}

/// Takes up to `free` chunks: expired leases first (their nodes are gone), then new
/// ones (waiting briefly for some).
fn take(
    node: &Arc<Node>,
    b: &mut Broker,
    callers: &mut Vec<String>,
    mut free: usize,
    pool: &Pool,
    done: &mpsc::Sender<Done>,
) -> Result<()> {
    for caller in callers.iter() {
        if free == 0 {
            return Ok(());
        }
        let stream = node.calls_of(caller);
        let expired = b.expired(&stream, node.lease, free)?;
        for p in expired.ids {
            if free == 0 {
                break;
            }
            // Its own entries it runs are renewed, never expired; one of its own that
            // is expired was handed back (refused) and is fair game again.
            let mine = node
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&(stream.clone(), p.id.clone()));
            if mine {
                continue;
            }
            if let Some(entry) = b.claim(&stream, &node.name, node.lease, &p.id)? {
                let runs = p.times_delivered as u64;
                tracing::debug!(node = %node.name, id = %entry.id, from = %p.consumer, "took over an expired lease");
                let previous = previous_run(&p.consumer);
                if handle(node, b, caller, &entry, runs + 1, Some(previous), pool, done)? {
                    free -= 1;
                }
            }
        }
    }
    if free == 0 {
        return Ok(());
    }
    let streams: Vec<String> = callers.iter().map(|c| node.calls_of(c)).collect();
    let Some(entries) = b.read_group(&node.name, &streams, free, Duration::from_millis(200))?
    else {
        // A caller's stream expired: keep reading the others.
        let mut alive = Vec::with_capacity(callers.len());
        for c in callers.iter() {
            let exists: bool = b.run(
                "cannot check a caller",
                redis::cmd("EXISTS").arg(node.calls_of(c)),
            )?;
            if exists {
                alive.push(c.clone());
            }
        }
        *callers = alive;
        return Ok(());
    };
    for (stream, entry) in entries {
        let Some(caller) = callers.iter().find(|c| node.calls_of(c) == stream) else {
            continue;
        };
        handle(node, b, caller, &entry, 1, None, pool, done)?;
    }
    Ok(())
}

/// How the previous run of a chunk last leased to `consumer` ended.
fn previous_run(consumer: &str) -> Previous {
    if let Some(n) = consumer.strip_prefix(HANDED_BACK) {
        Previous::HandedBack(n.to_owned())
    } else if let Some(n) = consumer.strip_prefix(REFUSED) {
        Previous::Refused(n.to_owned())
    } else {
        Previous::Lost(consumer.to_owned())
    }
}

/// Ends the lease of `id` and deletes the entry (its answer went out, or it is
/// dropped).
fn finish_entry(b: &mut Broker, stream: &str, id: &str) -> Result<()> {
    let mut p = redis::pipe();
    p.cmd("XACK").arg(stream).arg(GROUP).arg(id).ignore();
    p.cmd("XDEL").arg(stream).arg(id).ignore();
    b.pipe("cannot end a lease", &p)
}

/// Makes `id` claimable by another node at once (its idle time set far past any
/// lease), without counting a delivery; leased meanwhile to `consumer` (see
/// [`HANDED_BACK`]).
fn release_entry(
    node: &Node,
    b: &mut Broker,
    stream: &str,
    id: &str,
    consumer: &str,
) -> Result<()> {
    let idle = u64::try_from(node.lease.saturating_mul(1000).as_millis()).unwrap_or(u64::MAX);
    b.run::<redis::Value>(
        "cannot hand back a lease",
        redis::cmd("XCLAIM")
            .arg(stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(0)
            .arg(id)
            .arg("IDLE")
            .arg(idle)
            .arg("JUSTID"),
    )
    .map(|_| ())
}

/// Checks and starts one chunk; `true` if it now runs here.
#[allow(clippy::too_many_arguments)]
fn handle(
    node: &Arc<Node>,
    b: &mut Broker,
    caller: &str,
    entry: &StreamId,
    runs: u64,
    previous: Option<Previous>,
    pool: &Pool,
    done: &mpsc::Sender<Done>,
) -> Result<bool> {
    let stream = node.calls_of(caller);
    let Some(body) = broker::message(entry).and_then(|m| node.key.open(stream.as_bytes(), m))
    else {
        let refused = node.refused.fetch_add(1, Ordering::Relaxed) + 1;
        node.last_refused_ms.store(broker::now_ms(), Ordering::Relaxed);
        tracing::warn!(
            node = %node.name, id = %entry.id, refused,
            "dropped a message whose signature is wrong (forged, or signed with another key)"
        );
        if runs as usize >= MAX_REFUSALS {
            finish_entry(b, &stream, &entry.id)?;
        } else {
            let to = format!("{REFUSED}{}", node.name);
            release_entry(node, b, &stream, &entry.id, &to)?;
        }
        return Ok(false);
    };
    let msg: ChunkMsg = match postcard::from_bytes(body) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(node = %node.name, "dropped a signed chunk that does not decode: {e}");
            finish_entry(b, &stream, &entry.id)?;
            return Ok(false);
        }
    };
    let alive: bool = b.run(
        "cannot check a caller",
        redis::cmd("EXISTS").arg(node.keys.alive(caller)),
    )?;
    if !alive {
        // Its caller is gone: nobody wants the answers.
        finish_entry(b, &stream, &entry.id)?;
        return Ok(false);
    }
    let reply = |parts| Done {
        caller: caller.to_owned(),
        id: entry.id.clone(),
        answer: AnswerMsg {
            tag: msg.tag,
            node: node.name.clone(),
            nanos: 0,
            parts,
        },
    };
    let calls = msg.ends.len() as u32;
    if runs > u64::from(msg.retries) + 1 {
        let last = previous.unwrap_or_else(|| Previous::Lost("?".to_owned()));
        let failed = (0..calls)
            .map(|p| {
                let f = NodeFailure::Lost {
                    last: last.clone(),
                    runs: runs - 1,
                };
                (p, f)
            })
            .collect();
        let _ = done.send(reply(vec![WirePart::Failed(failed)]));
        return Ok(false);
    }
    let Some(args) = msg.args() else {
        let failed = (0..calls)
            .map(|p| {
                let message = "the chunk's argument lengths do not fit its data".to_owned();
                (p, NodeFailure::Other { message })
            })
            .collect();
        let _ = done.send(reply(vec![WirePart::Failed(failed)]));
        return Ok(false);
    };
    let collector = Arc::new(Collector {
        node: Arc::downgrade(node),
        started: Instant::now(),
        tx: Mutex::new(done.clone()),
        st: Mutex::new(Collected {
            answered: vec![false; args.len()],
            left: args.len(),
            parts: Vec::new(),
            reply: Some(reply(Vec::new())),
        }),
    });
    let n = args.len();
    // Signed, but still a number from elsewhere: no overflow, no panic.
    let deadline = msg.timeout().and_then(|t| {
        let total = t.checked_mul(u32::try_from(n).ok()?)?;
        Instant::now().checked_add(total)
    });
    // Registered before it starts, so that a quick answer finds its entry.
    node.held.lock().unwrap_or_else(|p| p.into_inner()).insert(
        (stream.clone(), entry.id.clone()),
        Held {
            started: Instant::now(),
            deadline,
            job: 0,
            control: Arc::new(NoControl),
            collector: collector.clone(),
        },
    );
    match pool.run_encoded(msg.entry, args, collector.clone()) {
        Ok((job, control)) => {
            if let Some(h) = node
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&(stream, entry.id.clone()))
            {
                h.job = job;
                h.control = control;
            }
        }
        Err(e) => collector.fail_rest(&NodeFailure::of(&e)),
    }
    if let Some(previous) = previous {
        // For the caller's log; the chunk runs whether this arrives or not.
        let notice = NodeMsg::Rerun {
            tag: msg.tag,
            node: node.name.clone(),
            run: runs,
            previous,
        };
        if let Err(e) = send_to_caller(node, b, caller, &notice) {
            tracing::debug!(node = %node.name, "{e}");
        }
    }
    Ok(true)
}

/// Adds a signed message to `caller`'s answers stream, if the stream still exists.
fn send_to_caller(node: &Node, b: &mut Broker, caller: &str, msg: &NodeMsg) -> Result<()> {
    let answers = node.keys.answers(caller);
    let body = postcard::to_stdvec(msg).map_err(|e| Error::Cluster {
        address: b.address.clone(),
        detail: format!("a message did not encode: {e}"),
    })?;
    let signed = node.key.sign(answers.as_bytes(), &body);
    b.run::<redis::Value>(
        "cannot send a notice",
        redis::cmd("XADD")
            .arg(&answers)
            .arg("NOMKSTREAM")
            .arg("*")
            .arg("m")
            .arg(&signed),
    )
    .map(|_| ())
}

/// Stands in for a chunk's control until its local job exists.
struct NoControl;

impl Control for NoControl {
    fn cancel(&self, _job: u64, _stop_running: bool) {}
    fn running(&self, _job: u64) -> bool {
        false
    }
}

struct Collected {
    answered: Vec<bool>,
    left: usize,
    parts: Vec<WirePart>,
    /// The reply, until sent.
    reply: Option<Done>,
}

/// Gathers one chunk's answers from the local pool; sends the chunk's reply once every
/// call is answered.
struct Collector {
    node: std::sync::Weak<Node>,
    started: Instant,
    tx: Mutex<mpsc::Sender<Done>>,
    st: Mutex<Collected>,
}

impl Collector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Files a part; sends the reply if the chunk is complete.
    fn file(&self, part: WirePart, positions: &[u32]) {
        let mut st = self.lock();
        let mut fresh = 0;
        for &p in positions {
            if let Some(a) = st.answered.get_mut(p as usize)
                && !*a
            {
                *a = true;
                fresh += 1;
            }
        }
        if fresh == 0 {
            return;
        }
        st.left -= fresh;
        st.parts.push(part);
        if st.left > 0 {
            return;
        }
        let Some(mut reply) = st.reply.take() else {
            return;
        };
        reply.answer.parts = std::mem::take(&mut st.parts);
        let slots = self.node.upgrade().map_or(1, |n| n.slots);
        let calls = st.answered.len().clamp(1, slots.max(1));
        reply.answer.nanos =
            (self.started.elapsed().as_nanos() as u64).saturating_mul(calls as u64);
        drop(st);
        let _ = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(reply);
    }

    /// Answers every call not answered yet with `failure`.
    fn fail_rest(&self, failure: &NodeFailure) {
        let open: Vec<u32> = {
            let st = self.lock();
            (0..st.answered.len() as u32)
                .filter(|&p| !st.answered[p as usize])
                .collect()
        };
        let failed = open.iter().map(|&p| (p, failure.clone())).collect();
        self.file(WirePart::Failed(failed), &open);
    }
}

impl Sink for Collector {
    fn answers(&self, answers: Answers) {
        match answers {
            Answers::Values {
                pid,
                indices,
                failures,
                data,
                ..
            } => {
                let positions: Vec<u32> = indices.iter().map(|i| i as u32).collect();
                let part = WirePart::Values {
                    pid,
                    positions: positions.clone(),
                    failures,
                    data: ByteBuf::from(data.bytes().to_vec()),
                };
                self.file(part, &positions);
            }
            Answers::Failed(failed) => {
                let positions: Vec<u32> = failed.iter().map(|(i, _)| *i as u32).collect();
                let part = WirePart::Failed(
                    failed
                        .iter()
                        .map(|(i, e)| (*i as u32, NodeFailure::of(e)))
                        .collect(),
                );
                self.file(part, &positions);
            }
        }
    }
}

/// Sends each finished chunk's answers, then ends its lease; until the node quits
/// (SIGTERM included: chunks that finish during the drain are answered).
fn answer_loop(node: &Node, url: &str, rx: mpsc::Receiver<Done>) {
    let mut redis: Option<Broker> = None;
    loop {
        let done = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(d) => d,
            Err(mpsc::RecvTimeoutError::Timeout) if !node.quit.load(Ordering::SeqCst) => continue,
            // Quitting with nothing left to send, or every sender gone.
            Err(_) => return,
        };
        let stream = node.calls_of(&done.caller);
        let answers = node.keys.answers(&done.caller);
        let body = match postcard::to_stdvec(&NodeMsg::Answer(done.answer)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(node = %node.name, "an answer did not encode: {e}");
                continue;
            }
        };
        let signed = node.key.sign(answers.as_bytes(), &body);
        loop {
            let Some(b) = redis.as_mut() else {
                redis = connect(node, url, false);
                if redis.is_none() {
                    return;
                }
                continue;
            };
            let mut p = redis::pipe();
            // NOMKSTREAM: a caller whose answers stream expired is gone; its answers
            // must not make the stream again.
            p.cmd("XADD")
                .arg(&answers)
                .arg("NOMKSTREAM")
                .arg("*")
                .arg("m")
                .arg(&signed)
                .ignore();
            p.cmd("XACK").arg(&stream).arg(GROUP).arg(&done.id).ignore();
            p.cmd("XDEL").arg(&stream).arg(&done.id).ignore();
            match b.pipe::<()>("cannot send answers", &p) {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(node = %node.name, "{e}");
                    redis = None;
                }
            }
        }
        let mut held = node.held.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&(stream, done.id));
        node.freed.notify_all();
    }
}

/// Renews the leases of running chunks, enforces their timeouts, and publishes the
/// node's info, every third of a lease.
fn heartbeat_loop(node: &Node, url: &str) {
    let mut redis: Option<Broker> = None;
    let period = node.lease / 3;
    while !node.quit.load(Ordering::SeqCst) {
        let started = Instant::now();
        if let Some(b) = redis.as_mut() {
            if let Err(e) = beat(node, b) {
                tracing::warn!(node = %node.name, "{e}");
                redis = None;
            }
        } else {
            redis = connect(node, url, false);
            continue;
        }
        let rest = period.saturating_sub(started.elapsed());
        let step = Duration::from_millis(20);
        let until = Instant::now() + rest;
        while Instant::now() < until && !node.quit.load(Ordering::SeqCst) {
            std::thread::sleep(step.min(until.saturating_duration_since(Instant::now())));
        }
    }
    if let Some(b) = redis.as_mut() {
        let mut p = redis::pipe();
        p.cmd("DEL").arg(node.keys.node(&node.name)).ignore();
        p.cmd("ZREM")
            .arg(node.keys.nodes())
            .arg(&node.name)
            .ignore();
        p.cmd("ZREM")
            .arg(Keys::registry())
            .arg(Keys::registry_member(&node.build, &node.name))
            .ignore();
        let _ = b.pipe::<()>("cannot remove the node's info", &p);
    }
}

fn beat(node: &Node, b: &mut Broker) -> Result<()> {
    b.sync_clock();
    let now = Instant::now();
    let mut by_stream: HashMap<String, Vec<String>> = HashMap::new();
    let mut timed_out = Vec::new();
    {
        let held = node.held.lock().unwrap_or_else(|p| p.into_inner());
        for ((stream, id), h) in held.iter() {
            by_stream
                .entry(stream.clone())
                .or_default()
                .push(id.clone());
            if h.deadline.is_some_and(|d| now >= d) {
                timed_out.push((h.collector.clone(), h.control.clone(), h.job, h.started));
            }
        }
    }
    for (collector, control, job, started) in timed_out {
        let ms = started.elapsed().as_millis() as u64;
        collector.fail_rest(&NodeFailure::Timeout { ms });
        control.cancel(job, true);
    }
    // Renew only what is still ours: a node that stalled past its lease must not take
    // a chunk back from the node that took it over. What another node holds now stops
    // here (its answer would be a second one).
    for (stream, ids) in by_stream.iter_mut() {
        let owned = b.owned(stream, &node.name, ids.len().max(1) * 2)?;
        let (mine, lost): (Vec<String>, Vec<String>) =
            std::mem::take(ids).into_iter().partition(|id| owned.contains(id));
        *ids = mine;
        if !lost.is_empty() {
            let mut held = node.held.lock().unwrap_or_else(|p| p.into_inner());
            for id in lost {
                if let Some(h) = held.remove(&(stream.clone(), id)) {
                    tracing::warn!(node = %node.name, "lost a lease to another node; stopping its chunk");
                    h.control.cancel(h.job, true);
                }
            }
            node.freed.notify_all();
        }
    }
    let mut p = redis::pipe();
    for (stream, ids) in by_stream.iter().filter(|(_, ids)| !ids.is_empty()) {
        let cmd = p
            .cmd("XCLAIM")
            .arg(stream)
            .arg(GROUP)
            .arg(&node.name)
            .arg(0);
        for id in ids {
            cmd.arg(id);
        }
        cmd.arg("JUSTID").ignore();
    }
    let info = node.info();
    let body = postcard::to_stdvec(&info).map_err(|e| Error::Cluster {
        address: b.address.clone(),
        detail: format!("the node's info did not encode: {e}"),
    })?;
    let key = node.keys.node(&node.name);
    let ttl = (node.lease * 3).as_millis() as u64;
    // Not signed: it carries no work, and a caller must read it even when the keys
    // differ, to say that they do.
    p.cmd("SET").arg(&key).arg(body).arg("PX").arg(ttl).ignore();
    p.cmd("ZADD")
        .arg(node.keys.nodes())
        .arg(info.heartbeat_ms)
        .arg(&node.name)
        .ignore();
    p.cmd("ZREMRANGEBYSCORE")
        .arg(node.keys.nodes())
        .arg("-inf")
        .arg(info.heartbeat_ms.saturating_sub(ttl))
        .ignore();
    p.cmd("PEXPIRE")
        .arg(node.keys.nodes())
        .arg(ttl * 10)
        .ignore();
    // The registry of every build's nodes, scored by when each entry expires, so that
    // a caller of another build can say why no node takes its work.
    let registry = Keys::registry();
    p.cmd("ZADD")
        .arg(&registry)
        .arg(info.heartbeat_ms.saturating_add(ttl))
        .arg(Keys::registry_member(&node.build, &node.name))
        .ignore();
    p.cmd("ZREMRANGEBYSCORE")
        .arg(&registry)
        .arg("-inf")
        .arg(format!("({}", info.heartbeat_ms))
        .ignore();
    p.cmd("PEXPIRE").arg(&registry).arg(ttl * 10).ignore();
    b.pipe("cannot renew leases", &p)
}

/// Makes every chunk still running claimable by another node at once, and stops it
/// here.
fn hand_back(node: &Node, url: &str) {
    let held: Vec<((String, String), Held)> = node
        .held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect();
    if held.is_empty() {
        return;
    }
    let Ok(mut b) = Broker::connect(url, Duration::from_secs(5)) else {
        tracing::warn!(node = %node.name, "cannot reach Redis to hand back {} chunks; their leases will expire", held.len());
        return;
    };
    tracing::info!(node = %node.name, chunks = held.len(), "drain time over: handing back the chunks still running");
    let to = format!("{HANDED_BACK}{}", node.name);
    for ((stream, id), h) in held {
        h.control.cancel(h.job, true);
        if let Err(e) = release_entry(node, &mut b, &stream, &id, &to) {
            tracing::warn!(node = %node.name, "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_of_a_released_chunk_says_how_its_last_run_ended() {
        assert_eq!(
            previous_run(&format!("{HANDED_BACK}h:1")),
            Previous::HandedBack("h:1".into())
        );
        assert_eq!(
            previous_run(&format!("{REFUSED}h:2")),
            Previous::Refused("h:2".into())
        );
        assert_eq!(previous_run("h:3"), Previous::Lost("h:3".into()));
    }
}
