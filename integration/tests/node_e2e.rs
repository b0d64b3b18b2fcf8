//! End to end: three serval-node agents with a real etcd. Nodes a and b share one L2 segment
//! (192.168.1.0/24, a bridge in the router namespace); node c sits in 192.168.2.0/24 behind
//! the router. Two pods per node come from serval-cni. Every pod reaches every other pod
//! (ping and TCP); a↔b is routed natively, anything to or from c is encapsulated (VXLAN here
//! for real; IPIP where the kernel has it). Stopping and restarting an agent does not break
//! pod traffic (graceful restart keeps the peers' routes; the kernel keeps the node's).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use serval_agent::datastore::{Datastore, EtcdBackend};
use serval_agent::resources::{IPPool, Node};
use serval_integration::peers::Scratch;
use serval_integration::{
    Daemon, EtcdServer, LoopbackForward, Netns, cni, eventually, link, require,
};

/// One node: its namespace, its agent, its etcd forwarder and its files.
struct NodeNs {
    name: &'static str,
    ip: &'static str,
    _forward: LoopbackForward,
    ns: Netns,
    agent: Option<Daemon>,
    var_dir: PathBuf,
}

struct Cluster {
    nodes: Vec<NodeNs>,
    pods: Vec<(usize, String, Netns, IpAddr)>,
    _router: Netns,
    ds: Datastore<EtcdBackend>,
    scratch: Scratch,
    _etcd: EtcdServer,
}

#[derive(Clone, Copy, PartialEq)]
enum Encap {
    Vxlan,
    Ipip,
}

