//! Shared-memory segments: anonymous (memfd, passed by descriptor) or named

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::sys::shm::{self as sys_shm, Mapping};
use crate::wire::fds::PassFd;

/// Where named segments live.
const SHM_DIR: &str = "/dev/shm";

fn shm_error(detail: impl Into<String>) -> Error {
    Error::SharedMemory {
        detail: detail.into(),
    }
}

/// A mapped segment: the crate-internal core of `SharedMemory`, `Value`, `Array` and
/// the synchronization primitives.
#[derive(Debug)]
pub(crate) struct Segment {
    // Field order matters: the mapping goes before the descriptor and the name.
    map: Mapping,
    fd: OwnedFd,
    owner: Option<NamedOwner>,
    name: Option<String>,
}

/// The owner's claim on a name: remove it on drop if it still names our segment.
#[derive(Debug)]
struct NamedOwner {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for NamedOwner {
    fn drop(&mut self) {
        let ours = std::fs::metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Segment {
    /// A new anonymous segment of `len` zero bytes.
    pub(crate) fn anonymous(what: &str, len: usize) -> Result<Self> {
        let fd = sys_shm::memfd(what, len)
            .map_err(|e| shm_error(format!("cannot create a {len}-byte {what} segment: {e}")))?;
        Self::map_fd(fd, len, None, None)
    }

    fn map_fd(
        fd: OwnedFd,
        len: usize,
        owner: Option<NamedOwner>,
        name: Option<String>,
    ) -> Result<Self> {
        let map = Mapping::new(fd.as_fd(), len, true)
            .map_err(|e| shm_error(format!("cannot map {len} bytes: {e}")))?;
        Ok(Segment {
            map,
            fd,
            owner,
            name,
        })
    }

    /// Accepts a descriptor that arrived from another process, claiming `len` bytes.
    fn received(fd: OwnedFd, len: u64) -> Result<Self> {
        let len = usize::try_from(len).map_err(|_| shm_error("segment length overflows"))?;
        let actual = sys_shm::file_len(fd.as_fd())
            .map_err(|e| shm_error(format!("cannot inspect a received segment: {e}")))?;
        if actual < len {
            return Err(shm_error(format!(
                "a received segment holds {actual} bytes, not the {len} its handle claims"
            )));
        }
        Self::map_fd(fd, len, None, None)
    }

    pub(crate) fn map(&self) -> &Mapping {
        &self.map
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

impl Serialize for Segment {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| S::Error::custom(format!("cannot duplicate a segment handle: {e}")))?;
        (PassFd::new(fd), self.len() as u64).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Segment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let (fd, len) = <(PassFd, u64)>::deserialize(d)?;
        Segment::received(fd.0, len).map_err(|e| D::Error::custom(e.to_string()))
    }
}

/// Raw shared bytes, visible to every process that holds (a copy of) the handle.
///
/// Cloning a handle shares the mapping; sending one to a child (as a task argument or
/// result, or through a channel) passes the descriptor, and the child maps the same
/// pages: nothing is copied, whatever the size.
///
/// ```
/// use multiproc::{Process, SharedMemory};
///
/// fn fill(shm: SharedMemory) {
///     shm.write_at(0, b"hello from the child").unwrap();
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let shm = SharedMemory::new(4096)?;
/// Process::start(fill, shm.clone())?.join()?;
/// let mut buf = [0u8; 20];
/// shm.read_at(0, &mut buf)?;
/// assert_eq!(&buf, b"hello from the child");
/// # Ok(()) }
/// ```
///
/// The bytes are plain memory that other processes write concurrently: coordinate
/// with a [`Lock`](crate::Lock) or use [`Value`](crate::Value) /
/// [`Array`](crate::Array), which carry their own lock. An unsynchronized
/// [`read_at`](Self::read_at) may see a write half done (torn), never anything
/// worse.
#[derive(Clone, Debug, Serialize, Deserialize)]
///
/// (`/dev/shm/<name>`, for unrelated processes).
///
/// ## Anonymous (the default)
///
/// [`SharedMemory::new`] makes a `memfd`: memory with no name on the system, sealed
/// against resizing, mapped `MAP_SHARED`. It reaches another process only as a task's
/// argument or result, or through a multiproc channel: the descriptor crosses with
/// `SCM_RIGHTS`, the receiver maps the same pages, and no byte of the contents is
/// copied. The memory is freed when the last process holding it unmaps it or exits,
/// crash or not, so it cannot leak.
///
/// ## Named
///
/// [`SharedMemory::create_named`] makes `/dev/shm/<name>` for processes that did not
/// start each other; [`SharedMemory::open_named`] attaches to it. Only the creating
/// handle (the *owner*) removes the name, when it is dropped; attachers never do
/// (Python's gh-82300 was attachers unlinking, or nobody). The owner holds a shared
/// `flock` on the segment for as long as any copy of its descriptor is open; the
/// kernel drops that lock when the owner's process dies, however it dies. So a name
/// left behind by a crashed owner is recognisable as stale — nobody holds its lock —
/// and is removed by the next `create_named` of the same name or by
/// [`SharedMemory::remove_stale`].
pub struct SharedMemory {
    seg: Arc<Segment>,
}

fn validate_name(name: &str) -> Result<PathBuf> {
    let bad = name.is_empty()
        || name.len() > 250
        || name.contains('/')
        || name.contains('\0')
        || name == "."
        || name == "..";
    if bad {
        return Err(shm_error(format!(
            "invalid segment name {name:?}: use 1-250 characters, no '/' or NUL"
        )));
    }
    Ok(PathBuf::from(SHM_DIR).join(name.trim_start_matches('/')))
}

impl SharedMemory {
    /// A new anonymous segment of `len` zero bytes (a memfd; no name on the system).
    pub fn new(len: usize) -> Result<Self> {
        Ok(SharedMemory {
            seg: Arc::new(Segment::anonymous("multiproc-shm", len)?),
        })
    }

    /// Creates the named segment `/dev/shm/<name>` of `len` zero bytes, readable and
    /// writable by this user only. This handle is its owner: dropping it (and every
    /// clone) removes the name. Copies sent to other processes are attachers.
    ///
    /// If the name exists but its owner is dead (a crash left it behind), it is
    /// removed and created afresh; if its owner is alive, this fails.
    pub fn create_named(name: &str, len: usize) -> Result<Self> {
        let path = validate_name(name)?;
        // Build the segment under a private temporary name, lock it, size it, and only
        // then give it its name: nobody ever sees a named segment without its owner's
        // lock, so "no lock" reliably means "owner dead".
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = PathBuf::from(SHM_DIR).join(format!(
            ".multiproc-tmp-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let io = |what: &str, e: std::io::Error| shm_error(format!("{what} {name:?}: {e}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("cannot create segment", e))?;
        let made = (|| {
            sys_shm::try_flock(file.as_fd(), true).map_err(|e| io("cannot lock segment", e))?;
            sys_shm::set_len(file.as_fd(), len).map_err(|e| io("cannot size segment", e))?;
            for _attempt in 0..3 {
                match std::fs::hard_link(&tmp, &path) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if !Self::remove_stale(name)? {
                            return Err(shm_error(format!(
                                "segment {name:?} already exists and its owner is alive"
                            )));
                        }
                    }
                    Err(e) => return Err(io("cannot name segment", e)),
                }
            }
            Err(shm_error(format!(
                "segment {name:?} keeps being re-created by another process"
            )))
        })();
        let _ = std::fs::remove_file(&tmp);
        made?;
        let meta = file
            .metadata()
            .map_err(|e| io("cannot inspect segment", e))?;
        let owner = NamedOwner {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
        };
        Ok(SharedMemory {
            seg: Arc::new(Segment::map_fd(
                file.into(),
                len,
                Some(owner),
                Some(name.to_owned()),
            )?),
        })
    }

    /// Attaches to the named segment `/dev/shm/<name>`, all of it. An attacher never
    /// removes the name.
    pub fn open_named(name: &str) -> Result<Self> {
        let path = validate_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| shm_error(format!("cannot open segment {name:?}: {e}")))?;
        let len = sys_shm::file_len(file.as_fd())
            .map_err(|e| shm_error(format!("cannot inspect segment {name:?}: {e}")))?;
        Ok(SharedMemory {
            seg: Arc::new(Segment::map_fd(
                file.into(),
                len,
                None,
                Some(name.to_owned()),
            )?),
        })
    }

