//! What a worker's death costs: the running call, hand-backs, retries, timeouts, panics.

use super::*;

#[test]
fn without_call_slots_a_death_mid_chunk_costs_the_unanswered_calls() {
    let mut c = core(0);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(8), true);
    c.submit(job, 0, nums(8));
    c.seal(job);
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, chunk.seq, 0, &[0, 1, 2, 3, 4]);
    let death = Error::Exited { pid: 7, code: 3 };
    assert_eq!(c.on_death(1, 7, death, LastStart::Unknown).lost, 3);
    let got = drain(&mut c, job);
    assert_eq!(got.len(), 8);
    for (i, r) in got {
        match i {
            0..=4 => assert_eq!(r.unwrap(), i as u64 * 10),
            _ => assert_eq!(r.unwrap_err().exit_code(), Some(3)),
        }
    }
    assert!(c.job_over(job));
}

#[test]
fn a_death_mid_chunk_costs_only_the_running_call() {
    let mut c = requeuing(0, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(8), true);
    c.submit(job, 0, nums(8));
    c.seal(job);
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, chunk.seq, 0, &[0, 1, 2, 3, 4]);
    let death = Error::Exited { pid: 7, code: 3 };
    let cost = c.on_death(1, 7, death, running(&chunk, 5));
    assert_eq!(
        cost,
        Cost {
            lost: 1,
            retried: 0,
            handed_back: 2
        }
    );
    c.add_worker(2, SlotState::Working);
    assert_eq!(run_rest(&mut c, 2), [6, 7], "the calls after it run again");
    let got = drain(&mut c, job);
    assert_eq!(got.len(), 8);
    for (i, r) in got {
        match i {
            5 => assert_eq!(r.unwrap_err().exit_code(), Some(3)),
            _ => assert_eq!(r.unwrap(), i as u64 * 10),
        }
    }
    assert!(c.job_over(job));
}

#[test]
fn held_chunks_not_started_go_back_to_the_queue() {
    let mut c = requeuing(0, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(3), true);
    probe(&mut c, 1, job, 100);
    c.submit(job, 0, nums(9));
    c.seal(job);
    let held = fill(&mut c, 1);
    assert_eq!(held.len(), 3, "pipelining: the worker holds every chunk");
    // It died in the first call of its first chunk.
    let death = Error::Killed {
        pid: 7,
        signal: crate::Signal::from_raw(libc::SIGABRT),
        core_dumped: false,
    };
    let cost = c.on_death(1, 7, death, running(&held[0], 0));
    assert_eq!((cost.lost, cost.retried, cost.handed_back), (1, 0, 8));
    c.add_worker(2, SlotState::Working);
    assert_eq!(
        run_rest(&mut c, 2),
        [1, 2, 3, 4, 5, 6, 7, 8],
        "in their order, not counted as retries"
    );
    let got = drain(&mut c, job);
    assert_eq!(got.len(), 10);
    for (i, r) in got {
        match i {
            0 => assert_eq!(r.unwrap_err().signal().map(|s| s.raw()), Some(libc::SIGABRT)),
            _ => assert_eq!(r.unwrap(), i as u64 * 10),
        }
    }
    assert!(c.job_over(job));
}

#[test]
fn calls_finished_but_not_reported_run_again() {
    let mut c = requeuing(0, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(4), true);
    probe(&mut c, 1, job, 100);
    c.submit(job, 0, nums(8));
    c.seal(job);
    let held = fill(&mut c, 1);
    assert_eq!(held.len(), 2);
    answer(&mut c, 1, held[0].seq, 0, &[0]);
    // It ran calls 1..4 of the first chunk and 4 of the second, and died in call 5:
    // none of those answers left it.
    let death = Error::Exited { pid: 7, code: 9 };
    let cost = c.on_death(1, 7, death, running(&held[1], 1));
    assert_eq!((cost.lost, cost.handed_back), (1, 6));
    c.add_worker(2, SlotState::Working);
    assert_eq!(run_rest(&mut c, 2), [1, 2, 3, 4, 6, 7]);
    let got = drain(&mut c, job);
    for (i, r) in got {
        match i {
            5 => assert_eq!(r.unwrap_err().exit_code(), Some(9)),
            _ => assert_eq!(r.unwrap(), i as u64 * 10, "call {i}"),
        }
    }
    assert!(c.job_over(job));
}

