//! Process creation, waiting and signals.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal as NixSignal, pthread_sigmask,
};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::ForkResult;

use crate::error::{ExitStatus, Signal};

/// Which side of a fork we are on.
pub(crate) enum Forked {
    Child,
    Parent(u32),
}

/// `fork()`. The child holds a copy of this process with only the calling thread.
pub(crate) fn fork() -> io::Result<Forked> {
    // SAFETY: fork itself is sound; what nix marks unsafe is that the child of a
    // multithreaded parent may find locks held by threads that no longer exist. The
    // child runs multiproc's worker loop and the user's task, which can at worst
    // deadlock on such a lock, never corrupt memory: glibc resets its malloc locks in
    // its fork handlers. The Fork start method documents this hazard (as Python does).
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => Ok(Forked::Child),
        ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw() as u32)),
    }
}

/// A fork whose child becomes a child of *our parent* (`CLONE_PARENT`), not of us.
///
/// The fork server uses it so that workers are direct children of the user's process,
/// which can then wait for them and learn how they died without the server relaying.
pub(crate) fn fork_as_sibling() -> io::Result<Forked> {
    let flags = (libc::CLONE_PARENT as libc::c_ulong) | (libc::SIGCHLD as libc::c_ulong);
    // SAFETY: raw clone(2) with a null stack behaves as fork(): the child continues on a
    // copy of this thread's stack. The fork server is single-threaded and holds no lock
    // when it calls this, so glibc's skipped fork handlers had nothing to reset; the one
    // piece of per-thread kernel state glibc re-registers after fork, the robust-futex
    // list, is restored by the caller with `restore_robust_list`.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as u32)),
    }
}

/// The calling thread's robust-futex list registration, as glibc made it.
#[derive(Clone, Copy)]
pub(crate) struct RobustList {
    head: usize,
    len: usize,
    /// Where glibc caches this thread's kernel thread id, if found (see below).
    tid_cache: Option<usize>,
}

/// Bytes from glibc's `struct pthread::tid` to its `robust_head`: `pid_t tid; pid_t
/// pid_ununsed; void *robust_prev; struct robust_list_head robust_head;` (nptl/descr.h,
/// unchanged since glibc 2.25 on 64-bit targets).
#[cfg(target_pointer_width = "64")]
const TID_BEFORE_ROBUST_HEAD: usize = 16;

/// Finds glibc's cached thread id of the calling thread next to its robust-list head,
/// and only trusts the layout if the value there is the thread's actual id.
fn find_tid_cache(head: usize) -> Option<usize> {
    #[cfg(target_pointer_width = "64")]
    {
        let addr = head.checked_sub(TID_BEFORE_ROBUST_HEAD)?;
        if addr % align_of::<libc::pid_t>() != 0 {
            return None;
        }
        // SAFETY: `head` is the address of the calling thread's `robust_head` inside its
        // glibc thread descriptor (get_robust_list just returned it), and the field 16
        // bytes before it lies inside the same descriptor in every glibc release since
        // 2.25; reading a pid_t there reads initialized memory. The value is only used
        // if it equals our thread id, which confirms the layout.
        let cached = unsafe { std::ptr::read_volatile(addr as *const libc::pid_t) };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        (cached == tid).then_some(addr)
    }
    #[cfg(not(target_pointer_width = "64"))]
    {
        let _ = head;
        None
    }
}

/// Reads the calling thread's robust-futex list registration.
pub(crate) fn robust_list() -> Option<RobustList> {
    let mut head: usize = 0;
    let mut len: usize = 0;
    // SAFETY: get_robust_list(0, ...) writes one pointer and one size_t for the calling
    // thread into the two locals passed by address.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut usize,
            &mut len as *mut usize,
        )
    };
    (r == 0 && head != 0).then(|| RobustList {
        head,
        len,
        tid_cache: find_tid_cache(head),
    })
}

/// Re-registers a robust-futex list in a child made by [`fork_as_sibling`]: the kernel
/// clears it on clone, and glibc only restores it in its own `fork()`.
///
/// It also refreshes glibc's cached thread id, which glibc's `fork()` updates and a raw
/// clone does not. A stale cached id breaks every pthread mutex that records its owner:
/// robust and error-checking mutexes store the cached id in the lock word, so two
/// children of the fork server would both look like the owner (`EDEADLK`), and the
/// kernel, which compares the word with the dying thread's real id, would never mark a
/// lock held by a killed child as `OWNER_DIED`.
pub(crate) fn restore_robust_list(list: RobustList) {
    // SAFETY: `list` was read from this very thread before the clone; the child's memory
    // is a copy of the parent's, so the head glibc allocated lives at the same address.
    unsafe {
        libc::syscall(libc::SYS_set_robust_list, list.head, list.len);
    }
    if let Some(addr) = list.tid_cache {
        // SAFETY: `addr` is glibc's `tid` field of this thread's descriptor, located and
        // verified (it held the thread id) in the parent before the clone; the child's
        // memory is a copy, and its only thread is the one this descriptor describes.
        // glibc's own fork() stores the new thread id in exactly this field.
        unsafe {
            let tid = libc::gettid();
            std::ptr::write_volatile(addr as *mut libc::pid_t, tid);
        }
    }
}