impl Cluster {
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| n.agent.as_ref().map(|a| a.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn start_agent(&mut self, i: usize) {
        let n = &self.nodes[i];
        let bin = require::serval_bin("serval-node");
        let env = [
            format!("NODENAME={}", n.name),
            "DATASTORE_TYPE=etcdv3".into(),
            "ETCD_ENDPOINTS=http://127.0.0.1:2379".into(),
            "IP_AUTODETECTION_METHOD=interface=eth0".into(),
            format!("SERVAL_VAR_DIR={}", n.var_dir.display()),
            "SERVAL_HTTP_ADDRESS=127.0.0.1:9179".into(),
            "SERVAL_LOG=info,serval_bgp=info".into(),
        ];
        let mut args: Vec<String> = vec!["env".into()];
        args.extend(env);
        args.push(bin.display().to_string());
        args.push("run".into());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let d = Daemon::start(&n.ns, &format!("agent-{}", n.name), &argv, &self.scratch.0)
            .expect("start serval-node");
        self.nodes[i].agent = Some(d);
    }

    fn wait_ready(&self, i: usize) {
        let n = &self.nodes[i];
        eventually(
            &format!("node {} ready (/readyz)", n.name),
            Duration::from_secs(60),
            || {
                n.ns.http_get("127.0.0.1:9179", "/readyz")
                    .map_err(|e| e.to_string())
            },
            || self.logs(),
        );
    }

    fn cni_conf(&self, i: usize) -> String {
        let n = &self.nodes[i];
        json!({
            "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "serval-cni",
            "nodename": n.name, "datastore_type": "etcdv3",
            "etcd_endpoints": "http://127.0.0.1:2379",
            "mtu_file": n.var_dir.join("mtu").display().to_string(),
            "ipam": {"type": "serval-ipam"}
        })
        .to_string()
    }

    fn routes(&self, i: usize) -> String {
        self.nodes[i]
            .ns
            .output(&["ip", "route", "show", "proto", "81"])
            .unwrap_or_default()
    }

    /// Block of node `j` as node `i` routes it: the route line, once it exists.
    fn route_to_pod(&self, i: usize, pod_ip: IpAddr) -> Option<String> {
        let out = self.nodes[i]
            .ns
            .output(&["ip", "route", "get", &pod_ip.to_string()])
            .ok()?;
        Some(out.lines().next()?.to_string())
    }

    /// Every pod pings every other pod and fetches from its TCP server.
    fn all_pairs_reach(&self, what: &str) {
        for (ni, from_name, from, _) in &self.pods {
            for (nj, to_name, _, to_ip) in &self.pods {
                if from_name == to_name {
                    continue;
                }
                eventually(
                    &format!(
                        "{what}: pod {from_name} (node {}) reaches {to_name} (node {}, {to_ip})",
                        self.nodes[*ni].name, self.nodes[*nj].name
                    ),
                    Duration::from_secs(30),
                    || {
                        from.exec(&["ping", "-c", "1", "-W", "1", &to_ip.to_string()])
                            .map_err(|e| format!("ping: {e}"))?;
                        let got = from
                            .tcp_fetch(SocketAddr::new(*to_ip, 8080))
                            .map_err(|e| format!("tcp: {e}"))?;
                        (got == *to_name)
                            .then_some(())
                            .ok_or(format!("tcp answered {got:?}"))
                    },
                    || {
                        format!(
                            "routes on {}:\n{}\n{}",
                            self.nodes[*ni].name,
                            self.routes(*ni),
                            self.logs()
                        )
                    },
                );
            }
        }
    }
}

/// Whether this kernel can create `kind` links (probed in a throwaway namespace).
fn kernel_has(kind: &[&str]) -> Result<(), String> {
    let ns = Netns::new("probe").map_err(|e| e.to_string())?;
    let mut args = vec!["link", "add", "probe0", "type"];
    args.extend_from_slice(kind);
    ns.ip(&args).map(drop).map_err(|e| e.to_string())
}

async fn cluster(test: &str, encap: Encap) -> Option<Cluster> {
    if !require::lab_ready(test, &["ip", "etcd", "ping"]) {
        return None;
    }
    let kind = if encap == Encap::Vxlan {
        "vxlan"
    } else {
        "ipip"
    };
    let probe_kind = if kind == "vxlan" {
        kernel_has(&["vxlan", "id", "1", "dstport", "4789"])
    } else {
        kernel_has(&["ipip"])
    };
    if let Err(why) = probe_kind {
        eprintln!(
            "SKIP {test}: this kernel cannot create `{kind}` links ({why}); the same scenario runs with VXLAN"
        );
        return None;
    }
    let etcd = EtcdServer::start(test)?;
    let ds = Datastore::new(EtcdBackend::connect(&[etcd.endpoint()]).await.unwrap());
    let mode_field = if encap == Encap::Vxlan {
        "vxlanMode"
    } else {
        "ipipMode"
    };
    let pool: IPPool = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "IPPool", "metadata": {"name": "default-ipv4-ippool"},
        "spec": {"cidr": "10.244.0.0/16", "blockSize": 26, mode_field: "CrossSubnet", "natOutgoing": true}
    }))
    .unwrap();
    ds.create(&pool).await.unwrap();

    let router = Netns::new("rt").unwrap();
    router
        .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    router
        .ip(&["link", "add", "br0", "type", "bridge"])
        .unwrap();
    router.ip(&["link", "set", "br0", "up"]).unwrap();
    router.addr("br0", "192.168.1.1/24").unwrap();
    // An "outside" address the router has no route back to pods from: only masqueraded
    // (natOutgoing) traffic gets answers.
    router.addr("lo", "203.0.113.1/32").unwrap();
    router.serve_tcp_echo_peer(8081).unwrap();
    let scratch = Scratch::new("e2e");
    let mut nodes = Vec::new();
    for (name, ip, gw) in [
        ("node-a", "192.168.1.2/24", "192.168.1.1"),
        ("node-b", "192.168.1.3/24", "192.168.1.1"),
        ("node-c", "192.168.2.2/24", "192.168.2.1"),
    ] {
        let ns = Netns::new(name).unwrap();
        let port = format!("p-{}", &name[5..]);
        link(&ns, "eth0", &router, &port).unwrap();
        if gw == "192.168.1.1" {
            router.ip(&["link", "set", &port, "master", "br0"]).unwrap();
        } else {
            router.addr(&port, "192.168.2.1/24").unwrap();
        }
        ns.addr("eth0", ip).unwrap();
        ns.ip(&["route", "add", "default", "via", gw]).unwrap();
        let forward = LoopbackForward::start(&ns, 2379, etcd.addr()).unwrap();
        let var_dir = scratch.path(name);
        nodes.push(NodeNs {
            name,
            ip,
            _forward: forward,
            ns,
            agent: None,
            var_dir,
        });
    }
    let mut c = Cluster {
        nodes,
        pods: Vec::new(),
        _router: router,
        ds,
        scratch,
        _etcd: etcd,
    };
    for i in 0..3 {
        c.start_agent(i);
    }
    for i in 0..3 {
        c.wait_ready(i);
    }
    // Two pods per node, each serving its own name on TCP 8080.
    for i in 0..3 {
        for k in 0..2 {
            let name = format!("{}-pod{k}", &c.nodes[i].name[5..]);
            let pod = Netns::new(&name).unwrap();
            let add = cni::add_pod(&c.nodes[i].ns, &pod, "e2e", &name, &c.cni_conf(i));
            assert_eq!(add.code, 0, "ADD {name}: {} {}", add.stdout, add.stderr);
            let ip = add.first_ip();
            let reply: &'static str = Box::leak(name.clone().into_boxed_str());
            pod.serve_tcp(8080, reply).unwrap();
            c.pods.push((i, name, pod, ip));
        }
    }
    Some(c)
}

