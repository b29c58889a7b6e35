//! `Listener`: binding and accepting, with the handshake.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};


use super::{Address, AuthKey, Connection, DEFAULT_HANDSHAKE_TIMEOUT, IntoAddress, handshake};
use crate::error::{Error, Result};
use super::bind::{PathLock, bind_error, bind_path};
use super::socket::{check_key, keep_alive};

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
/// one it made). Beside it, it holds a lock on `<path>.lock` (an empty file, removed
/// with the socket file): binding a path whose lock a live listener holds is an error
/// ([`AddrInUse`](std::io::ErrorKind::AddrInUse)), found without connecting to it;
/// a socket file left by a dead listener (its lock is free and nothing accepts on the
/// socket) is replaced.
///
/// Without a key, a listener on a Unix socket accepts only processes of its own user
/// (see [`ListenerBuilder::allow_other_users`]).
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
    /// Accept Unix clients of other users without a key.
    allow_other_users: bool,
    /// The socket file to remove on drop, with its device and inode (so that a file
    /// someone else put there since is left alone).
    file: Option<(PathBuf, u64, u64)>,
    /// The lock on the socket file's `.lock` file, held while the listener lives.
    _lock: Option<PathLock>,
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
    allow_other_users: bool,
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

    /// Accepts Unix-socket clients of any user when there is no key.
    ///
    /// By default a keyless listener on a Unix socket accepts only processes running as
    /// its own (effective) user, as the kernel reports them (`SO_PEERCRED`); a client
    /// of another user fails the `accept` with [`Error::AuthenticationFailed`]. That
    /// matters most for an abstract name, which every user of the machine can see (in
    /// `/proc/net/unix`) and connect to; a socket file's permissions already limit who
    /// connects. With a key, the key decides and this does nothing.
    pub fn allow_other_users(mut self) -> Self {
        self.allow_other_users = true;
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
        let mut lock = None;
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
                let (l, held) = bind_path(&address, path)?;
                lock = Some(held);
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
            allow_other_users: self.allow_other_users,
            file,
            _lock: lock,
        })
    }
}
/// `@multiproc-<pid>-<16 random hex digits>`.
fn fresh_abstract_name() -> Result<Vec<u8>> {
    let mut r = [0u8; 8];
    handshake::random_bytes(&mut r)?;
    Ok(format!("multiproc-{}-{:016x}", std::process::id(), u64::from_le_bytes(r)).into_bytes())
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
            allow_other_users: false,
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
        let (sock, unix, peer, other_user) = loop {
            let accepted = match &self.socket {
                Socket::Unix(l) => l.accept().map(|(s, _)| {
                    let (peer, other_user) = match crate::sys::fd::peer(s.as_fd()) {
                        Ok((pid, uid)) => (
                            format!("process {pid} on {}", self.address),
                            (uid != nix::unistd::geteuid().as_raw()).then_some(uid),
                        ),
                        Err(_) => (self.address.to_string(), Some(u32::MAX)),
                    };
                    (OwnedFd::from(s), true, peer, other_user)
                }),
                Socket::Tcp(l) => l.accept().map(|(s, a)| {
                    let _ = s.set_nodelay(true);
                    let _ = keep_alive(&s);
                    (OwnedFd::from(s), false, a.to_string(), None)
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
        if let Some(uid) = other_user
            && self.key.is_none()
            && !self.allow_other_users
        {
            return Err(Error::AuthenticationFailed {
                peer,
                detail: format!(
                    "the client runs as user {uid}, not as this listener's user {}; a \
                     listener without a key accepts only its own user (give it a key, or \
                     say Listener::builder(address).allow_other_users())",
                    nix::unistd::geteuid()
                ),
            });
        }
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{Client, ClientBuilder};

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
