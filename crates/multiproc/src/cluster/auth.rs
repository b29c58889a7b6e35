//! Every cluster message is signed: HMAC-SHA256 over its bytes with a key shared by
//! the caller and its nodes, checked in constant time before anything is decoded.
//!
//! Why it is required: a call names its task by code offsets in the program, so anyone
//! who can write to the Redis database could otherwise make a node jump to an offset of
//! their choosing. With the key, a message nobody signed is dropped unread.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the tag in front of every signed message.
const TAG: usize = 32;

/// The environment variable holding the shared key itself.
pub const KEY_ENV: &str = "MULTIPROC_CLUSTER_KEY";
/// The environment variable naming a file that holds the shared key.
pub const KEY_FILE_ENV: &str = "MULTIPROC_CLUSTER_KEY_FILE";

/// The key shared by a cluster's caller and nodes (at least 16 bytes; 32 random bytes,
/// e.g. `head -c 32 /dev/urandom | base64`, is right).
#[derive(Clone)]
pub struct Key(HmacSha256);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

impl Key {
    /// A key from its bytes: at least 16 of them.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Key> {
        let bytes = bytes.into();
        if bytes.len() < 16 {
            return Err(Error::Cluster {
                address: String::new(),
                detail: format!(
                    "the cluster key is {} bytes; it must have at least 16 (32 random bytes \
                     are right: head -c 32 /dev/urandom | base64)",
                    bytes.len()
                ),
            });
        }
        let mac = <HmacSha256 as Mac>::new_from_slice(&bytes).map_err(|e| Error::Cluster {
            address: String::new(),
            detail: format!("the cluster key cannot key HMAC-SHA256: {e}"),
        })?;
        Ok(Key(mac))
    }

    /// The key in a file (surrounding whitespace is not part of it).
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Key> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|e| Error::Cluster {
            address: String::new(),
            detail: format!("cannot read the cluster key file {}: {e}", path.display()),
        })?;
        Key::new(text.trim_ascii().to_vec())
    }

    /// The key from `MULTIPROC_CLUSTER_KEY`, or from the file named by
    /// `MULTIPROC_CLUSTER_KEY_FILE`.
    pub fn from_env() -> Result<Key> {
        if let Some(k) = std::env::var_os(KEY_ENV) {
            return Key::new(k.into_encoded_bytes().trim_ascii().to_vec());
        }
        if let Some(path) = std::env::var_os(KEY_FILE_ENV) {
            return Key::from_file(path);
        }
        Err(Error::Cluster {
            address: String::new(),
            detail: format!(
                "no cluster key: set {KEY_ENV} (or {KEY_FILE_ENV} to a file holding it) to the \
                 key shared by the caller and its nodes; every message is signed with it"
            ),
        })
    }

    fn mac(&self, context: &[u8], body: &[u8]) -> HmacSha256 {
        let mut mac = self.0.clone();
        // The context (the stream the message belongs to) is signed too, so a message
        // cannot be replayed into another stream.
        mac.update(&(context.len() as u64).to_le_bytes());
        mac.update(context);
        mac.update(body);
        mac
    }

    /// `body` signed for `context`: the tag, then the body.
    pub(super) fn sign(&self, context: &[u8], body: &[u8]) -> Vec<u8> {
        let tag = self.mac(context, body).finalize().into_bytes();
        let mut out = Vec::with_capacity(TAG + body.len());
        out.extend_from_slice(&tag);
        out.extend_from_slice(body);
        out
    }

    /// The body of a signed message, if its tag is right for `context` (checked in
    /// constant time).
    pub(super) fn open<'a>(&self, context: &[u8], message: &'a [u8]) -> Option<&'a [u8]> {
        if message.len() < TAG {
            return None;
        }
        let (tag, body) = message.split_at(TAG);
        self.mac(context, body)
            .verify_slice(tag)
            .ok()
            .map(|()| body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_messages_open_only_with_the_key_and_context() {
        let key = Key::new(*b"0123456789abcdef0123456789abcdef").unwrap();
        let other = Key::new(*b"fedcba9876543210fedcba9876543210").unwrap();
        let msg = key.sign(b"calls", b"hello");
        assert_eq!(key.open(b"calls", &msg), Some(&b"hello"[..]));
        assert_eq!(key.open(b"answers", &msg), None, "another stream");
        assert_eq!(other.open(b"calls", &msg), None, "another key");
        let mut forged = msg.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(b"calls", &forged), None, "a changed body");
        assert_eq!(key.open(b"calls", &msg[..10]), None, "too short");
        assert!(Key::new(*b"short").is_err());
    }
}
