//! The queue's own tests: sizes around the inline limits, the spill log's order and
//! its repair after a death at every step, malformed records, shutdown races.

use std::time::Duration;

use nix::sys::socket::MsgFlags;

use super::datagram::INLINE_MIN;
use super::spill::write_all_at;
use super::*;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + len) as u8).collect()
}

#[test]
fn every_size_around_the_inline_limits_arrives_intact() {
    let q = Queue::<Vec<u8>>::new().unwrap();
    let limit = q.ends.inline_max;
    assert!((INLINE_MIN..=INLINE_MAX).contains(&limit));
    for len in [
        0,
        1,
        INLINE_MIN - 8,
        INLINE_MIN + 8,
        1 << 20,
        limit - 8,
        limit,
        limit + 8,
        INLINE_MAX + 8,
        3 << 20,
    ] {
        q.put(&pattern(len)).unwrap();
        assert!(q.get().unwrap() == pattern(len), "length {len}");
    }
}

#[test]
fn a_smaller_send_buffer_falls_back_to_a_memfd() {
    let q = Queue::<Vec<u8>>::new().unwrap();
    {
        let tx = q.ends.tx.read().unwrap();
        let tx = tx.as_ref().unwrap();
        nix::sys::socket::setsockopt(tx, nix::sys::socket::sockopt::SndBuf, &(64 << 10))
            .unwrap();
    }
    // The limit was computed for the larger buffer: the kernel refuses the
    // datagram (EMSGSIZE) and the message goes by memfd instead.
    let len = q.ends.inline_max.max(INLINE_MIN + 1024);
    for _ in 0..3 {
        q.put(&pattern(len)).unwrap();
        assert!(q.get().unwrap() == pattern(len));
    }
}

/// Runs `f` in a forked child that dies (`_exit`, holding whatever locks it holds,
/// as a killed process would) when it reaches `point`; whether it got there.
fn dies_at(point: &'static str, f: impl FnOnce()) -> bool {
    use crate::sys::proc::{self, Forked};
    match proc::fork().unwrap() {
        Forked::Child => {
            hook::set(point, || proc::exit_now(0));
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            proc::exit_now(1)
        }
        Forked::Parent(pid) => {
            let fd = proc::pidfd_open(pid).unwrap();
            let status = proc::wait_pidfd(&fd, true).unwrap();
            matches!(status, Some(crate::error::ExitStatus::Code(0)))
        }
    }
}

fn log_is_empty<T>(q: &Queue<T>) -> bool {
    q.ends.word64(at::HEAD).load(Ordering::Acquire)
        >= q.ends.word64(at::TAIL).load(Ordering::Acquire)
}

