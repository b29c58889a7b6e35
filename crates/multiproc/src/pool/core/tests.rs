//! The core's rules, without a process or a socket.

use std::time::{Duration, Instant};

use super::jobs::Items;
use super::chunk::Chunk;
use super::death::{Cost, MAX_HANDBACKS};
use super::*;
use crate::wire::values::Data;
use crate::error::Result;
use crate::pool::batch::decode_answers;
use crate::wire::values::Received;

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
        (Some(v), _) => v,
        (None, Data::Inline(v)) => v,
        (None, Data::Shared(_)) => panic!("inline data expected"),
    };
    let mut values = crate::wire::Values::new(bytes);
    (0..chunk.calls).map(|_| values.next().unwrap()).collect()
}

/// The call slot's state for call `pos` of `chunk`.
fn running(chunk: &Chunk, pos: u32) -> LastStart {
    LastStart::of_word(crate::worker::call_word(chunk.seq, pos))
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

#[test]
fn a_job_lives_from_open_to_its_last_answer() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(4), true);
    c.submit(job, 0, nums(10));
    c.seal(job);
    assert!(!c.job_over(job));
    let mut answered = 0;
    while let Some(chunk) = c.next_chunk(1, &limits(), Instant::now()) {
        let idx: Vec<usize> = (answered..answered + chunk.calls as usize).collect();
        answer(&mut c, 1, chunk.seq, 0, &idx);
        answered += idx.len();
    }
    assert_eq!(answered, 10);
    let got = drain(&mut c, job);
    assert_eq!(got.len(), 10);
    assert!(
        got.iter()
            .all(|(i, r)| *r.as_ref().unwrap() == *i as u64 * 10)
    );
    assert!(c.job_over(job));
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn a_probe_chunk_first_then_chunks_sized_by_time() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Auto, false);
    c.submit(job, 0, nums(100_000));
    c.seal(job);
    let probe = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    assert_eq!(probe.calls, 1);
    // Call time unknown: no second chunk before the probe answers.
    assert!(c.next_chunk(1, &limits(), Instant::now()).is_none());
    answer(&mut c, 1, probe.seq, 0, &[0]);
    let next = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    // 1 µs calls: the fair share (99,999 / 8) bounded by 5 ms worth.
    assert_eq!(next.calls, 5000);
    assert!(c.needs_background());
}

#[test]
fn cancel_while_chunks_run_drops_what_comes_back() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(3), false);
    c.submit(job, 0, nums(9));
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    assert!(c.cancel(job, false).is_empty());
    assert!(c.job_over(job));
    answer(&mut c, 1, chunk.seq, 0, &[0, 1, 2]);
    assert!(c.take_answers(job).is_none());
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn without_call_slots_a_death_mid_chunk_costs_the_unanswered_calls() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(8), true);
    c.submit(job, 0, nums(8));
    c.seal(job);
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, chunk.seq, 0, &[0, 1, 2, 3, 4]);
    let death = Error::Exited { pid: 7, code: 3 };
    assert_eq!(c.on_death(1, 7, death, LastStart::Unknown).lost, 3);
    let got = drain(&mut c, job);
    assert_eq!(got.len(), 8);
    for (i, r) in got {
        match i {
            0..=4 => assert_eq!(r.unwrap(), i as u64 * 10),
            _ => assert_eq!(r.unwrap_err().exit_code(), Some(3)),
        }
    }
    assert!(c.job_over(job));
}

