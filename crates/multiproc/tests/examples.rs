//! Runs every example (`cargo test` builds them into `target/<profile>/examples/`) and
//! checks that it exits 0 with `OK` as its last line of output, within a time limit,
//! leaving no process and no file behind. The cluster example gets a `redis-server` of
//! its own on a free port, and a key.
// Raw libc calls on processes (signals) that it needs to make.
#![allow(unsafe_code)]

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One example at a time: they start processes, and some assert on timing.
static SERIAL: Mutex<()> = Mutex::new(());

/// `target/<profile>/examples/<name>`, next to this test's `deps/` directory, built
/// first. `cargo test` builds the examples, but `cargo test --test examples` does not,
/// and an example edited since would run stale: so this test builds them itself, once
/// (a no-op when they are fresh), with this test's profile.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    BUILT.get_or_init(|| {
        let profile = profile_dir.file_name().unwrap().to_str().unwrap();
        let profile = if profile == "debug" { "dev" } else { profile };
        // The default features, and mpi if this test has it (so that the library
        // built for this test is the one the examples link).
        let features = if cfg!(feature = "mpi") { "mpi" } else { "" };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "multiproc",
                "--examples",
                "--profile",
            ])
            .arg(profile)
            .args(["--features", features])
            // Where this test was built, however that was chosen.
            .arg("--target-dir")
            .arg(profile_dir.parent().expect("target/"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .expect("running cargo build --examples");
        assert!(
            out.status.success(),
            "cargo build --examples: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let path = profile_dir.join("examples").join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Processes of process group `pgid` that still run (zombies do not count: their
/// parent, maybe a container's PID 1, may never reap them).
fn alive_in_group(pgid: u32) -> Vec<u32> {
    let mut alive = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm ends at the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let zombie = matches!(fields.first(), Some(&"Z") | Some(&"X"));
        if !zombie && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            alive.push(pid);
        }
    }
    alive
}

fn kill_group(pgid: u32) {
    // SAFETY: kill(2) of the process group that this test made for the example.
    unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
}

/// Runs example `name` with `args` and `envs` in a fresh working directory, in a
/// process group of its own (so that a hung example is killed with every process it
/// started), for at most `limit`. Panics unless it exits 0 with `last` as the last
/// line of its standard output and leaves nothing behind. Returns its stdout.
fn run(name: &str, args: &[&str], envs: &[(&str, &str)], last: &str, limit: Duration) -> String {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cwd = common::TempDir::new(name);
    let started = Instant::now();
    let mut child = Command::new(example(name))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(cwd.path())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting example {name}: {e}"));
    let pid = child.id();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            kill_group(pid);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    // The example's processes must be gone with it (children die with their parent;
    // give the kernel a moment), and its working directory must be empty.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = alive_in_group(pid);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left = alive_in_group(pid);
    }
    kill_group(pid);
    // Readers end once every holder of the pipes' write ends has exited.
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let report = format!(
        "example {name} {args:?}: {status:?} after {took:?}\n--- stdout\n{out}--- stderr\n{err}"
    );
    eprintln!("{report}");
    let status = status.unwrap_or_else(|| panic!("still running after {limit:?}: {report}"));
    assert!(status.success(), "{report}");
    assert_eq!(out.lines().last(), Some(last), "{report}");
    assert!(left.is_empty(), "processes left behind: {left:?}\n{report}");
    let files: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().flatten().collect();
    assert!(files.is_empty(), "files left behind: {files:?}\n{report}");
    let shm: Vec<_> = std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(&format!("-{pid}")) || name.contains(&format!("-{pid}-"))
        })
        .collect();
    assert!(shm.is_empty(), "left in /dev/shm: {shm:?}\n{report}");
    out
}

fn run_ok(name: &str) -> String {
    run(name, &[], &[], "OK", Duration::from_secs(60))
}

#[test]
fn quickstart() {
    let total = 50_000_000u64 * (50_000_000 - 1) / 2;
    run(
        "quickstart",
        &[],
        &[],
        &format!("total: {total}"),
        Duration::from_secs(60),
    );
}

#[test]
fn process() {
    let out = run_ok("process");
    assert!(out.contains("killed by SIGKILL"), "{out}");
}

#[test]
fn pool_faults() {
    let out = run_ok("pool_faults");
    assert!(out.contains("SIGABRT"), "{out}");
}

#[test]
fn channels() {
    run_ok("channels");
}

#[test]
fn shared_state() {
    run_ok("shared_state");
}

#[cfg(feature = "cluster")]
#[test]
fn cluster() {
    let redis = common::redis::Redis::start();
    let url = redis.url();
    let key = "examples-test-key-0123456789abcdef";
    let out = run(
        "cluster",
        &[&url],
        &[("MULTIPROC_CLUSTER_KEY", key)],
        "OK",
        Duration::from_secs(90),
    );
    assert_eq!(
        out.matches("stopped: exit code Some(0)").count(),
        2,
        "{out}"
    );
}
