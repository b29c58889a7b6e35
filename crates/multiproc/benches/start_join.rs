//! Process start + join per start method, against raw `fork()` + `waitpid()` in the same
//! run. `cargo bench -p multiproc --bench start_join`.
//!
//! The children run a trivial `fn(u32) -> u32`, so this is the fixed cost of a process
//! that returns a value; the raw fork floor is what the kernel charges for the process
//! alone (its child `_exit`s at once and carries nothing back).
// Raw libc calls on processes (signals, limits) that the test or bench needs to make.
#![allow(unsafe_code)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use multiproc::{Process, StartMethod};

fn bump(x: u32) -> u32 {
    x.wrapping_add(1)
}

/// `fork()` a child that `_exit(0)`s at once, and reap it.
fn raw_fork_and_wait() {
    // SAFETY: the child calls only `_exit`, which is async-signal-safe, so it touches no
    // lock that another thread of this (multithreaded) process might have held.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: `_exit` has no preconditions and runs none of the parent's handlers.
        unsafe { libc::_exit(0) }
    }
    let mut status = 0;
    // SAFETY: waits for our own child and writes its status into a local.
    let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(reaped, pid);
}

fn start_join(c: &mut Criterion) {
    let mut group = c.benchmark_group("start+join");
    group.bench_function("raw fork+waitpid", |b| b.iter(raw_fork_and_wait));
    group.bench_function("thread spawn+join", |b| {
        b.iter(|| std::thread::spawn(|| bump(black_box(1))).join().unwrap())
    });
    for method in StartMethod::ALL {
        group.bench_with_input(BenchmarkId::new("Process", method), &method, |b, &m| {
            b.iter(|| {
                let p = Process::builder()
                    .start_method(m)
                    .start(bump, black_box(41))
                    .unwrap();
                assert_eq!(p.join().unwrap(), 42);
            })
        });
    }
    group.finish();
}

fn main() {
    // A child re-executed from this bench binary becomes a worker here (or earlier, in
    // multiproc's load-time constructor); the parent starts its fork server.
    multiproc::init();
    let mut c = Criterion::default().configure_from_args();
    start_join(&mut c);
    c.final_summary();
}
