//! etcd mode: the Kubernetes objects agents need, copied from the API server into etcd, as
//! Calico's kube-controllers do for its etcd datastore. Without it an etcd-mode cluster has
//! no Kubernetes NetworkPolicy, no Namespace or Pod labels, no node labels and no Services
//! or EndpointSlices for service advertisement.
//!
//! ```text
//!  API server ── Syncer (list + watch) ──► want (trimmed objects, Nodes' labels)
//!                                            │ InSync / resync tick: every key
//!                                            │ after that: the key that changed
//!                                            ▼
//!                              decide(want, have) ──► etcd (k8s keyspace; Serval Nodes' labels)
//! ```
//!
//! Objects are trimmed to what agents read, so a Pod's status updates cost no etcd write.
//! Node labels follow Calico's node controller: the labels that came from Kubernetes are
//! remembered in an annotation, so a label removed in Kubernetes is removed from the Serval
//! Node while labels set on the Serval Node itself stay.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Namespace as K8sNamespace, Node as K8sNode, Pod as K8sPod, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use serde_json::Value;

use crate::datastore::syncer::{SyncEvent, SyncStatus, Syncer};
use crate::datastore::trim::trim;
use crate::datastore::{
    AnyBackend, Backend, DatastoreError, KindInfo, KubeBackend, object_name, object_revision,
};
use crate::resources::Node;

/// The annotation on a Serval Node that lists the labels copied from its Kubernetes Node
/// (Calico's `projectcalico.org/kube-labels`); it also marks the node as a Kubernetes one.
pub const KUBE_LABELS_ANNOTATION: &str = "serval.dev/kube-labels";

/// The kinds copied whole (trimmed) into etcd's Kubernetes keyspace.
pub fn mirrored_kinds() -> Vec<KindInfo> {
    vec![
        KindInfo::of::<K8sNetworkPolicy>(),
        KindInfo::of::<K8sNamespace>(),
        KindInfo::of::<K8sPod>(),
        KindInfo::of::<ServiceAccount>(),
        KindInfo::of::<Service>(),
        KindInfo::of::<EndpointSlice>(),
    ]
}

/// `(plural, namespace, name)`: one object of one kind.
type Key = (String, Option<String>, String);

fn key_of(kind: &KindInfo, object: &Value) -> Key {
    let (ns, name) = object_name(object);
    (kind.plural.clone(), ns, name)
}

/// One write to etcd.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create the object.
    Create(Value),
    /// Replace the object held at revision `.metadata.resourceVersion`.
    Update(Value),
    /// Delete the object held at this revision.
    Delete(Option<String>),
}

/// What etcd needs so that it holds `want` (already trimmed) where it holds `have`.
pub fn decide(kind: &KindInfo, want: Option<&Value>, have: Option<&Value>) -> Option<Write> {
    match (want, have) {
        (None, None) => None,
        (None, Some(h)) => Some(Write::Delete(object_revision(h))),
        (Some(w), None) => Some(Write::Create(w.clone())),
        (Some(w), Some(h)) if *w == trim(kind, h) => None,
        (Some(w), Some(h)) => {
            let mut w = w.clone();
            if let Some(rv) = object_revision(h) {
                w["metadata"]["resourceVersion"] = Value::String(rv);
            }
            Some(Write::Update(w))
        }
    }
}

/// The Serval Node with `kube` as its Kubernetes labels, or `None` when nothing changes.
/// Labels that came from Kubernetes before and are gone there are removed; labels set on
/// the Serval Node directly stay (unless Kubernetes now sets the same key).
pub fn node_with_kube_labels(node: &Node, kube: &BTreeMap<String, String>) -> Option<Node> {
    let annotations = node.metadata.annotations.clone().unwrap_or_default();
    let before: Vec<String> = annotations
        .get(KUBE_LABELS_ANNOTATION)
        .and_then(|a| serde_json::from_str::<BTreeMap<String, String>>(a).ok())
        .map(|m| m.into_keys().collect())
        .unwrap_or_default();
    let mut labels = node.metadata.labels.clone().unwrap_or_default();
    for k in &before {
        labels.remove(k);
    }
    labels.extend(kube.iter().map(|(k, v)| (k.clone(), v.clone())));
    let record = serde_json::to_string(kube).expect("labels serialise");
    if node.metadata.labels.clone().unwrap_or_default() == labels
        && annotations.get(KUBE_LABELS_ANNOTATION) == Some(&record)
    {
        return None;
    }
    let mut next = node.clone();
    next.metadata.labels = Some(labels);
    next.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(KUBE_LABELS_ANNOTATION.into(), record);
    Some(next)
}

/// Whether a Serval Node belongs to a Kubernetes Node (its labels were copied from one).
pub fn is_kubernetes_node(node: &Node) -> bool {
    node.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(KUBE_LABELS_ANNOTATION))
}

