//! Host endpoints (Calico's HostEndpoint with an interface name), policed by the global
//! policies that select them, in four tiers as Felix programs them:
//!
//! ```text
//!  raw    PREROUTING/OUTPUT ─► serval-PREROUTING / serval-OUTPUT: failsafe ─► ACCEPT;
//!         doNotTrack policies (serval-thu-/fhu-ethX): allowed ─► CT --notrack + ACCEPT,
//!         denied ─► DROP, no decision ─► on to normal (tracked) processing
//!  mangle PREROUTING ─► serval-PREROUTING: established, failsafe ─► ACCEPT; preDNAT
//!         policies (serval-thpd-ethX): allowed ─► ACCEPT, denied ─► DROP, else on
//!  filter INPUT  ─► serval-INPUT  ─ -i ethX: established / untracked-allowed / failsafe /
//!         tunnel from nodes ─► ACCEPT; serval-th-ethX (policies) ─ accepted ─► ACCEPT, else DROP
//!  filter OUTPUT ─► serval-OUTPUT ─ -o ethX: the same, outbound, through serval-fh-ethX
//!  filter FORWARD ─► serval-FORWARD ─ -i/-o ethX: applyOnForward policies
//!         (serval-thfw-/fhfw-ethX) when any applies; none allowing ─► DROP
//! ```
//!
//! What no normal policy allows to or from the host is dropped (Calico's host endpoint
//! default), but replies, the failsafe ports and other nodes' tunnel traffic always pass, so
//! neither an empty policy set nor a mistake cuts the node off. Forwarded traffic is policed
//! only by applyOnForward policies (allowed when none applies), and pod traffic is not host
//! endpoint traffic otherwise.

use ipnet::IpNet;

use super::{Endpoint, Family, PolicyDef, VXLAN_UDP_PORT};
use crate::ipt::{IptRule, MARK_ACCEPT, Match, PortRange, Target};

/// Per host endpoint, per direction (ingress, egress): the policies of each tier in order.
type Applied<'p> = Vec<[Vec<(&'p PolicyDef, String)>; 2]>;

/// The policies that apply to each host endpoint, by tier.
pub(super) struct Tiers<'p> {
    /// Normal policies: INPUT and OUTPUT.
    pub(super) filter: Applied<'p>,
    /// Normal policies with applyOnForward: FORWARD.
    pub(super) forward: Applied<'p>,
    /// doNotTrack policies: raw.
    pub(super) untracked: Applied<'p>,
    /// preDNAT policies: mangle (ingress).
    pub(super) pre_dnat: Applied<'p>,
}

fn port(n: u16) -> Vec<PortRange> {
    vec![PortRange { first: n, last: n }]
}

/// A tier's chain for one endpoint and direction: its policies in order, then `end` for a
/// packet none of them accepted (DROP where the tier denies by default, RETURN where it
/// hands the packet on).
fn tier_chain(
    ep: &Endpoint,
    policies: &[(&PolicyDef, String)],
    what: &str,
    end: Target,
) -> Vec<IptRule> {
    let mut rules = super::endpoint::policy_sequence(
        format!("serval:{what} {}: clear marks", ep.name),
        policies,
    );
    let why = if end == Target::Drop {
        "no policy allowed it"
    } else {
        "no policy decided: on to normal processing"
    };
    rules.push(IptRule::new(
        vec![],
        end,
        format!("serval:{what} {}: {why}", ep.name),
    ));
    rules
}

fn iface(ep: &Endpoint, inbound: bool) -> Match {
    if inbound {
        Match::InIface(ep.iface.clone())
    } else {
        Match::OutIface(ep.iface.clone())
    }
}

/// One tier of one endpoint and direction: chain name prefix, what it polices (for
/// comments), its policies in order.
type Tier<'a, 'p> = (&'a str, &'a str, &'a [(&'p PolicyDef, String)]);

