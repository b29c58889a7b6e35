//! Named `Value`/`Array` attached by name from unrelated processes, the
//! `SharedMemoryManager`, and the lock-free `RawValue`/`RawArray` (issue 17, items 6
//! and 7).

use std::path::Path;
use std::time::{Duration, Instant};

use multiproc::{
    Array, Process, Queue, RawArray, RawValue, SharedMemory, SharedMemoryManager, StartMethod,
    Value,
};

fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "mp-named-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn exists(name: &str) -> bool {
    Path::new("/dev/shm").join(name).exists()
}

fn bump_by_name(name: String) -> u64 {
    // Only the name crossed: this process attaches as an unrelated one would.
    let v = Value::<u64>::open_named(&name).unwrap();
    assert_eq!(v.name(), Some(name.as_str()));
    *v.lock().unwrap() += 1;
    v.fetch_add(10) + 10
}

#[test]
fn a_named_value_is_attached_by_name_from_another_process() {
    let name = unique("value");
    let v = Value::create_named(&name, 100u64).unwrap();
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        Process::builder()
            .start_method(m)
            .start(bump_by_name, name.clone())
            .unwrap()
            .join()
            .unwrap();
    }
    assert_eq!(v.get().unwrap(), 122);
    // The wrong type (size) or kind is refused, not misread.
    let err = Value::<u32>::open_named(&name).unwrap_err().to_string();
    assert!(err.contains("bytes"), "{err}");
    assert!(Array::<u64>::open_named(&name).is_err());
    drop(v);
    assert!(!exists(&name), "the owner removes the name");
}

fn fill_by_name(name: String) -> usize {
    let a = Array::<u32>::open_named(&name).unwrap();
    let mut g = a.lock().unwrap();
    for (i, x) in g.iter_mut().enumerate() {
        *x += i as u32;
    }
    g.len()
}

#[test]
fn a_named_array_is_attached_by_name_from_another_process() {
    let name = unique("array");
    let a = Array::create_named(&name, &[100u32; 5]).unwrap();
    let len = Process::builder()
        .start_method(StartMethod::Spawn)
        .start(fill_by_name, name.clone())
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(len, 5);
    assert_eq!(a.to_vec().unwrap(), [100, 101, 102, 103, 104]);
    // A plain named segment is not an Array.
    let plain = unique("plain");
    let _shm = SharedMemory::create_named(&plain, 4096).unwrap();
    assert!(Array::<u32>::open_named(&plain).is_err());
}

#[test]
fn a_manager_removes_what_it_made_when_dropped_and_handles_keep_working() {
    let manager = SharedMemoryManager::new();
    let shm = manager.shared_memory(100).unwrap();
    let v = manager.value(5i64).unwrap();
    let a = manager.array(&[1u8, 2, 3]).unwrap();
    let names = manager.names();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| exists(n)));
    // Dropping a handle removes nothing; an unrelated process can attach by name.
    let name = shm.name().unwrap().to_owned();
    assert!(!shm.is_owner());
    drop(shm);
    assert!(exists(&name));
    let again = SharedMemory::open_named(&name).unwrap();
    assert_eq!(again.len(), 100);
    drop(manager);
    assert!(
        names.iter().all(|n| !exists(n)),
        "the manager removed its names"
    );
    v.fetch_add(1);
    assert_eq!(v.get().unwrap(), 6);
    assert_eq!(a.to_vec().unwrap(), [1, 2, 3]);
}

