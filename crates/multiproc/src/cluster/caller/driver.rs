//! The caller's driving thread: each round it renews the caller's keys, reads the
//! nodes now and then, adds chunks from the core to the calls stream, reads answers
//! from the answers stream and files them in the core; it resends what was in flight
//! after Redis failed, and gives up after `unreachable_after`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use crate::cluster::broker::{self, Broker};
use crate::cluster::message::{AnswerMsg, ChunkMsg, NodeFailure, NodeMsg, WirePart};
use crate::error::{Error, Result};
use crate::pool::core::{Core, Limits, Part, SlotState};
use crate::pool::remote::Shared;
use crate::wire::values::{Data, Received};

use super::nodes::{
    MAX_LANES, MIN_LANES, Nodes, Status, check_acceptance, nodes_period, read_nodes,
};
use super::settings::Settings;

/// How long the caller blocks on its answers stream at a time: new work waits at most
/// this long to be sent.
const READ_BLOCK: Duration = Duration::from_millis(20);

/// A chunk added to the calls stream and not answered.
struct Sent {
    /// Where the core holds it.
    lane: u64,
    seq: u64,
    /// The message, signed as sent.
    signed: Vec<u8>,
}

/// The driving thread's state between rounds.
struct Driver<'a> {
    s: Settings,
    shared: &'a Shared,
    status: &'a Mutex<Status>,
    calls: String,
    answers: String,
    lanes: usize,
    last_id: String,
    beat_at: Instant,
    nodes_at: Instant,
    /// When the caller last heard an answer, or started waiting for one.
    heard: Instant,
    /// Every chunk added and not answered, by tag: sent again after Redis failed (an
    /// add may have been lost, or a Redis without persistence restarted empty). A
    /// second copy is harmless: the first answer counts.
    in_flight: HashMap<u64, Sent>,
    next_tag: u64,
    resend: bool,
    /// What it remembers of the nodes.
    nodes: Nodes,
}