#[test]
fn a_death_mid_chunk_costs_only_the_running_call() {
    let mut c = requeuing(0, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(8), true);
    c.submit(job, 0, nums(8));
    c.seal(job);
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, chunk.seq, 0, &[0, 1, 2, 3, 4]);
    let death = Error::Exited { pid: 7, code: 3 };
    let cost = c.on_death(1, 7, death, running(&chunk, 5));
    assert_eq!(
        cost,
        Cost {
            lost: 1,
            retried: 0,
            handed_back: 2
        }
    );
    c.add_worker(2, SlotState::Working);
    assert_eq!(run_rest(&mut c, 2), [6, 7], "the calls after it run again");
    let got = drain(&mut c, job);
    assert_eq!(got.len(), 8);
    for (i, r) in got {
        match i {
            5 => assert_eq!(r.unwrap_err().exit_code(), Some(3)),
            _ => assert_eq!(r.unwrap(), i as u64 * 10),
        }
    }
    assert!(c.job_over(job));
}

#[test]
fn held_chunks_not_started_go_back_to_the_queue() {
    let mut c = requeuing(0, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(3), true);
    probe(&mut c, 1, job, 100);
    c.submit(job, 0, nums(9));
    c.seal(job);
    let held = fill(&mut c, 1);
    assert_eq!(held.len(), 3, "pipelining: the worker holds every chunk");
    // It died in the first call of its first chunk.
    let death = Error::Killed {
        pid: 7,
        signal: crate::Signal::from_raw(libc::SIGABRT),
        core_dumped: false,
    };
    let cost = c.on_death(1, 7, death, running(&held[0], 0));
    assert_eq!((cost.lost, cost.retried, cost.handed_back), (1, 0, 8));
    c.add_worker(2, SlotState::Working);
    assert_eq!(
        run_rest(&mut c, 2),
        [1, 2, 3, 4, 5, 6, 7, 8],
        "in their order, not counted as retries"
    );
    let got = drain(&mut c, job);
    assert_eq!(got.len(), 10);
    for (i, r) in got {
        match i {
            0 => assert_eq!(r.unwrap_err().signal().map(|s| s.raw()), Some(libc::SIGABRT)),
            _ => assert_eq!(r.unwrap(), i as u64 * 10),
        }
    }
    assert!(c.job_over(job));
}

#[test]
fn calls_finished_but_not_reported_run_again() {
    let mut c = requeuing(0, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(4), true);
    probe(&mut c, 1, job, 100);
    c.submit(job, 0, nums(8));
    c.seal(job);
    let held = fill(&mut c, 1);
    assert_eq!(held.len(), 2);
    answer(&mut c, 1, held[0].seq, 0, &[0]);
    // It ran calls 1..4 of the first chunk and 4 of the second, and died in call 5:
    // none of those answers left it.
    let death = Error::Exited { pid: 7, code: 9 };
    let cost = c.on_death(1, 7, death, running(&held[1], 1));
    assert_eq!((cost.lost, cost.handed_back), (1, 6));
    c.add_worker(2, SlotState::Working);
    assert_eq!(run_rest(&mut c, 2), [1, 2, 3, 4, 6, 7]);
    let got = drain(&mut c, job);
    for (i, r) in got {
        match i {
            5 => assert_eq!(r.unwrap_err().exit_code(), Some(9)),
            _ => assert_eq!(r.unwrap(), i as u64 * 10, "call {i}"),
        }
    }
    assert!(c.job_over(job));
}

