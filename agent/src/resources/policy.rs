//! Serval's NetworkPolicy (namespaced) and GlobalNetworkPolicy (cluster-wide); the rule model
//! lives in serval-policy.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serval_policy::model::{PolicyType, Rule};

/// An ordered policy for the endpoints of one namespace.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "NetworkPolicy",
    plural = "networkpolicies",
    shortname = "svnp",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// Lower is evaluated first; absent means last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Endpoints the policy applies to (default all()).
    #[serde(default)]
    pub selector: String,
    /// Directions it applies to (inferred from the rules when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    /// Rules for traffic to the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Rules for traffic from the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Further restricts by the endpoint's service account labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
}

/// An ordered policy across all namespaces.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "GlobalNetworkPolicy",
    plural = "globalnetworkpolicies",
    shortname = "gnp",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalNetworkPolicySpec {
    /// Lower is evaluated first; absent means last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Endpoints the policy applies to (default all()).
    #[serde(default)]
    pub selector: String,
    /// Namespaces whose endpoints it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Further restricts by the endpoint's service account labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    /// Directions it applies to (inferred from the rules when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<PolicyType>,
    /// Rules for traffic to the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Rules for traffic from the endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Apply before connection tracking (untracked, both directions stateless).
    #[serde(default)]
    pub do_not_track: bool,
    /// Apply before DNAT (ingress only).
    #[serde(default, rename = "preDNAT")]
    pub pre_dnat: bool,
    /// Also apply to forwarded traffic.
    #[serde(default)]
    pub apply_on_forward: bool,
}
