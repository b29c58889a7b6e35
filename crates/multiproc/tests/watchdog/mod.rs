//! A deadline for a whole test.
//!
//! Several pool calls have no timeout of their own (`map_results`, and dropping a pool,
//! which waits for its work). A regression that loses an answer would hang them, and
//! with them CI; under a watchdog it fails the run within the test's budget instead.
#![allow(dead_code)]

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// Ends the test process if it is still alive `limit` after [`Watchdog::new`]. Bind it
/// first in a test, so that it is dropped last (after the pools).
pub struct Watchdog {
    // Dropping it disconnects the channel, which is what lets the watching thread go.
    _alive: mpsc::Sender<()>,
}

impl Watchdog {
    pub fn new(test: &'static str, limit: Duration) -> Self {
        let (alive, rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{test}: still running after {limit:?}: a call was lost or hangs");
                // A panic here would end only this thread; the hung test would go on.
                // Workers die with their parent (parent-death signal).
                std::process::exit(101);
            }
        });
        Watchdog { _alive: alive }
    }
}