#[test]
fn a_death_between_calls_hands_everything_back_a_few_times_then_says_so() {
    let mut c = requeuing(0, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(2), true);
    c.submit(job, 0, nums(4));
    c.seal(job);
    let first = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, first.seq, 0, &[0, 1]);
    let second = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    assert_eq!(args_of(&second), [2, 3]);
    // The slot names call 1 of the first chunk, answered: the worker died after it,
    // before starting the second chunk. Nothing was running: nothing fails.
    let death = || Error::Exited { pid: 7, code: 71 };
    let cost = c.on_death(1, 7, death(), running(&first, 1));
    assert_eq!((cost.lost, cost.handed_back), (0, 2));
    // Workers that die before starting the chunk, again and again (a slot that never
    // named a call): handed back MAX_HANDBACKS times in all, then answered.
    for id in 2..=MAX_HANDBACKS as u64 {
        c.add_worker(id, SlotState::Working);
        let again = c.next_chunk(id, &limits(), Instant::now()).unwrap();
        assert_eq!(args_of(&again), [2, 3]);
        assert_eq!(c.on_death(id, 7, death(), LastStart::Nothing).handed_back, 2);
    }
    let last = MAX_HANDBACKS as u64 + 1;
    c.add_worker(last, SlotState::Working);
    assert!(c.next_chunk(last, &limits(), Instant::now()).is_some());
    assert_eq!(c.on_death(last, 7, death(), LastStart::Nothing).lost, 2);
    let got = drain(&mut c, job);
    for (i, r) in got {
        match (i, r) {
            (0 | 1, r) => assert_eq!(r.unwrap(), i as u64 * 10),
            (
                _,
                Err(
                    ref e @ Error::LostWithWorker {
                        running: None,
                        started: false,
                        ref cause,
                        ..
                    },
                ),
            ) => {
                assert_eq!(cause.exit_code(), Some(71));
                let msg = e.to_string();
                assert!(msg.contains("exited with code 71") && msg.contains("between calls"), "{msg}");
            }
            (_, r) => panic!("call {i}: {r:?}"),
        }
    }
    assert!(c.job_over(job));
}

#[test]
fn a_call_past_its_deadline_times_out_alone() {
    let mut c = requeuing(0, Some(Duration::from_millis(10)));
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(3), true);
    c.submit(job, 0, nums(3));
    c.seal(job);
    let t0 = Instant::now();
    let chunk = c.next_chunk(1, &limits(), t0).unwrap();
    assert_eq!(c.expired(t0 + Duration::from_millis(31)), vec![1]);
    let cost = c.on_death(1, 7, Error::PoolTerminated, running(&chunk, 1));
    assert_eq!((cost.lost, cost.handed_back), (1, 2));
    c.add_worker(2, SlotState::Working);
    assert_eq!(run_rest(&mut c, 2), [0, 2]);
    let got = drain(&mut c, job);
    assert!(got[1].1.as_ref().unwrap_err().is_timeout(), "{:?}", got[1].1);
    assert_eq!(*got[0].1.as_ref().unwrap(), 0);
    assert_eq!(*got[2].1.as_ref().unwrap(), 20);
}

#[test]
fn with_retries_the_running_call_runs_again_alone_and_the_rest_as_before() {
    let mut c = requeuing(1, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(4), true);
    c.submit(job, 0, nums(4));
    c.seal(job);
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    let cost = c.on_death(1, 7, Error::Exited { pid: 7, code: 1 }, running(&chunk, 1));
    assert_eq!((cost.lost, cost.retried, cost.handed_back), (0, 1, 3));
    c.add_worker(2, SlotState::Working);
    // The retry goes alone to an idle worker; the calls handed back travel together.
    let retry = c.next_chunk(2, &limits(), Instant::now()).unwrap();
    assert_eq!(args_of(&retry), [1]);
    assert!(c.next_chunk(2, &limits(), Instant::now()).is_none());
    answer(&mut c, 2, retry.seq, 0, &[1]);
    let rest = c.next_chunk(2, &limits(), Instant::now()).unwrap();
    assert_eq!(args_of(&rest), [0, 2, 3]);
    answer(&mut c, 2, rest.seq, 0, &[0, 2, 3]);
    let got = drain(&mut c, job);
    assert!(got.iter().all(|(i, r)| *r.as_ref().unwrap() == *i as u64 * 10));
}

