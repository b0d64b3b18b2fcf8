//! Policy inputs from resources: Kubernetes `networking.k8s.io/v1` NetworkPolicy with its exact
//! semantics translated into Serval's rule model (as Calico does: order 1000, one Allow rule
//! per peer × protocol, podSelector+namespaceSelector in one peer ANDed, separate peers ORed,
//! ipBlock with except, named ports, endPort ranges, policyTypes inferred when omitted),
//! Serval's own NetworkPolicy and GlobalNetworkPolicy, endpoints and namespace labels.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy as K8sNetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString as K8sIntOrString;
use kube::ResourceExt;
use serval_policy::compile::{Endpoint, NamedPort, PolicyDef, protocol_number};
use serval_policy::model::{Action, EntityRule, IntOrString, PolicyType, Rule, validate_rule};
use serval_policy::{Labels, Selector};

use crate::resources::{GlobalNetworkPolicy, NetworkPolicy, WorkloadEndpoint};

/// The order Calico gives Kubernetes NetworkPolicies.
pub const K8S_POLICY_ORDER: f64 = 1000.0;
/// The label Kubernetes puts on every namespace with its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Why a policy cannot be translated (it then fails closed, and this is what is reported).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TranslateError {
    /// A selector that does not parse.
    #[error("{field}: {source}")]
    Selector {
        /// Which selector.
        field: &'static str,
        /// The parser's error.
        #[source]
        source: serval_policy::SelectorError,
    },
    /// A Kubernetes matchExpressions operator that does not exist.
    #[error("matchExpressions operator {0:?}: expected In, NotIn, Exists or DoesNotExist")]
    Operator(String),
    /// A policyTypes entry that is neither Ingress nor Egress.
    #[error("policyTypes: {0:?} is not Ingress or Egress")]
    PolicyType(String),
    /// A rule part the compiler could only guess at.
    #[error("{direction}[{index}].{field}: {message}")]
    Rule {
        /// `ingress` or `egress`.
        direction: &'static str,
        /// The rule's position.
        index: usize,
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A Kubernetes label selector as a Calico selector (empty: all()).
pub fn label_selector(ls: &LabelSelector) -> Result<Selector, TranslateError> {
    let mut sel = Selector::All;
    for (k, v) in ls.match_labels.iter().flatten() {
        sel = Selector::and(sel, Selector::Equal(k.clone(), v.clone()));
    }
    for e in ls.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let term = match e.operator.as_str() {
            "In" => Selector::In(e.key.clone(), values),
            "NotIn" => Selector::NotIn(e.key.clone(), values),
            "Exists" => Selector::Has(e.key.clone()),
            "DoesNotExist" => Selector::Not(Box::new(Selector::Has(e.key.clone()))),
            other => return Err(TranslateError::Operator(other.to_string())),
        };
        sel = Selector::and(sel, term);
    }
    Ok(sel)
}

fn peer_side(peer: &NetworkPolicyPeer) -> Result<EntityRule, TranslateError> {
    let mut side = EntityRule::default();
    if let Some(block) = &peer.ip_block {
        side.nets = vec![block.cidr.clone()];
        side.not_nets = block.except.clone().unwrap_or_default();
        return Ok(side);
    }
    // In one peer the two selectors AND; a namespaceSelector alone means every pod there.
    if let Some(ps) = &peer.pod_selector {
        side.selector = Some(label_selector(ps)?.to_string());
    }
    if let Some(ns) = &peer.namespace_selector {
        side.namespace_selector = Some(label_selector(ns)?.to_string());
        side.selector.get_or_insert_with(|| "all()".into());
    }
    Ok(side)
}

