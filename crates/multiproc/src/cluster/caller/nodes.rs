//! What the caller knows of the nodes: their heartbeats read from Redis, which are
//! live and which were lost, no node of this build while work waits, and nodes that
//! refuse the caller's messages (a wrong key).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::cluster::broker::{self, Broker, Keys};
use crate::cluster::message::NodeInfo;
use crate::error::{Error, Result};
use crate::pool::core::Core;

use super::settings::Settings;

/// Lanes (chunks in the stream at once) at least, before any node is seen.
pub(super) const MIN_LANES: usize = 4;

/// Slots a node may claim, at most: its info is not signed (see the node's
/// heartbeat), and lanes are allocated from it.
const MAX_SLOTS_PER_NODE: u32 = 1024;
/// Lanes at most, whatever the nodes say.
pub(super) const MAX_LANES: usize = 1 << 14;

/// What the driver learns of the cluster, for [`Pool::workers`](super::Pool::workers).
#[derive(Default)]
pub(super) struct Status {
    pub(super) nodes: Vec<NodeInfo>,
}

/// The live nodes' info (unsigned: informational; see the node's heartbeat).
pub(super) fn read_nodes(b: &mut Broker, s: &Settings) -> Result<Vec<NodeInfo>> {
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

/// What the caller saw of a node's heartbeats.
struct Seen {
    heartbeat_ms: u64,
    /// When its heartbeat last changed (the caller's clock: nodes' clocks may differ).
    changed: Instant,
    lost: bool,
}

/// How often the nodes' heartbeats are read: often enough to see a live node's
/// heartbeat change within a lease.
pub(super) fn nodes_period(s: &Settings) -> Duration {
    (s.lease / 3).min(Duration::from_secs(1))
}

/// What the driving thread remembers of the nodes between rounds.
#[derive(Default)]
pub(super) struct Nodes {
    /// The nodes of this build listed lately, by name.
    seen: HashMap<String, Seen>,
    /// Since when work waits and no node of this build is listed, and whether the
    /// pool said so.
    no_node_since: Option<(Instant, bool)>,
}

impl Nodes {
    /// The live nodes among those listed: a node whose heartbeat has not changed for a
    /// lease has stopped renewing its leases (its chunks go to other nodes): it is
    /// lost, and the pool says so once.
    pub(super) fn track(&mut self, s: &Settings, listed: Vec<NodeInfo>) -> Vec<NodeInfo> {
        let now = Instant::now();
        let mut live = Vec::with_capacity(listed.len());
        let mut names = HashSet::with_capacity(listed.len());
        for n in listed {
            let name = n.name();
            let seen = self.seen.entry(name.clone()).or_insert_with(|| {
                tracing::debug!(address = %s.address, node = %name, slots = n.slots, "a cluster node is connected");
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
                    tracing::warn!(address = %s.address, node = %name, "cluster node {name} is back (its heartbeat resumed); chunks it held may have run elsewhere meanwhile");
                }
            }
            let silent = now.saturating_duration_since(seen.changed);
            if silent > s.lease {
                if !seen.lost {
                    seen.lost = true;
                    let then = match s.retries {
                        0 => "the calls it held give up (retries: 0)".to_owned(),
                        n => format!("the chunks it held run again on other nodes (retries: {n})"),
                    };
                    tracing::warn!(
                        address = %s.address, node = %name,
                        "cluster node {name} lost: no heartbeat for {silent:.1?} (killed, cut off \
                         or frozen); {then}"
                    );
                }
            } else {
                live.push(n);
            }
            names.insert(name);
        }
        let address = &s.address;
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
    fn other_builds(s: &Settings, b: &mut Broker) -> Result<usize> {
        let members: Vec<String> = b.run(
            "cannot list the nodes of every build",
            redis::cmd("ZRANGEBYSCORE")
                .arg(Keys::registry())
                .arg(broker::now_ms())
                .arg("+inf"),
        )?;
        let mine = format!("{}/", s.build);
        Ok(members.iter().filter(|m| !m.starts_with(&mine)).count())
    }

    /// Work waits (`waiting`) and no node of this build is listed: say so at once, and
    /// after [`PoolBuilder::wait_for_nodes`](super::PoolBuilder::wait_for_nodes) return
    /// the error, saying why, that the waiting calls answer.
    pub(super) fn check(
        &mut self,
        s: &Settings,
        waiting: bool,
        b: &mut Broker,
        live: &[NodeInfo],
    ) -> Result<Option<Error>> {
        if !live.is_empty() || !waiting {
            self.no_node_since = None;
            return Ok(None);
        }
        let (since, warned) = *self
            .no_node_since
            .get_or_insert_with(|| (Instant::now(), false));
        // Said once the wait outlasts a node's start (nodes often start with the
        // caller), unless the error comes first.
        let wait = s.wait_for_nodes;
        let warn_after = wait.map_or(s.lease, |w| s.lease.min(w / 2));
        if !warned && since.elapsed() >= warn_after {
            self.no_node_since = Some((since, true));
            let others = Self::other_builds(s, b)?;
            let then = match wait {
                Some(w) => format!("the calls give up {w:?} after it started waiting"),
                None => "waiting for one (PoolBuilder::wait_for_nodes)".to_owned(),
            };
            tracing::warn!(
                address = %s.address,
                "no cluster node of this build is connected{}; {then}",
                others_note(others)
            );
        }
        let Some(wait) = wait else {
            return Ok(None);
        };
        if since.elapsed() < wait {
            return Ok(None);
        }
        let others = Self::other_builds(s, b)?;
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
        Ok(Some(Error::Cluster {
            address: s.address.clone(),
            detail,
        }))
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

/// No answer for a while, no node busy, and nodes refusing messages lately: the nodes
/// do not share this caller's key. Then the error the pool's outstanding calls answer.
pub(super) fn check_acceptance(
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
