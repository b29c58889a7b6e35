//! Steering submitted work: cancel (queued, running, finished), handles that cancel
//! when dropped, waits on many handles, completion order, callbacks, and `.await`
//! from two executors — on the process pool and the thread pool.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use multiproc::prelude::*;
use multiproc::{Value, Wait, Waitable, as_completed, wait};

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn whoami(_: ()) -> u32 {
    std::process::id()
}

fn inc(x: u32) -> u32 {
    x + 1
}

fn fail_if_odd(x: u32) -> u32 {
    if x % 2 == 1 {
        panic!("odd input {x}");
    }
    x
}

/// Counts its start in `started`, sleeps `ms`, counts its end in `ended`.
fn counted((started, ended, ms): (Value<u64>, Value<u64>, u64)) -> u64 {
    started.fetch_add(1);
    std::thread::sleep(Duration::from_millis(ms));
    ended.fetch_add(1);
    ms
}

const LIMIT: Duration = Duration::from_secs(30);

/// Waits until `cond` holds, failing the test past `LIMIT`.
fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn cancel_a_queued_call_a_running_call_and_a_finished_call_on_a_process_pool() {
    let pool = Pool::new(1).unwrap();
    let first_pid = pool.apply(whoami, ()).unwrap();

    // A finished call: cancel is a no-op that says so.
    let done = pool.apply_async(inc, 1).unwrap();
    assert!(done.wait_timeout(LIMIT));
    assert!(!done.cancel());
    assert!(!done.cancelled());
    assert_eq!(done.get().unwrap(), 2);

    // A running call, and one queued behind it on the pool's only worker.
    let (started, ended) = (Value::new(0u64).unwrap(), Value::new(0u64).unwrap());
    let running = pool
        .apply_async(counted, (started.clone(), ended.clone(), 60_000))
        .unwrap();
    let queued = pool
        .apply_async(counted, (started.clone(), ended.clone(), 0))
        .unwrap();
    until("the long call runs", || {
        running.running() && started.load() == 1
    });
    assert!(!queued.running());

    assert!(queued.cancel());
    assert!(queued.cancelled() && queued.done());
    assert!(matches!(queued.get(), Err(Error::Cancelled)));

    assert!(running.cancel());
    assert!(running.cancelled());
    assert!(
        running.cancel(),
        "a second cancel: still cancelled, as Future.cancel says"
    );
    assert!(matches!(running.get(), Err(Error::Cancelled)));

    // Its worker was killed and replaced; the next call runs on the new one.
    assert!(
        common::wait_dead(first_pid, LIMIT),
        "the worker of the cancelled call still runs"
    );
    let next_pid = pool.apply(whoami, ()).unwrap();
    assert_ne!(next_pid, first_pid);
    assert_eq!(pool.apply(inc, 41).unwrap(), 42);
    // Neither cancelled call finished, and the queued one never started.
    assert_eq!((started.load(), ended.load()), (1, 0));
}

#[test]
fn cancel_on_a_thread_pool_removes_queued_calls_and_abandons_a_running_one() {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    fn tracked(ms: u64) -> u64 {
        STARTED.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
    let pool = ThreadPool::new(1).unwrap();
    let running = pool.apply_async(tracked, 300).unwrap();
    let queued = pool.apply_async(tracked, 0).unwrap();
    until("the first call runs", || running.running());
    assert!(queued.cancel());
    assert!(running.cancel(), "a running thread call can be abandoned");
    assert!(matches!(running.get(), Err(Error::Cancelled)));
    assert!(matches!(queued.get(), Err(Error::Cancelled)));
    // The abandoned call ran to its end on its thread; the queued one never ran.
    assert_eq!(pool.apply(tracked, 0).unwrap(), 0);
    assert_eq!(STARTED.load(Ordering::SeqCst), 2);
    let done = pool.apply_async(tracked, 0).unwrap();
    assert!(done.wait_timeout(LIMIT));
    assert!(!done.cancel());
}

#[test]
fn dropped_handles_cancel_their_calls_and_a_detached_one_runs_to_its_end() {
    let pool = Pool::new(2).unwrap();
    pool.apply(inc, 0).unwrap(); // workers up
    let (started, ended) = (Value::new(0u64).unwrap(), Value::new(0u64).unwrap());
    let handles: Vec<_> = (0..40)
        .map(|_| {
            pool.apply_async(counted, (started.clone(), ended.clone(), 50))
                .unwrap()
        })
        .collect();
    drop(handles);
    // At most one call per worker was handed out before the drop: those may finish.
    let (done_flag, never) = (Value::new(0u64).unwrap(), Value::new(0u64).unwrap());
    pool.apply_async(counted, (done_flag.clone(), never.clone(), 0))
        .unwrap()
        .detach();
    until("the detached call ran", || never.load() == 1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        started.load() <= 2,
        "{} of 40 dropped calls started",
        started.load()
    );
    assert_eq!(done_flag.load(), 1);

    // A map_async handle dropped cancels its map too.
    let (started, ended) = (Value::new(0u64).unwrap(), Value::new(0u64).unwrap());
    let args: Vec<_> = (0..40)
        .map(|_| (started.clone(), ended.clone(), 50))
        .collect();
    drop(pool.map_async(counted, args).unwrap());
    assert_eq!(pool.apply(inc, 1).unwrap(), 2);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        started.load() <= 4,
        "{} of 40 calls started",
        started.load()
    );
}

