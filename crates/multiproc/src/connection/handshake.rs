//! The handshake that opens every connection: a greeting from the listener that says
//! whether it wants a key, then (with a key) a mutual HMAC-SHA256 challenge-response.
//!
//! ```text
//! listener -> client   Hello: magic, version, mode, challenge_l (32 random bytes)
//!                      (without a key: Hello, then the client's Confirm, and done)
//! client   -> listener Answer: challenge_c (32 random bytes), HMAC(key, "client" | l | c)
//! listener -> client   Welcome: HMAC(key, "listener" | l | c)    or Refused
//! client   -> listener Confirm                                   or Refused
//! ```
//!
//! Each side proves it holds the key by a MAC over a challenge the *other* side just drew,
//! so a recorded exchange is worth nothing later; the two MACs carry different labels,
//! so one side's answer cannot be reflected back as the other's (an attacker cannot make
//! the listener answer its own challenge on a second connection). The confirmation makes
//! a failure on either side fail on both: the listener's `accept` returns only once the
//! client has checked the listener, too. Both challenges and the key derive a session key
//! unique to the connection, for layers above that sign every message.
//!
//! This file holds the byte layouts and checks (no I/O, unit-tested); `drive_*` run them
//! over a socket with a deadline.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::AuthKey;
use crate::error::{Error, Result};
use crate::wire::{self, FrameDecoder, Received};

type HmacSha256 = Hmac<Sha256>;

/// Bytes in a challenge: fresh from the OS for every connection.
pub(crate) const CHALLENGE_LEN: usize = 32;
/// Bytes in an HMAC-SHA256 tag, and in a session key.
pub(crate) const MAC_LEN: usize = 32;
/// The largest handshake message: before the peer is authenticated, no frame may make us
/// allocate more than this.
const MAX_HANDSHAKE_FRAME: usize = 256;

const MAGIC: &[u8] = b"multiproc-connection";
const VERSION: u8 = 1;
const MODE_OPEN: u8 = 0;
const MODE_HMAC_SHA256: u8 = 1;

const ANSWER: u8 = b'A';
const WELCOME: u8 = b'W';
const CONFIRM: u8 = b'K';
const REFUSED: u8 = b'F';

const LABEL_CLIENT: &[u8] = b"multiproc/connection/client\0";
const LABEL_LISTENER: &[u8] = b"multiproc/connection/listener";
const LABEL_SESSION: &[u8] = b"multiproc/connection/session\0";

/// A random challenge from the OS.
pub(crate) type Challenge = [u8; CHALLENGE_LEN];
/// A per-connection secret both ends derived from the key and both challenges.
pub(crate) type SessionKey = [u8; MAC_LEN];

/// Fills `buf` from the OS's random source (`getrandom(2)`).
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf)
        .map_err(|e| Error::io("drawing random bytes from the OS", std::io::Error::other(e.to_string())))
}

fn challenge() -> Result<Challenge> {
    let mut c = [0u8; CHALLENGE_LEN];
    random_bytes(&mut c)?;
    Ok(c)
}

fn mac(key: &AuthKey, label: &[u8], listener: &Challenge, client: &Challenge) -> HmacSha256 {
    // HMAC takes a key of any length; `AuthKey` is never empty.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    // Label and challenges have fixed lengths, so the concatenation is unambiguous.
    m.update(label);
    m.update(listener);
    m.update(client);
    m
}

fn tag(key: &AuthKey, label: &[u8], l: &Challenge, c: &Challenge) -> [u8; MAC_LEN] {
    mac(key, label, l, c).finalize().into_bytes().into()
}

/// Whether `tag` is right, compared in constant time.
fn verify(key: &AuthKey, label: &[u8], l: &Challenge, c: &Challenge, tag: &[u8]) -> bool {
    mac(key, label, l, c).verify_slice(tag).is_ok()
}

/// The session key of a connection opened with these challenges.
pub(crate) fn session_key(key: &AuthKey, l: &Challenge, c: &Challenge) -> SessionKey {
    tag(key, LABEL_SESSION, l, c)
}

/// The listener's greeting: whether it authenticates, and its challenge if so.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    Open,
    Challenge(Challenge),
}

