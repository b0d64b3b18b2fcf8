//! BGPConfiguration and BGPPeer: how nodes peer with each other and with routers.

use k8s_openapi::api::core::v1::SecretKeySelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A prefix to advertise (service ranges).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrEntry {
    /// The prefix.
    pub cidr: super::Parsed<ipnet::IpNet>,
}

/// A named BGP community (`aa:nn` or large `aa:nn:mm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Community {
    /// Name that prefixAdvertisements refer to.
    pub name: String,
    /// The community value.
    pub value: String,
}

/// Communities to attach to one advertised prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixAdvertisement {
    /// The prefix.
    pub cidr: super::Parsed<ipnet::IpNet>,
    /// Community names or literal values.
    #[serde(default)]
    pub communities: Vec<String>,
}

/// Serval extension (Calico has no equivalent): how many prefixes a peer may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpPeerMaxPrefix {
    /// Prefixes per address family (at least 1).
    pub limit: u32,
    /// Only log and flag the peer in status, keeping the session (default false: the
    /// session is closed with Cease "maximum number of prefixes reached").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning_only: Option<bool>,
    /// Seconds before a closed session is tried again (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_seconds: Option<u64>,
}

/// A password kept in a Kubernetes Secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpPassword {
    /// Which Secret key holds the password (in serval-node's namespace).
    pub secret_key_ref: SecretKeySelector,
}

/// Cluster-wide (`default`) or per-node (`node.<name>`) BGP settings.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    shortname = "bgpconfig",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPConfigurationSpec {
    /// Log level of the BGP speaker (Trace, Debug, Info, Warning, Error, Fatal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<String>,
    /// Full iBGP mesh between nodes (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// Default AS for nodes without their own (default 64512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// BGP listen port (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// Service cluster IP ranges every node advertises.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceClusterIPs"
    )]
    pub service_cluster_ips: Vec<CidrEntry>,
    /// Allowed service external IP ranges.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceExternalIPs"
    )]
    pub service_external_ips: Vec<CidrEntry>,
    /// Allowed LoadBalancer IP ranges.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "serviceLoadBalancerIPs"
    )]
    pub service_load_balancer_ips: Vec<CidrEntry>,
    /// `Enabled` (the default): `serviceLoadBalancerIPs` are advertised as the ranges;
    /// `Disabled`: each LoadBalancer ingress IP inside them as its own /32 or /128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_load_balancer_aggregation: Option<Aggregation>,
    /// Named communities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<Community>,
    /// Communities per advertised prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_advertisements: Vec<PrefixAdvertisement>,
    /// MD5 password for mesh sessions (only on `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BgpPassword>,
    /// Graceful-restart time for mesh peers, e.g. `120s` (only on `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_max_restart_time: Option<String>,
    /// `None` (listen on all addresses) or `NodeIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_mode: Option<BindMode>,
    /// The kernel metric of IPv4 routes learned over BGP unless a BGPFilter sets another
    /// (default 1024, Calico's; only on `default`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv4NormalRoutePriority"
    )]
    pub ipv4_normal_route_priority: Option<u32>,
    /// As `ipv4NormalRoutePriority`, for IPv6 routes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "ipv6NormalRoutePriority"
    )]
    pub ipv6_normal_route_priority: Option<u32>,
}

impl BGPConfigurationSpec {
    /// The normal route priority of the family of `dst`.
    pub fn normal_route_priority(&self, v6: bool) -> u32 {
        if v6 {
            self.ipv6_normal_route_priority
        } else {
            self.ipv4_normal_route_priority
        }
        .unwrap_or(crate::calc::routes::DEFAULT_ROUTE_PRIORITY)
    }
}

/// The highest route priority Calico allows (`ipv4NormalRoutePriority`'s bound).
pub const MAX_ROUTE_PRIORITY: u32 = 2_147_483_646;

/// Whether LoadBalancer addresses are advertised as their ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Aggregation {
    /// As the ranges.
    Enabled,
    /// One host route per address.
    Disabled,
}

/// Where the BGP listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BindMode {
    /// All addresses.
    None,
    /// Only the node's BGP address.
    NodeIP,
}

/// What next hop to send a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NextHopMode {
    /// Self for eBGP, unchanged for iBGP.
    Auto,
    /// Always ourselves.
    #[serde(rename = "Self")]
    SelfAddress,
    /// Always the original next hop.
    Keep,
}

/// Which source address the session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SourceAddress {
    /// The node's BGP address (default).
    UseNodeIP,
    /// Let the kernel choose.
    None,
}

/// How a dead peer is detected besides the hold timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailureDetectionMode {
    /// Hold timer only.
    None,
    /// BFD when the peer is one hop away.
    BFDIfDirectlyConnected,
}

/// A BGP peering for all nodes, one node, or the nodes a selector picks.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "BGPPeer",
    plural = "bgppeers",
    shortname = "bgpp",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BGPPeerSpec {
    /// Apply only on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Apply on the nodes this selector picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// The peer: `IPv4`, `IPv4:port` or `[IPv6]:port`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "peerIP")]
    pub peer_ip: Option<super::Parsed<super::PeerAddress>>,
    /// The peer's AS (required with peerIP, forbidden with peerSelector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Our AS on this session, if not the node's.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "localASNumber"
    )]
    pub local_as_number: Option<u32>,
    /// Peer with the nodes this selector picks (how in-cluster reflectors are wired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// Deprecated: keep the original next hop (eBGP); use nextHopMode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_original_next_hop: Option<bool>,
    /// Next hop sent to the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_mode: Option<NextHopMode>,
    /// TCP-MD5 password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BgpPassword>,
    /// Session source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,
    /// Graceful-restart time, e.g. `120s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<String>,
    /// Keepalive interval, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<String>,
    /// Accept routes with our AS this many times in the path.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "numAllowedLocalASNumbers"
    )]
    pub num_allowed_local_as_numbers: Option<u32>,
    /// GTSM: maximum hops to the peer (1..=255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
    /// Gateway towards the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable_by: Option<super::Parsed<std::net::IpAddr>>,
    /// Dead-peer detection besides the hold timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_detection_mode: Option<FailureDetectionMode>,
    /// Serval extension: an import guard, the most prefixes this peer may send per family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefix: Option<BgpPeerMaxPrefix>,
    /// BGPFilters applied to this session, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
}
