//! IPPool: where pod addresses come from and how traffic between them is carried.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// When to encapsulate traffic to another node's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum EncapMode {
    /// Never (the fabric routes pod addresses).
    #[default]
    Never,
    /// Always.
    Always,
    /// Only to nodes outside this node's subnet.
    CrossSubnet,
}

/// What a pool's addresses may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AllowedUse {
    /// Pod addresses.
    Workload,
    /// Node tunnel addresses.
    Tunnel,
}

/// A pool of pod addresses.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "IPPool",
    plural = "ippools",
    shortname = "ippool",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPPoolSpec {
    /// The pool's prefix (strictly masked; immutable).
    pub cidr: super::Parsed<ipnet::IpNet>,
    /// Prefix length of its blocks (default 26 for IPv4, 122 for IPv6; immutable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// IPIP encapsulation (IPv4 only).
    #[serde(default, rename = "ipipMode")]
    pub ipip_mode: EncapMode,
    /// VXLAN encapsulation.
    #[serde(default, rename = "vxlanMode")]
    pub vxlan_mode: EncapMode,
    /// Masquerade traffic from the pool to destinations outside all pools.
    #[serde(default)]
    pub nat_outgoing: bool,
    /// No new allocations.
    #[serde(default)]
    pub disabled: bool,
    /// Do not advertise the pool's blocks over BGP.
    #[serde(default, rename = "disableBGPExport")]
    pub disable_bgp_export: bool,
    /// Nodes that may allocate from the pool (selector; default all()).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// Uses allowed (default Workload and Tunnel). At most two entries, which also keeps
    /// the CRD's CEL rule over the list within the API server's cost budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub allowed_uses: Vec<AllowedUse>,
}

impl IPPoolSpec {
    /// Block size with the family default applied (None if the CIDR does not parse).
    pub fn effective_block_size(&self) -> Option<u8> {
        let cidr = self.cidr_net()?;
        Some(self.block_size.unwrap_or(match cidr {
            ipnet::IpNet::V4(_) => 26,
            ipnet::IpNet::V6(_) => 122,
        }))
    }
}

impl IPPoolSpec {
    /// The pool's prefix (None when it does not parse; validation names that).
    pub fn cidr_net(&self) -> Option<ipnet::IpNet> {
        self.cidr.get()
    }
}
