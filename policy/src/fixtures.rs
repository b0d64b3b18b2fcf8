//! A synthetic cluster at scale (1,000 policies over 1,000 endpoints), shared by the
//! compile benchmark here and the apply benchmark in `integration/`, so both measure the
//! same thing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::compile::{Endpoint, NamedPort, PolicyDef, PolicyInputs};
use crate::model::{Action, EntityRule, IntOrString, PolicyType, Rule};
use crate::{Labels, Selector};

/// Endpoints in [`cluster`].
pub const ENDPOINTS: usize = 1000;
/// Policies in [`cluster`].
pub const POLICIES: usize = 1000;
const APPS: usize = 100;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// `POLICIES` namespaced policies over `ENDPOINTS` local endpoints in ten namespaces: each
/// policy selects one of 100 apps and admits two peer groups (by app on port 80, by tier in a
/// team's namespaces on a named port and a range), the mix `bench/policy` measures.
pub fn cluster() -> PolicyInputs {
    let mut namespaces = BTreeMap::new();
    for n in 0..10 {
        namespaces.insert(format!("ns{n}"), labels(&[("team", format!("t{}", n % 3))]));
    }
    let local = (0..ENDPOINTS)
        .map(|i| Endpoint {
            namespace: format!("ns{}", i % 10),
            name: format!("pod{i}"),
            iface: format!("sv{i:011x}"),
            addrs: vec![IpAddr::from([10, 90, (i / 250) as u8, (i % 250) as u8 + 1])],
            labels: labels(&[
                ("app", format!("app{}", i % APPS)),
                ("tier", format!("tier{}", i % 4)),
            ]),
            ports: vec![NamedPort {
                name: "http".into(),
                protocol: 6,
                port: 8080,
            }],
        })
        .collect();
    let policies = (0..POLICIES)
        .map(|i| {
            let rule = |sel: String, ns_sel: Option<String>, ports: Vec<IntOrString>| Rule {
                action: Action::Allow,
                ip_version: None,
                protocol: Some(IntOrString::String("TCP".into())),
                not_protocol: None,
                icmp: None,
                not_icmp: None,
                source: EntityRule {
                    selector: Some(sel),
                    namespace_selector: ns_sel,
                    ..EntityRule::default()
                },
                destination: EntityRule {
                    ports,
                    ..EntityRule::default()
                },
            };
            PolicyDef {
                host: Default::default(),
                name: format!("policy-{i}"),
                namespace: Some(format!("ns{}", i % 10)),
                order: Some(f64::from(i as u32 % 7)),
                selector: Selector::parse(&format!("app == 'app{}'", i % APPS)).unwrap(),
                namespace_selector: None,
                types: vec![PolicyType::Ingress],
                ingress: vec![
                    rule(
                        format!("app == 'app{}'", (i * 7) % APPS),
                        None,
                        vec![IntOrString::Int(80)],
                    ),
                    rule(
                        format!("tier == 'tier{}'", i % 4),
                        Some(format!("team == 't{}'", i % 3)),
                        vec![
                            IntOrString::String("http".into()),
                            IntOrString::String("9000:9100".into()),
                        ],
                    ),
                ],
                egress: vec![],
            }
        })
        .collect();
    PolicyInputs {
        local,
        remote: vec![],
        namespaces,
        policies,
        hosts: vec![],
        vxlan_port: None,
        network_sets: vec![],
        ..PolicyInputs::default()
    }
}
