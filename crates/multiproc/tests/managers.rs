//! `multiproc::managers`: a manager process and its proxies, used from child processes,
//! pool workers and unrelated processes over real sockets.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::connection::AuthKey;
use multiproc::managers::{
    Array, Barrier, Dict, Event, JoinableQueue, List, Lock, Manager, Namespace, Proxy, Queue, Value,
};
use multiproc::prelude::*;
use multiproc::{Pipe, PipeEnd};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn key() -> AuthKey {
    AuthKey::new(KEY.to_vec()).unwrap()
}

/// Waits until `f` holds, for at most `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

fn in_child((d, l): (Dict<String, u64>, List<u64>)) -> u64 {
    d.insert("child".into(), 7).unwrap();
    l.extend([1, 2, 3]).unwrap();
    l.len().unwrap() as u64
}

fn in_worker((d, i): (Dict<String, u64>, u64)) -> u64 {
    d.insert(format!("worker-{i}"), i * 10).unwrap();
    d.len().unwrap() as u64
}

/// An unrelated process: this test binary run again, which finds the objects by name in
/// the manager's root namespace knowing only the address and the key.
#[test]
fn managers_unrelated_entry() {
    let Ok(address) = std::env::var("MULTIPROC_TEST_MANAGER") else {
        return;
    };
    let key = AuthKey::new(std::env::var("MULTIPROC_TEST_MANAGER_KEY").unwrap()).unwrap();
    let manager = match Manager::connect(&address, &key) {
        Ok(m) => m,
        Err(e) => {
            println!("connect failed: {e:?}");
            return;
        }
    };
    if std::env::var("MULTIPROC_TEST_MANAGER_SETUP").is_ok() {
        let root = manager.root();
        root.set("d", &manager.dict::<String, u64>().unwrap())
            .unwrap();
        root.set("l", &manager.list::<u64>().unwrap()).unwrap();
    }
    let d: Dict<String, u64> = manager.root().get("d").unwrap().unwrap();
    d.insert("unrelated".into(), 99).unwrap();
    let l: List<u64> = manager.root().get("l").unwrap().unwrap();
    l.push(100).unwrap();
    println!("unrelated: OK {}", d.len().unwrap());
    if std::env::var("MULTIPROC_TEST_MANAGER_SHUTDOWN").is_ok() {
        manager.shutdown().unwrap();
        println!("shutdown: OK");
    }
}

fn run_unrelated(address: &str, key: &[u8], extra: &[(&str, &str)]) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "managers_unrelated_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_TEST_MANAGER", address)
        .env(
            "MULTIPROC_TEST_MANAGER_KEY",
            std::str::from_utf8(key).unwrap(),
        )
        .envs(extra.iter().copied())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dict_and_list_from_a_child_a_pool_worker_and_an_unrelated_process() {
    let manager = Manager::builder().key(&key()).start().unwrap();
    let d = manager.dict::<String, u64>().unwrap();
    let l = manager.list::<u64>().unwrap();

    // A child process.
    let p = Process::start(in_child, (d.clone(), l.clone())).unwrap();
    assert_eq!(p.join().unwrap(), 3);
    // Pool workers, the proxy as a task argument.
    let pool = Pool::builder().processes(2).build().unwrap();
    let args: Vec<_> = (0..4).map(|i| (d.clone(), i)).collect();
    pool.map(in_worker, args).unwrap();
    pool.close();
    pool.join().unwrap();
    // An unrelated process, by address and key.
    manager.root().set("d", &d).unwrap();
    manager.root().set("l", &l).unwrap();
    let out = run_unrelated(&manager.address().to_string(), KEY, &[]);
    assert!(out.contains("unrelated: OK 6"), "{out}");

    let mut keys = d.keys().unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "child",
            "unrelated",
            "worker-0",
            "worker-1",
            "worker-2",
            "worker-3"
        ]
    );
    assert_eq!(d.get("worker-3").unwrap(), Some(30));
    assert_eq!(l.snapshot().unwrap(), [1, 2, 3, 100]);

    // Every Dict method.
    assert_eq!(d.insert("child".into(), 8).unwrap(), Some(7));
    assert!(d.contains("child").unwrap());
    assert_eq!(d.remove("child").unwrap(), Some(8));
    assert_eq!(d.remove("child").unwrap(), None);
    assert!(!d.contains("child").unwrap());
    assert_eq!(d.get_or_insert("new".into(), 1).unwrap(), 1);
    assert_eq!(d.get_or_insert("new".into(), 2).unwrap(), 1);
    d.update([("a".to_string(), 1), ("b".to_string(), 2)])
        .unwrap();
    assert_eq!(d.len().unwrap(), 8);
    let mut values = d.values().unwrap();
    values.sort();
    assert_eq!(values, [0, 1, 1, 2, 10, 20, 30, 99]);
    let items = d.items().unwrap();
    assert!(items.contains(&("b".to_string(), 2)));
    let (k, v) = d.pop_item().unwrap().unwrap();
    assert_eq!(d.get(&k).unwrap(), None, "{k}={v} was popped");
    d.clear().unwrap();
    assert!(d.is_empty().unwrap());
    assert_eq!(d.pop_item().unwrap(), None);

    // Every List method.
    assert_eq!(l.pop().unwrap(), Some(100));
    assert_eq!(l.get(0).unwrap(), Some(1));
    assert_eq!(l.get(3).unwrap(), None);
    assert_eq!(l.set(0, 5).unwrap(), 1);
    l.insert(1, 9).unwrap();
    assert_eq!(l.snapshot().unwrap(), [5, 9, 2, 3]);
    assert_eq!(l.remove(1).unwrap(), 9);
    assert!(l.remove(10).is_err());
    assert!(l.set(10, 1).is_err());
    l.push(0).unwrap();
    l.sort().unwrap();
    assert_eq!(l.snapshot().unwrap(), [0, 2, 3, 5]);
    l.clear().unwrap();
    assert_eq!(l.len().unwrap(), 0);
    manager.shutdown().unwrap();
}

