//! Waking the CPUs before timing: a core that sleeps deeply takes a while to reach full
//! speed, which turns a short parallel job's 2x into 1x on some runs.

use std::time::{Duration, Instant};

/// How long each core spins by default.
pub const DEFAULT_SPIN: Duration = Duration::from_millis(200);

/// Spins one thread per CPU for `spin`, all at once, so every core is awake.
pub fn warm_cpus(spin: Duration) {
    let cpus = multiproc::cpu_count();
    std::thread::scope(|s| {
        for _ in 0..cpus {
            s.spawn(move || {
                let until = Instant::now() + spin;
                let mut x = 0u64;
                while Instant::now() < until {
                    for _ in 0..1000 {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
            });
        }
    });
}
