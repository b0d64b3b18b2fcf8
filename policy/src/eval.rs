//! A small evaluator over a compiled [`Ruleset`]: walks the chains as the kernel would for a
//! new connection's first packet, so the policy semantics are tested on the compiled rules
//! themselves, without a kernel.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::ipt::{IpSet, Match, Ruleset, SetKind, Target};

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol.
    pub protocol: u8,
    /// Source port (0 when none).
    pub sport: u16,
    /// Destination port (0 when none).
    pub dport: u16,
    /// ICMP type and code, for ICMP.
    pub icmp: Option<(u8, u8)>,
    /// Incoming interface.
    pub in_iface: Option<String>,
    /// Outgoing interface.
    pub out_iface: Option<String>,
}

/// The outcome at the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted by a Serval rule.
    Accept,
    /// Dropped by a Serval rule.
    Drop,
    /// Serval's chain returned: the kernel chain goes on (other owners' rules decide).
    Continue,
}

fn iface_matches(pattern: &str, iface: Option<&String>) -> bool {
    let Some(i) = iface else { return false };
    match pattern.strip_suffix('+') {
        Some(prefix) => i.starts_with(prefix),
        None => i == pattern,
    }
}

fn in_set(set: Option<&IpSet>, ip: IpAddr, proto_port: Option<(u8, u16)>) -> bool {
    let Some(set) = set else { return false };
    match set.kind {
        SetKind::Net => set.members.iter().any(|m| {
            m.parse::<IpNet>()
                .map(|n| n.contains(&ip))
                .or_else(|_| m.parse::<IpAddr>().map(|a| a == ip))
                .unwrap_or(false)
        }),
        SetKind::IpPort => {
            let Some((proto, port)) = proto_port else {
                return false;
            };
            let name = match proto {
                6 => "tcp",
                17 => "udp",
                132 => "sctp",
                136 => "udplite",
                _ => return false,
            };
            set.members.contains(&format!("{ip},{name}:{port}"))
        }
    }
}

fn matches(rs: &Ruleset, m: &Match, p: &Packet, mark: u32) -> bool {
    match m {
        Match::InIface(i) => iface_matches(i, p.in_iface.as_ref()),
        Match::OutIface(i) => iface_matches(i, p.out_iface.as_ref()),
        Match::Protocol(n, neg) => (p.protocol == *n) != *neg,
        Match::SrcNet(n, neg) => n.contains(&p.src) != *neg,
        Match::DstNet(n, neg) => n.contains(&p.dst) != *neg,
        Match::SrcSet(s, neg) => in_set(rs.sets.get(s), p.src, None) != *neg,
        Match::DstSet(s, neg) => in_set(rs.sets.get(s), p.dst, None) != *neg,
        Match::DstIpPortSet(s, neg) => {
            in_set(rs.sets.get(s), p.dst, Some((p.protocol, p.dport))) != *neg
        }
        Match::SrcPorts(ports, neg) => {
            ports.iter().any(|r| (r.first..=r.last).contains(&p.sport)) != *neg
        }
        Match::DstPorts(ports, neg) => {
            ports.iter().any(|r| (r.first..=r.last).contains(&p.dport)) != *neg
        }
        Match::Mark(v, mask) => mark & mask == *v,
        Match::Icmp(t, c, neg, _) => {
            let hit = p
                .icmp
                .is_some_and(|(pt, pc)| pt == *t && c.is_none_or(|c| c == pc));
            hit != *neg
        }
        // The first packet of a connection is NEW and valid.
        Match::Established | Match::Invalid | Match::Untracked => false,
    }
}

/// Evaluates `p` from the filter-table chain `hook` (`serval-FORWARD`, `serval-INPUT`, ...).
pub fn evaluate(rs: &Ruleset, hook: &str, p: &Packet) -> Verdict {
    evaluate_in(rs, &rs.chains, hook, p)
}

/// Evaluates `p` from `hook` in one table's chains (`rs.raw`, `rs.mangle`); a packet taken
/// out of connection tracking (`CT --notrack`) and then accepted reads as accepted.
pub fn evaluate_in(rs: &Ruleset, chains: &crate::ipt::Chains, hook: &str, p: &Packet) -> Verdict {
    let mut mark = 0u32;
    // Call stack of (chain, next rule index).
    let mut stack: Vec<(&str, usize)> = vec![(hook, 0)];
    let mut steps = 0usize;
    while let Some((chain, idx)) = stack.pop() {
        steps += 1;
        assert!(steps < 100_000, "rule evaluation does not terminate");
        let Some(rules) = chains.get(chain) else {
            panic!("jump to missing chain {chain}");
        };
        let Some(rule) = rules.get(idx) else {
            continue; // fell off the end: return to the caller
        };
        if !rule.matches.iter().all(|m| matches(rs, m, p, mark)) {
            stack.push((chain, idx + 1));
            continue;
        }
        match &rule.target {
            Target::Accept | Target::Masquerade => return Verdict::Accept,
            Target::Drop => return Verdict::Drop,
            Target::Return => {}
            Target::Jump(c) => {
                stack.push((chain, idx + 1));
                stack.push((c, 0));
            }
            Target::Goto(c) => stack.push((c, 0)),
            Target::SetMark(v, m) => {
                mark = (mark & !m) | (v & m);
                stack.push((chain, idx + 1));
            }
            Target::Log(_) | Target::NoTrack => stack.push((chain, idx + 1)),
        }
    }
    Verdict::Continue
}