/// (protocol, destination ports) groups of a rule's `ports`; empty = any protocol, any port.
fn port_groups(ports: &[NetworkPolicyPort]) -> Vec<(Option<String>, Vec<IntOrString>)> {
    let mut by_proto: BTreeMap<String, Vec<IntOrString>> = BTreeMap::new();
    let mut any_port: Vec<String> = Vec::new();
    for p in ports {
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        match (&p.port, p.end_port) {
            (None, _) => any_port.push(proto),
            (Some(K8sIntOrString::Int(n)), Some(end)) => by_proto
                .entry(proto)
                .or_default()
                .push(IntOrString::String(format!("{n}:{end}"))),
            (Some(K8sIntOrString::Int(n)), None) => by_proto
                .entry(proto)
                .or_default()
                .push(IntOrString::Int(*n as u32)),
            (Some(K8sIntOrString::String(name)), _) => by_proto
                .entry(proto)
                .or_default()
                .push(IntOrString::String(name.clone())),
        }
    }
    let mut out: Vec<(Option<String>, Vec<IntOrString>)> = Vec::new();
    for proto in any_port {
        by_proto.remove(&proto);
        out.push((Some(proto), Vec::new()));
    }
    out.extend(by_proto.into_iter().map(|(p, ports)| (Some(p), ports)));
    if out.is_empty() {
        out.push((None, Vec::new()));
    }
    out
}

fn k8s_rules(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
    ingress: bool,
) -> Result<Vec<Rule>, TranslateError> {
    let peers: Vec<EntityRule> = match peers {
        Some(list) if !list.is_empty() => list.iter().map(peer_side).collect::<Result<_, _>>()?,
        _ => vec![EntityRule::default()],
    };
    let groups = port_groups(ports.map(Vec::as_slice).unwrap_or_default());
    let mut out = Vec::new();
    for peer in &peers {
        for (proto, dports) in &groups {
            let (source, mut destination) = if ingress {
                (peer.clone(), EntityRule::default())
            } else {
                (EntityRule::default(), peer.clone())
            };
            destination.ports = dports.clone();
            out.push(Rule {
                protocol: proto.clone().map(IntOrString::String),
                source,
                destination,
                ..Rule::any(Action::Allow)
            });
        }
    }
    Ok(out)
}

