//! A worker node: takes chunks from the calls streams of live callers (its build's),
//! runs them in its own local process pool, answers, and renews its leases while they
//! run.
//!
//! Three threads, each with its own Redis connection: the *taker* (this thread) reads
//! new chunks and claims expired leases whenever a slot is free; the *answerer* sends
//! each finished chunk's answers and ends its lease (`XACK`, `XDEL`); the *heartbeat*
//! renews the leases of running chunks (`XCLAIM … JUSTID`, which resets their idle
//! time), enforces task timeouts, and publishes the node's
//! [`NodeInfo`](crate::cluster::NodeInfo).
//!
//! This file: the node's options and its set-up and shut-down ([`serve`]). The
//! threads live beside it: [`taker`], [`answerer`], [`heartbeat`]; the state they
//! share, in [`state`]; a chunk's answers are gathered by a [`collector::Collector`];
//! how a lease ends, in [`leases`].

mod answerer;
mod collector;
mod heartbeat;
mod leases;
mod state;
mod taker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::auth::Key;
use super::broker::{self, Keys};
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::start::StartMethod;

use self::answerer::answer_loop;
use self::collector::Done;
use self::heartbeat::heartbeat_loop;
use self::leases::hand_back;
use self::state::Node;
use self::taker::take_loop;

/// The environment variable that makes a program a worker node in [`crate::init`].
pub const CLUSTER_ENV: &str = "MULTIPROC_CLUSTER";

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
    let build = crate::sys::build_id::hex(crate::sys::build_id::build_id());
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
