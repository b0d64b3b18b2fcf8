//! The one pure function from the cluster picture to everything this node should hold: BGP
//! sessions and exports, kernel routes, tunnel devices and VXLAN entries, the pod MTU,
//! natOutgoing, and the policy compiler's inputs. The sequencer applies its result.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kube::ResourceExt;
use serval_ipam::AffinityState;
use serval_policy::compile::PolicyInputs;

use super::cache::ClusterState;
use super::kernel_table::{KernelTable, kernel_table};
use super::peers::{DesiredPeer, PeerCalcError, compute_peers};
use super::routes::{
    IPIP_DEVICE, PoolRouting, RouteInputs, VXLAN_DEVICE, VXLAN_OVERHEAD, VXLAN_V6_DEVICE,
    VXLAN_V6_OVERHEAD, desired_routes, pod_mtu_with,
};
use super::tunnels::{
    IpipDevice, RemoteVtep, VXLAN_PORT, VXLAN_VNI, VxlanDevice, parse_mac, vxlan_mac, vxlan_mac_v6,
};
use crate::resources::{EncapMode, IPPool, Node};

/// This node's own settings (serval-node's configuration) that calc decides with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// The host interface's MTU.
    pub host_mtu: u32,
    /// Whether BGP carries routes (Calico's `bird` networking backend). Without it the node
    /// has no sessions and announces nothing; routes to other nodes' blocks follow IPAM
    /// affinities over VXLAN, as Calico's `vxlan` backend does.
    pub bgp: bool,
    /// The VXLAN network identifier (Felix's vxlanVNI).
    pub vxlan_vni: u32,
    /// The VXLAN UDP port (Felix's vxlanPort).
    pub vxlan_port: u16,
    /// The IPIP device's MTU when set (Felix's ipipMTU); else host MTU − 20.
    pub ipip_mtu: Option<u32>,
    /// The VXLAN device's MTU when set (Felix's vxlanMTU); else host MTU − 50.
    pub vxlan_mtu: Option<u32>,
    /// The ports host endpoints always let through (Felix's failsafe ports).
    pub failsafe: serval_policy::compile::Failsafe,
    /// The host's interface prefixes and names (read at start-up), for BGPFilter rules
    /// that match a route's `interface`.
    pub host_interfaces: Vec<(IpNet, String)>,
}

impl NodeSettings {
    /// Calico's defaults on a host with this MTU.
    pub fn with_host_mtu(host_mtu: u32) -> NodeSettings {
        NodeSettings {
            host_mtu,
            bgp: true,
            vxlan_vni: VXLAN_VNI,
            vxlan_port: VXLAN_PORT,
            ipip_mtu: None,
            vxlan_mtu: None,
            failsafe: serval_policy::compile::Failsafe::default(),
            host_interfaces: Vec::new(),
        }
    }
}

/// Everything one node should hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// BGP sessions.
    pub peers: Vec<DesiredPeer>,
    /// Prefixes to announce (this node's confirmed blocks).
    pub exports: BTreeSet<IpNet>,
    /// The communities announced prefixes carry (BGPConfiguration prefixAdvertisements).
    pub communities: crate::calc::bgp_export::CommunityRules,
    /// What the speaker takes from peers and passes on (the service ranges it never learns).
    pub route_policy: crate::calc::bgp_export::NodeRoutePolicy,
    /// Kernel routes.
    pub routes: KernelTable,
    /// The IPIP device, when a pool uses IPIP.
    pub ipip: Option<IpipDevice>,
    /// The IPv4 VXLAN device, when an IPv4 pool uses VXLAN.
    pub vxlan: Option<VxlanDevice>,
    /// Remote IPv4 VXLAN endpoints.
    pub vteps: Vec<RemoteVtep>,
    /// The IPv6 VXLAN device, when an IPv6 pool uses VXLAN.
    pub vxlan_v6: Option<VxlanDevice>,
    /// Remote IPv6 VXLAN endpoints.
    pub vteps_v6: Vec<RemoteVtep>,
    /// The MTU pods get.
    pub pod_mtu: u32,
    /// natOutgoing.
    pub nat: serval_policy::nat::NatSpec,
    /// Network policy inputs.
    pub policy: PolicyInputs,
    /// Policies that did not translate and are enforced as deny-all stand-ins (key → why).
    pub policy_failures: BTreeMap<String, String>,
    /// The BGP speaker's log level from BGPConfiguration `logSeverityScreen` (this node's
    /// `node.<name>` configuration first, then `default`), as a tracing level.
    pub bgp_log_level: Option<&'static str>,
}

