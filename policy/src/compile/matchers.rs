//! A rule's protocol, ports and nets as iptables match parts: protocol names to numbers,
//! port lists split into numeric ranges and named ports, multiport's 15-port chunks, and
//! one family's nets.

use ipnet::IpNet;

use crate::ipt::PortRange;
use crate::model::{IntOrString, parse_net};

/// Protocol name or number to number.
pub fn protocol_number(p: &IntOrString) -> Option<u8> {
    match p {
        IntOrString::Int(n) => u8::try_from(*n).ok(),
        IntOrString::String(s) => match s.as_str() {
            "TCP" => Some(6),
            "UDP" => Some(17),
            "SCTP" => Some(132),
            "ICMP" => Some(1),
            "ICMPv6" => Some(58),
            "UDPLite" => Some(136),
            other => other.parse().ok(),
        },
    }
}

pub(super) fn proto_name(n: u8) -> &'static str {
    match n {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        136 => "udplite",
        _ => "tcp",
    }
}

pub(super) fn parse_ports(list: &[IntOrString]) -> (Vec<PortRange>, Vec<String>) {
    let mut numeric = Vec::new();
    let mut named = Vec::new();
    for p in list {
        match p {
            IntOrString::Int(n) => {
                if let Ok(n) = u16::try_from(*n) {
                    numeric.push(PortRange { first: n, last: n });
                }
            }
            IntOrString::String(s) => {
                if let Some((a, b)) = s.split_once(':') {
                    if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                        numeric.push(PortRange { first: a, last: b });
                    }
                } else if let Ok(n) = s.parse() {
                    numeric.push(PortRange { first: n, last: n });
                } else {
                    named.push(s.clone());
                }
            }
        }
    }
    (numeric, named)
}

/// multiport takes at most 15 ports (a range counts twice).
pub(super) fn chunk_ports(ports: &[PortRange]) -> Vec<Vec<PortRange>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut used = 0;
    for p in ports {
        let cost = if p.first == p.last { 1 } else { 2 };
        if used + cost > 15 {
            out.push(std::mem::take(&mut cur));
            used = 0;
        }
        cur.push(*p);
        used += cost;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub(super) fn nets_of(list: &[String], v6: bool) -> (Vec<IpNet>, bool) {
    let parsed: Vec<IpNet> = list.iter().filter_map(|n| parse_net(n)).collect();
    let any = !parsed.is_empty();
    (
        parsed
            .into_iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .collect(),
        any,
    )
}
