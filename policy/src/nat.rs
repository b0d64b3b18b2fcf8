//! natOutgoing as rules, next to policy's: pod traffic from a pool with `natOutgoing: true`
//! to anywhere outside all pools is masqueraded; traffic between pools (other nodes' pods) is
//! not. The result is a [`Ruleset`] for the nat table (two chains, two sets) that the agent's
//! firewall manager writes, reads back and repairs like the policy chains.

use std::sync::Arc;

use ipnet::IpNet;

use crate::ipt::{IpSet, IptRule, Match, Ruleset, SetKind, Target};

/// Pools with natOutgoing (sources to masquerade), IPv4.
pub const MASQ_SET: &str = "serval40masq-ipam-pools";
/// Every pool (destinations that stay unmasqueraded), IPv4.
pub const ALL_SET: &str = "serval40all-ipam-pools";
/// The IPv6 sets.
pub const MASQ_SET_V6: &str = "serval60masq-ipam-pools";
/// Every IPv6 pool.
pub const ALL_SET_V6: &str = "serval60all-ipam-pools";
/// Our chain hooked from the kernel's nat POSTROUTING.
pub const POSTROUTING_CHAIN: &str = "serval-POSTROUTING";
/// The chain with the masquerade rule.
pub const NAT_OUTGOING_CHAIN: &str = "serval-nat-outgoing";

/// What natOutgoing needs from the pools (both families).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatSpec {
    /// Pools with natOutgoing.
    pub masquerade: Vec<IpNet>,
    /// All pools.
    pub all: Vec<IpNet>,
}

/// The nat table's chains and sets for one family of `spec` (`v6`: ip6tables). With no pool
/// of that family there is nothing to write (and nothing hooked).
pub fn nat_ruleset(spec: &NatSpec, v6: bool) -> Ruleset {
    let mut rs = Ruleset::default();
    let family = |nets: &[IpNet]| -> Vec<IpNet> {
        nets.iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .copied()
            .collect()
    };
    let (masquerade, all) = (family(&spec.masquerade), family(&spec.all));
    if all.is_empty() {
        return rs;
    }
    let (masq_set, all_set) = if v6 {
        (MASQ_SET_V6, ALL_SET_V6)
    } else {
        (MASQ_SET, ALL_SET)
    };
    let set = |nets: &[IpNet]| IpSet {
        kind: SetKind::Net,
        members: nets.iter().map(ToString::to_string).collect(),
    };
    rs.sets.insert(masq_set.to_string(), set(&masquerade));
    rs.sets.insert(all_set.to_string(), set(&all));
    rs.chains.insert(
        POSTROUTING_CHAIN.to_string(),
        Arc::new(vec![IptRule::new(
            vec![],
            Target::Jump(NAT_OUTGOING_CHAIN.to_string()),
            "serval:nat-outgoing",
        )]),
    );
    let masquerade = if masquerade.is_empty() {
        vec![]
    } else {
        vec![IptRule::new(
            vec![
                Match::SrcSet(masq_set.to_string(), false),
                Match::DstSet(all_set.to_string(), true),
            ],
            Target::Masquerade,
            "serval:masquerade pod traffic leaving the pools",
        )]
    };
    rs.chains
        .insert(NAT_OUTGOING_CHAIN.to_string(), Arc::new(masquerade));
    rs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipt::{Table, render_restore};

    fn spec() -> NatSpec {
        NatSpec {
            masquerade: vec!["10.244.0.0/16".parse().unwrap()],
            all: vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.250.0.0/16".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn only_traffic_leaving_all_pools_is_masqueraded() {
        let rs = nat_ruleset(&spec(), false);
        let text = render_restore(Table::Nat, &rs.chains, &[], false);
        assert!(text.starts_with("*nat\n"), "{text}");
        assert!(
            text.contains(
                "-m set --match-set serval40masq-ipam-pools src -m set ! --match-set \
                 serval40all-ipam-pools dst -j MASQUERADE --random-fully"
            ),
            "{text}"
        );
        assert_eq!(rs.sets[ALL_SET].members.len(), 2);
        assert_eq!(rs.sets[MASQ_SET].members.len(), 1);
        // Only our chains are declared, so --noflush leaves every other chain alone.
        for line in text.lines().filter(|l| l.starts_with(':')) {
            assert!(line.starts_with(":serval-"), "{line}");
        }
        // ipset names are at most 31 characters.
        for name in rs.sets.keys() {
            assert!(name.len() <= 31, "{name}");
        }
    }

    #[test]
    fn no_nat_pool_masquerades_nothing_and_no_pool_writes_nothing() {
        let none = nat_ruleset(
            &NatSpec {
                masquerade: vec![],
                all: spec().all,
            },
            false,
        );
        assert!(none.chains[NAT_OUTGOING_CHAIN].is_empty());
        assert!(nat_ruleset(&NatSpec::default(), false).chains.is_empty());
        // No IPv6 pool: nothing in ip6tables' nat table.
        assert!(nat_ruleset(&spec(), true).chains.is_empty());
    }

    #[test]
    fn ipv6_pools_are_masqueraded_in_their_own_family() {
        let both = NatSpec {
            masquerade: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:244::/48".parse().unwrap(),
            ],
            all: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:244::/48".parse().unwrap(),
            ],
        };
        let v6 = nat_ruleset(&both, true);
        assert_eq!(
            v6.sets[MASQ_SET_V6].members,
            ["fd00:244::/48".to_string()].into()
        );
        assert!(!v6.sets.contains_key(MASQ_SET));
        let text = render_restore(Table::Nat, &v6.chains, &[], true);
        assert!(
            text.contains("--match-set serval60masq-ipam-pools src"),
            "{text}"
        );
        let v4 = nat_ruleset(&both, false);
        assert_eq!(
            v4.sets[ALL_SET].members,
            ["10.244.0.0/16".to_string()].into()
        );
    }
}
