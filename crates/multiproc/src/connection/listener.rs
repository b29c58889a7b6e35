//! `Listener` and `Client`: binding, accepting and connecting, with the handshake.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Address, AuthKey, Connection, DEFAULT_HANDSHAKE_TIMEOUT, IntoAddress, handshake};
use crate::error::{Error, Result};

fn config_error(address: &Address, detail: impl Into<String>) -> Error {
    Error::Connection {
        address: address.to_string(),
        detail: detail.into(),
    }
}

/// Refuses a keyless TCP endpoint unless it was asked for.
fn check_key(address: &Address, key: Option<&AuthKey>, allow_open: bool, who: &str) -> Result<()> {
    if key.is_none() && !address.is_unix() && !allow_open {
        return Err(config_error(
            address,
            format!(
                "a {who} on TCP needs a key: without one, anyone who can reach the port can \
                 connect. Pass a key (AuthKey::random()), or if the network is trusted say so \
                 with {}::builder(address).allow_unauthenticated()",
                if who == "listener" { "Listener" } else { "Client" }
            ),
        ));
    }
    Ok(())
}

enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Accepts connections on an [`Address`] (Python's `multiprocessing.connection.Listener`).
///
/// [`accept`](Self::accept) takes `&self`, so several threads may accept on one
/// listener. With a key, each accepted connection has passed the handshake (see the
/// [module docs](super)); a failed handshake is an error from that `accept`, and the
/// listener goes on listening.
///
/// A listener on a Unix socket file removes the file when dropped (if it is still the
/// one it made). Binding a path where a dead listener left its file (nobody accepts on
/// it) replaces that file; a live one is an error.
///
/// ```
/// use std::time::Duration;
/// use multiproc::connection::{Client, Connection, Listener};
///
/// # fn main() -> multiproc::Result<()> {
/// let listener = Listener::bind("@", None)?; // a fresh abstract name, no key
/// let address = listener.address().clone();
/// let t = std::thread::spawn(move || -> multiproc::Result<()> {
///     let mut c: Connection<u32> = Client::connect(&address, None)?;
///     c.send(&7)
/// });
/// let mut conn: Connection<u32> = listener.accept_timeout(Duration::from_secs(10))?;
/// assert_eq!(conn.recv()?, 7);
/// t.join().unwrap()?;
/// # Ok(()) }
/// ```
pub struct Listener {
    socket: Socket,
    address: Address,
    key: Option<AuthKey>,
    handshake_timeout: Duration,
    /// The socket file to remove on drop, with its device and inode (so that a file
    /// someone else put there since is left alone).
    file: Option<(PathBuf, u64, u64)>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .field("authenticated", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// How to bind a [`Listener`]: [`Listener::builder`].
#[derive(Debug)]
pub struct ListenerBuilder {
    address: Result<Address>,
    key: Option<AuthKey>,
    allow_open: bool,
    handshake_timeout: Duration,
}

impl ListenerBuilder {
    /// The key clients must prove they hold (and that the listener proves to them).
    pub fn key(mut self, key: &AuthKey) -> Self {
        self.key = Some(key.clone());
        self
    }

    /// Accepts TCP connections without a key: anyone who can reach the port can
    /// connect. For a trusted network only. (Unix sockets need no permission.)
    pub fn allow_unauthenticated(mut self) -> Self {
        self.allow_open = true;
        self
    }

    /// How long a client may take over the handshake (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Binds and listens.
    pub fn bind(self) -> Result<Listener> {
        let address = self.address?;
        check_key(&address, self.key.as_ref(), self.allow_open, "listener")?;
        let (socket, address, file) = match address {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(|e| bind_error(&address, e))?;
                let bound = l.local_addr().map_err(|e| Error::io("reading a bound address", e))?;
                (Socket::Tcp(l), Address::Tcp(bound), None)
            }
            Address::Abstract(ref name) => {
                let name = if name.is_empty() {
                    fresh_abstract_name()?
                } else {
                    name.clone()
                };
                let sa = UnixSocketAddr::from_abstract_name(&name)
                    .map_err(|e| bind_error(&address, e))?;
                let l = UnixListener::bind_addr(&sa).map_err(|e| bind_error(&address, e))?;
                (Socket::Unix(l), Address::Abstract(name), None)
            }
            Address::Unix(ref path) => {
                let l = bind_path(&address, path)?;
                let meta = std::fs::symlink_metadata(path)
                    .map_err(|e| Error::io("reading the socket file just bound", e))?;
                // Absolute, so that the file is found on drop whatever the working
                // directory is by then.
                let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                let file = Some((absolute, meta.dev(), meta.ino()));
                (Socket::Unix(l), address, file)
            }
        };
        // Non-blocking, so that accept can wait with a deadline and several threads can
        // accept without one sleeping in accept(2) on a connection another took.
        match &socket {
            Socket::Unix(l) => l.set_nonblocking(true),
            Socket::Tcp(l) => l.set_nonblocking(true),
        }
        .map_err(|e| Error::io("making a listener non-blocking", e))?;
        Ok(Listener {
            socket,
            address,
            key: self.key,
            handshake_timeout: self.handshake_timeout,
            file,
        })
    }
}

fn bind_error(address: &Address, e: io::Error) -> Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => " (another listener has it)",
        io::ErrorKind::PermissionDenied => " (permission denied)",
        _ => "",
    };
    config_error(address, format!("cannot listen: {e}{hint}"))
}

