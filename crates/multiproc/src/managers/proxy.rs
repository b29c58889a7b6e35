//! The client side every proxy shares: one [`Link`] per process and manager (a pool of
//! signed connections, one per thread that calls at the same time), and [`ObjRef`], a
//! counted reference to one object.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use super::object::lock;
use super::protocol::{
    Failure, Hello, Kind, Op, Reply, Request, Seal, SessionId, TAG_LEN, VERSION, Welcome,
};
use crate::connection::{Address, AuthKey, Connection};
use crate::error::{Error, Result};

/// One signed connection to a manager.
struct Chan {
    conn: Connection<(), ()>,
    seal: Seal,
    buf: Vec<u8>,
}

/// This process's link to one manager (one incarnation of it).
pub(crate) struct Link {
    pub(crate) address: Address,
    pub(crate) key: AuthKey,
    session: SessionId,
    /// The process that made it: a link copied into a forked child is not used there.
    pid: u32,
    server_pid: AtomicU32,
    /// A random number the manager drew when it started: a restarted manager on the
    /// same address has another, so a proxy of the old one fails instead of naming a
    /// new object that happens to have its id.
    incarnation: AtomicU64,
    idle: Mutex<Vec<Chan>>,
    timeout: Duration,
}

/// Links of this process, reused by proxies received from other processes. Kept
/// (strongly) until the process exits, so that a proxy sent on by a process that
/// dropped its own keeps its object alive until the receiver claims it.
static LINKS: Mutex<Vec<Arc<Link>>> = Mutex::new(Vec::new());

impl Link {
    /// A new link (a new client session) to the manager at `address`, connected once to
    /// check the key and the build.
    pub(crate) fn connect(address: Address, key: AuthKey, timeout: Duration) -> Result<Arc<Link>> {
        let mut session = [0u8; 16];
        getrandom::getrandom(&mut session).map_err(|e| {
            Error::io("drawing random bytes from the OS", std::io::Error::other(e.to_string()))
        })?;
        let link = Arc::new(Link {
            address,
            key,
            session,
            pid: std::process::id(),
            server_pid: AtomicU32::new(0),
            incarnation: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            timeout,
        });
        let chan = link.open()?;
        lock(&link.idle).push(chan);
        let mut links = lock(&LINKS);
        let pid = std::process::id();
        links.retain(|l| l.pid == pid);
        links.push(link.clone());
        Ok(link)
    }

