//! A three-node Serval cluster in namespaces, shared by the end-to-end tests and the
//! benchmarks: nodes a and b on 192.168.1.0/24 (a bridge in the router namespace), node c on
//! 192.168.2.0/24 behind the router, one pool 10.244.0.0/16 with CrossSubnet encapsulation and
//! natOutgoing, agents started by PID with their logs kept for failures. The datastore is a
//! real etcd ([`three_nodes`]) or a real Kubernetes API server ([`three_nodes_kubernetes`]:
//! agents with their ServiceAccount's token, serval-cni with the kubeconfig `install-cni`
//! writes, Pods created through the API).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use serval_agent::datastore::{AnyBackend, Datastore, EtcdBackend, KubeBackend};
use serval_agent::resources::IPPool;

use crate::kube::KubeApi;
use crate::peers::Scratch;
use crate::{Daemon, EtcdServer, LoopbackForward, Netns, cni, eventually, link, require};

/// One node: its namespace, its agent, its etcd forwarder and its files.
pub struct NodeNs {
    /// Node name.
    pub name: &'static str,
    /// Its address with prefix.
    pub ip: &'static str,
    /// Its IPv6 address with prefix (dual-stack clusters).
    pub ip6: Option<&'static str>,
    _forward: LoopbackForward,
    /// Its namespace.
    pub ns: Netns,
    /// Its agent, when running.
    pub agent: Option<Daemon>,
    /// Its SERVAL_VAR_DIR.
    pub var_dir: PathBuf,
}

/// Where the cluster keeps its state.
pub enum Store {
    /// A real etcd (tests stop and restart it).
    Etcd(EtcdServer),
    /// A real Kubernetes API server, with the agents' kubeconfig (serval-node's token).
    Kubernetes {
        /// The API server.
        api: KubeApi,
        /// serval-node's kubeconfig.
        agent_kubeconfig: PathBuf,
    },
}

/// The running cluster. Fields drop in order: agents (in nodes) before the datastore.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<NodeNs>,
    /// Pods: (node index, name, namespace, address).
    pub pods: Vec<(usize, String, Netns, IpAddr)>,
    /// The router between the subnets.
    pub router: Netns,
    /// The datastore, from the test's side (the admin's, in Kubernetes mode).
    pub ds: Datastore<AnyBackend>,
    scratch: Scratch,
    /// The cluster's etcd or API server.
    pub store: Store,
    /// Settings every node's serval-node gets on top of the usual ones.
    extra_env: Vec<String>,
    /// Dual-stack: pods get an IPv6 address too.
    dual_stack: bool,
    /// Pod name → its addresses after the first (its IPv6 one, dual-stack).
    pub more_ips: std::collections::BTreeMap<String, Vec<IpAddr>>,
}

/// How the cross-subnet path is encapsulated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Encap {
    /// vxlanMode: CrossSubnet.
    Vxlan,
    /// ipipMode: CrossSubnet.
    Ipip,
}

impl Cluster {
    /// The agents' log tails.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| n.agent.as_ref().map(|a| a.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The cluster's etcd (etcd mode; panics otherwise).
    pub fn etcd(&mut self) -> &mut EtcdServer {
        match &mut self.store {
            Store::Etcd(e) => e,
            Store::Kubernetes { .. } => panic!("this cluster runs on the Kubernetes API"),
        }
    }

    /// The API server (Kubernetes mode; panics otherwise).
    pub fn api(&self) -> &KubeApi {
        match &self.store {
            Store::Kubernetes { api, .. } => api,
            Store::Etcd(_) => panic!("this cluster runs on etcd"),
        }
    }

