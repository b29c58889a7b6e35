//! Noticing other load on a shared machine: CPU time spent by everyone else while we
//! measured, from `/proc/stat` (the whole machine) minus this program's own process
//! tree: its threads and the processes below it that still run (pool workers, Python
//! drivers: [`tree_cpu_ns`]), and the children it reaped (`/proc/self/stat`).

use std::time::Instant;

/// On average, others used more than this many CPUs: the numbers may be off.
pub const BUSY_THRESHOLD_CPUS: f64 = 0.15;

/// A snapshot taken when a measurement starts.
pub struct LoadMeter {
    at: Instant,
    machine: Option<MachineTicks>,
    own: Option<u64>,
}

/// How busy the rest of the machine was during a measurement.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct OtherLoad {
    /// CPUs used on average by other processes (and the hypervisor, as steal time).
    pub other_cpus: f64,
    /// Wall-clock seconds covered.
    pub seconds: f64,
    /// Whether that is enough to disturb a measurement ([`BUSY_THRESHOLD_CPUS`]).
    pub busy: bool,
}

impl OtherLoad {
    /// A one-line warning, if the machine was busy.
    pub fn warning(&self) -> Option<String> {
        self.busy.then(|| {
            format!(
                "warning: other processes used {:.2} CPUs on average during the {:.1} s run; \
                 numbers may be inflated (rerun on a quiet machine)",
                self.other_cpus, self.seconds
            )
        })
    }
}

#[derive(Clone, Copy)]
struct MachineTicks {
    busy: u64,
    total: u64,
}

impl LoadMeter {
    /// Takes the starting snapshot.
    pub fn start() -> LoadMeter {
        LoadMeter {
            at: Instant::now(),
            machine: machine_ticks(),
            own: own_ns(),
        }
    }

    /// Other load since [`start`](LoadMeter::start), or `None` where procfs is missing.
    pub fn finish(&self) -> Option<OtherLoad> {
        let seconds = self.at.elapsed().as_secs_f64();
        let (m0, m1) = (self.machine?, machine_ticks()?);
        let own = own_ns()?.saturating_sub(self.own?);
        let total = m1.total.saturating_sub(m0.total);
        if total == 0 {
            return None;
        }
        let busy = m1.busy.saturating_sub(m0.busy);
        let other = busy.saturating_sub(own / TICK_NS);
        let cpus = multiproc::cpu_count() as f64;
        // Ticks across all CPUs; total/cpus is the wall time in ticks.
        let other_cpus = other as f64 / (total as f64 / cpus);
        Some(OtherLoad {
            other_cpus,
            seconds,
            busy: other_cpus > BUSY_THRESHOLD_CPUS,
        })
    }
}

/// Busy and total ticks of the whole machine (the `cpu` line of `/proc/stat`).
fn machine_ticks() -> Option<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine(stat.lines().next()?)
}

/// `cpu user nice system idle iowait irq softirq steal guest guest_nice`; guest time is
/// already counted in user.
fn parse_machine(line: &str) -> Option<MachineTicks> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    let idle = v[3] + v[4];
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some(MachineTicks {
        busy,
        total: busy + idle,
    })
}

/// The length of one clock tick of `/proc/stat` and `/proc/PID/stat` (`USER_HZ`, 100 on
/// Linux whatever the kernel's own tick rate), in ns.
const TICK_NS: u64 = 10_000_000;

/// CPU time used so far by this program's whole process tree, in ns: the running part
/// from [`tree_cpu_ns`], the reaped children from `/proc/self/stat` (whole ticks).
fn own_ns() -> Option<u64> {
    let reaped = parse_reaped(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(tree_cpu_ns(std::process::id())? + reaped * TICK_NS)
}

/// cutime + cstime of a `/proc/PID/stat` line: the CPU ticks of the children it reaped.
fn parse_reaped(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: skip past its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest starts at field 3 (state); cutime and cstime are fields 16 and 17.
    let f: Vec<&str> = rest.split_whitespace().collect();
    (13..15).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

/// CPU time, in nanoseconds, used so far by process `pid` and every process below it
/// (its pool workers, a fork server and its children, a Python driver and its pool):
/// the sum of each thread's on-CPU time from `/proc/PID/task/TID/schedstat`, walking
/// `/proc/PID/task/TID/children`. Nanosecond resolution, where `/proc/PID/stat`'s
/// clock ticks (10 ms) would round a 5 ms map to nothing. Processes that ended are no
/// longer counted, so take it around work done by processes that stay. `None` where
/// procfs (or its `children` files) cannot tell.
pub fn tree_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    let mut stack = vec![pid];
    let mut seen = 0usize;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > 4096 {
            return None; // a runaway tree: not a measurement any more
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue; // ended since its parent listed it
        };
        for task in tasks.flatten() {
            let dir = task.path();
            if let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) {
                total += stat
                    .split_whitespace()
                    .next()
                    .and_then(|ns| ns.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if let Ok(children) = std::fs::read_to_string(dir.join("children")) {
                stack.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    (total > 0).then_some(total)
}

/// The CPU time of this program's whole process tree, in ns: [`tree_cpu_ns`] of this
/// process, plus the raw floors' children already reaped (which procfs no longer shows).
pub fn own_tree_cpu_ns() -> Option<u64> {
    tree_cpu_ns(std::process::id()).map(|t| t + crate::sys::reaped_cpu_ns())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_lines() {
        let m = parse_machine("cpu  100 5 50 1000 20 3 2 7 0 0").unwrap();
        assert_eq!(m.busy, 100 + 5 + 50 + 3 + 2 + 7);
        assert_eq!(m.total, m.busy + 1020);
        assert!(parse_machine("cpu0 1 2 3 4 5 6 7 8").is_none());
        let reaped =
            parse_reaped("42 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17");
        // utime=11 stime=12 cutime=13 cstime=14
        assert_eq!(reaped, Some(13 + 14));
    }

    #[test]
    fn counts_the_cpu_of_a_child_process() {
        let me = std::process::id();
        let before = tree_cpu_ns(me).expect("procfs");
        // A child that spins ~30 ms of CPU while we sleep: only the tree walk sees it.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(400));
        let after = tree_cpu_ns(me).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(after > before + 5_000_000, "{before} -> {after}");
    }

    #[test]
    fn measures_on_this_machine() {
        let m = LoadMeter::start();
        std::thread::sleep(std::time::Duration::from_millis(20));
        if let Some(load) = m.finish() {
            assert!(load.other_cpus >= 0.0);
        }
    }
}
