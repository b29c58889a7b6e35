//! The pool contract, written once: each check takes a [`Flavour`] (how to build its pool,
//! what it differs in on purpose) and runs against the pool it builds. `conformance.rs`
//! instantiates every check for every flavour with [`conformance!`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use multiproc::{Error, TaskPool, Wait, as_completed, wait};

/// Workers of every flavour's pool (the cluster's: its nodes' slots in all).
pub const WORKERS: usize = 2;

/// What a flavour documents as its own (see each pool's docs).
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// `AsyncResult::cancel` stops a running call (the process pool kills its worker);
    /// elsewhere the call runs to its end and its answer is thrown away.
    pub cancel_stops_running: bool,
    /// `terminate` stops running calls at once; elsewhere they run to their end (a
    /// thread cannot be killed; a node far away is not reached).
    pub terminate_stops_running: bool,
    /// After `terminate`, a call that was running still delivers its answer (the
    /// `ThreadPool`: "calls already running on a thread finish"); elsewhere it answers
    /// `Error::PoolTerminated` at once.
    pub terminate_delivers_running: bool,
}

/// One kind of pool under the contract.
pub trait Flavour {
    /// The pool.
    type P: TaskPool;
    /// What it differs in on purpose.
    const CAPS: Caps;
    /// Builds a pool of [`WORKERS`] workers, runs `f` on it, drops it, and checks that
    /// nothing of it is left behind.
    fn with_pool(f: impl FnOnce(&Self::P));
    /// Workers the pool reports now (`Pool::workers`, the cluster's slots, threads).
    fn workers(p: &Self::P) -> usize;
    /// Runs `check`, the test `test` (its path in this binary): here, or where the
    /// flavour needs it (the MPI flavour: this binary re-run under `mpirun`).
    fn run(test: &str, check: fn()) {
        let _ = test;
        check();
    }
}

pub fn double(x: u64) -> u64 {
    x * 2
}

/// Panics on 3, with a message that names the input.
pub fn boom(x: u64) -> u64 {
    if x == 3 {
        panic!("boom at {x}");
    }
    x
}

pub fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Creates the file `path` (so the test sees that the call ran); returns 1.
pub fn touch(path: String) -> u64 {
    std::fs::write(path, b"ran").unwrap();
    1
}

