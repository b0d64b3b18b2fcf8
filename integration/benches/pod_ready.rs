//! Time from a CNI ADD on one node to the new pod answering a pod on another node, on the
//! three-node cluster (real etcd, real agents): for the first pod of a node in a fresh pool (a
//! new block is claimed, announced over BGP and routed by the peers) and for later pods in the
//! same block (only the node's own /32 route is new). Same-subnet (native) and cross-subnet
//! (VXLAN) targets, in one run. etcd keeps its data on the machine's disk, as in a cluster
//! (every write waits for fsync), and the datastore requests and writes each ADD costs are
//! counted from etcd's own metrics.
//!
//! Run: `cargo bench -p serval-integration --bench pod_ready` (or `bench/pod-ready`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serval_integration::Netns;
use serval_integration::cluster::{Cluster, Encap, three_nodes, three_nodes_etcd_on_disk};

const LATER_PODS: usize = 5;

/// Polls `from` → `to` with 100 ms pings until one is answered; the time since `t0`.
fn until_reachable(from: &Netns, to: IpAddr, t0: Instant) -> Duration {
    let deadline = t0 + Duration::from_secs(60);
    loop {
        // -W 1 bounds a lost probe; -i is irrelevant with -c 1.
        if from
            .exec(&["ping", "-c", "1", "-W", "1", &to.to_string()])
            .is_ok()
        {
            return t0.elapsed();
        }
        assert!(Instant::now() < deadline, "pod {to} never became reachable");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(v: &mut [Duration]) -> String {
    v.sort();
    format!(
        "median {:>7.1} ms  min {:>7.1} ms  max {:>7.1} ms  (n={})",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

/// etcd's request counters (KV requests by method, committed proposals).
fn counts(c: &mut Cluster) -> std::collections::BTreeMap<String, u64> {
    c.etcd().request_counts()
}

/// (requests, writes) between two readings of [`counts`].
fn cost(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> (u64, u64) {
    let delta = |k: &str| after.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0);
    let requests = after
        .keys()
        .filter(|k| !matches!(k.as_str(), "proposals" | "fsync_count" | "fsync_us"))
        .map(|k| delta(k))
        .sum();
    (requests, delta("proposals"))
}

fn main() {
    let rt = serval_integration::bench_runtime();
    // POD_READY_ETCD=tmpfs puts etcd's data in memory instead, to see the disk's share.
    let on_tmpfs = std::env::var("POD_READY_ETCD").is_ok_and(|v| v == "tmpfs");
    let cluster = if on_tmpfs {
        rt.block_on(three_nodes("pod_ready bench", Encap::Vxlan))
    } else {
        rt.block_on(three_nodes_etcd_on_disk("pod_ready bench", Encap::Vxlan))
    };
    let Some(mut c) = cluster else {
        return;
    };
    let fsyncs_before = c.etcd().request_counts();
    // A second pool in which no node has a block yet.
    let pool: serval_agent::resources::IPPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "serval.dev/v1", "kind": "IPPool", "metadata": {"name": "fresh"},
        "spec": {"cidr": "10.96.0.0/16", "blockSize": 26, "vxlanMode": "CrossSubnet"}
    }))
    .expect("pool literal");
    rt.block_on(c.ds.create(&pool)).expect("create pool");
    // The observer: a pod on node a, warmed up against a pod on each other node.
    c.add_pod(0, "a-probe");
    let warm: Vec<IpAddr> = (1..3).map(|n| c.add_pod(n, &format!("warm{n}"))).collect();
    let probe = c.pods.last().expect("probe").2.name().to_string();
    fn probe_ns<'a>(c: &'a serval_integration::cluster::Cluster, probe: &str) -> &'a Netns {
        c.pods
            .iter()
            .find(|p| p.2.name() == probe)
            .map(|p| &p.2)
            .expect("probe pod")
    }
    let t0 = Instant::now();
    for ip in warm {
        until_reachable(probe_ns(&c, &probe), ip, t0);
    }
    let warm_up = t0.elapsed();
    let mut report = Vec::new();
    for (node, label) in [
        (1usize, "same subnet (node b, native)"),
        (2, "cross subnet (node c, VXLAN)"),
    ] {
        let before = counts(&mut c);
        let t0 = Instant::now();
        let ip = c.add_pod_from(
            node,
            &format!("{}-first", &c.nodes[node].name[5..]),
            &["fresh"],
        );
        let add = t0.elapsed();
        let first_cost = cost(&before, &counts(&mut c));
        let first = until_reachable(probe_ns(&c, &probe), ip, t0);
        let mut later = Vec::new();
        let mut adds = vec![add];
        let mut later_costs = Vec::new();
        for k in 0..LATER_PODS {
            let before = counts(&mut c);
            let t0 = Instant::now();
            let ip = c.add_pod_from(
                node,
                &format!("{}-p{k}", &c.nodes[node].name[5..]),
                &["fresh"],
            );
            adds.push(t0.elapsed());
            later_costs.push(cost(&before, &counts(&mut c)));
            later.push(until_reachable(probe_ns(&c, &probe), ip, t0));
        }
        later_costs.sort();
        let (requests, writes) = later_costs[later_costs.len() / 2];
        report.push(format!(
            "  {label}:\n    first pod (new block over BGP): {:>7.1} ms\n    later pods (same block):        {}\n    CNI ADD alone:                  {}\n    datastore per ADD: first pod {} requests / {} writes; later pods (median) {requests} requests / {writes} writes",
            ms(first),
            summary(&mut later),
            summary(&mut adds),
            first_cost.0,
            first_cost.1,
        ));
    }
    let fsyncs = cost(&fsyncs_before, &c.etcd().request_counts());
    let after = c.etcd().request_counts();
    let mean_fsync_ms = |a: &std::collections::BTreeMap<String, u64>| {
        let n = a.get("fsync_count").copied().unwrap_or(0);
        let us = a.get("fsync_us").copied().unwrap_or(0);
        us as f64 / 1e3 / n.max(1) as f64
    };
    println!(
        "etcd data on {}; mean WAL fsync over the run {:.2} ms; {} KV requests, {} writes in all",
        if on_tmpfs { "tmpfs" } else { "disk" },
        mean_fsync_ms(&after),
        fsyncs.0,
        fsyncs.1
    );
    println!("time from CNI ADD to the pod answering ping from a pod on node a");
    println!(
        "  (the observer's own first replies took {:.1} ms)",
        ms(warm_up)
    );
    for r in report {
        println!("{r}");
    }
}
