//! No handle leaks into an unrelated child: a child keeps only the descriptors its task
//! was given (and its own connection to the parent), under every start method. With
//! `Fork` this used to fail: every child inherited every pipe end and queue open in the
//! parent, so a reader waited for `Closed` until some unrelated child exited.
// Raw libc calls on processes (signals, limits) that the test or bench needs to make.
#![allow(unsafe_code)]

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use multiproc::{Error, Pipe, PipeEnd, Queue, StartMethod};

use common::start;

/// The tests compare this process's descriptors before and after: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// What each descriptor above stderr of this process is (`socket:[123]`, a path...).
fn open_files() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
                .is_some_and(|fd| fd > 2)
        })
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

fn files_in_child(_: ()) -> BTreeSet<String> {
    open_files()
}

/// Waits at most `limit` for the pipe to report `Closed`; anything else fails the test.
fn expect_closed<T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug>(
    end: &mut PipeEnd<T>,
    limit: Duration,
    what: &str,
) {
    let t = Instant::now();
    match end.recv_timeout(limit) {
        Err(Error::Closed { .. }) => {}
        other => panic!(
            "{what}: expected Closed, got {other:?} after {:?}",
            t.elapsed()
        ),
    }
}

#[test]
fn a_pipe_closes_while_an_unrelated_fork_child_runs() {
    let _one = serial();
    for m in StartMethod::ALL {
        let (mut here, there) = Pipe::<u32>::new().unwrap();
        let mut unrelated = start(StartMethod::Fork, sleep_ms, 60_000);
        drop(there);
        expect_closed(&mut here, Duration::from_secs(5), "no other holder");

        // The other end given to a child, with an unrelated Fork child started while
        // both ends were open here.
        let (mut here, there) = Pipe::<u32>::new().unwrap();
        let mut unrelated2 = start(StartMethod::Fork, sleep_ms, 60_000);
        fn send_one(mut end: PipeEnd<u32>) {
            end.send(&7).unwrap();
        }
        let worker = start(m, send_one, there);
        assert_eq!(
            here.recv_timeout(Duration::from_secs(20)).unwrap(),
            7,
            "{m}"
        );
        worker.join().unwrap();
        expect_closed(&mut here, Duration::from_secs(5), m.name());

        assert!(unrelated.is_alive() && unrelated2.is_alive(), "{m}");
        unrelated.kill().unwrap();
        unrelated2.kill().unwrap();
        assert!(unrelated.join().unwrap_err().is_process_death());
        assert!(unrelated2.join().unwrap_err().is_process_death());
    }
}

fn produce((q, n): (Queue<u32>, u32)) {
    for i in 0..n {
        q.put(&i).unwrap();
    }
}

