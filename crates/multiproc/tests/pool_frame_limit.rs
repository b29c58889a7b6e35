//! The frame limit in a pool: `set_max_frame_size` bounds each encoded argument and each
//! result, so a value over it fails that one call (no worker dies for it), values under
//! it go through however many share a chunk, and the limit that counts is the one in
//! force when the call is made, not when the pool was built.
//!
//! Its own test binary, because the limit is process-wide. The tests take one lock so
//! that they run one at a time, and each restores the default even when it fails.

mod common;
mod watchdog;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use multiproc::{
    ChunkSize, DEFAULT_MAX_FRAME_SIZE, Error, Pool, max_frame_size, set_max_frame_size,
};
use serde_bytes::ByteBuf;
use watchdog::Watchdog;

/// The budget of a whole test, failing or not.
const BUDGET: Duration = Duration::from_secs(20);
/// How long one answer may take before the test calls it lost.
const ANSWER: Duration = Duration::from_secs(10);
const MIB: usize = 1 << 20;
/// The limit the tests set: small enough that values over it are cheap to make.
const LIMIT: usize = MIB;

static SERIAL: Mutex<()> = Mutex::new(());

/// Exclusive use of the process-wide limit for one test; the default comes back on drop.
struct Limit {
    _serial: MutexGuard<'static, ()>,
}

impl Limit {
    fn take() -> Self {
        // A test that failed holding the lock has restored the limit all the same.
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(max_frame_size(), DEFAULT_MAX_FRAME_SIZE);
        Limit { _serial: serial }
    }

    fn set(&self, bytes: usize) {
        set_max_frame_size(bytes);
        assert_eq!(max_frame_size(), bytes);
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        // Runs before the lock is released (fields drop after this body).
        set_max_frame_size(DEFAULT_MAX_FRAME_SIZE);
    }
}

fn pid() -> u32 {
    std::process::id()
}

fn whoami(_: ()) -> u32 {
    pid()
}

fn worker_pid(pool: &Pool) -> u32 {
    pool.apply_async(whoami, ())
        .and_then(|r| r.get_timeout(ANSWER))
        .expect("a trivial call")
}

fn len_pid(b: ByteBuf) -> (usize, u32) {
    (b.len(), pid())
}

fn bytes_of(n: usize) -> ByteBuf {
    ByteBuf::from(vec![0xA5; n])
}

/// `LIMIT / 8` bytes, each `i as u8`.
fn eighth(i: u32) -> ByteBuf {
    ByteBuf::from(vec![i as u8; LIMIT / 8])
}

/// One call, its wait bounded.
fn apply<A, R>(pool: &Pool, f: fn(A) -> R, arg: A) -> Result<R, Error>
where
    A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    pool.apply_async(f, arg)?.get_timeout(ANSWER)
}

/// Checks that `r` is `FrameTooLarge` against [`LIMIT`]; returns its message. `r`
/// holds a length, not the value: a 2 MiB value would drown the failure message.
fn assert_too_large(r: Result<usize, &Error>, what: &str) -> String {
    match r {
        Err(e @ Error::FrameTooLarge { len, max, .. }) => {
            assert_eq!(*max, LIMIT as u64, "{what}: {e}");
            assert!(*len > LIMIT as u64, "{what}: {e}");
            e.to_string()
        }
        other => panic!("{what}: expected FrameTooLarge, got {}", describe(other)),
    }
}

fn describe(r: Result<usize, &Error>) -> String {
    match r {
        Ok(n) => format!("a value of {n} bytes"),
        Err(e) => format!("{e:?}"),
    }
}

/// A 2 MiB argument under a 1 MiB limit fails that call and nothing else: alone, and
/// as call 3 of a chunk of ten.
#[test]
fn an_argument_over_the_limit_fails_that_call_only_and_kills_no_worker() {
    let _watchdog = Watchdog::new(
        "an_argument_over_the_limit_fails_that_call_only_and_kills_no_worker",
        BUDGET,
    );
    let limit = Limit::take();
    limit.set(LIMIT);
    let pool = Pool::builder()
        .processes(1)
        .chunk_size(ChunkSize::Fixed(10))
        .build()
        .unwrap();
    let worker = worker_pid(&pool);

    let t = Instant::now();
    let r = apply(&pool, len_pid, bytes_of(2 * MIB));
    assert_too_large(r.as_ref().map(|(n, _)| *n), "a 2 MiB argument");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        worker_pid(&pool),
        worker,
        "a worker was replaced over an argument it never received"
    );

    let args = (0..10).map(|i| bytes_of(if i == 3 { 2 * MIB } else { 1000 + i }));
    let out = pool.map_results(len_pid, args).unwrap();
    assert_eq!(out.len(), 10);
    assert_too_large(out[3].as_ref().map(|(n, _)| *n), "call 3 of 10");
    for (i, r) in out.iter().enumerate() {
        if i != 3 {
            match r {
                Ok((n, w)) => {
                    assert_eq!(*n, 1000 + i, "call {i}");
                    assert_eq!(*w, worker, "call {i}: no worker died, yet another ran it");
                }
                Err(e) => panic!("call {i}, under the limit, failed: {e}"),
            }
        }
    }
    assert_eq!(worker_pid(&pool), worker);
    drop(pool);
    assert!(common::wait_dead(worker, Duration::from_secs(5)));
}

