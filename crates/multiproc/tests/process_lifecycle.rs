//! Controlling a running child: terminate, kill, join with a deadline, exit status,
//! and what a second join says — under every start method.

mod common;

use std::time::{Duration, Instant};

use multiproc::{Error, ExitStatus, Process, Signal, StartMethod};

use common::start;

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn killed_by(method: StartMethod, r: multiproc::Result<u64>, signal: Signal) {
    match r {
        Err(Error::Killed { signal: got, .. }) => assert_eq!(got, signal, "{method}"),
        other => panic!("{method}: expected {signal}, got {other:?}"),
    }
}

#[test]
fn terminate_gives_sigterm() {
    for m in StartMethod::ALL {
        let mut p = start(m, sleep_ms, 60_000);
        assert!(p.is_alive(), "{m}");
        p.terminate().unwrap();
        let t = Instant::now();
        let pid = p.pid();
        let r = p.join();
        killed_by(m, r, Signal::TERM);
        assert!(t.elapsed() < Duration::from_secs(5), "{m}");
        assert!(common::stat(pid).is_none(), "{m}: {pid} was not reaped");
    }
}

#[test]
fn kill_gives_sigkill() {
    for m in StartMethod::ALL {
        let p = start(m, sleep_ms, 60_000);
        p.kill().unwrap();
        killed_by(m, p.join(), Signal::KILL);
    }
}

#[test]
fn join_timeout_leaves_the_child_running() {
    for m in StartMethod::ALL {
        let mut p = start(m, sleep_ms, 60_000);
        assert_eq!(p.exitcode(), None, "{m}");
        let t = Instant::now();
        let err = p.join_timeout(Duration::from_millis(100)).unwrap_err();
        let waited = t.elapsed();
        assert!(err.is_timeout(), "{m}: {err:?}");
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
            "{m}: join_timeout(100 ms) took {waited:?}"
        );
        assert!(p.is_alive(), "{m}");
        assert_eq!(p.exitcode(), None, "{m}");
        assert!(!common::is_dead(p.pid()), "{m}");
        // A timed-out join can be retried; it times out again.
        assert!(
            p.join_timeout(Duration::from_millis(10))
                .unwrap_err()
                .is_timeout()
        );

        p.kill().unwrap();
        killed_by(m, p.join_timeout(Duration::from_secs(10)), Signal::KILL);
        assert_eq!(
            p.exitcode(),
            Some(ExitStatus::Signaled {
                signal: Signal::KILL,
                core_dumped: false
            }),
            "{m}"
        );
        assert!(!p.is_alive(), "{m}");
        // Signalling a reaped child is a no-op, not an error (its pid may be reused).
        p.kill().unwrap();
        p.terminate().unwrap();
        match p.join_timeout(Duration::from_secs(1)) {
            Err(Error::AlreadyJoined { pid }) => assert_eq!(pid, p.pid(), "{m}"),
            other => panic!("{m}: second join gave {other:?}"),
        }
    }
}

#[test]
fn join_timeout_then_result() {
    for m in StartMethod::ALL {
        let mut p = start(m, sleep_ms, 300);
        assert!(
            p.join_timeout(Duration::from_millis(20))
                .unwrap_err()
                .is_timeout()
        );
        assert_eq!(p.join_timeout(Duration::from_secs(10)).unwrap(), 300, "{m}");
        assert_eq!(p.exitcode(), Some(ExitStatus::Code(0)), "{m}");
        assert!(p.exitcode().unwrap().success());
        assert!(matches!(
            p.join_timeout(Duration::ZERO),
            Err(Error::AlreadyJoined { .. })
        ));
    }
}

