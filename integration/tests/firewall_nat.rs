//! natOutgoing in both families on a real kernel, in a namespace of the test's own: the
//! firewall manager writes IPv4 and IPv6 masquerade chains and sets from the pools, reads
//! them back as its own, and removes the IPv6 ones when the last IPv6 pool goes.

use serval_agent::dataplane::firewall::{Backend, FamilyRules, FirewallManager, FirewallRules};
use serval_integration::{Netns, require};
use serval_policy::ipt::Ruleset;
use serval_policy::nat::{NatSpec, nat_ruleset};

/// Applies `spec`'s nat rules (no policy) inside `ns` and returns what a second pass found
/// wrong (nothing, when the first pass wrote what it meant to).
fn apply(ns: &Netns, spec: NatSpec) -> serval_agent::dataplane::firewall::Repairs {
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let want = FirewallRules {
                v4: FamilyRules::new(Ruleset::default(), nat_ruleset(&spec, false)),
                v6: FamilyRules::new(Ruleset::default(), nat_ruleset(&spec, true)),
            };
            let mut m = FirewallManager::new(Backend::Nft);
            m.apply(&want).await.map_err(std::io::Error::other)?;
            Ok(m.resync().await.map_err(std::io::Error::other)?.repairs)
        })
    })
    .unwrap()
}

#[test]
fn ipv6_pools_are_masqueraded_like_ipv4_ones() {
    if !require::lab_ready(
        "ipv6_pools_are_masqueraded_like_ipv4_ones",
        &["ip6tables-nft-save", "ipset"],
    ) {
        return;
    }
    let ns = Netns::new("nat6").unwrap();
    let pools = |v6: bool| NatSpec {
        masquerade: [Some("10.244.0.0/16"), v6.then_some("fd00:244::/48")]
            .into_iter()
            .flatten()
            .map(|n| n.parse().unwrap())
            .collect(),
        all: [Some("10.244.0.0/16"), v6.then_some("fd00:244::/48")]
            .into_iter()
            .flatten()
            .map(|n| n.parse().unwrap())
            .collect(),
    };
    let repairs = apply(&ns, pools(true));
    assert!(repairs.is_empty(), "{repairs:?}");
    let v6 = ns.output(&["ip6tables-nft-save", "-t", "nat"]).unwrap();
    assert!(
        v6.contains("-A serval-nat-outgoing")
            && v6.contains("serval60masq-ipam-pools src")
            && v6.contains("-j MASQUERADE --random-fully"),
        "{v6}"
    );
    assert!(
        v6.contains("-A POSTROUTING -m comment --comment \"serval:hook\" -j serval-POSTROUTING"),
        "{v6}"
    );
    let sets = ns
        .output(&["ipset", "list", "serval60masq-ipam-pools"])
        .unwrap();
    assert!(sets.contains("fd00:244::/48"), "{sets}");
    let v4 = ns.output(&["iptables-nft-save", "-t", "nat"]).unwrap();
    assert!(v4.contains("serval40masq-ipam-pools src"), "{v4}");
    // The IPv6 pool goes: a fresh manager (as after a restart) sweeps the IPv6 chains,
    // hook and sets; IPv4 stays.
    apply(&ns, pools(false));
    let v6 = ns.output(&["ip6tables-nft-save", "-t", "nat"]).unwrap();
    assert!(!v6.contains("serval"), "{v6}");
    let all = ns.output(&["ipset", "list", "-n"]).unwrap();
    assert!(!all.contains("serval60"), "{all}");
    let v4 = ns.output(&["iptables-nft-save", "-t", "nat"]).unwrap();
    assert!(v4.contains("serval40masq-ipam-pools src"), "{v4}");
}
