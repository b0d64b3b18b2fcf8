//! Scenarios over containerlab topology files run by the namespace runner. Expected state is
//! compared as a JSON subset with an "eventually" poll; a failure names the node, the
//! expectation and what was observed.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use serval_integration::clab::pods::LabPod;
use serval_integration::clab::runner;
use serval_integration::clab::scenario::{Lab, PathSeen};
use serval_integration::poll::json_subset;
use serval_integration::{eventually, require};

/// Waits until `nodeN` is Established with the other three (addresses `addrs`, its own
/// is `addrs[N - 1]`).
fn meshed(t: &Lab, node: &str, addrs: &[&str]) {
    let own = node
        .strip_prefix("node")
        .and_then(|n| n.parse::<usize>().ok())
        .expect("nodeN");
    let peers: Vec<serde_json::Value> = addrs
        .iter()
        .enumerate()
        .filter(|(j, _)| j + 1 != own)
        .map(|(_, a)| json!({"address": a, "state": "Established", "description": "node-to-node mesh"}))
        .collect();
    let expected = json!({"asNumber": 64512, "peers": peers});
    eventually(
        &format!("{node}: meshed with the three others"),
        Duration::from_secs(60),
        || json_subset(&expected, &t.get(node, "/status")?),
        || t.log_tail(node),
    );
}

#[test]
fn full_mesh_of_four_nodes_through_node_link_and_etcd_faults() {
    if !require::lab_ready(
        "scenario full mesh",
        &["ip", "etcd", "python3", "unshare", "nsenter", "ping"],
    ) {
        return;
    }
    let t = Lab::up("mesh4.clab.yml");
    let nodes = ["node1", "node2", "node3", "node4"];
    let addrs = ["10.99.0.1", "10.99.0.2", "10.99.0.3", "10.99.0.4"];
    for node in nodes {
        meshed(&t, node, &addrs);
    }
    let mut pods: Vec<LabPod> = nodes
        .iter()
        .map(|n| t.add_pod(n, &format!("p-{n}")))
        .collect();
    t.pods_reach(
        "every pod reaches every other pod",
        &pods,
        |_, _| true,
        30,
        "node1",
    );

    // A node's agent crashes: its pods keep working (kernel routes stay; the peers keep its
    // routes, stale, under graceful restart), and after it is back a new pod there works.
    runner::stop_processes(&t.topo, "node4", Signal::SIGKILL);
    t.pods_reach(
        "node4's agent down: every pod pair still works",
        &pods,
        |_, _| true,
        20,
        "node1",
    );
    runner::start_cmd(&t.topo, "node4").unwrap();
    meshed(&t, "node4", &addrs);
    pods.push(t.add_pod("node4", "after-node"));
    t.pods_reach(
        "node4 back: its new pod is reachable",
        &pods,
        |_, _| true,
        30,
        "node1",
    );

    // node3's link goes down: the others keep talking; once it is back, a new pod there
    // works and node3 is meshed again.
    t.exec("node3", &["ip", "link", "set", "eth1", "down"])
        .unwrap();
    let off = |p: &LabPod| p.node == "node3";
    t.pods_reach(
        "node3's link down: pods on the other nodes still reach each other",
        &pods,
        |a, b| !off(a) && !off(b),
        20,
        "node1",
    );
    t.exec("node3", &["ip", "link", "set", "eth1", "up"])
        .unwrap();
    meshed(&t, "node3", &addrs);
    pods.push(t.add_pod("node3", "after-link"));
    t.pods_reach(
        "node3's link back: every pod pair works",
        &pods,
        |_, _| true,
        60,
        "node3",
    );

    // etcd goes down: traffic and BGP go on; once it is back a new pod works end to end.
    runner::stop_processes(&t.topo, "etcd", Signal::SIGKILL);
    t.pods_reach(
        "etcd down: every pod pair still works",
        &pods,
        |_, _| true,
        20,
        "node1",
    );
    for node in nodes {
        meshed(&t, node, &addrs);
    }
    runner::start_cmd(&t.topo, "etcd").unwrap();
    pods.push(t.add_pod("node2", "after-etcd"));
    t.pods_reach(
        "etcd back: the new pod on node2 is reachable",
        &pods,
        |_, _| true,
        30,
        "node2",
    );
}

/// Prefixes learned from peers, each with its (peer, originatorId, clusterList) paths.
fn learned(t: &Lab, node: &str) -> Result<Vec<(String, Vec<PathSeen>)>, String> {
    Ok(t.learned_paths(node)?.into_iter().collect())
}

