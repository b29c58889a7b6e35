//! State shared by processes, in shared memory: `Value` (one number, with atomics and a
//! lock), `Array` (plain data, copied never), `SharedMemory` (raw bytes, anonymous or
//! named), and the process-shared `Lock` (robust: when its holder dies the next
//! taker is told, `owner_died()`), `Event` and `Barrier`.
//!
//! Run it: `cargo run --example shared_state` (asserts what it prints; ends with
//! `OK`; leaves nothing in /dev/shm).

use std::path::Path;
use std::time::Duration;

use multiproc::{Array, Barrier, Event, Lock, Process, SharedMemory, Value};

const PROCS: usize = 3;

/// Adds to a shared counter both ways: atomically, and under the value's own lock.
fn count(v: Value<u64>) {
    for _ in 0..1000 {
        v.fetch_add(1);
    }
    let mut g = v.lock().unwrap();
    *g += 1_000_000;
}

/// Fills its own slice of the array: `i`, written by process `i`.
fn fill((a, i): (Array<u32>, usize)) {
    let mut g = a.lock().unwrap();
    let per = g.len() / PROCS;
    g[i * per..(i + 1) * per].fill(i as u32 + 1);
}

/// Writes a greeting into anonymous shared memory it was handed, and into a named
/// segment it opens by name.
fn greet((anon, name): (SharedMemory, String)) {
    anon.write_at(0, b"hello from the child").unwrap();
    let named = SharedMemory::open_named(&name).unwrap();
    assert!(!named.is_owner()); // an attacher never removes the name
    named.write_at(0, b"named hello").unwrap();
}

/// Takes the lock, says so, and keeps it until it is killed.
fn hold((lock, held): (Lock, Event)) {
    let _guard = lock.lock().unwrap();
    held.set();
    std::thread::sleep(Duration::from_secs(600));
}

/// Marks its arrival, waits for every party, then checks that everyone had arrived.
/// Returns its arrival index.
fn meet((barrier, arrived, i): (Barrier, Array<u32>, usize)) -> u32 {
    arrived.store(i, 1);
    let index = barrier.wait_timeout(Duration::from_secs(30)).unwrap();
    let all: u32 = (0..arrived.len()).map(|j| arrived.load(j)).sum();
    assert_eq!(
        all as usize,
        arrived.len(),
        "passed the barrier before everyone came"
    );
    index
}

fn main() -> multiproc::Result<()> {
    multiproc::init(); // first line of main

    // Value: one counter, PROCS processes.
    let counter = Value::new(0u64)?;
    let ps: Vec<_> = (0..PROCS)
        .map(|_| Process::start(count, counter.clone()))
        .collect::<multiproc::Result<_>>()?;
    for p in ps {
        p.join()?;
    }
    println!("counter: {}", counter.load());
    assert_eq!(counter.get()?, PROCS as u64 * 1_001_000);

    // Array: each process writes its part; the parent sees every write, no copy.
    let a = Array::<u32>::new(PROCS * 4)?;
    let ps: Vec<_> = (0..PROCS)
        .map(|i| Process::start(fill, (a.clone(), i)))
        .collect::<multiproc::Result<_>>()?;
    for p in ps {
        p.join()?;
    }
    println!("array: {:?}", a.to_vec()?);
    assert_eq!(a.to_vec()?, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]);

    // SharedMemory: anonymous (a memfd, nothing on the file system) and named
    // (/dev/shm/<name>, removed when its owner's handle is dropped).
    let anon = SharedMemory::new(4096)?;
    let name = format!("multiproc-example-{}", std::process::id());
    let named = SharedMemory::create_named(&name, 4096)?;
    let path = Path::new("/dev/shm").join(&name);
    assert!(named.is_owner() && path.exists());
    Process::start(greet, (anon.clone(), name.clone()))?.join()?;
    let mut buf = [0u8; 20];
    anon.read_at(0, &mut buf)?;
    assert_eq!(&buf, b"hello from the child");
    let mut buf = [0u8; 11];
    named.read_at(0, &mut buf)?;
    assert_eq!(&buf, b"named hello");
    drop(named);
    assert!(!path.exists(), "{} is left behind", path.display());
    println!("shared memory: both greetings arrived; {name} is removed");

    // Lock: robust. A holder killed while it holds the lock does not block the others
    // forever: the next lock() succeeds and its guard says the owner died.
    let lock = Lock::new()?;
    let held = Event::new()?;
    let holder = Process::start(hold, (lock.clone(), held.clone()))?;
    assert!(
        held.wait_timeout(Duration::from_secs(10)),
        "the holder never took the lock"
    );
    assert!(lock.try_lock()?.is_none()); // another process holds it
    assert!(
        lock.lock_timeout(Duration::from_millis(50))
            .unwrap_err()
            .is_timeout()
    );
    holder.kill()?;
    assert!(holder.join().unwrap_err().is_process_death());
    {
        let guard = lock.lock_timeout(Duration::from_secs(10))?;
        println!(
            "lock after its holder was killed: owner_died = {}",
            guard.owner_died()
        );
        assert!(guard.owner_died()); // repair what it protects here, if needed
    }
    assert!(!lock.lock()?.owner_died()); // and the lock is healthy again

    // Barrier: PROCS children and the parent; nobody passes until all have arrived.
    let barrier = Barrier::new(PROCS as u32 + 1)?;
    let arrived = Array::<u32>::new(PROCS + 1)?;
    let ps: Vec<_> = (0..PROCS)
        .map(|i| Process::start(meet, (barrier.clone(), arrived.clone(), i)))
        .collect::<multiproc::Result<_>>()?;
    let mut indices = vec![meet((barrier.clone(), arrived.clone(), PROCS))];
    for p in ps {
        indices.push(p.join()?);
    }
    indices.sort();
    println!("barrier arrival indices: {indices:?}");
    assert_eq!(indices, [0, 1, 2, 3]);
    assert!(!barrier.is_broken());

    let left = multiproc::active_children();
    assert!(left.is_empty(), "children still running: {left:?}");
    println!("OK");
    Ok(())
}
