//! Answers checked against their chunk; sinks.

use super::*;

#[test]
fn answers_that_do_not_fit_are_refused() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(2), true);
    c.submit(job, 0, nums(2));
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    let bad = |c: &mut Core, seq, first, n| {
        c.on_done(
            1,
            7,
            seq,
            first,
            n,
            Vec::new(),
            0,
            Received::Inline(Vec::new(), 0),
            Vec::new(),
        )
    };
    assert!(bad(&mut c, chunk.seq + 1, 0, 1).is_err());
    assert!(bad(&mut c, chunk.seq, 1, 1).is_err());
    assert!(bad(&mut c, chunk.seq, 0, 3).is_err());
    // A malformed value decodes to errors, not a panic.
    c.on_done(
        1,
        7,
        chunk.seq,
        0,
        2,
        Vec::new(),
        0,
        Received::Inline(vec![0xff], 0),
        Vec::new(),
    )
    .unwrap();
    let got = drain(&mut c, job);
    assert!(got.iter().all(|(_, r)| r.is_err()));
}

#[test]
fn a_sunk_job_hands_its_answers_over_and_leaves_when_over() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let sink = Arc::new(Collected::default());
    let job = c.open_sunk(ENTRY, ChunkSize::Fixed(2), sink.clone());
    assert!(!c.caller_driven(job));
    c.submit(job, 0, nums(2));
    c.seal(job);
    assert!(c.take_deliveries().is_empty());
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, chunk.seq, 0, &[0]);
    let due = c.take_deliveries();
    assert_eq!(due.len(), 1);
    due.into_iter().for_each(Delivery::hand_over);
    assert!(!c.job_over(job));
    answer(&mut c, 1, chunk.seq, 1, &[1]);
    c.take_deliveries()
        .into_iter()
        .for_each(Delivery::hand_over);
    assert!(c.job_over(job), "the last answer handed over ends the job");
    let got = std::mem::take(&mut *sink.0.lock().unwrap());
    let values: Vec<(usize, u64)> = got.into_iter().map(|(i, r)| (i, r.unwrap())).collect();
    assert_eq!(values, vec![(0, 0), (1, 10)]);
}

#[test]
fn a_sunk_job_of_a_broken_pool_is_answered_at_submit() {
    let mut c = core(0);
    c.break_pool(Error::PoolTerminated);
    let sink = Arc::new(Collected::default());
    let job = c.open_sunk(ENTRY, ChunkSize::Auto, sink.clone());
    c.submit(job, 0, nums(3));
    c.seal(job);
    c.take_deliveries()
        .into_iter()
        .for_each(Delivery::hand_over);
    assert!(c.job_over(job));
    let got = sink.0.lock().unwrap();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|(_, r)| matches!(r, Err(Error::PoolTerminated)))
    );
}
