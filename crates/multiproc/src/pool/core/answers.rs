//! What workers answer, still encoded ([`Answers`]), from the reply to the job's
//! handle: [`Core::on_done`] and [`Core::on_chunk`] check an answer against the chunk
//! it answers and file it in its job; a handle that pulls takes it
//! ([`Core::take_answers`]), one that does not gets it through its [`Sink`] once the
//! event loop has let go of its lock ([`Core::take_deliveries`]).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::jobs::Job;
use super::slot::WorkerId;
use super::{Core, Indices, chunking};
use crate::error::Error;
use crate::wire::message::Failure;
use crate::wire::values::Received;

/// Answers for some calls of one job, still encoded.
pub(crate) enum Answers {
    /// What a worker sent: the calls at `indices`, in order; those listed in
    /// `failures` (by position in `indices`) failed, the others' values lie end to end
    /// in `data`, with `fds` (numbered across the whole frame).
    Values {
        pid: u32,
        indices: Indices,
        failures: Vec<(u32, Failure)>,
        data: Received,
        fds: Vec<OwnedFd>,
        /// The machine that ran them, when not this one (failures name it).
        host: Option<Arc<str>>,
    },
    /// Calls that ended without a value from a worker.
    Failed(Vec<(usize, Error)>),
}

impl Answers {
    /// The calls answered, by index.
    pub(in crate::pool) fn indices(&self) -> Indices {
        match self {
            Answers::Values { indices, .. } => indices.clone(),
            Answers::Failed(v) => v.iter().map(|(i, _)| *i).collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Answers::Values { indices, .. } => indices.len(),
            Answers::Failed(v) => v.len(),
        }
    }
}

/// Where a job's answers go as they arrive, when its handle does not pull them (an
/// `AsyncResult`: it may be awaited, watched with others, or have callbacks, so
/// answers must reach it without anyone waiting on the pool).
///
/// The core only lists deliveries due ([`Core::take_deliveries`]); the event loop
/// hands them over after releasing its lock, since a sink decodes and may run user
/// callbacks that call into the pool again.
pub(crate) trait Sink: Send + Sync {
    /// Answers for some of the job's calls. Every call is answered (a worker's death,
    /// a broken or terminated pool answer with errors), so a sink needs no end: two
    /// threads may hand over a job's answers at once, and an "end" could overtake them.
    fn answers(&self, answers: Answers);
}

/// Answers due to one job's [`Sink`].
pub(in crate::pool) struct Delivery {
    sink: Arc<dyn Sink>,
    answers: Vec<Answers>,
}

impl Delivery {
    /// Hands the answers over: call without holding the pool's lock.
    pub(in crate::pool) fn hand_over(self) {
        for a in self.answers {
            self.sink.answers(a);
        }
    }
}

/// Some answers of a chunk, for [`Core::on_chunk`]: calls named by their position in
/// the chunk.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) enum Part {
    /// Calls at `positions`, in order; those listed in `failures` (by place in
    /// `positions`) failed, the others' values lie end to end in `data`.
    Values {
        pid: u32,
        positions: Vec<u32>,
        failures: Vec<(u32, Failure)>,
        data: Received,
    },
    /// Calls that ended without a value.
    Failed(Vec<(u32, Error)>),
}

/// Lists `job` (with a sink) among the deliveries due, once.
#[inline]
pub(super) fn note_due(due: &mut Vec<u64>, id: u64, job: &mut Job) {
    if job.sink.is_some() && !job.due {
        job.due = true;
        due.push(id);
    }
}

