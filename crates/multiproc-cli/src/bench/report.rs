//! The human-readable form of a [`Report`]: one table per workload.

use std::collections::BTreeSet;

use super::{Report, faster_or_slower};

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
        let python = w.rows.iter().any(|r| r.speedup_vs_python.is_some());
        let targets: BTreeSet<&str> = w
            .rows
            .iter()
            .filter_map(|r| r.python_case.as_deref())
            .collect();
        let mut head = format!(
            "  {:<width$}  {:>10}  {:>10}  {:>10}  {:>10}",
            "method", "median µs", "p10 µs", "p90 µs", "time ratio"
        );
        if python {
            head.push_str("  vs Python");
        }
        println!("{head}");
        for r in &w.rows {
            let mut line = format!(
                "  {:<width$}  {:>10.1}  {:>10.1}  {:>10.1}  {:>9.2}x",
                r.name, r.median_us, r.p10_us, r.p90_us, r.ratio
            );
            if let (Some(speedup), Some(py)) = (r.speedup_vs_python, &r.python_case) {
                line.push_str("  ");
                line.push_str(&faster_or_slower(speedup));
                // With several Python cases, each row says which one it faces.
                if targets.len() > 1 {
                    line.push_str(&format!(" than {py}"));
                }
            }
            println!("{line}");
        }
        // Both directions spelled out, so that no number reads the wrong way round.
        println!(
            "  time ratio: median / {}'s median (below 1.00x: faster than it)",
            w.reference
        );
        match targets.first() {
            Some(py) if targets.len() == 1 => {
                println!("  vs Python: {py}'s median / the row's")
            }
            Some(_) => println!("  vs Python: the Python case's median / the row's"),
            None => {}
        }
        print_cpu_and_first_calls(w, width);
        for note in &w.notes {
            println!("  note: {note}");
        }
        for finding in &w.findings {
            println!("  result: {finding}");
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
    if let Some(m) = &report.memory {
        println!();
        println!(
            "map memory: Pool::map(x -> 2x) over {} u64s into a Vec<u64>, in a fresh process \
             ({:.0} MB of input and output vectors)",
            thousands(m.items),
            m.vectors_mb
        );
        println!(
            "  peak RSS (VmHWM)  {:>8.1} MiB  = {:.2}x the vectors' bytes",
            m.peak_mib, m.peak_over_vectors
        );
        println!(
            "  before the map    {:>8.1} MiB  (the program and a started pool)",
            m.before_mib
        );
        println!("  the map took {:.2} s", m.seconds);
        println!("  result: {}", m.finding);
    }
}

/// The CPU each repetition used (warm loop), and the first-call figures where the
/// workload has them.
fn print_cpu_and_first_calls(w: &super::WorkloadReport, width: usize) {
    let per_call = |cpu_us: f64| match w.calls_per_rep {
        Some(n) if n > 0 => format!("{:>9.1}", cpu_us * 1e3 / n as f64),
        _ => format!("{:>9}", "-"),
    };
    let cpu = |c: Option<f64>| c.map_or(format!("{:>10}", "-"), |c| format!("{c:>10.1}"));
    if w.rows.iter().any(|r| r.first_call.is_some()) {
        let runs = w
            .rows
            .iter()
            .filter_map(|r| r.first_call.as_ref().map(|f| f.runs))
            .max()
            .unwrap_or(0);
        println!(
            "  first call: each case timed once in a fresh process whose pool was started and \
             warmed by one small map ({runs} processes per case), beside the warm loop"
        );
        println!(
            "  {:<width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>9}  vs Python",
            "method", "first µs", "min µs", "max µs", "warm µs", "cpu µs", "warm cpu", "ns/call"
        );
        for r in &w.rows {
            let Some(f) = &r.first_call else {
                println!("  {:<width$}  (no first-call figure)", r.name);
                continue;
            };
            let mut line = format!(
                "  {:<width$}  {:>10.1}  {:>10.1}  {:>10.1}  {:>10.1}  {}  {}  {}",
                r.name,
                f.median_us,
                f.min_us,
                f.max_us,
                r.median_us,
                cpu(f.cpu_us),
                cpu(r.cpu_us),
                per_call(f.cpu_us.unwrap_or(f64::NAN)),
            );
            if let Some(speedup) = f.speedup_vs_python {
                line.push_str("  ");
                line.push_str(&faster_or_slower(speedup));
            }
            println!("{line}");
        }
        println!(
            "  cpu µs: CPU time of the whole process tree (caller, workers, Python's pool) \
             during the first call; warm cpu: the same in the warm loop, median; ns/call: \
             first-call CPU per call"
        );
    } else if w.rows.iter().any(|r| r.cpu_us.is_some()) && w.calls_per_rep.is_some() {
        for r in &w.rows {
            if let Some(c) = r.cpu_us {
                println!(
                    "  {:<width$}  cpu {c:.1} µs per repetition, {} ns per call",
                    r.name,
                    per_call(c).trim()
                );
            }
        }
    }
}

/// 10000000 as "10,000,000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn groups_digits_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(10_000_000), "10,000,000");
    }
}