    /// Removes the named segment if its owner is dead (no live process holds the
    /// owner's lock). Returns whether it removed something; a missing name is `false`.
    /// Attached processes keep their mappings either way.
    pub fn remove_stale(name: &str) -> Result<bool> {
        let path = validate_name(name)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(shm_error(format!("cannot open segment {name:?}: {e}"))),
        };
        let unowned = sys_shm::try_flock(file.as_fd(), false)
            .map_err(|e| shm_error(format!("cannot lock segment {name:?}: {e}")))?;
        if !unowned {
            return Ok(false);
        }
        // Remove the name only if it still refers to the file we found unowned.
        let ours = file.metadata().ok();
        let now = std::fs::metadata(&path).ok();
        match (ours, now) {
            (Some(a), Some(b)) if a.dev() == b.dev() && a.ino() == b.ino() => {
                std::fs::remove_file(&path)
                    .map(|()| true)
                    .or_else(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Ok(false),
                        _ => Err(shm_error(format!("cannot remove segment {name:?}: {e}"))),
                    })
            }
            _ => Ok(false),
        }
    }

    /// The segment's name, if it is a named one.
    pub fn name(&self) -> Option<&str> {
        self.seg.name.as_deref()
    }

    /// `true` for the handle (and its clones) that created a named segment and will
    /// remove its name when dropped.
    pub fn is_owner(&self) -> bool {
        self.seg.owner.is_some()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.seg.len()
    }

    /// `true` for a zero-byte segment.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        if self.seg.map().copy_out(offset, buf) {
            Ok(())
        } else {
            Err(self.out_of_bounds(offset, buf.len()))
        }
    }

    /// Copies `data` into the segment at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        if self.seg.map().copy_in(offset, data) {
            Ok(())
        } else {
            Err(self.out_of_bounds(offset, data.len()))
        }
    }

    fn out_of_bounds(&self, offset: usize, len: usize) -> Error {
        shm_error(format!(
            "range {offset}..{} is outside the {}-byte segment",
            offset.saturating_add(len),
            self.len()
        ))
    }
}
