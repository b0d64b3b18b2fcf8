//! Network policy end to end, modelled on the Kubernetes conformance tests: namespaces x, y, z
//! with pods a, b, c, each serving TCP and UDP on ports 80 and 81, on a node run by
//! serval-node with a real etcd. Policies go in through the datastore; every pod pair is
//! probed on every port and protocol and compared with what Kubernetes semantics demand.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::json;
use serval_agent::datastore::{Datastore, EtcdBackend};
use serval_agent::resources::{IPPool, WorkloadEndpoint};
use serval_integration::peers::Scratch;
use serval_integration::probe::{self, Probe, Proto};
use serval_integration::{
    Daemon, EtcdServer, LoopbackForward, Netns, cni, eventually, link, require,
};

type K8sPolicy = k8s_openapi::api::networking::v1::NetworkPolicy;
type K8sNamespace = k8s_openapi::api::core::v1::Namespace;

struct Pod {
    ns: String,
    name: String,
    ip: IpAddr,
    netns: Netns,
}

struct Lab {
    _forward: LoopbackForward,
    agent: Daemon,
    node: Netns,
    _uplink: Netns,
    pods: Vec<Pod>,
    ds: Datastore<EtcdBackend>,
    _scratch: Scratch,
    _etcd: EtcdServer,
}

/// The agent's firewall read-back period in these tests.
const REFRESH_SECS: u64 = 2;

const PORTS: [(Proto, u16); 4] = [
    (Proto::Tcp, 80),
    (Proto::Tcp, 81),
    (Proto::Udp, 80),
    (Proto::Udp, 81),
];

impl Lab {
    fn probes(&self) -> Vec<Probe> {
        let mut out = Vec::new();
        for from in &self.pods {
            for to in &self.pods {
                if from.ip == to.ip {
                    continue;
                }
                for (proto, port) in PORTS {
                    out.push(Probe {
                        from: format!("{}/{}", from.ns, from.name),
                        from_ns: format!("/run/netns/{}", from.netns.name()),
                        to: format!("{}/{}", to.ns, to.name),
                        addr: SocketAddr::new(to.ip, port),
                        proto,
                    });
                }
            }
        }
        out
    }

    /// Waits until every probe agrees with `expect(from, to, proto, port)`.
    fn expect(&self, case: &str, expect: impl Fn(&str, &str, Proto, u16) -> bool) {
        let probes = self.probes();
        eventually(
            &format!("case {case:?}: every pod pair as Kubernetes semantics say"),
            Duration::from_secs(40),
            || {
                let got = probe::run(&probes, 48);
                let diff = probe::differences(&probes, &got, |p| {
                    expect(&p.from, &p.to, p.proto, p.addr.port())
                });
                if diff.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} of {} probes differ:\n  {}",
                        diff.len(),
                        probes.len(),
                        diff[..diff.len().min(12)].join("\n  ")
                    ))
                }
            },
            || {
                let rules = self
                    .node
                    .output(&["iptables-save", "-t", "filter"])
                    .unwrap_or_default();
                format!(
                    "{}\n--- iptables (first 60 lines) ---\n{}",
                    self.agent.log_tail(20),
                    rules.lines().take(60).collect::<Vec<_>>().join("\n")
                )
            },
        );
    }

    async fn apply(&self, policies: &[serde_json::Value]) -> Vec<(String, String)> {
        let mut names = Vec::new();
        for p in policies {
            let np: K8sPolicy = serde_json::from_value(p.clone()).unwrap();
            self.ds.create(&np).await.unwrap();
            names.push((
                p["metadata"]["namespace"].as_str().unwrap().to_string(),
                p["metadata"]["name"].as_str().unwrap().to_string(),
            ));
        }
        names
    }

    async fn remove(&self, names: Vec<(String, String)>) {
        for (ns, name) in names {
            self.ds
                .delete::<K8sPolicy>(Some(&ns), &name, None)
                .await
                .unwrap();
        }
    }

    async fn set_label(&self, ns: &str, pod: &str, key: &str, value: Option<&str>) {
        let name = serval_agent::cni::plugin::endpoint_name("node-p", pod, "eth0");
        let mut w: WorkloadEndpoint = self.ds.get(Some(ns), &name).await.unwrap().expect("wep");
        let labels = w.metadata.labels.get_or_insert_with(BTreeMap::new);
        match value {
            Some(v) => {
                labels.insert(key.into(), v.into());
            }
            None => {
                labels.remove(key);
            }
        }
        self.ds.update(&w).await.unwrap();
    }

    fn ip(&self, who: &str) -> IpAddr {
        self.pods
            .iter()
            .find(|p| format!("{}/{}", p.ns, p.name) == who)
            .unwrap()
            .ip
    }
}