pub(crate) fn encode_hello(hello: &Hello) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(VERSION);
    match hello {
        Hello::Open => out.push(MODE_OPEN),
        Hello::Challenge(c) => {
            out.push(MODE_HMAC_SHA256);
            out.extend_from_slice(c);
        }
    }
    out
}

pub(crate) fn decode_hello(msg: &[u8]) -> std::result::Result<Hello, String> {
    let Some(rest) = msg.strip_prefix(MAGIC) else {
        return Err("the peer is not a multiproc listener (its greeting is not ours)".into());
    };
    match rest {
        [VERSION, MODE_OPEN] => Ok(Hello::Open),
        [VERSION, MODE_HMAC_SHA256, c @ ..] if c.len() == CHALLENGE_LEN => {
            Ok(Hello::Challenge(c.try_into().unwrap_or([0; CHALLENGE_LEN])))
        }
        [v, ..] if *v != VERSION => Err(format!(
            "the listener speaks connection protocol version {v}, this build speaks {VERSION}"
        )),
        _ => Err("the listener's greeting is malformed".into()),
    }
}

/// The client's answer to the listener's challenge, with its own challenge.
pub(crate) fn encode_answer(key: &AuthKey, l: &Challenge, c: &Challenge) -> Vec<u8> {
    let mut out = vec![ANSWER];
    out.extend_from_slice(c);
    out.extend_from_slice(&tag(key, LABEL_CLIENT, l, c));
    out
}

/// The client's challenge, if its answer proves it holds `key`.
pub(crate) fn check_answer(
    key: &AuthKey,
    l: &Challenge,
    msg: &[u8],
) -> std::result::Result<Challenge, &'static str> {
    match msg {
        [ANSWER, rest @ ..] if rest.len() == CHALLENGE_LEN + MAC_LEN => {
            let (c, t) = rest.split_at(CHALLENGE_LEN);
            let c: Challenge = c.try_into().unwrap_or([0; CHALLENGE_LEN]);
            if verify(key, LABEL_CLIENT, l, &c, t) {
                Ok(c)
            } else {
                Err("the client answered the challenge with another key (the keys differ)")
            }
        }
        _ => Err("the client's answer to the challenge is malformed"),
    }
}

/// The listener's verdict: its own proof, or a refusal.
pub(crate) fn encode_welcome(key: &AuthKey, l: &Challenge, c: &Challenge) -> Vec<u8> {
    let mut out = vec![WELCOME];
    out.extend_from_slice(&tag(key, LABEL_LISTENER, l, c));
    out
}

pub(crate) fn refusal() -> Vec<u8> {
    vec![REFUSED]
}

pub(crate) fn confirmation() -> Vec<u8> {
    vec![CONFIRM]
}

/// Checks the listener's verdict on the client's side.
pub(crate) fn check_welcome(
    key: &AuthKey,
    l: &Challenge,
    c: &Challenge,
    msg: &[u8],
) -> std::result::Result<(), &'static str> {
    match msg {
        [REFUSED] => Err("the listener refused our answer: its key differs from ours"),
        [WELCOME, t @ ..] if t.len() == MAC_LEN => {
            if verify(key, LABEL_LISTENER, l, c, t) {
                Ok(())
            } else {
                Err("the listener answered our challenge with another key (the keys differ)")
            }
        }
        _ => Err("the listener's verdict is malformed"),
    }
}

/// Checks the client's confirmation on the listener's side.
pub(crate) fn check_confirmation(msg: &[u8]) -> std::result::Result<(), &'static str> {
    match msg {
        [CONFIRM] => Ok(()),
        [REFUSED] => Err("the client found that this listener's key differs from its own"),
        _ => Err("the client's confirmation is malformed"),
    }
}

fn failed(peer: &str, detail: impl Into<String>) -> Error {
    Error::AuthenticationFailed {
        peer: peer.to_owned(),
        detail: detail.into(),
    }
}

