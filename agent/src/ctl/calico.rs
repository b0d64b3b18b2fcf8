//! Calico's names in servalctl: `apiVersion: projectcalico.org/v3` is read as Serval's own
//! (`serval.dev/v1`, the same kinds and field names), and a Calico field Serval does not
//! implement is refused by name as such, instead of as an unknown field (a typo still reads
//! as one). The field lists come from Calico's v3 API types.

/// Calico's API version, accepted wherever servalctl reads resources.
pub const CALICO_API_VERSION: &str = "projectcalico.org/v3";

/// Serval's API version, what every object is stored as.
pub const SERVAL_API_VERSION: &str = "serval.dev/v1";

/// The `spec` fields of Calico's kinds, as Calico's v3 API defines them.
pub(crate) fn calico_spec_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "BGPConfiguration" => &[
            "logSeverityScreen",
            "nodeToNodeMeshEnabled",
            "asNumber",
            "serviceClusterIPs",
            "serviceExternalIPs",
            "serviceLoadBalancerIPs",
            "serviceLoadBalancerAggregation",
            "communities",
            "prefixAdvertisements",
            "listenPort",
            "nodeMeshPassword",
            "nodeMeshMaxRestartTime",
            "bindMode",
            "ignoredInterfaces",
            "localWorkloadPeeringIPV4",
            "localWorkloadPeeringIPV6",
            "programClusterRoutes",
            "ipv4NormalRoutePriority",
            "ipv6NormalRoutePriority",
        ],
        "BGPPeer" => &[
            "node",
            "nodeSelector",
            "peerIP",
            "asNumber",
            "localASNumber",
            "peerSelector",
            "keepOriginalNextHop",
            "nextHopMode",
            "password",
            "sourceAddress",
            "maxRestartTime",
            "keepaliveTime",
            "numAllowedLocalASNumbers",
            "ttlSecurity",
            "reachableBy",
            "filters",
            "localWorkloadSelector",
            "reversePeering",
        ],
        "IPPool" => &[
            "cidr",
            "blockSize",
            "ipipMode",
            "vxlanMode",
            "natOutgoing",
            "disabled",
            "disableBGPExport",
            "nodeSelector",
            "namespaceSelector",
            "allowedUses",
            "assignmentMode",
        ],
        "GlobalNetworkPolicy" => &[
            "tier",
            "order",
            "selector",
            "namespaceSelector",
            "serviceAccountSelector",
            "types",
            "ingress",
            "egress",
            "doNotTrack",
            "preDNAT",
            "applyOnForward",
            "performanceHints",
        ],
        "NetworkPolicy" => &[
            "tier",
            "order",
            "selector",
            "serviceAccountSelector",
            "types",
            "ingress",
            "egress",
            "performanceHints",
        ],
        "IPReservation" => &["reservedCIDRs"],
        "IPAMConfiguration" | "IPAMConfig" => {
            &["strictAffinity", "autoAllocateBlocks", "maxBlocksPerHost"]
        }
        "Node" => &[
            "bgp",
            "ipv4VXLANTunnelAddr",
            "vxlanTunnelMACAddr",
            "ipv6VXLANTunnelAddr",
            "vxlanTunnelMACAddrV6",
            "wireguard",
            "orchRefs",
            "addresses",
            "interfaces",
        ],
        "WorkloadEndpoint" => &[
            "orchestrator",
            "workload",
            "node",
            "containerID",
            "pod",
            "endpoint",
            "serviceAccountName",
            "ipNetworks",
            "ipNATs",
            "ipv4Gateway",
            "ipv6Gateway",
            "profiles",
            "interfaceName",
            "mac",
            "ports",
            "allowSpoofedSourcePrefixes",
        ],
        _ => &[],
    }
}

/// Rewrites a decode error about an unknown `spec` field that Calico defines into a refusal
/// that names it as unsupported; any other error is returned as it was.
pub fn explain_unknown_field(kind: &str, error: &str) -> String {
    let field = error
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(f, _)| f);
    let at_spec = error.starts_with("spec.") || error.starts_with("spec:");
    match field {
        Some(f) if at_spec && calico_spec_fields(kind).contains(&f) => format!(
            "spec.{f}: Calico's {kind} field {f:?} is not supported by Serval yet; remove it"
        ),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calico_field_is_named_as_unsupported_and_a_typo_stays_a_typo() {
        let e = "spec.reversePeering: unknown field `reversePeering`, expected one of `node`";
        assert_eq!(
            explain_unknown_field("BGPPeer", e),
            "spec.reversePeering: Calico's BGPPeer field \"reversePeering\" is not supported by Serval yet; remove it"
        );
        let typo = "spec.peerIp: unknown field `peerIp`, expected one of `node`";
        assert_eq!(explain_unknown_field("BGPPeer", typo), typo);
        // Not in spec (a rule's field): left as it is.
        let rule = "spec.ingress[0].http: unknown field `http`";
        assert_eq!(explain_unknown_field("NetworkPolicy", rule), rule);
    }
}
