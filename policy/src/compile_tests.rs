//! Policy semantics, tested on the compiled rules with the evaluator.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::compile::{Endpoint, NamedPort, PolicyDef, PolicyInputs, compile};
use crate::eval::{Packet, Verdict, evaluate};
use crate::ipt::Ruleset;
use crate::model::{Action, EntityRule, IntOrString, PolicyType, Rule};
use crate::selector::{Labels, Selector};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ep(ns: &str, name: &str, ip: &str) -> Endpoint {
    Endpoint {
        namespace: ns.into(),
        name: name.into(),
        iface: format!("sv{ns}{name}"),
        addrs: vec![ip.parse().unwrap()],
        labels: labels(&[("app", name)]),
        ports: vec![NamedPort {
            name: "web".into(),
            protocol: 6,
            port: if name == "a" { 80 } else { 81 },
        }],
    }
}

/// x/a 10.0.1.1, x/b 10.0.1.2, y/a 10.0.2.1; namespaces labelled ns=<name>.
fn world(policies: Vec<PolicyDef>) -> PolicyInputs {
    let mut namespaces = BTreeMap::new();
    namespaces.insert("x".to_string(), labels(&[("ns", "x")]));
    namespaces.insert("y".to_string(), labels(&[("ns", "y")]));
    PolicyInputs {
        local: vec![
            ep("x", "a", "10.0.1.1"),
            ep("x", "b", "10.0.1.2"),
            ep("y", "a", "10.0.2.1"),
        ],
        remote: vec![ep("z", "c", "10.0.3.1")],
        namespaces,
        policies,
        hosts: vec![],
        vxlan_port: None,
        network_sets: vec![],
        ..PolicyInputs::default()
    }
}

fn find<'a>(w: &'a PolicyInputs, who: &str) -> &'a Endpoint {
    let (ns, name) = who.split_once('/').unwrap();
    w.local
        .iter()
        .chain(&w.remote)
        .find(|e| e.namespace == ns && e.name == name)
        .unwrap()
}

/// Whether a new TCP (or UDP) connection from `from` to `to`:`port` gets through.
fn allowed(rs: &Ruleset, w: &PolicyInputs, from: &str, to: &str, proto: u8, port: u16) -> bool {
    let (src, in_iface) = if let Some(ip) = from.strip_prefix("ip:") {
        (ip.parse::<IpAddr>().unwrap(), "eth0".to_string())
    } else {
        let e = find(w, from);
        let local = w.local.iter().any(|l| l == e);
        (
            e.addrs[0],
            if local {
                e.iface.clone()
            } else {
                "eth0".into()
            },
        )
    };
    let (dst, out_iface) = if let Some(ip) = to.strip_prefix("ip:") {
        (ip.parse::<IpAddr>().unwrap(), "eth0".to_string())
    } else {
        let e = find(w, to);
        let local = w.local.iter().any(|l| l == e);
        (
            e.addrs[0],
            if local {
                e.iface.clone()
            } else {
                "eth0".into()
            },
        )
    };
    let p = Packet {
        src,
        dst,
        protocol: proto,
        sport: 40000,
        dport: port,
        icmp: None,
        in_iface: Some(in_iface),
        out_iface: Some(out_iface),
    };
    evaluate(rs, "serval-FORWARD", &p) != Verdict::Drop
}

fn np(ns: &str, name: &str, selector: &str, types: &[PolicyType]) -> PolicyDef {
    PolicyDef {
        host: Default::default(),
        name: name.into(),
        namespace: Some(ns.into()),
        order: None,
        selector: Selector::parse(selector).unwrap(),
        namespace_selector: None,
        types: types.to_vec(),
        ingress: vec![],
        egress: vec![],
    }
}

fn allow_from(selector: Option<&str>, ns_selector: Option<&str>) -> Rule {
    Rule {
        source: EntityRule {
            selector: selector.map(String::from),
            namespace_selector: ns_selector.map(String::from),
            ..EntityRule::default()
        },
        ..Rule::any(Action::Allow)
    }
}

fn tcp_ports(mut r: Rule, ports: &[IntOrString]) -> Rule {
    r.protocol = Some(IntOrString::String("TCP".into()));
    r.destination.ports = ports.to_vec();
    r
}

