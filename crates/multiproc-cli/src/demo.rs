//! `multiproc demo`: the experiment of a popular Python multiprocessing tutorial, done
//! right.
//!
//! The tutorial sums 0..50,000,000 twice, first one run after the other, then in two
//! processes, and prints "44.2x speed-up" and "total: 0": its children appended their
//! sums to their own copies of a list. Here the same job runs sequentially, in
//! processes and in threads, built the same way and timed in the same run; each child's
//! sum comes back to the parent by value through `Process::join`, and every total is
//! checked against the closed formula.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use multiproc::{Process, StartMethod};

use crate::load::{LoadMeter, OtherLoad};
use crate::plot;
use crate::stats::Summary;
use crate::warm;
use crate::work::{expected_total, work};

/// Options of `multiproc demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Each run sums 0..N (the tutorial's 50,000,000; raise it for longer, steadier runs).
    #[arg(long, default_value_t = 50_000_000)]
    n: u64,

    /// Number of runs: processes (and threads) working side by side. The sequential
    /// baseline does as many runs one after the other.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256),
          conflicts_with = "plot")]
    procs: u64,

    /// How child processes are started.
    #[arg(long, value_enum, default_value_t = Method::Forkserver)]
    start_method: Method,

    /// Repeat every mode K times (interleaved) and report the median, with min and max.
    #[arg(long, value_name = "K", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    repeat: u64,

    /// Also run the job through a `multiproc::Pool` (`pool.map(work, ..)`).
    #[arg(long)]
    pool: bool,

    /// Language of the labels: `ko` prints the tutorial's own Korean labels.
    #[arg(long, value_enum, default_value_t = Lang::En)]
    lang: Lang,

    /// Run the job with 1, 2, ... --max-workers workers (processes, threads, and the
    /// Pool with --pool), each against as many runs done sequentially, and draw the
    /// speed-up against workers, with the ideal line, into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,

    /// The most workers --plot measures [default: the number of CPUs].
    #[arg(long, value_name = "N", requires = "plot",
          value_parser = clap::value_parser!(u64).range(1..=256))]
    max_workers: Option<u64>,
}

/// A start method, as the command line names it.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Method {
    /// fork() this program: cheapest, unsafe to rely on once other threads exist.
    Fork,
    /// Re-execute this program: a full program start per child, always safe.
    Spawn,
    /// A small server started early forks each child: fast and thread-safe.
    Forkserver,
}

impl From<Method> for StartMethod {
    fn from(m: Method) -> StartMethod {
        match m {
            Method::Fork => StartMethod::Fork,
            Method::Spawn => StartMethod::Spawn,
            Method::Forkserver => StartMethod::ForkServer,
        }
    }
}

/// How the runs are executed.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// One after the other in this thread, as the tutorial's first program.
    Sequential,
    /// One child process per run, started with the given method, joined for its sum.
    Processes(StartMethod),
    /// One scoped thread per run.
    Threads,
    /// A `Pool` of as many worker processes as runs, started for the job (its start
    /// and shutdown are timed too), running the runs with `pool.map`.
    Pool(StartMethod),
}

impl Mode {
    /// Runs `runs` sums of 0..n in this mode; returns each run's result.
    fn run_once(self, n: u64, runs: u64) -> Result<Vec<u64>, Box<dyn Error>> {
        match self {
            Mode::Sequential => Ok((0..runs).map(|_| work((0, n))).collect()),
            Mode::Processes(method) => run_processes(method, n, runs),
            Mode::Threads => run_threads(n, runs),
            Mode::Pool(method) => run_pool(method, n, runs),
        }
    }
}

/// Starts every process first, then joins each: its sum comes back by value.
fn run_processes(method: StartMethod, n: u64, runs: u64) -> Result<Vec<u64>, Box<dyn Error>> {
    let procs = (1..=runs)
        .map(|i| {
            Process::builder()
                .name(format!("run-{i}"))
                .start_method(method)
                .start(work, (0, n))
        })
        .collect::<multiproc::Result<Vec<_>>>()?;
    let sums = procs
        .into_iter()
        .map(Process::join)
        .collect::<multiproc::Result<Vec<u64>>>()?;
    Ok(sums)
}

fn run_pool(method: StartMethod, n: u64, runs: u64) -> Result<Vec<u64>, Box<dyn Error>> {
    let pool = multiproc::Pool::builder()
        .processes(runs as usize)
        .start_method(method)
        .build()?;
    let sums = pool.map(work, (0..runs).map(|_| (0, n)))?;
    Ok(sums)
}

fn run_threads(n: u64, runs: u64) -> Result<Vec<u64>, Box<dyn Error>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..runs).map(|_| s.spawn(move || work((0, n)))).collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a worker thread panicked".into()))
            .collect()
    })
}

