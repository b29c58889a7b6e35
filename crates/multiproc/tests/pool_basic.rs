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
