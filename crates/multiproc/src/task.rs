//! Tasks: how a child finds the function to run and knows it may call it, and one
//! invocation of it there.
//!
//! This module holds a task's reference ([`task_ref`]: what the parent sends) and its
//! [`Invocation`] in a worker (decode the argument, call, encode the result; for plain
//! data a run of calls). This build's id is `sys::build_id`'s; what a caller makes of
//! a failed call is `failure`'s.
//!
//! A task is a plain `fn(A) -> R` (a non-capturing closure coerces to one). Such a
//! function has no state, so "which function" is all a child needs, and in a child of
//! the same build that is an offset into the same executable. The child checks that
//! claim before acting on it:
//!
//! 1. The parent's hello carries this build's id (the ELF `NT_GNU_BUILD_ID`, or a hash
//!    of the executable if the linker wrote none); a child of any other build refuses
//!    with [`Error::BuildMismatch`] and calls nothing.
//! 2. A re-executed child takes orders only from a socket whose peer is its own parent
//!    with its own uid, and refuses child mode entirely in a privileged (setuid,
//!    AT_SECURE) process — the hole that let a forged message jump anywhere in
//!    mitosis#13.
//! 3. Both offsets must fall inside this executable's code.
//!
//! Why not a table of registered names? A name table needs a macro on every task and
//! cannot hold closures. With the three checks above, the only process that can name a
//! function is one that already runs this exact program as this user, and it could run
//! any of its code anyway.

use std::os::fd::OwnedFd;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::sys::image::Invoke;
use crate::wire::message::{Failure, TaskRef};
use crate::wire::values::ValueBuf;

/// Where `f` lives in this executable, for a worker of the same build.
pub(crate) fn task_ref<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R) -> TaskRef {
    let (trampoline, function) = crate::sys::image::entry_of::<A, R, Invocation<'_, '_>>(f);
    TaskRef {
        trampoline,
        function,
    }
}

/// Sends the answers gathered so far and empties the buffers: for a result that fits
/// in a message alone but not beside them. `false` if nothing could be sent.
pub(crate) type Flush<'a> = dyn FnMut(&mut ValueBuf, &mut Vec<OwnedFd>) -> bool + 'a;

/// One call of a task in a worker (or, for plain data, a run of calls: see [`Bulk`]):
/// its argument is the first value of `input`; its result goes at the end of `out`
/// (descriptors at the end of `out_fds`).
pub(crate) struct Invocation<'i, 'o> {
    pub(crate) input: &'o mut crate::wire::Values<'i>,
    pub(crate) out: &'o mut ValueBuf,
    pub(crate) out_fds: &'o mut Vec<OwnedFd>,
    pub(crate) max_fds: usize,
    pub(crate) flush: &'o mut Flush<'o>,
    /// Whether the call that failed (if `outcome` is an error) is the one after the
    /// `ok` calls that succeeded.
    pub(crate) outcome: Result<(), Failure>,
    /// Calls that succeeded in this invocation (their results are in `out`): 1 for a
    /// single call, up to [`Bulk::calls`] for a run. Kept up to date call by call, so
    /// that after a panic it says which call panicked (the one after them).
    pub(crate) ok: u32,
    /// Set by a worker that may run the rest of its chunk in one go.
    pub(crate) bulk: Option<Bulk<'o>>,
}

/// The call slot's word when no call has started yet (see [`call_word`]).
pub(crate) const NO_CALL: u64 = u64::MAX;

/// The call slot's word for call `pos` of chunk `seq`: the chunk number's low 32 bits,
/// then the position. One word, so that one store publishes both and a reader can
/// never see half of one call and half of another (a pair of words would need a
/// sequence counter). 32 bits of chunk number are plenty: the parent matches the word
/// against the few chunks a worker holds at once, never against all it ever sent.
/// No call has position `u32::MAX` (a chunk holds at most `u32::MAX` calls), so no
/// call's word is [`NO_CALL`].
#[inline]
pub(crate) fn call_word(seq: u64, pos: u32) -> u64 {
    (seq << 32) | u64::from(pos)
}

/// Where a worker says which call of its chunk `seq` starts, before it starts: for
/// its panic hook (a `panic = "abort"` death) and in the call slot its parent reads
/// after a death. Plain fields, so that a run of tiny calls pays two stores a call,
/// not a call through a closure and a thread-local lookup.
pub(crate) struct Mark<'o> {
    /// The running call's position, which the panic hook reads.
    pub(crate) index: &'o std::cell::Cell<u32>,
    /// The call slot shared with the parent, if this worker has one.
    pub(crate) word: Option<&'o std::sync::atomic::AtomicU64>,
    pub(crate) seq: u64,
}

