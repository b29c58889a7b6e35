//! Gathers one chunk's answers from the local pool and sends the chunk's reply (a
//! [`Done`]) to the answerer once every call is answered.

use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Instant;

use serde_bytes::ByteBuf;

use crate::cluster::message::{AnswerMsg, NodeFailure, WirePart};
use crate::pool::backend::Control;
use crate::pool::core::{Answers, Sink};

/// A finished chunk, for the answerer.
pub(super) struct Done {
    pub(super) caller: String,
    pub(super) id: String,
    pub(super) answer: AnswerMsg,
}

/// Stands in for a chunk's control until its local job exists.
pub(super) struct NoControl;

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
pub(super) struct Collector {
    /// The node's slots: at most this many of the chunk's calls ran at once.
    slots: usize,
    started: Instant,
    tx: Mutex<mpsc::Sender<Done>>,
    st: Mutex<Collected>,
}

impl Collector {
    /// Gathers the answers of `calls` calls, to send `reply` with them on `tx`, for a
    /// node of `slots` slots.
    pub(super) fn new(slots: usize, tx: mpsc::Sender<Done>, calls: usize, reply: Done) -> Self {
        Collector {
            slots,
            started: Instant::now(),
            tx: Mutex::new(tx),
            st: Mutex::new(Collected {
                answered: vec![false; calls],
                left: calls,
                parts: Vec::new(),
                reply: Some(reply),
            }),
        }
    }

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
        let calls = st.answered.len().clamp(1, self.slots.max(1));
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
    pub(super) fn fail_rest(&self, failure: &NodeFailure) {
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