/// Asks the kernel to SIGKILL this process when the thread that created it exits, then
/// checks that the creator is still `expected_parent` (it may have died before the
/// request took effect). Returns `false` if the parent is already gone.
pub(crate) fn die_with_parent(expected_parent: u32) -> bool {
    if nix::sys::prctl::set_pdeathsig(NixSignal::SIGKILL).is_err() {
        return false;
    }
    nix::unistd::getppid().as_raw() as u32 == expected_parent
}

/// Ends the process at once, without running atexit handlers or destructors: in a
/// forked child those belong to the parent's state.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// The exit code the alarm of [`exit_if_stuck`] ends the process with.
static STUCK_EXIT_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn exit_stuck(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe and never returns; the atomic load is a
    // plain read of a word.
    unsafe { libc::_exit(STUCK_EXIT_CODE.load(std::sync::atomic::Ordering::Relaxed)) }
}

/// Arms a one-shot alarm that ends the process with `code` after `after`, should it
/// still be running then: what a process about to end does before work that could
/// block forever (a lock inherited held across a fork). Two system calls, no thread.
pub(crate) fn exit_if_stuck(after: std::time::Duration, code: i32) {
    STUCK_EXIT_CODE.store(code, std::sync::atomic::Ordering::Relaxed);
    let usec = after.as_micros().clamp(1, 999_999) as libc::suseconds_t;
    let secs = after.as_secs() as libc::time_t;
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: secs,
            tv_usec: if secs > 0 { 0 } else { usec },
        },
    };
    // SAFETY: the handler only calls _exit (async-signal-safe); the sigaction and
    // sigset structs are zeroed (a valid empty mask and flags) before the fields used
    // are set; setitimer reads the itimerval. SIGALRM is unblocked on this thread so
    // that the alarm is delivered here (a task may have blocked it); its old
    // disposition no longer matters: the process is ending.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = exit_stuck as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGALRM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut());
    }
}

/// `pidfd_open(pid)`: a descriptor that names this process for as long as we hold it,
/// immune to pid reuse.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Sends `signal` to the process named by `pidfd`. A process that already exited (but
/// was not yet reaped) is not an error.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number and a null siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal.raw(),
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Reaps the child named by `pidfd`: `Ok(None)` if it is still running and `block` is
/// false.
///
/// When this process ignores SIGCHLD the kernel reaps each child itself at its exit (or
/// another wait of this program may have reaped it first): the wait then fails with
/// `ECHILD`. Linux 6.15 and later still know how such a child ended, through its pidfd
/// ([`exit_info`]); on older kernels the status is lost and the `ECHILD` is returned.
/// (Another exit signal than SIGCHLD, which the kernel never reaps by itself, is out of
/// reach: glibc's fork always sets SIGCHLD, exec resets it to SIGCHLD, and the fork
/// server's children inherit the server's.)
pub(crate) fn wait_pidfd(pidfd: impl AsFd, block: bool) -> io::Result<Option<ExitStatus>> {
    let pidfd = pidfd.as_fd();
    let mut flags = WaitPidFlag::WEXITED;
    if !block {
        flags |= WaitPidFlag::WNOHANG;
    }
    loop {
        return match waitid(Id::PIDFd(pidfd), flags) {
            Ok(WaitStatus::Exited(_, code)) => Ok(Some(ExitStatus::Code(code))),
            Ok(WaitStatus::Signaled(_, sig, core)) => Ok(Some(ExitStatus::Signaled {
                signal: Signal::from_raw(sig as i32),
                core_dumped: core,
            })),
            Ok(WaitStatus::StillAlive) => Ok(None),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => match exit_info(pidfd) {
                Some(status) => Ok(Some(status)),
                None => Err(Errno::ECHILD.into()),
            },
            Err(e) => Err(e.into()),
        };
    }
}

/// Linux's `struct pidfd_info` as first published (`PIDFD_INFO_SIZE_VER0`, Linux 6.15).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
}

