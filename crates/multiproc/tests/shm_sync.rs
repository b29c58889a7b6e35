//! Shared memory and process-shared locks across real processes, in every start method.

use std::time::Duration;

use multiproc::{
    Array, Barrier, BoundedSemaphore, Condition, Error, Event, Lock, Process, RLock, RawArray,
    RawValue, Semaphore, SharedMemory, StartMethod, Value,
};

const ROUNDS: u64 = 10_000;

fn add_locked(v: Value<u64>) -> bool {
    let mut died = false;
    for _ in 0..ROUNDS {
        let mut g = v.lock().unwrap();
        died |= g.owner_died();
        *g += 1;
    }
    died
}

fn add_atomic(v: Value<u64>) {
    for _ in 0..ROUNDS {
        v.fetch_add(1);
    }
}

#[test]
fn value_increments_are_exact_in_every_start_method() {
    for m in StartMethod::ALL {
        let v = Value::new(0u64).unwrap();
        let n = 4;
        let ps: Vec<_> = (0..n)
            .map(|_| {
                Process::builder()
                    .start_method(m)
                    .start(add_locked, v.clone())
                    .unwrap()
            })
            .collect();
        for p in ps {
            assert!(!p.join().unwrap(), "{m}: nobody died");
        }
        assert_eq!(v.get().unwrap(), n * ROUNDS, "{m}");

        let ps: Vec<_> = (0..n)
            .map(|_| {
                Process::builder()
                    .start_method(m)
                    .start(add_atomic, v.clone())
                    .unwrap()
            })
            .collect();
        for p in ps {
            p.join().unwrap();
        }
        assert_eq!(v.load(), 2 * n * ROUNDS, "{m}");
    }
}

fn fill(a: Array<u32>) -> usize {
    let mut g = a.lock().unwrap();
    for (i, x) in g.iter_mut().enumerate() {
        *x = i as u32 * 3;
    }
    g.len()
}

#[test]
fn array_written_by_child_is_seen_by_parent() {
    for m in StartMethod::ALL {
        let a = Array::<u32>::new(100_000).unwrap();
        let p = Process::builder()
            .start_method(m)
            .start(fill, a.clone())
            .unwrap();
        assert_eq!(p.join().unwrap(), 100_000);
        let g = a.lock().unwrap();
        assert!(g.iter().enumerate().all(|(i, &x)| x == i as u32 * 3), "{m}");
    }
}

fn hold_forever((lock, held): (Lock, Event)) {
    let _g = lock.lock().unwrap();
    held.set();
    std::thread::sleep(Duration::from_secs(600));
}

