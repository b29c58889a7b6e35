//! A task that fails in any way gives an error that says how, under every start method:
//! a panic with its message and location, a signal by name, an exit code.
// Raw libc calls on processes (signals, limits) that the test or bench needs to make.
#![allow(unsafe_code)]

mod common;

use std::time::{Duration, Instant};

use multiproc::{Error, Signal, StartMethod};

use common::start;

const PANIC_LINE: u32 = line!() + 3;
fn panics(n: u32) -> u32 {
    if n > 0 {
        panic!("the answer was {n}, not 42");
    }
    n
}

fn panics_with_non_string(_: ()) -> u32 {
    std::panic::panic_any(17u8)
}

fn aborts(_: ()) -> u32 {
    std::process::abort()
}

fn writes_through_null(_: ()) -> u32 {
    // SAFETY: none; this is the bug under test. The write faults with SIGSEGV.
    unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
    0
}

// Not `libc::raise(SIGSEGV)`: std's stack-overflow handler catches a SIGSEGV that is
// not a fault in a guard page, restores the default action and returns, so a raised
// SIGSEGV is survived once in any Rust program. A real fault is not.

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let pad = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + pad[7]
}

fn sleeps(secs: u64) -> u32 {
    std::thread::sleep(Duration::from_secs(secs));
    0
}

fn exits(code: i32) -> u32 {
    std::process::exit(code)
}

#[test]
fn panic_gives_message_and_location() {
    for m in StartMethod::ALL {
        let p = start(m, panics, 7);
        let pid = p.pid();
        match p.join() {
            Err(Error::Panicked {
                pid: got,
                message,
                location,
                ..
            }) => {
                assert_eq!(got, pid, "{m}");
                assert_eq!(message, "the answer was 7, not 42", "{m}");
                let location = location.unwrap_or_else(|| panic!("{m}: no location"));
                let want = format!("{}:{PANIC_LINE}:", file!());
                assert!(location.starts_with(&want), "{m}: {location} vs {want}");
            }
            other => panic!("{m}: {other:?}"),
        }
        // The same function without a panic still works: the error is per task.
        assert_eq!(start(m, panics, 0).join().unwrap(), 0, "{m}");
    }
}

#[test]
fn panic_error_reads_well() {
    let err = start(StartMethod::ForkServer, panics, 3)
        .join()
        .unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.panic_message(), Some("the answer was 3, not 42"));
    let text = err.to_string();
    assert!(text.contains("the answer was 3, not 42"), "{text}");
    assert!(text.contains(file!()), "{text}");
}

#[test]
fn panic_with_non_string_payload() {
    for m in StartMethod::ALL {
        let err = start(m, panics_with_non_string, ()).join().unwrap_err();
        assert!(err.is_panic(), "{m}: {err:?}");
        assert!(
            err.panic_message().unwrap().contains("not a string"),
            "{m}: {err}"
        );
    }
}

fn expect_signal(method: StartMethod, err: Error, signal: Signal) {
    match err {
        Error::Killed { signal: got, .. } => assert_eq!(got, signal, "{method}"),
        other => panic!("{method}: expected {signal}, got {other:?}"),
    }
}

#[test]
fn abort_gives_sigabrt() {
    for m in StartMethod::ALL {
        let err = start(m, aborts, ()).join().unwrap_err();
        assert!(err.is_process_death(), "{m}");
        let text = err.to_string();
        assert!(text.contains("SIGABRT"), "{m}: {text}");
        expect_signal(m, err, Signal::ABRT);
    }
}

#[test]
fn null_write_gives_sigsegv() {
    for m in StartMethod::ALL {
        let err = start(m, writes_through_null, ()).join().unwrap_err();
        assert!(err.to_string().contains("SIGSEGV"), "{m}: {err}");
        expect_signal(m, err, Signal::SEGV);
    }
}

