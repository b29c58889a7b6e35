//! A crash costs the call that crashed, and nothing else: a worker that aborts in the
//! middle of a job answers that one call with its death; every other call it held (not
//! started yet, or run with its answer still in the worker) runs on another worker,
//! without `retries`. Under every start method.
// Raw libc calls the test needs (no core file for the deliberate aborts).
#![allow(unsafe_code)]

mod watchdog;

use std::time::Duration;

use multiproc::{ChunkSize, Error, Pool, Signal, StartMethod};
use watchdog::Watchdog;

/// The budget of a whole test, failing or not.
const BUDGET: Duration = Duration::from_secs(60);

/// Ends this process with SIGABRT, as a failed assertion in C code would, without
/// writing a core file.
fn abort_quietly() -> ! {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit struct that lives across the call.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
    std::process::abort()
}

/// ~1 ms of work; call 42 aborts.
fn slow_or_abort_at_42(x: u32) -> u32 {
    if x == 42 {
        abort_quietly();
    }
    std::thread::sleep(Duration::from_millis(1));
    x * 2
}

/// A tiny call; call 4,242 aborts.
fn tiny_or_abort_at_4242(x: u32) -> u32 {
    if x == 4242 {
        abort_quietly();
    }
    x.wrapping_mul(3)
}

/// Checks that `out` holds exactly one error, at `culprit`: the worker killed by
/// SIGABRT; and every other call's value, as `f` computes it.
fn exactly_one_abort(
    method: StartMethod,
    out: &[Result<u32, Error>],
    culprit: usize,
    f: fn(u32) -> u32,
) {
    let errors: Vec<(usize, &Error)> = out
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{method}: one call aborted, yet {} calls failed; the first: {:?}",
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    let (at, e) = errors[0];
    assert_eq!(at, culprit, "{method}: the wrong call failed: {e}");
    assert!(
        matches!(e, Error::Killed { .. }) && e.signal() == Some(Signal::ABRT),
        "{method}: call {at}: expected Killed by SIGABRT, got {e:?}"
    );
    for (i, r) in out.iter().enumerate() {
        if i != culprit {
            assert_eq!(*r.as_ref().unwrap(), f(i as u32), "{method}: call {i}");
        }
    }
}

#[test]
fn an_abort_among_200_calls_costs_one_call() {
    let _watchdog = Watchdog::new("an_abort_among_200_calls_costs_one_call", BUDGET);
    for method in StartMethod::ALL {
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .retries(0)
            .build()
            .unwrap();
        let out = pool.map_results(slow_or_abort_at_42, 0..200u32).unwrap();
        assert_eq!(out.len(), 200);
        exactly_one_abort(method, &out, 42, |x| x * 2);
    }
}

#[test]
fn an_abort_among_10000_tiny_calls_in_automatic_chunks_costs_one_call() {
    let _watchdog = Watchdog::new(
        "an_abort_among_10000_tiny_calls_in_automatic_chunks_costs_one_call",
        BUDGET,
    );
    for method in StartMethod::ALL {
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .chunk_size(ChunkSize::Auto)
            .retries(0)
            .build()
            .unwrap();
        let out = pool
            .map_results(tiny_or_abort_at_4242, 0..10_000u32)
            .unwrap();
        assert_eq!(out.len(), 10_000);
        exactly_one_abort(method, &out, 4242, |x| x.wrapping_mul(3));
    }
}

/// Sleeps `ms` milliseconds.
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Chunks of 4 calls under a `task_timeout`: the worker of the call that hangs holds
/// three others; they do not time out with it, they run again elsewhere.
#[test]
fn only_the_call_that_ran_too_long_times_out() {
    let _watchdog = Watchdog::new("only_the_call_that_ran_too_long_times_out", BUDGET);
    for method in StartMethod::ALL {
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .chunk_size(ChunkSize::Fixed(4))
            .task_timeout(Duration::from_millis(150))
            .build()
            .unwrap();
        let args = [1, 1, 10_000, 1, 1, 1, 1, 1];
        let out = pool.map_results(sleep_ms, args).unwrap();
        for (i, r) in out.iter().enumerate() {
            match i {
                2 => assert!(
                    r.as_ref().is_err_and(Error::is_timeout),
                    "{method}: call {i}: {r:?}"
                ),
                _ => assert_eq!(*r.as_ref().unwrap(), args[i], "{method}: call {i}"),
            }
        }
    }
}