fn hold_and_report((d, mut tell): (Dict<u64, u64>, PipeEnd<u64>)) {
    let l = d.id();
    tell.send(&l).unwrap();
    // Wait to be told to go.
    let _ = tell.recv();
}

fn objects(m: &Manager) -> u64 {
    m.stats().unwrap().objects
}

#[test]
fn objects_live_while_a_proxy_refers_to_them_in_any_process() {
    let manager = Manager::start().unwrap();
    let base = objects(&manager); // the root namespace
    let d = manager.dict::<u64, u64>().unwrap();
    let copy = d.clone();
    assert_eq!(objects(&manager), base + 1);
    drop(d);
    assert_eq!(objects(&manager), base + 1, "a clone still refers to it");
    // Sent to a child, and dropped here while the child holds it.
    let (mut here, there) = Pipe::<u64>::new().unwrap();
    let child = Process::start(hold_and_report, (copy.clone(), there)).unwrap();
    let id = here.recv().unwrap();
    assert_eq!(id, copy.id());
    drop(copy);
    assert_eq!(objects(&manager), base + 1, "the child's proxy keeps it");
    here.send(&0).unwrap();
    child.join().unwrap();
    assert!(
        eventually(Duration::from_secs(2), || objects(&manager) == base),
        "the object outlived every proxy: {:?}",
        manager.stats()
    );
    // Nested: a list stored in a dict lives as long as the dict.
    let outer = manager.dict::<String, List<u64>>().unwrap();
    let inner = manager.list::<u64>().unwrap();
    outer.insert("l".into(), inner.clone()).unwrap();
    drop(inner);
    assert_eq!(objects(&manager), base + 2);
    let again = outer.get("l").unwrap().unwrap();
    again.push(1).unwrap();
    assert_eq!(outer.get("l").unwrap().unwrap().snapshot().unwrap(), [1]);
    drop(again);
    drop(outer);
    assert_eq!(objects(&manager), base);
    manager.shutdown().unwrap();
}

/// Holds objects of its own and blocks on a queue, until killed.
fn client_that_gets_killed(
    (address, key, q, mut ready): (String, Vec<u8>, Queue<u64>, PipeEnd<u8>),
) {
    let m = Manager::connect(&address, &AuthKey::new(key).unwrap()).unwrap();
    let d = m.dict::<u64, u64>().unwrap();
    d.insert(1, 1).unwrap();
    let _l = m.list_from([1u64, 2, 3]).unwrap();
    let q2 = q.clone();
    std::thread::spawn(move || q2.get());
    std::thread::sleep(Duration::from_millis(100));
    ready.send(&1).unwrap();
    let _ = q.get(); // blocks in the manager
}

