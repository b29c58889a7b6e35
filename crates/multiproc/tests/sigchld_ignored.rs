//! A program that ignores SIGCHLD (`signal(SIGCHLD, SIG_IGN)`, common in servers) gets
//! the same results, deaths and exit statuses as any other, under every start method.
//!
//! Its own test binary: the disposition of SIGCHLD belongs to the whole process. Every
//! test sets it first, so the order in which they run does not matter.

mod common;

use std::time::Duration;

use multiproc::{ChunkSize, Error, ExitStatus, Pool, Signal, StartMethod};

use common::start;

fn ignore_sigchld() {
    // SAFETY: SIG_IGN installs no handler; nothing runs in signal context.
    let previous = unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    assert_ne!(previous, libc::SIG_ERR);
}

/// Linux 6.15 and later keep a reaped child's exit status for its pidfd
/// (`PIDFD_INFO_EXIT`); before, with SIGCHLD ignored, it is lost.
fn kernel_keeps_status() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 15)
}

/// A death without an answer: what it was if the kernel kept it, else "lost" (never a
/// guess).
fn check_death(what: &str, err: &Error, expected: Option<ExitStatus>) {
    if kernel_keeps_status() {
        match expected {
            Some(ExitStatus::Signaled { signal, .. }) => {
                assert_eq!(err.signal(), Some(signal), "{what}: {err:?}")
            }
            Some(ExitStatus::Code(code)) => {
                assert_eq!(err.exit_code(), Some(code), "{what}: {err:?}")
            }
            None => unreachable!(),
        }
    } else {
        assert_eq!(err.signal(), None, "{what}: {err:?}");
        assert_eq!(err.exit_code(), None, "{what}: {err:?}");
        assert!(
            err.to_string().contains("exit status is lost"),
            "{what}: {err}"
        );
    }
}

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn exit_with(code: i32) -> u64 {
    std::process::exit(code)
}

fn pid_of_worker(_: u32) -> u32 {
    std::process::id()
}

/// `pid` is gone: not running, and not a zombie either.
fn reaped(pid: u32) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while common::stat(pid).is_some() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn join_returns_the_value() {
    ignore_sigchld();
    for m in StartMethod::ALL {
        let p = start(m, square, 12);
        let pid = p.pid();
        assert_eq!(p.join().unwrap_or_else(|e| panic!("{m}: {e}")), 144, "{m}");
        assert!(reaped(pid), "{m}: {pid} left behind");
    }
}

#[test]
fn deaths_are_reported_as_what_they_are() {
    ignore_sigchld();
    for m in StartMethod::ALL {
        let p = start(m, sleep_ms, 60_000);
        p.kill().unwrap();
        let killed = ExitStatus::Signaled {
            signal: Signal::KILL,
            core_dumped: false,
        };
        check_death(m.name(), &p.join().unwrap_err(), Some(killed));

        let mut p = start(m, exit_with, 3);
        let err = p.join_timeout(Duration::from_secs(20)).unwrap_err();
        check_death(m.name(), &err, Some(ExitStatus::Code(3)));
        let expected = kernel_keeps_status().then_some(ExitStatus::Code(3));
        assert_eq!(p.exitcode(), expected, "{m}");
        assert!(!p.is_alive(), "{m}");
    }
}

#[test]
fn exitcode_and_is_alive_see_the_end() {
    ignore_sigchld();
    for m in StartMethod::ALL {
        let mut p = start(m, sleep_ms, 60_000);
        assert!(p.is_alive(), "{m}");
        assert_eq!(p.exitcode(), None, "{m}");
        p.terminate().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while p.is_alive() {
            assert!(std::time::Instant::now() < deadline, "{m}: still alive");
            std::thread::sleep(Duration::from_millis(5));
        }
        let termed = ExitStatus::Signaled {
            signal: Signal::TERM,
            core_dumped: false,
        };
        let expected = kernel_keeps_status().then_some(termed);
        assert_eq!(p.exitcode(), expected, "{m}");
        let err = p.join_timeout(Duration::from_secs(5)).unwrap_err();
        check_death(m.name(), &err, Some(termed));
    }
}

fn crash_on(x: u32) -> u32 {
    if x == 5 {
        std::process::abort();
    }
    x * 2
}

#[test]
fn a_pool_maps_and_reports_a_dead_worker() {
    ignore_sigchld();
    for m in StartMethod::ALL {
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap_or_else(|e| panic!("{m}: {e}"));
        let out = pool
            .map(square, 0..50u64)
            .unwrap_or_else(|e| panic!("{m}: {e}"));
        assert_eq!(out, (0..50u64).map(|x| x * x).collect::<Vec<_>>(), "{m}");

        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .chunk_size(ChunkSize::Fixed(1))
            // The dying worker may hold the next calls too (pipelining): a retry runs
            // them again, and the crashing call crashes again.
            .retries(1)
            .build()
            .unwrap();
        let out = pool.map_results(crash_on, 0..10).unwrap();
        for (i, r) in out.iter().enumerate() {
            match i {
                5 => check_death(
                    m.name(),
                    r.as_ref().unwrap_err(),
                    Some(ExitStatus::Signaled {
                        signal: Signal::ABRT,
                        core_dumped: false,
                    }),
                ),
                _ => assert_eq!(*r.as_ref().unwrap(), 2 * i as u32, "{m}"),
            }
        }
        let mut workers = pool.map(pid_of_worker, 0..20).unwrap();
        workers.sort();
        workers.dedup();
        drop(pool);
        for pid in workers {
            assert!(reaped(pid), "{m}: worker {pid} left behind");
        }
    }
}
