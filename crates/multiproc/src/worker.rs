//! The worker loop: what a child process (and any other worker) does with the frames
//! its parent sends. One loop over a small [`Link`] (frames in, frames out): answer
//! the hello or refuse it, run each chunk, answer it, exit on `Exit` or end of stream.
//!
//! A chunk is answered in pieces as its calls finish (every [`FLUSH_AFTER`] at most),
//! so a worker that dies in the middle of a long chunk has already delivered the
//! answers of the calls before; and a result that would take a reply over the frame
//! limit (or over the descriptors one message may carry) first sends the answers
//! gathered so far, so only a result too large on its own fails.
//!
//! A pool's worker also gets a *call slot* (`Request::Slot`), a word of memory shared
//! with its parent, where it stores which call it starts: one store per call, no
//! system call. If the worker dies, the parent reads the slot and knows which call was
//! running: that call answers the death, and the worker's other calls run again
//! elsewhere.

use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use crate::child::{self, EXIT_PROTOCOL, EXIT_REFUSED, Origin};
use crate::error::Result;
use crate::task::{Bulk, Invocation};
use crate::wire::message::{self, Failure, PROTOCOL_VERSION, Refusal, Reply, Request, TaskRef};
use crate::wire::values::{Data, Received, ValueBuf, map_sealed};
use crate::wire::{FrameReader, Next, fds, send_all, wait_readable};

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

/// A worker sends the answers of a running chunk at least this often.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(10);

/// Room in a frame for its envelope beside the data (failure messages, counts).
pub(crate) const ENVELOPE_ROOM: usize = 1 << 20;

/// The largest frame that carries values of up to `max_value` bytes.
pub(crate) fn frame_limit(max_value: usize) -> usize {
    max_value.saturating_add(ENVELOPE_ROOM)
}

/// Frames in, frames out: what the worker loop needs of a transport.
pub(crate) trait Link {
    /// The next frame's body; `None` at end of stream.
    fn recv(&mut self) -> Result<Option<Vec<u8>>>;
    /// The next `n` descriptors that arrived (the frame just received names them).
    fn take_fds(&mut self, n: usize) -> Result<Vec<OwnedFd>>;
    /// Sends a frame: `head` (header and envelope), then `data`, with `fds`.
    fn send(&mut self, head: &[u8], data: &[u8], fds: &[OwnedFd]) -> Result<()>;
    /// Sends what `send` gathered.
    fn flush(&mut self) -> Result<()>;
    /// Descriptors one frame may carry (0: none cross this link).
    fn max_fds(&self) -> usize;
    /// The frame limit changed (the hello, or a chunk, said so).
    fn set_max_frame(&mut self, max: usize);
    /// Where the panic hook reports a panic under `panic = "abort"`.
    fn abort_channel(&self) -> Option<Rc<OwnedFd>>;
    /// Answers the hello: `refusal` says why this worker will run nothing (`None`:
    /// ready). Returns whether to go on serving.
    fn greeted(&mut self, refusal: Option<Refusal>) -> Result<bool>;
}

/// A worker's end of a Unix stream socket to its parent.
pub(crate) struct SocketLink {
    sock: Rc<OwnedFd>,
    reader: FrameReader,
    /// Small frames gathered while more requests wait in `reader`, sent in one write.
    out: Vec<u8>,
}

/// Frames gathered before a write, at most.
const GATHER: usize = 64 << 10;

impl SocketLink {
    pub(crate) fn new(sock: OwnedFd) -> Self {
        SocketLink {
            sock: Rc::new(sock),
            reader: FrameReader::new(frame_limit(crate::wire::max_frame_size())),
            out: Vec::new(),
        }
    }
}