#[test]
fn no_policy_allows_everything_and_unknown_interfaces_fail_closed() {
    let w = world(vec![]);
    let rs = compile(&w, false);
    assert!(allowed(&rs, &w, "x/a", "x/b", 6, 80));
    assert!(allowed(&rs, &w, "x/a", "y/a", 17, 53));
    assert!(allowed(&rs, &w, "ip:192.168.9.9", "x/a", 6, 22));
    let stranger = Packet {
        src: "10.0.9.9".parse().unwrap(),
        dst: "10.0.1.1".parse().unwrap(),
        protocol: 6,
        sport: 1,
        dport: 80,
        icmp: None,
        in_iface: Some("sv-not-known".into()),
        out_iface: Some("svxa".into()),
    };
    assert_eq!(
        evaluate(&rs, "serval-FORWARD", &stranger),
        Verdict::Drop,
        "a pod interface without programmed policy carries no traffic"
    );
    // Traffic between non-pod interfaces is not Serval's business.
    let transit = Packet {
        in_iface: Some("eth0".into()),
        out_iface: Some("eth1".into()),
        ..stranger
    };
    assert_eq!(evaluate(&rs, "serval-FORWARD", &transit), Verdict::Continue);
}

#[test]
fn default_deny_ingress_isolates_only_the_selected_pod_in_one_direction() {
    let w = world(vec![np("x", "deny", "app == 'a'", &[PolicyType::Ingress])]);
    let rs = compile(&w, false);
    assert!(!allowed(&rs, &w, "x/b", "x/a", 6, 80));
    assert!(!allowed(&rs, &w, "ip:192.168.9.9", "x/a", 6, 80));
    assert!(allowed(&rs, &w, "x/a", "x/b", 6, 80), "egress not isolated");
    assert!(
        allowed(&rs, &w, "x/b", "y/a", 6, 80),
        "other namespace untouched"
    );
}

#[test]
fn selectors_are_scoped_to_the_policy_namespace_unless_a_namespace_selector_is_given() {
    let mut p = np("x", "web", "app == 'a'", &[PolicyType::Ingress]);
    p.ingress = vec![tcp_ports(
        allow_from(Some("app == 'b'"), None),
        &[IntOrString::Int(80)],
    )];
    let w = world(vec![p]);
    let rs = compile(&w, false);
    assert!(allowed(&rs, &w, "x/b", "x/a", 6, 80));
    assert!(!allowed(&rs, &w, "x/b", "x/a", 6, 81), "port");
    assert!(!allowed(&rs, &w, "x/b", "x/a", 17, 80), "protocol");
    assert!(
        !allowed(&rs, &w, "y/a", "x/a", 6, 80),
        "same labels, other namespace"
    );

    // namespaceSelector and selector in one rule: AND.
    let mut p = np("x", "cross", "app == 'a'", &[PolicyType::Ingress]);
    p.ingress = vec![allow_from(Some("app == 'a'"), Some("ns == 'y'"))];
    let w = world(vec![p]);
    let rs = compile(&w, false);
    assert!(allowed(&rs, &w, "y/a", "x/a", 6, 80));
    assert!(!allowed(&rs, &w, "x/b", "x/a", 6, 80));
    // namespaceSelector alone: every pod of the selected namespaces, local or remote.
    let mut p = np("x", "nsonly", "app == 'a'", &[PolicyType::Ingress]);
    p.ingress = vec![allow_from(None, Some("ns in {'y', 'z'}"))];
    let mut w = world(vec![p]);
    w.namespaces.insert("z".into(), labels(&[("ns", "z")]));
    let rs = compile(&w, false);
    assert!(allowed(&rs, &w, "y/a", "x/a", 6, 80));
    assert!(
        allowed(&rs, &w, "z/c", "x/a", 6, 80),
        "remote pod by its address"
    );
    assert!(!allowed(&rs, &w, "x/b", "x/a", 6, 80));
}

