//! The objects a manager holds, and the operations on each: plain `Mutex`/`Condvar`
//! state. Values are opaque bytes (their postcard encoding): the manager never needs
//! to know `K`, `V` or `T`, except in methods sent as code of this build (see `server`).

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use super::protocol::{Failure, Kind, New, Op, Reply};

/// Locks, going on past a poisoned lock: a method that panicked may have left its object
/// half updated (documented, as in Python), but the manager keeps serving.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State that blocking operations wait on.
pub(crate) struct Waitable<S> {
    state: Mutex<S>,
    cv: Condvar,
}

impl<S> Waitable<S> {
    fn new(s: S) -> Self {
        Waitable {
            state: Mutex::new(s),
            cv: Condvar::new(),
        }
    }
}

/// How a blocking operation ended.
enum Waited {
    Ready,
    TimedOut,
    /// The client went away, or the manager is shutting down: stop, answer nobody.
    Gone,
}

/// The longest a blocked operation sleeps before it checks whether its client is
/// still there: a client that dies while blocked frees its thread within this.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Waits until `ready` holds, `deadline` passes or `gone` says stop.
fn wait_until<'a, S>(
    w: &'a Waitable<S>,
    mut g: MutexGuard<'a, S>,
    deadline: Option<Instant>,
    gone: &dyn Fn() -> bool,
    mut ready: impl FnMut(&mut S) -> bool,
) -> (MutexGuard<'a, S>, Waited) {
    loop {
        if ready(&mut g) {
            return (g, Waited::Ready);
        }
        let mut slice = CHECK_EVERY;
        if let Some(d) = deadline {
            let now = Instant::now();
            if now >= d {
                return (g, Waited::TimedOut);
            }
            slice = slice.min(d - now);
        }
        let (g2, timed_out) = w.cv.wait_timeout(g, slice).unwrap_or_else(|p| p.into_inner());
        g = g2;
        if timed_out.timed_out() && gone() {
            return (g, Waited::Gone);
        }
    }
}

fn deadline(block: bool, timeout: Option<Duration>) -> Option<Instant> {
    if !block {
        return Some(Instant::now());
    }
    timeout.and_then(|t| Instant::now().checked_add(t))
}

pub(crate) struct QueueState {
    items: VecDeque<Vec<u8>>,
    maxsize: usize,
    unfinished: u64,
    joinable: bool,
}

/// Lock, RLock and Condition (which owns an RLock).
pub(crate) struct LockState {
    kind: Kind,
    owner: Option<u64>,
    count: u32,
    next_ticket: u64,
    waiting: VecDeque<u64>,
    woken: HashSet<u64>,
}

pub(crate) struct SemState {
    value: u32,
    bound: Option<u32>,
}

pub(crate) struct BarrierState {
    parties: usize,
    count: usize,
    generation: u64,
    resets: u64,
    broken: bool,
}

/// One shared object.
pub(crate) enum Object {
    Dict(Mutex<HashMap<Vec<u8>, Vec<u8>>>),
    List(Mutex<Vec<Vec<u8>>>),
    Namespace(Mutex<BTreeMap<String, Vec<u8>>>),
    Custom(Mutex<Box<dyn Any + Send>>),
    Queue(Waitable<QueueState>),
    Lock(Waitable<LockState>),
    Semaphore(Waitable<SemState>),
    Event(Waitable<bool>),
    Barrier(Waitable<BarrierState>),
}

fn bytes(v: Vec<u8>) -> ByteBuf {
    ByteBuf::from(v)
}

