//! Service IP advertisement with Calico's semantics. Every node advertises the ranges of
//! BGPConfiguration `serviceClusterIPs`, `serviceExternalIPs` and `serviceLoadBalancerIPs`;
//! a Service whose traffic must stay on a node with an endpoint (`externalTrafficPolicy:
//! Local`, or `internalTrafficPolicy: Local` for its cluster IPs) also gets its addresses
//! inside those ranges advertised as host routes (/32, /128) by exactly the nodes that have
//! a ready endpoint of it (EndpointSlices), withdrawn when the last one goes.
//!
//! With `serviceLoadBalancerAggregation: Disabled` the LoadBalancer ranges themselves are
//! not advertised: each LoadBalancer ingress IP inside them is, as a host route, by every
//! node (by the nodes with a ready endpoint for `externalTrafficPolicy: Local`).
//!
//! Nodes never learn service routes from peers (the import filter refuses prefixes inside
//! the ranges): another node's host route would otherwise be passed on to the ToR by every
//! node, and a learned range would become a kernel route that loops. Traffic reaching a
//! service address is kube-proxy's to deliver; Serval only attracts it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::resources::BGPConfigurationSpec;

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// BGPConfiguration's service ranges (the `default` configuration's, as Calico reads them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRanges {
    /// `serviceClusterIPs`.
    pub cluster: Vec<IpNet>,
    /// `serviceExternalIPs`.
    pub external: Vec<IpNet>,
    /// `serviceLoadBalancerIPs`.
    pub load_balancer: Vec<IpNet>,
    /// `serviceLoadBalancerAggregation: Disabled`: LoadBalancer addresses one by one.
    pub load_balancer_one_by_one: bool,
}

impl ServiceRanges {
    /// The ranges of `spec` (entries that do not parse are left out; validation names them).
    pub fn from_config(spec: Option<&BGPConfigurationSpec>) -> ServiceRanges {
        let Some(spec) = spec else {
            return ServiceRanges::default();
        };
        let nets = |list: &[crate::resources::bgp::CidrEntry]| {
            list.iter().filter_map(|e| e.cidr.get()).collect::<Vec<_>>()
        };
        ServiceRanges {
            cluster: nets(&spec.service_cluster_ips),
            external: nets(&spec.service_external_ips),
            load_balancer: nets(&spec.service_load_balancer_ips),
            load_balancer_one_by_one: spec.service_load_balancer_aggregation
                == Some(crate::resources::bgp::Aggregation::Disabled),
        }
    }

    /// Every range.
    pub fn all(&self) -> impl Iterator<Item = &IpNet> {
        self.cluster
            .iter()
            .chain(&self.external)
            .chain(&self.load_balancer)
    }

    /// Whether `prefix` lies inside a range (a route there is a service route).
    pub fn covers(&self, prefix: &IpNet) -> bool {
        self.all().any(|r| r.contains(prefix))
    }
}

/// `namespace/name` of the Services with a ready endpoint on `node`.
fn services_with_local_endpoints<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    node: &str,
) -> BTreeSet<String> {
    slices
        .filter(|s| {
            s.endpoints.iter().flatten().any(|e| {
                e.node_name.as_deref() == Some(node)
                    // The API: an unset `ready` is to be read as ready.
                    && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
            })
        })
        .filter_map(|s| {
            let service = s.labels().get(SERVICE_NAME_LABEL)?;
            Some(format!("{}/{service}", s.namespace().unwrap_or_default()))
        })
        .collect()
}