#[test]
fn order_deny_pass_and_log() {
    let deny_y = PolicyDef {
        host: Default::default(),
        name: "deny-y".into(),
        namespace: None,
        order: Some(10.0),
        selector: Selector::All,
        namespace_selector: None,
        types: vec![PolicyType::Ingress],
        ingress: vec![Rule {
            action: Action::Deny,
            ..allow_from(None, Some("ns == 'y'"))
        }],
        egress: vec![],
    };
    let mut allow_all = np("x", "allow-all", "all()", &[PolicyType::Ingress]);
    allow_all.order = Some(100.0);
    allow_all.ingress = vec![allow_from(None, Some("all()"))];
    let w = world(vec![allow_all.clone(), deny_y.clone()]);
    let rs = compile(&w, false);
    assert!(
        !allowed(&rs, &w, "y/a", "x/a", 6, 80),
        "lower order first: deny wins"
    );
    assert!(allowed(&rs, &w, "x/b", "x/a", 6, 80));
    // Swap the orders: the allow comes first.
    let mut first = allow_all.clone();
    first.order = Some(1.0);
    let w = world(vec![first, deny_y.clone()]);
    let rs = compile(&w, false);
    assert!(allowed(&rs, &w, "y/a", "x/a", 6, 80));

    // Pass skips the remaining policies: the namespace profile allows.
    let pass = PolicyDef {
        host: Default::default(),
        name: "pass-y".into(),
        order: Some(5.0),
        ingress: vec![Rule {
            action: Action::Pass,
            ..allow_from(None, Some("ns == 'y'"))
        }],
        ..deny_y.clone()
    };
    let w = world(vec![deny_y.clone(), pass]);
    let rs = compile(&w, false);
    assert!(
        allowed(&rs, &w, "y/a", "x/a", 6, 80),
        "passed before the deny"
    );
    assert!(
        !allowed(&rs, &w, "x/b", "x/a", 6, 80),
        "not passed: no policy allowed it"
    );

    // Log is not terminal.
    let log = PolicyDef {
        host: Default::default(),
        name: "log".into(),
        order: Some(1.0),
        ingress: vec![Rule {
            action: Action::Log,
            ..allow_from(None, None)
        }],
        ..deny_y
    };
    let mut allow = np("x", "allow", "all()", &[PolicyType::Ingress]);
    allow.ingress = vec![allow_from(None, None)];
    let w = world(vec![log, allow]);
    let rs = compile(&w, false);
    assert!(allowed(&rs, &w, "x/b", "x/a", 6, 80));
    assert!(
        rs.chains
            .values()
            .flat_map(|c| c.iter())
            .any(|r| matches!(r.target, crate::ipt::Target::Log(_)))
    );
}

#[test]
fn nets_with_exceptions_ranges_and_named_ports() {
    let mut p = np("x", "blocks", "app == 'a'", &[PolicyType::Ingress]);
    p.ingress = vec![Rule {
        source: EntityRule {
            nets: vec!["10.0.0.0/16".into()],
            not_nets: vec!["10.0.2.0/24".into()],
            ..EntityRule::default()
        },
        ..allow_from(None, None)
    }];
    let w = world(vec![p]);
    let rs = compile(&w, false);
    assert!(allowed(&rs, &w, "x/b", "x/a", 6, 80));
    assert!(!allowed(&rs, &w, "y/a", "x/a", 6, 80), "in the exception");
    assert!(
        !allowed(&rs, &w, "ip:192.168.1.1", "x/a", 6, 80),
        "outside the block"
    );

    let mut p = np("x", "range", "all()", &[PolicyType::Ingress]);
    p.ingress = vec![tcp_ports(
        allow_from(None, None),
        &[IntOrString::String("80:81".into())],
    )];
    let w = world(vec![p]);
    let rs = compile(&w, false);
    assert!(allowed(&rs, &w, "y/a", "x/a", 6, 80));
    assert!(allowed(&rs, &w, "y/a", "x/a", 6, 81));
    assert!(!allowed(&rs, &w, "y/a", "x/a", 6, 82));

    // "web" is port 80 on the a pods and 81 on the b pods: resolved per destination.
    let mut p = np("x", "named", "all()", &[PolicyType::Ingress]);
    p.ingress = vec![tcp_ports(
        allow_from(None, None),
        &[IntOrString::String("web".into())],
    )];
    let w = world(vec![p]);
    let rs = compile(&w, false);
    assert!(allowed(&rs, &w, "y/a", "x/a", 6, 80));
    assert!(!allowed(&rs, &w, "y/a", "x/a", 6, 81));
    assert!(allowed(&rs, &w, "y/a", "x/b", 6, 81));
    assert!(!allowed(&rs, &w, "y/a", "x/b", 6, 80));
}