    /// Node `i`'s CNI configuration directory (Kubernetes mode: where install-cni and the
    /// agent keep serval-cni's kubeconfig).
    fn cni_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].var_dir.join("cni-net.d")
    }

    /// The environment a node's serval-node runs with, as the DaemonSet sets it.
    fn node_env(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        let mut env = vec![
            format!("NODENAME={}", n.name),
            format!("SERVAL_VAR_DIR={}", n.var_dir.display()),
            "SERVAL_HTTP_ADDRESS=127.0.0.1:9179".into(),
            "SERVAL_LOG=info,serval_bgp=info".into(),
        ];
        env.extend(self.extra_env.iter().cloned());
        match &self.store {
            Store::Etcd(_) => env.extend([
                "DATASTORE_TYPE=etcdv3".into(),
                "ETCD_ENDPOINTS=http://127.0.0.1:2379".into(),
                "IP_AUTODETECTION_METHOD=interface=eth0".into(),
            ]),
            Store::Kubernetes {
                api,
                agent_kubeconfig,
            } => env.extend([
                // serval-config.yaml's values; the pool is created by the first agent.
                "DATASTORE_TYPE=kubernetes".into(),
                "IP=autodetect".into(),
                "IP_AUTODETECTION_METHOD=first-found".into(),
                "SERVAL_IPV4POOL_CIDR=10.244.0.0/16".into(),
                "SERVAL_IPV4POOL_VXLAN=CrossSubnet".into(),
                "SERVAL_IPV4POOL_IPIP=Never".into(),
                "POD_NAMESPACE=kube-system".into(),
                // What a pod gets: the API server's address and its account's files.
                "KUBERNETES_SERVICE_HOST=127.0.0.1".into(),
                format!("KUBERNETES_SERVICE_PORT={}", api.port()),
                format!("KUBECONFIG={}", agent_kubeconfig.display()),
                format!(
                    "SERVAL_SERVICE_ACCOUNT_DIR={}",
                    self.scratch.path("serviceaccount").display()
                ),
                format!("SERVAL_CNI_CONF_DIR={}", self.cni_dir(i).display()),
            ]),
        }
        env
    }

    /// Runs `serval-node install-cni` for node `i` (Kubernetes mode) as the DaemonSet's init
    /// container does: the plugin, its conflist and its kubeconfig with its own token.
    fn install_cni(&self, i: usize) {
        let n = &self.nodes[i];
        let bin = require::serval_bin("serval-node");
        let cni_bin = require::serval_bin("serval-cni");
        let dir = self.cni_dir(i);
        std::fs::create_dir_all(&dir).expect("cni dir");
        let tpl = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"serval-cni","datastore_type":"__DATASTORE_TYPE__","etcd_endpoints":"__ETCD_ENDPOINTS__","nodename":"__NODENAME__","mtu":0,"ipam":{"type":"serval-ipam"}}]}"#;
        let mut args: Vec<String> = vec!["env".into()];
        args.extend(self.node_env(i));
        args.extend([
            bin.display().to_string(),
            "install-cni".into(),
            "--bin-dir".into(),
            self.nodes[i].var_dir.join("cni-bin").display().to_string(),
            "--conf-dir".into(),
            dir.display().to_string(),
            "--source".into(),
            cni_bin.display().to_string(),
            "--network-config".into(),
            tpl.into(),
            "--node-name".into(),
            n.name.into(),
            "--datastore-type".into(),
            "kubernetes".into(),
            "--no-sysctl".into(),
        ]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = n.ns.exec(&argv).expect("run install-cni");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("its own ServiceAccount's token"),
            "install-cni on {}: {text}{}",
            n.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts node `i`'s agent.
    pub fn start_agent(&mut self, i: usize) {
        let n = &self.nodes[i];
        let bin = require::serval_bin("serval-node");
        let env = self.node_env(i);
        let mut args: Vec<String> = vec!["env".into()];
        args.extend(env);
        args.push(bin.display().to_string());
        args.push("run".into());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let d = Daemon::start(&n.ns, &format!("agent-{}", n.name), &argv, &self.scratch.0)
            .expect("start serval-node");
        self.nodes[i].agent = Some(d);
    }

    /// Waits for node `i`'s `/readyz`.
    pub fn wait_ready(&self, i: usize) {
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

    /// The CNI network configuration for node `i`.
    pub fn cni_conf(&self, i: usize) -> String {
        let n = &self.nodes[i];
        let mut conf = match &self.store {
            Store::Etcd(_) => json!({
                "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "serval-cni",
                "nodename": n.name, "datastore_type": "etcdv3",
                "etcd_endpoints": "http://127.0.0.1:2379",
                "mtu_file": n.var_dir.join("mtu").display().to_string(),
                "ipam": {"type": "serval-ipam"}
            }),
            Store::Kubernetes { .. } => json!({
                "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "serval-cni",
                "nodename": n.name, "datastore_type": "kubernetes",
                "mtu_file": n.var_dir.join("mtu").display().to_string(),
                "ipam": {"type": "serval-ipam"},
                "kubernetes": {"kubeconfig": self.cni_dir(i).join(
                    serval_agent::node::install_cni::KUBECONFIG_NAME).display().to_string()}
            }),
        };
        if self.dual_stack {
            conf["ipam"]["assign_ipv6"] = json!(true);
        }
        conf.to_string()
    }

    /// Serval's routes on node `i`.
    pub fn routes(&self, i: usize) -> String {
        self.nodes[i]
            .ns
            .output(&["ip", "route", "show", "proto", "81"])
            .unwrap_or_default()
    }

    /// How node `i` routes to `pod_ip` (`ip route get`'s first line).
    pub fn route_to_pod(&self, i: usize, pod_ip: IpAddr) -> Option<String> {
        let out = self.nodes[i]
            .ns
            .output(&["ip", "route", "get", &pod_ip.to_string()])
            .ok()?;
        Some(out.lines().next()?.to_string())
    }

    /// Every pod pings every other pod and fetches from its TCP server.
    pub fn all_pairs_reach(&self, what: &str) {
        self.pairs_reach(what, |_, _| true);
    }

    /// Like [`Cluster::all_pairs_reach`], for the pairs of node indexes `which` accepts.
    pub fn pairs_reach(&self, what: &str, which: impl Fn(usize, usize) -> bool) {
        for (ni, from_name, from, _) in &self.pods {
            let targets = self.pods.iter().flat_map(|(nj, to_name, _, first)| {
                let more = self.more_ips.get(to_name).into_iter().flatten();
                std::iter::once(first)
                    .chain(more)
                    .map(move |ip| (nj, to_name, ip))
            });
            for (nj, to_name, to_ip) in targets {
                if from_name == to_name || !which(*ni, *nj) {
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
pub fn kernel_has(kind: &[&str]) -> Result<(), String> {
    let ns = Netns::new("probe").map_err(|e| e.to_string())?;
    let mut args = vec!["link", "add", "probe0", "type"];
    args.extend_from_slice(kind);
    ns.ip(&args).map(drop).map_err(|e| e.to_string())
}

/// Whether the kernel can create the tunnel `encap` needs (says why not).
fn encap_ready(test: &str, encap: Encap) -> bool {
    let (kind, probe) = if encap == Encap::Vxlan {
        (
            "vxlan",
            kernel_has(&["vxlan", "id", "1", "dstport", "4789"]),
        )
    } else {
        ("ipip", kernel_has(&["ipip"]))
    };
    if let Err(why) = probe {
        eprintln!(
            "SKIP {test}: this kernel cannot create `{kind}` links ({why}); the same scenario runs with VXLAN"
        );
        return false;
    }
    true
}

/// The router and the three node namespaces, each with a loopback forwarder to `store_addr`
/// at `store_port` (etcd, or the API server).
fn topology(
    scratch: &Scratch,
    store_port: u16,
    store_addr: SocketAddr,
    dual_stack: bool,
) -> (Netns, Vec<NodeNs>) {
    let router = Netns::new("rt").unwrap();
    router
        .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    if dual_stack {
        router
            .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
            .unwrap();
    }
    router
        .ip(&["link", "add", "br0", "type", "bridge"])
        .unwrap();
    router.ip(&["link", "set", "br0", "up"]).unwrap();
    router.addr("br0", "192.168.1.1/24").unwrap();
    // An "outside" address the router has no route back to pods from: only masqueraded
    // (natOutgoing) traffic gets answers.
    router.addr("lo", "203.0.113.1/32").unwrap();
    if dual_stack {
        router.addr("br0", V6_SUBNET_1_ROUTER).unwrap();
        router.addr("lo", V6_OUTSIDE).unwrap();
    }
    router.serve_tcp_echo_peer(8081).unwrap();
    let mut nodes = Vec::new();
    for ((name, ip, gw), (ip6, gw6)) in [
        ("node-a", "192.168.1.2/24", "192.168.1.1"),
        ("node-b", "192.168.1.3/24", "192.168.1.1"),
        ("node-c", "192.168.2.2/24", "192.168.2.1"),
    ]
    .into_iter()
    .zip([
        ("2001:db8:1::2/64", "2001:db8:1::1"),
        ("2001:db8:1::3/64", "2001:db8:1::1"),
        ("2001:db8:2::2/64", "2001:db8:2::1"),
    ]) {
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
        if dual_stack {
            if gw == "192.168.2.1" {
                router.addr(&port, "2001:db8:2::1/64").unwrap();
            }
            ns.addr("eth0", ip6).unwrap();
            ns.ip(&["-6", "route", "add", "default", "via", gw6])
                .unwrap();
        }
        let forward = LoopbackForward::start(&ns, store_port, store_addr).unwrap();
        let var_dir = scratch.path(name);
        nodes.push(NodeNs {
            name,
            ip,
            ip6: dual_stack.then_some(ip6),
            _forward: forward,
            ns,
            agent: None,
            var_dir,
        });
    }
    (router, nodes)
}

/// The router's address on a and b's IPv6 subnet (dual-stack clusters).
const V6_SUBNET_1_ROUTER: &str = "2001:db8:1::1/64";
/// The IPv6 "outside" address (natOutgoing checks), on the router's loopback.
pub const V6_OUTSIDE: &str = "2001:db8:ff::1/128";

/// Builds the three-node cluster on etcd with running agents and no pods yet; `None`
/// (after saying why) when the kernel or the machine cannot.
pub async fn three_nodes(test: &str, encap: Encap) -> Option<Cluster> {
    three_nodes_with(test, encap, &[]).await
}

/// [`three_nodes`] with extra serval-node settings (`NAME=value`) on every node.
pub async fn three_nodes_with(test: &str, encap: Encap, env: &[&str]) -> Option<Cluster> {
    three_nodes_on_etcd(test, encap, env, false).await
}

/// [`three_nodes`] with etcd's data on the machine's disk (every write waits for fsync), as
/// a real cluster runs: for benchmarks of datastore round trips.
pub async fn three_nodes_etcd_on_disk(test: &str, encap: Encap) -> Option<Cluster> {
    let etcd = EtcdServer::start_on_disk(test)?;
    three_nodes_with_etcd(test, encap, &[], false, etcd).await
}

/// The three-node cluster dual-stack (VXLAN CrossSubnet in both families): the nodes have
/// IPv6 addresses too (2001:db8:1::/64 for a and b, 2001:db8:2::/64 for c), serval-node runs
/// with Calico's IPv6 settings (`IP6=autodetect`, `CALICO_IPV6POOL_CIDR=fd00:10:244::/48`
/// with natOutgoing; the first agent creates that pool) and pods get both families.
pub async fn three_nodes_dual_stack(test: &str) -> Option<Cluster> {
    let env = [
        "IP6=autodetect",
        "IP6_AUTODETECTION_METHOD=interface=eth0",
        "CALICO_IPV6POOL_CIDR=fd00:10:244::/48",
        "CALICO_IPV6POOL_NAT_OUTGOING=true",
    ];
    three_nodes_on_etcd(test, Encap::Vxlan, &env, true).await
}

async fn three_nodes_on_etcd(
    test: &str,
    encap: Encap,
    env: &[&str],
    dual_stack: bool,
) -> Option<Cluster> {
    if !require::lab_ready(test, &["ip", "etcd", "ping"]) || !encap_ready(test, encap) {
        return None;
    }
    let etcd = EtcdServer::start(test)?;
    three_nodes_with_etcd(test, encap, env, dual_stack, etcd).await
}

async fn three_nodes_with_etcd(
    test: &str,
    encap: Encap,
    env: &[&str],
    dual_stack: bool,
    etcd: EtcdServer,
) -> Option<Cluster> {
    if !require::lab_ready(test, &["ip", "etcd", "ping"]) || !encap_ready(test, encap) {
        return None;
    }
    let ds = Datastore::new(AnyBackend::Etcd(Box::new(
        EtcdBackend::connect(&[etcd.endpoint()]).await.unwrap(),
    )));
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
    let scratch = Scratch::new("e2e");
    let (router, nodes) = topology(&scratch, 2379, etcd.addr(), dual_stack);
    Some(Cluster::running(
        nodes,
        router,
        ds,
        scratch,
        Store::Etcd(etcd),
        env.iter().map(|e| e.to_string()).collect(),
        dual_stack,
    ))
}

/// The three-node cluster on a real Kubernetes API server (VXLAN CrossSubnet), with Serval
/// installed from its manifests: agents with serval-node's token and the DaemonSet's
/// settings, serval-cni installed per node by `install-cni`; no pods yet.
pub async fn three_nodes_kubernetes(test: &str) -> Option<Cluster> {
    if !require::lab_ready(test, &["ip", "ping"]) || !encap_ready(test, Encap::Vxlan) {
        return None;
    }
    let api = KubeApi::start(test)?;
    api.apply_manifests(&["crds.yaml", "rbac.yaml"])
        .expect("install Serval's CRDs and RBAC");
    let scratch = Scratch::new("e2e-k8s");
    // What the kubelet mounts into serval-node's pods: its account's token and the CA.
    let sa = scratch.path("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    let token = api.token("kube-system", "serval-node");
    std::fs::write(sa.join("token"), &token).unwrap();
    std::fs::copy(api.ca(), sa.join("ca.crt")).unwrap();
    let agent_kubeconfig = api.kubeconfig_with_token("serval-node", &token);
    let ds = Datastore::new(AnyBackend::Kubernetes(
        KubeBackend::connect_with(&api.admin.display().to_string())
            .await
            .expect("admin connection"),
    ));
    let (router, nodes) = topology(&scratch, api.port(), api.addr(), false);
    let store = Store::Kubernetes {
        api,
        agent_kubeconfig,
    };
    Some(Cluster::running(
        nodes,
        router,
        ds,
        scratch,
        store,
        Vec::new(),
        false,
    ))
}

impl Cluster {
    /// Starts every node (install-cni first in Kubernetes mode) and waits until all are ready.
    fn running(
        nodes: Vec<NodeNs>,
        router: Netns,
        ds: Datastore<AnyBackend>,
        scratch: Scratch,
        store: Store,
        extra_env: Vec<String>,
        dual_stack: bool,
    ) -> Cluster {
        let mut c = Cluster {
            nodes,
            pods: Vec::new(),
            router,
            ds,
            scratch,
            store,
            extra_env,
            dual_stack,
            more_ips: Default::default(),
        };
        for i in 0..3 {
            if matches!(c.store, Store::Kubernetes { .. }) {
                c.install_cni(i);
            }
            c.start_agent(i);
        }
        for i in 0..3 {
            c.wait_ready(i);
        }
        c
    }

    /// Adds pod `name` on node `i` through serval-cni; it serves its own name on TCP 8080.
    pub fn add_pod(&mut self, i: usize, name: &str) -> IpAddr {
        self.add_pod_from(i, name, &[])
    }

    /// Like [`Cluster::add_pod`], with the address taken from the named pools only.
    pub fn add_pod_from(&mut self, i: usize, name: &str, pools: &[&str]) -> IpAddr {
        let pod = Netns::new(name).expect("pod namespace");
        let mut conf: serde_json::Value =
            serde_json::from_str(&self.cni_conf(i)).expect("conf is JSON");
        if !pools.is_empty() {
            conf["ipam"]["ipv4_pools"] = json!(pools);
        }
        let add = cni::add_pod(&self.nodes[i].ns, &pod, "e2e", name, &conf.to_string());
        assert_eq!(add.code, 0, "ADD {name}: {} {}", add.stdout, add.stderr);
        let ip = add.first_ip();
        let reply: &'static str = Box::leak(name.to_string().into_boxed_str());
        pod.serve_tcp(8080, reply).expect("pod server");
        let more: Vec<IpAddr> = add.ips().into_iter().skip(1).collect();
        if !more.is_empty() {
            self.more_ips.insert(name.to_string(), more);
        }
        self.pods.push((i, name.to_string(), pod, ip));
        ip
    }
}
