use multiproc::prelude::*;

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn map_matches_sequential() {
    let pool = Pool::new(2).unwrap();
    let t = std::time::Instant::now();
    let out = pool.map(double, 0..10_000u64).unwrap();
    eprintln!("map 10k: {:?}", t.elapsed());
    assert_eq!(out, (0..10_000u64).map(double).collect::<Vec<_>>());
    let t = std::time::Instant::now();
    let out: Vec<u64> = pool
        .imap(double, 0..10_000u64)
        .map(|r| r.unwrap())
        .collect();
    eprintln!("imap 10k: {:?}", t.elapsed());
    assert_eq!(out, (0..10_000u64).map(double).collect::<Vec<_>>());
    let mut un: Vec<u64> = pool
        .imap_unordered(double, 0..10_000u64)
        .map(|r| r.unwrap())
        .collect();
    un.sort();
    assert_eq!(un, (0..10_000u64).map(double).collect::<Vec<_>>());
    assert_eq!(pool.apply(double, 21).unwrap(), 42);
}

/// Which thread ran a call, and when (a pool-wide count of calls started).
fn where_and_when(_i: u64) -> (String, u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STARTED: AtomicU64 = AtomicU64::new(0);
    let when = STARTED.fetch_add(1, Ordering::SeqCst);
    // A little work, so that several threads take part.
    std::thread::sleep(std::time::Duration::from_micros(200));
    let name = std::thread::current().name().unwrap_or("").to_owned();
    (name, when)
}

/// Maps `len` calls on a thread pool and returns the size of every batch of answers
/// the caller received (one per chunk), sorted, after checking that each chunk's calls
/// ran on one thread, in order, one after the other.
fn thread_pool_chunks(threads: usize, chunk: ChunkSize, len: u64, expected: usize) -> Vec<u64> {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let pool = ThreadPool::builder()
        .threads(threads)
        .chunk_size(chunk)
        .progress(Progress::callback(move |done, _| {
            s.lock().unwrap().push(done)
        }))
        .build()
        .unwrap();
    let ran = pool.map(where_and_when, 0..len).unwrap();
    // Each chunk: indices k·n .. k·n+n ran on one thread with nothing in between.
    for (k, calls) in ran.chunks(expected).enumerate() {
        let (thread, first) = &calls[0];
        assert!(
            calls.iter().all(|(t, _)| t == thread),
            "chunk {k} ran on one thread"
        );
        assert!(
            calls.windows(2).all(|w| w[0].1 < w[1].1),
            "chunk {k} ran in order"
        );
        // Between the chunk's first and last call, its thread ran nothing else.
        let last = calls[calls.len() - 1].1;
        let between = ran
            .iter()
            .filter(|(t, w)| t == thread && *w > *first && *w <= last)
            .count();
        assert_eq!(between, calls.len() - 1, "chunk {k} ran without a break");
    }
    let done = seen.lock().unwrap().clone();
    let mut sizes: Vec<u64> = done.windows(2).map(|w| w[1] - w[0]).collect();
    sizes.push(done[0]);
    sizes.sort_unstable();
    sizes
}

#[test]
fn thread_pool_honours_a_fixed_chunk_size() {
    // 23 calls in chunks of 5: four of 5 and one of 3.
    assert_eq!(
        thread_pool_chunks(3, ChunkSize::Fixed(5), 23, 5),
        [3, 5, 5, 5, 5]
    );
    assert_eq!(thread_pool_chunks(2, ChunkSize::Fixed(1), 4, 1), [1; 4]);
}

#[test]
fn thread_pool_sizes_chunks_automatically_as_python_does() {
    // ceil(100 / (4 × 2)) = 13 calls a chunk: seven of 13 and one of 9.
    let mut expected = vec![13; 7];
    expected.insert(0, 9);
    assert_eq!(thread_pool_chunks(2, ChunkSize::Auto, 100, 13), expected);
}

static NAPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Fails on 0; otherwise naps 20 ms and counts itself.
fn nap_or_fail(i: u64) -> u64 {
    assert!(i != 0, "call 0 fails");
    std::thread::sleep(std::time::Duration::from_millis(20));
    NAPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn a_failed_or_late_thread_pool_map_cancels_its_queued_calls() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let pool = ThreadPool::builder()
        .threads(1)
        .chunk_size(ChunkSize::Fixed(1))
        .build()
        .unwrap();
    // The first call fails: the 40 queued behind it never run.
    assert!(pool.map(nap_or_fail, 0..41).is_err());
    std::thread::sleep(Duration::from_millis(100));
    let ran = NAPS.load(Ordering::SeqCst);
    assert!(ran <= 2, "{ran} calls ran after the map failed");
    // Out of time after a few calls: the rest never run.
    let e = pool
        .map_timeout(nap_or_fail, 1..41, Duration::from_millis(60))
        .unwrap_err();
    assert!(e.is_timeout());
    std::thread::sleep(Duration::from_millis(150));
    let ran = NAPS.load(Ordering::SeqCst);
    assert!(ran <= 10, "{ran} calls ran after the map timed out");
    // The pool goes on.
    assert_eq!(pool.map(nap_or_fail, [1, 2]).unwrap().len(), 2);
}