fn hold_value_forever((v, held): (Value<u64>, Event)) {
    let mut g = v.lock().unwrap();
    *g = 7;
    held.set();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn lock_of_a_killed_holder_is_recovered_and_the_next_owner_told() {
    for m in StartMethod::ALL {
        let lock = Lock::new().unwrap();
        let held = Event::new().unwrap();
        let mut p = Process::builder()
            .start_method(m)
            .start(hold_forever, (lock.clone(), held.clone()))
            .unwrap();
        assert!(held.wait_timeout(Duration::from_secs(10)), "{m}");
        let busy = lock.lock_timeout(Duration::from_millis(20)).unwrap_err();
        assert!(busy.is_timeout(), "{m}: {busy}");
        p.kill().unwrap();
        let err = p.join_timeout(Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.signal(), Some(multiproc::Signal::KILL), "{m}");
        let g = lock.lock_timeout(Duration::from_secs(5)).unwrap();
        assert!(g.owner_died(), "{m}: the next owner is told");
        drop(g);
        let g = lock.lock().unwrap();
        assert!(!g.owner_died(), "{m}: told once");

        // The same for a Value's lock; the half-done state is visible.
        let v = Value::new(0u64).unwrap();
        let held = Event::new().unwrap();
        let mut p = Process::builder()
            .start_method(m)
            .start(hold_value_forever, (v.clone(), held.clone()))
            .unwrap();
        assert!(held.wait_timeout(Duration::from_secs(10)), "{m}");
        p.kill().unwrap();
        let _ = p.join_timeout(Duration::from_secs(10));
        let g = v.lock_timeout(Duration::from_secs(5)).unwrap();
        assert!(g.owner_died(), "{m}");
        assert_eq!(*g, 7);
    }
}

#[test]
fn lock_errors_are_clear() {
    let lock = Lock::new().unwrap();
    let g = lock.lock().unwrap();
    let err = lock.lock().unwrap_err();
    assert!(matches!(err, Error::Deadlock { .. }), "{err}");
    assert!(lock.try_lock().unwrap().is_none());
    drop(g);
    let r = RLock::new().unwrap();
    let a = r.lock().unwrap();
    let b = r.lock().unwrap();
    drop((a, b));
    let s = BoundedSemaphore::new(1).unwrap();
    assert!(matches!(
        s.release().unwrap_err(),
        Error::SemaphoreOverflow { bound: 1 }
    ));
}

fn ping((c, v, e): (Condition, Value<u32>, Event)) -> u32 {
    // Wait for the parent's signal through a Condition, then answer through an Event.
    let g = c.lock().unwrap();
    let (g, ok) = c
        .wait_for(g, || v.load() == 1, Some(Duration::from_secs(10)))
        .unwrap();
    assert!(ok);
    drop(g);
    e.set();
    v.load()
}

fn take_units(s: Semaphore) -> u32 {
    let mut n = 0;
    while s.acquire_timeout(Duration::from_millis(200)).is_ok() {
        n += 1;
    }
    n
}

fn meet((b, a, i): (Barrier, Array<u32>, usize)) -> u32 {
    a.store(i, 1);
    let idx = b.wait_timeout(Duration::from_secs(10)).unwrap();
    // Everyone wrote before anyone passed.
    assert!((0..a.len()).all(|j| a.load(j) == 1));
    idx
}

#[test]
fn condition_event_semaphore_barrier_across_processes() {
    for m in StartMethod::ALL {
        let c = Condition::new().unwrap();
        let v = Value::new(0u32).unwrap();
        let e = Event::new().unwrap();
        let p = Process::builder()
            .start_method(m)
            .start(ping, (c.clone(), v.clone(), e.clone()))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        {
            let _g = c.lock().unwrap();
            v.store(1);
            c.notify_all().unwrap();
        }
        assert!(e.wait_timeout(Duration::from_secs(10)), "{m}");
        assert_eq!(p.join().unwrap(), 1);

        let s = Semaphore::new(0).unwrap();
        let p = Process::builder()
            .start_method(m)
            .start(take_units, s.clone())
            .unwrap();
        s.release_n(5).unwrap();
        assert_eq!(p.join().unwrap(), 5, "{m}");

        let b = Barrier::new(3).unwrap();
        let a = Array::<u32>::new(3).unwrap();
        let ps: Vec<_> = (0..2)
            .map(|i| {
                Process::builder()
                    .start_method(m)
                    .start(meet, (b.clone(), a.clone(), i))
                    .unwrap()
            })
            .collect();
        let mine = meet((b.clone(), a.clone(), 2));
        let mut idx: Vec<u32> = ps.into_iter().map(|p| p.join().unwrap()).collect();
        idx.push(mine);
        idx.sort();
        assert_eq!(idx, [0, 1, 2], "{m}");
    }
}

#[test]
fn barrier_breaks_on_timeout() {
    let b = Barrier::new(2).unwrap();
    let err = b.wait_timeout(Duration::from_millis(10)).unwrap_err();
    assert!(matches!(err, Error::BrokenBarrier));
    assert!(b.is_broken());
    assert!(matches!(b.wait().unwrap_err(), Error::BrokenBarrier));
    b.reset();
    assert!(!b.is_broken());
}

fn write_named(name: String) {
    let shm = SharedMemory::open_named(&name).unwrap();
    assert!(!shm.is_owner());
    shm.write_at(10, b"named").unwrap();
}

fn create_and_die(name: String) {
    // Untracked: a tracked name would be removed by the tracker (tests/shm_tracker.rs);
    // this one stays behind, stale, for the next creator to reclaim.
    let shm = SharedMemory::named(&name)
        .track(false)
        .create(4096)
        .unwrap();
    shm.write_at(0, b"stale").unwrap();
    std::process::exit(3); // no destructor runs: as good as a crash
}

#[test]
fn named_segments_are_removed_by_their_owner_and_after_a_crash() {
    let name = format!("multiproc-test-{}", std::process::id());
    let path = format!("/dev/shm/{name}");
    {
        let shm = SharedMemory::create_named(&name, 4096).unwrap();
        assert!(shm.is_owner());
        assert!(std::path::Path::new(&path).exists());
        // A live owner's name cannot be taken or removed as stale.
        assert!(SharedMemory::create_named(&name, 10).is_err());
        assert!(!SharedMemory::remove_stale(&name).unwrap());
        Process::start(write_named, name.clone())
            .unwrap()
            .join()
            .unwrap();
        let mut b = [0u8; 5];
        shm.read_at(10, &mut b).unwrap();
        assert_eq!(&b, b"named");
    }
    assert!(
        !std::path::Path::new(&path).exists(),
        "the owner removed it"
    );

    // An untracked owner that dies without cleaning up: the name is stale and gets
    // reclaimed.
    let err = Process::start(create_and_die, name.clone())
        .unwrap()
        .join()
        .unwrap_err();
    assert_eq!(err.exit_code(), Some(3));
    assert!(
        std::path::Path::new(&path).exists(),
        "left behind by the crash"
    );
    let shm = SharedMemory::create_named(&name, 100).unwrap();
    let mut b = [0u8; 5];
    shm.read_at(0, &mut b).unwrap();
    assert_eq!(b, [0; 5], "a fresh segment, not the stale one");
    drop(shm);
    assert!(!std::path::Path::new(&path).exists());
    assert!(!SharedMemory::remove_stale(&name).unwrap());
}

/// Lock-free copies racing in threads of one process (the handles are `Sync`): every
/// element of up to 8 bytes is seen whole, old or new, and atomic operations mix with
/// plain `set`s. (A plain memcpy here was a data race, undefined behaviour, which no
/// test can observe reliably; this checks the contract the relaxed atomics give.)
#[test]
fn raw_copies_racing_in_threads_see_whole_elements() {
    const A: u64 = 0;
    const B: u64 = u64::MAX;
    let a = RawArray::<u64>::new(64).unwrap();
    let v = RawValue::new(0u16).unwrap();
    let shm = SharedMemory::new(256).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut flip = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let x = if flip { B } else { A };
                for i in 0..a.len() {
                    a.set(i, x);
                }
                a.copy_from_slice(&[x; 64]);
                v.set(if flip { 0xffff } else { 0 });
                shm.write_at(0, &[x as u8; 256]).unwrap();
                flip = !flip;
            }
        });
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                v.fetch_add(0);
                a.fetch_add(3, 0);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_millis(300);
        while std::time::Instant::now() < deadline {
            assert!(a.to_vec().iter().all(|&x| x == A || x == B));
            assert!((0..a.len()).all(|i| matches!(a.get(i), A | B)));
            assert!(matches!(v.get(), 0 | 0xffff));
            let mut b = [1u8; 256];
            shm.read_at(0, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == 0 || x == 0xff));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// `Value`/`Array`'s one-step operations wait for a thread holding the guard: they
