//! Waiting on several processes and channels at once: [`wait_ready`], Python's
//! `multiprocessing.connection.wait`.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};

use crate::error::{Error, Result};

/// Waits until at least one of `handles` is ready, or `timeout` passes (`None`: as long
/// as it takes), and returns the positions in `handles` of all that are ready, in
/// order; empty if the time ran out first.
///
/// Ready means:
/// - a [`Process`](crate::Process): it has ended ([`join`](crate::Process::join) will
///   not wait);
/// - a [`PipeEnd`](crate::PipeEnd): a message is arriving, or the other end closed
///   ([`recv`](crate::PipeEnd::recv) then returns [`Error::Closed`]);
/// - a [`Queue`](crate::Queue) (or `JoinableQueue`, `SimpleQueue`): an item is there,
///   or every producer has closed. Another consumer may take the item first.
/// - a [`PipeReader`](crate::PipeReader): as a `PipeEnd`;
/// - a [`Listener`](crate::connection::Listener): a client is waiting to be accepted
///   ([`accept`](crate::connection::Listener::accept) still runs the handshake, which
///   may wait or fail);
/// - a [`Connection`](crate::connection::Connection): a message is arriving, or the peer
///   closed.
///
/// Anything else that implements [`AsFd`] (a socket, a pipe, an eventfd, a pidfd) is
/// ready when its descriptor is readable or reports an error or a hang-up. A signal
/// that interrupts the wait does not end it. An empty list returns at once.
///
/// ```
/// use std::time::Duration;
/// use multiproc::{Pipe, PipeEnd, Process, wait_ready};
///
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
/// fn answer(mut end: PipeEnd<u32>) { end.send(&42).unwrap() }
///
/// # fn main() -> multiproc::Result<()> {
/// let slow = Process::start(nap, 10_000)?;
/// let (mut here, there) = Pipe::<u32>::new()?;
/// let quick = Process::start(answer, there)?;
///
/// // The pipe becomes ready; the sleeper does not.
/// let ready = wait_ready(&[&slow, &here], None)?;
/// assert_eq!(ready, [1]);
/// assert_eq!(here.recv()?, 42);
///
/// quick.join()?;
/// slow.kill()?;
/// assert_eq!(wait_ready(&[&slow], Some(Duration::from_secs(10)))?, [0]);
/// # let _ = slow.join();
/// # Ok(()) }
/// ```
pub fn wait_ready(handles: &[&dyn AsFd], timeout: Option<Duration>) -> Result<Vec<usize>> {
    if handles.is_empty() {
        return Ok(Vec::new());
    }
    // A timeout too large to represent waits as long as it takes.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut fds: Vec<PollFd<'_>> = handles
        .iter()
        .map(|h| PollFd::new(h.as_fd(), PollFlags::POLLIN))
        .collect();
    loop {
        match poll(&mut fds, crate::wire::poll_timeout(deadline)) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(Vec::new());
                }
            }
            Ok(_) => {
                return Ok(fds
                    .iter()
                    .enumerate()
                    // POLLIN, or POLLHUP/POLLERR/POLLNVAL: a read does not wait either.
                    .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                    .map(|(i, _)| i)
                    .collect());
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::io("waiting for processes and channels", e)),
        }
    }
}
