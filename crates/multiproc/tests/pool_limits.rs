//! Limits a pool must respect without losing or mislabelling calls: the descriptors one
//! `sendmsg` can carry, and a worker that dies halfway through a chunk.
//!
//! Every test runs under a [`Watchdog`] and waits for single answers with a timeout, so
//! a regression fails in seconds instead of hanging.
// Raw libc calls on processes (signals, limits) that the test or bench needs to make.
#![allow(unsafe_code)]

mod common;
mod watchdog;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use multiproc::{Array, ChunkSize, Error, Pool, Queue, Signal};
use watchdog::Watchdog;

/// The budget of a whole test, failing or not.
const BUDGET: Duration = Duration::from_secs(20);
/// How long one answer may take before the test calls it lost.
const ANSWER: Duration = Duration::from_secs(10);
/// The kernel's `SCM_MAX_FD`: the most descriptors one `sendmsg` may carry.
const SCM_MAX_FD: usize = 253;
/// Descriptors a `Queue` handle sends: its two sockets, its state and spill-log memory
/// files, and the eventfd that says the log holds items.
const FDS_PER_QUEUE: usize = 5;

fn pid() -> u32 {
    std::process::id()
}

fn whoami(_: ()) -> u32 {
    pid()
}

/// The pid of the worker that runs a trivial call, which on a 1-process pool is the
/// pool's only worker.
fn worker_pid(pool: &Pool) -> u32 {
    pool.apply_async(whoami, ())
        .and_then(|r| r.get_timeout(ANSWER))
        .expect("a trivial call")
}

fn assert_gone(pids: impl IntoIterator<Item = u32>) {
    for p in pids {
        assert!(
            common::wait_dead(p, Duration::from_secs(5)),
            "worker {p} outlived its pool"
        );
    }
}

/// The parent holds a duplicate of every queued call's descriptors until the call is
/// sent, which can be more than the soft limit many systems start with (1,024).
fn ensure_fd_limit(needed: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit, which `lim` is.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur >= needed {
        return;
    }
    // `needed` is the worst case (every call's descriptors duplicated at once); in
    // practice chunks are sent and answered as they are built, so half of it is plenty.
    assert!(
        lim.rlim_max >= needed / 2,
        "this test needs {needed} descriptors (at least half); the hard limit is {}",
        lim.rlim_max
    );
    lim.rlim_cur = needed.min(lim.rlim_max);
    // SAFETY: setrlimit reads one rlimit, which `lim` is.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

/// `(index, pid)`, after putting the index on the queue the argument carries.
fn put_index((q, i): (Queue<u32>, u32)) -> (u32, u32) {
    q.put(&i).expect("a put on a queue the parent drains");
    (i, pid())
}

/// 4,000 calls × 2 descriptors: automatic chunks grow far past what one `sendmsg` takes,
/// so a pool that sends a chunk's descriptors in one message fails most of the job.
#[test]
fn automatic_chunks_never_carry_more_descriptors_than_one_sendmsg_takes() {
    let _watchdog = Watchdog::new(
        "automatic_chunks_never_carry_more_descriptors_than_one_sendmsg_takes",
        BUDGET,
    );
    const CALLS: u32 = 4000;
    ensure_fd_limit(libc::rlim_t::from(CALLS) * FDS_PER_QUEUE as libc::rlim_t + 2048);
    let q = Queue::<u32>::new().unwrap();

    // A queue holds only so much: the parent must drain while the workers put.
    let finished = Arc::new(AtomicBool::new(false));
    let drainer = {
        let q = q.clone();
        let finished = finished.clone();
        std::thread::spawn(move || {
            let mut got = Vec::with_capacity(CALLS as usize);
            while got.len() < CALLS as usize {
                match q.get_timeout(Duration::from_millis(100)) {
                    Ok(v) => got.push(v),
                    // Every put that happened precedes its call's answer: once the job
                    // is over, an empty queue stays empty.
                    Err(e) if e.is_timeout() => {
                        if finished.load(Ordering::Acquire) {
                            break;
                        }
                    }
                    Err(e) => panic!("draining the queue: {e}"),
                }
            }
            got
        })
    };

    let pool = Pool::new(2).unwrap();
    let out = pool
        .map_results(put_index, (0..CALLS).map(|i| (q.clone(), i)))
        .unwrap();
    finished.store(true, Ordering::Release);
    let mut drained = drainer.join().expect("the drainer thread");

    assert_eq!(out.len(), CALLS as usize);
    let failed: Vec<(usize, &Error)> = out
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    let deaths = failed.iter().filter(|(_, e)| e.is_process_death()).count();
    if let Some((i, e)) = failed.first() {
        panic!(
            "{} of {CALLS} calls failed, {deaths} of them reported as a process death \
             (nothing in this test kills a worker); first: call {i}: {e}",
            failed.len()
        );
    }
    let mut workers = HashSet::new();
    for (i, r) in out.iter().enumerate() {
        let (v, w) = r.as_ref().unwrap();
        assert_eq!(*v, i as u32);
        workers.insert(*w);
    }
    assert!(
        workers.len() <= 2,
        "no worker died, yet {} served: {workers:?}",
        workers.len()
    );
    drained.sort_unstable();
    assert_eq!(drained.len(), CALLS as usize, "messages on the queue");
    assert_eq!(drained, (0..CALLS).collect::<Vec<_>>());
    assert!(
        matches!(q.try_get(), Err(Error::Empty { .. })),
        "more messages than calls"
    );
    drop(pool);
    assert_gone(workers);
}

fn count_queues(qs: Vec<Queue<u32>>) -> usize {
    qs.len()
}

/// A single argument no `sendmsg` can carry is the caller's mistake, found while
/// encoding it: the worker, which never saw it, must not pay for it.
#[test]
fn an_argument_with_more_descriptors_than_one_sendmsg_takes_is_refused_at_once() {
    let _watchdog = Watchdog::new(
        "an_argument_with_more_descriptors_than_one_sendmsg_takes_is_refused_at_once",
        BUDGET,
    );
    let pool = Pool::new(1).unwrap();
    let worker = worker_pid(&pool);

    // 50 queues = 250 descriptors: the most that fit.
    let fits = SCM_MAX_FD / FDS_PER_QUEUE;
    let queues: Vec<Queue<u32>> = (0..fits).map(|_| Queue::new().unwrap()).collect();
    let n = pool
        .apply_async(count_queues, queues)
        .and_then(|r| r.get_timeout(ANSWER))
        .unwrap_or_else(|e| panic!("{fits} queues ({} descriptors): {e}", fits * FDS_PER_QUEUE));
    assert_eq!(n, fits);
    assert_eq!(worker_pid(&pool), worker);

    // 200 queues = 1,000 descriptors: refused before any worker sees them, either by
    // `apply_async` itself or as the call's answer, at once (arguments are encoded
    // when their chunk is built).
    let queues: Vec<Queue<u32>> = (0..200).map(|_| Queue::new().unwrap()).collect();
    let t = Instant::now();
    let answer = pool
        .apply_async(count_queues, queues)
        .and_then(|pending| pending.get_timeout(ANSWER));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    match answer {
        Ok(n) => panic!("an argument with 1,000 descriptors ran ({n} queues)"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                matches!(e, Error::Encode { .. } | Error::Io { .. }),
                "expected Encode or Io, got {e:?}"
            );
            assert!(
                msg.contains(&SCM_MAX_FD.to_string()),
                "the error must say how many handles fit: {msg}"
            );
        }
    }
    assert_eq!(
        worker_pid(&pool),
        worker,
        "the worker was replaced over an argument it never received"
    );
    drop(pool);
    assert_gone([worker]);
}

