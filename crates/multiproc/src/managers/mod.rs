//! Managers: a process that holds shared objects, and typed proxies through which any
//! process — a child, a pool worker, an unrelated program, another machine — uses them
//! by address (Python's `multiprocessing.managers`).
//!
//! [`Manager::start`] starts a manager process; `manager.dict()`, `manager.list()`,
//! `manager.queue(..)`... create objects in it and return proxies ([`Dict`], [`List`],
//! [`Namespace`], [`Queue`], [`Lock`], ...). A proxy is a serde value: pass it as a task
//! argument, through a [`Queue`](crate::Queue) or a [`Pipe`](crate::Pipe), or store it
//! in another managed object; wherever it lands it reaches the same object. Every call
//! is one message to the manager and one back.
//!
//! Here is the tutorial's bug (children adding to their own copy of a list) "fixed" the
//! way Python programs often fix it, with a list held by a manager:
//!
//! ```
//! use multiproc::managers::{List, Manager};
//! use multiproc::Process;
//!
//! fn work((start, end, results): (u64, u64, List<u64>)) {
//!     results.push((start..end).sum()).unwrap();
//! }
//!
//! fn main() -> multiproc::Result<()> {
//!     multiproc::init();
//!     let manager = Manager::start()?;
//!     let results = manager.list::<u64>()?;
//!     let n = 1_000_000;
//!     let procs = [(0, n / 2), (n / 2, n)]
//!         .into_iter()
//!         .map(|(a, b)| Process::start(work, (a, b, results.clone())))
//!         .collect::<multiproc::Result<Vec<_>>>()?;
//!     for p in procs {
//!         p.join()?;
//!     }
//!     let total: u64 = results.snapshot()?.iter().sum();
//!     assert_eq!(total, n * (n - 1) / 2);
//!     manager.shutdown()?;
//!     Ok(())
//! }
//! ```
//!
//! In multiproc the idiomatic fix needs no manager at all: return the sums
//! (`fn work((start, end): (u64, u64)) -> u64`) and add up what
//! [`Process::join`](crate::Process::join) or [`Pool::map`](crate::Pool::map) hands
//! back. That is faster (no message per item) and cannot lose a result. Managers are for
//! state that must be *shared* while processes run, and for sharing it with processes
//! that multiproc did not start.
//!
//! ## Where the manager runs
//!
//! - [`Manager::start`] (or [`ManagerBuilder::start`]): a child process, started like
//!   any [`Process`] (the builder's start method, or the default). It
//!   listens on a fresh Linux abstract socket (no file to leak) with a fresh random key
//!   unless given an address and a key, and dies with its parent, as every multiproc
//!   child does. [`shutdown`](Manager::shutdown), or dropping the `Manager`, stops it.
//! - [`Manager::serve`]: in this process, blocking until a client calls
//!   [`shutdown`](Manager::shutdown) — for a manager other machines reach by TCP, in a
//!   program of its own. [`ManagerBuilder::start_in_thread`] does the same on a thread
//!   and returns at once.
//! - [`Manager::connect`]: attaches to a running manager by address and key.
//!   [`Manager::root`] is a [`Namespace`] every client sees: store proxies there by
//!   name for unrelated processes to find (Python registers a `get_...` callable for
//!   that).
//!
//! A manager runs code of its build (constructors and methods of custom objects,
//! [`List::sort`]), so it serves only clients of the same build: another build is
//! refused with [`Error::BuildMismatch`] before any request.
//!
//! ## Lifetime
//!
//! An object lives while some proxy refers to it, in any process, and goes when the
//! last one is dropped. Each client process holds its references over its own
//! connections, so a client that dies (even by SIGKILL) drops its references — and the
//! thread that served it — at once. A proxy in flight (serialized, not yet received)
//! holds a reference of its own, released when it is received or when its sender's
//! process ends; a proxy received after its sender exited and every other proxy was
//! dropped finds its object gone (a clear [`Error::Manager`]),
//! as in Python. A proxy stored in another object of the same manager (a
//! `Dict<String, List<u64>>`) is kept alive by that object until the object itself
//! goes (even if the entry is overwritten; a cycle of objects holding each other is
//! never freed before the manager stops).
//!
//! A manager that dies makes every call on its proxies answer
//! [`Error::ManagerGone`] at once, blocked calls included;
//! a manager restarted on the same address serves new proxies, while the old ones keep
//! answering `ManagerGone` (their objects died with the old manager).
//!
//! ## Security
//!
//! The key ([`AuthKey`]) decides who may talk to the manager: both sides prove they
//! hold it in the connection's handshake, and then every message in both directions
//! carries an HMAC-SHA256 tag under a key unique to the connection and a sequence
//! number, so a message that is forged, altered, replayed or reordered is refused,
//! counted ([`Stats::refused`]), logged, and its connection closed. Holding the key means
//! being able to make the manager run any code of its build, as Python's authkey means
//! being able to make it unpickle anything: give it only to whom you would give a shell.
//! The key does not encrypt (anyone on the network path can read the values), and it
//! does not protect against other processes of the same user on the host, which can
//! read it from memory. A proxy carries the key when it is sent to another process (so
//! that the receiver can connect): send proxies only where the key may go.
//!
//! ## Differences from Python
//!
//! - Proxies are typed (`Dict<K, V>`, `List<T>`): values are serde values, encoded
//!   with postcard, not pickled; a custom object's methods are plain functions
//!   `fn(&mut T, A) -> R`, not names looked up at run time.
//! - `Namespace` attributes are read and written by name (`ns.set("x", &1)`,
//!   `ns.get::<u64>("x")`), since Rust has no dynamic attributes.
//! - A proxy's operations return `Result`: a dead manager is an error value, never a
//!   hang or a panic.

