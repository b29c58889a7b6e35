//! A `redis-server` and cluster worker nodes of a test's (or a bench's) own: the one
//! fixture that multiproc's cluster tests, its conformance suite and the CLI's cluster
//! bench share.
//!
//! - [`Redis`]: 127.0.0.1, a free port, no persistence (it writes no file, so nothing of
//!   it stays behind, even if its owner is killed); the last lines of its log say why it
//!   failed to start. Stopped (SIGTERM, then SIGKILL) on drop.
//! - [`Node`]: a worker node, which must be the caller's own build: the caller's
//!   executable re-run with `MULTIPROC_CLUSTER` set ([`Node::command`]); stopped on drop
//!   (SIGKILL at once, or SIGTERM first with [`Node::stop_wait`]).
//!
//! A server may get a parent-death signal ([`die_with_parent`]) so that none outlives a
//! killed owner. Linux sends it when the *thread* that started the server ends, not the
//! process: start such servers from a thread that lives as long as they must (`main`,
//! or a thread of a fixture's own), never from a test's thread whose servers outlive it.
//!
//! Not published: a workspace crate, a dev-dependency of the library's tests and a
//! dependency of the CLI. It does not depend on multiproc (the library's tests use it, and
//! a dev-dependency cycle would build two copies of the library); the node's
//! environment variables are spelled here, and the conformance suite checks them against
//! the library's.
// `pre_exec` for the parent-death signal, and kill(2): the only unsafe of this crate.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::error::Error;
use std::io::{self, BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The program the fixture runs.
pub const REDIS_SERVER: &str = "redis-server";
/// The variable that makes a multiproc program a node of the Redis at its value
/// (`multiproc::cluster::CLUSTER_ENV`).
pub const CLUSTER_ENV: &str = "MULTIPROC_CLUSTER";
/// The node's key (`multiproc::cluster::KEY_ENV`).
pub const KEY_ENV: &str = "MULTIPROC_CLUSTER_KEY";
/// A file that holds the node's key (`multiproc::cluster::KEY_FILE_ENV`).
pub const KEY_FILE_ENV: &str = "MULTIPROC_CLUSTER_KEY_FILE";

/// Lines of Redis's log kept, to say why it failed to start.
const LOG_LINES: usize = 8;

/// Whether `program` is an executable file in a directory of the PATH.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Makes the child of `cmd` get `signal` when the thread that spawns it ends (see the
/// crate docs: the thread, not the process), or at once if its parent is already gone.
pub fn die_with_parent(cmd: &mut Command, signal: i32) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // prctl, getppid, getpid and kill, which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent died before the prctl: the signal will not come.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), signal);
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process `pid` (a child of ours, not yet reaped).
pub fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) has no memory preconditions; callers pass the pid of their own
    // child that they have not reaped, so it names no other process.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits at most `timeout` for `child` to exit; its status if it did (it is reaped).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Stops `child`: SIGTERM, then SIGKILL if it has not exited after `timeout` (at once
