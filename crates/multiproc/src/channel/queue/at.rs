//! The shared state of one queue: the words after the spill lock in its segment, and
//! the queue's states (the values of [`STATE`]).

use crate::sync::MUTEX_SIZE;

/// Items put and not yet taken (`qsize`).
pub(super) const COUNT: usize = MUTEX_SIZE;
/// `maxsize` (0: unbounded), fixed at creation.
pub(super) const MAXSIZE: usize = MUTEX_SIZE + 4;
/// [`OPEN`], [`DRAINING`] or [`STOPPED`].
pub(super) const STATE: usize = MUTEX_SIZE + 8;
/// 1 while the spill log holds items, and the eventfd readable with it. Both
/// change only under the lock, in an order that a death at any step leaves
/// harmless; the next holder after a death sets them from `head < tail` again.
pub(super) const SPILLED: usize = MUTEX_SIZE + 12;
/// Producers waiting for a bounded queue to have room.
pub(super) const PUT_WAITERS: usize = MUTEX_SIZE + 16;
/// Bumped whenever a waiting producer should look again (an item taken, a
/// shutdown): the word such producers sleep on.
pub(super) const ROOM: usize = MUTEX_SIZE + 20;
/// Spill log: offset of the oldest record (u64).
pub(super) const HEAD: usize = MUTEX_SIZE + 24;
/// Spill log: offset after the newest committed record (u64).
pub(super) const TAIL: usize = MUTEX_SIZE + 32;
/// Bytes after the lock.
pub(super) const LEN: usize = 40;

/// Puts and gets work.
pub(super) const OPEN: u32 = 0;
/// Shut down: no more puts; getters drain what is left.
pub(super) const DRAINING: u32 = 1;
/// Shut down immediately: no more puts, no more gets.
pub(super) const STOPPED: u32 = 2;