#[test]
fn wait_in_each_mode_on_handles_of_two_pools() {
    let procs = Pool::new(2).unwrap();
    let threads = ThreadPool::new(2).unwrap();
    let fast = procs.apply_async(nap, 1).unwrap();
    // A thread cannot be stopped: the pool's drop waits for this call to end.
    let slow = threads.apply_async(nap, 2_000).unwrap();
    let handles = [&fast, &slow];

    let (done, pending) = wait(&handles, Wait::FirstCompleted, Some(LIMIT));
    assert_eq!((done, pending), (vec![0], vec![1]));

    // Nothing failed: FirstError waits for all, so the timeout ends it.
    let t = Instant::now();
    let (done, pending) = wait(&handles, Wait::FirstError, Some(Duration::from_millis(200)));
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!((done, pending), (vec![0], vec![1]));

    // A failure on another pool ends a FirstError wait at once.
    let bad = procs.apply_async(fail_if_odd, 3).unwrap();
    let mixed: [&dyn Waitable; 3] = [&fast, &slow, &bad];
    let (done, pending) = wait(&mixed, Wait::FirstError, Some(LIMIT));
    assert_eq!((done, pending), (vec![0, 2], vec![1]));
    assert!(matches!(bad.get(), Err(Error::Panicked { .. })));

    // AllCompleted returns once the last one is done (cancelled, from another thread).
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            assert!(slow.cancel());
        });
        let (done, pending) = wait(&handles, Wait::AllCompleted, Some(LIMIT));
        assert_eq!((done, pending), (vec![0, 1], vec![]));
    });
    assert_eq!(fast.get().unwrap(), 1);
}

#[test]
fn as_completed_yields_a_fast_call_before_a_slow_one_submitted_earlier() {
    let pool = Pool::new(2).unwrap();
    let threads = ThreadPool::new(1).unwrap();
    let handles = vec![
        pool.apply_async(nap, 400).unwrap(),
        threads.apply_async(nap, 200).unwrap(),
        pool.apply_async(nap, 1).unwrap(),
    ];
    let got: Vec<(usize, u64)> = as_completed(handles)
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    assert_eq!(got, vec![(2, 1), (1, 200), (0, 400)]);

    // With a timeout it stops early and hands back what is left.
    let handles = vec![
        pool.apply_async(nap, 60_000).unwrap(),
        pool.apply_async(nap, 1).unwrap(),
    ];
    let mut it = as_completed(handles).timeout(Duration::from_millis(300));
    assert_eq!(it.next().map(|(i, r)| (i, r.unwrap())), Some((1, 1)));
    assert!(it.next().is_none());
    let left = it.remaining();
    assert_eq!(left.len(), 1);
    assert!(left[0].1.cancel());
}

#[test]
fn callbacks_run_once_with_the_result_and_a_panicking_one_is_reported() {
    let pool = Pool::new(2).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let tx3 = tx.clone();
    pool.apply_async(inc, 1)
        .unwrap()
        .callback(move |v| tx.send(format!("ok {v}")).unwrap())
        .error_callback(|_| unreachable!("it succeeds"))
        .detach();
    pool.apply_async(fail_if_odd, 1)
        .unwrap()
        .callback(|_| unreachable!("it fails"))
        .error_callback(move |e| {
            tx2.send(format!("err {}", e.panic_message().unwrap()))
                .unwrap()
        })
        .detach();
    let mut got = vec![
        rx.recv_timeout(LIMIT).unwrap(),
        rx.recv_timeout(LIMIT).unwrap(),
    ];
    got.sort();
    assert_eq!(got, vec!["err odd input 1", "ok 2"]);

    // A callback that panics: reported, and the pool and later callbacks carry on.
    let h = pool.apply_async(inc, 10).unwrap();
    h.on_done(|_| panic!("callback bug"));
    h.on_done(move |r| tx3.send(format!("after {}", r.as_ref().unwrap())).unwrap());
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "after 11");
    assert_eq!(h.callback_panic().as_deref(), Some("callback bug"));
    assert_eq!(h.get().unwrap(), 11);
    assert_eq!(pool.map(inc, 0..100).unwrap().len(), 100);

    // Registered after completion: runs at once, on this thread.
    let h = pool.apply_async(inc, 5).unwrap();
    h.wait();
    let here = std::thread::current().id();
    let (tx, rx) = mpsc::channel();
    h.on_done(move |r| {
        tx.send((std::thread::current().id(), *r.as_ref().unwrap()))
            .unwrap()
    });
    assert_eq!(rx.try_recv().unwrap(), (here, 6));
    // A callback may submit more work to the same pool, and wait on it.
    let (tx, rx) = mpsc::channel();
    let pool = std::sync::Arc::new(pool);
    let p2 = pool.clone();
    pool.apply_async(inc, 7)
        .unwrap()
        .callback(move |v| tx.send(p2.apply(inc, *v).unwrap()).unwrap())
        .detach();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), 9);
}

