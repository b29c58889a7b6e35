//! What a worker's death costs (see the [core's docs](super)): the call it was
//! running answers the death or is retried, every other call it held goes back to
//! the queue, at most [`MAX_HANDBACKS`] times; without a call slot
//! ([`LastStart::Unknown`]), every call it held answers the death.

use std::collections::VecDeque;

use super::jobs::{Encoded, HandedBack, Retry};
use super::slot::{Held, Slot, WorkerId};
use super::{Answers, Core, clone_error};
use crate::error::Error;

/// Deaths with no call running after which a call they handed back is no longer handed
/// out but answered ([`Error::LostWithWorker`]): a chunk that kills every worker before
/// its first call starts (or between calls) must not be handed out forever.
pub(super) const MAX_HANDBACKS: u32 = 3;

/// What a dead worker had started last, as its call slot said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LastStart {
    /// The worker has no call slot (MPI ranks): which call was running is unknown, and
    /// every call it held answers its death.
    Unknown,
    /// It started no call.
    Nothing,
    /// Call `pos` of the chunk whose number's low 32 bits are `seq` (see
    /// `task::call_word`). It may have finished since (the worker died between two
    /// calls): if its answer arrived, nothing was running; if not, it is taken for the
    /// running call, the closest one to the death.
    Call { seq: u32, pos: u32 },
}

impl LastStart {
    /// The state a call slot's word describes.
    pub(in crate::pool) fn of_word(word: u64) -> LastStart {
        if word == crate::task::NO_CALL {
            LastStart::Nothing
        } else {
            LastStart::Call {
                seq: (word >> 32) as u32,
                pos: word as u32,
            }
        }
    }
}

/// What a worker's death cost: the calls it held unanswered answered with an error
/// (`lost`), retried (the running call, as `retries` allows) and handed back to the
/// queue (the others).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cost {
    pub(in crate::pool) lost: usize,
    pub(in crate::pool) retried: usize,
    pub(in crate::pool) handed_back: usize,
}

/// What calls lost with a worker say of its death ([`Error::LostWithWorker`]).
struct Lost<'a> {
    pid: u32,
    cause: &'a Error,
    running: Option<usize>,
}

impl Core {
    /// Worker `id` is gone. `death` is how it ended; `last` what its call slot says it
    /// started last. The call it was running answers the death (or is retried, as
    /// `retries` allows); every other call it held goes back to the queue (see the
    /// core's docs). Returns what it cost.
    pub(crate) fn on_death(
        &mut self,
        id: WorkerId,
        pid: u32,
        death: Error,
        last: LastStart,
    ) -> Cost {
        let Some(slot) = self.slots.remove(&id) else {
            return Cost::default();
        };
        // Under `panic = "abort"` the panic hook said which call it was, slot or not.
        let last = match (last, slot.state.abort()) {
            (LastStart::Unknown, Some(a)) => LastStart::Call {
                seq: a.seq as u32,
                pos: a.index,
            },
            (last, _) => last,
        };
        let running = match last {
            LastStart::Unknown => return self.fail_unknown(slot, pid, death),
            LastStart::Nothing => None,
            // Started and not answered (an answered call had finished: the worker died
            // after it, between calls).
            LastStart::Call { seq, pos } => {
                let pos = pos as usize;
                slot.held
                    .iter()
                    .position(|h| h.seq as u32 == seq)
                    .filter(|&k| pos < slot.held[k].indices.len() && pos >= slot.held[k].answered)
                    .map(|k| (k, pos))
            }
        };
        let running_index = running.map(|(k, pos)| slot.held[k].indices.at(pos));
        let cause = match slot.state.abort() {
            _ if slot.state.timed_out() => Error::Timeout {
                what: format!("a call of a pool job on worker {pid}"),
                timeout: self.cfg.task_timeout.unwrap_or_default(),
            },
            Some(a) => Error::Panicked {
                pid,
                message: a.message.clone(),
                location: a.location.clone(),
                backtrace: a.backtrace.clone(),
            },
            None => death,
        };
        let mut cost = Cost::default();
        // Last chunk first: each pushes what it hands back to the front of the queue,
        // so the calls end up there in the order they had.
        for (k, held) in slot.held.into_chunks().into_iter().enumerate().rev() {
            if !self.jobs.contains_key(&held.job) {
                continue; // cancelled: nobody wants its answers
            }
            let mut failed = Vec::new();
            let mut back = Vec::new();
            for p in held.answered..held.indices.len() {
                let index = held.indices.at(p);
                match running {
                    Some(r) if r == (k, p) => {}
                    // Calls before the running one had run; their answers died with it.
                    _ => {
                        back.push((p, running.is_some_and(|r| (k, p) < r)));
                        continue;
                    }
                }
                let error = if slot.state.timed_out() {
                    Error::Timeout {
                        what: format!("call {index} of a pool job on worker {pid}"),
                        timeout: self.cfg.task_timeout.unwrap_or_default(),
                    }
                } else if slot
                    .state
                    .abort()
                    .is_some_and(|a| a.seq == held.seq && a.index as usize == p)
                {
                    clone_error(&cause)
                } else if let Some(retry) = self.retry_of(&held, p) {
                    if let Some(job) = self.jobs.get_mut(&held.job) {
                        job.retries.push_back(retry);
                    }
                    cost.retried += 1;
                    continue;
                } else {
                    clone_error(&cause)
                };
                failed.push((index, error));
            }
            let lost = Lost {
                pid,
                cause: &cause,
                running: running_index,
            };
            self.hand_back(&held, back, &lost, &mut failed, &mut cost);
            cost.lost += failed.len();
            self.deliver(held.job, Answers::Failed(failed));
            self.remove_if_finished(held.job);
        }
        cost
    }