fn host_route(text: &str) -> Option<IpNet> {
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

/// What `node` advertises for services: every range, and the host routes of its Local
/// Services' addresses inside the ranges.
pub fn service_exports<'a>(
    ranges: &ServiceRanges,
    services: impl Iterator<Item = &'a Service>,
    slices: impl Iterator<Item = &'a EndpointSlice>,
    node: &str,
) -> BTreeSet<IpNet> {
    if ranges.all().next().is_none() {
        return BTreeSet::new();
    }
    let mut out: BTreeSet<IpNet> = ranges
        .cluster
        .iter()
        .chain(&ranges.external)
        .copied()
        .collect();
    if !ranges.load_balancer_one_by_one {
        out.extend(ranges.load_balancer.iter().copied());
    }
    let local = services_with_local_endpoints(slices, node);
    let within = |list: &[IpNet], ip: IpNet| list.iter().any(|r| r.contains(&ip));
    for svc in services {
        let key = format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any());
        let Some(spec) = &svc.spec else { continue };
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let ingress_ips = || {
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref().and_then(host_route))
                .filter(|ip| within(&ranges.load_balancer, *ip))
        };
        // Without aggregation a Cluster-policy LoadBalancer address comes from every node.
        if ranges.load_balancer_one_by_one && !external_local {
            out.extend(ingress_ips());
        }
        if !local.contains(&key) {
            continue;
        }
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        if external_local || internal_local {
            let cluster_ips = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter());
            out.extend(
                cluster_ips
                    .filter_map(|ip| host_route(ip))
                    .filter(|ip| within(&ranges.cluster, *ip)),
            );
        }
        if external_local {
            out.extend(
                spec.external_ips
                    .iter()
                    .flatten()
                    .filter_map(|ip| host_route(ip))
                    .filter(|ip| within(&ranges.external, *ip)),
            );
            out.extend(ingress_ips());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> ServiceRanges {
        let spec: BGPConfigurationSpec = serde_json::from_value(serde_json::json!({
            "serviceClusterIPs": [{"cidr": "10.96.0.0/16"}],
            "serviceExternalIPs": [{"cidr": "198.51.100.0/24"}],
            "serviceLoadBalancerIPs": [{"cidr": "203.0.113.0/24"}],
        }))
        .unwrap();
        ServiceRanges::from_config(Some(&spec))
    }

    fn service(name: &str, etp: &str, itp: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                "externalIPs": ["198.51.100.7", "192.0.2.9"],
                "externalTrafficPolicy": etp, "internalTrafficPolicy": itp,
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}, {"ip": "192.0.2.10"}]}}
        }))
        .unwrap()
    }

    fn slice(service: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{service}-abc"), "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn exports(services: &[Service], slices: &[EndpointSlice], node: &str) -> Vec<String> {
        service_exports(&ranges(), services.iter(), slices.iter(), node)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const RANGES: [&str; 3] = ["10.96.0.0/16", "198.51.100.0/24", "203.0.113.0/24"];

    #[test]
    fn every_node_advertises_the_ranges_and_local_services_only_where_an_endpoint_is_ready() {
        let svc = service("web", "Local", "Cluster");
        let slices = [slice(
            "web",
            serde_json::json!([
                {"addresses": ["10.244.0.5"], "nodeName": "node-a", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.5"], "nodeName": "node-b", "conditions": {"ready": false}},
                {"addresses": ["10.244.2.5"], "nodeName": "node-c"},
            ]),
        )];
        let mut want_a: Vec<String> = RANGES.iter().map(ToString::to_string).collect();
        want_a.extend(["10.96.0.10/32", "198.51.100.7/32", "203.0.113.5/32"].map(String::from));
        want_a.sort();
        let with_routes = exports(std::slice::from_ref(&svc), &slices, "node-a");
        assert_eq!(
            with_routes, want_a,
            "addresses outside the ranges are not advertised"
        );
        assert_eq!(
            exports(std::slice::from_ref(&svc), &slices, "node-b"),
            RANGES,
            "not ready"
        );
        assert_eq!(
            exports(std::slice::from_ref(&svc), &slices, "node-c"),
            exports(std::slice::from_ref(&svc), &slices, "node-a"),
            "unset ready reads as ready"
        );
        assert_eq!(exports(std::slice::from_ref(&svc), &[], "node-a"), RANGES);
    }

    #[test]
    fn cluster_policy_services_are_covered_by_the_ranges_and_internal_local_adds_the_cluster_ip() {
        let local_here = [slice(
            "web",
            serde_json::json!([{"addresses": ["10.244.0.5"], "nodeName": "node-a"}]),
        )];
        assert_eq!(
            exports(
                &[service("web", "Cluster", "Cluster")],
                &local_here,
                "node-a"
            ),
            RANGES
        );
        let mut want: Vec<String> = RANGES.iter().map(ToString::to_string).collect();
        want.push("10.96.0.10/32".into());
        want.sort();
        assert_eq!(
            exports(&[service("web", "Cluster", "Local")], &local_here, "node-a"),
            want
        );
    }

    #[test]
    fn without_aggregation_load_balancer_addresses_go_one_by_one() {
        let mut one_by_one = ranges();
        one_by_one.load_balancer_one_by_one = true;
        let local_here = [slice(
            "local",
            serde_json::json!([{"addresses": ["10.244.0.5"], "nodeName": "node-a"}]),
        )];
        let services = [
            service("cluster", "Cluster", "Cluster"),
            service("local", "Local", "Cluster"),
        ];
        let exports_of = |node: &str| -> Vec<String> {
            service_exports(&one_by_one, services.iter(), local_here.iter(), node)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        // The Cluster service's address from every node, the range itself from none; the
        // Local one's (the same test address here) adds its cluster and external IPs on a.
        assert_eq!(
            exports_of("node-b"),
            ["10.96.0.0/16", "198.51.100.0/24", "203.0.113.5/32"]
        );
        assert_eq!(
            exports_of("node-a"),
            [
                "10.96.0.0/16",
                "10.96.0.10/32",
                "198.51.100.0/24",
                "198.51.100.7/32",
                "203.0.113.5/32"
            ]
        );
        // Only a Local service: its address only where an endpoint is.
        let only_local = [service("local", "Local", "Cluster")];
        let b: Vec<String> =
            service_exports(&one_by_one, only_local.iter(), local_here.iter(), "node-b")
                .iter()
                .map(ToString::to_string)
                .collect();
        assert_eq!(b, ["10.96.0.0/16", "198.51.100.0/24"]);
        // The ranges are still never learned from peers.
        assert!(one_by_one.covers(&"203.0.113.9/32".parse().unwrap()));
    }

    #[test]
    fn nothing_without_ranges() {
        let none = ServiceRanges::default();
        let svc = service("web", "Local", "Local");
        assert!(service_exports(&none, [&svc].into_iter(), [].into_iter(), "node-a").is_empty());
        assert!(!none.covers(&"10.96.0.10/32".parse().unwrap()));
        assert!(ranges().covers(&"10.96.0.10/32".parse().unwrap()));
        assert!(!ranges().covers(&"10.244.0.0/26".parse().unwrap()));
    }
}