mod custom;
mod dict;
mod list;
mod namespace;
mod object;
mod protocol;
mod proxy;
mod server;
mod sync;

pub use custom::{Array, Proxy, Value};
pub use dict::Dict;
pub use list::List;
pub use namespace::Namespace;
pub use protocol::Stats;
pub use sync::{
    Barrier, BoundedSemaphore, Condition, Event, Guard, JoinableQueue, Lock, Queue, RLock,
    Semaphore,
};


/// How long a manager's client waits awake for a reply, and its server for a client's
/// next request, before sleeping: on a machine whose idle CPUs take tens of µs to wake
/// (most VMs), a round trip that would cost a wake-up on each side is taken in a few µs
/// instead; an idle connection costs CPU only for this window after its last message.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::connection::{Address, AuthKey, IntoAddress};
use crate::error::{Error, Result};
use crate::{PipeEnd, Process, StartMethod};
use protocol::{Kind, New, Reply, Request};
use proxy::{Link, ObjRef};

/// The parts every proxy type has alike: `Clone` (a new reference), `Debug`, serde (a
/// transfer, see the module docs), and `id`.
macro_rules! proxy_common {
    ($name:ident < $($g:ident),* >, $kind:ident) => {
        impl<$($g),*> Clone for $name<$($g),*> {
            fn clone(&self) -> Self {
                $name {
                    obj: self.obj.clone(),
                    _t: std::marker::PhantomData,
                }
            }
        }

        impl<$($g),*> std::fmt::Debug for $name<$($g),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.obj)
            }
        }

        impl<$($g),*> serde::Serialize for $name<$($g),*> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                self.obj.serialize(s)
            }
        }

        impl<'de, $($g),*> serde::Deserialize<'de> for $name<$($g),*> {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                Ok($name {
                    obj: super::proxy::ObjRef::deserialize_as(
                        d,
                        super::protocol::Kind::$kind,
                    )?,
                    _t: std::marker::PhantomData,
                })
            }
        }

        impl<$($g),*> $name<$($g),*> {
            /// The object's id in its manager: every proxy of one object has the same.
            pub fn id(&self) -> u64 {
                self.obj.id
            }
        }
    };
}
pub(crate) use proxy_common;

/// How long a started manager has to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `shutdown` waits for a started manager to stop before killing it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

enum Served {
    Child(Box<Process<()>>),
    Thread(std::thread::JoinHandle<Result<()>>),
    Elsewhere,
}

/// A handle on a manager: started here ([`Manager::start`]), or connected to
/// ([`Manager::connect`]). It creates shared objects and returns their proxies.
///
/// Dropping a manager this handle started stops it (as [`shutdown`](Self::shutdown),
/// ignoring errors); its proxies then answer [`Error::ManagerGone`]. Dropping a
/// connected handle leaves the manager running.
pub struct Manager {
    link: Arc<Link>,
    served: Served,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("address", &self.link.address)
            .field("pid", &self.link.server_pid())
            .finish_non_exhaustive()
    }
}

/// How to start or serve a manager: [`Manager::builder`].
#[derive(Debug)]
pub struct ManagerBuilder {
    address: Option<Result<Address>>,
    key: Option<AuthKey>,
    start_method: Option<StartMethod>,
    handshake_timeout: Duration,
}

