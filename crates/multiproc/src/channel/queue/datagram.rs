//! What a producer sends: the datagram kinds and the inline size limits, and how a
//! consumer names what it cannot accept (everything a peer sends is untrusted).

use crate::error::Error;

/// The name a queue's errors carry.
pub(super) const WHAT: &str = "queue";

/// Smallest inline limit: messages up to this size always go inline.
pub(super) const INLINE_MIN: usize = 64 << 10;
/// Largest encoded message ever sent inline in its datagram (larger ones go by
/// memfd); also the size of every consumer thread's receive buffer.
pub(super) const INLINE_MAX: usize = 2 << 20;
/// Datagram kinds (first byte).
pub(super) const INLINE: u8 = 0;
pub(super) const IN_MEMFD: u8 = 1;
/// Socket send buffer requested (the kernel caps it at `net.core.wmem_max`).
pub(super) const SEND_BUFFER: usize = 4 << 20;

/// The error for a datagram or spilled record a producer got wrong.
pub(super) fn bad(what: &str) -> Error {
    Error::Protocol {
        pid: 0,
        detail: format!("a queue producer sent {what}"),
    }
}
