//! The IPAM objects as Kubernetes resources; their specs are serval-ipam's own types.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spec of [`IPAMBlock`]: see [`serval_ipam::Block`].
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    /// The IPAM object itself.
    #[serde(flatten)]
    pub inner: serval_ipam::Block,
}

/// Spec of [`BlockAffinity`]: see [`serval_ipam::BlockAffinity`].
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "BlockAffinity",
    plural = "blockaffinities",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinitySpec {
    /// The IPAM object itself.
    #[serde(flatten)]
    pub inner: serval_ipam::BlockAffinity,
}

/// Spec of [`IPAMHandle`]: see [`serval_ipam::Handle`].
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "IPAMHandle",
    plural = "ipamhandles",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMHandleSpec {
    /// The IPAM object itself.
    #[serde(flatten)]
    pub inner: serval_ipam::Handle,
}

/// Spec of [`IPAMConfig`]: see [`serval_ipam::IpamConfig`]; the object is named `default`.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "IPAMConfig",
    plural = "ipamconfigs",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMConfigSpec {
    /// The IPAM object itself.
    #[serde(flatten)]
    pub inner: serval_ipam::IpamConfig,
}

/// Address ranges IPAM never hands out.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "IPReservation",
    plural = "ipreservations",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPReservationSpec {
    /// Reserved prefixes (or single addresses).
    #[serde(rename = "reservedCIDRs")]
    pub reserved_cidrs: Vec<super::Parsed<ipnet::IpNet>>,
}