/// The manager process's task.
fn run_manager(
    (address, key, timeout, mut ready): (
        String,
        ByteBuf,
        Duration,
        PipeEnd<std::result::Result<String, String>>,
    ),
) {
    let bound = AuthKey::new(key.into_vec())
        .and_then(|key| server::Server::bind(address.as_str(), &key, timeout));
    match bound {
        Ok(server) => {
            if ready.send(&Ok(server.address().to_string())).is_err() {
                return; // the parent gave up
            }
            drop(ready);
            let _ = server.serve();
        }
        Err(e) => {
            let _ = ready.send(&Err(e.to_string()));
        }
    }
}

impl ManagerBuilder {
    /// Where to listen: a Unix socket path, a Linux abstract name (`@name`), or TCP
    /// `host:port` (see [`Address`]). Default: a fresh abstract name.
    pub fn address(mut self, address: impl IntoAddress) -> Self {
        self.address = Some(address.into_address());
        self
    }

    /// The key clients must hold. Default: a fresh random one ([`Manager::key`]).
    pub fn key(mut self, key: &AuthKey) -> Self {
        self.key = Some(key.clone());
        self
    }

    /// The start method of the manager process ([`start`](Self::start) only).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// How long a client's handshake may take (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    fn parts(self) -> Result<(Address, AuthKey, Duration)> {
        let address = match self.address {
            Some(a) => a?,
            None => Address::Abstract(Vec::new()),
        };
        let key = match self.key {
            Some(k) => k,
            None => AuthKey::random()?,
        };
        Ok((address, key, self.handshake_timeout))
    }

    /// Starts the manager in a child process, and connects to it.
    pub fn start(self) -> Result<Manager> {
        let method = self.start_method;
        let (address, key, timeout) = self.parts()?;
        server::install_panic_hook();
        let (mut here, there) = crate::Pipe::<std::result::Result<String, String>>::new()?;
        let mut builder = Process::builder().name("multiproc-manager");
        if let Some(m) = method {
            builder = builder.start_method(m);
        }
        let args = (
            address.to_string(),
            ByteBuf::from(key.as_bytes().to_vec()),
            timeout,
            there,
        );
        let mut process = builder.start(run_manager, args)?;
        let bound = match here.recv_timeout(START_TIMEOUT) {
            Ok(Ok(bound)) => bound,
            Ok(Err(detail)) => {
                let _ = process.join_timeout(STOP_TIMEOUT);
                return Err(Error::Manager {
                    address: address.to_string(),
                    detail: format!("the manager process could not start: {detail}"),
                });
            }
            Err(e) => {
                let _ = process.kill();
                return Err(match process.join() {
                    Err(death) => death,
                    Ok(()) => e,
                });
            }
        };
        let link = Link::connect(bound.parse()?, key, timeout)?;
        Ok(Manager {
            link,
            served: Served::Child(Box::new(process)),
        })
    }

    /// Serves in this process, on a thread of its own, and connects to it; the objects
    /// live in this process. [`shutdown`](Manager::shutdown) stops it.
    pub fn start_in_thread(self) -> Result<Manager> {
        let (address, key, timeout) = self.parts()?;
        let server = server::Server::bind(address, &key, timeout)?;
        let bound = server.address().clone();
        let thread = std::thread::Builder::new()
            .name("multiproc-manager".into())
            .spawn(move || server.serve())
            .map_err(|e| Error::io("starting the manager's thread", e))?;
        let link = Link::connect(bound, key, timeout)?;
        Ok(Manager {
            link,
            served: Served::Thread(thread),
        })
    }

    /// Serves in this process until a client calls [`Manager::shutdown`]. An address
    /// and a key are required.
    pub fn serve(self) -> Result<()> {
        if self.address.is_none() || self.key.is_none() {
            return Err(Error::Manager {
                address: String::new(),
                detail: "serve needs an address and a key for clients to reach it by".into(),
            });
        }
        let (address, key, timeout) = self.parts()?;
        server::Server::bind(address, &key, timeout)?.serve()
    }
}

fn identity<T>(t: T) -> T {
    t
}

impl Manager {
    /// Starts a manager process with a fresh abstract address and a fresh random key
    /// (Python's `multiprocessing.Manager()`).
    pub fn start() -> Result<Manager> {
        Manager::builder().start()
    }

    /// A builder, for an address, a key, a start method.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder {
            address: None,
            key: None,
            start_method: None,
            handshake_timeout: crate::connection::DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Serves shared objects at `address` in this process, blocking until a client
    /// calls [`shutdown`](Self::shutdown) (Python's `get_server().serve_forever()`).
    /// Over TCP, clients on other machines connect with the key.
    pub fn serve(address: impl IntoAddress, key: &AuthKey) -> Result<()> {
        Manager::builder().address(address).key(key).serve()
    }