impl Object {
    pub(crate) fn new(new: New) -> Result<Object, Failure> {
        Ok(match new {
            New::Dict => Object::Dict(Mutex::default()),
            New::List(items) => {
                Object::List(Mutex::new(items.into_iter().map(ByteBuf::into_vec).collect()))
            }
            New::Namespace => Object::Namespace(Mutex::default()),
            New::Queue { maxsize, joinable } => Object::Queue(Waitable::new(QueueState {
                items: VecDeque::new(),
                maxsize,
                unfinished: 0,
                joinable,
            })),
            New::Lock | New::RLock | New::Condition => {
                let kind = match new {
                    New::Lock => Kind::Lock,
                    New::RLock => Kind::RLock,
                    _ => Kind::Condition,
                };
                Object::Lock(Waitable::new(LockState {
                    kind,
                    owner: None,
                    count: 0,
                    next_ticket: 0,
                    waiting: VecDeque::new(),
                    woken: HashSet::new(),
                }))
            }
            New::Semaphore { value, bounded } => Object::Semaphore(Waitable::new(SemState {
                value,
                bound: bounded.then_some(value),
            })),
            New::Event => Object::Event(Waitable::new(false)),
            New::Barrier { parties } => {
                if parties == 0 {
                    return Err(Failure::Other("a barrier needs at least one party".into()));
                }
                Object::Barrier(Waitable::new(BarrierState {
                    parties,
                    count: 0,
                    generation: 0,
                    resets: 0,
                    broken: false,
                }))
            }
        })
    }

    pub(crate) fn kind(&self) -> Kind {
        match self {
            Object::Dict(_) => Kind::Dict,
            Object::List(_) => Kind::List,
            Object::Namespace(_) => Kind::Namespace,
            Object::Custom(_) => Kind::Custom,
            Object::Queue(q) => {
                if lock(&q.state).joinable {
                    Kind::JoinableQueue
                } else {
                    Kind::Queue
                }
            }
            Object::Lock(l) => lock(&l.state).kind,
            Object::Semaphore(s) => {
                if lock(&s.state).bound.is_some() {
                    Kind::BoundedSemaphore
                } else {
                    Kind::Semaphore
                }
            }
            Object::Event(_) => Kind::Event,
            Object::Barrier(_) => Kind::Barrier,
        }
    }

