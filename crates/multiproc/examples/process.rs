//! One task in one child process: start it (plainly, or named and with a start method
//! of your choice), join it (or wait at most so long), kill it, and what `join` returns
//! when the child panics, calls `exit`, or is killed by a signal.
//!
//! Run it: `cargo run --example process` (prints what it sees, asserts it, and ends
//! with `OK`).

use std::time::{Duration, Instant};

use multiproc::{Error, ExitStatus, Process, Signal, StartMethod};
use serde::{Deserialize, Serialize};

fn square(x: u64) -> u64 {
    x * x
}

/// What the child calls itself, and its pid.
fn whoami(_: ()) -> (String, u32) {
    let me = multiproc::current_process();
    (me.name, me.pid)
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Any serde type crosses: here, how the child should fail.
#[derive(Serialize, Deserialize, Debug)]
enum Failure {
    Panic(u32),
    Exit(i32),
}

fn fail(how: Failure) -> u32 {
    match how {
        Failure::Panic(x) => panic!("input {x} is not allowed"),
        Failure::Exit(code) => std::process::exit(code),
    }
}

/// How a program reports a failed child: match what you handle, with a `_` arm
/// (`Error` is `#[non_exhaustive]`; more variants may come).
fn describe(e: &Error) -> String {
    match e {
        Error::Panicked {
            pid,
            message,
            location,
            ..
        } => format!("process {pid} panicked: {message} at {location:?}"),
        Error::Killed { pid, signal, .. } => format!("process {pid} was killed by {signal}"),
        Error::Exited { pid, code } => format!("process {pid} exited with code {code}"),
        Error::Timeout { what, timeout } => format!("gave up on {what} after {timeout:?}"),
        _ => format!("something else: {e}"),
    }
}

fn main() -> multiproc::Result<()> {
    multiproc::init(); // first line of main

    // The plain way: the default start method (the fork server), a generated name.
    let p = Process::start(square, 12)?;
    println!("{} (pid {}) started", p.name(), p.pid());
    assert_eq!(p.start_method(), StartMethod::ForkServer);
    assert_eq!(p.join()?, 144);

    // The builder: a name the child sees, and each start method.
    for method in [
        StartMethod::ForkServer,
        StartMethod::Fork,
        StartMethod::Spawn,
    ] {
        let p = Process::builder()
            .name(format!("worker-{method}"))
            .start_method(method)
            .start(whoami, ())?;
        let pid = p.pid();
        let (name, child_pid) = p.join()?;
        println!("{method}: the child calls itself {name:?}, pid {child_pid}");
        assert_eq!(name, format!("worker-{method}"));
        assert_eq!(child_pid, pid);
    }

    // A panic comes back with its message and where it happened.
    let err = Process::start(fail, Failure::Panic(7))?.join().unwrap_err();
    println!("panic:   {}", describe(&err));
    match &err {
        Error::Panicked {
            message, location, ..
        } => {
            assert_eq!(message, "input 7 is not allowed");
            assert!(location.as_deref().unwrap_or("").contains("process.rs"));
        }
        _ => panic!("expected a panic, got {err}"),
    }
    assert!(err.is_panic() && !err.is_process_death());
    assert_eq!(err.panic_message(), Some("input 7 is not allowed"));

    // `std::process::exit(3)` in the task: the child ended without an answer.
    let err = Process::start(fail, Failure::Exit(3))?.join().unwrap_err();
    println!("exit:    {}", describe(&err));
    assert!(matches!(err, Error::Exited { code: 3, .. }), "{err}");
    assert_eq!(err.exit_code(), Some(3));
    assert!(err.is_process_death());

    // join_timeout gives up but leaves the child running; kill it, then join for the
    // way it ended (a signal).
    let mut p = Process::start(nap, 60_000)?;
    let err = p.join_timeout(Duration::from_millis(100)).unwrap_err();
    println!("timeout: {}", describe(&err));
    assert!(err.is_timeout());
    assert!(p.is_alive());
    p.kill()?;
    let err = p.join_timeout(Duration::from_secs(10)).unwrap_err();
    println!("kill:    {}", describe(&err));
    assert!(
        matches!(
            err,
            Error::Killed {
                signal: Signal::KILL,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.signal(), Some(Signal::KILL));
    assert!(!p.is_alive());
    let status = p.exitcode().expect("a reaped child has a status");
    assert_eq!(
        status,
        ExitStatus::Signaled {
            signal: Signal::KILL,
            core_dumped: false
        }
    );
    assert_eq!(status.python_exitcode(), -9); // what Python's Process.exitcode says
    drop(p);

    // terminate() sends SIGTERM, the polite signal.
    let p = Process::start(nap, 60_000)?;
    p.terminate()?;
    let err = p.join().unwrap_err();
    println!("term:    {}", describe(&err));
    assert_eq!(err.signal(), Some(Signal::TERM));

    // A child that finishes within join_timeout just answers.
    let mut p = Process::start(nap, 10)?;
    assert_eq!(p.join_timeout(Duration::from_secs(10))?, 10);

    // Dropping a Process you did not join kills and reaps it: no orphan, no zombie.
    let p = Process::builder().name("dropped").start(nap, 60_000)?;
    assert!(
        multiproc::active_children()
            .iter()
            .any(|c| c.pid == p.pid())
    );
    let started = Instant::now();
    drop(p);
    assert!(started.elapsed() < Duration::from_secs(5));
    let left = multiproc::active_children();
    assert!(left.is_empty(), "children still running: {left:?}");

    println!("OK");
    Ok(())
}