/// for a zero `timeout`); reaps it. Whether it exited of itself within `timeout`.
pub fn stop(child: &mut Child, timeout: Duration) -> bool {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return true;
    }
    if !timeout.is_zero() {
        let _ = send_signal(child.id(), libc::SIGTERM);
        if wait_exit(child, timeout).is_some() {
            return true;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A redis-server of our own: 127.0.0.1, a free port, no persistence; stopped on drop.
pub struct Redis {
    child: Child,
    port: u16,
    con: Mutex<Option<redis::Connection>>,
}

impl Redis {
    /// Starts one on a free port, or panics saying how to install it (for tests).
    pub fn start() -> Redis {
        Redis::try_start().unwrap_or_else(|e| {
            panic!(
                "{e}: the cluster tests need redis-server; run the README's test command, \
                 `cargo xtask test`, which installs it"
            )
        })
    }

    /// Starts one on `port`, or panics (for tests).
    pub fn start_on(port: u16) -> Redis {
        Redis::try_start_on(port, false).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts one on a free port, waiting until it answers (at most 10 s).
    pub fn try_start() -> Result<Redis, Box<dyn Error>> {
        Redis::try_start_with(false)
    }

    /// As [`try_start`](Redis::try_start); with `die_with_parent`, the server gets
    /// SIGTERM when the thread that starts it ends (see [`die_with_parent`]).
    pub fn try_start_with(die_with_parent: bool) -> Result<Redis, Box<dyn Error>> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Redis::try_start_on(port, die_with_parent)
    }

    fn try_start_on(port: u16, dies_with_parent: bool) -> Result<Redis, Box<dyn Error>> {
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            // Its working directory; with no persistence it writes nothing there.
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if dies_with_parent {
            die_with_parent(&mut cmd, libc::SIGTERM);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {REDIS_SERVER}: {e}"))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            let log = log.clone();
            // Ends at Redis's exit (end of its stdout).
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == LOG_LINES {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        // From here on, Drop stops it.
        let mut redis = Redis {
            child,
            port,
            con: Mutex::new(None),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong: redis::RedisResult<String> = redis.query(&redis::cmd("PING"));
            if pong.is_ok() {
                return Ok(redis);
            }
            let exited = matches!(redis.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                if exited {
                    std::thread::sleep(Duration::from_millis(50)); // its last lines
                }
                let log = log.lock().unwrap_or_else(|p| p.into_inner());
                let tail: Vec<&str> = log.iter().map(String::as_str).collect();
                return Err(format!(
                    "{REDIS_SERVER} on port {port} {}; its log ends: {}",
                    if exited {
                        "exited at start"
                    } else {
                        "did not answer within 10 s"
                    },
                    tail.join(" | ")
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A new connection, or panics (for tests).
    pub fn con(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("a connection to the test's Redis")
    }

    /// Runs one command on the fixture's own connection (opened on first use, reopened
    /// after an error).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut con = self.con.lock().unwrap_or_else(|p| p.into_inner());
        if con.is_none() {
            let client = redis::Client::open(self.url())?;
            let c = client.get_connection_with_timeout(Duration::from_secs(2))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            *con = Some(c);
        }
        let result = cmd.query(con.as_mut().expect("opened above"));
        if result.is_err() {
            *con = None;
        }
        result
    }

    /// Every key in the database.
    pub fn try_keys(&self) -> redis::RedisResult<Vec<String>> {
        self.query(redis::cmd("KEYS").arg("*"))
    }

    /// Every key in the database, or panics (for tests).
    pub fn keys(&self) -> Vec<String> {
        self.try_keys().expect("KEYS * on the test's Redis")
    }

    /// Stops it now (SIGKILL: it writes nothing to lose); also on drop.
    pub fn stop(&mut self) {
        drop(self.con.get_mut().unwrap_or_else(|p| p.into_inner()).take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        drop(self.con.get_mut().unwrap_or_else(|p| p.into_inner()).take());
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// A worker node: a multiproc program (the caller's own build) run with
/// [`CLUSTER_ENV`] set, which makes it a node in `multiproc::init()`.
pub struct Node {
    child: Child,
    stop_wait: Duration,
}

impl Node {
    /// The command that runs `exe` with `args` as a node of the Redis at `url` with key
    /// `key` and `slots` slots: no key file, stdin and stdout discarded, stderr
    /// inherited. Add more environment (`MULTIPROC_CLUSTER_LEASE_MS`, ...) before
    /// [`spawn`](Node::spawn).
    pub fn command(exe: &Path, args: &[&str], url: &str, key: &[u8], slots: usize) -> Command {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env(CLUSTER_ENV, url)
            .env(KEY_ENV, std::ffi::OsStr::from_bytes(key))
            .env_remove(KEY_FILE_ENV)
            .env("MULTIPROC_CLUSTER_SLOTS", slots.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        cmd
    }

    /// Starts `cmd` (see [`command`](Node::command)); dropping the node kills it at once
    /// unless [`stop_wait`](Node::stop_wait) says otherwise.
    pub fn spawn(mut cmd: Command) -> io::Result<Node> {
        let child = cmd.spawn()?;
        Ok(Node {
            child,
            stop_wait: Duration::ZERO,
        })
    }

    /// On drop, SIGTERM first and SIGKILL only if it has not exited after `wait`.
    pub fn stop_wait(mut self, wait: Duration) -> Node {
        self.stop_wait = wait;
        self
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it `signal` (ignoring a node already gone).
    pub fn signal(&self, signal: i32) {
        let _ = send_signal(self.child.id(), signal);
    }

    /// Waits for it to exit (at most `timeout`); its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        wait_exit(&mut self.child, timeout).and_then(|s| s.code())
    }

    /// Its exit status, if it has exited (reaped).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(mut self) -> io::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Stops it as drop does, now; whether it exited of itself (within the stop wait).
    pub fn stop(mut self) -> bool {
        stop(&mut self.child, self.stop_wait)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        stop(&mut self.child, self.stop_wait);
    }
}
