//! The job table: every job's calls, from submission to last answer.
//!
//! A job's life cycle, the one every pool follows:
//!
//! 1. **open**: the job exists, with its task and chunking; it has no calls.
//! 2. **calls**: submissions add calls (`submit`, any number of times); each is
//!    pending until a worker takes it in a chunk, then outstanding until answered.
//! 3. **seal** (no more calls will come) or **cancel** (nobody wants the answers:
//!    pending calls are dropped at once, answers still arriving are thrown away).
//! 4. **last answer**: a sealed job whose every call was answered and whose answers
//!    were all taken by its handle is removed. A cancelled job is removed at once.
//!
//! Arguments stay typed in the job until a chunk is built: each is encoded exactly
//! once, straight into the chunk that carries it (see [`Source`]).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use std::sync::Arc;

use super::ends::Ends;
use super::{Answers, Sink};
use crate::error::Result;
use crate::pool::ChunkSize;
use crate::sys::lend::PlainBytes;
use crate::wire::bytes::SharedBytes;
use crate::wire::message::TaskRef;
use crate::wire::values::ValueBuf;

/// Arguments of some calls, not yet encoded.
pub(crate) trait Source: Send {
    /// Encodes the first argument (that of call `index`) at the end of `buf`, inside
    /// the chunk's descriptor capture (see `wire::fds`); `None` when there is none.
    /// The argument stays first until `pop`.
    fn encode_first(&mut self, index: usize, buf: &mut ValueBuf) -> Option<Result<()>>;
    /// Encodes and drops up to `max` first arguments, as long as each encodes without
    /// error and holds no OS handle, stopping once `buf` holds `budget` bytes; records
    /// where each ends in `ends` if given. Returns how many it took. The argument it
    /// stopped at (if any) is left first, for `encode_first` to deal with: the hot
    /// path of tiny calls, without a call through the trait per argument.
    fn encode_run(
        &mut self,
        max: usize,
        buf: &mut ValueBuf,
        budget: usize,
        ends: Option<&mut Ends>,
    ) -> usize;
    /// Up to `max` first arguments, at most `budget` bytes, as bytes shared with the
    /// source's own memory: no copy, for plain data that lies end to end there. How
    /// many it took; `None` (nothing taken) for any other source.
    fn share_run(&mut self, _max: usize, _budget: usize) -> Option<(SharedBytes, usize)> {
        None
    }
    /// Drops the first argument (it was sent, or answered with its encoding error).
    fn pop(&mut self);
    /// Arguments left.
    fn len(&self) -> usize;
    /// How many times these calls were handed back after a worker died holding them
    /// with no call running (see [`HandedBack`]).
    fn handbacks(&self) -> u32 {
        0
    }
}

/// Moves values from the front of `items` into `buf` while each has its bytes ready
/// (`bytes_of`) and `put` takes them: at most `max` values, stopping once `buf` holds
/// `budget` bytes or a value would pass its limit (that value stays, for the next
/// chunk or its own error). Records where each value ends if `ends` asks. The number
/// moved.
#[inline(always)]
fn append_run<T>(
    items: &mut VecDeque<T>,
    (max, budget): (usize, usize),
    buf: &mut ValueBuf,
    mut ends: Option<&mut Ends>,
    bytes_of: impl Fn(&T) -> Option<&[u8]>,
    put: impl Fn(&mut ValueBuf, &[u8]) -> bool,
) -> usize {
    let mut n = 0;
    while n < max {
        let Some(bytes) = items.front().and_then(&bytes_of) else {
            break;
        };
        let mark = buf.len();
        if !put(buf, bytes) {
            buf.truncate(mark);
            break;
        }
        items.pop_front();
        n += 1;
        if let Some(ends) = ends.as_deref_mut() {
            ends.push(buf.len());
        }
        if buf.len() >= budget {
            break;
        }
    }
    n
}