#[test]
fn a_panic_under_panic_abort_answers_its_call_with_the_panic() {
    let mut c = requeuing(2, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(3), true);
    c.submit(job, 0, nums(3));
    c.seal(job);
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    c.on_aborting(
        1,
        Abort {
            seq: chunk.seq,
            index: 2,
            message: "boom".into(),
            location: None,
            backtrace: None,
        },
    );
    let death = Error::Killed {
        pid: 7,
        signal: crate::Signal::from_raw(libc::SIGABRT),
        core_dumped: false,
    };
    // Without the slot's word, the hook's report says which call it was.
    let cost = c.on_death(1, 7, death, LastStart::Unknown);
    assert_eq!((cost.lost, cost.retried, cost.handed_back), (1, 0, 2));
    c.add_worker(2, SlotState::Working);
    assert_eq!(run_rest(&mut c, 2), [0, 1]);
    let got = drain(&mut c, job);
    assert_eq!(got[2].1.as_ref().unwrap_err().panic_message(), Some("boom"));
}

#[test]
fn without_call_slots_with_retries_unanswered_calls_run_again_alone() {
    let mut c = core(1);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(4), true);
    c.submit(job, 0, nums(4));
    c.seal(job);
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, chunk.seq, 0, &[0]);
    let cost = c.on_death(1, 7, Error::PoolTerminated, LastStart::Unknown);
    assert_eq!((cost.lost, cost.retried), (0, 3));
    c.add_worker(2, SlotState::Working);
    let mut retried = Vec::new();
    while let Some(ch) = c.next_chunk(2, &limits(), Instant::now()) {
        assert_eq!(ch.calls, 1, "a retried call runs alone");
        let Data::Inline(bytes) = &ch.data else {
            panic!("inline")
        };
        let v: u32 = crate::wire::decode_task_value(bytes).unwrap();
        retried.push(v);
        answer(&mut c, 2, ch.seq, 0, &[v as usize]);
    }
    assert_eq!(retried, vec![1, 2, 3]);
    // A second death of a retried call is answered, not retried again.
    let job2 = c.open(ENTRY, ChunkSize::Fixed(1), true);
    c.submit(job2, 0, nums(1));
    c.seal(job2);
    let _ = c.next_chunk(2, &limits(), Instant::now()).unwrap();
    c.on_death(2, 8, Error::Exited { pid: 8, code: 1 }, LastStart::Unknown);
    c.add_worker(3, SlotState::Working);
    let again = c.next_chunk(3, &limits(), Instant::now()).unwrap();
    c.on_death(3, 9, Error::Exited { pid: 9, code: 2 }, LastStart::Unknown);
    let _ = again;
    let got = drain(&mut c, job2);
    assert_eq!(got[0].1.as_ref().unwrap_err().exit_code(), Some(2));
    assert_eq!(drain(&mut c, job).len(), 4);
}

#[test]
fn an_argument_over_the_limit_fails_alone_and_a_full_chunk_ends_early() {
    let sizes = [100usize, 2000, 600, 600];
    let blobs = sizes
        .iter()
        .map(|&n| serde_bytes::ByteBuf::from(vec![1u8; n]));
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(10), true);
    c.submit(job, 0, Box::new(Items::new(blobs.collect())));
    c.seal(job);
    let small = Limits {
        max_value: 1024,
        ..limits()
    };
    // Call 1 does not fit beside call 0: the chunk ends before it.
    let first = c.next_chunk(1, &small, Instant::now()).unwrap();
    assert_eq!(first.calls, 1);
    answer(&mut c, 1, first.seq, 0, &[0]);
    // Alone it is still over the limit: answered, for that call only; call 3 does not
    // fit beside call 2.
    let second = c.next_chunk(1, &small, Instant::now()).unwrap();
    assert_eq!(second.calls, 1);
    let got = drain(&mut c, job);
    assert!(
        matches!(got[1], (1, Err(Error::FrameTooLarge { .. }))),
        "{:?}",
        got[1].1
    );
    answer(&mut c, 1, second.seq, 0, &[2]);
    let third = c.next_chunk(1, &small, Instant::now()).unwrap();
    assert_eq!(third.calls, 1);
}

