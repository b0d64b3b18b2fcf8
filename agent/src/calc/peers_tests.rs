//! Peer computation from resources: mesh, global, node-specific, selectors, reflectors.

use std::net::IpAddr;

use serval_bgp::config::NextHopMode;

use super::peers::*;
use crate::resources::{BGPConfiguration, BGPPeer, Node};

fn node(name: &str, v4: &str, extra: &str) -> Node {
    serde_saphyr::from_str(&format!(
        "apiVersion: serval.dev/v1\nkind: Node\nmetadata: {{name: {name}, labels: {{rack: a}}}}\nspec:\n  bgp: {{ipv4Address: {v4}{extra}}}\n"
    ))
    .unwrap()
}

fn peer(yaml_spec: &str) -> BGPPeer {
    serde_saphyr::from_str(&format!(
        "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {{name: p}}\nspec: {yaml_spec}\n"
    ))
    .unwrap()
}

fn config(name: &str, spec: &str) -> BGPConfiguration {
    serde_saphyr::from_str(&format!(
        "apiVersion: serval.dev/v1\nkind: BGPConfiguration\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    ))
    .unwrap()
}

fn addrs(peers: &[DesiredPeer]) -> Vec<String> {
    peers.iter().map(|p| p.config.address.to_string()).collect()
}

fn three_nodes() -> Vec<Node> {
    vec![
        node("n1", "10.0.0.1/24", ""),
        node("n2", "10.0.0.2/24", ""),
        node("n3", "10.0.1.3/24", ""),
    ]
}

#[test]
fn full_mesh_by_default_with_one_passive_side_per_pair() {
    let res = BgpResources {
        nodes: three_nodes(),
        ..Default::default()
    };
    let p1 = compute_peers("n1", &res).unwrap();
    assert_eq!(addrs(&p1), ["10.0.0.2", "10.0.1.3"]);
    assert!(p1.iter().all(|p| p.peer_type == PeerType::NodeMesh));
    assert!(p1.iter().all(|p| p.config.as_number == DEFAULT_AS));
    assert_eq!(
        p1[0].config.source_address,
        Some("10.0.0.1".parse::<IpAddr>().unwrap())
    );
    let p2 = compute_peers("n2", &res).unwrap();
    // Exactly one end of each pair listens.
    let n1_to_n2 = p1
        .iter()
        .find(|p| p.config.address.to_string() == "10.0.0.2")
        .unwrap();
    let n2_to_n1 = p2
        .iter()
        .find(|p| p.config.address.to_string() == "10.0.0.1")
        .unwrap();
    assert_ne!(n1_to_n2.config.passive, n2_to_n1.config.passive);
    assert!(
        n1_to_n2.config.passive,
        "as Calico: the side whose peer has the higher IP listens"
    );
}

#[test]
fn mesh_off_and_node_overrides() {
    let res = BgpResources {
        nodes: three_nodes(),
        configs: vec![
            config(
                "default",
                "{nodeToNodeMeshEnabled: false, asNumber: 65000, listenPort: 1179}",
            ),
            config("node.n1", "{asNumber: 65001}"),
        ],
        ..Default::default()
    };
    assert!(compute_peers("n1", &res).unwrap().is_empty());
    let eff = res.effective_config("n1");
    assert_eq!(
        (eff.as_number, eff.listen_port, eff.mesh),
        (65001, 1179, false)
    );
    assert_eq!(res.effective_config("n2").as_number, 65000);
}

#[test]
fn global_and_node_specific_peers() {
    let res = BgpResources {
        nodes: three_nodes(),
        configs: vec![config("default", "{nodeToNodeMeshEnabled: false}")],
        peers: vec![
            peer("{peerIP: 192.0.2.1, asNumber: 65100, keepOriginalNextHop: true}"),
            peer(
                "{node: n3, peerIP: '192.0.2.9:1790', asNumber: 65200, ttlSecurity: 2, password: {secretKeyRef: {name: s, key: k}}}",
            ),
            peer("{nodeSelector: \"rack == 'b'\", peerIP: 192.0.2.5, asNumber: 65300}"),
        ],
        ..Default::default()
    };
    let p1 = compute_peers("n1", &res).unwrap();
    assert_eq!(addrs(&p1), ["192.0.2.1"]);
    assert_eq!(p1[0].peer_type, PeerType::Global);
    assert_eq!(p1[0].config.next_hop, NextHopMode::Keep);
    assert!(!p1[0].config.passive, "external peers are dialled");
    let p3 = compute_peers("n3", &res).unwrap();
    assert_eq!(addrs(&p3), ["192.0.2.1", "192.0.2.9"]);
    assert_eq!(p3[1].peer_type, PeerType::NodeSpecific);
    assert_eq!(p3[1].config.port, 1790);
    assert_eq!(
        p3[1].unsupported,
        [
            "password: Secret \"s\" not found or not readable (it is read from serval-node's namespace)"
        ]
    );
    assert_eq!(p3[1].config.password, None);
    assert_eq!(p3[1].config.ttl_security, Some(2));
    assert_eq!(p3[0].config.allow_local_as, 0, "loop detection by default");
}

#[test]
fn max_prefix_is_an_import_guard_on_the_session() {
    let res = BgpResources {
        nodes: three_nodes(),
        configs: vec![config("default", "{nodeToNodeMeshEnabled: false}")],
        peers: vec![
            peer("{peerIP: 192.0.2.1, asNumber: 65100, maxPrefix: {limit: 5000}}"),
            peer(
                "{peerIP: 192.0.2.2, asNumber: 65100, maxPrefix: {limit: 10, warningOnly: true, restartSeconds: 60}}",
            ),
        ],
        ..Default::default()
    };
    let p = compute_peers("n1", &res).unwrap();
    let m = p[0].config.max_prefix.as_ref().unwrap();
    assert_eq!(
        (m.limit, m.warning_only, m.restart_seconds),
        (5000, false, 30)
    );
    let m = p[1].config.max_prefix.as_ref().unwrap();
    assert_eq!((m.limit, m.warning_only, m.restart_seconds), (10, true, 60));
}

#[test]
fn a_peers_keepalive_time_reaches_its_session() {
    let res = BgpResources {
        nodes: three_nodes(),
        configs: vec![config("default", "{nodeToNodeMeshEnabled: false}")],
        peers: vec![
            peer("{peerIP: 192.0.2.1, asNumber: 65100, keepaliveTime: 10s}"),
            peer("{peerIP: 192.0.2.2, asNumber: 65100}"),
        ],
        ..Default::default()
    };
    let p = compute_peers("n1", &res).unwrap();
    assert_eq!(p[0].config.keepalive_time, Some(10));
    assert_eq!(
        p[1].config.keepalive_time, None,
        "default: a third of the hold time"
    );
}

#[test]
fn rack_as_peers_may_allow_our_as_in_paths() {
    let res = BgpResources {
        nodes: three_nodes(),
        configs: vec![config("default", "{nodeToNodeMeshEnabled: false}")],
        peers: vec![peer(
            "{nodeSelector: \"rack == 'a'\", peerIP: 192.0.2.5, asNumber: 65300, numAllowedLocalASNumbers: 1}",
        )],
        ..Default::default()
    };
    let p = compute_peers("n2", &res).unwrap();
    assert_eq!(addrs(&p), ["192.0.2.5"]);
    assert_eq!(p[0].config.allow_local_as, 1);
    assert!(p[0].unsupported.is_empty(), "{:?}", p[0].unsupported);
}

#[test]
fn bfd_only_towards_directly_connected_peers() {
    let res = BgpResources {
        nodes: three_nodes(),
        configs: vec![config("default", "{nodeToNodeMeshEnabled: false}")],
        peers: vec![
            peer(
                "{peerIP: 10.0.0.254, asNumber: 65300, failureDetectionMode: BFDIfDirectlyConnected}",
            ),
            peer(
                "{peerIP: 192.0.2.7, asNumber: 65300, failureDetectionMode: BFDIfDirectlyConnected}",
            ),
        ],
        ..Default::default()
    };
    let p = compute_peers("n1", &res).unwrap();
    assert_eq!(addrs(&p), ["10.0.0.254", "192.0.2.7"]);
    assert_eq!(
        p[0].config.bfd,
        Some(serval_bgp::bfd::BfdConfig::default()),
        "10.0.0.254 is on n1's 10.0.0.0/24"
    );
    assert_eq!(p[1].config.bfd, None, "192.0.2.7 is routed, not on a link");
}

#[test]
fn reflectors_leave_the_mesh_and_serve_clients() {
    let mut nodes = three_nodes();
    nodes.push(node(
        "rr1",
        "10.0.0.10/24",
        ", routeReflectorClusterID: 224.0.0.1",
    ));
    nodes.push(node(
        "rr2",
        "10.0.0.11/24",
        ", routeReflectorClusterID: 224.0.0.1",
    ));
    for n in nodes
        .iter_mut()
        .filter(|n| n.metadata.name.as_deref().unwrap().starts_with("rr"))
    {
        n.metadata
            .labels
            .get_or_insert_default()
            .insert("rr".into(), "yes".into());
    }
    let res = BgpResources {
        nodes,
        configs: vec![config("default", "{nodeToNodeMeshEnabled: false}")],
        peers: vec![peer("{nodeSelector: all(), peerSelector: \"rr == 'yes'\"}")],
        ..Default::default()
    };
    let client = compute_peers("n1", &res).unwrap();
    assert_eq!(addrs(&client), ["10.0.0.10", "10.0.0.11"]);
    assert!(client.iter().all(|p| !p.config.route_reflector_client));
    let rr = compute_peers("rr1", &res).unwrap();
    // The reflector peers with every client (the reverse of their selector) and with rr2.
    assert_eq!(
        addrs(&rr),
        ["10.0.0.1", "10.0.0.2", "10.0.0.11", "10.0.1.3"]
    );
    for p in &rr {
        let is_rr = p.config.address.to_string() == "10.0.0.11";
        assert_eq!(
            p.config.route_reflector_client, !is_rr,
            "{}",
            p.config.address
        );
    }
    // With the mesh on, reflectors still stay out of it and clients mesh among themselves.
    let meshed = BgpResources {
        configs: vec![],
        ..res
    };
    let n1 = compute_peers("n1", &meshed).unwrap();
    assert_eq!(
        addrs(&n1),
        ["10.0.0.2", "10.0.0.10", "10.0.0.11", "10.0.1.3"]
    );
    let mesh_count = n1
        .iter()
        .filter(|p| p.peer_type == PeerType::NodeMesh)
        .count();
    assert_eq!(mesh_count, 2);
}

#[test]
fn missing_node_or_address_is_a_clear_error() {
    let res = BgpResources {
        nodes: vec![
            serde_saphyr::from_str(
                "apiVersion: serval.dev/v1\nkind: Node\nmetadata: {name: bare}\nspec: {}\n",
            )
            .unwrap(),
        ],
        ..Default::default()
    };
    assert_eq!(
        compute_peers("ghost", &res),
        Err(PeerCalcError::NoNode("ghost".into()))
    );
    let e = compute_peers("bare", &res).unwrap_err();
    assert!(e.to_string().contains("no spec.bgp.ipv4Address"), "{e}");
}

#[test]
fn passwords_come_from_secrets_for_peers_and_the_mesh() {
    let mut res = BgpResources {
        nodes: three_nodes(),
        configs: vec![config(
            "default",
            "{nodeMeshPassword: {secretKeyRef: {name: bgp-secrets, key: mesh}}}",
        )],
        peers: vec![
            peer(
                "{peerIP: 192.0.2.1, asNumber: 65100, password: {secretKeyRef: {name: bgp-secrets, key: tor}}}",
            ),
            peer(
                "{peerIP: 192.0.2.2, asNumber: 65100, password: {secretKeyRef: {name: bgp-secrets, key: nope}}}",
            ),
        ],
        ..Default::default()
    };
    assert_eq!(
        res.secret_names().into_iter().collect::<Vec<_>>(),
        ["bgp-secrets"]
    );
    res.secrets.insert(
        "bgp-secrets".into(),
        [
            ("mesh".to_string(), "m3sh".to_string()),
            ("tor".to_string(), "t0r".to_string()),
        ]
        .into_iter()
        .collect(),
    );
    let p = compute_peers("n1", &res).unwrap();
    let by = |a: &str| {
        p.iter()
            .find(|x| x.config.address.to_string() == a)
            .unwrap()
    };
    assert_eq!(
        by("10.0.0.2").config.password,
        Some(serval_bgp::config::Password("m3sh".into())),
        "mesh sessions use nodeMeshPassword"
    );
    assert_eq!(
        by("192.0.2.1").config.password,
        Some(serval_bgp::config::Password("t0r".into()))
    );
    assert!(by("192.0.2.1").unsupported.is_empty());
    let missing = by("192.0.2.2");
    assert_eq!(missing.config.password, None);
    assert_eq!(
        missing.unsupported,
        ["password: Secret \"bgp-secrets\" has no key \"nope\""]
    );
}

#[test]
fn dual_stack_nodes_carry_ipv6_over_their_ipv4_session() {
    use serval_bgp::af::Family;
    let v6_only: Node = serde_saphyr::from_str(
        "apiVersion: serval.dev/v1\nkind: Node\nmetadata: {name: n4}\nspec:\n  bgp: {ipv6Address: 'fd00:1::4/64'}\n",
    )
    .unwrap();
    let res = BgpResources {
        nodes: vec![
            node("n1", "10.0.0.1/24", ", ipv6Address: 'fd00:1::1/64'"),
            node("n2", "10.0.0.2/24", ", ipv6Address: 'fd00:1::2/64'"),
            node("n3", "10.0.1.3/24", ""),
            v6_only,
        ],
        ..Default::default()
    };
    let p1 = compute_peers("n1", &res).unwrap();
    // One session per node, never a second one over IPv6 to a node that has IPv4.
    assert_eq!(addrs(&p1), ["10.0.0.2", "10.0.1.3", "fd00:1::4"]);
    let families = |p: &DesiredPeer| p.config.families.clone();
    assert_eq!(
        families(&p1[0]),
        [Family::Ipv4Unicast, Family::Ipv6Unicast],
        "both dual-stack: IPv6 routes ride the IPv4 session"
    );
    assert_eq!(families(&p1[1]), [Family::Ipv4Unicast], "n3 has no IPv6");
    assert_eq!(families(&p1[2]), [Family::Ipv6Unicast], "n4 has only IPv6");
    assert_eq!(
        p1[2].config.source_address,
        Some("fd00:1::1".parse::<IpAddr>().unwrap())
    );
    // A BGPPeer selecting nodes picks the same one session per node, with both families.
    let res = BgpResources {
        peers: vec![peer("{nodeSelector: all(), peerSelector: all()}")],
        configs: vec![config("default", "{nodeToNodeMeshEnabled: false}")],
        ..res
    };
    let p1 = compute_peers("n1", &res).unwrap();
    assert_eq!(addrs(&p1), ["10.0.0.2", "10.0.1.3", "fd00:1::4"]);
    assert_eq!(families(&p1[0]), [Family::Ipv4Unicast, Family::Ipv6Unicast]);
}
