//! The cluster flavour: one `redis-server` and two nodes of one slot each, started once
//! for all of this binary's cluster tests. A static is never dropped, so they are stopped
//! (and reaped) by an `atexit` handler; and in case the binary dies without exiting, they
//! have a parent-death signal, sent when the thread that started them ends: a thread of
//! their own that lives until the binary exits. Each test builds its own caller's pool on
//! them, one test at a time (so that the keys each pool leaves can be counted: none).

use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use multiproc::cluster::{Key, Pool};
use multiproc_testkit::{Node, Redis};

use super::contract::{Caps, Flavour, WORKERS};

const KEY: &[u8] = b"conformance-key-0123456789abcdef-0123";
const LEASE: Duration = Duration::from_millis(1000);

/// Not a test: the entry point of a node process (see [`fixture`]).
#[test]
fn cluster_node_entry() {
    if std::env::var_os(multiproc_testkit::CLUSTER_ENV).is_some() {
        multiproc::init(); // serves until SIGTERM, then exits
        unreachable!("init returns only when the process is no node");
    }
}

/// The fixture's environment names are the library's.
#[test]
fn the_fixture_spells_the_node_variables_as_the_library() {
    assert_eq!(
        multiproc_testkit::CLUSTER_ENV,
        multiproc::cluster::CLUSTER_ENV
    );
    assert_eq!(multiproc_testkit::KEY_ENV, multiproc::cluster::KEY_ENV);
    assert_eq!(
        multiproc_testkit::KEY_FILE_ENV,
        multiproc::cluster::KEY_FILE_ENV
    );
}

/// The nodes and Redis, for `stop_servers`.
static SERVERS: Mutex<Option<(Vec<Node>, Redis)>> = Mutex::new(None);

/// At exit: stops the nodes (SIGTERM: they drain and exit), then Redis, and reaps them.
extern "C" fn stop_servers() {
    let servers = SERVERS.lock().ok().and_then(|mut s| s.take());
    if let Some((nodes, redis)) = servers {
        for n in &nodes {
            n.signal(libc::SIGTERM);
        }
        drop(nodes); // each: waits (at most its stop wait), then SIGKILL; reaped
        drop(redis);
    }
}

struct Fixture {
    url: String,
    /// One cluster test at a time.
    serial: Mutex<()>,
}

/// Redis and the nodes, started on first use.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("cluster-fixture".into())
            .spawn(move || {
                let redis = Redis::try_start_with(true).unwrap_or_else(|e| {
                    panic!("{e}: run the README's test command, `cargo xtask test`")
                });
                let exe = std::env::current_exe().unwrap();
                let args = [
                    "--exact",
                    "cluster_flavour::cluster_node_entry",
                    "--nocapture",
                ];
                let nodes: Vec<Node> = (0..WORKERS)
                    .map(|_| {
                        let mut cmd = Node::command(&exe, &args, &redis.url(), KEY, 1);
                        cmd.env("MULTIPROC_CLUSTER_LEASE_MS", LEASE.as_millis().to_string())
                            .env("MULTIPROC_CLUSTER_DRAIN_MS", "200");
                        multiproc_testkit::die_with_parent(&mut cmd, libc::SIGTERM);
                        Node::spawn(cmd).unwrap().stop_wait(Duration::from_secs(5))
                    })
                    .collect();
                tx.send(redis.url()).unwrap();
                *SERVERS.lock().unwrap() = Some((nodes, redis));
                // SAFETY: atexit registers a plain `extern "C" fn()` that unwinds never
                // (`stop_servers` catches nothing that could panic: it only drops).
                unsafe { libc::atexit(stop_servers) };
                // Lives until the binary exits, so that the parent-death signal comes
                // only then.
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        Fixture {
            url: rx.recv().expect("the cluster fixture started"),
            serial: Mutex::new(()),
        }
    })
}

fn con(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .unwrap()
}

/// Keys other than the nodes' own records.
fn callers_keys(url: &str) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con(url)).unwrap();
    keys.into_iter().filter(|k| !k.contains(":node")).collect()
}

pub struct Cluster;

impl Flavour for Cluster {
    type P = Pool;
    /// A call on a node far away is not reached: it runs to its end there (documented on
    /// `AsyncResult::cancel` and the remote pools' `terminate`).
    const CAPS: Caps = Caps {
        cancel_stops_running: false,
        terminate_stops_running: false,
        terminate_delivers_running: false,
    };

    fn with_pool(f: impl FnOnce(&Self::P)) {
        let fx = fixture();
        let _one = fx.serial.lock().unwrap_or_else(|p| p.into_inner());
        let pool = Pool::builder(&fx.url)
            .key(Key::new(KEY).unwrap())
            .lease(LEASE)
            .build()
            .unwrap();
        f(&pool);
        drop(pool);
        // A pool deletes its keys when dropped (a terminated one too).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = callers_keys(&fx.url);
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "left in Redis: {left:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its nodes' slots in all.
    fn workers(p: &Self::P) -> usize {
        p.workers().iter().map(|n| n.slots as usize).sum()
    }
}
