//! IPC benchmarks, each side by side with a raw reference in the same run:
//!
//! - `bandwidth_1MiB`: 1 MiB messages from this process to a child: raw `pipe(2)` and
//!   raw socketpair (fork + read/write, the floor) vs `Pipe<ByteBuf>` vs
//!   `Queue<ByteBuf>`. Target: Pipe and Queue at least 70% of the raw pipe.
//! - `roundtrip_small`: a `u64` to a child and back: raw pipe vs `Pipe` vs `Queue`.
//! - `handoff_256MiB`: giving a running child a 256 MiB `Array<u8>` (the handle
//!   crosses, the child maps it) vs copying the same bytes through a `Pipe<ByteBuf>`;
//!   plus the child reading every page of the shared array, the real cost of touching
//!   the data ("zero copy" means the hand-off).
//!
//! Children use the `Fork` start method and are started outside the timed region.
//! Run: `cargo bench -p multiproc --bench ipc` (add `-- bandwidth` to pick a group).
//! Placement matters: on 2 CPUs the scheduler may put both processes on
//! one CPU or on two; compare the rows of one run, not runs.
// Raw libc calls on processes (signals, limits) that the test or bench needs to make.
#![allow(unsafe_code)]

use std::hint::black_box;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use multiproc::{Array, Event, Pipe, PipeEnd, Process, Queue, StartMethod};
use serde_bytes::ByteBuf;

const MIB: usize = 1 << 20;

fn fork<A, R>(f: fn(A) -> R, a: A) -> Process<R>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    Process::builder()
        .start_method(StartMethod::Fork)
        .start(f, a)
        .expect("start a child")
}

