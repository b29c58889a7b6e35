//! The pool survives crashed, killed and hung workers, and accounts for every call.
// Raw libc calls on processes (signals, limits) that the test or bench needs to make.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use multiproc::prelude::*;
use multiproc::{Error, Signal};

fn pid() -> u32 {
    std::process::id()
}

/// Doubles `x` after ~1 ms of work, and says which worker did it.
fn slow_double(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(1));
    (x * 2, pid())
}

fn gone(p: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{p}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

type Answers = Vec<Result<(u64, u32), Error>>;

fn run_with_kills(retries: u32) -> (Answers, usize) {
    let pool = Pool::builder()
        .processes(2)
        .retries(retries)
        .build()
        .unwrap();
    let mut killed = HashSet::new();
    let mut out = Vec::with_capacity(5000);
    for (i, r) in pool.imap(slow_double, 0..5000u64).enumerate() {
        if let Ok((_, worker)) = &r
            && i % 200 == 100
            && killed.len() < 20
            && killed.insert(*worker)
        {
            // SAFETY: test code; kill(2) with a pid that this pool's worker has.
            unsafe { libc::kill(*worker as i32, libc::SIGKILL) };
        }
        out.push(r);
    }
    (out, killed.len())
}

#[test]
fn killed_workers_cost_only_their_calls() {
    let (out, kills) = run_with_kills(0);
    assert_eq!(out.len(), 5000);
    assert_eq!(kills, 20, "the test must kill 20 workers");
    let mut errors = 0;
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok((v, _)) => assert_eq!(*v, 2 * i as u64),
            Err(e) => {
                assert_eq!(e.signal(), Some(Signal::KILL), "call {i}: {e}");
                errors += 1;
            }
        }
    }
    assert!(
        errors >= 1,
        "killing busy workers loses the calls they were running"
    );
    // Each kill costs the call its worker was running (none if it was between calls);
    // the other calls it held run on another worker.
    assert!(errors <= kills, "{errors} errors for {kills} kills");
}

#[test]
fn with_retries_every_call_succeeds() {
    let (out, kills) = run_with_kills(3);
    assert_eq!(kills, 20);
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r.as_ref().unwrap().0, 2 * i as u64);
    }
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn timeout_kills_the_call_and_the_pool_keeps_serving() {
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let t = Instant::now();
    let out = pool.map_results(sleep_ms, [5_000, 10, 20]).unwrap();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(out[0].as_ref().unwrap_err().is_timeout(), "{:?}", out[0]);
    assert_eq!(*out[1].as_ref().unwrap(), 10);
    assert_eq!(*out[2].as_ref().unwrap(), 20);
    assert_eq!(pool.apply(sleep_ms, 1).unwrap(), 1);
}

static INITS: AtomicU32 = AtomicU32::new(0);

fn init(step: u32) {
    INITS.fetch_add(step, Ordering::SeqCst);
}

fn inits(_: u32) -> (u32, u32) {
    std::thread::sleep(Duration::from_millis(2));
    (pid(), INITS.load(Ordering::SeqCst))
}

#[test]
fn initializer_runs_once_per_worker() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(init, 1)
        .chunk_size(ChunkSize::Fixed(1))
        .build()
        .unwrap();
    let out = pool.map(inits, 0..50).unwrap();
    let pids: HashSet<u32> = out.iter().map(|(p, _)| *p).collect();
    assert!(!pids.is_empty());
    for (p, n) in out {
        assert_eq!(n, 1, "worker {p} ran its initializer {n} times");
    }
}

fn bad_init(_: ()) {
    panic!("no database");
}

#[test]
fn an_initializer_that_always_fails_fails_the_calls_not_the_program() {
    let pool = Pool::builder()
        .processes(2)
        .initializer(bad_init, ())
        .build()
        .unwrap();
    let err = pool.apply(sleep_ms, 1).unwrap_err();
    assert!(err.to_string().contains("no database"), "{err}");
}

