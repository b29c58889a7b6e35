//! Raw process creation for the benchmark floors. Every `unsafe` of this crate is here.
//! (The cluster workloads' process controls, a parent-death signal and a signal to a
//! child, are in crate `multiproc-testkit` with the Redis and nodes they start.)
//!
//! These measure what the kernel charges, with nothing of multiproc in the way:
//! `fork()` + `waitpid()`, bytes through pipes between two processes, a child building
//! a large buffer and piping it back. The children call only async-signal-safe
//! functions (`read`, `write`, `memset`, `_exit`), as a child of a multithreaded parent
//! must (this process has multiproc's launcher thread); except [`RawChildren`]'s, which
//! run Rust code under the rule its documentation states.
// The only module of this crate that calls libc directly (see above).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU64, Ordering};

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

fn pipe() -> io::Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

fn close(fd: i32) {
    // SAFETY: every caller passes a descriptor it opened and closes it exactly once.
    unsafe { libc::close(fd) };
}

/// Writes all of `buf` to `fd` (the parent side; EINTR retried).
fn write_all(fd: i32, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writes at most `buf.len()` bytes from `buf`, which is alive.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes from `fd` (the parent side).
fn read_exact(fd: i32, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads at most the remaining bytes of `buf` into it.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        match n {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            -1 => return Err(io::Error::last_os_error()),
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            n => got += n as usize,
        }
    }
    Ok(())
}

/// In a raw child: reads `total` bytes from `fd` into `scratch` (async-signal-safe:
/// only `read`). `false` on error or early end of stream.
fn child_drain(fd: i32, scratch: &mut [u8], mut total: usize) -> bool {
    while total > 0 {
        let want = total.min(scratch.len());
        // SAFETY: reads at most `want` <= scratch.len() bytes into `scratch`, a buffer
        // allocated by the parent before fork (this child's copy).
        let n = unsafe { libc::read(fd, scratch.as_mut_ptr().cast(), want) };
        if n <= 0 {
            if n == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        total -= n as usize;
    }
    true
}

/// The raw floor for bandwidth: forks a child that reads `count` messages of
/// `msg.len()` bytes from a pipe and acknowledges with one byte; returns the time from
/// the first write to the acknowledgement (the fork is outside it).
pub fn raw_pipe_transfer(msg: &[u8], count: usize) -> io::Result<std::time::Duration> {
    let (rd, wr) = pipe()?;
    let (ack_rd, ack_wr) = pipe()?;
    let mut scratch = vec![0u8; msg.len().max(1)];
    let total = msg.len() * count;
    // SAFETY: fork is sound; the child calls only read, write and _exit
    // (async-signal-safe) on buffers allocated before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ok = child_drain(rd, &mut scratch, total);
        let byte = [u8::from(ok)];
        // SAFETY: one byte from a live array into our pipe; `_exit` skips the parent's
        // atexit handlers and destructors.
        unsafe {
            libc::write(ack_wr, byte.as_ptr().cast(), 1);
            libc::_exit(if ok { 0 } else { 1 })
        }
    }
    close(rd);
    close(ack_wr);
    if pid == -1 {
        let e = io::Error::last_os_error();
        close(wr);
        close(ack_rd);
        return Err(e);
    }
    let t = std::time::Instant::now();
    let sent = (0..count).try_for_each(|_| write_all(wr, msg));
    let mut ack = [0u8; 1];
    let acked = sent.and_then(|()| read_exact(ack_rd, &mut ack));
    let elapsed = t.elapsed();
    close(wr);
    close(ack_rd);
    reap(pid)?;
    acked?;
    if ack[0] != 1 {
        return Err(io::Error::other("the raw child did not receive every byte"));
    }
    Ok(elapsed)
}

/// The raw floor for latency: forks a child that echoes 8 bytes `count` times through
/// two pipes; returns the time of the `count` round trips (the fork is outside it).
pub fn raw_pipe_round_trips(count: usize) -> io::Result<std::time::Duration> {
    let (to_rd, to_wr) = pipe()?;
    let (back_rd, back_wr) = pipe()?;
    // SAFETY: as in `raw_pipe_transfer`: the child calls only read, write and _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut b = [0u8; 8];
        let mut ok = true;
        for _ in 0..count {
            ok = child_drain(to_rd, &mut b, 8);
            // SAFETY: 8 bytes from a live array; a pipe write of 8 bytes is atomic.
            ok = ok && unsafe { libc::write(back_wr, b.as_ptr().cast(), 8) } == 8;
            if !ok {
                break;
            }
        }
        // SAFETY: as above.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }
    close(to_rd);
    close(back_wr);
    if pid == -1 {
        let e = io::Error::last_os_error();
        close(to_wr);
        close(back_rd);
        return Err(e);
    }
    let mut b = [0u8; 8];
    let t = std::time::Instant::now();
    let result = (0..count).try_for_each(|i| {
        write_all(to_wr, &(i as u64).to_le_bytes())?;
        read_exact(back_rd, &mut b)?;
        if u64::from_le_bytes(b) == i as u64 {
            Ok(())
        } else {
            Err(io::Error::other("the raw child echoed the wrong bytes"))
        }
    });
    let elapsed = t.elapsed();
    close(to_wr);
    close(back_rd);
    reap(pid)?;
    result?;
    Ok(elapsed)
}

