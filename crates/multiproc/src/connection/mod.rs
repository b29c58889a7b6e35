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
//! The key authenticates the peer; it does **not** encrypt. Anyone on the network path
//! can read (but not forge a handshake for) the traffic of a TCP connection; use a
//! private network, or a TLS tunnel, for data that must stay secret. It does not defend
//! against other processes of the same user on the same host either, which can read the
//! key from memory.
//!
//! Over TCP a key is required: a listener or client without one is refused unless the
//! builder says [`allow_unauthenticated`](ListenerBuilder::allow_unauthenticated)
//! (Python accepts such connections silently). A Unix socket may go without a key,
//! its file permissions (or, for an abstract name, the network namespace) decide who can
//! connect.
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
//! - `connect` returns once the listener has accepted (it greets every client, keyed or
//!   not, so that a key mismatch is an error rather than garbage later); with a busy
//!   listener that takes longer than the handshake timeout to accept, raise it.
//! - Values are typed (`Connection<Send, Recv>`), encoded with postcard, not pickled.

mod address;
mod conn;
mod handshake;
mod listener;

pub use address::{Address, IntoAddress};
pub use conn::Connection;
pub use listener::{Client, ClientBuilder, Listener, ListenerBuilder};
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
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey(Vec<u8>);

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
