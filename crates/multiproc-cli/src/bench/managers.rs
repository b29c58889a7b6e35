//! Managers: what one proxy call costs, held against a `Pipe<u64>` round trip between
//! two processes measured in the same run, and loading a `Dict` call by call and in one
//! batch, beside CPython's `multiprocessing.Manager().dict()` doing the same.

use std::error::Error;
use std::time::Instant;

use multiproc::managers::Manager;
use multiproc::{Pipe, PipeEnd, Process, StartMethod};

use super::{Case, CaseResult, Kind, Row, Workload, at_most, faster_than_python, find, python};

/// Round trips per repetition of the latency cases; each row is the time of one.
const TRIPS: u32 = 1000;
/// Entries loaded per repetition of the insert cases; each row is the time of one.
const INSERTS: u32 = 100_000;
const PIPE: &str = "Pipe<u64> round trip";
const GET: &str = "Dict::get round trip";
const INSERT: &str = "Dict::insert, 100,000 calls";
const UPDATE: &str = "Dict::update, 100,000 entries in one call";
const PY_GET: &str = "Python Manager().dict() d[k]";
const PY_INSERT: &str = "Python Manager().dict() d[k] = v, 100,000 times";

fn pipe_echo(mut end: PipeEnd<u64>) {
    while let Ok(x) = end.recv() {
        if x == u64::MAX || end.send(&x).is_err() {
            return;
        }
    }
}

fn pipe_trips(_: u64) -> CaseResult {
    let (mut here, there) = Pipe::<u64>::new()?;
    let p = Process::builder()
        .start_method(StartMethod::Fork)
        .start(pipe_echo, there)?;
    let t = Instant::now();
    for i in 0..u64::from(TRIPS) {
        here.send(&i)?;
        if here.recv()? != i {
            return Err("wrong echo".into());
        }
    }
    let d = t.elapsed();
    here.send(&u64::MAX)?;
    p.join()?;
    Ok(d / TRIPS)
}

/// A manager process and one warm `Dict<u64, u64>` in it, for a case to own.
fn started() -> Result<(Manager, multiproc::managers::Dict<u64, u64>), Box<dyn Error>> {
    let m = Manager::start()?;
    let d = m.dict::<u64, u64>()?;
    d.insert(1, 2)?;
    Ok((m, d))
}

/// `Manager` and `Dict` proxy calls.
pub struct Managers;

impl Workload for Managers {
    fn name(&self) -> &'static str {
        "managers"
    }

    fn description(&self) -> &'static str {
        "µs per operation: a u64 to a child and back over a Pipe, a Dict::get on a warm \
         manager (1,000 per repetition), and loading 100,000 entries into a Dict"
    }

    fn reference(&self) -> &'static str {
        PIPE
    }

    fn max_iters(&self) -> Option<u64> {
        Some(5)
    }

    fn cases(&self) -> Vec<Case> {
        let mut cases = vec![Case::new(PIPE, Kind::Floor, pipe_trips)];
        match started() {
            Ok((m, d)) => cases.push(
                Case::new(GET, Kind::Multiproc, move |_| -> CaseResult {
                    let _keep = &m;
                    let t = Instant::now();
                    for _ in 0..TRIPS {
                        if d.get(&1)? != Some(2) {
                            return Err("Dict::get gave a wrong value".into());
                        }
                    }
                    Ok(t.elapsed() / TRIPS)
                })
                .vs_python(PY_GET),
            ),
            Err(e) => eprintln!("bench: no manager: {e}"),
        }
        match started() {
            Ok((m, d)) => cases.push(
                Case::new(INSERT, Kind::Multiproc, move |_| -> CaseResult {
                    let _keep = &m;
                    d.clear()?;
                    let t = Instant::now();
                    for i in 0..u64::from(INSERTS) {
                        d.insert(i, i)?;
                    }
                    let e = t.elapsed();
                    if d.len()? != INSERTS as usize {
                        return Err("the Dict lost entries".into());
                    }
                    Ok(e / INSERTS)
                })
                .vs_python(PY_INSERT),
            ),
            Err(e) => eprintln!("bench: no manager: {e}"),
        }
        match started() {
            Ok((m, d)) => cases.push(
                Case::new(UPDATE, Kind::Multiproc, move |_| -> CaseResult {
                    let _keep = &m;
                    d.clear()?;
                    let t = Instant::now();
                    d.update((0..u64::from(INSERTS)).map(|i| (i, i)))?;
                    let e = t.elapsed();
                    if d.len()? != INSERTS as usize {
                        return Err("the Dict lost entries".into());
                    }
                    Ok(e / INSERTS)
                })
                .vs_python(PY_INSERT),
            ),
            Err(e) => eprintln!("bench: no manager: {e}"),
        }
        cases.extend(python::case(
            PY_GET,
            "manager-get",
            1,
            &[TRIPS.to_string()],
            &[],
            TRIPS,
        ));
        cases.extend(python::case(
            PY_INSERT,
            "manager-insert",
            1,
            &[INSERTS.to_string()],
            &[],
            INSERTS,
        ));
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "each multiproc case owns a manager process (Manager::start(), the default \
             start method) and one Dict<u64, u64> in it; every call is one signed message \
             to the manager and one back over a Unix socket (HMAC-SHA256 both ways)."
                .into(),
            "the Pipe row is the floor: a u64 to a forked child and back, framed and \
             encoded but not signed."
                .into(),
            python::note(),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(r) = find(rows, GET) {
            out.push(at_most(&format!("{GET} over the {PIPE}"), r.ratio, 3.0));
        }
        for name in [INSERT, UPDATE] {
            if let Some(r) = find(rows, name) {
                out.extend(faster_than_python(r, 10.0));
            }
        }
        out
    }
}
