use serval_bgp::packet::attribute::AsPath;

use super::*;

fn filters(specs: &[(&str, serde_json::Value)]) -> BTreeMap<String, BGPFilterSpec> {
    specs
        .iter()
        .map(|(n, v)| (n.to_string(), serde_json::from_value(v.clone()).unwrap()))
        .collect()
}

fn state(names: &[&str], all: &BTreeMap<String, BGPFilterSpec>) -> PeerFilterState {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    PeerFilterState::of(&names, all)
}

fn attrs(path: &[u32], communities: &[u32]) -> PathAttributes {
    PathAttributes {
        as_path: AsPath::from_sequence(path.iter().copied()),
        communities: communities.to_vec(),
        ..Default::default()
    }
}

/// A session's facts for a route with no interface at the normal priority.
fn facts(ebgp: bool) -> RouteFacts<'static> {
    RouteFacts {
        ebgp,
        interface: None,
        priority: 1024,
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn the_first_matching_rule_decides_across_filters_in_order_and_no_match_accepts() {
    let all = filters(&[
        (
            "first",
            serde_json::json!({"importV4": [
                {"action": "Accept", "matchOperator": "Equal", "cidr": "10.200.0.0/24"},
            ]}),
        ),
        (
            "second",
            serde_json::json!({"importV4": [
                {"action": "Reject", "matchOperator": "In", "cidr": "10.0.0.0/8"},
                {"action": "Accept", "matchOperator": "Equal", "cidr": "10.201.0.0/24"},
            ]}),
        ),
    ]);
    let f = state(&["first", "second"], &all);
    let a = attrs(&[65000], &[]);
    assert_eq!(
        f.import(net("10.200.0.0/24"), &a, facts(true)),
        Verdict::Accept
    );
    assert_eq!(
        f.import(net("10.201.0.0/24"), &a, facts(true)),
        Verdict::Reject,
        "the earlier rule wins"
    );
    assert_eq!(
        f.import(net("192.0.2.0/24"), &a, facts(true)),
        Verdict::Accept
    );
    // IPv6 routes see only the V6 lists (none here).
    assert_eq!(
        f.import(net("2001:db8::/32"), &a, facts(true)),
        Verdict::Accept
    );
    // The other order decides otherwise.
    let g = state(&["second", "first"], &all);
    assert_eq!(
        g.import(net("10.200.0.0/24"), &a, facts(true)),
        Verdict::Reject
    );
}

#[test]
fn operators_lengths_peer_type_communities_and_path_prefix_all_must_hold() {
    let all = filters(&[(
        "f",
        serde_json::json!({"importV4": [
            {"action": "Reject", "matchOperator": "NotIn", "cidr": "10.0.0.0/8"},
            {"action": "Reject", "matchOperator": "In", "cidr": "10.0.0.0/8",
             "prefixLength": {"min": 25, "max": 32}},
            {"action": "Reject", "peerType": "iBGP"},
            {"action": "Reject", "communities": {"values": ["65000:666"]}},
            {"action": "Reject", "asPathPrefix": [65000, 65099]},
            {"action": "Accept", "matchOperator": "NotEqual", "cidr": "10.9.9.0/24"},
            {"action": "Reject"},
        ]}),
    )]);
    let f = state(&["f"], &all);
    let ok = attrs(&[65000, 65001], &[]);
    assert_eq!(
        f.import(net("192.0.2.0/24"), &ok, facts(true)),
        Verdict::Reject
    );
    assert_eq!(
        f.import(net("10.1.0.0/26"), &ok, facts(true)),
        Verdict::Reject
    );
    assert_eq!(
        f.import(net("10.1.0.0/24"), &ok, facts(false)),
        Verdict::Reject
    );
    let marked = attrs(&[65000], &[65000 << 16 | 666]);
    assert_eq!(
        f.import(net("10.1.0.0/24"), &marked, facts(true)),
        Verdict::Reject
    );
    let via = attrs(&[65000, 65099, 7], &[]);
    assert_eq!(
        f.import(net("10.1.0.0/24"), &via, facts(true)),
        Verdict::Reject
    );
    assert_eq!(
        f.import(net("10.1.0.0/24"), &ok, facts(true)),
        Verdict::Accept
    );
    assert_eq!(
        f.import(net("10.9.9.0/24"), &ok, facts(true)),
        Verdict::Reject
    );
}

#[test]
fn export_rules_see_the_path_behind_our_as_and_prepend_behind_it() {
    let all = filters(&[(
        "out",
        serde_json::json!({"exportV4": [
            {"action": "Reject", "source": "RemotePeers"},
            {"action": "Accept", "matchOperator": "In", "cidr": "10.244.0.0/16",
             "operations": [{"addCommunity": {"value": "64512:77"}},
                            {"addCommunity": {"value": "64512:1:2"}},
                            {"prependASPath": {"prefix": [64512, 64513]}}]},
        ]}),
    )]);
    let f = state(&["out"], &all);
    // Our own block, as exported on eBGP (our AS 64512 already in front).
    let ours = attrs(&[64512], &[]);
    let Verdict::Modify(m) = f.export(net("10.244.1.0/26"), &ours, facts(true), RouteOrigin::Local)
    else {
        panic!("modified");
    };
    let path: Vec<u32> = m
        .as_path
        .segments
        .iter()
        .flat_map(|s| s.asns.clone())
        .collect();
    assert_eq!(path, [64512, 64512, 64513], "our AS stays first");
    assert_eq!(m.communities, [64512 << 16 | 77]);
    assert_eq!(m.large_communities, [LargeCommunity(64512, 1, 2)]);
    // On iBGP (no AS in front) the prefix goes first.
    let Verdict::Modify(m) = f.export(
        net("10.244.1.0/26"),
        &attrs(&[], &[]),
        facts(false),
        RouteOrigin::Local,
    ) else {
        panic!("modified");
    };
    let path: Vec<u32> = m
        .as_path
        .segments
        .iter()
        .flat_map(|s| s.asns.clone())
        .collect();
    assert_eq!(path, [64512, 64513]);
    // Another node's block, re-advertised: RemotePeers.
    for origin in [RouteOrigin::Internal, RouteOrigin::External] {
        assert_eq!(
            f.export(net("10.244.2.0/26"), &ours, facts(true), origin),
            Verdict::Reject
        );
    }
}

#[test]
fn a_missing_or_untranslatable_filter_closes_the_peer() {
    let all = filters(&[(
        "bad",
        serde_json::json!({"exportV4": [
            {"action": "Accept", "operations": [{"setPriority": {"value": 512}}]}
        ]}),
    )]);
    let a = attrs(&[65000], &[]);
    let missing = state(&["nope"], &all);
    assert_eq!(
        missing,
        PeerFilterState::Closed(FilterError::Missing("nope".into()))
    );
    assert_eq!(
        missing.import(net("10.0.0.0/24"), &a, facts(true)),
        Verdict::Reject
    );
    assert_eq!(
        missing.export(net("10.0.0.0/24"), &a, facts(true), RouteOrigin::Local),
        Verdict::Reject
    );
    let PeerFilterState::Closed(e) = state(&["bad"], &all) else {
        panic!("closed");
    };
    assert_eq!(
        e.to_string(),
        "BGPFilter \"bad\": exportV4[0].operations: setPriority applies to import rules only"
    );
    assert_eq!(
        state(&[], &all),
        PeerFilterState::Rules(PeerFilters::default())
    );
}

#[test]
fn priority_matches_the_route_metric_and_set_priority_gives_an_imported_route_its_own() {
    let all = filters(&[(
        "f",
        serde_json::json!({
            "importV4": [
                {"action": "Accept", "matchOperator": "In", "cidr": "10.50.0.0/16",
                 "operations": [{"setPriority": {"value": 512}}, {"addCommunity": {"value": "65000:9"}}]},
                {"action": "Reject", "priority": 2000},
            ],
            "exportV4": [
                {"action": "Reject", "priority": 512},
            ],
        }),
    )]);
    let f = state(&["f"], &all);
    let a = attrs(&[65001], &[]);
    let Verdict::Modify(m) = f.import(net("10.50.1.0/24"), &a, facts(true)) else {
        panic!("modified");
    };
    assert_eq!(m.priority.map(u32::from), Some(512));
    assert_eq!(m.communities, [65000 << 16 | 9]);
    // A rule on priority sees the route's: the normal one here, so 2000 does not match.
    assert_eq!(
        f.import(net("10.60.0.0/24"), &a, facts(true)),
        Verdict::Accept
    );
    let at = |priority| RouteFacts {
        priority,
        ..facts(true)
    };
    assert_eq!(f.import(net("10.60.0.0/24"), &a, at(2000)), Verdict::Reject);
    // Export rules see the priority the route was given on its way in.
    let ours = attrs(&[65000, 65001], &[]);
    assert_eq!(
        f.export(net("10.50.1.0/24"), &ours, at(512), RouteOrigin::External),
        Verdict::Reject
    );
    assert_eq!(
        f.export(net("10.50.1.0/24"), &ours, at(1024), RouteOrigin::External),
        Verdict::Accept
    );
}

#[test]
fn interface_rules_match_the_route_interface_as_a_pattern_and_never_a_route_without_one() {
    let all = filters(&[(
        "f",
        serde_json::json!({
            "exportV4": [
                {"action": "Accept", "interface": "sv*"},
                {"action": "Reject", "matchOperator": "In", "cidr": "10.244.0.0/16", "prefixLength": {"min": 32}},
            ],
            "importV4": [
                {"action": "Reject", "interface": "eth?"},
            ],
        }),
    )]);
    let f = state(&["f"], &all);
    assert!(f.matches_interfaces());
    let a = attrs(&[65000], &[]);
    let on = |interface| RouteFacts {
        interface,
        ..facts(false)
    };
    let pod = net("10.244.9.7/32");
    assert_eq!(
        f.export(pod, &a, on(Some("sv0123456789a")), RouteOrigin::Local),
        Verdict::Accept
    );
    assert_eq!(
        f.export(pod, &a, on(None), RouteOrigin::Local),
        Verdict::Reject,
        "no interface: the interface rule does not match, the next one does"
    );
    assert_eq!(
        f.import(net("10.1.0.0/24"), &a, on(Some("eth1"))),
        Verdict::Reject
    );
    assert_eq!(
        f.import(net("10.1.0.0/24"), &a, on(Some("eth10"))),
        Verdict::Accept
    );
    assert_eq!(f.import(net("10.1.0.0/24"), &a, on(None)), Verdict::Accept);
}

#[test]
fn globs_match_like_birds() {
    for (pattern, text, want) in [
        ("eth*", "eth0", true),
        ("eth*", "eth", true),
        ("eth*", "veth0", false),
        ("*", "", true),
        ("e?h0", "eth0", true),
        ("e?h0", "eh0", false),
        ("*.serval", "vxlan.serval", true),
        ("sv*a", "sv0123456789a", true),
        ("sv*a", "sv0123456789b", false),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("eth0", "eth0", true),
        ("eth0", "eth00", false),
    ] {
        assert_eq!(glob_matches(pattern, text), want, "{pattern} ~ {text}");
    }
}

#[test]
fn an_interface_pattern_that_is_not_one_closes_the_peer() {
    let all = filters(&[(
        "bad",
        serde_json::json!({"importV4": [{"action": "Reject", "interface": "eth0/../*"}]}),
    )]);
    let PeerFilterState::Closed(e) = state(&["bad"], &all) else {
        panic!("closed");
    };
    assert_eq!(
        e.to_string(),
        "BGPFilter \"bad\": importV4[0].interface: not an interface name or pattern"
    );
}