fn whoami(_: u32) -> u32 {
    pid()
}

#[test]
fn max_tasks_per_child_one_gives_fresh_workers() {
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let pids = pool.map(whoami, 0..20).unwrap();
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 20, "{pids:?}");
}

fn explode(x: u32) -> u32 {
    match x {
        3 => panic!("bad input {x}"),
        5 => {
            // SAFETY: none: a deliberate null-pointer write, to crash the worker with SIGSEGV.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
            x
        }
        _ => x,
    }
}

#[test]
fn panics_and_crashes_are_per_call() {
    for method in StartMethod::ALL {
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .chunk_size(ChunkSize::Fixed(1))
            // The crashing worker may hold the next calls too (pipelining): they go
            // back to the queue without a retry, and only the crashing call fails.
            .retries(0)
            .build()
            .unwrap();
        let out = pool.map_results(explode, 0..10).unwrap();
        for (i, r) in out.iter().enumerate() {
            match i {
                3 => assert_eq!(
                    r.as_ref().unwrap_err().panic_message(),
                    Some("bad input 3"),
                    "{method}"
                ),
                5 => assert_eq!(
                    r.as_ref().unwrap_err().signal(),
                    Some(Signal::SEGV),
                    "{method}"
                ),
                _ => assert_eq!(*r.as_ref().unwrap(), i as u32, "{method}"),
            }
        }
        let err = pool.map(explode, 0..10).unwrap_err();
        assert!(err.is_panic() || err.signal().is_some(), "{err}");
    }
}

#[test]
fn endless_imap_reads_its_input_lazily() {
    let pool = Pool::new(2).unwrap();
    let pulled = std::cell::Cell::new(0u64);
    let input = (0u64..).inspect(|_| pulled.set(pulled.get() + 1));
    let first: Vec<(u64, u32)> = pool
        .imap(slow_double_fast, input)
        .take(1000)
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(first.len(), 1000);
    assert!(
        first
            .iter()
            .enumerate()
            .all(|(i, (v, _))| *v == 2 * i as u64)
    );
    assert!(
        pulled.get() <= 1000 + 16384,
        "pulled {} items",
        pulled.get()
    );
}

fn slow_double_fast(x: u64) -> (u64, u32) {
    (x * 2, 0)
}

#[test]
fn dropping_a_pool_mid_work_leaves_no_process() {
    let pool = Pool::new(2).unwrap();
    let first: Vec<u32> = pool
        .imap(whoami, 0..1_000_000)
        .take(50)
        .map(|r| r.unwrap())
        .collect();
    let pending = pool.map_async(sleep_ms, [50, 50, 50]).unwrap();
    drop(pool);
    assert_eq!(pending.get().unwrap(), vec![50, 50, 50]);
    for p in first.into_iter().collect::<HashSet<_>>() {
        assert!(gone(p), "worker {p} outlived its pool");
    }
}

#[test]
fn terminate_answers_every_pending_call() {
    let pool = Pool::new(2).unwrap();
    let pending = pool.map_async(sleep_ms, vec![2_000; 6]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    pool.terminate();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(matches!(pending.get(), Err(Error::PoolTerminated)));
    assert!(matches!(pool.apply(sleep_ms, 1), Err(Error::PoolClosed)));
    pool.join().unwrap();
}

#[test]
fn thread_pool_has_the_same_interface() {
    let pool = ThreadPool::new(3).unwrap();
    assert_eq!(
        pool.map(slow_double_fast, 0..100).unwrap(),
        (0..100).map(slow_double_fast).collect::<Vec<_>>()
    );
    let got: Vec<u64> = pool
        .imap(slow_double_fast, 0..100)
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(got, (0..100).map(|x| 2 * x).collect::<Vec<_>>());
    let err = pool.apply(explode, 3).unwrap_err();
    assert_eq!(err.panic_message(), Some("bad input 3"));
    assert_eq!(pool.apply_async(whoami, 0).unwrap().get().unwrap(), pid());
}
