//! `Client`: connecting to a `Listener`, with the handshake.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
use nix::sys::time::TimeVal;

use super::{Address, AuthKey, Connection, DEFAULT_HANDSHAKE_TIMEOUT, IntoAddress, handshake};
use crate::error::{Error, Result};
use super::socket::{check_key, config_error, keep_alive};

/// Connects to a [`Listener`](super::Listener) (Python's `multiprocessing.connection.Client`).
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
            allow_other_users: false,
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
    allow_other_users: bool,
    timeout: Duration,
}

impl Clone for ClientBuilder {
    fn clone(&self) -> Self {
        ClientBuilder {
            address: self.address.as_ref().map_err(Error::clone_shallow).cloned(),
            key: self.key.clone(),
            allow_open: self.allow_open,
            allow_other_users: self.allow_other_users,
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

    /// Without a key, connects to a Unix-socket listener of any user.
    ///
    /// By default a keyless client on a Unix socket talks only to a listener running
    /// as its own (effective) user, as the kernel reports it (`SO_PEERCRED`): another
    /// user could have bound the abstract name first. With a key, the key decides and
    /// this does nothing.
    pub fn allow_other_users(mut self) -> Self {
        self.allow_other_users = true;
        self
    }

    /// How long connecting and the handshake together may take (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]): one deadline, which also covers a listener
    /// whose backlog is full (it is not accepting), so a stuck listener fails
    /// `connect` with [`Error::Timeout`] instead of hanging it.
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
        let deadline = handshake::deadline_after(self.timeout);
        let sock: OwnedFd = match &address {
            Address::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, self.timeout).map_err(refused)?;
                let _ = s.set_nodelay(true);
                let _ = keep_alive(&s);
                s.into()
            }
            Address::Unix(p) => {
                let sa = UnixAddr::new(p.as_path()).map_err(|e| refused(e.into()))?;
                self.connect_unix(&address, &sa, deadline).map_err(|e| e.map_io(refused))?
            }
            Address::Abstract(name) => {
                let sa = UnixAddr::new_abstract(name).map_err(|e| refused(e.into()))?;
                self.connect_unix(&address, &sa, deadline).map_err(|e| e.map_io(refused))?
            }
        };
        let peer = address.to_string();
        if address.is_unix() && self.key.is_none() && !self.allow_other_users {
            let uid = crate::sys::fd::peer(sock.as_fd()).map_or(u32::MAX, |(_, uid)| uid);
            let me = nix::unistd::geteuid();
            if uid != me.as_raw() {
                return Err(Error::AuthenticationFailed {
                    peer,
                    detail: format!(
                        "the listener runs as user {uid}, not as our user {me}; a client \
                         without a key talks only to its own user's listeners (give both a \
                         key, or say Client::builder(address).allow_other_users())"
                    ),
                });
            }
        }
        let session =
            handshake::drive_client(sock.as_fd(), self.key.as_ref(), deadline, self.timeout, &peer)?;
        Ok(Connection::new(sock, address.is_unix(), peer, session))
    }

    /// A Unix connect that gives up at `deadline`: `connect(2)` on a Unix socket waits
    /// while the listener's backlog is full, for as long as the socket's send timeout.
    fn connect_unix(
        &self,
        address: &Address,
        sa: &UnixAddr,
        deadline: Option<Instant>,
    ) -> std::result::Result<OwnedFd, ConnectError> {
        let sock = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| ConnectError::Io(e.into()))?;
        let timed_out = || {
            ConnectError::Other(Error::Timeout {
                what: format!(
                    "{address} to take the connection (its backlog is full: the listener is \
                     not accepting)"
                ),
                timeout: self.timeout,
            })
        };
        loop {
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(timed_out());
                }
                socket::setsockopt(&sock, sockopt::SendTimeout, &timeval(left))
                    .map_err(|e| ConnectError::Io(e.into()))?;
            }
            match socket::connect(sock.as_raw_fd(), sa) {
                Ok(()) => break,
                // A Unix socket is still unconnected after an interrupted connect.
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Err(timed_out()),
                Err(e) => return Err(ConnectError::Io(e.into())),
            }
        }
        if deadline.is_some() {
            // Sends block without limit by design (as on a pipe).
            socket::setsockopt(&sock, sockopt::SendTimeout, &TimeVal::new(0, 0))
                .map_err(|e| ConnectError::Io(e.into()))?;
        }
        Ok(sock)
    }
}

/// Why a connect failed: the OS said no (reported with the address and a hint), or
/// something already worded.
enum ConnectError {
    Io(io::Error),
    Other(Error),
}

impl ConnectError {
    fn map_io(self, f: impl FnOnce(io::Error) -> Error) -> Error {
        match self {
            ConnectError::Io(e) => f(e),
            ConnectError::Other(e) => e,
        }
    }
}

/// `d` as a socket timeout; never zero, which would mean no timeout.
fn timeval(d: Duration) -> TimeVal {
    let secs = libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX);
    let micros = libc::suseconds_t::from(d.subsec_micros()).max(if secs == 0 { 1 } else { 0 });
    TimeVal::new(secs, micros)
}