#[test]
fn handles_can_be_awaited_from_tokio_and_from_futures_executor() {
    let pool = Pool::new(2).unwrap();
    let threads = ThreadPool::new(2).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (a, b, c) = rt.block_on(async {
        let a = pool.apply_async(nap, 50).unwrap().await;
        let b = threads.apply_async(inc, 1).unwrap().await;
        let c = pool.map_async(inc, 0..1000).unwrap().await;
        (a, b, c)
    });
    assert_eq!(a.unwrap(), 50);
    assert_eq!(b.unwrap(), 2);
    assert_eq!(c.unwrap(), (1..=1000).collect::<Vec<_>>());

    let both = futures::executor::block_on(async {
        let x = pool.apply_async(inc, 1).unwrap();
        let y = pool.apply_async(fail_if_odd, 3).unwrap();
        (x.await, y.await)
    });
    assert_eq!(both.0.unwrap(), 2);
    assert!(matches!(both.1, Err(Error::Panicked { .. })));
    // A cancelled handle is ready with Error::Cancelled.
    let h = pool.apply_async(nap, 60_000).unwrap();
    assert!(h.cancel());
    assert!(matches!(
        futures::executor::block_on(h),
        Err(Error::Cancelled)
    ));
}

#[test]
fn a_callback_may_wait_on_a_handle_answered_in_the_same_round() {
    // Two handles answered together; the first one's callback waits on the second.
    let pool = std::sync::Arc::new(Pool::new(2).unwrap());
    for _ in 0..20 {
        let h1 = pool.apply_async(inc, 1).unwrap();
        let h2 = pool.apply_async(inc, 2).unwrap();
        let (tx, rx) = mpsc::channel();
        h1.on_done(move |r| {
            let second = h2.get().unwrap();
            tx.send((*r.as_ref().unwrap(), second)).unwrap();
        });
        h1.detach();
        assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (2, 3));
    }
}

#[test]
fn a_cancel_from_another_thread_wakes_a_waiter_that_leads_the_pool() {
    let pool = Pool::new(1).unwrap();
    let busy = pool.apply_async(nap, 2_000).unwrap();
    let queued = pool.apply_async(nap, 0).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            assert!(queued.cancel());
        });
        let t = Instant::now();
        queued.wait();
        assert!(
            t.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            t.elapsed()
        );
    });
    assert!(busy.cancel());
}

/// Fails at once if `fail`, else as `counted`.
fn fail_or_count((fail, started, ended, ms): (bool, Value<u64>, Value<u64>, u64)) -> u64 {
    assert!(!fail, "failing on purpose");
    counted((started, ended, ms))
}

#[test]
fn a_map_handle_that_failed_early_cancels_the_rest_when_dropped() {
    let pool = Pool::new(2).unwrap();
    pool.apply(inc, 0).unwrap();
    let (started, ended) = (Value::new(0u64).unwrap(), Value::new(0u64).unwrap());
    let args: Vec<_> = (0..40)
        .map(|i| (i == 0, started.clone(), ended.clone(), 50))
        .collect();
    let t = Instant::now();
    let h = pool.map_async(fail_or_count, args).unwrap();
    assert!(h.get().unwrap_err().is_panic());
    // The other 39 calls (about 1 s on 2 workers) do not all run: the drop cancelled them.
    drop(pool);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(
        started.load() < 39,
        "{} calls ran after the failure",
        started.load()
    );
}

/// Encodes as nothing; decoding it panics (a bug in a user's `Deserialize`).
struct PanicsOnDecode;

impl serde::Serialize for PanicsOnDecode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> serde::Deserialize<'de> for PanicsOnDecode {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("this Deserialize panics");
    }
}

fn makes_panics_on_decode(_: ()) -> PanicsOnDecode {
    PanicsOnDecode
}

#[test]
fn a_deserialize_that_panics_does_not_take_the_pool_with_it() {
    let pool = Pool::new(1).unwrap();
    let h = pool.apply_async(makes_panics_on_decode, ()).unwrap();
    let e = h.get_timeout(LIMIT).err().expect("an error, not a value");
    assert!(e.to_string().contains("this Deserialize panics"), "{e}");
    // The pool's threads carry on: async work and waited work both still run.
    let later = pool.apply_async(inc, 1).unwrap();
    assert_eq!(later.get_timeout(LIMIT).unwrap(), 2);
    assert_eq!(pool.apply(inc, 2).unwrap(), 3);
    let threads = ThreadPool::new(1).unwrap();
    assert_eq!(threads.apply(inc, 3).unwrap(), 4);
}
