//! A worker as the core sees it: the chunks it holds ([`Held`]) and where it is in its
//! life ([`SlotState`]), with the core's calls that move it from state to state.

use std::collections::VecDeque;
use std::time::Instant;

use super::kept::Kept;
use super::{Core, Indices};

/// A worker's identity in the core (the event loop maps it to a process, a rank...).
pub(crate) type WorkerId = u64;

/// One worker as the core sees it: the chunks it holds, and where it is in its life.
pub(super) struct Slot {
    pub(super) held: HeldChunks,
    pub(super) next_seq: u64,
    /// Calls answered, for `max_tasks_per_child`.
    pub(super) done: usize,
    /// Calls handed out, for `max_tasks_per_child`.
    pub(super) given: usize,
    pub(super) state: SlotState,
}

impl Slot {
    fn new(state: SlotState) -> Self {
        Slot {
            held: HeldChunks::default(),
            next_seq: 0,
            done: 0,
            given: 0,
            state,
        }
    }
}

/// The chunks a worker holds, oldest first (read them as a `VecDeque`), with what
/// dispatch asks of them before every chunk it sends kept up to date: their estimated
/// run time and whether one is a retry. A worker may hold 128 one-call chunks, and
/// scanning them all for each chunk sent cost more than the rest of sending it.
#[derive(Default)]
pub(super) struct HeldChunks {
    chunks: VecDeque<Held>,
    /// The sum of `nanos` over the chunks whose estimate is known.
    known_nanos: f64,
    /// Chunks sent before their job's call time was known (`nanos: None`).
    unknown: usize,
    /// Chunks that run a retried call (`attempts > 0`).
    retries: usize,
}

impl HeldChunks {
    pub(super) fn push_back(&mut self, h: Held) {
        self.count(&h, true);
        self.chunks.push_back(h);
    }

    pub(super) fn pop_front(&mut self) -> Option<Held> {
        let h = self.chunks.pop_front()?;
        self.count(&h, false);
        Some(h)
    }

    pub(super) fn remove(&mut self, at: usize) -> Option<Held> {
        let h = self.chunks.remove(at)?;
        self.count(&h, false);
        Some(h)
    }

    /// The oldest chunk, to count its answers: callers change only `answered` (the
    /// estimate and the attempts are counted here as they were when it was sent).
    pub(super) fn front_mut(&mut self) -> Option<&mut Held> {
        self.chunks.front_mut()
    }

    /// The chunks, taken (a dead worker's).
    pub(super) fn into_chunks(self) -> VecDeque<Held> {
        self.chunks
    }

    /// Whether one of the chunks runs a retried call.
    pub(super) fn has_retry(&self) -> bool {
        self.retries > 0
    }

    /// The estimated run time of every chunk held; a chunk sent before its call time
    /// was known counts with `now_known` (the call time known now), `None` if that does
    /// not tell either.
    pub(super) fn nanos(&self, now_known: impl Fn(&Held) -> Option<f64>) -> Option<f64> {
        if self.unknown == 0 {
            return Some(self.known_nanos.max(0.0));
        }
        self.chunks
            .iter()
            .try_fold(0.0, |sum, h| h.nanos.or_else(|| now_known(h)).map(|n| sum + n))
    }