impl Mark<'_> {
    /// Call `pos` of the chunk starts.
    #[inline(always)]
    pub(crate) fn starting(&self, pos: u32) {
        self.index.set(pos);
        if let Some(word) = self.word {
            // Relaxed: the parent reads it only after the process is dead and reaped
            // (the kernel orders everything this process did before its exit before
            // the parent's wait), and the word publishes nothing else.
            word.store(call_word(self.seq, pos), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A run of calls in one invocation, for a task whose argument and result are both
/// plain data (`sys::plain`): no per-call trip through the trampoline, serde or an
/// unwind guard, only the per-call bookkeeping a worker owes its parent.
pub(crate) struct Bulk<'o> {
    /// Calls left in the chunk, the first of them being this invocation's.
    pub(crate) calls: u32,
    /// The position of this invocation's first call in its chunk.
    pub(crate) first: u32,
    /// Told before each call after the first (the worker's caller did the first's).
    pub(crate) mark: &'o Mark<'o>,
    /// Stop the run (to send the answers so far) once this moment has passed.
    pub(crate) until: std::time::Instant,
}

/// Calls between two looks at the clock in a bulk run, at most. A look costs about as
/// much as a tiny call, so tiny calls look every few hundred; slow ones look after
/// every call, or the answers of a chunk of 1 ms calls would wait 256 ms, and a death
/// would run again that many calls that had run.
const BULK_CLOCK_EVERY: u32 = 256;
/// The calls between two looks double while they take less than this.
const BULK_CLOCK_STRIDE: std::time::Duration = std::time::Duration::from_micros(500);

impl Invoke for Invocation<'_, '_> {
    fn invoke<A: DeserializeOwned, R: Serialize>(&mut self, f: fn(A) -> R) {
        // Constant after monomorphization: the branch vanishes for other types.
        if crate::sys::plain::is_plain::<A>() && crate::sys::plain::is_plain::<R>() {
            if let Some(bulk) = self.bulk.take() {
                self.run_plain(f, &bulk);
                return;
            }
        }
        let a = match self.input.next::<A>() {
            Ok(a) => a,
            Err(e) => {
                let reason = match e {
                    Error::Decode { reason, .. } => reason,
                    other => other.to_string(),
                };
                self.outcome = Err(Failure::BadArgs {
                    type_name: std::any::type_name::<A>().into(),
                    reason,
                });
                return;
            }
        };
        let r = f(a);
        self.outcome = self.store(&r);
        if self.outcome.is_ok() {
            self.ok = 1;
        }
    }
}

impl Invocation<'_, '_> {
    /// Runs calls of a plain-data task until the chunk, or the time before the next
    /// answer is due, runs out, or a call fails (then `outcome` says how).
    fn run_plain<A: DeserializeOwned, R: Serialize>(&mut self, f: fn(A) -> R, bulk: &Bulk<'_>) {
        if crate::sys::plain::is_plain::<R>() {
            self.out
                .reserve((bulk.calls as usize).saturating_mul(std::mem::size_of::<R>()));
        }
        let mut looked = std::time::Instant::now();
        let (mut every, mut next_look) = (1, 1);
        for k in 0..bulk.calls {
            if k > 0 {
                if k == next_look {
                    let now = std::time::Instant::now();
                    if now >= bulk.until {
                        return;
                    }
                    if now.duration_since(looked) < BULK_CLOCK_STRIDE {
                        every = (every * 2).min(BULK_CLOCK_EVERY);
                    }
                    looked = now;
                    next_look = k + every;
                }
                bulk.mark.starting(bulk.first + k);
            }
            let a = match self.input.next_plain::<A>() {
                Some(Ok(a)) => a,
                Some(Err(e)) => {
                    self.outcome = Err(Failure::BadArgs {
                        type_name: std::any::type_name::<A>().into(),
                        reason: e.to_string(),
                    });
                    return;
                }
                None => unreachable!("run_plain runs only plain-data tasks"),
            };
            let r = f(a);
            let stored = match crate::sys::plain::bytes_of(&r) {
                Some(bytes) if self.out.append_plain(bytes) => Ok(()),
                // Past the buffer's limit: the general path says so.
                _ => self.store(&r),
            };
            if let Err(f) = stored {
                self.outcome = Err(f);
                return;
            }
            self.ok = k + 1;
        }
    }

    fn store<R: Serialize>(&mut self, r: &R) -> Result<(), Failure> {
        // Most results hold no OS handle: encode without setting up a capture, and
        // take the careful path only if the value turns out to hold one.
        if self.out_fds.is_empty() {
            let passed = crate::wire::fds::passed();
            match crate::wire::encode_captured(r, self.out, &|| "a result".into()) {
                Ok(()) => return Ok(()),
                Err(_) if crate::wire::fds::passed() != passed => {}
                Err(Error::FrameTooLarge { .. }) => {}
                Err(e) => return Err(bad_result::<R>(e)),
            }
        }
        let mut flushed = false;
        loop {
            let (mark, fd_mark) = (self.out.len(), self.out_fds.len());
            let alone = mark == 0 && fd_mark == 0;
            let error = match crate::wire::encode_value(r, self.out, self.out_fds, &|| {
                "a result".into()
            }) {
                Ok(()) if self.out_fds.len() <= self.max_fds => return Ok(()),
                Ok(()) => {
                    let n = self.out_fds.len() - fd_mark;
                    self.out.truncate(mark);
                    self.out_fds.truncate(fd_mark);
                    Failure::BadResult {
                        type_name: std::any::type_name::<R>().into(),
                        reason: match self.max_fds {
                            0 => "it holds OS handles, which cannot cross to this pool's caller"
                                .into(),
                            max => format!(
                                "it holds {n} OS handles, more than one message can carry ({max})"
                            ),
                        },
                    }
                }
                Err(Error::FrameTooLarge { len, max, .. }) => Failure::TooLarge { len, max },
                Err(e) => return Err(bad_result::<R>(e)),
            };
            // Over a limit beside the answers before it: send those, try alone.
            if alone || flushed || !(self.flush)(self.out, self.out_fds) {
                return Err(error);
            }
            flushed = true;
        }
    }
}

/// The failure for a result of type `R` that did not encode.
fn bad_result<R>(e: Error) -> Failure {
    Failure::BadResult {
        type_name: std::any::type_name::<R>().into(),
        reason: match e {
            Error::Encode { reason, .. } => reason,
            other => other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invocation_decodes_its_argument_and_stores_its_result() {
        fn double(x: u32) -> u64 {
            x as u64 * 2
        }
        let entry = task_ref(double);
        let args = [
            crate::wire::encode_task_value(&21u32).unwrap(),
            crate::wire::encode_task_value(&4u32).unwrap(),
        ]
        .concat();
        let mut out = ValueBuf::new(1 << 20, false);
        let mut out_fds = Vec::new();
        let mut flush = |_: &mut ValueBuf, _: &mut Vec<OwnedFd>| false;
        let mut input = crate::wire::Values::new(&args);
        let mut inv = Invocation {
            input: &mut input,
            out: &mut out,
            out_fds: &mut out_fds,
            max_fds: 253,
            flush: &mut flush,
            outcome: Ok(()),
            ok: 0,
            bulk: None,
        };
        assert!(crate::sys::image::call(
            entry.trampoline,
            entry.function,
            &mut inv
        ));
        assert!(inv.outcome.is_ok());
        assert!(crate::sys::image::call(
            entry.trampoline,
            entry.function,
            &mut inv
        ));
        assert!(crate::sys::image::call(
            entry.trampoline,
            entry.function,
            &mut inv
        ));
        assert!(
            matches!(&inv.outcome, Err(Failure::BadArgs { type_name, .. }) if type_name == "u32")
        );
        assert!(!crate::sys::image::call(u64::MAX, 0, &mut inv));
        let bytes = out.heap().unwrap().to_vec();
        let mut values = crate::wire::Values::new(&bytes);
        let (a, b): (u64, u64) = (values.next().unwrap(), values.next().unwrap());
        assert_eq!((a, b), (42, 8));
        assert!(values.next::<u64>().is_err());
    }

    #[test]
    fn a_plain_task_runs_the_rest_of_its_chunk_in_one_invocation() {
        fn flip(x: bool) -> u8 {
            u8::from(!x)
        }
        let entry = task_ref(flip);
        // Three good arguments, then a byte that is no bool, then one more.
        let args = [1u8, 0, 1, 7, 0];
        let mut out = ValueBuf::new(1 << 20, false);
        let mut out_fds = Vec::new();
        let mut flush = |_: &mut ValueBuf, _: &mut Vec<OwnedFd>| false;
        let mut input = crate::wire::Values::new(&args);
        let index = std::cell::Cell::new(0);
        let word = std::sync::atomic::AtomicU64::new(NO_CALL);
        let mark = Mark {
            index: &index,
            word: Some(&word),
            seq: 9,
        };
        let mut inv = Invocation {
            input: &mut input,
            out: &mut out,
            out_fds: &mut out_fds,
            max_fds: 0,
            flush: &mut flush,
            outcome: Ok(()),
            ok: 0,
            bulk: Some(Bulk {
                calls: 5,
                first: 0,
                mark: &mark,
                until: std::time::Instant::now() + std::time::Duration::from_secs(60),
            }),
        };
        assert!(crate::sys::image::call(entry.trampoline, entry.function, &mut inv));
        // Calls 0..3 ran; call 3's argument is refused, and the run stops there.
        assert_eq!(inv.ok, 3);
        assert!(
            matches!(&inv.outcome, Err(Failure::BadArgs { type_name, .. }) if type_name == "bool")
        );
        // Call 3 was the last to start: the panic hook and the parent would say so.
        assert_eq!(index.get(), 3);
        assert_eq!(word.into_inner(), call_word(9, 3));
        assert_eq!(out.heap().unwrap(), &[0u8, 1, 0][..]);
    }
}