/// Calico's log severities as tracing levels.
pub fn tracing_level(severity: &str) -> Option<&'static str> {
    match severity {
        "Trace" => Some("trace"),
        "Debug" => Some("debug"),
        "Info" => Some("info"),
        "Warning" => Some("warn"),
        "Error" | "Fatal" => Some("error"),
        _ => None,
    }
}

impl ClusterState {
    fn pool_routing(&self) -> Vec<PoolRouting> {
        self.pools
            .values()
            .filter_map(|p| {
                Some(PoolRouting {
                    cidr: p.spec.cidr_net()?,
                    ipip: p.spec.ipip_mode,
                    vxlan: p.spec.vxlan_mode,
                })
            })
            .collect()
    }

    /// Whether an IPv4 pool asks for IPIP / VXLAN at all.
    pub fn encapsulation_wanted(&self) -> (bool, bool) {
        (
            self.family_pools(false)
                .any(|p| p.spec.ipip_mode != EncapMode::Never),
            self.vxlan_wanted(false),
        )
    }

    /// Whether a pool of the family (`v6`) asks for VXLAN.
    pub fn vxlan_wanted(&self, v6: bool) -> bool {
        self.family_pools(v6)
            .any(|p| p.spec.vxlan_mode != EncapMode::Never)
    }

    fn family_pools(&self, v6: bool) -> impl Iterator<Item = &IPPool> {
        self.pools
            .values()
            .filter(move |p| p.spec.cidr_net().is_some_and(|c| c.addr().is_ipv6() == v6))
    }

    /// The other nodes' VXLAN endpoints of one family, from their Node resources.
    fn remote_vteps(&self, me: &str, v6: bool) -> Vec<RemoteVtep> {
        let mut vteps: Vec<RemoteVtep> = self
            .nodes
            .iter()
            .filter(|(name, _)| *name != me)
            .filter_map(|(_, n)| {
                let bgp = n.spec.bgp.as_ref()?;
                let node_ip = if v6 { bgp.ipv6() } else { bgp.ipv4() }?.addr();
                let (tunnel_addr, mac) = n.spec.vxlan_tunnel(v6);
                Some(RemoteVtep {
                    node_ip,
                    tunnel_addr: tunnel_addr?,
                    mac: parse_mac(mac?)?,
                })
            })
            .collect();
        vteps.sort();
        vteps
    }

    /// This node's VXLAN device of one family, when a pool of the family uses VXLAN and the
    /// node has an address of that family.
    fn vxlan_device(
        &self,
        node: &Node,
        me: &str,
        local: Option<IpNet>,
        settings: &NodeSettings,
    ) -> Option<VxlanDevice> {
        let local = local?.addr();
        let v6 = local.is_ipv6();
        if !self.vxlan_wanted(v6) {
            return None;
        }
        let (address, mac) = node.spec.vxlan_tunnel(v6);
        let (name, overhead, default_mac) = if v6 {
            (VXLAN_V6_DEVICE, VXLAN_V6_OVERHEAD, vxlan_mac_v6(me))
        } else {
            (VXLAN_DEVICE, VXLAN_OVERHEAD, vxlan_mac(me))
        };
        Some(VxlanDevice {
            name: name.into(),
            vni: settings.vxlan_vni,
            port: settings.vxlan_port,
            local,
            mac: mac.and_then(parse_mac).unwrap_or(default_mac),
            // Felix's vxlanMTU is the IPv4 device's; the IPv6 one has its own overhead.
            mtu: match settings.vxlan_mtu {
                Some(mtu) if !v6 => mtu,
                _ => settings.host_mtu.saturating_sub(overhead),
            },
            address,
        })
    }

