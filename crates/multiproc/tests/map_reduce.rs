//! `map_reduce`: results combined inside the workers, on a process pool (every start
//! method) and a thread pool; errors and empty input as `map` has them.

use std::collections::HashMap;

use multiproc::prelude::*;

fn square(x: u64) -> u64 {
    x * x
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Each partial names the worker that combined it, so the test can see the combining
/// happened in more than one process.
fn tagged(x: u64) -> HashMap<u32, u64> {
    HashMap::from([(std::process::id(), x)])
}

fn merge(mut a: HashMap<u32, u64>, b: HashMap<u32, u64>) -> HashMap<u32, u64> {
    for (k, v) in b {
        *a.entry(k).or_insert(0) += v;
    }
    a
}

fn fails_on_13(x: u64) -> u64 {
    assert!(x != 13, "unlucky {x}");
    x
}

#[test]
fn a_sum_of_squares_on_every_start_method_and_on_threads() {
    let want: u64 = (0..10_000u64).map(square).sum();
    for method in [
        StartMethod::ForkServer,
        StartMethod::Fork,
        StartMethod::Spawn,
    ] {
        let pool = Pool::builder()
            .processes(2)
            .start_method(method)
            .build()
            .unwrap();
        assert_eq!(pool.map_reduce(square, 0..10_000, add).unwrap(), Some(want));
        assert_eq!(
            pool.map_reduce(square, Vec::<u64>::new(), add).unwrap(),
            None
        );
        assert_eq!(pool.map_reduce(square, [7], add).unwrap(), Some(49));
    }
    let threads = ThreadPool::new(2).unwrap();
    assert_eq!(
        threads.map_reduce(square, 0..10_000, add).unwrap(),
        Some(want)
    );
}

#[test]
fn partials_are_combined_in_the_workers() {
    let pool = Pool::new(2).unwrap();
    let by_worker = pool.map_reduce(tagged, 1..=1_000, merge).unwrap().unwrap();
    assert_eq!(by_worker.values().sum::<u64>(), 500_500);
    assert!(
        !by_worker.contains_key(&std::process::id()),
        "nothing ran in the caller"
    );
}

#[test]
fn a_failing_call_fails_the_reduce() {
    let pool = Pool::new(2).unwrap();
    let err = pool.map_reduce(fails_on_13, 0..100, add).unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert!(err.to_string().contains("unlucky 13"), "{err}");
    // The pool carries on.
    assert_eq!(pool.map_reduce(square, 0..10, add).unwrap(), Some(285));
}