async fn scenario(test: &str, encap: Encap) {
    let Some(mut c) = cluster(test, encap).await else {
        return;
    };
    let dev = if encap == Encap::Vxlan {
        "vxlan.serval"
    } else {
        "tunl0"
    };
    // Node resources carry the address with its prefix and the tunnel address.
    let a: Node =
        c.ds.get(None, "node-a")
            .await
            .unwrap()
            .expect("node-a registered");
    let bgp = a.spec.bgp.clone().unwrap();
    assert_eq!(bgp.ipv4_address.as_deref(), Some(c.nodes[0].ip));
    if encap == Encap::Vxlan {
        assert!(a.spec.ipv4_vxlan_tunnel_addr.is_some() && a.spec.vxlan_tunnel_mac_addr.is_some());
    } else {
        assert!(bgp.ipv4_ipip_tunnel_addr.is_some());
    }

    c.all_pairs_reach("first contact");
    for i in [0, 2] {
        eprintln!("routes on {}:\n{}", c.nodes[i].name, c.routes(i));
    }

    // a → b's pods natively through eth0; a → c's pods and c → a's pods through the tunnel.
    let ip_of = |node: usize| c.pods.iter().find(|p| p.0 == node).unwrap().3;
    let (b_pod, c_pod, a_pod) = (ip_of(1), ip_of(2), ip_of(0));
    let native = c.route_to_pod(0, b_pod).unwrap();
    assert!(
        native.contains("via 192.168.1.3 dev eth0"),
        "a→b must be native: {native}\n{}",
        c.routes(0)
    );
    let tunneled = c.route_to_pod(0, c_pod).unwrap();
    assert!(
        tunneled.contains(&format!("dev {dev}")),
        "a→c must be encapsulated: {tunneled}"
    );
    let back = c.route_to_pod(2, a_pod).unwrap();
    assert!(
        back.contains(&format!("dev {dev}")),
        "c→a must be encapsulated: {back}"
    );
    assert!(
        c.routes(0).contains("blackhole 10.244."),
        "a blackhole per local block: {}",
        c.routes(0)
    );
    let mtu = std::fs::read_to_string(c.nodes[0].var_dir.join("mtu")).unwrap();
    let overhead = if encap == Encap::Vxlan { 50 } else { 20 };
    assert_eq!(
        mtu.trim(),
        (1500 - overhead).to_string(),
        "pod MTU written for serval-cni"
    );

    // natOutgoing: pods reach the outside as their node; pod-to-pod keeps the pod's address.
    let (from_node, _, from_pod, from_ip) = &c.pods[0];
    let outside: SocketAddr = "203.0.113.1:8081".parse().unwrap();
    let seen = eventually(
        "a pod reaches the outside through natOutgoing",
        Duration::from_secs(20),
        || from_pod.tcp_fetch(outside).map_err(|e| e.to_string()),
        || c.logs(),
    );
    assert_eq!(
        seen,
        c.nodes[*from_node].ip.split('/').next().unwrap(),
        "masqueraded to the node's address"
    );
    let (_, _, far_pod, _) = c.pods.iter().find(|p| p.0 == 2).unwrap();
    far_pod.serve_tcp_echo_peer(8081).unwrap();
    let far_ip = c.pods.iter().find(|p| p.0 == 2).unwrap().3;
    let seen = from_pod.tcp_fetch(SocketAddr::new(far_ip, 8081)).unwrap();
    assert_eq!(
        seen,
        from_ip.to_string(),
        "pod-to-pod traffic is not masqueraded"
    );
    let nat = c.nodes[0]
        .ns
        .output(&["iptables", "-t", "nat", "-S"])
        .unwrap();
    assert!(
        nat.contains("-A POSTROUTING -m comment --comment \"serval:hook\" -j serval-POSTROUTING"),
        "{nat}"
    );

    // Stop node-b's agent: sessions drop without a NOTIFICATION, the peers keep b's routes
    // (graceful restart) and b's kernel keeps its own; pod traffic goes on.
    c.nodes[1].agent.as_mut().unwrap().stop();
    eventually(
        "node-a sees its session to node-b down",
        Duration::from_secs(30),
        || {
            let s = c.nodes[0]
                .ns
                .http_get("127.0.0.1:9179", "/status")
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| e.to_string())?;
            let b = v["peers"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["address"] == "192.168.1.3"))
                .cloned()
                .ok_or("no peer 192.168.1.3")?;
            (b["state"] != "Established")
                .then_some(())
                .ok_or(format!("still {}", b["state"]))
        },
        || c.logs(),
    );
    assert!(
        c.route_to_pod(0, b_pod)
            .unwrap()
            .contains("via 192.168.1.3"),
        "a keeps the route to b's block while b restarts:\n{}",
        c.routes(0)
    );
    c.all_pairs_reach("while node-b's agent is down");

    // b comes back: it relearns the table without ever removing its routes.
    c.start_agent(1);
    c.wait_ready(1);
    c.all_pairs_reach("after node-b's agent restarted");
    eventually(
        "node-b's sessions re-established",
        Duration::from_secs(30),
        || {
            let s = c.nodes[1]
                .ns
                .http_get("127.0.0.1:9179", "/status")
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&s).map_err(|e| e.to_string())?;
            let up = v["peers"]
                .as_array()
                .map(|ps| ps.iter().filter(|p| p["state"] == "Established").count())
                .unwrap_or(0);
            (up == 2)
                .then_some(())
                .ok_or(format!("{up} of 2 established"))
        },
        || c.logs(),
    );
    for n in &mut c.nodes {
        if let Some(a) = n.agent.as_mut() {
            assert!(a.running(), "agent {} died:\n{}", n.name, a.log_tail(40));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_cross_subnet_vxlan() {
    scenario("three_nodes_cross_subnet_vxlan", Encap::Vxlan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_cross_subnet_ipip() {
    scenario("three_nodes_cross_subnet_ipip", Encap::Ipip).await;
}