#[test]
fn egress_isolation_covers_pods_and_the_outside() {
    let mut p = np("x", "egress", "app == 'a'", &[PolicyType::Egress]);
    p.egress = vec![Rule {
        destination: EntityRule {
            selector: Some("app == 'b'".into()),
            ..EntityRule::default()
        },
        ..allow_from(None, None)
    }];
    let w = world(vec![p]);
    let rs = compile(&w, false);
    assert!(allowed(&rs, &w, "x/a", "x/b", 6, 80));
    assert!(!allowed(&rs, &w, "x/a", "y/a", 6, 80));
    assert!(!allowed(&rs, &w, "x/a", "ip:8.8.8.8", 17, 53));
    assert!(
        allowed(&rs, &w, "x/b", "ip:8.8.8.8", 17, 53),
        "b not selected"
    );
    // Egress from a pod to the host is policed too (INPUT).
    let to_host = Packet {
        src: "10.0.1.1".parse().unwrap(),
        dst: "192.168.1.5".parse().unwrap(),
        protocol: 6,
        sport: 1,
        dport: 10250,
        icmp: None,
        in_iface: Some("svxa".into()),
        out_iface: None,
    };
    assert_eq!(evaluate(&rs, "serval-INPUT", &to_host), Verdict::Drop);
}

#[test]
fn families_are_compiled_separately() {
    let mut w = world(vec![]);
    w.local[0].addrs.push("fd00::1".parse().unwrap());
    w.local[1].addrs.push("fd00::2".parse().unwrap());
    let mut p = np("x", "v4only", "app == 'a'", &[PolicyType::Ingress]);
    p.ingress = vec![Rule {
        ip_version: Some(4),
        ..allow_from(Some("app == 'b'"), None)
    }];
    w.policies = vec![p];
    let v4 = compile(&w, false);
    let v6 = compile(&w, true);
    assert!(allowed(&v4, &w, "x/b", "x/a", 6, 80));
    let pkt6 = Packet {
        src: "fd00::2".parse().unwrap(),
        dst: "fd00::1".parse().unwrap(),
        protocol: 6,
        sport: 1,
        dport: 80,
        icmp: None,
        in_iface: Some("svxb".into()),
        out_iface: Some("svxa".into()),
    };
    assert_eq!(
        evaluate(&v6, "serval-FORWARD", &pkt6),
        Verdict::Drop,
        "isolated in IPv6 too, and the IPv4-only rule does not allow it"
    );
    for set in v6.sets.keys() {
        assert!(set.starts_with("serval60"), "{set}");
        assert!(set.len() <= 31, "{set}");
    }
    for chain in v4.chains.keys() {
        assert!(chain.len() <= 28, "{chain}");
    }
}

#[test]
fn a_label_change_touches_only_the_sets_that_select_the_pod() {
    let mut p = np("x", "web", "app == 'a'", &[PolicyType::Ingress]);
    p.ingress = vec![allow_from(Some("role == 'frontend'"), None)];
    let mut other = np("x", "other", "app == 'b'", &[PolicyType::Ingress]);
    other.ingress = vec![allow_from(Some("app == 'a'"), None)];
    let w = world(vec![p, other]);
    let before = compile(&w, false);
    assert!(!allowed(&before, &w, "x/b", "x/a", 6, 80));
    let mut w2 = w.clone();
    w2.local[1].labels.insert("role".into(), "frontend".into());
    let after = compile(&w2, false);
    assert!(allowed(&after, &w2, "x/b", "x/a", 6, 80));
    assert_eq!(before.chains, after.chains, "no chain changes");
    let changed: Vec<&String> = after
        .sets
        .iter()
        .filter(|(k, v)| before.sets.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        changed.len(),
        1,
        "only the frontend selector's set: {changed:?}"
    );
}

