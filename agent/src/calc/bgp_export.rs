//! What a node tells its BGP peers, and takes from them, beyond the speaker's RFC rules: a
//! route learned from one external peer is never passed to another (a node is not a transit
//! router between its ToRs; without this, a node re-announces one ToR's routes to the other
//! ToR with the first ToR as third-party next hop, and traffic keeps going to a ToR that is
//! gone), and no route inside the advertised service ranges is taken from any peer (see
//! `calc::services`).

use ipnet::IpNet;
use serval_bgp::packet::attribute::PathAttributes;
use serval_bgp::policy::{PolicyPeer, RouteOrigin, RoutePolicy, Verdict};

use crate::calc::bgp_filter::{PeerFilterState, RouteFacts};

use crate::resources::BGPConfigurationSpec;

/// The communities an exported prefix carries: standard (`aa:nn`) and large (`aa:nn:mm`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Communities {
    /// Standard communities, `aa:nn`.
    pub standard: Vec<String>,
    /// Large communities, `aa:nn:mm`.
    pub large: Vec<String>,
}

/// BGPConfiguration's `prefixAdvertisements` with names resolved through its `communities`:
/// a prefix inside a rule's CIDR carries that rule's communities (every matching rule adds
/// its own, as Calico's BIRD filter does with `net ~ cidr`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommunityRules(Vec<(IpNet, Communities)>);

impl CommunityRules {
    /// The rules of the cluster's `default` BGPConfiguration (none without it).
    pub fn from_config(spec: Option<&BGPConfigurationSpec>) -> CommunityRules {
        let Some(spec) = spec else {
            return CommunityRules::default();
        };
        let rules = spec
            .prefix_advertisements
            .iter()
            .filter_map(|a| {
                let cidr: IpNet = a.cidr.get()?;
                let mut c = Communities::default();
                for name_or_value in &a.communities {
                    let value = spec
                        .communities
                        .iter()
                        .find(|n| &n.name == name_or_value)
                        .map_or(name_or_value.as_str(), |n| n.value.as_str());
                    let list = match value.matches(':').count() {
                        1 => &mut c.standard,
                        2 => &mut c.large,
                        // Validation refuses anything else; a stored oddity adds nothing.
                        _ => continue,
                    };
                    if !list.iter().any(|v| v == value) {
                        list.push(value.to_string());
                    }
                }
                Some((cidr, c))
            })
            .collect();
        CommunityRules(rules)
    }

    /// What `prefix` carries: the communities of every rule whose CIDR contains it.
    pub fn for_prefix(&self, prefix: &IpNet) -> Communities {
        let mut out = Communities::default();
        for (_, c) in self.0.iter().filter(|(cidr, _)| cidr.contains(prefix)) {
            for v in &c.standard {
                if !out.standard.contains(v) {
                    out.standard.push(v.clone());
                }
            }
            for v in &c.large {
                if !out.large.contains(v) {
                    out.large.push(v.clone());
                }
            }
        }
        out
    }
}

/// Where this node's routes leave it, for BGPFilter's `interface` (kept only while some
/// filter has such a rule, so pods coming and going do not re-run every filter).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteInterfaces {
    /// The host's connected prefixes and their interfaces (read at start-up): a learned
    /// route leaves through the interface whose prefix holds its next hop.
    pub connected: Vec<(IpNet, String)>,
    /// Local routes with an interface: exported pod addresses and their host interfaces.
    pub local: std::collections::BTreeMap<IpNet, String>,
}

impl RouteInterfaces {
    /// The interface towards `next_hop`: the longest connected prefix holding it.
    pub fn towards(&self, next_hop: Option<std::net::IpAddr>) -> Option<&str> {
        let hop = next_hop?;
        self.connected
            .iter()
            .filter(|(net, _)| net.contains(&hop))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, name)| name.as_str())
    }
}

/// The metric of routes learned over BGP that no filter gave another, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormalPriority {
    /// IPv4 (BGPConfiguration `ipv4NormalRoutePriority`).
    pub v4: u32,
    /// IPv6 (`ipv6NormalRoutePriority`).
    pub v6: u32,
}

impl Default for NormalPriority {
    fn default() -> Self {
        NormalPriority {
            v4: crate::calc::routes::DEFAULT_ROUTE_PRIORITY,
            v6: crate::calc::routes::DEFAULT_ROUTE_PRIORITY,
        }
    }
}

impl NormalPriority {
    /// From the cluster's `default` BGPConfiguration (Calico's 1024 without one).
    pub fn from_config(spec: Option<&BGPConfigurationSpec>) -> NormalPriority {
        spec.map_or_else(NormalPriority::default, |s| NormalPriority {
            v4: s.normal_route_priority(false),
            v6: s.normal_route_priority(true),
        })
    }

