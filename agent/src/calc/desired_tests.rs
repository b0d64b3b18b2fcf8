use k8s_openapi::api::core::v1::Pod as K8sPod;
use serval_bgp::status::BestPathChange;

type K8sNode = k8s_openapi::api::core::v1::Node;

use super::*;
use crate::calc::kernel_table::{Hop, KernelTable, RouteKey, RouteKind, route_to};
use crate::datastore::{KindInfo, SyncEvent};
use crate::resources::{BGPPeer, BlockAffinity, NetworkPolicy, Node, WorkloadEndpoint};
use serde_json::Value;
use serde_json::json;
use serval_bgp::status::BestRoute;

/// The route the kernel would use for `dst`.
fn route(t: &KernelTable, dst: &str) -> RouteKind {
    route_to(t, &dst.parse().unwrap())
        .cloned()
        .unwrap_or_else(|| panic!("no route to {dst}"))
}

fn upsert_json(s: &mut ClusterState, kind: KindInfo, object: Value) {
    assert!(s.apply(&SyncEvent::Upsert { kind, object }));
}

fn cluster(vxlan: &str) -> ClusterState {
    let mut s = ClusterState::default();
    upsert_json(
        &mut s,
        KindInfo::of::<IPPool>(),
        json!({"apiVersion":"serval.dev/v1","kind":"IPPool","metadata":{"name":"p"},
               "spec":{"cidr":"10.244.0.0/16","vxlanMode":vxlan}}),
    );
    for (name, ip, tunnel) in [
        ("a", "192.168.1.5/24", "10.244.1.0"),
        ("b", "192.168.1.6/24", "10.244.2.0"),
        ("c", "192.168.2.7/24", "10.244.3.0"),
    ] {
        upsert_json(
            &mut s,
            KindInfo::of::<Node>(),
            json!({"apiVersion":"serval.dev/v1","kind":"Node","metadata":{"name":name},
                   "spec":{"bgp":{"ipv4Address":ip},"ipv4VXLANTunnelAddr":tunnel,
                           "vxlanTunnelMACAddr":crate::calc::tunnels::format_mac(&vxlan_mac(name))}}),
        );
    }
    upsert_json(
        &mut s,
        KindInfo::of::<BlockAffinity>(),
        json!({"apiVersion":"serval.dev/v1","kind":"BlockAffinity","metadata":{"name":"a-10-244-1-0-26"},
               "spec":{"state":"confirmed","node":"a","cidr":"10.244.1.0/26"}}),
    );
    upsert_json(
        &mut s,
        KindInfo::of::<BlockAffinity>(),
        json!({"apiVersion":"serval.dev/v1","kind":"BlockAffinity","metadata":{"name":"a-10-244-9-0-26"},
               "spec":{"state":"pending","node":"a","cidr":"10.244.9.0/26"}}),
    );
    upsert_json(
        &mut s,
        KindInfo::of::<WorkloadEndpoint>(),
        json!({"apiVersion":"serval.dev/v1","kind":"WorkloadEndpoint",
               "metadata":{"name":"a-k8s-web-eth0","namespace":"prod"},
               "spec":{"node":"a","pod":"web","interfaceName":"sv0000000000a","ipNetworks":["10.244.1.5/32"]}}),
    );
    s
}

fn best(prefix: &str, via: &str) -> BestPathChange {
    BestPathChange {
        prefix: prefix.parse().unwrap(),
        best: Some(BestRoute {
            peer: Some(via.parse().unwrap()),
            next_hops: vec![via.parse().unwrap()],
            attributes: Default::default(),
        }),
    }
}