pub(super) fn drive(s: Settings, redis: Broker, shared: &Shared, status: &Mutex<Status>) {
    let mut d = Driver {
        calls: s.keys.calls(&s.caller),
        answers: s.keys.answers(&s.caller),
        s,
        shared,
        status,
        lanes: 0,
        last_id: "0-0".to_owned(),
        beat_at: Instant::now(),
        nodes_at: Instant::now() - Duration::from_secs(60),
        heard: Instant::now(),
        in_flight: HashMap::new(),
        next_tag: 0,
        resend: false,
        nodes: Nodes::default(),
    };
    d.add_lanes(MIN_LANES);
    let mut redis = Some(redis);
    let mut down_since: Option<(Instant, String)> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        shared.settle();
        let Some(b) = redis.as_mut() else {
            match Broker::connect(&d.s.url, Duration::from_secs(1)) {
                Ok(b) => {
                    tracing::info!(address = %d.s.address, "reconnected to Redis");
                    redis = Some(b);
                }
                Err(e) => {
                    if give_up(shared, &d.s, &mut down_since, &e) {
                        break;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
            continue;
        };
        match d.turn(b) {
            Ok(true) => break,
            Ok(false) => {
                // Only a whole round that worked says Redis is back.
                down_since = None;
                backoff = Duration::from_millis(50);
            }
            Err(e) => {
                tracing::warn!(address = %d.s.address, "{e}");
                redis = None;
                d.resend = true;
                if give_up(shared, &d.s, &mut down_since, &e) {
                    break;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    if let Some(b) = redis.as_mut() {
        let mut p = redis::pipe();
        for k in [
            d.s.keys.alive(&d.s.caller),
            d.calls.clone(),
            d.answers.clone(),
        ] {
            p.cmd("DEL").arg(k).ignore();
        }
        p.cmd("ZREM")
            .arg(d.s.keys.callers())
            .arg(&d.s.caller)
            .ignore();
        let _ = b.pipe::<()>("cannot remove the caller's keys", &p);
    }
    let mut st = shared.lock();
    st.life.driver_ended();
    // A pool broken by an unreachable Redis keeps answering that error.
    if !st.core.is_broken() {
        st.core.terminate();
    }
    drop(st);
    shared.changed.notify_all();
    shared.settle();
}

/// Keeps the caller's keys alive and listed.
pub(super) fn heartbeat(b: &mut Broker, s: &Settings) -> Result<()> {
    b.sync_clock();
    let ttl = s.ttl_ms();
    let now = broker::now_ms();
    let mut p = redis::pipe();
    p.cmd("SET")
        .arg(s.keys.alive(&s.caller))
        .arg(1)
        .arg("PX")
        .arg(ttl)
        .ignore();
    p.cmd("PEXPIRE")
        .arg(s.keys.calls(&s.caller))
        .arg(ttl)
        .ignore();
    p.cmd("PEXPIRE")
        .arg(s.keys.answers(&s.caller))
        .arg(ttl)
        .ignore();
    p.cmd("ZADD")
        .arg(s.keys.callers())
        .arg(now)
        .arg(&s.caller)
        .ignore();
    p.cmd("ZREMRANGEBYSCORE")
        .arg(s.keys.callers())
        .arg("-inf")
        .arg(now.saturating_sub(ttl))
        .ignore();
    p.cmd("PEXPIRE").arg(s.keys.callers()).arg(ttl).ignore();
    b.pipe("cannot renew the caller's keys", &p)
}

/// Redis failed: `true` once it has been failing for longer than allowed (the pool is
/// then broken with an error that says so).
fn give_up(
    shared: &Shared,
    s: &Settings,
    down_since: &mut Option<(Instant, String)>,
    e: &Error,
) -> bool {
    let cause = match e {
        Error::Cluster { detail, .. } => detail.clone(),
        other => other.to_string(),
    };
    let (since, _) = down_since.get_or_insert_with(|| (Instant::now(), cause.clone()));
    if since.elapsed() < s.unreachable {
        return false;
    }
    let error = Error::Cluster {
        address: s.address.clone(),
        detail: format!(
            "Redis unreachable for {:?}, the pool stopped: {cause}",
            s.unreachable
        ),
    };
    tracing::error!("{error}");
    let mut st = shared.lock();
    st.core.stop(error);
    drop(st);
    shared.changed.notify_all();
    true
}

/// The numbers of `calls` for a log line, the first few of them.
fn call_list(calls: impl IntoIterator<Item = usize>) -> String {
    const SHOWN: usize = 10;
    let mut calls = calls.into_iter();
    let mut out: Vec<String> = calls.by_ref().take(SHOWN).map(|i| i.to_string()).collect();
    let more = calls.count();
    if more > 0 {
        out.push(format!("… ({} in all)", SHOWN + more));
    }
    format!("[{}]", out.join(", "))
}

impl Driver<'_> {
    fn add_lanes(&mut self, want: usize) {
        let want = want.min(MAX_LANES);
        let mut st = self.shared.lock();
        while self.lanes < want {
            st.core.add_worker(self.lanes as u64, SlotState::Working);
            self.lanes += 1;
        }
    }

    /// Answers every call not answered with `error`, and takes the chunks sent back
    /// out of Redis: nobody waits for their answers any more (an answer that comes
    /// anyway finds no chunk of its tag).
    fn fail_waiting(&mut self, b: &mut Broker, error: Error) -> Result<()> {
        tracing::warn!(address = %self.s.address, "calls not answered give up: {error}");
        {
            let mut st = self.shared.lock();
            st.core.fail_outstanding(&error);
        }
        self.shared.changed.notify_all();
        self.in_flight.clear();
        b.run::<redis::Value>(
            "cannot take back chunks",
            redis::cmd("XTRIM").arg(&self.calls).arg("MAXLEN").arg(0),
        )
        .map(|_| ())
    }

    /// One round: heartbeat, chunks out, answers in. `Ok(true)`: the pool is done.
    fn turn(&mut self, b: &mut Broker) -> Result<bool> {
        if self.resend {
            // After a failure: the streams may be gone (a Redis restarted without
            // persistence), and adds may have been lost.
            b.ensure_group(&self.calls)?;
            b.ensure_group(&self.answers)?;
            heartbeat(b, &self.s)?;
            let mut p = redis::pipe();
            for sent in self.in_flight.values() {
                p.cmd("XADD")
                    .arg(&self.calls)
                    .arg("*")
                    .arg("m")
                    .arg(&sent.signed)
                    .ignore();
            }
            b.pipe::<()>("cannot add chunks again", &p)?;
            self.resend = false;
        }
        if self.beat_at.elapsed() >= self.s.lease / 3 {
            heartbeat(b, &self.s)?;
            self.beat_at = Instant::now();
        }
        if self.nodes_at.elapsed() >= nodes_period(&self.s) {
            let listed = read_nodes(b, &self.s)?;
            let nodes = self.nodes.track(&self.s, listed);
            let slots: usize = nodes.iter().map(|n| n.slots as usize).sum();
            self.add_lanes((2 * slots).max(MIN_LANES));
            let refused = {
                let mut st = self.shared.lock();
                st.core.set_workers(slots.clamp(1, MAX_LANES));
                check_acceptance(&self.s, &st.core, &nodes, &mut self.heard)
            };
            if let Some(error) = refused {
                self.fail_waiting(b, error)?;
            }
            let waiting = self.shared.lock().core.outstanding() > 0;
            if let Some(error) = self.nodes.check(&self.s, waiting, b, &nodes)? {
                self.fail_waiting(b, error)?;
            }
            self.status.lock().unwrap_or_else(|p| p.into_inner()).nodes = nodes;
            self.nodes_at = Instant::now();
        }
        // Chunks out.
        let mut out = Vec::new();
        {
            let mut st = self.shared.lock();
            if st.life.is_terminating() {
                st.core.terminate();
                return Ok(true);
            }
            let limits = Limits {
                max_value: crate::wire::max_frame_size(),
                max_fds: 0,
                may_spill: false,
                ends: true,
            };
            let now = Instant::now();
            let before = st.core.outstanding();
            let timeout_ms = self
                .s
                .task_timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
            for lane in 0..self.lanes as u64 {
                while let Some(chunk) = st.core.next_chunk(lane, &limits, now) {
                    let Data::Inline(data) = chunk.data else {
                        continue; // no spilling was allowed: cannot happen
                    };
                    let tag = self.next_tag;
                    self.next_tag += 1;
                    let msg = ChunkMsg {
                        tag,
                        entry: chunk.entry,
                        data: ByteBuf::from(data),
                        ends: chunk.ends.offsets().map(|e| e as u64).collect(),
                        retries: self.s.retries,
                        timeout_ms,
                    };
                    out.push((lane, chunk.seq, msg));
                }
            }
            if st.core.outstanding() != before {
                self.shared.changed.notify_all();
            }
            if st.life.is_closed() && st.core.outstanding() == 0 {
                return Ok(true);
            }
            if st.core.outstanding() == 0 {
                self.heard = Instant::now();
                if self.in_flight.is_empty() {
                    // Nothing out, no answer to wait for: sleep until work comes (a
                    // submit notifies), not in a blocking read, which Redis ends only
                    // on its own 100 ms clock.
                    let wait = (self.s.lease / 3).min(Duration::from_millis(500));
                    let _ = self
                        .shared
                        .work
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|p| p.into_inner());
                    return Ok(false);
                }
            }
        }
        let s = &self.s;
        if !out.is_empty() {
            let mut p = redis::pipe();
            for (lane, seq, msg) in &out {
                let body = postcard::to_stdvec(msg).map_err(|e| Error::Cluster {
                    address: s.address.clone(),
                    detail: format!("a chunk did not encode: {e}"),
                })?;
                let signed = s.key.sign(self.calls.as_bytes(), &body);
                p.cmd("XADD")
                    .arg(&self.calls)
                    .arg("*")
                    .arg("m")
                    .arg(&signed)
                    .ignore();
                // Kept before it is sent: if the add fails, the resend covers it.
                let sent = Sent {
                    lane: *lane,
                    seq: *seq,
                    signed,
                };
                self.in_flight.insert(msg.tag, sent);
            }
            b.pipe::<()>("cannot add chunks", &p)?;
        }
        // Answers in.
        let block = if out.is_empty() {
            READ_BLOCK
        } else {
            Duration::from_millis(1)
        };
        let entries = b.read(&self.answers, &self.last_id, 256, block)?;
        if entries.is_empty() {
            return Ok(false);
        }
        let mut filed = Vec::with_capacity(entries.len());
        for entry in &entries {
            self.last_id.clone_from(&entry.id);
            let Some(body) =
                broker::message(entry).and_then(|m| s.key.open(self.answers.as_bytes(), m))
            else {
                tracing::warn!(address = %s.address, "dropped an answer whose signature is wrong");
                continue;
            };
            match postcard::from_bytes::<NodeMsg>(body) {
                Ok(m) => filed.push(m),
                Err(e) => {
                    tracing::warn!(address = %s.address, "dropped an answer that does not decode: {e}")
                }
            }
        }
        // Filed before anything else can fail: these answers will not be read again.
        let mut st = self.shared.lock();
        for m in filed {
            let a = match m {
                NodeMsg::Answer(a) => a,
                NodeMsg::Rerun {
                    tag,
                    node,
                    run,
                    previous,
                } => {
                    if let Some(calls) = self
                        .in_flight
                        .get(&tag)
                        .and_then(|f| st.core.chunk_indices(f.lane, f.seq))
                    {
                        tracing::warn!(
                            address = %s.address, %node, run,
                            "calls {} run again on node {node} (run {run} of at most {}): {previous}",
                            call_list(calls.iter()),
                            u64::from(s.retries) + 1
                        );
                    }
                    continue;
                }
            };
            self.heard = Instant::now();
            let Some(sent) = self.in_flight.remove(&a.tag) else {
                // A second run's answer (a node was thought lost but was not), or a
                // chunk given up on meanwhile: the first answer counts.
                tracing::debug!(node = %a.node, "ignored an answer to a chunk answered or given up");
                continue;
            };
            file_answer(&mut st.core, s, sent, a);
        }
        drop(st);
        self.shared.changed.notify_all();
        // Trimming read answers is housekeeping: a failure here loses nothing.
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        if let Err(e) = b.run::<redis::Value>(
            "cannot trim answers",
            redis::cmd("XDEL").arg(&self.answers).arg(&ids),
        ) {
            tracing::debug!(address = %s.address, "{e}");
        }
        Ok(false)
    }
}

/// Files the answers of chunk `sent` in the core, naming calls in errors and logs as
/// the caller numbers them.
fn file_answer(core: &mut Core, s: &Settings, sent: Sent, a: AnswerMsg) {
    let indices = core
        .chunk_indices(sent.lane, sent.seq)
        .cloned()
        .unwrap_or_default();
    let index_of = |pos: u32| indices.get(pos as usize).unwrap_or(pos as usize);
    let mut gave_up = Vec::new();
    let mut why = None;
    let host: Arc<str> = Arc::from(a.node.as_str());
    let parts = a
        .parts
        .into_iter()
        .map(|p| match p {
            WirePart::Values {
                pid,
                positions,
                failures,
                data,
            } => Part::Values {
                pid,
                positions,
                failures,
                data: Received::Inline(data.into_vec(), 0),
            },
            WirePart::Failed(failed) => Part::Failed(
                failed
                    .into_iter()
                    .map(|(pos, f)| {
                        let index = index_of(pos);
                        if let NodeFailure::Lost { last, runs } = &f {
                            gave_up.push(index);
                            why.get_or_insert_with(|| (*runs, last.to_string()));
                        }
                        (pos, f.into_error(&a.node, index, &s.address))
                    })
                    .collect(),
            ),
        })
        .collect();
    if let Some((runs, why)) = why {
        tracing::warn!(
            address = %s.address,
            "calls {} gave up after {runs} run(s), no retry left (PoolBuilder::retries): {why}",
            call_list(gave_up.iter().copied()),
        );
    }
    if let Err(why) = core.on_chunk(sent.lane, sent.seq, parts, a.nanos, Some(host)) {
        // A chunk cancelled meanwhile: its answers go nowhere.
        tracing::debug!(node = %a.node, "ignored an answer: {why}");
    }
}