    /// Connects to the manager at `address` (Python's `BaseManager(address,
    /// authkey).connect()`). A wrong key is [`Error::AuthenticationFailed`]; a manager of
    /// another build, [`Error::BuildMismatch`].
    pub fn connect(address: impl IntoAddress, key: &AuthKey) -> Result<Manager> {
        let address = address.into_address()?;
        let link = Link::connect(
            address,
            key.clone(),
            crate::connection::DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        Ok(Manager {
            link,
            served: Served::Elsewhere,
        })
    }

    /// Where the manager listens.
    pub fn address(&self) -> &Address {
        &self.link.address
    }

    /// The manager's key, for other processes to [`connect`](Self::connect) with.
    pub fn key(&self) -> &AuthKey {
        &self.link.key
    }

    /// The manager's process id.
    pub fn pid(&self) -> u32 {
        self.link.server_pid()
    }

    /// Numbers about the manager: objects, clients, connections, threads, and messages
    /// refused.
    pub fn stats(&self) -> Result<Stats> {
        match self.link.call(&Request::Stats)? {
            Reply::Stats(s) => Ok(s),
            r => Err(self.link.unexpected(&r)),
        }
    }

    /// Stops the manager: it closes every connection and exits (a started one is then
    /// joined). Its proxies answer [`Error::ManagerGone`] from then on. On a connected
    /// handle this stops the manager for everyone.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let asked = self.link.call(&Request::Shutdown).map(drop);
        self.link.forget();
        match std::mem::replace(&mut self.served, Served::Elsewhere) {
            Served::Child(mut p) => match p.join_timeout(STOP_TIMEOUT) {
                Ok(()) => Ok(()),
                Err(e) if e.is_timeout() => {
                    let _ = p.kill();
                    p.join()
                }
                Err(e) => Err(e),
            },
            Served::Thread(t) => t.join().unwrap_or_else(|_| {
                Err(Error::Manager {
                    address: self.link.address.to_string(),
                    detail: "the manager's thread panicked".into(),
                })
            }),
            Served::Elsewhere => asked,
        }
    }

    fn make(&self, new: New, kind: Kind) -> Result<ObjRef> {
        match self.link.call(&Request::Create(new))? {
            Reply::Id(id) => Ok(ObjRef {
                link: self.link.clone(),
                id,
                kind,
            }),
            r => Err(self.link.unexpected(&r)),
        }
    }

    /// The manager's root namespace: one for all its clients, living as long as the
    /// manager. Store proxies in it by name for other processes to find:
    /// `manager.root().set("jobs", &queue)`, then, in a process that only knows the
    /// address and key, `Manager::connect(..)?.root().get::<Queue<Job>>("jobs")`.
    pub fn root(&self) -> Namespace {
        Namespace {
            obj: ObjRef {
                link: self.link.clone(),
                id: server::ROOT,
                kind: Kind::Namespace,
            },
            _t: PhantomData,
        }
    }

    /// A new, empty [`Dict`] (Python's `manager.dict()`).
    pub fn dict<K, V>(&self) -> Result<Dict<K, V>> {
        Ok(Dict {
            obj: self.make(New::Dict, Kind::Dict)?,
            _t: PhantomData,
        })
    }

    /// A new, empty [`List`] (Python's `manager.list()`).
    pub fn list<T>(&self) -> Result<List<T>> {
        Ok(List {
            obj: self.make(New::List(Vec::new()), Kind::List)?,
            _t: PhantomData,
        })
    }

    /// A new [`List`] holding `items` (Python's `manager.list(items)`).
    pub fn list_from<T: Serialize>(&self, items: impl IntoIterator<Item = T>) -> Result<List<T>> {
        let items = items
            .into_iter()
            .map(|i| crate::wire::encode(&i).map(ByteBuf::from))
            .collect::<Result<Vec<_>>>()?;
        Ok(List {
            obj: self.make(New::List(items), Kind::List)?,
            _t: PhantomData,
        })
    }

    /// A new, empty [`Namespace`] (Python's `manager.Namespace()`).
    pub fn namespace(&self) -> Result<Namespace> {
        Ok(Namespace {
            obj: self.make(New::Namespace, Kind::Namespace)?,
            _t: PhantomData,
        })
    }

