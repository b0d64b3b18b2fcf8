//! Sets of endpoints: which endpoints a selector means (its scope, namespaces included) and
//! the compiler's per-family working state that turns scopes, CIDR lists and named ports
//! into ipsets, remembering how each set was chosen.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{Endpoint, NAMESPACE_LABEL, NetworkSetDef, PolicyInputs, proto_name, set_name};
use crate::ipt::{IpSet, SetKind};
use crate::selector::{Labels, Selector};

/// Which endpoints a selector means, with its namespace scope.
#[derive(Debug, Clone)]
pub(super) struct Scope {
    pub(super) pods: Selector,
    /// `Some(ns)`: only that namespace; `None`: any namespace that `ns_selector` allows.
    pub(super) namespace: Option<String>,
    pub(super) ns_selector: Option<Selector>,
    /// `namespaceSelector: global()`: only non-namespaced resources (global network sets).
    pub(super) global_only: bool,
}

impl Scope {
    pub(super) fn key(&self) -> String {
        format!(
            "pods={}|ns={}|nssel={}{}",
            self.pods,
            self.namespace.as_deref().unwrap_or("*"),
            self.ns_selector
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            if self.global_only { "|global" } else { "" }
        )
    }

    /// Whether a network set's networks belong to this scope: a namespaced set as a pod of
    /// its namespace would; a global set only for a scope over every namespace (a global
    /// policy's rule without namespaceSelector) or `global()`.
    pub(super) fn contains_set(
        &self,
        set: &NetworkSetDef,
        namespaces: &BTreeMap<String, Labels>,
    ) -> bool {
        let Some(ns) = &set.namespace else {
            let everywhere = self.namespace.is_none() && self.ns_selector.is_none();
            return (self.global_only || everywhere) && self.pods.matches(&set.labels);
        };
        if self.global_only || self.namespace.as_ref().is_some_and(|n| n != ns) {
            return false;
        }
        if let Some(sel) = &self.ns_selector {
            let empty = Labels::new();
            if !sel.matches(namespaces.get(ns).unwrap_or(&empty)) {
                return false;
            }
        }
        let get = |k: &str| {
            if k == NAMESPACE_LABEL {
                Some(ns.as_str())
            } else {
                set.labels.get(k).map(String::as_str)
            }
        };
        self.pods.matches_with(&get)
    }

    /// Whether a host endpoint is in this scope: only a global policy's selector without a
    /// namespace selector reaches one (host endpoints are in no namespace).
    pub(super) fn contains_host(&self, ep: &Endpoint) -> bool {
        !self.global_only
            && self.namespace.is_none()
            && self.ns_selector.is_none()
            && self.pods.matches(&ep.labels)
    }

    pub(super) fn contains(&self, ep: &Endpoint, namespaces: &BTreeMap<String, Labels>) -> bool {
        if self.global_only {
            return false;
        }
        if let Some(ns) = &self.namespace
            && *ns != ep.namespace
        {
            return false;
        }
        if let Some(sel) = &self.ns_selector {
            let empty = Labels::new();
            let ns_labels = namespaces.get(&ep.namespace).unwrap_or(&empty);
            if !sel.matches(ns_labels) {
                return false;
            }
        }
        // The namespace label is the pod's namespace, whatever its own labels say.
        let get = |k: &str| {
            if k == NAMESPACE_LABEL {
                Some(ep.namespace.as_str())
            } else {
                ep.labels.get(k).map(String::as_str)
            }
        };
        self.pods.matches_with(&get)
    }
}

/// The compiler's working state for one family.
pub(super) struct Family<'a> {
    pub(super) inputs: &'a PolicyInputs,
    pub(super) v6: bool,
    pub(super) sets: BTreeMap<String, IpSet>,
    /// How each selector and named-port set's members were chosen, so the incremental
    /// compiler can move one endpoint in or out of them.
    pub(super) sources: BTreeMap<String, SetSource>,
}