/// A directory of the test's own, removed on drop.
pub struct Dir(PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "multiproc-conformance-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    pub fn file(&self, i: usize) -> String {
        self.0.join(i.to_string()).to_string_lossy().into_owned()
    }
    pub fn count(&self) -> usize {
        std::fs::read_dir(&self.0).unwrap().count()
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn panic_named(e: &Error, what: &str) {
    assert!(e.is_panic(), "not a panic error: {e:?}");
    let m = e.panic_message().unwrap_or_default();
    assert!(
        m.contains(what),
        "panic message {m:?} does not name {what:?}"
    );
    assert!(
        e.to_string().contains(what),
        "error {e} does not name {what:?}"
    );
}

// ---- the checks -------------------------------------------------------------------

pub fn map_keeps_input_order<F: Flavour>() {
    F::with_pool(|p| {
        let n = 2_000u64;
        assert_eq!(
            p.map(double, 0..n).unwrap(),
            (0..n).map(double).collect::<Vec<_>>()
        );
        // Slow first inputs do not reorder the results.
        assert_eq!(p.map(nap, [60, 30, 0, 0]).unwrap(), vec![60, 30, 0, 0]);
        // A tuple argument is Python's starmap.
        fn add((a, b): (u64, u64)) -> u64 {
            a + b
        }
        assert_eq!(p.map(add, [(1, 2), (3, 4)]).unwrap(), vec![3, 7]);
    });
}

pub fn map_results_keeps_every_call<F: Flavour>() {
    F::with_pool(|p| {
        let out = p.map_results(boom, 0..8u64).unwrap();
        assert_eq!(out.len(), 8);
        for (i, r) in out.iter().enumerate() {
            match r {
                Ok(v) => assert!(i != 3 && *v == i as u64, "call {i}: {v}"),
                Err(e) => {
                    assert_eq!(i, 3, "call {i} failed: {e}");
                    panic_named(e, "boom at 3");
                }
            }
        }
    });
}

pub fn a_panicking_task_names_its_panic_and_spares_the_others<F: Flavour>() {
    F::with_pool(|p| {
        let e = p.map(boom, 0..8u64).unwrap_err();
        panic_named(&e, "boom at 3");
        let e = p.apply(boom, 3).unwrap_err();
        panic_named(&e, "boom at 3");
        // The pool goes on: the same workers (or their replacements) answer.
        assert_eq!(p.apply(boom, 4).unwrap(), 4);
        assert_eq!(p.map(double, 0..100u64).unwrap().len(), 100);
        let h = p.apply_async(boom, 3).unwrap();
        panic_named(&h.get().unwrap_err(), "boom at 3");
    });
}

pub fn imap_yields_in_order_and_stays_a_bounded_window_ahead<F: Flavour>() {
    F::with_pool(|p| {
        assert_eq!(
            p.imap(nap, [60, 30, 0, 0])
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            vec![60, 30, 0, 0]
        );
        // An endless input: read only a window ahead of the consumer (the docs: "reads
        // items only as results are consumed (a bounded window ahead)"; the window is at
        // most 16,384 calls).
        let read = Arc::new(AtomicUsize::new(0));
        let counter = read.clone();
        let input = (0u64..).inspect(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let mut it = p.imap(double, input);
        for i in 0..10u64 {
            assert_eq!(it.next().unwrap().unwrap(), 2 * i);
        }
        let ahead = read.load(Ordering::Relaxed);
        assert!(ahead <= 16_384 + 10, "read {ahead} inputs for 10 results");
        // Nothing reads on while the consumer waits.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            read.load(Ordering::Relaxed),
            ahead,
            "imap read on by itself"
        );
        drop(it); // cancels the window
        assert_eq!(p.apply(double, 21).unwrap(), 42);
    });
}

pub fn imap_unordered_yields_every_result_once<F: Flavour>() {
    F::with_pool(|p| {
        let mut back = vec![None; 500];
        for (i, r) in p.imap_unordered(double, 0..500u64).indexed() {
            assert!(back[i].replace(r.unwrap()).is_none(), "index {i} twice");
        }
        assert!(
            back.iter()
                .enumerate()
                .all(|(i, v)| *v == Some(2 * i as u64))
        );
        let mut sum = 0;
        for r in p.imap_unordered(boom, 0..6u64) {
            match r {
                Ok(v) => sum += v,
                Err(e) => panic_named(&e, "boom at 3"),
            }
        }
        assert_eq!(sum, 1 + 2 + 4 + 5);
    });
}

pub fn apply_async_gives_its_result_and_cancel_stops_it<F: Flavour>() {
    F::with_pool(|p| {
        let h = p.apply_async(double, 21).unwrap();
        assert_eq!(h.get().unwrap(), 42);
        let many = p.map_async(double, 0..10u64).unwrap();
        many.wait();
        assert!(many.ready() && many.successful() == Some(true));
        assert_eq!(many.get().unwrap(), (0..10).map(double).collect::<Vec<_>>());

        // A running call: cancelled, answers Cancelled at once, and the pool goes on.
        let ms = if F::CAPS.cancel_stops_running {
            60_000
        } else {
            300
        };
        let slow = p.apply_async(nap, ms).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !slow.running() {
            assert!(Instant::now() < deadline, "the call never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        assert!(slow.cancel());
        assert!(slow.cancel(), "cancel again: still cancelled");
        assert!(slow.cancelled() && slow.ready());
        assert!(matches!(
            slow.get_timeout(Duration::from_secs(5)),
            Err(Error::Cancelled)
        ));
        assert_eq!(p.apply(double, 1).unwrap(), 2);
        assert!(t.elapsed() < Duration::from_secs(30));

        // A completed call cannot be cancelled.
        let done = p.apply_async(double, 2).unwrap();
        done.wait();
        assert!(!done.cancel() && !done.cancelled());
        assert_eq!(done.get().unwrap(), 4);
    });
}

pub fn a_dropped_handle_cancels_its_queued_calls<F: Flavour>() {
    F::with_pool(|p| {
        let dir = Dir::new("drop");
        // Every worker busy for a while, then 20 calls queued behind them, dropped.
        let busy: Vec<_> = (0..WORKERS)
            .map(|_| p.apply_async(nap, 400).unwrap())
            .collect();
        let handles: Vec<_> = (0..20)
            .map(|i| p.apply_async(touch, dir.file(i)).unwrap())
            .collect();
        assert!(!handles[19].running(), "a queued call reported running");
        drop(handles);
        for b in busy {
            assert_eq!(b.get().unwrap(), 400);
        }
        // Whatever was still queued never runs (a worker may already hold a few).
        assert_eq!(p.map(nap, vec![0; 2 * WORKERS]).unwrap().len(), 2 * WORKERS);
        std::thread::sleep(Duration::from_millis(100));
        let ran = dir.count();
        assert!(ran < 20, "all 20 dropped calls ran");
        // A detached handle's call runs to its end.
        p.apply_async(touch, dir.file(100)).unwrap().detach();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dir.path().join("100").exists() {
            assert!(Instant::now() < deadline, "the detached call never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

pub fn wait_and_as_completed_see_completion_order<F: Flavour>() {
    F::with_pool(|p| {
        let handles = vec![
            p.apply_async(nap, 800).unwrap(),
            p.apply_async(nap, 0).unwrap(),
        ];
        let (done, pending) = wait(&handles, Wait::FirstCompleted, None);
        assert_eq!((done, pending), (vec![1], vec![0]));
        let (done, pending) = wait(&handles, Wait::AllCompleted, Some(Duration::from_secs(30)));
        assert_eq!((done, pending), (vec![0, 1], vec![]));

        let failing = vec![
            p.apply_async(nap, 800).unwrap(),
            p.apply_async(boom, 3).unwrap(),
        ];
        let (done, _) = wait(&failing, Wait::FirstError, None);
        assert_eq!(done, vec![1]);
        drop(failing);

        let handles = vec![
            p.apply_async(nap, 800).unwrap(),
            p.apply_async(nap, 0).unwrap(),
        ];
        let order: Vec<(usize, u64)> = as_completed(handles)
            .map(|(i, r)| (i, r.unwrap()))
            .collect();
        assert_eq!(order, vec![(1, 0), (0, 800)]);
    });
}

pub fn callbacks_run_with_the_result<F: Flavour>() {
    F::with_pool(|p| {
        let (tx, rx) = mpsc::channel();
        let ok = tx.clone();
        p.apply_async(double, 21)
            .unwrap()
            .callback(move |v| ok.send(format!("value {v}")).unwrap())
            .detach();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20)).unwrap(),
            "value 42"
        );

        let err = tx.clone();
        let h = p
            .apply_async(boom, 3)
            .unwrap()
            .callback(|_| panic!("callback on a failure"))
            .error_callback(move |e| err.send(format!("error {e}")).unwrap());
        let got = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(
            got.starts_with("error ") && got.contains("boom at 3"),
            "{got}"
        );
        assert!(h.get().is_err());

        let done = tx;
        let h = p.apply_async(double, 1).unwrap();
        h.on_done(move |r| done.send(format!("done {:?}", r.as_ref().ok())).unwrap());
        assert_eq!(h.get().unwrap(), 2);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20)).unwrap(),
            "done Some(2)"
        );

        // A callback that panics does not harm the pool.
        let h = p
            .apply_async(double, 5)
            .unwrap()
            .callback(|_| panic!("callback boom"));
        h.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.callback_panic().is_none() {
            assert!(
                Instant::now() < deadline,
                "the callback's panic was not reported"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(h.callback_panic().unwrap().contains("callback boom"));
        assert_eq!(p.apply(double, 3).unwrap(), 6);
    });
}

pub fn close_then_join_finishes_the_work<F: Flavour>() {
    F::with_pool(|p| {
        assert!(matches!(p.join(), Err(Error::PoolNotClosed)));
        let pending = p.map_async(nap, [100, 100, 100]).unwrap();
        p.close();
        p.close(); // idempotent
        let e = p.map(double, [1]).unwrap_err();
        assert!(matches!(e, Error::PoolClosed), "{e:?}");
        assert!(matches!(p.apply_async(double, 1), Err(Error::PoolClosed)));
        assert!(matches!(p.map_results(double, [1]), Err(Error::PoolClosed)));
        assert!(matches!(p.map_async(double, [1]), Err(Error::PoolClosed)));
        assert!(matches!(
            p.imap(double, [1]).next(),
            Some(Err(Error::PoolClosed))
        ));
        assert!(matches!(
            p.imap_unordered(double, [1]).next(),
            Some(Err(Error::PoolClosed))
        ));
        p.join().unwrap();
        assert_eq!(pending.get().unwrap(), vec![100, 100, 100]);
        p.join().unwrap(); // again
    });
}

pub fn terminate_answers_what_is_unfinished<F: Flavour>() {
    F::with_pool(|p| {
        assert_eq!(p.apply(double, 1).unwrap(), 2); // workers up
        let ms = if F::CAPS.terminate_stops_running {
            60_000
        } else {
            300
        };
        let running: Vec<_> = (0..WORKERS)
            .map(|_| p.apply_async(nap, ms).unwrap())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !running.iter().all(|h| h.running()) {
            assert!(Instant::now() < deadline, "the calls never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        let queued = p.map_async(nap, [0, 0, 0]).unwrap();
        let t = Instant::now();
        p.terminate();
        assert!(matches!(queued.get(), Err(Error::PoolTerminated)));
        for h in running {
            match h.get_timeout(Duration::from_secs(10)) {
                Ok(v) if F::CAPS.terminate_delivers_running => assert_eq!(v, ms),
                Err(Error::PoolTerminated) if !F::CAPS.terminate_delivers_running => {}
                other => panic!("a running call after terminate: {other:?}"),
            }
        }
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        let e = p.map(double, [1]).unwrap_err();
        assert!(matches!(e, Error::PoolClosed), "{e:?}");
        p.join().unwrap();
    });
}

pub fn workers_reports_the_workers<F: Flavour>() {
    F::with_pool(|p| {
        assert_eq!(p.map(double, 0..100u64).unwrap().len(), 100);
        let deadline = Instant::now() + Duration::from_secs(10);
        while F::workers(p) != WORKERS {
            assert!(
                Instant::now() < deadline,
                "{} workers, not {WORKERS}",
                F::workers(p)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

pub fn empty_input_gives_empty_output<F: Flavour>() {
    F::with_pool(|p| {
        let none: Vec<u64> = Vec::new();
        assert_eq!(p.map(double, none.clone()).unwrap(), Vec::<u64>::new());
        assert!(p.map_results(double, none.clone()).unwrap().is_empty());
        assert!(
            p.map_async(double, none.clone())
                .unwrap()
                .get()
                .unwrap()
                .is_empty()
        );
        assert_eq!(p.imap(double, none.clone()).count(), 0);
        assert_eq!(p.imap_unordered(double, none.clone()).count(), 0);
        fn add(a: u64, b: u64) -> u64 {
            a + b
        }
        assert_eq!(p.map_reduce(double, none, add).unwrap(), None);
        assert_eq!(p.map_reduce(double, 1..=3u64, add).unwrap(), Some(12));
    });
}

pub fn map_timeout_gives_up_and_the_pool_goes_on<F: Flavour>() {
    F::with_pool(|p| {
        let ms = if F::CAPS.cancel_stops_running {
            60_000
        } else {
            1_500
        };
        let t = Instant::now();
        let e = p
            .map_timeout(nap, [0, ms], Duration::from_millis(300))
            .unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        assert!(
            t.elapsed() < Duration::from_millis(1_400),
            "{:?}",
            t.elapsed()
        );
        let out = p
            .map_timeout(double, [1, 2], Duration::from_secs(30))
            .unwrap();
        assert_eq!(out, vec![2, 4]);
    });
}

/// Sleeps `ms`, then creates the file `path`; returns `ms`.
pub fn nap_touch((ms, path): (u64, String)) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(path, b"ran").unwrap();
    ms
}

/// A call given up (a map's timeout, a dropped imap) takes its queued calls with it.
pub fn a_map_given_up_drops_its_queued_calls<F: Flavour>() {
    F::with_pool(|p| {
        let dir = Dir::new("given-up");
        let n = 40;
        // Every worker's first call is long; the rest queue behind them.
        let items = |dir: &Dir| -> Vec<(u64, String)> {
            (0..n)
                .map(|i| (if i < WORKERS { 400 } else { 30 }, dir.file(i)))
                .collect()
        };
        let e = p
            .map_timeout(nap_touch, items(&dir), Duration::from_millis(100))
            .unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        std::thread::sleep(Duration::from_millis(1_000));
        let ran = dir.count();
        assert!(
            ran < n / 2,
            "map_timeout: {ran} of {n} calls ran after the timeout"
        );

        let dir = Dir::new("imap-dropped");
        let mut it = p.imap(nap_touch, items(&dir));
        let _ = it.next_timeout(Duration::from_millis(100));
        drop(it);
        std::thread::sleep(Duration::from_millis(1_000));
        let ran = dir.count();
        assert!(
            ran < n / 2,
            "imap dropped: {ran} of {n} calls ran after the drop"
        );
    });
}

pub fn imap_yields_a_failed_call_in_its_place<F: Flavour>() {
    F::with_pool(|p| {
        let out: Vec<_> = p.imap(boom, 0..6u64).collect();
        assert_eq!(out.len(), 6);
        for (i, r) in out.into_iter().enumerate() {
            match r {
                Ok(v) => assert!(i != 3 && v == i as u64),
                Err(e) => {
                    assert_eq!(i, 3, "{e}");
                    panic_named(&e, "boom at 3");
                }
            }
        }
        // map_async and map_reduce: the panic is the result.
        let e = p.map_async(boom, 0..6u64).unwrap().get().unwrap_err();
        panic_named(&e, "boom at 3");
        fn add(a: u64, b: u64) -> u64 {
            a + b
        }
        let e = p.map_reduce(boom, 0..6u64, add).unwrap_err();
        panic_named(&e, "boom at 3");
    });
}

pub fn a_handle_can_be_waited_on_with_a_timeout_and_awaited<F: Flavour>() {
    F::with_pool(|p| {
        let h = p.apply_async(nap, 400).unwrap();
        assert_eq!(h.successful(), None);
        let e = h.get_timeout(Duration::from_millis(10)).unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
        assert!(!h.wait_timeout(Duration::from_millis(10)));
        assert_eq!(h.get_timeout(Duration::from_secs(30)).unwrap(), 400);
        // Handed out once.
        assert!(matches!(
            h.get_timeout(Duration::from_secs(1)),
            Err(Error::PoolTerminated)
        ));
        // A future without a runtime of its own.
        let h = p.apply_async(double, 8).unwrap();
        assert_eq!(futures::executor::block_on(h).unwrap(), 16);
    });
}

pub fn handles_outlive_their_pool<F: Flavour>() {
    // Dropping a pool closes it and waits for the work already submitted (the process
    // pool's docs; every pool's Drop).
    let mut out = None;
    F::with_pool(|p| {
        out = Some(p.map_async(nap, [200, 100]).unwrap());
    });
    let h = out.unwrap();
    assert!(h.ready(), "the pool's drop returned before its work");
    assert_eq!(h.get().unwrap(), vec![200, 100]);
}

/// A value of several shapes, returned as it came.
type Shapes = (
    String,
    Vec<Option<i64>>,
    std::collections::BTreeMap<String, (u8, bool)>,
    Result<char, String>,
);

pub fn echo_shapes(v: Shapes) -> Shapes {
    v
}

pub fn echo_bytes(v: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    v
}

pub fn unit(_: ()) {}

pub fn values_of_every_shape_and_size_round_trip<F: Flavour>() {
    F::with_pool(|p| {
        let shapes: Shapes = (
            "héllo".into(),
            vec![Some(-1), None, Some(i64::MAX)],
            [("a".to_string(), (1, true))].into_iter().collect(),
            Err("no".into()),
        );
        assert_eq!(p.apply(echo_shapes, shapes.clone()).unwrap(), shapes);
        p.apply(unit, ()).unwrap();
        // Bigger than the process pool's 1 MiB inline limit (a memfd there).
        let big = serde_bytes::ByteBuf::from((0..3 << 20).map(|i| i as u8).collect::<Vec<u8>>());
        let back = p.map(echo_bytes, vec![big.clone(), big.clone()]).unwrap();
        assert!(back.iter().all(|b| *b == big));
    });
}

/// Instantiates every check of the contract for one flavour, as a module of tests.
macro_rules! conformance {
    ($module:ident, $flavour:ty) => {
        mod $module {
            use super::*;

            #[test]
            fn map_keeps_input_order() {
                <$flavour as Flavour>::run(
                    concat!(stringify!($module), "::map_keeps_input_order"),
                    contract::map_keeps_input_order::<$flavour>,
                );
            }
            #[test]
            fn map_results_keeps_every_call() {
                <$flavour as Flavour>::run(
                    concat!(stringify!($module), "::map_results_keeps_every_call"),
                    contract::map_results_keeps_every_call::<$flavour>,
                );
            }
            #[test]
            fn a_panicking_task_names_its_panic_and_spares_the_others() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::a_panicking_task_names_its_panic_and_spares_the_others"
                    ),
                    contract::a_panicking_task_names_its_panic_and_spares_the_others::<$flavour>,
                );
            }
            #[test]
            fn imap_yields_in_order_and_stays_a_bounded_window_ahead() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::imap_yields_in_order_and_stays_a_bounded_window_ahead"
                    ),
                    contract::imap_yields_in_order_and_stays_a_bounded_window_ahead::<$flavour>,
                );
            }
            #[test]
            fn imap_unordered_yields_every_result_once() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::imap_unordered_yields_every_result_once"
                    ),
                    contract::imap_unordered_yields_every_result_once::<$flavour>,
                );
            }
            #[test]
            fn apply_async_gives_its_result_and_cancel_stops_it() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::apply_async_gives_its_result_and_cancel_stops_it"
                    ),
                    contract::apply_async_gives_its_result_and_cancel_stops_it::<$flavour>,
                );
            }
            #[test]
            fn a_dropped_handle_cancels_its_queued_calls() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::a_dropped_handle_cancels_its_queued_calls"
                    ),
                    contract::a_dropped_handle_cancels_its_queued_calls::<$flavour>,
                );
            }
            #[test]
            fn wait_and_as_completed_see_completion_order() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::wait_and_as_completed_see_completion_order"
                    ),
                    contract::wait_and_as_completed_see_completion_order::<$flavour>,
                );
            }
            #[test]
            fn callbacks_run_with_the_result() {
                <$flavour as Flavour>::run(
                    concat!(stringify!($module), "::callbacks_run_with_the_result"),
                    contract::callbacks_run_with_the_result::<$flavour>,
                );
            }
            #[test]
            fn close_then_join_finishes_the_work() {
                <$flavour as Flavour>::run(
                    concat!(stringify!($module), "::close_then_join_finishes_the_work"),
                    contract::close_then_join_finishes_the_work::<$flavour>,
                );
            }
            #[test]
            fn terminate_answers_what_is_unfinished() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::terminate_answers_what_is_unfinished"
                    ),
                    contract::terminate_answers_what_is_unfinished::<$flavour>,
                );
            }
            #[test]
            fn workers_reports_the_workers() {
                <$flavour as Flavour>::run(
                    concat!(stringify!($module), "::workers_reports_the_workers"),
                    contract::workers_reports_the_workers::<$flavour>,
                );
            }
            #[test]
            fn empty_input_gives_empty_output() {
                <$flavour as Flavour>::run(
                    concat!(stringify!($module), "::empty_input_gives_empty_output"),
                    contract::empty_input_gives_empty_output::<$flavour>,
                );
            }
            #[test]
            fn map_timeout_gives_up_and_the_pool_goes_on() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::map_timeout_gives_up_and_the_pool_goes_on"
                    ),
                    contract::map_timeout_gives_up_and_the_pool_goes_on::<$flavour>,
                );
            }
            #[test]
            fn imap_yields_a_failed_call_in_its_place() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::imap_yields_a_failed_call_in_its_place"
                    ),
                    contract::imap_yields_a_failed_call_in_its_place::<$flavour>,
                );
            }
            #[test]
            fn a_handle_can_be_waited_on_with_a_timeout_and_awaited() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::a_handle_can_be_waited_on_with_a_timeout_and_awaited"
                    ),
                    contract::a_handle_can_be_waited_on_with_a_timeout_and_awaited::<$flavour>,
                );
            }
            #[test]
            fn a_map_given_up_drops_its_queued_calls() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::a_map_given_up_drops_its_queued_calls"
                    ),
                    contract::a_map_given_up_drops_its_queued_calls::<$flavour>,
                );
            }
            #[test]
            fn values_of_every_shape_and_size_round_trip() {
                <$flavour as Flavour>::run(
                    concat!(
                        stringify!($module),
                        "::values_of_every_shape_and_size_round_trip"
                    ),
                    contract::values_of_every_shape_and_size_round_trip::<$flavour>,
                );
            }
            #[test]
            fn handles_outlive_their_pool() {
                <$flavour as Flavour>::run(
                    concat!(stringify!($module), "::handles_outlive_their_pool"),
                    contract::handles_outlive_their_pool::<$flavour>,
                );
            }
        }
    };
}
pub(crate) use conformance;