    /// This process's link to that manager incarnation, made if there is none.
    fn find(address: Address, key: AuthKey, incarnation: u64) -> Result<Arc<Link>> {
        let pid = std::process::id();
        let found = lock(&LINKS)
            .iter()
            .rev()
            .find(|l| {
                l.pid == pid
                    && l.address == address
                    && l.key == key
                    && l.incarnation.load(Ordering::Relaxed) == incarnation
            })
            .cloned();
        match found {
            Some(l) => Ok(l),
            None => Link::connect(address, key, crate::connection::DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }

    /// The manager is gone (or shut down): close the idle connections, and let no
    /// proxy received from now on use this link.
    pub(crate) fn forget(&self) {
        lock(&LINKS).retain(|l| !std::ptr::eq(Arc::as_ptr(l), self));
        lock(&self.idle).clear();
    }

    pub(crate) fn server_pid(&self) -> u32 {
        self.server_pid.load(Ordering::Relaxed)
    }

    fn gone(&self, e: Error) -> Error {
        match e {
            Error::Closed { .. } | Error::Io { .. } => Error::ManagerGone {
                address: self.address.to_string(),
                detail: "its connection closed".into(),
            },
            Error::Connection { detail, .. } => Error::ManagerGone {
                address: self.address.to_string(),
                detail,
            },
            e => e,
        }
    }

    pub(crate) fn error(&self, detail: impl Into<String>) -> Error {
        Error::Manager {
            address: self.address.to_string(),
            detail: detail.into(),
        }
    }

    fn open(&self) -> Result<Chan> {
        let conn: Connection<(), ()> = crate::connection::Client::builder(&self.address)
            .key(&self.key)
            .timeout(self.timeout)
            .connect()
            .map_err(|e| self.gone(e))?;
        let key = conn
            .session_key()
            .copied()
            .ok_or_else(|| self.error("the connection has no session key"))?;
        let mut chan = Chan {
            conn,
            seal: Seal::client(&key),
            buf: Vec::new(),
        };
        let hello = Hello {
            version: VERSION,
            build: ByteBuf::from(crate::sys::build_id::build_id().to_vec()),
            session: self.session,
        };
        match chan.exchange::<_, Welcome>(self, &hello)? {
            Welcome::Ok { pid, incarnation } => {
                let known = self.incarnation.load(Ordering::Relaxed);
                if known == 0 {
                    self.incarnation.store(incarnation, Ordering::Relaxed);
                    self.server_pid.store(pid, Ordering::Relaxed);
                } else if known != incarnation {
                    return Err(Error::ManagerGone {
                        address: self.address.to_string(),
                        detail: "a new manager serves there now; this proxy's manager was \
                                 restarted and its objects are gone"
                            .into(),
                    });
                }
                Ok(chan)
            }
            Welcome::OtherBuild { pid, build } => Err(Error::BuildMismatch {
                pid,
                parent: crate::sys::build_id::hex(crate::sys::build_id::build_id()),
                child: crate::sys::build_id::hex(&build),
            }),
            Welcome::OtherVersion { version, .. } => Err(self.error(format!(
                "the manager speaks protocol version {version}, this build speaks {VERSION}"
            ))),
        }
    }

    /// One request, one reply; a failure in the manager comes back as an `Error`.
    pub(crate) fn call(&self, req: &Request) -> Result<Reply> {
        if self.pid != std::process::id() {
            return Err(self.error(
                "this proxy was copied into a forked process; pass proxies to other processes \
                 as values (task arguments, queues, pipes) instead",
            ));
        }
        let popped = lock(&self.idle).pop();
        let exchanged = match popped {
            Some(c) => Ok(c),
            None => self.open(),
        }
        .and_then(|mut chan| Ok((chan.exchange::<_, Reply>(self, req)?, chan)));
        let (reply, chan) = match exchanged {
            Ok(x) => x,
            Err(e) => {
                if matches!(e, Error::ManagerGone { .. }) {
                    self.forget();
                }
                return Err(e);
            }
        };
        lock(&self.idle).push(chan);
        match reply {
            Reply::Failed(f) => Err(self.failure(f)),
            r => Ok(r),
        }
    }

    fn failure(&self, f: Failure) -> Error {
        match f {
            Failure::Panicked { message, location } => Error::Panicked {
                pid: self.server_pid(),
                message,
                location,
                backtrace: None,
            },
            Failure::Empty => Error::Empty {
                what: "manager queue",
            },
            Failure::Full => Error::Full {
                what: "manager queue",
            },
            Failure::TimedOut { timeout } => Error::Timeout {
                what: format!("an object of the manager at {}", self.address),
                timeout,
            },
            Failure::SemaphoreOverflow { bound } => Error::SemaphoreOverflow { bound },
            Failure::BrokenBarrier => Error::BrokenBarrier,
            Failure::TaskDoneTooOften => Error::TaskDoneTooOften,
            Failure::Decode { type_name, reason } => Error::Decode {
                type_name,
                reason: format!("in the manager: {reason}"),
            },
            Failure::Encode { type_name, reason } => Error::Encode {
                type_name,
                reason: format!("in the manager: {reason}"),
            },
            Failure::NoSuchObject { id } => self.error(format!(
                "object {id} no longer exists (its last proxy was dropped, or the process that \
                 sent this proxy exited before it was received)"
            )),
            Failure::WrongKind { id, is, wanted } => {
                self.error(format!("object {id} is a {}, not a {wanted}", is.name()))
            }
            Failure::OutOfRange { index, len } => {
                self.error(format!("index {index} is out of range for a list of {len}"))
            }
            Failure::NotOwner { what } => self.error(format!(
                "release or wait on a {} this thread does not hold",
                what.name()
            )),
            Failure::BadEntry => self.error(
                "the manager found no function at the offsets given (is it another build?)",
            ),
            Failure::Other(s) => self.error(s),
        }
    }

    pub(crate) fn unexpected(&self, reply: &Reply) -> Error {
        self.error(format!("unexpected reply {reply:?}"))
    }
}

impl Chan {
    fn exchange<Q: Serialize, A: DeserializeOwned>(&mut self, link: &Link, req: &Q) -> Result<A> {
        self.buf.clear();
        self.buf.resize(TAG_LEN, 0);
        crate::wire::encode_into(req, &mut self.buf)?;
        self.seal.seal(&mut self.buf);
        self.conn.send_bytes(&self.buf).map_err(|e| link.gone(e))?;
        // Most replies come within a few µs: take them without sleeping (see
        // `Connection::spin_for_message`).
        self.conn.spin_for_message(super::SPIN);
        let frame = self.conn.recv_bytes().map_err(|e| link.gone(e))?;
        let body = self.seal.open(&frame).map_err(|f| {
            link.error(format!(
                "the manager's reply: {f}; the connection was dropped (is something on the path \
                 altering traffic?)"
            ))
        })?;
        crate::wire::decode(body)
    }
}

/// A counted reference to one object of a manager: the core of every proxy. Cloning
/// adds a reference (one message); dropping removes one.
pub(crate) struct ObjRef {
    pub(crate) link: Arc<Link>,
    pub(crate) id: u64,
    pub(crate) kind: Kind,
}

impl std::fmt::Debug for ObjRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} at {}",
            self.kind.name(),
            self.id,
            self.link.address
        )
    }
}