#[test]
fn a_queue_closed_everywhere_reports_closed_while_an_unrelated_fork_child_runs() {
    let _one = serial();
    for m in StartMethod::ALL {
        let q = Queue::<u32>::new().unwrap();
        let mut unrelated = start(StartMethod::Fork, sleep_ms, 60_000);
        let producer = start(m, produce, (q.clone(), 3));
        producer.join().unwrap();
        q.close();
        let got: Vec<u32> = (0..3)
            .map(|_| q.get_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(got, [0, 1, 2], "{m}");
        let t = Instant::now();
        match q.get_timeout(Duration::from_secs(5)) {
            Err(Error::Closed { .. }) => {}
            other => panic!(
                "{m}: expected Closed, got {other:?} after {:?}",
                t.elapsed()
            ),
        }
        assert!(unrelated.is_alive(), "{m}");
        unrelated.kill().unwrap();
        assert!(unrelated.join().unwrap_err().is_process_death());
    }
}

fn files_with_pipe(end: PipeEnd<u32>) -> BTreeSet<String> {
    let files = open_files();
    drop(end);
    files
}

#[test]
fn a_child_holds_only_what_its_task_was_given() {
    let _one = serial();
    // The fork server, started on first use, keeps its descriptors: start it first.
    multiproc::init();
    let before = open_files();
    let (_a, _b) = Pipe::<u32>::new().unwrap();
    let _q = Queue::<u32>::new().unwrap();
    let file_path =
        std::env::temp_dir().join(format!("multiproc-fork-inheritance-{}", std::process::id()));
    let file = std::fs::File::create(&file_path).unwrap();
    // Removed however the test ends (a failed assertion included).
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = RemoveOnDrop(file_path);
    let ours: BTreeSet<String> = open_files().difference(&before).cloned().collect();
    // A queue holds its two sockets, its state and its spill log (two memory files), an
    // eventfd that says the log holds items, and the epoll set that `AsFd` gives.
    assert_eq!(
        ours.len(),
        9,
        "two pipe ends; a queue's two sockets, two memory files, eventfd and epoll set; \
         a file: {ours:?}"
    );
    for m in StartMethod::ALL {
        let child_files = start(m, files_in_child, ()).join().unwrap();
        let leaked: Vec<&String> = child_files.intersection(&ours).collect();
        assert!(leaked.is_empty(), "{m}: the child holds {leaked:?}");

        // A pipe end given to the task is there; its other end is not.
        let before = open_files();
        let (_c, d) = Pipe::<u32>::new().unwrap();
        let pair: BTreeSet<String> = open_files().difference(&before).cloned().collect();
        assert_eq!(pair.len(), 2, "{pair:?}");
        let child_files = start(m, files_with_pipe, d).join().unwrap();
        let held: Vec<&String> = child_files.intersection(&pair).collect();
        assert_eq!(held.len(), 1, "{m}: the child holds {held:?} of {pair:?}");
        let leaked: Vec<&String> = child_files.intersection(&ours).collect();
        assert!(leaked.is_empty(), "{m}: the child holds {leaked:?}");
    }
    drop((_a, _b, _q, file));
    assert_eq!(open_files(), before, "descriptors left open");
}

/// A descriptor the program made inheritable (no close-on-exec) reaches a Fork child as
/// it reaches a spawned one: the child holds what an exec'd child would.
#[test]
fn an_inheritable_descriptor_is_kept_as_across_exec() {
    let _one = serial();
    let path =
        std::env::temp_dir().join(format!("multiproc-fork-inheritable-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: F_SETFD on a descriptor this test owns; clears only close-on-exec.
        assert_eq!(
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, 0) },
            0
        );
    }
    let target = path.to_string_lossy().into_owned();
    for m in [StartMethod::Fork, StartMethod::Spawn] {
        let child_files = start(m, files_in_child, ()).join().unwrap();
        assert!(child_files.contains(&target), "{m}: {child_files:?}");
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
}

/// A Fork child that uses a parent's handle it was not given (one reachable from a
/// static, say) gets an error, never another file's bytes: the inherited number stays
/// taken by a closed socket rather than being reused.
#[test]
fn an_inherited_handle_is_closed_in_a_fork_child_not_reused() {
    let _one = serial();
    static HANDLE: Mutex<Option<PipeEnd<u32>>> = Mutex::new(None);
    let (a, mut b) = Pipe::<u32>::new().unwrap();
    *HANDLE.lock().unwrap() = Some(a);
    fn use_inherited(_: ()) -> String {
        // Descriptors opened now take the lowest free numbers.
        let _fresh: Vec<_> = (0..4)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let mut guard = HANDLE.lock().unwrap();
        let end = guard.as_mut().unwrap();
        format!("{:?}", end.send(&1).map_err(|e| e.is_closed()))
    }
    let got = start(StartMethod::Fork, use_inherited, ()).join().unwrap();
    assert_eq!(got, "Err(true)");
    assert!(
        b.try_recv().unwrap().is_none(),
        "the message reached the parent's pipe"
    );
    HANDLE.lock().unwrap().take();
}

fn forty_two(_: ()) -> u32 {
    42
}

fn panics(_: ()) -> u32 {
    panic!("on purpose")
}

/// The thread that starts a `Fork` child holds `stdout`'s and `stderr`'s locks (any
/// thread printing at that instant does the same to the child: the fork is made by
/// multiproc's launcher thread): the child inherits them held forever, and must still
/// end, and report a panic, without waiting for them.
#[test]
fn a_fork_child_ends_even_if_stdout_and_stderr_were_locked_at_the_fork() {
    let _one = serial();
    let _out = std::io::stdout().lock();
    let _err = std::io::stderr().lock();
    let mut ok = start(StartMethod::Fork, forty_two, ());
    let mut bad = start(StartMethod::Fork, panics, ());
    let limit = Duration::from_secs(10);
    assert_eq!(ok.join_timeout(limit).unwrap(), 42);
    assert!(bad.join_timeout(limit).unwrap_err().is_panic());
}
