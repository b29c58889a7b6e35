//! Nothing is left behind: no descriptor in this process, no segment in /dev/shm.
//! One test in its own binary, so that no other test's descriptors come and go.

use std::time::Duration;

use multiproc::{
    Array, Barrier, Condition, Event, JoinableQueue, Lock, Pipe, PipeEnd, Process, Queue, RLock,
    Semaphore, SharedMemory, SimpleQueue, StartMethod, Value,
};
use serde_bytes::ByteBuf;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn ours_in_dev_shm() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.contains(&format!("leaktest-{}", std::process::id()))
                || n.contains(&format!("multiproc-tmp-{}", std::process::id()))
        })
        .collect()
}

type Kit = (
    PipeEnd<ByteBuf>,
    Queue<ByteBuf>,
    JoinableQueue<u8>,
    SimpleQueue<u8>,
    (Value<u64>, Array<u8>, SharedMemory),
    (Lock, RLock, Semaphore, Event, Condition, Barrier),
);

fn use_everything(kit: Kit) -> SharedMemory {
    let (mut end, q, jq, sq, (v, a, shm), (l, r, s, e, c, b)) = kit;
    let got = end.recv().unwrap();
    end.send(&got).unwrap();
    q.put(&ByteBuf::from(vec![1; 200_000])).unwrap(); // memfd path
    q.put(&ByteBuf::from(vec![2; 10])).unwrap();
    jq.put(&1).unwrap();
    sq.put(&1).unwrap();
    v.fetch_add(1);
    a.lock().unwrap()[0] = 9;
    shm.write_at(0, b"x").unwrap();
    drop(l.lock().unwrap());
    drop(r.lock().unwrap());
    s.release().unwrap();
    e.set();
    c.notify_all().unwrap();
    b.wait().unwrap();
    let named = SharedMemory::open_named(&format!(
        "leaktest-{}",
        multiproc::parent_process().unwrap().pid
    ))
    .unwrap();
    named.write_at(0, b"y").unwrap();
    SharedMemory::new(100).unwrap() // a segment returned to the parent
}

fn round(m: StartMethod) {
    let (mut here, there) = Pipe::<ByteBuf>::new().unwrap();
    let q = Queue::new().unwrap();
    let jq = JoinableQueue::new().unwrap();
    let sq = SimpleQueue::new().unwrap();
    let named =
        SharedMemory::create_named(&format!("leaktest-{}", std::process::id()), 4096).unwrap();
    let kit: Kit = (
        there,
        q.clone(),
        jq.clone(),
        sq.clone(),
        (
            Value::new(0).unwrap(),
            Array::new(10).unwrap(),
            SharedMemory::new(10).unwrap(),
        ),
        (
            Lock::new().unwrap(),
            RLock::new().unwrap(),
            Semaphore::new(0).unwrap(),
            Event::new().unwrap(),
            Condition::new().unwrap(),
            Barrier::new(1).unwrap(),
        ),
    );
    let p = Process::builder()
        .start_method(m)
        .start(use_everything, kit)
        .unwrap();
    here.send(&ByteBuf::from(vec![3; 1 << 20])).unwrap();
    assert_eq!(here.recv().unwrap().len(), 1 << 20);
    let back = p.join().unwrap();
    assert_eq!(back.len(), 100);
    assert_eq!(q.get().unwrap().len(), 200_000);
    assert_eq!(q.get().unwrap().len(), 10);
    assert_eq!(jq.get().unwrap(), 1);
    jq.task_done().unwrap();
    assert!(jq.join_timeout(Duration::from_secs(1)));
    assert_eq!(sq.get().unwrap(), 1);
    let mut b = [0u8];
    named.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"y");
    // A large message left unread in a dropped queue is freed with it.
    q.put(&ByteBuf::from(vec![4; 300_000])).unwrap();
}

#[test]
fn no_descriptor_or_segment_is_left_behind() {
    // Warm up: the fork server and the launcher keep their descriptors for the life of
    // the process; count after they exist.
    for m in StartMethod::ALL {
        round(m);
    }
    let before = open_fds();
    for _ in 0..3 {
        for m in StartMethod::ALL {
            round(m);
        }
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
    assert!(ours_in_dev_shm().is_empty(), "{:?}", ours_in_dev_shm());
}
