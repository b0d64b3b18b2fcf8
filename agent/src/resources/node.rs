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
    pub ipv4_address: Option<super::Parsed<ipnet::IpNet>>,
    /// IPv6 address with its prefix length.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv6Address"
    )]
    pub ipv6_address: Option<super::Parsed<ipnet::IpNet>>,
    /// tunl0's address, from IPAM.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4IPIPTunnelAddr"
    )]
    pub ipv4_ipip_tunnel_addr: Option<super::Parsed<std::net::Ipv4Addr>>,
    /// Makes the node a route reflector with this cluster ID (IPv4 format).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "routeReflectorClusterID"
    )]
    pub route_reflector_cluster_id: Option<super::Parsed<std::net::Ipv4Addr>>,
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
    pub ipv4_vxlan_tunnel_addr: Option<super::Parsed<std::net::Ipv4Addr>>,
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
    pub ipv6_vxlan_tunnel_addr: Option<super::Parsed<std::net::Ipv6Addr>>,
    /// The IPv6 VXLAN device's MAC address.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "vxlanTunnelMACAddrV6"
    )]
    pub vxlan_tunnel_mac_addr_v6: Option<String>,
    /// The orchestrator's records of this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orch_refs: Vec<OrchRef>,
}

/// Typed views of the address fields (parsed once, when the object was read; a value that
/// does not parse reads as unset here and validation names it).
impl NodeBgpSpec {
    /// The IPv4 address with its prefix length.
    pub fn ipv4(&self) -> Option<ipnet::IpNet> {
        parsed(&self.ipv4_address).filter(|n| n.addr().is_ipv4())
    }

    /// The IPv6 address with its prefix length.
    pub fn ipv6(&self) -> Option<ipnet::IpNet> {
        parsed(&self.ipv6_address).filter(|n| n.addr().is_ipv6())
    }

    /// The address of the node's own family: IPv4 for an IPv4 prefix, IPv6 for an IPv6 one.
    pub fn address_for(&self, family_of: &ipnet::IpNet) -> Option<std::net::IpAddr> {
        match family_of {
            ipnet::IpNet::V4(_) => self.ipv4(),
            ipnet::IpNet::V6(_) => self.ipv6(),
        }
        .map(|n| n.addr())
    }

    /// The route reflector cluster ID, when this node is a reflector.
    pub fn cluster_id(&self) -> Option<std::net::Ipv4Addr> {
        parsed(&self.route_reflector_cluster_id)
    }

    /// tunl0's address.
    pub fn ipip_tunnel_addr(&self) -> Option<std::net::Ipv4Addr> {
        parsed(&self.ipv4_ipip_tunnel_addr)
    }
}

impl NodeSpec {
    /// The IPv4 VXLAN device's address.
    pub fn vxlan_tunnel_addr(&self) -> Option<std::net::Ipv4Addr> {
        parsed(&self.ipv4_vxlan_tunnel_addr)
    }

    /// The IPv6 VXLAN device's address.
    pub fn vxlan_tunnel_addr_v6(&self) -> Option<std::net::Ipv6Addr> {
        parsed(&self.ipv6_vxlan_tunnel_addr)
    }

    /// The VXLAN device's address and MAC text for one family (IPv6: `vxlan-v6.serval`).
    pub fn vxlan_tunnel(&self, v6: bool) -> (Option<std::net::IpAddr>, Option<&str>) {
        if v6 {
            (
                self.vxlan_tunnel_addr_v6().map(std::net::IpAddr::V6),
                self.vxlan_tunnel_mac_addr_v6.as_deref(),
            )
        } else {
            (
                self.vxlan_tunnel_addr().map(std::net::IpAddr::V4),
                self.vxlan_tunnel_mac_addr.as_deref(),
            )
        }
    }
}

/// An optional field's value, when set and valid.
fn parsed<T: Copy>(field: &Option<super::Parsed<T>>) -> Option<T> {
    field.as_ref().and_then(super::Parsed::get)
}