#[test]
fn a_killed_client_leaves_no_object_and_no_thread() {
    let manager = Manager::start().unwrap();
    let q = manager.queue::<u64>(0).unwrap();
    let before = manager.stats().unwrap();
    let (mut here, there) = Pipe::<u8>::new().unwrap();
    let child = Process::start(
        client_that_gets_killed,
        (
            manager.address().to_string(),
            manager.key().as_bytes().to_vec(),
            q.clone(),
            there,
        ),
    )
    .unwrap();
    here.recv().unwrap();
    let during = manager.stats().unwrap();
    assert_eq!(during.objects, before.objects + 2, "{during:?}");
    assert!(during.threads >= before.threads + 2, "{during:?}");
    assert!(during.clients > before.clients, "{during:?}");
    child.kill().unwrap();
    assert!(child.join().unwrap_err().is_process_death());
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || {
            let s = manager.stats().unwrap();
            s.objects == before.objects
                && s.threads == before.threads
                && s.connections == before.connections
                && s.clients == before.clients
        }),
        "before {before:?}, after {:?}",
        manager.stats()
    );
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // The queue still works, and nobody took from it.
    q.put(&5).unwrap();
    assert_eq!(q.get().unwrap(), 5);
    manager.shutdown().unwrap();
}

#[test]
fn a_killed_manager_makes_every_call_fail_at_once() {
    let manager = Manager::start().unwrap();
    let d = manager.dict::<u64, u64>().unwrap();
    let q = manager.queue::<u64>(0).unwrap();
    let blocked = {
        let q = q.clone();
        std::thread::spawn(move || {
            let r = q.get();
            (r, Instant::now())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let pid = manager.pid();
    common::send_signal(pid, libc::SIGKILL);
    let killed = Instant::now();
    let (r, at) = blocked.join().unwrap();
    assert!(matches!(r, Err(Error::ManagerGone { .. })), "{r:?}");
    assert!(at - killed < Duration::from_secs(1));
    for _ in 0..3 {
        let t = Instant::now();
        let e = d.get(&1).unwrap_err();
        assert!(matches!(e, Error::ManagerGone { .. }), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(e.to_string().contains("is gone"), "{e}");
    }
    assert!(matches!(q.put(&1), Err(Error::ManagerGone { .. })));
    drop((d, q));
    // Shutting down a dead manager reaps it; no process is left behind.
    let _ = manager.shutdown();
    assert!(common::is_dead(pid));
}

struct Counter {
    n: u64,
    log: Vec<String>,
}

fn new_counter(n: u64) -> Counter {
    Counter { n, log: Vec::new() }
}

fn add(c: &mut Counter, by: u64) -> u64 {
    c.n += by;
    c.log.push(format!("+{by}"));
    c.n
}

fn explode(c: &mut Counter, _: ()) -> u64 {
    c.n += 1000; // half updated, as documented
    panic!("boom at {}", c.n)
}

fn add_in_child(c: Proxy<Counter>) -> u64 {
    c.call(add, 1).unwrap()
}

#[test]
fn custom_objects_namespaces_and_nested_proxies() {
    let manager = Manager::start().unwrap();
    let c = manager.create(new_counter, 10).unwrap();
    assert_eq!(c.call(add, 5).unwrap(), 15);
    assert_eq!(
        Process::start(add_in_child, c.clone())
            .unwrap()
            .join()
            .unwrap(),
        16
    );
    let e = c.call(explode, ()).unwrap_err();
    assert!(e.is_panic(), "{e:?}");
    assert_eq!(e.panic_message(), Some("boom at 1016"));
    assert!(e.to_string().contains("managers.rs:"), "the location: {e}");
    assert_eq!(c.call(add, 1).unwrap(), 1017, "the manager keeps serving");
    assert_eq!(c.call(|c: &mut Counter, ()| c.log.len(), ()).unwrap(), 3);
    // A panicking constructor makes nothing.
    let before = manager.stats().unwrap().objects;
    let e = manager
        .create(|_: ()| -> Counter { panic!("no counter") }, ())
        .unwrap_err();
    assert_eq!(e.panic_message(), Some("no counter"));
    assert_eq!(manager.stats().unwrap().objects, before);

    // A namespace: named, typed attributes.
    let ns: Namespace = manager.namespace().unwrap();
    ns.set("x", &5u64).unwrap();
    ns.set("name", "hello").unwrap();
    assert_eq!(ns.get::<u64>("x").unwrap(), Some(5));
    assert_eq!(ns.get::<String>("name").unwrap().as_deref(), Some("hello"));
    assert_eq!(ns.get::<u64>("missing").unwrap(), None);
    assert!(ns.get::<u64>("name").is_err() || ns.get::<u64>("name").unwrap() != Some(5));
    assert_eq!(ns.names().unwrap(), ["name", "x"]);
    assert!(ns.remove("x").unwrap());
    assert!(!ns.contains("x").unwrap());

    // A dict of lists, used from a child.
    let groups = manager.dict::<String, List<u64>>().unwrap();
    for g in ["odd", "even"] {
        groups.insert(g.into(), manager.list().unwrap()).unwrap();
    }
    fn sort_into(groups: Dict<String, List<u64>>) {
        for i in 0..6 {
            let g = if i % 2 == 0 { "even" } else { "odd" };
            groups.get(g).unwrap().unwrap().push(i).unwrap();
        }
    }
    Process::start(sort_into, groups.clone())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        groups.get("even").unwrap().unwrap().snapshot().unwrap(),
        [0, 2, 4]
    );
    let odd = groups.get("odd").unwrap().unwrap();
    assert_eq!(odd.snapshot().unwrap(), [1, 3, 5]);
    // A proxy of the wrong kind is refused when received.
    manager.root().set("odd", &odd).unwrap();
    let wrong = manager.root().get::<Dict<u64, u64>>("odd").unwrap_err();
    assert!(
        wrong.to_string().contains("is a List, not a Dict"),
        "{wrong}"
    );
    manager.shutdown().unwrap();
}

fn producer((q, done, v, a): (Queue<u64>, Event, Value<u64>, Array<u8>)) {
    for i in 0..5 {
        q.put(&i).unwrap();
    }
    v.update(|n, by| *n += by, 10).unwrap();
    a.set(1, 7).unwrap();
    done.set().unwrap();
}

fn party((b, l, jq): (Barrier, Lock, JoinableQueue<u64>)) -> u32 {
    {
        let _g = l.lock().unwrap();
    }
    let item = jq.get().unwrap();
    jq.task_done().unwrap();
    let _ = item;
    b.wait_timeout(Duration::from_secs(10)).unwrap()
}

#[test]
fn queues_and_synchronisation_proxies_between_processes() {
    let manager = Manager::start().unwrap();
    let q = manager.queue::<u64>(2).unwrap();
    let done = manager.event().unwrap();
    let v = manager.value(1u64).unwrap();
    let a = manager.array(vec![0u8; 3]).unwrap();
    let p = Process::start(producer, (q.clone(), done.clone(), v.clone(), a.clone())).unwrap();
    let got: Vec<u64> = (0..5).map(|_| q.get().unwrap()).collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    assert!(done.wait_timeout(Duration::from_secs(10)).unwrap());
    p.join().unwrap();
    assert!(matches!(q.try_get(), Err(Error::Empty { .. })));
    q.put(&1).unwrap();
    q.put(&2).unwrap();
    assert!(matches!(q.try_put(&3), Err(Error::Full { .. })));
    assert!(q.get_timeout(Duration::from_millis(10)).is_ok());
    assert_eq!(v.get().unwrap(), 11);
    v.set(3).unwrap();
    assert_eq!(v.get().unwrap(), 3);
    assert_eq!(a.snapshot().unwrap(), [0, 7, 0]);
    assert_eq!(a.len().unwrap(), 3);
    assert!(a.set(3, 1).is_err());
    done.clear().unwrap();
    assert!(!done.is_set().unwrap());
    assert!(!done.wait_timeout(Duration::from_millis(20)).unwrap());

    // A barrier, a lock and a joinable queue across two children and this process.
    let b = manager.barrier(3).unwrap();
    let l = manager.lock().unwrap();
    let jq = manager.joinable_queue::<u64>(0).unwrap();
    jq.put(&1).unwrap();
    jq.put(&2).unwrap();
    let guard = l.lock().unwrap();
    let kids: Vec<_> = (0..2)
        .map(|_| Process::start(party, (b.clone(), l.clone(), jq.clone())).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    assert!(l.is_locked().unwrap());
    assert!(l.try_lock().unwrap().is_none());
    drop(guard);
    jq.join().unwrap();
    let mut indexes = vec![b.wait_timeout(Duration::from_secs(10)).unwrap()];
    indexes.extend(kids.into_iter().map(|k| k.join().unwrap()));
    indexes.sort();
    assert_eq!(indexes, [0, 1, 2]);
    assert!(matches!(jq.task_done(), Err(Error::TaskDoneTooOften)));
    assert!(matches!(
        b.wait_timeout(Duration::from_millis(20)),
        Err(Error::BrokenBarrier)
    ));
    assert!(b.is_broken().unwrap());
    b.reset().unwrap();
    assert_eq!(b.parties().unwrap(), 3);

    // Recursive locks, semaphores, conditions.
    let r = manager.rlock().unwrap();
    let g1 = r.lock().unwrap();
    let g2 = r.lock().unwrap();
    drop((g1, g2));
    assert!(!r.is_locked().unwrap());
    assert!(r.release().is_err(), "releasing an RLock nobody holds");
    let s = manager.bounded_semaphore(1).unwrap();
    s.acquire().unwrap();
    assert!(!s.try_acquire().unwrap());
    s.release().unwrap();
    assert!(matches!(
        s.release(),
        Err(Error::SemaphoreOverflow { bound: 1 })
    ));
    let sem = manager.semaphore(0).unwrap();
    assert!(!sem.acquire_timeout(Duration::from_millis(10)).unwrap());
    sem.release().unwrap();
    assert_eq!(sem.value().unwrap(), 1);
    let c = manager.condition().unwrap();
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || {
            let _g = c.lock().unwrap();
            c.wait_timeout(Duration::from_secs(10)).unwrap()
        })
    };
    assert!(eventually(Duration::from_secs(5), || {
        let _g = c.lock().unwrap();
        c.notify_all().unwrap();
        waiter.is_finished()
    }));
    assert!(waiter.join().unwrap(), "the waiter was notified");
    assert!(c.notify(1).is_err(), "notify without holding the lock");
    manager.shutdown().unwrap();
}

#[test]
fn a_manager_restarted_on_the_same_address_is_reached_again() {
    let dir = common::TempDir::new("managers-restart");
    let path = dir.path().join("manager.sock");
    let first = Manager::builder()
        .address(&path)
        .key(&key())
        .start_in_thread()
        .unwrap();
    let d = first.dict::<u64, u64>().unwrap();
    d.insert(1, 1).unwrap();
    first.shutdown().unwrap();
    assert!(!path.exists(), "the socket file is removed at shutdown");
    assert!(matches!(d.get(&1), Err(Error::ManagerGone { .. })));

    // Serve again on the path, in a child process this time.
    let second = Manager::builder()
        .address(&path)
        .key(&key())
        .start()
        .unwrap();
    let client = Manager::connect(&path, &key()).unwrap();
    let d2 = client.dict::<u64, u64>().unwrap();
    d2.insert(2, 2).unwrap();
    assert_eq!(d2.get(&2).unwrap(), Some(2));
    // The old proxy does not reach a new object that has its id.
    let e = d.get(&1).unwrap_err();
    assert!(matches!(e, Error::ManagerGone { .. }), "{e:?}");
    drop((d2, client));
    second.shutdown().unwrap();
    assert!(!path.exists());
}

#[test]
fn a_wrong_key_is_refused_and_a_connected_client_can_stop_the_manager() {
    let manager = Manager::builder()
        .address("127.0.0.1:0")
        .key(&key())
        .start()
        .unwrap();
    let address = manager.address().to_string();
    let wrong = AuthKey::new(b"fedcba9876543210fedcba9876543210".to_vec()).unwrap();
    let e = Manager::connect(&address, &wrong).unwrap_err();
    assert!(matches!(e, Error::AuthenticationFailed { .. }), "{e:?}");
    manager
        .root()
        .set("d", &manager.dict::<String, u64>().unwrap())
        .unwrap();
    manager
        .root()
        .set("l", &manager.list::<u64>().unwrap())
        .unwrap();
    let out = run_unrelated(&address, KEY, &[("MULTIPROC_TEST_MANAGER_SHUTDOWN", "1")]);
    assert!(
        out.contains("unrelated: OK 1") && out.contains("shutdown: OK"),
        "{out}"
    );
    let e = manager.stats().unwrap_err();
    assert!(matches!(e, Error::ManagerGone { .. }), "{e:?}");
    manager.shutdown().unwrap();
}

/// The two-host test's manager: serves on host a until a client stops it.
#[test]
fn managers_netns_server_entry() {
    let Ok(address) = std::env::var("MULTIPROC_TEST_MANAGER_SERVE") else {
        return;
    };
    Manager::serve(address.as_str(), &key()).unwrap();
    println!("served: OK");
}

#[test]
fn a_manager_and_a_client_on_two_hosts() {
    let Some(hosts) = common::netns::TwoHosts::try_create() else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let address = format!("{}:7391", common::netns::TwoHosts::ADDRS[0]);
    let mut server = hosts
        .run_in(0, &exe)
        .args([
            "--exact",
            "managers_netns_server_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_TEST_MANAGER_SERVE", &address)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The client on host b: a wrong key is refused, the right one works.
    let client = |key: &[u8], extra: &[(&str, &str)]| {
        let mut c = hosts.run_in(1, &exe);
        c.args([
            "--exact",
            "managers_unrelated_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_TEST_MANAGER", &address)
        .env(
            "MULTIPROC_TEST_MANAGER_KEY",
            std::str::from_utf8(key).unwrap(),
        )
        .envs(extra.iter().copied());
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ready = eventually(Duration::from_secs(20), || {
        client(b"not the key, but 32 bytes long!!", &[])
            .contains("connect failed: AuthenticationFailed")
    });
    assert!(
        ready,
        "the manager on host a did not come up, or a wrong key was not refused"
    );
    let out = client(
        KEY,
        &[
            ("MULTIPROC_TEST_MANAGER_SETUP", "1"),
            ("MULTIPROC_TEST_MANAGER_SHUTDOWN", "1"),
        ],
    );
    assert!(out.contains("unrelated: OK 1"), "{out}");
    assert!(out.contains("shutdown: OK"), "{out}");
    let status = server.wait().unwrap();
    let mut served = String::new();
    use std::io::Read;
    server
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut served)
        .unwrap();
    assert!(
        status.success() && served.contains("served: OK"),
        "{served}"
    );
    println!("host b: {out}host a: {served}");
}

/// Finds the `NT_GNU_BUILD_ID` note's descriptor in an ELF image (name "GNU\0", type 3).
fn build_id_range(elf: &[u8]) -> Option<std::ops::Range<usize>> {
    let pattern = |w: &[u8]| {
        w[0..4] == 4u32.to_le_bytes() && w[8..12] == 3u32.to_le_bytes() && &w[12..16] == b"GNU\0"
    };
    let at = elf.windows(16).position(pattern)?;
    let len = u32::from_le_bytes(elf[at + 4..at + 8].try_into().ok()?) as usize;
    Some(at + 16..at + 16 + len)
}

#[test]
fn a_client_of_another_build_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::TempDir::new("managers-build");
    let mut me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let Some(range) = build_id_range(&me) else {
        eprintln!("SKIPPED: this test binary has no GNU build id");
        return;
    };
    for b in &mut me[range] {
        *b ^= 0xff;
    }
    let other = dir.path().join("other-build");
    std::fs::write(&other, &me).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    let manager = Manager::builder().key(&key()).start().unwrap();
    manager
        .root()
        .set("d", &manager.dict::<String, u64>().unwrap())
        .unwrap();
    let before = manager.stats().unwrap();
    let out = Command::new(&other)
        .args([
            "--exact",
            "managers_unrelated_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTIPROC_TEST_MANAGER", manager.address().to_string())
        .env(
            "MULTIPROC_TEST_MANAGER_KEY",
            std::str::from_utf8(KEY).unwrap(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("connect failed: BuildMismatch"), "{stdout}");
    let after = manager.stats().unwrap();
    assert_eq!(after.objects, before.objects, "nothing was made");
    manager.shutdown().unwrap();
}

/// In a child of its own, so that other tests' descriptors do not count.
fn start_and_stop_managers(rounds: u32) -> (usize, usize) {
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let cycle = || {
        let m = Manager::start().unwrap();
        let d = m.dict::<u64, u64>().unwrap();
        d.insert(1, 1).unwrap();
        m.shutdown().unwrap();
        assert!(d.get(&1).is_err());
    };
    cycle(); // first-use costs (the fork server, ...)
    let before = fds();
    for _ in 0..rounds {
        cycle();
    }
    (before, fds())
}

#[test]
fn starting_and_stopping_managers_leaks_no_descriptor() {
    let (before, after) = Process::start(start_and_stop_managers, 3)
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn a_manager_starts_under_every_start_method() {
    for method in [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::ForkServer,
    ] {
        let m = Manager::builder().start_method(method).start().unwrap();
        let l = m.list_from(["a".to_string()]).unwrap();
        l.push("b".into()).unwrap();
        assert_eq!(l.snapshot().unwrap(), ["a", "b"], "{method:?}");
        let pid = m.pid();
        m.shutdown().unwrap();
        assert!(common::is_dead(pid), "{method:?}");
    }
}
