//! The manager's server: an accept loop, one thread per client connection, and the
//! table of objects with the references each client process holds.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use super::object::{Object, lock};
use super::protocol::{
    Entry, Failure, Forged, Hello, Reply, Request, Seal, SessionId, Stats, TAG_LEN,
    VERSION, Welcome,
};
use crate::connection::{AuthKey, Connection, IntoAddress, Listener};
use crate::error::{Error, Result};
use crate::sys::image::{InvokeCreate, InvokeMethod};

/// The id of the root namespace, which lives as long as the manager.
pub(crate) const ROOT: u64 = 0;
/// How often the accept loop looks whether it should stop.
const ACCEPT_SLICE: Duration = Duration::from_millis(100);
/// How long a client may take to say hello after the handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

struct Slot {
    obj: Arc<Object>,
    refs: u64,
    /// Objects this one keeps alive: proxies stored in it.
    held: Vec<u64>,
}

#[derive(Default)]
struct Session {
    conns: u32,
    refs: HashMap<u64, u64>,
    tokens: HashSet<u64>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    next_token: u64,
    objects: HashMap<u64, Slot>,
    sessions: HashMap<SessionId, Session>,
    /// token -> (object, the session whose reference it carries)
    tokens: HashMap<u64, (u64, SessionId)>,
    /// Sockets of open connections (duplicates), to wake their threads at shutdown.
    sockets: HashMap<u64, OwnedFd>,
    next_conn: u64,
}

impl Table {
    fn incref(&mut self, session: &SessionId, id: u64) -> bool {
        let Some(slot) = self.objects.get_mut(&id) else {
            return false;
        };
        slot.refs += 1;
        *self
            .sessions
            .entry(*session)
            .or_default()
            .refs
            .entry(id)
            .or_default() += 1;
        true
    }

    /// Drops one reference to `id` (if `session` holds one; `None`: a container's or a
    /// token's), and with it every object nobody refers to any more. The dropped
    /// objects go to `dead`, to be dropped once the table is unlocked.
    fn decref(&mut self, session: Option<&SessionId>, id: u64, dead: &mut Vec<Arc<Object>>) {
        if let Some(s) = session {
            let Some(n) = self.sessions.get_mut(s).and_then(|s| s.refs.get_mut(&id)) else {
                return; // not a reference this client holds: ignore
            };
            *n -= 1;
            if *n == 0 {
                if let Some(s) = self.sessions.get_mut(s) {
                    s.refs.remove(&id);
                }
            }
        }
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            if id == ROOT {
                continue;
            }
            let Some(slot) = self.objects.get_mut(&id) else {
                continue;
            };
            slot.refs = slot.refs.saturating_sub(1);
            if slot.refs == 0 {
                if let Some(slot) = self.objects.remove(&id) {
                    stack.extend(slot.held);
                    dead.push(slot.obj);
                }
            }
        }
    }

    /// A client process's last connection closed: everything it held goes.
    fn end_session(&mut self, session: &SessionId, dead: &mut Vec<Arc<Object>>) {
        let Some(s) = self.sessions.remove(session) else {
            return;
        };
        for t in s.tokens {
            if let Some((id, _)) = self.tokens.remove(&t) {
                self.decref(None, id, dead);
            }
        }
        for (id, n) in s.refs {
            for _ in 0..n {
                self.decref(None, id, dead);
            }
        }
    }

    fn add(&mut self, session: &SessionId, obj: Object) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.objects.insert(
            id,
            Slot {
                obj: Arc::new(obj),
                refs: 0,
                held: Vec::new(),
            },
        );
        self.incref(session, id);
        id
    }
}

/// Everything the connection threads share.
pub(crate) struct Core {
    table: Mutex<Table>,
    refused: AtomicU64,
    threads: AtomicU64,
    stopping: AtomicBool,
    address: String,
    /// Drawn at start: tells a restarted manager's clients from its predecessor's.
    incarnation: u64,
}

