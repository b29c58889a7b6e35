//! Bytes held in common by a message being sent and whoever keeps them until it is
//! answered (a pool's core, to run a dead worker's calls again), without a copy.

use std::ops::Deref;
use std::sync::Arc;

use crate::sys::lend::Lend;

/// Bytes shared by a message and the core that keeps them: a chunk's own buffer, or a
/// run of a job's plain arguments as they lie in their vector.
#[derive(Clone)]
pub(crate) enum SharedBytes {
    /// A buffer of its own (arguments encoded for the chunk).
    Buffer(Arc<Vec<u8>>),
    /// Part of a job's plain arguments (`sys::lend`), lent: nothing copies them.
    Plain(Lend),
}

impl SharedBytes {
    /// Gives its buffer to the next frame or chunk (see `wire::spare`) if nothing else
    /// holds it.
    pub(crate) fn recycle(self) {
        if let SharedBytes::Buffer(v) = self
            && let Ok(v) = Arc::try_unwrap(v)
        {
            super::spare::give(v);
        }
    }
}

impl Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SharedBytes::Buffer(v) => v,
            SharedBytes::Plain(lent) => lent,
        }
    }
}

impl Default for SharedBytes {
    fn default() -> Self {
        SharedBytes::Buffer(Arc::new(Vec::new()))
    }
}