fn k8s(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn ns_of(who: &str) -> &str {
    who.split('/').next().unwrap()
}

async fn lab(test: &str) -> Option<Lab> {
    if !require::lab_ready(test, &["ip", "etcd", "iptables", "ipset"]) {
        return None;
    }
    let etcd = EtcdServer::start(test)?;
    let ds = Datastore::new(EtcdBackend::connect(&[etcd.endpoint()]).await.unwrap());
    let pool: IPPool = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "IPPool", "metadata": {"name": "pods"},
        "spec": {"cidr": "10.88.0.0/24", "blockSize": 26}
    }))
    .unwrap();
    ds.create(&pool).await.unwrap();
    for ns in ["x", "y", "z"] {
        let n: K8sNamespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"ns": ns}}
        }))
        .unwrap();
        ds.create(&n).await.unwrap();
    }
    let node = Netns::new("pol").unwrap();
    let uplink = Netns::new("polup").unwrap();
    link(&node, "eth0", &uplink, "eth0").unwrap();
    node.addr("eth0", "192.168.60.2/24").unwrap();
    uplink.addr("eth0", "192.168.60.1/24").unwrap();
    node.ip(&["route", "add", "default", "via", "192.168.60.1"])
        .unwrap();
    // Another owner of the filter table (kube-proxy style), there before the agent.
    node.exec(&["iptables", "-N", "KUBE-FORWARD"]).unwrap();
    node.exec(&[
        "iptables",
        "-A",
        "KUBE-FORWARD",
        "-m",
        "comment",
        "--comment",
        "kube-proxy",
        "-j",
        "RETURN",
    ])
    .unwrap();
    node.exec(&["iptables", "-A", "FORWARD", "-j", "KUBE-FORWARD"])
        .unwrap();
    // State of ours left by an earlier run that nothing wants any more: a set, a chain using
    // it, and a hook into that chain. The agent's start-up sweep must remove all three.
    for cmd in [
        "ipset create serval40s:stale-by-hand hash:net family inet",
        "ipset add serval40s:stale-by-hand 10.88.0.99",
        "iptables -N serval-pi-stale-by-hand",
        "iptables -A serval-pi-stale-by-hand -m set --match-set serval40s:stale-by-hand src -j DROP",
        "iptables -I INPUT 1 -m comment --comment serval:hook -j serval-pi-stale-by-hand",
    ] {
        let out = node.exec(&cmd.split(' ').collect::<Vec<_>>()).unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let forward = LoopbackForward::start(&node, 2379, etcd.addr()).unwrap();
    let scratch = Scratch::new("policy");
    let var = scratch.path("var");
    let bin = require::serval_bin("serval-node");
    let env_var = format!("SERVAL_VAR_DIR={}", var.display());
    let bin_s = bin.display().to_string();
    let agent = Daemon::start(
        &node,
        "agent",
        &[
            "env",
            "NODENAME=node-p",
            "DATASTORE_TYPE=etcdv3",
            "ETCD_ENDPOINTS=http://127.0.0.1:2379",
            "IP_AUTODETECTION_METHOD=interface=eth0",
            &env_var,
            // Resyncs every few seconds, so every case here also runs across them.
            &format!("SERVAL_IPTABLES_REFRESH_INTERVAL={REFRESH_SECS}"),
            "SERVAL_LOG=info",
            &bin_s,
            "run",
        ],
        &scratch.0,
    )
    .unwrap();
    eventually(
        "agent ready",
        Duration::from_secs(60),
        || {
            node.http_get("127.0.0.1:9179", "/readyz")
                .map_err(|e| e.to_string())
        },
        || agent.log_tail(30),
    );
    let conf = json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "serval-cni",
        "nodename": "node-p", "datastore_type": "etcdv3", "etcd_endpoints": "http://127.0.0.1:2379",
        "mtu_file": var.join("mtu").display().to_string(), "ipam": {"type": "serval-ipam"}
    })
    .to_string();
    let mut pods = Vec::new();
    for ns in ["x", "y", "z"] {
        for name in ["a", "b", "c"] {
            let netns = Netns::new(&format!("{ns}{name}")).unwrap();
            let add = cni::add_pod(&node, &netns, ns, name, &conf);
            assert_eq!(
                add.code, 0,
                "ADD {ns}/{name}: {} {}",
                add.stdout, add.stderr
            );
            let ip = add.first_ip();
            // What the orchestrator records about the pod: its labels and named ports.
            let wep_name = serval_agent::cni::plugin::endpoint_name("node-p", name, "eth0");
            let mut w: WorkloadEndpoint = ds.get(Some(ns), &wep_name).await.unwrap().expect("wep");
            w.metadata.labels = Some([("pod".to_string(), name.to_string())].into());
            w.spec.ports = serde_json::from_value(json!([
                {"name": "serve-80-tcp", "protocol": "TCP", "port": 80},
                {"name": "serve-81-tcp", "protocol": "TCP", "port": 81},
                {"name": "serve-80-udp", "protocol": "UDP", "port": 80},
                {"name": "serve-81-udp", "protocol": "UDP", "port": 81}
            ]))
            .unwrap();
            ds.update(&w).await.unwrap();
            netns.serve_tcp(80, "80").unwrap();
            netns.serve_tcp(81, "81").unwrap();
            let path = format!("/run/netns/{}", netns.name());
            probe::serve_udp_echo(&path, 80).unwrap();
            probe::serve_udp_echo(&path, 81).unwrap();
            pods.push(Pod {
                ns: ns.into(),
                name: name.into(),
                ip,
                netns,
            });
        }
    }
    Some(Lab {
        _forward: forward,
        agent,
        node,
        _uplink: uplink,
        pods,
        ds,
        _scratch: scratch,
        _etcd: etcd,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_network_policy_conformance_model() {
    let Some(lab) = lab("policy_e2e").await else {
        return;
    };
    lab.expect("no policy", |_, _, _, _| true);

    // Default deny both ways in x; the node itself still reaches x's pods.
    let p = lab
        .apply(&[k8s(
            "x",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        )])
        .await;
    lab.expect("default deny both ways in x", |from, to, _, _| {
        ns_of(from) != "x" && ns_of(to) != "x"
    });
    let xa = lab.ip("x/a");
    let from_node = lab
        .node
        .tcp_fetch(SocketAddr::new(xa, 80))
        .expect("the pod's own node reaches it under default deny");
    assert_eq!(from_node, "80");
    lab.remove(p).await;

    // Selectors in one peer (AND) vs separate peers (OR).
    let p = lab
        .apply(&[
            k8s("x", "and", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]})),
            k8s("x", "or", json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "c"}}}]}]})),
        ])
        .await;
    lab.expect(
        "one peer ANDs, separate peers OR",
        |from, to, _, _| match to {
            "x/a" => from == "y/b",
            "x/b" => ns_of(from) == "y" || from == "x/c",
            _ => true,
        },
    );
    lab.remove(p).await;

    // ipBlock with except.
    let ya = lab.ip("y/a");
    let p = lab
        .apply(&[k8s(
            "x",
            "ipblock",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.88.0.0/24", "except": [format!("{ya}/32")]}}]}]}),
        )])
        .await;
    lab.expect("ipBlock with except", |from, to, _, _| {
        to != "x/a" || from != "y/a"
    });
    lab.remove(p).await;

    // Named ports and endPort.
    let p = lab
        .apply(&[
            k8s("x", "named", json!({"podSelector": {}, "ingress": [{"ports": [
                {"port": "serve-80-tcp", "protocol": "TCP"}, {"port": "serve-81-udp", "protocol": "UDP"}]}]})),
            k8s("y", "range", json!({"podSelector": {}, "ingress": [{"ports": [
                {"port": 80, "endPort": 81, "protocol": "TCP"}]}]})),
        ])
        .await;
    lab.expect(
        "named ports and endPort",
        |_, to, proto, port| match ns_of(to) {
            "x" => (proto, port) == (Proto::Tcp, 80) || (proto, port) == (Proto::Udp, 81),
            "y" => proto == Proto::Tcp,
            _ => true,
        },
    );
    lab.remove(p).await;

    // Several policies add up.
    let p = lab
        .apply(&[
            k8s("z", "from-x-tcp80", json!({"podSelector": {}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "x"}}}], "ports": [{"port": 80}]}]})),
            k8s("z", "from-y-udp81", json!({"podSelector": {}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 81, "protocol": "UDP"}]}]})),
        ])
        .await;
    lab.expect("policies add up", |from, to, proto, port| {
        ns_of(to) != "z"
            || (ns_of(from) == "x" && (proto, port) == (Proto::Tcp, 80))
            || (ns_of(from) == "y" && (proto, port) == (Proto::Udp, 81))
    });
    lab.remove(p).await;

    // Label changes take effect (and only the pod that changed gains access).
    let p = lab
        .apply(&[k8s(
            "x",
            "frontend-only",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"podSelector": {"matchLabels": {"role": "frontend"}}}]}]}),
        )])
        .await;
    lab.expect("nobody is a frontend yet", |_, to, _, _| to != "x/a");
    lab.set_label("x", "b", "role", Some("frontend")).await;
    lab.expect("x/b labelled frontend", |from, to, _, _| {
        to != "x/a" || from == "x/b"
    });
    lab.set_label("x", "b", "role", None).await;
    lab.expect("label removed again", |_, to, _, _| to != "x/a");
    lab.remove(p).await;
    lab.expect("all policies gone", |_, _, _, _| true);

    // Coexistence: the other owner's chain and jump are untouched; ours hook in once, first.
    let forward = lab.node.output(&["iptables", "-S", "FORWARD"]).unwrap();
    let lines: Vec<&str> = forward.lines().filter(|l| l.starts_with("-A")).collect();
    assert_eq!(
        lines,
        [
            "-A FORWARD -m comment --comment \"serval:hook\" -j serval-FORWARD",
            "-A FORWARD -j KUBE-FORWARD"
        ],
        "{forward}"
    );
    let kube = lab
        .node
        .output(&["iptables", "-S", "KUBE-FORWARD"])
        .unwrap();
    assert!(
        kube.contains("-A KUBE-FORWARD -m comment --comment kube-proxy -j RETURN"),
        "{kube}"
    );
    // IPv6 got the same structure.
    let v6 = lab
        .node
        .output(&["ip6tables", "-S", "serval-FORWARD"])
        .unwrap();
    assert!(v6.contains("serval-from-wl-dispatch"), "{v6}");
    assert!(
        !lab.agent.log_tail(200).contains("policy not applied"),
        "{}",
        lab.agent.log_tail(50)
    );
}

