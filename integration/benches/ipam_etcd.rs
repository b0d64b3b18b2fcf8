//! Allocations per second against a real etcd on loopback: one node alone, then eight nodes
//! at once, in the same run (so the ratio is meaningful on a noisy machine).
//!
//! Run: `cargo bench -p serval-integration --bench ipam_etcd` (or `bench/ipam-etcd`).

use serval_agent::datastore::{Datastore, EtcdBackend};
use serval_integration::EtcdServer;
use serval_integration::ipam_load::{self, Ledger, NodeReport};
use serval_ipam::Ipam;
use std::sync::Arc;

const PER_RUN: usize = 2000;

async fn run(nodes: usize) -> (f64, NodeReport) {
    let etcd = EtcdServer::start("ipam_etcd bench").expect("etcd is needed for this benchmark");
    let connect = || async {
        Datastore::new(
            EtcdBackend::connect(&[etcd.endpoint()])
                .await
                .expect("connect"),
        )
    };
    let names: Vec<String> = (1..=nodes).map(|i| format!("node-{i}")).collect();
    // A pool large enough that nothing runs out: this measures the allocation path.
    ipam_load::setup(&connect().await, "10.0.0.0/16", 26, &names, 0).await;
    let ledger = Arc::new(Ledger::default());
    let per_node = PER_RUN / nodes;
    let mut tasks = Vec::new();
    for n in &names {
        let ipam = Ipam::new(connect().await);
        // Keep everything live until the end (live cap = count): pure allocation rate.
        tasks.push(tokio::spawn(ipam_load::churn(
            ipam,
            n.clone(),
            per_node,
            per_node,
            ledger.clone(),
        )));
    }
    let mut total = NodeReport::default();
    for t in tasks {
        let r = t.await.expect("task").expect("allocation");
        total.allocated += r.allocated;
        total.conflicts += r.conflicts;
        total.alloc_time = total.alloc_time.max(r.alloc_time);
    }
    assert!(ledger.duplicates().is_empty());
    (
        total.allocated as f64 / total.alloc_time.as_secs_f64(),
        total,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; nothing to list here.
    }
    let rt = serval_integration::bench_runtime();
    let (one, r1) = rt.block_on(run(1));
    let (eight, r8) = rt.block_on(run(8));
    println!("ipam over etcd, {PER_RUN} allocations per run (one handle each, etcd on tmpfs):");
    println!(
        "  1 node : {one:8.0} allocations/s  ({} CAS conflicts)",
        r1.conflicts
    );
    println!(
        "  8 nodes: {eight:8.0} allocations/s  ({} CAS conflicts)",
        r8.conflicts
    );
    println!("  8 nodes / 1 node: {:.2}x", eight / one);
}