/// Appends the encoded argument of call `index` (relayed as it came), or says it is over
/// the buffer's limit (`buf` as it was).
fn append_encoded(index: usize, bytes: &[u8], buf: &mut ValueBuf) -> Result<()> {
    let mark = buf.len();
    if buf.append(bytes) {
        return Ok(());
    }
    buf.truncate(mark);
    Err(crate::error::Error::FrameTooLarge {
        what: format!("the argument of call {index}"),
        len: bytes.len() as u64,
        max: buf.limit() as u64,
    })
}

/// Arguments of one submission, typed until a chunk takes them; plain data (see
/// `sys::plain`) as the bytes it already is, which chunks share without a copy (see
/// [`Source::share_run`]).
pub(crate) struct Items<A>(Store<A>);

enum Store<A> {
    Values(VecDeque<A>),
    Plain(PlainArgs),
}

/// A submission's plain arguments, end to end in their own vector.
struct PlainArgs {
    bytes: Arc<PlainBytes>,
    /// Bytes per argument.
    size: usize,
    /// Arguments taken so far.
    next: usize,
    count: usize,
}

impl PlainArgs {
    /// The bytes of arguments `next .. next + k`.
    fn span(&self, k: usize) -> std::ops::Range<usize> {
        self.next * self.size..(self.next + k) * self.size
    }
}

impl<A: Send + 'static> Items<A> {
    pub(crate) fn new(items: Vec<A>) -> Self {
        match PlainBytes::new(items) {
            Ok(bytes) => Self::lent(Arc::new(bytes)),
            Err(items) => Items(Store::Values(VecDeque::from(items))),
        }
    }

    /// Plain arguments already held as their bytes (`map`'s, which may take the results
    /// in place: see `sys::lend`), lent chunk by chunk.
    pub(crate) fn lent(bytes: Arc<PlainBytes>) -> Self {
        let size = std::mem::size_of::<A>().max(1);
        Items(Store::Plain(PlainArgs {
            count: bytes.len() / size,
            bytes,
            size,
            next: 0,
        }))
    }
}

impl<A: serde::Serialize + Send> Source for Items<A> {
    fn encode_first(&mut self, index: usize, buf: &mut ValueBuf) -> Option<Result<()>> {
        match &self.0 {
            Store::Values(items) => {
                let item = items.front()?;
                Some(crate::wire::encode_captured(item, buf, &|| {
                    format!("the argument of call {index}")
                }))
            }
            Store::Plain(p) if p.next < p.count => p
                .bytes
                .with_range(p.span(1), |b| append_encoded(index, b, buf)),
            Store::Plain(_) => None,
        }
    }

    fn encode_run(
        &mut self,
        max: usize,
        buf: &mut ValueBuf,
        budget: usize,
        mut ends: Option<&mut Ends>,
    ) -> usize {
        let items = match &mut self.0 {
            Store::Values(items) => items,
            Store::Plain(p) => {
                // The arguments' bytes as they lie in memory, in one copy (no serde, no
                // per-value call, no handle bookkeeping: plain data holds none). A run
                // that would pass the buffer's limit goes value by value, to stop at
                // the limit exactly.
                let room = budget.saturating_sub(buf.len()).div_ceil(p.size);
                let k = max.min(p.count - p.next).min(room);
                let mark = buf.len();
                if k > 0 && p.bytes.with_range(p.span(k), |b| buf.append(b)) == Some(true) {
                    p.next += k;
                    if let Some(ends) = ends.as_deref_mut() {
                        ends.push_run(k, p.size);
                    }
                    return k;
                }
                buf.truncate(mark);
                let mut n = 0;
                while n < k
                    && p.bytes.with_range(p.span(1), |b| buf.append_plain(b)) == Some(true)
                {
                    p.next += 1;
                    n += 1;
                    if let Some(ends) = ends.as_deref_mut() {
                        ends.push(buf.len());
                    }
                }
                if n < k {
                    // The value that did not fit stays, for the next chunk or its error.
                    buf.truncate(mark + n * p.size);
                }
                return n;
            }
        };
        let passed = crate::wire::fds::passed();
        let captured = crate::wire::fds::captured_len();
        let mut n = 0;
        while n < max {
            let Some(item) = items.front() else {
                break;
            };
            let mark = buf.len();
            let ok = crate::wire::encode_captured(item, buf, &String::new).is_ok();
            if !ok || crate::wire::fds::passed() != passed {
                buf.truncate(mark);
                crate::wire::fds::truncate_captured(captured);
                break;
            }
            items.pop_front();
            n += 1;
            if let Some(ends) = ends.as_deref_mut() {
                ends.push(buf.len());
            }
            if buf.len() >= budget {
                break;
            }
        }
        n
    }

