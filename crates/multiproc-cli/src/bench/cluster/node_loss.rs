//! Cluster node loss: a node SIGKILLed while it runs a call, and how long until another
//! node answers it (the lease).

use std::error::Error;
use std::time::{Duration, Instant};

use super::fixture::Slot;
use super::{GROUP, LEASE, start_wait, topology, unavailable};
use crate::bench::{Case, CaseResult, Kind, Row, Workload, find};

/// The call that runs while its node is killed.
const NAP_MS: u64 = 300;

/// Sleeps `ms` milliseconds in a worker; returns `ms`.
pub fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

const NAP_REF: &str = "apply_async(nap 300 ms), no node lost";
const NAP_KILLED: &str = "its node SIGKILLed: kill → answer (lease 1 s)";

/// A node SIGKILLed while it runs a call: how long until another node answers it.
#[derive(Default)]
pub struct NodeLoss {
    cluster: Slot,
}

impl Workload for NodeLoss {
    fn name(&self) -> &'static str {
        "cluster node loss"
    }

    fn description(&self) -> &'static str {
        "apply_async of a 300 ms nap on 2 nodes; SIGKILL the node that took it, time until \
         the answer comes from the other (a new node replaces the dead one between \
         repetitions, untimed)"
    }

    fn reference(&self) -> &'static str {
        NAP_REF
    }

    fn group(&self) -> Option<&'static str> {
        Some(GROUP)
    }

    fn unavailable(&self) -> Option<String> {
        unavailable()
    }

    fn setup(&self) -> Result<(), Box<dyn Error>> {
        self.cluster.start()
    }

    fn max_iters(&self) -> Option<u64> {
        Some(5)
    }

    fn cases(&self) -> Vec<Case> {
        let Some(c) = self.cluster.take() else {
            return Vec::new();
        };
        let answer = |r: multiproc::AsyncResult<u64>| -> Result<(), Box<dyn Error>> {
            match r.get_timeout(Duration::from_secs(60))? {
                NAP_MS => Ok(()),
                other => Err(format!("nap({NAP_MS}) answered {other}").into()),
            }
        };
        let reference = {
            let c = c.clone();
            move |_| -> CaseResult {
                c.ensure_nodes()?;
                let t = Instant::now();
                answer(c.pool().apply_async(nap, NAP_MS)?)?;
                Ok(t.elapsed())
            }
        };
        let killed = move |_| -> CaseResult {
            c.ensure_nodes()?;
            let r = c.pool().apply_async(nap, NAP_MS)?;
            let holder = c.lease_holder(Duration::from_secs(10))?;
            let t = Instant::now();
            c.kill(holder)?;
            answer(r)?;
            let d = t.elapsed();
            // The next repetition has two nodes again (untimed).
            c.ensure_nodes()?;
            Ok(d)
        };
        vec![
            Case::new(NAP_REF, Kind::Multiproc, reference),
            Case::new(NAP_KILLED, Kind::Multiproc, killed),
        ]
    }

    fn notes(&self) -> Vec<String> {
        vec![
            topology(),
            format!(
                "what dominates: the lease. The bench kills the node a few ms after it took \
                 the call (seen in the calls stream's pending entries); the chunk stays \
                 leased to the dead node until its lease is {} s old (a live node renews \
                 every third of a lease); the other node, between reads that block 200 ms \
                 (up to 300 ms on Redis's 100 ms clock), finds it expired, claims it \
                 (XCLAIM) and runs the {NAP_MS} ms nap again from its start. So kill → \
                 answer ≈ lease + ≤ 300 ms + the nap; a shorter lease (PoolBuilder::lease and \
                 MULTIPROC_CLUSTER_LEASE_MS) recovers sooner but renews more often.",
                LEASE.as_secs_f64()
            ),
            format!(
                "the reference row is the same call with no node lost (submit → answer): the \
                 nap, a few Redis round trips, and when work is sent: {}",
                start_wait()
            ),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        let Some(k) = find(rows, NAP_KILLED) else {
            return Vec::new();
        };
        let lease_ms = LEASE.as_secs_f64() * 1e3;
        let mut out = vec![format!(
            "kill → answer: median {:.0} ms (min {:.0}, max {:.0}) with a {:.0} ms lease: the \
             lease + {:.0} ms",
            k.median_us / 1e3,
            k.min_us / 1e3,
            k.max_us / 1e3,
            lease_ms,
            k.median_us / 1e3 - lease_ms
        )];
        if let Some(r) = find(rows, NAP_REF) {
            out.push(format!(
                "losing the node cost {:.0} ms over the call's {:.0} ms without a loss \
                 (lease {:.0} ms)",
                (k.median_us - r.median_us) / 1e3,
                r.median_us / 1e3,
                lease_ms
            ));
        }
        out
    }
}