/// In a raw child: writes all of `buf` to `fd` (async-signal-safe: only `write`).
/// `false` on error.
fn child_write_all(fd: i32, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: writes at most `buf.len()` bytes from `buf`, this child's copy of a
        // buffer allocated by the parent before fork.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

/// The raw floor for a large result: forks a child that, once told to go, fills `len`
/// fresh bytes with 1 and writes them into a pipe, which this process reads into a
/// fresh buffer. Returns the time from "go" to the last byte read (the fork is outside
/// it), and the bytes, for the caller to check.
///
/// The child's buffer is allocated here but never touched before the fork, so the
/// child faults in zeroed pages and fills them, as a task building its result does;
/// the reader, too, faults in the pages it receives into.
pub fn raw_child_builds_and_sends(len: usize) -> io::Result<(std::time::Duration, Vec<u8>)> {
    let (go_rd, go_wr) = pipe()?;
    let (rd, wr) = pipe()?;
    let mut build = vec![0u8; len];
    // SAFETY: as in `raw_pipe_transfer`; the child calls only read, memset (through
    // `write_bytes`; async-signal-safe since POSIX.1-2016), write and _exit, on memory
    // allocated before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut go = [0u8; 1];
        let mut ok = child_drain(go_rd, &mut go, 1);
        if ok {
            // SAFETY: `build` is this child's copy of a live `len`-byte buffer.
            unsafe { std::ptr::write_bytes(build.as_mut_ptr(), 1, len) };
            ok = child_write_all(wr, &build);
        }
        // SAFETY: as in `fork_and_wait`.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
    }
    close(go_rd);
    close(wr);
    drop(build);
    if pid == -1 {
        let e = io::Error::last_os_error();
        close(go_wr);
        close(rd);
        return Err(e);
    }
    let mut got = vec![0u8; len];
    let t = std::time::Instant::now();
    let result = write_all(go_wr, &[1]).and_then(|()| read_exact(rd, &mut got));
    let elapsed = t.elapsed();
    close(go_wr);
    close(rd);
    reap(pid)?;
    result?;
    Ok((elapsed, got))
}

/// CPU time (user + system) of the raw children reaped so far, in ns: procfs forgets a
/// process once it is reaped, so the benchmark's CPU figures add this.
static REAPED_CPU_NS: AtomicU64 = AtomicU64::new(0);

/// The CPU time of every raw child this process has reaped, in ns.
pub fn reaped_cpu_ns() -> u64 {
    REAPED_CPU_NS.load(Ordering::Relaxed)
}

/// Waits for child `pid` and counts its CPU time; an error unless it exited with code 0.
fn reap(pid: libc::pid_t) -> io::Result<()> {
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 writes the status and resource usage of our own child into
        // `status` and `usage`, both alive for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    REAPED_CPU_NS.fetch_add(ns(usage.ru_utime) + ns(usage.ru_stime), Ordering::Relaxed);
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "raw child {pid} ended with wait status {status:#x}"
        )))
    }
}

/// Raw children that run Rust code (the word count's floors) and write to this process
/// through a pipe each; reaped by [`RawChildren::wait`], or killed and reaped when
/// dropped.
///
/// Unlike the other floors here, these children allocate and read files after `fork`
/// in a process that has other threads. That is sound with glibc, whose `fork` takes
/// its allocator's locks around the fork and resets them in the child; the work must
/// take no other lock (no printing, no logging), and a panic in it ends the child with
/// code 101 without unwinding into the parent's state. multiproc's own fork start method
/// runs tasks under the same rule.
pub struct RawChildren {
    pids: Vec<libc::pid_t>,
    readers: Vec<std::fs::File>,
    /// The write end the children wait on before they start (see [`RawChildren::go`]);
    /// `-1` once used. Closing it unused ends them with code 1.
    go: i32,
}

