//! The bootstrap: a process started by a multiproc parent becomes what the parent
//! asked for (a worker, the fork server, the shared-memory tracker) before `main` runs,
//! from a load-time constructor, or at the latest in [`crate::init`].
//!
//! The one module that dispatches to the roles, so it sits above all of them: `start`
//! (the fork server), `worker`, `shm` (the tracker). `sys` holds the constructor itself
//! (its unsafe part) and calls nothing up here: this module hands it
//! [`enter_if_child`].

use std::io::Write;
use std::os::fd::AsFd;

use crate::start::ENV_START_METHOD;
use crate::sys;
use crate::sys::spawn::ENV_CHILD;
use crate::worker::{self, EXIT_REFUSED, Origin};

// What makes children work in `cargo test` binaries (whose `main` belongs to libtest)
// and in programs that forget `init`: `enter_if_child` keeps the constructor's
// contract (it returns at once unless a multiproc parent started this process, and then
// never returns, using only std facilities that work before `main`).
sys::bootstrap::before_main!(enter_if_child);

/// If the parent marked this process as a child, become what it asked for and never
/// return. Otherwise return at once.
pub(crate) fn enter_if_child() {
    let Some(value) = std::env::var_os(ENV_CHILD) else {
        return;
    };
    sys::proc::remove_env(ENV_CHILD);
    // How the parent started us (only Spawn says): our own children start the same
    // way by default, as in Python.
    let method = std::env::var_os(ENV_START_METHOD);
    if method.is_some() {
        sys::proc::remove_env(ENV_START_METHOD);
    }
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
        // A tracker outlives an owner that dies at once (then it was re-parented): it
        // only removes names its own user could remove anyway.
        Ok((_, uid)) if role == "shmtracker" && uid == sys::proc::uid() => {}
        Ok((pid, uid)) => refuse(&format!(
            "the socket's peer (pid {pid}, uid {uid}) is not this process's parent"
        )),
        Err(e) => refuse(&e.to_string()),
    }
    match role {
        "worker" => {
            if let Some(m) = method.and_then(|m| m.to_str()?.parse().ok()) {
                crate::start::set_start_method(m);
            }
            worker::serve_socket(sock, Origin::Execd)
        }
        "forkserver" => crate::start::forkserver::serve(sock),
        "shmtracker" => crate::shm::tracker::serve(sock),
        other => refuse(&format!("unknown role {other:?}")),
    }
}
