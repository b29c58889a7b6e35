//! What travels through Redis: a chunk of calls (caller → nodes), its answers (node →
//! caller), and a node's heartbeat. Each is postcard, signed (see `auth`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{Error, Signal};
use crate::wire::message::{Failure, TaskRef};

/// A chunk of calls of one task, leased to one node at a time.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChunkMsg {
    /// The caller's chunk key: lane and sequence number (echoed in the answer).
    pub(crate) lane: u64,
    pub(crate) seq: u64,
    pub(crate) entry: TaskRef,
    /// The arguments end to end; `ends[i]` is where argument `i` ends.
    pub(crate) data: ByteBuf,
    pub(crate) ends: Vec<u64>,
    /// Runs of this chunk allowed beyond the first when nodes are lost.
    pub(crate) retries: u32,
    /// Per call, if the caller set a task timeout.
    pub(crate) timeout_ms: Option<u64>,
}

impl ChunkMsg {
    /// The arguments one by one, or `None` if `ends` does not fit `data` (a node never
    /// trusts lengths, even signed ones).
    pub(crate) fn args(&self) -> Option<Vec<Vec<u8>>> {
        let mut start = 0usize;
        let mut out = Vec::with_capacity(self.ends.len());
        for &end in &self.ends {
            let end = usize::try_from(end).ok()?;
            out.push(self.data.get(start..end)?.to_vec());
            start = end;
        }
        (start == self.data.len()).then_some(out)
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }
}

/// How a call ended on a node without a value from the task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum NodeFailure {
    Killed {
        pid: u32,
        signal: i32,
        core_dumped: bool,
    },
    Exited {
        pid: u32,
        code: i32,
    },
    Timeout {
        ms: u64,
    },
    /// Its leases expired on these nodes, as many times as retries allow.
    Lost {
        nodes: Vec<String>,
        runs: u64,
    },
    /// Anything else, as text.
    Other {
        message: String,
    },
}

impl NodeFailure {
    pub(crate) fn of(e: &Error) -> NodeFailure {
        match e.inner() {
            Error::Killed {
                pid,
                signal,
                core_dumped,
            } => NodeFailure::Killed {
                pid: *pid,
                signal: signal.raw(),
                core_dumped: *core_dumped,
            },
            Error::Exited { pid, code } => NodeFailure::Exited {
                pid: *pid,
                code: *code,
            },
            Error::Timeout { timeout, .. } => NodeFailure::Timeout {
                ms: timeout.as_millis() as u64,
            },
            other => NodeFailure::Other {
                message: other.to_string(),
            },
        }
    }

    /// The caller's error for call `index` that failed so on `node`.
    pub(crate) fn into_error(self, node: &str, index: usize, address: &str) -> Error {
        let error = match self {
            NodeFailure::Killed {
                pid,
                signal,
                core_dumped,
            } => Error::Killed {
                pid,
                signal: Signal::from_raw(signal),
                core_dumped,
            },
            NodeFailure::Exited { pid, code } => Error::Exited { pid, code },
            NodeFailure::Timeout { ms } => Error::Timeout {
                what: format!("call {index} of a cluster job"),
                timeout: Duration::from_millis(ms),
            },
            NodeFailure::Lost { nodes, runs } => {
                return Error::Cluster {
                    address: address.to_owned(),
                    detail: format!(
                        "call {index} was lost with node(s) {} ({runs} runs whose node stopped \
                         renewing its lease: killed, cut off or frozen)",
                        nodes.join(", ")
                    ),
                };
            }
            NodeFailure::Other { message } => Error::Cluster {
                address: address.to_owned(),
                detail: format!("call {index} failed on the node: {message}"),
            },
        };
        Error::OnNode {
            host: node.to_owned(),
            error: Box::new(error),
        }
    }
}

/// Some answers of a chunk, the calls named by position in it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WirePart {
    /// As a local worker answered: values of the calls at `positions` not in
    /// `failures`, end to end.
    Values {
        pid: u32,
        positions: Vec<u32>,
        failures: Vec<(u32, Failure)>,
        data: ByteBuf,
    },
    Failed(Vec<(u32, NodeFailure)>),
}

/// Every answer of one chunk.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AnswerMsg {
    pub(crate) lane: u64,
    pub(crate) seq: u64,
    /// The node that ran it ("host:pid").
    pub(crate) node: String,
    /// Time the calls took on the node's workers, in all.
    pub(crate) nanos: u64,
    pub(crate) parts: Vec<WirePart>,
}

/// What a node says of itself in each heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its host name.
    pub host: String,
    /// Its pid there.
    pub pid: u32,
    /// Calls it runs at once (its local pool's workers).
    pub slots: u32,
    /// Chunks it runs now.
    pub busy: u32,
    /// Its last heartbeat, in milliseconds since the Unix epoch.
    pub heartbeat_ms: u64,
    /// Messages it dropped because their signature was wrong (a wrong key, or forged).
    pub refused: u64,
    /// When it last dropped one, in milliseconds since the Unix epoch (0: never).
    pub last_refused_ms: u64,
}

impl NodeInfo {
    /// `host:pid`, how errors name the node.
    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.pid)
    }
}