/// The copy's state: what the API server holds, and the Kubernetes Nodes' labels.
#[derive(Debug, Default)]
struct Want {
    objects: BTreeMap<Key, Value>,
    node_labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Want {
    fn apply(&mut self, event: &SyncEvent) {
        match event {
            SyncEvent::Upsert { kind, object } if kind.kind == "Node" => {
                let (_, name) = object_name(object);
                let labels = object["metadata"]["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                self.node_labels.insert(name, labels);
            }
            SyncEvent::Delete { kind, name, .. } if kind.kind == "Node" => {
                self.node_labels.remove(name);
            }
            SyncEvent::Upsert { kind, object } => {
                self.objects
                    .insert(key_of(kind, object), trim(kind, object));
            }
            SyncEvent::Delete {
                kind,
                namespace,
                name,
            } => {
                self.objects
                    .remove(&(kind.plural.clone(), namespace.clone(), name.clone()));
            }
            SyncEvent::Status(_) => {}
        }
    }
}

/// Writes one decision; a conflict (someone wrote in between) is left to the next resync.
async fn write(
    store: &AnyBackend,
    kind: &KindInfo,
    key: &Key,
    w: Write,
) -> Result<(), DatastoreError> {
    let r = match w {
        Write::Create(v) => store.create(kind, v).await.map(drop),
        Write::Update(v) => store.update(kind, v).await.map(drop),
        Write::Delete(rev) => {
            store
                .delete(kind, key.1.as_deref(), &key.2, rev.as_deref())
                .await
        }
    };
    match r {
        Err(DatastoreError::NotFound { .. }) => Ok(()),
        other => other,
    }
}

/// Brings etcd's copy of one kind in line with `want`; returns the number of writes.
async fn reconcile_kind(
    store: &AnyBackend,
    kind: &KindInfo,
    want: &Want,
) -> Result<usize, DatastoreError> {
    let have: BTreeMap<Key, Value> = store
        .list(kind, None)
        .await?
        .items
        .into_iter()
        .map(|o| (key_of(kind, &o), o))
        .collect();
    let mut writes = 0;
    let wanted = want.objects.iter().filter(|(k, _)| k.0 == kind.plural);
    let mut keys: Vec<&Key> = wanted.map(|(k, _)| k).collect();
    keys.extend(have.keys().filter(|k| !want.objects.contains_key(*k)));
    for key in keys {
        if let Some(w) = decide(kind, want.objects.get(key), have.get(key)) {
            write(store, kind, key, w).await?;
            writes += 1;
        }
    }
    Ok(writes)
}

/// Brings one key in line after a change in the API server.
async fn reconcile_key(
    store: &AnyBackend,
    kind: &KindInfo,
    key: &Key,
    want: &Want,
) -> Result<usize, DatastoreError> {
    let have = store.get(kind, key.1.as_deref(), &key.2).await?;
    match decide(kind, want.objects.get(key), have.as_ref()) {
        Some(w) => write(store, kind, key, w).await.map(|()| 1),
        None => Ok(0),
    }
}

/// Copies the Kubernetes Nodes' labels onto the Serval Nodes of the same name (`only`: one
/// node, else all); returns the number of writes.
async fn reconcile_node_labels(
    store: &AnyBackend,
    want: &Want,
    only: Option<&str>,
) -> Result<usize, DatastoreError> {
    let kind = KindInfo::of::<Node>();
    let nodes: Vec<Value> = match only {
        Some(name) => store.get(&kind, None, name).await?.into_iter().collect(),
        None => store.list(&kind, None).await?.items,
    };
    let mut writes = 0;
    for raw in nodes {
        let (_, name) = object_name(&raw);
        let node: Node = match serde_json::from_value(raw) {
            Ok(n) => n,
            Err(e) => {
                // One unreadable Node must not stop the others' labels.
                tracing::warn!(node = %name, error = %e, "Serval Node does not decode; labels not copied");
                continue;
            }
        };
        let Some(labels) = want.node_labels.get(&name) else {
            continue;
        };
        if let Some(next) = node_with_kube_labels(&node, labels) {
            let v = serde_json::to_value(&next).expect("node serialises");
            match store.update(&kind, v).await {
                Ok(_) => writes += 1,
                Err(DatastoreError::Conflict { .. } | DatastoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(writes)
}

/// Everything once: every mirrored kind and every node's labels.
async fn reconcile_all(store: &AnyBackend, want: &Want) -> Result<usize, DatastoreError> {
    let mut writes = 0;
    for kind in mirrored_kinds() {
        writes += reconcile_kind(store, &kind, want).await?;
    }
    writes += reconcile_node_labels(store, want, None).await?;
    Ok(writes)
}

/// Runs the copy until dropped (the caller drops it when this replica loses the Lease).
/// Every key is reconciled when the API server's picture is complete and then every
/// `resync`; in between, each change is written as it arrives.
pub async fn run(api: KubeBackend, store: AnyBackend, resync: Duration) {
    let mut kinds = mirrored_kinds();
    kinds.push(KindInfo::of::<K8sNode>());
    let (_syncer, mut events) = Syncer::start(api, kinds);
    let mut want = Want::default();
    let mut in_sync = false;
    let mut dirty = false;
    let mut tick = tokio::time::interval(resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let full = tokio::select! {
            e = events.recv() => {
                let Some(e) = e else { return };
                want.apply(&e);
                match &e {
                    SyncEvent::Status(s) => {
                        in_sync = *s == SyncStatus::InSync;
                        in_sync
                    }
                    _ if !in_sync => false,
                    SyncEvent::Upsert { kind, object } if kind.kind == "Node" => {
                        let (_, name) = object_name(object);
                        report(reconcile_node_labels(&store, &want, Some(&name)).await, &mut dirty);
                        false
                    }
                    SyncEvent::Delete { kind, .. } if kind.kind == "Node" => false,
                    SyncEvent::Upsert { kind, object } => {
                        let key = key_of(kind, object);
                        report(reconcile_key(&store, kind, &key, &want).await, &mut dirty);
                        false
                    }
                    SyncEvent::Delete { kind, namespace, name } => {
                        let key = (kind.plural.clone(), namespace.clone(), name.clone());
                        report(reconcile_key(&store, kind, &key, &want).await, &mut dirty);
                        false
                    }
                }
            }
            _ = tick.tick() => in_sync,
        };
        if full || (dirty && in_sync) {
            dirty = false;
            match reconcile_all(&store, &want).await {
                Ok(n) if n > 0 => {
                    tracing::info!(writes = n, "etcd copy of Kubernetes objects repaired")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "etcd copy of Kubernetes objects failed; will retry");
                    dirty = true;
                }
            }
        }
    }
}

fn report(r: Result<usize, DatastoreError>, dirty: &mut bool) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "copying a Kubernetes object into etcd failed; will resync");
        *dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::trim::test_objects::{pod, pod_kind};
    use serde_json::json;

    #[test]
    fn only_what_agents_read_causes_a_write() {
        let kind = pod_kind();
        let want = trim(&kind, &pod(json!({"app": "web"}), "Running"));
        let mut stored = want.clone();
        stored["metadata"]["resourceVersion"] = json!("41");
        // A status change in the API server: nothing to write.
        let again = trim(&kind, &pod(json!({"app": "web"}), "Succeeded"));
        assert_eq!(decide(&kind, Some(&again), Some(&stored)), None);
        // A label change: an update at the stored revision.
        let relabelled = trim(&kind, &pod(json!({"app": "api"}), "Running"));
        match decide(&kind, Some(&relabelled), Some(&stored)) {
            Some(Write::Update(v)) => {
                assert_eq!(v["metadata"]["resourceVersion"], "41");
                assert_eq!(v["metadata"]["labels"]["app"], "api");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(&kind, None, Some(&stored)),
            Some(Write::Delete(Some("41".into())))
        );
        assert!(matches!(
            decide(&kind, Some(&want), None),
            Some(Write::Create(_))
        ));
        assert_eq!(decide(&kind, None, None), None);
    }

    #[test]
    fn a_network_policy_keeps_its_spec() {
        let kind = KindInfo::of::<K8sNetworkPolicy>();
        let np = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "prod", "generation": 3},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
        let t = trim(&kind, &np);
        assert_eq!(t["spec"], np["spec"]);
        assert!(t["metadata"].get("generation").is_none());
        serde_json::from_value::<K8sNetworkPolicy>(t).expect("decodes");
    }

    fn node(labels: &[(&str, &str)], kube: Option<&str>) -> Node {
        let mut n: Node = serde_json::from_value(json!({
            "apiVersion": "serval.dev/v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {}
        }))
        .unwrap();
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        if let Some(k) = kube {
            n.metadata.annotations =
                Some([(KUBE_LABELS_ANNOTATION.to_string(), k.to_string())].into());
        }
        n
    }

    fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn node_labels_follow_kubernetes_and_keep_their_own() {
        // First copy: Kubernetes' labels join the node's own (set with SERVAL_NODE_LABELS).
        let n = node(&[("own", "1")], None);
        assert!(!is_kubernetes_node(&n));
        let next = node_with_kube_labels(&n, &labels(&[("rack", "r1")])).expect("a write");
        assert_eq!(
            next.metadata.labels.clone().unwrap(),
            labels(&[("own", "1"), ("rack", "r1")])
        );
        assert!(is_kubernetes_node(&next));
        // Nothing changed: no write.
        assert_eq!(
            node_with_kube_labels(&next, &labels(&[("rack", "r1")])),
            None
        );
        // rack removed and zone added in Kubernetes: rack goes, own stays.
        let after = node_with_kube_labels(&next, &labels(&[("zone", "z")])).expect("a write");
        assert_eq!(
            after.metadata.labels.unwrap(),
            labels(&[("own", "1"), ("zone", "z")])
        );
        // A label set on the Serval Node that Kubernetes did not set is never touched.
        let edited = node(&[("own", "2"), ("rack", "r1")], Some(r#"{"rack":"r1"}"#));
        assert_eq!(
            node_with_kube_labels(&edited, &labels(&[("rack", "r1")])),
            None
        );
    }
}
