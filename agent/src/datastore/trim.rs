//! Kubernetes objects reduced to what Serval reads of them: the agent keeps Pods this way
//! (a Pod's status churn then changes nothing it holds) and the etcd-mode controllers copy
//! them this way (and so write nothing for a status change).

use serde_json::{Map, Value, json};

use super::KindInfo;

/// Whether agents keep `kind` trimmed (the kinds with a rule below that drops what churns).
pub fn trims(kind: &KindInfo) -> bool {
    matches!(kind.kind.as_str(), "Pod" | "Service" | "EndpointSlice")
}

/// Copies the fields named from `from` into `to`, skipping those unset.
fn copy_fields(from: &Value, to: &mut Value, fields: &[&str]) {
    for f in fields {
        if let Some(v) = from.get(*f).filter(|v| !v.is_null()) {
            to[*f] = v.clone();
        }
    }
}

/// What agents read of an object: identity, labels and (per kind) the spec fields that
/// matter; never server-managed metadata, and status only where it carries addresses.
pub fn trim(kind: &KindInfo, object: &Value) -> Value {
    let meta = &object["metadata"];
    let mut m = Map::new();
    for f in ["name", "namespace", "uid", "labels"] {
        if let Some(v) = meta.get(f).filter(|v| !v.is_null()) {
            m.insert(f.into(), v.clone());
        }
    }
    let mut out = json!({
        "apiVersion": kind.api_version(),
        "kind": kind.kind,
        "metadata": Value::Object(m),
    });
    match kind.kind.as_str() {
        "NetworkPolicy" => out["spec"] = object["spec"].clone(),
        "Pod" => {
            let spec = &object["spec"];
            let containers: Vec<Value> = spec["containers"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            let mut t = json!({"name": c["name"]});
                            if let Some(p) = c.get("ports").filter(|p| !p.is_null()) {
                                t["ports"] = p.clone();
                            }
                            t
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut s = json!({"containers": containers});
            for f in ["nodeName", "serviceAccountName"] {
                if let Some(v) = spec.get(f).filter(|v| !v.is_null()) {
                    s[f] = v.clone();
                }
            }
            out["spec"] = s;
        }
        // Service advertisement reads the addresses and the traffic policies, and the
        // LoadBalancer ingress addresses from status.
        "Service" => {
            let mut s = json!({});
            copy_fields(
                &object["spec"],
                &mut s,
                &[
                    "type",
                    "clusterIP",
                    "clusterIPs",
                    "externalIPs",
                    "externalTrafficPolicy",
                    "internalTrafficPolicy",
                ],
            );
            out["spec"] = s;
            let ingress: Vec<Value> = object["status"]["loadBalancer"]["ingress"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|i| i.get("ip").filter(|v| !v.is_null()))
                        .map(|ip| json!({"ip": ip}))
                        .collect()
                })
                .unwrap_or_default();
            if !ingress.is_empty() {
                out["status"] = json!({"loadBalancer": {"ingress": ingress}});
            }
        }
        // Which node each endpoint is on and whether it is ready (addresses are required by
        // the type and kept).
        "EndpointSlice" => {
            copy_fields(object, &mut out, &["addressType"]);
            let endpoints: Vec<Value> = object["endpoints"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|e| {
                            let mut t = json!({"addresses": e["addresses"]});
                            copy_fields(e, &mut t, &["nodeName"]);
                            if let Some(ready) = e["conditions"].get("ready") {
                                t["conditions"] = json!({"ready": ready});
                            }
                            t
                        })
                        .collect()
                })
                .unwrap_or_default();
            out["endpoints"] = Value::Array(endpoints);
        }
        _ => {}
    }
    out
}

/// Objects the tests of trimming and of the etcd copy share.
#[cfg(test)]
pub(crate) mod test_objects {
    use super::*;
    use k8s_openapi::api::core::v1::Pod as K8sPod;

    /// The Pod kind.
    pub fn pod_kind() -> KindInfo {
        KindInfo::of::<K8sPod>()
    }

    /// A Pod as the API server returns it, with server-managed metadata and a status.
    pub fn pod(labels: Value, phase: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "prod", "uid": "u1", "labels": labels,
                         "resourceVersion": "7", "managedFields": [{"manager": "kubectl"}]},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa", "dnsPolicy": "ClusterFirst",
                     "containers": [{"name": "c", "image": "x",
                                     "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"phase": phase},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::test_objects::{pod, pod_kind};
    use super::*;
    use k8s_openapi::api::core::v1::Pod as K8sPod;

    #[test]
    fn a_pod_is_trimmed_to_what_agents_read() {
        let t = trim(&pod_kind(), &pod(json!({"app": "web"}), "Running"));
        assert_eq!(
            t,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web", "namespace": "prod", "uid": "u1", "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "serviceAccountName": "sa",
                         "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]},
            })
        );
        // It still reads as a Pod.
        serde_json::from_value::<K8sPod>(t).expect("a trimmed pod decodes");
    }

    #[test]
    fn a_status_change_trims_to_the_same_pod() {
        let kind = pod_kind();
        assert_eq!(
            trim(&kind, &pod(json!({"app": "web"}), "Running")),
            trim(&kind, &pod(json!({"app": "web"}), "Succeeded"))
        );
    }

    #[test]
    fn services_and_endpoint_slices_keep_what_advertisement_reads() {
        use k8s_openapi::api::core::v1::Service;
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "prod", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "externalTrafficPolicy": "Local", "selector": {"app": "web"},
                     "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5", "ipMode": "VIP"}]}},
        });
        let t = trim(&KindInfo::of::<Service>(), &svc);
        assert_eq!(
            t,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "prod"},
                "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                         "clusterIPs": ["10.96.0.10"], "externalTrafficPolicy": "Local"},
                "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}},
            })
        );
        serde_json::from_value::<Service>(t).expect("a trimmed Service decodes");

        let kind = KindInfo::of::<EndpointSlice>();
        let slice = |port: u16, ready: bool| {
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-x", "namespace": "prod",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.0.5"], "nodeName": "node-a",
                               "conditions": {"ready": ready, "serving": ready},
                               "targetRef": {"kind": "Pod", "name": "web-1"}}],
                "ports": [{"port": port}],
            })
        };
        let t = trim(&kind, &slice(80, true));
        assert_eq!(
            t,
            trim(&kind, &slice(8080, true)),
            "ports do not matter here"
        );
        assert_ne!(t, trim(&kind, &slice(80, false)), "readiness does");
        serde_json::from_value::<EndpointSlice>(t).expect("a trimmed EndpointSlice decodes");
    }
}