#[test]
fn cross_subnet_vxlan_node_gets_native_and_tunnel_routes() {
    let mut s = cluster("CrossSubnet");
    assert!(s.apply_best_paths(&[
        best("10.244.2.0/26", "192.168.1.6"),
        best("10.244.3.0/26", "192.168.2.7"),
    ]));
    let d = s.desired("a", 1500).unwrap();
    assert_eq!(d.peers.len(), 2, "mesh to b and c");
    assert_eq!(
        d.exports,
        BTreeSet::from(["10.244.1.0/26".parse().unwrap()]),
        "pending blocks are not exported"
    );
    let via = |gw: &str, dev: Option<&str>| {
        RouteKind::Via(vec![Hop {
            gateway: gw.parse().unwrap(),
            dev: dev.map(String::from),
            onlink: dev.is_some(),
        }])
    };
    assert_eq!(
        route(&d.routes, "10.244.2.0/26"),
        via("192.168.1.6", None),
        "same subnet: native"
    );
    assert!(
        d.routes.contains_key(&RouteKey {
            dst: "10.244.2.0/26".parse().unwrap(),
            metric: 1024
        }),
        "a learned route at the normal priority"
    );
    assert_eq!(
        route(&d.routes, "10.244.3.0/26"),
        via("10.244.3.0", Some("vxlan.serval")),
        "other subnet: VXLAN to c's VTEP"
    );
    assert_eq!(route(&d.routes, "10.244.1.0/26"), RouteKind::Blackhole);
    assert_eq!(
        route(&d.routes, "10.244.1.5/32"),
        RouteKind::Link("sv0000000000a".into())
    );
    let vx = d.vxlan.expect("VXLAN device");
    assert_eq!(
        vx.local,
        "192.168.1.5".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(vx.mtu, 1450);
    assert_eq!(vx.address, Some("10.244.1.0".parse().unwrap()));
    assert_eq!(d.vteps.len(), 2);
    assert!(d.ipip.is_none());
    assert_eq!(d.pod_mtu, 1450);

    // A withdrawn best path removes the route; a deleted endpoint removes the pod route.
    s.apply_best_paths(&[BestPathChange {
        prefix: "10.244.3.0/26".parse().unwrap(),
        best: None,
    }]);
    assert!(s.apply(&SyncEvent::Delete {
        kind: KindInfo::of::<WorkloadEndpoint>(),
        namespace: Some("prod".into()),
        name: "a-k8s-web-eth0".into(),
    }));
    let d = s.desired("a", 1500).unwrap();
    assert!(route_to(&d.routes, &"10.244.3.0/26".parse().unwrap()).is_none());
    assert!(route_to(&d.routes, &"10.244.1.5/32".parse().unwrap()).is_none());
}

#[test]
fn borrowed_addresses_are_announced_as_host_routes() {
    let mut s = cluster("Never");
    upsert_json(
        &mut s,
        KindInfo::of::<WorkloadEndpoint>(),
        json!({"apiVersion":"serval.dev/v1","kind":"WorkloadEndpoint",
               "metadata":{"name":"a-k8s-borrower-eth0","namespace":"prod"},
               "spec":{"node":"a","pod":"borrower","interfaceName":"sv0000000000b","ipNetworks":["10.244.2.9/32"]}}),
    );
    let d = s.desired("a", 1500).unwrap();
    assert_eq!(
        d.exports,
        BTreeSet::from([
            "10.244.1.0/26".parse().unwrap(),
            "10.244.2.9/32".parse().unwrap()
        ]),
        "the pod in a's own block is covered by the block; the borrowed one is not"
    );
}

#[test]
fn kubernetes_node_labels_are_the_nodes_labels() {
    let mut s = cluster("Never");
    let extra: BTreeMap<String, String> =
        [("serval.dev/role".to_string(), "edge".to_string())].into();
    // No Kubernetes Node (etcd mode): nothing to write.
    assert_eq!(s.node_labels_to_write("a", &extra), None);
    assert!(s.apply(&SyncEvent::Upsert {
        kind: KindInfo::of::<K8sNode>(),
        object: json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"a","labels":{"rack":"r1"}}}),
    }));
    // The core Node did not replace the Serval Node of the same name.
    assert!(s.node("a").is_some_and(|n| n.spec.bgp.is_some()));
    let want = s
        .node_labels_to_write("a", &extra)
        .expect("labels to write");
    assert_eq!(want["rack"], "r1");
    assert_eq!(want["serval.dev/role"], "edge");
    // Once the Serval Node carries them, nothing more to write.
    let mut node = s.node("a").unwrap().clone();
    node.metadata.labels = Some(want);
    upsert_json(
        &mut s,
        KindInfo::of::<Node>(),
        serde_json::to_value(&node).unwrap(),
    );
    assert_eq!(s.node_labels_to_write("a", &extra), None);
    // Deleting the Kubernetes Node touches only it.
    assert!(s.apply(&SyncEvent::Delete {
        kind: KindInfo::of::<K8sNode>(),
        namespace: None,
        name: "a".into(),
    }));
    assert!(s.node("a").is_some());
    assert_eq!(s.node_labels_to_write("a", &extra), None);
}

