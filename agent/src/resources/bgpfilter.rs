//! BGPFilter: ordered import and export rules per address family, applied to the BGPPeers
//! that list the filter in `spec.filters` (Calico's resource and semantics; evaluated in
//! `calc::bgp_filter`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Import and export rules for the peers that name this filter.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "BGPFilter",
    plural = "bgpfilters",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPFilterSpec {
    /// Rules for IPv4 routes sent to the peer, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "exportV4")]
    pub export_v4: Vec<BGPFilterRule>,
    /// Rules for IPv4 routes received from the peer, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "importV4")]
    pub import_v4: Vec<BGPFilterRule>,
    /// Rules for IPv6 routes sent to the peer, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "exportV6")]
    pub export_v6: Vec<BGPFilterRule>,
    /// Rules for IPv6 routes received from the peer, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "importV6")]
    pub import_v6: Vec<BGPFilterRule>,
}

/// How a rule's `cidr` is compared with the route's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MatchOperator {
    /// The prefix is the CIDR.
    Equal,
    /// The prefix is not the CIDR.
    NotEqual,
    /// The prefix lies inside the CIDR (or is it).
    In,
    /// The prefix does not lie inside the CIDR.
    NotIn,
}

/// What a matching rule does (it ends the evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FilterAction {
    /// Take (import) or send (export) the route, after the rule's operations.
    Accept,
    /// Drop it.
    Reject,
}

/// Which routes a `source` match picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RouteSourceMatch {
    /// Routes learned from BGP peers (not this node's own).
    RemotePeers,
}

/// A session type for `peerType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FilterPeerType {
    /// The peer is in another AS.
    #[serde(rename = "eBGP")]
    Ebgp,
    /// The peer is in our AS.
    #[serde(rename = "iBGP")]
    Ibgp,
}

/// Bounds on the route's prefix length (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixLengthMatch {
    /// Shortest length matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u8>,
    /// Longest length matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u8>,
}

/// A community the route must carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommunityMatch {
    /// One value, `aa:nn` or `aa:nn:mm` (Calico allows exactly one).
    #[serde(default)]
    pub values: Vec<String>,
}

/// A community to add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommunityValue {
    /// `aa:nn` or `aa:nn:mm`.
    pub value: String,
}

/// AS numbers to put in front of the AS path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrependAsPath {
    /// Prepended in this order (the first is the path's new first AS).
    pub prefix: Vec<u32>,
}

/// A route priority (kernel metric) to set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriorityValue {
    /// The metric.
    pub value: i64,
}

/// One change an accepting rule makes to the route (exactly one field set).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterOperation {
    /// Add a community.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_community: Option<CommunityValue>,
    /// Prepend AS numbers to the path.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "prependASPath"
    )]
    pub prepend_as_path: Option<PrependAsPath>,
    /// Import only: the kernel metric this node gives the route (BIRD's `krt_metric`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_priority: Option<PriorityValue>,
}

/// One rule: every match that is set must hold; the first rule that matches decides.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPFilterRule {
    /// The prefix to compare with (with `matchOperator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<super::Parsed<ipnet::IpNet>>,
    /// How `cidr` is compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_operator: Option<MatchOperator>,
    /// Bounds on the prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_length: Option<PrefixLengthMatch>,
    /// Export only: match routes learned from peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RouteSourceMatch>,
    /// The route's outgoing interface on this node matches this name or pattern (`*`, `?`):
    /// a local pod's host interface, or the interface towards a learned route's next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The type of the session the filter is applied on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<FilterPeerType>,
    /// A community the route carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communities: Option<CommunityMatch>,
    /// The AS path starts with these AS numbers.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "asPathPrefix"
    )]
    pub as_path_prefix: Vec<u32>,
    /// The route's priority (kernel metric) equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// What a match does.
    pub action: Option<FilterAction>,
    /// Changes made by an accepting rule (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<FilterOperation>,
}
