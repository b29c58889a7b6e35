#![doc = include_str!("README.md")]

use std::cell::RefCell;
use std::time::Instant;

use super::event_loop::shut_down;
use super::shared::Shared;
use super::state::{Life, State};
use crate::pool::core::Answers;

thread_local! {
    /// The pools this thread leads now (by address). A callback run while handing
    /// answers over may call into the same pool (`map`, `get`): it must go on leading,
    /// not wait for a leader that is itself.
    static LEADING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

impl Shared {
    fn key(&self) -> usize {
        self as *const Shared as usize
    }

    /// Whether this thread leads the pool now (further up its stack).
    fn led_here(&self) -> bool {
        let key = self.key();
        LEADING.with(|l| l.borrow().contains(&key))
    }

    /// Takes the free lead: `Free -> Held`, noted for this thread.
    fn take_lead<'a>(&'a self, st: &mut State) -> LeadGuard<'a> {
        st.lead.take();
        let key = self.key();
        LEADING.with(|l| l.borrow_mut().push(key));
        LeadGuard(self)
    }

    /// Gives up the lead taken by [`Shared::take_lead`] (the caller then hands it off).
    fn give_up_lead(&self, guard: LeadGuard<'_>, st: &mut State) {
        std::mem::forget(guard);
        self.unlead();
        st.lead.release();
    }

    fn unlead(&self) {
        let key = self.key();
        LEADING.with(|l| {
            let mut l = l.borrow_mut();
            if let Some(at) = l.iter().rposition(|&k| k == key) {
                l.remove(at);
            }
        });
    }

    /// Drives the pool (as leader, or as follower of another thread) until `check`
    /// returns something, or `deadline` passes (`None` then).
    pub(super) fn drive<T>(
        &self,
        deadline: Option<Instant>,
        mut check: impl FnMut(&mut State) -> Option<T>,
    ) -> Option<T> {
        let mut st = self.lock();
        loop {
            if let Some(t) = check(&mut st) {
                return Some(t);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return None;
            }
            if st.lead.is_held() && self.led_here() {
                // Called back from this thread's own hand-over: lead on, nested.
                loop {
                    st = self.turn(st, deadline);
                    if let Some(t) = check(&mut st) {
                        return Some(t);
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return None;
                    }
                }
            }
            if st.lead.is_held() {
                // Follow: counted in `waiting` before the lock is released, so that
                // whoever files an answer or gives the lead up wakes this thread.
                st.waiting += 1;
                st = match deadline {
                    None => self.follow.wait(st).unwrap_or_else(|p| p.into_inner()),
                    Some(d) => {
                        self.follow
                            .wait_timeout(st, d - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                };
                st.waiting -= 1;
                continue;
            }
            let guard = self.take_lead(&mut st);
            let found = loop {
                st = self.turn(st, deadline);
                if let Some(t) = check(&mut st) {
                    break Some(t);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break None;
                }
            };
            self.give_up_lead(guard, &mut st);
            self.hand_off(&st);
            if found.is_some() {
                return found;
            }
        }
    }

    /// The leader has left: a follower takes over, or the background thread.
    fn hand_off(&self, st: &State) {
        if st.waiting > 0 {
            self.follow.notify_all();
        } else if st.wants_background() {
            self.background.notify_one();
        }
    }

    /// The background thread: leads while work nobody waits for is outstanding; ends
    /// when the pool has stopped.
    pub(super) fn background(&self) {
        let mut st = self.lock();
        loop {
            if st.life.is_stopped() {
                return;
            }
            if st.lead.is_held() || !st.wants_background() {
                st = self.background.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let guard = self.take_lead(&mut st);
            while !st.life.is_stopped()
                && (st.core.outstanding() > 0
                    || st.life == Life::Terminating
                    || !st.cancel_killed.is_empty())
            {
                st = self.turn(st, None);
            }
            self.give_up_lead(guard, &mut st);
            if st.waiting > 0 {
                self.follow.notify_all();
            }
        }
    }

    /// Asks the pool to stop at once; returns when it has.
    pub(super) fn terminate(&self) {
        {
            let mut st = self.lock();
            st.life.terminate();
            self.notify(&st, false);
        }
        self.drive(None, |st| st.life.is_stopped().then_some(()));
    }

    /// Drives until every submitted call was answered, then lets the workers exit.
    pub(super) fn finish(&self) {
        self.drive(None, |st| {
            (st.life.is_stopped() || st.core.outstanding() == 0).then_some(())
        });
        let mut st = self.lock();
        match st.life {
            // Nobody else leads once all work is done (a caller that submits now finds
            // the pool closed).
            Life::Running | Life::Closed => {
                debug_assert!(st.life.is_closed(), "only a closed pool finishes");
                st.life.close();
                shut_down(&mut st);
            }
            // `terminate` came meanwhile: the next turn ends the pool.
            Life::Terminating => {
                drop(st);
                self.drive(None, |st| st.life.is_stopped().then_some(()));
            }
            Life::Joined | Life::Terminated => {}
        }
    }
}

/// Gives the lead up if the leader unwinds (a panic in a user's `Deserialize` while
/// answers are handed over): the pool must not be left with a leader that is gone.
/// Forgotten on the normal way out, which gives the lead up itself.
struct LeadGuard<'a>(&'a Shared);

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        self.0.unlead();
        let mut st = self.0.lock();
        // `Held`, or `Polling` if it unwound from the wait (the lock is taken again
        // before anything that can panic runs, so this is the usual case).
        if st.lead.is_held() {
            st.lead.release();
        }
        self.0.hand_off(&st);
    }
}

/// What a job's handle drains: answers as they come, then the end.
pub(super) enum Polled {
    Got(Answers),
    Ended,
}
