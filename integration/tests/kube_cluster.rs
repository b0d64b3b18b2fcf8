//! Serval against a real kube-apiserver (built from the pinned Kubernetes module by
//! scripts/setup): the manifests pass the server's own validation, and the agent's
//! ServiceAccount, with a token from the TokenRequest API, can do what the datastore needs and
//! nothing it should not.

use std::path::{Path, PathBuf};

use serval_agent::datastore::{Datastore, KubeBackend, conformance};
use serval_integration::kube::KubeApi;

fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(name)
}

fn apply(api: &KubeApi, file: &Path, extra: &[&str]) -> std::process::Output {
    let path = file.display().to_string();
    let mut args = vec!["apply", "--server-side", "-f", &path];
    args.extend(extra);
    api.kubectl(&args)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The CRDs, then everything else of the Kubernetes-datastore install.
fn install(api: &KubeApi) {
    api.apply_manifests(&[
        "crds.yaml",
        "rbac.yaml",
        "serval-config.yaml",
        "serval-node.yaml",
        "route-reflector.yaml",
        "default-resources.yaml",
        "controllers.yaml",
    ])
    .unwrap();
}

#[test]
fn the_manifests_pass_a_real_api_servers_validation() {
    let Some(api) = KubeApi::start("the_manifests_pass_a_real_api_servers_validation") else {
        return;
    };
    install(&api);
    // The etcd variant shares names with the Kubernetes one: the server checks it without
    // storing it.
    let out = apply(
        &api,
        &manifest("serval-node-etcd.yaml"),
        &["--dry-run=server"],
    );
    assert!(
        out.status.success(),
        "serval-node-etcd.yaml: {}",
        text(&out)
    );
    let pools = api.kubectl_ok(&["get", "ippools.serval.dev", "-o", "name"]);
    assert!(pools.contains("default-ipv4-ippool"), "{pools}");
    let ds = api.kubectl_ok(&["get", "daemonsets", "-n", "kube-system", "-o", "name"]);
    assert!(
        ds.contains("serval-node") && ds.contains("serval-route-reflector"),
        "{ds}"
    );

    // The CRDs' structural schemas make the server refuse what Serval would: an unknown field
    // (kubectl asks for strict field validation) and a value of the wrong type.
    let scratch = serval_integration::peers::Scratch::new("kube-bad");
    for (name, spec, want) in [
        (
            "typo",
            "{cidr: 10.9.0.0/16, natOutgoin: true}",
            "natOutgoin",
        ),
        (
            "badtype",
            "{cidr: 10.9.0.0/16, blockSize: big}",
            "blockSize",
        ),
    ] {
        let file = scratch.path(&format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!("apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {{name: {name}}}\nspec: {spec}\n"),
        )
        .unwrap();
        let out = apply(&api, &file, &[]);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(text(&out).contains(want), "{name}: {}", text(&out));
    }
    // Calico fields Serval does not implement are refused by name by the server itself
    // (CEL rules in the CRDs), as servalctl refuses them.
    for (file, yaml, want) in [
        (
            "bind.yaml",
            "apiVersion: serval.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n\
             spec: {bindMode: NodeIP}\n",
            "spec.bindMode is not supported by Serval yet",
        ),
        (
            "hep.yaml",
            "apiVersion: serval.dev/v1\nkind: HostEndpoint\nmetadata: {name: hep}\n\
             spec: {node: n1, interfaceName: eth0, profiles: [kns.default]}\n",
            "spec.profiles is not supported by Serval yet",
        ),
        (
            "las.yaml",
            "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: las}\n\
             spec: {peerSelector: all(), localASNumber: 65100}\n",
            "spec.localASNumber is not supported by Serval yet",
        ),
        (
            "uses.yaml",
            "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: uses}\n\
             spec: {cidr: 10.77.0.0/16, allowedUses: [Tunnel]}\n",
            "spec.allowedUses is not supported by Serval yet",
        ),
        (
            "via.yaml",
            "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: via}\n\
             spec: {peerIP: 10.0.0.1, asNumber: 65000, reachableBy: 10.0.0.254}\n",
            "spec.reachableBy is not supported by Serval yet",
        ),
    ] {
        let path = scratch.path(file);
        std::fs::write(&path, yaml).unwrap();
        let out = apply(&api, &path, &[]);
        assert!(!out.status.success(), "{file} was accepted");
        assert!(text(&out).contains(want), "{file}: {}", text(&out));
    }
    // Without them, the same kinds are accepted.
    let fine = scratch.path("fine.yaml");
    std::fs::write(
        &fine,
        "apiVersion: serval.dev/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: fine}\n\
         spec: {selector: all(), doNotTrack: false}\n",
    )
    .unwrap();
    let out = apply(&api, &fine, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // A pool allowed both uses, listed, is accepted as the default is.
    let both = scratch.path("both.yaml");
    std::fs::write(
        &both,
        "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: both}\n\
         spec: {cidr: 10.78.0.0/16, allowedUses: [Workload, Tunnel]}\n",
    )
    .unwrap();
    let out = apply(&api, &both, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // Supported now: a session's own AS towards a peerIP, a node's IPv6 VXLAN endpoint.
    let now = scratch.path("now-supported.yaml");
    std::fs::write(
        &now,
        "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\n\
         spec: {peerIP: 10.0.0.1, asNumber: 65000, localASNumber: 65100}\n---\n\
         apiVersion: serval.dev/v1\nkind: Node\nmetadata: {name: v6vx}\n\
         spec: {ipv6VXLANTunnelAddr: 'fd00::1', vxlanTunnelMACAddrV6: '66:00:00:00:00:01'}\n",
    )
    .unwrap();
    let out = apply(&api, &now, &[]);
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_service_account_can_do_its_job_and_nothing_more() {
    let Some(api) = KubeApi::start("the_agents_service_account_can_do_its_job_and_nothing_more")
    else {
        return;
    };
    install(&api);
    let token = api.token("kube-system", "serval-node");
    let agent = api.kubeconfig_with_token("serval-node", &token);
    let as_agent = |args: &[&str]| {
        let out = api.kubectl_as(&agent, args);
        (out.status.success(), text(&out))
    };

    // The suite's IPAM checks assume its own pool alone.
    api.kubectl_ok(&["delete", "ippool.serval.dev", "default-ipv4-ippool"]);
    let agent_ds = Datastore::new(
        KubeBackend::connect_with(&agent.display().to_string())
            .await
            .expect("connect as serval-node"),
    );
    // The agent's start: list and watch every kind it syncs until in sync, no 403.
    let (syncer, mut events) = serval_agent::datastore::Syncer::start(
        agent_ds.backend().clone(),
        serval_agent::calc::cache::watched_kinds_for(true),
    );
    loop {
        let e = tokio::time::timeout(std::time::Duration::from_secs(30), events.recv())
            .await
            .expect("the agent's syncer reaches in-sync")
            .expect("syncer running");
        if e == serval_agent::datastore::SyncEvent::Status(
            serval_agent::datastore::SyncStatus::InSync,
        ) {
            break;
        }
    }
    drop(syncer);
    // Its IPAM (tunnel addresses), creating the pool and Node it may create.
    conformance::ipam_basics(agent_ds.clone()).await;

    // serval-cni's own identity, with a token the agent mints as it does at run time.
    let cni_token = serval_agent::node::cni_token::mint(
        &agent_ds.backend().client(),
        "kube-system",
        "serval-cni",
        std::time::Duration::from_secs(3600),
    )
    .await
    .expect("the agent mints serval-cni's token");
    // ...but nobody else's.
    assert!(
        serval_agent::node::cni_token::mint(
            &agent_ds.backend().client(),
            "kube-system",
            "serval-node",
            std::time::Duration::from_secs(3600),
        )
        .await
        .is_err()
    );
    let cni = api.kubeconfig_with_token("serval-cni", &cni_token);
    let cni_ds = Datastore::new(
        KubeBackend::connect_with(&cni.display().to_string())
            .await
            .expect("connect as serval-cni"),
    );
    // A pod's ADD and DEL as serval-cni makes them: address by handle, endpoint, release.
    api.kubectl_ok(&["create", "namespace", "prod"]);
    let ipam = serval_ipam::Ipam::new(cni_ds.clone());
    let req = serval_ipam::AssignRequest {
        handle: "k8s-pod-network.c-1".into(),
        node: "node-1".into(),
        num_v4: 1,
        ..serval_ipam::AssignRequest::default()
    };
    let got = ipam
        .auto_assign(&req)
        .await
        .expect("allocate as serval-cni");
    let wep: serval_agent::resources::WorkloadEndpoint =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "serval.dev/v1", "kind": "WorkloadEndpoint",
            "metadata": {"name": "node--1-k8s-web-eth0", "namespace": "prod"},
            "spec": {"node": "node-1", "pod": "web", "containerID": "c-1", "endpoint": "eth0",
                     "interfaceName": "sv0123456789a", "ipNetworks": [format!("{}/32", got.v4[0])]}
        }))
        .unwrap();
    cni_ds.create(&wep).await.expect("record the endpoint");
    cni_ds
        .delete::<serval_agent::resources::WorkloadEndpoint>(
            Some("prod"),
            "node--1-k8s-web-eth0",
            None,
        )
        .await
        .expect("remove the endpoint");
    assert_eq!(ipam.release_by_handle(&req.handle).await.unwrap(), got.v4);
    let as_cni = |args: &[&str]| {
        let out = api.kubectl_as(&cni, args);
        (out.status.success(), text(&out))
    };
    for args in [
        vec!["get", "secrets", "-A"],
        vec!["get", "pods", "-A"],
        vec!["create", "namespace", "x"],
        vec!["delete", "ippool.serval.dev", "pods"],
    ] {
        let (ok, out) = as_cni(&args);
        assert!(
            !ok && out.contains("Forbidden"),
            "serval-cni {args:?}: {out}"
        );
    }

    // What it reads: pods, namespaces, policies, nodes, its configuration.
    for what in [
        "pods",
        "namespaces",
        "networkpolicies.networking.k8s.io",
        "nodes",
        "bgppeers.serval.dev",
    ] {
        let (ok, out) = as_agent(&["get", what, "-A"]);
        assert!(ok, "serval-node cannot list {what}: {out}");
    }
    // The one Secret it may read is reachable (absent: NotFound, not Forbidden)...
    let (_, out) = as_agent(&["get", "secret", "serval-bgp-passwords", "-n", "kube-system"]);
    assert!(out.contains("NotFound"), "{out}");
    // A Kubernetes Node, as a kubelet registers it: readable, never written by the agent.
    let scratch = serval_integration::peers::Scratch::new("kube-node");
    let node = scratch.path("node.yaml");
    std::fs::write(&node, "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n").unwrap();
    api.kubectl_ok(&["create", "-f", &node.display().to_string()]);
    let (ok, out) = as_agent(&["get", "node", "n1"]);
    assert!(ok, "{out}");
    // ...and nothing else of the kind.
    for args in [
        vec!["get", "secrets", "-A"],
        vec!["get", "secrets", "-n", "kube-system"],
        vec!["get", "secret", "other", "-n", "kube-system"],
        vec!["delete", "ippool.serval.dev", "default-ipv4-ippool"],
        vec!["delete", "node", "n1"],
        vec!["label", "node", "n1", "rack=a"],
        vec!["create", "namespace", "intruder"],
        vec![
            "delete",
            "workloadendpoints.serval.dev",
            "-n",
            "prod",
            "some-pod",
        ],
    ] {
        let (ok, out) = as_agent(&args);
        assert!(!ok && out.contains("Forbidden"), "{args:?}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_servers_watches_resume_relist_after_compaction_and_survive_restarts() {
    let Some(api) = KubeApi::start("a_real_servers_watches_resume_relist") else {
        return;
    };
    install(&api);
    api.kubectl_ok(&["delete", "ippool.serval.dev", "default-ipv4-ippool"]);
    let ds = Datastore::new(
        KubeBackend::connect_with(&api.admin.display().to_string())
            .await
            .expect("connect as admin"),
    );
    // Compare-and-swap on resourceVersion: conflicts on stale updates and deletes.
    conformance::crud_and_cas(&ds, "k").await;
    // A watch from a list's resourceVersion sees every change in order; resuming from a
    // later one yields only what came after (bookmarks are skipped).
    conformance::watch_from_revision(&ds, "k").await;
    // Compaction makes the syncer's resume point too old (410 Gone) and the API server's
    // restart ends its watch: it relists, and a change made meanwhile is not lost.
    let etcd = serval_agent::datastore::EtcdBackend::connect(&[api.etcd_endpoint()])
        .await
        .expect("the API server's etcd");
    conformance::syncer_lists_watches_and_relists(&ds, "k", || async {
        serval_integration::etcd::compact_to_now(&etcd).await;
        tokio::task::block_in_place(|| api.restart());
    })
    .await;
}

/// Runs `kubectl` as the admin with a JSON merge patch on a Node's status (the kubelet's
/// part: its addresses).
fn node_with_address(api: &KubeApi, name: &str, ip: &str, labels: &str) {
    let scratch = serval_integration::peers::Scratch::new("kube-node");
    let file = scratch.path("node.yaml");
    std::fs::write(
        &file,
        format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n"),
    )
    .unwrap();
    api.kubectl_ok(&["create", "-f", &file.display().to_string()]);
    let patch = format!(
        r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{ip}"}},{{"type":"Hostname","address":"{name}"}}]}}}}"#
    );
    api.kubectl_ok(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_node_labels_drive_peering_without_a_restart() {
    use serval_integration::{Daemon, LoopbackForward, Netns, eventually, link, require};
    if !require::lab_ready("kubernetes_node_labels_drive_peering", &["ip"]) {
        return;
    }
    let Some(api) = KubeApi::start("kubernetes_node_labels_drive_peering") else {
        return;
    };
    install(&api);
    // No mesh: nodes peer only where a selector BGPPeer says so.
    let scratch = serval_integration::peers::Scratch::new("kube-peering");
    let cfg = scratch.path("bgp.yaml");
    std::fs::write(
        &cfg,
        "apiVersion: serval.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\n\
         spec: {nodeToNodeMeshEnabled: false, asNumber: 64512}\n---\n\
         apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: rack-a}\n\
         spec: {nodeSelector: \"rack == 'a'\", peerSelector: \"rack == 'a'\"}\n",
    )
    .unwrap();
    let out = apply(&api, &cfg, &["--force-conflicts"]);
    assert!(out.status.success(), "{}", text(&out));
    // Two nodes as a kubelet registers them: n1 in rack a, n2 in no rack yet.
    node_with_address(&api, "n1", "192.168.77.1", "rack: a");
    node_with_address(&api, "n2", "192.168.77.2", "");
    let token = api.token("kube-system", "serval-node");
    let kubeconfig = api.kubeconfig_with_token("agent", &token);
    let n1 = Netns::new("k8sn1").unwrap();
    let n2 = Netns::new("k8sn2").unwrap();
    link(&n1, "eth0", &n2, "eth0").unwrap();
    n1.addr("eth0", "192.168.77.1/24").unwrap();
    n2.addr("eth0", "192.168.77.2/24").unwrap();
    let bin = require::serval_bin("serval-node");
    let mut agents = Vec::new();
    let mut forwards = Vec::new();
    for (name, ns) in [("n1", &n1), ("n2", &n2)] {
        forwards.push(LoopbackForward::start(ns, api.port(), api.addr()).unwrap());
        let var = scratch.path(&format!("var-{name}"));
        let env = [
            format!("NODENAME={name}"),
            "DATASTORE_TYPE=kubernetes".into(),
            format!("KUBECONFIG={}", kubeconfig.display()),
            "IP_AUTODETECTION_METHOD=kubernetes-internal-ip".into(),
            format!("SERVAL_VAR_DIR={}", var.display()),
            "SERVAL_READINESS_REQUIRES_BGP=false".into(),
            "NO_DEFAULT_POOLS=true".into(),
            "SERVAL_LOG=info".into(),
        ];
        let mut args: Vec<String> = vec!["env".into()];
        args.extend(env);
        args.push(bin.display().to_string());
        args.push("run".into());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        agents.push(Daemon::start(ns, &format!("agent-{name}"), &argv, &scratch.0).unwrap());
    }
    let logs = || {
        agents
            .iter()
            .map(|a| a.log_tail(20))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let peers_of = |ns: &Netns| -> Result<Vec<(String, String)>, String> {
        let body = ns
            .http_get("127.0.0.1:9179", "/status")
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(v["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                (
                    p["address"].as_str().unwrap_or("").to_string(),
                    p["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect())
    };
    // The address came from the Node's InternalIP, with the interface's prefix.
    eventually(
        "n1's Serval Node has the InternalIP and the Kubernetes labels",
        std::time::Duration::from_secs(60),
        || {
            let out = api.kubectl(&["get", "nodes.serval.dev", "n1", "-o", "json"]);
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            if v["spec"]["bgp"]["ipv4Address"] == "192.168.77.1/24"
                && v["metadata"]["labels"]["rack"] == "a"
            {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
        logs,
    );
    // n2 is in no rack: no session anywhere.
    eventually(
        "both agents answer, without peers",
        std::time::Duration::from_secs(60),
        || match (peers_of(&n1)?, peers_of(&n2)?) {
            (a, b) if a.is_empty() && b.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        },
        logs,
    );
    // Label n2 into rack a through the API: the agents peer, no restart.
    api.kubectl_ok(&["label", "node", "n2", "rack=a"]);
    eventually(
        "n1 and n2 peer once n2 is labelled rack=a",
        std::time::Duration::from_secs(60),
        || match (peers_of(&n1)?, peers_of(&n2)?) {
            (a, b)
                if a == [("192.168.77.2".to_string(), "Established".to_string())]
                    && b == [("192.168.77.1".to_string(), "Established".to_string())] =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
        logs,
    );
    // And the label going away ends the session.
    api.kubectl_ok(&["label", "node", "n2", "rack-"]);
    eventually(
        "the session goes with the label",
        std::time::Duration::from_secs(60),
        || match peers_of(&n1)? {
            a if a.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        },
        logs,
    );
    for a in agents.iter_mut() {
        a.stop();
    }
    drop(forwards);
}

/// `servalctl` as the cluster admin (a client certificate in system:masters), as an operator
/// runs it: exit code and output.
fn servalctl_admin(api: &KubeApi, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(serval_integration::require::serval_bin("servalctl"))
        .args(args)
        .env("DATASTORE_TYPE", "kubernetes")
        .env("KUBECONFIG", &api.admin)
        .output()
        .expect("run servalctl");
    (out.status.code().unwrap_or(-1), text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_clean_up_deleted_nodes_and_leaked_addresses() {
    use serval_integration::eventually;
    let Some(api) = KubeApi::start("the_controllers_clean_up") else {
        return;
    };
    install(&api);
    let admin = Datastore::new(serval_agent::datastore::AnyBackend::Kubernetes(
        KubeBackend::connect_with(&api.admin.display().to_string())
            .await
            .unwrap(),
    ));
    // Two nodes as kubelets and agents register them; pods p1 (alive) and p-gone on n1,
    // p2 on n2, each with an address.
    node_with_address(&api, "n1", "192.168.78.1", "");
    node_with_address(&api, "n2", "192.168.78.2", "");
    for n in ["n1", "n2"] {
        let node: serval_agent::resources::Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "serval.dev/v1", "kind": "Node", "metadata": {"name": n}, "spec": {}
        }))
        .unwrap();
        admin.create(&node).await.unwrap();
    }
    let scratch = serval_integration::peers::Scratch::new("kube-ctrl");
    let pods = scratch.path("pods.yaml");
    std::fs::write(
        &pods,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: e2e}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: e2e}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: e2e}\n\
         spec: {nodeName: n1, automountServiceAccountToken: false, containers: [{name: c, image: x}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: e2e}\n\
         spec: {nodeName: n2, automountServiceAccountToken: false, containers: [{name: c, image: x}]}\n",
    )
    .unwrap();
    api.kubectl_ok(&["apply", "-f", &pods.display().to_string()]);
    let ipam = serval_ipam::Ipam::new(admin.clone());
    let mut held = std::collections::BTreeMap::new();
    for (handle, node, pod) in [
        ("h-p1", "n1", "p1"),
        ("h-gone", "n1", "p-gone"),
        ("h-p2", "n2", "p2"),
    ] {
        let got = ipam
            .auto_assign(&serval_ipam::AssignRequest {
                handle: handle.into(),
                node: node.into(),
                num_v4: 1,
                attrs: [
                    ("node".to_string(), node.to_string()),
                    ("namespace".to_string(), "e2e".to_string()),
                    ("pod".to_string(), pod.to_string()),
                ]
                .into(),
                ..serval_ipam::AssignRequest::default()
            })
            .await
            .unwrap();
        held.insert(handle, got.v4[0]);
    }
    // servalctl, as the admin, sees the leak the collector will release, with the same
    // owners (Kubernetes Pods and Nodes).
    let (code, out) = servalctl_admin(&api, &["ipam", "check"]);
    let gone_ip = held["h-gone"].to_string();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{gone_ip} is allocated to pod e2e/p-gone, which has no Pod (leak)"
        )),
        "{out}"
    );
    assert!(out.contains("1 problem(s) found"), "{out}");
    // Two replicas with the controllers' own token: one is active.
    // Stopped by PID when dropped, also when an assertion fails.
    let replicas: Vec<serval_integration::Daemon> = ["c1", "c2"]
        .iter()
        .map(|name| {
            let r = api.start_controllers(
                name,
                &[
                    "SERVAL_CONTROLLERS_INTERVAL=1",
                    "SERVAL_IPAM_LEAK_GRACE_PERIOD=3s",
                ],
                &scratch.0,
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
            r
        })
        .collect();
    let logs = || {
        replicas
            .iter()
            .map(|r| r.log_tail(40))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let lease_holder = || {
        let out = api.kubectl(&[
            "get",
            "lease",
            "serval-controllers",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let holder = eventually(
        "one replica holds the Lease",
        std::time::Duration::from_secs(30),
        || {
            let h = lease_holder();
            if h == "c1" || h == "c2" {
                Ok(h)
            } else {
                Err(h)
            }
        },
        logs,
    );
    // The Pod gone (never created) loses its address after the grace period; p1 keeps its.
    let handle_exists = |h: &'static str| {
        let admin = admin.clone();
        async move {
            admin
                .get::<serval_agent::resources::IPAMHandle>(None, h)
                .await
                .unwrap()
                .is_some()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while handle_exists("h-gone").await {
        assert!(
            std::time::Instant::now() < deadline,
            "leak not released: {}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert!(handle_exists("h-p1").await, "a live pod keeps its address");
    assert!(handle_exists("h-p2").await);
    // Deleting n2 through the API: its Serval Node goes and its address is released.
    api.kubectl_ok(&["delete", "node", "n2"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let node_gone = admin
            .get::<serval_agent::resources::Node>(None, "n2")
            .await
            .unwrap()
            .is_none();
        if node_gone && !handle_exists("h-p2").await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n2 not cleaned up: {}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert!(
        admin
            .get::<serval_agent::resources::Node>(None, "n1")
            .await
            .unwrap()
            .is_some()
    );
    // Nothing left for servalctl to report.
    serval_integration::eventually(
        "servalctl ipam check is clean",
        std::time::Duration::from_secs(20),
        || match servalctl_admin(&api, &["ipam", "check"]) {
            (0, out) if out.contains("0 problem(s) found") => Ok(()),
            (_, out) => Err(out),
        },
        logs,
    );
    // Still one active replica, the same one.
    assert_eq!(lease_holder(), holder);
    let standby = if holder == "c1" { "c2" } else { "c1" };
    let standby = &replicas[usize::from(standby == "c2")];
    assert!(
        !standby.log_text().contains("Serval Node removed"),
        "the standby replica did nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_list_comes_whole_in_pages_without_managed_fields() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Namespace;
    use serval_agent::datastore::{Backend, KindInfo};
    let Some(api) = KubeApi::start("a_big_list_comes_whole_in_pages") else {
        return;
    };
    let backend = KubeBackend::connect_with(&api.admin.display().to_string())
        .await
        .unwrap();
    let ds = Datastore::new(backend.clone());
    // More than two pages' worth (the backend asks for 500 at a time).
    let names: Vec<String> = (0..1_234).map(|i| format!("big-{i:04}")).collect();
    futures::stream::iter(names.clone())
        .map(|n| {
            let ds = ds.clone();
            async move {
                let ns: Namespace = serde_json::from_value(serde_json::json!({
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}
                }))
                .unwrap();
                ds.create(&ns).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let kind = KindInfo::of::<Namespace>();
    let before = api.server_counts().requests_of("LIST", "namespaces");
    let list = backend.list(&kind, None).await.unwrap();
    let pages = api.server_counts().requests_of("LIST", "namespaces") - before;
    assert_eq!(pages, 3.0, "1,234+ namespaces in pages of 500");
    let listed: std::collections::BTreeSet<String> = list
        .items
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), list.items.len(), "no object twice");
    for n in &names {
        assert!(listed.contains(n), "{n} missing from the paged list");
    }
    assert!(
        list.items
            .iter()
            .all(|o| o["metadata"].get("managedFields").is_none()),
        "listed objects carry managedFields"
    );
    // A single read keeps them (an update written back from it changes nothing else).
    let one = backend.get(&kind, None, "big-0001").await.unwrap().unwrap();
    assert!(one["metadata"].get("managedFields").is_some());
    // The list's revision is one a watch can start from.
    assert!(backend.watch(&kind, &list.revision).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_sends_bookmarks_and_a_watch_resumes_from_one() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Namespace;
    use serval_agent::datastore::{Backend, KindInfo, RawEvent};
    let Some(api) = KubeApi::start("a_real_server_sends_bookmarks") else {
        return;
    };
    // Watches the server ends after 5 s: it sends a bookmark about 2 s before that.
    let backend = KubeBackend::connect_with(&api.admin.display().to_string())
        .await
        .unwrap()
        .with_watch_timeout(5);
    let ds = Datastore::new(backend.clone());
    let kind = KindInfo::of::<Namespace>();
    let ns = |name: &str| -> Namespace {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .unwrap()
    };
    let list = backend.list(&kind, None).await.unwrap();
    ds.create(&ns("bm-a")).await.unwrap();
    let mut events = Vec::new();
    let mut stream = backend.watch(&kind, &list.revision).await.unwrap();
    // Another kind's write moves the store's revision past anything this watch delivers;
    // the bookmark brings the watcher there.
    api.kubectl_ok(&["create", "serviceaccount", "bm-other", "-n", "default"]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, stream.next()).await {
        events.push(e.unwrap());
    }
    let added_a = events
        .iter()
        .any(|e| matches!(e, RawEvent::Added(o) if o["metadata"]["name"] == "bm-a"));
    let bookmark = events.iter().rev().find_map(|e| match e {
        RawEvent::Bookmark(rv) => Some(rv.clone()),
        _ => None,
    });
    assert!(added_a, "{events:?}");
    let bookmark =
        bookmark.unwrap_or_else(|| panic!("no bookmark before the watch ended: {events:?}"));
    // Resuming from the bookmark: only what came after it.
    ds.create(&ns("bm-b")).await.unwrap();
    let mut stream = backend.watch(&kind, &bookmark).await.unwrap();
    let first = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("an event after the bookmark")
        {
            Some(Ok(RawEvent::Bookmark(_))) => continue,
            Some(e) => break e.unwrap(),
            None => panic!("the watch ended without an event"),
        }
    };
    match first {
        RawEvent::Added(o) => assert_eq!(o["metadata"]["name"], "bm-b"),
        other => panic!("{other:?}"),
    }
}
