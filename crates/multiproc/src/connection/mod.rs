//! Connections between processes that did not start each other: [`Listener`],
//! [`Client`] and [`Connection`] (Python's `multiprocessing.connection`).
//!
//! A [`Listener`] binds an [`Address`] — a Unix socket file, a Linux abstract name, or a
//! TCP `host:port` — and [`accept`](Listener::accept)s connections; [`Client::connect`]
//! opens one. A [`Connection`] then carries typed serde values both ways (as a
//! [`PipeEnd`](crate::PipeEnd) does), raw byte messages, and, over a Unix socket, OS
//! handles.
//!
//! ```
//! use multiproc::connection::{AuthKey, Client, Connection, Listener};
//! use multiproc::Process;
//!
//! // The child knows only the address and the key.
//! fn client((address, key): (String, Vec<u8>)) -> u64 {
//!     let key = AuthKey::new(key).unwrap();
//!     let mut conn: Connection<String, u64> = Client::connect(&address, Some(&key)).unwrap();
//!     conn.send(&"hello".to_string()).unwrap();
//!     conn.recv().unwrap()
//! }
//!
//! # fn main() -> multiproc::Result<()> {
//! let key = AuthKey::random()?;
//! let listener = Listener::bind("127.0.0.1:0", Some(&key))?; // port 0: any free port
//! let child = Process::start(
//!     client,
//!     (listener.address().to_string(), key.as_bytes().to_vec()),
//! )?;
//! let mut conn: Connection<u64, String> = listener.accept()?;
//! assert_eq!(conn.recv()?, "hello");
//! conn.send(&5)?;
//! assert_eq!(child.join()?, 5);
//! # Ok(()) }
//! ```
//!
//! ## The key
//!
//! With an [`AuthKey`], both sides prove they hold it before anything else crosses:
//! each sends the other a fresh 32-byte random challenge and checks the HMAC-SHA256 the
//! other computes over it, in constant time (Python's `deliver_challenge` and
//! `answer_challenge`, both ways, with a modern digest). A wrong key fails on both ends
//! with [`Error::AuthenticationFailed`]; a peer that
//! does not answer fails after the handshake timeout (10 seconds unless set on the
//! builder), so a silent peer never hangs `accept` or `connect`.
//!
//! What the key proves, precisely: that the process which answered the handshake
//! holds it. That is all a plain [`Connection`] gets from it. The key does **not**
//! encrypt, and the frames after the handshake carry no MAC: an attacker who can
//! read *and rewrite* a TCP connection's traffic (on the network path) can let a
//! genuine handshake through, then read, drop, reorder, alter or inject later
//! messages of a plain `Connection`, undetected. A passive listener on the path reads
//! everything but cannot forge a handshake. Over Unix sockets there is no network
//! path; only processes of this machine take part. Managers
//! ([`crate::managers`]) build on connections and authenticate *every* message
//! (HMAC-SHA256 under a per-connection session key, with sequence numbers), so they
//! stand up to an active attacker; for plain connections over an untrusted network,
//! use a TLS tunnel, a VPN or SSH port forwarding. Neither defends against other
//! processes of the same user on the same host, which can read the key from memory.
//!
//! Over TCP a key is required: a listener or client without one is refused unless the
//! builder says [`allow_unauthenticated`](ListenerBuilder::allow_unauthenticated)
//! (Python accepts such connections silently). A Unix socket may go without a key:
//! then a socket file's permissions decide who can connect, and, because an abstract
//! name is visible to every user of the machine (in `/proc/net/unix`), a keyless Unix
//! listener accepts only processes running as its own user (the kernel's
//! `SO_PEERCRED` says who connected), and a keyless Unix client talks only to a
//! listener of its own user; [`ListenerBuilder::allow_other_users`] and
//! [`ClientBuilder::allow_other_users`] lift that.
//!
//! ## Dead peers
//!
//! A peer that exits or crashes closes its socket, and the other end learns at once
//! ([`Error::Closed`]). A TCP peer whose *machine* vanishes (power loss, a cable pulled)
//! sends nothing more; every TCP connection therefore has keep-alive probes on (first
//! after 10 seconds of silence, then every 5 seconds, 3 unanswered ones end it) and a
//! 30-second `TCP_USER_TIMEOUT` for data sent but not acknowledged. A receive on a
//! connection whose host vanished fails within about 25 seconds, a blocked send
//! within about 30, instead of waiting for the kernel's defaults (hours, and about
//! 15 minutes).
//!
//! ## Framing
//!
//! Every message is one frame, as on a [`Pipe`](crate::Pipe): an 8-byte length, then the
//! body; a length over the frame limit ([`crate::set_max_frame_size`]) is refused before
//! anything is allocated, and the body buffer grows only as bytes arrive. Before the
//! handshake is done, a peer may send at most 256 bytes per frame.
//!
//! ## Differences from Python
//!
//! - A key must have at least 16 bytes ([`AuthKey::random`] makes 32); Python takes any.
//! - A keyless Unix listener accepts only its own user (see above); Python's leaves that
//!   to the socket file's permissions, and has no abstract-name listeners to guard.
//! - `connect` returns once the listener has accepted (it greets every client, keyed or
//!   not, so that a key mismatch is an error rather than garbage later); with a busy
//!   listener that takes longer than the handshake timeout to accept, raise it.
//! - Values are typed (`Connection<Send, Recv>`), encoded with postcard, not pickled.

