//! One agent's start against a loaded real API server (Kubernetes datastore): 100 Nodes
//! (Kubernetes and Serval), 5,000 Pods with their WorkloadEndpoints in 50 namespaces, 500
//! NetworkPolicies. Reports the time from start to `/readyz` (datastore in sync and the
//! dataplane applied; BGP not required, the 99 other nodes do not exist), the agent's peak
//! RSS, and what the start cost the API server: requests by verb and resource and bytes
//! returned (from the server's own `apiserver_request_total` and `apiserver_response_sizes`).
//!
//! Run: `cargo bench -p serval-integration --bench kube_startup` (or `bench/kube-startup`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use serval_agent::datastore::{AnyBackend, Datastore, KubeBackend};
use serval_agent::resources::ServalResource;
use serval_integration::kube::KubeApi;
use serval_integration::peers::Scratch;
use serval_integration::{Daemon, LoopbackForward, Netns, require};

const NODES: usize = 100;
const NAMESPACES: usize = 50;
const PODS_PER_NAMESPACE: usize = 100;
const POLICIES_PER_NAMESPACE: usize = 10;
/// Creates in flight at once while loading the API server.
const CONCURRENCY: usize = 32;

type Ds = Datastore<AnyBackend>;

async fn create_all<R: ServalResource>(ds: &Ds, objects: Vec<serde_json::Value>) {
    let n = objects.len();
    let t = Instant::now();
    futures::stream::iter(objects)
        .map(|v| async move {
            let o: R = serde_json::from_value(v).expect("object decodes");
            ds.create(&o).await.expect("create");
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    eprintln!(
        "  loaded {n} {} in {:.1} s",
        R::kind(&()),
        t.elapsed().as_secs_f64()
    );
}

fn node_ip(i: usize) -> String {
    format!("10.200.{}.{}", i / 250, i % 250 + 1)
}

async fn load(ds: &Ds) {
    use k8s_openapi::api::core::v1::{Namespace, Node as K8sNode, Pod, ServiceAccount};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serval_agent::resources::{Node, WorkloadEndpoint};
    let nodes = (0..NODES).map(|i| format!("n{i:03}"));
    create_all::<K8sNode>(
        ds,
        nodes
            .clone()
            .enumerate()
            .map(|(i, n)| {
                json!({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": n, "labels": {"rack": format!("r{}", i % 10)}}})
            })
            .collect(),
    )
    .await;
    create_all::<Node>(
        ds,
        nodes
            .clone()
            .enumerate()
            .skip(1)
            .map(|(i, n)| {
                json!({"apiVersion": "serval.dev/v1", "kind": "Node", "metadata": {"name": n},
                   "spec": {"bgp": {"ipv4Address": format!("{}/16", node_ip(i))}}})
            })
            .collect(),
    )
    .await;
    create_all::<Namespace>(
        ds,
        (0..NAMESPACES)
            .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns{n:02}"), "labels": {"team": format!("t{}", n % 5)}}}))
            .collect(),
    )
    .await;
    // What the controller-manager would make: each namespace's default ServiceAccount.
    create_all::<ServiceAccount>(
        ds,
        (0..NAMESPACES)
            .map(|n| json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": format!("ns{n:02}")}}))
            .collect(),
    )
    .await;
    let mut pods = Vec::new();
    let mut weps = Vec::new();
    for n in 0..NAMESPACES {
        for p in 0..PODS_PER_NAMESPACE {
            let i = n * PODS_PER_NAMESPACE + p;
            let node = format!("n{:03}", i % NODES);
            let (ns, pod) = (format!("ns{n:02}"), format!("pod{p:03}"));
            let app = format!("app{}", p % 10);
            pods.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "labels": {"app": app}},
                "spec": {"nodeName": node, "automountServiceAccountToken": false,
                         "containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]}}));
            weps.push(json!({"apiVersion": "serval.dev/v1", "kind": "WorkloadEndpoint",
                "metadata": {"name": format!("{node}-k8s-{pod}-eth0"), "namespace": ns, "labels": {"app": app}},
                "spec": {"orchestrator": "k8s", "node": node, "pod": pod, "endpoint": "eth0",
                         "interfaceName": format!("sv{i:011x}"),
                         "ipNetworks": [format!("10.244.{}.{}/32", i / 250, i % 250 + 1)]}}));
        }
    }
    create_all::<Pod>(ds, pods).await;
    create_all::<WorkloadEndpoint>(ds, weps).await;
    let mut policies = Vec::new();
    for n in 0..NAMESPACES {
        for k in 0..POLICIES_PER_NAMESPACE {
            policies.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("np{k}"), "namespace": format!("ns{n:02}")},
                "spec": {"podSelector": {"matchLabels": {"app": format!("app{k}")}},
                         "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app{}", (k + 1) % 10)}}},
                                               {"namespaceSelector": {"matchLabels": {"team": "t0"}}}],
                                      "ports": [{"port": "http"}]}]}}));
        }
    }
    create_all::<NetworkPolicy>(ds, policies).await;
}

