//! Behaviours of Python's `multiprocessing` and `concurrent.futures` that multiproc
//! matches (issue 17, items 8-19), each with real processes; and where multiproc
//! deliberately differs, the test checks what it does instead.

mod common;

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use multiproc::prelude::*;
use multiproc::{Barrier, Error, Signal, Value, Wait};

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

// ---- 8: Process::interrupt --------------------------------------------------------

#[test]
fn interrupt_ends_a_child_by_sigint_under_every_method() {
    for m in StartMethod::ALL {
        let p = common::start(m, nap, 60_000);
        let t = Instant::now();
        p.interrupt().unwrap();
        let mut p = p;
        let e = match p.join_timeout(Duration::from_secs(10)) {
            Ok(_) => panic!("{m}: the child finished its task"),
            Err(e) if e.is_timeout() => panic!("{m}: the interrupt did not end the child"),
            Err(e) => e,
        };
        assert_eq!(e.signal(), Some(Signal::INT), "{m}: {e}");
        assert!(t.elapsed() < Duration::from_secs(10), "{m}");
    }
}

/// A SIGINT from anyone else (the terminal's Ctrl-C, `kill -INT`) is still dropped;
/// `interrupt` still works afterwards.
#[test]
fn only_interrupt_ends_a_child() {
    let mut p = common::start(StartMethod::ForkServer, nap, 60_000);
    common::send_signal(p.pid(), libc::SIGINT);
    assert!(
        p.join_timeout(Duration::from_millis(200))
            .unwrap_err()
            .is_timeout()
    );
    p.interrupt().unwrap();
    let e = p.join_timeout(Duration::from_secs(10)).unwrap_err();
    assert_eq!(e.signal(), Some(Signal::INT), "{e}");
}

// ---- 9: no daemon flag: an unjoined Process dies with its handle -------------------

#[test]
fn dropping_an_unjoined_process_kills_and_reaps_it() {
    for m in StartMethod::ALL {
        let p = common::start(m, nap, 60_000);
        let pid = p.pid();
        drop(p);
        assert!(common::stat(pid).is_none(), "{m}: {pid} left behind");
    }
}

// ---- 10: a child's default start method is the one that started it ---------------

/// In a child: its own default method, and how a child of its own started, by
/// default, reports its own.
fn methods(_: ()) -> (String, String, String) {
    let mine = multiproc::get_start_method();
    let grandchild = Process::start(|_: ()| multiproc::get_start_method().name().to_owned(), ())
        .expect("a grandchild starts");
    let how = grandchild.start_method().name().to_owned();
    let reports = grandchild.join().expect("a grandchild answers");
    (mine.name().to_owned(), how, reports)
}

#[test]
fn a_child_starts_its_children_as_it_was_started() {
    for m in StartMethod::ALL {
        let (mine, how, reports) = common::start(m, methods, ()).join().unwrap();
        assert_eq!(mine, m.name(), "{m}");
        assert_eq!(how, m.name(), "{m}: its child started another way");
        assert_eq!(reports, m.name(), "{m}: the grandchild");
    }
    // The parent's own default did not move.
    assert_eq!(multiproc::get_start_method(), StartMethod::ForkServer);
}

// ---- 11: a child's end flushes its output; a panic shows on its stderr -------------

fn prints(tag: String) {
    // No newline: Rust's stdout holds it until flushed.
    print!("<rust-{tag}> ");
    // C's stdout buffers fully under a pipe.
    let c = std::ffi::CString::new(format!("<c-{tag}>\n")).unwrap();
    common::c_printf(&c);
}

fn panics(_: ()) {
    panic!("told to panic");
}

/// Run by [`a_childs_end_flushes_what_it_printed`] in a process of its own whose stdout
/// and stderr are pipes (so that C's stdio buffers fully, as under a pipe in real use).
#[test]
fn inner_printer() {
    if std::env::var_os("PARITY_INNER").is_none() {
        return;
    }
    // Buffered by Rust before the fork: the parent's to write, once.
    print!("parent-partial ");
    for m in StartMethod::ALL {
        common::start(m, prints, m.name().to_owned())
            .join()
            .unwrap();
    }
    for m in StartMethod::ALL {
        let e = common::start(m, panics, ()).join().unwrap_err();
        assert!(e.is_panic());
    }
    println!();
}

#[test]
fn a_childs_end_flushes_what_it_printed() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "inner_printer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PARITY_INNER", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for m in StartMethod::ALL {
        for what in ["rust", "c"] {
            let tag = format!("<{what}-{}>", m.name());
            assert_eq!(stdout.matches(&tag).count(), 1, "{tag}:\n{stdout}");
        }
    }
    assert_eq!(
        stdout.matches("parent-partial").count(),
        1,
        "the parent's buffered output was written again by a child:\n{stdout}"
    );
    assert_eq!(
        stderr.matches("panicked at").count(),
        StartMethod::ALL.len(),
        "{stderr}"
    );
    assert!(stderr.contains("told to panic"), "{stderr}");
}

// ---- 12: parent_process ------------------------------------------------------------

