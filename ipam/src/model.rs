//! The IPAM objects as they are stored (field names as in Calico's IPAMBlock, BlockAffinity,
//! IPAMHandle and IPAMConfig), plus the read-only pool view IPAM needs from IPPool.

use std::collections::BTreeMap;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Attribute key naming the node an address was allocated on.
pub const ATTR_NODE: &str = "node";
/// Attribute key naming the workload's pod.
pub const ATTR_POD: &str = "pod";
/// Attribute key naming the workload's namespace.
pub const ATTR_NAMESPACE: &str = "namespace";
/// Attribute key saying what kind of address this is (`ipipTunnelAddress`, ...).
pub const ATTR_TYPE: &str = "type";

/// One block of a pool: the unit of affinity and of route aggregation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Block {
    /// The block's prefix (e.g. `10.244.3.0/26`).
    #[schemars(with = "String")]
    pub cidr: IpNet,
    /// `host:<node>` for a node's affine block, absent for an unaffine one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// Per ordinal: index into `attributes`, or null when the address is free.
    pub allocations: Vec<Option<u32>>,
    /// Free ordinals in reuse order (released addresses go to the back, so reuse is slow).
    pub unallocated: Vec<u32>,
    /// Owner records shared by the ordinals that point at them.
    pub attributes: Vec<AllocationAttribute>,
    /// Bumped on every change; lets a release say which allocation it meant.
    #[serde(default)]
    pub sequence_number: u64,
    /// Sequence number at which each allocated ordinal was handed out.
    #[serde(default)]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,
    /// Soft-delete marker (for stores without compare-and-delete).
    #[serde(default)]
    pub deleted: bool,
}

/// Who owns an allocation: its handle plus free-form attributes (node, pod, namespace, type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub struct AllocationAttribute {
    /// The handle the allocation was made under; release by handle finds it through this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// Owner details (`node`, `pod`, `namespace`, `type`, `timestamp`).
    #[serde(default)]
    pub secondary: BTreeMap<String, String>,
}

/// State of a node's claim on a block (pending claims count as absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    /// Claimed but the block is not written yet.
    Pending,
    /// The node owns the block.
    Confirmed,
    /// Being released; not used for allocation or advertisement.
    PendingDeletion,
}

/// A node's claim on one block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinity {
    /// Claim state.
    pub state: AffinityState,
    /// The claiming node.
    pub node: String,
    /// The block claimed.
    #[schemars(with = "String")]
    pub cidr: IpNet,
}

/// The secondary index from a handle to the blocks holding its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Handle {
    /// The handle ID (e.g. `k8s-pod-network.<containerID>`).
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// Block CIDR → number of this handle's addresses in that block.
    pub block: BTreeMap<String, u32>,
    /// Soft-delete marker.
    #[serde(default)]
    pub deleted: bool,
}

/// Cluster-wide IPAM settings (the `default` IPAMConfig).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct IpamConfig {
    /// Never borrow addresses from other nodes' blocks.
    pub strict_affinity: bool,
    /// Let nodes claim new blocks when theirs are full.
    pub auto_allocate_blocks: bool,
    /// Cap on blocks per node; 0 means the default of 20.
    pub max_blocks_per_host: u32,
}

impl Default for IpamConfig {
    fn default() -> Self {
        Self {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
        }
    }
}

/// Calico's default cap when `maxBlocksPerHost` is 0.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: u32 = 20;

impl IpamConfig {
    /// The effective per-node block cap.
    pub fn block_cap(&self) -> u32 {
        if self.max_blocks_per_host == 0 {
            DEFAULT_MAX_BLOCKS_PER_HOST
        } else {
            self.max_blocks_per_host
        }
    }
}

/// What IPAM needs to know about an IP pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The pool's name (for requests that name pools).
    pub name: String,
    /// The pool's prefix.
    pub cidr: IpNet,
    /// Prefix length of its blocks.
    pub block_size: u8,
    /// Calico selector over node labels; empty means all nodes.
    pub node_selector: String,
    /// No new allocations when set.
    pub disabled: bool,
}

impl Block {
    /// A fresh, empty block.
    pub fn new(cidr: IpNet, affinity: Option<String>) -> Block {
        let n = crate::cidr::size(&cidr) as usize;
        Block {
            cidr,
            affinity,
            allocations: vec![None; n],
            unallocated: (0..n as u32).collect(),
            attributes: Vec::new(),
            sequence_number: 0,
            sequence_number_for_allocation: BTreeMap::new(),
            deleted: false,
        }
    }

    /// The affinity string for a node.
    pub fn host_affinity(node: &str) -> String {
        format!("host:{node}")
    }

    /// The node this block is affine to, if any.
    pub fn affine_node(&self) -> Option<&str> {
        self.affinity.as_deref()?.strip_prefix("host:")
    }
}
