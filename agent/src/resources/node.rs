//! The Node resource: a node's BGP identity and tunnel addresses.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A node's BGP settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeBgpSpec {
    /// The node's AS, if not the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// IPv4 address *with its prefix length* (`10.0.0.5/24`): the prefix decides CrossSubnet.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4Address"
    )]
    pub ipv4_address: Option<String>,
    /// IPv6 address with its prefix length.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv6Address"
    )]
    pub ipv6_address: Option<String>,
    /// tunl0's address, from IPAM.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4IPIPTunnelAddr"
    )]
    pub ipv4_ipip_tunnel_addr: Option<String>,
    /// Makes the node a route reflector with this cluster ID (IPv4 format).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "routeReflectorClusterID"
    )]
    pub route_reflector_cluster_id: Option<String>,
}

/// Link to the orchestrator's node object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrchRef {
    /// The orchestrator's node name.
    pub node_name: String,
    /// The orchestrator (`k8s`).
    pub orchestrator: String,
}

/// A Serval node.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "Node",
    plural = "nodes",
    shortname = "svnode",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// BGP settings; absent on policy-only nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgpSpec>,
    /// The IPv4 VXLAN device's address, from IPAM.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4VXLANTunnelAddr"
    )]
    pub ipv4_vxlan_tunnel_addr: Option<String>,
    /// The IPv4 VXLAN device's MAC address.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "vxlanTunnelMACAddr"
    )]
    pub vxlan_tunnel_mac_addr: Option<String>,
    /// The IPv6 VXLAN device's address, from IPAM.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv6VXLANTunnelAddr"
    )]
    pub ipv6_vxlan_tunnel_addr: Option<String>,
    /// The orchestrator's records of this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orch_refs: Vec<OrchRef>,
}
