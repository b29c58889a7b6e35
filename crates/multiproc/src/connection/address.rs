//! Where a listener listens: a Unix socket path, a Linux abstract name, or TCP.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// A listener's address, as Python's `multiprocessing.connection` spells them.
///
/// Parsed from a string ([`str::parse`], or anything taking [`IntoAddress`]):
///
/// | string | address |
/// |---|---|
/// | `/run/app.sock`, `./app.sock`, `unix:app.sock` | [`Address::Unix`]: a socket file |
/// | `@app`, `\0app` | [`Address::Abstract`]: a Linux abstract name (no file) |
/// | `@` | a fresh abstract name, picked when a listener binds |
/// | `127.0.0.1:5000`, `[::1]:5000`, `localhost:0`, `tcp:host:port` | [`Address::Tcp`] (port 0: any free port) |
///
/// A host name is resolved when the string is parsed, to its first address.
///
/// ```
/// use multiproc::connection::Address;
/// let a: Address = "127.0.0.1:0".parse()?;
/// assert!(matches!(a, Address::Tcp(_)));
/// assert_eq!("@svc".parse::<Address>()?, Address::Abstract(b"svc".to_vec()));
/// assert_eq!("@svc".parse::<Address>()?.to_string(), "@svc");
/// # Ok::<(), multiproc::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// A Unix socket file. A listener removes it when dropped.
    Unix(PathBuf),
    /// A Linux abstract socket name: no file, gone with the listener; visible to every
    /// process in the same network namespace. Empty: pick a fresh name at bind.
    Abstract(Vec<u8>),
    /// A TCP address. Port 0 at bind: any free port ([`Listener::address`] says which).
    ///
    /// [`Listener::address`]: super::Listener::address
    Tcp(SocketAddr),
}

impl Address {
    /// `true` for the Unix-socket kinds (a path or an abstract name), which can carry OS
    /// handles and are reachable only from this machine.
    pub fn is_unix(&self) -> bool {
        !matches!(self, Address::Tcp(_))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) if p.to_string_lossy().contains('/') => {
                write!(f, "{}", p.display())
            }
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            Address::Tcp(a) => write!(f, "{a}"),
        }
    }
}

fn bad(text: &str, detail: impl Into<String>) -> Error {
    Error::Connection {
        address: text.to_owned(),
        detail: detail.into(),
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Address> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad(s, "a Unix socket address needs a path after `unix:`"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(name) = s.strip_prefix('@').or_else(|| s.strip_prefix('\0')) {
            return Ok(Address::Abstract(name.as_bytes().to_vec()));
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            return tcp(s, rest.trim_start_matches("//"));
        }
        if s.contains('/') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        if s.contains(':') {
            return tcp(s, s);
        }
        Err(bad(
            s,
            "not an address: write a socket path with a slash (`./app.sock`, or \
             `unix:app.sock`), an abstract name (`@app`), or TCP `host:port`",
        ))
    }
}

fn tcp(s: &str, hostport: &str) -> Result<Address> {
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Ok(Address::Tcp(a));
    }
    let mut addrs = hostport
        .to_socket_addrs()
        .map_err(|e| bad(s, format!("cannot resolve the TCP address: {e}")))?;
    addrs
        .next()
        .map(Address::Tcp)
        .ok_or_else(|| bad(s, "the host name resolves to no address"))
}

/// Anything that names an [`Address`]: a string (see there), an `Address`, a
/// `SocketAddr`, or a `Path`/`PathBuf` (a Unix socket file).
pub trait IntoAddress {
    /// The address, or why this is none.
    fn into_address(self) -> Result<Address>;
}

impl IntoAddress for Address {
    fn into_address(self) -> Result<Address> {
        Ok(self)
    }
}
impl IntoAddress for &Address {
    fn into_address(self) -> Result<Address> {
        Ok(self.clone())
    }
}
impl IntoAddress for &str {
    fn into_address(self) -> Result<Address> {
        self.parse()
    }
}
impl IntoAddress for String {
    fn into_address(self) -> Result<Address> {
        self.parse()
    }
}
impl IntoAddress for &String {
    fn into_address(self) -> Result<Address> {
        self.parse()
    }
}
impl IntoAddress for SocketAddr {
    fn into_address(self) -> Result<Address> {
        Ok(Address::Tcp(self))
    }
}
impl IntoAddress for &Path {
    fn into_address(self) -> Result<Address> {
        Ok(Address::Unix(self.to_owned()))
    }
}
impl IntoAddress for PathBuf {
    fn into_address(self) -> Result<Address> {
        Ok(Address::Unix(self))
    }
}
impl IntoAddress for &PathBuf {
    fn into_address(self) -> Result<Address> {
        Ok(Address::Unix(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_parse_as_python_spells_them() {
        let p = |s: &str| s.parse::<Address>();
        assert_eq!(p("/tmp/a.sock").unwrap(), Address::Unix("/tmp/a.sock".into()));
        assert_eq!(p("./a.sock").unwrap(), Address::Unix("./a.sock".into()));
        assert_eq!(p("unix:a.sock").unwrap(), Address::Unix("a.sock".into()));
        assert_eq!(p("@name").unwrap(), Address::Abstract(b"name".to_vec()));
        assert_eq!(p("\0name").unwrap(), Address::Abstract(b"name".to_vec()));
        assert_eq!(p("@").unwrap(), Address::Abstract(Vec::new()));
        assert_eq!(
            p("127.0.0.1:80").unwrap(),
            Address::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            p("tcp://[::1]:0").unwrap(),
            Address::Tcp("[::1]:0".parse().unwrap())
        );
        assert!(matches!(p("localhost:0").unwrap(), Address::Tcp(_)));
        for bad in ["", "a.sock", "unix:", "host:notaport", "tcp:"] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        for s in ["/tmp/a.sock", "unix:a.sock", "@x", "127.0.0.1:5"] {
            assert_eq!(p(s).unwrap().to_string(), s);
            assert_eq!(p(&p(s).unwrap().to_string()).unwrap(), p(s).unwrap());
        }
    }
}