/// `_IOWR(0xFF, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: libc::c_ulong = 0xC040_FF0B;
/// The `mask` bit that asks for, and reports, the exit status.
const PIDFD_INFO_EXIT: u64 = 1 << 3;

/// How the process named by `pidfd` ended, after someone else reaped it (the kernel,
/// when SIGCHLD is ignored). `None` if it is unknown: a kernel older than 6.15, or a
/// process that has not ended.
fn exit_info(pidfd: BorrowedFd<'_>) -> Option<ExitStatus> {
    // The kernel records the status when it releases the process, a moment after a
    // waiter may already have been told there is no child to wait for: retry briefly.
    for _ in 0..200 {
        let mut info = PidfdInfo {
            mask: PIDFD_INFO_EXIT,
            ..PidfdInfo::default()
        };
        // SAFETY: PIDFD_GET_INFO reads `mask` from and writes at most
        // `size_of::<PidfdInfo>()` bytes (the size encoded in the request number) into
        // the struct passed by address, which lives across the call.
        let r = unsafe {
            libc::ioctl(
                pidfd.as_raw_fd(),
                PIDFD_GET_INFO as _,
                &mut info as *mut PidfdInfo,
            )
        };
        if r != 0 {
            // ENOTTY/EINVAL: no such request (before 6.15); ESRCH: gone, status unknown.
            return None;
        }
        if info.mask & PIDFD_INFO_EXIT != 0 {
            let s = info.exit_code;
            return Some(if libc::WIFSIGNALED(s) {
                ExitStatus::Signaled {
                    signal: Signal::from_raw(libc::WTERMSIG(s)),
                    core_dumped: libc::WCOREDUMP(s),
                }
            } else {
                ExitStatus::Code(libc::WEXITSTATUS(s))
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    None
}

/// `true` when the kernel marks this process as privileged (setuid, setgid, file
/// capabilities): its environment and descriptors then come from someone else, and it
/// must not act as a multiproc child.
pub(crate) fn is_secure_exec() -> bool {
    // SAFETY: getauxval reads the auxiliary vector; AT_SECURE is always present on Linux.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Signal dispositions of a worker: Ctrl-C goes to the parent, which shuts its
/// children down; a closed socket is an error return, not a death.
///
/// With `interruptible` (a worker, not the fork server), SIGINT is caught rather than
/// ignored: a handler drops every SIGINT (the terminal's Ctrl-C, `kill -INT`) but the
/// one [`pidfd_interrupt`] sends, which ends the process as an unhandled SIGINT does.
/// A child comes to life with SIGINT blocked (see the start methods), so that an
/// interrupt sent before this point waits, pending, for the handler; it is unblocked
/// here. The fork server keeps it blocked (and ignored), for its children.
pub(crate) fn worker_signals(interruptible: bool) {
    for (sig, handler) in [
        (NixSignal::SIGPIPE, SigHandler::SigIgn),
        (NixSignal::SIGTERM, SigHandler::SigDfl),
    ] {
        // SAFETY: setting SIG_IGN/SIG_DFL installs no Rust handler, so no code runs in
        // signal context.
        let _ = unsafe { nix::sys::signal::signal(sig, handler) };
    }
    if !interruptible {
        ignore_sigint();
    } else {
        // Straight to the handler, never through SIG_IGN: that would discard an
        // interrupt already pending.
        let action = SigAction::new(
            SigHandler::SigAction(on_sigint),
            // SA_RESTART: a dropped Ctrl-C interrupts as few of the task's calls as can be.
            SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: `on_sigint` only reads its siginfo and calls the async-signal-safe
        // `signal` and `raise`.
        let _ = unsafe { nix::sys::signal::sigaction(NixSignal::SIGINT, &action) };
        let sigint = SigSet::from(NixSignal::SIGINT);
        let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&sigint), None);
    }
}

/// The `si_value` that marks a SIGINT as [`pidfd_interrupt`]'s ("mpin").
const INTERRUPT_TOKEN: usize = 0x6d70_696e;

/// A worker's SIGINT handler (see [`worker_signals`]).
extern "C" fn on_sigint(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo; its `_rt` member (read
    // by `si_value`) is what a SI_QUEUE signal carries, and is read only for one.
    let ours = !info.is_null()
        && unsafe {
            (*info).si_code == libc::SI_QUEUE
                && (*info).si_value().sival_ptr as usize == INTERRUPT_TOKEN
        };
    if !ours {
        return;
    }
    // SAFETY: `signal` and `raise` are async-signal-safe. SIGINT is blocked while this
    // handler runs, so the raised one is delivered, with the default action (the
    // process ends, killed by SIGINT), as soon as the handler returns.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::raise(libc::SIGINT);
    }
}

/// Sends SIGINT to the process behind `pidfd`, marked so that a multiproc worker (see
/// [`worker_signals`]) acts on it. A process that ended is not an error.
pub(crate) fn pidfd_interrupt(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: all-zero is a valid siginfo_t (integers, and a union of integers and a
    // pointer that the kernel treats as a number).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    info.si_signo = libc::SIGINT;
    // SI_QUEUE (negative) is what the kernel lets a process send to another.
    info.si_code = libc::SI_QUEUE;
    // The kernel's union (`_rt`: pid, uid, sigval) follows the three ints, aligned for
    // the pointer in the sigval.
    let base = (3 * std::mem::size_of::<libc::c_int>())
        .next_multiple_of(std::mem::align_of::<*mut libc::c_void>());
    let at = (&raw mut info).cast::<u8>();
    // SAFETY: siginfo_t is 128 bytes; these writes fall inside it, at the offsets of
    // the `_rt` member's fields (pid, then uid, then the sigval at pointer alignment).
    unsafe {
        at.add(base)
            .cast::<libc::pid_t>()
            .write_unaligned(libc::getpid());
        at.add(base + 4)
            .cast::<libc::uid_t>()
            .write_unaligned(libc::getuid());
        at.add(base + 8)
            .cast::<usize>()
            .write_unaligned(INTERRUPT_TOKEN);
    }
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number, a siginfo that
    // lives until the call returns, and flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGINT,
            &raw const info,
            0u32,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Flushes what C's stdio buffered (`printf` to a pipe or a file) before a child ends
/// with `_exit`: every stream in a child that was exec'd (its streams are its own),
/// only `stdout` and `stderr` in a forked one (other streams it inherited hold the
/// parent's unwritten data, which the parent writes itself).
pub(crate) fn flush_c_stdio(all: bool) {
    unsafe extern "C" {
        static mut stdout: *mut libc::FILE;
        static mut stderr: *mut libc::FILE;
    }
    // SAFETY: fflush(NULL) flushes every open output stream; `stdout` and `stderr`
    // are the C library's own stream pointers, read (not written) here. In a forked
    // child the stream locks were reset by the C library's fork handlers (glibc), and
    // only this thread runs multiproc code at this point.
    unsafe {
        if all {
            libc::fflush(std::ptr::null_mut());
        } else {
            libc::fflush(stdout);
            libc::fflush(stderr);
        }
    }
}

/// Drops what C's `stdout` and `stderr` buffered before a fork, in the forked child:
/// that output is the parent's, which writes it itself; flushed again by the child, it
/// would appear twice.
pub(crate) fn purge_inherited_c_stdio() {
    unsafe extern "C" {
        static mut stdout: *mut libc::FILE;
        static mut stderr: *mut libc::FILE;
        fn __fpurge(stream: *mut libc::FILE);
    }
    // SAFETY: `__fpurge` (glibc and musl) discards a stream's buffer; the pointers are
    // the C library's own streams, read here. Called right after fork, on the one
    // thread of the child.
    unsafe {
        __fpurge(stdout);
        __fpurge(stderr);
    }
}

/// Blocks SIGINT on the calling thread and returns the previous mask, for
/// [`restore_sigmask`]. Around a fork: the child cannot be ended by a Ctrl-C that
/// arrives before it has set up its worker's signal dispositions.
pub(crate) fn block_sigint() -> Option<SigSet> {
    let mut old = SigSet::empty();
    let sigint = SigSet::from(NixSignal::SIGINT);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigint), Some(&mut old))
        .ok()
        .map(|()| old)
}

/// Restores the mask [`block_sigint`] returned.
pub(crate) fn restore_sigmask(old: Option<SigSet>) {
    if let Some(old) = old {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
}

/// Ignores SIGINT. Async-signal-safe: usable between fork and exec, where an ignored
/// disposition survives into the new program.
pub(crate) fn ignore_sigint() {
    // SAFETY: SIG_IGN installs no handler; sigaction is async-signal-safe.
    let _ = unsafe { nix::sys::signal::signal(NixSignal::SIGINT, SigHandler::SigIgn) };
}

/// Removes a variable from this process's environment.
pub(crate) fn remove_env(key: &str) {
    // SAFETY: called only while the process is single-threaded: from the load-time
    // constructor before main, or in the fork server before it starts anything.
    unsafe { std::env::remove_var(key) }
}

/// The real uid of this process.
pub(crate) fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}
