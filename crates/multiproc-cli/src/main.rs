//! `multiproc`: the tutorial's experiment done right (`demo`), and benchmarks (`bench`).

mod bench;
mod demo;
mod load;
mod plot;
mod stats;
mod sys;
mod warm;
mod work;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Python's multiprocessing, done right: typed results from real OS processes.
#[derive(Parser, Debug)]
#[command(name = "multiproc", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sum 0..N once per worker, sequentially, in processes and in threads, and compare
    /// (the experiment of a popular Python multiprocessing tutorial, done right).
    Demo(demo::DemoArgs),
    /// Measure multiproc against raw-syscall floors, threads and CPython's
    /// multiprocessing, side by side in the same run.
    Bench(bench::BenchArgs),
    /// The "map memory" measurement, run by `bench` in a fresh process of its own.
    #[command(name = bench::MEMORY_CHILD_COMMAND, hide = true)]
    BenchRss,
    /// One case of a workload timed once in this fresh process, run by `bench`.
    #[command(name = bench::FIRST_CALL_CHILD_COMMAND, hide = true)]
    BenchFirstCall { workload: String, case: String },
}

fn main() -> ExitCode {
    // First: in a child started by multiproc this never returns (it becomes a worker);
    // in the parent it starts the fork server while the program is still young.
    multiproc::init();
    let cli = Cli::parse();
    init_logging();
    let outcome = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::BenchRss => bench::memory_child(),
        Command::BenchFirstCall { workload, case } => bench::first_call_child(&workload, &case),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("multiproc: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// With `RUST_LOG` set (e.g. `RUST_LOG=multiproc=debug`), the library's `tracing`
/// events go to stderr, filtered by it; without it, nothing is logged.
fn init_logging() {
    let Some(spec) = std::env::var_os("RUST_LOG") else {
        return;
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(spec.to_string_lossy()) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!(
                "multiproc: ignoring RUST_LOG={}: {e}",
                spec.to_string_lossy()
            );
            return;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours on a terminal only, not in a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
