//! HostEndpoint: one of a node's own interfaces put under policy (Calico's resource). The
//! global policies whose selector matches its labels police traffic to the host arriving on
//! the interface and traffic from the host leaving by it; what none allows is dropped, except
//! the failsafe ports (see `serval_policy::compile::host`).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A node interface under policy.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "serval.dev",
    version = "v1",
    kind = "HostEndpoint",
    plural = "hostendpoints",
    shortname = "hep",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEndpointSpec {
    /// The node the interface is on.
    pub node: String,
    /// The interface (`"*"`, all interfaces, is refused: Serval polices named ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    /// The interface's addresses, which rule selectors would match (refused: not yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "expectedIPs")]
    pub expected_ips: Vec<super::Parsed<std::net::IpAddr>>,
    /// Profiles (refused: host endpoints take their rules from global policies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Named ports (refused: not yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<super::workload::EndpointPort>,
}