#[test]
fn a_death_between_calls_hands_everything_back_a_few_times_then_says_so() {
    let mut c = requeuing(0, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(2), true);
    c.submit(job, 0, nums(4));
    c.seal(job);
    let first = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, first.seq, 0, &[0, 1]);
    let second = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    assert_eq!(args_of(&second), [2, 3]);
    // The slot names call 1 of the first chunk, answered: the worker died after it,
    // before starting the second chunk. Nothing was running: nothing fails.
    let death = || Error::Exited { pid: 7, code: 71 };
    let cost = c.on_death(1, 7, death(), running(&first, 1));
    assert_eq!((cost.lost, cost.handed_back), (0, 2));
    // Workers that die before starting the chunk, again and again (a slot that never
    // named a call): handed back MAX_HANDBACKS times in all, then answered.
    for id in 2..=MAX_HANDBACKS as u64 {
        c.add_worker(id, SlotState::Working);
        let again = c.next_chunk(id, &limits(), Instant::now()).unwrap();
        assert_eq!(args_of(&again), [2, 3]);
        assert_eq!(c.on_death(id, 7, death(), LastStart::Nothing).handed_back, 2);
    }
    let last = MAX_HANDBACKS as u64 + 1;
    c.add_worker(last, SlotState::Working);
    assert!(c.next_chunk(last, &limits(), Instant::now()).is_some());
    assert_eq!(c.on_death(last, 7, death(), LastStart::Nothing).lost, 2);
    let got = drain(&mut c, job);
    for (i, r) in got {
        match (i, r) {
            (0 | 1, r) => assert_eq!(r.unwrap(), i as u64 * 10),
            (
                _,
                Err(
                    ref e @ Error::LostWithWorker {
                        running: None,
                        started: false,
                        ref cause,
                        ..
                    },
                ),
            ) => {
                assert_eq!(cause.exit_code(), Some(71));
                let msg = e.to_string();
                assert!(msg.contains("exited with code 71") && msg.contains("between calls"), "{msg}");
            }
            (_, r) => panic!("call {i}: {r:?}"),
        }
    }
    assert!(c.job_over(job));
}

#[test]
fn a_call_past_its_deadline_times_out_alone() {
    let mut c = requeuing(0, Some(Duration::from_millis(10)));
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(3), true);
    c.submit(job, 0, nums(3));
    c.seal(job);
    let t0 = Instant::now();
    let chunk = c.next_chunk(1, &limits(), t0).unwrap();
    assert_eq!(c.expired(t0 + Duration::from_millis(31)), vec![1]);
    let cost = c.on_death(1, 7, Error::PoolTerminated, running(&chunk, 1));
    assert_eq!((cost.lost, cost.handed_back), (1, 2));
    c.add_worker(2, SlotState::Working);
    assert_eq!(run_rest(&mut c, 2), [0, 2]);
    let got = drain(&mut c, job);
    assert!(got[1].1.as_ref().unwrap_err().is_timeout(), "{:?}", got[1].1);
    assert_eq!(*got[0].1.as_ref().unwrap(), 0);
    assert_eq!(*got[2].1.as_ref().unwrap(), 20);
}

