//! HostEndpoint on a real kernel (issue 17, item 6): node-a's eth0 becomes a host endpoint
//! under one global policy that lets node-b (only) reach TCP 8080 on the node. Then node-c
//! cannot, nobody reaches another port, the node cannot open connections out through eth0
//! (no egress policy) — but SSH stays reachable (failsafe), BGP sessions stay up, and pods on
//! every node, VXLAN across the subnets included, still reach each other. Deleting the host
//! endpoint restores everything and removes the OUTPUT hook.

use std::net::SocketAddr;
use std::time::Duration;

use serval_agent::resources::ServalResource;
use serval_integration::cluster::{Cluster, Encap, three_nodes};
use serval_integration::eventually;

const TEST: &str = "a_host_endpoint_polices_the_node_but_never_its_failsafe_ports_or_pods";

async fn create<R: ServalResource>(c: &Cluster, v: serde_json::Value) {
    let r: R = serde_json::from_value(v).unwrap();
    c.ds.create(&r).await.unwrap();
}

fn reach(c: &Cluster, from: usize, port: u16) -> Result<String, String> {
    let to: SocketAddr = format!("192.168.1.2:{port}").parse().unwrap();
    c.nodes[from].ns.tcp_fetch(to).map_err(|e| e.to_string())
}

fn until(c: &Cluster, what: &str, check: impl Fn() -> Result<(), String>) {
    eventually(what, Duration::from_secs(30), check, || c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_endpoint_polices_the_node_but_never_its_failsafe_ports_or_pods() {
    let Some(mut c) = three_nodes(TEST, Encap::Vxlan).await else {
        return;
    };
    for (i, name) in ["pa", "pb", "pc"].iter().enumerate() {
        c.add_pod(i, name);
    }
    let a = &c.nodes[0].ns;
    a.serve_tcp(8080, "web").unwrap();
    a.serve_tcp(9090, "admin").unwrap();
    a.serve_tcp(22, "ssh").unwrap();
    let outside: SocketAddr = "203.0.113.1:8081".parse().unwrap();
    assert_eq!(reach(&c, 2, 9090).as_deref(), Ok("admin"), "open before");
    assert!(a.tcp_fetch(outside).is_ok(), "node-a reaches out before");

    create::<serval_agent::resources::GlobalNetworkPolicy>(
        &c,
        serde_json::json!({
            "apiVersion": "serval.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "edge"},
            "spec": {"selector": "role == 'edge'", "types": ["Ingress"], "ingress": [
                {"action": "Allow", "protocol": "TCP",
                 "source": {"nets": ["192.168.1.3/32"]}, "destination": {"ports": [8080]}}
            ]}
        }),
    )
    .await;
    create::<serval_agent::resources::HostEndpoint>(
        &c,
        serde_json::json!({
            "apiVersion": "serval.dev/v1", "kind": "HostEndpoint",
            "metadata": {"name": "node-a-eth0", "labels": {"role": "edge"}},
            "spec": {"node": "node-a", "interfaceName": "eth0"}
        }),
    )
    .await;
    until(&c, "node-c is refused on 8080, node-b is not", || {
        match (reach(&c, 1, 8080), reach(&c, 2, 8080)) {
            (Ok(w), Err(_)) if w == "web" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(reach(&c, 1, 9090).is_err(), "no policy allows 9090");
    assert_eq!(reach(&c, 2, 22).as_deref(), Ok("ssh"), "failsafe SSH");
    assert!(
        c.nodes[0].ns.tcp_fetch(outside).is_err(),
        "no egress policy: the node cannot connect out through eth0"
    );
    // BGP (failsafe 179) and VXLAN between nodes carry on: every pod reaches every pod.
    for i in 0..3 {
        c.wait_ready(i);
    }
    c.all_pairs_reach("with node-a's eth0 under policy");

    c.ds.delete::<serval_agent::resources::HostEndpoint>(None, "node-a-eth0", None)
        .await
        .unwrap();
    until(&c, "everything is open again", || {
        match (reach(&c, 2, 9090), c.nodes[0].ns.tcp_fetch(outside)) {
            (Ok(_), Ok(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let output = c.nodes[0]
        .ns
        .output(&["iptables", "-S", "OUTPUT"])
        .unwrap_or_default();
    assert!(
        !output.contains("serval-OUTPUT"),
        "the OUTPUT hook goes with the last host endpoint: {output}"
    );
}

const TIERS: &str = "do_not_track_pre_dnat_and_apply_on_forward_on_a_real_kernel";

fn ping(ns: &serval_integration::Netns, ip: std::net::IpAddr) -> bool {
    ns.exec(&["ping", "-c", "1", "-W", "1", &ip.to_string()])
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_track_pre_dnat_and_apply_on_forward_on_a_real_kernel() {
    let Some(mut c) = three_nodes(TIERS, Encap::Vxlan).await else {
        return;
    };
    c.add_pod(0, "pa");
    c.add_pod(1, "pb");
    let a = &c.nodes[0].ns;
    for (port, reply) in [(9090, "nine"), (8080, "eight"), (7070, "seven")] {
        a.serve_tcp(port, reply).unwrap();
    }
    let pa = c.pods[0].3;
    assert!(ping(&c.pods[1].2, pa), "pb pings pa before");
    let gnp = |name: &str, spec: serde_json::Value| {
        serde_json::json!({"apiVersion": "serval.dev/v1", "kind": "GlobalNetworkPolicy",
                           "metadata": {"name": name}, "spec": spec})
    };
    // Normal policy: 9090 and 8080 to the host from anywhere.
    create::<serval_agent::resources::GlobalNetworkPolicy>(
        &c,
        gnp(
            "host-ports",
            serde_json::json!({"selector": "role == 'edge'", "types": ["Ingress"], "ingress": [
                {"action": "Allow", "protocol": "TCP", "destination": {"ports": [9090, 8080]}}]}),
        ),
    )
    .await;
    // Untracked: node-c is dropped on 9090 before conntrack; 7070 passes untracked both ways.
    create::<serval_agent::resources::GlobalNetworkPolicy>(
        &c,
        gnp(
            "untracked",
            serde_json::json!({"selector": "role == 'edge'", "doNotTrack": true,
                "applyOnForward": true, "types": ["Ingress", "Egress"],
                "ingress": [
                    {"action": "Deny", "protocol": "TCP", "source": {"nets": ["192.168.2.0/24"]},
                     "destination": {"ports": [9090]}},
                    {"action": "Allow", "protocol": "TCP", "destination": {"ports": [7070]}}],
                "egress": [{"action": "Allow", "protocol": "TCP", "source": {"ports": [7070]}}]}),
        ),
    )
    .await;
    // Before DNAT: node-b may not reach 8080.
    create::<serval_agent::resources::GlobalNetworkPolicy>(
        &c,
        gnp(
            "pre-dnat",
            serde_json::json!({"selector": "role == 'edge'", "preDNAT": true,
                "applyOnForward": true, "types": ["Ingress"], "ingress": [
                    {"action": "Deny", "protocol": "TCP", "source": {"nets": ["192.168.1.3/32"]},
                     "destination": {"ports": [8080]}}]}),
        ),
    )
    .await;
    // Forwarded in through eth0: only TCP 8080 (so pb's ping to pa stops, its TCP works).
    create::<serval_agent::resources::GlobalNetworkPolicy>(
        &c,
        gnp(
            "forward",
            serde_json::json!({"selector": "role == 'edge'", "applyOnForward": true,
                "types": ["Ingress"], "ingress": [
                    {"action": "Allow", "protocol": "TCP", "destination": {"ports": [8080]}}]}),
        ),
    )
    .await;
    create::<serval_agent::resources::HostEndpoint>(
        &c,
        serde_json::json!({
            "apiVersion": "serval.dev/v1", "kind": "HostEndpoint",
            "metadata": {"name": "node-a-eth0", "labels": {"role": "edge"}},
            "spec": {"node": "node-a", "interfaceName": "eth0"}
        }),
    )
    .await;
    until(&c, "the untracked deny drops node-c on 9090", || {
        match (reach(&c, 1, 9090), reach(&c, 2, 9090)) {
            (Ok(_), Err(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(
        reach(&c, 1, 7070).as_deref(),
        Ok("seven"),
        "untracked both ways, no normal policy needed"
    );
    assert!(reach(&c, 1, 8080).is_err(), "node-b is denied before DNAT");
    assert_eq!(reach(&c, 2, 8080).as_deref(), Ok("eight"));
    let pb = &c.pods[1].2;
    assert_eq!(
        pb.tcp_fetch(SocketAddr::new(pa, 8080)).as_deref().ok(),
        Some("pa"),
        "forwarded TCP 8080 through eth0 is allowed"
    );
    assert!(!ping(pb, pa), "forwarded ICMP through eth0 is not");
    let raw = c.nodes[0]
        .ns
        .output(&["iptables-save", "-t", "raw"])
        .unwrap_or_default();
    assert!(
        raw.contains("serval-PREROUTING") && raw.contains("--notrack"),
        "{raw}"
    );
    c.ds.delete::<serval_agent::resources::HostEndpoint>(None, "node-a-eth0", None)
        .await
        .unwrap();
    until(&c, "everything open again", || {
        if ping(&c.pods[1].2, pa) && reach(&c, 2, 9090).is_ok() && reach(&c, 1, 8080).is_ok() {
            Ok(())
        } else {
            Err("still policed".into())
        }
    });
}