impl Core {
    fn new(address: String) -> Core {
        let mut table = Table::default();
        table.objects.insert(
            ROOT,
            Slot {
                obj: Arc::new(Object::Namespace(Mutex::default())),
                refs: 1,
                held: Vec::new(),
            },
        );
        Core {
            table: Mutex::new(table),
            refused: AtomicU64::new(0),
            threads: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            address,
            incarnation: {
                let mut b = [0u8; 8];
                let _ = getrandom::getrandom(&mut b);
                u64::from_le_bytes(b) | 1
            },
        }
    }

    fn object(&self, id: u64) -> std::result::Result<Arc<Object>, Failure> {
        lock(&self.table)
            .objects
            .get(&id)
            .map(|s| s.obj.clone())
            .ok_or(Failure::NoSuchObject { id })
    }

    fn stats(&self) -> Stats {
        let t = lock(&self.table);
        Stats {
            objects: t.objects.len() as u64,
            clients: t.sessions.values().filter(|s| s.conns > 0).count() as u64,
            connections: t.sockets.len() as u64,
            threads: self.threads.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Answers one request. `None`: the client went away while it waited.
    fn handle(&self, session: &SessionId, req: Request, gone: &dyn Fn() -> bool) -> Option<Reply> {
        let failed = |f| Some(Reply::Failed(f));
        match req {
            Request::Create(new) => match Object::new(new) {
                Ok(obj) => Some(Reply::Id(lock(&self.table).add(session, obj))),
                Err(f) => failed(f),
            },
            Request::CreateCustom { entry, arg } => {
                let mut ctx = CreateCtx {
                    arg: &arg,
                    out: None,
                };
                if !crate::sys::image::call(entry.trampoline, entry.function, &mut ctx) {
                    return failed(Failure::BadEntry);
                }
                match ctx.out {
                    Some(Ok(obj)) => Some(Reply::Id(
                        lock(&self.table).add(session, Object::Custom(Mutex::new(obj))),
                    )),
                    Some(Err(f)) => failed(f),
                    None => failed(Failure::BadEntry),
                }
            }
            Request::Op { id, op } => match self.object(id) {
                Ok(obj) => obj.apply(id, op, gone),
                Err(f) => failed(f),
            },
            Request::Method { id, entry, arg } => match self.object(id) {
                Ok(obj) => Some(run_method(&obj, id, entry, &arg)),
                Err(f) => failed(f),
            },
            Request::Incref { id } => {
                if lock(&self.table).incref(session, id) {
                    Some(Reply::Unit)
                } else {
                    failed(Failure::NoSuchObject { id })
                }
            }
            Request::Decref { id } => {
                let mut dead = Vec::new();
                lock(&self.table).decref(Some(session), id, &mut dead);
                drop(dead);
                Some(Reply::Unit)
            }
            Request::Transfer { id } => {
                let mut t = lock(&self.table);
                let Some(slot) = t.objects.get_mut(&id) else {
                    return failed(Failure::NoSuchObject { id });
                };
                slot.refs += 1;
                t.next_token += 1;
                let token = t.next_token;
                t.tokens.insert(token, (id, *session));
                t.sessions.entry(*session).or_default().tokens.insert(token);
                Some(Reply::Id(token))
            }
            Request::Claim { id, token, kind } => {
                let mut t = lock(&self.table);
                let Some(slot) = t.objects.get(&id) else {
                    return failed(Failure::NoSuchObject { id });
                };
                let is = slot.obj.kind();
                if is != kind {
                    return failed(Failure::WrongKind {
                        id,
                        is,
                        wanted: kind.name().to_owned(),
                    });
                }
                match t.tokens.get(&token) {
                    Some((obj, from)) if *obj == id => {
                        // The token's reference moves to the claimer.
                        let from = *from;
                        t.tokens.remove(&token);
                        if let Some(s) = t.sessions.get_mut(&from) {
                            s.tokens.remove(&token);
                        }
                        *t.sessions
                            .entry(*session)
                            .or_default()
                            .refs
                            .entry(id)
                            .or_default() += 1;
                    }
                    // Claimed before (a value decoded twice), or no token (a proxy
                    // read from a container): a reference of its own.
                    _ => {
                        t.incref(session, id);
                    }
                }
                Some(Reply::Unit)
            }
            Request::Hold { container, id } => {
                let mut t = lock(&self.table);
                if !t.objects.contains_key(&container) {
                    return failed(Failure::NoSuchObject { id: container });
                }
                let Some(slot) = t.objects.get_mut(&id) else {
                    return failed(Failure::NoSuchObject { id });
                };
                slot.refs += 1;
                if let Some(c) = t.objects.get_mut(&container) {
                    c.held.push(id);
                }
                Some(Reply::Unit)
            }
            Request::Stats => Some(Reply::Stats(self.stats())),
            Request::Shutdown => {
                self.stopping.store(true, Ordering::SeqCst);
                Some(Reply::Unit)
            }
        }
    }
}

/// Calls a method sent as code: on a custom object (its `T`), a list
/// (`Vec<Vec<u8>>`, the encoded items) or a dict (`HashMap<Vec<u8>, Vec<u8>>`).
fn run_method(obj: &Object, id: u64, entry: Entry, arg: &[u8]) -> Reply {
    let call = |target: &mut dyn Any| {
        let mut ctx = MethodCtx {
            object: target,
            arg,
            out: None,
        };
        if !crate::sys::image::call(entry.trampoline, entry.function, &mut ctx) {
            return Reply::Failed(Failure::BadEntry);
        }
        ctx.out.unwrap_or(Reply::Failed(Failure::BadEntry))
    };
    match obj {
        Object::Custom(m) => call(&mut **lock(m)),
        Object::List(m) => call(&mut *lock(m)),
        Object::Dict(m) => call(&mut *lock(m)),
        other => Reply::Failed(Failure::WrongKind {
            id,
            is: other.kind(),
            wanted: "a method".into(),
        }),
    }
}

thread_local! {
    /// Whether a method or constructor of a client runs on this thread.
    static IN_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Where the last such call panicked.
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// A panic in a client's method is that client's error, not the manager's: the hook
/// records where it happened for the answer and prints nothing; any other panic goes
/// to the hook that was there before.
///
/// Installed once per process, by the parent before it starts a manager process too,
/// so that a manager forked from it never calls `set_hook` (which could wait forever in
/// a child forked while another thread of the parent was panicking).
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CALL.try_with(|c| c.get()).unwrap_or(false) {
                let at = info.location().map(|l| l.to_string());
                let _ = PANIC_AT.try_with(|p| *p.borrow_mut() = at);
                return;
            }
            previous(info)
        }));
    });
}

