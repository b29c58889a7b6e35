use multiproc::prelude::*;
use std::time::Instant;
fn double(x: u64) -> u64 {
    x * 2
}
fn main() {
    multiproc::init();
    let pool = Pool::new(2).unwrap();
    let n = 200_000u64;
    for _ in 0..3 {
        let t = Instant::now();
        let out = pool.map(double, 0..n).unwrap();
        assert_eq!(out.len(), n as usize);
        println!("auto map: {:?}", t.elapsed());
        let t = Instant::now();
        let c: usize = pool.imap(double, 0..n).map(|r| r.unwrap()).count();
        assert_eq!(c, n as usize);
        println!("auto imap: {:?}", t.elapsed());
    }
    let p1 = Pool::builder()
        .processes(2)
        .chunk_size(ChunkSize::Fixed(1))
        .build()
        .unwrap();
    let t = Instant::now();
    let out = p1.map(double, 0..20_000).unwrap();
    println!(
        "chunk1 map 20k: {:?} (x10 = {:?})",
        t.elapsed(),
        t.elapsed() * 10
    );
    drop(out);
    let tp = ThreadPool::new(2).unwrap();
    let t = Instant::now();
    let out = tp.map(double, 0..n).unwrap();
    println!("threadpool map: {:?} {}", t.elapsed(), out.len());
}
