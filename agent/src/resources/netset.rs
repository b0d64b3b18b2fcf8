//! NetworkSet (namespaced) and GlobalNetworkSet (cluster-wide): labelled sets of CIDRs that a
//! policy rule's selector matches as it matches pods, for traffic to and from networks that
//! are not pods (Calico's semantics: a namespaced set is seen by rules whose scope covers its
//! namespace; a global one by global policies' rules and by rules whose namespaceSelector is
//! `global()`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A namespace's labelled set of networks.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "NetworkSet",
    plural = "networksets",
    shortname = "netsets",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSetSpec {
    /// Addresses and CIDRs (IPv4 and IPv6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<super::Parsed<ipnet::IpNet>>,
}

/// A cluster-wide labelled set of networks.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "GlobalNetworkSet",
    plural = "globalnetworksets",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalNetworkSetSpec {
    /// Addresses and CIDRs (IPv4 and IPv6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<super::Parsed<ipnet::IpNet>>,
}
