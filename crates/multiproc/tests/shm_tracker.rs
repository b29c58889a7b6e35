//! Named segments never outlive a dead owner (the tracker), `track(false)`, and a
//! segment's name travels with it (issue 17, items 4 and 5).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use multiproc::{Event, Process, Queue, SharedMemory, StartMethod};

/// How the owner ends.
const WAIT_TO_BE_KILLED: u8 = 0;
const ABORT: u8 = 1;
const EXIT_LEAKING: u8 = 2;

fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "mp-tracker-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn path(name: &str) -> PathBuf {
    PathBuf::from("/dev/shm").join(name)
}

/// Polls until `name` is gone from /dev/shm, at most `timeout`.
fn gone_within(name: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while path(name).exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Creates the named segment, reports this process's children (its tracker, if any),
/// waits for the go, then ends as told.
fn own_named((name, track, ending, q, go): (String, bool, u8, Queue<Vec<u32>>, Event)) {
    let shm = SharedMemory::named(&name)
        .track(track)
        .create(4096)
        .unwrap();
    shm.write_at(0, b"owned").unwrap();
    let kids = common::children_of(std::process::id())
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    q.put(&kids).unwrap();
    go.wait();
    match ending {
        ABORT => std::process::abort(),
        EXIT_LEAKING => {
            std::mem::forget(shm);
            std::process::exit(0)
        }
        _ => std::thread::sleep(Duration::from_secs(60)),
    }
}

/// Starts an owner; returns it and its tracker's pids once the segment exists.
fn start_owner(m: StartMethod, name: &str, track: bool, ending: u8) -> (Process<()>, Vec<u32>) {
    let q = Queue::new().unwrap();
    let go = Event::new().unwrap();
    let p = Process::builder()
        .start_method(m)
        .start(
            own_named,
            (name.to_owned(), track, ending, q.clone(), go.clone()),
        )
        .unwrap();
    let kids = q.get_timeout(Duration::from_secs(20)).unwrap();
    assert!(path(name).exists());
    go.set();
    (p, kids)
}

fn assert_cleaned(name: &str, trackers: &[u32]) {
    assert!(
        gone_within(name, Duration::from_secs(5)),
        "/dev/shm/{name} outlived its dead owner"
    );
    assert_eq!(trackers.len(), 1, "one tracker per owner: {trackers:?}");
    for pid in trackers {
        assert!(
            common::wait_dead(*pid, Duration::from_secs(5)),
            "tracker {pid} outlived its owner"
        );
    }
}

#[test]
fn a_sigkilled_owner_leaves_no_segment() {
    for m in [
        StartMethod::ForkServer,
        StartMethod::Spawn,
        StartMethod::Fork,
    ] {
        let name = unique("kill");
        let (p, trackers) = start_owner(m, &name, true, WAIT_TO_BE_KILLED);
        p.kill().unwrap();
        assert!(p.join().unwrap_err().is_process_death());
        assert_cleaned(&name, &trackers);
    }
}

#[test]
fn a_sigtermed_owner_leaves_no_segment() {
    let name = unique("term");
    let (p, trackers) = start_owner(StartMethod::ForkServer, &name, true, WAIT_TO_BE_KILLED);
    p.terminate().unwrap();
    assert!(p.join().unwrap_err().is_process_death());
    assert_cleaned(&name, &trackers);
}

#[test]
fn an_aborting_owner_leaves_no_segment() {
    let name = unique("abort");
    let (p, trackers) = start_owner(StartMethod::ForkServer, &name, true, ABORT);
    assert!(p.join().unwrap_err().is_process_death());
    assert_cleaned(&name, &trackers);
}

#[test]
fn an_owner_that_exits_without_dropping_leaves_no_segment() {
    let name = unique("exit");
    let (p, trackers) = start_owner(StartMethod::ForkServer, &name, true, EXIT_LEAKING);
    let _ = p.join();
    assert_cleaned(&name, &trackers);
}

#[test]
fn an_untracked_segment_outlives_its_killed_owner() {
    let name = unique("untracked");
    let (p, trackers) = start_owner(StartMethod::ForkServer, &name, false, WAIT_TO_BE_KILLED);
    assert!(
        trackers.is_empty(),
        "no tracker without tracking: {trackers:?}"
    );
    p.kill().unwrap();
    let _ = p.join();
    std::thread::sleep(Duration::from_millis(300));
    assert!(path(&name).exists());
    // Still attachable, with what the dead owner wrote; then removed by hand.
    let left = SharedMemory::open_named(&name).unwrap();
    let mut b = [0u8; 5];
    left.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"owned");
    assert!(SharedMemory::remove_stale(&name).unwrap());
    assert!(!path(&name).exists());
}

#[test]
fn a_living_owner_s_drop_removes_the_name_and_the_tracker_forgets_it() {
    let name = unique("drop");
    let shm = SharedMemory::create_named(&name, 64).unwrap();
    assert!(shm.is_owner());
    drop(shm);
    assert!(!path(&name).exists());
    // Re-created by an untracked owner: the tracker must not remove this new file
    // when this process ends (nothing to observe here but the absence of errors).
    let again = SharedMemory::named(&name).track(false).create(64).unwrap();
    drop(again);
    assert!(!path(&name).exists());
}

fn name_of(shm: SharedMemory) -> Option<String> {
    shm.name().map(str::to_owned)
}