/// Takes what is there now; then checks that nothing is stuck in the log, that the
/// queue does not look ready when it is empty (a getter would spin), and that it
/// still works.
fn settle(q: &Queue<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match q.try_get() {
            Ok(v) => got.push(v),
            Err(Error::Empty { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(log_is_empty(q), "an item is stuck in the spill log");
    assert!(
        crate::wait_ready(&[q], Some(Duration::from_millis(100)))
            .unwrap()
            .is_empty(),
        "an empty queue looks ready: getters would spin"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    q.put(&u64::MAX).unwrap();
    assert_eq!(q.get_timeout(Duration::from_secs(2)).unwrap(), u64::MAX);
    got
}

#[test]
fn a_producer_killed_anywhere_in_a_spill_leaves_the_queue_consistent() {
    for point in [
        "spill:flagged",
        "spill:armed",
        "spill:written",
        "spill:committed",
    ] {
        let q = Queue::<u64>::new().unwrap();
        let p = q.clone();
        assert!(
            dies_at(point, move || {
                for i in 0.. {
                    p.put(&i).unwrap();
                }
            }),
            "{point}"
        );
        let got = settle(&q);
        assert!(!got.is_empty() && got[0] == 0, "{point}");
    }
}

#[test]
fn a_consumer_killed_anywhere_in_an_unspill_leaves_the_queue_consistent() {
    for point in [
        "unspill:advanced",
        "unspill:reset",
        "unspill:disarmed",
    ] {
        let q = Queue::<u64>::new().unwrap();
        let mut n = 0;
        while !q.ends.spilled() {
            q.put(&n).unwrap();
            n += 1;
        }
        for _ in 0..2 {
            q.put(&n).unwrap();
            n += 1;
        }
        let c = q.clone();
        assert!(
            dies_at(point, move || {
                loop {
                    c.get().unwrap();
                }
            }),
            "{point}"
        );
        let got = settle(&q);
        assert!(got.last().is_none_or(|l| *l == n - 1), "{point}");
    }
}

#[test]
fn a_consumer_that_found_the_socket_empty_still_takes_older_socket_items_first() {
    let q = Queue::<u64>::new().unwrap();
    let p = q.clone();
    // Between the consumer's look at the (empty) socket and its look at the spill
    // log, a producer fills the socket and spills its next item.
    hook::set("get:socket-empty", move || {
        let mut i = 0;
        while !p.ends.spilled() {
            p.put(&i).unwrap();
            i += 1;
        }
    });
    assert_eq!(q.try_get().unwrap(), 0);
    let mut next = 1;
    while let Ok(v) = q.try_get() {
        assert_eq!(v, next);
        next += 1;
    }
    assert!(q.is_empty() && q.qsize() == 0);
}

#[test]
fn shutdown_between_a_producer_s_look_and_its_wait_still_wakes_it() {
    let q = Queue::<u32>::with_maxsize(1).unwrap();
    q.put(&1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn({
        let q = q.clone();
        move || {
            let s = q.clone();
            hook::set("reserve:full", move || s.shutdown(false));
            tx.send(q.put(&2)).unwrap();
        }
    });
    let got = rx.recv_timeout(Duration::from_secs(3));
    if got.is_err() {
        // Let the stuck producer go before failing.
        let _ = q.get();
    }
    t.join().unwrap();
    assert!(matches!(got, Ok(Err(Error::ShutDown { .. }))), "{got:?}");
}

#[test]
fn an_empty_datagram_is_not_the_end_of_the_stream() {
    let q = Queue::<u32>::new().unwrap();
    {
        let tx = q.ends.tx.read().unwrap();
        let tx = tx.as_ref().unwrap();
        nix::sys::socket::send(tx.as_raw_fd(), &[], MsgFlags::MSG_DONTWAIT).unwrap();
    }
    assert!(matches!(q.try_get(), Err(Error::Empty { .. })));
    q.put(&5).unwrap();
    assert_eq!(q.try_get().unwrap(), 5);
    assert_eq!(q.qsize(), 0);
}

/// Fills the socket, then spills `[first, second, third]`.
fn spill_three(q: &Queue<u64>) -> u64 {
    let mut n = 0;
    while !q.ends.spilled() {
        q.put(&n).unwrap();
        n += 1;
    }
    // `n - 1` is the first spilled item.
    q.put(&n).unwrap();
    q.put(&(n + 1)).unwrap();
    n - 1
}

fn drain_socket(q: &Queue<u64>, upto: u64) {
    for i in 0..upto {
        assert_eq!(q.try_get().unwrap(), i);
    }
}

#[test]
fn a_log_shorter_than_a_record_header_is_refused_without_panic() {
    let q = Queue::<u64>::new().unwrap();
    let first = spill_three(&q);
    drain_socket(&q, first);
    // A peer leaves three bytes after the last record: no room for a header.
    let tail = q.ends.word64(at::TAIL);
    let end = tail.load(Ordering::Acquire);
    write_all_at(&q.ends.log, &[1, 2, 3], end).unwrap();
    tail.store(end + 3, Ordering::Release);
    for i in first..first + 3 {
        assert_eq!(q.try_get().unwrap(), i);
    }
    assert!(q.try_get().is_err());
    assert!(matches!(q.try_get(), Err(Error::Empty { .. })));
    assert!(log_is_empty(&q));
}

#[test]
fn a_record_longer_than_the_log_is_skipped_and_released() {
    let q = Queue::<u64>::new().unwrap();
    let first = spill_three(&q);
    drain_socket(&q, first);
    assert_eq!(q.try_get().unwrap(), first);
    // The second record claims more bytes than the log holds.
    let head = q.ends.word64(at::HEAD).load(Ordering::Acquire);
    write_all_at(&q.ends.log, &u32::MAX.to_le_bytes(), head).unwrap();
    let before = q.qsize();
    assert!(q.try_get().is_err());
    // Where the next record starts is unknowable: the rest goes, counted once.
    assert_eq!(q.qsize(), before - 1);
    assert!(matches!(q.try_get(), Err(Error::Empty { .. })));
    assert!(log_is_empty(&q));
    q.put(&7).unwrap();
    assert_eq!(q.try_get().unwrap(), 7);
}

#[test]
fn a_truncated_log_is_skipped_not_wedged() {
    let q = Queue::<u64>::new().unwrap();
    let first = spill_three(&q);
    drain_socket(&q, first);
    // A peer truncates the log under the queue.
    nix::unistd::ftruncate(&q.ends.log, 0).unwrap();
    assert!(q.try_get().is_err());
    assert!(matches!(q.try_get(), Err(Error::Empty { .. })));
    assert!(log_is_empty(&q));
    q.put(&7).unwrap();
    assert_eq!(q.try_get().unwrap(), 7);
}
