//! A word count as a new user writes it: 200 text files (~5.5 MB, a Zipf vocabulary of
//! 5,000 words); each task reads its file and returns a `HashMap<String, u64>`, and the
//! caller merges them. Strings and maps, not integers: what the general (serde) path
//! costs, and how much of the job is the caller's serial merge. Held against the
//! sequential loop, beside rayon (merging in the caller, and reducing in its threads),
//! CPython's `Pool.map` doing the same with `collections.Counter`, and the floor of any
//! process pool: children forked by hand, each counting half the files and piping its
//! maps back as postcard, with nothing of multiproc in the way.

use std::collections::HashMap;
use std::error::Error;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

use super::pool::{started_pool, started_thread_pool};
use super::{Case, CaseResult, Kind, Row, Workload, at_least, find, python};
use crate::sys::{RawChildren, poll_readable};

const FILES: usize = 200;
const VOCABULARY: usize = 5_000;
/// Words per file: ~27.5 KB of text each, ~5.5 MB in all.
const WORDS_PER_FILE: usize = 4_000;
const SEQUENTIAL: &str = "sequential";
const RAYON_MERGE: &str = "rayon, merge in the caller";
const RAYON_REDUCE: &str = "rayon, reduce in its threads";
const POOL: &str = "Pool::map, merge in the caller";
const POOL_REDUCE: &str = "Pool::map_reduce, merge in the workers";
const PY_POOL: &str = "Python Pool.map, merge in the caller";
const PY_SEQ: &str = "Python sequential";
const RAW_MERGE: &str = "raw fork + pipe, merge in the caller";
const RAW_REDUCE: &str = "raw fork + pipe, reduce in the children";

type Counts = HashMap<String, u64>;

/// The files, in a directory of their own, removed when the workload is dropped.
struct Corpus {
    dir: PathBuf,
    paths: Vec<String>,
    /// The whole corpus's counts, computed once to check every case.
    want: Counts,
}