#[test]
fn objects_from_the_watch_that_cannot_be_enforced_fail_closed_and_are_listed() {
    let mut s = cluster("Never");
    // A WorkloadEndpoint written straight into the datastore, with an interface name
    // that would break iptables-restore for the whole node.
    upsert_json(
        &mut s,
        KindInfo::of::<WorkloadEndpoint>(),
        json!({"apiVersion":"serval.dev/v1","kind":"WorkloadEndpoint",
               "metadata":{"name":"evil","namespace":"prod"},
               "spec":{"node":"a","pod":"evil","interfaceName":"sv\"\nCOMMIT","ipNetworks":["10.244.1.9/32"]}}),
    );
    // A policy whose rule selector does not parse.
    upsert_json(
        &mut s,
        KindInfo::of::<NetworkPolicy>(),
        json!({"apiVersion":"serval.dev/v1","kind":"NetworkPolicy",
               "metadata":{"name":"broken","namespace":"prod"},
               "spec":{"selector":"app == 'web'","ingress":[{"action":"Allow","source":{"selector":"app =="}}]}}),
    );
    let (inputs, failed) = s.policy_inputs("a");
    assert!(inputs.local.iter().all(|e| e.name != "evil"));
    let keys: Vec<&String> = failed.keys().collect();
    assert_eq!(
        keys,
        ["NetworkPolicy prod/broken", "WorkloadEndpoint prod/evil"],
        "{failed:?}"
    );
    // The broken policy is enforced as a deny-all stand-in over what it selects.
    let p = inputs.policies.iter().find(|p| p.name == "broken").unwrap();
    assert_eq!(p.ingress.len(), 1);
    assert_eq!(p.ingress[0].action, serval_policy::model::Action::Deny);
    assert!(p.egress.is_empty(), "only the direction it governs");
}

