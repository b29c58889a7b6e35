//! Messages forged, tampered with, replayed and reflected at the socket level, by a
//! client that completes the real handshake and then writes frames of its own.

use std::time::Duration;

use serde::Serialize;
use serde_bytes::ByteBuf;

use super::Manager;
use super::protocol::{Hello, New, Reply, Request, Seal, TAG_LEN, VERSION, Welcome};
use crate::connection::{Client, Connection};
use crate::error::Error;

struct Raw {
    conn: Connection<(), ()>,
    seal: Seal,
}

impl Raw {
    /// Connected and authenticated, nothing said yet.
    fn connect(m: &Manager) -> Raw {
        let conn: Connection<(), ()> = Client::connect(m.address(), Some(m.key())).unwrap();
        let seal = Seal::client(conn.session_key().unwrap());
        Raw { conn, seal }
    }

    /// A properly signed frame.
    fn sealed(&mut self, msg: &impl Serialize) -> Vec<u8> {
        let mut frame = vec![0u8; TAG_LEN];
        crate::wire::encode_into(msg, &mut frame).unwrap();
        self.seal.seal(&mut frame);
        frame
    }

    fn reply<T: serde::de::DeserializeOwned>(&mut self) -> crate::Result<T> {
        let frame = self.conn.recv_bytes_timeout(Duration::from_secs(5))?;
        let body = self.seal.open(&frame).expect("the manager signs its replies");
        crate::wire::decode(body)
    }

    fn hello(&mut self, build: &[u8]) -> Welcome {
        let mut session = [0u8; 16];
        getrandom::getrandom(&mut session).unwrap();
        let hello = Hello {
            version: VERSION,
            build: ByteBuf::from(build.to_vec()),
            session,
        };
        let f = self.sealed(&hello);
        self.conn.send_bytes(&f).unwrap();
        self.reply().unwrap()
    }

    fn greeted(m: &Manager) -> Raw {
        let mut raw = Raw::connect(m);
        assert!(matches!(
            raw.hello(crate::sys::build_id::build_id()),
            Welcome::Ok { .. }
        ));
        raw
    }

    /// Whether the manager closed this connection (rather than answer).
    fn closed(&mut self) -> bool {
        matches!(
            self.conn.recv_bytes_timeout(Duration::from_secs(5)),
            Err(Error::Closed { .. })
        )
    }
}

fn manager() -> Manager {
    Manager::builder().start_in_thread().unwrap()
}

#[test]
fn a_forged_message_is_refused_counted_and_closes_the_connection() {
    let m = manager();
    let mut raw = Raw::greeted(&m);
    // A message signed with a key that is not the session's.
    let mut forged = vec![0u8; TAG_LEN];
    crate::wire::encode_into(&Request::Shutdown, &mut forged).unwrap();
    Seal::client(&[9u8; 32]).seal(&mut forged);
    raw.conn.send_bytes(&forged).unwrap();
    assert!(raw.closed());
    let stats = m.stats().unwrap();
    assert_eq!(stats.refused, 1, "{stats:?}");
    // A forged hello, too: nothing is decoded before the tag is checked.
    let mut raw = Raw::connect(&m);
    raw.conn.send_bytes(&[0u8; 40]).unwrap();
    assert!(raw.closed());
    assert_eq!(m.stats().unwrap().refused, 2);
    // A short message.
    let mut raw = Raw::greeted(&m);
    raw.conn.send_bytes(b"tiny").unwrap();
    assert!(raw.closed());
    assert_eq!(m.stats().unwrap().refused, 3);
    // The manager still serves (the shutdown above never ran).
    assert!(m.dict::<u8, u8>().is_ok());
    m.shutdown().unwrap();
}

#[test]
fn a_tampered_message_changes_nothing() {
    let m = manager();
    let before = m.stats().unwrap().objects;
    let mut raw = Raw::greeted(&m);
    let mut frame = raw.sealed(&Request::Create(New::List(vec![ByteBuf::from(vec![1])])));
    *frame.last_mut().unwrap() ^= 0x01;
    raw.conn.send_bytes(&frame).unwrap();
    assert!(raw.closed());
    let after = m.stats().unwrap();
    assert_eq!(after.objects, before, "no object was made");
    assert_eq!(after.refused, 1);
    m.shutdown().unwrap();
}

#[test]
fn a_replayed_or_reflected_message_is_refused() {
    let m = manager();
    let before = m.stats().unwrap().objects;
    let mut raw = Raw::greeted(&m);
    let frame = raw.sealed(&Request::Create(New::Dict));
    raw.conn.send_bytes(&frame).unwrap();
    assert!(matches!(raw.reply::<Reply>().unwrap(), Reply::Id(_)));
    assert_eq!(m.stats().unwrap().objects, before + 1);
    // The same bytes again: its sequence number is spent.
    raw.conn.send_bytes(&frame).unwrap();
    assert!(raw.closed());
    let s = m.stats().unwrap();
    assert_eq!(s.refused, 1);
    // The connection closed, so its client's object went with it.
    assert_eq!(s.objects, before);

    // A reply of the manager sent back to it: signed, but for the other direction.
    let mut raw = Raw::connect(&m);
    let mut session = [0u8; 16];
    getrandom::getrandom(&mut session).unwrap();
    let hello = Hello {
        version: VERSION,
        build: ByteBuf::from(crate::sys::build_id::build_id().to_vec()),
        session,
    };
    let f = raw.sealed(&hello);
    raw.conn.send_bytes(&f).unwrap();
    let welcome = raw.conn.recv_bytes_timeout(Duration::from_secs(5)).unwrap();
    raw.conn.send_bytes(&welcome).unwrap();
    assert!(raw.closed());
    assert_eq!(m.stats().unwrap().refused, 2);
    m.shutdown().unwrap();
}

#[test]
fn a_client_of_another_build_is_refused_before_any_request() {
    let m = manager();
    let mut raw = Raw::connect(&m);
    match raw.hello(b"another build") {
        Welcome::OtherBuild { build, .. } => assert_eq!(build.as_slice(), crate::sys::build_id::build_id()),
        other => panic!("{other:?}"),
    }
    assert!(raw.closed());
    // Not a forgery: nothing was refused as such.
    assert_eq!(m.stats().unwrap().refused, 0);
    m.shutdown().unwrap();
}
