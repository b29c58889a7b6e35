//! The wire: how bytes travel between a parent and its children.
//!
//! Every message is one **frame**: an 8-byte little-endian length, then that many bytes
//! of [postcard](https://docs.rs/postcard)-encoded payload. Postcard was chosen because
//! its format is small (varint integers, no field names), stable (a documented 1.0
//! wire specification), fast, and decodes untrusted input without panicking or
//! pre-allocating from lengths it has not seen bytes for. Bulk byte payloads travel as
//! one length-prefixed run (`serde_bytes`), not element by element.
//!
//! A frame longer than the maximum (see [`set_max_frame_size`]) is refused before any
//! memory is reserved for it, and the body buffer grows only as bytes actually arrive,
//! so a garbage length costs nothing. `fuzz/` holds a `cargo fuzz` target over
//! [`FrameDecoder`] and the message decoder.

pub(crate) mod bytes;
mod codec;
pub(crate) mod fds;
mod frame;
pub(crate) mod message;
mod probe;
pub(crate) mod spare;
pub(crate) mod values;

pub(crate) use codec::{
    Values, decode, decode_task_value, encode, encode_captured, encode_task_value, encode_into, encode_reusing, encode_value,
};
pub use frame::{FrameDecoder, FrameError, HEADER_LEN};
pub(crate) use frame::{
    FrameReader, Next, Received, check_fd_count, poll_timeout, recv_frame, send_all,
    send_frame_with_fds, wait_readable,
};

use std::sync::atomic::{AtomicUsize, Ordering};

/// Default maximum frame size: 1 GiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1 << 30;

static MAX_FRAME_SIZE: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_FRAME_SIZE);

/// Sets the largest frame (one encoded argument or result, plus a few bytes of
/// envelope) this process will send or accept. Default: 1 GiB.
///
/// A child inherits the limit in force when it starts.
///
/// ```
/// multiproc::set_max_frame_size(64 << 20);
/// assert_eq!(multiproc::max_frame_size(), 64 << 20);
/// # multiproc::set_max_frame_size(multiproc::DEFAULT_MAX_FRAME_SIZE);
/// ```
pub fn set_max_frame_size(bytes: usize) {
    MAX_FRAME_SIZE.store(bytes.max(64), Ordering::Relaxed);
}

/// The largest frame this process sends or accepts; see [`set_max_frame_size`].
pub fn max_frame_size() -> usize {
    MAX_FRAME_SIZE.load(Ordering::Relaxed)
}

/// Decodes a byte stream the way a parent decodes what a child sends, and reports
/// whether it held only well-formed messages. For fuzzing and tests: it must never
/// panic, whatever the bytes.
#[doc(hidden)]
pub fn check_untrusted_stream(bytes: &[u8], max_frame: usize) -> Result<usize, String> {
    let mut decoder = FrameDecoder::new(max_frame);
    let mut rest = bytes;
    let mut messages = 0;
    while !rest.is_empty() {
        let spare = decoder.spare();
        let n = spare.len().min(rest.len());
        spare[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        if let Some(frame) = decoder.advance(n).map_err(|e| e.to_string())? {
            message::open_frame::<message::Reply>(&frame).map_err(|e| e.to_string())?;
            message::open_frame::<message::Request>(&frame).ok();
            messages += 1;
        }
    }
    Ok(messages)
}