#[test]
fn a_network_set_with_a_bad_entry_closes_the_policies_that_may_select_it() {
    use crate::resources::{GlobalNetworkSet, NetworkSet};
    let mut s = cluster("Never");
    // Written straight into the datastore (validation would refuse it).
    upsert_json(
        &mut s,
        KindInfo::of::<NetworkSet>(),
        json!({"apiVersion":"serval.dev/v1","kind":"NetworkSet",
               "metadata":{"name":"office","namespace":"prod","labels":{"role":"office"}},
               "spec":{"nets":["192.168.60.0/30","not-a-net"]}}),
    );
    let policy = |name: &str, ns: &str, source: Value| {
        json!({"apiVersion":"serval.dev/v1","kind":"NetworkPolicy",
               "metadata":{"name":name,"namespace":ns},
               "spec":{"selector":"all()","types":["Ingress"],
                       "ingress":[{"action":"Allow","source":source}]}})
    };
    for (name, ns, source) in [
        (
            "uses-office",
            "prod",
            json!({"selector":"role == 'office'"}),
        ),
        ("other-role", "prod", json!({"selector":"role == 'lab'"})),
        // Another namespace's rule does not see prod's set...
        ("elsewhere", "dev", json!({"selector":"role == 'office'"})),
        // ...unless it has a namespaceSelector.
        (
            "cross-ns",
            "dev",
            json!({"selector":"role == 'office'","namespaceSelector":"all()"}),
        ),
    ] {
        upsert_json(
            &mut s,
            KindInfo::of::<NetworkPolicy>(),
            policy(name, ns, source),
        );
    }
    let (inputs, failed) = s.policy_inputs("a");
    let keys: Vec<&String> = failed.keys().collect();
    assert_eq!(
        keys,
        [
            "NetworkPolicy dev/cross-ns",
            "NetworkPolicy prod/uses-office",
            "NetworkSet prod/office"
        ],
        "{failed:?}"
    );
    assert!(failed["NetworkPolicy prod/uses-office"].contains("NetworkSet prod/office"));
    let rules_of = |name: &str| {
        inputs
            .policies
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .ingress
            .clone()
    };
    assert_eq!(
        rules_of("uses-office")[0].action,
        serval_policy::model::Action::Deny,
        "enforced as deny-all"
    );
    assert_eq!(
        rules_of("other-role")[0].action,
        serval_policy::model::Action::Allow
    );
    // A broken GlobalNetworkSet: only rules that can see global sets.
    let mut s = cluster("Never");
    upsert_json(
        &mut s,
        KindInfo::of::<GlobalNetworkSet>(),
        json!({"apiVersion":"serval.dev/v1","kind":"GlobalNetworkSet",
               "metadata":{"name":"office","labels":{"role":"office"}},
               "spec":{"nets":["bad"]}}),
    );
    upsert_json(
        &mut s,
        KindInfo::of::<NetworkPolicy>(),
        policy("ns-only", "prod", json!({"selector":"role == 'office'"})),
    );
    let (_, failed) = s.policy_inputs("a");
    assert_eq!(
        failed.keys().collect::<Vec<_>>(),
        ["GlobalNetworkSet office"],
        "{failed:?}"
    );
}

#[test]
fn a_kubernetes_pod_label_change_reaches_policy_inputs() {
    let mut s = cluster("Never");
    assert!(s.apply(&SyncEvent::Upsert {
        kind: KindInfo::of::<K8sPod>(),
        object: json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"prod","labels":{"role":"frontend"}}}),
    }));
    let (inputs, _) = s.policy_inputs("a");
    let web = inputs.local.iter().find(|e| e.name == "web").unwrap();
    assert_eq!(web.labels["role"], "frontend");
    // A status update (the usual churn) changes nothing the agent holds.
    assert!(!s.apply(&SyncEvent::Upsert {
        kind: KindInfo::of::<K8sPod>(),
        object: json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"prod","labels":{"role":"frontend"},"resourceVersion":"9"},"status":{"phase":"Running","podIP":"10.244.0.5"}}),
    }));
    assert!(s.apply(&SyncEvent::Delete {
        kind: KindInfo::of::<K8sPod>(),
        namespace: Some("prod".into()),
        name: "web".into(),
    }));
    assert!(!s.policy_inputs("a").0.local[0].labels.contains_key("role"));
}

#[test]
fn no_encapsulation_means_no_tunnel_devices_and_bad_objects_are_ignored() {
    let mut s = cluster("Never");
    let d = s.desired("b", 9000).unwrap();
    assert!(d.vxlan.is_none() && d.ipip.is_none());
    assert_eq!(d.pod_mtu, 9000);
    // A malformed object is skipped, and the state stays as it was.
    assert!(!s.apply(&SyncEvent::Upsert {
        kind: KindInfo::of::<IPPool>(),
        object: json!({"apiVersion":"serval.dev/v1","kind":"IPPool","metadata":{"name":"x"},"spec":{"cidr":7}}),
    }));
    assert_eq!(s.desired("b", 9000).unwrap(), d);
    // A node without a Node resource cannot compute anything.
    assert!(matches!(
        s.desired("zz", 1500),
        Err(PeerCalcError::NoNode(_))
    ));
}

