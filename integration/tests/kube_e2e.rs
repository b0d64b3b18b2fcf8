//! Three serval-node agents in Kubernetes mode on a real API server, configured as the
//! DaemonSet configures them: their ServiceAccount's token, the ConfigMap's settings, serval-cni
//! installed by `install-cni` with its own minted token. Pods are created through the API with
//! `spec.nodeName` set, their sandboxes made by calling serval-cni as the runtime would; pods
//! reach each other across nodes (native on one subnet, VXLAN across); NetworkPolicies
//! created through the API are enforced, and Pod and Namespace label changes through the API
//! change what is allowed. Then a node dies and its Kubernetes Node is deleted: the
//! controllers remove its Serval Node and the others drop their session to it, so their
//! `/readyz` recovers. (No kubelet or container runtime here: the test plays both.)

use std::net::SocketAddr;
use std::time::Duration;

use serval_integration::cluster::three_nodes_kubernetes;
use serval_integration::eventually;

/// Says what was just proven (shown with --nocapture, as scripts/kube-cluster runs it).
fn step(what: &str) {
    eprintln!("kube-cluster: {what}");
}

fn kubectl_apply(c: &serval_integration::cluster::Cluster, yaml: &str) {
    let scratch = serval_integration::peers::Scratch::new("kube-e2e-apply");
    let file = scratch.path("objects.yaml");
    std::fs::write(&file, yaml).unwrap();
    c.api()
        .kubectl_ok(&["apply", "-f", &file.display().to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_policies_and_labels_through_a_real_api_server() {
    let Some(mut c) =
        three_nodes_kubernetes("pods_policies_and_labels_through_a_real_api_server").await
    else {
        return;
    };
    kubectl_apply(
        &c,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: e2e, labels: {team: blue}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: e2e}\n",
    );
    // One pod per node, as the scheduler would place them, each with an app label.
    let mut pods = String::new();
    for (i, node) in ["node-a", "node-b", "node-c"].iter().enumerate() {
        pods += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: e2e, labels: {{app: p{i}}}}}\n\
             spec: {{nodeName: {node}, automountServiceAccountToken: false, containers: [{{name: c, image: serve}}]}}\n"
        );
    }
    kubectl_apply(&c, &pods);
    for (i, name) in ["p0", "p1", "p2"].iter().enumerate() {
        // The runtime's CNI ADD in namespace e2e (add_pod uses the e2e namespace).
        c.add_pod(i, name);
    }
    // The WorkloadEndpoints serval-cni recorded with its own identity are in the API.
    let weps = c.api().kubectl_ok(&[
        "get",
        "workloadendpoints.serval.dev",
        "-n",
        "e2e",
        "-o",
        "name",
    ]);
    assert_eq!(weps.lines().count(), 3, "{weps}");
    c.all_pairs_reach("no policy");
    step("three pods on three nodes (native on one subnet, VXLAN across) reach each other");

    // Only pods labelled access=yes may reach p2 (a Kubernetes NetworkPolicy through the API).
    kubectl_apply(
        &c,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: guard, namespace: e2e}\n\
         spec:\n  podSelector: {matchLabels: {app: p2}}\n  policyTypes: [Ingress]\n  ingress:\n\
         \x20 - from: [{podSelector: {matchLabels: {access: \"yes\"}}}]\n",
    );
    let ip_of = |name: &str| c.pods.iter().find(|p| p.1 == name).unwrap().3;
    let pod_ns = |name: &str| &c.pods.iter().find(|p| p.1 == name).unwrap().2;
    let reach = |from: &str, to: &str| -> Result<(), String> {
        pod_ns(from)
            .tcp_fetch(SocketAddr::new(ip_of(to), 8080))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let refused = |from: &str, to: &str| -> Result<(), String> {
        match reach(from, to) {
            Ok(()) => Err(format!("{from} still reaches {to}")),
            Err(_) => Ok(()),
        }
    };
    eventually(
        "the policy isolates p2",
        Duration::from_secs(30),
        || refused("p0", "p2"),
        || c.logs(),
    );
    assert!(reach("p0", "p1").is_ok(), "p1 is not governed");
    step("NetworkPolicy guard (from access=yes only) isolates p2; p1 stays open");
    // A Pod label change through the API lets p0 in.
    c.api()
        .kubectl_ok(&["label", "pod", "p0", "-n", "e2e", "access=yes"]);
    eventually(
        "labelled p0 reaches p2",
        Duration::from_secs(30),
        || reach("p0", "p2"),
        || c.logs(),
    );
    assert!(refused("p1", "p2").is_ok(), "p1 still may not");
    step("kubectl label pod p0 access=yes: p0 reaches p2, p1 still may not");
    // A policy by namespace: p2 also admits pods of namespaces labelled trusted=true; the
    // Namespace label change through the API is what opens it.
    kubectl_apply(
        &c,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: guard, namespace: e2e}\n\
         spec:\n  podSelector: {matchLabels: {app: p2}}\n  policyTypes: [Ingress]\n  ingress:\n\
         \x20 - from: [{namespaceSelector: {matchLabels: {trusted: \"true\"}}}]\n",
    );
    eventually(
        "p0 no longer admitted by label alone",
        Duration::from_secs(30),
        || refused("p0", "p2"),
        || c.logs(),
    );
    c.api()
        .kubectl_ok(&["label", "namespace", "e2e", "trusted=true"]);
    eventually(
        "the namespace label admits e2e's pods",
        Duration::from_secs(30),
        || reach("p1", "p2"),
        || c.logs(),
    );
    step("kubectl label namespace e2e trusted=true: the namespaceSelector admits e2e's pods");
    node_deletion_leaves_no_dead_peer(&mut c);
    step("node-c died and was deleted: the controllers removed it, node-a and node-b are ready");
}

/// node-c's machine dies and an operator deletes its Node: the controllers (their own
/// token, manifests/controllers.yaml) remove its Serval Node, and node-a and node-b stop
/// peering with it, so their `/readyz` (which requires every session up) recovers.
fn node_deletion_leaves_no_dead_peer(c: &mut serval_integration::cluster::Cluster) {
    // The kubelets' Node objects, which the controllers take as the live nodes.
    kubectl_apply(
        c,
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {name: node-b}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {name: node-c}\n",
    );
    c.api().apply_manifests(&["controllers.yaml"]).unwrap();
    let logs = serval_integration::peers::Scratch::new("kube-e2e-ctrl");
    let controllers = c
        .api()
        .start_controllers("c1", &["SERVAL_CONTROLLERS_INTERVAL=1"], &logs.0);
    let node_c_ip = c.nodes[2].ip.split('/').next().unwrap().to_string();
    // The machine dies: its agent stops, and the others' sessions to it go down.
    drop(c.nodes[2].agent.take());
    let c = &*c;
    let context = || format!("{}\n{}", c.logs(), controllers.log_tail(30));
    let readyz = |i: usize| c.nodes[i].ns.http_get("127.0.0.1:9179", "/readyz");
    eventually(
        "node-a not ready while its peer node-c is down",
        Duration::from_secs(30),
        || match readyz(0) {
            Err(e) if e.to_string().contains("503") => Ok(()),
            other => Err(format!("{other:?}")),
        },
        context,
    );
    c.api().kubectl_ok(&["delete", "node", "node-c"]);
    for i in [0, 1] {
        eventually(
            &format!("{} ready again without node-c", c.nodes[i].name),
            Duration::from_secs(40),
            || {
                readyz(i).map_err(|e| e.to_string())?;
                let status = c.nodes[i]
                    .ns
                    .http_get("127.0.0.1:9179", "/status")
                    .map_err(|e| e.to_string())?;
                if status.contains(&format!("\"{node_c_ip}\"")) {
                    Err(format!("node-c still a peer: {status}"))
                } else {
                    Ok(())
                }
            },
            context,
        );
    }
}
