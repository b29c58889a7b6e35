//! The heartbeat thread: renews the leases of running chunks, enforces their task
//! timeouts, and publishes the node's [`NodeInfo`](crate::cluster::NodeInfo).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cluster::broker::{Broker, GROUP, Keys};
use crate::cluster::message::NodeFailure;
use crate::error::{Error, Result};

use super::state::{Node, connect};

/// Renews the leases of running chunks, enforces their timeouts, and publishes the
/// node's info, every third of a lease.
pub(super) fn heartbeat_loop(node: &Node, url: &str) {
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
        let (mine, lost): (Vec<String>, Vec<String>) = std::mem::take(ids)
            .into_iter()
            .partition(|id| owned.contains(id));
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
