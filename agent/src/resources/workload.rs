//! WorkloadEndpoint: one pod interface, written by serval-cni and read by policy.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A named container port (for named ports in policy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointPort {
    /// The port's name.
    pub name: String,
    /// TCP, UDP or SCTP.
    pub protocol: String,
    /// The port number.
    pub port: u16,
}

/// A pod's network interface.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "WorkloadEndpoint",
    plural = "workloadendpoints",
    shortname = "wep",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEndpointSpec {
    /// `k8s`.
    #[serde(default)]
    pub orchestrator: String,
    /// The node the pod runs on.
    pub node: String,
    /// The pod's name.
    pub pod: String,
    /// The container (sandbox) ID from the CNI call.
    #[serde(default, rename = "containerID")]
    pub container_id: String,
    /// The interface inside the pod (`eth0`).
    #[serde(default)]
    pub endpoint: String,
    /// Host-side interface name.
    pub interface_name: String,
    /// Host-side MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The pod's addresses as /32 or /128 prefixes.
    #[serde(rename = "ipNetworks")]
    pub ip_networks: Vec<super::Parsed<ipnet::IpNet>>,
    /// Profiles (namespace and service account) whose labels apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Named container ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
    /// The pod's service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

impl WorkloadEndpointSpec {
    /// The pod's addresses as prefixes (entries that do not parse are left out; validation
    /// names them).
    pub fn networks(&self) -> impl Iterator<Item = ipnet::IpNet> + '_ {
        self.ip_networks.iter().filter_map(super::Parsed::get)
    }
}