    /// What the policy compiler needs for node `me`: its endpoints (chains are built for
    /// them), everyone else's (addresses for selector sets), namespaces and policies. A
    /// policy that does not translate fails closed: a deny-everything stand-in takes its
    /// place (see [`crate::calc::policy::fail_closed`]) and it is listed in the second value
    /// (policy key → why), never skipped.
    pub fn policy_inputs(&self, me: &str) -> (PolicyInputs, BTreeMap<String, String>) {
        use crate::calc::policy as cp;
        let mut inputs = PolicyInputs::default();
        let mut failed = BTreeMap::new();
        for (key, w) in &self.endpoints {
            // An interface name iptables cannot take never reaches the rule text; the
            // endpoint gets no chain, so the dispatch drops its traffic (fail closed).
            if !serval_policy::ipt::valid_iface(&w.spec.interface_name) {
                failed.insert(
                    format!("WorkloadEndpoint {key}"),
                    format!(
                        "interfaceName {:?} is not a valid interface name (1-15 of A-Z a-z 0-9 . _ -)",
                        w.spec.interface_name
                    ),
                );
                continue;
            }
            let mut e = cp::endpoint(w);
            let pod = self.pods.get(&format!("{}/{}", e.namespace, e.name));
            if let Some(pod) = pod {
                cp::apply_pod(&mut e, pod);
            }
            // The ServiceAccount's name and labels, for serviceAccountSelector.
            let account = w
                .spec
                .service_account_name
                .clone()
                .or_else(|| pod.and_then(|p| p.spec.as_ref()?.service_account_name.clone()));
            if let Some(account) = account.filter(|a| !a.is_empty()) {
                let sa = self
                    .service_accounts
                    .get(&format!("{}/{account}", e.namespace));
                cp::apply_service_account(&mut e, &account, sa);
            }
            if w.spec.node == me {
                inputs.local.push(e);
            } else {
                inputs.remote.push(e);
            }
        }
        for ns in self.namespaces.values() {
            inputs
                .namespaces
                .insert(ns.name_any(), cp::namespace_labels(ns));
        }
        // Namespaces only known from their endpoints still have their name label.
        for e in inputs.local.iter().chain(&inputs.remote) {
            inputs
                .namespaces
                .entry(e.namespace.clone())
                .or_insert_with(|| {
                    [(cp::NAMESPACE_NAME_LABEL.to_string(), e.namespace.clone())].into()
                });
        }
        // Every node's underlay addresses: the only sources of tunnel traffic.
        inputs.hosts = self
            .nodes
            .values()
            .filter_map(|n| n.spec.bgp.as_ref())
            .flat_map(|b| [b.ipv4(), b.ipv6()])
            .flatten()
            .map(|n| n.addr())
            .collect();
        inputs.hosts.sort();
        inputs.hosts.dedup();
        // This node's host endpoints: named interfaces under global policy.
        for (key, h) in self
            .host_endpoints
            .iter()
            .filter(|(_, h)| h.spec.node == me)
        {
            let iface = h.spec.interface_name.clone().unwrap_or_default();
            if iface == "*" || !serval_policy::ipt::valid_iface(&iface) {
                failed.insert(
                    format!("HostEndpoint {key}"),
                    format!("interfaceName {iface:?} is not one interface; not applied"),
                );
                continue;
            }
            let unused: Vec<&str> = [
                ("expectedIPs", !h.spec.expected_ips.is_empty()),
                ("profiles", !h.spec.profiles.is_empty()),
                ("ports", !h.spec.ports.is_empty()),
            ]
            .into_iter()
            .filter_map(|(f, set)| set.then_some(f))
            .collect();
            if !unused.is_empty() {
                failed.insert(
                    format!("HostEndpoint {key}"),
                    format!("{unused:?} are not supported and not used; the interface is policed"),
                );
            }
            inputs
                .host_endpoints
                .push(serval_policy::compile::Endpoint {
                    namespace: String::new(),
                    name: h.name_any(),
                    iface,
                    addrs: Vec::new(),
                    labels: h.labels().clone().into_iter().collect(),
                    ports: Vec::new(),
                });
        }
        // Network sets with an entry that does not parse (validation refuses them at the
        // door; one written straight into the datastore still arrives): a policy whose rule
        // could select such a set cannot say what it means, so it fails closed too.
        let broken_sets: Vec<(String, Option<String>, &BTreeMap<String, String>)> = self
            .network_sets
            .iter()
            .filter(|(_, s)| s.spec.nets.iter().any(|n| n.get().is_none()))
            .map(|(k, s)| (format!("NetworkSet {k}"), s.namespace(), s.labels()))
            .chain(
                self.global_network_sets
                    .iter()
                    .filter(|(_, s)| s.spec.nets.iter().any(|n| n.get().is_none()))
                    .map(|(k, s)| (format!("GlobalNetworkSet {k}"), None, s.labels())),
            )
            .collect();
        let mut add =
            |key: String,
             r: Result<serval_policy::compile::PolicyDef, crate::calc::policy::TranslateError>,
             closed: &dyn Fn() -> serval_policy::compile::PolicyDef| {
                let r = r.map_err(|e| e.to_string()).and_then(|p| {
                    match broken_sets
                        .iter()
                        .find(|(_, ns, labels)| cp::rules_may_select(&p, ns.as_deref(), labels))
                    {
                        Some((set, _, _)) => Err(format!(
                            "a rule selector matches {set}, whose nets are not all addresses or CIDRs"
                        )),
                        None => Ok(p),
                    }
                });
                match r {
                    Ok(p) => inputs.policies.push(p),
                    Err(why) => {
                        inputs.policies.push(closed());
                        failed.insert(key, why);
                    }
                }
            };
        for (k, p) in &self.policies {
            add(format!("NetworkPolicy {k}"), cp::serval_policy(p), &|| {
                cp::serval_fail_closed(p)
            });
        }
        for (k, p) in &self.global_policies {
            add(
                format!("GlobalNetworkPolicy {k}"),
                cp::global_policy(p),
                &|| cp::global_fail_closed(p),
            );
        }
        for (k, p) in &self.k8s_policies {
            add(
                format!("networking.k8s.io NetworkPolicy {k}"),
                cp::k8s_policy(p),
                &|| cp::k8s_fail_closed(p),
            );
        }
        // Network sets, as rule selectors see them. An entry that does not parse is left out
        // and reported with the set; the policies that may select the set fail closed above.
        let nets_of = |key: String,
                       list: &[crate::resources::Parsed<IpNet>],
                       failed: &mut BTreeMap<String, String>| {
            let nets: Vec<IpNet> = list
                .iter()
                .filter_map(crate::resources::Parsed::get)
                .collect();
            if nets.len() != list.len() {
                failed.insert(
                    key,
                    "some nets are not addresses or CIDRs; the policies whose rules select this set are enforced as deny-all".into(),
                );
            }
            nets
        };
        for (k, s) in &self.network_sets {
            let nets = nets_of(format!("NetworkSet {k}"), &s.spec.nets, &mut failed);
            inputs
                .network_sets
                .push(serval_policy::compile::NetworkSetDef {
                    namespace: Some(s.namespace().unwrap_or_else(|| "default".into())),
                    name: s.name_any(),
                    labels: s.labels().clone(),
                    nets,
                });
        }
        for (k, s) in &self.global_network_sets {
            let nets = nets_of(format!("GlobalNetworkSet {k}"), &s.spec.nets, &mut failed);
            inputs
                .network_sets
                .push(serval_policy::compile::NetworkSetDef {
                    namespace: None,
                    name: s.name_any(),
                    labels: s.labels().clone(),
                    nets,
                });
        }
        // Policies that did not even parse: denied over what they could govern.
        for (key, (object, why)) in &self.unreadable_policies {
            inputs
                .policies
                .push(cp::unreadable_fail_closed(key, object));
            failed.insert(key.clone(), format!("does not parse: {why}"));
        }
        (inputs, failed)
    }

