//! natOutgoing as rules, next to policy's: pod traffic from a pool with `natOutgoing: true`
//! to anywhere outside all pools is masqueraded; traffic between pools (other nodes' pods) is
//! not. The result is a [`Ruleset`] for the nat table (two chains, two sets) that the agent's
//! firewall manager writes, reads back and repairs like the policy chains.

use std::sync::Arc;

use ipnet::IpNet;

use crate::ipt::{IpSet, IptRule, Match, Ruleset, SetKind, Target};

/// Pools with natOutgoing (sources to masquerade).
pub const MASQ_SET: &str = "serval40masq-ipam-pools";
/// Every pool (destinations that stay unmasqueraded).
pub const ALL_SET: &str = "serval40all-ipam-pools";
/// Our chain hooked from the kernel's nat POSTROUTING.
pub const POSTROUTING_CHAIN: &str = "serval-POSTROUTING";
/// The chain with the masquerade rule.
pub const NAT_OUTGOING_CHAIN: &str = "serval-nat-outgoing";

/// What natOutgoing needs from the pools (IPv4; IPv6 pools are not masqueraded yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatSpec {
    /// Pools with natOutgoing.
    pub masquerade: Vec<IpNet>,
    /// All pools.
    pub all: Vec<IpNet>,
}

/// The nat table's chains and sets for `spec` (IPv4). With no pool at all there is nothing
/// to write (and nothing hooked).
pub fn nat_ruleset(spec: &NatSpec) -> Ruleset {
    let mut rs = Ruleset::default();
    if spec.all.is_empty() {
        return rs;
    }
    let set = |nets: &[IpNet]| IpSet {
        kind: SetKind::Net,
        members: nets
            .iter()
            .filter(|n| n.addr().is_ipv4())
            .map(ToString::to_string)
            .collect(),
    };
    rs.sets.insert(MASQ_SET.to_string(), set(&spec.masquerade));
    rs.sets.insert(ALL_SET.to_string(), set(&spec.all));
    rs.chains.insert(
        POSTROUTING_CHAIN.to_string(),
        Arc::new(vec![IptRule::new(
            vec![],
            Target::Jump(NAT_OUTGOING_CHAIN.to_string()),
            "serval:nat-outgoing",
        )]),
    );
    let masquerade = if spec.masquerade.is_empty() {
        vec![]
    } else {
        vec![IptRule::new(
            vec![
                Match::SrcSet(MASQ_SET.to_string(), false),
                Match::DstSet(ALL_SET.to_string(), true),
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
        let rs = nat_ruleset(&spec());
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
        let none = nat_ruleset(&NatSpec {
            masquerade: vec![],
            all: spec().all,
        });
        assert!(none.chains[NAT_OUTGOING_CHAIN].is_empty());
        assert!(nat_ruleset(&NatSpec::default()).chains.is_empty());
    }
}
