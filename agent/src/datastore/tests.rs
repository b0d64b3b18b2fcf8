//! The conformance suite against the in-memory backend and against the kube backend talking
//! to the fake API server; recorded core objects read through the kube backend; IPAM over a
//! datastore.

use k8s_openapi::api::core::v1::{Namespace, Node as CoreNode, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;

use super::*;
use crate::resources::{
    BlockAffinity, IPAMBlock, IPAMConfig, IPAMHandle, IPPool, IPReservation, Node, WorkloadEndpoint,
};

fn served_kinds() -> Vec<KindInfo> {
    vec![
        KindInfo::of::<IPPool>(),
        KindInfo::of::<WorkloadEndpoint>(),
        KindInfo::of::<Node>(),
        KindInfo::of::<IPAMBlock>(),
        KindInfo::of::<BlockAffinity>(),
        KindInfo::of::<IPAMHandle>(),
        KindInfo::of::<IPAMConfig>(),
        KindInfo::of::<IPReservation>(),
        KindInfo::of::<Pod>(),
        KindInfo::of::<Namespace>(),
        KindInfo::of::<CoreNode>(),
        KindInfo::of::<K8sNetworkPolicy>(),
        KindInfo::of::<Secret>(),
    ]
}

fn kube_over(store: &MemoryBackend) -> Datastore<KubeBackend> {
    Datastore::new(KubeBackend::new(kube_fake::client(
        store.clone(),
        served_kinds(),
    )))
}

#[tokio::test]
async fn memory_backend_conformance() {
    let store = MemoryBackend::new();
    let ds = Datastore::new(store.clone());
    conformance::crud_and_cas(&ds, "m").await;
    conformance::validation_guards_writes(&ds, "m").await;
    conformance::namespaced_lists(&ds, "m").await;
    conformance::watch_from_revision(&ds, "m").await;
    conformance::syncer_lists_watches_and_relists(&ds, "m", || async { store.expire_watches() })
        .await;
}

#[tokio::test]
async fn kube_backend_conformance_against_the_fake_api_server() {
    let store = MemoryBackend::new();
    let ds = kube_over(&store);
    conformance::crud_and_cas(&ds, "k").await;
    conformance::validation_guards_writes(&ds, "k").await;
    conformance::namespaced_lists(&ds, "k").await;
    conformance::watch_from_revision(&ds, "k").await;
    conformance::syncer_lists_watches_and_relists(&ds, "k", || async { store.expire_watches() })
        .await;
}

#[tokio::test]
async fn kube_watch_from_a_compacted_revision_is_expired() {
    let store = MemoryBackend::new();
    let ds = kube_over(&store);
    let (_, start) = ds.list::<IPPool>(None).await.unwrap();
    store.expire_watches();
    ds.backend()
        .create(
            &KindInfo::of::<IPPool>(),
            serde_json::json!({"apiVersion": "serval.dev/v1", "kind": "IPPool",
                               "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16"}}),
        )
        .await
        .unwrap();
    store.compact(2);
    // The API server answers 410 Gone, either at once or as the stream's first event.
    let first = match ds.backend().watch(&KindInfo::of::<IPPool>(), &start).await {
        Ok(mut stream) => futures::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        matches!(first, Err(DatastoreError::Expired(_))),
        "{first:?}"
    );
}

/// Loads `kubectl get -o json` recordings into the store behind the fake API server.
async fn load_recorded(store: &MemoryBackend) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/k8s");
    for (file, kind) in [
        ("namespaces.json", KindInfo::of::<Namespace>()),
        ("nodes.json", KindInfo::of::<CoreNode>()),
        ("pods.json", KindInfo::of::<Pod>()),
        ("networkpolicies.json", KindInfo::of::<K8sNetworkPolicy>()),
        ("secrets.json", KindInfo::of::<Secret>()),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        for item in list["items"].as_array().unwrap() {
            store.create(&kind, item.clone()).await.unwrap();
        }
    }
}

#[tokio::test]
async fn core_kinds_are_read_from_recorded_api_objects() {
    let store = MemoryBackend::new();
    load_recorded(&store).await;
    let ds = kube_over(&store);
    let (pods, _) = ds.list::<Pod>(Some("prod")).await.unwrap();
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    assert_eq!(
        pod.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.1.7")
    );
    let port = &pod.spec.as_ref().unwrap().containers[0]
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("http"), 8080)
    );
    let ns: Namespace = ds.get(None, "prod").await.unwrap().unwrap();
    assert_eq!(ns.metadata.labels.unwrap()["team"], "web");
    let node: CoreNode = ds.get(None, "worker-1").await.unwrap().unwrap();
    assert_eq!(
        node.metadata.labels.unwrap()["topology.kubernetes.io/zone"],
        "rack-a"
    );
    let (nps, _) = ds.list::<K8sNetworkPolicy>(None).await.unwrap();
    let rule = &nps[0].spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
    let peer = &rule.from.as_ref().unwrap()[0];
    assert!(
        peer.namespace_selector.is_some() && peer.pod_selector.is_some(),
        "AND peer kept"
    );
    assert_eq!(rule.ports.as_ref().unwrap()[1].end_port, Some(32768));
    // BGP passwords: a Secret in serval-node's namespace, data decoded to text.
    let secret: Secret = ds
        .get(Some("kube-system"), "bgp-secrets")
        .await
        .unwrap()
        .unwrap();
    let data = crate::calc::cache::secret_strings(&secret);
    assert_eq!(data["tor-password"], "s3cret-tor");
    assert_eq!(data["mesh"], "m3sh");
    let elsewhere: Option<Secret> = ds.get(Some("prod"), "bgp-secrets").await.unwrap();
    assert!(elsewhere.is_none(), "only the named namespace is read");
}

#[tokio::test]
async fn ipam_runs_over_the_memory_datastore() {
    conformance::ipam_basics(Datastore::new(MemoryBackend::new())).await;
}

#[tokio::test]
async fn ipam_runs_over_the_kube_datastore() {
    conformance::ipam_basics(kube_over(&MemoryBackend::new())).await;
}