/// The child's copy of a raw descriptor number inherited across fork.
fn inherited(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: benchmark only: the parent keeps the descriptor open until the child has
    // been joined, and the forked child inherited the same number.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

fn read_exact(fd: BorrowedFd<'_>, mut n: usize, buf: &mut [u8]) {
    while n > 0 {
        let want = n.min(buf.len());
        match nix::unistd::read(fd, &mut buf[..want]) {
            Ok(0) => panic!("early end of stream"),
            Ok(k) => n -= k,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut b: &[u8]) {
    while !b.is_empty() {
        match nix::unistd::write(fd, b) {
            Ok(k) => b = &b[k..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("write: {e}"),
        }
    }
}

// ---- children ----

fn raw_sink((fd, bytes, ack): (i32, u64, Event)) {
    let mut buf = vec![0u8; MIB];
    read_exact(inherited(fd), bytes as usize, &mut buf);
    ack.set();
}

fn pipe_sink((mut end, n, ack): (PipeEnd<ByteBuf>, u64, Event)) {
    for _ in 0..n {
        black_box(end.recv().unwrap());
    }
    ack.set();
}

fn queue_sink((q, n, ack): (Queue<ByteBuf>, u64, Event)) {
    for _ in 0..n {
        black_box(q.get().unwrap());
    }
    ack.set();
}

fn raw_echo((rfd, wfd): (i32, i32)) {
    let mut b = [0u8; 8];
    loop {
        // Stop on a sentinel: this forked child holds copies of both pipes' write
        // ends, so it would never see end of stream.
        match nix::unistd::read(inherited(rfd), &mut b) {
            Ok(8) if b != [0xff; 8] => write_all(inherited(wfd), &b),
            _ => return,
        }
    }
}

// Children stop on a sentinel, not on end of stream: a `Fork` child inherits copies
// of all the parent's descriptors, the parent's pipe end included.
fn pipe_echo(mut end: PipeEnd<u64>) {
    while let Ok(x) = end.recv() {
        if x == u64::MAX {
            return;
        }
        end.send(&x).unwrap();
    }
}

fn queue_echo((rq, wq): (Queue<u64>, Queue<u64>)) {
    while let Ok(x) = rq.get() {
        if x == u64::MAX {
            return;
        }
        wq.put(&x).unwrap();
    }
}

fn array_taker(mut end: PipeEnd<Option<Array<u8>>>) {
    while let Ok(Some(a)) = end.recv() {
        let len = a.len() as u8;
        drop(a);
        // Answer with the same type: a None acknowledges.
        let _ = len;
        end.send(&None).unwrap();
    }
}

fn array_reader(mut end: PipeEnd<Option<Array<u8>>>) {
    while let Ok(Some(a)) = end.recv() {
        let sum: u64 = {
            let g = a.lock().unwrap();
            g.chunks(4096).map(|c| c[0] as u64).sum()
        };
        black_box(sum);
        end.send(&None).unwrap();
    }
}

fn bytes_taker(mut end: PipeEnd<ByteBuf>) {
    while let Ok(b) = end.recv() {
        if b.is_empty() {
            return;
        }
        let n = b.len();
        drop(b);
        end.send(&ByteBuf::from(vec![n as u8])).unwrap();
    }
}

// ---- benchmarks ----

fn bandwidth(c: &mut Criterion) {
    let mut g = c.benchmark_group("bandwidth_1MiB");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    let msg = vec![7u8; MIB];

    g.bench_function("raw_pipe", |b| {
        b.iter_custom(|iters| {
            let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
            let ack = Event::new().unwrap();
            let p = fork(raw_sink, (r.as_raw_fd(), iters * MIB as u64, ack.clone()));
            let t = Instant::now();
            for _ in 0..iters {
                write_all(w.as_fd(), &msg);
            }
            ack.wait();
            let e = t.elapsed();
            p.join().unwrap();
            e
        })
    });

    g.bench_function("raw_socketpair", |b| {
        b.iter_custom(|iters| {
            let (r, w) = nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::empty(),
            )
            .unwrap();
            let ack = Event::new().unwrap();
            let p = fork(raw_sink, (r.as_raw_fd(), iters * MIB as u64, ack.clone()));
            let t = Instant::now();
            for _ in 0..iters {
                write_all(w.as_fd(), &msg);
            }
            ack.wait();
            let e = t.elapsed();
            p.join().unwrap();
            e
        })
    });

    let bytes = ByteBuf::from(msg.clone());
    g.bench_function("Pipe<ByteBuf>", |b| {
        b.iter_custom(|iters| {
            let (mut here, there) = Pipe::<ByteBuf>::new().unwrap();
            let ack = Event::new().unwrap();
            let p = fork(pipe_sink, (there, iters, ack.clone()));
            let t = Instant::now();
            for _ in 0..iters {
                here.send(&bytes).unwrap();
            }
            ack.wait();
            let e = t.elapsed();
            p.join().unwrap();
            e
        })
    });

    g.bench_function("Queue<ByteBuf>", |b| {
        b.iter_custom(|iters| {
            let q = Queue::<ByteBuf>::new().unwrap();
            let ack = Event::new().unwrap();
            let p = fork(queue_sink, (q.clone(), iters, ack.clone()));
            let t = Instant::now();
            for _ in 0..iters {
                q.put(&bytes).unwrap();
            }
            ack.wait();
            let e = t.elapsed();
            p.join().unwrap();
            e
        })
    });
    g.finish();
}

fn roundtrip(c: &mut Criterion) {
    let mut g = c.benchmark_group("roundtrip_small");
    g.sample_size(30).measurement_time(Duration::from_secs(3));

    g.bench_function("raw_pipe", |b| {
        let (r1, w1): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let (r2, w2): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let p = fork(raw_echo, (r1.as_raw_fd(), w2.as_raw_fd()));
        let mut buf = [0u8; 8];
        b.iter(|| {
            write_all(w1.as_fd(), &42u64.to_le_bytes());
            read_exact(r2.as_fd(), 8, &mut buf);
        });
        write_all(w1.as_fd(), &[0xff; 8]);
        p.join().unwrap();
    });

    g.bench_function("Pipe<u64>", |b| {
        let (mut here, there) = Pipe::<u64>::new().unwrap();
        let p = fork(pipe_echo, there);
        b.iter(|| {
            here.send(&42).unwrap();
            black_box(here.recv().unwrap());
        });
        here.send(&u64::MAX).unwrap();
        p.join().unwrap();
    });

    g.bench_function("Queue<u64>", |b| {
        let (to, from) = (Queue::<u64>::new().unwrap(), Queue::<u64>::new().unwrap());
        let p = fork(queue_echo, (to.clone(), from.clone()));
        b.iter(|| {
            to.put(&42).unwrap();
            black_box(from.get().unwrap());
        });
        to.put(&u64::MAX).unwrap();
        p.join().unwrap();
    });
    g.finish();
}

fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("handoff_256MiB");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let len = 256 * MIB;
    let array = Array::<u8>::new(len).unwrap();
    array.lock().unwrap().fill(1);

    g.bench_function("Array handle (round trip)", |b| {
        let (mut here, there) = Pipe::<Option<Array<u8>>>::new().unwrap();
        let p = fork(array_taker, there);
        b.iter(|| {
            here.send(&Some(array.clone())).unwrap();
            here.recv().unwrap();
        });
        here.send(&None).unwrap();
        p.join().unwrap();
    });

    g.bench_function("Array handle + child reads every page", |b| {
        let (mut here, there) = Pipe::<Option<Array<u8>>>::new().unwrap();
        let p = fork(array_reader, there);
        b.iter(|| {
            here.send(&Some(array.clone())).unwrap();
            here.recv().unwrap();
        });
        here.send(&None).unwrap();
        p.join().unwrap();
    });

    g.bench_function("copy through Pipe<ByteBuf>", |b| {
        let (mut here, there) = Pipe::<ByteBuf>::new().unwrap();
        let p = fork(bytes_taker, there);
        let bytes = ByteBuf::from(vec![1u8; len]);
        b.iter(|| {
            here.send(&bytes).unwrap();
            here.recv().unwrap();
        });
        here.send(&ByteBuf::new()).unwrap();
        p.join().unwrap();
    });
    g.finish();
}

criterion_group!(benches, bandwidth, roundtrip, handoff);
criterion_main!(benches);
