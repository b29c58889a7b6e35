//! The taker thread: reads new chunks and claims expired leases whenever a slot is
//! free, checks each (signature, caller alive, runs left) and starts it in the local
//! pool.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redis::streams::StreamId;

use crate::cluster::broker::{self, Broker};
use crate::cluster::message::{AnswerMsg, ChunkMsg, NodeFailure, NodeMsg, Previous, WirePart};
use crate::error::{Error, Result};
use crate::pool::Pool;

use super::collector::{Collector, Done, NoControl};
use super::leases::{REFUSED, finish_entry, previous_run, release_entry};
use super::state::{Held, Node, connect};

/// A message that fails its signature check this many times (on any node) is deleted:
/// it was forged, or no node has the key it was signed with.
const MAX_REFUSALS: usize = 5;

pub(super) fn take_loop(node: &Arc<Node>, url: &str, pool: &Pool, done: &mpsc::Sender<Done>) {
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
                if handle(
                    node,
                    b,
                    caller,
                    &entry,
                    runs + 1,
                    Some(previous),
                    pool,
                    done,
                )? {
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
        node.last_refused_ms
            .store(broker::now_ms(), Ordering::Relaxed);
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
    let mut msg: ChunkMsg = match postcard::from_bytes(body) {
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
    let tag = msg.tag;
    let reply = |parts| Done {
        caller: caller.to_owned(),
        id: entry.id.clone(),
        answer: AnswerMsg {
            tag,
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
    let Some(args) = msg.take_args() else {
        let failed = (0..calls)
            .map(|p| {
                let message = "the chunk's argument lengths do not fit its data".to_owned();
                (p, NodeFailure::Other { message })
            })
            .collect();
        let _ = done.send(reply(vec![WirePart::Failed(failed)]));
        return Ok(false);
    };
    let n = msg.ends.len();
    let collector = Arc::new(Collector::new(
        node.slots,
        done.clone(),
        n,
        reply(Vec::new()),
    ));
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