impl ObjRef {
    pub(crate) fn op(&self, op: Op) -> Result<Reply> {
        self.link.call(&Request::Op { id: self.id, op })
    }

    pub(crate) fn unexpected(&self, reply: &Reply) -> Error {
        self.link.unexpected(reply)
    }

    /// `value` encoded to be stored in this object: a proxy inside it is kept alive by
    /// this object rather than by a token.
    pub(crate) fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<ByteBuf> {
        let previous = STORING_INTO.replace(Some((Arc::as_ptr(&self.link) as usize, self.id)));
        let r = crate::wire::encode(value);
        STORING_INTO.set(previous);
        r.map(ByteBuf::from).map_err(|e| take_proxy_error().unwrap_or(e))
    }

    /// Bytes from this object decoded: a proxy inside becomes a live proxy with a
    /// reference of its own.
    pub(crate) fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        let previous = READING_FROM.replace(Some(self.link.clone()));
        let r = crate::wire::decode(bytes);
        READING_FROM.set(previous);
        r.map_err(|e| take_proxy_error().unwrap_or(e))
    }

    /// A plain encoding, for keys (never proxies).
    pub(crate) fn key<Q: Serialize + ?Sized>(&self, key: &Q) -> Result<ByteBuf> {
        crate::wire::encode(key).map(ByteBuf::from)
    }

    pub(crate) fn deserialize_as<'de, D: Deserializer<'de>>(
        d: D,
        kind: Kind,
    ) -> std::result::Result<ObjRef, D::Error> {
        use serde::de::Error as _;
        let wire = ProxyWire::deserialize(d)?;
        let claimed = match wire {
            ProxyWire::Nested { id } => match READING_FROM.with(|r| r.borrow().clone()) {
                Some(link) => claim(link, id, 0, kind),
                None => Err(Error::Decode {
                    type_name: kind.name().into(),
                    reason: "a proxy stored inside a manager's object can only be read through \
                             that object's proxy"
                        .into(),
                }),
            },
            ProxyWire::Transfer {
                address,
                key,
                incarnation,
                id,
                token,
            } => address
                .parse::<Address>()
                .and_then(|a| Ok((a, AuthKey::new(key.into_vec())?)))
                .and_then(|(a, k)| Link::find(a, k, incarnation))
                .and_then(|link| claim(link, id, token, kind)),
        };
        claimed.map_err(|e| {
            let msg = e.to_string();
            set_proxy_error(e);
            D::Error::custom(msg)
        })
    }
}