/// Calls 0..=4 take 100 ms each, call 5 kills its own process, calls 6 and 7 are quick.
/// Every call counts its runs in `runs`, shared memory that outlives the worker.
fn die_at_five((runs, i): (Array<u64>, u32)) -> (u32, u32) {
    runs.fetch_add(i as usize, 1);
    match i {
        0..=4 => std::thread::sleep(Duration::from_millis(100)),
        5 => loop {
            // SAFETY: kill(2) with this process's own pid: the crash under test.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(10));
        },
        _ => {}
    }
    (i, pid())
}

type Dying = (Pool, Vec<Result<(u32, u32), Error>>, Vec<u64>);

/// One chunk of the 8 calls of [`die_at_five`] on a 1-process pool.
fn run_dying_chunk(retries: u32) -> Dying {
    let pool = Pool::builder()
        .processes(1)
        .chunk_size(ChunkSize::Fixed(8))
        .retries(retries)
        .build()
        .unwrap();
    let runs = Array::<u64>::new(8).unwrap();
    let out = pool
        .map_results(die_at_five, (0..8).map(|i| (runs.clone(), i)))
        .unwrap();
    assert_eq!(out.len(), 8);
    let counts = runs.to_vec().unwrap();
    (pool, out, counts)
}

fn killed_pid(r: &Result<(u32, u32), Error>, call: usize) -> u32 {
    match r {
        Err(e @ Error::Killed { pid, .. }) => {
            assert_eq!(e.signal(), Some(Signal::KILL), "call {call}: {e}");
            *pid
        }
        other => panic!("call {call}: expected Killed by SIGKILL, got {other:?}"),
    }
}