#[test]
fn exitcode_is_none_while_running_and_some_after() {
    for m in StartMethod::ALL {
        let mut p = start(m, sleep_ms, 200);
        assert_eq!(p.exitcode(), None, "{m}");
        assert!(p.is_alive(), "{m}");
        // exitcode() reaps a finished child without join: the result is still there.
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.exitcode().is_none() {
            assert!(Instant::now() < deadline, "{m}: never finished");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(p.exitcode(), Some(ExitStatus::Code(0)), "{m}");
        assert_eq!(p.exitcode().unwrap().python_exitcode(), 0);
        assert!(common::stat(p.pid()).is_none(), "{m}: not reaped");
        assert_eq!(p.join().unwrap(), 200, "{m}");
    }
}

#[test]
fn python_exitcode_of_a_signal_is_negative() {
    let mut p = start(StartMethod::ForkServer, sleep_ms, 60_000);
    p.terminate().unwrap();
    let _ = p.join_timeout(Duration::from_secs(10));
    assert_eq!(p.exitcode().unwrap().python_exitcode(), -libc::SIGTERM);
    assert_eq!(
        p.exitcode().unwrap().to_string(),
        "killed by SIGTERM (signal 15)"
    );
}

#[test]
fn drop_kills_and_reaps() {
    for m in StartMethod::ALL {
        let p = start(m, sleep_ms, 60_000);
        let pid = p.pid();
        drop(p);
        assert!(common::stat(pid).is_none(), "{m}: {pid} left behind");
    }
}

#[test]
fn pid_name_and_method_are_reported() {
    for m in StartMethod::ALL {
        let p = Process::builder()
            .start_method(m)
            .name(format!("worker-{m}"))
            .start(sleep_ms, 0)
            .unwrap();
        assert_eq!(p.start_method(), m);
        assert_eq!(p.name(), format!("worker-{m}"));
        assert_ne!(p.pid(), std::process::id());
        assert!(format!("{p:?}").contains(&format!("worker-{m}")));
        assert_eq!(p.join().unwrap(), 0);
    }
    let a = Process::start(sleep_ms, 0).unwrap();
    let b = Process::start(sleep_ms, 0).unwrap();
    assert!(a.name().starts_with("Process-"), "{}", a.name());
    assert_ne!(a.name(), b.name());
    a.join().unwrap();
    b.join().unwrap();
}

#[test]
fn many_children_at_once() {
    for m in StartMethod::ALL {
        let ps: Vec<_> = (0..16u64).map(|i| start(m, sleep_ms, 50 + i)).collect();
        let got: Vec<u64> = ps.into_iter().map(|p| p.join().unwrap()).collect();
        assert_eq!(got, (0..16).map(|i| 50 + i).collect::<Vec<_>>(), "{m}");
    }
}

/// Ctrl-C is for the parent: a worker ignores SIGINT (the parent decides how its
/// children end).
#[test]
fn workers_ignore_sigint() {
    for m in StartMethod::ALL {
        let mut p = start(m, sleep_ms, 60_000);
        common::send_signal(p.pid(), libc::SIGINT);
        assert!(
            p.join_timeout(Duration::from_millis(200))
                .unwrap_err()
                .is_timeout(),
            "{m}: SIGINT ended the worker"
        );
        assert!(p.is_alive(), "{m}");
        p.terminate().unwrap();
        killed_by(m, p.join_timeout(Duration::from_secs(10)), Signal::TERM);
    }
}

fn big_after(ms: u64) -> serde_bytes::ByteBuf {
    std::thread::sleep(Duration::from_millis(ms));
    serde_bytes::ByteBuf::from(vec![0x5a; 8 << 20])
}

/// Many short join_timeouts while a large result streams in: the partial frame kept
/// between calls is completed, not lost or corrupted.
#[test]
fn short_join_timeouts_across_a_large_result() {
    for m in StartMethod::ALL {
        let mut p = Process::builder()
            .start_method(m)
            .start(big_after, 50)
            .unwrap();
        let mut timeouts = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        let bytes = loop {
            match p.join_timeout(Duration::from_micros(300)) {
                Ok(b) => break b,
                Err(e) if e.is_timeout() => timeouts += 1,
                Err(e) => panic!("{m}: {e}"),
            }
            assert!(Instant::now() < deadline, "{m}: never finished");
        };
        assert!(timeouts > 0, "{m}");
        assert_eq!(bytes.len(), 8 << 20, "{m}");
        assert!(bytes.iter().all(|b| *b == 0x5a), "{m}");
    }
}

/// Many threads start and join at once, with every start method mixed: the launcher
/// serializes the starts, nothing is mixed up or lost.
#[test]
fn concurrent_starts_from_many_threads() {
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..15u64 {
                    let m = StartMethod::ALL[((t + i) % 3) as usize];
                    let x = t * 1000 + i;
                    let p = start(m, sleep_ms, x % 7);
                    assert_eq!(p.join().unwrap(), x % 7, "{m}");
                    let p = start(m, |v: u64| v * 3, x);
                    assert_eq!(p.join().unwrap(), x * 3, "{m}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
