//! Serval's resources (API group `serval.dev/v1`, field names as in Calico), the Kubernetes
//! core kinds Serval reads, their validation, and the CRDs generated from the types.

pub mod bgp;
pub mod bgpfilter;
pub mod hostendpoint;
pub mod ipam;
pub mod netset;
pub mod node;
pub mod parsed;
pub mod policy;
pub mod pool;
pub mod validate;
pub mod workload;

use std::fmt::Debug;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use bgp::{BGPConfiguration, BGPConfigurationSpec, BGPPeer, BGPPeerSpec};
pub use bgpfilter::{BGPFilter, BGPFilterSpec};
pub use hostendpoint::{HostEndpoint, HostEndpointSpec};
pub use ipam::{
    BlockAffinity, BlockAffinitySpec, IPAMBlock, IPAMBlockSpec, IPAMConfig, IPAMConfigSpec,
    IPAMHandle, IPAMHandleSpec, IPReservation, IPReservationSpec,
};
pub use netset::{GlobalNetworkSet, NetworkSet};
pub use node::{Node, NodeBgpSpec, NodeSpec};
pub use parsed::{Parsed, PeerAddress};
pub use policy::{GlobalNetworkPolicy, GlobalNetworkPolicySpec, NetworkPolicy, NetworkPolicySpec};
pub use pool::{EncapMode, IPPool, IPPoolSpec};
pub use validate::{FieldError, ValidationError};
pub use workload::{WorkloadEndpoint, WorkloadEndpointSpec};

/// A kind Serval stores or reads, whatever the datastore.
pub trait ServalResource:
    kube::Resource<DynamicType = ()>
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Whether objects live in a namespace.
    const NAMESPACED: bool;
    /// Whether Serval owns the kind (a CRD in `serval.dev`) rather than reading a core kind.
    const OWNED: bool;

    /// Checks the spec; see [`validate`].
    fn validate_spec(&self, problems: &mut validate::Problems);

    /// Checks name and spec, reporting every problem at once.
    fn validate(&self) -> Result<(), ValidationError> {
        let mut problems = validate::Problems::default();
        let name = self.name_any();
        validate::check_name(&mut problems, &name);
        if Self::NAMESPACED && self.namespace().is_none_or(|ns| ns.is_empty()) {
            problems.add("metadata.namespace", "is required for this kind");
        }
        self.validate_spec(&mut problems);
        problems.finish(&Self::kind(&()), &name)
    }
}

macro_rules! owned {
    ($t:ty, $namespaced:expr, |$name:ident, $spec:ident, $p:ident| $body:expr) => {
        impl ServalResource for $t {
            const NAMESPACED: bool = $namespaced;
            const OWNED: bool = true;
            fn validate_spec(&self, $p: &mut validate::Problems) {
                let $name = self.name_any();
                let $spec = &self.spec;
                let _ = &$name;
                $body
            }
        }
    };
}

owned!(BGPConfiguration, false, |name, s, p| {
    validate::bgp_configuration(&name, s, p)
});
owned!(BGPPeer, false, |name, s, p| validate::bgp_peer(s, p));
owned!(Node, false, |name, s, p| validate::node(s, p));
owned!(IPPool, false, |name, s, p| validate::ip_pool(s, p));
owned!(IPAMBlock, false, |name, s, p| validate::ipam_block(s, p));
owned!(BlockAffinity, false, |name, s, p| validate::block_affinity(
    s, p
));
owned!(IPAMHandle, false, |name, s, p| validate::ipam_handle(s, p));
owned!(IPAMConfig, false, |name, s, p| validate::ipam_config(
    &name, s, p
));
owned!(IPReservation, false, |name, s, p| validate::ip_reservation(
    s, p
));
owned!(WorkloadEndpoint, true, |name, s, p| {
    validate::workload_endpoint(s, p)
});
owned!(NetworkPolicy, true, |name, s, p| validate::network_policy(
    s, p
));
owned!(GlobalNetworkPolicy, false, |name, s, p| {
    validate::global_network_policy(s, p)
});
owned!(BGPFilter, false, |name, s, p| validate::bgp_filter(s, p));
owned!(HostEndpoint, false, |name, s, p| validate::host_endpoint(
    s, p
));
owned!(NetworkSet, true, |name, s, p| validate::nets(&s.nets, p));
owned!(GlobalNetworkSet, false, |name, s, p| validate::nets(
    &s.nets, p
));