    /// Runs `op`. `None`: the client went away (or the manager stops) while it waited.
    pub(crate) fn apply(&self, id: u64, op: Op, gone: &dyn Fn() -> bool) -> Option<Reply> {
        let wrong = |op: &Op| {
            Some(Reply::Failed(Failure::WrongKind {
                id,
                is: self.kind(),
                wanted: format!("{op:?}").split(['(', ' ']).next().unwrap_or("").to_owned(),
            }))
        };
        match self {
            Object::Dict(m) => {
                let mut d = lock(m);
                Some(match op {
                    Op::Get(k) => Reply::MaybeBytes(d.get(k.as_slice()).cloned().map(bytes)),
                    Op::Insert(k, v) => {
                        Reply::MaybeBytes(d.insert(k.into_vec(), v.into_vec()).map(bytes))
                    }
                    Op::Remove(k) => Reply::MaybeBytes(d.remove(k.as_slice()).map(bytes)),
                    Op::Contains(k) => Reply::Bool(d.contains_key(k.as_slice())),
                    Op::Len => Reply::Count(d.len() as u64),
                    Op::Keys => Reply::List(d.keys().cloned().map(bytes).collect()),
                    Op::Values => Reply::List(d.values().cloned().map(bytes).collect()),
                    Op::Snapshot => Reply::Pairs(
                        d.iter()
                            .map(|(k, v)| (bytes(k.clone()), bytes(v.clone())))
                            .collect(),
                    ),
                    Op::Update(items) => {
                        d.extend(items.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())));
                        Reply::Unit
                    }
                    Op::Clear => {
                        d.clear();
                        Reply::Unit
                    }
                    Op::GetOrInsert(k, v) => {
                        Reply::Bytes(bytes(d.entry(k.into_vec()).or_insert(v.into_vec()).clone()))
                    }
                    Op::PopItem => {
                        let k = d.keys().next().cloned();
                        Reply::MaybePair(
                            k.and_then(|k| d.remove(&k).map(|v| (bytes(k), bytes(v)))),
                        )
                    }
                    op => return wrong(&op),
                })
            }
            Object::List(m) => {
                let mut l = lock(m);
                let len = l.len() as u64;
                let out_of_range = |index| Reply::Failed(Failure::OutOfRange { index, len });
                Some(match op {
                    Op::Push(v) => {
                        l.push(v.into_vec());
                        Reply::Unit
                    }
                    Op::Pop => Reply::MaybeBytes(l.pop().map(bytes)),
                    Op::At(i) => Reply::MaybeBytes(
                        usize::try_from(i).ok().and_then(|i| l.get(i)).cloned().map(bytes),
                    ),
                    Op::Set(i, v) => match usize::try_from(i).ok().and_then(|i| l.get_mut(i)) {
                        Some(slot) => Reply::Bytes(bytes(std::mem::replace(slot, v.into_vec()))),
                        None => out_of_range(i),
                    },
                    Op::Len => Reply::Count(len),
                    Op::Extend(items) => {
                        l.extend(items.into_iter().map(ByteBuf::into_vec));
                        Reply::Unit
                    }
                    Op::InsertAt(i, v) if i <= len => {
                        l.insert(i as usize, v.into_vec());
                        Reply::Unit
                    }
                    Op::InsertAt(i, _) => out_of_range(i),
                    Op::RemoveAt(i) if i < len => Reply::Bytes(bytes(l.remove(i as usize))),
                    Op::RemoveAt(i) => out_of_range(i),
                    Op::Snapshot => Reply::List(l.iter().cloned().map(bytes).collect()),
                    Op::Clear => {
                        l.clear();
                        Reply::Unit
                    }
                    op => return wrong(&op),
                })
            }
            Object::Namespace(m) => {
                let mut n = lock(m);
                Some(match op {
                    Op::SetAttr(name, v) => {
                        n.insert(name, v.into_vec());
                        Reply::Unit
                    }
                    Op::GetAttr(name) => Reply::MaybeBytes(n.get(&name).cloned().map(bytes)),
                    Op::DelAttr(name) => Reply::MaybeBytes(n.remove(&name).map(bytes)),
                    Op::Names => Reply::Names(n.keys().cloned().collect()),
                    Op::Len => Reply::Count(n.len() as u64),
                    op => return wrong(&op),
                })
            }
            Object::Custom(_) => wrong(&op),
            Object::Queue(w) => queue_op(w, op, gone),
            Object::Lock(w) => lock_op(w, op, gone),
            Object::Semaphore(w) => sem_op(w, op, gone),
            Object::Event(w) => {
                let g = lock(&w.state);
                Some(match op {
                    Op::SetFlag => {
                        let mut g = g;
                        *g = true;
                        w.cv.notify_all();
                        Reply::Unit
                    }
                    Op::ClearFlag => {
                        let mut g = g;
                        *g = false;
                        Reply::Unit
                    }
                    Op::IsSet => Reply::Bool(*g),
                    Op::WaitFlag { timeout } => {
                        let (g, waited) = wait_until(w, g, deadline(true, timeout), gone, |s| *s);
                        match waited {
                            Waited::Gone => return None,
                            _ => Reply::Bool(*g),
                        }
                    }
                    op => {
                        drop(g);
                        return wrong(&op);
                    }
                })
            }
            Object::Barrier(w) => barrier_op(w, op, gone),
        }
    }
}

fn timed_out(timeout: Option<Duration>) -> Reply {
    Reply::Failed(Failure::TimedOut {
        timeout: timeout.unwrap_or_default(),
    })
}

