//! A process pool when things go wrong: a worker that crashes costs only the call it
//! was running (the other calls it held run on another worker; the pool replaces it),
//! `retries` runs such a call again on another worker,
//! `task_timeout` kills a hung call's worker, `map_results` keeps every call's own
//! result, and submitted work can be waited on, taken in completion order, or
//! cancelled (`apply_async`, `wait`, `as_completed`, `cancel`).
//!
//! Run it: `cargo run --example pool_faults` (asserts what it prints; ends with `OK`;
//! about 3 seconds, most of it the hung call's timeout). In a crate of your own it
//! needs `libc` too, only to keep the crashing worker from writing a core file.
// Raw libc calls on processes (signals, limits) that the test or bench needs to make.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use multiproc::prelude::*;
use multiproc::{Signal, Value, Wait, as_completed, wait};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Dies as a failed assertion in a C library would: `abort()`, SIGABRT. (Marked not
/// dumpable first, so that no core file is left behind by the example.)
fn crash() -> ! {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes plain integers and changes only this
    // process's dumpable flag.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    std::process::abort()
}

/// Doubles `x`, except for three inputs: 7 panics, 13 crashes its worker, 21 hangs.
fn risky(x: u64) -> u64 {
    match x {
        7 => panic!("no sevens"),
        13 => crash(),
        21 => {
            std::thread::sleep(Duration::from_secs(600));
            x
        }
        _ => x * 2,
    }
}

/// Crashes its worker the first time it runs, succeeds when retried (a flaky
/// dependency). `attempts` lives in shared memory, so the count survives the crash.
fn flaky((x, attempts): (u64, Value<u32>)) -> u64 {
    if attempts.fetch_add(1) == 0 {
        crash();
    }
    x + 1
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The pids of the pool's live workers.
fn worker_pids(pool: &Pool) -> HashSet<u32> {
    pool.workers().into_iter().map(|w| w.pid).collect()
}

fn main() -> multiproc::Result<()> {
    multiproc::init(); // first line of main

    let pool = Pool::builder()
        .processes(2)
        .retries(1) // a call that killed its worker runs once more, alone, on a new worker
        .task_timeout(TIMEOUT) // a call running longer: its worker is killed, Error::Timeout
        .build()?; // workers start with the first work

    // as_completed: results in the order they finish, each with its index.
    let handles = vec![pool.apply_async(nap, 300)?, pool.apply_async(nap, 1)?];
    let order: Vec<(usize, u64)> = as_completed(handles)
        .map(|(i, r)| r.map(|ms| (i, ms)))
        .collect::<Result<_>>()?;
    println!("as_completed: {order:?}");
    assert_eq!(order, [(1, 1), (0, 300)]);
    let workers = pool.workers(); // pid, name, start time, calls answered, busy
    println!("workers: {workers:?}");
    assert_eq!(workers.len(), 2);
    assert_eq!(workers.iter().map(|w| w.calls).sum::<u64>(), 2);
    let first_workers = worker_pids(&pool);

    // wait: which of several handles are done; cancel: stop one that is running
    // (its worker is killed and replaced).
    let slow = pool.apply_async(nap, 60_000)?;
    let fast = pool.apply_async(nap, 1)?;
    let (done, pending) = wait(&[&slow, &fast], Wait::FirstCompleted, None);
    println!("wait: done {done:?}, pending {pending:?}");
    assert_eq!((done, pending), (vec![1], vec![0]));
    assert_eq!(fast.get()?, 1);
    assert!(!slow.done());
    assert!(slow.cancel());
    assert!(slow.cancelled());
    assert!(matches!(slow.get(), Err(Error::Cancelled)));

    // map_results: every call's own result. The panic, the crash and the hang cost
    // their own calls; the other 37 come back.
    let started = Instant::now();
    let results = pool.map_results(risky, 0..40)?;
    println!("map_results took {:?}", started.elapsed());
    for (x, r) in results.iter().enumerate() {
        match (x, r) {
            (7, Err(e)) => {
                println!("call 7:  {e}");
                assert!(matches!(e, Error::Panicked { .. }), "{e}");
                assert_eq!(e.panic_message(), Some("no sevens")); // panics are not retried
            }
            (13, Err(e)) => {
                // Crashed its worker, was retried on a new one, crashed that one too.
                println!("call 13: {e}");
                assert!(matches!(e, Error::Killed { .. }), "{e}");
                assert_eq!(e.signal(), Some(Signal::ABRT));
            }
            (21, Err(e)) => {
                println!("call 21: {e}");
                assert!(matches!(e, Error::Timeout { .. }), "{e}");
                assert!(e.is_timeout());
            }
            (_, Ok(v)) => assert_eq!(*v, 2 * x as u64),
            (_, Err(e)) => panic!("call {x} failed: {e}"),
        }
    }
    assert!(started.elapsed() >= TIMEOUT); // the hung call was given its full time

    // map: all or the first error (the rest of the map is cancelled).
    let err = pool.map(risky, 0..10).unwrap_err();
    println!("map:     {err}");
    assert!(err.is_panic());

    // A retry that succeeds: the first run kills its worker, the second answers.
    let attempts = Value::new(0u32)?;
    assert_eq!(pool.apply(flaky, (41, attempts.clone()))?, 42);
    assert_eq!(attempts.load(), 2);

    // The pool carries on: the workers killed by the cancel, the crashes and the
    // timeout were replaced.
    assert_eq!(
        pool.map(|x: u64| x * 3, 0..1000)?,
        (0..1000).map(|x| x * 3).collect::<Vec<_>>()
    );
    let now = worker_pids(&pool);
    println!("workers now: {now:?}");
    assert!(!now.is_empty() && now.len() <= 2, "{now:?}");
    assert_ne!(now, first_workers);

    pool.close();
    pool.join()?;
    let left = multiproc::active_children();
    assert!(left.is_empty(), "children still running: {left:?}");
    println!("OK");
    Ok(())
}