    fn share_run(&mut self, max: usize, budget: usize) -> Option<(SharedBytes, usize)> {
        let Store::Plain(p) = &mut self.0 else {
            return None;
        };
        let k = max.min(p.count - p.next).min(budget / p.size);
        if k == 0 {
            return None;
        }
        let bytes = SharedBytes::Plain(p.bytes.lend(p.span(k))?);
        p.next += k;
        Some((bytes, k))
    }

    fn pop(&mut self) {
        match &mut self.0 {
            Store::Values(items) => {
                items.pop_front();
            }
            Store::Plain(p) => p.next = (p.next + 1).min(p.count),
        }
    }

    fn len(&self) -> usize {
        match &self.0 {
            Store::Values(items) => items.len(),
            Store::Plain(p) => p.count - p.next,
        }
    }
}

/// Arguments encoded elsewhere, relayed as they came (a cluster node runs the calls of
/// a chunk it took in its local pool without knowing their types), or handed back.
pub(crate) struct Encoded(pub(crate) VecDeque<Vec<u8>>);

impl Source for Encoded {
    fn encode_first(&mut self, index: usize, buf: &mut ValueBuf) -> Option<Result<()>> {
        Some(append_encoded(index, self.0.front()?, buf))
    }

    fn encode_run(
        &mut self,
        max: usize,
        buf: &mut ValueBuf,
        budget: usize,
        ends: Option<&mut Ends>,
    ) -> usize {
        append_run(
            &mut self.0,
            (max, budget),
            buf,
            ends,
            |v: &Vec<u8>| Some(v.as_slice()),
            ValueBuf::append,
        )
    }

