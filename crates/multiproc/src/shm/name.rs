//! Segment names: where named segments live and which names are accepted, shared by
//! the segments that take a name and the tracker that removes names.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where named segments live.
pub(super) const SHM_DIR: &str = "/dev/shm";

/// The path of the named segment `name`, if the name is acceptable: 1-250 characters,
/// no `/` or NUL, not `.` or `..`.
pub(super) fn validate_name(name: &str) -> Result<PathBuf> {
    let bad = name.is_empty()
        || name.len() > 250
        || name.contains('/')
        || name.contains('\0')
        || name == "."
        || name == "..";
    if bad {
        return Err(Error::SharedMemory {
            detail: format!("invalid segment name {name:?}: use 1-250 characters, no '/' or NUL"),
        });
    }
    Ok(PathBuf::from(SHM_DIR).join(name.trim_start_matches('/')))
}