fn queue_op(w: &Waitable<QueueState>, op: Op, gone: &dyn Fn() -> bool) -> Option<Reply> {
    let g = lock(&w.state);
    Some(match op {
        Op::Put {
            item,
            block,
            timeout,
        } => {
            let (mut g, waited) = wait_until(w, g, deadline(block, timeout), gone, |q| {
                q.maxsize == 0 || q.items.len() < q.maxsize
            });
            match waited {
                Waited::Ready => {
                    g.items.push_back(item.into_vec());
                    g.unfinished += 1;
                    w.cv.notify_all();
                    Reply::Unit
                }
                Waited::TimedOut => Reply::Failed(Failure::Full),
                Waited::Gone => return None,
            }
        }
        Op::Take { block, timeout } => {
            let (mut g, waited) =
                wait_until(w, g, deadline(block, timeout), gone, |q| !q.items.is_empty());
            match waited {
                Waited::Ready => {
                    let item = g.items.pop_front().unwrap_or_default();
                    w.cv.notify_all();
                    Reply::Bytes(bytes(item))
                }
                Waited::TimedOut if !block => Reply::Failed(Failure::Empty),
                Waited::TimedOut => timed_out(timeout),
                Waited::Gone => return None,
            }
        }
        Op::Len => Reply::Count(g.items.len() as u64),
        Op::TaskDone => {
            let mut g = g;
            if g.unfinished == 0 {
                Reply::Failed(Failure::TaskDoneTooOften)
            } else {
                g.unfinished -= 1;
                w.cv.notify_all();
                Reply::Unit
            }
        }
        Op::Join { timeout } => {
            let (_g, waited) =
                wait_until(w, g, deadline(true, timeout), gone, |q| q.unfinished == 0);
            match waited {
                Waited::Ready => Reply::Bool(true),
                Waited::TimedOut => Reply::Bool(false),
                Waited::Gone => return None,
            }
        }
        op => {
            return Some(Reply::Failed(Failure::Other(format!(
                "{op:?} is not an operation of a queue"
            ))));
        }
    })
}

fn lock_op(w: &Waitable<LockState>, op: Op, gone: &dyn Fn() -> bool) -> Option<Reply> {
    let mut g = lock(&w.state);
    let kind = g.kind;
    let recursive = kind != Kind::Lock;
    Some(match op {
        Op::Acquire {
            owner,
            block,
            timeout,
        } => {
            if !recursive && g.owner == Some(owner) && block && timeout.is_none() {
                return Some(Reply::Failed(Failure::Other(
                    "this thread already holds the manager's Lock; locking it again would \
                     deadlock (use an RLock to lock recursively)"
                        .into(),
                )));
            }
            let (mut g, waited) = wait_until(w, g, deadline(block, timeout), gone, |s| {
                s.owner.is_none() || (recursive && s.owner == Some(owner))
            });
            match waited {
                Waited::Ready => {
                    g.owner = Some(owner);
                    g.count += 1;
                    Reply::Bool(true)
                }
                Waited::TimedOut => Reply::Bool(false),
                Waited::Gone => return None,
            }
        }
        Op::Release { owner } => {
            // A plain Lock may be released by anyone (as Python's); the recursive kinds
            // only by their owner.
            if g.owner.is_none() || (recursive && g.owner != Some(owner)) {
                Reply::Failed(Failure::NotOwner { what: kind })
            } else {
                g.count -= 1;
                if g.count == 0 {
                    g.owner = None;
                    w.cv.notify_all();
                }
                Reply::Unit
            }
        }
        Op::Wait { owner, timeout } if kind == Kind::Condition => {
            if g.owner != Some(owner) {
                return Some(Reply::Failed(Failure::NotOwner { what: kind }));
            }
            let saved = g.count;
            g.owner = None;
            g.count = 0;
            let ticket = g.next_ticket;
            g.next_ticket += 1;
            g.waiting.push_back(ticket);
            w.cv.notify_all();
            let (mut g, waited) = wait_until(w, g, deadline(true, timeout), gone, |s| {
                s.woken.contains(&ticket)
            });
            let notified = g.woken.remove(&ticket);
            g.waiting.retain(|t| *t != ticket);
            if let Waited::Gone = waited {
                return None;
            }
            // Take the lock back, however long that takes (as Python's wait does).
            let (mut g, waited) = wait_until(w, g, None, gone, |s| s.owner.is_none());
            if let Waited::Gone = waited {
                return None;
            }
            g.owner = Some(owner);
            g.count = saved;
            Reply::Bool(notified)
        }
        Op::Notify { owner, n } if kind == Kind::Condition => {
            if g.owner != Some(owner) {
                return Some(Reply::Failed(Failure::NotOwner { what: kind }));
            }
            for _ in 0..n {
                let Some(t) = g.waiting.pop_front() else {
                    break;
                };
                g.woken.insert(t);
            }
            w.cv.notify_all();
            Reply::Unit
        }
        Op::IsSet => Reply::Bool(g.owner.is_some()),
        op => {
            return Some(Reply::Failed(Failure::Other(format!(
                "{op:?} is not an operation of a {}",
                kind.name()
            ))));
        }
    })
}