    fn pop(&mut self) {
        self.0.pop_front();
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Calls handed back to the queue when their worker died while not running them (they
/// had not started, or had run and their answers died with the worker): their encoded
/// arguments (without descriptors), run again like any pending call. Not a retry.
pub(crate) struct HandedBack {
    pub(crate) args: Encoded,
    /// Deaths with no call running that handed these calls back (bounded, see
    /// `core::MAX_HANDBACKS`: a chunk that kills every worker before its first call
    /// starts must not be handed out forever).
    pub(crate) handbacks: u32,
}

impl Source for HandedBack {
    fn encode_first(&mut self, index: usize, buf: &mut ValueBuf) -> Option<Result<()>> {
        self.args.encode_first(index, buf)
    }

    fn encode_run(
        &mut self,
        max: usize,
        buf: &mut ValueBuf,
        budget: usize,
        ends: Option<&mut Ends>,
    ) -> usize {
        self.args.encode_run(max, buf, budget, ends)
    }

    fn pop(&mut self) {
        self.args.pop();
    }

    fn len(&self) -> usize {
        self.args.len()
    }

    fn handbacks(&self) -> u32 {
        self.handbacks
    }
}

/// A call to run again, alone, after its worker died: its encoded argument, and every
/// descriptor of the chunk it first travelled in (its encoding numbers them so). A
/// retry (the call was running: `attempts` counts it), or a call handed back from a
/// chunk that carried descriptors or was itself a retry.
pub(crate) struct Retry {
    pub(crate) index: usize,
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) attempts: u32,
    /// See [`HandedBack::handbacks`].
    pub(crate) handbacks: u32,
}

pub(crate) struct Job {
    pub(crate) entry: TaskRef,
    pub(crate) chunk: ChunkSize,
    /// A thread waits on this job right away (map, apply): it drives the pool itself
    /// and no background thread needs waking for it.
    pub(crate) caller_driven: bool,
    /// Arguments not yet sent, in submission order: (index of the first, arguments).
    pub(crate) sources: VecDeque<(usize, Box<dyn Source>)>,
    pub(crate) retries: VecDeque<Retry>,
    /// Calls submitted and not yet answered.
    pub(crate) outstanding: usize,
    pub(crate) sealed: bool,
    /// Smoothed nanoseconds per call, as workers measured.
    pub(crate) nanos_per_call: Option<f64>,
    /// Answers not yet taken by the job's handle.
    pub(crate) inbox: VecDeque<Answers>,
    /// Where answers go as they arrive, for a handle that does not pull them (see
    /// [`Sink`](super::Sink)); the event loop hands them over outside its lock.
    pub(crate) sink: Option<Arc<dyn Sink>>,
    /// Listed in the core's deliveries due (answers in `inbox`, or the job is over).
    pub(crate) due: bool,
}

impl Job {
    pub(crate) fn new(entry: TaskRef, chunk: ChunkSize, caller_driven: bool) -> Self {
        Job {
            entry,
            chunk,
            caller_driven,
            sources: VecDeque::new(),
            retries: VecDeque::new(),
            outstanding: 0,
            sealed: false,
            nanos_per_call: None,
            inbox: VecDeque::new(),
            sink: None,
            due: false,
        }
    }

    /// Calls not yet handed to a worker.
    pub(crate) fn pending(&self) -> usize {
        self.retries.len() + self.sources.iter().map(|(_, s)| s.len()).sum::<usize>()
    }

    /// Sealed, every call answered, every answer taken: the job can go.
    pub(crate) fn finished(&self) -> bool {
        self.sealed && self.outstanding == 0 && self.inbox.is_empty()
    }

    /// Records answers for `n` calls.
    pub(crate) fn deliver(&mut self, answers: Answers) {
        let n = answers.len();
        if n == 0 {
            return;
        }
        self.outstanding = self.outstanding.saturating_sub(n);
        self.inbox.push_back(answers);
    }
}

/// Arguments encoded elsewhere and packed end to end, as a cluster node takes them in
/// a chunk: the bytes held once, and a run of many arguments appended to the local
/// chunk with one copy (no `Vec` per argument, as [`Encoded`] would need).
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) struct Packed {
    data: Vec<u8>,
    /// Where each argument ends in `data`: checked at construction, never decreasing
    /// and within `data`.
    ends: Vec<usize>,
    /// The first argument not taken yet.
    next: usize,
}

#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
impl Packed {
    /// The arguments of `data` ending at `ends`, or `None` if `ends` does not cover
    /// `data` exactly (the lengths came from another machine: never trusted).
    pub(crate) fn new(data: Vec<u8>, ends: &[u64]) -> Option<Self> {
        let mut start = 0usize;
        let mut checked = Vec::with_capacity(ends.len());
        for &end in ends {
            let end = usize::try_from(end).ok()?;
            if end < start || end > data.len() {
                return None;
            }
            checked.push(end);
            start = end;
        }
        if start != data.len() {
            return None;
        }
        Some(Packed {
            data,
            ends: checked,
            next: 0,
        })
    }

    /// Where argument `i` starts.
    fn start(&self, i: usize) -> usize {
        i.checked_sub(1).map_or(0, |p| self.ends[p])
    }
}

impl Source for Packed {
    fn encode_first(&mut self, index: usize, buf: &mut ValueBuf) -> Option<Result<()>> {
        let end = *self.ends.get(self.next)?;
        let bytes = &self.data[self.start(self.next)..end];
        Some(append_encoded(index, bytes, buf))
    }

