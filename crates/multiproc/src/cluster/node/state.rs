//! The state a node's threads share: its identity and settings, the chunks it runs,
//! and the counters it publishes; and how a thread (re)connects to Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::collector::Collector;
use crate::cluster::auth::Key;
use crate::cluster::broker::{self, Broker, Keys};
use crate::cluster::message::NodeInfo;
use crate::pool::backend::Control;

/// A chunk this node runs.
pub(super) struct Held {
    pub(super) started: Instant,
    pub(super) deadline: Option<Instant>,
    pub(super) job: u64,
    pub(super) control: Arc<dyn Control>,
    pub(super) collector: Arc<Collector>,
}

/// The node, as its taker, answerer and heartbeat threads see it.
pub(super) struct Node {
    pub(super) keys: Keys,
    /// This build's id (hex), as the registry of every build's nodes lists it.
    pub(super) build: String,
    pub(super) name: String,
    pub(super) host: String,
    pub(super) key: Key,
    pub(super) lease: Duration,
    pub(super) slots: usize,
    /// Running chunks by (calls stream, entry id).
    pub(super) held: Mutex<HashMap<(String, String), Held>>,
    pub(super) freed: Condvar,
    pub(super) refused: AtomicU64,
    pub(super) last_refused_ms: AtomicU64,
    pub(super) stop: &'static AtomicBool,
    /// The answerer and heartbeat threads end.
    pub(super) quit: AtomicBool,
}

/// Connects, retrying with backoff until it works or the thread must end: the taker
/// (`taker`) ends on SIGTERM (it takes no new work then); the answerer and the
/// heartbeat go on through the drain, when running chunks still need their answers
/// sent and their leases renewed, and end when the node quits.
pub(super) fn connect(node: &Node, url: &str, taker: bool) -> Option<Broker> {
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

impl Node {
    pub(super) fn busy(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(super) fn calls_of(&self, caller: &str) -> String {
        self.keys.calls(caller)
    }

    pub(super) fn info(&self) -> NodeInfo {
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