fn sem_op(w: &Waitable<SemState>, op: Op, gone: &dyn Fn() -> bool) -> Option<Reply> {
    let mut g = lock(&w.state);
    Some(match op {
        Op::Acquire { block, timeout, .. } => {
            let (mut g, waited) = wait_until(w, g, deadline(block, timeout), gone, |s| s.value > 0);
            match waited {
                Waited::Ready => {
                    g.value -= 1;
                    Reply::Bool(true)
                }
                Waited::TimedOut => Reply::Bool(false),
                Waited::Gone => return None,
            }
        }
        Op::Release { .. } => match g.bound {
            Some(bound) if g.value >= bound => {
                Reply::Failed(Failure::SemaphoreOverflow { bound })
            }
            _ => {
                g.value = g.value.saturating_add(1);
                w.cv.notify_all();
                Reply::Unit
            }
        },
        Op::Len => Reply::Count(g.value as u64),
        op => {
            return Some(Reply::Failed(Failure::Other(format!(
                "{op:?} is not an operation of a semaphore"
            ))));
        }
    })
}

fn barrier_op(w: &Waitable<BarrierState>, op: Op, gone: &dyn Fn() -> bool) -> Option<Reply> {
    let mut g = lock(&w.state);
    Some(match op {
        Op::BarrierWait { timeout } => {
            if g.broken {
                return Some(Reply::Failed(Failure::BrokenBarrier));
            }
            let index = g.count as u64;
            g.count += 1;
            if g.count == g.parties {
                g.count = 0;
                g.generation += 1;
                w.cv.notify_all();
                return Some(Reply::Count(index));
            }
            let (generation, resets) = (g.generation, g.resets);
            let (mut g, waited) = wait_until(w, g, deadline(true, timeout), gone, |s| {
                s.generation != generation || s.broken || s.resets != resets
            });
            match waited {
                Waited::Ready if g.generation != generation && g.resets == resets => {
                    Reply::Count(index)
                }
                Waited::Ready => Reply::Failed(Failure::BrokenBarrier),
                Waited::TimedOut => {
                    // As Python: a party that times out breaks the barrier for all.
                    g.broken = true;
                    g.count = g.count.saturating_sub(1);
                    w.cv.notify_all();
                    Reply::Failed(Failure::BrokenBarrier)
                }
                Waited::Gone => {
                    g.broken = true;
                    w.cv.notify_all();
                    return None;
                }
            }
        }
        Op::Abort => {
            g.broken = true;
            w.cv.notify_all();
            Reply::Unit
        }
        Op::Reset => {
            g.broken = false;
            g.count = 0;
            g.resets += 1;
            w.cv.notify_all();
            Reply::Unit
        }
        Op::Parties => Reply::Count(g.parties as u64),
        Op::Waiting => Reply::Count(g.count as u64),
        Op::Broken => Reply::Bool(g.broken),
        op => {
            return Some(Reply::Failed(Failure::Other(format!(
                "{op:?} is not an operation of a barrier"
            ))));
        }
    })
}
