//! The next chunk for a worker: which job's calls, how many ([`chunking`] says), their
//! arguments encoded into one buffer within the pool's [`Limits`] ([`build`]), and what
//! is kept of them to run them again should the worker die
//! ([`keep_chunk`](super::kept::keep_chunk)).

use std::os::fd::OwnedFd;
use std::time::Instant;

use super::answers::note_due;
use super::ends::Ends;
use super::jobs::{Job, Retry};
use super::kept::{keep_chunk, keep_shared};
use super::slot::{Held, WorkerId};
use super::{Answers, Core, Indices, chunking, clone_error};
use crate::error::Error;
use crate::wire::bytes::SharedBytes;
use crate::wire::message::TaskRef;
use crate::wire::values::{Data, ValueBuf};

/// What the pool allows a chunk to carry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The largest encoded argument (and result), and the most a chunk's data holds.
    pub(crate) max_value: usize,
    /// Descriptors one message may carry (0: the transport passes none).
    pub(crate) max_fds: usize,
    /// Big data may travel in a sealed memory file.
    pub(crate) may_spill: bool,
    /// Chunks record where each argument ends ([`Chunk::ends`]): a relay that splits
    /// them without knowing their type needs it.
    pub(crate) ends: bool,
}

/// A chunk ready to send.
pub(crate) struct Chunk {
    pub(crate) seq: u64,
    pub(crate) entry: TaskRef,
    pub(crate) calls: u32,
    pub(crate) data: Data,
    /// With [`Core::set_requeue`], inline data is here instead of in `data` (left
    /// empty): shared with the core, which keeps it until the chunk is answered (and,
    /// for plain arguments, with the job's own vector of them: no copy at all).
    pub(in crate::pool) shared: Option<SharedBytes>,
    pub(in crate::pool) fds: Vec<OwnedFd>,
    /// Where each call's argument ends in `data`, if [`Limits::ends`] asked.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) ends: Ends,
}

/// A chunk being built.
struct Built {
    indices: Indices,
    data: Data,
    /// Arguments shared as they lie in the job's memory, instead of `data`.
    shared: Option<SharedBytes>,
    fds: Vec<OwnedFd>,
    failed: Vec<(usize, Error)>,
    attempts: u32,
    handbacks: u32,
    /// Where each argument ends in `data` (recorded when the chunk is kept, or when
    /// [`Limits::ends`] asks).
    ends: Ends,
}

impl Built {
    fn retry(r: Retry) -> Built {
        Built {
            ends: Ends::one(r.bytes.len()),
            indices: Indices::run(r.index..r.index + 1),
            data: Data::Inline(r.bytes),
            shared: None,
            fds: r.fds,
            failed: Vec::new(),
            attempts: r.attempts,
            handbacks: r.handbacks,
        }
    }
}

/// Takes up to `n` of `job`'s pending arguments as bytes shared with the job's own
/// memory (plain data, see [`Source::share_run`](super::jobs::Source::share_run)), if
/// the first source can: no copy, no buffer of the chunk's own.
fn take_shared(job: &mut Job, n: usize, limits: &Limits, keep: bool) -> Option<Built> {
    // A submission all sent makes way for the next (as `build` does when it finds it
    // empty), so that the next one's plain arguments are shared too.
    while job.sources.front().is_some_and(|(_, s)| s.len() == 0) {
        job.sources.pop_front();
    }
    let (first, source) = job.sources.front_mut()?;
    // Inline, as a chunk of this size would travel (bigger data goes in a memory
    // file), within the frame limit.
    let budget = chunking::CHUNK_BYTES
        .min(crate::wire::values::SPILL_AT)
        .min(limits.max_value);
    let (bytes, took) = source.share_run(n, budget)?;
    let start = *first;
    *first += took;
    let mut ends = Ends::default();
    if keep || limits.ends {
        ends.push_run(took, bytes.len() / took);
    }
    Some(Built {
        indices: Indices::run(start..start + took),
        data: Data::Inline(Vec::new()),
        shared: Some(bytes),
        fds: Vec::new(),
        failed: Vec::new(),
        attempts: 0,
        handbacks: source.handbacks(),
        ends,
    })
}

