//! CPython's `multiprocessing` as a reference case, run when `python3` is on the PATH.
//!
//! Each Python case owns one persistent `python3 -c <python.py>` that starts its
//! `multiprocessing.Pool` once (Python's default start method), then performs one
//! repetition per request line and answers with the nanoseconds it measured itself.
//! So a Python case takes its turn in the round-robin like any other, with a warm pool
//! like the Rust ones, and neither the interpreter's start nor this pipe's chatter is
//! in its numbers.

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{Case, CaseResult, Kind};

const SCRIPT: &str = include_str!("python.py");
const PYTHON: &str = "python3";

/// What `python3` is on this machine.
struct Interpreter {
    version: String,
    start_method: String,
}

/// Probes `python3` once per run; `None`, with a note printed, where there is none.
fn interpreter() -> Option<&'static Interpreter> {
    static PROBE: OnceLock<Option<Interpreter>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let probe = "import multiprocessing, platform; \
                         print(platform.python_version(), multiprocessing.get_start_method())";
            let out = Command::new(PYTHON)
                .args(["-c", probe])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            let found = match out {
                Ok(o) if o.status.success() => {
                    let text = String::from_utf8_lossy(&o.stdout);
                    let mut words = text.split_whitespace();
                    words.next().zip(words.next()).map(|(v, m)| Interpreter {
                        version: v.to_owned(),
                        start_method: m.to_owned(),
                    })
                }
                _ => None,
            };
            if found.is_none() {
                eprintln!(
                    "bench: no working {PYTHON} on the PATH: the CPython multiprocessing cases \
                     are skipped"
                );
            }
            found
        })
        .as_ref()
}

/// A note line for workloads with Python rows: which Python, and how they are timed.
pub fn note() -> String {
    match interpreter() {
        Some(py) => format!(
            "Python rows: CPython {}'s multiprocessing.Pool with its default start method \
             here ({}) and as many workers as the Rust pools beside them; one persistent \
             {PYTHON} per case starts its pool before timing and times each repetition itself \
             (time.perf_counter_ns).",
            py.version, py.start_method
        ),
        None => format!("no Python rows: no working {PYTHON} on the PATH."),
    }
}

/// One running `python3` serving one case.
struct Driver {
    child: Child,
    /// `None` once closed: end of input tells the script to stop its pool and exit.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    /// Starts the script on `job`, feeds it `payload` (inputs shared with the Rust
    /// cases, byte for byte), and waits until its pool is up.
    fn start(
        job: &str,
        workers: usize,
        args: &[String],
        payload: &[u8],
    ) -> Result<Driver, Box<dyn Error>> {
        let mut child = Command::new(PYTHON)
            .args(["-c", SCRIPT, job, &workers.to_string()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            unreachable!("both were piped");
        };
        let mut driver = Driver {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
        };
        // A script that failed early stops reading: its own answer says why, better
        // than the broken pipe.
        let fed = driver.input()?.write_all(payload);
        let line = driver.answer()?;
        match line.strip_prefix("ready ") {
            Some(_) => Ok(driver),
            None => Err(match fed {
                Ok(()) => line.into(),
                Err(e) => format!("{line} (feeding its input: {e})").into(),
            }),
        }
    }

    fn input(&mut self) -> Result<&mut ChildStdin, Box<dyn Error>> {
        self.stdin
            .as_mut()
            .ok_or_else(|| "the Python driver's input is closed".into())
    }

    fn answer(&mut self) -> Result<String, Box<dyn Error>> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err(format!("{PYTHON} exited ({})", self.child.wait()?).into());
        }
        Ok(line.trim_end().to_owned())
    }

    /// One repetition, as Python timed it.
    fn repetition(&mut self) -> CaseResult {
        let input = self.input()?;
        input.write_all(b"run\n")?;
        input.flush()?;
        let line = self.answer()?;
        if let Some(ns) = line.strip_prefix("ok ") {
            return Ok(Duration::from_nanos(ns.parse()?));
        }
        Err(format!("{PYTHON}: {}", line.strip_prefix("error ").unwrap_or(&line)).into())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        // Its pool's workers die with it (the script asks for PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python case: a `python3` serving `job` with `workers` pool workers, each
/// repetition's time divided by `per` (the repetition's count of operations). `None`,
/// with a note printed, if there is no `python3` or the script fails to start.
pub fn case(
    name: &'static str,
    job: &str,
    workers: usize,
    args: &[String],
    payload: &[u8],
    per: u32,
) -> Option<Case> {
    if !super::first_call::wanted(name) {
        return None;
    }
    interpreter()?;
    match Driver::start(job, workers, args, payload) {
        Ok(mut driver) => Some(Case::new(name, Kind::Python, move |_| {
            Ok(driver.repetition()? / per)
        })),
        Err(e) => {
            eprintln!("bench: {name} skipped: {e}");
            None
        }
    }
}