macro_rules! core_kind {
    ($t:ty, $namespaced:expr) => {
        impl ServalResource for $t {
            const NAMESPACED: bool = $namespaced;
            const OWNED: bool = false;
            // The API server validates core kinds; Serval only reads them.
            fn validate_spec(&self, _: &mut validate::Problems) {}
        }
    };
}

core_kind!(k8s_openapi::api::core::v1::Pod, true);
core_kind!(k8s_openapi::api::core::v1::Namespace, false);
core_kind!(k8s_openapi::api::core::v1::ServiceAccount, true);
core_kind!(k8s_openapi::api::core::v1::Secret, true);
core_kind!(k8s_openapi::api::core::v1::Node, false);
core_kind!(k8s_openapi::api::networking::v1::NetworkPolicy, true);
core_kind!(k8s_openapi::api::core::v1::Service, true);
core_kind!(k8s_openapi::api::discovery::v1::EndpointSlice, true);

/// Adds CEL rules to a CRD's `spec` that refuse fields Serval parses but does not implement
/// (`(field, rule that holds when it is unset)`), so `kubectl apply` is refused by name as
/// servalctl is; the schema alone would accept them.
fn refuse_unsupported(
    mut crd: CustomResourceDefinition,
    rules: &[(&str, String)],
) -> CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    for version in &mut crd.spec.versions {
        let spec = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
            .expect("a CRD with a spec schema");
        let list = spec.x_kubernetes_validations.get_or_insert_with(Vec::new);
        for (field, rule) in rules {
            list.push(ValidationRule {
                rule: rule.clone(),
                message: Some(format!("spec.{field} {}", validate::UNSUPPORTED_BY_SERVAL)),
                field_path: Some(format!(".{field}")),
                ..ValidationRule::default()
            });
        }
    }
    crd
}

/// The CRDs for every kind Serval owns, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let unset_list = |f: &'static str| (f, format!("!has(self.{f}) || size(self.{f}) == 0"));
    let unset = |f: &'static str| (f, format!("!has(self.{f})"));
    let bgp = [(
        "bindMode",
        "!has(self.bindMode) || self.bindMode == 'None'".to_string(),
    )];
    vec![
        refuse_unsupported(BGPConfiguration::crd(), &bgp),
        refuse_unsupported(
            BGPPeer::crd(),
            &[
                unset("reachableBy"),
                (
                    "localASNumber",
                    "!has(self.localASNumber) || has(self.peerIP)".to_string(),
                ),
            ],
        ),
        BGPFilter::crd(),
        refuse_unsupported(
            HostEndpoint::crd(),
            &[
                unset_list("expectedIPs"),
                unset_list("profiles"),
                unset_list("ports"),
                (
                    "interfaceName",
                    "has(self.interfaceName) && self.interfaceName != '*'".to_string(),
                ),
            ],
        ),
        Node::crd(),
        refuse_unsupported(
            IPPool::crd(),
            &[(
                "allowedUses",
                "!has(self.allowedUses) || size(self.allowedUses) == 0 || \
                 (self.allowedUses.exists(u, u == 'Workload') && \
                 self.allowedUses.exists(u, u == 'Tunnel'))"
                    .to_string(),
            )],
        ),
        IPAMBlock::crd(),
        BlockAffinity::crd(),
        IPAMHandle::crd(),
        IPAMConfig::crd(),
        IPReservation::crd(),
        WorkloadEndpoint::crd(),
        NetworkPolicy::crd(),
        GlobalNetworkPolicy::crd(),
        NetworkSet::crd(),
        GlobalNetworkSet::crd(),
    ]
}

/// The CRDs as one multi-document YAML file (what `manifests/crds.yaml` holds).
pub fn crds_yaml() -> String {
    let mut out = String::from(
        "# Generated from the Rust types in agent/src/resources; do not edit.\n\
         # Regenerate with: SERVAL_UPDATE_GOLDEN=1 cargo test -p serval-agent crds\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("CRDs serialize"));
    }
    out
}

#[cfg(test)]
mod tests;