    /// A route's priority: the one a filter set, else the normal one of its family.
    pub fn of(&self, prefix: &IpNet, set: Option<u32>) -> u32 {
        set.unwrap_or(match prefix {
            IpNet::V4(_) => self.v4,
            IpNet::V6(_) => self.v6,
        })
    }
}

/// The node agent's import and export policy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeRoutePolicy {
    /// Service ranges: their routes are this node's own to advertise, never learned.
    pub service_ranges: crate::calc::services::ServiceRanges,
    /// BGPFilters of the peers that have some, by peer address. They apply after the rules
    /// above (no transit, service ranges), which no filter can override.
    pub peer_filters: std::collections::BTreeMap<std::net::IpAddr, PeerFilterState>,
    /// Routes' interfaces, for filters' `interface` rules.
    pub interfaces: RouteInterfaces,
    /// Routes' default priority, for filters' `priority` rules.
    pub normal_priority: NormalPriority,
}

/// Whether a route, as it is about to be sent to an external peer (our AS already in
/// front), came to us from another AS: our own and our iBGP peers' routes carry only ours.
fn learned_from_another_as(attrs: &PathAttributes) -> bool {
    attrs.as_path.path_len() > 1
}

impl RoutePolicy for NodeRoutePolicy {
    fn import(&self, peer: &PolicyPeer, prefix: IpNet, attrs: &PathAttributes) -> Verdict {
        if self.service_ranges.covers(&prefix) {
            return Verdict::Reject;
        }
        match self.peer_filters.get(&peer.address) {
            Some(f) => f.import(
                prefix,
                attrs,
                RouteFacts {
                    ebgp: peer.ebgp,
                    interface: self.interfaces.towards(attrs.next_hop),
                    priority: self
                        .normal_priority
                        .of(&prefix, attrs.priority.map(u32::from)),
                },
            ),
            None => Verdict::Accept,
        }
    }

    fn export(
        &self,
        peer: &PolicyPeer,
        prefix: IpNet,
        attrs: &PathAttributes,
        held: &PathAttributes,
        origin: RouteOrigin,
    ) -> Verdict {
        if peer.ebgp && learned_from_another_as(attrs) {
            return Verdict::Reject;
        }
        let Some(f) = self.peer_filters.get(&peer.address) else {
            return Verdict::Accept;
        };
        let interface = match origin {
            RouteOrigin::Local => self.interfaces.local.get(&prefix).map(String::as_str),
            RouteOrigin::Internal | RouteOrigin::External => self.interfaces.towards(held.next_hop),
        };
        let facts = RouteFacts {
            ebgp: peer.ebgp,
            interface,
            priority: self
                .normal_priority
                .of(&prefix, held.priority.map(u32::from)),
        };
        f.export(prefix, attrs, facts, origin)
    }

    fn export_depends_on_peer(&self, address: std::net::IpAddr) -> bool {
        self.peer_filters.contains_key(&address)
    }
}

#[cfg(test)]
mod tests {
    use serval_bgp::packet::attribute::AsPath;

    use super::*;

    #[test]
    fn prefix_advertisements_give_blocks_their_communities() {
        let spec: BGPConfigurationSpec = serde_json::from_value(serde_json::json!({
            "communities": [{"name": "rack", "value": "64512:100"}],
            "prefixAdvertisements": [
                {"cidr": "10.244.0.0/16", "communities": ["rack", "64512:1:2"]},
                {"cidr": "10.244.1.0/24", "communities": ["65000:7", "rack"]},
            ]
        }))
        .unwrap();
        let rules = CommunityRules::from_config(Some(&spec));
        let block = |s: &str| rules.for_prefix(&s.parse().unwrap());
        assert_eq!(
            block("10.244.0.64/26"),
            Communities {
                standard: vec!["64512:100".into()],
                large: vec!["64512:1:2".into()]
            }
        );
        // Inside both rules: both add, each value once.
        assert_eq!(
            block("10.244.1.0/26").standard,
            ["64512:100".to_string(), "65000:7".to_string()]
        );
        assert_eq!(block("10.9.0.0/26"), Communities::default());
        assert_eq!(
            CommunityRules::from_config(None).for_prefix(&"10.244.0.0/26".parse().unwrap()),
            Communities::default()
        );
    }

    fn peer(ebgp: bool) -> PolicyPeer {
        PolicyPeer {
            address: "10.97.1.1".parse().unwrap(),
            as_number: 65101,
            ebgp,
        }
    }

    fn path(asns: &[u32]) -> PathAttributes {
        PathAttributes {
            as_path: AsPath::from_sequence(asns.iter().copied()),
            ..Default::default()
        }
    }

