//! Shared-memory segments: anonymous (memfd, passed by descriptor) or named

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::name::{SHM_DIR, validate_name};
use crate::error::{Error, Result};
use crate::sys::shm::{self as sys_shm, Mapping};
use crate::wire::fds::PassFd;

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

/// The owner's claim on a name: remove it on drop if it still names our segment (and
/// tell the tracker, if it watches this name).
#[derive(Debug)]
pub(crate) struct NamedOwner {
    path: PathBuf,
    name: String,
    dev: u64,
    ino: u64,
    tracked: bool,
}

impl NamedOwner {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NamedOwner {
    fn drop(&mut self) {
        let ours = std::fs::metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
        if self.tracked {
            super::tracker::unregister(&self.name);
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
    fn received(fd: OwnedFd, len: u64, name: Option<String>) -> Result<Self> {
        if let Some(n) = &name {
            validate_name(n)?;
        }
        let len = usize::try_from(len).map_err(|_| shm_error("segment length overflows"))?;
        let actual = sys_shm::file_len(fd.as_fd())
            .map_err(|e| shm_error(format!("cannot inspect a received segment: {e}")))?;
        if actual < len {
            return Err(shm_error(format!(
                "a received segment holds {actual} bytes, not the {len} its handle claims"
            )));
        }
        Self::map_fd(fd, len, None, name)
    }

    /// Creates the named segment `/dev/shm/<name>` of `len` zero bytes, owned by the
    /// result, after `init` prepared its bytes: nobody can attach to it before.
    ///
    /// If the name exists but its owner is dead (a crash left it behind), it is
    /// removed and created afresh; if its owner is alive, this fails. With `track`,
    /// the tracker removes the name if this process dies without removing it.
    pub(crate) fn create_named(
        name: &str,
        len: usize,
        track: bool,
        init: impl FnOnce(&Mapping) -> Result<()>,
    ) -> Result<Self> {
        let path = validate_name(name)?;
        // Build the segment under a private temporary name, lock it, size it, prepare
        // it, and only then give it its name: nobody ever sees a named segment without
        // its owner's lock (so "no lock" reliably means "owner dead") or before it is
        // ready.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp_name = format!(
            ".multiproc-tmp-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let tmp = PathBuf::from(SHM_DIR).join(&tmp_name);
        let io = |what: &str, e: std::io::Error| shm_error(format!("{what} {name:?}: {e}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("cannot create segment", e))?;
        let meta = file
            .metadata()
            .map_err(|e| io("cannot inspect segment", e))?;
        let registered = if track {
            // Both names, before either can be left behind.
            let tracked = super::tracker::register(&tmp_name, meta.dev(), meta.ino())
                .and_then(|()| super::tracker::register(name, meta.dev(), meta.ino()));
            if let Err(e) = tracked {
                let _ = std::fs::remove_file(&tmp);
                return Err(shm_error(format!(
                    "cannot start the shared-memory tracker for {name:?}: {e} \
                     (create it with track(false) to go without)"
                )));
            }
            true
        } else {
            false
        };
        let made = (|| {
            sys_shm::try_flock(file.as_fd(), true).map_err(|e| io("cannot lock segment", e))?;
            sys_shm::set_len(file.as_fd(), len).map_err(|e| io("cannot size segment", e))?;
            let map = Mapping::new(file.as_fd(), len, true)
                .map_err(|e| shm_error(format!("cannot map {len} bytes: {e}")))?;
            init(&map)?;
            for _attempt in 0..3 {
                match std::fs::hard_link(&tmp, &path) {
                    Ok(()) => return Ok(map),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if !SharedMemory::remove_stale(name)? {
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
        if registered {
            super::tracker::unregister(&tmp_name);
        }
        let map = match made {
            Ok(map) => map,
            Err(e) => {
                if registered {
                    super::tracker::unregister(name);
                }
                return Err(e);
            }
        };
        let owner = NamedOwner {
            path,
            name: name.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
            tracked: registered,
        };
        Ok(Segment {
            map,
            fd: file.into(),
            owner: Some(owner),
            name: Some(name.to_owned()),
        })
    }

    /// Attaches to the named segment `/dev/shm/<name>`, all of it, as a non-owner.
    ///
    /// Only a segment this user alone can write is accepted: not a symbolic link (it
    /// is not followed), a regular file, owned by this effective user, with no access
    /// for group or others. `/dev/shm` is writable by everyone, and a segment's bytes
    /// hold robust pthread mutexes whose list pointers glibc follows on unlock: a file
    /// another user planted or can write would let them corrupt this process's memory.
    pub(crate) fn open_named(name: &str) -> Result<Self> {
        let path = validate_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => shm_error(format!(
                    "segment {name:?} is a symbolic link; refusing to follow it \
                     (attach to the segment it points to by that segment's own name)"
                )),
                _ => shm_error(format!("cannot open segment {name:?}: {e}")),
            })?;
        let meta = file
            .metadata()
            .map_err(|e| shm_error(format!("cannot inspect segment {name:?}: {e}")))?;
        check_trusted(name, &meta)?;
        let len = usize::try_from(meta.len())
            .map_err(|_| shm_error(format!("segment {name:?} is too large to map")))?;
        Self::map_fd(file.into(), len, None, Some(name.to_owned()))
    }

    /// Hands the owner's claim on the name to the caller (a manager that removes the
    /// name when it stops, not when the handles go).
    pub(crate) fn take_owner(&mut self) -> Option<NamedOwner> {
        self.owner.take()
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
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
        (PassFd::new(fd), self.len() as u64, self.name.as_deref()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Segment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let (fd, len, name) = <(PassFd, u64, Option<String>)>::deserialize(d)?;
        Segment::received(fd.0, len, name).map_err(|e| D::Error::custom(e.to_string()))
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
/// worse: the bytes are copied one by one with relaxed atomics (any offset may be
/// read or written, so one width for all), which keeps racing threads of one process
/// defined, at some cost in speed over `memcpy` for large copies.
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
/// kernel drops that lock when the owner's process dies, however it dies.
///
/// A name never outlives a dead owner: by default it is *tracked*, and a small tracker
/// process (started with the first tracked name) removes it when the owner dies without
/// removing it (see [`SharedMemoryBuilder::track`]). An untracked name left behind by a
/// crashed owner is recognisable as stale — nobody holds its lock — and is removed by
/// the next `create_named` of the same name or by [`SharedMemory::remove_stale`].
///
/// A named segment is trusted by every process attached to it: [`open_named`](Self::open_named)
/// accepts only a file of this user's that nobody else can access, but any process of
/// this user can still write it, or truncate it, which makes an attacher's access past
/// the new end fault (`SIGBUS`, ending the process). Anonymous segments are sealed
/// against resizing and cannot be truncated.
pub struct SharedMemory {
    seg: Arc<Segment>,
}

/// Refuses a named segment that anyone but this user could have made or could write
/// (see [`Segment::open_named`]).
fn check_trusted(name: &str, meta: &std::fs::Metadata) -> Result<()> {
    let euid = sys_shm::euid();
    let refuse = |why: String| {
        Err(shm_error(format!(
            "refusing segment {name:?}: {why}; a named segment must be a regular file \
             owned by this user with mode 0600 (as create_named makes it), since a \
             writer of its bytes could corrupt the memory of every process attached"
        )))
    };
    if !meta.file_type().is_file() {
        return refuse("it is not a regular file".into());
    }
    if meta.uid() != euid {
        return refuse(format!(
            "it belongs to user {}, not to this process's user {euid}",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return refuse(format!("other users have access to it (mode {mode:04o})"));
    }
    Ok(())
}

impl SharedMemory {
    pub(crate) fn from_segment(seg: Segment) -> Self {
        SharedMemory { seg: Arc::new(seg) }
    }

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
    /// The name is tracked: if this process dies without removing it (killed by a
    /// signal, a crash, `std::process::exit`), a small tracker process removes it (see
    /// [`SharedMemoryBuilder::track`]).
    ///
    /// If the name exists but its owner is dead (a crash left it behind), it is
    /// removed and created afresh; if its owner is alive, this fails.
    pub fn create_named(name: &str, len: usize) -> Result<Self> {
        Self::named(name).create(len)
    }

    /// A builder for the named segment `/dev/shm/<name>`, to choose whether it is
    /// tracked before creating it.
    ///
    /// ```
    /// # fn main() -> multiproc::Result<()> {
    /// let name = format!("doc-builder-{}", std::process::id());
    /// let shm = multiproc::SharedMemory::named(&name).track(true).create(4096)?;
    /// assert_eq!(shm.name(), Some(name.as_str()));
    /// # Ok(()) }
    /// ```
    pub fn named(name: &str) -> SharedMemoryBuilder {
        SharedMemoryBuilder {
            name: name.to_owned(),
            track: true,
        }
    }

    /// Attaches to the named segment `/dev/shm/<name>`, all of it. An attacher never
    /// removes the name.
    ///
    /// The segment must be a regular file owned by this process's effective user with
    /// no access for group or others (mode `0600`, as [`create_named`](Self::create_named)
    /// makes it); a symbolic link is not followed. Anything else is refused with
    /// [`Error::SharedMemory`]: `/dev/shm` is writable by every user, and the bytes of
    /// a named [`Value`](crate::Value), [`Array`](crate::Array) or lock hold mutex
    /// state that a hostile writer could use to corrupt this process's memory. (Unlike
    /// Python, which opens whatever the name refers to.)
    pub fn open_named(name: &str) -> Result<Self> {
        Ok(SharedMemory {
            seg: Arc::new(Segment::open_named(name)?),
        })
    }

    /// Removes the named segment if its owner is dead (no live process holds the
    /// owner's lock). Returns whether it removed something; a missing name is `false`.
    /// Attached processes keep their mappings either way.
    pub fn remove_stale(name: &str) -> Result<bool> {
        let path = validate_name(name)?;
        // A symbolic link is not followed: it is refused, not its target removed.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
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
        let now = std::fs::symlink_metadata(&path).ok();
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

    /// The segment's name, if it is a named one; a handle passed to another process
    /// keeps it.
    pub fn name(&self) -> Option<&str> {
        self.seg.name()
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
    ///
    /// Each byte is read with a relaxed atomic load, so a read racing a write (in
    /// another process, or another thread of this one) is defined but may see the
    /// write half done.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        if self.seg.map().load_relaxed(offset, buf, 1) {
            Ok(())
        } else {
            Err(self.out_of_bounds(offset, buf.len()))
        }
    }

    /// Copies `data` into the segment at `offset`, each byte with a relaxed atomic
    /// store (see [`read_at`](Self::read_at)).
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        if self.seg.map().store_relaxed(offset, data, 1) {
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

/// Creates a named [`SharedMemory`] with options ([`SharedMemory::named`]).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `create` is called"]
pub struct SharedMemoryBuilder {
    name: String,
    track: bool,
}

impl SharedMemoryBuilder {
    /// Whether the tracker removes the name if this process dies without removing it
    /// (`true` by default; Python's `track=`).
    ///
    /// The tracker is a small process this process starts on its first tracked
    /// segment; it notices this process's death (its socket to us reaches its end, and
    /// our pidfd turns readable), removes every tracked name this process still owns,
    /// and exits; it also exits, removing whatever is left, at this process's normal
    /// exit. With `track(false)` nothing watches the name: it outlives a killed owner
    /// until someone removes it ([`SharedMemory::remove_stale`] or the next
    /// `create_named` of that name).
    pub fn track(mut self, track: bool) -> Self {
        self.track = track;
        self
    }

    /// Creates the segment, `len` zero bytes; see [`SharedMemory::create_named`].
    pub fn create(self, len: usize) -> Result<SharedMemory> {
        Ok(SharedMemory {
            seg: Arc::new(Segment::create_named(&self.name, len, self.track, |_| {
                Ok(())
            })?),
        })
    }
}