fn my_parent(_: ()) -> Option<u32> {
    multiproc::parent_process().map(|p| p.pid)
}

/// Every child knows its parent; none can outlive it (see `tests/orphans.rs`), which
/// is why there is no `is_alive()` to poll.
#[test]
fn a_child_knows_its_parent() {
    for m in StartMethod::ALL {
        assert_eq!(
            common::start(m, my_parent, ()).join().unwrap(),
            Some(std::process::id()),
            "{m}"
        );
    }
}

// ---- 13: a pool of nothing is refused ----------------------------------------------

#[test]
fn zero_workers_or_tasks_per_child_are_refused() {
    let invalid = |r: Result<()>, what: &str| match r {
        Err(Error::InvalidArgument { detail }) => assert!(!detail.is_empty(), "{what}"),
        other => panic!("{what}: {other:?}"),
    };
    invalid(Pool::new(0).map(drop), "Pool::new(0)");
    invalid(
        Pool::builder().processes(0).build().map(drop),
        "processes(0)",
    );
    invalid(
        Pool::builder().max_tasks_per_child(0).build().map(drop),
        "max_tasks_per_child(0)",
    );
    invalid(ThreadPool::new(0).map(drop), "ThreadPool::new(0)");
    invalid(
        ThreadPool::builder().threads(0).build().map(drop),
        "threads(0)",
    );
    assert_eq!(Pool::new(1).unwrap().processes(), 1);
}

// ---- 14: initializer arguments with shared objects; lazy start -------------------

fn count_start(started: Value<u64>) {
    started.fetch_add(1);
}

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn an_initializer_takes_shared_objects() {
    for m in StartMethod::ALL {
        let started = Value::new(0u64).unwrap();
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .initializer(count_start, started.clone())
            .build()
            .unwrap();
        assert_eq!(pool.map(double, 0..10).unwrap()[9], 18, "{m}");
        pool.close();
        pool.join().unwrap();
        assert_eq!(started.load(), 2, "{m}: one initializer run per worker");
    }
}

/// Workers start with the first work: a pool closed without any starts none, and
/// runs its initializer nowhere (Python's starts them in its constructor).
#[test]
fn a_pool_closed_without_work_starts_no_worker() {
    let started = Value::new(0u64).unwrap();
    let pool = Pool::builder()
        .processes(2)
        .initializer(count_start, started.clone())
        .build()
        .unwrap();
    assert!(pool.workers().is_empty());
    pool.close();
    pool.join().unwrap();
    assert_eq!(started.load(), 0);
}

// ---- 15: close and join right after a failed map ----------------------------------

fn fail_first_then_big(i: u32) -> serde_bytes::ByteBuf {
    if i == 0 {
        panic!("the first call fails");
    }
    std::thread::sleep(Duration::from_millis(100));
    // Under 1 MiB: it travels through the socket, not as a memory file, and fills it.
    serde_bytes::ByteBuf::from(vec![7u8; 900 << 10])
}

#[test]
fn a_failed_map_does_not_stall_close_and_join() {
    let pool = Pool::builder()
        .processes(2)
        .chunk_size(ChunkSize::Fixed(1))
        .build()
        .unwrap();
    let e = pool.map(fail_first_then_big, 0..4).unwrap_err();
    assert!(e.is_panic(), "{e}");
    let t = Instant::now();
    pool.close();
    pool.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "close + join took {:?}",
        t.elapsed()
    );
}

// ---- 16: deadlines on lazy results and on map -------------------------------------

#[test]
fn imap_next_timeout_waits_at_most_its_deadline() {
    let pool = Pool::new(1).unwrap();
    let mut results = pool.imap(nap, [400, 1]);
    let t = Instant::now();
    let e = results.next_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(t.elapsed() < Duration::from_millis(350));
    // Nothing lost: the same result comes next.
    let first = results.next_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(first.unwrap().unwrap(), 400);
    assert_eq!(results.next().unwrap().unwrap(), 1);
    assert!(
        results
            .next_timeout(Duration::from_secs(1))
            .unwrap()
            .is_none()
    );
}

#[test]
fn map_timeout_answers_timeout_and_cancels_the_rest() {
    let pool = Pool::new(2).unwrap();
    let t = Instant::now();
    let e = pool
        .map_timeout(nap, [1, 60_000, 60_000], Duration::from_millis(300))
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // The stopped calls' workers were replaced: the pool serves at once.
    let t = Instant::now();
    assert_eq!(pool.map(nap, [1, 2]).unwrap(), vec![1, 2]);
    assert!(t.elapsed() < Duration::from_secs(5));
    pool.close();
    pool.join().unwrap();

    let threads = ThreadPool::new(2).unwrap();
    let e = threads
        .map_timeout(nap, [1, 500], Duration::from_millis(50))
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(
        threads
            .map_timeout(nap, [1, 2], Duration::from_secs(30))
            .unwrap(),
        vec![1, 2]
    );
}

// ---- 17: starmap is map with a tuple argument --------------------------------------

fn pow((base, exp): (u64, u32)) -> u64 {
    base.pow(exp)
}

