//! The agent's typed cache of the cluster: the syncer's objects parsed once into their
//! resource types, plus the BGP best paths and the Secrets BGP passwords name. Every watched
//! kind is listed once, in the `watched!` table below: that list is both what the syncer watches
//! and how an event reaches its map, so adding a kind touches one line.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use kube::ResourceExt;
use serde_json::Value;
use serval_bgp::status::BestPathChange;
use serval_ipam::AffinityState;

use crate::calc::peers::BgpResources;
use crate::datastore::{KindInfo, SyncEvent};
use crate::resources::{
    BGPConfiguration, BGPFilter, BGPPeer, BlockAffinity, GlobalNetworkPolicy, GlobalNetworkSet,
    HostEndpoint, IPPool, NetworkPolicy, NetworkSet, Node, ServalResource, WorkloadEndpoint,
};

type K8sNode = k8s_openapi::api::core::v1::Node;
type K8sServiceAccount = k8s_openapi::api::core::v1::ServiceAccount;
type K8sService = k8s_openapi::api::core::v1::Service;
type K8sEndpointSlice = k8s_openapi::api::discovery::v1::EndpointSlice;

/// Everything the agent knows, keyed by `namespace/name`.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub(super) configs: BTreeMap<String, BGPConfiguration>,
    pub(super) peers: BTreeMap<String, BGPPeer>,
    /// BGPFilters by name: the rules the peers that name them apply.
    pub(super) bgp_filters: BTreeMap<String, BGPFilter>,
    pub(super) nodes: BTreeMap<String, Node>,
    pub(super) pools: BTreeMap<String, IPPool>,
    pub(super) affinities: BTreeMap<String, BlockAffinity>,
    pub(super) endpoints: BTreeMap<String, WorkloadEndpoint>,
    /// Kubernetes Nodes (Kubernetes datastore): the source of node labels.
    pub(super) k8s_nodes: BTreeMap<String, K8sNode>,
    pub(super) policies: BTreeMap<String, NetworkPolicy>,
    pub(super) global_policies: BTreeMap<String, GlobalNetworkPolicy>,
    pub(super) k8s_policies: BTreeMap<String, K8sNetworkPolicy>,
    pub(super) namespaces: BTreeMap<String, K8sNamespace>,
    /// Kubernetes Pods (Kubernetes datastore): their labels and named ports apply to their
    /// endpoints, so a `kubectl label pod` reaches policy.
    pub(super) pods: BTreeMap<String, K8sPod>,
    /// ServiceAccounts: their labels are their pods' for serviceAccountSelector.
    pub(super) service_accounts: BTreeMap<String, K8sServiceAccount>,
    /// NetworkSets and GlobalNetworkSets: labelled networks rule selectors match.
    pub(super) network_sets: BTreeMap<String, NetworkSet>,
    /// HostEndpoints: node interfaces under policy.
    pub(super) host_endpoints: BTreeMap<String, HostEndpoint>,
    pub(super) global_network_sets: BTreeMap<String, GlobalNetworkSet>,
    /// Services and EndpointSlices (trimmed to what advertisement reads): which service
    /// addresses this node advertises.
    pub(super) services: BTreeMap<String, K8sService>,
    pub(super) endpoint_slices: BTreeMap<String, K8sEndpointSlice>,
    /// BGP best paths learned from peers: prefix → next hops and the priority an import
    /// filter set (`None`: the family's normal route priority).
    pub(super) remote: BTreeMap<IpNet, (Vec<IpAddr>, Option<u32>)>,
    /// Secrets BGP passwords name, as last read: Secret → key → value.
    pub(super) secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// Policies from the watch that do not parse, by report key (`NetworkPolicy ns/name`):
    /// the object as received and why. They fail closed (see `policy_inputs`), never vanish.
    pub(super) unreadable_policies: BTreeMap<String, (Value, String)>,
}

/// The key a policy is reported under (as `policy_inputs` reports failures), or None for
/// kinds that are not policies.
fn policy_report_key(kind: &KindInfo, namespace: Option<&str>, name: &str) -> Option<String> {
    let k = key(namespace, name);
    match (kind.kind.as_str(), kind.group.as_str()) {
        ("NetworkPolicy", "networking.k8s.io") => {
            Some(format!("networking.k8s.io NetworkPolicy {k}"))
        }
        ("NetworkPolicy", _) => Some(format!("NetworkPolicy {k}")),
        ("GlobalNetworkPolicy", _) => Some(format!("GlobalNetworkPolicy {k}")),
        _ => None,
    }
}

fn key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
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
    if name != "default" {
        let fields = crate::resources::validate::default_only_fields(&c.spec);
        if !fields.is_empty() {
            tracing::warn!(config = %name, fields = ?fields, "BGPConfiguration sets fields read from the \"default\" one only; they have no effect here");
        }
    }
}

/// One kind's objects by key: parsing an event's object into its type, and removing one.
trait Store {
    /// Parses and stores `object`; whether anything changed.
    fn upsert(&mut self, kind: &KindInfo, object: &Value) -> Result<bool, serde_json::Error>;
    /// Removes `key`; whether it was there.
    fn remove(&mut self, key: &str) -> bool;
}

