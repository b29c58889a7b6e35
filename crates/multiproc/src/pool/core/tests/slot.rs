//! A worker's states: who is given work, deadlines.

use super::*;

#[test]
fn a_deadline_marks_the_worker_and_its_death_answers_timeout() {
    let mut c = Core::new(Config {
        workers: 1,
        retries: 3,
        task_timeout: Some(Duration::from_millis(10)),
        max_tasks_per_child: None,
        pipeline: true,
        chunk_time: chunking::LOCAL,
    });
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Auto, true);
    c.submit(job, 0, nums(2));
    c.seal(job);
    let t0 = Instant::now();
    let chunk = c.next_chunk(1, &limits(), t0).unwrap();
    assert_eq!(chunk.calls, 1);
    assert!(
        c.next_chunk(1, &limits(), t0).is_none(),
        "no pipelining under a timeout"
    );
    assert_eq!(c.next_deadline(), Some(t0 + Duration::from_millis(10)));
    assert!(c.expired(t0).is_empty());
    assert_eq!(c.expired(t0 + Duration::from_millis(11)), vec![1]);
    c.on_death(1, 5, Error::PoolTerminated, LastStart::Unknown);
    let got = drain(&mut c, job);
    assert!(got[0].1.as_ref().unwrap_err().is_timeout());
}

#[test]
fn only_a_working_worker_is_given_chunks() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Initializing);
    let job = c.open(ENTRY, ChunkSize::Fixed(1), true);
    c.submit(job, 0, nums(4));
    c.seal(job);
    let now = Instant::now();
    assert!(c.next_chunk(1, &limits(), now).is_none(), "initializing");
    c.initialized(1);
    let first = c.next_chunk(1, &limits(), now).unwrap();
    answer(&mut c, 1, first.seq, 0, &[0]);
    c.retire(1);
    assert!(c.next_chunk(1, &limits(), now).is_none(), "retiring");

    // A worker whose chunk timed out is being killed: nothing more goes to it.
    let mut c = requeuing(0, Some(Duration::from_millis(10)));
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(1), true);
    c.submit(job, 0, nums(4));
    let t0 = Instant::now();
    let chunk = c.next_chunk(1, &limits(), t0).unwrap();
    assert_eq!(c.expired(t0 + Duration::from_millis(11)), vec![1]);
    answer(&mut c, 1, chunk.seq, 0, &[0]);
    assert!(c.next_chunk(1, &limits(), t0).is_none(), "timed out");
    assert_eq!(c.next_deadline(), None);
}
