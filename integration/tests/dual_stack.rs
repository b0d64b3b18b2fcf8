//! Dual-stack end to end: the three-node cluster of `node_e2e` with IPv6 too, set up the
//! way a Calico operator would (`IP6=autodetect`, `CALICO_IPV6POOL_CIDR`, CNI
//! `assign_ipv6`). Every pod gets an IPv4 and an IPv6 address and reaches every other pod
//! on both (ping and TCP); IPv6 routes travel over the nodes' one IPv4 BGP session (MP-BGP),
//! a↔b is routed natively and anything to or from c goes through `vxlan-v6.serval`; IPv6
//! natOutgoing masquerades to the node's IPv6 address; and IPv6 policy is enforced.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use serval_agent::resources::{IPPool, Node};
use serval_integration::cluster::three_nodes_dual_stack;
use serval_integration::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_dual_stack_with_ipv6_vxlan_cross_subnet() {
    let Some(mut c) =
        three_nodes_dual_stack("three_nodes_dual_stack_with_ipv6_vxlan_cross_subnet").await
    else {
        return;
    };
    for i in 0..3 {
        for k in 0..2 {
            let name = format!("{}-pod{k}", &c.nodes[i].name[5..]);
            c.add_pod(i, &name);
        }
    }

    // The first agent created Calico's default IPv6 pool from CALICO_IPV6POOL_CIDR.
    let pool: IPPool =
        c.ds.get(None, "default-ipv6-ippool")
            .await
            .unwrap()
            .expect("the default IPv6 pool");
    assert_eq!(pool.spec.cidr, "fd00:10:244::/48");
    assert!(pool.spec.nat_outgoing);
    // Node resources carry the IPv6 address with its prefix and the IPv6 VTEP.
    let a: Node =
        c.ds.get(None, "node-a")
            .await
            .unwrap()
            .expect("node-a registered");
    let bgp = a.spec.bgp.clone().unwrap();
    assert_eq!(
        bgp.ipv6_address.as_ref().map(|a| a.text()),
        c.nodes[0].ip6,
        "IP6=autodetect found eth0's IPv6 address"
    );
    let vtep = a
        .spec
        .vxlan_tunnel_addr_v6()
        .expect("an IPv6 VXLAN address");
    assert!(
        "fd00:10:244::/48"
            .parse::<ipnet::Ipv6Net>()
            .unwrap()
            .contains(&vtep)
    );
    assert!(a.spec.vxlan_tunnel_mac_addr_v6.is_some());
    assert_ne!(
        a.spec.vxlan_tunnel_mac_addr,
        a.spec.vxlan_tunnel_mac_addr_v6
    );

    // Every pod has both families.
    for (_, name, _, first) in &c.pods {
        assert!(first.is_ipv4(), "{name}: {first}");
        let more = c.more_ips.get(name).cloned().unwrap_or_default();
        assert!(
            more.len() == 1 && more[0].is_ipv6(),
            "{name} has an IPv6 address: {more:?}"
        );
    }
    c.all_pairs_reach("dual-stack, first contact");

    // One BGP session per pair of nodes, over IPv4, carrying both families.
    let status: serde_json::Value =
        serde_json::from_str(&c.nodes[0].ns.http_get("127.0.0.1:9179", "/status").unwrap())
            .unwrap();
    let mut peers: Vec<&str> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address"].as_str().unwrap())
        .collect();
    peers.sort();
    assert_eq!(peers, ["192.168.1.3", "192.168.2.2"], "{status}");

    let v6_of = |node: usize| {
        let name = &c.pods.iter().find(|p| p.0 == node).unwrap().1;
        c.more_ips[name][0]
    };
    let routes6 = |i: usize| {
        c.nodes[i]
            .ns
            .output(&["ip", "-6", "route", "show", "proto", "81"])
            .unwrap_or_default()
    };
    // a → b natively over eth0 (learned over the IPv4 session, next hop b's IPv6 address);
    // a → c and c → a through the IPv6 VXLAN device.
    let native = c.route_to_pod(0, v6_of(1)).unwrap();
    assert!(
        native.contains("via 2001:db8:1::3 dev eth0"),
        "a→b natively: {native}\n{}",
        routes6(0)
    );
    for (from, to) in [(0, 2), (2, 0)] {
        let tunneled = c.route_to_pod(from, v6_of(to)).unwrap();
        assert!(
            tunneled.contains("dev vxlan-v6.serval"),
            "{from}→{to} over IPv6 VXLAN: {tunneled}\n{}",
            routes6(from)
        );
    }
    let link = c.nodes[0]
        .ns
        .output(&["ip", "-d", "link", "show", "vxlan-v6.serval"])
        .unwrap();
    assert!(
        link.contains("local 2001:db8:1::2") && link.contains("mtu 1430"),
        "the IPv6 VTEP: outer source a's IPv6 address, MTU host − 70: {link}"
    );

    // IPv6 natOutgoing: the outside sees the node's IPv6 address; pod to pod is not NATed.
    let (from_node, from_name, from_pod, _) = &c.pods[0];
    let outside: IpAddr = serval_integration::cluster::V6_OUTSIDE
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let seen = eventually(
        "a pod reaches the IPv6 outside through natOutgoing",
        Duration::from_secs(20),
        || {
            from_pod
                .tcp_fetch(SocketAddr::new(outside, 8081))
                .map_err(|e| e.to_string())
        },
        || c.logs(),
    );
    assert_eq!(
        Some(seen.as_str()),
        c.nodes[*from_node].ip6.and_then(|a| a.split('/').next()),
        "masqueraded to the node's IPv6 address"
    );
    let (_, far_name, far_pod, _) = c.pods.iter().find(|p| p.0 == 2).unwrap();
    far_pod.serve_tcp_echo_peer(8081).unwrap();
    let far_v6 = c.more_ips[far_name][0];
    let seen = from_pod.tcp_fetch(SocketAddr::new(far_v6, 8081)).unwrap();
    assert_eq!(
        seen,
        c.more_ips[from_name][0].to_string(),
        "pod-to-pod IPv6 keeps the pod's address"
    );

    // IPv6 policy: c's pods admit IPv6 only from a-pod0's address (and IPv4 from anywhere).
    let a_pod0_v6 = c.more_ips["a-pod0"][0];
    let policy: serval_agent::resources::NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "v6-from-a-pod0", "namespace": "e2e"},
        "spec": {"selector": "all()", "types": ["Ingress"], "ingress": [
            {"action": "Allow", "source": {"nets": [format!("{a_pod0_v6}/128"), "0.0.0.0/0"]}}
        ]}
    }))
    .unwrap();
    c.ds.create(&policy).await.unwrap();
    let pod = |name: &str| &c.pods.iter().find(|p| p.1 == name).unwrap().2;
    let c_pod0_v6 = c.more_ips["c-pod0"][0];
    let c_pod0_v4 = c.pods.iter().find(|p| p.1 == "c-pod0").unwrap().3;
    eventually(
        "b-pod0 is refused over IPv6 by the policy",
        Duration::from_secs(20),
        || match pod("b-pod0").tcp_fetch(SocketAddr::new(c_pod0_v6, 8080)) {
            Ok(got) => Err(format!("still answered {got:?}")),
            Err(_) => Ok(()),
        },
        || c.logs(),
    );
    assert_eq!(
        pod("a-pod0")
            .tcp_fetch(SocketAddr::new(c_pod0_v6, 8080))
            .unwrap(),
        "c-pod0",
        "the allowed IPv6 source still gets in"
    );
    assert_eq!(
        pod("b-pod0")
            .tcp_fetch(SocketAddr::new(c_pod0_v4, 8080))
            .unwrap(),
        "c-pod0",
        "IPv4 from anywhere still gets in"
    );
    let rules = c.nodes[2]
        .ns
        .output(&["ip6tables-save", "-t", "filter"])
        .unwrap();
    assert!(rules.contains("serval"), "IPv6 policy chains: {rules}");

    for n in &mut c.nodes {
        if let Some(a) = n.agent.as_mut() {
            assert!(a.running(), "agent {} died:\n{}", n.name, a.log_tail(40));
        }
    }
}