#[test]
fn a_deadline_marks_the_worker_and_its_death_answers_timeout() {
    let mut c = Core::new(Config {
        workers: 1,
        retries: 3,
        task_timeout: Some(Duration::from_millis(10)),
        max_tasks_per_child: None,
        pipeline: true,
        chunk_time: chunking::LOCAL,
    });
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Auto, true);
    c.submit(job, 0, nums(2));
    c.seal(job);
    let t0 = Instant::now();
    let chunk = c.next_chunk(1, &limits(), t0).unwrap();
    assert_eq!(chunk.calls, 1);
    assert!(
        c.next_chunk(1, &limits(), t0).is_none(),
        "no pipelining under a timeout"
    );
    assert_eq!(c.next_deadline(), Some(t0 + Duration::from_millis(10)));
    assert!(c.expired(t0).is_empty());
    assert_eq!(c.expired(t0 + Duration::from_millis(11)), vec![1]);
    c.on_death(1, 5, Error::PoolTerminated, LastStart::Unknown);
    let got = drain(&mut c, job);
    assert!(got[0].1.as_ref().unwrap_err().is_timeout());
}

#[test]
fn a_broken_pool_answers_pending_and_future_calls() {
    let mut c = core(0);
    let job = c.open(ENTRY, ChunkSize::Auto, true);
    c.submit(job, 0, nums(3));
    c.break_pool(Error::Initializer {
        message: "no".into(),
    });
    c.submit(job, 3, nums(2));
    c.seal(job);
    let got = drain(&mut c, job);
    assert_eq!(got.len(), 5);
    assert!(
        got.iter()
            .all(|(_, r)| matches!(r, Err(Error::Initializer { .. })))
    );
    assert!(c.job_over(job));
}

#[test]
fn answers_that_do_not_fit_are_refused() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(2), true);
    c.submit(job, 0, nums(2));
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    let bad = |c: &mut Core, seq, first, n| {
        c.on_done(
            1,
            7,
            seq,
            first,
            n,
            Vec::new(),
            0,
            Received::Inline(Vec::new(), 0),
            Vec::new(),
        )
    };
    assert!(bad(&mut c, chunk.seq + 1, 0, 1).is_err());
    assert!(bad(&mut c, chunk.seq, 1, 1).is_err());
    assert!(bad(&mut c, chunk.seq, 0, 3).is_err());
    // A malformed value decodes to errors, not a panic.
    c.on_done(
        1,
        7,
        chunk.seq,
        0,
        2,
        Vec::new(),
        0,
        Received::Inline(vec![0xff], 0),
        Vec::new(),
    )
    .unwrap();
    let got = drain(&mut c, job);
    assert!(got.iter().all(|(_, r)| r.is_err()));
}

#[test]
fn cancel_stops_only_workers_that_hold_nothing_else() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    c.add_worker(2, SlotState::Working);
    let a = c.open(ENTRY, ChunkSize::Fixed(1), false);
    let b = c.open(ENTRY, ChunkSize::Fixed(1), false);
    c.submit(a, 0, nums(1));
    c.submit(b, 0, nums(1));
    // Worker 1 runs a's call; worker 2 runs b's.
    c.next_chunk(1, &limits(), Instant::now()).unwrap();
    c.next_chunk(2, &limits(), Instant::now()).unwrap();
    assert!(c.running(a) && c.running(b));
    assert_eq!(c.cancel(a, true), vec![1]);
    assert!(c.job_over(a));
    // The doomed worker gets no more work, and its death costs b nothing.
    c.submit(b, 1, nums(1));
    assert!(c.next_chunk(1, &limits(), Instant::now()).is_none());
    assert_eq!(
        c.on_death(1, 7, Error::PoolTerminated, LastStart::Unknown).lost,
        0
    );
    assert!(c.running(b));
    // Cancelling what is already gone asks nothing of the workers.
    assert!(c.cancel(a, true).is_empty());
}

