//! Cluster tiny calls: 200,000 calls of `x -> 2x`, through the cluster and through a
//! local pool.

use std::error::Error;

use super::fixture::Slot;
use super::{
    CLUSTER, GROUP, LOCAL, chunk_rule, rate, start_wait, topology, total_workers, unavailable,
};
use crate::bench::pool::{self, double};
use crate::bench::{Case, Kind, Row, Workload, find};

/// 200,000 calls of `x -> 2x` through the cluster and through the local pool.
#[derive(Default)]
pub struct TinyCalls {
    cluster: Slot,
}

impl Workload for TinyCalls {
    fn name(&self) -> &'static str {
        "cluster tiny calls"
    }

    fn description(&self) -> &'static str {
        "map x -> 2x over 200,000 inputs through Redis to 2 nodes, and through a local Pool \
         of as many workers (pools started before timing)"
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
        Some(5)
    }

    fn cases(&self) -> Vec<Case> {
        let Some(c) = self.cluster.take() else {
            return Vec::new();
        };
        let mut cases = Vec::new();
        match pool::started_pool(total_workers()) {
            Ok(p) => cases.push(Case::new(LOCAL, Kind::Multiproc, move |_| {
                pool::timed_map(|| p.map(double, 0..pool::TINY))
            })),
            Err(e) => eprintln!("bench: no local Pool: {e}"),
        }
        cases.push(Case::new(CLUSTER, Kind::Multiproc, move |_| {
            pool::timed_map(|| c.pool().map(double, 0..pool::TINY))
        }));
        cases
    }

    fn notes(&self) -> Vec<String> {
        vec![
            topology(),
            format!(
                "what dominates the cluster's time: {}. So 200,000 calls of ~nothing go as a \
                 few probes, then a few chunks of up to 131,072 calls, each waiting its round \
                 trips (caller → Redis → node → its local pool → Redis → caller), its values \
                 encoded, copied through Redis and decoded; the calls themselves are ~nothing.",
                chunk_rule()
            ),
            format!("and when work is sent: {}", start_wait()),
        ]
    }

    fn findings(&self, rows: &[Row]) -> Vec<String> {
        [LOCAL, CLUSTER]
            .iter()
            .filter_map(|name| find(rows, name))
            .map(|r| format!("{}: {}", r.name, rate(pool::TINY, r.median_us)))
            .collect()
    }
}