/// Runs a client's code, catching a panic.
fn guarded<R>(f: impl FnOnce() -> R) -> std::result::Result<R, Failure> {
    IN_CALL.set(true);
    let r = catch_unwind(AssertUnwindSafe(f));
    IN_CALL.set(false);
    r.map_err(|payload| Failure::Panicked {
        message: crate::error::panic_message(&*payload),
        location: PANIC_AT.with(|p| p.borrow_mut().take()),
    })
}

/// A method call in the manager: the object, the encoded argument, the reply.
struct MethodCtx<'a> {
    object: &'a mut dyn Any,
    arg: &'a [u8],
    out: Option<Reply>,
}

impl InvokeMethod for MethodCtx<'_> {
    fn invoke_method<T: 'static, A: DeserializeOwned, R: Serialize>(
        &mut self,
        f: fn(&mut T, A) -> R,
    ) {
        self.out = Some(Reply::Failed(match invoke_method(self.object, self.arg, f) {
            Ok(bytes) => {
                self.out = Some(Reply::Bytes(ByteBuf::from(bytes)));
                return;
            }
            Err(f) => f,
        }));
    }
}

fn invoke_method<T: 'static, A: DeserializeOwned, R: Serialize>(
    object: &mut dyn Any,
    arg: &[u8],
    f: fn(&mut T, A) -> R,
) -> std::result::Result<Vec<u8>, Failure> {
    let Some(target) = object.downcast_mut::<T>() else {
        return Err(Failure::Other(format!(
            "the method takes a {}, but the object is another type",
            std::any::type_name::<T>()
        )));
    };
    let a: A = crate::wire::decode(arg).map_err(decode_failure::<A>)?;
    let r = guarded(|| f(target, a))?;
    crate::wire::encode(&r).map_err(|e| Failure::Encode {
        type_name: std::any::type_name::<R>().into(),
        reason: e.to_string(),
    })
}

