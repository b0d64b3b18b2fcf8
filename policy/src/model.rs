//! Serval policy rules (Calico's v3 rule model): the part shared by NetworkPolicy and
//! GlobalNetworkPolicy, with its validation.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::selector::Selector;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    /// Accept the packet.
    Allow,
    /// Drop the packet.
    Deny,
    /// Skip the remaining policies of this tier.
    Pass,
    /// Log the packet and carry on.
    Log,
}

/// The direction a policy applies to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum PolicyType {
    /// Traffic to the selected endpoints.
    Ingress,
    /// Traffic from the selected endpoints.
    Egress,
}

/// A number or a string (`80`, `"80:90"`, `"http"`, `"TCP"`), as Kubernetes' int-or-string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(u32),
    /// A string.
    String(String),
}

impl JsonSchema for IntOrString {
    fn schema_name() -> Cow<'static, str> {
        "IntOrString".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

/// ICMP type and code to match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpMatch {
    /// ICMP type (0..=254).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP code (0..=255), only with a type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// One side (source or destination) of a rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityRule {
    /// Addresses that match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    /// Addresses that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<String>,
    /// Endpoints whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Endpoints whose labels must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<String>,
    /// Namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Ports: numbers, `min:max` ranges or named ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<IntOrString>,
    /// Ports that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<IntOrString>,
}

/// One policy rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// What happens on a match.
    pub action: Action,
    /// 4 or 6 to restrict the rule to one family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    /// Protocol name (TCP, UDP, SCTP, ICMP, ICMPv6, UDPLite) or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<IntOrString>,
    /// Protocol that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<IntOrString>,
    /// ICMP match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpMatch>,
    /// ICMP that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "notICMP")]
    pub not_icmp: Option<IcmpMatch>,
    /// Source match.
    #[serde(default)]
    pub source: EntityRule,
    /// Destination match.
    #[serde(default)]
    pub destination: EntityRule,
}

impl Rule {
    /// A rule with `action` and no match at all (it applies to every packet); the base that
    /// more specific rules fill in with struct-update syntax.
    pub fn any(action: Action) -> Rule {
        Rule {
            action,
            ip_version: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
        }
    }
}

/// Protocols known by name.
pub const PROTOCOL_NAMES: [&str; 6] = ["TCP", "UDP", "SCTP", "ICMP", "ICMPv6", "UDPLite"];

/// Checks a rule; each problem is reported as (field path relative to the rule, message).
pub fn validate_rule(rule: &Rule) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    if let Some(v) = rule.ip_version
        && v != 4
        && v != 6
    {
        errors.push(("ipVersion".into(), format!("must be 4 or 6, not {v}")));
    }
    for (field, proto) in [
        ("protocol", &rule.protocol),
        ("notProtocol", &rule.not_protocol),
    ] {
        match proto {
            Some(IntOrString::Int(n)) if *n > 255 => {
                errors.push((field.into(), format!("protocol number {n} is above 255")))
            }
            Some(IntOrString::String(s)) if !PROTOCOL_NAMES.contains(&s.as_str()) => errors.push((
                field.into(),
                format!("unknown protocol {s:?} (expected one of {PROTOCOL_NAMES:?} or a number)"),
            )),
            _ => {}
        }
    }
    let has_ports = |e: &EntityRule| !e.ports.is_empty() || !e.not_ports.is_empty();
    if has_ports(&rule.source) || has_ports(&rule.destination) {
        let port_protocol = matches!(&rule.protocol,
            Some(IntOrString::String(s)) if ["TCP", "UDP", "SCTP", "UDPLite"].contains(&s.as_str()))
            || matches!(rule.protocol, Some(IntOrString::Int(6 | 17 | 132 | 136)));
        if !port_protocol {
            errors.push((
                "protocol".into(),
                "ports need protocol TCP, UDP, SCTP or UDPLite".into(),
            ));
        }
    }
    for (icmp_field, icmp) in [("icmp", &rule.icmp), ("notICMP", &rule.not_icmp)] {
        if let Some(m) = icmp {
            if m.code.is_some() && m.icmp_type.is_none() {
                errors.push((format!("{icmp_field}.code"), "a code needs a type".into()));
            }
            if m.icmp_type == Some(255) {
                errors.push((format!("{icmp_field}.type"), "must be 0..=254".into()));
            }
        }
    }
    for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
        for (name, nets) in [("nets", &entity.nets), ("notNets", &entity.not_nets)] {
            for (i, net) in nets.iter().enumerate() {
                if parse_net(net).is_none() {
                    errors.push((
                        format!("{side}.{name}[{i}]"),
                        format!("{net:?} is not an IP address or CIDR"),
                    ));
                }
            }
        }
        for (name, sel) in [
            ("selector", &entity.selector),
            ("notSelector", &entity.not_selector),
            ("namespaceSelector", &entity.namespace_selector),
        ] {
            if let Some(text) = sel {
                let is_global = name == "namespaceSelector" && text.trim() == "global()";
                if let (false, Err(e)) = (is_global, Selector::parse(text)) {
                    errors.push((format!("{side}.{name}"), e.to_string()));
                }
            }
        }
        for (name, ports) in [("ports", &entity.ports), ("notPorts", &entity.not_ports)] {
            for (i, port) in ports.iter().enumerate() {
                if let Err(e) = check_port(port) {
                    errors.push((format!("{side}.{name}[{i}]"), e.to_string()));
                }
            }
        }
    }
    errors
}

