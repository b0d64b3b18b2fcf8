//! Kubernetes objects reduced to what Serval reads of them: the agent keeps Pods this way
//! (a Pod's status churn then changes nothing it holds) and the etcd-mode controllers copy
//! them this way (and so write nothing for a status change).

use serde_json::{Map, Value, json};

use super::KindInfo;

/// What agents read of an object: identity, labels and (per kind) the spec fields that
/// matter; never status or server-managed metadata.
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
}
