//! The cluster pool against a real `redis-server` on 127.0.0.1 that each test starts
//! and stops itself, with worker nodes that are this test binary re-run as
//! `cluster_node_entry` (a node must be the caller's own build).
// Raw libc calls on processes (signals, limits) that the test or bench needs to make.
#![allow(unsafe_code)]
#![cfg(feature = "cluster")]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::Error;
use multiproc::cluster::{Key, Pool};

const KEY: &[u8] = b"test-key-0123456789abcdef-0123456789";
const LEASE: Duration = Duration::from_millis(1000);

/// Not a test: the entry point of a node process (see `Node::start`).
#[test]
fn cluster_node_entry() {
    if std::env::var_os("MULTIPROC_CLUSTER").is_some() {
        multiproc::init(); // serves until SIGTERM, then exits
        unreachable!("init returns only when the process is no node");
    }
}

use common::redis::Redis;

/// The command that runs `exe` (this test binary, or a copy of another build) as a
/// node of `redis` with `slots` slots; stdout discarded, stderr left to the caller.
fn node_command(exe: &std::path::Path, redis: &Redis, key: &[u8], slots: usize) -> Command {
    let args = [
        "--exact",
        "cluster_node_entry",
        "--nocapture",
        "--test-threads=1",
    ];
    Node::command(exe, &args, &redis.url(), key, slots)
}

/// A worker node: this test binary, re-run (the shared fixture's, killed on drop).
struct Node(multiproc_testkit::Node);

impl Node {
    fn command(
        exe: &std::path::Path,
        args: &[&str],
        url: &str,
        key: &[u8],
        slots: usize,
    ) -> Command {
        multiproc_testkit::Node::command(exe, args, url, key, slots)
    }

    fn start(redis: &Redis, key: &[u8], slots: usize) -> Node {
        Node::start_with(redis, key, slots, &[])
    }

    /// A node with more environment (`MULTIPROC_CLUSTER_DRAIN_MS` is 200 unless set).
    fn start_with(redis: &Redis, key: &[u8], slots: usize, env: &[(&str, &str)]) -> Node {
        Node::start_exe(&std::env::current_exe().unwrap(), redis, key, slots, env)
    }

    /// A node run by `exe` (this test binary, or a copy of another build).
    fn start_exe(
        exe: &std::path::Path,
        redis: &Redis,
        key: &[u8],
        slots: usize,
        env: &[(&str, &str)],
    ) -> Node {
        let mut cmd = node_command(exe, redis, key, slots);
        cmd.env("MULTIPROC_CLUSTER_LEASE_MS", LEASE.as_millis().to_string())
            .env("MULTIPROC_CLUSTER_DRAIN_MS", "200")
            .envs(env.iter().copied());
        Node(multiproc_testkit::Node::spawn(cmd).unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    fn signal(&self, sig: i32) {
        self.0.signal(sig);
    }

    /// Waits for it to exit (at most `timeout`); its exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        self.0.wait(timeout)
    }
}

fn key() -> Key {
    Key::new(KEY).unwrap()
}

fn pool(redis: &Redis) -> Pool {
    Pool::builder(&redis.url())
        .key(key())
        .lease(LEASE)
        .build()
        .unwrap()
}

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn a_map_over_three_nodes_gives_every_value() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis, KEY, 2)).collect();
    let pool = pool(&redis);
    let out = pool.map(double, 0..10_000u64).unwrap();
    assert_eq!(out, (0..10_000u64).map(double).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.workers().len() < 3 {
        assert!(Instant::now() < deadline, "nodes: {:?}", pool.workers());
        std::thread::sleep(Duration::from_millis(50));
    }
    let workers = pool.workers();
    let mut pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    pids.sort();
    let mut want: Vec<u32> = nodes.iter().map(Node::pid).collect();
    want.sort();
    assert_eq!(pids, want);
    assert!(workers.iter().all(|w| w.slots == 2 && w.refused == 0));
    drop(pool);
    drop(nodes);
}

/// Sleeps `ms`, logs its run (one line in `dir/<pid>`), returns `x`.
fn logged((x, ms, dir): (u64, u64, String)) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    let path = std::path::Path::new(&dir).join(std::process::id().to_string());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    use std::io::Write;
    writeln!(f, "{x}").unwrap();
    x
}

/// Every run logged in `dir`, by input.
fn runs(dir: &std::path::Path) -> Vec<u64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            out.push(line.parse().unwrap());
        }
    }
    out.sort();
    out
}

fn args(n: u64, ms: u64, dir: &common::TempDir) -> Vec<(u64, u64, String)> {
    let d = dir.path().to_string_lossy().into_owned();
    (0..n).map(|i| (i, ms, d.clone())).collect()
}

