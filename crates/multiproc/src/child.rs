//! The child's side: how a started process becomes a worker, and the worker loop.

use std::cell::RefCell;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_bytes::ByteBuf;

use crate::start::ENV_CHILD;
use crate::sys;
use crate::task::TaskRef;
use crate::wire::message::{Batch, Failure, PROTOCOL_VERSION, Refusal, Reply, Request};
use crate::wire::{FrameDecoder, Received, fds, recv_frame, send_frame, send_frame_with_fds};

/// Exit code of a child whose parent was gone before it could start.
pub(crate) const EXIT_ORPHANED: i32 = 70;
/// Exit code of a child that received something that is not the protocol.
pub(crate) const EXIT_PROTOCOL: i32 = 71;
/// Exit code of a child that refused to serve (wrong build, privileged process).
pub(crate) const EXIT_REFUSED: i32 = 72;

/// How this worker came to be; decides what it may take on trust.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A fork of the parent: same memory, same build by construction.
    Forked,
    /// A fresh image of an executable (spawn, or a fork of the fork server).
    Execd,
}

/// The parent's pid, if this process is a multiproc child.
static PARENT_PID: AtomicU32 = AtomicU32::new(0);
/// The name the parent gave this process.
static NAME: Mutex<Option<String>> = Mutex::new(None);

pub(crate) fn parent_pid() -> Option<u32> {
    match PARENT_PID.load(Ordering::Relaxed) {
        0 => None,
        p => Some(p),
    }
}

pub(crate) fn name() -> Option<String> {
    NAME.lock().map(|n| n.clone()).unwrap_or(None)
}

/// If the parent marked this process as a child, become what it asked for and never
/// return. Otherwise return at once.
pub(crate) fn enter_if_child() {
    let Some(value) = std::env::var_os(ENV_CHILD) else {
        return;
    };
    sys::proc::remove_env(ENV_CHILD);
    let refuse = |why: &str| -> ! {
        let _ = writeln!(
            std::io::stderr(),
            "multiproc: refusing to act as a child: {why}"
        );
        sys::proc::exit_now(EXIT_REFUSED)
    };
    if sys::proc::is_secure_exec() {
        refuse("this is a privileged (setuid/setgid/capability) process");
    }
    let value = value.to_string_lossy();
    let (role, fd) = match value.split_once(':') {
        Some((role, fd)) => (role, fd.parse::<i32>().ok()),
        None => (&*value, None),
    };
    let Some(fd) = fd.filter(|fd| *fd > 2) else {
        refuse(&format!("malformed {ENV_CHILD}={value:?}"));
    };
    let sock = match sys::fd::adopt_inherited(fd) {
        Ok(s) => s,
        Err(e) => refuse(&e.to_string()),
    };
    // Take orders only from our own parent, running as our own user.
    let ppid = nix::unistd::getppid().as_raw() as u32;
    match sys::fd::peer(sock.as_fd()) {
        Ok((pid, uid)) if pid == ppid && uid == sys::proc::uid() => {}
        Ok((pid, uid)) => refuse(&format!(
            "the socket's peer (pid {pid}, uid {uid}) is not this process's parent"
        )),
        Err(e) => refuse(&e.to_string()),
    }
    match role {
        "worker" => serve(sock, Origin::Execd),
        "forkserver" => crate::start::forkserver::serve(sock),
        other => refuse(&format!("unknown role {other:?}")),
    }
}

thread_local! {
    /// The socket, job and call index of the task running on this thread, for the
    /// panic hook.
    static CURRENT: RefCell<Option<(Rc<OwnedFd>, u64, u32)>> = const { RefCell::new(None) };
    /// The message and location of the last panic on this thread.
    static LAST_PANIC: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
}

fn panic_message(payload: &dyn std::any::Any) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any> (a panic payload that is not a string)".to_owned()
    }
}

/// Records each panic of a running task for the worker loop; under `panic = "abort"`,
/// where the process dies inside the hook, the hook itself reports to the parent first.
/// Any other panic goes to the hook that was in place before.
///
/// Installed once per process. The Fork start method installs it in the parent before
/// it forks, so that a forked child never calls `set_hook`: that takes std's hook lock
/// for writing, and in a child forked while another thread of the parent was panicking
/// (holding the lock for reading) it would wait forever.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_task = CURRENT.try_with(|c| c.borrow().is_some()).unwrap_or(false);
            if !in_task {
                return previous(info);
            }
            let message = panic_message(info.payload());
            let location = info.location().map(|l| l.to_string());
            if cfg!(panic = "abort") {
                CURRENT.with(|c| {
                    if let Some((sock, job, index)) = c.borrow().as_ref() {
                        let reply = Reply::Aborting {
                            job: *job,
                            index: *index,
                            message: message.clone(),
                            location: location.clone(),
                        };
                        if let Ok(bytes) = crate::wire::encode(&reply) {
                            let _ = send_frame(sock.as_fd(), &bytes, crate::wire::max_frame_size());
                        }
                    }
                });
            }
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
        }));
    });
}

/// Records a panic's message and location for [`run_chunk`] to report, as the worker's
/// panic hook does; for other worker loops (MPI ranks) that install their own hook.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn record_panic(info: &std::panic::PanicHookInfo<'_>) {
    let message = panic_message(info.payload());
    let location = info.location().map(|l| l.to_string());
    LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
}