#[test]
fn a_worker_holding_another_jobs_chunk_is_not_killed_by_a_cancel() {
    let mut c = Core::new(Config {
        workers: 1,
        retries: 0,
        task_timeout: None,
        max_tasks_per_child: None,
        pipeline: true,
        chunk_time: chunking::LOCAL,
    });
    c.add_worker(1, SlotState::Working);
    let a = c.open(ENTRY, ChunkSize::Fixed(1), false);
    c.submit(a, 0, nums(1));
    let probe = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, probe.seq, 0, &[0]);
    // A call time is known now: the worker may hold a chunk of a and one of b.
    let b = c.open(ENTRY, ChunkSize::Fixed(1), false);
    c.submit(a, 1, nums(1));
    c.submit(b, 0, nums(1));
    let of_a = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    let of_b = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    assert!(c.cancel(a, true).is_empty());
    // a's answer is thrown away; b's, queued behind it, still counts.
    answer(&mut c, 1, of_a.seq, 0, &[1]);
    assert!(c.running(b));
    answer(&mut c, 1, of_b.seq, 0, &[0]);
    assert_eq!(drain(&mut c, b).len(), 1);
    assert_eq!(c.outstanding(), 0);
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

#[test]
fn a_sunk_job_hands_its_answers_over_and_leaves_when_over() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let sink = Arc::new(Collected::default());
    let job = c.open_sunk(ENTRY, ChunkSize::Fixed(2), sink.clone());
    assert!(!c.caller_driven(job));
    c.submit(job, 0, nums(2));
    c.seal(job);
    assert!(c.take_deliveries().is_empty());
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, chunk.seq, 0, &[0]);
    let due = c.take_deliveries();
    assert_eq!(due.len(), 1);
    due.into_iter().for_each(Delivery::hand_over);
    assert!(!c.job_over(job));
    answer(&mut c, 1, chunk.seq, 1, &[1]);
    c.take_deliveries()
        .into_iter()
        .for_each(Delivery::hand_over);
    assert!(c.job_over(job), "the last answer handed over ends the job");
    let got = std::mem::take(&mut *sink.0.lock().unwrap());
    let values: Vec<(usize, u64)> = got.into_iter().map(|(i, r)| (i, r.unwrap())).collect();
    assert_eq!(values, vec![(0, 0), (1, 10)]);
}

#[test]
fn a_sunk_job_of_a_broken_pool_is_answered_at_submit() {
    let mut c = core(0);
    c.break_pool(Error::PoolTerminated);
    let sink = Arc::new(Collected::default());
    let job = c.open_sunk(ENTRY, ChunkSize::Auto, sink.clone());
    c.submit(job, 0, nums(3));
    c.seal(job);
    c.take_deliveries()
        .into_iter()
        .for_each(Delivery::hand_over);
    assert!(c.job_over(job));
    let got = sink.0.lock().unwrap();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|(_, r)| matches!(r, Err(Error::PoolTerminated)))
    );
}

#[test]
fn only_a_working_worker_is_given_chunks() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Initializing);
    let job = c.open(ENTRY, ChunkSize::Fixed(1), true);
    c.submit(job, 0, nums(4));
    c.seal(job);
    let now = Instant::now();
    assert!(c.next_chunk(1, &limits(), now).is_none(), "initializing");
    c.initialized(1);
    let first = c.next_chunk(1, &limits(), now).unwrap();
    answer(&mut c, 1, first.seq, 0, &[0]);
    c.retire(1);
    assert!(c.next_chunk(1, &limits(), now).is_none(), "retiring");

    // A worker whose chunk timed out is being killed: nothing more goes to it.
    let mut c = requeuing(0, Some(Duration::from_millis(10)));
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(1), true);
    c.submit(job, 0, nums(4));
    let t0 = Instant::now();
    let chunk = c.next_chunk(1, &limits(), t0).unwrap();
    assert_eq!(c.expired(t0 + Duration::from_millis(11)), vec![1]);
    answer(&mut c, 1, chunk.seq, 0, &[0]);
    assert!(c.next_chunk(1, &limits(), t0).is_none(), "timed out");
    assert_eq!(c.next_deadline(), None);
}
