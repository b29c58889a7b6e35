//! [`Handle`]: any OS handle (a file, a socket, an eventfd…) as a value that crosses to
//! another process.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::wire::fds::PassFd;

/// An owned OS handle that can be a task's argument or result, or travel through a
/// [`Pipe`](crate::Pipe) or [`Queue`](crate::Queue): the receiving process gets its own
/// descriptor for the same open file (the kernel duplicates it, as `SCM_RIGHTS` does;
/// no path or name is involved, so it reaches exactly that process).
///
/// A [`File`], a `TcpStream` or an [`OwnedFd`] cannot be a task's result by itself: it
/// has no serde form, since its number means nothing in another process. Wrap it:
///
/// ```
/// use std::io::{Read, Seek, Write};
/// use multiproc::{Handle, Process};
///
/// fn open_scratch(text: String) -> Handle {
///     let mut f = tempfile_in_tmp();
///     f.write_all(text.as_bytes()).unwrap();
///     Handle::from(f)
/// }
/// # fn tempfile_in_tmp() -> std::fs::File {
/// #     let path = std::env::temp_dir().join(format!("multiproc-doc-{}", std::process::id()));
/// #     let f = std::fs::OpenOptions::new().read(true).write(true).create(true)
/// #         .truncate(true).open(&path).unwrap();
/// #     std::fs::remove_file(&path).unwrap();
/// #     f
/// # }
///
/// # fn main() -> multiproc::Result<()> {
/// let mut file = std::fs::File::from(Process::start(open_scratch, "hello".into())?.join()?);
/// file.rewind().unwrap();
/// let mut back = String::new();
/// file.read_to_string(&mut back).unwrap();
/// assert_eq!(back, "hello");
/// # Ok(()) }
/// ```
///
/// A handle cannot leave the machine: on the cluster pool a value that holds one answers
/// [`Error::Encode`](crate::Error::Encode) before anything is sent.
#[derive(Debug)]
pub struct Handle(OwnedFd);

impl Handle {
    /// The descriptor, as an [`OwnedFd`].
    pub fn into_owned_fd(self) -> OwnedFd {
        self.0
    }

    /// A second handle to the same open file (`dup`).
    pub fn try_clone(&self) -> std::io::Result<Handle> {
        self.0.try_clone().map(Handle)
    }
}

impl From<OwnedFd> for Handle {
    fn from(fd: OwnedFd) -> Self {
        Handle(fd)
    }
}

impl From<File> for Handle {
    fn from(f: File) -> Self {
        Handle(f.into())
    }
}

impl From<std::net::TcpStream> for Handle {
    fn from(s: std::net::TcpStream) -> Self {
        Handle(s.into())
    }
}

impl From<std::os::unix::net::UnixStream> for Handle {
    fn from(s: std::os::unix::net::UnixStream) -> Self {
        Handle(s.into())
    }
}

impl From<Handle> for OwnedFd {
    fn from(h: Handle) -> Self {
        h.0
    }
}

impl From<Handle> for File {
    fn from(h: Handle) -> Self {
        File::from(h.0)
    }
}

impl From<Handle> for std::net::TcpStream {
    fn from(h: Handle) -> Self {
        std::net::TcpStream::from(h.0)
    }
}

impl From<Handle> for std::os::unix::net::UnixStream {
    fn from(h: Handle) -> Self {
        std::os::unix::net::UnixStream::from(h.0)
    }
}

impl AsFd for Handle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Handle {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl IntoRawFd for Handle {
    fn into_raw_fd(self) -> RawFd {
        self.0.into_raw_fd()
    }
}

impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let fd = self
            .0
            .try_clone()
            .map_err(|e| S::Error::custom(format!("cannot duplicate a handle: {e}")))?;
        PassFd::new(fd).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PassFd::deserialize(d).map(|p| Handle(p.0))
    }
}
