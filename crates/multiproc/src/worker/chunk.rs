//! Running one chunk: its calls one after another (plain data in runs), its answers
//! sent in pieces as they finish, each call told before it starts (`task::Mark`).
//!
//! A chunk is answered in pieces as its calls finish (every [`FLUSH_AFTER`] at most),
//! so a worker that dies in the middle of a long chunk has already delivered the
//! answers of the calls before; and a result that would take a reply over the frame
//! limit (or over the descriptors one message may carry) first sends the answers
//! gathered so far, so only a result too large on its own fails.

use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use super::link::Link;
use super::panic;
use crate::error::Result;
use crate::task::{Bulk, Invocation, Mark};
use crate::wire::fds;
use crate::wire::message::{self, Failure, Reply, TaskRef};
use crate::wire::values::{Data, Received, ValueBuf};

/// A worker sends the answers of a running chunk at least this often.
const FLUSH_AFTER: Duration = Duration::from_millis(10);

pub(super) struct ChunkRun<'a> {
    pub(super) seq: u64,
    pub(super) entry: TaskRef,
    pub(super) calls: u32,
    pub(super) max_value: usize,
    /// Where the worker says which call it starts (see [`call_word`]).
    pub(super) slot: Option<&'a AtomicU64>,
}

/// The answers of a chunk not yet sent.
struct Pending {
    first: u32,
    failures: Vec<(u32, Failure)>,
    since: Instant,
}

impl ChunkRun<'_> {
    pub(super) fn run(&self, link: &mut impl Link, data: &Received, value_fds: Vec<OwnedFd>) -> Result<()> {
        let max_fds = link.max_fds();
        let may_spill = max_fds > 0;
        let abort = link.abort_channel();
        let mut out = ValueBuf::new(self.max_value, may_spill);
        let mut out_fds: Vec<OwnedFd> = Vec::new();
        let mut pending = Pending {
            first: 0,
            failures: Vec::new(),
            since: Instant::now(),
        };
        let mut input = crate::wire::Values::new(data.bytes());
        let mut sent = Ok(());
        panic::set_current(abort, self.seq);
        panic::with_index(|index| fds::provide(value_fds, || {
            // Which call runs, told before it starts: to the panic hook (for a
            // `panic = "abort"` death) and in the slot the parent reads after a death.
            let mark = Mark {
                index,
                word: self.slot,
                seq: self.seq,
            };
            let mut i = 0;
            let mut since_clock = 0;
            while i < self.calls {
                mark.starting(i);
                let first = i;
                let until = pending.since + FLUSH_AFTER;
                // Sends the answers before call `first` (a result too big to share a
                // message with them).
                let mut flush = |out: &mut ValueBuf, out_fds: &mut Vec<OwnedFd>| {
                    let r = self.send(link, &mut pending, first, out, out_fds, may_spill);
                    r.is_ok()
                };
                let mut inv = Invocation {
                    input: &mut input,
                    out: &mut out,
                    out_fds: &mut out_fds,
                    max_fds,
                    flush: &mut flush,
                    outcome: Ok(()),
                    ok: 0,
                    bulk: Some(Bulk {
                        calls: self.calls - i,
                        first,
                        mark: &mark,
                        until,
                    }),
                };
                let entry = self.entry;
                let ran = catch_unwind(AssertUnwindSafe(|| {
                    crate::sys::image::call(entry.trampoline, entry.function, &mut inv)
                }));
                // The calls before the one that failed (if any) succeeded.
                let failed = match ran {
                    Ok(true) => inv.outcome.err(),
                    Ok(false) => Some(Failure::BadEntry),
                    Err(payload) => Some(panic::take_panic(&*payload)),
                };
                let ran_ok = inv.ok;
                i += ran_ok;
                since_clock += ran_ok;
                if let Some(f) = failed {
                    pending.failures.push((i, f));
                    i += 1;
                    since_clock += 1;
                }
                let last = i >= self.calls;
                let check_time = self.calls < 64 || since_clock >= 64 || ran_ok > 1;
                if check_time {
                    since_clock = 0;
                }
                if last || (check_time && pending.since.elapsed() >= FLUSH_AFTER) {
                    sent = self.send(link, &mut pending, i, &mut out, &mut out_fds, may_spill);
                    if sent.is_err() {
                        return;
                    }
                }
            }
        }));
        panic::clear_current();
        sent
    }

    /// Sends the answers of calls `pending.first .. upto`.
    fn send(
        &self,
        link: &mut impl Link,
        pending: &mut Pending,
        upto: u32,
        out: &mut ValueBuf,
        out_fds: &mut Vec<OwnedFd>,
        may_spill: bool,
    ) -> Result<()> {
        if upto <= pending.first {
            return Ok(());
        }
        let full = std::mem::replace(out, ValueBuf::new(self.max_value, may_spill));
        let data = full.finish()?;
        let mut fds = std::mem::take(out_fds);
        let (inline, shared) = match data {
            Data::Inline(v) => (v, false),
            Data::Shared(file) => {
                fds.insert(0, file);
                (Vec::new(), true)
            }
        };
        let nanos = pending.since.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let reply = Reply::Done {
            seq: self.seq,
            first: pending.first,
            answered: upto - pending.first,
            failures: std::mem::take(&mut pending.failures),
            nanos,
            fds: fds.len() as u32,
            shared,
        };
        let mut head = Vec::new();
        message::frame_head(&reply, inline.len(), &mut head)?;
        link.send(&head, &inline, &fds)?;
        // The next reply's buffer (see `wire::spare`): no fresh pages per reply.
        crate::wire::spare::give(inline);
        pending.first = upto;
        pending.since = Instant::now();
        Ok(())
    }
}
