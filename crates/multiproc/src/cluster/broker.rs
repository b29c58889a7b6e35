//! The Redis side: where each thing lives (key names), and the few stream commands the
//! caller and the nodes use, each bounded in time and mapped to [`Error::Cluster`].
//!
//! Keys, all under `multiproc:<build id>:` so that a node sees only work of its own
//! build:
//! - `callers`: sorted set of live callers, scored by their last heartbeat (ms);
//! - `<caller>:calls`: the caller's stream of chunks, read by the consumer group
//!   `nodes` (its pending-entries list is the lease table);
//! - `<caller>:answers`: the stream of answers for the caller;
//! - `<caller>:alive`: present while the caller lives (expires otherwise);
//! - `nodes`: sorted set of nodes by last heartbeat; `node:<name>`: a node's
//!   [`NodeInfo`](super::NodeInfo), expiring (not signed: it carries no work, and a
//!   caller must read it even with another key, to say so).
//!
//! And one key for every build, `multiproc:nodes` (see [`Keys::registry`]), so that a
//! caller whose build no node runs can say that nodes of other builds are there.
//!
//! A caller's keys expire [`EXPIRY_LEASES`] leases after its last heartbeat, so
//! nothing of a caller that died stays in Redis.
//!
//! Every timestamp stored in Redis or compared with one (heartbeats, the registry's
//! expiry times) is on the Redis server's clock ([`now_ms`]), so machines whose clocks
//! disagree still see each other's nodes and callers.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::streams::{StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{Connection, FromRedisValue, Value};

use crate::error::{Error, Result};

/// The consumer group of every calls stream.
pub(super) const GROUP: &str = "nodes";
/// A caller's keys live this many leases past its last heartbeat.
pub(super) const EXPIRY_LEASES: u32 = 4;

/// Key names of one build.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    ns: String,
}

impl Keys {
    pub(super) fn new(build: &str) -> Keys {
        Keys {
            ns: format!("multiproc:{build}:"),
        }
    }

    pub(super) fn callers(&self) -> String {
        format!("{}callers", self.ns)
    }
    pub(super) fn calls(&self, caller: &str) -> String {
        format!("{}{caller}:calls", self.ns)
    }
    pub(super) fn answers(&self, caller: &str) -> String {
        format!("{}{caller}:answers", self.ns)
    }
    pub(super) fn alive(&self, caller: &str) -> String {
        format!("{}{caller}:alive", self.ns)
    }
    pub(super) fn nodes(&self) -> String {
        format!("{}nodes", self.ns)
    }
    pub(super) fn node(&self, name: &str) -> String {
        format!("{}node:{name}", self.ns)
    }

    /// The registry of every build's nodes (the one key outside a build's namespace):
    /// a sorted set of `<build id>/<node>`, scored by when the entry expires (ms since
    /// the epoch, on the Redis server's clock: see [`now_ms`]). Not signed: it carries no work, and a forged entry
    /// changes only the words of the error of a caller that no node serves.
    pub(super) fn registry() -> String {
        "multiproc:nodes".to_owned()
    }

    pub(super) fn registry_member(build: &str, node: &str) -> String {
        format!("{build}/{node}")
    }
}