#[test]
fn a_node_killed_mid_map_costs_only_reruns_and_a_new_node_gets_work() {
    let redis = Redis::start();
    let dir = common::TempDir::new("cluster-kill");
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis, KEY, 1)).collect();
    let pool = pool(&redis);
    let n = 600;
    let t = Instant::now();
    let fourth = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            // Mid-map: kill one node, start a fourth.
            std::thread::sleep(Duration::from_millis(700));
            nodes[0].signal(libc::SIGKILL);
            let fourth = Node::start(&redis, KEY, 1);
            let pid = fourth.pid();
            let mut busy = false;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !busy && Instant::now() < deadline {
                busy = pool.workers().iter().any(|w| w.pid == pid && w.busy > 0);
                std::thread::sleep(Duration::from_millis(50));
            }
            (fourth, busy)
        });
        let out = pool.map(logged, args(n, 10, &dir)).unwrap();
        assert_eq!(out, (0..n).collect::<Vec<_>>());
        let (fourth, busy) = watcher.join().unwrap();
        assert!(busy, "the node started mid-map never took work");
        fourth
    });
    drop((nodes, fourth));
    let all = runs(dir.path());
    let mut distinct = all.clone();
    distinct.dedup();
    assert_eq!(distinct.len() as u64, n, "every call ran");
    eprintln!(
        "{n} calls in {:?}: {} runs, {} re-runs after the kill",
        t.elapsed(),
        all.len(),
        all.len() as u64 - n
    );
}

fn boom(x: u32) -> u32 {
    if x == 3 {
        panic!("call {x} fails on purpose");
    }
    x
}

fn boom_logged((x, dir): (u64, String)) -> u64 {
    logged((x, 0, dir));
    if x == 5 {
        panic!("call 5 fails on purpose");
    }
    x
}