fn manage_and_wait(q: Queue<Vec<String>>) {
    let manager = SharedMemoryManager::new();
    let _v = manager.value(1u32).unwrap();
    let _a = manager.array(&[0u64; 16]).unwrap();
    let _s = manager.shared_memory(10).unwrap();
    q.put(&manager.names()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_manager_s_names_go_when_its_process_is_killed() {
    let q = Queue::new().unwrap();
    let p = Process::start(manage_and_wait, q.clone()).unwrap();
    let names = q.get_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| exists(n)));
    p.kill().unwrap();
    let _ = p.join();
    let deadline = Instant::now() + Duration::from_secs(5);
    while names.iter().any(|n| exists(n)) {
        assert!(Instant::now() < deadline, "left behind: {names:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn raw_work((v, a): (RawValue<u64>, RawArray<f64>)) {
    for _ in 0..1000 {
        v.fetch_add(1);
    }
    for i in 0..a.len() {
        a.set(i, a.get(i) * 2.0);
    }
}

#[test]
fn raw_values_and_arrays_cross_processes_without_a_lock() {
    let v = RawValue::new(0u64).unwrap();
    let a = RawArray::from_slice(&[1.0f64, 2.5, -3.0]).unwrap();
    for m in StartMethod::ALL {
        Process::builder()
            .start_method(m)
            .start(raw_work, (v.clone(), a.clone()))
            .unwrap()
            .join()
            .unwrap();
    }
    assert_eq!(v.load(), 3000);
    assert_eq!(v.get(), 3000);
    v.set(7);
    assert_eq!(v.load(), 7);
    assert_eq!(a.to_vec(), [8.0, 20.0, -24.0]);
    let counts = RawArray::<u32>::new(2).unwrap();
    counts.fetch_add(1, 5);
    counts.store(0, 3);
    assert_eq!((counts.load(0), counts.get(1)), (3, 5));
}

/// `open_named` attaches only to a segment this user alone can write: not through a
/// symbolic link, not to a file others can access, not to another user's file
/// (`/dev/shm` is writable by everyone; a segment's bytes hold mutex state).
#[test]
fn open_named_refuses_links_and_files_others_control() {
    use std::os::unix::fs::PermissionsExt;
    let shm_path = |n: &str| Path::new("/dev/shm").join(n);
    let detail = |r: multiproc::Result<SharedMemory>| match r {
        Err(multiproc::Error::SharedMemory { detail }) => detail,
        other => panic!("expected a refusal, got {other:?}"),
    };

    let target = unique("target");
    let owned = Value::create_named(&target, 1u64).unwrap();
    let link = unique("link");
    std::os::unix::fs::symlink(shm_path(&target), shm_path(&link)).unwrap();
    let why = detail(SharedMemory::open_named(&link));
    assert!(why.contains("symbolic link"), "{why}");
    assert!(Value::<u64>::open_named(&link).is_err());
    assert!(
        SharedMemory::remove_stale(&link).is_err(),
        "a link is not followed"
    );
    std::fs::remove_file(shm_path(&link)).unwrap();
    assert_eq!(Value::<u64>::open_named(&target).unwrap().load(), 1);
    drop(owned);

    let open = unique("open");
    std::fs::write(shm_path(&open), [0u8; 128]).unwrap();
    std::fs::set_permissions(shm_path(&open), std::fs::Permissions::from_mode(0o644)).unwrap();
    let why = detail(SharedMemory::open_named(&open));
    assert!(
        why.contains("other users have access") && why.contains("0644"),
        "{why}"
    );
    std::fs::set_permissions(shm_path(&open), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(SharedMemory::open_named(&open).unwrap().len(), 128);

    // Another user's file: only root can make one to test with.
    let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if me.is_ok_and(|uid| uid == 0) {
        std::os::unix::fs::chown(shm_path(&open), Some(65534), None).unwrap();
        let why = detail(SharedMemory::open_named(&open));
        assert!(why.contains("belongs to user 65534"), "{why}");
    }
    std::fs::remove_file(shm_path(&open)).unwrap();

    let dir = unique("dir");
    std::fs::create_dir(shm_path(&dir)).unwrap();
    let refused = SharedMemory::open_named(&dir);
    std::fs::remove_dir(shm_path(&dir)).unwrap();
    assert!(refused.is_err());
}