/// Answers a worker sent before it died are answers: the worker sends those of a
/// long-running chunk as they complete, not all at the end. Only the call it was running
/// fails; those after it in the chunk run on the next worker.
#[test]
fn a_worker_that_dies_mid_chunk_keeps_the_answers_it_already_sent() {
    let _watchdog = Watchdog::new(
        "a_worker_that_dies_mid_chunk_keeps_the_answers_it_already_sent",
        BUDGET,
    );
    let (pool, out, runs) = run_dying_chunk(0);
    let dead = killed_pid(&out[5], 5);
    for (i, r) in out.iter().enumerate().take(5) {
        match r {
            Ok((v, w)) => {
                assert_eq!(*v, i as u32);
                assert_eq!(*w, dead, "call {i} ran on another worker");
            }
            Err(e) => panic!("call {i} had finished before call 5 killed its worker: {e}"),
        }
    }
    // Held by the dead worker and never started: they went back to the queue (not a
    // retry: retries are 0) and ran on the new worker.
    let fresh = worker_pid(&pool);
    assert_ne!(fresh, dead);
    for i in [6, 7] {
        match &out[i] {
            Ok((v, w)) => {
                assert_eq!(*v, i as u32);
                assert_eq!(
                    *w, fresh,
                    "call {i} ran on the worker that replaced the dead one"
                );
            }
            Err(e) => panic!("call {i} had not started when call 5 killed its worker: {e}"),
        }
    }
    assert_eq!(runs, [1, 1, 1, 1, 1, 1, 1, 1], "runs per call");
    drop(pool);
    assert_gone([dead, fresh]);
}

/// With a retry, only the calls the dead worker had not answered run again: what it had
/// sent is not run a second time.
#[test]
fn with_retries_only_unanswered_calls_of_a_dead_worker_run_again() {
    let _watchdog = Watchdog::new(
        "with_retries_only_unanswered_calls_of_a_dead_worker_run_again",
        BUDGET,
    );
    let (pool, out, runs) = run_dying_chunk(1);
    assert_eq!(
        runs,
        [1, 1, 1, 1, 1, 2, 1, 1],
        "runs per call: answered calls run once, call 5 twice, 6 and 7 once"
    );
    // Call 5 kills every worker it runs on: its retry fails the same way.
    let retried_on = killed_pid(&out[5], 5);
    let mut first = None;
    for (i, r) in out.iter().enumerate().take(5) {
        match r {
            Ok((v, w)) => {
                assert_eq!(*v, i as u32);
                assert_eq!(
                    *first.get_or_insert(*w),
                    *w,
                    "call {i}: one chunk, one worker"
                );
            }
            Err(e) => panic!("call {i}: {e}"),
        }
    }
    let first = first.expect("calls 0..=4 answered");
    assert_ne!(retried_on, first, "call 5 was retried on a new worker");
    for i in [6, 7] {
        match &out[i] {
            Ok((v, w)) => {
                assert_eq!(*v, i as u32);
                assert_ne!(
                    *w, first,
                    "call {i} cannot have run on the worker that died"
                );
            }
            Err(e) => panic!("call {i}, held by the dead worker, had a retry left: {e}"),
        }
    }
    let fresh = worker_pid(&pool);
    assert!(fresh != first && fresh != retried_on);
    drop(pool);
    assert_gone([first, retried_on, fresh]);
}

fn hold((q, i): (Queue<u32>, u32)) -> (u32, u32) {
    drop(q);
    (i, pid())
}

/// A chunk of 200 calls × 2 descriptors, as `ChunkSize::Fixed(200)` asks: the kernel
/// refuses to send it whole (EINVAL, over `SCM_MAX_FD`). Whatever the pool makes of
/// that (split the chunk, or fail its calls), it is no process death: nothing was
/// killed, and the worker, which received nothing, is not at fault.
#[test]
fn a_chunk_the_kernel_refuses_to_send_is_not_reported_as_a_kill() {
    let _watchdog = Watchdog::new(
        "a_chunk_the_kernel_refuses_to_send_is_not_reported_as_a_kill",
        BUDGET,
    );
    const CALLS: u32 = 200;
    let pool = Pool::builder()
        .processes(1)
        .chunk_size(ChunkSize::Fixed(CALLS as usize))
        .build()
        .unwrap();
    let worker = worker_pid(&pool);
    let q = Queue::<u32>::new().unwrap();
    let out = pool
        .map_results(hold, (0..CALLS).map(|i| (q.clone(), i)))
        .unwrap();
    assert_eq!(out.len(), CALLS as usize);
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok((v, w)) => {
                assert_eq!(*v, i as u32);
                assert_eq!(*w, worker, "call {i}: no worker died, yet another ran it");
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    !e.is_process_death(),
                    "call {i}: a send that failed is reported as a death: {msg}"
                );
                assert!(
                    matches!(
                        e,
                        Error::Io { .. } | Error::Encode { .. } | Error::FrameTooLarge { .. }
                    ),
                    "call {i}: expected Io, Encode or FrameTooLarge, got {e:?}"
                );
                let lower = msg.to_lowercase();
                assert!(
                    ["descriptor", "handle", "253", "scm_max_fd"]
                        .iter()
                        .any(|w| lower.contains(w)),
                    "call {i}: the error must name the cause (too many descriptors): {msg}"
                );
            }
        }
    }
    assert_eq!(
        worker_pid(&pool),
        worker,
        "the worker was replaced although nothing had reached it"
    );
    drop(pool);
    assert_gone([worker]);
}