/// Adds `ep`'s chain for a tier (its policies, then `end`) and the rule jumping to it.
fn jump_to_tier(
    rules: &mut Vec<IptRule>,
    chains: &mut Vec<(String, Vec<IptRule>)>,
    ep: &Endpoint,
    inbound: bool,
    (prefix, word, policies): Tier<'_, '_>,
    end: Target,
) {
    let chain = format!("{prefix}{}", ep.iface);
    chains.push((chain.clone(), tier_chain(ep, policies, word, end)));
    rules.push(IptRule::new(
        on(ep, inbound, vec![]),
        Target::Jump(chain),
        format!("serval:{word} {}", ep.name),
    ));
}

fn on(ep: &Endpoint, inbound: bool, more: Vec<Match>) -> Vec<Match> {
    let mut m = vec![iface(ep, inbound)];
    m.extend(more);
    m
}

fn failsafe(fam: &Family<'_>, ep: &Endpoint, inbound: bool) -> Vec<IptRule> {
    let ports = if inbound {
        &fam.inputs.failsafe.inbound
    } else {
        &fam.inputs.failsafe.outbound
    };
    ports
        .iter()
        .map(|(proto, n)| {
            IptRule::new(
                on(
                    ep,
                    inbound,
                    vec![
                        Match::Protocol(*proto, false),
                        Match::DstPorts(port(*n), false),
                    ],
                ),
                Target::Accept,
                format!("serval:failsafe {proto}:{n}"),
            )
        })
        .collect()
}

/// The rules `serval-INPUT` (inbound) or `serval-OUTPUT` (outbound) gets for the host
/// endpoints' normal tier, and their chains.
pub(super) fn host_endpoint_rules(
    fam: &mut Family<'_>,
    tiers: &Tiers<'_>,
    inbound: bool,
) -> (Vec<IptRule>, Vec<(String, Vec<IptRule>)>) {
    let inputs = fam.inputs;
    if inputs.host_endpoints.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let hosts: Vec<IpNet> = inputs
        .hosts
        .iter()
        .filter(|a| a.is_ipv6() == fam.v6)
        .map(|a| IpNet::from(*a))
        .collect();
    let nodes = (!hosts.is_empty()).then(|| fam.net_set(&hosts));
    let vxlan_port = inputs.vxlan_port.unwrap_or(VXLAN_UDP_PORT);
    let (word, prefix) = if inbound {
        ("to host endpoint", "serval-th-")
    } else {
        ("from host endpoint", "serval-fh-")
    };
    let d = usize::from(!inbound);
    let mut rules = Vec::new();
    let mut chains = Vec::new();
    for (hi, ep) in inputs.host_endpoints.iter().enumerate() {
        rules.push(IptRule::new(
            on(ep, inbound, vec![Match::Established]),
            Target::Accept,
            "serval:host endpoint connection already allowed",
        ));
        if !tiers.untracked[hi][d].is_empty() {
            rules.push(IptRule::new(
                on(ep, inbound, vec![Match::Untracked]),
                Target::Accept,
                "serval:allowed untracked by doNotTrack policy",
            ));
        }
        rules.extend(failsafe(fam, ep, inbound));
        if let Some(nodes) = &nodes {
            let node = if inbound {
                Match::SrcSet(nodes.clone(), false)
            } else {
                Match::DstSet(nodes.clone(), false)
            };
            rules.push(IptRule::new(
                on(
                    ep,
                    inbound,
                    vec![
                        Match::Protocol(17, false),
                        Match::DstPorts(port(vxlan_port), false),
                        node.clone(),
                    ],
                ),
                Target::Accept,
                "serval:VXLAN between nodes",
            ));
            if !fam.v6 {
                rules.push(IptRule::new(
                    on(ep, inbound, vec![Match::Protocol(4, false), node]),
                    Target::Accept,
                    "serval:IPIP between nodes",
                ));
            }
        }
        let tier = (prefix, word, &tiers.filter[hi][d][..]);
        jump_to_tier(&mut rules, &mut chains, ep, inbound, tier, Target::Drop);
        rules.push(IptRule::new(
            on(ep, inbound, vec![Match::Mark(MARK_ACCEPT, MARK_ACCEPT)]),
            Target::Accept,
            "serval:policy accepted the packet",
        ));
    }
    (rules, chains)
}

