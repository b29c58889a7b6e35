//! The options every pool builder shares, stored once ([`PoolOptions`]), and the
//! macro that writes each builder's setters for them ([`option_setters`]).
//!
//! Four builders (the process pool's, the thread pool's, the cluster's, MPI's) take a
//! chunk size and a progress report; three a task timeout; two a retry count. What
//! the options store, their defaults and the setters' bodies live here; each builder
//! keeps its own rustdoc for them, because what a timeout or a retry does differs
//! from pool to pool (a worker killed here, a rank left idle there).

use std::time::Duration;

use super::ChunkSize;
use super::progress::Progress;

/// The options a pool builder shares with the others. Each builder holds one and
/// reads what it supports when it builds.
#[derive(Clone, Debug, Default)]
pub(crate) struct PoolOptions {
    /// How calls are grouped into chunks.
    pub(crate) chunk: ChunkSize,
    /// Progress reporting for `map`, `map_results` and `imap`.
    pub(crate) progress: Progress,
    /// How long one call may run.
    pub(crate) task_timeout: Option<Duration>,
    /// Runs of a call beyond the first after its worker was lost.
    pub(crate) retries: u32,
}

impl PoolOptions {
    pub(crate) fn chunk_size(&mut self, chunk: ChunkSize) {
        self.chunk = chunk;
    }

    pub(crate) fn progress(&mut self, progress: Progress) {
        self.progress = progress;
    }

    pub(crate) fn task_timeout(&mut self, timeout: Duration) {
        self.task_timeout = Some(timeout);
    }

    pub(crate) fn retries(&mut self, n: u32) {
        self.retries = n;
    }
}

/// Writes a builder's setters for shared options: each `fn name(arg: Type);` with the
/// doc comments above it becomes `pub fn name(mut self, arg: Type) -> Self`, storing
/// the option in the builder's [`PoolOptions`] field `$field`.
macro_rules! option_setters {
    ($field:ident; $( $(#[$doc:meta])* fn $name:ident($arg:ident: $ty:ty); )*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $arg: $ty) -> Self {
                self.$field.$name($arg);
                self
            }
        )*
    };
}
pub(crate) use option_setters;