/// `@multiproc-<pid>-<16 random hex digits>`.
fn fresh_abstract_name() -> Result<Vec<u8>> {
    let mut r = [0u8; 8];
    handshake::random_bytes(&mut r)?;
    Ok(format!("multiproc-{}-{:016x}", std::process::id(), u64::from_le_bytes(r)).into_bytes())
}

/// Binds a socket file; a file left by a dead listener (a socket nobody accepts on) is
/// replaced, anything else is an error.
fn bind_path(address: &Address, path: &Path) -> Result<UnixListener> {
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            let dead = is_socket
                && matches!(
                    UnixStream::connect(path),
                    Err(ref c) if c.kind() == io::ErrorKind::ConnectionRefused
                );
            if !dead {
                return Err(bind_error(address, e));
            }
            std::fs::remove_file(path)
                .map_err(|e| config_error(address, format!("cannot remove a stale socket: {e}")))?;
            UnixListener::bind(path).map_err(|e| bind_error(address, e))
        }
        Err(e) => Err(bind_error(address, e)),
    }
}

impl Listener {
    /// Binds `address` (see [`Address`] for the forms). With `key`, every client must
    /// prove it holds it. Over TCP a key is required (see
    /// [`ListenerBuilder::allow_unauthenticated`]).
    pub fn bind(address: impl IntoAddress, key: Option<&AuthKey>) -> Result<Listener> {
        let mut b = Listener::builder(address);
        b.key = key.cloned();
        b.bind()
    }

