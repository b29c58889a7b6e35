//! Sentinels: `wait_ready` on processes, pipes and queues (Python's
//! `multiprocessing.connection.wait`), and `active_children`. Real processes, under
//! every start method.
// Raw libc calls on processes (signals, limits) that the test or bench needs to make.
#![allow(unsafe_code)]

mod common;

use std::time::{Duration, Instant};

use multiproc::{Error, Pipe, Process, Queue, StartMethod, active_children, wait_ready};

use common::start;

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

const NOW: Option<Duration> = Some(Duration::ZERO);
const LONG: Option<Duration> = Some(Duration::from_secs(20));

#[test]
fn three_processes_and_two_pipes() {
    for shift in 0..3 {
        let m = |i: usize| StartMethod::ALL[(i + shift) % 3];
        let what = format!("{}/{}/{}", m(0), m(1), m(2));
        let quick = start(m(0), sleep_ms, 300);
        let mut slow1 = start(m(1), sleep_ms, 60_000);
        let slow2 = start(m(2), sleep_ms, 60_000);
        let pids = [quick.pid(), slow1.pid(), slow2.pid()];
        let (mut a1, b1) = Pipe::<u32>::new().unwrap();
        let (mut a2, mut b2) = Pipe::<u32>::new().unwrap();

        // Nothing is ready yet.
        assert_eq!(
            wait_ready(&[&quick, &slow1, &slow2, &a1, &a2], NOW).unwrap(),
            [0usize; 0],
            "{what}"
        );
        // The quick one ends, and stays ready until joined.
        assert_eq!(
            wait_ready(&[&quick, &slow1, &slow2, &a1, &a2], None).unwrap(),
            [0],
            "{what}"
        );
        b2.send(&5).unwrap();
        assert_eq!(
            wait_ready(&[&quick, &slow1, &slow2, &a1, &a2], LONG).unwrap(),
            [0, 4],
            "{what}"
        );
        assert_eq!(quick.join().unwrap(), 300, "{what}");
        assert_eq!(a2.recv().unwrap(), 5);

        // A timeout with nothing ready: an empty answer, after the time given.
        let t = Instant::now();
        let ready = wait_ready(
            &[&slow1, &slow2, &a1, &a2],
            Some(Duration::from_millis(100)),
        );
        assert_eq!(ready.unwrap(), [0usize; 0], "{what}");
        assert!(t.elapsed() >= Duration::from_millis(100), "{what}");

        // A pipe whose other end is gone is ready: recv says Closed.
        drop(b1);
        assert_eq!(
            wait_ready(&[&slow1, &slow2, &a1, &a2], LONG).unwrap(),
            [2],
            "{what}"
        );
        assert!(matches!(a1.recv(), Err(Error::Closed { .. })), "{what}");

        // A killed process is ready (the closed pipe still is, too).
        slow2.kill().unwrap();
        assert_eq!(wait_ready(&[&slow1, &slow2], LONG).unwrap(), [1], "{what}");
        assert_eq!(
            wait_ready(&[&slow1, &slow2, &a1, &a2], NOW).unwrap(),
            [1, 2],
            "{what}"
        );
        assert!(slow2.join().unwrap_err().is_process_death(), "{what}");
        slow1.terminate().unwrap();
        assert_eq!(wait_ready(&[&slow1], LONG).unwrap(), [0], "{what}");
        assert!(!slow1.is_alive());
        drop(slow1);
        for pid in pids {
            assert!(common::stat(pid).is_none(), "{what}: {pid} left behind");
        }
    }
}

fn put_one((q, x): (Queue<u32>, u32)) {
    q.put(&x).unwrap();
}

#[test]
fn a_queue_is_ready_with_an_item_or_once_closed_everywhere() {
    for m in StartMethod::ALL {
        let q = Queue::<u32>::new().unwrap();
        assert_eq!(wait_ready(&[&q], NOW).unwrap(), [0usize; 0], "{m}");
        let p = start(m, put_one, (q.clone(), 9));
        assert_eq!(wait_ready(&[&q], LONG).unwrap(), [0], "{m}");
        assert_eq!(q.try_get().unwrap(), 9, "{m}");
        p.join().unwrap();
        assert_eq!(wait_ready(&[&q], NOW).unwrap(), [0usize; 0], "{m}");
        q.close();
        assert_eq!(wait_ready(&[&q], LONG).unwrap(), [0], "{m}");
        assert!(q.get().unwrap_err().is_closed(), "{m}");
    }
}

#[test]
fn an_empty_list_returns_at_once() {
    let t = Instant::now();
    assert!(wait_ready(&[], None).unwrap().is_empty());
    assert!(t.elapsed() < Duration::from_secs(1));
}

extern "C" fn nothing(_: libc::c_int) {}

#[test]
fn a_signal_does_not_end_the_wait() {
    // SAFETY: a handler that does nothing, installed without SA_RESTART so that the
    // signal interrupts poll with EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let slow = start(StartMethod::ForkServer, sleep_ms, 60_000);
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let poker = std::thread::spawn(move || {
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(40));
            // SAFETY: `me` is the test thread, which outlives this thread (it joins it).
            unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
        }
    });
    let t = Instant::now();
    let ready = wait_ready(&[&slow], Some(Duration::from_millis(400))).unwrap();
    assert!(ready.is_empty(), "{ready:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    poker.join().unwrap();
}

fn children_here(_: ()) -> usize {
    active_children().len()
}

#[test]
fn active_children_lists_running_children_and_reaps_nothing() {
    for m in StartMethod::ALL {
        let name = format!("sleeper-{m}");
        let mut slow = Process::builder()
            .name(&name)
            .start_method(m)
            .start(sleep_ms, 60_000)
            .unwrap();
        let quick = Process::builder()
            .name(format!("quick-{m}"))
            .start_method(m)
            .start(sleep_ms, 0)
            .unwrap();
        let listed = active_children();
        assert!(
            listed.iter().any(|c| c.pid == slow.pid() && c.name == name),
            "{m}: {listed:?}"
        );
        // Once it ended it is not listed, and it is still there to be joined.
        assert_eq!(wait_ready(&[&quick], LONG).unwrap(), [0], "{m}");
        assert!(
            active_children().iter().all(|c| c.pid != quick.pid()),
            "{m}"
        );
        assert_eq!(common::stat(quick.pid()).map(|s| s.0), Some('Z'), "{m}");
        assert_eq!(quick.join().unwrap(), 0, "{m}");

        // A child has no children of its own, whatever its parent has.
        for child_method in StartMethod::ALL {
            assert_eq!(start(child_method, children_here, ()).join().unwrap(), 0);
        }

        slow.kill().unwrap();
        assert!(slow.join_timeout(Duration::from_secs(10)).is_err());
        assert!(active_children().iter().all(|c| c.pid != slow.pid()), "{m}");
        drop(slow);
    }
}

fn pid_of_worker(_: ()) -> u32 {
    std::process::id()
}

#[test]
fn active_children_lists_pool_workers_too() {
    let pool = multiproc::Pool::new(2).unwrap();
    let worker = pool.apply(pid_of_worker, ()).unwrap();
    let listed = active_children();
    let entry = listed
        .iter()
        .find(|c| c.pid == worker)
        .expect("the worker is listed");
    assert!(entry.name.starts_with("PoolWorker-"), "{entry:?}");
    drop(pool);
    assert!(active_children().iter().all(|c| c.pid != worker));
}