fn claim(link: Arc<Link>, id: u64, token: u64, kind: Kind) -> Result<ObjRef> {
    link.call(&Request::Claim { id, token, kind })?;
    Ok(ObjRef { link, id, kind })
}

impl Clone for ObjRef {
    fn clone(&self) -> Self {
        // A failure means the manager is gone, and so is every use of the clone.
        let _ = self.link.call(&Request::Incref { id: self.id });
        ObjRef {
            link: self.link.clone(),
            id: self.id,
            kind: self.kind,
        }
    }
}

impl Drop for ObjRef {
    fn drop(&mut self) {
        if self.link.pid == std::process::id() {
            let _ = self.link.call(&Request::Decref { id: self.id });
        }
    }
}

/// How a proxy travels.
#[derive(Serialize, Deserialize)]
enum ProxyWire {
    /// Stored in an object of the same manager, which keeps it alive.
    Nested { id: u64 },
    /// Anywhere else: where to find the manager, and a token that carries one
    /// reference to whoever claims it.
    Transfer {
        address: String,
        key: ByteBuf,
        incarnation: u64,
        id: u64,
        token: u64,
    },
}

thread_local! {
    /// The object being written into (its link, by address, and its id).
    static STORING_INTO: Cell<Option<(usize, u64)>> = const { Cell::new(None) };
    /// The link of the object being read from.
    static READING_FROM: RefCell<Option<Arc<Link>>> = const { RefCell::new(None) };
    /// The error a proxy's (de)serialization met (serde's codec keeps only text).
    static PROXY_ERROR: RefCell<Option<Error>> = const { RefCell::new(None) };
}

fn set_proxy_error(e: Error) {
    PROXY_ERROR.with(|p| *p.borrow_mut() = Some(e));
}

fn take_proxy_error() -> Option<Error> {
    PROXY_ERROR.with(|p| p.borrow_mut().take())
}

impl Serialize for ObjRef {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let wire = (|| -> Result<ProxyWire> {
            if let Some((link, container)) = STORING_INTO.get() {
                if link == Arc::as_ptr(&self.link) as usize {
                    self.link.call(&Request::Hold {
                        container,
                        id: self.id,
                    })?;
                    return Ok(ProxyWire::Nested { id: self.id });
                }
            }
            match self.link.call(&Request::Transfer { id: self.id })? {
                Reply::Id(token) => Ok(ProxyWire::Transfer {
                    address: self.link.address.to_string(),
                    key: ByteBuf::from(self.link.key.as_bytes().to_vec()),
                    incarnation: self.link.incarnation.load(Ordering::Relaxed),
                    id: self.id,
                    token,
                }),
                r => Err(self.link.unexpected(&r)),
            }
        })();
        match wire {
            Ok(w) => w.serialize(s),
            Err(e) => {
                let msg = e.to_string();
                set_proxy_error(e);
                Err(S::Error::custom(msg))
            }
        }
    }
}

/// A thread's identity as the owner of a manager's RLock or Condition: random, so
/// unique across the processes sharing the manager.
pub(crate) fn owner() -> u64 {
    thread_local! {
        static OWNER: u64 = {
            let mut b = [0u8; 8];
            let _ = getrandom::getrandom(&mut b);
            u64::from_le_bytes(b) | 1
        };
    }
    OWNER.with(|o| *o)
}
