//! Raw process creation for the benchmark floors. Every `unsafe` of this crate is here.
//!
//! These measure what the kernel charges for a process, with nothing of multiproc in
//! the way: `fork()` + `waitpid()`, and the same with 8 bytes sent back through a pipe.
//! The children call only async-signal-safe functions (`write`, `_exit`), as a child of
//! a multithreaded parent must (this process has multiproc's launcher thread).

use std::io;

/// Forks a child that exits at once with `_exit(0)`, and reaps it.
pub fn fork_and_wait() -> io::Result<()> {
    // SAFETY: fork is sound to call; in the child we call only `_exit`, which is
    // async-signal-safe, so no lock held by another thread of ours can be touched.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: `_exit` has no preconditions and skips atexit handlers and
        // destructors, which belong to the parent's state.
        0 => unsafe { libc::_exit(0) },
        pid => reap(pid),
    }
}

/// Forks a child that writes `value` (8 bytes) into a pipe and exits; reads it back and
/// reaps the child. Returns the value read.
pub fn fork_pipe_u64(value: u64) -> io::Result<u64> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let [rd, wr] = fds;
    let bytes = value.to_le_bytes();
    // SAFETY: as in `fork_and_wait`; the child calls only `write` and `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: `bytes` is an 8-byte array alive for the call; 8 bytes fit in a pipe's
        // buffer, so one write is atomic and complete. `_exit` as above.
        unsafe {
            let ok = libc::write(wr, bytes.as_ptr().cast(), bytes.len()) == 8;
            libc::_exit(if ok { 0 } else { 1 })
        }
    }
    // SAFETY: `wr` is our open write end; closing it lets `read` see end of stream if
    // the child dies without writing.
    unsafe { libc::close(wr) };
    if pid == -1 {
        let e = io::Error::last_os_error();
        // SAFETY: `rd` is our open read end, closed once.
        unsafe { libc::close(rd) };
        return Err(e);
    }
    let mut buf = [0u8; 8];
    let mut got = 0;
    let read = loop {
        // SAFETY: reads at most the remaining bytes of `buf` into it.
        let n = unsafe { libc::read(rd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        match n {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            -1 => break Err(io::Error::last_os_error()),
            0 => break Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            n => {
                got += n as usize;
                if got == buf.len() {
                    break Ok(u64::from_le_bytes(buf));
                }
            }
        }
    };
    // SAFETY: `rd` is our open read end, closed once.
    unsafe { libc::close(rd) };
    reap(pid)?;
    read
}

/// Waits for child `pid`; an error unless it exited with code 0.
fn reap(pid: libc::pid_t) -> io::Result<()> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status of our own child into `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "raw child {pid} ended with wait status {status:#x}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_floors_work() {
        fork_and_wait().unwrap();
        assert_eq!(
            fork_pipe_u64(0x0123_4567_89ab_cdef).unwrap(),
            0x0123_4567_89ab_cdef
        );
    }
}