#[test]
fn two_route_reflectors_with_four_clients() {
    if !require::lab_ready(
        "scenario route reflectors",
        &["ip", "etcd", "python3", "unshare", "nsenter"],
    ) {
        return;
    }
    {
        let t = &Lab::up("rr.clab.yml");
        let peers = t.file("rr/peers.yaml");
        eventually(
            "c1: reflector peering applied (mesh off, peer with reflectors)",
            Duration::from_secs(30),
            || t.servalctl("c1", &["apply", "-f", &peers]),
            || t.log_tail("etcd"),
        );
        let (rr1, rr2) = ("10.98.0.11", "10.98.0.12");
        let clients = [
            ("c1", "10.98.0.1"),
            ("c2", "10.98.0.2"),
            ("c3", "10.98.0.3"),
            ("c4", "10.98.0.4"),
        ];
        for (c, _) in clients {
            t.wait_established(
                c,
                &[rr1, rr2],
                "sessions with exactly the two reflectors",
                60,
            );
        }
        eventually(
            "rr1: the other reflector and the four clients",
            Duration::from_secs(60),
            || {
                let up = t.established("rr1")?;
                (up.len() == 5 && up.contains(&rr2.to_string()))
                    .then_some(())
                    .ok_or(format!("{up:?}"))
            },
            || t.log_tail("rr1"),
        );
        // Every client learns every other node's block from both reflectors, with the
        // originator's router ID and the cluster ID in CLUSTER_LIST.
        for (c, me) in clients {
            eventually(
                &format!("{c}: blocks of the five other nodes, reflected"),
                Duration::from_secs(60),
                || {
                    let l = learned(t, c)?;
                    if l.len() < 5 {
                        return Err(format!("{} prefixes: {l:?}", l.len()));
                    }
                    for (prefix, paths) in &l {
                        let from: Vec<&str> = paths.iter().map(|p| p.0.as_str()).collect();
                        if !(from.contains(&rr1) && from.contains(&rr2)) {
                            return Err(format!(
                                "{prefix}: paths from {from:?}, not both reflectors"
                            ));
                        }
                        for (peer, originator, clusters) in paths {
                            let from_client = clients.iter().any(|(_, a)| a == originator);
                            if from_client && (clusters != &["244.0.0.1"] || originator == me) {
                                return Err(format!(
                                    "{prefix} via {peer}: originator {originator}, cluster list {clusters:?}"
                                ));
                            }
                        }
                    }
                    Ok(())
                },
                || t.log_tail(c),
            );
        }
        let mut pods: Vec<LabPod> = clients
            .iter()
            .map(|(c, _)| t.add_pod(c, &format!("p-{c}")))
            .collect();
        t.pods_reach(
            "pods on the four clients reach each other",
            &pods,
            |_, _| true,
            30,
            "c1",
        );
        // Kill one reflector's agent (by the PIDs in its namespace): nothing is lost.
        runner::stop_processes(&t.topo, "rr1", Signal::SIGKILL);
        for (c, _) in clients {
            eventually(
                &format!("{c}: rr1 gone, every block still known through rr2"),
                Duration::from_secs(30),
                || {
                    let up = t.established(c)?;
                    if up != [rr2] {
                        return Err(format!("established with {up:?}"));
                    }
                    let l = learned(t, c)?;
                    let via_rr2 = l
                        .iter()
                        .filter(|(_, p)| p.iter().any(|x| x.0 == rr2))
                        .count();
                    (via_rr2 >= 5)
                        .then_some(())
                        .ok_or(format!("{via_rr2} prefixes via rr2: {l:?}"))
                },
                || t.log_tail(c),
            );
        }
        t.pods_reach(
            "rr1 down: pod traffic goes on",
            &pods,
            |_, _| true,
            20,
            "c1",
        );
        // rr1 comes back: both reflectors again, and a pod made now is reachable.
        runner::start_cmd(&t.topo, "rr1").unwrap();
        for (c, _) in clients {
            t.wait_established(
                c,
                &[rr1, rr2],
                "both reflectors again after rr1 is back",
                60,
            );
        }
        pods.push(t.add_pod("c2", "after-rr1"));
        t.pods_reach(
            "rr1 back: the new pod on c2 is reachable",
            &pods,
            |_, _| true,
            30,
            "c2",
        );
    }
}