#[test]
fn bgp_passwords_are_read_from_the_named_secrets() {
    let mut s = cluster("Never");
    upsert_json(
        &mut s,
        KindInfo::of::<BGPPeer>(),
        json!({"apiVersion":"serval.dev/v1","kind":"BGPPeer","metadata":{"name":"tor"},
               "spec":{"peerIP":"192.168.1.1","asNumber":65100,
                       "password":{"secretKeyRef":{"name":"bgp-secrets","key":"tor"}}}}),
    );
    assert_eq!(
        s.secret_names().into_iter().collect::<Vec<_>>(),
        ["bgp-secrets"]
    );
    let tor = |s: &ClusterState| {
        s.desired("a", 1500)
            .unwrap()
            .peers
            .into_iter()
            .find(|p| p.config.address.to_string() == "192.168.1.1")
            .unwrap()
    };
    assert_eq!(tor(&s).config.password, None, "not read yet");
    let data: BTreeMap<String, String> = [("tor".to_string(), "pw".to_string())].into();
    assert!(s.set_secret("bgp-secrets", Some(data.clone())));
    assert!(!s.set_secret("bgp-secrets", Some(data)), "unchanged");
    assert_eq!(
        tor(&s).config.password,
        Some(serval_bgp::config::Password("pw".into()))
    );
    assert!(s.set_secret("bgp-secrets", None));
    assert_eq!(tor(&s).config.password, None);
}

#[test]
fn without_bgp_routes_follow_ipam_and_felix_tunnel_settings_apply() {
    // Calico's vxlan networking backend: no sessions, nothing announced; the same-subnet
    // block (native under CrossSubnet) still gets a route to its owner from IPAM, and the
    // other subnet's block goes over VXLAN, with no best path from BGP at all.
    let mut s = cluster("CrossSubnet");
    for (node, block) in [("b", "10.244.2.0/26"), ("c", "10.244.3.0/26")] {
        upsert_json(
            &mut s,
            KindInfo::of::<BlockAffinity>(),
            json!({"apiVersion":"serval.dev/v1","kind":"BlockAffinity",
                   "metadata":{"name":format!("{node}-block")},
                   "spec":{"state":"confirmed","node":node,"cidr":block}}),
        );
    }
    let settings = NodeSettings {
        bgp: false,
        vxlan_vni: 4097,
        vxlan_port: 8472,
        vxlan_mtu: Some(1410),
        ..NodeSettings::with_host_mtu(1500)
    };
    let d = s.desired_with("a", &settings).unwrap();
    assert!(d.peers.is_empty(), "{:?}", d.peers);
    assert!(d.exports.is_empty(), "{:?}", d.exports);
    assert_eq!(
        route(&d.routes, "10.244.2.0/26"),
        RouteKind::Via(vec![Hop {
            gateway: "192.168.1.6".parse().unwrap(),
            dev: None,
            onlink: false,
        }]),
        "same subnet: native, from IPAM"
    );
    assert_eq!(
        route(&d.routes, "10.244.3.0/26"),
        RouteKind::Via(vec![Hop {
            gateway: "10.244.3.0".parse().unwrap(),
            dev: Some("vxlan.serval".into()),
            onlink: true,
        }])
    );
    let vx = d.vxlan.expect("VXLAN device");
    assert_eq!((vx.vni, vx.port, vx.mtu), (4097, 8472, 1410));
    assert_eq!(d.pod_mtu, 1410, "pods get the VXLAN device's MTU");
    assert_eq!(
        d.policy.vxlan_port,
        Some(8472),
        "the tunnel guard follows the port"
    );
    // With BGP (the default) the same cluster has sessions and leaves the native route to
    // BGP's best path.
    let with_bgp = s.desired("a", 1500).unwrap();
    assert_eq!(with_bgp.peers.len(), 2);
    assert!(route_to(&with_bgp.routes, &"10.244.2.0/26".parse().unwrap()).is_none());
}

