//! The agent's picture of the cluster (the syncer's objects, typed) plus the BGP best paths,
//! and the one pure function from that picture to everything this node should hold: BGP
//! sessions, exported blocks, kernel routes, tunnel devices and VXLAN entries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use kube::ResourceExt;
use serde_json::Value;
use serval_bgp::status::BestPathChange;
use serval_ipam::AffinityState;

use crate::calc::peers::{BgpResources, DesiredPeer, PeerCalcError, compute_peers};
use crate::calc::routes::{
    IPIP_DEVICE, PoolRouting, RouteInputs, VXLAN_DEVICE, desired_routes, pod_mtu,
};
use crate::dataplane::route_table::{KernelTable, kernel_table};
use crate::dataplane::tunnel::{
    IpipDevice, RemoteVtep, VXLAN_PORT, VXLAN_VNI, VxlanDevice, parse_mac, vxlan_mac,
};
use crate::datastore::{KindInfo, SyncEvent};
use crate::resources::{
    BGPConfiguration, BGPPeer, BlockAffinity, EncapMode, GlobalNetworkPolicy, IPPool,
    NetworkPolicy, Node, ServalResource, WorkloadEndpoint,
};
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use serval_policy::compile::PolicyInputs;

type K8sNode = k8s_openapi::api::core::v1::Node;

/// The kinds the agent watches; with the Kubernetes datastore also Kubernetes Nodes,
/// whose labels are the nodes' labels (in etcd, Kubernetes Nodes are not stored).
pub fn watched_kinds_for(kubernetes: bool) -> Vec<KindInfo> {
    let mut kinds = watched_kinds();
    if kubernetes {
        kinds.push(KindInfo::of::<K8sNode>());
    }
    kinds
}

/// The kinds the agent watches in any datastore.
pub fn watched_kinds() -> Vec<KindInfo> {
    vec![
        KindInfo::of::<BGPConfiguration>(),
        KindInfo::of::<BGPPeer>(),
        KindInfo::of::<Node>(),
        KindInfo::of::<IPPool>(),
        KindInfo::of::<BlockAffinity>(),
        KindInfo::of::<WorkloadEndpoint>(),
        KindInfo::of::<NetworkPolicy>(),
        KindInfo::of::<GlobalNetworkPolicy>(),
        KindInfo::of::<K8sNetworkPolicy>(),
        KindInfo::of::<K8sNamespace>(),
        KindInfo::of::<K8sPod>(),
    ]
}

/// Everything the agent knows, keyed by `namespace/name`.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    configs: BTreeMap<String, BGPConfiguration>,
    peers: BTreeMap<String, BGPPeer>,
    nodes: BTreeMap<String, Node>,
    pools: BTreeMap<String, IPPool>,
    affinities: BTreeMap<String, BlockAffinity>,
    endpoints: BTreeMap<String, WorkloadEndpoint>,
    /// Kubernetes Nodes (Kubernetes datastore): the source of node labels.
    k8s_nodes: BTreeMap<String, K8sNode>,
    policies: BTreeMap<String, NetworkPolicy>,
    global_policies: BTreeMap<String, GlobalNetworkPolicy>,
    k8s_policies: BTreeMap<String, K8sNetworkPolicy>,
    namespaces: BTreeMap<String, K8sNamespace>,
    /// Kubernetes Pods (Kubernetes datastore): their labels and named ports apply to their
    /// endpoints, so a `kubectl label pod` reaches policy.
    pods: BTreeMap<String, K8sPod>,
    /// BGP best paths learned from peers: prefix → next hops.
    remote: BTreeMap<IpNet, Vec<IpAddr>>,
    /// Secrets BGP passwords name, as last read: Secret → key → value.
    secrets: BTreeMap<String, BTreeMap<String, String>>,
}

fn key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn upsert<R: ServalResource>(map: &mut BTreeMap<String, R>, object: Value) -> Result<(), String> {
    let r: R = serde_json::from_value(object).map_err(|e| e.to_string())?;
    map.insert(key(r.namespace().as_deref(), &r.name_any()), r);
    Ok(())
}