#[test]
fn a_rule_part_that_does_not_parse_never_widens_the_rule() {
    // Before: an unparseable selector or net was dropped from the rule, which then matched
    // every source. Now the rule matches nothing.
    for bad in [
        allow_from(Some("app == "), None),
        allow_from(Some("all()"), Some("((((")),
        Rule {
            source: EntityRule {
                nets: vec!["10.0.0.0/33".into()],
                ..EntityRule::default()
            },
            ..allow_from(None, None)
        },
    ] {
        let mut p = np("x", "p", "app == 'a'", &[PolicyType::Ingress]);
        p.ingress = vec![bad.clone()];
        let w = world(vec![p]);
        let rs = compile(&w, false);
        assert!(!allowed(&rs, &w, "x/b", "x/a", 6, 80), "{bad:?}");
        assert!(!allowed(&rs, &w, "ip:192.168.9.9", "x/a", 6, 80), "{bad:?}");
    }
}

#[test]
fn a_workload_may_send_only_from_its_own_address() {
    // No policy at all: anti-spoofing holds anyway.
    let w = world(vec![]);
    let rs = compile(&w, false);
    let spoof = Packet {
        src: "10.0.1.2".parse().unwrap(), // x/b's address, sent from x/a's interface
        dst: "10.0.2.1".parse().unwrap(),
        protocol: 6,
        sport: 1,
        dport: 80,
        icmp: None,
        in_iface: Some("svxa".into()),
        out_iface: Some("svya".into()),
    };
    assert_eq!(evaluate(&rs, "serval-FORWARD", &spoof), Verdict::Drop);
    // To the node itself too (BGP, BFD or the status port cannot be spoofed from a pod).
    let to_host = Packet {
        dst: "192.168.1.5".parse().unwrap(),
        out_iface: None,
        ..spoof.clone()
    };
    assert_eq!(evaluate(&rs, "serval-INPUT", &to_host), Verdict::Drop);
    let genuine = Packet {
        src: "10.0.1.1".parse().unwrap(),
        ..spoof.clone()
    };
    assert_ne!(evaluate(&rs, "serval-FORWARD", &genuine), Verdict::Drop);
    // IPv6: a workload without an IPv6 address sends nothing in IPv6.
    let rs6 = compile(&w, true);
    let v6 = Packet {
        src: "fd00::9".parse().unwrap(),
        dst: "fd00::1".parse().unwrap(),
        ..spoof
    };
    assert_eq!(evaluate(&rs6, "serval-FORWARD", &v6), Verdict::Drop);
}

#[test]
fn tunnel_packets_are_taken_only_from_nodes() {
    let mut w = world(vec![]);
    w.hosts = vec![
        "192.168.1.5".parse().unwrap(),
        "192.168.1.6".parse().unwrap(),
    ];
    let rs = compile(&w, false);
    let vxlan = |src: &str| Packet {
        src: src.parse().unwrap(),
        dst: "192.168.1.5".parse().unwrap(),
        protocol: 17,
        sport: 40000,
        dport: 4789,
        icmp: None,
        in_iface: Some("eth0".into()),
        out_iface: None,
    };
    assert_eq!(
        evaluate(&rs, "serval-INPUT", &vxlan("203.0.113.9")),
        Verdict::Drop
    );
    assert_ne!(
        evaluate(&rs, "serval-INPUT", &vxlan("192.168.1.6")),
        Verdict::Drop
    );
    let ipip = Packet {
        protocol: 4,
        dport: 0,
        ..vxlan("203.0.113.9")
    };
    assert_eq!(evaluate(&rs, "serval-INPUT", &ipip), Verdict::Drop);
    // Other traffic to the node is not Serval's business.
    let ssh = Packet {
        protocol: 6,
        dport: 22,
        ..vxlan("203.0.113.9")
    };
    assert_ne!(evaluate(&rs, "serval-INPUT", &ssh), Verdict::Drop);
}

