//! Channel and shared-memory workloads, each held against a raw pipe between two
//! processes (or a copy) measured in the same run: 1 MiB bandwidth, small round trips,
//! and handing a 256 MiB `Array` to a child.
//!
//! Children use the `Fork` start method and are started outside the timed region. Where
//! the scheduler puts the two processes (one CPU or two) changes pipe speed; the rows of
//! one run share that fate because the cases run round-robin.

use std::error::Error;
use std::time::{Duration, Instant};

use multiproc::{Array, Event, Pipe, PipeEnd, Process, Queue, StartMethod};
use serde_bytes::ByteBuf;

use super::{Case, CaseResult, Kind, Workload};
use crate::sys;

const MIB: usize = 1 << 20;
/// Messages per repetition of the bandwidth workload.
const MESSAGES: usize = 256;
/// Round trips per repetition of the latency workload.
const TRIPS: usize = 1000;
const RAW_PIPE: &str = "raw pipe (fork + write/read)";

fn fork<A, R>(f: fn(A) -> R, a: A) -> multiproc::Result<Process<R>>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    Process::builder()
        .start_method(StartMethod::Fork)
        .start(f, a)
}

fn pipe_sink((mut end, n): (PipeEnd<ByteBuf>, usize)) -> usize {
    let mut bytes = 0;
    for _ in 0..n {
        match end.recv() {
            Ok(b) => bytes += b.len(),
            Err(_) => return bytes,
        }
    }
    let _ = end.send(&ByteBuf::new());
    bytes
}

fn queue_sink((q, n, done): (Queue<ByteBuf>, usize, Event)) -> usize {
    let mut bytes = 0;
    for _ in 0..n {
        match q.get() {
            Ok(b) => bytes += b.len(),
            Err(_) => return bytes,
        }
    }
    done.set();
    bytes
}

/// 1 MiB messages from this process to a child.
pub struct Bandwidth;

impl Workload for Bandwidth {
    fn name(&self) -> &'static str {
        "bandwidth"
    }

    fn description(&self) -> &'static str {
        "256 messages of 1 MiB to a child (ByteBuf), until the child acknowledges"
    }

    fn reference(&self) -> &'static str {
        RAW_PIPE
    }

    fn max_iters(&self) -> Option<u64> {
        Some(15)
    }

    fn cases(&self) -> Vec<Case> {
        let msg = vec![7u8; MIB];
        let bytes = ByteBuf::from(msg.clone());
        let queue_bytes = bytes.clone();
        vec![
            Case::new(RAW_PIPE, Kind::Floor, move |_| {
                Ok(sys::raw_pipe_transfer(&msg, MESSAGES)?)
            }),
            Case::new("Pipe<ByteBuf>", Kind::Multiproc, move |_| -> CaseResult {
                let (mut here, there) = Pipe::<ByteBuf>::new()?;
                let p = fork(pipe_sink, (there, MESSAGES))?;
                let t = Instant::now();
                for _ in 0..MESSAGES {
                    here.send(&bytes)?;
                }
                here.recv()?;
                let d = t.elapsed();
                check_bytes(p.join()?)?;
                Ok(d)
            }),
            Case::new("Queue<ByteBuf>", Kind::Multiproc, move |_| -> CaseResult {
                let q = Queue::<ByteBuf>::new()?;
                let done = Event::new()?;
                let p = fork(queue_sink, (q.clone(), MESSAGES, done.clone()))?;
                let t = Instant::now();
                for _ in 0..MESSAGES {
                    q.put(&queue_bytes)?;
                }
                if !done.wait_timeout(Duration::from_secs(60)) {
                    return Err("the queue's consumer did not finish".into());
                }
                let d = t.elapsed();
                check_bytes(p.join()?)?;
                Ok(d)
            }),
        ]
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "target: Pipe and Queue at least 70% of the raw pipe's bandwidth (ratio ≤ 1.43x \
             in time). MiB/s = 256 / (median µs) × 1e6."
                .into(),
        ]
    }
}

fn check_bytes(got: usize) -> Result<(), Box<dyn Error>> {
    if got == MESSAGES * MIB {
        Ok(())
    } else {
        Err(format!("the child received {got} bytes, not {}", MESSAGES * MIB).into())
    }
}

fn pipe_echo(mut end: PipeEnd<u64>) {
    while let Ok(x) = end.recv() {
        if x == u64::MAX || end.send(&x).is_err() {
            return;
        }
    }
}

fn queue_echo((rq, wq): (Queue<u64>, Queue<u64>)) {
    while let Ok(x) = rq.get() {
        if x == u64::MAX || wq.put(&x).is_err() {
            return;
        }
    }
}

/// Small messages to a child and back.
pub struct RoundTrip;