impl RawChildren {
    /// Forks `n` children; child `i` waits for [`go`](RawChildren::go), runs `work(i,
    /// its pipe's write end)` and exits (code 0 if it returned `Ok`). This process reads
    /// child `i` from `readers()[i]`.
    pub fn fork(
        n: usize,
        work: impl Fn(usize, &mut std::fs::File) -> io::Result<()>,
    ) -> io::Result<RawChildren> {
        let (go_rd, go_wr) = pipe()?;
        let mut children = RawChildren {
            pids: Vec::with_capacity(n),
            readers: Vec::with_capacity(n),
            go: go_wr,
        };
        let forked = (0..n).try_for_each(|i| {
            let (rd, wr) = pipe()?;
            // SAFETY: as the type's documentation says, the child runs only code that
            // takes no lock but the allocator's, which glibc resets after fork.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                close(rd);
                close(go_wr);
                let mut byte = [0u8; 1];
                let code = if child_drain(go_rd, &mut byte, 1) {
                    // SAFETY: `wr` is this child's open write end, owned by this File
                    // alone.
                    let mut out = unsafe { std::fs::File::from_raw_fd(wr) };
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        work(i, &mut out).is_ok()
                    })) {
                        Ok(true) => 0,
                        Ok(false) => 1,
                        Err(_) => 101,
                    }
                } else {
                    1 // the parent gave up before `go`
                };
                // SAFETY: `_exit` skips the atexit handlers and destructors, which
                // belong to the parent's state.
                unsafe { libc::_exit(code) }
            }
            close(wr);
            if pid == -1 {
                let e = io::Error::last_os_error();
                close(rd);
                return Err(e);
            }
            children.pids.push(pid);
            // SAFETY: `rd` is our open read end, owned from here by this File alone.
            children
                .readers
                .push(unsafe { std::fs::File::from_raw_fd(rd) });
            Ok(())
        });
        close(go_rd);
        forked.map(|()| children)
    }

    /// Lets every child start its work (a byte each through the pipe they wait on).
    pub fn go(&mut self) -> io::Result<()> {
        let bytes = vec![1u8; self.pids.len()];
        let r = write_all(self.go, &bytes);
        close(self.go);
        self.go = -1;
        r
    }

    /// The read ends, in child order.
    pub fn readers(&mut self) -> &mut [std::fs::File] {
        &mut self.readers
    }

    /// Closes the read ends and reaps every child; an error if one did not exit with 0.
    pub fn wait(mut self) -> io::Result<()> {
        self.readers.clear();
        let pids = std::mem::take(&mut self.pids);
        let mut first = Ok(());
        for pid in pids {
            let r = reap(pid);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for RawChildren {
    fn drop(&mut self) {
        if self.go != -1 {
            close(self.go);
        }
        self.readers.clear();
        for &pid in &self.pids {
            // SAFETY: `pid` is our own child, not yet reaped (so not reused).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = reap(pid);
        }
    }
}

/// Which of `files` have data to read (or reached end of stream), waiting up to
/// `timeout_ms` (-1: as long as it takes).
pub fn poll_readable(files: &[&std::fs::File], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut fds: Vec<libc::pollfd> = files
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `fds` is a live array of `fds.len()` pollfd entries.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(fds.iter().map(|p| p.revents != 0).collect())
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
        raw_pipe_transfer(&[7u8; 100_000], 3).unwrap();
        raw_pipe_round_trips(10).unwrap();
        let (_, built) = raw_child_builds_and_sends(300_000).unwrap();
        assert!(built.len() == 300_000 && built.iter().all(|&b| b == 1));
    }

    #[test]
    fn raw_children_write_back_and_are_reaped_with_their_cpu() {
        use std::io::{Read, Write};
        let before = reaped_cpu_ns();
        let mut kids = RawChildren::fork(2, |i, out| {
            // Some CPU, so that the reaped total grows.
            let mut x = 1u64;
            for k in 0..20_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(k | 1));
            }
            out.write_all(&[i as u8 + 1; 3])?;
            std::hint::black_box(x);
            Ok(())
        })
        .unwrap();
        kids.go().unwrap();
        let mut got = Vec::new();
        for r in kids.readers() {
            let mut b = Vec::new();
            r.read_to_end(&mut b).unwrap();
            got.push(b);
        }
        assert_eq!(got, vec![vec![1u8; 3], vec![2u8; 3]]);
        kids.wait().unwrap();
        assert!(reaped_cpu_ns() > before, "the children's CPU was counted");
        let mut failing = RawChildren::fork(1, |_, _| Err(io::Error::other("no"))).unwrap();
        failing.go().unwrap();
        assert!(failing.wait().is_err(), "a child's failure is reported");
        let mut ready = RawChildren::fork(1, |_, out| out.write_all(b"x")).unwrap();
        ready.go().unwrap();
        let r = &ready.readers()[0];
        assert_eq!(poll_readable(&[r], 5_000).unwrap(), vec![true]);
        drop(ready); // reaped by Drop
        // Dropped before `go`: the children end without working, and are reaped.
        drop(RawChildren::fork(2, |_, _| panic!("never started")).unwrap());
    }
}