#[test]
fn network_sets_are_matched_by_rule_selectors_with_calicos_scoping() {
    use crate::compile::NetworkSetDef;
    let set = |ns: Option<&str>, name: &str, role: &str, net: &str| NetworkSetDef {
        namespace: ns.map(String::from),
        name: name.into(),
        labels: labels(&[("role", role)]),
        nets: vec![net.parse().unwrap()],
    };
    let mut x_a = np("x", "a-from-db", "app == 'a'", &[PolicyType::Ingress]);
    x_a.ingress = vec![allow_from(Some("role == 'db'"), None)];
    let mut w = world(vec![x_a]);
    w.network_sets = vec![
        // x's own set: seen by x's policies.
        set(Some("x"), "db", "db", "198.51.100.0/28"),
        // y's set with the same labels: not seen by a policy in x.
        set(Some("y"), "db", "db", "203.0.113.0/24"),
        // A global set: not seen by a namespaced policy without global().
        set(None, "db", "db", "192.0.2.0/24"),
    ];
    let rs = compile(&w, false);
    assert!(allowed(&rs, &w, "ip:198.51.100.5", "x/a", 6, 80));
    assert!(
        !allowed(&rs, &w, "ip:198.51.100.99", "x/a", 6, 80),
        "outside the /28"
    );
    assert!(
        !allowed(&rs, &w, "ip:203.0.113.5", "x/a", 6, 80),
        "another namespace's set"
    );
    assert!(
        !allowed(&rs, &w, "ip:192.0.2.5", "x/a", 6, 80),
        "a global set needs global()"
    );

    // namespaceSelector: global() — global sets only (not pods, not namespaced sets).
    let mut g = np("x", "a-from-global", "app == 'a'", &[PolicyType::Ingress]);
    g.ingress = vec![allow_from(Some("role == 'db'"), Some("global()"))];
    let mut w2 = w.clone();
    w2.policies = vec![g];
    let rs = compile(&w2, false);
    assert!(allowed(&rs, &w2, "ip:192.0.2.5", "x/a", 6, 80));
    assert!(!allowed(&rs, &w2, "ip:198.51.100.5", "x/a", 6, 80));
    assert!(
        !allowed(&rs, &w2, "x/b", "x/a", 6, 80),
        "global() selects no pod"
    );

    // A global policy's rule without namespaceSelector sees every set.
    let mut gnp = np("x", "g", "app == 'a'", &[PolicyType::Ingress]);
    gnp.namespace = None;
    gnp.ingress = vec![allow_from(Some("role == 'db'"), None)];
    let mut w3 = w.clone();
    w3.policies = vec![gnp];
    let rs = compile(&w3, false);
    for src in ["ip:198.51.100.5", "ip:203.0.113.5", "ip:192.0.2.5"] {
        assert!(allowed(&rs, &w3, src, "x/a", 6, 80), "{src}");
    }
    assert!(!allowed(&rs, &w3, "ip:10.9.9.9", "x/a", 6, 80));
    // IPv6 sets carry only IPv6 networks.
    assert!(
        compile(&w3, true)
            .sets
            .values()
            .all(|s| s.members.iter().all(|m| m.contains(':')))
    );
}

/// A packet on a host endpoint: inbound to the host (`serval-INPUT`) or out of it.
fn host_packet(rs: &Ruleset, inbound: bool, peer: &str, proto: u8, dport: u16) -> Verdict {
    let (me, other): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), peer.parse().unwrap());
    let p = Packet {
        src: if inbound { other } else { me },
        dst: if inbound { me } else { other },
        protocol: proto,
        sport: 40000,
        dport,
        icmp: None,
        in_iface: inbound.then(|| "eth0".to_string()),
        out_iface: (!inbound).then(|| "eth0".to_string()),
    };
    evaluate(
        rs,
        if inbound {
            "serval-INPUT"
        } else {
            "serval-OUTPUT"
        },
        &p,
    )
}