#[test]
fn a_named_segment_keeps_its_name_in_another_process() {
    let name = unique("travel");
    let shm = SharedMemory::create_named(&name, 64).unwrap();
    for m in StartMethod::ALL {
        let got = Process::builder()
            .start_method(m)
            .start(name_of, shm.clone())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(got.as_deref(), Some(name.as_str()), "{m}");
    }
    let anon = SharedMemory::new(64).unwrap();
    assert_eq!(Process::start(name_of, anon).unwrap().join().unwrap(), None);
}

/// This process's children that still run (its tracker, here).
fn live_children() -> Vec<u32> {
    common::children_of(std::process::id())
        .into_iter()
        .filter(|(pid, _)| !common::is_dead(*pid))
        .map(|(pid, _)| pid)
        .collect()
}

/// The trackers before and after a restart.
type Trackers = Queue<(Vec<u32>, Vec<u32>)>;

/// Creates `a`, kills its tracker, creates `b` (which starts another), reports the
/// first and second trackers, then waits to be killed.
fn own_across_a_tracker_restart((a, b, q, go): (String, String, Trackers, Event)) {
    let sa = SharedMemory::create_named(&a, 64).unwrap();
    let first = live_children();
    for pid in &first {
        common::send_signal(*pid, libc::SIGKILL);
        assert!(common::wait_dead(*pid, Duration::from_secs(5)));
    }
    let sb = SharedMemory::create_named(&b, 64).unwrap();
    q.put(&(first, live_children())).unwrap();
    go.wait();
    drop((sa, sb));
}

#[test]
fn a_restarted_tracker_still_removes_the_names_told_to_the_one_killed() {
    let (a, b) = (unique("restart-a"), unique("restart-b"));
    let q = Queue::new().unwrap();
    let go = Event::new().unwrap();
    let p = Process::start(
        own_across_a_tracker_restart,
        (a.clone(), b.clone(), q.clone(), go.clone()),
    )
    .unwrap();
    let (first, second) = q.get_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(second.len(), 1, "one new tracker: {second:?}");
    assert!(path(&a).exists() && path(&b).exists());
    p.kill().unwrap();
    assert!(p.join().unwrap_err().is_process_death());
    assert!(
        gone_within(&b, Duration::from_secs(5)),
        "the new tracker removes the name it was told"
    );
    assert!(
        gone_within(&a, Duration::from_secs(5)),
        "the new tracker removes the name told only to the killed one"
    );
    assert!(common::wait_dead(second[0], Duration::from_secs(5)));
}

/// Holds `n` named segments, stops its tracker, drops them all; reports the tracker,
/// then how long the drops took.
fn drop_with_a_stopped_tracker((tag, n, q): (String, usize, Queue<(Vec<u32>, u64)>)) {
    let segs: Vec<_> = (0..n)
        .map(|i| SharedMemory::create_named(&format!("{tag}-{i}"), 1).unwrap())
        .collect();
    let trackers = live_children();
    for pid in &trackers {
        common::send_signal(*pid, libc::SIGSTOP);
        while common::stat(*pid).is_some_and(|(state, _)| state != 'T') {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    q.put(&(trackers, 0)).unwrap();
    let t0 = Instant::now();
    drop(segs);
    q.put(&(vec![], t0.elapsed().as_millis() as u64)).unwrap();
}

#[test]
fn a_stopped_tracker_cannot_hang_an_owner_s_drops() {
    // More removals than the socket buffer holds (about 200 small messages).
    let n = 600;
    let tag = unique("stopped");
    let q = Queue::new().unwrap();
    let p = Process::start(drop_with_a_stopped_tracker, (tag.clone(), n, q.clone())).unwrap();
    let (trackers, _) = q.get_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(trackers.len(), 1, "{trackers:?}");
    let done = q.get_timeout(Duration::from_secs(20));
    for pid in &trackers {
        common::send_signal(*pid, libc::SIGCONT);
    }
    if done.is_err() {
        p.kill().unwrap();
    }
    let _ = p.join();
    for i in 0..n {
        let _ = std::fs::remove_file(path(&format!("{tag}-{i}")));
    }
    let (_, ms) = done.expect("the owner's drops hung on a stopped tracker");
    assert!(ms < 10_000, "drops took {ms} ms");
    assert!((0..n).all(|i| !path(&format!("{tag}-{i}")).exists()));
    assert!(common::wait_dead(trackers[0], Duration::from_secs(5)));
}

fn create_one(name: String) -> bool {
    let shm = SharedMemory::create_named(&name, 64).unwrap();
    drop(shm);
    !path(&name).exists()
}

/// A `Fork` child must not inherit the tracker's lock held by a thread that was in
/// the middle of talking to the tracker when the fork happened.
#[test]
fn a_fork_while_another_thread_tells_the_tracker_does_not_deadlock_the_child() {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let tag = unique("busy");
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                drop(SharedMemory::create_named(&format!("{tag}-{i}"), 1).unwrap());
                i += 1;
            }
        });
        let mut hung = None;
        for _ in 0..30 {
            let mut p = Process::builder()
                .start_method(StartMethod::Fork)
                .start(create_one, unique("forked"))
                .unwrap();
            match p.join_timeout(Duration::from_secs(10)) {
                Ok(removed) => assert!(removed),
                Err(e) => {
                    let _ = p.kill();
                    let _ = p.join();
                    hung = Some(e);
                    break;
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(e) = hung {
            panic!("a forked child hung creating a named segment: {e}");
        }
    });
}
