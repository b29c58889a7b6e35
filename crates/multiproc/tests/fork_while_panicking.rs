//! Regression test: a Fork child made while another thread of the parent is inside a
//! panic hook must still run, and report, its task.
//!
//! The child used to install its panic hook with `std::panic::set_hook`, which takes
//! std's hook lock for writing. A thread of the parent that was panicking at the moment
//! of the fork held that lock for reading, and in the child that thread does not exist
//! to release it: the child hung forever, and so did the parent's `join`.
//!
//! Its own test binary: it installs a process-wide panic hook.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use multiproc::{Error, Process, StartMethod};

fn double(x: u64) -> u64 {
    x * 2
}

fn panics(_: ()) -> u64 {
    panic!("in the forked child")
}

/// While set, the test's hook holds std's hook lock for a while on the thread named
/// "slow-panic".
static SLOW: AtomicBool = AtomicBool::new(false);

/// Starts `f(args)` with Fork and joins it, giving up (and killing it) after 10 s.
fn fork_and_join<A, R>(f: fn(A) -> R, args: A) -> multiproc::Result<R>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut p = Process::builder()
        .start_method(StartMethod::Fork)
        .start(f, args)?;
    let r = p.join_timeout(Duration::from_secs(10));
    if r.as_ref().is_err_and(Error::is_timeout) {
        p.kill()?;
    }
    r
}

#[test]
fn fork_while_another_thread_is_in_a_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if SLOW.load(Ordering::Relaxed) && std::thread::current().name() == Some("slow-panic") {
            std::thread::sleep(Duration::from_millis(500));
            return;
        }
        default(info)
    }));
    // multiproc installs its own hook (chained to ours) on the first Fork start.
    let p = Process::builder()
        .start_method(StartMethod::Fork)
        .start(double, 1)
        .unwrap();
    assert_eq!(p.join().unwrap(), 2);

    SLOW.store(true, Ordering::Relaxed);
    let (inside, hook_entered) = mpsc::channel();
    let panicker = std::thread::Builder::new()
        .name("slow-panic".into())
        .spawn(move || {
            inside.send(()).unwrap();
            // Give the sender's wake-up a moment, then panic: the hook sleeps 500 ms.
            std::panic::catch_unwind(|| panic!("slow")).unwrap_err();
        })
        .unwrap();
    hook_entered.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));

    // Forked while "slow-panic" holds the hook lock: a plain task, and a panicking one.
    assert_eq!(fork_and_join(double, 21).unwrap(), 42);
    match fork_and_join(panics, ()) {
        Err(Error::Panicked {
            message, location, ..
        }) => {
            assert_eq!(message, "in the forked child");
            assert!(location.is_some());
        }
        other => panic!("a Fork child made during a panic elsewhere: {other:?}"),
    }
    panicker.join().unwrap();
    SLOW.store(false, Ordering::Relaxed);
}
