//! The etcd datastore in a real cluster: `serval-node controllers` with the controllers'
//! own token (manifests/controllers-etcd.yaml) copies what agents need from a real API
//! server into a real etcd, follows changes, removes what is gone, and cleans up after a
//! deleted Kubernetes Node.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use serval_agent::datastore::{AnyBackend, Datastore, EtcdBackend};
use serval_agent::resources::Node;
use serval_integration::kube::KubeApi;
use serval_integration::{Daemon, EtcdServer, eventually_async};

type Store = Datastore<AnyBackend>;

fn serval_node(name: &str, labels: serde_json::Value) -> Node {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "serval.dev/v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels}, "spec": {}
    }))
    .unwrap()
}

async fn labels_of<R: serval_agent::resources::ServalResource>(
    store: &Store,
    ns: Option<&str>,
    name: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    match store.get::<R>(ns, name).await {
        Ok(Some(o)) => {
            let v = serde_json::to_value(&o).map_err(|e| e.to_string())?;
            Ok(serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default())
        }
        Ok(None) => Err(format!("{name} not in etcd")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_copy_kubernetes_objects_into_etcd() {
    let Some(api) = KubeApi::start("the_controllers_copy_kubernetes_objects_into_etcd") else {
        return;
    };
    let Some(etcd) = EtcdServer::start("the_controllers_copy_kubernetes_objects_into_etcd") else {
        return;
    };
    api.apply_manifests(&["controllers-etcd.yaml"]).unwrap();
    let store: Store = Datastore::new(AnyBackend::Etcd(Box::new(
        EtcdBackend::connect(&[etcd.endpoint()]).await.unwrap(),
    )));
    let scratch = serval_integration::peers::Scratch::new("kube-etcd");
    let objects = scratch.path("objects.yaml");
    std::fs::write(
        &objects,
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {rack: r1}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {name: n2}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: a}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web-sa, namespace: shop, labels: {tier: front}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\n\
         spec: {nodeName: n1, serviceAccountName: web-sa, automountServiceAccountToken: false,\n\
         \x20 containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-web, namespace: shop}\n\
         spec: {podSelector: {matchLabels: {app: web}}, ingress: [{ports: [{port: http}]}]}\n",
    )
    .unwrap();
    api.kubectl_ok(&["apply", "-f", &objects.display().to_string()]);
    // The agents registered n1 (with a label of its own, SERVAL_NODE_LABELS) and n2; rr1 is
    // a reflector host with no Kubernetes Node. A Pod copied earlier is gone from the API.
    store
        .create(&serval_node("n1", serde_json::json!({"own": "1"})))
        .await
        .unwrap();
    store
        .create(&serval_node("n2", serde_json::json!({})))
        .await
        .unwrap();
    store
        .create(&serval_node("rr1", serde_json::json!({})))
        .await
        .unwrap();
    let stale: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "old", "namespace": "shop"},
        "spec": {"containers": [{"name": "c"}]}
    }))
    .unwrap();
    store.create(&stale).await.unwrap();

    // Two replicas with the controllers' own token (every 403 would show in their logs).
    let endpoints = format!("ETCD_ENDPOINTS={}", etcd.endpoint());
    let replicas: Vec<Daemon> = ["c1", "c2"]
        .iter()
        .map(|name| {
            api.start_controllers(
                name,
                &[
                    "DATASTORE_TYPE=etcdv3",
                    &endpoints,
                    "SERVAL_CONTROLLERS_INTERVAL=1",
                    "SERVAL_LOG=info",
                ],
                &scratch.0,
            )
        })
        .collect();
    let logs = || {
        replicas
            .iter()
            .map(|r| r.log_tail(30))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let wait = Duration::from_secs(40);

    // Everything the agents read arrives, as the agents decode it.
    eventually_async(
        "Pod, Namespace, ServiceAccount, NetworkPolicy and node labels in etcd",
        wait,
        || async {
            let pod = store
                .get::<Pod>(Some("shop"), "web")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("pod not copied")?;
            let spec = pod.spec.ok_or("no spec")?;
            let port = spec.containers[0].ports.as_ref().ok_or("no ports")?[0].clone();
            if port.name.as_deref() != Some("http")
                || spec.service_account_name.as_deref() != Some("web-sa")
            {
                return Err(format!("{port:?} {:?}", spec.service_account_name));
            }
            if pod.status.is_some() || pod.metadata.managed_fields.is_some() {
                return Err("status or managed fields copied".into());
            }
            let ns = labels_of::<Namespace>(&store, None, "shop").await?;
            let sa = labels_of::<ServiceAccount>(&store, Some("shop"), "web-sa").await?;
            let np = store
                .get::<K8sNetworkPolicy>(Some("shop"), "allow-web")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("policy not copied")?;
            let n1 = labels_of::<Node>(&store, None, "n1").await?;
            let stale_gone = store
                .get::<Pod>(Some("shop"), "old")
                .await
                .map_err(|e| e.to_string())?
                .is_none();
            let ok = ns.get("team").map(String::as_str) == Some("a")
                && sa.get("tier").map(String::as_str) == Some("front")
                && np.spec.is_some_and(|s| s.ingress.is_some())
                && n1.get("rack").map(String::as_str) == Some("r1")
                && n1.get("own").map(String::as_str) == Some("1")
                && stale_gone;
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "ns {ns:?} sa {sa:?} n1 {n1:?} stale gone {stale_gone}"
                ))
            }
        },
        logs,
    )
    .await;

    // Changes follow: a Pod relabelled, a node label replaced, a policy deleted.
    api.kubectl_ok(&[
        "label",
        "pod",
        "web",
        "-n",
        "shop",
        "app=api",
        "--overwrite",
    ]);
    api.kubectl_ok(&["label", "node", "n1", "rack-", "zone=z"]);
    api.kubectl_ok(&["delete", "networkpolicy", "allow-web", "-n", "shop"]);
    eventually_async(
        "the changes reach etcd",
        wait,
        || async {
            let pod = labels_of::<Pod>(&store, Some("shop"), "web").await?;
            let n1 = labels_of::<Node>(&store, None, "n1").await?;
            let np_gone = store
                .get::<K8sNetworkPolicy>(Some("shop"), "allow-web")
                .await
                .map_err(|e| e.to_string())?
                .is_none();
            let want_n1: std::collections::BTreeMap<String, String> =
                [("own".into(), "1".into()), ("zone".into(), "z".into())].into();
            if pod.get("app").map(String::as_str) == Some("api") && n1 == want_n1 && np_gone {
                Ok(())
            } else {
                Err(format!("pod {pod:?} n1 {n1:?} policy gone {np_gone}"))
            }
        },
        logs,
    )
    .await;

    // A deleted Kubernetes Node takes its Serval Node with it; the reflector host without a
    // Kubernetes Node stays.
    api.kubectl_ok(&["delete", "node", "n2"]);
    eventually_async(
        "n2's Serval Node removed",
        wait,
        || async {
            match store.get::<Node>(None, "n2").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
        logs,
    )
    .await;
    assert!(store.get::<Node>(None, "rr1").await.unwrap().is_some());
    assert!(store.get::<Node>(None, "n1").await.unwrap().is_some());
    let text = replicas.iter().map(Daemon::log_text).collect::<String>();
    assert!(
        !text.contains("code: 403") && !text.contains("orbidden"),
        "a request was refused: {}",
        logs()
    );
    // One replica did the copying; the other stood by.
    let active = replicas
        .iter()
        .filter(|r| r.log_text().contains("controllers leadership changed"))
        .count();
    assert_eq!(active, 1, "{}", logs());
}
