//! The core's rules, without a process or a socket: the helpers here, the tests by
//! concept beside them.

mod answers;
mod chunk;
mod death;
mod jobs;
mod slot;

use std::time::{Duration, Instant};

use super::chunk::Chunk;
use super::death::{Cost, MAX_HANDBACKS};
use super::jobs::Items;
use super::*;
use crate::error::Result;
use crate::pool::batch::decode_answers;
use crate::wire::values::{Data, Received};

fn nums(n: u32) -> Box<dyn Source> {
    Box::new(Items::new((0..n).collect()))
}

const ENTRY: TaskRef = TaskRef {
    trampoline: 1,
    function: 2,
};

fn limits() -> Limits {
    Limits {
        max_value: 1 << 20,
        max_fds: 253,
        may_spill: false,
        ends: false,
    }
}

fn core(retries: u32) -> Core {
    Core::new(Config {
        workers: 2,
        retries,
        task_timeout: None,
        max_tasks_per_child: None,
        pipeline: true,
        chunk_time: chunking::LOCAL,
    })
}

/// A core for workers with call slots (the local pool's): a dead worker's calls other
/// than the running one go back to the queue.
fn requeuing(retries: u32, timeout: Option<Duration>) -> Core {
    let mut c = Core::new(Config {
        workers: 2,
        retries,
        task_timeout: timeout,
        max_tasks_per_child: None,
        pipeline: true,
        chunk_time: chunking::LOCAL,
    });
    c.set_requeue(true);
    c
}

/// The arguments a chunk carries (the tests' arguments are `u32`s).
fn args_of(chunk: &Chunk) -> Vec<u32> {
    let bytes: &[u8] = match (&chunk.shared, &chunk.data) {
        (Some(v), _) => &v[..],
        (None, Data::Inline(v)) => v,
        (None, Data::Shared(_)) => panic!("inline data expected"),
    };
    let mut values = crate::wire::Values::new(bytes);
    (0..chunk.calls).map(|_| values.next().unwrap()).collect()
}

/// The call slot's state for call `pos` of `chunk`.
fn running(chunk: &Chunk, pos: u32) -> LastStart {
    LastStart::of_word(crate::task::call_word(chunk.seq, pos))
}

/// Gives worker `id` chunks until it wants no more; returns them.
fn fill(c: &mut Core, id: WorkerId) -> Vec<Chunk> {
    let mut out = Vec::new();
    while let Some(ch) = c.next_chunk(id, &limits(), Instant::now()) {
        out.push(ch);
    }
    out
}

/// Runs every chunk worker `id` is given (answering each call with its argument × 10)
/// until the job has nothing left to hand out; returns the calls run, in order.
fn run_rest(c: &mut Core, id: WorkerId) -> Vec<u32> {
    let mut ran = Vec::new();
    loop {
        let chunks = fill(c, id);
        if chunks.is_empty() {
            return ran;
        }
        for ch in chunks {
            let args = args_of(&ch);
            let idx: Vec<usize> = args.iter().map(|&a| a as usize).collect();
            answer(c, id, ch.seq, 0, &idx);
            ran.extend(args);
        }
    }
}

/// Answers a probe chunk on worker `id`, so that the call time is known (1 µs) and
/// the worker is given several chunks at once (pipelining).
fn probe(c: &mut Core, id: WorkerId, job: u64, at: usize) {
    c.submit(job, at, Box::new(Items::new(vec![at as u32])));
    let ch = c.next_chunk(id, &limits(), Instant::now()).unwrap();
    assert_eq!(args_of(&ch), [at as u32]);
    answer(c, id, ch.seq, 0, &[at]);
}

/// Answers `n` calls of the worker's front chunk from `first`, each value `index * 10`.
fn answer(core: &mut Core, id: WorkerId, seq: u64, first: u32, indices: &[usize]) {
    let mut data = Vec::new();
    for &i in indices {
        data.extend(crate::wire::encode_task_value(&(i as u64 * 10)).unwrap());
    }
    core.on_done(
        id,
        7,
        seq,
        first,
        indices.len() as u32,
        Vec::new(),
        1000,
        Received::Inline(data, 0),
        Vec::new(),
    )
    .unwrap();
}

fn drain(core: &mut Core, job: u64) -> Vec<(usize, Result<u64>)> {
    let mut out = Vec::new();
    while let Some(a) = core.take_answers(job) {
        out.extend(decode_answers::<u64>(a));
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

/// Collects what a sunk job's sink receives.
#[derive(Default)]
struct Collected(std::sync::Mutex<Vec<(usize, Result<u64>)>>);

impl Sink for Collected {
    fn answers(&self, answers: Answers) {
        self.0
            .lock()
            .unwrap()
            .extend(decode_answers::<u64>(answers));
    }
}