/// One handshake frame, with a deadline. `waiting_for` says what, for the error;
/// `if_closed` what a close before it means, if more can be said than that it closed.
fn read(
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
    timeout: Duration,
    peer: &str,
    waiting_for: &str,
    if_closed: Option<&str>,
) -> Result<Vec<u8>> {
    let mut decoder = FrameDecoder::new(MAX_HANDSHAKE_FRAME);
    match wire::recv_frame(sock, &mut decoder, deadline) {
        Ok(Received::Frame(bytes, _fds)) => Ok(bytes),
        Ok(Received::TimedOut) => Err(failed(
            peer,
            format!("no {waiting_for} within {timeout:?} (the handshake timeout)"),
        )),
        Ok(Received::Closed) => Err(failed(
            peer,
            if_closed.map_or_else(
                || format!("the peer closed the connection before sending its {waiting_for}"),
                str::to_owned,
            ),
        )),
        Err(Error::FrameTooLarge { len, .. }) => Err(failed(
            peer,
            format!(
                "the peer announced a {len}-byte {waiting_for}; a handshake message is at most \
                 {MAX_HANDSHAKE_FRAME} bytes (is it a multiproc connection?)"
            ),
        )),
        Err(e) => Err(e),
    }
}

fn write(sock: BorrowedFd<'_>, msg: &[u8]) -> Result<()> {
    wire::send_frame_with_fds(sock, msg, &[], MAX_HANDSHAKE_FRAME)
}

/// The deadline `timeout` from now; `None` (no deadline) for a timeout too long to
/// add to the clock, such as `Duration::MAX`.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// The listener's side. Returns the session key (`None` without a key).
pub(crate) fn drive_listener(
    sock: BorrowedFd<'_>,
    key: Option<&AuthKey>,
    timeout: Duration,
    peer: &str,
) -> Result<Option<SessionKey>> {
    let deadline = deadline_after(timeout);
    let Some(key) = key else {
        write(sock, &encode_hello(&Hello::Open))
            .map_err(|e| failed(peer, format!("could not send the greeting: {e}")))?;
        // Wait for the client's word, so that a client with a key fails this accept too.
        let confirmation = read(
            sock,
            deadline,
            timeout,
            peer,
            "confirmation",
            Some(
                "the client closed the connection after our greeting (it has a key and \
                 refuses a listener without one)",
            ),
        )?;
        check_confirmation(&confirmation).map_err(|why| failed(peer, why))?;
        return Ok(None);
    };
    let l = challenge()?;
    // A client that already left makes the write fail: report that as the handshake.
    write(sock, &encode_hello(&Hello::Challenge(l)))
        .map_err(|e| failed(peer, format!("could not send the challenge: {e}")))?;
    let answer = read(
        sock,
        deadline,
        timeout,
        peer,
        "answer to the challenge",
        Some(
            "the client closed the connection without answering the challenge (it has no key, \
             or refuses ours)",
        ),
    )?;
    let c = match check_answer(key, &l, &answer) {
        Ok(c) => c,
        Err(why) => {
            let _ = write(sock, &refusal());
            return Err(failed(peer, why));
        }
    };
    write(sock, &encode_welcome(key, &l, &c))
        .map_err(|e| failed(peer, format!("could not send the verdict: {e}")))?;
    let confirmation = read(sock, deadline, timeout, peer, "confirmation", None)?;
    check_confirmation(&confirmation).map_err(|why| failed(peer, why))?;
    Ok(Some(session_key(key, &l, &c)))
}