impl Link for SocketLink {
    fn recv(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            match self.reader.next(self.sock.as_fd())? {
                Next::Frame(body) => return Ok(Some(body)),
                Next::Closed => return Ok(None),
                Next::Empty => {
                    // About to wait: whatever was gathered goes now.
                    self.flush()?;
                    wait_readable(self.sock.as_fd(), None)
                        .map_err(|e| crate::Error::io("waiting for work", e))?;
                }
            }
        }
    }

    fn take_fds(&mut self, n: usize) -> Result<Vec<OwnedFd>> {
        self.reader.take_fds(n)
    }

    fn send(&mut self, head: &[u8], data: &[u8], fds: &[OwnedFd]) -> Result<()> {
        if fds.is_empty() && self.out.len() + head.len() + data.len() <= GATHER {
            self.out.extend_from_slice(head);
            self.out.extend_from_slice(data);
            if !self.reader.has_buffered() {
                self.flush()?;
            }
            return Ok(());
        }
        self.flush()?;
        send_all(self.sock.as_fd(), &[head, data], fds)
    }

    fn flush(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = send_all(self.sock.as_fd(), &[&self.out], &[]);
        self.out.clear();
        r
    }

    fn max_fds(&self) -> usize {
        fds::MAX_FDS_PER_FRAME
    }

    fn set_max_frame(&mut self, max: usize) {
        self.reader.set_max(frame_limit(max));
    }

    fn abort_channel(&self) -> Option<Rc<OwnedFd>> {
        Some(self.sock.clone())
    }

    /// A parent is told only of a refusal; then the worker exits.
    fn greeted(&mut self, refusal: Option<Refusal>) -> Result<bool> {
        let Some(reason) = refusal else {
            return Ok(true);
        };
        let mut head = Vec::new();
        message::frame_head(&Reply::Refused { reason }, 0, &mut head)?;
        self.send(&head, &[], &[])?;
        self.flush()?;
        Ok(false)
    }
}

/// Why a worker (of this build, started as `origin` says) refuses a parent's hello.
pub(crate) fn refusal(version: u32, build_id: &[u8], origin: Origin) -> Option<Refusal> {
    if version != PROTOCOL_VERSION {
        Some(Refusal::Version {
            child: PROTOCOL_VERSION,
        })
    } else if origin == Origin::Execd && build_id != crate::sys::build_id::build_id() {
        Some(Refusal::Build {
            child: ByteBuf::from(crate::sys::build_id::build_id().to_vec()),
        })
    } else {
        None
    }
}