    fn encode_run(
        &mut self,
        max: usize,
        buf: &mut ValueBuf,
        budget: usize,
        ends: Option<&mut Ends>,
    ) -> usize {
        // The run: as many arguments as one at a time would take (the last may cross
        // the budget), then appended with one copy.
        let first = self.next;
        let start = self.start(first);
        let base = buf.len();
        let mut last = first;
        while last < self.ends.len() && last - first < max {
            let end = self.ends[last];
            last += 1;
            if base + (end - start) >= budget {
                break;
            }
        }
        if last == first {
            return 0;
        }
        let mut end = self.ends[last - 1];
        if !buf.append(&self.data[start..end]) {
            // Past the chunk's limit: only the arguments that fit whole go, and the
            // one that does not stays first (for the next chunk, or its own error).
            buf.truncate(base);
            let room = buf.limit().saturating_sub(base);
            last = first + self.ends[first..last].partition_point(|&e| e - start <= room);
            if last == first || !buf.append(&self.data[start..self.start(last)]) {
                buf.truncate(base);
                return 0;
            }
            end = self.start(last);
        }
        debug_assert_eq!(buf.len(), base + (end - start));
        if let Some(ends) = ends {
            for &e in &self.ends[first..last] {
                ends.push(base + (e - start));
            }
        }
        self.next = last;
        last - first
    }

    fn pop(&mut self) {
        if self.next < self.ends.len() {
            self.next += 1;
        }
    }

    fn len(&self) -> usize {
        self.ends.len() - self.next
    }
}

#[cfg(test)]
mod packed_tests {
    use super::*;

    fn packed(args: &[&[u8]]) -> Packed {
        let mut ends = Vec::new();
        let data: Vec<u8> = args.iter().flat_map(|a| a.iter().copied()).collect();
        let mut at = 0;
        for a in args {
            at += a.len() as u64;
            ends.push(at);
        }
        Packed::new(data, &ends).unwrap()
    }

    #[test]
    fn lengths_that_do_not_cover_the_data_are_refused() {
        assert!(Packed::new(vec![0; 4], &[2, 1]).is_none());
        assert!(Packed::new(vec![0; 4], &[2, 5]).is_none());
        assert!(Packed::new(vec![0; 4], &[2]).is_none());
        assert!(Packed::new(vec![0; 4], &[2, 4]).is_some());
    }

    #[test]
    fn a_run_stops_at_the_budget_and_the_limit_and_records_ends() {
        let mut p = packed(&[b"ab", b"c", b"", b"defg", b"hi"]);
        let mut buf = ValueBuf::new(1 << 20, false);
        let mut ends = Ends::default();
        // The budget is crossed by the 4th argument: it goes, as one at a time would.
        assert_eq!(p.encode_run(10, &mut buf, 5, Some(&mut ends)), 4);
        assert_eq!(buf.heap(), Some(&b"abcdefg"[..]));
        assert_eq!(ends.offsets().collect::<Vec<_>>(), vec![2, 3, 3, 7]);
        assert_eq!(p.len(), 1);
        // A chunk limit of 3 bytes: "hi" fits, then nothing is left.
        let mut small = ValueBuf::new(3, false);
        assert_eq!(p.encode_run(10, &mut small, 100, None), 1);
        assert_eq!(p.len(), 0);

        let mut p = packed(&[b"ab", b"cdef", b"g"]);
        let mut small = ValueBuf::new(3, false);
        assert_eq!(p.encode_run(10, &mut small, 100, None), 1);
        assert_eq!(small.heap(), Some(&b"ab"[..]));
        // The one over the limit stays first, for its own error.
        let mut fresh = ValueBuf::new(3, false);
        assert_eq!(p.encode_run(10, &mut fresh, 100, None), 0);
        let err = p.encode_first(1, &mut fresh).unwrap().unwrap_err();
        assert!(matches!(err, crate::error::Error::FrameTooLarge { len: 4, .. }));
        p.pop();
        assert_eq!(p.encode_run(1, &mut fresh, 100, None), 1);
        assert_eq!(fresh.heap(), Some(&b"g"[..]));
    }
}