/// Runs one call of a task, catching a panic. The value is appended to `out`; the
/// descriptors it holds are returned.
fn run_call(
    entry: TaskRef,
    args: &[u8],
    fds: Vec<OwnedFd>,
    out: &mut Vec<u8>,
) -> Result<Vec<OwnedFd>, Failure> {
    let (result, out_fds) = fds::capture(|| {
        fds::provide(fds, || {
            catch_unwind(AssertUnwindSafe(|| sys::image::run(entry, args, out)))
        })
    });
    match result {
        Ok(Ok(())) => Ok(out_fds),
        Ok(Err(failure)) => Err(failure),
        Err(payload) => {
            let (message, location) = LAST_PANIC
                .with(|p| p.borrow_mut().take())
                .unwrap_or_else(|| (panic_message(&*payload), None));
            Err(Failure::Panicked { message, location })
        }
    }
}

/// Runs every call of a chunk; returns the reply and the descriptors to send with it,
/// or `None` if the chunk is malformed. `sock` is where the panic hook reports under
/// `panic = "abort"` (`None`: nowhere).
pub(crate) fn run_chunk(
    sock: Option<&Rc<OwnedFd>>,
    job: u64,
    entry: TaskRef,
    args: &Batch,
    fds: Vec<OwnedFd>,
) -> Option<(Reply, Vec<OwnedFd>)> {
    if args.total_fds() != fds.len() {
        return None;
    }
    let started = std::time::Instant::now();
    let mut values = Batch::with_capacity(args.len(), args.data.len());
    let mut failures = Vec::new();
    let mut out_fds = Vec::new();
    let mut fds = fds.into_iter();
    for i in 0..args.len() {
        let (bytes, n) = args.get(i)?;
        let mine: Vec<OwnedFd> = fds.by_ref().take(n).collect();
        CURRENT.with(|c| *c.borrow_mut() = sock.map(|s| (s.clone(), job, i as u32)));
        let result = run_call(entry, bytes, mine, &mut values.data);
        CURRENT.with(|c| *c.borrow_mut() = None);
        match result {
            Ok(out) => {
                values.close_value(out.len());
                out_fds.extend(out);
            }
            Err(failure) => {
                values.discard_open_value();
                values.close_value(0);
                failures.push((i as u32, failure));
            }
        }
    }
    let nanos = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
    Some((
        Reply::Done {
            job,
            values,
            failures,
            nanos,
        },
        out_fds,
    ))
}

/// Sends a reply; a `Done` too large for a frame is replaced by one that says so.
fn send_reply(sock: &OwnedFd, reply: &Reply, fds: &[OwnedFd]) -> bool {
    let max = crate::wire::max_frame_size();
    let Ok(bytes) = crate::wire::encode(reply) else {
        return false;
    };
    match send_frame_with_fds(sock.as_fd(), &bytes, fds, max) {
        Ok(()) => true,
        Err(crate::Error::FrameTooLarge { len, max }) => {
            let Reply::Done {
                job, values, nanos, ..
            } = reply
            else {
                return false;
            };
            let reason = format!(
                "the encoded results are {len} bytes, over the maximum frame size of {max} bytes"
            );
            let mut empty = Batch::with_capacity(values.len(), 0);
            let failures = (0..values.len())
                .map(|i| {
                    empty.close_value(0);
                    (
                        i as u32,
                        Failure::BadResult {
                            type_name: "task result".into(),
                            reason: reason.clone(),
                        },
                    )
                })
                .collect();
            let fallback = Reply::Done {
                job: *job,
                nanos: *nanos,
                values: empty,
                failures,
            };
            crate::wire::encode(&fallback)
                .ok()
                .is_some_and(|b| send_frame(sock.as_fd(), &b, max as usize).is_ok())
        }
        Err(_) => false,
    }
}

/// The worker loop: answer the parent's hello, run each chunk, exit on `Exit` or end
/// of stream. Never returns.
pub(crate) fn serve(sock: OwnedFd, origin: Origin) -> ! {
    sys::proc::worker_signals();
    PARENT_PID.store(nix::unistd::getppid().as_raw() as u32, Ordering::Relaxed);
    install_panic_hook();
    let sock = Rc::new(sock);
    let mut decoder = FrameDecoder::new(crate::wire::max_frame_size());
    let mut greeted = false;
    let code = loop {
        let (frame, fds) = match recv_frame(sock.as_fd(), &mut decoder, None) {
            Ok(Received::Frame(f, fds)) => (f, fds),
            Ok(Received::Closed) | Ok(Received::TimedOut) => break 0,
            Err(_) => break EXIT_PROTOCOL,
        };
        let Ok(request) = Request::decode(&frame) else {
            break EXIT_PROTOCOL;
        };
        match request {
            Request::Hello {
                version,
                build_id,
                name,
                max_frame,
            } => {
                let refusal = if version != PROTOCOL_VERSION {
                    Some(Refusal::Version {
                        child: PROTOCOL_VERSION,
                    })
                } else if origin == Origin::Execd && build_id.as_slice() != crate::task::build_id()
                {
                    Some(Refusal::Build {
                        child: ByteBuf::from(crate::task::build_id().to_vec()),
                    })
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    send_reply(&sock, &Reply::Refused { reason }, &[]);
                    break EXIT_REFUSED;
                }
                if let Ok(mut n) = NAME.lock() {
                    *n = Some(name);
                }
                let max = usize::try_from(max_frame).unwrap_or(usize::MAX);
                crate::wire::set_max_frame_size(max);
                decoder = FrameDecoder::new(max);
                greeted = true;
            }
            Request::Run { job, entry, args } => {
                if !greeted {
                    break EXIT_PROTOCOL;
                }
                let Some((reply, out_fds)) = run_chunk(Some(&sock), job, entry, &args, fds) else {
                    break EXIT_PROTOCOL;
                };
                if !send_reply(&sock, &reply, &out_fds) {
                    break 0;
                }
            }
            Request::Exit => break 0,
        }
    };
    let _ = std::io::stdout().flush();
    sys::proc::exit_now(code)
}