impl Drop for Corpus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The vocabulary: 5,000 distinct lowercase words of 2 to 11 letters.
fn vocabulary() -> Vec<String> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut words = Vec::with_capacity(VOCABULARY);
    let mut seen = std::collections::HashSet::new();
    while words.len() < VOCABULARY {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 2 + (x % 10) as usize;
        let w: String = (0..len)
            .map(|i| (b'a' + ((x >> (5 * i + 4)) % 26) as u8) as char)
            .collect();
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

impl Corpus {
    fn create() -> Result<Corpus, Box<dyn Error>> {
        let dir = std::env::temp_dir().join(format!("multiproc-wordcount-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let words = vocabulary();
        // Zipf: word k has weight 1/(k+1); sample by a cumulative table.
        let weights: Vec<f64> = (0..VOCABULARY).map(|k| 1.0 / (k + 1) as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut cumulative = Vec::with_capacity(VOCABULARY);
        let mut acc = 0.0;
        for w in &weights {
            acc += w / total;
            cumulative.push(acc);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut paths = Vec::with_capacity(FILES);
        let mut want = Counts::new();
        for f in 0..FILES {
            let mut text = String::with_capacity(WORDS_PER_FILE * 8);
            for i in 0..WORDS_PER_FILE {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                let k = cumulative.partition_point(|&c| c < u).min(VOCABULARY - 1);
                text.push_str(&words[k]);
                text.push(if i % 12 == 11 { '\n' } else { ' ' });
                *want.entry(words[k].clone()).or_default() += 1;
            }
            let path = dir.join(format!("{f:03}.txt"));
            std::fs::write(&path, text)?;
            paths.push(path.to_string_lossy().into_owned());
        }
        Ok(Corpus { dir, paths, want })
    }
}

/// The task: one file's word counts.
pub fn count_file(path: String) -> Counts {
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut counts = Counts::new();
    for w in text.split_ascii_whitespace() {
        match counts.get_mut(w) {
            Some(n) => *n += 1,
            None => {
                counts.insert(w.to_owned(), 1);
            }
        }
    }
    counts
}

/// The caller's merge.
fn merge(mut into: Counts, part: Counts) -> Counts {
    if into.len() < part.len() {
        return merge(part, into);
    }
    for (w, n) in part {
        *into.entry(w).or_default() += n;
    }
    into
}

/// The floor under every process pool: `workers` children forked before the clock
/// starts (as a pool's are started before its call), each counting a contiguous share
/// of the files once told to go and writing frames into its pipe (a `u32` length, then
/// the map as postcard): a map per file, or with `reduce` its share folded into one
/// map. This process decodes each frame as it arrives and merges as the pool cases do.
/// Returns the time from "go" to the merged counts, and the counts.
fn raw_fork_count(
    paths: &[String],
    workers: usize,
    reduce: bool,
) -> Result<(std::time::Duration, Counts), Box<dyn Error>> {
    let per = paths.len().div_ceil(workers.max(1)).max(1);
    let mut kids = RawChildren::fork(workers, |i, out| {
        let share = paths.chunks(per).nth(i).unwrap_or(&[]);
        let mut send = |c: &Counts| -> io::Result<()> {
            let bytes = postcard::to_stdvec(c).map_err(io::Error::other)?;
            out.write_all(&(bytes.len() as u32).to_le_bytes())?;
            out.write_all(&bytes)
        };
        if reduce {
            send(
                &share
                    .iter()
                    .map(|p| count_file(p.clone()))
                    .fold(Counts::new(), merge),
            )
        } else {
            share.iter().try_for_each(|p| send(&count_file(p.clone())))
        }
    })?;
    let t = Instant::now();
    kids.go()?;
    let mut maps = Vec::with_capacity(if reduce { workers } else { paths.len() });
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); workers];
    let mut open = vec![true; workers];
    let mut scratch = vec![0u8; 1 << 16];
    while open.contains(&true) {
        let readers = kids.readers();
        let live: Vec<usize> = (0..workers).filter(|&i| open[i]).collect();
        let ready = poll_readable(&live.iter().map(|&i| &readers[i]).collect::<Vec<_>>(), -1)?;
        for (&i, ready) in live.iter().zip(ready) {
            if !ready {
                continue;
            }
            let n = (&readers[i]).read(&mut scratch)?;
            if n == 0 {
                open[i] = false;
                continue;
            }
            let buf = &mut pending[i];
            buf.extend_from_slice(&scratch[..n]);
            let mut at = 0;
            while let Some(head) = buf.get(at..at + 4) {
                let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                let Some(frame) = buf.get(at + 4..at + 4 + len) else {
                    break;
                };
                maps.push(postcard::from_bytes::<Counts>(frame)?);
                at += 4 + len;
            }
            buf.drain(..at);
        }
    }
    if pending.iter().any(|b| !b.is_empty()) {
        return Err("a raw child's pipe ended inside a frame".into());
    }
    let counts = maps.into_iter().fold(Counts::new(), merge);
    let elapsed = t.elapsed();
    kids.wait()?;
    Ok((elapsed, counts))
}

fn timed_count(want: &Counts, f: impl FnOnce() -> Result<Counts, Box<dyn Error>>) -> CaseResult {
    let t = Instant::now();
    let got = f()?;
    let d = t.elapsed();
    if &got != want {
        return Err("the word counts differ from the corpus's".into());
    }
    Ok(d)
}

/// The word count over 200 files.
pub struct WordCount {
    corpus: std::cell::OnceCell<Result<std::rc::Rc<Corpus>, String>>,
}

impl Default for WordCount {
    fn default() -> Self {
        WordCount {
            corpus: std::cell::OnceCell::new(),
        }
    }
}

impl WordCount {
    fn corpus(&self) -> Result<std::rc::Rc<Corpus>, Box<dyn Error>> {
        self.corpus
            .get_or_init(|| {
                Corpus::create()
                    .map(std::rc::Rc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(Into::into)
    }
}

impl Workload for WordCount {
    fn name(&self) -> &'static str {
        "word count"
    }

    fn description(&self) -> &'static str {
        "count words in 200 files (~5.5 MB, Zipf vocabulary of 5,000 words): a \
         HashMap<String, u64> per file, merged (pools started before timing)"
    }

    fn reference(&self) -> &'static str {
        SEQUENTIAL
    }

    fn max_iters(&self) -> Option<u64> {
        Some(21)
    }

    fn first_call(&self) -> bool {
        true
    }

    fn calls_per_rep(&self) -> Option<u64> {
        Some(FILES as u64)
    }

    fn setup(&self) -> Result<(), Box<dyn Error>> {
        self.corpus().map(drop)
    }

    fn cases(&self) -> Vec<Case> {
        let corpus = match self.corpus() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("bench: word count: no corpus: {e}");
                return Vec::new();
            }
        };
        let workers = multiproc::cpu_count();
        let mut cases = Vec::new();
        let c = corpus.clone();
        cases.push(Case::new(SEQUENTIAL, Kind::Floor, move |_| {
            timed_count(&c.want, || {
                Ok(c.paths
                    .iter()
                    .map(|p| count_file(p.clone()))
                    .fold(Counts::new(), merge))
            })
        }));
        let c = corpus.clone();
        cases.push(Case::new(RAYON_MERGE, Kind::Floor, move |_| {
            timed_count(&c.want, || {
                let parts: Vec<Counts> =
                    c.paths.par_iter().map(|p| count_file(p.clone())).collect();
                Ok(parts.into_iter().fold(Counts::new(), merge))
            })
        }));
        let c = corpus.clone();
        cases.push(Case::new(RAYON_REDUCE, Kind::Floor, move |_| {
            timed_count(&c.want, || {
                Ok(c.paths
                    .par_iter()
                    .map(|p| count_file(p.clone()))
                    .reduce(Counts::new, merge))
            })
        }));
        for (name, reduce) in [(RAW_MERGE, false), (RAW_REDUCE, true)] {
            let c = corpus.clone();
            cases.push(Case::new(name, Kind::Floor, move |_| {
                let (elapsed, got) = raw_fork_count(&c.paths, workers, reduce)?;
                if got != c.want {
                    return Err("the word counts differ from the corpus's".into());
                }
                Ok(elapsed)
            }));
        }
        match started_pool(workers) {
            Ok(p) => {
                let c = corpus.clone();
                cases.push(
                    Case::new(POOL, Kind::Multiproc, move |_| {
                        timed_count(&c.want, || {
                            let parts = p.map(count_file, c.paths.iter().cloned())?;
                            Ok(parts.into_iter().fold(Counts::new(), merge))
                        })
                    })
                    .vs_python(PY_POOL),
                );
            }
            Err(e) => eprintln!("bench: no Pool: {e}"),
        }
        match started_pool(workers) {
            Ok(p) => {
                let c = corpus.clone();
                cases.push(
                    Case::new(POOL_REDUCE, Kind::Multiproc, move |_| {
                        timed_count(&c.want, || {
                            Ok(p.map_reduce(count_file, c.paths.iter().cloned(), merge)?
                                .unwrap_or_default())
                        })
                    })
                    .vs_python(PY_POOL),
                );
            }
            Err(e) => eprintln!("bench: no Pool: {e}"),
        }
        match started_thread_pool(workers) {
            Ok(p) => {
                let c = corpus.clone();
                cases.push(
                    Case::new(
                        "ThreadPool::map, merge in the caller",
                        Kind::Multiproc,
                        move |_| {
                            timed_count(&c.want, || {
                                let parts = p.map(count_file, c.paths.iter().cloned())?;
                                Ok(parts.into_iter().fold(Counts::new(), merge))
                            })
                        },
                    )
                    .vs_python(PY_POOL),
                );
            }
            Err(e) => eprintln!("bench: no ThreadPool: {e}"),
        }
        let dir = corpus.dir.to_string_lossy().into_owned();
        let args = [dir, FILES.to_string()];
        cases.extend(python::case(PY_POOL, "wordcount", workers, &args, &[], 1));
        cases.extend(python::case(
            PY_SEQ,
            "wordcount-seq",
            workers,
            &args,
            &[],
            1,
        ));
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            "every case merges 200 maps of ~1,500 words into one; with the merge in the \
             caller that serial part caps the speed-up on 2 CPUs (threads included): rayon's \
             reduce, and a pool's reduce in its workers, merge in parallel instead."
                .into(),
            python::note(),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        let mut out = Vec::new();
        if let (Some(pool), Some(rayon)) = (find(rows, POOL), find(rows, RAYON_MERGE)) {
            out.push(at_least(
                "Pool (merge in the caller) over rayon (the same): rayon's time / the pool's",
                rayon.median_us / pool.median_us,
                0.95,
            ));
            out.extend(super::faster_than_python(pool, 3.0));
        }
        if let Some(reduce) = find(rows, POOL_REDUCE) {
            out.push(at_least(
                &format!("{POOL_REDUCE}, speed-up over the sequential loop"),
                1.0 / reduce.ratio,
                1.7,
            ));
        }
        if let Some(pool) = find(rows, POOL) {
            out.push(format!(
                "{POOL}: {:.2}x the sequential loop's speed",
                1.0 / pool.ratio
            ));
        }
        out.extend(floor_findings(
            |name| find(rows, name).map(|r| r.median_us),
            "",
        ));
        out
    }

    fn first_call_findings(&self, rows: &[Row]) -> Vec<String> {
        let first = |name: &str| find(rows, name).and_then(|r| r.first_call.as_ref());
        let mut out = Vec::new();
        if let (Some(pool), Some(rayon)) = (first(POOL), first(RAYON_MERGE)) {
            out.push(at_least(
                "first call, Pool over rayon (both merging in the caller)",
                rayon.median_us / pool.median_us,
                0.95,
            ));
            if let Some(s) = pool.speedup_vs_python {
                out.push(at_least(
                    "first call, Pool, times faster than Python",
                    s,
                    3.0,
                ));
            }
        }
        if let (Some(reduce), Some(seq)) = (first(POOL_REDUCE), first(SEQUENTIAL)) {
            out.push(at_least(
                "first call, Pool::map_reduce, speed-up over the sequential loop",
                seq.median_us / reduce.median_us,
                1.7,
            ));
        }
        out.extend(floor_findings(
            |name| first(name).map(|r| r.median_us),
            "first call, ",
        ));
        out
    }
}

/// What the raw-fork floors say of the targets: how far processes get on this machine
/// with nothing of multiproc in the way, and where the pool stands against that.
fn floor_findings(median_us: impl Fn(&str) -> Option<f64>, when: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(raw), Some(rayon), Some(pool)) = (
        median_us(RAW_MERGE),
        median_us(RAYON_MERGE),
        median_us(POOL),
    ) {
        out.push(format!(
            "{when}the floor for processes, {RAW_MERGE}: {:.2}x rayon's speed; the pool: \
             {:.2}x that floor's speed",
            rayon / raw,
            raw / pool
        ));
    }
    if let (Some(raw), Some(seq), Some(pool)) = (
        median_us(RAW_REDUCE),
        median_us(SEQUENTIAL),
        median_us(POOL_REDUCE),
    ) {
        out.push(format!(
            "{when}the floor for processes, {RAW_REDUCE}: {:.2}x the sequential loop's \
             speed; the pool's map_reduce: {:.2}x that floor's speed",
            seq / raw,
            raw / pool
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_zipf_and_the_counts_add_up() {
        let c = Corpus::create().unwrap();
        assert_eq!(c.paths.len(), FILES);
        let total: u64 = c.want.values().sum();
        assert_eq!(total, (FILES * WORDS_PER_FILE) as u64);
        let bytes: u64 = c
            .paths
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!((4_000_000..7_000_000).contains(&bytes), "{bytes} bytes");
        let merged = c
            .paths
            .iter()
            .map(|p| count_file(p.clone()))
            .fold(Counts::new(), merge);
        assert_eq!(merged, c.want);
        for reduce in [false, true] {
            assert_eq!(raw_fork_count(&c.paths, 2, reduce).unwrap().1, c.want);
        }
        let dir = c.dir.clone();
        drop(c);
        assert!(!std::path::Path::new(&dir).exists());
    }
}