    /// A builder, for the options [`bind`](Self::bind) does not take.
    pub fn builder(address: impl IntoAddress) -> ListenerBuilder {
        ListenerBuilder {
            address: address.into_address(),
            key: None,
            allow_open: false,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Where it listens, as bound: the port picked for port 0, the name picked for `@`.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for a connection and runs the handshake with it.
    ///
    /// A client that connects and then stays silent holds this call for up to the
    /// handshake timeout before it fails; a server that must keep accepting meanwhile
    /// accepts from more than one thread.
    pub fn accept<S, R>(&self) -> Result<Connection<S, R>> {
        self.accept_until(None, None)
    }

    /// Like [`accept`](Self::accept), waiting at most `timeout` for a client to connect
    /// ([`Error::Timeout`]); the handshake then has its own timeout.
    pub fn accept_timeout<S, R>(&self, timeout: Duration) -> Result<Connection<S, R>> {
        self.accept_until(Instant::now().checked_add(timeout), Some(timeout))
    }

    /// Closes the listener (as dropping it does), removing its socket file.
    pub fn close(self) {}

    fn accept_until<S, R>(
        &self,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<Connection<S, R>> {
        self.accept_pending(deadline, timeout)?.handshake()
    }

    /// Takes the next client without running the handshake: a server that must not
    /// let a silent client hold its accept loop runs [`Pending::handshake`] on another
    /// thread.
    pub(crate) fn accept_pending(
        &self,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<Pending> {
        let (sock, unix, peer) = loop {
            let accepted = match &self.socket {
                Socket::Unix(l) => l.accept().map(|(s, _)| {
                    let peer = match crate::sys::fd::peer(s.as_fd()) {
                        Ok((pid, _)) => format!("process {pid} on {}", self.address),
                        Err(_) => self.address.to_string(),
                    };
                    (OwnedFd::from(s), true, peer)
                }),
                Socket::Tcp(l) => l.accept().map(|(s, a)| {
                    let _ = s.set_nodelay(true);
                    (OwnedFd::from(s), false, a.to_string())
                }),
            };
            match accepted {
                Ok(a) => break a,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let ready = crate::wire::wait_readable(self.as_fd(), deadline)
                        .map_err(|e| Error::io("waiting for a connection", e))?;
                    if !ready {
                        return Err(Error::Timeout {
                            what: format!("a connection on {}", self.address),
                            timeout: timeout.unwrap_or_default(),
                        });
                    }
                }
                // A client that gave up before we took it, or a signal: take the next.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => return Err(Error::io("accepting a connection", e)),
            }
        };
        set_blocking(&sock)?;
        Ok(Pending {
            sock,
            unix,
            peer,
            key: self.key.clone(),
            timeout: self.handshake_timeout,
        })
    }
}

/// An accepted client whose handshake has not run yet (see
/// [`Listener::accept_pending`]).
pub(crate) struct Pending {
    sock: OwnedFd,
    unix: bool,
    peer: String,
    key: Option<AuthKey>,
    timeout: Duration,
}

impl Pending {
    /// Runs the handshake: the connection, or why the client was refused.
    pub(crate) fn handshake<S, R>(self) -> Result<Connection<S, R>> {
        let session =
            handshake::drive_listener(self.sock.as_fd(), self.key.as_ref(), self.timeout, &self.peer)?;
        Ok(Connection::new(self.sock, self.unix, self.peer, session))
    }
}

/// Accepted sockets do not inherit the listener's non-blocking mode on Linux; this
/// makes sure, since sends block by design.
fn set_blocking(sock: &OwnedFd) -> Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(sock, FcntlArg::F_GETFL).map_err(|e| Error::io("reading socket flags", e))?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(sock, FcntlArg::F_SETFL(flags)).map_err(|e| Error::io("setting socket flags", e))?;
    Ok(())
}

/// The listening socket: readable when a client is waiting to be accepted, which is
/// how [`crate::wait_ready`] waits for a listener.
impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Unix(l) => l.as_fd(),
            Socket::Tcp(l) => l.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.file {
            let ours = std::fs::symlink_metadata(path)
                .is_ok_and(|m| m.dev() == *dev && m.ino() == *ino);
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Connects to a [`Listener`] (Python's `multiprocessing.connection.Client`).
///
/// [`Client::connect`] for the common case; [`Client::builder`] for the options. A
/// [`ClientBuilder`] can be kept and cloned to open many connections, from any thread.
#[derive(Debug)]
pub struct Client(());

impl Client {
    /// Connects to `address` and runs the handshake: with `key`, the listener must hold
    /// the same key (and this side proves it does too). Over TCP a key is required (see
    /// [`ClientBuilder::allow_unauthenticated`]).
    pub fn connect<S, R>(
        address: impl IntoAddress,
        key: Option<&AuthKey>,
    ) -> Result<Connection<S, R>> {
        let mut b = Client::builder(address);
        b.key = key.cloned();
        b.connect()
    }

    /// A builder, for the options [`connect`](Self::connect) does not take.
    pub fn builder(address: impl IntoAddress) -> ClientBuilder {
        ClientBuilder {
            address: address.into_address(),
            key: None,
            allow_open: false,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// How to connect: [`Client::builder`]. Reusable: each [`connect`](Self::connect)
/// opens a new connection.
#[derive(Debug)]
pub struct ClientBuilder {
    address: Result<Address>,
    key: Option<AuthKey>,
    allow_open: bool,
    timeout: Duration,
}

impl Clone for ClientBuilder {
    fn clone(&self) -> Self {
        ClientBuilder {
            address: self.address.as_ref().map_err(Error::clone_shallow).cloned(),
            key: self.key.clone(),
            allow_open: self.allow_open,
            timeout: self.timeout,
        }
    }
}

impl ClientBuilder {
    /// The key to prove, and to require of the listener.
    pub fn key(mut self, key: &AuthKey) -> Self {
        self.key = Some(key.clone());
        self
    }

    /// Connects over TCP without a key: nothing proves who the listener is. For a
    /// trusted network only. (Unix sockets need no permission.)
    pub fn allow_unauthenticated(mut self) -> Self {
        self.allow_open = true;
        self
    }

    /// How long connecting and the handshake may take (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]); the listener must accept within it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Opens a connection.
    pub fn connect<S, R>(&self) -> Result<Connection<S, R>> {
        let address = self
            .address
            .as_ref()
            .map_err(Error::clone_shallow)?
            .clone();
        check_key(&address, self.key.as_ref(), self.allow_open, "client")?;
        let refused = |e: io::Error| {
            let hint = match e.kind() {
                io::ErrorKind::ConnectionRefused => " (is a listener running there?)",
                io::ErrorKind::NotFound => " (no socket file there: is a listener running?)",
                io::ErrorKind::TimedOut => " (the host did not answer)",
                _ => "",
            };
            config_error(&address, format!("cannot connect: {e}{hint}"))
        };
        let sock: OwnedFd = match &address {
            Address::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, self.timeout).map_err(refused)?;
                let _ = s.set_nodelay(true);
                s.into()
            }
            Address::Unix(p) => UnixStream::connect(p).map_err(refused)?.into(),
            Address::Abstract(name) => {
                let sa = UnixSocketAddr::from_abstract_name(name).map_err(refused)?;
                UnixStream::connect_addr(&sa).map_err(refused)?.into()
            }
        };
        let peer = address.to_string();
        let session = handshake::drive_client(sock.as_fd(), self.key.as_ref(), self.timeout, &peer)?;
        Ok(Connection::new(sock, address.is_unix(), peer, session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_and_connections_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Listener>();
        send_sync::<ClientBuilder>();
        // Whatever the message types are: a connection holds none of them.
        send_sync::<Connection<std::rc::Rc<u8>, std::cell::Cell<u8>>>();
    }

    #[test]
    fn both_ends_derive_one_session_key_per_connection() {
        let key = AuthKey::random().unwrap();
        let listener = Listener::bind("@", Some(&key)).unwrap();
        let mut keys = Vec::new();
        for _ in 0..2 {
            let address = listener.address().clone();
            let k = key.clone();
            let t = std::thread::spawn(move || Client::connect::<u8, u8>(&address, Some(&k)));
            let here: Connection<u8> = listener.accept().unwrap();
            let there = t.join().unwrap().unwrap();
            let s = *here.session_key().unwrap();
            assert_eq!(Some(&s), there.session_key());
            assert_ne!(&s[..], key.as_bytes());
            keys.push(s);
        }
        assert_ne!(keys[0], keys[1], "each connection has its own session key");
        // Without a key there is none.
        let open = Listener::bind("@", None).unwrap();
        let address = open.address().clone();
        let t = std::thread::spawn(move || Client::connect::<u8, u8>(&address, None));
        let here: Connection<u8> = open.accept().unwrap();
        assert!(here.session_key().is_none());
        assert!(t.join().unwrap().unwrap().session_key().is_none());
    }
}