/// Encodes up to `n` of `job`'s pending arguments into one chunk, within `limits`.
fn build(job: &mut Job, n: usize, limits: &Limits, keep: bool) -> Built {
    let mut buf = ValueBuf::new(limits.max_value, limits.may_spill);
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut indices = Indices::new();
    let mut ends = Ends::default();
    let mut failed = Vec::new();
    let mut handbacks = 0;
    // One capture for the whole chunk: the descriptors of every argument are numbered
    // across the frame, and the hot path of tiny calls pays no per-value set-up.
    crate::wire::fds::capture_into(&mut fds, || {
        while indices.len() < n {
            let Some((first, source)) = job.sources.front_mut() else {
                break;
            };
            let start = *first;
            let source_handbacks = source.handbacks();
            let ends_if_kept = (keep || limits.ends).then_some(&mut ends);
            let took = source.encode_run(
                n - indices.len(),
                &mut buf,
                chunking::CHUNK_BYTES,
                ends_if_kept,
            );
            if took > 0 {
                handbacks = handbacks.max(source_handbacks);
                indices.push_run(start..start + took);
                *first += took;
                if buf.len() >= chunking::CHUNK_BYTES {
                    break;
                }
                continue;
            }
            // The first argument needs a closer look: it holds handles, fails to
            // encode, is over a limit, or there is none.
            let index = *first;
            let (mark, fd_mark) = (buf.len(), crate::wire::fds::captured_len());
            let result = match source.encode_first(index, &mut buf) {
                None => {
                    job.sources.pop_front();
                    continue;
                }
                Some(r) => r,
            };
            handbacks = handbacks.max(source_handbacks);
            let fd_count = crate::wire::fds::captured_len();
            let too_many_fds = fd_count > limits.max_fds;
            let error = match result {
                Ok(()) if !too_many_fds => None,
                Ok(()) => Some(Error::Encode {
                    type_name: "task argument".into(),
                    reason: match limits.max_fds {
                        0 => "it holds OS handles (a Pipe, a Queue, shared memory...), which cannot cross to this pool's workers".into(),
                        max => format!(
                            "it holds {} OS handles, more than one message can carry ({max})",
                            fd_count - fd_mark
                        ),
                    },
                }),
                Err(e) => Some(e),
            };
            match error {
                None => {
                    source.pop();
                    *first += 1;
                    indices.push(index);
                    if keep || limits.ends {
                        ends.push(buf.len());
                    }
                    if buf.len() >= chunking::CHUNK_BYTES {
                        break;
                    }
                }
                Some(e) => {
                    buf.truncate(mark);
                    crate::wire::fds::truncate_captured(fd_mark);
                    // Over a limit beside the calls before it: it goes first in the
                    // next chunk, where it is tried alone.
                    let shared_limit = matches!(e, Error::FrameTooLarge { .. }) || too_many_fds;
                    if shared_limit && !indices.is_empty() {
                        break;
                    }
                    source.pop();
                    *first += 1;
                    failed.push((index, e));
                }
            }
        }
    });
    let data = match buf.finish() {
        Ok(d) => d,
        Err(e) => {
            failed.extend(std::mem::take(&mut indices).into_iter().map(|i| (i, clone_error(&e))));
            Data::Inline(Vec::new())
        }
    };
    Built {
        indices,
        data,
        shared: None,
        fds,
        failed,
        attempts: 0,
        handbacks,
        ends,
    }
}

impl Core {
    /// The next chunk for worker `id`, if it should get one now. Calls whose argument
    /// cannot be sent (it does not encode, is over the frame limit, carries too many
    /// descriptors) are answered with that error here, for that call only.
    pub(crate) fn next_chunk(
        &mut self,
        id: WorkerId,
        limits: &Limits,
        now: Instant,
    ) -> Option<Chunk> {
        let timeout = self.cfg.task_timeout;
        let slot = self.slots.get(&id)?;
        // A retried call runs alone: its worker holds nothing else, before or after.
        if !slot.state.takes_work() || slot.held.has_retry() {
            return None;
        }
        // A chunk sent before its job's call time was known (a probe) is estimated
        // with the call time known now, if any: a worker holding a probe of tiny calls
        // answered elsewhere takes its share, not nothing while another takes it all.
        let jobs = &self.jobs;
        let held_nanos = slot.held.nanos(|h| {
            let ns = jobs.get(&h.job)?.nanos_per_call?;
            Some(ns * h.indices.len() as f64)
        });
        let quota = self
            .cfg
            .max_tasks_per_child
            .map(|max| max.saturating_sub(slot.given));
        if quota == Some(0) {
            return None;
        }
        let workers = self.cfg.workers;
        let keep = self.requeue || self.cfg.retries > 0;
        let share = self.requeue;
        let (job_id, job) = self.jobs.iter_mut().find(|(_, j)| j.pending() > 0)?;
        let job_id = *job_id;
        let plenty = job.pending() > chunking::PLENTY_PER_WORKER * workers.max(1);
        let pipelined = self.cfg.pipeline || slot.held.is_empty();
        if !pipelined
            || !chunking::wants_more(slot.held.len(), held_nanos, timeout.is_some(), plenty)
        {
            return None;
        }
        let idle = slot.held.is_empty();
        let mut built = if !job.retries.is_empty() {
            if !idle {
                return None;
            }
            Built::retry(job.retries.pop_front()?)
        } else {
            let n = chunking::chunk_len(
                job.chunk,
                timeout.is_some(),
                job.pending(),
                workers,
                job.nanos_per_call,
                self.cfg.chunk_time,
            );
            let n = quota.map_or(n, |q| n.min(q));
            let shared = if share {
                take_shared(job, n, limits, keep)
            } else {
                None
            };
            shared.unwrap_or_else(|| build(job, n, limits, keep))
        };
        if !built.failed.is_empty() {
            job.deliver(Answers::Failed(built.failed));
            note_due(&mut self.due, job_id, job);
        }
        let entry = job.entry;
        let nanos = job.nanos_per_call.map(|ns| ns * built.indices.len() as f64);
        if built.indices.is_empty() {
            self.remove_if_finished(job_id);
            return None;
        }
        let (data, shared, kept) = if let Some(bytes) = built.shared.take() {
            let ends = if limits.ends {
                built.ends.clone()
            } else {
                std::mem::take(&mut built.ends)
            };
            let kept = keep.then(|| keep_shared(bytes.clone(), ends));
            (built.data, Some(bytes), kept)
        } else if keep {
            let ends = if limits.ends {
                built.ends.clone()
            } else {
                std::mem::take(&mut built.ends)
            };
            keep_chunk(built.data, ends, &built.fds, share)
        } else {
            (built.data, None, None)
        };
        let slot = self.slots.get_mut(&id)?;
        let seq = slot.next_seq;
        slot.next_seq += 1;
        slot.given += built.indices.len();
        let calls = built.indices.len() as u32;
        slot.held.push_back(Held {
            seq,
            job: job_id,
            deadline: timeout.map(|t| now + t * calls),
            indices: built.indices,
            answered: 0,
            nanos,
            kept,
            attempts: built.attempts,
            handbacks: built.handbacks,
        });
        Some(Chunk {
            seq,
            entry,
            calls,
            data,
            shared,
            fds: built.fds,
            ends: if limits.ends { built.ends } else { Ends::default() },
        })
    }
}
