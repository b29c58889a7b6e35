//! zlib at level 6 on 64 blocks of 1 MiB: real work whose arguments and results are
//! bytes, so a process pool pays for moving 64 MiB out and the compressed blocks back.
//! Held against doing it sequentially, and beside rayon (threads: no copies) and
//! CPython's `Pool.map` (the same system zlib, the same bytes).

use std::error::Error;
use std::io::{Read, Write};
use std::time::Instant;

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use multiproc::ThreadPool;
use rayon::prelude::*;
use serde_bytes::ByteBuf;

use super::pool::{RAYON, started_pool};
use super::{Case, CaseResult, Kind, Row, Workload, at_least, find, python};

const BLOCKS: usize = 64;
const BLOCK: usize = 1 << 20;
const SEQUENTIAL: &str = "sequential";
const POOL: &str = "Pool::map";

/// What a text compresses like: words from a small vocabulary, in an order from a
/// fixed PRNG, so every run (and the Python side) compresses the very same bytes.
fn block(index: usize) -> Vec<u8> {
    const WORDS: [&str; 32] = [
        "the", "pool", "process", "worker", "task", "result", "of", "and", "a", "to", "map",
        "chunk", "queue", "pipe", "fork", "spawn", "server", "in", "is", "with", "memory",
        "shared", "lock", "event", "value", "array", "bytes", "send", "receive", "join", "start",
        "time",
    ];
    let mut x = (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(BLOCK + 16);
    while out.len() < BLOCK {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        out.push(if x >> 60 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(BLOCK);
    out
}

fn compress(data: &[u8]) -> Vec<u8> {
    let mut z = ZlibEncoder::new(Vec::with_capacity(data.len() / 2), Compression::new(6));
    z.write_all(data)
        .and_then(|()| z.finish())
        .expect("compressing into a Vec cannot fail")
}

fn compress6(block: ByteBuf) -> ByteBuf {
    ByteBuf::from(compress(&block))
}

/// The expected output: compressed once before timing, and checked by decompressing.
fn reference(blocks: &[ByteBuf]) -> Result<Vec<Vec<u8>>, Box<dyn Error>> {
    let out: Vec<Vec<u8>> = blocks.iter().map(|b| compress(b)).collect();
    for (z, b) in out.iter().zip(blocks) {
        let mut back = Vec::with_capacity(BLOCK);
        ZlibDecoder::new(&z[..]).read_to_end(&mut back)?;
        if back != b[..] {
            return Err("zlib does not give back what it compressed".into());
        }
    }
    Ok(out)
}

fn check<T: AsRef<[u8]>>(got: &[T], want: &[Vec<u8>]) -> Result<(), Box<dyn Error>> {
    if got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.as_ref() == &w[..]) {
        Ok(())
    } else {
        Err("compressed blocks differ from zlib's own".into())
    }
}

/// Times `f` on a fresh copy of the inputs (the copy is outside the timing: a pool's
/// `map` takes its items by value), then checks its output.
fn timed<T: AsRef<[u8]>>(
    blocks: &[ByteBuf],
    want: &[Vec<u8>],
    f: impl FnOnce(Vec<ByteBuf>) -> multiproc::Result<Vec<T>>,
) -> CaseResult {
    let input = blocks.to_vec();
    let t = Instant::now();
    let out = f(input)?;
    let d = t.elapsed();
    check(&out, want)?;
    Ok(d)
}

/// zlib level 6 over 64 MiB of text, block by block.
pub struct Zlib;

impl Workload for Zlib {
    fn name(&self) -> &'static str {
        "zlib"
    }

    fn description(&self) -> &'static str {
        "zlib level 6 (system zlib) on 64 blocks of 1 MiB of text, compressed blocks \
         returned (pools started before timing)"
    }

    fn first_call(&self) -> bool {
        true
    }

    fn reference(&self) -> &'static str {
        SEQUENTIAL
    }

    fn max_iters(&self) -> Option<u64> {
        Some(5)
    }

    fn cases(&self) -> Vec<Case> {
        let workers = multiproc::cpu_count();
        let blocks: Vec<ByteBuf> = (0..BLOCKS).map(|i| ByteBuf::from(block(i))).collect();
        let want = match reference(&blocks) {
            Ok(w) => std::rc::Rc::new(w),
            Err(e) => {
                eprintln!("bench: zlib skipped: {e}");
                return Vec::new();
            }
        };
        let blocks = std::rc::Rc::new(blocks);
        let mut cases = Vec::new();
        let (b, w) = (blocks.clone(), want.clone());
        cases.push(Case::new(SEQUENTIAL, Kind::Floor, move |_| {
            timed(&b, &w, |input| {
                Ok(input.iter().map(|x| compress(x)).collect())
            })
        }));
        let (b, w) = (blocks.clone(), want.clone());
        cases.push(Case::new(RAYON, Kind::Floor, move |_| {
            // Threads share the inputs: rayon works on references, no copy to time.
            let t = Instant::now();
            let out: Vec<Vec<u8>> = b.par_iter().map(|x| compress(x)).collect();
            let d = t.elapsed();
            check(&out, &w)?;
            Ok(d)
        }));
        match started_pool(workers) {
            Ok(p) => {
                let (b, w) = (blocks.clone(), want.clone());
                cases.push(Case::new(POOL, Kind::Multiproc, move |_| {
                    timed(&b, &w, |input| p.map(compress6, input))
                }));
            }
            Err(e) => eprintln!("bench: no Pool: {e}"),
        }
        match ThreadPool::new(workers) {
            Ok(p) => {
                let (b, w) = (blocks.clone(), want.clone());
                cases.push(Case::new("ThreadPool::map", Kind::Multiproc, move |_| {
                    timed(&b, &w, |input| p.map(compress6, input))
                }));
            }
            Err(e) => eprintln!("bench: no ThreadPool: {e}"),
        }
        let mut payload = Vec::with_capacity(BLOCKS * BLOCK);
        for b in blocks.iter() {
            payload.extend_from_slice(b);
        }
        let args = [BLOCKS.to_string(), BLOCK.to_string()];
        cases.extend(python::case(
            "Python Pool.map",
            "zlib",
            workers,
            &args,
            &payload,
            1,
        ));
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "speed-up = sequential's time / the row's (1 / the time ratio). Every output is \
             compared byte for byte with zlib's, computed and decompressed before timing."
                .into(),
            python::note(),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        let speedups: Vec<String> = rows
            .iter()
            .filter(|r| r.name != SEQUENTIAL)
            .map(|r| format!("{} {:.2}x", r.name, 1.0 / r.ratio))
            .collect();
        let mut out = vec![format!("speed-up over sequential: {}", speedups.join(", "))];
        if let (Some(pool), Some(rayon)) = (find(rows, POOL), find(rows, RAYON)) {
            out.push(at_least(
                "Pool::map's speed-up over rayon's",
                rayon.ratio / pool.ratio,
                0.97,
            ));
        }
        out.extend(find(rows, POOL).and_then(super::versus_python));
        out
    }
}