/// take the lock, so nothing writes under a live `&mut T` (which would be undefined
/// behaviour).
#[test]
fn value_and_array_one_step_operations_wait_for_the_guard() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let v = Value::new(5u64).unwrap();
    let a = Array::<u32>::new(3).unwrap();
    let (v_done, a_done) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let mut gv = v.lock().unwrap();
        let mut ga = a.lock().unwrap();
        s.spawn(|| {
            v.fetch_add(1);
            v_done.store(true, Ordering::SeqCst);
        });
        s.spawn(|| {
            a.store(1, 7);
            a_done.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !v_done.load(Ordering::SeqCst),
            "Value::fetch_add ran under a guard"
        );
        assert!(
            !a_done.load(Ordering::SeqCst),
            "Array::store ran under a guard"
        );
        assert_eq!(*gv, 5);
        *gv = 10;
        ga[1] = 1;
        drop((gv, ga));
    });
    assert_eq!(v.load(), 11);
    assert_eq!(a.load(1), 7);
    // The thread that holds the guard is told to use it, not deadlocked.
    let g = v.lock().unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| v.load()));
    assert!(r.is_err());
    drop(g);
    assert_eq!(v.swap(1), 11);
    assert_eq!(v.compare_exchange(1, 2), Ok(1));
    assert_eq!(v.compare_exchange(1, 3), Err(2));
    assert_eq!(v.fetch_sub(3), 2);
    assert_eq!(v.load(), u64::MAX);
}