/// Says which fields of a BGPConfiguration just stored do nothing here: one stored before
/// Serval refused them, or written straight into etcd, is used without them, not quietly.
fn warn_unsupported_bgp(configs: &BTreeMap<String, BGPConfiguration>, object: &Value) {
    let (_, name) = crate::datastore::object_name(object);
    let Some(c) = configs.get(&key(None, &name)) else {
        return;
    };
    let fields = crate::resources::validate::unsupported_bgp_fields(&c.spec);
    if !fields.is_empty() {
        tracing::warn!(config = %name, fields = ?fields, "BGPConfiguration sets fields Serval does not support yet; they have no effect");
    }
}

impl ClusterState {
    /// Applies one syncer event; returns whether anything changed. An object that does not
    /// parse is reported and ignored (it never takes the agent down).
    pub fn apply(&mut self, event: &SyncEvent) -> bool {
        match event {
            SyncEvent::Status(_) => false,
            SyncEvent::Upsert { kind, object } => {
                let o = || object.clone();
                let k8s = kind.group == "networking.k8s.io" || kind.group.is_empty();
                let res = match kind.kind.as_str() {
                    "NetworkPolicy" if k8s => upsert(&mut self.k8s_policies, o()),
                    "NetworkPolicy" => upsert(&mut self.policies, o()),
                    "GlobalNetworkPolicy" => upsert(&mut self.global_policies, o()),
                    "Namespace" => upsert(&mut self.namespaces, o()),
                    "Pod" => {
                        // Kept as agents read it: a status update changes nothing here.
                        let t = crate::resources::trim::trim(kind, object);
                        match serde_json::from_value::<K8sPod>(t) {
                            Ok(pod) => {
                                let k = key(pod.namespace().as_deref(), &pod.name_any());
                                if self.pods.get(&k) == Some(&pod) {
                                    return false;
                                }
                                self.pods.insert(k, pod);
                                Ok(())
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    "BGPConfiguration" => upsert(&mut self.configs, o()).inspect(|()| {
                        warn_unsupported_bgp(&self.configs, object);
                    }),
                    "BGPPeer" => upsert(&mut self.peers, o()),
                    "Node" if k8s => upsert(&mut self.k8s_nodes, o()),
                    "Node" => upsert(&mut self.nodes, o()),
                    "IPPool" => upsert(&mut self.pools, o()),
                    "BlockAffinity" => upsert(&mut self.affinities, o()),
                    "WorkloadEndpoint" => upsert(&mut self.endpoints, o()),
                    _ => return false,
                };
                if let Err(e) = res {
                    tracing::warn!(kind = %kind.kind, error = %e, "ignoring an object that does not parse");
                    return false;
                }
                true
            }
            SyncEvent::Delete {
                kind,
                namespace,
                name,
            } => {
                let k = key(namespace.as_deref(), name);
                let k8s = kind.group == "networking.k8s.io" || kind.group.is_empty();
                match kind.kind.as_str() {
                    "NetworkPolicy" if k8s => self.k8s_policies.remove(&k).is_some(),
                    "NetworkPolicy" => self.policies.remove(&k).is_some(),
                    "GlobalNetworkPolicy" => self.global_policies.remove(&k).is_some(),
                    "Namespace" => self.namespaces.remove(&k).is_some(),
                    "Pod" => self.pods.remove(&k).is_some(),
                    "BGPConfiguration" => self.configs.remove(&k).is_some(),
                    "BGPPeer" => self.peers.remove(&k).is_some(),
                    "Node" if k8s => self.k8s_nodes.remove(&k).is_some(),
                    "Node" => self.nodes.remove(&k).is_some(),
                    "IPPool" => self.pools.remove(&k).is_some(),
                    "BlockAffinity" => self.affinities.remove(&k).is_some(),
                    "WorkloadEndpoint" => self.endpoints.remove(&k).is_some(),
                    _ => false,
                }
            }
        }
    }

    /// Applies best-path changes from the speaker (our own routes are skipped).
    pub fn apply_best_paths(&mut self, changes: &[BestPathChange]) -> bool {
        let mut changed = false;
        for c in changes {
            match &c.best {
                Some(best) if best.peer.is_some() => {
                    let hops = best.next_hops.clone();
                    changed |= self.remote.insert(c.prefix, hops.clone()) != Some(hops);
                }
                _ => changed |= self.remote.remove(&c.prefix).is_some(),
            }
        }
        changed
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// The labels node `name`'s Serval Node should carry when its Kubernetes Node is known
    /// (Kubernetes datastore): the Kubernetes Node's labels, with `extra` (SERVAL_NODE_LABELS)
    /// on top; `None` when they already match or there is no Kubernetes Node.
    pub fn node_labels_to_write(
        &self,
        name: &str,
        extra: &BTreeMap<String, String>,
    ) -> Option<BTreeMap<String, String>> {
        let k8s = self.k8s_nodes.get(name)?;
        let mut want = k8s.metadata.labels.clone().unwrap_or_default();
        want.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        let have = self
            .nodes
            .get(name)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        (want != have && self.nodes.contains_key(name)).then_some(want)
    }

    /// The BGP resources, for the peer calculation.
    pub fn bgp_resources(&self) -> BgpResources {
        BgpResources {
            configs: self.configs.values().cloned().collect(),
            peers: self.peers.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            secrets: self.secrets.clone(),
        }
    }

    /// The Secrets BGP passwords name (peers and the mesh), to be read.
    pub fn secret_names(&self) -> BTreeSet<String> {
        let mesh = self
            .configs
            .get("default")
            .and_then(|c| c.spec.node_mesh_password.as_ref());
        let peers = self.peers.values().filter_map(|p| p.spec.password.as_ref());
        mesh.into_iter()
            .chain(peers)
            .map(|p| p.secret_key_ref.name.clone())
            .collect()
    }

    /// The Secrets read so far.
    pub fn secrets_held(&self) -> Vec<String> {
        self.secrets.keys().cloned().collect()
    }

    /// Records what a Secret holds now (`None`: gone or unreadable); true if it changed.
    pub fn set_secret(&mut self, name: &str, data: Option<BTreeMap<String, String>>) -> bool {
        match data {
            Some(d) => self.secrets.insert(name.to_string(), d.clone()) != Some(d),
            None => self.secrets.remove(name).is_some(),
        }
    }

    fn pool_routing(&self) -> Vec<PoolRouting> {
        self.pools
            .values()
            .filter_map(|p| {
                Some(PoolRouting {
                    cidr: p.spec.cidr.parse().ok()?,
                    ipip: p.spec.ipip_mode,
                    vxlan: p.spec.vxlan_mode,
                })
            })
            .collect()
    }

    /// Whether an IPv4 pool asks for IPIP / VXLAN at all.
    pub fn encapsulation_wanted(&self) -> (bool, bool) {
        let v4: Vec<&IPPool> = self
            .pools
            .values()
            .filter(|p| {
                p.spec
                    .cidr
                    .parse::<IpNet>()
                    .is_ok_and(|c| c.addr().is_ipv4())
            })
            .collect();
        (
            v4.iter().any(|p| p.spec.ipip_mode != EncapMode::Never),
            v4.iter().any(|p| p.spec.vxlan_mode != EncapMode::Never),
        )
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
            if let Some(pod) = self.pods.get(&format!("{}/{}", e.namespace, e.name)) {
                cp::apply_pod(&mut e, pod);
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
        let parse = |s: &Option<String>| s.as_deref().and_then(serval_policy::model::parse_net);
        inputs.hosts = self
            .nodes
            .values()
            .filter_map(|n| n.spec.bgp.as_ref())
            .flat_map(|b| [parse(&b.ipv4_address), parse(&b.ipv6_address)])
            .flatten()
            .map(|n| n.addr())
            .collect();
        inputs.hosts.sort();
        inputs.hosts.dedup();
        let mut add =
            |key: String,
             r: Result<serval_policy::compile::PolicyDef, String>,
             closed: &dyn Fn() -> serval_policy::compile::PolicyDef| match r {
                Ok(p) => inputs.policies.push(p),
                Err(e) => {
                    inputs.policies.push(closed());
                    failed.insert(key, e);
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
        (inputs, failed)
    }

    /// The pools as natOutgoing needs them (IPv4).
    pub fn nat_spec(&self) -> serval_policy::nat::NatSpec {
        let v4: Vec<(IpNet, bool)> = self
            .pools
            .values()
            .filter_map(|p| Some((p.spec.cidr.parse::<IpNet>().ok()?, p.spec.nat_outgoing)))
            .filter(|(c, _)| c.addr().is_ipv4())
            .collect();
        serval_policy::nat::NatSpec {
            masquerade: v4.iter().filter(|(_, nat)| *nat).map(|(c, _)| *c).collect(),
            all: v4.iter().map(|(c, _)| *c).collect(),
        }
    }

    /// Blocks confirmed for `node`.
    pub fn node_blocks(&self, node: &str) -> Vec<IpNet> {
        self.affinities
            .values()
            .filter(|a| a.spec.inner.node == node && a.spec.inner.state == AffinityState::Confirmed)
            .map(|a| a.spec.inner.cidr)
            .collect()
    }

    /// Other nodes' confirmed blocks with the owner's address of the block's family.
    fn block_owners(&self, me: &str) -> BTreeMap<IpNet, IpAddr> {
        let parse = |s: &Option<String>| s.as_deref().and_then(serval_policy::model::parse_net);
        self.affinities
            .values()
            .map(|a| &a.spec.inner)
            .filter(|a| a.node != me && a.state == AffinityState::Confirmed)
            .filter_map(|a| {
                let bgp = self.nodes.get(&a.node)?.spec.bgp.as_ref()?;
                let owner = if a.cidr.addr().is_ipv4() {
                    parse(&bgp.ipv4_address)
                } else {
                    parse(&bgp.ipv6_address)
                }?;
                Some((a.cidr, owner.addr()))
            })
            .collect()
    }

    /// What `me` should hold.
    pub fn desired(&self, me: &str, host_mtu: u32) -> Result<Desired, PeerCalcError> {
        let peers = compute_peers(me, &self.bgp_resources())?;
        let node = self
            .node(me)
            .ok_or_else(|| PeerCalcError::NoNode(me.to_string()))?;
        let bgp = node.spec.bgp.clone().unwrap_or_default();
        let parse = |s: &Option<String>| s.as_deref().and_then(serval_policy::model::parse_net);
        let local_v4 = parse(&bgp.ipv4_address).filter(|n| n.addr().is_ipv4());
        let local_v6 = parse(&bgp.ipv6_address).filter(|n| n.addr().is_ipv6());
        let local_blocks = self.node_blocks(me);
        let no_export: Vec<IpNet> = self
            .pools
            .values()
            .filter(|p| p.spec.disable_bgp_export)
            .filter_map(|p| p.spec.cidr.parse().ok())
            .collect();
        let mut exports: BTreeSet<IpNet> = local_blocks
            .iter()
            .filter(|b| !no_export.iter().any(|p: &IpNet| p.contains(*b)))
            .copied()
            .collect();

        // Remote VXLAN endpoints from the other nodes' resources.
        let mut vteps = Vec::new();
        let mut vxlan_tunnels = BTreeMap::new();
        for (name, n) in &self.nodes {
            if name == me {
                continue;
            }
            let node_ip = n
                .spec
                .bgp
                .as_ref()
                .and_then(|b| parse(&b.ipv4_address))
                .map(|a| a.addr());
            let tunnel = n
                .spec
                .ipv4_vxlan_tunnel_addr
                .as_deref()
                .and_then(|a| a.parse::<IpAddr>().ok());
            let mac = n.spec.vxlan_tunnel_mac_addr.as_deref().and_then(parse_mac);
            if let (Some(node_ip), Some(tunnel_addr), Some(mac)) = (node_ip, tunnel, mac) {
                vteps.push(RemoteVtep {
                    node_ip,
                    tunnel_addr,
                    mac,
                });
                vxlan_tunnels.insert(node_ip, tunnel_addr);
            }
        }
        vteps.sort();

        let mut local_pods = BTreeMap::new();
        for wep in self.endpoints.values().filter(|w| w.spec.node == me) {
            for net in &wep.spec.ip_networks {
                if let Some(n) = serval_policy::model::parse_net(net) {
                    local_pods.insert(n, wep.spec.interface_name.clone());
                }
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
        let pools = self.pool_routing();
        let block_owners = self.block_owners(me);
        let inputs = RouteInputs {
            pools: pools.clone(),
            local_v4,
            local_v6,
            vxlan_tunnels,
            local_pods,
            local_blocks,
            remote: self.remote.clone(),
            block_owners,
        };
        let routes = kernel_table(&desired_routes(&inputs));
        let (want_ipip, want_vxlan) = self.encapsulation_wanted();
        let ip_of = |s: &Option<String>| s.as_deref().and_then(|a| a.parse::<Ipv4Addr>().ok());
        let ipip = want_ipip.then(|| IpipDevice {
            name: IPIP_DEVICE.into(),
            mtu: host_mtu.saturating_sub(crate::calc::routes::IPIP_OVERHEAD),
            address: ip_of(&bgp.ipv4_ipip_tunnel_addr),
        });
        let vxlan = match (want_vxlan, local_v4) {
            (true, Some(v4)) => match v4.addr() {
                IpAddr::V4(local) => Some(VxlanDevice {
                    name: VXLAN_DEVICE.into(),
                    vni: VXLAN_VNI,
                    port: VXLAN_PORT,
                    local,
                    mac: node
                        .spec
                        .vxlan_tunnel_mac_addr
                        .as_deref()
                        .and_then(parse_mac)
                        .unwrap_or_else(|| vxlan_mac(me)),
                    mtu: host_mtu.saturating_sub(crate::calc::routes::VXLAN_OVERHEAD),
                    address: ip_of(&node.spec.ipv4_vxlan_tunnel_addr),
                }),
                IpAddr::V6(_) => None,
            },
            _ => None,
        };
        let (policy, policy_failures) = self.policy_inputs(me);
        Ok(Desired {
            policy,
            policy_failures,
            nat: self.nat_spec(),
            peers,
            exports,
            communities: crate::calc::bgp_export::CommunityRules::from_config(
                self.configs.get("default").map(|c| &c.spec),
            ),
            routes,
            ipip,
            vxlan,
            vteps,
            pod_mtu: pod_mtu(host_mtu, &pools),
        })
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
    /// Kernel routes.
    pub routes: KernelTable,
    /// The IPIP device, when a pool uses IPIP.
    pub ipip: Option<IpipDevice>,
    /// The VXLAN device, when a pool uses VXLAN.
    pub vxlan: Option<VxlanDevice>,
    /// Remote VXLAN endpoints.
    pub vteps: Vec<RemoteVtep>,
    /// The MTU pods get.
    pub pod_mtu: u32,
    /// natOutgoing.
    pub nat: serval_policy::nat::NatSpec,
    /// Network policy inputs.
    pub policy: PolicyInputs,
    /// Policies that did not translate and are enforced as deny-all stand-ins (key → why).
    pub policy_failures: BTreeMap<String, String>,
}

/// A Secret's data as text (values that are not UTF-8 are skipped: a password is text).
pub fn secret_strings(secret: &k8s_openapi::api::core::v1::Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        out.entry(k.clone()).or_insert_with(|| v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::route_table::{Hop, RouteKind};
    use serde_json::json;
    use serval_bgp::status::BestRoute;

    fn upsert_json(s: &mut ClusterState, kind: KindInfo, object: Value) {
        assert!(s.apply(&SyncEvent::Upsert { kind, object }));
    }

    fn cluster(vxlan: &str) -> ClusterState {
        let mut s = ClusterState::default();
        upsert_json(
            &mut s,
            KindInfo::of::<IPPool>(),
            json!({"apiVersion":"serval.dev/v1","kind":"IPPool","metadata":{"name":"p"},
                   "spec":{"cidr":"10.244.0.0/16","vxlanMode":vxlan}}),
        );
        for (name, ip, tunnel) in [
            ("a", "192.168.1.5/24", "10.244.1.0"),
            ("b", "192.168.1.6/24", "10.244.2.0"),
            ("c", "192.168.2.7/24", "10.244.3.0"),
        ] {
            upsert_json(
                &mut s,
                KindInfo::of::<Node>(),
                json!({"apiVersion":"serval.dev/v1","kind":"Node","metadata":{"name":name},
                       "spec":{"bgp":{"ipv4Address":ip},"ipv4VXLANTunnelAddr":tunnel,
                               "vxlanTunnelMACAddr":crate::dataplane::tunnel::format_mac(&vxlan_mac(name))}}),
            );
        }
        upsert_json(
            &mut s,
            KindInfo::of::<BlockAffinity>(),
            json!({"apiVersion":"serval.dev/v1","kind":"BlockAffinity","metadata":{"name":"a-10-244-1-0-26"},
                   "spec":{"state":"confirmed","node":"a","cidr":"10.244.1.0/26"}}),
        );
        upsert_json(
            &mut s,
            KindInfo::of::<BlockAffinity>(),
            json!({"apiVersion":"serval.dev/v1","kind":"BlockAffinity","metadata":{"name":"a-10-244-9-0-26"},
                   "spec":{"state":"pending","node":"a","cidr":"10.244.9.0/26"}}),
        );
        upsert_json(
            &mut s,
            KindInfo::of::<WorkloadEndpoint>(),
            json!({"apiVersion":"serval.dev/v1","kind":"WorkloadEndpoint",
                   "metadata":{"name":"a-k8s-web-eth0","namespace":"prod"},
                   "spec":{"node":"a","pod":"web","interfaceName":"sv0000000000a","ipNetworks":["10.244.1.5/32"]}}),
        );
        s
    }

    fn best(prefix: &str, via: &str) -> BestPathChange {
        BestPathChange {
            prefix: prefix.parse().unwrap(),
            best: Some(BestRoute {
                peer: Some(via.parse().unwrap()),
                next_hops: vec![via.parse().unwrap()],
                attributes: Default::default(),
            }),
        }
    }

    #[test]
    fn cross_subnet_vxlan_node_gets_native_and_tunnel_routes() {
        let mut s = cluster("CrossSubnet");
        assert!(s.apply_best_paths(&[
            best("10.244.2.0/26", "192.168.1.6"),
            best("10.244.3.0/26", "192.168.2.7"),
        ]));
        let d = s.desired("a", 1500).unwrap();
        assert_eq!(d.peers.len(), 2, "mesh to b and c");
        assert_eq!(
            d.exports,
            BTreeSet::from(["10.244.1.0/26".parse().unwrap()]),
            "pending blocks are not exported"
        );
        let via = |gw: &str, dev: Option<&str>| {
            RouteKind::Via(vec![Hop {
                gateway: gw.parse().unwrap(),
                dev: dev.map(String::from),
                onlink: dev.is_some(),
            }])
        };
        assert_eq!(
            d.routes[&"10.244.2.0/26".parse().unwrap()],
            via("192.168.1.6", None),
            "same subnet: native"
        );
        assert_eq!(
            d.routes[&"10.244.3.0/26".parse().unwrap()],
            via("10.244.3.0", Some("vxlan.serval")),
            "other subnet: VXLAN to c's VTEP"
        );
        assert_eq!(
            d.routes[&"10.244.1.0/26".parse().unwrap()],
            RouteKind::Blackhole
        );
        assert_eq!(
            d.routes[&"10.244.1.5/32".parse().unwrap()],
            RouteKind::Link("sv0000000000a".into())
        );
        let vx = d.vxlan.expect("VXLAN device");
        assert_eq!(vx.local, "192.168.1.5".parse::<Ipv4Addr>().unwrap());
        assert_eq!(vx.mtu, 1450);
        assert_eq!(vx.address, Some("10.244.1.0".parse().unwrap()));
        assert_eq!(d.vteps.len(), 2);
        assert!(d.ipip.is_none());
        assert_eq!(d.pod_mtu, 1450);

        // A withdrawn best path removes the route; a deleted endpoint removes the pod route.
        s.apply_best_paths(&[BestPathChange {
            prefix: "10.244.3.0/26".parse().unwrap(),
            best: None,
        }]);
        assert!(s.apply(&SyncEvent::Delete {
            kind: KindInfo::of::<WorkloadEndpoint>(),
            namespace: Some("prod".into()),
            name: "a-k8s-web-eth0".into(),
        }));
        let d = s.desired("a", 1500).unwrap();
        assert!(!d.routes.contains_key(&"10.244.3.0/26".parse().unwrap()));
        assert!(!d.routes.contains_key(&"10.244.1.5/32".parse().unwrap()));
    }

    #[test]
    fn borrowed_addresses_are_announced_as_host_routes() {
        let mut s = cluster("Never");
        upsert_json(
            &mut s,
            KindInfo::of::<WorkloadEndpoint>(),
            json!({"apiVersion":"serval.dev/v1","kind":"WorkloadEndpoint",
                   "metadata":{"name":"a-k8s-borrower-eth0","namespace":"prod"},
                   "spec":{"node":"a","pod":"borrower","interfaceName":"sv0000000000b","ipNetworks":["10.244.2.9/32"]}}),
        );
        let d = s.desired("a", 1500).unwrap();
        assert_eq!(
            d.exports,
            BTreeSet::from([
                "10.244.1.0/26".parse().unwrap(),
                "10.244.2.9/32".parse().unwrap()
            ]),
            "the pod in a's own block is covered by the block; the borrowed one is not"
        );
    }

    #[test]
    fn kubernetes_node_labels_are_the_nodes_labels() {
        let mut s = cluster("Never");
        let extra: BTreeMap<String, String> =
            [("serval.dev/role".to_string(), "edge".to_string())].into();
        // No Kubernetes Node (etcd mode): nothing to write.
        assert_eq!(s.node_labels_to_write("a", &extra), None);
        assert!(s.apply(&SyncEvent::Upsert {
            kind: KindInfo::of::<K8sNode>(),
            object: json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"a","labels":{"rack":"r1"}}}),
        }));
        // The core Node did not replace the Serval Node of the same name.
        assert!(s.node("a").is_some_and(|n| n.spec.bgp.is_some()));
        let want = s
            .node_labels_to_write("a", &extra)
            .expect("labels to write");
        assert_eq!(want["rack"], "r1");
        assert_eq!(want["serval.dev/role"], "edge");
        // Once the Serval Node carries them, nothing more to write.
        let mut node = s.node("a").unwrap().clone();
        node.metadata.labels = Some(want);
        upsert_json(
            &mut s,
            KindInfo::of::<Node>(),
            serde_json::to_value(&node).unwrap(),
        );
        assert_eq!(s.node_labels_to_write("a", &extra), None);
        // Deleting the Kubernetes Node touches only it.
        assert!(s.apply(&SyncEvent::Delete {
            kind: KindInfo::of::<K8sNode>(),
            namespace: None,
            name: "a".into(),
        }));
        assert!(s.node("a").is_some());
        assert_eq!(s.node_labels_to_write("a", &extra), None);
    }

    #[test]
    fn objects_from_the_watch_that_cannot_be_enforced_fail_closed_and_are_listed() {
        let mut s = cluster("Never");
        // A WorkloadEndpoint written straight into the datastore, with an interface name
        // that would break iptables-restore for the whole node.
        upsert_json(
            &mut s,
            KindInfo::of::<WorkloadEndpoint>(),
            json!({"apiVersion":"serval.dev/v1","kind":"WorkloadEndpoint",
                   "metadata":{"name":"evil","namespace":"prod"},
                   "spec":{"node":"a","pod":"evil","interfaceName":"sv\"\nCOMMIT","ipNetworks":["10.244.1.9/32"]}}),
        );
        // A policy whose rule selector does not parse.
        upsert_json(
            &mut s,
            KindInfo::of::<NetworkPolicy>(),
            json!({"apiVersion":"serval.dev/v1","kind":"NetworkPolicy",
                   "metadata":{"name":"broken","namespace":"prod"},
                   "spec":{"selector":"app == 'web'","ingress":[{"action":"Allow","source":{"selector":"app =="}}]}}),
        );
        let (inputs, failed) = s.policy_inputs("a");
        assert!(inputs.local.iter().all(|e| e.name != "evil"));
        let keys: Vec<&String> = failed.keys().collect();
        assert_eq!(
            keys,
            ["NetworkPolicy prod/broken", "WorkloadEndpoint prod/evil"],
            "{failed:?}"
        );
        // The broken policy is enforced as a deny-all stand-in over what it selects.
        let p = inputs.policies.iter().find(|p| p.name == "broken").unwrap();
        assert_eq!(p.ingress.len(), 1);
        assert_eq!(p.ingress[0].action, serval_policy::model::Action::Deny);
        assert!(p.egress.is_empty(), "only the direction it governs");
    }

    #[test]
    fn a_kubernetes_pod_label_change_reaches_policy_inputs() {
        let mut s = cluster("Never");
        assert!(s.apply(&SyncEvent::Upsert {
            kind: KindInfo::of::<K8sPod>(),
            object: json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"prod","labels":{"role":"frontend"}}}),
        }));
        let (inputs, _) = s.policy_inputs("a");
        let web = inputs.local.iter().find(|e| e.name == "web").unwrap();
        assert_eq!(web.labels["role"], "frontend");
        // A status update (the usual churn) changes nothing the agent holds.
        assert!(!s.apply(&SyncEvent::Upsert {
            kind: KindInfo::of::<K8sPod>(),
            object: json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"prod","labels":{"role":"frontend"},"resourceVersion":"9"},"status":{"phase":"Running","podIP":"10.244.0.5"}}),
        }));
        assert!(s.apply(&SyncEvent::Delete {
            kind: KindInfo::of::<K8sPod>(),
            namespace: Some("prod".into()),
            name: "web".into(),
        }));
        assert!(!s.policy_inputs("a").0.local[0].labels.contains_key("role"));
    }

    #[test]
    fn no_encapsulation_means_no_tunnel_devices_and_bad_objects_are_ignored() {
        let mut s = cluster("Never");
        let d = s.desired("b", 9000).unwrap();
        assert!(d.vxlan.is_none() && d.ipip.is_none());
        assert_eq!(d.pod_mtu, 9000);
        // A malformed object is skipped, and the state stays as it was.
        assert!(!s.apply(&SyncEvent::Upsert {
            kind: KindInfo::of::<IPPool>(),
            object: json!({"apiVersion":"serval.dev/v1","kind":"IPPool","metadata":{"name":"x"},"spec":{"cidr":7}}),
        }));
        assert_eq!(s.desired("b", 9000).unwrap(), d);
        // A node without a Node resource cannot compute anything.
        assert!(matches!(
            s.desired("zz", 1500),
            Err(PeerCalcError::NoNode(_))
        ));
    }

    #[test]
    fn bgp_passwords_are_read_from_the_named_secrets() {
        let mut s = cluster("Never");
        upsert_json(
            &mut s,
            KindInfo::of::<BGPPeer>(),
            json!({"apiVersion":"serval.dev/v1","kind":"BGPPeer","metadata":{"name":"tor"},
                   "spec":{"peerIP":"192.168.1.1","asNumber":65100,
                           "password":{"secretKeyRef":{"name":"bgp-secrets","key":"tor"}}}}),
        );
        assert_eq!(
            s.secret_names().into_iter().collect::<Vec<_>>(),
            ["bgp-secrets"]
        );
        let tor = |s: &ClusterState| {
            s.desired("a", 1500)
                .unwrap()
                .peers
                .into_iter()
                .find(|p| p.config.address.to_string() == "192.168.1.1")
                .unwrap()
        };
        assert_eq!(tor(&s).config.password, None, "not read yet");
        let data: BTreeMap<String, String> = [("tor".to_string(), "pw".to_string())].into();
        assert!(s.set_secret("bgp-secrets", Some(data.clone())));
        assert!(!s.set_secret("bgp-secrets", Some(data)), "unchanged");
        assert_eq!(
            tor(&s).config.password,
            Some(serval_bgp::config::Password("pw".into()))
        );
        assert!(s.set_secret("bgp-secrets", None));
        assert_eq!(tor(&s).config.password, None);
    }
}