    /// A new [`Queue`] holding at most `maxsize` items (0: no limit), as Python's
    /// `manager.Queue(maxsize)`.
    pub fn queue<T>(&self, maxsize: usize) -> Result<Queue<T>> {
        Ok(Queue {
            obj: self.make(
                New::Queue {
                    maxsize,
                    joinable: false,
                },
                Kind::Queue,
            )?,
            _t: PhantomData,
        })
    }

    /// A new [`JoinableQueue`] (0: no limit).
    pub fn joinable_queue<T>(&self, maxsize: usize) -> Result<JoinableQueue<T>> {
        Ok(JoinableQueue {
            obj: self.make(
                New::Queue {
                    maxsize,
                    joinable: true,
                },
                Kind::JoinableQueue,
            )?,
            _t: PhantomData,
        })
    }

    /// A new [`Lock`].
    pub fn lock(&self) -> Result<Lock> {
        Ok(Lock {
            obj: self.make(New::Lock, Kind::Lock)?,
            _t: PhantomData,
        })
    }

    /// A new [`RLock`].
    pub fn rlock(&self) -> Result<RLock> {
        Ok(RLock {
            obj: self.make(New::RLock, Kind::RLock)?,
            _t: PhantomData,
        })
    }

    /// A new [`Condition`] (with its own re-entrant lock).
    pub fn condition(&self) -> Result<Condition> {
        Ok(Condition {
            obj: self.make(New::Condition, Kind::Condition)?,
            _t: PhantomData,
        })
    }

    /// A new [`Semaphore`] with `value` units.
    pub fn semaphore(&self, value: u32) -> Result<Semaphore> {
        Ok(Semaphore {
            obj: self.make(
                New::Semaphore {
                    value,
                    bounded: false,
                },
                Kind::Semaphore,
            )?,
            _t: PhantomData,
        })
    }

    /// A new [`BoundedSemaphore`] with `value` units, never more.
    pub fn bounded_semaphore(&self, value: u32) -> Result<BoundedSemaphore> {
        Ok(BoundedSemaphore {
            obj: self.make(
                New::Semaphore {
                    value,
                    bounded: true,
                },
                Kind::BoundedSemaphore,
            )?,
            _t: PhantomData,
        })
    }

    /// A new [`Event`], not set.
    pub fn event(&self) -> Result<Event> {
        Ok(Event {
            obj: self.make(New::Event, Kind::Event)?,
            _t: PhantomData,
        })
    }

    /// A new [`Barrier`] for `parties` parties (at least one).
    pub fn barrier(&self, parties: u32) -> Result<Barrier> {
        Ok(Barrier {
            obj: self.make(
                New::Barrier {
                    parties: parties as usize,
                },
                Kind::Barrier,
            )?,
            _t: PhantomData,
        })
    }

    /// A new [`Value`] holding `value` (Python's `manager.Value(typecode, value)`).
    pub fn value<T>(&self, value: T) -> Result<Value<T>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        Ok(Value {
            inner: self.create(identity::<T>, value)?,
        })
    }

    /// A new [`Array`] holding `items` (Python's `manager.Array(typecode, items)`).
    pub fn array<T>(&self, items: Vec<T>) -> Result<Array<T>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        Ok(Array {
            inner: self.create(identity::<Vec<T>>, items)?,
        })
    }

    /// A custom object: runs `constructor(arg)` in the manager and returns a proxy of
    /// the `T` it made, on which [`Proxy::call`] runs methods there. A panic in the
    /// constructor is [`Error::Panicked`], and no object is made.
    ///
    /// ```
    /// use multiproc::managers::Manager;
    ///
    /// struct Counter {
    ///     n: u64,
    /// }
    ///
    /// fn add(c: &mut Counter, by: u64) -> u64 {
    ///     c.n += by;
    ///     c.n
    /// }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let manager = Manager::start()?;
    /// let counter = manager.create(|n| Counter { n }, 10)?;
    /// assert_eq!(counter.call(add, 5)?, 15);
    /// let e = counter.call(|_: &mut Counter, ()| -> u64 { panic!("no") }, ()).unwrap_err();
    /// assert_eq!(e.panic_message(), Some("no"));
    /// assert_eq!(counter.call(add, 1)?, 16); // the manager goes on serving
    /// # manager.shutdown() }
    /// ```
    pub fn create<A, T>(&self, constructor: fn(A) -> T, arg: A) -> Result<Proxy<T>>
    where
        A: Serialize + DeserializeOwned,
        T: Send + 'static,
    {
        Ok(Proxy {
            obj: custom::create(&self.link, constructor, arg)?,
            _t: PhantomData,
        })
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if !matches!(self.served, Served::Elsewhere) {
            let _ = self.stop();
        }
    }
}

#[cfg(test)]
mod tests;