/// Runs a Python snippet inside a namespace; its stdout.
fn py(ns: &Netns, code: &str) -> String {
    let out = ns.exec(&["python3", "-c", code]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The kernel's count of packets dropped by reverse-path filtering in a namespace.
fn rp_filter_drops(ns: &Netns) -> u64 {
    let out = ns.output(&["cat", "/proc/net/netstat"]).unwrap();
    let mut lines = out.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "IPReversePathFilter")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_cannot_spoof_reach_node_loopback_or_inject_tunnel_traffic() {
    let Some(lab) = lab("policy_e2e_anti_spoofing").await else {
        return;
    };
    let pod = |ns: &str, name: &str| {
        lab.pods
            .iter()
            .find(|p| p.ns == ns && p.name == name)
            .unwrap()
    };
    let (xb, yc, ya) = (pod("x", "b"), pod("y", "c"), pod("y", "a"));
    // Policy is programmed (the anti-spoofing rule is in x/b's chain).
    eventually(
        "x/b's from-chain with anti-spoofing",
        Duration::from_secs(30),
        || {
            let chains = lab.node.output(&["iptables", "-S"]).unwrap_or_default();
            if chains.contains("source is not the workload") {
                Ok(())
            } else {
                Err(chains)
            }
        },
        || lab.agent.log_tail(20),
    );

    // 1. x/b sends UDP to y/a from its own address and from y/c's: only its own arrives.
    xb.netns
        .ip(&["addr", "add", &format!("{}/32", yc.ip), "dev", "eth0"])
        .unwrap();
    let before = rp_filter_drops(&lab.node);
    let sink = format!(
        "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{ya}', 5555))\ns.settimeout(4)\nseen=set()\ntry:\n  while True:\n    seen.add(s.recvfrom(100)[1][0])\nexcept Exception:\n  pass\nprint(' '.join(sorted(seen)))",
        ya = ya.ip
    );
    let ya_ns = ya.netns.name().to_string();
    let sink_task = std::thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ya_ns, "python3", "-c", &sink])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });
    std::thread::sleep(Duration::from_millis(500));
    for src in [xb.ip, yc.ip] {
        py(
            &xb.netns,
            &format!(
                "import socket,time\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{src}', 0))\nfor _ in range(3):\n  s.sendto(b'x', ('{}', 5555)); time.sleep(0.05)",
                ya.ip
            ),
        );
    }
    let seen = sink_task.join().unwrap();
    assert_eq!(seen, xb.ip.to_string(), "only the genuine source arrives");
    assert!(rp_filter_drops(&lab.node) >= before + 3);

    // 2. Spoofed towards the node itself (a BGP or BFD peer's address): dropped the same way.
    let before = rp_filter_drops(&lab.node);
    xb.netns
        .ip(&["addr", "add", "192.168.60.1/32", "dev", "eth0"])
        .unwrap();
    py(
        &xb.netns,
        "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('192.168.60.1', 49152))\ns.sendto(b'\\x20\\x40\\x03\\x18' + bytes(20), ('192.168.60.2', 3784))",
    );
    assert!(rp_filter_drops(&lab.node) > before);

    // 3. The node's loopback-bound status API is out of a pod's reach, even for a pod that
    //    routes 127.0.0.1 to its gateway.
    let xa = pod("x", "a");
    xa.netns.ip(&["addr", "flush", "dev", "lo"]).unwrap();
    xa.netns
        .exec(&["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"])
        .unwrap();
    xa.netns
        .exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"])
        .unwrap();
    xa.netns
        .ip(&[
            "route",
            "add",
            "127.0.0.1/32",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
            "onlink",
        ])
        .unwrap();
    let got = py(
        &xa.netns,
        &format!(
            "import socket\ns=socket.socket(); s.settimeout(3)\ntry:\n  s.bind(('{}', 0)); s.connect(('127.0.0.1', 9179)); s.send(b'GET /status HTTP/1.0\\r\\n\\r\\n'); print('REACHED', s.recv(20))\nexcept Exception as e:\n  print('BLOCKED', e)",
            xa.ip
        ),
    );
    assert!(got.starts_with("BLOCKED"), "{got}");

    // 4. VXLAN from an address that is not a node is dropped before decapsulation.
    py(
        &lab._uplink,
        "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(3):\n  s.sendto(bytes(50), ('192.168.60.2', 4789))",
    );
    let input = lab
        .node
        .output(&["iptables", "-L", "serval-INPUT", "-v", "-x", "-n"])
        .unwrap();
    let dropped: u64 = input
        .lines()
        .find(|l| l.contains("VXLAN from an address that is not a node"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(dropped >= 3, "{input}");
}

/// `serval_iptables_drift_repaired_total{kind}` from the agent's /metrics.
fn drift_repaired(node: &Netns, kind: &str) -> u64 {
    let text = node.http_get("127.0.0.1:9179", "/metrics").unwrap();
    let key = format!("serval_iptables_drift_repaired_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Pings `to` from the namespace named `from` every 10 ms, `count` times; (sent, received).
fn ping_run(from: &str, to: IpAddr, count: u32) -> (u32, u32) {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            from,
            "ping",
            "-n",
            "-q",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            &to.to_string(),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let stats = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default()
        .to_string();
    let num = |word: &str| -> u32 {
        let words: Vec<&str> = stats.split_whitespace().collect();
        words
            .iter()
            .position(|w| w.starts_with(word))
            .and_then(|i| words.get(i - 1)?.parse().ok())
            .unwrap_or(0)
    };
    (num("packets"), num("received"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firewall_state_is_swept_at_start_and_repaired_by_resync_without_a_gap() {
    let Some(lab) = lab("policy_e2e_firewall_resync").await else {
        return;
    };
    let node = &lab.node;
    // The start-up sweep removed the stale chain, set and hook; the foreign chain and the
    // foreign jump are as they were.
    let filter = node.output(&["iptables-save", "-t", "filter"]).unwrap();
    assert!(!filter.contains("stale-by-hand"), "{filter}");
    assert!(
        filter.contains("-A FORWARD -j KUBE-FORWARD")
            && filter.contains("-A KUBE-FORWARD -m comment --comment kube-proxy -j RETURN"),
        "{filter}"
    );
    let sets = node.output(&["ipset", "list", "-n"]).unwrap();
    assert!(!sets.contains("stale-by-hand"), "{sets}");

    // z/a admits only z/b.
    lab.apply(&[k8s(
        "z",
        "a-from-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )])
    .await;
    let allowed = |from: &str, to: &str, _: Proto, _: u16| to != "z/a" || from == "z/b";
    lab.expect("z/a admits only z/b", allowed);

    // A ping matrix runs while, every half second, something harmless is added to every
    // chain and set of ours (a rule with no target, a member nobody uses), so each resync
    // rewrites every chain and rebuilds every set under live traffic.
    let pod = |who: &str| {
        lab.pods
            .iter()
            .find(|p| format!("{}/{}", p.ns, p.name) == who)
            .unwrap()
    };
    let target = pod("z/a").ip;
    let before = (drift_repaired(node, "chain"), drift_repaired(node, "set"));
    let pings = [("z/b", true), ("z/c", false), ("x/b", false)].map(|(who, ok)| {
        let ns = pod(who).netns.name().to_string();
        (
            who,
            ok,
            std::thread::spawn(move || ping_run(&ns, target, 800)),
        )
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(7);
    while std::time::Instant::now() < deadline {
        let save = node.output(&["iptables-save", "-t", "filter"]).unwrap();
        for chain in save
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| c.starts_with("serval-"))
        {
            let _ = node.exec(&[
                "iptables",
                "-A",
                chain,
                "-m",
                "comment",
                "--comment",
                "test-noop",
            ]);
        }
        let sets = node.output(&["ipset", "save"]).unwrap();
        for set in sets
            .lines()
            .filter(|l| l.starts_with("create serval") && l.contains("hash:net family inet "))
            .filter_map(|l| l.split_whitespace().nth(1))
        {
            let _ = node.exec(&["ipset", "add", set, "198.51.100.7", "-exist"]);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (who, ok, ping) in pings {
        let (sent, received) = ping.join().unwrap();
        assert!(sent >= 700, "{who}: only {sent} pings sent");
        if ok {
            assert_eq!(received, sent, "{who} -> z/a lost pings across resyncs");
        } else {
            assert_eq!(received, 0, "{who} -> z/a got through during a resync");
        }
    }
    let after = (drift_repaired(node, "chain"), drift_repaired(node, "set"));
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "resyncs did not count the drift: {before:?} -> {after:?}\n{}",
        lab.agent.log_tail(20)
    );

    // Drift that matters: an ACCEPT at the top of our dispatch opens z/a to everyone until
    // the next resync puts the chain back.
    node.exec(&["iptables", "-I", "serval-FORWARD", "1", "-j", "ACCEPT"])
        .unwrap();
    lab.expect("the opened chain is repaired", allowed);
    eventually(
        "no test drift left in our chains and sets",
        Duration::from_secs(20),
        || {
            let save = node.output(&["iptables-save", "-t", "filter"]).unwrap();
            let sets = node.output(&["ipset", "save"]).unwrap();
            if save.contains("test-noop")
                || save.contains("-A serval-FORWARD -j ACCEPT")
                || sets.contains("198.51.100.7")
            {
                Err("still there".to_string())
            } else {
                Ok(())
            }
        },
        || lab.agent.log_tail(20),
    );
    assert!(
        lab.agent.log_tail(400).contains("drift repaired"),
        "{}",
        lab.agent.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_sets_admit_exactly_the_networks_they_list() {
    use serval_agent::resources::{GlobalNetworkSet, NetworkPolicy as SvPolicy, NetworkSet};
    let Some(lab) = lab("policy_e2e_network_sets").await else {
        return;
    };
    // The uplink (192.168.60.1, outside every pool) reaches the pods through the node.
    lab._uplink
        .ip(&["route", "add", "10.88.0.0/24", "via", "192.168.60.2"])
        .unwrap();
    let za = lab.ip("z/a");
    let from_uplink = || {
        lab._uplink
            .tcp_fetch(SocketAddr::new(za, 80))
            .map(|s| s.contains("80"))
            .unwrap_or(false)
    };
    let until = |what: &str, want: bool| {
        eventually(
            what,
            Duration::from_secs(30),
            || {
                if from_uplink() == want {
                    Ok(())
                } else {
                    Err(format!("uplink -> z/a is {}", !want))
                }
            },
            || lab.agent.log_tail(20),
        )
    };
    until("no policy: the uplink reaches z/a", true);
    // z/a admits only what a selector `role == 'office'` names: no pod has that label.
    let policy: SvPolicy = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "office-only", "namespace": "z"},
        "spec": {"selector": "pod == 'a'", "types": ["Ingress"],
                 "ingress": [{"action": "Allow", "source": {"selector": "role == 'office'"}}]}
    }))
    .unwrap();
    lab.ds.create(&policy).await.unwrap();
    until("nothing is the office yet", false);
    // A NetworkSet in z listing the uplink: admitted.
    let set: NetworkSet = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "NetworkSet",
        "metadata": {"name": "office", "namespace": "z", "labels": {"role": "office"}},
        "spec": {"nets": ["192.168.60.0/30"]}
    }))
    .unwrap();
    lab.ds.create(&set).await.unwrap();
    until("z's office set admits the uplink", true);
    lab.ds
        .delete::<NetworkSet>(Some("z"), "office", None)
        .await
        .unwrap();
    until("the set is gone", false);
    // A GlobalNetworkSet is not seen by a namespaced rule without `global()`...
    let global: GlobalNetworkSet = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "GlobalNetworkSet",
        "metadata": {"name": "office", "labels": {"role": "office"}},
        "spec": {"nets": ["192.168.60.1"]}
    }))
    .unwrap();
    lab.ds.create(&global).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !from_uplink(),
        "a global set reached a namespaced rule without global()"
    );
    // ...and is with it.
    let mut with_global = policy.clone();
    with_global.spec.ingress[0].source.namespace_selector = Some("global()".into());
    let current: SvPolicy = lab
        .ds
        .get(Some("z"), "office-only")
        .await
        .unwrap()
        .expect("policy");
    with_global.metadata = current.metadata;
    lab.ds.update(&with_global).await.unwrap();
    until("global() sees the global set", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_selector_governs_only_pods_of_matching_accounts() {
    use serval_agent::resources::NetworkPolicy as SvPolicy;
    type ServiceAccount = k8s_openapi::api::core::v1::ServiceAccount;
    let Some(lab) = lab("policy_e2e_service_accounts").await else {
        return;
    };
    // z/a runs as db-sa (role=db); everyone else has no account recorded.
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "db-sa", "namespace": "z", "labels": {"role": "db"}}
    }))
    .unwrap();
    lab.ds.create(&sa).await.unwrap();
    let name = serval_agent::cni::plugin::endpoint_name("node-p", "a", "eth0");
    let mut w: WorkloadEndpoint = lab.ds.get(Some("z"), &name).await.unwrap().expect("wep");
    w.spec.service_account_name = Some("db-sa".into());
    lab.ds.update(&w).await.unwrap();
    // Default-deny ingress for every pod whose account has role=db, in z.
    let policy: SvPolicy = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "db-isolated", "namespace": "z"},
        "spec": {"selector": "all()", "serviceAccountSelector": "role == 'db'",
                 "types": ["Ingress"]}
    }))
    .unwrap();
    lab.ds.create(&policy).await.unwrap();
    lab.expect("only db-sa's pod is isolated", |_, to, _, _| to != "z/a");
    // The account's label changes: the policy no longer selects it.
    let mut sa: ServiceAccount = lab.ds.get(Some("z"), "db-sa").await.unwrap().unwrap();
    sa.metadata.labels = Some([("role".to_string(), "cache".to_string())].into());
    lab.ds.update(&sa).await.unwrap();
    lab.expect("relabelled account: nothing isolated", |_, _, _, _| true);
}
