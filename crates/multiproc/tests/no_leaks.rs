//! 1,000 starts and joins in a row leave no zombie and no descriptor behind.
//!
//! Its own test binary with a single test: it counts this process's descriptors and
//! children, which any concurrently running test would change.

mod common;

use std::time::{Duration, Instant};

use multiproc::{Process, StartMethod};

fn inc(x: u64) -> u64 {
    x + 1
}

fn panics(_: u64) -> u64 {
    panic!("on purpose")
}

fn sleeps(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// One round of `n` processes, with every way a process can end mixed in.
fn round(method: StartMethod, n: u64) {
    let start = |f: fn(u64) -> u64, x: u64| {
        Process::builder()
            .start_method(method)
            .start(f, x)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    };
    for i in 0..n {
        match i % 20 {
            // A task that panics.
            5 => assert!(start(panics, i).join().unwrap_err().is_panic()),
            // Killed, then joined.
            10 => {
                let p = start(sleeps, 60_000);
                p.kill().unwrap();
                assert!(p.join().unwrap_err().is_process_death());
            }
            // A join that times out, then a kill and a second join.
            15 => {
                let mut p = start(sleeps, 60_000);
                assert!(
                    p.join_timeout(Duration::from_millis(1))
                        .unwrap_err()
                        .is_timeout()
                );
                p.kill().unwrap();
                assert!(p.join_timeout(Duration::from_secs(10)).is_err());
            }
            // Dropped without a join: killed and reaped by the handle.
            19 => drop(start(sleeps, 60_000)),
            _ => assert_eq!(start(inc, i).join().unwrap(), i + 1),
        }
    }
}

/// Children of this process that are not the fork server.
fn stray_children(server: &[u32]) -> Vec<(u32, char)> {
    common::children_of(std::process::id())
        .into_iter()
        .filter(|(pid, _)| !server.contains(pid))
        .collect()
}

#[test]
fn a_thousand_starts_leak_nothing() {
    // Warm-up: the launcher thread and the fork server exist from here on.
    for m in StartMethod::ALL {
        round(m, 1);
    }
    let server: Vec<u32> = common::children_of(std::process::id())
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(
        server.len(),
        1,
        "only the fork server should be left: {server:?}"
    );
    let fds = common::fd_count();

    for (method, n) in [
        (StartMethod::ForkServer, 1000),
        (StartMethod::Fork, 1000),
        (StartMethod::Spawn, 300),
    ] {
        let t = Instant::now();
        round(method, n);
        eprintln!("{method}: {n} processes in {:?}", t.elapsed());
        assert_eq!(common::fd_count(), fds, "{method}: descriptors leaked");
        assert_eq!(stray_children(&server), [], "{method}: children left");
    }
    // The fork server is the one from the start.
    assert_eq!(
        common::children_of(std::process::id())
            .into_iter()
            .map(|(pid, _)| pid)
            .collect::<Vec<_>>(),
        server
    );
}
