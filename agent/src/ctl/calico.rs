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
        "BGPFilter" => &["exportV4", "importV4", "exportV6", "importV6"],
        "HostEndpoint" => &["node", "interfaceName", "expectedIPs", "profiles", "ports"],
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
        "NetworkSet" | "GlobalNetworkSet" => &["nets"],
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

/// The fields of a Calico policy rule.
const RULE_FIELDS: &[&str] = &[
    "action",
    "ipVersion",
    "protocol",
    "icmp",
    "notProtocol",
    "notICMP",
    "source",
    "destination",
    "http",
    "metadata",
];

/// The fields of a rule's source or destination.
const ENTITY_FIELDS: &[&str] = &[
    "nets",
    "selector",
    "namespaceSelector",
    "ports",
    "notNets",
    "notSelector",
    "notPorts",
    "serviceAccounts",
    "services",
];

/// Calico's fields of the object at `parent` (a path without list indices) in `kind`, and
/// what to call that object.
fn calico_nested_fields(
    kind: &str,
    parent: &str,
) -> Option<(&'static str, &'static [&'static str])> {
    if !matches!(kind, "NetworkPolicy" | "GlobalNetworkPolicy") {
        return None;
    }
    match parent {
        "spec.ingress" | "spec.egress" => Some(("rule", RULE_FIELDS)),
        "spec.ingress.source"
        | "spec.ingress.destination"
        | "spec.egress.source"
        | "spec.egress.destination" => Some(("rule entity", ENTITY_FIELDS)),
        _ => None,
    }
}

/// Rewrites a decode error about an unknown field that Calico defines (in `spec`, a policy
/// rule, or a rule's source or destination) into a refusal that names it as unsupported;
/// any other error is returned as it was.
pub fn explain_unknown_field(kind: &str, error: &str) -> String {
    let field = error
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(f, _)| f);
    let at_spec = error.starts_with("spec.") || error.starts_with("spec:");
    let path = error.split_once(": ").map_or("", |(p, _)| p);
    let parent = path
        .rsplit_once('.')
        .map_or("", |(p, _)| p)
        .split('[')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once(']').map_or("", |(_, r)| r)
            }
        })
        .collect::<String>();
    match field {
        Some(f) if at_spec && parent == "spec" && calico_spec_fields(kind).contains(&f) => format!(
            "spec.{f}: Calico's {kind} field {f:?} is not supported by Serval yet; remove it"
        ),
        Some(f) if at_spec => match calico_nested_fields(kind, &parent) {
            Some((what, fields)) if fields.contains(&f) => format!(
                "{path}: Calico's {what} field {f:?} is not supported by Serval yet; remove it"
            ),
            _ => error.to_string(),
        },
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
        // A Calico field inside a rule, or inside a rule's source or destination.
        let rule = "spec.ingress[0].http: unknown field `http`, expected one of `action`";
        assert_eq!(
            explain_unknown_field("NetworkPolicy", rule),
            "spec.ingress[0].http: Calico's rule field \"http\" is not supported by Serval yet; remove it"
        );
        let entity =
            "spec.egress[2].destination.services: unknown field `services`, expected one of `nets`";
        assert_eq!(
            explain_unknown_field("GlobalNetworkPolicy", entity),
            "spec.egress[2].destination.services: Calico's rule entity field \"services\" is not supported by Serval yet; remove it"
        );
        // A typo inside a rule stays a typo.
        let typo = "spec.ingress[0].acton: unknown field `acton`, expected one of `action`";
        assert_eq!(explain_unknown_field("NetworkPolicy", typo), typo);
    }
}