fn decode_failure<A>(e: Error) -> Failure {
    Failure::Decode {
        type_name: std::any::type_name::<A>().into(),
        reason: match e {
            Error::Decode { reason, .. } => reason,
            e => e.to_string(),
        },
    }
}

/// A constructor call in the manager.
struct CreateCtx<'a> {
    arg: &'a [u8],
    out: Option<std::result::Result<Box<dyn Any + Send>, Failure>>,
}

impl InvokeCreate for CreateCtx<'_> {
    fn invoke_create<A: DeserializeOwned, T: Send + 'static>(&mut self, f: fn(A) -> T) {
        self.out = Some((|| {
            let a: A = crate::wire::decode(self.arg).map_err(decode_failure::<A>)?;
            let t = guarded(|| f(a))?;
            Ok(Box::new(t) as Box<dyn Any + Send>)
        })());
    }
}

/// The entry of a method, for a client to send.
pub(crate) fn method_entry<T: 'static, A: DeserializeOwned, R: Serialize>(
    f: fn(&mut T, A) -> R,
) -> Entry {
    let (trampoline, function) = crate::sys::image::method_entry_of::<T, A, R, MethodCtx<'_>>(f);
    Entry {
        trampoline,
        function,
    }
}

/// The entry of a constructor, for a client to send.
pub(crate) fn create_entry<A: DeserializeOwned, T: Send + 'static>(f: fn(A) -> T) -> Entry {
    let (trampoline, function) = crate::sys::image::create_entry_of::<A, T, CreateCtx<'_>>(f);
    Entry {
        trampoline,
        function,
    }
}

/// A bound manager, not yet serving.
pub(crate) struct Server {
    listener: Listener,
    core: Arc<Core>,
}

impl Server {
    pub(crate) fn bind(
        address: impl IntoAddress,
        key: &AuthKey,
        handshake_timeout: Duration,
    ) -> Result<Server> {
        let listener = Listener::builder(address)
            .key(key)
            .handshake_timeout(handshake_timeout)
            .bind()?;
        let core = Arc::new(Core::new(listener.address().to_string()));
        install_panic_hook();
        Ok(Server { listener, core })
    }

    pub(crate) fn address(&self) -> &crate::connection::Address {
        self.listener.address()
    }

