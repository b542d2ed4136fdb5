//! The balancer's choice of a member (`Cluster::pick`, through `Cluster::next_member`) with one
//! and with three members: it runs once for every call the engine sends to an HSM, so it must
//! stay a few atomic loads per member.
//!
//! The cluster is built in-process over simulated HSMs (no module, no network); the members are
//! idle, which costs the same as busy ones (the same loads, the same arithmetic).
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hsmpool_engine::backend::{Backend, MemberId};
use hsmpool_engine::cluster::{Cluster, Settings};
use hsmpool_sim::hsm::HsmConfig;
use hsmpool_sim::member::SimMember;

/// Member counts compared.
const MEMBERS: [usize; 2] = [1, 3];

/// Balancing weight of one call: an ECDSA P-256 signature's.
const COST: u64 = 8;

/// A cluster of `n` in-process members storing under `dir`.
fn cluster(dir: &std::path::Path, n: usize) -> Arc<Cluster> {
    let dirs: Vec<_> = (0..n).map(|i| dir.join(format!("hsm{i}"))).collect();
    hsmpool_sim::cluster::provision(&dirs).expect("the members share a clone key");
    let backends: Vec<Arc<dyn Backend>> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut cfg = HsmConfig::new(d.clone());
            cfg.pin_iterations = 1000;
            let id = MemberId(u32::try_from(i).expect("a handful of members"));
            Arc::new(SimMember::open(id, cfg).expect("the simulated HSM opens")) as Arc<dyn Backend>
        })
        .collect();
    Cluster::new(backends, Settings::default())
}

fn balancer(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer");
    for n in MEMBERS {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cluster = cluster(dir.path(), n);
        assert!(
            cluster.next_member(COST).is_some_and(|i| i < n),
            "an idle cluster of {n} picks one of its members"
        );
        group.bench_function(BenchmarkId::new("next_member", n), |b| {
            b.iter(|| black_box(cluster.next_member(black_box(COST))))
        });
        cluster.shutdown();
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = balancer
}
criterion_main!(benches);
