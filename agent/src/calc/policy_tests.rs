//! Kubernetes NetworkPolicy semantics on the compiled rules (via the policy evaluator).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::json;
use serval_policy::compile::{Endpoint, NamedPort, PolicyInputs, compile};
use serval_policy::eval::{Packet, Verdict, evaluate};
use serval_policy::ipt::Ruleset;

use super::*;

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

fn ep(ns: &str, pod: &str, ip: &str) -> Endpoint {
    Endpoint {
        namespace: ns.into(),
        name: pod.into(),
        iface: format!("sv{ns}{pod}"),
        addrs: vec![ip.parse().unwrap()],
        labels: [("pod".to_string(), pod.to_string())].into(),
        ports: vec![
            NamedPort {
                name: "serve-80-tcp".into(),
                protocol: TCP,
                port: 80,
            },
            NamedPort {
                name: "serve-81-udp".into(),
                protocol: UDP,
                port: 81,
            },
        ],
    }
}

/// The conformance model: namespaces x, y, z with pods a, b, c (x: 10.0.1.x, y: 10.0.2.x,
/// z: 10.0.3.x); namespaces labelled ns=<name>.
fn model(policies: &[serde_json::Value]) -> (PolicyInputs, Ruleset) {
    let mut local = Vec::new();
    let mut namespaces = BTreeMap::new();
    for (i, ns) in ["x", "y", "z"].iter().enumerate() {
        let mut n = k8s_openapi::api::core::v1::Namespace::default();
        n.metadata.name = Some(ns.to_string());
        n.metadata.labels = Some([("ns".to_string(), ns.to_string())].into());
        namespaces.insert(ns.to_string(), namespace_labels(&n));
        for (j, pod) in ["a", "b", "c"].iter().enumerate() {
            local.push(ep(ns, pod, &format!("10.0.{}.{}", i + 1, j + 1)));
        }
    }
    // As the agent does: a policy that does not translate is replaced by its fail-closed
    // stand-in.
    let policies = policies
        .iter()
        .map(|p| {
            let np = serde_json::from_value(p.clone()).unwrap();
            k8s_policy(&np).unwrap_or_else(|_| k8s_fail_closed(&np))
        })
        .collect();
    let inputs = PolicyInputs {
        local,
        remote: vec![],
        namespaces,
        policies,
        hosts: vec![],
        vxlan_port: None,
        network_sets: vec![],
        ..PolicyInputs::default()
    };
    let rs = compile(&inputs, false);
    (inputs, rs)
}

fn probe(m: &(PolicyInputs, Ruleset), from: &str, to: &str, proto: u8, port: u16) -> bool {
    let find = |who: &str| -> (IpAddr, String) {
        if let Some(ip) = who.strip_prefix("ip:") {
            return (ip.parse().unwrap(), "eth0".into());
        }
        let (ns, pod) = who.split_once('/').unwrap();
        let e =
            m.0.local
                .iter()
                .find(|e| e.namespace == ns && e.name == pod)
                .unwrap();
        (e.addrs[0], e.iface.clone())
    };
    let (src, in_iface) = find(from);
    let (dst, out_iface) = find(to);
    let p = Packet {
        src,
        dst,
        protocol: proto,
        sport: 33333,
        dport: port,
        icmp: None,
        in_iface: Some(in_iface),
        out_iface: Some(out_iface),
    };
    evaluate(&m.1, "serval-FORWARD", &p) != Verdict::Drop
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
           "metadata":{"name":name,"namespace":ns},"spec":spec})
}