/// `serval-FORWARD`'s rules for traffic forwarded in or out through a host endpoint that
/// applyOnForward policies select (nothing for one they do not).
pub(super) fn forward_rules(
    fam: &mut Family<'_>,
    tiers: &Tiers<'_>,
) -> (Vec<IptRule>, Vec<(String, Vec<IptRule>)>) {
    let mut rules = Vec::new();
    let mut chains = Vec::new();
    for (hi, ep) in fam.inputs.host_endpoints.iter().enumerate() {
        for (inbound, prefix, word) in [
            (true, "serval-thfw-", "forwarded in through host endpoint"),
            (false, "serval-fhfw-", "forwarded out through host endpoint"),
        ] {
            let d = usize::from(!inbound);
            let untracked = !tiers.untracked[hi][d].is_empty();
            let policies = &tiers.forward[hi][d];
            if untracked {
                rules.push(IptRule::new(
                    on(ep, inbound, vec![Match::Untracked]),
                    Target::Accept,
                    "serval:allowed untracked by doNotTrack policy",
                ));
            }
            if policies.is_empty() {
                continue;
            }
            rules.push(IptRule::new(
                on(ep, inbound, vec![Match::Established]),
                Target::Accept,
                "serval:forwarded connection already allowed",
            ));
            let tier = (prefix, word, &policies[..]);
            jump_to_tier(&mut rules, &mut chains, ep, inbound, tier, Target::Drop);
        }
    }
    (rules, chains)
}

/// raw-table rules (`serval-PREROUTING` inbound, `serval-OUTPUT` outbound) for the
/// doNotTrack tier, and their chains; nothing when no doNotTrack policy applies.
pub(super) fn untracked_rules(
    fam: &mut Family<'_>,
    tiers: &Tiers<'_>,
    inbound: bool,
) -> (Vec<IptRule>, Vec<(String, Vec<IptRule>)>) {
    let d = usize::from(!inbound);
    let (prefix, word) = if inbound {
        ("serval-thu-", "untracked to host endpoint")
    } else {
        ("serval-fhu-", "untracked from host endpoint")
    };
    let mut rules = Vec::new();
    let mut chains = Vec::new();
    for (hi, ep) in fam.inputs.host_endpoints.iter().enumerate() {
        let policies = &tiers.untracked[hi][d];
        if policies.is_empty() {
            continue;
        }
        rules.extend(failsafe(fam, ep, inbound));
        let tier = (prefix, word, &policies[..]);
        jump_to_tier(&mut rules, &mut chains, ep, inbound, tier, Target::Return);
        let accepted = vec![Match::Mark(MARK_ACCEPT, MARK_ACCEPT)];
        rules.push(IptRule::new(
            on(ep, inbound, accepted.clone()),
            Target::NoTrack,
            "serval:doNotTrack policy allowed it: no connection tracking",
        ));
        rules.push(IptRule::new(
            on(ep, inbound, accepted),
            Target::Accept,
            "serval:doNotTrack policy allowed it",
        ));
    }
    (rules, chains)
}

/// mangle-table rules (`serval-PREROUTING`) for the preDNAT tier, and their chains; nothing
/// when no preDNAT policy applies.
pub(super) fn pre_dnat_rules(
    fam: &mut Family<'_>,
    tiers: &Tiers<'_>,
) -> (Vec<IptRule>, Vec<(String, Vec<IptRule>)>) {
    let mut rules = Vec::new();
    let mut chains = Vec::new();
    for (hi, ep) in fam.inputs.host_endpoints.iter().enumerate() {
        let policies = &tiers.pre_dnat[hi][0];
        if policies.is_empty() {
            continue;
        }
        rules.push(IptRule::new(
            on(ep, true, vec![Match::Established]),
            Target::Accept,
            "serval:connection already allowed",
        ));
        rules.extend(failsafe(fam, ep, true));
        let tier = (
            "serval-thpd-",
            "before DNAT to host endpoint",
            &policies[..],
        );
        jump_to_tier(&mut rules, &mut chains, ep, true, tier, Target::Return);
        rules.push(IptRule::new(
            on(ep, true, vec![Match::Mark(MARK_ACCEPT, MARK_ACCEPT)]),
            Target::Accept,
            "serval:preDNAT policy allowed it",
        ));
    }
    (rules, chains)
}