/// What decides a set's members.
#[derive(Debug, Clone)]
pub(super) enum SetSource {
    /// The addresses of the endpoints in a scope.
    Selector(Scope),
    /// `address,protocol:port` of the endpoints in a scope that define a named port.
    NamedPort(Scope, String, u8),
}

impl SetSource {
    /// The members one endpoint contributes (none when it is outside the scope).
    pub(super) fn members_of(
        &self,
        ep: &Endpoint,
        namespaces: &BTreeMap<String, Labels>,
        v6: bool,
    ) -> Vec<String> {
        let addrs = ep.addrs.iter().filter(|a| a.is_ipv6() == v6);
        match self {
            SetSource::Selector(scope) if scope.contains(ep, namespaces) => {
                addrs.map(ToString::to_string).collect()
            }
            SetSource::NamedPort(scope, port, protocol) if scope.contains(ep, namespaces) => {
                let mut out = Vec::new();
                for np in ep
                    .ports
                    .iter()
                    .filter(|np| np.name == *port && np.protocol == *protocol)
                {
                    for a in ep.addrs.iter().filter(|a| a.is_ipv6() == v6) {
                        out.push(format!("{a},{}:{}", proto_name(*protocol), np.port));
                    }
                }
                out
            }
            _ => Vec::new(),
        }
    }
}

impl Family<'_> {
    pub(super) fn new(inputs: &PolicyInputs, v6: bool) -> Family<'_> {
        Family {
            inputs,
            v6,
            sets: BTreeMap::new(),
            sources: BTreeMap::new(),
        }
    }

    fn all_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.inputs.local.iter().chain(&self.inputs.remote)
    }

    pub(super) fn family_addrs<'e>(
        &self,
        ep: &'e Endpoint,
    ) -> impl Iterator<Item = &'e IpAddr> + 'e {
        let v6 = self.v6;
        ep.addrs.iter().filter(move |a| a.is_ipv6() == v6)
    }

    pub(super) fn selector_set(&mut self, scope: &Scope) -> String {
        let key = scope.key();
        let name = set_name('s', self.v6, &key);
        if !self.sets.contains_key(&name) {
            let v6 = self.v6;
            let nets = self
                .inputs
                .network_sets
                .iter()
                .filter(|s| scope.contains_set(s, &self.inputs.namespaces))
                .flat_map(|s| s.nets.iter().filter(move |n| n.addr().is_ipv6() == v6))
                .map(ToString::to_string);
            let members: BTreeSet<String> = self
                .all_endpoints()
                .filter(|ep| scope.contains(ep, &self.inputs.namespaces))
                .flat_map(|ep| self.family_addrs(ep).map(ToString::to_string))
                .chain(nets)
                .collect();
            self.sources
                .insert(name.clone(), SetSource::Selector(scope.clone()));
            self.sets.insert(
                name.clone(),
                IpSet {
                    kind: SetKind::Net,
                    members,
                },
            );
        }
        name
    }

    pub(super) fn net_set(&mut self, nets: &[IpNet]) -> String {
        let key: Vec<String> = nets.iter().map(ToString::to_string).collect();
        let name = set_name('c', self.v6, &key.join(","));
        self.sets.entry(name.clone()).or_insert_with(|| IpSet {
            kind: SetKind::Net,
            members: key.into_iter().collect(),
        });
        name
    }

    pub(super) fn named_port_set(&mut self, scope: &Scope, port: &str, protocol: u8) -> String {
        let key = format!("{}|port={port}|proto={protocol}", scope.key());
        let name = set_name('n', self.v6, &key);
        if !self.sets.contains_key(&name) {
            let source = SetSource::NamedPort(scope.clone(), port.to_string(), protocol);
            let members: BTreeSet<String> = self
                .all_endpoints()
                .flat_map(|ep| source.members_of(ep, &self.inputs.namespaces, self.v6))
                .collect();
            self.sources.insert(name.clone(), source);
            self.sets.insert(
                name.clone(),
                IpSet {
                    kind: SetKind::IpPort,
                    members,
                },
            );
        }
        name
    }
}
