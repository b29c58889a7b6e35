//! A program that ignores SIGCHLD (`signal(SIGCHLD, SIG_IGN)`, common in servers) gets
//! the same results, deaths and exit statuses as any other, under every start method.
//!
//! Its own test binary: the disposition of SIGCHLD belongs to the whole process. Every
//! test sets it first, so the order in which they run does not matter.
// Raw libc calls on processes (signals, limits) that the test or bench needs to make.
#![allow(unsafe_code)]

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

/// Makes this process (all its threads, and every process it starts) see a kernel older
/// than 6.15: `ioctl(PIDFD_GET_INFO)` fails with `ENOTTY`, as it does there. `false` if
/// this system refuses seccomp filters.
fn hide_exit_info() -> bool {
    const PIDFD_GET_INFO: u32 = 0xC040_FF0B;
    let code = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let filter = [
        // The syscall number...
        code(0x20, 0, 0, 0),
        code(0x15, 0, 3, libc::SYS_ioctl as u32),
        // ... and the request (the low half of the second argument, little-endian).
        code(0x20, 0, 0, 24),
        code(0x15, 0, 1, PIDFD_GET_INFO),
        code(0x06, 0, 0, 0x0005_0000 | libc::ENOTTY as u32),
        code(0x06, 0, 0, 0x7fff_0000),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl takes integers; seccomp reads the filter program, which lives across
    // the call (the kernel copies it). The filter only changes one ioctl's answer.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::syscall(
                libc::SYS_seccomp,
                1, // SECCOMP_SET_MODE_FILTER
                1, // SECCOMP_FILTER_FLAG_TSYNC
                &prog as *const libc::sock_fprog,
            ) == 0
    }
}

/// One start method's outcomes where the kernel keeps no status, as text.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct Outcomes {
    method: String,
    value: Option<u64>,
    killed: String,
    ended_unknown: bool,
    pool_map: bool,
    pool_death: String,
}

fn on_an_old_kernel(_: ()) -> Option<Vec<Outcomes>> {
    ignore_sigchld();
    if !hide_exit_info() {
        return None;
    }
    let mut out = Vec::new();
    for m in StartMethod::ALL {
        let value = start(m, square, 3).join().ok();
        let p = start(m, sleep_ms, 60_000);
        p.kill().unwrap();
        let killed = p.join().unwrap_err().to_string();
        let mut p = start(m, sleep_ms, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while p.is_alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let ended_unknown = !p.is_alive() && p.exitcode().is_none();
        drop(p);
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .chunk_size(ChunkSize::Fixed(1))
            .retries(1)
            .build()
            .unwrap();
        let pool_map = pool.map(square, 0..20u64).ok() == Some((0..20u64).map(|x| x * x).collect());
        let results = pool.map_results(crash_on, 0..10).unwrap();
        let pool_death = match &results[5] {
            Err(e) => e.to_string(),
            Ok(v) => format!("answered {v}"),
        };
        let others_ok = results
            .iter()
            .enumerate()
            .all(|(i, r)| i == 5 || r.as_ref().ok() == Some(&(2 * i as u32)));
        out.push(Outcomes {
            method: m.name().into(),
            value,
            killed,
            ended_unknown,
            pool_map: pool_map && others_ok,
            pool_death,
        });
    }
    Some(out)
}

/// Before Linux 6.15 the kernel discards the status of a child it reaped because SIGCHLD
/// is ignored. Simulated in a helper process, whatever the kernel: results still arrive,
/// and a death is reported as a death whose status is lost, never with a made-up signal.
#[test]
fn where_the_kernel_keeps_no_status_results_still_arrive() {
    ignore_sigchld();
    let report = start(StartMethod::Spawn, on_an_old_kernel, ())
        .join()
        .unwrap_or_else(|e| panic!("helper: {e}"));
    let Some(report) = report else {
        eprintln!("skipped: this system refuses seccomp filters, needed to simulate the kernel");
        return;
    };
    assert_eq!(report.len(), 3, "{report:?}");
    for o in &report {
        let m = &o.method;
        assert_eq!(o.value, Some(9), "{m}: {o:?}");
        assert!(o.killed.contains("exit status is lost"), "{m}: {o:?}");
        assert!(!o.killed.contains("SIGKILL"), "{m}: {o:?}");
        assert!(o.ended_unknown, "{m}: {o:?}");
        assert!(o.pool_map, "{m}: {o:?}");
        assert!(o.pool_death.contains("exit status is lost"), "{m}: {o:?}");
    }
}
