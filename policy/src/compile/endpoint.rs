//! A workload's own chains (its to- and from-chain: clear marks, its policies in order, the
//! namespace profile; anti-spoofing first in the from-chain) and the node's tunnel guard.

use ipnet::IpNet;

use super::{Endpoint, Family, PolicyDef};
use crate::ipt::{IptRule, MARK_ACCEPT, MARK_PASS, Match, PortRange, Target};
use crate::model::PolicyType;

/// Felix-style anti-spoofing, first in a workload's from-chain: it may send only from its
/// own addresses (plus, in IPv6, link-local ones, which neighbour discovery needs and which
/// are never forwarded); anything else is dropped before policy sees it.
fn anti_spoof(fam: &mut Family<'_>, ep: &Endpoint) -> IptRule {
    let mut own: Vec<IpNet> = ep
        .addrs
        .iter()
        .filter(|a| a.is_ipv6() == fam.v6)
        .map(|a| IpNet::from(*a))
        .collect();
    if fam.v6 {
        own.push(IpNet::V6(
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10)
                .expect("fe80::/10"),
        ));
    }
    let matches = match own.as_slice() {
        // No address of this family: nothing it sends in it is genuine.
        [] => Vec::new(),
        [one] => vec![Match::SrcNet(*one, true)],
        _ => vec![Match::SrcSet(fam.net_set(&own), true)],
    };
    IptRule::new(
        matches,
        Target::Drop,
        format!(
            "serval:from {}/{}: source is not the workload's address",
            ep.namespace, ep.name
        ),
    )
}

/// Tunnel traffic (VXLAN on UDP 4789, IPIP) is taken only from known nodes, so nobody else
/// can inject packets that come out decapsulated as if from a pod.
pub(super) fn tunnel_guard(fam: &mut Family<'_>) -> Vec<IptRule> {
    let hosts: Vec<IpNet> = fam
        .inputs
        .hosts
        .iter()
        .filter(|a| a.is_ipv6() == fam.v6)
        .map(|a| IpNet::from(*a))
        .collect();
    let not_a_node = match hosts.as_slice() {
        [] => Vec::new(),
        _ => vec![Match::SrcSet(fam.net_set(&hosts), true)],
    };
    let port = fam.inputs.vxlan_port.unwrap_or(VXLAN_UDP_PORT);
    let mut vxlan = vec![
        Match::Protocol(17, false),
        Match::DstPorts(
            vec![PortRange {
                first: port,
                last: port,
            }],
            false,
        ),
    ];
    vxlan.extend(not_a_node.clone());
    let mut rules = vec![IptRule::new(
        vxlan,
        Target::Drop,
        "serval:VXLAN from an address that is not a node",
    )];
    if !fam.v6 {
        let mut ipip = vec![Match::Protocol(4, false)];
        ipip.extend(not_a_node);
        rules.push(IptRule::new(
            ipip,
            Target::Drop,
            "serval:IPIP from an address that is not a node",
        ));
    }
    rules
}

/// The start of every endpoint's (and host endpoint tier's) chain: clear the marks, then
/// each policy in order until one accepts (return) or passes (the rest are skipped).
pub(super) fn policy_sequence(
    clear_comment: String,
    policies: &[(&PolicyDef, String)],
) -> Vec<IptRule> {
    let mut rules = vec![IptRule::new(
        vec![],
        Target::SetMark(0, MARK_ACCEPT | MARK_PASS),
        clear_comment,
    )];
    for (p, chain) in policies {
        rules.push(IptRule::new(
            vec![Match::Mark(0, MARK_PASS)],
            Target::Jump(chain.clone()),
            format!("serval:policy {}", p.key()),
        ));
        rules.push(IptRule::new(
            vec![Match::Mark(MARK_ACCEPT, MARK_ACCEPT)],
            Target::Return,
            "serval:return if policy accepted",
        ));
    }
    rules
}

/// The VXLAN port nodes use (IANA's).
pub const VXLAN_UDP_PORT: u16 = 4789;

fn endpoint_chain(
    ep: &Endpoint,
    policies: &[(&PolicyDef, String)],
    dir: PolicyType,
) -> Vec<IptRule> {
    let word = if dir == PolicyType::Ingress {
        "to"
    } else {
        "from"
    };
    let mut rules = policy_sequence(
        format!("serval:{word} {}/{}: clear marks", ep.namespace, ep.name),
        policies,
    );
    if !policies.is_empty() {
        rules.push(IptRule::new(
            vec![Match::Mark(0, MARK_PASS)],
            Target::Drop,
            "serval:drop if no policy passed the packet",
        ));
    }
    rules.push(IptRule::new(
        vec![],
        Target::SetMark(MARK_ACCEPT, MARK_ACCEPT),
        format!("serval:profile kns.{} allows", ep.namespace),
    ));
    rules.push(IptRule::new(vec![], Target::Return, "serval:return"));
    rules
}

/// One local endpoint's to- and from-chains: `(name, rules)` twice.
pub(super) fn endpoint_chains(
    fam: &mut Family<'_>,
    ep: &Endpoint,
    applied: &[Vec<(&PolicyDef, String)>; 2],
) -> [(String, Vec<IptRule>); 2] {
    let tw = format!("serval-tw-{}", ep.iface);
    let fw = format!("serval-fw-{}", ep.iface);
    let to_rules = endpoint_chain(ep, &applied[0], PolicyType::Ingress);
    let mut from_rules = vec![anti_spoof(fam, ep)];
    from_rules.extend(endpoint_chain(ep, &applied[1], PolicyType::Egress));
    [(tw, to_rules), (fw, from_rules)]
}
