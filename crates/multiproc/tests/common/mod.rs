//! Helpers shared by the integration tests: looking at real processes through `/proc`.
//!
//! Each test binary includes this module with `mod common;` and uses only part of it.
#![allow(dead_code)]
// Raw libc calls on processes (signals) that it needs to make.
#![allow(unsafe_code)]

pub mod mpi;
pub mod netns;
pub mod redis;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// State letter (`R`, `S`, `Z`, ...) and parent pid of `pid`, or `None` if it does not
/// exist.
pub fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses; it ends at the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// `true` if `pid` no longer runs: it does not exist, or it is a zombie (dead, waiting for
/// a parent to reap it; PID 1 of a container may never do so).
pub fn is_dead(pid: u32) -> bool {
    !matches!(stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Polls until `pid` is dead (see [`is_dead`]) or `timeout` passes.
pub fn wait_dead(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if is_dead(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every process whose parent is `pid`, with its state letter.
pub fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((state, ppid)) = stat(child)
            && ppid == pid
        {
            out.push((child, state));
        }
    }
    out
}

/// Open descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Sends `signal` to `pid`, panicking if the kernel refuses.
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) takes two integers; the worst a wrong pid does is signal the wrong
    // process, and every caller passes a child it started and has not reaped.
    let r = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "multiproc-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds and runs `main_rs` as the `main` of a new user's crate that depends on
/// multiproc by path (offline, with this workspace's lock file), with `extra_toml`
/// appended to its manifest. The build directory is kept inside this workspace's target
/// directory, per `name`, so only the first run compiles the dependencies.
#[allow(dead_code)]
pub fn run_user_crate(name: &str, main_rs: &str, extra_toml: &str) -> std::process::Output {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let project = TempDir::new(name);
    let dir = project.path();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{name}-user"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
multiproc = {{ path = {:?} }}

# Not part of any enclosing workspace.
[workspace]
{extra_toml}
"#,
            crate_dir.to_str().unwrap()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("src/main.rs"), main_rs).unwrap();
    // The workspace's lock file pins the versions this repository was tested with, all of
    // them in the local registry cache: no network needed.
    let lock = crate_dir.join("../../Cargo.lock");
    if lock.exists() {
        std::fs::copy(&lock, dir.join("Cargo.lock")).unwrap();
    }
    // target/<profile>/deps/<this test> -> target/
    let target = std::env::current_exe()
        .unwrap()
        .ancestors()
        .nth(3)
        .unwrap()
        .join(format!("{name}-crate"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let t = std::time::Instant::now();
    let out = std::process::Command::new(cargo)
        .args(["run", "--offline", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    eprintln!("cargo run of the {name} crate: {:?}", t.elapsed());
    out
}

/// Starts `f(args)` with `method`, panicking with the method's name on failure.
#[allow(dead_code)]
pub fn start<A, R>(method: multiproc::StartMethod, f: fn(A) -> R, args: A) -> multiproc::Process<R>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    multiproc::Process::builder()
        .start_method(method)
        .start(f, args)
        .unwrap_or_else(|e| panic!("{method}: start: {e}"))
}

/// Writes `s` with C's `printf` (buffered by C's stdio, not Rust's).
pub fn c_printf(s: &std::ffi::CStr) {
    // SAFETY: a "%s" format with one NUL-terminated string argument, as it expects.
    unsafe {
        libc::printf(c"%s".as_ptr(), s.as_ptr());
    }
}
