//! End to end: three serval-node agents with a real etcd. Nodes a and b share one L2 segment
//! (192.168.1.0/24, a bridge in the router namespace); node c sits in 192.168.2.0/24 behind
//! the router. Two pods per node come from serval-cni. Every pod reaches every other pod
//! (ping and TCP); a↔b is routed natively, anything to or from c is encapsulated (VXLAN here
//! for real; IPIP where the kernel has it). Stopping and restarting an agent does not break
//! pod traffic (graceful restart keeps the peers' routes; the kernel keeps the node's).

use std::net::SocketAddr;
use std::time::Duration;

use serval_agent::resources::Node;
use serval_integration::cluster::{Encap, three_nodes, three_nodes_with};
use serval_integration::eventually;

async fn scenario(test: &str, encap: Encap) {
    let Some(mut c) = three_nodes(test, encap).await else {
        return;
    };
    for i in 0..3 {
        for k in 0..2 {
            let name = format!("{}-pod{k}", &c.nodes[i].name[5..]);
            c.add_pod(i, &name);
        }
    }
    let dev = if encap == Encap::Vxlan {
        "vxlan.serval"
    } else {
        "tunl0"
    };
    // Node resources carry the address with its prefix and the tunnel address.
    let a: Node =
        c.ds.get(None, "node-a")
            .await
            .unwrap()
            .expect("node-a registered");
    let bgp = a.spec.bgp.clone().unwrap();
    assert_eq!(
        bgp.ipv4_address.as_ref().map(|a| a.text()),
        Some(c.nodes[0].ip)
    );
    if encap == Encap::Vxlan {
        assert!(a.spec.ipv4_vxlan_tunnel_addr.is_some() && a.spec.vxlan_tunnel_mac_addr.is_some());
    } else {
        assert!(bgp.ipv4_ipip_tunnel_addr.is_some());
    }

    c.all_pairs_reach("first contact");
    for i in [0, 2] {
        eprintln!("routes on {}:\n{}", c.nodes[i].name, c.routes(i));
    }

    // a → b's pods natively through eth0; a → c's pods and c → a's pods through the tunnel.
    let ip_of = |node: usize| c.pods.iter().find(|p| p.0 == node).unwrap().3;
    let (b_pod, c_pod, a_pod) = (ip_of(1), ip_of(2), ip_of(0));
    let native = c.route_to_pod(0, b_pod).unwrap();
    assert!(
        native.contains("via 192.168.1.3 dev eth0"),
        "a→b must be native: {native}\n{}",
        c.routes(0)
    );
    let tunneled = c.route_to_pod(0, c_pod).unwrap();
    assert!(
        tunneled.contains(&format!("dev {dev}")),
        "a→c must be encapsulated: {tunneled}"
    );
    let back = c.route_to_pod(2, a_pod).unwrap();
    assert!(
        back.contains(&format!("dev {dev}")),
        "c→a must be encapsulated: {back}"
    );
    assert!(
        c.routes(0).contains("blackhole 10.244."),
        "a blackhole per local block: {}",
        c.routes(0)
    );
    let mtu = std::fs::read_to_string(c.nodes[0].var_dir.join("mtu")).unwrap();
    let overhead = if encap == Encap::Vxlan { 50 } else { 20 };
    assert_eq!(
        mtu.trim(),
        (1500 - overhead).to_string(),
        "pod MTU written for serval-cni"
    );

    // natOutgoing: pods reach the outside as their node; pod-to-pod keeps the pod's address.
    let (from_node, _, from_pod, from_ip) = &c.pods[0];
    let outside: SocketAddr = "203.0.113.1:8081".parse().unwrap();
    let seen = eventually(
        "a pod reaches the outside through natOutgoing",
        Duration::from_secs(20),
        || from_pod.tcp_fetch(outside).map_err(|e| e.to_string()),
        || c.logs(),
    );
    assert_eq!(
        seen,
        c.nodes[*from_node].ip.split('/').next().unwrap(),
        "masqueraded to the node's address"
    );
    let (_, _, far_pod, _) = c.pods.iter().find(|p| p.0 == 2).unwrap();
    far_pod.serve_tcp_echo_peer(8081).unwrap();
    let far_ip = c.pods.iter().find(|p| p.0 == 2).unwrap().3;
    let seen = from_pod.tcp_fetch(SocketAddr::new(far_ip, 8081)).unwrap();
    assert_eq!(
        seen,
        from_ip.to_string(),
        "pod-to-pod traffic is not masqueraded"
    );
    let nat = c.nodes[0]
        .ns
        .output(&["iptables", "-t", "nat", "-S"])
        .unwrap();
    assert!(
        nat.contains("-A POSTROUTING -m comment --comment \"serval:hook\" -j serval-POSTROUTING"),
        "{nat}"
    );

    // Peers follow resources live: a node-specific BGPPeer appears on node-a only, and the
    // sessions that did not change are not restarted; deleting it removes the session.
    let status = |i: usize| -> serde_json::Value {
        let s = c.nodes[i]
            .ns
            .http_get("127.0.0.1:9179", "/status")
            .expect("status");
        serde_json::from_str(&s).expect("status JSON")
    };
    let transitions = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == "Established")
            .map(|p| {
                (
                    p["address"].as_str().unwrap().to_string(),
                    p["establishedTransitions"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let before = transitions(&status(0));
    assert_eq!(before.len(), 2, "a is meshed with b and c: {before:?}");
    let tor: serval_agent::resources::BGPPeer = serde_json::from_value(serde_json::json!({
        "apiVersion": "serval.dev/v1", "kind": "BGPPeer", "metadata": {"name": "tor-a"},
        "spec": {"node": "node-a", "peerIP": "192.168.1.1", "asNumber": 65010}
    }))
    .unwrap();
    c.ds.create(&tor).await.unwrap();
    eventually(
        "node-a adds the node-specific peer",
        Duration::from_secs(20),
        || {
            let v = status(0);
            let peers = v["peers"].as_array().cloned().unwrap_or_default();
            peers
                .iter()
                .find(|p| p["address"] == "192.168.1.1")
                .map(|p| assert_eq!(p["description"], "node specific"))
                .ok_or(format!("{} peers", peers.len()))
        },
        || c.logs(),
    );
    assert_eq!(
        transitions(&status(0)),
        before,
        "unchanged sessions were not restarted"
    );
    assert!(
        !status(1).to_string().contains("192.168.1.1"),
        "node-b does not get node-a's peer"
    );
    c.ds.delete::<serval_agent::resources::BGPPeer>(None, "tor-a", None)
        .await
        .unwrap();
    eventually(
        "node-a removes the peer with its resource",
        Duration::from_secs(20),
        || {
            let v = status(0);
            (!v.to_string().contains("192.168.1.1"))
                .then_some(())
                .ok_or("still there".to_string())
        },
        || c.logs(),
    );
    assert_eq!(transitions(&status(0)), before);

    // Metrics: the families exist, and the peer state moves when a session goes down.
    let metrics = |c: &serval_integration::cluster::Cluster, i: usize| {
        c.nodes[i]
            .ns
            .http_get("127.0.0.1:9179", "/metrics")
            .unwrap()
    };
    let peer_state = |text: &str, peer: &str| -> Option<String> {
        text.lines()
            .find(|l| {
                l.starts_with("serval_bgp_peer_state{") && l.contains(&format!("peer=\"{peer}\""))
            })
            .and_then(|l| l.rsplit(' ').next().map(String::from))
    };
    let m = metrics(&c, 0);
    for family in [
        "serval_bgp_peer_state",
        "serval_bgp_prefixes_received",
        "serval_bgp_loc_rib_prefixes",
        "serval_bgp_updates_received_total",
        "serval_route_apply_duration_seconds_count",
        "serval_route_resyncs_total",
        "serval_route_drift_repaired_total",
        "serval_policy_apply_duration_seconds_count",
        "serval_policy_rules",
        "serval_ipam_blocks",
        "serval_ipam_addresses_in_use 2",
        "serval_datastore_in_sync 1",
    ] {
        assert!(m.contains(family), "/metrics lacks {family}:\n{m}");
    }
    assert_eq!(
        peer_state(&m, "192.168.1.3").as_deref(),
        Some("6"),
        "established"
    );

    // Stop node-b's agent: sessions drop without a NOTIFICATION, the peers keep b's routes
    // (graceful restart) and b's kernel keeps its own; pod traffic goes on.
    c.nodes[1].agent.as_mut().unwrap().stop();
    eventually(
        "node-a sees its session to node-b down",
        Duration::from_secs(30),
        || {
            let s = c.nodes[0]
                .ns
                .http_get("127.0.0.1:9179", "/status")
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| e.to_string())?;
            let b = v["peers"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["address"] == "192.168.1.3"))
                .cloned()
                .ok_or("no peer 192.168.1.3")?;
            (b["state"] != "Established")
                .then_some(())
                .ok_or(format!("still {}", b["state"]))
        },
        || c.logs(),
    );
    assert!(
        c.route_to_pod(0, b_pod)
            .unwrap()
            .contains("via 192.168.1.3"),
        "a keeps the route to b's block while b restarts:\n{}",
        c.routes(0)
    );
    c.all_pairs_reach("while node-b's agent is down");
    let m = metrics(&c, 0);
    assert_ne!(
        peer_state(&m, "192.168.1.3").as_deref(),
        Some("6"),
        "the state metric moved:\n{m}"
    );

    // b comes back: it relearns the table without ever removing its routes.
    c.start_agent(1);
    c.wait_ready(1);
    c.all_pairs_reach("after node-b's agent restarted");
    eventually(
        "node-b's sessions re-established",
        Duration::from_secs(30),
        || {
            let s = c.nodes[1]
                .ns
                .http_get("127.0.0.1:9179", "/status")
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| e.to_string())?;
            let up = v["peers"]
                .as_array()
                .map(|ps| ps.iter().filter(|p| p["state"] == "Established").count())
                .unwrap_or(0);
            (up == 2)
                .then_some(())
                .ok_or(format!("{up} of 2 established"))
        },
        || c.logs(),
    );

    // etcd goes down: existing pod traffic is untouched. When it is back, the agents'
    // syncers resume and a new pod (CNI needs etcd) is reachable, policy programmed.
    c.etcd().kill();
    c.all_pairs_reach("while etcd is down");
    c.etcd().restart();
    let new_ip = c.add_pod(2, "c-after-etcd");
    let from_a = &c.pods.iter().find(|p| p.0 == 0).unwrap().2;
    eventually(
        "a pod on node-a reaches the pod created after etcd came back",
        Duration::from_secs(60),
        || {
            from_a
                .tcp_fetch(SocketAddr::new(new_ip, 8080))
                .map_err(|e| e.to_string())
        },
        || c.logs(),
    );

    // node-c's link goes down: a↔b traffic keeps working meanwhile; after the link comes
    // back every pair works again (the sessions ride it out on TCP retransmission).
    c.nodes[2].ns.ip(&["link", "set", "eth0", "down"]).unwrap();
    c.pairs_reach("a and b while node-c's link is down", |i, j| {
        i != 2 && j != 2
    });
    c.nodes[2].ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    c.nodes[2]
        .ns
        .ip(&["route", "replace", "default", "via", "192.168.2.1"])
        .unwrap();
    c.all_pairs_reach("after node-c's link came back");

    for n in &mut c.nodes {
        if let Some(a) = n.agent.as_mut() {
            assert!(a.running(), "agent {} died:\n{}", n.name, a.log_tail(40));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_cross_subnet_vxlan() {
    scenario("three_nodes_cross_subnet_vxlan", Encap::Vxlan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_cross_subnet_ipip() {
    scenario("three_nodes_cross_subnet_ipip", Encap::Ipip).await;
}

/// Calico's `vxlan` networking backend: no BGP at all (nothing listens on 179, no
/// sessions); routes to other nodes' blocks come from IPAM — natively to the same-subnet
/// node, through vxlan.serval across the router — and every pod reaches every other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_without_bgp_on_the_vxlan_backend() {
    let Some(mut c) = three_nodes_with(
        "three_nodes_without_bgp_on_the_vxlan_backend",
        Encap::Vxlan,
        &["CALICO_NETWORKING_BACKEND=vxlan"],
    )
    .await
    else {
        return;
    };
    for i in 0..3 {
        let name = format!("{}-pod", &c.nodes[i].name[5..]);
        c.add_pod(i, &name);
    }
    c.all_pairs_reach("without BGP");
    let ip_of = |node: usize| c.pods.iter().find(|p| p.0 == node).unwrap().3;
    let native = c.route_to_pod(0, ip_of(1)).unwrap();
    assert!(
        native.contains("via 192.168.1.3 dev eth0"),
        "a→b native: {native}"
    );
    let tunnel = c.route_to_pod(0, ip_of(2)).unwrap();
    assert!(
        tunnel.contains("dev vxlan.serval"),
        "a→c over VXLAN: {tunnel}"
    );
    for n in &c.nodes {
        let listening = n.ns.output(&["ss", "-ltnH", "sport = :179"]).unwrap();
        assert!(listening.trim().is_empty(), "{}: {listening}", n.name);
        let status = n.ns.http_get("127.0.0.1:9179", "/status").unwrap();
        assert!(status.contains("\"peers\":[]"), "{}: {status}", n.name);
    }
}