/// A stack overflow kills the child, never the parent. On a thread with std's guard-page
/// handler (a Fork child runs its task on the launcher thread) std reports it and aborts
/// (SIGABRT); a re-executed child runs its task before std's runtime is set up, so the
/// kernel's SIGSEGV ends it. Either way: a signal, by name.
#[test]
fn stack_overflow_kills_only_the_child() {
    for m in StartMethod::ALL {
        let err = start(m, recurse, 0).join().unwrap_err();
        let signal = err
            .signal()
            .unwrap_or_else(|| panic!("{m}: expected a signal, got {err:?}"));
        assert!([Signal::SEGV, Signal::ABRT].contains(&signal), "{m}: {err}");
    }
}

#[test]
fn kill_from_outside_gives_sigkill() {
    for m in StartMethod::ALL {
        let p = start(m, sleeps, 60);
        let t = Instant::now();
        common::send_signal(p.pid(), libc::SIGKILL);
        let err = p.join().unwrap_err();
        assert!(err.to_string().contains("SIGKILL"), "{m}: {err}");
        expect_signal(m, err, Signal::KILL);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{m}: {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn kill_by_command_gives_sigkill() {
    let p = start(StartMethod::ForkServer, sleeps, 60);
    let status = std::process::Command::new("kill")
        .args(["-9", &p.pid().to_string()])
        .status()
        .expect("run kill(1)");
    assert!(status.success());
    expect_signal(StartMethod::ForkServer, p.join().unwrap_err(), Signal::KILL);
}

#[test]
fn exit_gives_its_code() {
    for m in StartMethod::ALL {
        for code in [3, 0, 255] {
            let p = start(m, exits, code);
            let pid = p.pid();
            match p.join() {
                Err(Error::Exited { pid: got, code: c }) => {
                    assert_eq!((got, c), (pid, code), "{m}");
                }
                other => panic!("{m}: exit({code}) gave {other:?}"),
            }
        }
        let err = start(m, exits, 3).join().unwrap_err();
        assert_eq!(err.exit_code(), Some(3), "{m}");
        assert!(err.to_string().contains("code 3"), "{m}: {err}");
    }
}

/// A failed task leaves nothing behind that breaks the next one.
#[test]
fn after_failures_work_goes_on() {
    for m in StartMethod::ALL {
        let _ = start(m, aborts, ()).join();
        let _ = start(m, exits, 9).join();
        assert_eq!(start(m, panics, 0).join().unwrap(), 0, "{m}");
    }
}

/// Forks a grandchild that keeps a copy of every descriptor, including the worker's end
/// of its socket to the parent, for `hold_ms`; writes its pid to `pid_file`; aborts.
fn abort_leaving_a_socket_copy((pid_file, hold_ms): (String, u32)) -> u32 {
    // SAFETY: the grandchild calls only async-signal-safe functions (usleep, _exit).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::usleep(hold_ms * 1000);
            libc::_exit(0)
        }
    }
    std::fs::write(&pid_file, pid.to_string()).unwrap();
    std::process::abort()
}

/// A child's death is reported when it dies, even if a copy of its socket lives on
/// elsewhere and keeps the stream open (regression: join waited for the end of stream,
/// so for as long as an unrelated process held a copy: here a process the task forked,
/// in practice also a Fork child started by another thread during a launch).
#[test]
fn death_is_seen_while_a_copy_of_the_socket_lives() {
    const HOLD_MS: u32 = 2000;
    let dir = common::TempDir::new("socket-copy");
    let pid_file = |m: StartMethod| dir.path().join(format!("{m}.pid"));
    let ps: Vec<_> = StartMethod::ALL
        .into_iter()
        .map(|m| {
            let arg = (pid_file(m).to_str().unwrap().to_owned(), HOLD_MS);
            (
                m,
                Instant::now(),
                start(m, abort_leaving_a_socket_copy, arg),
            )
        })
        .collect();
    for (m, started, p) in ps {
        let r = p.join();
        let took = started.elapsed();
        expect_signal(m, r.unwrap_err(), Signal::ABRT);
        assert!(
            took < Duration::from_millis(u64::from(HOLD_MS) * 3 / 4),
            "{m}: join took {took:?}"
        );
    }
    for m in StartMethod::ALL {
        let grandchild: u32 = std::fs::read_to_string(pid_file(m))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            common::wait_dead(grandchild, Duration::from_secs(10)),
            "{m}"
        );
    }
}
