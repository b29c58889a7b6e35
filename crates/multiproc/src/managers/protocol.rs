//! What travels between a manager and its clients, and how every message is signed.
//!
//! After the connection's handshake (see [`crate::connection`]), each message in either
//! direction is `tag || body`: `tag` is HMAC-SHA256 under the connection's session key
//! over `direction || seq || body`, `seq` a per-direction counter that starts at 0 and is
//! never sent (both ends count), `direction` a byte that differs for the two ways. So a
//! message that is forged (no key), tampered with (tag mismatch), replayed or reordered
//! (the counter moved on), or reflected back to its sender (other direction) fails the
//! check, which runs in constant time before anything is decoded.
//!
//! The first message of a client is a [`Hello`] with its build id; the manager answers
//! a [`Welcome`], refusing a client of another build before it can name any code.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Version of this protocol; a manager refuses a client speaking another.
pub(crate) const VERSION: u32 = 1;
/// Bytes of the tag in front of every message.
pub(crate) const TAG_LEN: usize = 32;
/// A client process's identity towards one manager: every connection it opens carries
/// it, and the references it holds belong to it (not to one connection).
pub(crate) type SessionId = [u8; 16];

const TO_SERVER: u8 = b'C';
const TO_CLIENT: u8 = b'S';

/// Signs outgoing and checks incoming messages of one connection.
#[derive(Clone)]
pub(crate) struct Seal {
    mac: HmacSha256,
    out_dir: u8,
    in_dir: u8,
    out_seq: u64,
    in_seq: u64,
}

/// Why an incoming message was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Forged {
    /// Shorter than a tag.
    Short,
    /// The tag does not match: forged, tampered with, replayed or out of order.
    BadTag { seq: u64 },
}

impl std::fmt::Display for Forged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Forged::Short => f.write_str("a message shorter than its signature"),
            Forged::BadTag { seq } => write!(
                f,
                "message {seq} failed its signature check (forged, tampered with, replayed or \
                 reordered)"
            ),
        }
    }
}

impl Seal {
    fn new(session_key: &[u8; 32], out_dir: u8, in_dir: u8) -> Seal {
        Seal {
            mac: <HmacSha256 as Mac>::new_from_slice(session_key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length")),
            out_dir,
            in_dir,
            out_seq: 0,
            in_seq: 0,
        }
    }

    /// The client's end of a connection.
    pub(crate) fn client(session_key: &[u8; 32]) -> Seal {
        Seal::new(session_key, TO_SERVER, TO_CLIENT)
    }

    /// The manager's end of a connection.
    pub(crate) fn server(session_key: &[u8; 32]) -> Seal {
        Seal::new(session_key, TO_CLIENT, TO_SERVER)
    }

    fn tag(&self, dir: u8, seq: u64, body: &[u8]) -> HmacSha256 {
        let mut m = self.mac.clone();
        m.update(&[dir]);
        m.update(&seq.to_le_bytes());
        m.update(body);
        m
    }

    /// Writes the tag for `frame[TAG_LEN..]` into `frame[..TAG_LEN]` (the caller left
    /// room), and counts the message.
    pub(crate) fn seal(&mut self, frame: &mut [u8]) {
        let (head, body) = frame.split_at_mut(TAG_LEN);
        let t = self.tag(self.out_dir, self.out_seq, body).finalize().into_bytes();
        head.copy_from_slice(&t);
        self.out_seq += 1;
    }

    /// The body of an incoming frame if its tag is right for the next expected message.
    pub(crate) fn open<'a>(&mut self, frame: &'a [u8]) -> Result<&'a [u8], Forged> {
        if frame.len() < TAG_LEN {
            return Err(Forged::Short);
        }
        let (t, body) = frame.split_at(TAG_LEN);
        self.tag(self.in_dir, self.in_seq, body)
            .verify_slice(t)
            .map_err(|_| Forged::BadTag { seq: self.in_seq })?;
        self.in_seq += 1;
        Ok(body)
    }
}

/// A client's first message.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Hello {
    pub(crate) version: u32,
    pub(crate) build: ByteBuf,
    pub(crate) session: SessionId,
}

/// The manager's answer to a [`Hello`].
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Welcome {
    Ok { pid: u32, incarnation: u64 },
    OtherBuild { pid: u32, build: ByteBuf },
    OtherVersion { pid: u32, version: u32 },
}

/// What kind of object an id names (checked when a proxy is received).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dict,
    List,
    Namespace,
    Custom,
    Queue,
    JoinableQueue,
    Lock,
    RLock,
    Semaphore,
    BoundedSemaphore,
    Condition,
    Event,
    Barrier,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Dict => "Dict",
            Kind::List => "List",
            Kind::Namespace => "Namespace",
            Kind::Custom => "custom object",
            Kind::Queue => "Queue",
            Kind::JoinableQueue => "JoinableQueue",
            Kind::Lock => "Lock",
            Kind::RLock => "RLock",
            Kind::Semaphore => "Semaphore",
            Kind::BoundedSemaphore => "BoundedSemaphore",
            Kind::Condition => "Condition",
            Kind::Event => "Event",
            Kind::Barrier => "Barrier",
        }
    }
}

/// A new built-in object.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum New {
    Dict,
    List(Vec<ByteBuf>),
    Namespace,
    Queue { maxsize: usize, joinable: bool },
    Lock,
    RLock,
    Semaphore { value: u32, bounded: bool },
    Condition,
    Event,
    Barrier { parties: usize },
}

