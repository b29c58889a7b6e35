//! Checks (and measures) the MPI pool. Run under an MPI launcher:
//!
//! ```text
//! cargo build --release -p multiproc --features mpi --example mpi_check
//! mpirun -n 3 target/release/examples/mpi_check            # the checks
//! mpirun -n 3 target/release/examples/mpi_check --bench    # MPI pool vs process pool
//! ```
//!
//! `--timeout` and `--die` show what a hung task and a dying rank do (the job aborts).
//! Without a launcher it prints the pool's error and exits with code 2.

use std::time::{Duration, Instant};

use multiproc::prelude::*;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x) ^ 0x5555
}

fn sum_range((start, end): (u64, u64)) -> u64 {
    (start..end).sum()
}

fn boom(x: u32) -> u32 {
    if x == 7 {
        panic!("task {x} failed on purpose");
    }
    x
}

fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn die(code: i32) -> i32 {
    std::process::exit(code)
}

fn echo(v: serde_bytes::ByteBuf) -> usize {
    v.len()
}

fn tiny(x: u32) -> u32 {
    x + 1
}

fn main() {
    multiproc::init(); // ranks >= 1 serve tasks here
    let mode = std::env::args().nth(1).unwrap_or_default();
    let pool = match mode.as_str() {
        "--timeout" => multiproc::mpi::Pool::builder()
            .task_timeout(Duration::from_millis(500))
            .build(),
        _ => multiproc::mpi::Pool::new(),
    };
    let pool = match pool {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mpi_check: {e}");
            std::process::exit(2);
        }
    };
    let r = match mode.as_str() {
        "" => checks(&pool),
        "--bench" => bench(&pool),
        "--timeout" => {
            let r = pool.map(sleepy, [10_000u64]);
            println!("mpi_check: timeout result: {r:?}");
            Ok(())
        }
        "--die" => {
            let r = pool.map(die, [3, 4]);
            println!("mpi_check: die result: {r:?}");
            Ok(())
        }
        other => {
            eprintln!("mpi_check: unknown mode {other:?}");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("mpi_check: FAILED: {e}");
        std::process::exit(1);
    }
}