impl Core {
    /// Files answers for `job` (gone: thrown away), listing a delivery due if it has a
    /// sink.
    pub(super) fn deliver(&mut self, job: u64, answers: Answers) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.deliver(answers);
            note_due(&mut self.due, job, j);
        }
    }

    /// What is due to the jobs' sinks: answers filed since the last call. A job that
    /// is over leaves the table.
    pub(in crate::pool) fn take_deliveries(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        for id in std::mem::take(&mut self.due) {
            let Some(j) = self.jobs.get_mut(&id) else {
                continue;
            };
            j.due = false;
            let Some(sink) = j.sink.clone() else {
                continue;
            };
            let answers: Vec<Answers> = j.inbox.drain(..).collect();
            if j.finished() {
                self.jobs.remove(&id);
            }
            if !answers.is_empty() {
                out.push(Delivery { sink, answers });
            }
        }
        out
    }

    /// The next answers for `job`'s handle.
    pub(in crate::pool) fn take_answers(&mut self, job: u64) -> Option<Answers> {
        let a = self.jobs.get_mut(&job)?.inbox.pop_front();
        self.remove_if_finished(job);
        a
    }

    /// A worker answered calls `first .. first + values` of its chunk `seq`. An answer
    /// that does not fit what the worker holds is a protocol violation (`Err`): the
    /// event loop ends the worker, whose death then answers what it held.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_done(
        &mut self,
        id: WorkerId,
        pid: u32,
        seq: u64,
        first: u32,
        answered: u32,
        failures: Vec<(u32, Failure)>,
        nanos: u64,
        data: Received,
        fds: Vec<OwnedFd>,
    ) -> std::result::Result<(), String> {
        let slot = self.slots.get_mut(&id).ok_or("an unknown worker")?;
        let held = slot.held.front_mut().ok_or("an answer to no chunk")?;
        let (first, answered) = (first as usize, answered as usize);
        if held.seq != seq || held.answered != first || first + answered > held.indices.len() {
            return Err(format!(
                "an answer to calls {first}..{} of chunk {seq}, expected chunk {} from call {}",
                first + answered,
                held.seq,
                held.answered
            ));
        }
        let indices = held.indices.slice(first, first + answered);
        let mut shifted = Vec::with_capacity(failures.len());
        for (at, f) in failures {
            let k = (at as usize)
                .checked_sub(first)
                .filter(|&k| k < answered)
                .ok_or("a failure outside the answered calls")?;
            if shifted.last().is_some_and(|(prev, _)| *prev >= k as u32) {
                return Err("failures out of order".into());
            }
            shifted.push((k as u32, f));
        }
        held.answered += answered;
        let job_id = held.job;
        if held.answered == held.indices.len() {
            slot.held.pop_front();
        }
        slot.done += answered;
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.nanos_per_call = chunking::update_call_time(job.nanos_per_call, nanos, answered);
            self.deliver(
                job_id,
                Answers::Values {
                    pid,
                    indices,
                    failures: shifted,
                    data,
                    fds,
                    host: None,
                },
            );
            self.remove_if_finished(job_id);
        }
        Ok(())
    }

    /// Worker `id` answered every call of its chunk `seq` at once, in parts that name
    /// the calls by position (in any order: a relay may run them on several workers).
    /// `host` names the machine that ran them. Answers that do not cover the chunk
    /// exactly once are refused (`Err`), and nothing of them is filed.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn on_chunk(
        &mut self,
        id: WorkerId,
        seq: u64,
        parts: Vec<Part>,
        nanos: u64,
        host: Option<Arc<str>>,
    ) -> std::result::Result<(), String> {
        let slot = self.slots.get_mut(&id).ok_or("an unknown worker")?;
        let at = slot
            .held
            .iter()
            .position(|h| h.seq == seq)
            .ok_or("an answer to no chunk")?;
        let held = &slot.held[at];
        let len = held.indices.len();
        let mut seen = vec![false; len];
        let mut mark = |p: u32| -> std::result::Result<usize, String> {
            let p = p as usize;
            match seen.get_mut(p) {
                Some(s) if !*s => {
                    *s = true;
                    Ok(held.indices.at(p))
                }
                Some(_) => Err(format!("call {p} of chunk {seq} answered twice")),
                None => Err(format!("an answer to call {p} of a chunk of {len}")),
            }
        };
        let mut answers = Vec::with_capacity(parts.len());
        for part in parts {
            answers.push(match part {
                Part::Values {
                    pid,
                    positions,
                    failures,
                    data,
                } => {
                    if failures.iter().any(|(k, _)| *k as usize >= positions.len()) {
                        return Err("a failure outside its part".into());
                    }
                    let indices = positions
                        .into_iter()
                        .map(&mut mark)
                        .collect::<std::result::Result<Indices, _>>()?;
                    Answers::Values {
                        pid,
                        indices,
                        failures,
                        data,
                        fds: Vec::new(),
                        host: host.clone(),
                    }
                }
                Part::Failed(failed) => Answers::Failed(
                    failed
                        .into_iter()
                        .map(|(p, e)| mark(p).map(|i| (i, e)))
                        .collect::<std::result::Result<Vec<_>, _>>()?,
                ),
            });
        }
        if seen.iter().any(|s| !s) {
            return Err(format!("chunk {seq} answered only in part"));
        }
        let held = slot.held.remove(at).ok_or("an answer to no chunk")?;
        slot.done += len;
        if let Some(job) = self.jobs.get_mut(&held.job) {
            job.nanos_per_call = chunking::update_call_time(job.nanos_per_call, nanos, len);
        }
        for a in answers {
            self.deliver(held.job, a);
        }
        self.remove_if_finished(held.job);
        Ok(())
    }

    /// The job's numbers (as the caller sees them) of the calls of chunk `seq` held by
    /// worker `id`, by position in the chunk: for errors and logs of a pool whose
    /// answers name calls by position.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn chunk_indices(&self, id: WorkerId, seq: u64) -> Option<&Indices> {
        let slot = self.slots.get(&id)?;
        let held = slot.held.iter().find(|h| h.seq == seq)?;
        Some(&held.indices)
    }
}