/// Code of this build, named by image offsets (see `sys::image`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) trampoline: u64,
    pub(crate) function: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Request {
    Create(New),
    /// A custom object: `fn(A) -> T` run in the manager.
    CreateCustom {
        entry: Entry,
        arg: ByteBuf,
    },
    Op {
        id: u64,
        op: Op,
    },
    /// `fn(&mut T, A) -> R` run on object `id` in the manager.
    Method {
        id: u64,
        entry: Entry,
        arg: ByteBuf,
    },
    Incref {
        id: u64,
    },
    Decref {
        id: u64,
    },
    /// A token that moves one reference to whoever claims it.
    Transfer {
        id: u64,
    },
    Claim {
        id: u64,
        token: u64,
        kind: Kind,
    },
    /// Object `container` keeps `id` alive (a proxy stored in it).
    Hold {
        container: u64,
        id: u64,
    },
    Stats,
    Shutdown,
}

/// Operations on built-in objects.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Op {
    Len,
    Clear,
    Snapshot,
    // Dict
    Get(ByteBuf),
    Insert(ByteBuf, ByteBuf),
    Remove(ByteBuf),
    Contains(ByteBuf),
    Keys,
    Values,
    Update(Vec<(ByteBuf, ByteBuf)>),
    GetOrInsert(ByteBuf, ByteBuf),
    PopItem,
    // List
    Push(ByteBuf),
    Pop,
    At(u64),
    Set(u64, ByteBuf),
    Extend(Vec<ByteBuf>),
    InsertAt(u64, ByteBuf),
    RemoveAt(u64),
    // Namespace
    SetAttr(String, ByteBuf),
    GetAttr(String),
    DelAttr(String),
    Names,
    // Queue, JoinableQueue
    Put {
        item: ByteBuf,
        block: bool,
        timeout: Option<Duration>,
    },
    Take {
        block: bool,
        timeout: Option<Duration>,
    },
    TaskDone,
    Join {
        timeout: Option<Duration>,
    },
    // Lock, RLock, Semaphore, BoundedSemaphore, Condition
    Acquire {
        owner: u64,
        block: bool,
        timeout: Option<Duration>,
    },
    Release {
        owner: u64,
    },
    // Condition
    Wait {
        owner: u64,
        timeout: Option<Duration>,
    },
    Notify {
        owner: u64,
        n: u64,
    },
    // Event
    SetFlag,
    ClearFlag,
    IsSet,
    WaitFlag {
        timeout: Option<Duration>,
    },
    // Barrier
    BarrierWait {
        timeout: Option<Duration>,
    },
    Abort,
    Reset,
    Parties,
    Waiting,
    Broken,
}

/// Numbers a manager reports about itself.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Shared objects alive (the root namespace included).
    pub objects: u64,
    /// Client processes with at least one connection.
    pub clients: u64,
    /// Open connections.
    pub connections: u64,
    /// Connection threads running (one per connection, while it serves).
    pub threads: u64,
    /// Messages refused since the manager started: forged, tampered with, replayed or
    /// out of order (each closed its connection).
    pub refused: u64,
}

#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Reply {
    Unit,
    Bool(bool),
    Count(u64),
    Id(u64),
    Bytes(ByteBuf),
    MaybeBytes(Option<ByteBuf>),
    List(Vec<ByteBuf>),
    Pairs(Vec<(ByteBuf, ByteBuf)>),
    MaybePair(Option<(ByteBuf, ByteBuf)>),
    Names(Vec<String>),
    Stats(Stats),
    Failed(Failure),
}

/// Why a request failed in the manager.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Failure {
    Panicked {
        message: String,
        location: Option<String>,
    },
    NoSuchObject {
        id: u64,
    },
    WrongKind {
        id: u64,
        is: Kind,
        wanted: String,
    },
    OutOfRange {
        index: u64,
        len: u64,
    },
    Empty,
    Full,
    TimedOut {
        timeout: Duration,
    },
    NotOwner {
        what: Kind,
    },
    SemaphoreOverflow {
        bound: u32,
    },
    BrokenBarrier,
    TaskDoneTooOften,
    Decode {
        type_name: String,
        reason: String,
    },
    Encode {
        type_name: String,
        reason: String,
    },
    BadEntry,
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; TAG_LEN];
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn a_sealed_message_opens_once_in_order_and_only_the_other_way() {
        let key = [7u8; 32];
        let (mut c, mut s) = (Seal::client(&key), Seal::server(&key));
        let mut m0 = frame(b"zero");
        c.seal(&mut m0);
        let mut m1 = frame(b"one");
        c.seal(&mut m1);
        // Out of order: refused.
        assert!(s.clone().open(&m1).is_err());
        assert_eq!(s.open(&m0), Ok(&b"zero"[..]));
        // Replayed: refused.
        assert_eq!(s.clone().open(&m0), Err(Forged::BadTag { seq: 1 }));
        assert_eq!(s.open(&m1), Ok(&b"one"[..]));
        // Reflected back to its sender: refused.
        let mut r = frame(b"zero");
        let mut c2 = Seal::client(&key);
        c2.seal(&mut r);
        assert!(Seal::client(&key).open(&r).is_err());
        // Tampered: refused; another key: refused; short: refused.
        let mut t = frame(b"zero");
        Seal::client(&key).seal(&mut t);
        *t.last_mut().unwrap() ^= 1;
        assert!(Seal::server(&key).open(&t).is_err());
        assert!(Seal::server(&[8u8; 32]).open(&m0).is_err());
        assert_eq!(Seal::server(&key).open(&[0u8; 5]), Err(Forged::Short));
    }
}