/// A 2 MiB result under a 1 MiB limit is `FrameTooLarge` for its call, which the error
/// names, and the other calls of its chunk are answered.
#[test]
fn a_result_over_the_limit_is_frame_too_large_and_names_its_call() {
    let _watchdog = Watchdog::new(
        "a_result_over_the_limit_is_frame_too_large_and_names_its_call",
        BUDGET,
    );
    let limit = Limit::take();
    limit.set(LIMIT);
    let pool = Pool::builder()
        .processes(1)
        .chunk_size(ChunkSize::Fixed(10))
        .build()
        .unwrap();
    let worker = worker_pid(&pool);

    let sizes = (0..10).map(|i| if i == 3 { 2 * MIB } else { 100 + i });
    let out = pool.map_results(bytes_of, sizes).unwrap();
    assert_eq!(out.len(), 10);
    let lens: Vec<Result<usize, Error>> = out.into_iter().map(|r| r.map(|b| b.len())).collect();
    let msg = assert_too_large(lens[3].as_ref().copied(), "the 2 MiB result of call 3");
    assert!(
        msg.contains("call 3") || msg.contains("task 3"),
        "the error must name the call (\"call 3\" or \"task 3\"): {msg}"
    );
    for (i, r) in lens.iter().enumerate() {
        if i != 3 {
            match r {
                Ok(n) => assert_eq!(*n, 100 + i, "call {i}"),
                Err(e) => panic!("call {i}, whose result is under the limit, failed: {e}"),
            }
        }
    }
    assert_eq!(
        worker_pid(&pool),
        worker,
        "a result too large to send must not cost the worker"
    );
    drop(pool);
    assert!(common::wait_dead(worker, Duration::from_secs(5)));
}

/// 64 values of `LIMIT / 8` in one chunk make 8 × the limit together, and each is well
/// under it: all of them go through, results and arguments alike.
#[test]
fn values_under_the_limit_go_through_however_many_share_a_chunk() {
    let _watchdog = Watchdog::new(
        "values_under_the_limit_go_through_however_many_share_a_chunk",
        BUDGET,
    );
    let limit = Limit::take();
    limit.set(LIMIT);
    let pool = Pool::builder()
        .processes(1)
        .chunk_size(ChunkSize::Fixed(64))
        .build()
        .unwrap();

    let out = pool.map_results(eighth, 0..64u32).unwrap();
    assert_eq!(out.len(), 64);
    let failed: Vec<(usize, &Error)> = out
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    if let Some((i, e)) = failed.first() {
        panic!(
            "{} of 64 results of {} KiB failed; first: call {i}: {e}",
            failed.len(),
            LIMIT / 8 / 1024
        );
    }
    for (i, r) in out.iter().enumerate() {
        let b = r.as_ref().unwrap();
        assert_eq!(b.len(), LIMIT / 8, "call {i}");
        assert!(b.iter().all(|&x| x == i as u8), "call {i}: wrong bytes");
    }

    let out = pool
        .map_results(len_pid, (0..64).map(|_| bytes_of(LIMIT / 8)))
        .unwrap();
    assert_eq!(out.len(), 64);
    let failed: Vec<(usize, &Error)> = out
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    if let Some((i, e)) = failed.first() {
        panic!(
            "{} of 64 arguments of {} KiB failed; first: call {i}: {e}",
            failed.len(),
            LIMIT / 8 / 1024
        );
    }
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r.as_ref().unwrap().0, LIMIT / 8, "call {i}");
    }
}

/// The limit is read when a call is made: a pool (and its worker) started under the
/// default obeys a smaller limit set afterwards, both ways.
#[test]
fn a_pool_built_before_the_limit_changed_obeys_the_new_limit() {
    let _watchdog = Watchdog::new(
        "a_pool_built_before_the_limit_changed_obeys_the_new_limit",
        BUDGET,
    );
    let limit = Limit::take();
    let pool = Pool::new(1).unwrap();
    // Under the default, 2 MiB goes both ways: the worker is up and knows no smaller
    // limit.
    let (n, worker) = apply(&pool, len_pid, bytes_of(2 * MIB)).unwrap();
    assert_eq!(n, 2 * MIB);
    assert_eq!(apply(&pool, bytes_of, 2 * MIB).unwrap().len(), 2 * MIB);

    limit.set(LIMIT);
    let arg = apply(&pool, len_pid, bytes_of(2 * MIB));
    let arg = arg.as_ref().map(|(n, _)| *n);
    let res = apply(&pool, bytes_of, 2 * MIB);
    let res = res.as_ref().map(|b| b.len());
    // Both outcomes in one message: one way can be right while the other is not.
    let too_large = |r: Result<usize, &Error>| matches!(r, Err(Error::FrameTooLarge { .. }));
    assert!(
        too_large(arg) && too_large(res),
        "after set_max_frame_size(1 MiB), expected FrameTooLarge both ways; \
         a 2 MiB argument gave {}, a 2 MiB result gave {}",
        describe(arg),
        describe(res)
    );
    assert_too_large(arg, "a 2 MiB argument after set_max_frame_size(1 MiB)");
    assert_too_large(res, "a 2 MiB result after set_max_frame_size(1 MiB)");
    // Under the new limit, calls still go through.
    let (n, _) = apply(&pool, len_pid, bytes_of(LIMIT / 2)).unwrap();
    assert_eq!(n, LIMIT / 2);
    assert_eq!(apply(&pool, bytes_of, LIMIT / 2).unwrap().len(), LIMIT / 2);
    let last = worker_pid(&pool);
    drop(pool);
    for p in [worker, last] {
        assert!(common::wait_dead(p, Duration::from_secs(5)), "worker {p}");
    }
}