/// Serves the parent on `link` until it says `Exit` or goes away; returns the exit
/// code the process should end with.
pub(crate) fn serve(link: &mut impl Link, origin: Origin) -> i32 {
    let mut greeted = false;
    // The call slot the parent shares (a pool's worker): a mapped memory file.
    let mut slot: Option<crate::sys::shm::Mapping> = None;
    loop {
        let body = match link.recv() {
            Ok(Some(b)) => b,
            Ok(None) => return 0,
            Err(_) => return EXIT_PROTOCOL,
        };
        let Ok((request, data_start)) = message::open_frame::<Request>(&body) else {
            return EXIT_PROTOCOL;
        };
        match request {
            Request::Hello {
                version,
                build_id,
                name,
                max_frame,
                leave_term,
            } => {
                // Until now a SIGTERM waited (see `child::serve`): one sent meanwhile
                // is acted on now, with the disposition the parent asked for.
                crate::sys::term::settle_terminate(leave_term);
                let refused = refusal(version, &build_id, origin);
                let ok = refused.is_none();
                match link.greeted(refused) {
                    Ok(true) => {}
                    Ok(false) => return EXIT_REFUSED,
                    Err(_) => return EXIT_PROTOCOL,
                }
                if !ok {
                    continue; // refused, but told to wait for Exit
                }
                if !name.is_empty() {
                    child::set_name(name);
                }
                let max = usize::try_from(max_frame).unwrap_or(usize::MAX);
                crate::wire::set_max_frame_size(max);
                link.set_max_frame(max);
                greeted = true;
            }
            Request::Run {
                seq,
                entry,
                calls,
                max_value,
                fds,
                shared,
            } => {
                if !greeted {
                    return EXIT_PROTOCOL;
                }
                let max_value = usize::try_from(max_value).unwrap_or(usize::MAX);
                if max_value != crate::wire::max_frame_size() {
                    crate::wire::set_max_frame_size(max_value);
                    link.set_max_frame(max_value);
                }
                let Ok(mut fds) = link.take_fds(fds as usize) else {
                    return EXIT_PROTOCOL;
                };
                let data = if shared {
                    if fds.is_empty() {
                        return EXIT_PROTOCOL;
                    }
                    let file = fds.remove(0);
                    match map_sealed(&file, max_value, "a chunk's arguments") {
                        Ok(map) => Received::Shared(map),
                        Err(_) => return EXIT_PROTOCOL,
                    }
                } else {
                    Received::Inline(body, data_start)
                };
                let chunk = ChunkRun {
                    seq,
                    entry,
                    calls,
                    max_value,
                    slot: slot.as_ref().and_then(|m| m.atomic_at::<AtomicU64>(0)),
                };
                if chunk.run(link, &data, fds).is_err() {
                    // The parent is gone (or its socket is): nothing left to serve.
                    return 0;
                }
            }
            Request::Slot => {
                if !greeted || slot.is_some() {
                    return EXIT_PROTOCOL;
                }
                let Ok(mut fds) = link.take_fds(1) else {
                    return EXIT_PROTOCOL;
                };
                match map_slot(fds.pop()) {
                    Some(m) => slot = Some(m),
                    None => return EXIT_PROTOCOL,
                }
            }
            Request::Exit => {
                let _ = link.flush();
                return 0;
            }
        }
    }
}

/// Maps the call slot the parent sent: a memory file whose size is sealed (so that
/// nobody can shrink it under the mapping, which would make a store fault) and holds
/// the slot's word.
fn map_slot(file: Option<OwnedFd>) -> Option<crate::sys::shm::Mapping> {
    let file = file?;
    let len = crate::sys::shm::file_len(file.as_fd()).ok()?;
    if len < 8 || !crate::sys::shm::is_size_sealed(file.as_fd()) {
        return None;
    }
    let map = crate::sys::shm::Mapping::new(file.as_fd(), 8, true).ok()?;
    map.atomic_at::<AtomicU64>(0)?;
    Some(map)
}

struct ChunkRun<'a> {
    seq: u64,
    entry: TaskRef,
    calls: u32,
    max_value: usize,
    /// Where the worker says which call it starts (see [`call_word`]).
    slot: Option<&'a AtomicU64>,
}

/// The answers of a chunk not yet sent.
struct Pending {
    first: u32,
    failures: Vec<(u32, Failure)>,
    since: Instant,
}

impl ChunkRun<'_> {
    fn run(&self, link: &mut impl Link, data: &Received, value_fds: Vec<OwnedFd>) -> Result<()> {
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
        child::set_current(abort, self.seq);
        fds::provide(value_fds, || {
            // Which call runs, told before it starts: to the panic hook (for a
            // `panic = "abort"` death) and in the slot the parent reads after a death.
            let starting = |i: u32| {
                child::set_index(i);
                // One store per call. Relaxed: the parent reads it only after the
                // process is dead and reaped (the kernel orders everything this process
                // did before its exit before the parent's wait), and the word publishes
                // nothing else.
                if let Some(slot) = self.slot {
                    slot.store(call_word(self.seq, i), Ordering::Relaxed);
                }
            };
            let mut i = 0;
            let mut since_clock = 0;
            while i < self.calls {
                starting(i);
                let first = i;
                let offset_start = |k: u32| starting(first + k);
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
                        starting: &offset_start,
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
                    Err(payload) => Some(child::take_panic(&*payload)),
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
        });
        child::clear_current();
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
        pending.first = upto;
        pending.since = Instant::now();
        Ok(())
    }
}