    /// The pools as natOutgoing needs them (IPv4).
    pub fn nat_spec(&self) -> serval_policy::nat::NatSpec {
        let pools: Vec<(IpNet, bool)> = self
            .pools
            .values()
            .filter_map(|p| Some((p.spec.cidr_net()?, p.spec.nat_outgoing)))
            .collect();
        serval_policy::nat::NatSpec {
            masquerade: pools
                .iter()
                .filter(|(_, nat)| *nat)
                .map(|(c, _)| *c)
                .collect(),
            all: pools.iter().map(|(c, _)| *c).collect(),
        }
    }

    /// Other nodes' confirmed blocks with the owner's address of the block's family.
    fn block_owners(&self, me: &str) -> BTreeMap<IpNet, IpAddr> {
        self.affinities
            .values()
            .map(|a| &a.spec.inner)
            .filter(|a| a.node != me && a.state == AffinityState::Confirmed)
            .filter_map(|a| {
                let bgp = self.nodes.get(&a.node)?.spec.bgp.as_ref()?;
                Some((a.cidr, bgp.address_for(&a.cidr)?))
            })
            .collect()
    }

    /// The BGPFilters of the peers that name some, by peer address.
    fn peer_filters(
        &self,
        peers: &[crate::calc::peers::DesiredPeer],
    ) -> BTreeMap<IpAddr, crate::calc::bgp_filter::PeerFilterState> {
        let specs: BTreeMap<String, crate::resources::BGPFilterSpec> = self
            .bgp_filters
            .iter()
            .map(|(name, f)| (name.clone(), f.spec.clone()))
            .collect();
        peers
            .iter()
            .filter(|p| !p.filters.is_empty())
            .map(|p| {
                let state = crate::calc::bgp_filter::PeerFilterState::of(&p.filters, &specs);
                (p.config.address, state)
            })
            .collect()
    }

