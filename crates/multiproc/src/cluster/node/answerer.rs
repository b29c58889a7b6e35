//! The answerer thread: sends each finished chunk's answers and ends its lease.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use crate::cluster::broker::{Broker, GROUP};
use crate::cluster::message::NodeMsg;

use super::collector::Done;
use super::state::{Node, connect};

/// Sends each finished chunk's answers, then ends its lease; until the node quits
/// (SIGTERM included: chunks that finish during the drain are answered).
pub(super) fn answer_loop(node: &Node, url: &str, rx: mpsc::Receiver<Done>) {
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