#[test]
fn policy_types_are_inferred_when_omitted() {
    // No policyTypes, no egress: Ingress only.
    let p =
        k8s_policy(&serde_json::from_value(policy("x", "p", json!({"podSelector": {}}))).unwrap())
            .unwrap();
    assert_eq!(p.types, vec![PolicyType::Ingress]);
    assert_eq!(p.name, "knp.default.p");
    assert_eq!(p.order, Some(1000.0));
    // An egress section (even empty): Ingress and Egress.
    let p = k8s_policy(
        &serde_json::from_value(policy("x", "p", json!({"podSelector": {}, "egress": []})))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(p.types, vec![PolicyType::Ingress, PolicyType::Egress]);
}

#[test]
fn default_deny_both_ways_and_an_empty_selector_means_all() {
    let m = model(&[policy(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )]);
    for pod in ["a", "b", "c"] {
        assert!(!probe(&m, "y/a", &format!("x/{pod}"), TCP, 80));
        assert!(!probe(&m, &format!("x/{pod}"), "y/a", TCP, 80));
    }
    assert!(
        !probe(&m, "x/a", "x/b", UDP, 81),
        "within the namespace too"
    );
    assert!(
        probe(&m, "y/a", "z/b", TCP, 80),
        "other namespaces unaffected"
    );
    // Allow-all ingress: one empty rule.
    let m = model(&[policy(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    )]);
    assert!(probe(&m, "y/a", "x/a", UDP, 81));
    assert!(probe(&m, "ip:192.0.2.1", "x/a", SCTP, 80));
}

#[test]
fn selectors_in_one_peer_and_vs_separate_peers_or() {
    // One peer with both selectors: pods b in namespaces y only.
    let and = model(&[policy(
        "x",
        "and",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}
        ]}]}),
    )]);
    assert!(probe(&and, "y/b", "x/a", TCP, 80));
    assert!(!probe(&and, "y/c", "x/a", TCP, 80));
    assert!(!probe(&and, "z/b", "x/a", TCP, 80));
    assert!(
        !probe(&and, "x/b", "x/a", TCP, 80),
        "x is not selected by ns=y"
    );
    // Two peers: any pod in y, or pod b in x.
    let or = model(&[policy(
        "x",
        "or",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
            {"podSelector": {"matchLabels": {"pod": "b"}}}
        ]}]}),
    )]);
    assert!(probe(&or, "y/c", "x/a", TCP, 80));
    assert!(probe(&or, "x/b", "x/a", TCP, 80));
    assert!(!probe(&or, "x/c", "x/a", TCP, 80));
    assert!(
        !probe(&or, "z/b", "x/a", TCP, 80),
        "pod selector alone is this namespace"
    );
    // matchExpressions, and the automatic namespace name label.
    let expr = model(&[policy(
        "x",
        "expr",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
               "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                   {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["y"]}]}}]}]}),
    )]);
    assert!(probe(&expr, "z/a", "x/b", TCP, 80));
    assert!(!probe(&expr, "y/a", "x/b", TCP, 80));
    assert!(probe(&expr, "y/a", "x/c", TCP, 80), "x/c is not selected");
}

#[test]
fn ip_blocks_with_except_ports_end_port_and_named_ports() {
    let m = model(&[policy(
        "x",
        "ipblock",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]}]}),
    )]);
    assert!(probe(&m, "z/a", "x/a", TCP, 80));
    assert!(!probe(&m, "y/a", "x/a", TCP, 80), "excepted");
    assert!(!probe(&m, "ip:192.0.2.1", "x/a", TCP, 80));

    let m = model(&[policy(
        "x",
        "ports",
        json!({"podSelector": {}, "ingress": [{"ports": [
            {"port": 80, "protocol": "TCP"},
            {"port": 81, "endPort": 83, "protocol": "UDP"},
            {"protocol": "SCTP"}]}]}),
    )]);
    assert!(probe(&m, "y/a", "x/a", TCP, 80));
    assert!(!probe(&m, "y/a", "x/a", TCP, 81));
    assert!(!probe(&m, "y/a", "x/a", UDP, 80));
    for p in 81..=83 {
        assert!(
            probe(&m, "y/a", "x/a", UDP, p),
            "UDP {p} in the endPort range"
        );
    }
    assert!(!probe(&m, "y/a", "x/a", UDP, 84));
    assert!(probe(&m, "y/a", "x/a", SCTP, 9999), "SCTP, any port");

    // Named ports resolve per destination pod: "serve-81-udp" is UDP 81.
    let m = model(&[policy(
        "x",
        "named",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}),
    )]);
    assert!(probe(&m, "y/a", "x/b", UDP, 81));
    assert!(!probe(&m, "y/a", "x/b", UDP, 80));
    assert!(!probe(&m, "y/a", "x/b", TCP, 81));
    // Port protocol defaults to TCP.
    let m = model(&[policy(
        "x",
        "default-tcp",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
    )]);
    assert!(probe(&m, "y/a", "x/a", TCP, 80));
    assert!(!probe(&m, "y/a", "x/a", UDP, 80));
}

#[test]
fn policies_add_up_and_egress_rules_select_destinations() {
    let m = model(&[
        policy(
            "x",
            "from-y",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        ),
        policy(
            "x",
            "from-z-81",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "z"}}}], "ports": [{"port": 81, "protocol": "TCP"}]}]}),
        ),
    ]);
    assert!(probe(&m, "y/c", "x/a", TCP, 80));
    assert!(probe(&m, "z/c", "x/a", TCP, 81));
    assert!(!probe(&m, "z/c", "x/a", TCP, 80));
    assert!(!probe(&m, "x/b", "x/a", TCP, 80));

    let m = model(&[policy(
        "x",
        "egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]}]}),
    )]);
    assert!(probe(&m, "x/a", "x/b", TCP, 80));
    assert!(!probe(&m, "x/a", "x/b", TCP, 81));
    assert!(!probe(&m, "x/a", "y/b", TCP, 80));
    assert!(probe(&m, "y/a", "x/a", TCP, 80), "ingress not isolated");
}