fn checks(pool: &multiproc::mpi::Pool) -> multiproc::Result<()> {
    let ranks = pool.ranks();
    println!("mpi_check: {} worker ranks: {ranks:?}", ranks.len());

    // A map over 10,000 inputs equals the sequential answer.
    let got = pool.map(square, 0..10_000u64)?;
    let want: Vec<u64> = (0..10_000u64).map(square).collect();
    assert_eq!(got, want, "map over 10,000 inputs");
    println!("mpi_check: map of 10000 ok");

    // The tutorial's job: sum 0..50,000,000 split across the workers.
    let n = 50_000_000u64;
    let parts = pool.processes() as u64;
    let ranges: Vec<(u64, u64)> = (0..parts)
        .map(|i| (n * i / parts, n * (i + 1) / parts))
        .collect();
    let total: u64 = pool.map(sum_range, ranges)?.into_iter().sum();
    assert_eq!(total, 1_249_999_975_000_000, "tutorial total");
    println!("mpi_check: tutorial total {total} ok");

    // A panic on a worker rank comes back with its message; the other calls succeed.
    let results = pool.map_results(boom, 0..20u32)?;
    let err = results[7].as_ref().expect_err("call 7 panics");
    assert!(err.is_panic(), "{err}");
    assert_eq!(
        err.panic_message(),
        Some("task 7 failed on purpose"),
        "{err}"
    );
    assert!(results.iter().enumerate().all(|(i, r)| i == 7 || r.is_ok()));
    let err = pool.map(boom, 0..20u32).expect_err("map fails");
    println!("mpi_check: panic ok: {err}");

    // The rest of the interface.
    let ordered: Vec<u32> = pool.imap(tiny, 0..1000u32).collect::<Result<_>>()?;
    assert_eq!(ordered, (1..=1000).collect::<Vec<_>>());
    let mut unordered: Vec<u32> = pool
        .imap_unordered(tiny, 0..1000u32)
        .collect::<Result<_>>()?;
    unordered.sort();
    assert_eq!(unordered, ordered);
    let one = pool.apply_async(tiny, 41)?;
    assert_eq!(one.get()?, 42);
    assert_eq!(pool.apply(sum_range, (0, 10))?, 45);
    let many = pool.map_async(tiny, 0..10u32)?;
    assert_eq!(many.get()?, (1..=10).collect::<Vec<_>>());
    println!("mpi_check: imap, imap_unordered, apply, apply_async, map_async ok");

    // Cancel: a finished call says no; a queued call is removed; a running call (MPI
    // cannot stop one rank) is abandoned, its rank free again once it ends.
    let done = pool.apply_async(tiny, 1)?;
    done.wait();
    assert!(!done.cancel(), "cancel of a finished call");
    assert_eq!(done.get()?, 2);
    let busy: Vec<_> = (0..pool.processes())
        .map(|_| pool.apply_async(sleepy, 300))
        .collect::<Result<_>>()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !busy.iter().all(|h| h.running()) {
        assert!(
            Instant::now() < deadline,
            "the ranks never started the calls"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let queued = pool.apply_async(tiny, 7)?;
    assert!(!queued.running());
    assert!(queued.cancel(), "cancel of a queued call");
    assert!(matches!(queued.get(), Err(Error::Cancelled)));
    let mut busy = busy.into_iter();
    let abandoned = busy.next().expect("one rank at least");
    assert!(abandoned.cancel(), "cancel of a running call");
    assert!(matches!(abandoned.get(), Err(Error::Cancelled)));
    for h in busy {
        assert_eq!(h.get()?, 300);
    }
    assert_eq!(pool.map(tiny, 0..100u32)?.len(), 100);
    println!("mpi_check: cancel ok");

    // Same size limits as the process pool.
    multiproc::set_max_frame_size(1 << 16);
    let big = serde_bytes::ByteBuf::from(vec![7u8; 1 << 17]);
    let err = pool.map(echo, [big]).expect_err("over the frame limit");
    assert!(matches!(err, Error::FrameTooLarge { .. }), "{err}");
    multiproc::set_max_frame_size(multiproc::DEFAULT_MAX_FRAME_SIZE);
    let ok = pool.map(echo, [serde_bytes::ByteBuf::from(vec![7u8; 1 << 20])])?;
    assert_eq!(ok, [1 << 20]);
    println!("mpi_check: frame limit ok: {err}");

    println!("mpi_check: OK");
    Ok(())
}

fn bench(pool: &multiproc::mpi::Pool) -> multiproc::Result<()> {
    let workers = pool.processes();
    let local = Pool::new(workers)?;
    println!("| pool | workers | tiny tasks/s (200k x u32) | bulk GB/s (1 GiB in 1 MiB args) |");
    println!("|---|---|---|---|");
    let mpi_row = measure(pool)?;
    let local_row = measure(&local)?;
    println!(
        "| MPI ranks (mpirun, loopback) | {workers} | {:.0} | {:.2} |",
        mpi_row.0, mpi_row.1
    );
    println!(
        "| process Pool (fork server) | {workers} | {:.0} | {:.2} |",
        local_row.0, local_row.1
    );
    Ok(())
}

fn measure<P: TaskPool>(pool: &P) -> multiproc::Result<(f64, f64)> {
    pool.map(tiny, 0..10_000u32)?; // warm-up
    let n = 200_000u32;
    let t = Instant::now();
    let r = pool.map(tiny, 0..n)?;
    let tasks = f64::from(n) / t.elapsed().as_secs_f64();
    assert_eq!(r.len(), n as usize);
    let mib = 1024usize;
    let blocks: Vec<_> = (0..mib)
        .map(|_| serde_bytes::ByteBuf::from(vec![1u8; 1 << 20]))
        .collect();
    let t = Instant::now();
    let r = pool.map(echo, blocks)?;
    let gbs = (mib << 20) as f64 / t.elapsed().as_secs_f64() / 1e9;
    assert!(r.iter().all(|&l| l == 1 << 20));
    Ok((tasks, gbs))
}