mod address;
mod bind;
mod client;
mod conn;
mod handshake;
mod listener;
mod socket;

pub use address::{Address, IntoAddress};
pub use conn::Connection;
pub use client::{Client, ClientBuilder};
pub use listener::{Listener, ListenerBuilder};
pub(crate) use listener::Pending;

use std::time::Duration;

use crate::error::{Error, Result};

/// How long a handshake may take unless a builder says otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The fewest bytes a key may have.
pub const MIN_KEY_LEN: usize = 16;

/// A secret shared by a listener and its clients (Python's `authkey`): at least 16 bytes.
///
/// [`AuthKey::random`] makes a fresh 32-byte one; hand it to the other side as you would
/// a password (an environment variable, a file readable only by its user, a task
/// argument). Its `Debug` form does not show it.
///
/// ```
/// use multiproc::connection::AuthKey;
/// let key = AuthKey::new(b"correct horse battery staple".to_vec())?;
/// assert_eq!(format!("{key:?}"), "AuthKey(<secret>)");
/// assert!(AuthKey::new(b"short".to_vec()).is_err());
/// assert_eq!(AuthKey::random()?.as_bytes().len(), 32);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// Two keys compare equal (`==`) in constant time: the comparison's duration does not
/// tell how many leading bytes matched.
#[derive(Clone)]
pub struct AuthKey(Vec<u8>);

impl PartialEq for AuthKey {
    fn eq(&self, other: &AuthKey) -> bool {
        use subtle::ConstantTimeEq;
        // Lengths are not secret; `ct_eq` on slices of unequal length is false.
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for AuthKey {}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<secret>)")
    }
}

impl AuthKey {
    /// A key from its bytes; at least [`MIN_KEY_LEN`] of them.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<AuthKey> {
        let bytes = bytes.into();
        if bytes.len() < MIN_KEY_LEN {
            return Err(Error::Connection {
                address: String::new(),
                detail: format!(
                    "the key is {} bytes; a key needs at least {MIN_KEY_LEN} (AuthKey::random() \
                     makes 32 random bytes)",
                    bytes.len()
                ),
            });
        }
        Ok(AuthKey(bytes))
    }

    /// 32 fresh random bytes from the OS.
    pub fn random() -> Result<AuthKey> {
        let mut bytes = vec![0u8; 32];
        handshake::random_bytes(&mut bytes)?;
        Ok(AuthKey(bytes))
    }

    /// The key's bytes, to hand to the other side.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}