#[test]
fn bad_selectors_are_errors_not_panics() {
    let bad = policy(
        "x",
        "bad",
        json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Sometimes"}]}}),
    );
    let e = k8s_policy(&serde_json::from_value(bad).unwrap()).unwrap_err();
    assert_eq!(e, TranslateError::Operator("Sometimes".into()));
    assert!(e.to_string().contains("Sometimes"), "{e}");
}

#[test]
fn pod_labels_and_named_ports_come_from_the_kubernetes_pod() {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "x", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]}
    }))
    .unwrap();
    let mut e = ep("x", "web", "10.0.1.9");
    apply_pod(&mut e, &pod);
    assert_eq!(e.labels["app"], "web");
    assert_eq!(e.labels["pod"], "web", "the endpoint's own labels stay");
    assert!(e.ports.contains(&NamedPort {
        name: "http".into(),
        protocol: TCP,
        port: 8080
    }));
    assert!(e.ports.contains(&NamedPort {
        name: "dns".into(),
        protocol: UDP,
        port: 53
    }));
}

#[test]
fn an_untranslatable_policy_fails_closed_for_the_pods_it_selects() {
    // Before: skipped with a warning, leaving x/a open to everyone.
    let bad = policy(
        "x",
        "bad",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Sometimes"}]}}]}]}),
    );
    let m = model(&[bad]);
    assert!(!probe(&m, "x/b", "x/a", TCP, 80), "selected pod denies");
    assert!(!probe(&m, "ip:192.168.1.1", "x/a", TCP, 80));
    assert!(probe(&m, "x/a", "x/b", TCP, 80), "only what it governs");
    assert!(probe(&m, "y/b", "x/c", TCP, 80), "other pods untouched");
}

#[test]
fn thousands_of_match_labels_translate_and_compile() {
    let many: serde_json::Map<String, serde_json::Value> = (0..5000)
        .map(|i| (format!("label-{i}"), json!("v")))
        .collect();
    let big = policy(
        "x",
        "big",
        json!({"podSelector": {"matchLabels": many.clone()},
               "ingress": [{"from": [{"podSelector": {"matchLabels": many}}]}]}),
    );
    let np = serde_json::from_value(big).unwrap();
    let def = k8s_policy(&np).unwrap();
    let Selector::AllOf(terms) = &def.selector else {
        panic!("a flat list")
    };
    assert_eq!(terms.len(), 5000);
    let m = model(&[serde_json::to_value(&np).unwrap()]);
    // It selects no pod (none has those labels), so nothing changes.
    assert!(probe(&m, "x/b", "x/a", TCP, 80));
}

#[test]
fn service_account_selector_narrows_the_policy_to_pods_of_matching_accounts() {
    // x/a runs as `db-sa` (labelled role=db), x/b as `web-sa`; a default-deny-ingress
    // policy that selects all() but only pods whose account has role=db governs x/a only.
    let np: crate::resources::NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "db", "namespace": "x"},
        "spec": {"selector": "all()", "serviceAccountSelector": "role == 'db'",
                 "types": ["Ingress"]}
    }))
    .unwrap();
    let def = serval_policy(&np).unwrap();
    let account = |name: &str, role: &str| {
        let mut sa = k8s_openapi::api::core::v1::ServiceAccount::default();
        sa.metadata.name = Some(name.into());
        sa.metadata.labels = Some([("role".to_string(), role.to_string())].into());
        sa
    };
    let mut a = ep("x", "a", "10.0.1.1");
    apply_service_account(&mut a, "db-sa", Some(&account("db-sa", "db")));
    let mut b = ep("x", "b", "10.0.1.2");
    apply_service_account(&mut b, "web-sa", Some(&account("web-sa", "web")));
    assert_eq!(a.labels["pcsa.role"], "db");
    assert_eq!(a.labels["projectcalico.org/serviceaccount"], "db-sa");
    let mut c = ep("x", "c", "10.0.1.3");
    apply_service_account(&mut c, "unknown-sa", None);
    let inputs = PolicyInputs {
        local: vec![a, b, c],
        policies: vec![def],
        ..PolicyInputs::default()
    };
    let rs = compile(&inputs, false);
    let m = (inputs, rs);
    assert!(!probe(&m, "x/b", "x/a", TCP, 80), "db-sa's pod is isolated");
    assert!(
        probe(&m, "x/a", "x/b", TCP, 80),
        "web-sa's pod is not governed"
    );
    assert!(
        probe(&m, "x/a", "x/c", TCP, 80),
        "an unknown account has no labels"
    );
}

#[test]
fn do_not_track_pre_dnat_and_apply_on_forward_reach_the_compiler() {
    let gnp: crate::resources::GlobalNetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "g"},
        "spec": {"selector": "all()", "doNotTrack": true, "applyOnForward": true}
    }))
    .unwrap();
    let p = global_policy(&gnp).unwrap();
    assert_eq!(
        p.host,
        serval_policy::compile::HostPolicy {
            do_not_track: true,
            pre_dnat: false,
            apply_on_forward: true
        }
    );
}
