//! A job from open to its last answer; cancels; a broken pool.

use super::*;

#[test]
fn a_job_lives_from_open_to_its_last_answer() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(4), true);
    c.submit(job, 0, nums(10));
    c.seal(job);
    assert!(!c.job_over(job));
    let mut answered = 0;
    while let Some(chunk) = c.next_chunk(1, &limits(), Instant::now()) {
        let idx: Vec<usize> = (answered..answered + chunk.calls as usize).collect();
        answer(&mut c, 1, chunk.seq, 0, &idx);
        answered += idx.len();
    }
    assert_eq!(answered, 10);
    let got = drain(&mut c, job);
    assert_eq!(got.len(), 10);
    assert!(
        got.iter()
            .all(|(i, r)| *r.as_ref().unwrap() == *i as u64 * 10)
    );
    assert!(c.job_over(job));
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn cancel_while_chunks_run_drops_what_comes_back() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(3), false);
    c.submit(job, 0, nums(9));
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    assert!(c.cancel(job, false).is_empty());
    assert!(c.job_over(job));
    answer(&mut c, 1, chunk.seq, 0, &[0, 1, 2]);
    assert!(c.take_answers(job).is_none());
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn a_broken_pool_answers_pending_and_future_calls() {
    let mut c = core(0);
    let job = c.open(ENTRY, ChunkSize::Auto, true);
    c.submit(job, 0, nums(3));
    c.break_pool(Error::Initializer {
        message: "no".into(),
    });
    c.submit(job, 3, nums(2));
    c.seal(job);
    let got = drain(&mut c, job);
    assert_eq!(got.len(), 5);
    assert!(
        got.iter()
            .all(|(_, r)| matches!(r, Err(Error::Initializer { .. })))
    );
    assert!(c.job_over(job));
}

#[test]
fn cancel_stops_only_workers_that_hold_nothing_else() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    c.add_worker(2, SlotState::Working);
    let a = c.open(ENTRY, ChunkSize::Fixed(1), false);
    let b = c.open(ENTRY, ChunkSize::Fixed(1), false);
    c.submit(a, 0, nums(1));
    c.submit(b, 0, nums(1));
    // Worker 1 runs a's call; worker 2 runs b's.
    c.next_chunk(1, &limits(), Instant::now()).unwrap();
    c.next_chunk(2, &limits(), Instant::now()).unwrap();
    assert!(c.running(a) && c.running(b));
    assert_eq!(c.cancel(a, true), vec![1]);
    assert!(c.job_over(a));
    // The doomed worker gets no more work, and its death costs b nothing.
    c.submit(b, 1, nums(1));
    assert!(c.next_chunk(1, &limits(), Instant::now()).is_none());
    assert_eq!(
        c.on_death(1, 7, Error::PoolTerminated, LastStart::Unknown).lost,
        0
    );
    assert!(c.running(b));
    // Cancelling what is already gone asks nothing of the workers.
    assert!(c.cancel(a, true).is_empty());
}

#[test]
fn a_worker_holding_another_jobs_chunk_is_not_killed_by_a_cancel() {
    let mut c = Core::new(Config {
        workers: 1,
        retries: 0,
        task_timeout: None,
        max_tasks_per_child: None,
        pipeline: true,
        chunk_time: chunking::LOCAL,
    });
    c.add_worker(1, SlotState::Working);
    let a = c.open(ENTRY, ChunkSize::Fixed(1), false);
    c.submit(a, 0, nums(1));
    let probe = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, probe.seq, 0, &[0]);
    // A call time is known now: the worker may hold a chunk of a and one of b.
    let b = c.open(ENTRY, ChunkSize::Fixed(1), false);
    c.submit(a, 1, nums(1));
    c.submit(b, 0, nums(1));
    let of_a = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    let of_b = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    assert!(c.cancel(a, true).is_empty());
    // a's answer is thrown away; b's, queued behind it, still counts.
    answer(&mut c, 1, of_a.seq, 0, &[1]);
    assert!(c.running(b));
    answer(&mut c, 1, of_b.seq, 0, &[0]);
    assert_eq!(drain(&mut c, b).len(), 1);
    assert_eq!(c.outstanding(), 0);
}
