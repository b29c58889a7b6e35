//! The human-readable form of a [`Report`]: one table per workload.

use super::Report;

pub fn print_table(report: &Report) {
    println!(
        "multiproc bench: {} timed repetitions per case ({} untimed first), {} CPUs; \
         cases interleaved round-robin",
        report.iters, report.warmup, report.cpus
    );
    for w in &report.workloads {
        println!();
        println!("{}: {}", w.name, w.description);
        let width = w
            .rows
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let ratio_head = format!("ratio vs {}", w.reference);
        println!(
            "  {:<width$}  {:>10}  {:>10}  {:>10}  {}",
            "method", "median µs", "p10 µs", "p90 µs", ratio_head
        );
        for r in &w.rows {
            println!(
                "  {:<width$}  {:>10.1}  {:>10.1}  {:>10.1}  {:>6.2}x",
                r.name, r.median_us, r.p10_us, r.p90_us, r.ratio
            );
        }
        for note in &w.notes {
            println!("  note: {note}");
        }
        match w.other_load {
            Some(load) => match load.warning() {
                Some(warning) => println!("  {warning}"),
                None => println!(
                    "  machine was quiet: others used {:.2} CPUs on average",
                    load.other_cpus
                ),
            },
            None => println!("  (could not read /proc to check for other load)"),
        }
    }
}
