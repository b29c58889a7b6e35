//! How a node's lease on a chunk ends without an answer: dropped (`finish_entry`),
//! released to another node at once (`release_entry`, `hand_back` on SIGTERM), and how
//! the next taker learns how the previous run ended (`previous_run`).

use std::time::Duration;

use crate::cluster::broker::{Broker, GROUP};
use crate::cluster::message::Previous;
use crate::error::Result;

use super::state::{Held, Node};

/// A chunk handed back on SIGTERM is left to the consumer `sigterm:<node>` (and one
/// whose signature a node refused, to `refused:<node>`), so that the node that takes
/// it next knows how its previous run ended: a drain, not a lost node. (Consumer names
/// are not signed: anyone who can write to Redis could change them, and with them only
/// the words of an error.)
const HANDED_BACK: &str = "sigterm:";
pub(super) const REFUSED: &str = "refused:";

/// How the previous run of a chunk last leased to `consumer` ended.
pub(super) fn previous_run(consumer: &str) -> Previous {
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
pub(super) fn finish_entry(b: &mut Broker, stream: &str, id: &str) -> Result<()> {
    let mut p = redis::pipe();
    p.cmd("XACK").arg(stream).arg(GROUP).arg(id).ignore();
    p.cmd("XDEL").arg(stream).arg(id).ignore();
    b.pipe("cannot end a lease", &p)
}

/// Makes `id` claimable by another node at once (its idle time set far past any
/// lease), without counting a delivery; leased meanwhile to `consumer` (see
/// [`HANDED_BACK`]).
pub(super) fn release_entry(
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

/// Makes every chunk still running claimable by another node at once, and stops it
/// here.
pub(super) fn hand_back(node: &Node, url: &str) {
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