    /// The retry of call `p` of `held`, if the pool allows one more and its argument
    /// was kept.
    fn retry_of(&self, held: &Held, p: usize) -> Option<Retry> {
        if held.attempts >= self.cfg.retries {
            return None;
        }
        let kept = held.kept.as_ref()?;
        Some(Retry {
            index: held.indices.at(p),
            bytes: kept.arguments(&[p])?.pop()?,
            fds: kept.fds(),
            attempts: held.attempts + 1,
            handbacks: held.handbacks,
        })
    }

    /// Puts the calls of `held` at positions `back` (with whether each had run) back
    /// at the front of their job's queue. A call that cannot go back (its arguments
    /// were not kept, or deaths with no call running handed it back too often) is
    /// answered [`Error::LostWithWorker`] in `failed`.
    fn hand_back(
        &mut self,
        held: &Held,
        back: Vec<(usize, bool)>,
        lost: &Lost<'_>,
        failed: &mut Vec<(usize, Error)>,
        cost: &mut Cost,
    ) {
        if back.is_empty() {
            return;
        }
        let handbacks = held.handbacks + u32::from(lost.running.is_none());
        let positions: Vec<usize> = back.iter().map(|(p, _)| *p).collect();
        let kept = held.kept.as_ref().filter(|_| handbacks <= MAX_HANDBACKS);
        let args = kept.and_then(|k| Some((k, k.arguments(&positions)?)));
        let (Some((kept, args)), Some(job)) = (args, self.jobs.get_mut(&held.job)) else {
            failed.extend(back.into_iter().map(|(p, started)| {
                let e = Error::LostWithWorker {
                    pid: lost.pid,
                    cause: Box::new(clone_error(lost.cause)),
                    running: lost.running,
                    started,
                };
                (held.indices.at(p), e)
            }));
            return;
        };
        cost.handed_back += back.len();
        if held.attempts > 0 || !kept.fds.is_empty() {
            // Their encodings number the chunk's descriptors: each goes alone, with
            // all of them (as a retry does).
            for (bytes, &p) in args.into_iter().zip(&positions).rev() {
                job.retries.push_front(Retry {
                    index: held.indices.at(p),
                    bytes,
                    fds: kept.fds(),
                    attempts: held.attempts,
                    handbacks,
                });
            }
            return;
        }
        // Runs of consecutive calls, each a source of its own, first run first.
        let mut runs: Vec<(usize, VecDeque<Vec<u8>>)> = Vec::new();
        for (bytes, &p) in args.into_iter().zip(&positions) {
            let index = held.indices.at(p);
            match runs.last_mut() {
                Some((first, run)) if *first + run.len() == index => run.push_back(bytes),
                _ => runs.push((index, VecDeque::from([bytes]))),
            }
        }
        for (first, run) in runs.into_iter().rev() {
            let source = HandedBack {
                args: Encoded(run),
                handbacks,
            };
            job.sources.push_front((first, Box::new(source)));
        }
    }

    /// A death on a transport without call slots: every call the worker held and had
    /// not answered answers it (or is retried, as `retries` allows).
    fn fail_unknown(&mut self, slot: Slot, pid: u32, death: Error) -> Cost {
        let mut cost = Cost::default();
        for held in slot.held.into_chunks() {
            if !self.jobs.contains_key(&held.job) {
                continue; // cancelled: nobody wants its answers
            }
            let mut failed = Vec::new();
            for p in held.answered..held.indices.len() {
                let index = held.indices.at(p);
                let error = if slot.state.timed_out() {
                    Error::Timeout {
                        what: format!("call {index} of a pool job on worker {pid}"),
                        timeout: self.cfg.task_timeout.unwrap_or_default(),
                    }
                } else if let Some(retry) = self.retry_of(&held, p) {
                    if let Some(job) = self.jobs.get_mut(&held.job) {
                        job.retries.push_back(retry);
                        cost.retried += 1;
                    }
                    continue;
                } else {
                    clone_error(&death)
                };
                failed.push((index, error));
            }
            cost.lost += failed.len();
            self.deliver(held.job, Answers::Failed(failed));
            self.remove_if_finished(held.job);
        }
        cost
    }

    /// Answers every call worker `id` holds and has not answered with `error`, and
    /// forgets the worker.
    pub(super) fn fail_held(&mut self, id: WorkerId, error: &Error) {
        let Some(slot) = self.slots.remove(&id) else {
            return;
        };
        for held in slot.held.into_chunks() {
            let failed = held
                .indices
                .slice(held.answered, held.indices.len())
                .into_iter()
                .map(|i| (i, clone_error(error)))
                .collect();
            self.deliver(held.job, Answers::Failed(failed));
            self.remove_if_finished(held.job);
        }
    }

    /// The pool stops at once: every call not yet answered answers
    /// [`Error::PoolTerminated`], whatever held it.
    pub(crate) fn terminate(&mut self) {
        self.stop(Error::PoolTerminated);
    }

    /// The pool stops at once: every call not yet answered, and every call to come,
    /// answers `error`, whatever held it.
    pub(crate) fn stop(&mut self, error: Error) {
        let ids: Vec<WorkerId> = self.slots.keys().copied().collect();
        for id in ids {
            self.fail_held(id, &error);
        }
        self.break_pool(error);
    }
}
