//! Pipe and Queue across real processes.

use std::time::{Duration, Instant};

use multiproc::{Error, JoinableQueue, Pipe, PipeEnd, Process, Queue, StartMethod};
use serde_bytes::ByteBuf;

const PRODUCERS: u64 = 4;
const CONSUMERS: usize = 4;
const MESSAGES: u64 = 100_000;

fn produce((q, p): (Queue<Option<u64>>, u64)) {
    let per = MESSAGES / PRODUCERS;
    for i in p * per..(p + 1) * per {
        q.put(&Some(i)).unwrap();
    }
}

fn consume(q: Queue<Option<u64>>) -> Vec<u64> {
    let mut got = Vec::new();
    while let Some(i) = q.get().unwrap() {
        got.push(i);
    }
    got
}

#[test]
fn four_producers_four_consumers_each_message_exactly_once() {
    for m in [StartMethod::ForkServer, StartMethod::Fork] {
        let t = Instant::now();
        let q = Queue::<Option<u64>>::new().unwrap();
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                Process::builder()
                    .start_method(m)
                    .start(consume, q.clone())
                    .unwrap()
            })
            .collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                Process::builder()
                    .start_method(m)
                    .start(produce, (q.clone(), p))
                    .unwrap()
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        for _ in 0..CONSUMERS {
            q.put(&None).unwrap();
        }
        let mut seen = vec![false; MESSAGES as usize];
        let mut total = 0;
        for c in consumers {
            for i in c.join().unwrap() {
                assert!(!seen[i as usize], "{m}: message {i} delivered twice");
                seen[i as usize] = true;
                total += 1;
            }
        }
        assert_eq!(total, MESSAGES, "{m}: every message arrived");
        eprintln!("{m}: {MESSAGES} messages in {:?}", t.elapsed());
    }
}

/// Message `i` of producer `who`: small ones inline, every third one large (memfd).
fn message(who: u8, i: u64) -> (u8, u64, ByteBuf) {
    let len = if i % 3 == 0 { 100_000 } else { 100 };
    (who, i, ByteBuf::from(vec![(i % 251) as u8; len]))
}

fn produce_forever(q: Queue<(u8, u64, ByteBuf)>) {
    for i in 0.. {
        q.put(&message(0, i)).unwrap();
    }
}

fn produce_some(q: Queue<(u8, u64, ByteBuf)>) {
    for i in 0..3000 {
        q.put(&message(1, i)).unwrap();
    }
}

