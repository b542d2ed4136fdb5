//! `Cluster::next_member`, the balancer's choice as diagnostics and benchmarks see it: only a
//! member that takes traffic is ever named, and none when no member does.

use std::sync::Arc;

use hsmpool_engine::backend::{Backend, MemberId};
use hsmpool_engine::cluster::{Cluster, Settings};
use hsmpool_sim::hsm::HsmConfig;
use hsmpool_sim::member::SimMember;

#[test]
fn next_member_names_only_members_that_take_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|i| dir.path().join(format!("hsm{i}"))).collect();
    hsmpool_sim::cluster::provision(&dirs).unwrap();
    let backends: Vec<Arc<dyn Backend>> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut cfg = HsmConfig::new(d.clone());
            cfg.pin_iterations = 1000;
            Arc::new(SimMember::open(MemberId(i as u32), cfg).unwrap()) as Arc<dyn Backend>
        })
        .collect();
    let cluster = Cluster::new(backends, Settings::default());

    assert!(cluster.next_member(1).is_some_and(|i| i < 3));
    cluster.drain(0, true).unwrap();
    cluster.drain(1, true).unwrap();
    for _ in 0..10 {
        assert_eq!(cluster.next_member(1), Some(2), "only member 2 is left");
    }
    cluster.drain(2, true).unwrap();
    assert_eq!(cluster.next_member(1), None, "every member is drained");
    cluster.drain(0, false).unwrap();
    assert_eq!(cluster.next_member(1), Some(0), "member 0 is back");
    // Asking changed nothing: the outstanding work the balancer weighs is still zero.
    assert!(cluster.status().iter().all(|m| m.in_flight == 0));
    cluster.shutdown();
}