    /// Serves until a client asks it to stop; then closes every connection and returns
    /// once their threads have ended (or after a few seconds).
    pub(crate) fn serve(self) -> Result<()> {
        tracing::debug!(address = %self.core.address, "manager serving");
        while !self.core.stopping.load(Ordering::SeqCst) {
            let deadline = Instant::now() + ACCEPT_SLICE;
            let pending = match self.listener.accept_pending(Some(deadline), Some(ACCEPT_SLICE)) {
                Ok(p) => p,
                Err(Error::Timeout { .. }) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "manager: accepting a client failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let core = self.core.clone();
            core.threads.fetch_add(1, Ordering::SeqCst);
            let spawned = std::thread::Builder::new()
                .name("multiproc-manager-conn".into())
                .spawn(move || {
                    serve_connection(&core, pending);
                    core.threads.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                self.core.threads.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("manager: cannot start a thread for a client");
            }
        }
        drop(self.listener);
        for sock in lock(&self.core.table).sockets.values() {
            let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.core.threads.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::debug!(address = %self.core.address, "manager stopped");
        Ok(())
    }
}

fn send_reply(conn: &mut Connection<(), ()>, seal: &mut Seal, out: &mut Vec<u8>, reply: &impl Serialize) -> bool {
    out.clear();
    out.resize(TAG_LEN, 0);
    if crate::wire::encode_into(reply, out).is_err() {
        out.truncate(TAG_LEN);
        let fallback = Reply::Failed(Failure::Other("the reply did not encode".into()));
        if crate::wire::encode_into(&fallback, out).is_err() {
            return false;
        }
    }
    seal.seal(out);
    conn.send_bytes(out).is_ok()
}

fn refuse(core: &Core, peer: &str, why: Forged) {
    core.refused.fetch_add(1, Ordering::SeqCst);
    tracing::warn!(peer, reason = %why, "manager: refused a message and closed the connection");
}

fn serve_connection(core: &Core, pending: crate::connection::Pending) {
    let mut conn: Connection<(), ()> = match pending.handshake() {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "manager: a client failed the handshake");
            return;
        }
    };
    let peer = conn.peer().to_owned();
    let Some(key) = conn.session_key().copied() else {
        return; // a manager always has a key; a connection without one cannot be here
    };
    let mut seal = Seal::server(&key);
    let mut out = Vec::new();
    let Ok(frame) = conn.recv_bytes_timeout(HELLO_TIMEOUT) else {
        return;
    };
    let hello: Hello = match seal.open(&frame) {
        Ok(body) => match crate::wire::decode(body) {
            Ok(h) => h,
            Err(_) => return,
        },
        Err(why) => return refuse(core, &peer, why),
    };
    let pid = std::process::id();
    let build = crate::sys::build_id::build_id();
    let welcome = if hello.version != VERSION {
        Welcome::OtherVersion {
            pid,
            version: VERSION,
        }
    } else if hello.build.as_slice() != build {
        Welcome::OtherBuild {
            pid,
            build: ByteBuf::from(build.to_vec()),
        }
    } else {
        Welcome::Ok {
            pid,
            incarnation: core.incarnation,
        }
    };
    let ok = matches!(welcome, Welcome::Ok { .. });
    if !send_reply(&mut conn, &mut seal, &mut out, &welcome) || !ok {
        if !ok {
            tracing::info!(peer, "manager: refused a client of another build or version");
        }
        return;
    }
    let session = hello.session;
    let conn_id = {
        let mut t = lock(&core.table);
        t.sessions.entry(session).or_default().conns += 1;
        t.next_conn += 1;
        let id = t.next_conn;
        if let Ok(dup) = conn.as_fd().try_clone_to_owned() {
            t.sockets.insert(id, dup);
        }
        id
    };
    serve_requests(core, &mut conn, &mut seal, &mut out, &session, &peer);
    let mut dead = Vec::new();
    {
        let mut t = lock(&core.table);
        t.sockets.remove(&conn_id);
        let last = t.sessions.get_mut(&session).is_some_and(|s| {
            s.conns -= 1;
            s.conns == 0
        });
        if last {
            t.end_session(&session, &mut dead);
        }
    }
    // Objects' own drops (a custom T's) run outside the table's lock.
    drop(dead);
}

fn serve_requests(
    core: &Core,
    conn: &mut Connection<(), ()>,
    seal: &mut Seal,
    out: &mut Vec<u8>,
    session: &SessionId,
    peer: &str,
) {
    loop {
        // A client's next request often follows its last reply within µs: wait for
        // it awake a little while, then sleep (see `Connection::spin_for_message`).
        conn.spin_for_message(super::SPIN);
        let Ok(frame) = conn.recv_bytes() else {
            return; // the client closed, or its process died
        };
        let req: Request = match seal.open(&frame) {
            Ok(body) => match crate::wire::decode(body) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(peer, error = %e, "manager: a signed request did not decode");
                    return;
                }
            },
            Err(why) => return refuse(core, peer, why),
        };
        let stop = matches!(req, Request::Shutdown);
        let reply = {
            let conn_ref = &*conn;
            let gone = || {
                core.stopping.load(Ordering::Relaxed)
                    || conn_ref.poll(Duration::ZERO).unwrap_or(true)
            };
            core.handle(session, req, &gone)
        };
        let Some(reply) = reply else {
            return;
        };
        if !send_reply(conn, seal, out, &reply) || stop {
            return;
        }
    }
}

