//! No orphans: when a parent dies, even by SIGKILL, its children (and its fork server)
//! die with it. Checked on real pids through /proc.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use multiproc::{Error, Process, Signal, StartMethod};

fn sleep_secs(s: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(s));
    s
}

/// Runs in the helper: starts a grandchild with the given start method, publishes its
/// pid, then sleeps until killed.
fn helper((method, pid_file): (String, String)) -> u64 {
    let method: StartMethod = method.parse().unwrap();
    let grandchild = Process::builder()
        .start_method(method)
        .start(sleep_secs, 60)
        .unwrap();
    // Write then rename, so the test never reads half a number.
    let tmp = format!("{pid_file}.tmp");
    std::fs::write(&tmp, grandchild.pid().to_string()).unwrap();
    std::fs::rename(&tmp, &pid_file).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    grandchild.join().unwrap()
}

fn wait_for_pid(file: &Path, helper: &mut Process<u64>) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(file) {
            return s.trim().parse().unwrap();
        }
        assert!(
            helper.is_alive(),
            "the helper died: {:?}",
            helper.exitcode()
        );
        assert!(Instant::now() < deadline, "the helper never wrote {file:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn check(helper_method: StartMethod, method: StartMethod, dir: &Path) {
    let what = format!("helper by {helper_method}, grandchild by {method}");
    let pid_file = dir.join(format!("{helper_method}-{method}.pid"));
    let arg = (
        method.name().to_owned(),
        pid_file.to_str().unwrap().to_owned(),
    );
    let mut helper_proc = Process::builder()
        .start_method(helper_method)
        .name("helper")
        .start(helper, arg)
        .unwrap();
    let helper_pid = helper_proc.pid();
    let grandchild = wait_for_pid(&pid_file, &mut helper_proc);
    let family: Vec<u32> = common::children_of(helper_pid)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    assert!(family.contains(&grandchild), "{what}: {family:?}");
    if method == StartMethod::ForkServer {
        // The helper's own fork server, and the grandchild it forked as the helper's child.
        assert_eq!(
            family.len(),
            2,
            "{what}: children of the helper: {family:?}"
        );
    }
    assert!(!common::is_dead(grandchild), "{what}");

    common::send_signal(helper_pid, libc::SIGKILL);
    match helper_proc.join() {
        Err(Error::Killed { signal, .. }) => assert_eq!(signal, Signal::KILL, "{what}"),
        other => panic!("{what}: helper gave {other:?}"),
    }
    for pid in family {
        assert!(
            common::wait_dead(pid, Duration::from_secs(5)),
            "{what}: {pid} ({}) outlived its SIGKILLed parent: {:?}",
            common::cmdline(pid),
            common::stat(pid)
        );
    }
}

#[test]
fn sigkilled_parent_takes_its_children_along() {
    let dir = common::TempDir::new("orphans");
    for method in StartMethod::ALL {
        check(StartMethod::Spawn, method, dir.path());
    }
}

#[test]
fn every_combination_of_start_methods() {
    let dir = common::TempDir::new("orphans-matrix");
    for helper_method in [StartMethod::Fork, StartMethod::ForkServer] {
        for method in StartMethod::ALL {
            check(helper_method, method, dir.path());
        }
    }
}

/// Killing a parent's fork server from outside does not orphan anything and does not
/// stop the parent from starting children: a new server takes over.
fn kill_forkserver_of_helper(pid_file: String) -> u64 {
    let first = Process::builder()
        .start_method(StartMethod::ForkServer)
        .start(sleep_secs, 0)
        .unwrap();
    first.join().unwrap();
    let me = std::process::id();
    let server = common::children_of(me)
        .into_iter()
        .map(|(pid, _)| pid)
        .find(|pid| common::stat(*pid).is_some_and(|(s, _)| s != 'Z'))
        .expect("a fork server");
    common::send_signal(server, libc::SIGKILL);
    assert!(common::wait_dead(server, Duration::from_secs(5)));
    let again = Process::builder()
        .start_method(StartMethod::ForkServer)
        .start(sleep_secs, 0)
        .unwrap();
    again.join().unwrap();
    std::fs::write(pid_file, server.to_string()).unwrap();
    0
}

#[test]
fn a_killed_fork_server_is_replaced() {
    let dir = common::TempDir::new("server");
    let file = dir.path().join("server.pid");
    let p = Process::builder()
        .start_method(StartMethod::Spawn)
        .start(kill_forkserver_of_helper, file.to_str().unwrap().to_owned())
        .unwrap();
    assert_eq!(p.join().unwrap(), 0);
    let server: u32 = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    assert!(common::is_dead(server));
}