/// Milliseconds since the Unix epoch, on this machine's clock.
fn local_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The Redis server's clock minus this machine's, in ms, as last measured (see
/// [`Broker::sync_clock`]). One for the process: a process talks to one cluster.
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// How often a broker measures the offset again (clocks drift, NTP steps them).
const CLOCK_SYNC_EVERY: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch on the Redis server's clock (this machine's
/// clock, corrected by the offset last measured with `TIME`), for every timestamp that
/// other machines compare with theirs.
pub(super) fn now_ms() -> u64 {
    let offset = CLOCK_OFFSET_MS.load(Ordering::Relaxed);
    u64::try_from((local_ms() as i64).saturating_add(offset)).unwrap_or(0)
}

/// One connection to the Redis server, with the address errors name (the URL without
/// its password).
pub(super) struct Broker {
    con: Connection,
    pub(super) address: String,
    /// When this broker last measured the clock offset.
    synced: Option<Instant>,
}

/// The address in errors: host and port (and database), never the password.
pub(super) fn address_of(url: &str) -> String {
    match redis::parse_redis_url(url) {
        Some(u) => {
            let host = u.host_str().unwrap_or("?");
            let port = u.port().unwrap_or(6379);
            format!("{}://{host}:{port}{}", u.scheme(), u.path())
        }
        None => "an unparsable Redis URL".to_owned(),
    }
}

impl Broker {
    /// Connects within `timeout`; every command then fails after `timeout` rather than
    /// hang (blocking reads pass their own, shorter, block time).
    pub(super) fn connect(url: &str, timeout: Duration) -> Result<Broker> {
        let address = address_of(url);
        let fail = |what: &str, e: redis::RedisError| Error::Cluster {
            address: address.clone(),
            detail: format!("{what}: {e}"),
        };
        let client = redis::Client::open(url).map_err(|e| fail("bad Redis URL", e))?;
        let con = client
            .get_connection_with_timeout(timeout)
            .map_err(|e| fail("cannot connect to Redis", e))?;
        con.set_read_timeout(Some(timeout))
            .map_err(|e| fail("cannot set a read timeout", e))?;
        con.set_write_timeout(Some(timeout))
            .map_err(|e| fail("cannot set a write timeout", e))?;
        let mut b = Broker {
            con,
            address,
            synced: None,
        };
        b.sync_clock();
        Ok(b)
    }

    /// Measures how far the Redis server's clock is from ours (`TIME`), unless done in
    /// the last [`CLOCK_SYNC_EVERY`]; [`now_ms`] applies it. A failure keeps the
    /// offset measured before: the command that follows reports the connection's
    /// trouble.
    pub(super) fn sync_clock(&mut self) {
        if self.synced.is_some_and(|t| t.elapsed() < CLOCK_SYNC_EVERY) {
            return;
        }
        let before = local_ms();
        let Ok((secs, micros)) = redis::cmd("TIME").query::<(u64, u64)>(&mut self.con) else {
            return;
        };
        let after = local_ms();
        self.synced = Some(Instant::now());
        // The server read its clock about halfway through the round trip.
        let server = secs.saturating_mul(1000).saturating_add(micros / 1000);
        let here = before + after.saturating_sub(before) / 2;
        CLOCK_OFFSET_MS.store(server as i64 - here as i64, Ordering::Relaxed);
    }

    fn fail(&self, what: &str, e: redis::RedisError) -> Error {
        Error::Cluster {
            address: self.address.clone(),
            detail: format!("{what}: {e}"),
        }
    }

    /// Runs one command.
    pub(super) fn run<T: FromRedisValue>(&mut self, what: &str, cmd: &redis::Cmd) -> Result<T> {
        cmd.query(&mut self.con).map_err(|e| self.fail(what, e))
    }

    /// Runs commands in one round trip (not atomically).
    pub(super) fn pipe<T: FromRedisValue>(
        &mut self,
        what: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T> {
        pipe.query(&mut self.con).map_err(|e| self.fail(what, e))
    }

    /// Creates `stream` and its consumer group if they are not there.
    pub(super) fn ensure_group(&mut self, stream: &str) -> Result<()> {
        let r: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query(&mut self.con);
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.fail("cannot create a consumer group", e)),
        }
    }

    /// Reads new entries of `streams` for `consumer` of the group, waiting at most
    /// `block` for some. `None`: one of the streams (or its group) is gone, and the
    /// read failed for all of them (the caller prunes its list).
    pub(super) fn read_group(
        &mut self,
        consumer: &str,
        streams: &[String],
        count: usize,
        block: Duration,
    ) -> Result<Option<Vec<(String, StreamId)>>> {
        if streams.is_empty() || count == 0 {
            return Ok(Some(Vec::new()));
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS");
        for s in streams {
            cmd.arg(s);
        }
        for _ in streams {
            cmd.arg(">");
        }
        let reply: redis::RedisResult<Option<StreamReadReply>> = cmd.query(&mut self.con);
        match reply {
            Ok(r) => Ok(Some(flatten(r))),
            // A stream (or its group) that expired since the list was made, or that
            // its caller deleted while this read waited (a caller that ended).
            Err(e) if matches!(e.code(), Some("NOGROUP" | "UNBLOCKED")) => Ok(None),
            Err(e) => Err(self.fail("cannot read calls", e)),
        }
    }

    /// Reads entries of `stream` after `last`, waiting at most `block`.
    pub(super) fn read(
        &mut self,
        stream: &str,
        last: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<StreamId>> {
        let reply: Option<StreamReadReply> = self.run(
            "cannot read answers",
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(stream)
                .arg(last),
        )?;
        Ok(flatten(reply).into_iter().map(|(_, id)| id).collect())
    }

    /// Entries of `stream` whose lease is older than `idle` (their node stopped
    /// renewing), with their consumers and delivery counts.
    pub(super) fn expired(
        &mut self,
        stream: &str,
        idle: Duration,
        count: usize,
    ) -> Result<StreamPendingCountReply> {
        let r: redis::RedisResult<StreamPendingCountReply> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle.as_millis() as u64)
            .arg("-")
            .arg("+")
            .arg(count)
            .query(&mut self.con);
        match r {
            Ok(r) => Ok(r),
            Err(e) if e.code() == Some("NOGROUP") => Ok(StreamPendingCountReply::default()),
            Err(e) => Err(self.fail("cannot list expired leases", e)),
        }
    }

    /// The entries of `stream` leased to `consumer` now (at most `count`).
    pub(super) fn owned(
        &mut self,
        stream: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<String>> {
        let r: redis::RedisResult<StreamPendingCountReply> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(count)
            .arg(consumer)
            .query(&mut self.con);
        match r {
            Ok(r) => Ok(r.ids.into_iter().map(|p| p.id).collect()),
            Err(e) if e.code() == Some("NOGROUP") => Ok(Vec::new()),
            Err(e) => Err(self.fail("cannot list leases", e)),
        }
    }

    /// Takes over the entry `id` of `stream` for `consumer` if its lease is still
    /// older than `idle` (another node may have been quicker): the entry, or `None`.
    pub(super) fn claim(
        &mut self,
        stream: &str,
        consumer: &str,
        idle: Duration,
        id: &str,
    ) -> Result<Option<StreamId>> {
        let r: redis::streams::StreamClaimReply = self.run(
            "cannot claim an expired lease",
            redis::cmd("XCLAIM")
                .arg(stream)
                .arg(GROUP)
                .arg(consumer)
                .arg(idle.as_millis() as u64)
                .arg(id),
        )?;
        Ok(r.ids.into_iter().next())
    }
}

fn flatten(reply: Option<StreamReadReply>) -> Vec<(String, StreamId)> {
    let mut out = Vec::new();
    for k in reply.map(|r| r.keys).unwrap_or_default() {
        for id in k.ids {
            out.push((k.key.clone(), id));
        }
    }
    out
}

/// The bytes of field `m` of an entry (every message is one field).
pub(super) fn message(entry: &StreamId) -> Option<&[u8]> {
    match entry.map.get("m")? {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}