    #[test]
    fn no_transit_between_external_peers() {
        let p = NodeRoutePolicy::default();
        let block: IpNet = "10.244.1.0/26".parse().unwrap();
        // Our own block and an iBGP-learned one, as sent to a ToR: only our AS.
        assert_eq!(
            p.export(
                &peer(true),
                block,
                &path(&[65001]),
                &path(&[]),
                RouteOrigin::Local
            ),
            Verdict::Accept
        );
        // Learned from the other ToR: not passed on to this one.
        assert_eq!(
            p.export(
                &peer(true),
                block,
                &path(&[65001, 65102, 65002]),
                &path(&[65102, 65002]),
                RouteOrigin::External
            ),
            Verdict::Reject
        );
        // iBGP peers (mesh, reflectors) get everything the speaker's rules allow.
        assert_eq!(
            p.export(
                &peer(false),
                block,
                &path(&[65102, 65002]),
                &path(&[65102, 65002]),
                RouteOrigin::External
            ),
            Verdict::Accept
        );
        assert!(
            !p.export_depends_on_peer("10.97.1.1".parse().unwrap()),
            "update groups stay shared"
        );
    }

    #[test]
    fn filters_see_the_interface_and_priority_the_node_knows_for_each_route() {
        let spec: crate::resources::BGPFilterSpec = serde_json::from_value(serde_json::json!({
            "exportV4": [
                {"action": "Reject", "interface": "eth1"},
                {"action": "Accept", "interface": "sv*"},
                {"action": "Reject", "matchOperator": "In", "cidr": "10.244.0.0/16", "prefixLength": {"min": 32}},
            ],
            "importV6": [{"action": "Reject", "priority": 700}],
        }))
        .unwrap();
        let filters = [("f".to_string(), spec)].into();
        let state = PeerFilterState::of(&["f".to_string()], &filters);
        let p = NodeRoutePolicy {
            peer_filters: [(peer(true).address, state)].into(),
            interfaces: RouteInterfaces {
                connected: vec![
                    ("10.97.0.0/16".parse().unwrap(), "eth0".into()),
                    ("10.97.2.0/24".parse().unwrap(), "eth1".into()),
                ],
                local: [("10.244.9.7/32".parse().unwrap(), "sv0123456789a".into())].into(),
            },
            normal_priority: NormalPriority { v4: 1024, v6: 700 },
            ..NodeRoutePolicy::default()
        };
        let ours = path(&[64512]);
        let export = |prefix: &str, held: &PathAttributes, origin| {
            p.export(&peer(true), prefix.parse().unwrap(), &ours, held, origin)
        };
        // A local pod route leaves through its host interface; another /32 has none.
        assert_eq!(
            export("10.244.9.7/32", &path(&[]), RouteOrigin::Local),
            Verdict::Accept
        );
        assert_eq!(
            export("10.244.9.8/32", &path(&[]), RouteOrigin::Local),
            Verdict::Reject
        );
        // A learned route leaves towards its next hop as learned: the longest prefix's
        // interface, not the exported next hop's.
        let via = |hop: &str| PathAttributes {
            next_hop: Some(hop.parse().unwrap()),
            ..path(&[64512])
        };
        assert_eq!(
            export("10.50.0.0/24", &via("10.97.2.9"), RouteOrigin::Internal),
            Verdict::Reject
        );
        assert_eq!(
            export("10.50.0.0/24", &via("10.97.3.9"), RouteOrigin::Internal),
            Verdict::Accept
        );
        // Imports see their family's normal priority until a filter sets another.
        let v6 = path(&[65101]);
        assert_eq!(
            p.import(&peer(true), "2001:db8::/32".parse().unwrap(), &v6),
            Verdict::Reject
        );
        let set = PathAttributes {
            priority: std::num::NonZeroU32::new(300),
            ..v6
        };
        assert_eq!(
            p.import(&peer(true), "2001:db8::/32".parse().unwrap(), &set),
            Verdict::Accept
        );
    }

    #[test]
    fn service_routes_are_never_learned() {
        let spec: BGPConfigurationSpec = serde_json::from_value(serde_json::json!({
            "serviceClusterIPs": [{"cidr": "10.96.0.0/16"}],
        }))
        .unwrap();
        let p = NodeRoutePolicy {
            service_ranges: crate::calc::services::ServiceRanges::from_config(Some(&spec)),
            ..NodeRoutePolicy::default()
        };
        let attrs = path(&[65001]);
        for prefix in ["10.96.0.0/16", "10.96.0.10/32"] {
            assert_eq!(
                p.import(&peer(false), prefix.parse().unwrap(), &attrs),
                Verdict::Reject,
                "{prefix}"
            );
        }
        assert_eq!(
            p.import(&peer(true), "10.244.1.0/26".parse().unwrap(), &attrs),
            Verdict::Accept
        );
        assert_eq!(
            p.import(&peer(true), "10.0.0.0/8".parse().unwrap(), &attrs),
            Verdict::Accept,
            "a range wider than the service range is not a service route"
        );
    }
}