/// The client's side, by `deadline` (set before connecting: one deadline covers the
/// connect and the handshake; `timeout` is what it was, for errors). Returns the
/// session key (`None` without a key).
pub(crate) fn drive_client(
    sock: BorrowedFd<'_>,
    key: Option<&AuthKey>,
    deadline: Option<Instant>,
    timeout: Duration,
    peer: &str,
) -> Result<Option<SessionKey>> {
    let hello = read(sock, deadline, timeout, peer, "greeting", None)?;
    let hello = decode_hello(&hello).map_err(|detail| Error::Connection {
        address: peer.to_owned(),
        detail,
    })?;
    match (hello, key) {
        (Hello::Open, None) => {
            write(sock, &confirmation())
                .map_err(|e| failed(peer, format!("could not confirm: {e}")))?;
            Ok(None)
        }
        (Hello::Open, Some(_)) => Err(failed(
            peer,
            "the listener has no key, so it cannot prove who it is; we were given a key and \
             refuse to talk to an unauthenticated listener",
        )),
        (Hello::Challenge(_), None) => Err(failed(
            peer,
            "the listener requires a key and we were given none (pass the listener's key)",
        )),
        (Hello::Challenge(l), Some(key)) => {
            let c = challenge()?;
            write(sock, &encode_answer(key, &l, &c))
                .map_err(|e| failed(peer, format!("could not send our answer: {e}")))?;
            let verdict = read(sock, deadline, timeout, peer, "verdict", None)?;
            if let Err(why) = check_welcome(key, &l, &c, &verdict) {
                if verdict != refusal() {
                    let _ = write(sock, &refusal());
                }
                return Err(failed(peer, why));
            }
            write(sock, &confirmation())
                .map_err(|e| failed(peer, format!("could not confirm: {e}")))?;
            Ok(Some(session_key(key, &l, &c)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: &[u8]) -> AuthKey {
        AuthKey::new(b.to_vec()).unwrap()
    }

    #[test]
    fn a_full_exchange_with_one_key_agrees_on_a_session_key() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let l = [1u8; CHALLENGE_LEN];
        let c = [2u8; CHALLENGE_LEN];
        let hello = encode_hello(&Hello::Challenge(l));
        assert_eq!(decode_hello(&hello), Ok(Hello::Challenge(l)));
        let answer = encode_answer(&k, &l, &c);
        assert_eq!(check_answer(&k, &l, &answer), Ok(c));
        let welcome = encode_welcome(&k, &l, &c);
        assert_eq!(check_welcome(&k, &l, &c, &welcome), Ok(()));
        assert_eq!(check_confirmation(&confirmation()), Ok(()));
        assert_eq!(session_key(&k, &l, &c), session_key(&k, &l, &c));
        assert_ne!(session_key(&k, &l, &c), session_key(&k, &c, &l));
        assert_ne!(session_key(&k, &l, &c), tag(&k, LABEL_LISTENER, &l, &c));
    }

    #[test]
    fn another_key_fails_on_each_side() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let other = key(b"fedcba9876543210fedcba9876543210");
        let l = [1u8; CHALLENGE_LEN];
        let c = [2u8; CHALLENGE_LEN];
        assert!(check_answer(&k, &l, &encode_answer(&other, &l, &c)).is_err());
        assert!(check_welcome(&k, &l, &c, &encode_welcome(&other, &l, &c)).is_err());
        assert!(check_welcome(&k, &l, &c, &refusal()).is_err());
        assert!(check_confirmation(&refusal()).is_err());
        // An answer to another challenge is refused (no replay).
        let stale = encode_answer(&k, &[9u8; CHALLENGE_LEN], &c);
        assert!(check_answer(&k, &l, &stale).is_err());
    }

    #[test]
    fn the_listeners_proof_is_not_the_clients_answer() {
        // Reflection: the listener's own tag over (l, c) must not pass as a client answer.
        let k = key(b"0123456789abcdef0123456789abcdef");
        let l = [1u8; CHALLENGE_LEN];
        let c = [2u8; CHALLENGE_LEN];
        let mut reflected = vec![ANSWER];
        reflected.extend_from_slice(&c);
        reflected.extend_from_slice(&tag(&k, LABEL_LISTENER, &l, &c));
        assert!(check_answer(&k, &l, &reflected).is_err());
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let l = [1u8; CHALLENGE_LEN];
        for msg in [
            &b""[..],
            b"A",
            b"W",
            b"multiproc-connection",
            b"multiproc-connection\x01",
            b"multiproc-connection\x01\x01short",
            b"multiproc-connection\x02\x00",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(decode_hello(msg).is_err());
            assert!(check_answer(&k, &l, msg).is_err());
            assert!(check_welcome(&k, &l, &l, msg).is_err());
            assert!(check_confirmation(msg).is_err());
        }
        assert!(
            decode_hello(b"multiproc-connection\x07\x00")
                .unwrap_err()
                .contains("version 7")
        );
        assert_eq!(
            decode_hello(&encode_hello(&Hello::Open)),
            Ok(Hello::Open)
        );
    }
}
