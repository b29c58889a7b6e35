//! 256 MiB values through `Pool::apply`, as an argument and as a result: copying them
//! is the cost, so each is held against a raw pipe carrying the same bytes between two
//! processes (with, for the result, a raw child building them too) and against
//! CPython's `Pool.apply` moving a `bytes` of that size.

use std::error::Error;
use std::time::Instant;

use serde_bytes::ByteBuf;

use super::pool::started_pool;
use super::{Case, CaseResult, Kind, Row, Workload, at_most, faster_than_python, find, python};
use crate::sys;

const LEN: usize = 256 << 20;
const RAW_COPY: &str = "raw pipe copy";
const RAW_BUILD: &str = "raw child build + pipe copy";
const ARGUMENT: &str = "Pool::apply, argument";
const RESULT: &str = "Pool::apply, result";
const PY_ARGUMENT: &str = "Python bytes argument";
const PY_RESULT: &str = "Python bytes result";

fn byte_len(b: ByteBuf) -> u64 {
    b.len() as u64
}

/// A 256 MiB result, built in the worker: the build is part of any result's cost.
fn ones(len: u64) -> ByteBuf {
    ByteBuf::from(vec![1u8; len as usize])
}

fn check_ones(b: &[u8]) -> Result<(), Box<dyn Error>> {
    if b.len() == LEN && b.iter().all(|&x| x == 1) {
        Ok(())
    } else {
        Err("wrong 256 MiB value".into())
    }
}

/// A 256 MiB argument and a 256 MiB result through one warm worker.
pub struct LargeValues;

impl Workload for LargeValues {
    fn name(&self) -> &'static str {
        "256 MiB values"
    }

    fn description(&self) -> &'static str {
        "one apply on a warm 1-worker pool: a 256 MiB ByteBuf argument (the task returns \
         its length), or a 256 MiB ByteBuf result (the task builds it)"
    }

    fn first_call(&self) -> bool {
        true
    }

    fn reference(&self) -> &'static str {
        RAW_COPY
    }

    fn max_iters(&self) -> Option<u64> {
        Some(5)
    }

    fn cases(&self) -> Vec<Case> {
        let big = vec![1u8; LEN];
        let mut cases = vec![
            Case::new(RAW_COPY, Kind::Floor, {
                let big = big.clone();
                move |_| Ok(sys::raw_pipe_transfer(&big, 1)?)
            })
            .vs_python(PY_ARGUMENT),
            Case::new(RAW_BUILD, Kind::Floor, |_| {
                let (d, got) = sys::raw_child_builds_and_sends(LEN)?;
                check_ones(&got)?;
                Ok(d)
            })
            .vs_python(PY_RESULT),
        ];
        match started_pool(1) {
            Ok(pool) => {
                let pool = std::rc::Rc::new(pool);
                let p = pool.clone();
                let arg = ByteBuf::from(big);
                cases.push(
                    Case::new(ARGUMENT, Kind::Multiproc, move |_| -> CaseResult {
                        // apply takes its argument by value; the copy is not the measure.
                        let arg = arg.clone();
                        let t = Instant::now();
                        let got = p.apply(byte_len, arg)?;
                        let d = t.elapsed();
                        if got != LEN as u64 {
                            return Err(format!("the worker saw {got} bytes").into());
                        }
                        Ok(d)
                    })
                    .vs_python(PY_ARGUMENT),
                );
                cases.push(
                    Case::new(RESULT, Kind::Multiproc, move |_| -> CaseResult {
                        let t = Instant::now();
                        let got = pool.apply(ones, LEN as u64)?;
                        let d = t.elapsed();
                        check_ones(&got)?;
                        Ok(d)
                    })
                    .vs_python(PY_RESULT),
                );
            }
            Err(e) => eprintln!("bench: no Pool: {e}"),
        }
        let len = [LEN.to_string()];
        cases.extend(python::case(PY_ARGUMENT, "bytes-argument", 1, &len, &[], 1));
        cases.extend(python::case(PY_RESULT, "bytes-result", 1, &len, &[], 1));
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "the raw copy's reader only drains the pipe; the raw build's child fills fresh \
             pages and its reader keeps every byte, as a result's must. Rows against: the \
             argument against the raw copy, the result against the raw build."
                .into(),
            python::note(),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        let mut out = Vec::new();
        for (name, floor) in [(ARGUMENT, RAW_COPY), (RESULT, RAW_BUILD)] {
            if let (Some(r), Some(f)) = (find(rows, name), find(rows, floor)) {
                out.push(at_most(
                    &format!("{name} over {floor}"),
                    r.median_us / f.median_us,
                    2.0,
                ));
                out.extend(faster_than_python(r, 2.0));
            }
        }
        out
    }
}