/// The measurements of one mode over all repeats.
struct Measured {
    mode: Mode,
    times: Vec<Duration>,
    totals: Vec<u64>,
}

/// Runs the demo; `ExitCode::FAILURE` if any total is wrong.
pub fn run(args: &DemoArgs) -> Result<ExitCode, Box<dyn Error>> {
    if let Some(path) = &args.plot {
        return sweep(args, path);
    }
    let Some(expected) = expected_total(args.n, args.procs) else {
        return Err(format!(
            "--n {} with --procs {}: the total does not fit in a u64; choose a smaller N",
            args.n, args.procs
        )
        .into());
    };
    let lang = args.lang;
    let mut modes = vec![
        Mode::Sequential,
        Mode::Processes(args.start_method.into()),
        Mode::Threads,
    ];
    if args.pool {
        modes.push(Mode::Pool(args.start_method.into()));
    }

    println!("{}", lang.intro(args.n, args.procs, args.repeat));
    println!("{}", lang.why_python_printed_zero());
    println!();

    let (measured, other_load) = measure(&modes, args.n, args.procs, args.repeat)?;

    let baseline = median(&measured[0].times);
    let mut all_correct = true;
    let mut best_parallel_speedup = 0.0f64;
    for m in &measured {
        let speedup = baseline.as_secs_f64() / median(&m.times).as_secs_f64();
        if !matches!(m.mode, Mode::Sequential) {
            best_parallel_speedup = best_parallel_speedup.max(speedup);
        }
        all_correct &= print_mode(lang, m, args, speedup, expected);
    }
    if let Some(warning) = other_load.and_then(|l| l.warning()) {
        println!("{warning}");
    }
    let ideal = (args.procs as f64).min(multiproc::cpu_count() as f64);
    if ideal >= 2.0 && best_parallel_speedup < 0.75 * ideal {
        println!("{}", lang.short_runs_hint(args.n));
    }
    if all_correct {
        println!("{}", lang.all_correct());
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

/// Times every mode `--repeat` times, interleaved, after warming up.
fn measure(
    modes: &[Mode],
    n: u64,
    procs: u64,
    repeat: u64,
) -> Result<(Vec<Measured>, Option<OtherLoad>), Box<dyn Error>> {
    // Wake every core, and take first-use costs (the fork server's first
    // child, thread creation, page faults) outside the timed runs.
    warm::warm_cpus(warm::DEFAULT_SPIN);
    for mode in modes {
        mode.run_once(1000, procs)?;
    }

    let mut measured: Vec<Measured> = modes
        .iter()
        .map(|&mode| Measured {
            mode,
            times: Vec::new(),
            totals: Vec::new(),
        })
        .collect();
    // Interleaved, so that a slow moment of the machine hits every mode alike.
    let meter = LoadMeter::start();
    for _ in 0..repeat {
        for m in &mut measured {
            let t = Instant::now();
            let results = m.mode.run_once(n, procs)?;
            m.times.push(t.elapsed());
            // Wrapping: a wrong result must show up as a wrong total, not a panic.
            m.totals
                .push(results.iter().fold(0u64, |a, &r| a.wrapping_add(r)));
        }
    }
    Ok((measured, meter.finish()))
}

/// `--plot`: the job for 1..=max workers, each mode against the same number of runs
/// done sequentially; prints a line per worker count and draws the chart.
fn sweep(args: &DemoArgs, path: &std::path::Path) -> Result<ExitCode, Box<dyn Error>> {
    let cpus = multiproc::cpu_count();
    let max = args.max_workers.unwrap_or(cpus as u64);
    if expected_total(args.n, max).is_none() {
        return Err(format!(
            "--n {} with --max-workers {max}: the total does not fit in a u64; choose a \
             smaller N",
            args.n
        )
        .into());
    }
    let method: StartMethod = args.start_method.into();
    let mut modes = vec![Mode::Sequential, Mode::Processes(method), Mode::Threads];
    if args.pool {
        modes.push(Mode::Pool(method));
    }
    println!(
        "multiproc demo --plot: each worker sums 0..{}, for 1..={max} workers; {cpus} CPUs; \
         times are the median of {} interleaved repeats, each against as many runs done \
         sequentially",
        args.n, args.repeat
    );
    let mut head = format!("{:>7}  {:>12}", "workers", "sequential s");
    for mode in &modes[1..] {
        head.push_str(&format!("  {:>18}", series_name(*mode)));
    }
    println!("{head}");

    let mut series: Vec<plot::Series> = modes[1..]
        .iter()
        .map(|&m| plot::Series {
            name: series_name(m).to_string(),
            points: Vec::new(),
        })
        .collect();
    let mut all_correct = true;
    let mut loads = Vec::new();
    for workers in 1..=max {
        let expected = expected_total(args.n, workers).expect("fits: checked for the most");
        let (measured, load) = measure(&modes, args.n, workers, args.repeat)?;
        loads.extend(load);
        let baseline = median(&measured[0].times);
        let mut line = format!("{workers:>7}  {:>12.4}", baseline.as_secs_f64());
        for (m, s) in measured[1..].iter().zip(&mut series) {
            let t = median(&m.times);
            let speedup = baseline.as_secs_f64() / t.as_secs_f64();
            s.points.push((workers as u32, speedup));
            line.push_str(&format!(
                "  {:>18}",
                format!("{:.4} s {speedup:5.2}x", t.as_secs_f64())
            ));
        }
        println!("{line}");
        for m in &measured {
            if let Some(&wrong) = m.totals.iter().find(|&&t| t != expected) {
                println!(
                    "WRONG: {} with {workers} workers: total {wrong}, must be {expected}",
                    series_name(m.mode)
                );
                all_correct = false;
            }
        }
    }
    if let Some(warning) = loads
        .iter()
        .filter(|l| l.busy)
        .max_by(|a, b| a.other_cpus.total_cmp(&b.other_cpus))
        .and_then(|l| l.warning())
    {
        println!("{warning}");
    }
    plot::speedup(
        path,
        "multiproc demo: speed-up against workers",
        &format!(
            "each worker sums 0..{}; processes started with {method}; {cpus} CPUs; {}",
            group_digits(args.n),
            if args.repeat == 1 {
                "one run each".to_string()
            } else {
                format!("median of {} repeats", args.repeat)
            }
        ),
        &series,
        max as u32,
        cpus as u32,
    )
    .map_err(|e| format!("drawing {}: {e}", path.display()))?;
    println!("chart written to {}", path.display());
    if all_correct {
        println!("all totals correct");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

/// The legend name of a mode's series.
fn series_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Sequential => "sequential",
        Mode::Processes(_) => "processes",
        Mode::Threads => "threads",
        Mode::Pool(_) => "Pool (processes)",
    }
}

/// `50000000` as `50,000,000`.
fn group_digits(n: u64) -> String {
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

/// Prints one mode's block, the tutorial's way; `false` if a total was wrong.
fn print_mode(lang: Lang, m: &Measured, args: &DemoArgs, speedup: f64, expected: u64) -> bool {
    let s = Summary::of(&m.times).expect("repeat >= 1");
    println!("{}", lang.heading(m.mode, args.procs));
    for i in 1..=args.procs {
        println!("{}", lang.run_line(i));
    }
    println!("{}", lang.elapsed(s, args.repeat));
    println!(
        "{}",
        lang.speedup(speedup, matches!(m.mode, Mode::Sequential))
    );
    // Every repeat's total is checked; the first wrong one (if any) is shown.
    let shown = m
        .totals
        .iter()
        .copied()
        .find(|&t| t != expected)
        .unwrap_or(m.totals[0]);
    println!("{}", lang.total(shown));
    let correct = shown == expected;
    if !correct {
        println!("{}", lang.wrong_total(expected));
    }
    println!();
    correct
}

fn median(times: &[Duration]) -> Duration {
    Summary::of(times).expect("repeat >= 1").median
}

/// Which labels to print.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Lang {
    /// English.
    En,
    /// The tutorial's Korean labels.
    Ko,
}

impl Lang {
    fn intro(self, n: u64, procs: u64, repeat: u64) -> String {
        let cpus = multiproc::cpu_count();
        match self {
            Lang::En => format!(
                "multiproc demo: each of {procs} runs sums 0..{n}; {cpus} CPUs; \
                 times are the median of {repeat} interleaved repeats"
            ),
            Lang::Ko => format!(
                "multiproc demo: 0부터 {n} 까지의 합을 {procs}번 구합니다; CPU {cpus}개; \
                 시간은 {repeat}회 반복의 중앙값"
            ),
        }
    }

    fn why_python_printed_zero(self) -> &'static str {
        match self {
            Lang::En => {
                "Why the Python tutorial printed \"44.2x speed-up\" and \"total: 0\": each child \
                 appended its sum to its own copy of the `result` list and the parent summed its \
                 empty one (and 44x on 2 CPUs means the children's work was not what got timed). \
                 Here each child's sum comes back to the parent by value through Process::join, \
                 or join fails and says why."
            }
            Lang::Ko => {
                "파이썬 튜토리얼의 \"44.2 배 속도 향상\"과 \"합계 결과: 0\"의 이유: 각 자식 프로세스가 \
                 자기 복사본의 result 리스트에 합을 추가했고, 부모는 비어 있는 자기 리스트를 더했습니다 \
                 (CPU 2개에서 44배라면 자식들의 일은 측정되지 않은 것입니다). 여기서는 각 자식의 합이 \
                 Process::join 을 통해 값으로 부모에게 돌아오고, 실패하면 join 이 그 이유를 알려 줍니다."
            }
        }
    }

    fn heading(self, mode: Mode, procs: u64) -> String {
        match (self, mode) {
            (Lang::En, Mode::Sequential) => {
                format!("== sequential: {procs} runs, one after the other ==")
            }
            (Lang::En, Mode::Processes(m)) => {
                format!("== {procs} processes (start method: {m}), sums returned by join ==")
            }
            (Lang::En, Mode::Threads) => format!("== {procs} threads (std::thread::scope) =="),
            (Lang::En, Mode::Pool(m)) => {
                format!("== a Pool of {procs} worker processes ({m}), pool.map ==")
            }
            (Lang::Ko, Mode::Pool(m)) => {
                format!("== Pool 을 사용할 경우: 워커 프로세스 {procs}개 ({m}), pool.map ==")
            }
            (Lang::Ko, Mode::Sequential) => format!("== 싱글 프로세스 {procs}번 실행 =="),
            (Lang::Ko, Mode::Processes(m)) => {
                format!("== multiprocessing 을 사용할 경우: 프로세스 {procs}개 ({m}) ==")
            }
            (Lang::Ko, Mode::Threads) => format!("== 스레드 {procs}개를 사용할 경우 =="),
        }
    }

    fn run_line(self, i: u64) -> String {
        match self {
            Lang::En => format!("{} run", ordinal(i)),
            Lang::Ko => format!("{i} 번째 실행"),
        }
    }

    fn elapsed(self, s: Summary, repeat: u64) -> String {
        let secs = |d: Duration| format!("{:.4}", d.as_secs_f64());
        let line = match self {
            Lang::En => format!("{} s elapsed", secs(s.median)),
            Lang::Ko => format!("{}  초 경과", secs(s.median)),
        };
        if repeat == 1 {
            return line;
        }
        match self {
            Lang::En => format!(
                "{line}   (median of {repeat}; min {}, max {})",
                secs(s.min),
                secs(s.max)
            ),
            Lang::Ko => format!(
                "{line}   ({repeat}회 중앙값; 최소 {}, 최대 {})",
                secs(s.min),
                secs(s.max)
            ),
        }
    }

    fn speedup(self, x: f64, baseline: bool) -> String {
        match (self, baseline) {
            (Lang::En, false) => format!("{x:.2}x speed-up"),
            (Lang::En, true) => format!("{x:.2}x speed-up (the baseline)"),
            (Lang::Ko, false) => format!("{x:.2}  배 속도 향상"),
            (Lang::Ko, true) => format!("{x:.2}  배 속도 향상 (기준)"),
        }
    }

    fn total(self, total: u64) -> String {
        match self {
            Lang::En => format!("total: {total}"),
            Lang::Ko => format!("합계 결과: {total}"),
        }
    }

    fn wrong_total(self, expected: u64) -> String {
        match self {
            Lang::En => format!("WRONG: the total must be {expected}"),
            Lang::Ko => format!("틀림: 합계는 {expected} 이어야 합니다"),
        }
    }

    fn short_runs_hint(self, n: u64) -> String {
        let bigger = n.saturating_mul(10);
        match self {
            Lang::En => format!(
                "note: below the ideal speed-up; runs this short are at the mercy of a shared \
                 machine (a CPU that is slow or busy for a few ms). Compare the min times, or \
                 try --n {bigger}"
            ),
            Lang::Ko => format!(
                "참고: 이상적인 속도 향상보다 낮습니다; 이렇게 짧은 실행은 공유 머신의 영향을 크게 \
                 받습니다. 최소 시간을 비교하거나 --n {bigger} 로 실행해 보세요"
            ),
        }
    }

    fn all_correct(self) -> &'static str {
        match self {
            Lang::En => "all totals correct",
            Lang::Ko => "모든 합계가 맞습니다",
        }
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, ..., `11th`, `12th`, `13th`, `21st`, ...
fn ordinal(i: u64) -> String {
    let suffix = match (i % 10, i % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{i}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_total_in_any_repeat_is_reported() {
        let args = DemoArgs {
            n: 1000,
            procs: 2,
            start_method: Method::Forkserver,
            repeat: 2,
            pool: false,
            lang: Lang::En,
            plot: None,
            max_workers: None,
        };
        let expected = expected_total(1000, 2).unwrap();
        let mut m = Measured {
            mode: Mode::Threads,
            times: vec![Duration::from_millis(1); 2],
            totals: vec![expected, expected],
        };
        assert!(print_mode(Lang::En, &m, &args, 1.0, expected));
        m.totals[1] = 0; // the tutorial's answer
        assert!(!print_mode(Lang::En, &m, &args, 1.0, expected));
    }

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(50_000_000), "50,000,000");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
    }

    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .into_iter()
            .map(ordinal)
            .collect();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }
}