#[test]
fn log_severity_screen_sets_the_bgp_speakers_level_node_first() {
    let mut s = cluster("Never");
    assert_eq!(s.desired("a", 1500).unwrap().bgp_log_level, None);
    let config = |name: &str, level: &str| {
        json!({"apiVersion":"serval.dev/v1","kind":"BGPConfiguration","metadata":{"name":name},
               "spec":{"logSeverityScreen":level}})
    };
    upsert_json(
        &mut s,
        KindInfo::of::<crate::resources::BGPConfiguration>(),
        config("default", "Warning"),
    );
    assert_eq!(s.desired("a", 1500).unwrap().bgp_log_level, Some("warn"));
    upsert_json(
        &mut s,
        KindInfo::of::<crate::resources::BGPConfiguration>(),
        config("node.a", "Debug"),
    );
    assert_eq!(s.desired("a", 1500).unwrap().bgp_log_level, Some("debug"));
    assert_eq!(s.desired("b", 1500).unwrap().bgp_log_level, Some("warn"));
}

#[test]
fn a_policy_that_does_not_parse_fails_closed_instead_of_vanishing() {
    use serval_policy::model::{Action, PolicyType};
    let mut s = cluster("Never");
    let np = |spec: Value| SyncEvent::Upsert {
        kind: KindInfo::of::<NetworkPolicy>(),
        object: json!({"apiVersion":"serval.dev/v1","kind":"NetworkPolicy",
                           "metadata":{"name":"web","namespace":"prod"},"spec":spec}),
    };
    let good = json!({"selector":"app == 'web'","types":["Ingress"],
                      "ingress":[{"action":"Allow"}]});
    // `ingress` is not a list: the object does not parse at all.
    let broken = json!({"selector":"app == 'web'","types":["Ingress"],"ingress":"everything",
                        "order": 5});
    assert!(s.apply(&np(good.clone())));
    let d = s.desired("a", 1500).unwrap();
    assert!(d.policy_failures.is_empty());
    let web = |d: &Desired| {
        d.policy
            .policies
            .iter()
            .find(|p| p.name == "web")
            .cloned()
            .expect("the policy or its stand-in")
    };
    assert_eq!(web(&d).ingress[0].action, Action::Allow);
    // The update does not parse: the previous version is not enforced any more; a deny-all
    // stand-in with what could be read (selector, order, types) is, and it is reported.
    assert!(s.apply(&np(broken)));
    let d = s.desired("a", 1500).unwrap();
    let stand_in = web(&d);
    assert_eq!(stand_in.ingress[0].action, Action::Deny);
    assert_eq!(stand_in.types, [PolicyType::Ingress]);
    assert_eq!(stand_in.order, Some(5.0));
    assert_eq!(stand_in.selector.to_string(), "app == \"web\"");
    assert!(
        d.policy_failures["NetworkPolicy prod/web"].starts_with("does not parse"),
        "{:?}",
        d.policy_failures
    );
    // Fixed: back to the policy itself.
    assert!(s.apply(&np(good)));
    let d = s.desired("a", 1500).unwrap();
    assert!(d.policy_failures.is_empty());
    assert_eq!(web(&d).ingress[0].action, Action::Allow);
    // Broken again, then deleted: nothing left.
    assert!(s.apply(&np(json!({"selector": 7}))));
    assert!(s.apply(&SyncEvent::Delete {
        kind: KindInfo::of::<NetworkPolicy>(),
        namespace: Some("prod".into()),
        name: "web".into(),
    }));
    let d = s.desired("a", 1500).unwrap();
    assert!(d.policy.policies.is_empty() && d.policy_failures.is_empty());
}