/// A Kubernetes NetworkPolicy as a Serval policy.
pub fn k8s_policy(np: &K8sNetworkPolicy) -> Result<PolicyDef, TranslateError> {
    let ns = np.namespace().unwrap_or_else(|| "default".into());
    let spec = np.spec.clone().unwrap_or_default();
    let ingress_rules: Vec<Rule> = spec
        .ingress
        .iter()
        .flatten()
        .map(|r| k8s_rules(r.from.as_ref(), r.ports.as_ref(), true))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let egress_rules: Vec<Rule> = spec
        .egress
        .iter()
        .flatten()
        .map(|r| k8s_rules(r.to.as_ref(), r.ports.as_ref(), false))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    // policyTypes omitted: Ingress always, Egress when the policy has an egress section.
    let types = match &spec.policy_types {
        Some(t) if !t.is_empty() => t
            .iter()
            .map(|t| match t.as_str() {
                "Ingress" => Ok(PolicyType::Ingress),
                "Egress" => Ok(PolicyType::Egress),
                other => Err(TranslateError::PolicyType(other.to_string())),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            let mut t = vec![PolicyType::Ingress];
            if spec.egress.is_some() {
                t.push(PolicyType::Egress);
            }
            t
        }
    };
    checked(PolicyDef {
        host: Default::default(),
        name: format!("knp.default.{}", np.name_any()),
        namespace: Some(ns),
        order: Some(K8S_POLICY_ORDER),
        selector: label_selector(&spec.pod_selector.unwrap_or_default())?,
        namespace_selector: None,
        types,
        ingress: ingress_rules,
        egress: egress_rules,
    })
}

/// Refuses a policy with any rule the compiler could only guess at (a selector, net, port or
/// protocol that does not parse), naming the first problem.
fn checked(def: PolicyDef) -> Result<PolicyDef, TranslateError> {
    for (direction, rules) in [("ingress", &def.ingress), ("egress", &def.egress)] {
        for (index, r) in rules.iter().enumerate() {
            if let Some((field, message)) = validate_rule(r).into_iter().next() {
                return Err(TranslateError::Rule {
                    direction,
                    index,
                    field: field.to_string(),
                    message: message.to_string(),
                });
            }
        }
    }
    Ok(def)
}

/// Whether any rule of `def` has a selector (or negated selector) that matches a network
/// set with `labels` in `set_namespace` (None: a GlobalNetworkSet) within the rule's scope:
/// a namespaced policy's rule sees its own namespace's sets unless it has a
/// namespaceSelector (then any set is counted), a global policy's rule sees every set.
pub fn rules_may_select(def: &PolicyDef, set_namespace: Option<&str>, labels: &Labels) -> bool {
    def.ingress
        .iter()
        .chain(&def.egress)
        .flat_map(|r| [&r.source, &r.destination])
        .filter(|side| {
            def.namespace.is_none()
                || side.namespace_selector.is_some()
                || def.namespace.as_deref() == set_namespace
        })
        .flat_map(|side| [&side.selector, &side.not_selector])
        .flatten()
        .any(|text| Selector::parse(text).is_ok_and(|sel| sel.matches(labels)))
}

/// What stands in for a policy that cannot be translated, so it fails closed: it applies
/// where the original would (every endpoint of its namespace, or of the node for a global
/// policy, when even its selector is unreadable) and denies everything in its directions
/// (both when unknown) at its order.
pub fn fail_closed(
    name: String,
    namespace: Option<String>,
    order: Option<f64>,
    selector: Option<&str>,
    namespace_selector: Option<&str>,
    types: &[PolicyType],
) -> PolicyDef {
    let parse = |s: Option<&str>| s.and_then(|t| Selector::parse(t).ok());
    let types = if types.is_empty() {
        vec![PolicyType::Ingress, PolicyType::Egress]
    } else {
        types.to_vec()
    };
    let deny = || vec![Rule::any(Action::Deny)];
    PolicyDef {
        host: Default::default(),
        name,
        namespace,
        order,
        selector: parse(selector).unwrap_or(Selector::All),
        namespace_selector: parse(namespace_selector),
        ingress: if types.contains(&PolicyType::Ingress) {
            deny()
        } else {
            Vec::new()
        },
        egress: if types.contains(&PolicyType::Egress) {
            deny()
        } else {
            Vec::new()
        },
        types,
    }
}

/// [`fail_closed`] for a policy that translated but whose rules the kernel refused: the
/// same scope, order and directions, denying everything.
pub fn fail_closed_def(p: &PolicyDef) -> PolicyDef {
    let mut def = fail_closed(
        p.name.clone(),
        p.namespace.clone(),
        p.order,
        None,
        None,
        &p.types,
    );
    def.selector = p.selector.clone();
    def.namespace_selector = p.namespace_selector.clone();
    def
}

/// [`fail_closed`] for a policy object that does not parse at all (`report_key` says its
/// kind): what can still be read of it decides where it denies. A global policy with no
/// readable selector covers every endpoint of the node; a namespaced one every endpoint of
/// its namespace; a Kubernetes NetworkPolicy's podSelector is not guessed at (its whole
/// namespace); both directions unless readable `types` say otherwise.
pub fn unreadable_fail_closed(report_key: &str, object: &serde_json::Value) -> PolicyDef {
    let global = report_key.starts_with("GlobalNetworkPolicy");
    let k8s = report_key.starts_with("networking.k8s.io");
    let (namespace, name) = crate::datastore::object_name(object);
    let spec = &object["spec"];
    let text = |f: &str| spec[f].as_str();
    let types: Vec<PolicyType> = spec["types"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| match t.as_str() {
            Some("Ingress") => Some(PolicyType::Ingress),
            Some("Egress") => Some(PolicyType::Egress),
            _ => None,
        })
        .collect();
    fail_closed(
        if k8s {
            format!("knp.default.{name}")
        } else {
            name
        },
        if global {
            None
        } else {
            Some(namespace.unwrap_or_else(|| "default".into()))
        },
        if k8s {
            Some(K8S_POLICY_ORDER)
        } else {
            spec["order"].as_f64()
        },
        if k8s { None } else { text("selector") },
        if global {
            text("namespaceSelector")
        } else {
            None
        },
        if k8s { &[] } else { &types },
    )
}

/// [`fail_closed`] for a Kubernetes NetworkPolicy.
pub fn k8s_fail_closed(np: &K8sNetworkPolicy) -> PolicyDef {
    let spec = np.spec.clone().unwrap_or_default();
    // The directions it governs are known without parsing its rules: the declared types,
    // or Kubernetes' inference (Ingress, plus Egress with an egress section). An unknown
    // type name leaves the list empty: both.
    let mut types: Vec<PolicyType> = spec
        .policy_types
        .iter()
        .flatten()
        .filter_map(|t| match t.as_str() {
            "Ingress" => Some(PolicyType::Ingress),
            "Egress" => Some(PolicyType::Egress),
            _ => None,
        })
        .collect();
    if spec.policy_types.as_ref().is_none_or(Vec::is_empty) {
        types.push(PolicyType::Ingress);
        if spec.egress.is_some() {
            types.push(PolicyType::Egress);
        }
    } else if types.len() != spec.policy_types.as_ref().map_or(0, Vec::len) {
        types.clear();
    }
    let selector = spec
        .pod_selector
        .as_ref()
        .and_then(|ls| label_selector(ls).ok())
        .map(|s| s.to_string());
    fail_closed(
        format!("knp.default.{}", np.name_any()),
        Some(np.namespace().unwrap_or_else(|| "default".into())),
        Some(K8S_POLICY_ORDER),
        Some(selector.as_deref().unwrap_or("all()")),
        None,
        &types,
    )
}

/// [`fail_closed`] for a Serval NetworkPolicy.
pub fn serval_fail_closed(p: &NetworkPolicy) -> PolicyDef {
    fail_closed(
        p.name_any(),
        Some(p.namespace().unwrap_or_else(|| "default".into())),
        p.spec.order,
        Some(&p.spec.selector),
        None,
        &types_or_inferred(&p.spec.types, &p.spec.ingress, &p.spec.egress),
    )
}

/// [`fail_closed`] for a Serval GlobalNetworkPolicy.
pub fn global_fail_closed(p: &GlobalNetworkPolicy) -> PolicyDef {
    fail_closed(
        p.name_any(),
        None,
        p.spec.order,
        Some(&p.spec.selector),
        p.spec.namespace_selector.as_deref(),
        &types_or_inferred(&p.spec.types, &p.spec.ingress, &p.spec.egress),
    )
}

fn types_or_inferred(types: &[PolicyType], ingress: &[Rule], egress: &[Rule]) -> Vec<PolicyType> {
    if !types.is_empty() {
        return types.to_vec();
    }
    // Calico: no types → Ingress, plus Egress when there are egress rules.
    let mut t = Vec::new();
    if !ingress.is_empty() || egress.is_empty() {
        t.push(PolicyType::Ingress);
    }
    if !egress.is_empty() {
        t.push(PolicyType::Egress);
    }
    t
}

/// A policy's own selector.
fn selector(field: &'static str, text: &str) -> Result<Selector, TranslateError> {
    Selector::parse(text).map_err(|source| TranslateError::Selector { field, source })
}

/// The label prefix under which an endpoint carries its ServiceAccount's labels (Calico's).
pub const SERVICE_ACCOUNT_LABEL_PREFIX: &str = "pcsa.";

/// The label an endpoint carries with its ServiceAccount's name (Calico's).
pub const SERVICE_ACCOUNT_NAME_LABEL: &str = "projectcalico.org/serviceaccount";

/// A policy's endpoint selector with its `serviceAccountSelector` (over the account's
/// labels) ANDed in.
fn endpoint_selector(
    text: &str,
    service_accounts: Option<&str>,
) -> Result<Selector, TranslateError> {
    let endpoints = selector("spec.selector", text)?;
    Ok(match service_accounts {
        Some(sa) => Selector::and(
            endpoints,
            selector("spec.serviceAccountSelector", sa)?
                .with_key_prefix(SERVICE_ACCOUNT_LABEL_PREFIX),
        ),
        None => endpoints,
    })
}

/// A Serval NetworkPolicy.
pub fn serval_policy(p: &NetworkPolicy) -> Result<PolicyDef, TranslateError> {
    checked(PolicyDef {
        host: Default::default(),
        name: p.name_any(),
        namespace: Some(p.namespace().unwrap_or_else(|| "default".into())),
        order: p.spec.order,
        selector: endpoint_selector(&p.spec.selector, p.spec.service_account_selector.as_deref())?,
        namespace_selector: None,
        types: types_or_inferred(&p.spec.types, &p.spec.ingress, &p.spec.egress),
        ingress: p.spec.ingress.clone(),
        egress: p.spec.egress.clone(),
    })
}

/// A Serval GlobalNetworkPolicy.
pub fn global_policy(p: &GlobalNetworkPolicy) -> Result<PolicyDef, TranslateError> {
    checked(PolicyDef {
        host: serval_policy::compile::HostPolicy {
            do_not_track: p.spec.do_not_track,
            pre_dnat: p.spec.pre_dnat,
            apply_on_forward: p.spec.apply_on_forward,
        },
        name: p.name_any(),
        namespace: None,
        order: p.spec.order,
        selector: endpoint_selector(&p.spec.selector, p.spec.service_account_selector.as_deref())?,
        namespace_selector: p
            .spec
            .namespace_selector
            .as_deref()
            .map(|s| selector("spec.namespaceSelector", s))
            .transpose()?,
        types: types_or_inferred(&p.spec.types, &p.spec.ingress, &p.spec.egress),
        ingress: p.spec.ingress.clone(),
        egress: p.spec.egress.clone(),
    })
}

/// A WorkloadEndpoint as policy sees it.
pub fn endpoint(w: &WorkloadEndpoint) -> Endpoint {
    Endpoint {
        namespace: w.namespace().unwrap_or_else(|| "default".into()),
        name: w.spec.pod.clone(),
        iface: w.spec.interface_name.clone(),
        addrs: w.spec.networks().map(|n| n.addr()).collect(),
        labels: w.labels().clone(),
        ports: w
            .spec
            .ports
            .iter()
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone(),
                    protocol: protocol_number(&IntOrString::String(p.protocol.clone()))?,
                    port: p.port,
                })
            })
            .collect(),
    }
}

