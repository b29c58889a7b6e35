//! The cluster pool over Redis (feature `cluster`, on by default): one program that is
//! both the caller and its worker nodes. Started with `MULTIPROC_CLUSTER` set, it is a
//! node (`multiproc::init()` serves until SIGTERM, then exits 0); otherwise it starts
//! two nodes (itself, again, with `MULTIPROC_CLUSTER=<url>` and one slot each), runs a
//! map and a call that panics through `multiproc::cluster::Pool`, lists the nodes
//! (`pool.workers()`), then stops them with SIGTERM, as a batch system would, and
//! waits for them.
//!
//! Run it with a Redis server and a key shared by the caller and its nodes
//! (`MULTIPROC_CLUSTER_KEY`, at least 16 bytes; the nodes inherit it):
//!
//! ```text
//! redis-server --port 6390 --save '' --appendonly no &
//! export MULTIPROC_CLUSTER_KEY=$(head -c 32 /dev/urandom | base64)
//! cargo run --example cluster -- redis://127.0.0.1:6390/0
//! ```
//!
//! It asserts what it prints and ends with `OK`.
// Raw libc calls on processes (signals) that it needs to make.
#![allow(unsafe_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::cluster::{self, CLUSTER_ENV, KEY_ENV};
use multiproc::prelude::*;

fn score(x: u64) -> u64 {
    (0..x % 1000).map(|i| i * i % 7).sum()
}

fn picky(x: u64) -> u64 {
    assert!(x != 13, "13 is unlucky");
    x
}

/// A node process: this very executable, re-run with `MULTIPROC_CLUSTER` set. Killed
/// if still running when dropped (so that a failed assertion leaves no node behind).
struct Node(Child);

impl Node {
    fn start(url: &str, key: &str) -> std::io::Result<Node> {
        let child = Command::new(std::env::current_exe()?)
            .env(CLUSTER_ENV, url) // makes it a node, inside multiproc::init()
            .env(KEY_ENV, key) // the key it checks every message with
            .env("MULTIPROC_CLUSTER_SLOTS", "1") // one local worker process
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Node(child))
    }

    /// SIGTERM: the node takes no new work, finishes or hands back what it holds, and
    /// exits 0. Waits at most `timeout`; the exit code.
    fn stop(&mut self, timeout: Duration) -> Option<i32> {
        // SAFETY: kill(2) on the pid of our own child, which is not reaped yet.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    multiproc::init(); // with MULTIPROC_CLUSTER set, this process is a node: it never returns

    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: cluster REDIS_URL (e.g. redis://127.0.0.1:6390/0)");
        std::process::exit(2);
    };
    let Ok(key) = std::env::var(KEY_ENV) else {
        eprintln!("set {KEY_ENV} to a key of at least 16 bytes (head -c 32 /dev/urandom | base64)");
        std::process::exit(2);
    };

    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(Node::start(&url, &key)?);
    }

    // The caller: the same TaskPool interface as the local Pool.
    let pool = cluster::Pool::builder(&url)
        .retries(2) // runs of a chunk lost with its node
        .build()?; // the key from MULTIPROC_CLUSTER_KEY
    println!("caller on {}", pool.address());
    let scores = pool.map(score, 0..2000)?;
    assert_eq!(scores, (0..2000).map(score).collect::<Vec<_>>());

    // A panic on a node comes back wrapped in Error::OnNode, which names the node;
    // the predicates look through it.
    let err = pool.apply(picky, 13).unwrap_err();
    println!("a call that panicked: {err}");
    match &err {
        Error::OnNode { host, error } => {
            assert!(!host.is_empty());
            assert!(matches!(**error, Error::Panicked { .. }), "{error}");
        }
        _ => panic!("expected Error::OnNode, got {err}"),
    }
    assert!(err.is_panic());
    assert_eq!(err.panic_message(), Some("13 is unlucky"));
    assert_eq!(pool.apply(picky, 12)?, 12); // the node carries on

    // The nodes, from their heartbeats (read about every second).
    let deadline = Instant::now() + Duration::from_secs(15);
    while pool.workers().len() < nodes.len() {
        assert!(
            Instant::now() < deadline,
            "nodes seen: {:?}",
            pool.workers()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let workers = pool.workers();
    for w in &workers {
        println!(
            "node {}: {} slots, {} busy, {} refused",
            w.name(),
            w.slots,
            w.busy,
            w.refused
        );
    }
    let mut seen: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    let mut started: Vec<u32> = nodes.iter().map(|n| n.0.id()).collect();
    seen.sort();
    started.sort();
    assert_eq!(seen, started);
    assert!(workers.iter().all(|w| w.slots == 1 && w.refused == 0));
    drop(pool);

    for node in &mut nodes {
        let code = node.stop(Duration::from_secs(20));
        println!("node {} stopped: exit code {code:?}", node.0.id());
        assert_eq!(code, Some(0));
    }
    println!("OK");
    Ok(())
}