impl Workload for RoundTrip {
    fn name(&self) -> &'static str {
        "round trip"
    }

    fn description(&self) -> &'static str {
        "1,000 round trips of a u64 to a child and back"
    }

    fn reference(&self) -> &'static str {
        RAW_PIPE
    }

    fn max_iters(&self) -> Option<u64> {
        Some(15)
    }

    fn cases(&self) -> Vec<Case> {
        vec![
            Case::new(RAW_PIPE, Kind::Floor, |_| {
                Ok(sys::raw_pipe_round_trips(TRIPS)?)
            }),
            Case::new("Pipe<u64>", Kind::Multiproc, |_| -> CaseResult {
                let (mut here, there) = Pipe::<u64>::new()?;
                let p = fork(pipe_echo, there)?;
                let t = Instant::now();
                for i in 0..TRIPS as u64 {
                    here.send(&i)?;
                    if here.recv()? != i {
                        return Err("wrong echo".into());
                    }
                }
                let d = t.elapsed();
                here.send(&u64::MAX)?;
                p.join()?;
                Ok(d)
            }),
            Case::new("Queue<u64>", Kind::Multiproc, |_| -> CaseResult {
                let (to, from) = (Queue::<u64>::new()?, Queue::<u64>::new()?);
                let p = fork(queue_echo, (to.clone(), from.clone()))?;
                let t = Instant::now();
                for i in 0..TRIPS as u64 {
                    to.put(&i)?;
                    if from.get_timeout(Duration::from_secs(10))? != i {
                        return Err("wrong echo".into());
                    }
                }
                let d = t.elapsed();
                to.put(&u64::MAX)?;
                p.join()?;
                Ok(d)
            }),
        ]
    }

    fn notes(&self) -> Vec<String> {
        vec!["per round trip: median µs / 1000.".into()]
    }
}

/// Receives arrays until `None`; for each, optionally reads every page, then answers.
fn array_taker((mut end, read): (PipeEnd<Option<Array<u8>>>, bool)) -> u64 {
    let mut sum = 0u64;
    while let Ok(Some(a)) = end.recv() {
        if read {
            if let Ok(g) = a.lock() {
                sum += g.iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>();
            }
        }
        if end.send(&None).is_err() {
            break;
        }
    }
    sum
}

fn bytes_taker(mut end: PipeEnd<ByteBuf>) {
    while let Ok(b) = end.recv() {
        if b.is_empty() || end.send(&ByteBuf::new()).is_err() {
            return;
        }
    }
}

/// A 256 MiB array handed to a running child.
pub struct Handoff;

const COPY: &str = "copy 256 MiB through Pipe<ByteBuf>";

impl Workload for Handoff {
    fn name(&self) -> &'static str {
        "256 MiB hand-off"
    }

    fn description(&self) -> &'static str {
        "give a running child a 256 MiB Array<u8> and get its answer (shared memory: the \
         handle crosses, not the bytes)"
    }

    fn reference(&self) -> &'static str {
        COPY
    }

    fn max_iters(&self) -> Option<u64> {
        Some(7)
    }

    fn cases(&self) -> Vec<Case> {
        let len = 256 * MIB;
        let array = Array::<u8>::new(len).and_then(|a| {
            a.lock()?.fill(1);
            Ok(a)
        });
        let array = match array {
            Ok(a) => a,
            Err(e) => {
                eprintln!("bench: no 256 MiB array: {e}");
                return Vec::new();
            }
        };
        let mut cases = Vec::new();
        for (name, read) in [
            ("Array hand-off", false),
            ("Array hand-off + child reads every page", true),
        ] {
            let array = array.clone();
            let child = Pipe::<Option<Array<u8>>>::new()
                .map_err(|e| e.to_string())
                .and_then(|(here, there)| {
                    fork(array_taker, (there, read))
                        .map(|p| (here, p))
                        .map_err(|e| e.to_string())
                });
            let Ok((mut here, p)) = child else {
                eprintln!("bench: cannot start the array child");
                continue;
            };
            // The child lives as long as the case; dropping the case kills it.
            cases.push(Case::new(name, Kind::Multiproc, move |_| -> CaseResult {
                let _keep = &p;
                let t = Instant::now();
                here.send(&Some(array.clone()))?;
                here.recv()?;
                Ok(t.elapsed())
            }));
        }
        if let Ok((mut here, there)) = Pipe::<ByteBuf>::new()
            && let Ok(p) = fork(bytes_taker, there)
        {
            let bytes = ByteBuf::from(vec![1u8; len]);
            cases.push(Case::new(COPY, Kind::Floor, move |_| -> CaseResult {
                let _keep = &p;
                let t = Instant::now();
                here.send(&bytes)?;
                here.recv()?;
                Ok(t.elapsed())
            }));
        }
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "target: the hand-off under 1 ms. Reading every page is the real cost of touching \
             the data, whatever the mechanism (\"zero copy\" means the hand-off)."
                .into(),
        ]
    }
}
