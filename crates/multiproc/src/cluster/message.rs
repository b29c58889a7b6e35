//! What travels through Redis: a chunk of calls (caller → nodes), its answers (node →
//! caller), and a node's heartbeat. Each is postcard, signed (see `auth`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{Error, Signal};
use crate::pool::core::jobs::Packed;
use crate::wire::message::{Failure, TaskRef};

/// A chunk of calls of one task, leased to one node at a time.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ChunkMsg {
    /// The caller's name for this chunk, never reused (echoed in the answer): an answer
    /// to a chunk the caller gave up on finds nothing.
    pub(super) tag: u64,
    pub(super) entry: TaskRef,
    /// The arguments end to end; `ends[i]` is where argument `i` ends.
    pub(super) data: ByteBuf,
    pub(super) ends: Vec<u64>,
    /// Runs of this chunk allowed beyond the first when nodes are lost.
    pub(super) retries: u32,
    /// Per call, if the caller set a task timeout.
    pub(super) timeout_ms: Option<u64>,
}

impl ChunkMsg {
    /// Takes the arguments out, packed as they came (one copy into the local chunk,
    /// none per argument), or `None` if `ends` does not fit `data` (a node never trusts
    /// lengths, even signed ones).
    pub(super) fn take_args(&mut self) -> Option<Packed> {
        Packed::new(std::mem::take(&mut self.data).into_vec(), &self.ends)
    }

    pub(super) fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }
}

/// How a call ended on a node without a value from the task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum NodeFailure {
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
    /// Its runs ended without an answer as many times as retries allow; the last
    /// one so.
    Lost {
        last: Previous,
        runs: u64,
    },
    /// Anything else, as text.
    Other {
        message: String,
    },
}

impl NodeFailure {
    pub(super) fn of(e: &Error) -> NodeFailure {
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

    /// The caller's error for call `index` (as the caller numbers it) that failed so on
    /// `node`.
    pub(super) fn into_error(self, node: &str, index: usize, address: &str) -> Error {
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
            NodeFailure::Lost { last, runs } => {
                let runs = if runs == 1 {
                    "1 run".to_owned()
                } else {
                    format!("{runs} runs")
                };
                let detail = match last {
                    Previous::Lost(node) => format!(
                        "call {index} was lost with node {node}, which stopped renewing its \
                         lease: killed, cut off or frozen ({runs}, no retry left: see \
                         PoolBuilder::retries)"
                    ),
                    Previous::HandedBack(node) => format!(
                        "call {index} was handed back by node {node} (SIGTERM) before it \
                         finished within the node's drain time ({runs}, no retry left: see \
                         PoolBuilder::retries)"
                    ),
                    Previous::Refused(node) => format!(
                        "call {index} was refused by node {node}, whose key is not the \
                         caller's ({runs}, no retry left: see PoolBuilder::retries)"
                    ),
                };
                return Error::Cluster {
                    address: address.to_owned(),
                    detail,
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
pub(super) enum WirePart {
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

/// How a chunk's previous run ended, when it runs again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Previous {
    /// Its node ("host:pid") stopped renewing the lease: killed, cut off, frozen.
    Lost(String),
    /// Its node got SIGTERM and handed it back, unfinished after the drain time.
    HandedBack(String),
    /// A node refused it: its signature did not check (that node has another key).
    Refused(String),
}

impl std::fmt::Display for Previous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Previous::Lost(node) => write!(
                f,
                "node {node} was lost (it stopped renewing its lease: killed, cut off or frozen)"
            ),
            Previous::HandedBack(node) => write!(f, "node {node} handed it back (SIGTERM)"),
            Previous::Refused(node) => write!(
                f,
                "node {node} refused it (its key is not the caller's MULTIPROC_CLUSTER_KEY)"
            ),
        }
    }
}

/// What a node sends on a caller's answers stream.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum NodeMsg {
    /// Every answer of a chunk.
    Answer(AnswerMsg),
    /// A chunk starts again on `node` (run `run`), after its previous run ended so:
    /// for the caller's log.
    Rerun {
        tag: u64,
        node: String,
        run: u64,
        previous: Previous,
    },
}

/// Every answer of one chunk.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AnswerMsg {
    pub(super) tag: u64,
    /// The node that ran it ("host:pid").
    pub(super) node: String,
    /// Time the calls took on the node's workers, in all.
    pub(super) nanos: u64,
    pub(super) parts: Vec<WirePart>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(f: NodeFailure, index: usize) -> String {
        f.into_error("h:1", index, "redis://r:6379/0").to_string()
    }

    #[test]
    fn a_call_that_gave_up_is_named_by_the_callers_index_and_says_how_its_run_ended() {
        let lost = NodeFailure::Lost {
            last: Previous::Lost("h:7".into()),
            runs: 1,
        };
        let text = detail(lost, 41);
        assert!(text.contains("call 41 was lost with node h:7"), "{text}");
        assert!(text.contains("killed, cut off or frozen (1 run,"), "{text}");
        let handed = NodeFailure::Lost {
            last: Previous::HandedBack("h:8".into()),
            runs: 2,
        };
        let text = detail(handed, 3);
        assert!(text.contains("call 3 was handed back by node h:8 (SIGTERM)"), "{text}");
        assert!(text.contains("(2 runs,"), "{text}");
        assert!(!text.contains("frozen"), "{text}");
        let timeout = NodeFailure::Timeout { ms: 500 };
        assert!(detail(timeout, 9).contains("call 9 of a cluster job"));
    }

    #[test]
    fn node_messages_round_trip() {
        let m = NodeMsg::Rerun {
            tag: 5,
            node: "h:2".into(),
            run: 2,
            previous: Previous::HandedBack("h:1".into()),
        };
        let bytes = postcard::to_stdvec(&m).unwrap();
        match postcard::from_bytes::<NodeMsg>(&bytes).unwrap() {
            NodeMsg::Rerun { tag, previous, .. } => {
                assert_eq!(tag, 5);
                assert_eq!(previous, Previous::HandedBack("h:1".into()));
            }
            other => panic!("{other:?}"),
        }
    }
}