    /// What `me` should hold.
    pub fn desired(&self, me: &str, host_mtu: u32) -> Result<Desired, PeerCalcError> {
        self.desired_with(me, &NodeSettings::with_host_mtu(host_mtu))
    }

    /// What `me` should hold under `settings`.
    pub fn desired_with(
        &self,
        me: &str,
        settings: &NodeSettings,
    ) -> Result<Desired, PeerCalcError> {
        let host_mtu = settings.host_mtu;
        let mut peers = compute_peers(me, &self.bgp_resources())?;
        if !settings.bgp {
            peers.clear();
        }
        let node = self
            .node(me)
            .ok_or_else(|| PeerCalcError::NoNode(me.to_string()))?;
        let bgp = node.spec.bgp.clone().unwrap_or_default();
        let (local_v4, local_v6) = (bgp.ipv4(), bgp.ipv6());
        let local_blocks = self.node_blocks(me);
        let no_export: Vec<IpNet> = self
            .pools
            .values()
            .filter(|p| p.spec.disable_bgp_export)
            .filter_map(|p| p.spec.cidr_net())
            .collect();
        let mut exports: BTreeSet<IpNet> = local_blocks
            .iter()
            .filter(|b| !no_export.iter().any(|p: &IpNet| p.contains(*b)))
            .copied()
            .collect();

        // Remote VXLAN endpoints from the other nodes' resources, per family.
        let vteps = self.remote_vteps(me, false);
        let vteps_v6 = self.remote_vteps(me, true);
        let vxlan_tunnels = vteps
            .iter()
            .chain(&vteps_v6)
            .map(|v| (v.node_ip, v.tunnel_addr))
            .collect();

        let mut local_pods = BTreeMap::new();
        for wep in self.endpoints.values().filter(|w| w.spec.node == me) {
            for n in wep.spec.networks() {
                local_pods.insert(n, wep.spec.interface_name.clone());
            }
        }
        // Addresses borrowed from another node's block are announced as host routes (the
        // owner announces the block; the more specific route wins).
        for pod in local_pods.keys() {
            let in_own_block = local_blocks.iter().any(|b| b.contains(pod));
            let exportable = !no_export.iter().any(|p| p.contains(pod));
            if !in_own_block && exportable {
                exports.insert(*pod);
            }
        }
        // Service addresses: the ranges from every node, Local services' addresses from the
        // nodes with their endpoints. Never learned from peers, so never a kernel route.
        let default_config = self.configs.get("default").map(|c| &c.spec);
        let service_ranges = crate::calc::services::ServiceRanges::from_config(default_config);
        exports.extend(crate::calc::services::service_exports(
            &service_ranges,
            self.services.values(),
            self.endpoint_slices.values(),
            me,
        ));
        let normal_priority = crate::calc::bgp_export::NormalPriority::from_config(default_config);
        let remote = self
            .remote
            .iter()
            .filter(|(prefix, _)| !service_ranges.covers(prefix))
            .map(|(prefix, (next_hops, priority))| {
                let learned = crate::calc::routes::LearnedRoute {
                    next_hops: next_hops.clone(),
                    metric: normal_priority.of(prefix, *priority),
                };
                (*prefix, learned)
            })
            .collect();
        let pools = self.pool_routing();
        let block_owners = self.block_owners(me);
        let inputs = RouteInputs {
            pools: pools.clone(),
            local_v4,
            local_v6,
            vxlan_tunnels,
            local_pods: local_pods.clone(),
            local_blocks,
            remote,
            block_owners,
            without_bgp: !settings.bgp,
        };
        let routes = kernel_table(&desired_routes(&inputs));
        let (want_ipip, _) = self.encapsulation_wanted();
        let ipip = want_ipip.then(|| IpipDevice {
            name: IPIP_DEVICE.into(),
            mtu: settings
                .ipip_mtu
                .unwrap_or_else(|| host_mtu.saturating_sub(crate::calc::routes::IPIP_OVERHEAD)),
            address: bgp.ipip_tunnel_addr(),
        });
        let vxlan = self.vxlan_device(node, me, local_v4, settings);
        let vxlan_v6 = self.vxlan_device(node, me, local_v6, settings);
        let peer_filters = self.peer_filters(&peers);
        let (mut policy, policy_failures) = self.policy_inputs(me);
        policy.vxlan_port = Some(settings.vxlan_port);
        policy.failsafe = settings.failsafe.clone();
        if !settings.bgp {
            exports.clear();
        }
        let interfaces = route_interfaces(&peer_filters, settings, &local_pods, &exports);
        Ok(Desired {
            policy,
            policy_failures,
            nat: self.nat_spec(),
            peers,
            exports,
            communities: crate::calc::bgp_export::CommunityRules::from_config(default_config),
            route_policy: crate::calc::bgp_export::NodeRoutePolicy {
                interfaces,
                service_ranges,
                peer_filters,
                normal_priority,
            },
            bgp_log_level: [format!("node.{me}"), "default".to_string()]
                .iter()
                .filter_map(|name| self.configs.get(name)?.spec.log_severity_screen.as_deref())
                .find_map(tracing_level),
            routes,
            ipip,
            vxlan,
            vteps,
            vxlan_v6,
            vteps_v6,
            pod_mtu: pod_mtu_with(host_mtu, &pools, settings.ipip_mtu, settings.vxlan_mtu),
        })
    }
}

/// Routes' interfaces for BGPFilter, only while some peer's filter matches on them: the
/// host's prefixes, and the exported local pod addresses with their host interfaces.
fn route_interfaces(
    filters: &BTreeMap<IpAddr, crate::calc::bgp_filter::PeerFilterState>,
    settings: &NodeSettings,
    local_pods: &BTreeMap<IpNet, String>,
    exports: &BTreeSet<IpNet>,
) -> crate::calc::bgp_export::RouteInterfaces {
    if !filters.values().any(|f| f.matches_interfaces()) {
        return crate::calc::bgp_export::RouteInterfaces::default();
    }
    crate::calc::bgp_export::RouteInterfaces {
        connected: settings.host_interfaces.clone(),
        local: local_pods
            .iter()
            .filter(|(pod, _)| exports.contains(pod))
            .map(|(pod, dev)| (*pod, dev.clone()))
            .collect(),
    }
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