#[test]
fn host_endpoints_deny_by_default_except_failsafe_and_node_tunnels() {
    let hep = Endpoint {
        namespace: String::new(),
        name: "node-1-eth0".into(),
        iface: "eth0".into(),
        addrs: vec!["192.0.2.1".parse().unwrap()],
        labels: labels(&[("role", "edge")]),
        ports: vec![],
    };
    let mut global = np("", "edge-web", "role == 'edge'", &[PolicyType::Ingress]);
    global.namespace = None;
    global.ingress = vec![tcp_ports(
        Rule {
            source: EntityRule {
                nets: vec!["198.51.100.0/24".into()],
                ..EntityRule::default()
            },
            ..Rule::any(Action::Allow)
        },
        &[IntOrString::Int(8080)],
    )];
    // A namespaced policy with the same selector never reaches a host endpoint.
    let mut namespaced = np("x", "all-x", "role == 'edge'", &[PolicyType::Ingress]);
    namespaced.ingress = vec![Rule::any(Action::Allow)];
    let mut w = world(vec![global, namespaced]);
    w.hosts = vec!["192.0.2.1".parse().unwrap(), "192.0.2.9".parse().unwrap()];
    w.host_endpoints = vec![hep];
    let rs = compile(&w, false);
    use Verdict::{Accept, Drop};
    assert_eq!(host_packet(&rs, true, "198.51.100.7", 6, 8080), Accept);
    assert_eq!(
        host_packet(&rs, true, "203.0.113.7", 6, 8080),
        Drop,
        "not from the allowed net"
    );
    assert_eq!(
        host_packet(&rs, true, "198.51.100.7", 6, 9090),
        Drop,
        "another port"
    );
    assert_eq!(
        host_packet(&rs, true, "203.0.113.7", 6, 22),
        Accept,
        "failsafe SSH"
    );
    assert_eq!(
        host_packet(&rs, true, "203.0.113.7", 6, 179),
        Accept,
        "failsafe BGP"
    );
    assert_eq!(
        host_packet(&rs, true, "192.0.2.9", 17, 4789),
        Accept,
        "VXLAN from a node"
    );
    assert_eq!(
        host_packet(&rs, true, "203.0.113.7", 17, 4789),
        Drop,
        "VXLAN from a stranger"
    );
    // No egress policy selects it: only failsafe and tunnels leave.
    assert_eq!(host_packet(&rs, false, "203.0.113.7", 6, 80), Drop);
    assert_eq!(
        host_packet(&rs, false, "203.0.113.7", 17, 53),
        Accept,
        "failsafe DNS"
    );
    assert_eq!(
        host_packet(&rs, false, "192.0.2.9", 17, 4789),
        Accept,
        "VXLAN to a node"
    );
    // Pods' forwarded traffic is not host endpoint traffic.
    assert!(allowed(&rs, &w, "x/a", "x/b", 6, 80));
    // Without host endpoints there is no OUTPUT chain (and so no hook).
    let plain = compile(&world(vec![]), false);
    assert!(!plain.chains.contains_key("serval-OUTPUT"));
}

fn edge_hep() -> Endpoint {
    Endpoint {
        namespace: String::new(),
        name: "node-1-eth0".into(),
        iface: "eth0".into(),
        addrs: vec![],
        labels: labels(&[("role", "edge")]),
        ports: vec![],
    }
}

fn global(name: &str, types: &[PolicyType], host: crate::compile::HostPolicy) -> PolicyDef {
    let mut p = np("", name, "role == 'edge'", types);
    p.namespace = None;
    p.host = host;
    p
}

fn deny_from(net: &str) -> Rule {
    Rule {
        action: Action::Deny,
        source: EntityRule {
            nets: vec![net.into()],
            ..EntityRule::default()
        },
        ..Rule::any(Action::Deny)
    }
}