#[test]
fn starmap_is_map_over_tuples() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(pow, [(2, 10), (3, 3)]).unwrap(), vec![1024, 27]);
    let h = pool.map_async(pow, [(5, 2)]).unwrap();
    assert_eq!(h.get().unwrap(), vec![25]);
}

// ---- 18: Barrier: action, default timeout, atomic reset ----------------------------

/// What the barrier's action counts, set in each process before it waits (an action
/// is a plain `fn()` and captures nothing).
static TRIPS: OnceLock<Value<u64>> = OnceLock::new();

fn count_trip() {
    if let Some(v) = TRIPS.get() {
        v.fetch_add(1);
    }
}

fn wait_rounds((barrier, trips, rounds): (Barrier, Value<u64>, u32)) -> Vec<u32> {
    let _ = TRIPS.set(trips);
    (0..rounds).map(|_| barrier.wait().unwrap()).collect()
}

#[test]
fn a_barrier_action_runs_once_per_round_in_the_tripping_process() {
    for m in StartMethod::ALL {
        let trips = Value::new(0u64).unwrap();
        let b = Barrier::new(3)
            .unwrap()
            .with_action(count_trip)
            .with_timeout(Duration::from_secs(30));
        let ps: Vec<_> = (0..3)
            .map(|_| common::start(m, wait_rounds, (b.clone(), trips.clone(), 4)))
            .collect();
        let indices: Vec<Vec<u32>> = ps.into_iter().map(|p| p.join().unwrap()).collect();
        assert_eq!(trips.load(), 4, "{m}: one action per round");
        for round in 0..4 {
            let mut seen: Vec<u32> = indices.iter().map(|v| v[round]).collect();
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2], "{m}: round {round}");
        }
    }
}

fn panicking_action() {
    panic!("the action fails");
}

#[test]
fn a_panicking_action_breaks_the_barrier() {
    let b = Barrier::new(1).unwrap().with_action(panicking_action);
    assert!(b.wait().unwrap_err().is_panic());
    assert!(b.is_broken());
    b.reset();
    assert!(!b.is_broken());
}

#[test]
fn a_barrier_default_timeout_breaks_it() {
    let b = Barrier::new(2)
        .unwrap()
        .with_timeout(Duration::from_millis(100));
    let t = Instant::now();
    assert!(matches!(b.wait(), Err(Error::BrokenBarrier)));
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(b.is_broken());
}

fn wait_once(b: Barrier) -> std::result::Result<u32, String> {
    b.wait_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())
}

#[test]
fn reset_breaks_every_waiter_and_leaves_a_usable_barrier() {
    for m in StartMethod::ALL {
        let b = Barrier::new(4).unwrap();
        let ps: Vec<_> = (0..3)
            .map(|_| common::start(m, wait_once, b.clone()))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.n_waiting() < 3 {
            assert!(Instant::now() < deadline, "{m}: the parties never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        b.reset();
        // Usable again right away: this round needs the parent plus three new parties.
        let next: Vec<_> = (0..3)
            .map(|_| common::start(m, wait_once, b.clone()))
            .collect();
        for p in ps {
            let r = p.join().unwrap();
            assert!(
                r.as_ref().is_err_and(|e| e.contains("broken")),
                "{m}: {r:?}"
            );
        }
        b.wait_timeout(Duration::from_secs(30)).unwrap();
        for p in next {
            assert!(p.join().unwrap().is_ok(), "{m}");
        }
        assert!(!b.is_broken(), "{m}");
    }
}

/// Threads hammering `reset` while others wait: a round either trips for all of its
/// parties or breaks for all of them, never a mix.
#[test]
fn a_reset_round_never_lets_some_parties_through() {
    for _ in 0..50 {
        let b = Barrier::new(3).unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || b.wait_timeout(Duration::from_secs(10)).is_ok())
            })
            .collect();
        while b.n_waiting() < 2 {
            std::thread::yield_now();
        }
        b.reset();
        let passed: Vec<bool> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(passed, vec![false, false]);
        assert!(!b.is_broken());
    }
}

// ---- 19: cancel is idempotent; FirstError ignores cancels -------------------------

#[test]
fn cancel_twice_says_cancelled_both_times() {
    let pool = Pool::new(1).unwrap();
    let h = pool.apply_async(nap, 60_000).unwrap();
    assert!(h.cancel());
    assert!(h.cancel(), "a cancelled handle is still cancelled");
    let done = pool.apply_async(nap, 1).unwrap();
    done.wait();
    assert!(!done.cancel(), "a finished handle cannot be cancelled");
}

#[test]
fn first_error_ignores_cancelled_handles() {
    let pool = Pool::new(2).unwrap();
    let slow = pool.apply_async(nap, 400).unwrap();
    let cancelled = pool.apply_async(nap, 60_000).unwrap();
    assert!(cancelled.cancel());
    let t = Instant::now();
    let (done, pending) = multiproc::wait(&[&slow, &cancelled], Wait::FirstError, None);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "returned on the cancel"
    );
    assert_eq!((done, pending), (vec![0, 1], vec![]));
    assert_eq!(slow.get().unwrap(), 400);
}