#[test]
fn a_panic_is_answered_once_naming_the_node_not_retried() {
    let redis = Redis::start();
    let dir = common::TempDir::new("cluster-panic");
    let _nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis, KEY, 2)).collect();
    let pool = pool(&redis);
    let d = dir.path().to_string_lossy().into_owned();
    let out = pool
        .map_results(boom_logged, (0..10u64).map(|i| (i, d.clone())))
        .unwrap();
    for (i, r) in out.iter().enumerate() {
        if i == 5 {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_panic(), "{e}");
            assert_eq!(e.panic_message(), Some("call 5 fails on purpose"));
            assert!(matches!(e, Error::OnNode { .. }), "{e:?}");
            assert!(e.to_string().contains("on cluster node"), "{e}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
    assert_eq!(
        runs(dir.path()),
        (0..10).collect::<Vec<_>>(),
        "one run each"
    );
    let err = pool.apply(boom, 3).unwrap_err();
    assert!(err.is_panic(), "{err}");
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn sigterm_hands_the_nodes_leases_back_and_it_exits_zero() {
    let redis = Redis::start();
    let mut first = Node::start(&redis, KEY, 1);
    let pool = pool(&redis);
    let call = pool.apply_async(nap, 3000).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pool
        .workers()
        .iter()
        .any(|w| w.pid == first.pid() && w.busy > 0)
    {
        assert!(Instant::now() < deadline, "the call never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _second = Node::start(&redis, KEY, 1);
    first.signal(libc::SIGTERM);
    // 200 ms of drain, then the chunk is handed back and the node exits cleanly.
    assert_eq!(first.wait(Duration::from_secs(10)), Some(0));
    assert_eq!(call.get_timeout(Duration::from_secs(30)).unwrap(), 3000);
}

/// Creates the file `path`, then sleeps `ms`: a call whose start the test can see.
fn started((ms, path): (u64, String)) -> u64 {
    std::fs::write(&path, b"").unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Waits until `path` exists (a call marked by `started` runs).
fn wait_for_file(path: &std::path::Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM during a node's very first call: the call finishes within the drain time
/// and its answer reaches the caller, and the node exits 0 as soon as it has sent it
/// (not at the end of the drain time).
#[test]
fn sigterm_during_a_nodes_first_call_answers_it_and_exits_at_once() {
    let redis = Redis::start();
    let dir = common::TempDir::new("cluster-first-term");
    let mut node = Node::start_with(&redis, KEY, 1, &[("MULTIPROC_CLUSTER_DRAIN_MS", "20000")]);
    let pool = Pool::builder(&redis.url())
        .key(key())
        .lease(LEASE)
        .retries(0)
        .build()
        .unwrap();
    let mark = dir.path().join("started");
    let call = pool
        .apply_async(started, (1500, mark.to_string_lossy().into_owned()))
        .unwrap();
    wait_for_file(&mark, Duration::from_secs(20));
    node.signal(libc::SIGTERM);
    let t = Instant::now();
    // Another node is there to take the call over if the first one lost it.
    let _other = Node::start(&redis, KEY, 1);
    let got = call.get_timeout(Duration::from_secs(30));
    let answered = t.elapsed();
    let code = node.wait(Duration::from_secs(30));
    let exited = t.elapsed();
    eprintln!(
        "SIGTERM during the first call: answered after {answered:?} ({got:?}), node exited {code:?} after {exited:?}"
    );
    assert_eq!(got.unwrap(), 1500);
    assert_eq!(code, Some(0));
    assert!(
        answered < Duration::from_millis(1500 + 1500),
        "{answered:?}"
    );
    assert!(exited < answered + Duration::from_secs(2), "{exited:?}");
}

/// SIGTERM with a drain time shorter than the call: the node hands the chunk back at
/// once and exits 0; with no retry left, the call's error says that it was handed back,
/// not that a node was lost.
#[test]
fn a_call_handed_back_on_sigterm_with_no_retry_left_says_so() {
    let redis = Redis::start();
    let dir = common::TempDir::new("cluster-handed-back");
    let mut node = Node::start(&redis, KEY, 1); // 200 ms of drain
    let pool = Pool::builder(&redis.url())
        .key(key())
        .lease(LEASE)
        .retries(0)
        .build()
        .unwrap();
    let mark = dir.path().join("started");
    let call = pool
        .apply_async(started, (5000, mark.to_string_lossy().into_owned()))
        .unwrap();
    wait_for_file(&mark, Duration::from_secs(20));
    let _other = Node::start(&redis, KEY, 1);
    node.signal(libc::SIGTERM);
    let t = Instant::now();
    assert_eq!(node.wait(Duration::from_secs(10)), Some(0));
    let exited = t.elapsed();
    let err = call.get_timeout(Duration::from_secs(30)).unwrap_err();
    let answered = t.elapsed();
    eprintln!(
        "handed back: node exited after {exited:?}, the call answered after {answered:?}: {err}"
    );
    assert!(matches!(err, Error::Cluster { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("call 0 was handed back by node"), "{text}");
    assert!(
        text.contains(&format!(":{} (SIGTERM)", node.pid())),
        "{text}"
    );
    assert!(!text.contains("renewing"), "{text}");
    assert!(exited < Duration::from_secs(2), "{exited:?}");
    // No lease to wait for: the other node takes the chunk at once.
    assert!(answered < LEASE + Duration::from_secs(2), "{answered:?}");
}

/// What the pools of this test process log at `warn` and above (the nodes are other
/// processes), one event a line; each test reads the lines naming its own Redis.
static LOGS: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_str(&String::from_utf8_lossy(b));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("multiproc=warn"))
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

/// The logged warnings that name `redis`.
fn warnings(redis: &Redis) -> Vec<String> {
    let url = redis.url();
    LOGS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .lines()
        .filter(|l| l.contains(&url))
        .map(str::to_owned)
        .collect()
}

/// Waits until `pool.workers()` satisfies `ok`; how long that took.
fn until_workers(
    pool: &Pool,
    timeout: Duration,
    ok: impl Fn(&[multiproc::cluster::NodeInfo]) -> bool,
) -> Duration {
    let t = Instant::now();
    while !ok(&pool.workers()) {
        assert!(t.elapsed() < timeout, "workers: {:?}", pool.workers());
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

/// A node SIGKILLed during call 1 (alone in its chunk): the caller warns that the node
/// is lost, drops it from `workers()` within about a lease, and, with one retry, warns
/// that call 1 runs again elsewhere; the map gets every value.
#[test]
fn a_lost_node_is_warned_about_and_leaves_workers_and_its_calls_run_again() {
    capture_logs();
    let redis = Redis::start();
    let dir = common::TempDir::new("cluster-lost");
    let first = Node::start(&redis, KEY, 1);
    let pool = Pool::builder(&redis.url())
        .key(key())
        .lease(LEASE)
        .retries(1)
        .chunk_size(multiproc::ChunkSize::Fixed(1))
        .build()
        .unwrap();
    let mark = dir.path().join("started").to_string_lossy().into_owned();
    let calls = vec![(0, String::new()), (1500, mark.clone())];
    let out = std::thread::scope(|s| {
        let map = s.spawn(|| pool.map_results(nap_or_mark, calls));
        wait_for_file(std::path::Path::new(&mark), Duration::from_secs(20));
        let pid = first.pid();
        until_workers(&pool, Duration::from_secs(10), |w| {
            w.iter().any(|n| n.pid == pid)
        });
        first.signal(libc::SIGKILL);
        let _ = std::fs::remove_file(&mark);
        let second = Node::start(&redis, KEY, 1);
        let gone = until_workers(&pool, Duration::from_secs(10), |w| {
            !w.iter().any(|n| n.pid == pid)
        });
        eprintln!("a SIGKILLed node left workers() {gone:?} after the kill (lease {LEASE:?})");
        assert!(gone < LEASE * 2 + Duration::from_millis(500), "{gone:?}");
        (map.join().unwrap(), second)
    });
    let (out, second) = out;
    let values: Vec<u64> = out.unwrap().into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(values, vec![0, 1500]);
    // Once the job is over, no node is busy, and the lost one is not listed.
    until_workers(&pool, Duration::from_secs(5), |w| {
        w.len() == 1 && w[0].pid == second.pid() && w[0].busy == 0
    });
    let logs = warnings(&redis).join("\n");
    eprintln!("the caller's warnings:\n{logs}");
    let lost = format!(":{} lost: no heartbeat", first.pid());
    assert!(logs.contains(&lost), "{logs}");
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains("calls [1] run again on node"), "{logs}");
    assert!(
        logs.contains(&format!(":{} was lost", first.pid())),
        "{logs}"
    );
}

/// Sleeps `ms`; with a path, creates that file first (see `started`).
fn nap_or_mark((ms, path): (u64, String)) -> u64 {
    if path.is_empty() {
        return nap(ms);
    }
    started((ms, path))
}

/// The same with no retry: the call at index 1 gives up, and its error and the
/// warning name it as the caller numbers it (index 1, not its place in its chunk).
#[test]
fn calls_that_give_up_are_named_by_their_index_and_warned_about() {
    capture_logs();
    let redis = Redis::start();
    let dir = common::TempDir::new("cluster-gave-up");
    let first = Node::start(&redis, KEY, 1);
    let pool = Pool::builder(&redis.url())
        .key(key())
        .lease(LEASE)
        .retries(0)
        .chunk_size(multiproc::ChunkSize::Fixed(1))
        .build()
        .unwrap();
    let mark = dir.path().join("started").to_string_lossy().into_owned();
    let calls = vec![(0, String::new()), (5000, mark.clone()), (0, String::new())];
    let out = std::thread::scope(|s| {
        let map = s.spawn(|| pool.map_results(nap_or_mark, calls));
        wait_for_file(std::path::Path::new(&mark), Duration::from_secs(20));
        first.signal(libc::SIGKILL);
        let second = Node::start(&redis, KEY, 1);
        let out = map.join().unwrap().unwrap();
        drop(second);
        out
    });
    assert_eq!(*out[0].as_ref().unwrap(), 0);
    assert_eq!(*out[2].as_ref().unwrap(), 0);
    let err = out[1].as_ref().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("call 1 was lost with node ") && text.contains(&format!(":{}", first.pid())),
        "{text}"
    );
    let logs = warnings(&redis).join("\n");
    eprintln!("the caller's warnings:\n{logs}");
    assert!(logs.contains("calls [1] gave up after 1 run(s)"), "{logs}");
}

/// With a task timeout, chunks hold one call each: the call that times out is named
/// by its index in the map.
#[test]
fn a_timeout_names_the_call_by_its_index() {
    let redis = Redis::start();
    let _node = Node::start(&redis, KEY, 2);
    let pool = Pool::builder(&redis.url())
        .key(key())
        .lease(LEASE)
        .task_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let out = pool.map_results(nap, [10, 10, 10, 3000]).unwrap();
    for r in &out[..3] {
        assert_eq!(*r.as_ref().unwrap(), 10);
    }
    let err = out[3].as_ref().unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.to_string().contains("call 3 of a cluster job"), "{err}");
}

/// A copy of this test binary whose GNU build id differs in one byte: to Redis and to
/// the nodes, what a rebuilt binary is (its work lives under another build's keys).
fn other_build(dir: &common::TempDir) -> std::path::PathBuf {
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    // The note: name size 4, descriptor size 20, type NT_GNU_BUILD_ID (3), "GNU\0".
    let note = [4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
    match bytes.windows(note.len()).position(|w| w == note) {
        Some(at) => bytes[at + note.len()] ^= 0xff,
        // No build id: the build is known by a hash of the file's bytes.
        None => bytes.push(0),
    }
    let path = dir.path().join("other-build");
    std::fs::write(&path, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Nodes of another build never take this build's work: the caller says so after
/// `wait_for_nodes`, naming how many there are, instead of hanging; once a node of its
/// build comes, the same pool works.
#[test]
fn a_caller_whose_build_no_node_runs_says_so_in_bounded_time() {
    let redis = Redis::start();
    let dir = common::TempDir::new("cluster-builds");
    let exe = other_build(&dir);
    let _others: Vec<Node> = (0..3)
        .map(|_| Node::start_exe(&exe, &redis, KEY, 1, &[]))
        .collect();
    // Until all three are listed in the registry of every build's nodes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: usize = redis::cmd("ZCARD")
            .arg("multiproc:nodes")
            .query(&mut redis.con())
            .unwrap();
        if n == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} nodes listed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let wait = Duration::from_secs(2);
    let pool = Pool::builder(&redis.url())
        .key(key())
        .lease(LEASE)
        .wait_for_nodes(Some(wait))
        .build()
        .unwrap();
    let t = Instant::now();
    let err = pool.map(double, 0..10u64).unwrap_err();
    let took = t.elapsed();
    eprintln!("no node of this build: {took:?}: {err}");
    assert!(matches!(err, Error::Cluster { .. }), "{err:?}");
    assert!(
        err.to_string().contains(
            "no node of this build (3 nodes of other builds are connected: rebuild/restart them)"
        ),
        "{err}"
    );
    assert!(
        took >= wait && took < wait + Duration::from_secs(3),
        "{took:?}"
    );
    assert!(pool.workers().is_empty());
    let _mine = Node::start(&redis, KEY, 1);
    assert_eq!(
        pool.map(double, 0..10u64).unwrap(),
        (0..10u64).map(double).collect::<Vec<_>>()
    );
}

/// No node at all: "no node connected" after `wait_for_nodes`; with `None`, the caller
/// waits for a node that comes late.
#[test]
fn a_caller_with_no_node_says_so_or_waits_if_asked() {
    let redis = Redis::start();
    let pool = Pool::builder(&redis.url())
        .key(key())
        .lease(LEASE)
        .wait_for_nodes(Some(Duration::from_secs(1)))
        .build()
        .unwrap();
    let t = Instant::now();
    let err = pool.apply(double, 1).unwrap_err();
    let took = t.elapsed();
    assert!(err.to_string().contains("no node connected"), "{err}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    let patient = Pool::builder(&redis.url())
        .key(key())
        .lease(LEASE)
        .wait_for_nodes(None)
        .build()
        .unwrap();
    let call = patient.apply_async(double, 21).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!call.ready());
    let _node = Node::start(&redis, KEY, 1);
    assert_eq!(call.get_timeout(Duration::from_secs(20)).unwrap(), 42);
}

#[test]
fn nodes_with_the_wrong_key_run_nothing_and_the_caller_says_why() {
    let redis = Redis::start();
    let dir = common::TempDir::new("cluster-key");
    let _nodes: Vec<Node> = (0..2)
        .map(|_| Node::start(&redis, b"another-key-0123456789abcdef", 1))
        .collect();
    let pool = pool(&redis);
    let t = Instant::now();
    let err = pool.map(logged, args(4, 0, &dir)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(matches!(err, Error::Cluster { .. }), "{err:?}");
    assert!(err.to_string().contains("wrong key?"), "{err}");
    assert!(
        runs(dir.path()).is_empty(),
        "a node with the wrong key ran a call"
    );
    assert!(pool.workers().iter().all(|w| w.refused > 0));
}

#[test]
fn a_forged_message_is_dropped_and_the_work_goes_on() {
    let redis = Redis::start();
    let _node = Node::start(&redis, KEY, 2);
    let pool = pool(&redis);
    assert_eq!(pool.apply(double, 1).unwrap(), 2);
    let calls: Vec<String> = redis::cmd("KEYS")
        .arg("*:calls")
        .query(&mut redis.con())
        .unwrap();
    assert_eq!(calls.len(), 1);
    // Right stream, a tag that does not match.
    let forged = vec![0u8; 64];
    let _: String = redis::cmd("XADD")
        .arg(&calls[0])
        .arg("*")
        .arg("m")
        .arg(forged)
        .query(&mut redis.con())
        .unwrap();
    assert_eq!(pool.map(double, 0..100u64).unwrap().len(), 100);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let refused = pool.workers().iter().map(|w| w.refused).sum::<u64>();
        let left: usize = redis::cmd("XLEN")
            .arg(&calls[0])
            .query(&mut redis.con())
            .unwrap();
        if refused > 0 && left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refused {refused}, {left} entries left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redis_going_away_mid_map_is_an_error_in_seconds_not_a_hang() {
    let mut redis = Redis::start();
    let dir = common::TempDir::new("cluster-down");
    let _node = Node::start(&redis, KEY, 2);
    let pool = Pool::builder(&redis.url())
        .key(key())
        .lease(LEASE)
        .unreachable_after(Duration::from_secs(2))
        .build()
        .unwrap();
    let t = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            redis.stop();
        });
        let t = Instant::now();
        let err = pool.map(logged, args(2000, 5, &dir)).unwrap_err();
        assert!(matches!(err, Error::Cluster { .. }), "{err:?}");
        assert!(err.to_string().contains("unreachable"), "{err}");
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
        t.elapsed()
    });
    assert!(t < Duration::from_secs(10), "{t:?}");
    // The pool stays usable as an object: its calls answer the same error.
    assert!(matches!(pool.apply(double, 1), Err(Error::Cluster { .. })));
}

/// Not a test: the entry point of a caller process that submits work and waits (the
/// test that starts it kills it).
#[test]
fn cluster_caller_entry() {
    let Some(url) = std::env::var_os("MULTIPROC_TEST_CALLER") else {
        return;
    };
    let pool = Pool::builder(url.to_str().unwrap())
        .key(key())
        .lease(LEASE)
        .build()
        .unwrap();
    let _ = pool.map(nap, vec![50u64; 10_000]);
}

#[test]
fn a_caller_killed_leaves_nothing_in_redis_after_the_expiry() {
    let redis = Redis::start();
    let node = Node::start(&redis, KEY, 1);
    let mut caller = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cluster_caller_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_TEST_CALLER", redis.url())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the node works for it, then kill it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys = redis.keys();
        if keys.iter().any(|k| k.ends_with(":calls"))
            && keys.iter().any(|k| k.ends_with(":answers"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the caller never started: {keys:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    caller.kill().unwrap();
    caller.wait().unwrap();
    // Its keys expire 4 leases after its last heartbeat; the node's stay.
    let deadline = Instant::now() + LEASE * 4 + Duration::from_secs(5);
    loop {
        let left: Vec<String> = redis
            .keys()
            .into_iter()
            .filter(|k| !k.contains(":node"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left in Redis: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(node);
}

fn pipe_arg(end: multiproc::PipeEnd<u32>) -> u32 {
    drop(end);
    0
}

#[test]
fn os_handles_cannot_cross_machines_and_say_so() {
    let redis = Redis::start();
    let pool = pool(&redis); // no node needed: the call is refused before it is sent
    let (a, _b) = multiproc::Pipe::<u32>::new().unwrap();
    let err = pool.apply(pipe_arg, a).unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err:?}");
    assert!(err.to_string().contains("OS handles"), "{err}");
}

/// Not a test: a caller on another "host" (see the namespace test), printing what it got.
#[test]
fn cluster_netns_caller_entry() {
    let Some(url) = std::env::var_os("MULTIPROC_TEST_NETNS_CALLER") else {
        return;
    };
    let pool = Pool::builder(url.to_str().unwrap())
        .key(key())
        .lease(LEASE)
        .build()
        .unwrap();
    let out = pool.map(double, 0..10_000u64).unwrap();
    assert_eq!(out, (0..10_000u64).map(double).collect::<Vec<_>>());
    let err = pool.apply(boom, 3).unwrap_err();
    println!("panic: {err}");
    // The caller reads the nodes' heartbeats about once a second: a quick map can end
    // before the first read that lists the node.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.workers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let hosts: Vec<String> = pool.workers().iter().map(|w| w.host.clone()).collect();
    println!("node hosts: {hosts:?}");
    println!("netns caller: OK");
}

/// A `redis-server` on host a of `hosts` (port 6390), for callers and nodes in the
/// namespaces; killed on drop.
struct NetnsRedis(Child);

impl NetnsRedis {
    fn start(hosts: &common::netns::TwoHosts, dir: &common::TempDir) -> NetnsRedis {
        let addr = common::netns::TwoHosts::ADDRS[0];
        let redis = Command::new("ip")
            .args(["netns", "exec", &hosts.names[0], "redis-server"])
            .args(["--port", "6390", "--bind", addr])
            // Not loopback: without a password Redis refuses such clients unless told.
            .args(["--protected-mode", "no", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let redis = NetnsRedis(redis);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("ip")
            .args(["netns", "exec", &hosts.names[0], "redis-cli"])
            .args(["-h", addr, "-p", "6390", "ping"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
        {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start in the namespace"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn url() -> String {
        format!("redis://{}:6390/0", common::netns::TwoHosts::ADDRS[0])
    }
}

impl Drop for NetnsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node on host `i` of `hosts` (the pid is the node's: `run_in` execs).
fn netns_node(hosts: &common::netns::TwoHosts, i: usize, env: &[(&str, &str)]) -> Child {
    hosts
        .run_in(i, &std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cluster_node_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_CLUSTER", NetnsRedis::url())
        .env("MULTIPROC_CLUSTER_KEY", std::str::from_utf8(KEY).unwrap())
        .env("MULTIPROC_CLUSTER_SLOTS", "2")
        .env("MULTIPROC_CLUSTER_LEASE_MS", LEASE.as_millis().to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_node_on_another_host_serves_a_caller_across_a_veth_pair() {
    let Some(hosts) = common::netns::TwoHosts::try_create() else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let dir = common::TempDir::new("cluster-netns");
    // Redis and the caller on host a; the node on host b.
    let redis = NetnsRedis::start(&hosts, &dir);
    let mut node = netns_node(&hosts, 1, &[]);
    let out = hosts
        .run_in(0, &exe)
        .args([
            "--exact",
            "cluster_netns_caller_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_TEST_NETNS_CALLER", NetnsRedis::url())
        .output()
        .unwrap();
    let _ = node.kill();
    let _ = node.wait();
    drop(redis);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("netns caller: OK"), "{stdout}");
    // The node ran on host b, and the panic's error names it.
    let b = &hosts.names[1];
    assert!(
        stdout.contains(&format!("node hosts: [\"{b}\"]")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("on cluster node {b}:")),
        "{stdout}"
    );
}

/// Not a test: a caller on host a whose one call (marked by `started`) the test stops
/// the node of with SIGTERM (see the namespace test).
#[test]
fn cluster_netns_term_caller_entry() {
    let Some(url) = std::env::var_os("MULTIPROC_TEST_NETNS_TERM_CALLER") else {
        return;
    };
    let mark = std::env::var("MULTIPROC_TEST_MARK").unwrap();
    let pool = Pool::builder(url.to_str().unwrap())
        .key(key())
        .lease(LEASE)
        .retries(0)
        .build()
        .unwrap();
    let call = pool.apply_async(started, (1500, mark.clone())).unwrap();
    wait_for_file(std::path::Path::new(&mark), Duration::from_secs(20));
    let t = Instant::now();
    let got = call.get_timeout(Duration::from_secs(30));
    println!("answered {:?} after the call started: {got:?}", t.elapsed());
    if got.is_ok_and(|v| v == 1500) {
        println!("netns term caller: OK");
    }
}

/// SIGTERM during the first call of a node on another host: the answer crosses the
/// veth pair, and the node exits as soon as it is sent.
#[test]
fn sigterm_during_the_first_call_of_a_node_on_another_host() {
    let Some(hosts) = common::netns::TwoHosts::try_create() else {
        return;
    };
    let dir = common::TempDir::new("cluster-netns-term");
    let _redis = NetnsRedis::start(&hosts, &dir);
    let mut node = netns_node(&hosts, 1, &[("MULTIPROC_CLUSTER_DRAIN_MS", "20000")]);
    let mark = dir.path().join("started");
    let caller = hosts
        .run_in(0, &std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cluster_netns_term_caller_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_TEST_NETNS_TERM_CALLER", NetnsRedis::url())
        .env("MULTIPROC_TEST_MARK", &mark)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&mark, Duration::from_secs(30));
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    let _ = unsafe { libc::kill(node.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let code = loop {
        if let Some(s) = node.try_wait().unwrap() {
            break s.code();
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = node.kill();
            break node.wait().unwrap().code();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let exited = t.elapsed();
    let out = caller.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("across the veth pair: node exited {code:?} {exited:?} after SIGTERM; {stdout}");
    assert!(stdout.contains("netns term caller: OK"), "{stdout}");
    assert_eq!(code, Some(0));
    assert!(exited < Duration::from_secs(4), "{exited:?}");
}

/// A node is a service: with no subscriber installed by the program and no `RUST_LOG`,
/// it still says on stderr that it serves and that it stopped.
#[test]
fn a_node_logs_to_stderr_by_default() {
    let redis = Redis::start();
    let mut child = node_command(&std::env::current_exe().unwrap(), &redis, KEY, 1)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    assert!(first.contains("cluster node serving"), "{first}");
    assert!(first.contains("INFO"), "{first}");
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    let _ = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "{rest}");
    assert!(rest.contains("cluster node stopped"), "{rest}");
}

/// SIGTERM to every process of the node, as systemd (`KillMode=control-group`, its
/// default) and Slurm send it: the workers leave it to the node, so the running call
/// still finishes and is answered, and the node exits once it is.
#[test]
fn sigterm_to_the_nodes_whole_process_group_still_drains() {
    use std::os::unix::process::CommandExt;
    let redis = Redis::start();
    let dir = common::TempDir::new("cluster-group-term");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cluster_node_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_CLUSTER", redis.url())
        .env("MULTIPROC_CLUSTER_KEY", std::str::from_utf8(KEY).unwrap())
        .env("MULTIPROC_CLUSTER_SLOTS", "1")
        .env("MULTIPROC_CLUSTER_LEASE_MS", LEASE.as_millis().to_string())
        .env("MULTIPROC_CLUSTER_DRAIN_MS", "20000")
        .process_group(0)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pool = Pool::builder(&redis.url())
        .key(key())
        .lease(LEASE)
        .retries(0)
        .build()
        .unwrap();
    let mark = dir.path().join("started");
    let call = pool
        .apply_async(started, (1500, mark.to_string_lossy().into_owned()))
        .unwrap();
    wait_for_file(&mark, Duration::from_secs(20));
    // SAFETY: kill(2) on the process group of our own child, which leads it.
    let _ = unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    let t = Instant::now();
    let got = call.get_timeout(Duration::from_secs(30));
    let answered = t.elapsed();
    let code = child.wait().unwrap().code();
    let exited = t.elapsed();
    eprintln!(
        "SIGTERM to the node's group: {got:?} after {answered:?}, exit {code:?} after {exited:?}"
    );
    assert_eq!(got.unwrap(), 1500);
    assert_eq!(code, Some(0));
    assert!(exited < answered + Duration::from_secs(2), "{exited:?}");
}

/// Not a test: a node started by calling `cluster::serve` directly (no
/// `MULTIPROC_CLUSTER` in its environment), its pool started with the method in
/// `MULTIPROC_TEST_NODE_METHOD`.
#[test]
fn cluster_direct_node_entry() {
    let Ok(url) = std::env::var("MULTIPROC_TEST_DIRECT_NODE") else {
        return;
    };
    multiproc::init();
    let method: multiproc::StartMethod = std::env::var("MULTIPROC_TEST_NODE_METHOD")
        .unwrap()
        .parse()
        .unwrap();
    let options = multiproc::cluster::ServeOptions::from_env()
        .key(key())
        .start_method(method);
    let code = match multiproc::cluster::serve(&url, options) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("direct node: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// SIGTERM to the whole process group of a node that `cluster::serve` started (no
/// `MULTIPROC_CLUSTER` set), whose pool forks or spawns its workers: they leave the
/// signal to the node, which drains.
#[test]
fn sigterm_to_the_group_of_a_node_started_by_serve_drains_under_fork_and_spawn() {
    use std::os::unix::process::CommandExt;
    let redis = Redis::start();
    let dir = common::TempDir::new("cluster-direct-term");
    for method in ["fork", "spawn"] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cluster_direct_node_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_remove("MULTIPROC_CLUSTER")
            .env("MULTIPROC_TEST_DIRECT_NODE", redis.url())
            .env("MULTIPROC_TEST_NODE_METHOD", method)
            .env("MULTIPROC_CLUSTER_SLOTS", "1")
            .env("MULTIPROC_CLUSTER_LEASE_MS", LEASE.as_millis().to_string())
            .env("MULTIPROC_CLUSTER_DRAIN_MS", "20000")
            .process_group(0)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pool = Pool::builder(&redis.url())
            .key(key())
            .lease(LEASE)
            .retries(0)
            .build()
            .unwrap();
        let mark = dir.path().join(format!("started-{method}"));
        let call = pool
            .apply_async(started, (1500, mark.to_string_lossy().into_owned()))
            .unwrap();
        wait_for_file(&mark, Duration::from_secs(20));
        // SAFETY: kill(2) on the process group of our own child, which leads it.
        let _ = unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
        let got = call.get_timeout(Duration::from_secs(30));
        let code = child.wait().unwrap().code();
        eprintln!("{method}: SIGTERM to the group: {got:?}, exit {code:?}");
        assert_eq!(got.unwrap(), 1500, "{method}");
        assert_eq!(code, Some(0), "{method}");
    }
}

fn sleep_long(_: ()) {
    std::thread::sleep(Duration::from_secs(60));
}

/// On a node: starts a process with each start method, terminates it, and says how
/// each ended.
fn terminate_a_child(_: u32) -> Vec<String> {
    multiproc::StartMethod::ALL
        .iter()
        .map(|&m| {
            let mut p = multiproc::Process::builder()
                .start_method(m)
                .start(sleep_long, ())
                .unwrap();
            // Once it runs the task (its hello read): a SIGTERM before would end it too.
            std::thread::sleep(Duration::from_millis(300));
            p.terminate().unwrap();
            match p.join_timeout(Duration::from_secs(5)) {
                Err(Error::Killed { signal, .. }) => format!("{m}: killed by {signal}"),
                other => {
                    let _ = p.kill();
                    format!("{m}: not terminated: {other:?}")
                }
            }
        })
        .collect()
}

/// A process a task on a node starts has SIGTERM's default: `terminate` ends it.
#[test]
fn a_process_started_by_a_task_on_a_node_can_be_terminated() {
    let redis = Redis::start();
    let _node = Node::start(&redis, KEY, 1);
    let pool = pool(&redis);
    let got = pool.apply(terminate_a_child, 0).unwrap();
    assert!(got.iter().all(|m| m.contains("SIGTERM")), "{got:?}");
}

/// libfaketime, if installed (Debian's `faketime` package): it shifts a process's
/// wall clock.
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Nodes whose wall clocks are 10 minutes ahead of the caller's, or behind it (far
/// more than the leases): they still see the caller and it sees them, since every
/// timestamp in Redis is on Redis's clock.
#[test]
fn nodes_whose_clocks_are_off_by_minutes_still_serve() {
    if !std::path::Path::new(FAKETIME).exists() {
        eprintln!("skipped: no libfaketime ({FAKETIME}); apt-get install faketime");
        return;
    }
    // libfaketime makes a shared-memory segment and a semaphore in /dev/shm for each
    // process it is loaded in, and removes them only when that process exits normally
    // (nodes and their workers do not): remove what this test's processes made.
    struct FaketimeLeftovers(std::collections::BTreeSet<std::ffi::OsString>);
    fn faketime_entries() -> std::collections::BTreeSet<std::ffi::OsString> {
        std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name())
                    .filter(|n| {
                        let n = n.to_string_lossy();
                        n.starts_with("faketime_shm_") || n.starts_with("sem.faketime_sem_")
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    impl Drop for FaketimeLeftovers {
        fn drop(&mut self) {
            for name in faketime_entries().difference(&self.0) {
                let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(name));
            }
        }
    }
    let _leftovers = FaketimeLeftovers(faketime_entries());
    let redis = Redis::start();
    for shift in ["+600", "-600"] {
        let _node = Node::start_with(
            &redis,
            KEY,
            1,
            &[
                ("LD_PRELOAD", FAKETIME),
                ("FAKETIME", shift),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        );
        let pool = pool(&redis);
        let call = pool.apply_async(double, 21).unwrap();
        let got = call.get_timeout(Duration::from_secs(20));
        assert_eq!(got.unwrap(), 42, "a node with its clock at {shift} s");
    }
}
