//! Talking between processes: a `Pipe` (two typed, duplex ends), a `Queue` (many
//! producers and consumers), how a queue ends (every process that holds it calls
//! `close()`, or exits), and `wait_ready`, which waits on processes and pipes at once.
//!
//! Run it: `cargo run --example channels` (asserts what it prints; ends with `OK`).

use std::time::{Duration, Instant};

use multiproc::{Error, Pipe, PipeEnd, Process, Queue, wait_ready};
use serde::{Deserialize, Serialize};

/// The messages of a small request/answer protocol over one pipe.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Msg {
    Square(u64),
    Squared(u64),
    Bye,
}

/// Serves `Square` requests until `Bye`; returns how many it answered.
fn squarer(mut end: PipeEnd<Msg>) -> u32 {
    let mut answered = 0;
    loop {
        match end.recv() {
            Ok(Msg::Square(x)) => {
                end.send(&Msg::Squared(x * x)).unwrap();
                answered += 1;
            }
            Ok(Msg::Bye) => return answered,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("the parent went away: {e}"),
        }
    }
}

/// Puts `from..from + n` on the queue, then closes its handle (exiting would too).
fn producer((q, from, n): (Queue<u64>, u64, u64)) {
    for i in from..from + n {
        q.put(&i).unwrap();
    }
    q.close();
}

/// Takes items until the queue ends; returns their count and sum. A consumer holds a
/// handle too, which could put: it closes it first, or the queue could never end.
fn consumer(q: Queue<u64>) -> (u64, u64) {
    q.close();
    let (mut count, mut sum) = (0, 0);
    loop {
        match q.get() {
            Ok(x) => {
                count += 1;
                sum += x;
            }
            Err(Error::Closed { .. }) => return (count, sum), // every handle closed, drained
            Err(e) => panic!("queue: {e}"),
        }
    }
}

/// Waits `ms`, then sends one message.
fn later((mut end, ms): (PipeEnd<Msg>, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    end.send(&Msg::Bye).unwrap();
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn main() -> multiproc::Result<()> {
    multiproc::init(); // first line of main

    // Pipe: requests and answers, both ways, typed.
    let (mut here, there) = Pipe::<Msg>::new()?;
    let p = Process::start(squarer, there)?; // that end moves into the child
    for x in 1..=5 {
        here.send(&Msg::Square(x))?;
        assert_eq!(
            here.recv_timeout(Duration::from_secs(10))?,
            Msg::Squared(x * x)
        );
    }
    here.send(&Msg::Bye)?;
    assert_eq!(p.join()?, 5);
    // The child has exited, and with it the other end: recv says so, never hangs.
    let err = here.recv().unwrap_err();
    println!("pipe after the child exited: {err}");
    assert!(matches!(err, Error::Closed { .. }), "{err}");

    // Queue: two producer processes, two consumer processes, 2 x 500 items.
    let q = Queue::<u64>::new()?;
    let producers = [0, 500].map(|from| Process::start(producer, (q.clone(), from, 500)));
    let consumers = [(); 2].map(|()| Process::start(consumer, q.clone()));
    // The parent's handle could put too: close it, or the consumers wait forever.
    q.close();
    assert!(matches!(q.put(&1), Err(Error::Closed { .. }))); // closed for putting here
    for p in producers {
        p?.join()?;
    }
    let (mut count, mut sum) = (0, 0);
    for c in consumers {
        let (n, s) = c?.join()?;
        println!("a consumer took {n} items");
        count += n;
        sum += s;
    }
    assert_eq!((count, sum), (1000, (0..1000).sum()));
    // Every handle everywhere is closed and the queue is drained: get ends at once.
    assert!(matches!(q.get(), Err(Error::Closed { .. })));

    // wait_ready: whichever of several processes and pipes is ready first.
    let slow = Process::start(nap, 60_000)?;
    let (mut here, there) = Pipe::<Msg>::new()?;
    let messenger = Process::start(later, (there, 100))?;
    let nothing_yet = wait_ready(&[&slow, &here], Some(Duration::from_millis(10)))?;
    assert!(nothing_yet.is_empty(), "{nothing_yet:?}"); // timed out: nobody ready
    let started = Instant::now();
    let ready = wait_ready(&[&slow, &here], Some(Duration::from_secs(30)))?;
    println!("ready after {:?}: {ready:?} (the pipe)", started.elapsed());
    assert_eq!(ready, [1]);
    assert_eq!(here.recv()?, Msg::Bye);
    messenger.join()?;
    // The messenger has exited, and its end with it: the pipe is ready again, and
    // recv says it is closed.
    assert_eq!(
        wait_ready(&[&slow, &here], Some(Duration::from_secs(30)))?,
        [1]
    );
    assert!(matches!(here.recv(), Err(Error::Closed { .. })));
    // A process is ready once it has ended (join will not wait).
    slow.kill()?;
    let ready = wait_ready(&[&slow], Some(Duration::from_secs(30)))?;
    println!("after the kill: {ready:?} (the process)");
    assert_eq!(ready, [0]);
    assert!(slow.join().unwrap_err().is_process_death());

    let left = multiproc::active_children();
    assert!(left.is_empty(), "children still running: {left:?}");
    println!("OK");
    Ok(())
}
