//! Bounded and unbounded queues, `is_empty`, `qsize`/`full`, and `shutdown`, with real
//! processes (issue 17, items 1-3).

use std::time::{Duration, Instant};

use multiproc::{Error, JoinableQueue, Process, Queue, SimpleQueue, Value};

const MANY: u64 = 100_000;

fn put_many(q: Queue<u64>) {
    for i in 0..MANY {
        q.put(&i).unwrap();
    }
}

#[test]
fn an_unbounded_queue_takes_100_000_items_nobody_reads_from_a_child_that_exits() {
    let q = Queue::<u64>::new().unwrap();
    assert_eq!(q.maxsize(), 0);
    // The child puts everything and exits before anyone reads: no put waits, and no
    // feeder thread keeps the child (or join) waiting.
    let t = Instant::now();
    Process::start(put_many, q.clone()).unwrap().join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(q.qsize(), MANY as usize);
    assert!(!q.full());
    assert!(!q.is_empty());
    for i in 0..MANY {
        assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), i);
    }
    assert!(q.is_empty());
    assert_eq!(q.qsize(), 0);
    assert!(matches!(q.try_get(), Err(Error::Empty { .. })));
}

fn put_tagged((q, tag, n): (Queue<(u8, u32)>, u8, u32)) {
    for i in 0..n {
        q.put(&(tag, i)).unwrap();
    }
}

fn drain_tagged((q, n): (Queue<(u8, u32)>, usize)) -> Vec<(u8, u32)> {
    (0..n).map(|_| q.get().unwrap()).collect()
}

#[test]
fn each_producer_s_items_arrive_in_order_through_the_spill() {
    // Three producers overflow the socket while two consumers read: every item arrives
    // once, and each consumer sees each producer's items in increasing order.
    const N: u32 = 30_000;
    let q = Queue::<(u8, u32)>::new().unwrap();
    let producers: Vec<_> = (0..3u8)
        .map(|tag| Process::start(put_tagged, (q.clone(), tag, N)).unwrap())
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| Process::start(drain_tagged, (q.clone(), (3 * N / 2) as usize)).unwrap())
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let mut seen = vec![vec![false; N as usize]; 3];
    for c in consumers {
        let got = c.join().unwrap();
        let mut last = [None::<u32>; 3];
        for (tag, i) in got {
            let t = tag as usize;
            assert!(last[t].is_none_or(|l| l < i), "producer {tag} out of order");
            last[t] = Some(i);
            assert!(!seen[t][i as usize], "({tag}, {i}) twice");
            seen[t][i as usize] = true;
        }
    }
    assert!(seen.iter().flatten().all(|s| *s));
    assert!(q.is_empty());
}

fn take_after((q, ms): (Queue<u32>, u64)) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    q.get().unwrap()
}

#[test]
fn a_bounded_queue_blocks_put_and_answers_full() {
    let q = Queue::<u32>::with_maxsize(2).unwrap();
    assert_eq!(q.maxsize(), 2);
    q.put(&1).unwrap();
    assert!(!q.full());
    q.try_put(&2).unwrap();
    assert!(q.full());
    assert_eq!(q.qsize(), 2);
    assert!(matches!(q.try_put(&3), Err(Error::Full { .. })));
    let t = Instant::now();
    assert!(matches!(
        q.put_timeout(&3, Duration::from_millis(200)),
        Err(Error::Full { .. })
    ));
    assert!(t.elapsed() >= Duration::from_millis(190));
    // A child takes one item after 300 ms: the parent's put waits for it.
    let p = Process::start(take_after, (q.clone(), 300)).unwrap();
    let t = Instant::now();
    q.put(&3).unwrap();
    let waited = t.elapsed();
    assert_eq!(p.join().unwrap(), 1);
    assert!(
        waited >= Duration::from_millis(200),
        "put returned after {waited:?}"
    );
    assert_eq!(q.get().unwrap(), 2);
    assert_eq!(q.get().unwrap(), 3);
    assert_eq!(q.qsize(), 0);
}

#[test]
fn a_bounded_joinable_queue_blocks_too() {
    let q = JoinableQueue::<u32>::with_maxsize(1).unwrap();
    assert!(q.is_empty());
    q.put(&1).unwrap();
    assert!(q.full() && !q.is_empty() && q.qsize() == 1);
    assert!(matches!(q.try_put(&2), Err(Error::Full { .. })));
    // The failed put is not counted as unfinished.
    assert_eq!(q.get().unwrap(), 1);
    q.task_done().unwrap();
    assert!(q.join_timeout(Duration::from_secs(1)));
}

#[test]
fn a_closed_unused_queue_is_empty() {
    let q = Queue::<u8>::new().unwrap();
    q.close();
    assert!(q.is_empty());
    assert!(matches!(q.try_get(), Err(Error::Closed { .. })));
    let j = JoinableQueue::<u8>::new().unwrap();
    j.close();
    assert!(j.is_empty());
    let s = SimpleQueue::<u8>::new().unwrap();
    s.close();
    assert!(s.is_empty());
    assert_eq!(s.qsize(), 0);
}

fn get_result(q: Queue<u32>) -> Result<u32, String> {
    q.get().map_err(|e| e.to_string())
}

#[test]
fn shutdown_drains_then_says_so() {
    let q = Queue::<u32>::new().unwrap();
    q.put(&1).unwrap();
    q.put(&2).unwrap();
    q.shutdown(false);
    assert!(q.is_shut_down());
    assert!(matches!(q.put(&3), Err(Error::ShutDown { .. })));
    assert_eq!(q.get().unwrap(), 1);
    assert_eq!(q.get().unwrap(), 2);
    assert!(matches!(q.get(), Err(Error::ShutDown { .. })));
    assert!(matches!(q.try_get(), Err(Error::ShutDown { .. })));
    assert!(q.is_empty());
}