    fn count(&mut self, h: &Held, added: bool) {
        let step = |n: &mut usize| {
            if added {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        };
        match h.nanos {
            Some(ns) if added => self.known_nanos += ns,
            Some(ns) => self.known_nanos -= ns,
            None => step(&mut self.unknown),
        }
        if h.attempts > 0 {
            step(&mut self.retries);
        }
        if self.chunks.is_empty() && !added {
            // Nothing held: no rounding left over from many additions and removals.
            self.known_nanos = 0.0;
        }
    }
}

impl std::ops::Deref for HeldChunks {
    type Target = VecDeque<Held>;
    fn deref(&self) -> &VecDeque<Held> {
        &self.chunks
    }
}

/// A chunk a worker holds.
pub(super) struct Held {
    pub(super) seq: u64,
    pub(super) job: u64,
    pub(super) indices: Indices,
    /// Calls of it answered so far (answers come in order).
    pub(super) answered: usize,
    pub(super) deadline: Option<Instant>,
    /// Estimated run time, for pipelining (`None`: call time unknown).
    pub(super) nanos: Option<f64>,
    /// To run its calls again (retries, hand-backs): its arguments.
    pub(super) kept: Option<Kept>,
    /// Attempts so far of a retried call (0 for a first run).
    pub(super) attempts: u32,
    /// See [`HandedBack::handbacks`](super::jobs::HandedBack::handbacks).
    pub(super) handbacks: u32,
}

/// Where a worker is in its life. Only a [`Working`](SlotState::Working) worker is
/// given chunks.
///
/// ```text
/// Initializing --initialized--> Working --retire--> Retiring
///      |                          |
///      +--------------------------+--cancel / expired / on_aborting--> Doomed(Doom)
/// ```
///
/// A doomed worker stays doomed until its death removes the slot; a later doom
/// replaces an earlier one only if it says more of the death: `TimedOut` over
/// `Aborting` over `Cancelled`.
pub(crate) enum SlotState {
    /// Running the pool's initializer: takes no work until [`Core::initialized`].
    Initializing,
    /// Takes work.
    Working,
    /// Reached `max_tasks_per_child` with nothing held: takes no more work and exits.
    Retiring,
    /// Being ended, by the pool or by itself: takes no more work, and its [`Doom`]
    /// says how its death answers the call it was running.
    Doomed(Doom),
}

/// Why a worker is being ended, which is how its death reads.
pub(crate) enum Doom {
    /// A cancel stopped the only job it held: its calls' answers are unwanted, so its
    /// death costs nothing.
    Cancelled,
    /// Its chunk passed its deadline: the running call answers [`Error::Timeout`](crate::Error::Timeout).
    TimedOut,
    /// Its panic hook reported a panic under `panic = "abort"`: the call it names
    /// answers that panic.
    Aborting(Abort),
}

impl SlotState {
    #[inline]
    pub(super) fn takes_work(&self) -> bool {
        matches!(self, SlotState::Working)
    }

    #[inline]
    pub(super) fn timed_out(&self) -> bool {
        matches!(self, SlotState::Doomed(Doom::TimedOut))
    }

    /// What the panic hook reported, if the worker is dying of a `panic = "abort"`.
    #[inline]
    pub(super) fn abort(&self) -> Option<&Abort> {
        match self {
            SlotState::Doomed(Doom::Aborting(a)) => Some(a),
            _ => None,
        }
    }

    /// Initializing -> Working: the initializer succeeded.
    fn initialized(&mut self) {
        debug_assert!(matches!(self, SlotState::Initializing), "initialized twice");
        if matches!(self, SlotState::Initializing) {
            *self = SlotState::Working;
        }
    }

    /// Working -> Retiring. A doomed worker (killed, and it answered its last call
    /// before the kill landed) stays doomed: it is going already.
    fn retire(&mut self) {
        debug_assert!(
            matches!(self, SlotState::Working | SlotState::Doomed(_)),
            "only a working worker retires"
        );
        if matches!(self, SlotState::Working) {
            *self = SlotState::Retiring;
        }
    }

    /// -> Doomed(Cancelled), unless doomed already (its doom says more). Only a
    /// worker holding chunks is cancelled, and neither an initializing nor a retiring
    /// one holds any.
    pub(super) fn cancel(&mut self) {
        debug_assert!(
            matches!(self, SlotState::Working | SlotState::Doomed(_)),
            "a worker holding chunks works"
        );
        if matches!(self, SlotState::Working) {
            *self = SlotState::Doomed(Doom::Cancelled);
        }
    }

    /// -> Doomed(TimedOut): the timeout wins over any other doom.
    fn expire(&mut self) {
        debug_assert!(
            matches!(self, SlotState::Working | SlotState::Doomed(_)) && !self.timed_out(),
            "a worker holding chunks works, and times out once"
        );
        *self = SlotState::Doomed(Doom::TimedOut);
    }

    /// -> Doomed(Aborting), unless it timed out (the timeout is what its death
    /// answers). An initializer may panic too, so an initializing worker may abort.
    fn aborting(&mut self, abort: Abort) {
        debug_assert!(
            !matches!(self, SlotState::Retiring),
            "a retiring worker runs no call"
        );
        if !self.timed_out() {
            *self = SlotState::Doomed(Doom::Aborting(abort));
        }
    }
}

/// What a worker's panic hook reported before a `panic = "abort"` death: which call of
/// which chunk, and the panic.
pub(crate) struct Abort {
    pub(in crate::pool) seq: u64,
    pub(in crate::pool) index: u32,
    pub(in crate::pool) message: String,
    pub(in crate::pool) location: Option<String>,
    pub(in crate::pool) backtrace: Option<String>,
}

impl Core {
    /// A new worker, `Initializing` (it runs the pool's initializer first) or
    /// `Working`.
    pub(crate) fn add_worker(&mut self, id: WorkerId, start: SlotState) {
        debug_assert!(
            matches!(start, SlotState::Initializing | SlotState::Working),
            "a worker starts initializing or working"
        );
        self.slots.insert(id, Slot::new(start));
    }

