//! Resource parsing, validation messages, and the CRD drift check.

use super::*;

fn parse<R: ServalResource>(yaml: &str) -> R {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn problems<R: ServalResource>(yaml: &str) -> Vec<String> {
    match parse::<R>(yaml).validate() {
        Ok(()) => Vec::new(),
        Err(e) => e.errors.into_iter().map(|f| f.field).collect(),
    }
}

#[test]
fn a_calico_style_pool_parses_and_validates() {
    let pool: IPPool = parse(
        "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata:\n  name: default-ipv4\nspec:\n  \
         cidr: 10.244.0.0/16\n  ipipMode: CrossSubnet\n  natOutgoing: true\n  nodeSelector: all()\n",
    );
    assert_eq!(pool.spec.ipip_mode, EncapMode::CrossSubnet);
    assert_eq!(pool.spec.effective_block_size(), Some(26));
    pool.validate().unwrap();
}

#[test]
fn pool_errors_name_each_field() {
    let fields = problems::<IPPool>(
        "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata:\n  name: Bad_Name\nspec:\n  \
         cidr: 10.244.0.1/16\n  blockSize: 12\n  ipipMode: Always\n  vxlanMode: Always\n  \
         nodeSelector: \"zone = 'a'\"\n",
    );
    assert_eq!(
        fields,
        [
            "metadata.name",
            "spec.nodeSelector",
            "spec.cidr",
            "spec.blockSize",
            "spec.vxlanMode"
        ]
    );
    // A pool limited to one use would be used for the other anyway: refused by name.
    let one_use = problems::<IPPool>(
        "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: t}\nspec: {cidr: 10.9.0.0/16, allowedUses: [Tunnel]}\n",
    );
    assert_eq!(one_use, ["spec.allowedUses"]);
    assert!(
        problems::<IPPool>(
            "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: t}\nspec: {cidr: 10.9.0.0/16, allowedUses: [Tunnel, Workload]}\n",
        )
        .is_empty()
    );
    let v6node = problems::<crate::resources::Node>(
        "apiVersion: serval.dev/v1\nkind: Node\nmetadata: {name: n}\nspec: {ipv6VXLANTunnelAddr: 'fd00::1', vxlanTunnelMACAddrV6: '66:5f:00:00:00:01'}\n",
    );
    assert!(v6node.is_empty(), "{v6node:?}");
    let bad_v6node = problems::<crate::resources::Node>(
        "apiVersion: serval.dev/v1\nkind: Node\nmetadata: {name: n}\nspec: {ipv6VXLANTunnelAddr: '10.0.0.1', vxlanTunnelMACAddrV6: 'nope'}\n",
    );
    assert_eq!(
        bad_v6node,
        ["spec.ipv6VXLANTunnelAddr", "spec.vxlanTunnelMACAddrV6"]
    );
    let v6 = problems::<IPPool>(
        "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: v6}\nspec: {cidr: 'fd00::/48', blockSize: 64, ipipMode: Always}\n",
    );
    assert_eq!(v6, ["spec.blockSize", "spec.ipipMode"]);
    let small = parse::<IPPool>(
        "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: small}\nspec: {cidr: 10.0.0.0/28}\n",
    );
    let e = small.validate().unwrap_err().to_string();
    assert!(e.contains("/26 blocks do not fit in the /28 pool"), "{e}");
    assert!(e.starts_with("IPPool \"small\" is invalid:"), "{e}");
    let ll = problems::<IPPool>(
        "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: ll}\nspec: {cidr: 169.254.0.0/24}\n",
    );
    assert_eq!(ll, ["spec.cidr"]);
}

#[test]
fn unknown_fields_and_modes_are_rejected_with_the_location() {
    let err = serde_saphyr::from_str::<IPPool>(
        "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec:\n  cidr: 10.0.0.0/16\n  ipipMode: Sometimes\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("Sometimes") && err.contains("line 6"), "{err}");
    let err = serde_saphyr::from_str::<IPPool>(
        "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec:\n  cidr: 10.0.0.0/16\n  natOutgoin: true\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("natOutgoin"), "{err}");
}

#[test]
fn bgp_peer_rules() {
    let ok = "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: '10.0.0.1', asNumber: 65001, nodeSelector: \"rack == 'a'\", ttlSecurity: 1, maxRestartTime: 120s}\n";
    assert!(problems::<BGPPeer>(ok).is_empty());
    let rr = "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: rr}\nspec: {peerSelector: has(route-reflector)}\n";
    assert!(problems::<BGPPeer>(rr).is_empty());
    let v6port = "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: p6}\nspec: {peerIP: '[fd00::1]:1179', asNumber: 65001}\n";
    assert!(problems::<BGPPeer>(v6port).is_empty());
    let bad = "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: bad}\nspec: {node: n1, nodeSelector: all(), peerIP: '10.0.0.1:99999', peerSelector: all(), asNumber: 0, keepOriginalNextHop: true, nextHopMode: Keep, ttlSecurity: 0, keepaliveTime: soon}\n";
    assert_eq!(
        problems::<BGPPeer>(bad),
        [
            "spec.nodeSelector",
            "spec.peerSelector",
            "spec.asNumber",
            "spec.keepOriginalNextHop",
            "spec.ttlSecurity",
            "spec.keepaliveTime"
        ]
    );
    let missing =
        "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: m}\nspec: {peerIP: 10.0.0.1}\n";
    assert_eq!(problems::<BGPPeer>(missing), ["spec.asNumber"]);
    let guard = "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: g}\nspec: {peerIP: 10.0.0.1, asNumber: 65001, maxPrefix: {limit: 0}}\n";
    assert_eq!(problems::<BGPPeer>(guard), ["spec.maxPrefix.limit"]);
    let typo = "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: g}\nspec: {peerIP: 10.0.0.1, asNumber: 65001, maxPrefix: {limit: 5, warnOnly: true}}\n";
    assert!(
        serde_saphyr::from_str::<BGPPeer>(typo).is_err(),
        "unknown fields refused"
    );
}

#[test]
fn bgp_configuration_rules() {
    let ok = "apiVersion: serval.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec:\n  asNumber: 64512\n  nodeToNodeMeshEnabled: true\n  communities: [{name: c1, value: '65000:100'}]\n  prefixAdvertisements: [{cidr: 10.96.0.0/12, communities: [c1, '65000:1:2']}]\n  nodeMeshMaxRestartTime: 2m\n";
    assert!(problems::<BGPConfiguration>(ok).is_empty());
    // Service advertisement, with communities on the ranges.
    let services = "apiVersion: serval.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec:\n  serviceClusterIPs: [{cidr: 10.96.0.0/12}]\n  serviceExternalIPs: [{cidr: 192.0.2.0/24}]\n  serviceLoadBalancerIPs: [{cidr: 198.51.100.0/24}]\n  communities: [{name: c1, value: '65000:100'}]\n  prefixAdvertisements: [{cidr: 10.96.0.0/12, communities: [c1, '65000:1:2']}]\n";
    assert!(problems::<BGPConfiguration>(services).is_empty());
    // The aggregation switch is read from `default` only, like the ranges it governs.
    let per_node = "apiVersion: serval.dev/v1\nkind: BGPConfiguration\nmetadata: {name: node.n1}\nspec: {serviceLoadBalancerAggregation: Disabled}\n";
    assert_eq!(
        problems::<BGPConfiguration>(per_node),
        ["spec.serviceLoadBalancerAggregation"]
    );
    // bindMode: None is what Serval does; NodeIP is not implemented and so refused.
    let none = "apiVersion: serval.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {bindMode: None}\n";
    assert!(problems::<BGPConfiguration>(none).is_empty());
    let node_ip = "apiVersion: serval.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {bindMode: NodeIP}\n";
    assert_eq!(problems::<BGPConfiguration>(node_ip), ["spec.bindMode"]);
    // A per-peer local AS towards an external peer; not on node-to-node peerings.
    let peer = "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.0.0.1, asNumber: 65000, localASNumber: 65100}\n";
    assert!(problems::<BGPPeer>(peer).is_empty());
    let nodes = "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: rr}\nspec: {peerSelector: all(), localASNumber: 65100}\n";
    assert_eq!(problems::<BGPPeer>(nodes), ["spec.localASNumber"]);
    let zero = "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.0.0.1, asNumber: 65000, localASNumber: 0}\n";
    assert_eq!(problems::<BGPPeer>(zero), ["spec.localASNumber"]);
    // A gateway route would be silently missing: refused.
    let via = "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.0.0.1, asNumber: 65000, reachableBy: 10.0.0.254}\n";
    assert_eq!(problems::<BGPPeer>(via), ["spec.reachableBy"]);
    let bad = "apiVersion: serval.dev/v1\nkind: BGPConfiguration\nmetadata: {name: node-1}\nspec:\n  asNumber: 0\n  listenPort: 0\n  logSeverityScreen: Loud\n  serviceClusterIPs: [{cidr: nope}]\n  prefixAdvertisements: [{cidr: 10.0.0.0/8, communities: [unknown]}]\n  nodeMeshMaxRestartTime: 2m\n";
    assert_eq!(
        problems::<BGPConfiguration>(bad),
        [
            "metadata.name",
            "spec.asNumber",
            "spec.listenPort",
            "spec.logSeverityScreen",
            "spec.serviceClusterIPs[0].cidr",
            "spec.serviceClusterIPs",
            "spec.prefixAdvertisements",
            "spec.prefixAdvertisements[0].communities[0]",
            "spec.nodeMeshMaxRestartTime"
        ]
    );
}

#[test]
fn node_and_endpoint_rules() {
    let ok = "apiVersion: serval.dev/v1\nkind: Node\nmetadata: {name: node-1}\nspec: {bgp: {ipv4Address: 10.0.0.5/24, ipv6Address: 'fd00::5/64', asNumber: 64512, routeReflectorClusterID: 224.0.0.1}}\n";
    assert!(problems::<Node>(ok).is_empty());
    // Addresses are typed once parsed; the text is kept as written.
    let node: Node = parse(ok);
    let bgp = node.spec.bgp.as_ref().unwrap();
    assert_eq!(bgp.ipv4(), Some("10.0.0.5/24".parse().unwrap()));
    assert_eq!(bgp.cluster_id(), Some("224.0.0.1".parse().unwrap()));
    let json = serde_json::to_value(&node).unwrap();
    assert_eq!(json["spec"]["bgp"]["ipv4Address"], "10.0.0.5/24");
    let bad = "apiVersion: serval.dev/v1\nkind: Node\nmetadata: {name: node-1}\nspec: {bgp: {ipv4Address: 'fd00::5/64', routeReflectorClusterID: rr1, ipv4IPIPTunnelAddr: x}}\n";
    assert_eq!(
        problems::<Node>(bad),
        [
            "spec.bgp.ipv4Address",
            "spec.bgp.ipv4IPIPTunnelAddr",
            "spec.bgp.routeReflectorClusterID"
        ]
    );
    // A bad value keeps the object (validation names it) and reads as unset.
    let node: Node = parse(bad);
    let bgp = node.spec.bgp.as_ref().unwrap();
    assert_eq!(
        (bgp.ipv4(), bgp.cluster_id(), bgp.ipip_tunnel_addr()),
        (None, None, None)
    );
    let wep = "apiVersion: serval.dev/v1\nkind: WorkloadEndpoint\nmetadata: {name: n1-k8s-web-eth0}\nspec: {node: n1, pod: web, interfaceName: sv0123456789abcdef, ipNetworks: [10.0.0.1/32, bad]}\n";
    assert_eq!(
        problems::<WorkloadEndpoint>(wep),
        [
            "metadata.namespace",
            "spec.interfaceName",
            "spec.ipNetworks[1]"
        ]
    );
}

#[test]
fn policy_rules_report_paths_into_the_rule_list() {
    let np = "apiVersion: serval.dev/v1\nkind: NetworkPolicy\nmetadata: {name: allow-web, namespace: prod}\nspec:\n  selector: app == 'web'\n  ingress:\n  - action: Allow\n    protocol: TCP\n    source: {selector: \"role == 'fe'\"}\n    destination: {ports: [80, '8000:8080', http]}\n  - action: Deny\n    protocol: TCP\n    source: {nets: [10.0.0.0/40]}\n    destination: {ports: ['90:80']}\n";
    assert_eq!(
        problems::<NetworkPolicy>(np),
        [
            "spec.ingress[1].source.nets[0]",
            "spec.ingress[1].destination.ports[0]"
        ]
    );
    let gnp = "apiVersion: serval.dev/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec: {selector: all(), preDNAT: true, doNotTrack: true, egress: [{action: Allow}]}\n";
    assert_eq!(
        problems::<GlobalNetworkPolicy>(gnp),
        ["spec.egress", "spec.applyOnForward", "spec.preDNAT"]
    );
    let ok = "apiVersion: serval.dev/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec: {selector: all(), preDNAT: true, applyOnForward: true, types: [Ingress], ingress: [{action: Deny}]}\n";
    assert!(problems::<GlobalNetworkPolicy>(ok).is_empty());
    let egress = "apiVersion: serval.dev/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec: {selector: all(), preDNAT: true, applyOnForward: true, types: [Egress]}\n";
    assert_eq!(problems::<GlobalNetworkPolicy>(egress), ["spec.types"]);
    // serviceAccountSelector is a selector like any other.
    let sa = "apiVersion: serval.dev/v1\nkind: NetworkPolicy\nmetadata: {name: sa, namespace: prod}\nspec: {selector: all(), serviceAccountSelector: \"role == 'db'\"}\n";
    assert!(problems::<NetworkPolicy>(sa).is_empty());
    let bad = "apiVersion: serval.dev/v1\nkind: NetworkPolicy\nmetadata: {name: sa, namespace: prod}\nspec: {selector: all(), serviceAccountSelector: \"role ==\"}\n";
    assert_eq!(
        problems::<NetworkPolicy>(bad),
        ["spec.serviceAccountSelector"]
    );
}

#[test]
fn durations() {
    use validate::parse_duration;
    assert_eq!(parse_duration("90s"), Some(90_000));
    assert_eq!(parse_duration("1h30m"), Some(5_400_000));
    assert_eq!(parse_duration("250ms"), Some(250));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("s"), None);
    assert_eq!(parse_duration(""), None);
}

/// The checked-in CRDs must match the types; `SERVAL_UPDATE_GOLDEN=1` rewrites them.
#[test]
fn crds_match_the_checked_in_manifest() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds.yaml");
    let generated = crds_yaml();
    if std::env::var_os("SERVAL_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "manifests/crds.yaml is out of date with agent/src/resources; regenerate with \
         SERVAL_UPDATE_GOLDEN=1 cargo test -p serval-agent crds"
    );
    // Every kind has a structural schema and the group/scope we expect.
    for crd in crds() {
        assert_eq!(crd.spec.group, "serval.dev");
        let version = &crd.spec.versions[0];
        assert!(
            version
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .is_some()
        );
        let namespaced = ["WorkloadEndpoint", "NetworkPolicy", "NetworkSet"]
            .contains(&crd.spec.names.kind.as_str());
        assert_eq!(
            crd.spec.scope == "Namespaced",
            namespaced,
            "{}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn bgp_filter_rules_name_what_serval_cannot_evaluate() {
    let ok = "apiVersion: serval.dev/v1\nkind: BGPFilter\nmetadata: {name: f}\nspec:\n  exportV4:\n  - {action: Accept, matchOperator: In, cidr: 10.244.0.0/16, prefixLength: {min: 26, max: 32}, operations: [{addCommunity: {value: '64512:7'}}, {prependASPath: {prefix: [64512]}}]}\n  - {action: Reject, source: RemotePeers}\n  importV4:\n  - {action: Accept, interface: 'eth*', priority: 1024, operations: [{setPriority: {value: 512}}]}\n  importV6:\n  - {action: Reject, peerType: eBGP, communities: {values: ['65000:1:2']}, asPathPrefix: [65000]}\n";
    assert!(problems::<BGPFilter>(ok).is_empty());
    let bad = "apiVersion: serval.dev/v1\nkind: BGPFilter\nmetadata: {name: f}\nspec:\n  importV4:\n  - {matchOperator: In}\n  - {action: Reject, cidr: 2001:db8::/32, matchOperator: In, source: RemotePeers}\n  - {action: Reject, interface: 'eth0/x', priority: 0, operations: [{setPriority: {value: 5}}]}\n  - {action: Accept, prefixLength: {min: 30, max: 33}, communities: {values: ['1:2', '3:4']}, operations: [{addCommunity: {value: x}, prependASPath: {prefix: [1]}}]}\n  exportV4:\n  - {action: Accept, operations: [{setPriority: {value: 4294967295}}]}\n";
    assert_eq!(
        problems::<BGPFilter>(bad),
        [
            "spec.exportV4[0].operations[0].setPriority",
            "spec.exportV4[0].operations[0].setPriority.value",
            "spec.importV4[0].action",
            "spec.importV4[0].matchOperator",
            "spec.importV4[1].cidr",
            "spec.importV4[1].source",
            "spec.importV4[2].interface",
            "spec.importV4[2].priority",
            "spec.importV4[2].operations",
            "spec.importV4[3].prefixLength",
            "spec.importV4[3].communities.values",
            "spec.importV4[3].operations[0]",
            "spec.importV4[3].operations[0].addCommunity.value",
        ]
    );
}