#[test]
fn shutdown_wakes_a_blocked_getter_in_another_process() {
    for immediate in [false, true] {
        let q = Queue::<u32>::new().unwrap();
        let p = Process::start(get_result, q.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        q.shutdown(immediate);
        let got = p.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(got.unwrap_err().contains("shut down"));
    }
}

#[test]
fn immediate_shutdown_stops_getters_at_once_and_discards() {
    let q = JoinableQueue::<u32>::new().unwrap();
    for i in 0..5 {
        q.put(&i).unwrap();
    }
    q.shutdown(true);
    assert!(matches!(q.get(), Err(Error::ShutDown { .. })));
    assert!(matches!(q.put(&9), Err(Error::ShutDown { .. })));
    // The discarded items count as done: join does not wait for them.
    assert!(q.join_timeout(Duration::from_secs(1)));
    assert_eq!(q.qsize(), 0);
}

fn put_result(q: Queue<u32>) -> String {
    q.put(&2).unwrap_err().to_string()
}

#[test]
fn shutdown_wakes_a_producer_waiting_for_room() {
    let q = Queue::<u32>::with_maxsize(1).unwrap();
    q.put(&1).unwrap();
    let p = Process::start(put_result, q.clone()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    q.shutdown(false);
    assert!(p.join().unwrap().contains("shut down"));
    assert_eq!(q.get().unwrap(), 1);
}

#[test]
fn wait_ready_sees_items_that_are_only_in_the_spill() {
    let q = Queue::<u64>::new().unwrap();
    Process::start(put_many, q.clone()).unwrap().join().unwrap();
    // Take items until the socket is certainly empty and only spilled ones are left.
    for i in 0..MANY - 10 {
        assert_eq!(q.get().unwrap(), i);
    }
    let ready = multiproc::wait_ready(&[&q], Some(Duration::from_secs(1))).unwrap();
    assert_eq!(ready, [0]);
    for i in MANY - 10..MANY {
        assert_eq!(q.try_get().unwrap(), i);
    }
    let ready = multiproc::wait_ready(&[&q], Some(Duration::from_millis(50))).unwrap();
    assert!(ready.is_empty());
}

#[test]
fn items_with_descriptors_still_travel_when_the_queue_spills() {
    let q = Queue::<(u64, Option<Value<u32>>)>::new().unwrap();
    for i in 0..20_000u64 {
        q.put(&(i, None)).unwrap();
    }
    let v = Value::new(7u32).unwrap();
    // This item cannot be spilled and the log is not empty: it waits for room.
    let t = std::thread::spawn({
        let q = q.clone();
        move || {
            q.put_timeout(&(20_000, Some(v)), Duration::from_secs(20))
                .unwrap()
        }
    });
    for i in 0..20_000u64 {
        assert_eq!(q.get().unwrap().0, i);
    }
    t.join().unwrap();
    let (i, v) = q.get().unwrap();
    assert_eq!(i, 20_000);
    assert_eq!(v.unwrap().get().unwrap(), 7);
    // try_put of a descriptor item into a spilling queue answers Full.
    for i in 0..20_000u64 {
        q.put(&(i, None)).unwrap();
    }
    let w = Value::new(1u32).unwrap();
    assert!(matches!(q.try_put(&(0, Some(w))), Err(Error::Full { .. })));
}

#[test]
fn close_does_not_wait_for_a_put_waiting_for_room() {
    let q = Queue::<u32>::with_maxsize(1).unwrap();
    q.put(&1).unwrap();
    let waiting = std::thread::spawn({
        let q = q.clone();
        move || q.put(&2)
    });
    std::thread::sleep(Duration::from_millis(100));
    let (tx, rx) = std::sync::mpsc::channel();
    let closer = std::thread::spawn({
        let q = q.clone();
        move || {
            q.close();
            tx.send(()).unwrap();
        }
    });
    let closed = rx.recv_timeout(Duration::from_secs(3)).is_ok();
    // Make room either way, so that nothing stays blocked.
    assert_eq!(q.get().unwrap(), 1);
    closer.join().unwrap();
    assert!(closed, "close waited for a blocked put");
    // The put that was waiting went through; new ones find the queue closed.
    waiting.join().unwrap().unwrap();
    assert!(matches!(q.try_put(&3), Err(Error::Closed { .. })));
    assert_eq!(q.get().unwrap(), 2);
}

fn take_with_a_small_limit((q, fillers): (Queue<Vec<u8>>, usize)) -> Vec<String> {
    multiproc::set_max_frame_size(1 << 20);
    for _ in 0..fillers {
        q.get().unwrap();
    }
    (0..3)
        .map(|_| match q.get_timeout(Duration::from_secs(2)) {
            Ok(v) => format!("{} bytes", v.len()),
            Err(Error::FrameTooLarge { .. }) => "too large".into(),
            Err(e) => e.to_string(),
        })
        .collect()
}

#[test]
fn a_spilled_item_over_a_consumer_s_frame_limit_costs_only_that_item() {
    // Enough small items to fill the socket: what follows is spilled.
    const FILLERS: usize = 20_000;
    let q = Queue::<Vec<u8>>::new().unwrap();
    for _ in 0..FILLERS {
        q.put(&Vec::new()).unwrap();
    }
    q.put(&vec![1; 10]).unwrap();
    q.put(&vec![2; 2 << 20]).unwrap();
    q.put(&vec![3; 20]).unwrap();
    let got = Process::start(take_with_a_small_limit, (q.clone(), FILLERS))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(got, ["10 bytes", "too large", "20 bytes"]);
    assert_eq!(q.qsize(), 0);
    assert!(q.is_empty());
}