impl<R: ServalResource + PartialEq> Store for BTreeMap<String, R> {
    fn upsert(&mut self, kind: &KindInfo, object: &Value) -> Result<bool, serde_json::Error> {
        // Pods, Services and EndpointSlices are kept as agents read them: a status or
        // address update that does not matter here then changes nothing.
        let r: R = if crate::datastore::trim::trims(kind) {
            serde_json::from_value(crate::datastore::trim::trim(kind, object))
        } else {
            serde_json::from_value(object.clone())
        }?;
        let k = key(r.namespace().as_deref(), &r.name_any());
        if self.get(&k) == Some(&r) {
            return Ok(false);
        }
        self.insert(k, r);
        Ok(true)
    }

    fn remove(&mut self, key: &str) -> bool {
        BTreeMap::remove(self, key).is_some()
    }
}

/// The watched kinds, each with the map that holds it: `field: Type` for every datastore,
/// `field: Type => kubernetes` for kinds read only from the Kubernetes API.
macro_rules! watched {
    ($($field:ident: $ty:ty $(=> $k8s:ident)?),* $(,)?) => {
        /// The kinds the agent watches; with the Kubernetes datastore also those read only
        /// from the Kubernetes API (Kubernetes Nodes, whose labels are the nodes' labels).
        pub fn watched_kinds_for(kubernetes: bool) -> Vec<KindInfo> {
            let mut kinds = Vec::new();
            $(
                if kubernetes || !watched!(@k8s $($k8s)?) {
                    kinds.push(KindInfo::of::<$ty>());
                }
            )*
            kinds
        }

        impl ClusterState {
            /// The map that holds `kind`, if it is a kind the agent watches.
            fn store(&mut self, kind: &KindInfo) -> Option<&mut dyn Store> {
                $(
                    let info = KindInfo::of::<$ty>();
                    if info.group == kind.group && info.kind == kind.kind {
                        return Some(&mut self.$field);
                    }
                )*
                None
            }
        }
    };
    (@k8s kubernetes) => { true };
    (@k8s) => { false };
}

watched! {
    configs: BGPConfiguration,
    peers: BGPPeer,
    bgp_filters: BGPFilter,
    nodes: Node,
    pools: IPPool,
    affinities: BlockAffinity,
    endpoints: WorkloadEndpoint,
    policies: NetworkPolicy,
    global_policies: GlobalNetworkPolicy,
    k8s_policies: K8sNetworkPolicy,
    namespaces: K8sNamespace,
    pods: K8sPod,
    service_accounts: K8sServiceAccount,
    network_sets: NetworkSet,
    global_network_sets: GlobalNetworkSet,
    host_endpoints: HostEndpoint,
    services: K8sService,
    endpoint_slices: K8sEndpointSlice,
    k8s_nodes: K8sNode => kubernetes,
}

/// The kinds the agent watches in any datastore.
pub fn watched_kinds() -> Vec<KindInfo> {
    watched_kinds_for(false)
}

impl ClusterState {
    /// Applies one syncer event; returns whether anything changed. An object that does not
    /// parse is reported and ignored (it never takes the agent down).
    pub fn apply(&mut self, event: &SyncEvent) -> bool {
        match event {
            SyncEvent::Status(_) => false,
            SyncEvent::Upsert { kind, object } => {
                let (namespace, name) = crate::datastore::object_name(object);
                let report = policy_report_key(kind, namespace.as_deref(), &name);
                let Some(store) = self.store(kind) else {
                    return false;
                };
                match store.upsert(kind, object) {
                    Ok(changed) => {
                        if changed && kind.kind == "BGPConfiguration" {
                            warn_unsupported_bgp(&self.configs, object);
                        }
                        let was_unreadable =
                            report.is_some_and(|r| self.unreadable_policies.remove(&r).is_some());
                        changed || was_unreadable
                    }
                    Err(e) => match report {
                        // A policy that does not parse replaces what it was: it fails closed
                        // over what it governs instead of being skipped (or enforced as its
                        // previous version).
                        Some(r) => {
                            store.remove(&key(namespace.as_deref(), &name));
                            tracing::error!(policy = %r, error = %e, "policy does not parse; what it governs is denied until it is fixed");
                            self.unreadable_policies
                                .insert(r, (object.clone(), e.to_string()));
                            true
                        }
                        None => {
                            tracing::warn!(kind = %kind.kind, error = %e, "ignoring an object that does not parse");
                            false
                        }
                    },
                }
            }
            SyncEvent::Delete {
                kind,
                namespace,
                name,
            } => {
                let k = key(namespace.as_deref(), name);
                let unreadable = policy_report_key(kind, namespace.as_deref(), name)
                    .is_some_and(|r| self.unreadable_policies.remove(&r).is_some());
                self.store(kind).is_some_and(|s| s.remove(&k)) || unreadable
            }
        }
    }

    /// Applies best-path changes from the speaker (our own routes are skipped).
    pub fn apply_best_paths(&mut self, changes: &[BestPathChange]) -> bool {
        let mut changed = false;
        for c in changes {
            match &c.best {
                Some(best) if best.peer.is_some() => {
                    let learned = (
                        best.next_hops.clone(),
                        best.attributes.priority.map(u32::from),
                    );
                    changed |= self.remote.insert(c.prefix, learned.clone()) != Some(learned);
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

    /// Blocks confirmed for `node`.
    pub fn node_blocks(&self, node: &str) -> Vec<IpNet> {
        self.affinities
            .values()
            .filter(|a| a.spec.inner.node == node && a.spec.inner.state == AffinityState::Confirmed)
            .map(|a| a.spec.inner.cidr)
            .collect()
    }
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
