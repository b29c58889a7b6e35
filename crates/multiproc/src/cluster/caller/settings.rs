//! What a cluster pool was set up with, fixed once it is built: shared by its handle,
//! which makes it, and the driving thread and its view of the nodes, which read it.

use std::time::Duration;

use crate::cluster::auth::Key;
use crate::cluster::broker::{EXPIRY_LEASES, Keys};

/// The pool's settings and the caller's names in Redis.
pub(super) struct Settings {
    pub(super) url: String,
    pub(super) key: Key,
    pub(super) lease: Duration,
    pub(super) retries: u32,
    pub(super) task_timeout: Option<Duration>,
    pub(super) unreachable: Duration,
    pub(super) wait_for_nodes: Option<Duration>,
    /// This build's id (hex).
    pub(super) build: String,
    pub(super) keys: Keys,
    pub(super) caller: String,
    pub(super) address: String,
}

impl Settings {
    /// How long the caller's keys live without a renewal.
    pub(super) fn ttl_ms(&self) -> u64 {
        (self.lease * EXPIRY_LEASES).as_millis() as u64
    }
}