    /// Worker `id`'s initializer succeeded: it takes work.
    pub(in crate::pool) fn initialized(&mut self, id: WorkerId) {
        if let Some(s) = self.slots.get_mut(&id) {
            s.state.initialized();
        }
    }

    /// Worker `id` is retiring ([`Core::spent`]): it gets no more work.
    pub(in crate::pool) fn retire(&mut self, id: WorkerId) {
        if let Some(s) = self.slots.get_mut(&id) {
            s.state.retire();
        }
    }

    /// Whether `id` reached `max_tasks_per_child` and holds nothing: time to retire it.
    pub(in crate::pool) fn spent(&self, id: WorkerId) -> bool {
        let Some(max) = self.cfg.max_tasks_per_child else {
            return false;
        };
        self.slots
            .get(&id)
            .is_some_and(|s| s.done >= max && s.held.is_empty())
    }

    /// The panic hook of worker `id` reported a panic under `panic = "abort"`.
    pub(in crate::pool) fn on_aborting(&mut self, id: WorkerId, abort: Abort) {
        if let Some(s) = self.slots.get_mut(&id) {
            s.state.aborting(abort);
        }
    }

    /// The nearest deadline of any chunk held.
    pub(in crate::pool) fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| !s.state.timed_out())
            .filter_map(|s| s.held.front().and_then(|h| h.deadline))
            .min()
    }

    /// Workers whose chunk is past its deadline, marked so that their death answers
    /// `Error::Timeout`; the event loop kills them.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<WorkerId> {
        let mut out = Vec::new();
        for (id, s) in &mut self.slots {
            if !s.state.timed_out()
                && s.held
                    .front()
                    .and_then(|h| h.deadline)
                    .is_some_and(|d| d <= now)
            {
                s.state.expire();
                out.push(*id);
            }
        }
        out
    }

    /// What `id` has answered, and whether it holds work now: for `Pool::workers`.
    pub(in crate::pool) fn worker_state(&self, id: WorkerId) -> Option<(usize, bool)> {
        self.slots.get(&id).map(|s| (s.done, !s.held.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seq: u64, nanos: Option<f64>, attempts: u32) -> Held {
        Held {
            seq,
            job: 1,
            indices: Indices::run(0..2),
            answered: 0,
            deadline: None,
            nanos,
            kept: None,
            attempts,
            handbacks: 0,
        }
    }

    #[test]
    fn held_chunks_keep_their_estimate_and_retries_counted() {
        let mut held = HeldChunks::default();
        assert_eq!(held.nanos(|_| None), Some(0.0));
        held.push_back(chunk(0, Some(1_000.0), 0));
        held.push_back(chunk(1, Some(2_500.0), 0));
        assert_eq!(held.nanos(|_| None), Some(3_500.0));
        assert!(!held.has_retry());
        // A probe (call time unknown when sent) counts with what is known now.
        held.push_back(chunk(2, None, 0));
        assert_eq!(held.nanos(|_| None), None);
        assert_eq!(held.nanos(|h| Some(h.indices.len() as f64 * 100.0)), Some(3_700.0));
        held.push_back(chunk(3, Some(500.0), 1));
        assert!(held.has_retry());
        assert_eq!(held.remove(2).map(|h| h.seq), Some(2));
        assert_eq!(held.nanos(|_| None), Some(4_000.0));
        assert_eq!(held.pop_front().map(|h| h.seq), Some(0));
        assert_eq!(held.len(), 2);
        held.front_mut().unwrap().answered = 1;
        assert_eq!(held.remove(1).map(|h| h.seq), Some(3));
        assert!(!held.has_retry());
        assert_eq!(held.nanos(|_| None), Some(2_500.0));
        assert_eq!(held.pop_front().map(|h| (h.seq, h.answered)), Some((1, 1)));
        assert!(held.pop_front().is_none() && held.is_empty());
        assert_eq!(held.nanos(|_| None), Some(0.0));
        held.push_back(chunk(4, None, 2));
        assert_eq!(held.into_chunks().len(), 1);
    }
}