fn vm_hwm_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let rt = serval_integration::bench_runtime();
    if !require::lab_ready("kube_startup bench", &["ip"]) {
        return;
    }
    let Some(api) = KubeApi::start("kube_startup bench") else {
        return;
    };
    api.apply_manifests(&["crds.yaml", "rbac.yaml"])
        .expect("install Serval");
    let ds = rt.block_on(async {
        Datastore::new(AnyBackend::Kubernetes(
            KubeBackend::connect_with(&api.admin.display().to_string())
                .await
                .expect("admin connection"),
        ))
    });
    eprintln!(
        "loading: {NODES} nodes, {} pods with endpoints, {} policies",
        NAMESPACES * PODS_PER_NAMESPACE,
        NAMESPACES * POLICIES_PER_NAMESPACE
    );
    rt.block_on(load(&ds));

    // The agent of node n000, configured as the DaemonSet does, in a namespace of its own.
    let scratch = Scratch::new("kube-startup");
    let ns = Netns::new("kstart").expect("namespace");
    // The node's uplink (a veth whose other end stays in the namespace: the 99 other nodes
    // do not exist, so nothing answers there).
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])
    .unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    ns.ip(&["link", "set", "eth0p", "up"]).unwrap();
    ns.addr("eth0", &format!("{}/16", node_ip(0))).unwrap();
    let _forward = LoopbackForward::start(&ns, api.port(), api.addr()).expect("forwarder");
    let token = api.token("kube-system", "serval-node");
    let kubeconfig = api.kubeconfig_with_token("serval-node", &token);
    let sa = scratch.path("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), &token).unwrap();
    std::fs::copy(api.ca(), sa.join("ca.crt")).unwrap();
    let bin = require::serval_bin("serval-node").display().to_string();
    let env = [
        "NODENAME=n000".to_string(),
        format!("SERVAL_VAR_DIR={}", scratch.path("var").display()),
        "SERVAL_HTTP_ADDRESS=127.0.0.1:9179".into(),
        "SERVAL_LOG=warn".into(),
        "DATASTORE_TYPE=kubernetes".into(),
        format!("IP={}/16", node_ip(0)),
        "SERVAL_READINESS_REQUIRES_BGP=false".into(),
        "POD_NAMESPACE=kube-system".into(),
        "KUBERNETES_SERVICE_HOST=127.0.0.1".into(),
        format!("KUBERNETES_SERVICE_PORT={}", api.port()),
        format!("KUBECONFIG={}", kubeconfig.display()),
        format!("SERVAL_SERVICE_ACCOUNT_DIR={}", sa.display()),
        format!("SERVAL_CNI_CONF_DIR={}", scratch.path("cni").display()),
    ];
    let mut argv: Vec<&str> = vec!["env"];
    argv.extend(env.iter().map(String::as_str));
    argv.extend([bin.as_str(), "run"]);

    let before = api.server_counts();
    let t0 = Instant::now();
    let agent = Daemon::start(&ns, "agent", &argv, &scratch.0).expect("start serval-node");
    let ready = loop {
        if ns.http_get("127.0.0.1:9179", "/readyz").is_ok() {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "never ready: {}",
            agent.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let after = api.server_counts();
    let pid = agent.pid().expect("agent pid");
    let rss_ready = vm_hwm_mib(pid);
    // Steady state: a few seconds later (peers retrying, the first resync).
    std::thread::sleep(Duration::from_secs(5));
    let rss_settled = vm_hwm_mib(pid);

    println!(
        "kube_startup: {NODES} nodes, {} pods + endpoints, {} NetworkPolicies",
        NAMESPACES * PODS_PER_NAMESPACE,
        NAMESPACES * POLICIES_PER_NAMESPACE
    );
    println!("  start to /readyz: {:.0} ms", ready.as_secs_f64() * 1e3);
    println!("  agent peak RSS: {rss_ready:.1} MiB at ready, {rss_settled:.1} MiB 5 s later");
    println!("  API server requests during the start (verb resource: count):");
    let mut total = 0.0;
    for (k, v) in &after.requests {
        let d = v - before.requests.get(k).copied().unwrap_or(0.0);
        if d >= 1.0 {
            total += d;
            println!("    {:<8} {:<22} {d:>5.0}", k.0, k.1);
        }
    }
    println!("    total {total:.0} (includes this bench's two /metrics reads)");
    println!("  bytes the API server returned, by resource:");
    for (k, v) in &after.bytes {
        let d = v - before.bytes.get(k).copied().unwrap_or(0.0);
        if d >= 1024.0 {
            println!("    {k:<22} {:>8.1} KiB", d / 1024.0);
        }
    }
}
