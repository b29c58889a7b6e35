//! Start + join latency: a trivial task in a new process, per start method, against
//! raw `fork()` floors and a thread.

use std::error::Error;
use std::path::Path;

use multiproc::{Process, StartMethod};

use super::{Case, Kind, Workload, timed};
use crate::sys;

/// The trivial task each child runs.
fn bump(x: u32) -> u32 {
    x.wrapping_add(1)
}

const RAW_FORK: &str = "raw fork+waitpid";
const TRUE: &str = "/bin/true";

/// `Process::start(bump, i)` + `join`, per start method.
pub struct StartJoin;

impl Workload for StartJoin {
    fn name(&self) -> &'static str {
        "start+join"
    }

    fn description(&self) -> &'static str {
        "start a process running a trivial fn(u32) -> u32, join it, check the result"
    }

    fn reference(&self) -> &'static str {
        RAW_FORK
    }

    fn cases(&self) -> Vec<Case> {
        let mut cases = vec![
            Case::new(RAW_FORK, Kind::Floor, |_| timed(sys::fork_and_wait)),
            Case::new("raw fork+pipe 8 B", Kind::Floor, |i| {
                timed(|| check(sys::fork_pipe_u64(i)?, i))
            }),
            Case::new("thread spawn+join", Kind::Floor, |i| {
                timed(|| {
                    let x = i as u32;
                    let got = std::thread::spawn(move || bump(x))
                        .join()
                        .map_err(|_| "thread panicked")?;
                    check(u64::from(got), u64::from(bump(x)))
                })
            }),
        ];
        if Path::new(TRUE).exists() {
            cases.push(Case::new("exec /bin/true", Kind::Floor, |_| {
                timed(|| -> Result<(), Box<dyn Error>> {
                    let status = std::process::Command::new(TRUE).status()?;
                    if !status.success() {
                        return Err(format!("{TRUE} failed: {status}").into());
                    }
                    Ok(())
                })
            }));
        }
        for method in StartMethod::ALL {
            cases.push(Case::new(method.name(), Kind::Multiproc, move |i| {
                timed(|| {
                    let x = i as u32;
                    let p = Process::builder().start_method(method).start(bump, x)?;
                    check(u64::from(p.join()?), u64::from(bump(x)))
                })
            }));
        }
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "fork and forkserver are held against raw fork+waitpid (target: within 3x); \
             both also carry a task and a result over a socket, like raw fork+pipe."
                .into(),
            "spawn re-executes this binary: fork + exec + dynamic loading + Rust runtime start \
             + the child's build-id check, so compare it with exec /bin/true (a tiny program), \
             not with fork."
                .into(),
        ]
    }
}

fn check(got: u64, want: u64) -> Result<(), Box<dyn Error>> {
    if got == want {
        Ok(())
    } else {
        Err(format!("wrong result: got {got}, want {want}").into())
    }
}
