//! Host endpoints (Calico's HostEndpoint with an interface name): traffic to the host that
//! arrives on the interface (INPUT) and traffic from the host that leaves by it (OUTPUT) is
//! policed by the global policies that select the endpoint, in order; what no policy allows
//! is dropped (Calico's default for a host endpoint). Always allowed first, so neither an
//! empty policy set nor a mistake cuts the node off: replies on established connections, the
//! failsafe ports, and the tunnel traffic of other nodes. Forwarded traffic (pods, routing)
//! is not affected.
//!
//! ```text
//!  INPUT  ─► serval-INPUT  ─ -i ethX: established / failsafe / tunnel from nodes ─► ACCEPT
//!                            -i ethX ─► serval-th-ethX (policies) ─ accepted ─► ACCEPT, else DROP
//!  OUTPUT ─► serval-OUTPUT ─ -o ethX: established / failsafe / tunnel to nodes ─► ACCEPT
//!                            -o ethX ─► serval-fh-ethX (policies) ─ accepted ─► ACCEPT, else DROP
//! ```

use ipnet::IpNet;

use super::{Endpoint, Family, PolicyDef, VXLAN_UDP_PORT};
use crate::ipt::{IptRule, MARK_ACCEPT, MARK_PASS, Match, PortRange, Target};

fn port(n: u16) -> Vec<PortRange> {
    vec![PortRange { first: n, last: n }]
}

/// A host endpoint's policy chain for one direction: its policies in order; a packet none
/// of them accepts is dropped.
fn host_chain(ep: &Endpoint, policies: &[(&PolicyDef, String)], word: &str) -> Vec<IptRule> {
    let mut rules = vec![IptRule::new(
        vec![],
        Target::SetMark(0, MARK_ACCEPT | MARK_PASS),
        format!("serval:{word} host endpoint {}: clear marks", ep.name),
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
    rules.push(IptRule::new(
        vec![],
        Target::Drop,
        format!(
            "serval:{word} host endpoint {}: no policy allowed it",
            ep.name
        ),
    ));
    rules
}

/// The rules `serval-INPUT` (inbound) or `serval-OUTPUT` (outbound) gets for the host
/// endpoints, and their policy chains.
pub(super) fn host_endpoint_rules(
    fam: &mut Family<'_>,
    applied: &[[Vec<(&PolicyDef, String)>; 2]],
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
    let failsafe = if inbound {
        &inputs.failsafe.inbound
    } else {
        &inputs.failsafe.outbound
    };
    let (word, prefix) = if inbound {
        ("to", "serval-th-")
    } else {
        ("from", "serval-fh-")
    };
    let mut rules = Vec::new();
    let mut chains = Vec::new();
    for (ep, applied) in inputs.host_endpoints.iter().zip(applied) {
        let iface = if inbound {
            Match::InIface(ep.iface.clone())
        } else {
            Match::OutIface(ep.iface.clone())
        };
        let with = |more: Vec<Match>| {
            let mut m = vec![iface.clone()];
            m.extend(more);
            m
        };
        rules.push(IptRule::new(
            with(vec![Match::Established]),
            Target::Accept,
            "serval:host endpoint connection already allowed",
        ));
        for (proto, n) in failsafe {
            rules.push(IptRule::new(
                with(vec![
                    Match::Protocol(*proto, false),
                    Match::DstPorts(port(*n), false),
                ]),
                Target::Accept,
                format!("serval:failsafe {proto}:{n}"),
            ));
        }
        if let Some(nodes) = &nodes {
            let node = |name: &str| {
                if inbound {
                    Match::SrcSet(name.to_string(), false)
                } else {
                    Match::DstSet(name.to_string(), false)
                }
            };
            rules.push(IptRule::new(
                with(vec![
                    Match::Protocol(17, false),
                    Match::DstPorts(port(vxlan_port), false),
                    node(nodes),
                ]),
                Target::Accept,
                "serval:VXLAN between nodes",
            ));
            if !fam.v6 {
                rules.push(IptRule::new(
                    with(vec![Match::Protocol(4, false), node(nodes)]),
                    Target::Accept,
                    "serval:IPIP between nodes",
                ));
            }
        }
        let chain = format!("{prefix}{}", ep.iface);
        let policies = &applied[usize::from(!inbound)];
        chains.push((chain.clone(), host_chain(ep, policies, word)));
        rules.push(IptRule::new(
            with(vec![]),
            Target::Jump(chain),
            format!("serval:{word} host endpoint {}", ep.name),
        ));
        rules.push(IptRule::new(
            with(vec![Match::Mark(MARK_ACCEPT, MARK_ACCEPT)]),
            Target::Accept,
            "serval:policy accepted the packet",
        ));
    }
    (rules, chains)
}