/// Parses an address or prefix (a bare address means a /32 or /128).
pub fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// Why a rule's port is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// A number outside 1..=65535.
    #[error("port {0} is outside 1..=65535")]
    OutOfRange(i64),
    /// A `min:max` range that is not one.
    #[error("range {0:?} must be min:max with 1 <= min <= max")]
    BadRange(String),
    /// Neither a number, a range nor a port name (lower case, digits, `-`, at most 15).
    #[error("{0:?} is not a port number, a min:max range or a port name")]
    NotAPort(String),
}

fn check_port(port: &IntOrString) -> Result<(), PortError> {
    match port {
        IntOrString::Int(n) if *n == 0 || *n > 65535 => Err(PortError::OutOfRange((*n).into())),
        IntOrString::Int(_) => Ok(()),
        IntOrString::String(s) => {
            if let Some((lo, hi)) = s.split_once(':') {
                match (lo.parse::<u16>(), hi.parse::<u16>()) {
                    (Ok(lo), Ok(hi)) if lo != 0 && lo <= hi => Ok(()),
                    _ => Err(PortError::BadRange(s.clone())),
                }
            } else if let Ok(n) = s.parse::<u16>() {
                check_port(&IntOrString::Int(n.into()))
            } else if s.is_empty()
                || s.len() > 15
                || !s
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                Err(PortError::NotAPort(s.clone()))
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml_json: &str) -> Rule {
        serde_json_like(yaml_json)
    }

    fn serde_json_like(s: &str) -> Rule {
        // The tests use JSON to avoid a YAML dependency in this pure crate.
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn valid_rules_pass() {
        let r = rule(
            r#"{"action":"Allow","protocol":"TCP","source":{"selector":"app == 'a'","nets":["10.0.0.0/8"]},
                "destination":{"ports":[80,"8000:8080","http"]}}"#,
        );
        assert!(validate_rule(&r).is_empty(), "{:?}", validate_rule(&r));
        let r = rule(r#"{"action":"Deny","protocol":1,"icmp":{"type":8,"code":0}}"#);
        assert!(validate_rule(&r).is_empty());
    }

    #[test]
    fn bad_rules_name_the_field() {
        let r = rule(
            r#"{"action":"Allow","protocol":"TPC","ipVersion":5,"source":{"nets":["10.0.0.0/33"],"selector":"a ="},
                "destination":{"ports":["90:80",0,"Bad_Name"]},"icmp":{"code":1}}"#,
        );
        let fields: Vec<String> = validate_rule(&r).into_iter().map(|(f, _)| f).collect();
        for want in [
            "ipVersion",
            "protocol",
            "source.nets[0]",
            "source.selector",
            "destination.ports[0]",
            "destination.ports[1]",
            "destination.ports[2]",
            "icmp.code",
        ] {
            assert!(
                fields.iter().any(|f| f == want),
                "missing {want} in {fields:?}"
            );
        }
    }
}