#[test]
fn a_producer_killed_mid_stream_corrupts_nothing() {
    let q = Queue::<(u8, u64, ByteBuf)>::new().unwrap();
    let mut doomed = Process::start(produce_forever, q.clone()).unwrap();
    let other = Process::start(produce_some, q.clone()).unwrap();
    let mut next = [0u64; 2];
    let check = |(who, i, data): (u8, u64, ByteBuf), next: &mut [u64; 2]| {
        assert_eq!((who, i, data.clone()), message(who, i), "intact");
        assert_eq!(i, next[who as usize], "in order, none lost or repeated");
        next[who as usize] += 1;
    };
    while next[0] < 2000 {
        check(q.get_timeout(Duration::from_secs(30)).unwrap(), &mut next);
    }
    doomed.kill().unwrap();
    assert!(
        doomed
            .join_timeout(Duration::from_secs(10))
            .unwrap_err()
            .signal()
            .is_some()
    );
    // Drain: everything the killed producer queued is whole; the other one finishes.
    while next[1] < 3000 {
        check(q.get_timeout(Duration::from_secs(10)).unwrap(), &mut next);
    }
    other.join().unwrap();
    while let Ok(m) = q.try_get() {
        check(m, &mut next);
    }
    assert!(next[0] >= 2000);
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

fn send_big(mut end: PipeEnd<ByteBuf>) -> usize {
    let got = end.recv().unwrap();
    assert!(got == pattern(64 << 20));
    end.send(&got).unwrap();
    got.len()
}

fn put_big(q: Queue<ByteBuf>) {
    q.put(&ByteBuf::from(pattern(64 << 20))).unwrap();
}

#[test]
fn sixty_four_mib_cross_a_pipe_and_a_queue_intact() {
    let (mut here, there) = Pipe::<ByteBuf>::new().unwrap();
    let p = Process::start(send_big, there).unwrap();
    here.send(&ByteBuf::from(pattern(64 << 20))).unwrap();
    let back = here.recv().unwrap();
    assert!(back == pattern(64 << 20));
    assert_eq!(p.join().unwrap(), 64 << 20);

    let q = Queue::<ByteBuf>::new().unwrap();
    let p = Process::start(put_big, q.clone()).unwrap();
    // The producer can finish before anyone reads: no feeder thread holds it back.
    p.join().unwrap();
    assert!(q.get_timeout(Duration::from_secs(30)).unwrap() == pattern(64 << 20));
}

fn drop_it(end: PipeEnd<u32>) {
    drop(end);
}

fn sleep_with(end: PipeEnd<u32>) {
    let _keep = end;
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_dead_or_dropped_peer_is_a_closed_pipe() {
    for m in StartMethod::ALL {
        let (mut here, there) = Pipe::<u32>::new().unwrap();
        let p = Process::builder()
            .start_method(m)
            .start(drop_it, there)
            .unwrap();
        assert!(matches!(here.recv(), Err(Error::Closed { .. })), "{m}");
        p.join().unwrap();
        assert!(here.send(&1).unwrap_err().is_closed(), "{m}");

        let (mut here, there) = Pipe::<u32>::new().unwrap();
        let mut p = Process::builder()
            .start_method(m)
            .start(sleep_with, there)
            .unwrap();
        assert!(
            here.recv_timeout(Duration::from_millis(20))
                .unwrap_err()
                .is_timeout()
        );
        assert!(here.try_recv().unwrap().is_none());
        p.kill().unwrap();
        assert!(here.recv().unwrap_err().is_closed(), "{m}");
        let _ = p.join_timeout(Duration::from_secs(5));
    }
}

fn forward(mut from: PipeEnd<Queue<u32>>) {
    let q = from.recv().unwrap();
    q.put(&42).unwrap();
}

#[test]
fn handles_travel_through_channels_and_close_is_seen() {
    // A queue handle sent through a pipe.
    let (mut here, there) = Pipe::<Queue<u32>>::new().unwrap();
    let p = Process::start(forward, there).unwrap();
    let q = Queue::<u32>::new().unwrap();
    here.send(&q).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(10)).unwrap(), 42);
    p.join().unwrap();

    // Close: after every handle closed its put side, consumers drain and see Closed.
    q.put(&1).unwrap();
    q.close();
    assert!(q.put(&2).unwrap_err().is_closed());
    assert_eq!(q.get_timeout(Duration::from_secs(30)).unwrap(), 1);
    assert!(q.get().unwrap_err().is_closed());
    assert!(matches!(
        Queue::<u8>::new().unwrap().try_get(),
        Err(Error::Empty { .. })
    ));
}

fn work_off(q: JoinableQueue<u32>) -> u32 {
    let mut sum = 0;
    while let Ok(x) = q.get_timeout(Duration::from_millis(300)) {
        sum += x;
        q.task_done().unwrap();
    }
    sum
}

#[test]
fn joinable_queue_join_waits_for_task_done() {
    let q = JoinableQueue::<u32>::new().unwrap();
    for i in 0..100 {
        q.put(&i).unwrap();
    }
    assert!(!q.join_timeout(Duration::from_millis(10)));
    let ps: Vec<_> = (0..2)
        .map(|_| Process::start(work_off, q.clone()).unwrap())
        .collect();
    assert!(q.join_timeout(Duration::from_secs(20)));
    let total: u32 = ps.into_iter().map(|p| p.join().unwrap()).sum();
    assert_eq!(total, (0..100).sum());
    assert!(matches!(q.task_done(), Err(Error::TaskDoneTooOften)));
}