#[test]
fn with_retries_the_running_call_runs_again_alone_and_the_rest_as_before() {
    let mut c = requeuing(1, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(4), true);
    c.submit(job, 0, nums(4));
    c.seal(job);
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    let cost = c.on_death(1, 7, Error::Exited { pid: 7, code: 1 }, running(&chunk, 1));
    assert_eq!((cost.lost, cost.retried, cost.handed_back), (0, 1, 3));
    c.add_worker(2, SlotState::Working);
    // The retry goes alone to an idle worker; the calls handed back travel together.
    let retry = c.next_chunk(2, &limits(), Instant::now()).unwrap();
    assert_eq!(args_of(&retry), [1]);
    assert!(c.next_chunk(2, &limits(), Instant::now()).is_none());
    answer(&mut c, 2, retry.seq, 0, &[1]);
    let rest = c.next_chunk(2, &limits(), Instant::now()).unwrap();
    assert_eq!(args_of(&rest), [0, 2, 3]);
    answer(&mut c, 2, rest.seq, 0, &[0, 2, 3]);
    let got = drain(&mut c, job);
    assert!(got.iter().all(|(i, r)| *r.as_ref().unwrap() == *i as u64 * 10));
}

#[test]
fn a_panic_under_panic_abort_answers_its_call_with_the_panic() {
    let mut c = requeuing(2, None);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(3), true);
    c.submit(job, 0, nums(3));
    c.seal(job);
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    c.on_aborting(
        1,
        Abort {
            seq: chunk.seq,
            index: 2,
            message: "boom".into(),
            location: None,
            backtrace: None,
        },
    );
    let death = Error::Killed {
        pid: 7,
        signal: crate::Signal::from_raw(libc::SIGABRT),
        core_dumped: false,
    };
    // Without the slot's word, the hook's report says which call it was.
    let cost = c.on_death(1, 7, death, LastStart::Unknown);
    assert_eq!((cost.lost, cost.retried, cost.handed_back), (1, 0, 2));
    c.add_worker(2, SlotState::Working);
    assert_eq!(run_rest(&mut c, 2), [0, 1]);
    let got = drain(&mut c, job);
    assert_eq!(got[2].1.as_ref().unwrap_err().panic_message(), Some("boom"));
}

#[test]
fn without_call_slots_with_retries_unanswered_calls_run_again_alone() {
    let mut c = core(1);
    c.add_worker(1, SlotState::Working);
    let job = c.open(ENTRY, ChunkSize::Fixed(4), true);
    c.submit(job, 0, nums(4));
    c.seal(job);
    let chunk = c.next_chunk(1, &limits(), Instant::now()).unwrap();
    answer(&mut c, 1, chunk.seq, 0, &[0]);
    let cost = c.on_death(1, 7, Error::PoolTerminated, LastStart::Unknown);
    assert_eq!((cost.lost, cost.retried), (0, 3));
    c.add_worker(2, SlotState::Working);
    let mut retried = Vec::new();
    while let Some(ch) = c.next_chunk(2, &limits(), Instant::now()) {
        assert_eq!(ch.calls, 1, "a retried call runs alone");
        let Data::Inline(bytes) = &ch.data else {
            panic!("inline")
        };
        let v: u32 = crate::wire::decode_task_value(bytes).unwrap();
        retried.push(v);
        answer(&mut c, 2, ch.seq, 0, &[v as usize]);
    }
    assert_eq!(retried, vec![1, 2, 3]);
    // A second death of a retried call is answered, not retried again.
    let job2 = c.open(ENTRY, ChunkSize::Fixed(1), true);
    c.submit(job2, 0, nums(1));
    c.seal(job2);
    let _ = c.next_chunk(2, &limits(), Instant::now()).unwrap();
    c.on_death(2, 8, Error::Exited { pid: 8, code: 1 }, LastStart::Unknown);
    c.add_worker(3, SlotState::Working);
    let again = c.next_chunk(3, &limits(), Instant::now()).unwrap();
    c.on_death(3, 9, Error::Exited { pid: 9, code: 2 }, LastStart::Unknown);
    let _ = again;
    let got = drain(&mut c, job2);
    assert_eq!(got[0].1.as_ref().unwrap_err().exit_code(), Some(2));
    assert_eq!(drain(&mut c, job).len(), 4);
}
