//! What both ends of a connection apply: the key policy, and TCP keep-alive.

use std::os::fd::AsFd;

use nix::sys::socket::{self, sockopt};

use super::{Address, AuthKey};
use crate::error::{Error, Result};

pub(super) fn config_error(address: &Address, detail: impl Into<String>) -> Error {
    Error::Connection {
        address: address.to_string(),
        detail: detail.into(),
    }
}

/// Refuses a keyless TCP endpoint unless it was asked for.
pub(super) fn check_key(address: &Address, key: Option<&AuthKey>, allow_open: bool, who: &str) -> Result<()> {
    if key.is_none() && !address.is_unix() && !allow_open {
        return Err(config_error(
            address,
            format!(
                "a {who} on TCP needs a key: without one, anyone who can reach the port can \
                 connect. Pass a key (AuthKey::random()), or if the network is trusted say so \
                 with {}::builder(address).allow_unauthenticated()",
                if who == "listener" { "Listener" } else { "Client" }
            ),
        ));
    }
    Ok(())
}

/// Keep-alive probes and a bound on unacknowledged data, so that a connection to a
/// machine that vanished fails (see the module docs, "Dead peers").
pub(super) fn keep_alive(sock: &impl AsFd) -> nix::Result<()> {
    socket::setsockopt(sock, sockopt::KeepAlive, &true)?;
    socket::setsockopt(sock, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_SECS)?;
    socket::setsockopt(sock, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_SECS)?;
    socket::setsockopt(sock, sockopt::TcpKeepCount, &KEEPALIVE_PROBES)?;
    socket::setsockopt(sock, sockopt::TcpUserTimeout, &USER_TIMEOUT_MS)
}

/// Seconds of silence before the first keep-alive probe.
const KEEPALIVE_IDLE_SECS: u32 = 10;
/// Seconds between unanswered probes.
const KEEPALIVE_INTERVAL_SECS: u32 = 5;
/// Unanswered probes that end the connection.
const KEEPALIVE_PROBES: u32 = 3;
/// How long sent data may stay unacknowledged before the connection ends.
const USER_TIMEOUT_MS: u32 = 30_000;