/// Overlays what the Kubernetes Pod says (labels, named container ports) on its endpoint:
/// in the Kubernetes datastore the Pod is the truth for both.
pub fn apply_pod(e: &mut Endpoint, pod: &k8s_openapi::api::core::v1::Pod) {
    e.labels.extend(pod.labels().clone());
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        for p in c.ports.iter().flatten() {
            let (Some(name), Ok(port)) = (&p.name, u16::try_from(p.container_port)) else {
                continue;
            };
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let Some(protocol) = protocol_number(&IntOrString::String(proto)) else {
                continue;
            };
            if !e
                .ports
                .iter()
                .any(|x| x.name == *name && x.protocol == protocol)
            {
                e.ports.push(NamedPort {
                    name: name.clone(),
                    protocol,
                    port,
                });
            }
        }
    }
}

/// Gives an endpoint its ServiceAccount's name and labels (as `pcsa.<key>`), which
/// serviceAccountSelector reads; an account not known (yet) adds only its name.
pub fn apply_service_account(
    e: &mut Endpoint,
    name: &str,
    account: Option<&k8s_openapi::api::core::v1::ServiceAccount>,
) {
    e.labels
        .insert(SERVICE_ACCOUNT_NAME_LABEL.into(), name.to_string());
    for (k, v) in account.map(|a| a.labels().clone()).unwrap_or_default() {
        e.labels
            .insert(format!("{SERVICE_ACCOUNT_LABEL_PREFIX}{k}"), v);
    }
}

/// A namespace's labels, with Kubernetes' automatic name label.
pub fn namespace_labels(ns: &Namespace) -> Labels {
    let mut l = ns.labels().clone();
    l.insert(NAMESPACE_NAME_LABEL.into(), ns.name_any());
    l
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
