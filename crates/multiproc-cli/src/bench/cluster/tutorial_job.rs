//! Cluster tutorial job: the tutorial's sum split over the cluster's slots, and over a
//! local pool.

use std::error::Error;

use super::fixture::Slot;
use super::{CLUSTER, GROUP, LOCAL, chunk_rule, start_wait, topology, total_workers, unavailable};
use crate::bench::pool;
use crate::bench::{Case, Kind, Row, Workload, find};
use crate::work::work;

/// The tutorial's job split over the cluster's slots, and over a local pool.
#[derive(Default)]
pub struct TutorialJob {
    cluster: Slot,
}

impl Workload for TutorialJob {
    fn name(&self) -> &'static str {
        "cluster tutorial job"
    }

    fn description(&self) -> &'static str {
        "sum 0..50,000,000 twice, split over the 2 nodes' slots through Redis, and over a \
         local Pool of as many workers (pools started before timing)"
    }

    fn reference(&self) -> &'static str {
        LOCAL
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
        Some(21)
    }

    fn cases(&self) -> Vec<Case> {
        let Some(c) = self.cluster.take() else {
            return Vec::new();
        };
        let pieces = pool::split(total_workers() as u64);
        let mut cases = Vec::new();
        match multiproc::Pool::new(total_workers()) {
            Ok(p) => {
                let pieces = pieces.clone();
                cases.push(Case::new(LOCAL, Kind::Multiproc, move |_| {
                    pool::timed_sum(|| Ok(p.map(work, pieces.iter().copied())?.iter().sum()))
                }));
            }
            Err(e) => eprintln!("bench: no local Pool: {e}"),
        }
        cases.push(Case::new(CLUSTER, Kind::Multiproc, move |_| {
            pool::timed_sum(|| Ok(c.pool().map(work, pieces.iter().copied())?.iter().sum()))
        }));
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            topology(),
            format!(
                "what dominates the difference: {}. The job is {} pieces of ~15-30 ms, each \
                 sent as a one-call chunk (probes, and far below the 100 ms a chunk aims \
                 for), so the cluster adds a few Redis round trips per piece to the same work, \
                 and when work is sent: {}",
                chunk_rule(),
                pool::split(total_workers() as u64).len(),
                start_wait()
            ),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        match (find(rows, CLUSTER), find(rows, LOCAL)) {
            (Some(c), Some(l)) => vec![format!(
                "the cluster adds {:.2} ms to the local Pool's {:.2} ms ({:.2}x its time)",
                (c.median_us - l.median_us) / 1e3,
                l.median_us / 1e3,
                c.ratio / l.ratio
            )],
            _ => Vec::new(),
        }
    }
}
