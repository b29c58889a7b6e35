//! `Spawn`: fork + exec of this executable; the child receives its socket by
//! inheritance and its task over that socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::{ENV_START_METHOD, runtime};
use crate::sys::spawn::{ENV_CHILD, spawn_with_socket};

/// The executable a spawned child runs: this very file, even if it was replaced on disk
/// since we started (then the build-id check would catch a different build anyway).
pub(super) const SELF_EXE: &str = "/proc/self/exe";

pub(super) fn start(theirs: OwnedFd, executable: Option<&Path>) -> io::Result<u32> {
    let exe = executable.map_or_else(|| PathBuf::from(SELF_EXE), Path::to_path_buf);
    runtime().on_launcher(move || {
        let env = [
            (ENV_CHILD, format!("worker:{}", theirs.as_raw_fd())),
            (ENV_START_METHOD, super::StartMethod::Spawn.name().to_owned()),
        ];
        spawn_with_socket(&exe, &env, theirs.as_fd())
    })
}