#[test]
fn do_not_track_policies_decide_in_raw_before_conntrack_and_fall_through_otherwise() {
    use crate::compile::HostPolicy;
    use crate::eval::evaluate_in;
    let mut dnt = global(
        "dnt",
        &[PolicyType::Ingress],
        HostPolicy {
            do_not_track: true,
            apply_on_forward: true,
            ..HostPolicy::default()
        },
    );
    dnt.ingress = vec![
        deny_from("203.0.113.0/24"),
        tcp_ports(Rule::any(Action::Allow), &[IntOrString::Int(6379)]),
    ];
    let mut w = world(vec![dnt]);
    w.host_endpoints = vec![edge_hep()];
    let rs = compile(&w, false);
    let pkt = |src: &str, dport: u16| Packet {
        src: src.parse().unwrap(),
        dst: "192.0.2.1".parse().unwrap(),
        protocol: 6,
        sport: 40000,
        dport,
        icmp: None,
        in_iface: Some("eth0".into()),
        out_iface: None,
    };
    let raw =
        |src: &str, dport: u16| evaluate_in(&rs, &rs.raw, "serval-PREROUTING", &pkt(src, dport));
    assert_eq!(
        raw("198.51.100.7", 6379),
        Verdict::Accept,
        "allowed untracked"
    );
    assert_eq!(
        raw("203.0.113.7", 6379),
        Verdict::Drop,
        "denied before conntrack"
    );
    assert_eq!(raw("203.0.113.7", 22), Verdict::Accept, "failsafe first");
    assert_eq!(
        raw("198.51.100.7", 80),
        Verdict::Continue,
        "no decision: normal processing"
    );
    let notrack = rs.raw["serval-PREROUTING"]
        .iter()
        .any(|r| r.target == crate::ipt::Target::NoTrack);
    assert!(notrack, "what doNotTrack allows is taken out of conntrack");
    // Untracked packets then pass the filter table's host endpoint rules.
    let untracked_accept = rs.chains["serval-INPUT"]
        .iter()
        .any(|r| r.matches.contains(&crate::ipt::Match::Untracked));
    assert!(untracked_accept);
    // The policy is not a normal one: the filter's host chain has no policy (default deny).
    assert_eq!(
        evaluate(&rs, "serval-INPUT", &pkt("198.51.100.7", 6379)),
        Verdict::Drop,
        "a tracked packet gets the normal tier, where no policy allows it"
    );
    assert!(rs.mangle.is_empty(), "no preDNAT policy, no mangle chains");
    // A workload is never selected by a doNotTrack policy.
    assert!(allowed(&rs, &w, "x/a", "x/b", 6, 6379));
}

#[test]
fn pre_dnat_denies_before_dnat_and_apply_on_forward_polices_forwarded_traffic() {
    use crate::compile::HostPolicy;
    use crate::eval::evaluate_in;
    let mut pre = global(
        "no-nodeports-from-outside",
        &[PolicyType::Ingress],
        HostPolicy {
            pre_dnat: true,
            apply_on_forward: true,
            ..HostPolicy::default()
        },
    );
    pre.ingress = vec![Rule {
        destination: EntityRule {
            ports: vec![IntOrString::String("30000:32767".into())],
            ..EntityRule::default()
        },
        protocol: Some(IntOrString::String("TCP".into())),
        ..deny_from("0.0.0.0/0")
    }];
    let mut fwd = global(
        "forward-web-only",
        &[PolicyType::Ingress],
        HostPolicy {
            apply_on_forward: true,
            ..HostPolicy::default()
        },
    );
    fwd.ingress = vec![tcp_ports(Rule::any(Action::Allow), &[IntOrString::Int(80)])];
    let mut w = world(vec![pre, fwd]);
    w.host_endpoints = vec![edge_hep()];
    let rs = compile(&w, false);
    let pkt = |dst: &str, dport: u16, out: &str| Packet {
        src: "198.51.100.7".parse().unwrap(),
        dst: dst.parse().unwrap(),
        protocol: 6,
        sport: 40000,
        dport,
        icmp: None,
        in_iface: Some("eth0".into()),
        out_iface: Some(out.into()),
    };
    let mangle = |dport| {
        evaluate_in(
            &rs,
            &rs.mangle,
            "serval-PREROUTING",
            &pkt("192.0.2.1", dport, "lo"),
        )
    };
    assert_eq!(mangle(30080), Verdict::Drop, "a NodePort, before DNAT");
    assert_eq!(mangle(80), Verdict::Continue);
    assert_eq!(mangle(22), Verdict::Accept, "failsafe");
    // Forwarded in through eth0 to a remote address: only what the forward policy allows.
    let routed = |dport| evaluate(&rs, "serval-FORWARD", &pkt("10.9.9.9", dport, "eth1"));
    assert_eq!(routed(80), Verdict::Accept);
    assert_eq!(routed(8080), Verdict::Drop);
    // Without an applyOnForward policy, forwarded traffic is not the host endpoint's.
    let mut plain = world(vec![]);
    plain.host_endpoints = vec![edge_hep()];
    let rs = compile(&plain, false);
    assert_eq!(
        evaluate(&rs, "serval-FORWARD", &pkt("10.9.9.9", 8080, "eth1")),
        Verdict::Continue
    );
}
