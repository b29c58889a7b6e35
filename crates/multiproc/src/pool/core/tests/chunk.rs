//! How the next chunk is sized and built.

use super::*;

#[test]
fn a_probe_chunk_first_then_chunks_sized_by_time() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Auto, false);
    c.submit(job, 0, nums(100_000));
    c.seal(job);
    let probe = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    assert_eq!(probe.calls, 1);
    // Call time unknown: no second chunk before the probe answers.
    assert!(c.next_chunk(1, &limits(), Instant::now()).is_none());
    answer(&mut c, 1, probe.seq, 0, &[0]);
    let next = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    // 1 µs calls (and 10 ns to move each): the fair share (99,999 / 8) bounded by
    // 5 ms worth.
    assert_eq!(next.calls, 4950);
    assert!(c.needs_background());
}

#[test]
fn a_worker_holding_a_probe_takes_its_share_once_another_answered() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    c.add_worker(2, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Auto, false);
    c.submit(job, 0, nums(100_000));
    c.seal(job);
    let probe1 = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    let probe2 = c.next_chunk(2, &limits(), Instant::now()).unwrap();
    assert_eq!((probe1.calls, probe2.calls), (1, 1));
    assert!(c.next_chunk(2, &limits(), Instant::now()).is_none());
    // Worker 1's probe answers: the call time is known, and worker 2, still holding
    // its probe, is given work too (estimated with that call time), not left idle
    // while worker 1 takes everything.
    answer(&mut c, 1, probe1.seq, 0, &[0]);
    let one = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    let two = c.next_chunk(2, &limits(), Instant::now()).unwrap();
    assert!(one.calls > 1 && two.calls > 1);
}

#[test]
fn an_argument_over_the_limit_fails_alone_and_a_full_chunk_ends_early() {
    let sizes = [100usize, 2000, 600, 600];
    let blobs = sizes
        .iter()
        .map(|&n| serde_bytes::ByteBuf::from(vec![1u8; n]));
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(10), true);
    c.submit(job, 0, Box::new(Items::new(blobs.collect())));
    c.seal(job);
    let small = Limits {
        max_value: 1024,
        ..limits()
    };
    // Call 1 does not fit beside call 0: the chunk ends before it.
    let first = c.next_chunk(1, &small, Instant::now()).unwrap();
    assert_eq!(first.calls, 1);
    answer(&mut c, 1, first.seq, 0, &[0]);
    // Alone it is still over the limit: answered, for that call only; call 3 does not
    // fit beside call 2.
    let second = c.next_chunk(1, &small, Instant::now()).unwrap();
    assert_eq!(second.calls, 1);
    let got = drain(&mut c, job);
    assert!(
        matches!(got[1], (1, Err(Error::FrameTooLarge { .. }))),
        "{:?}",
        got[1].1
    );
    answer(&mut c, 1, second.seq, 0, &[2]);
    let third = c.next_chunk(1, &small, Instant::now()).unwrap();
    assert_eq!(third.calls, 1);
}
