//! Waiting on many descriptors at once: a `poll(2)` set whose entries carry a token
//! saying what each descriptor is (after mio's poll selector), and the one conversion
//! from a deadline to a `poll` timeout.
//!
//! The set holds descriptor *numbers*, not borrows: an event loop fills it under a lock,
//! releases the lock and waits. That is sound because only that loop closes the
//! descriptors; a number closed meanwhile would only be reported as `POLLNVAL` (the
//! kernel never dereferences it), never undefined behaviour.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

/// The `poll` timeout, in milliseconds, that ends at `deadline` (`-1`, wait forever, for
/// none). Rounded up, so that a sub-millisecond remainder still waits instead of
/// spinning.
pub(crate) fn timeout_ms(deadline: Option<Instant>) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        }
    }
}

/// What to wait for on a descriptor. Errors and hang-ups are always reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Readable (or closed, or failed).
    Read,
    /// Readable or writable.
    ReadWrite,
}

/// What `poll` reported for a descriptor it found ready (readable, writable, hung up,
/// failed or invalid: something).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ready(libc::c_short);

impl Ready {
    /// Room to write.
    pub(crate) fn writable(self) -> bool {
        self.0 & libc::POLLOUT != 0
    }
}

/// Descriptors to wait on, each with a token of type `T` (cleared and filled again for
/// every wait; its buffers are kept, so a wait allocates nothing once they are big
/// enough).
#[derive(Debug)]
pub(crate) struct PollSet<T> {
    fds: Vec<libc::pollfd>,
    tokens: Vec<T>,
}

impl<T> Default for PollSet<T> {
    fn default() -> Self {
        PollSet {
            fds: Vec::new(),
            tokens: Vec::new(),
        }
    }
}

impl<T: Copy> PollSet<T> {
    /// Empties the set, keeping its buffers.
    pub(crate) fn clear(&mut self) {
        self.fds.clear();
        self.tokens.clear();
    }

    /// Adds `fd`, to be reported as `token`.
    pub(crate) fn add(&mut self, fd: BorrowedFd<'_>, interest: Interest, token: T) {
        let events = match interest {
            Interest::Read => libc::POLLIN,
            Interest::ReadWrite => libc::POLLIN | libc::POLLOUT,
        };
        self.fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        });
        self.tokens.push(token);
    }

    /// Waits until a descriptor is ready or `deadline` passes (none: forever); returns
    /// how many are ready (0 on timeout or a signal).
    pub(crate) fn wait(&mut self, deadline: Option<Instant>) -> io::Result<usize> {
        super::fd::poll_raw(&mut self.fds, timeout_ms(deadline))
    }

    /// The descriptors the last [`wait`](Self::wait) found ready, in the order they
    /// were added.
    pub(crate) fn ready(&self) -> impl Iterator<Item = (T, Ready)> + '_ {
        self.fds
            .iter()
            .zip(&self.tokens)
            .filter(|(p, _)| p.revents != 0)
            .map(|(p, t)| (*t, Ready(p.revents)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[test]
    fn reports_ready_descriptors_by_token() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let mut set = PollSet::default();
        set.add(b.as_fd(), Interest::Read, 'b');
        set.add(c.as_fd(), Interest::Read, 'c');
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(set.wait(Some(soon)).unwrap(), 0);
        assert_eq!(set.ready().count(), 0);

        a.write_all(b"x").unwrap();
        assert_eq!(set.wait(None).unwrap(), 1);
        let ready: Vec<_> = set.ready().collect();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].0, 'b');
        assert!(!ready[0].1.writable());

        set.clear();
        set.add(c.as_fd(), Interest::ReadWrite, 'c');
        assert_eq!(set.wait(None).unwrap(), 1);
        assert!(set.ready().all(|(t, r)| t == 'c' && r.writable()));
    }

    #[test]
    fn timeouts_round_up() {
        assert_eq!(timeout_ms(None), -1);
        let past = Instant::now() - Duration::from_millis(5);
        assert_eq!(timeout_ms(Some(past)), 0);
        // Just under 300 ms left by the time it is read: rounded up, not down.
        let soon = Instant::now() + Duration::from_millis(300);
        assert!((1..=300).contains(&timeout_ms(Some(soon))));
    }
}
