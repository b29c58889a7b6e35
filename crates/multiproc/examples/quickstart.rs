//! The program a new user writes from the README: sum 0..50,000,000 in two processes.
//!
//! Python's tutorial version of this prints a total of 0 (each child appended to its
//! own copy of a list). Here each child's sum comes back by value, or an error says why.
//!
//! Run it: `cargo run --example quickstart`

use multiproc::Process;

fn work((start, end): (u64, u64)) -> u64 {
    (start..end).sum()
}

fn main() -> multiproc::Result<()> {
    multiproc::init(); // first line of main

    let n = 50_000_000;
    let halves = [(0, n / 2), (n / 2, n)];
    let procs = halves
        .into_iter()
        .map(|half| Process::start(work, half))
        .collect::<multiproc::Result<Vec<_>>>()?;
    let mut total = 0;
    for p in procs {
        let pid = p.pid();
        let sum = p.join()?;
        println!("process {pid}: {sum}");
        total += sum;
    }
    println!("total: {total}");
    assert_eq!(total, n * (n - 1) / 2);
    Ok(())
}
