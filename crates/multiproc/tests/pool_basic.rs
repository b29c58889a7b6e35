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
