//! serval-cni driven as a container runtime drives it (environment variables + stdin, JSON
//! on stdout), against a real etcd, in namespaces the test creates: a working pod, CHECK, DEL
//! (twice), a failed ADD that leaves nothing behind, an exhausted pool, and bad input with the
//! spec's error codes.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};
use serval_agent::calc::routes::host_interface_name;
use serval_agent::datastore::{Datastore, EtcdBackend};
use serval_agent::resources::WorkloadEndpoint;
use serval_integration::cni::CniCall;
use serval_integration::{EtcdServer, LoopbackForward, Netns, ipam_load, require};
use serval_ipam::Ipam;

/// Runs the plugin inside the node namespace with `env` and `stdin`.
fn cni(node: &Netns, env: &[(&str, &str)], stdin: &str) -> CniCall {
    serval_integration::cni::call(node, env, stdin)
}

// Fields drop in order: the forwarder before the namespace it listens in.
struct Lab {
    _forward: LoopbackForward,
    node: Netns,
    _uplink: Netns,
    etcd_url: String,
    ds: Datastore<EtcdBackend>,
    _etcd: EtcdServer,
}

impl Lab {
    fn conf(&self, extra: Value) -> String {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "serval-cni",
            "nodename": "node-a",
            "datastore_type": "etcdv3",
            "etcd_endpoints": self.etcd_url,
            "mtu": 1400,
            "ipam": {"type": "serval-ipam"},
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            c[k] = v;
        }
        c.to_string()
    }

    fn call(&self, command: &str, id: &str, pod: &Netns, conf: &str) -> CniCall {
        self.call_as(command, id, id, pod, conf)
    }

    /// A call for sandbox `container` of pod `name` (a recreated pod keeps its name).
    fn call_as(
        &self,
        command: &str,
        container: &str,
        name: &str,
        pod: &Netns,
        conf: &str,
    ) -> CniCall {
        let netns = format!("/run/netns/{}", pod.name());
        let args = format!("K8S_POD_NAMESPACE=ns1;K8S_POD_NAME={name};IgnoreUnknown=1");
        cni(
            &self.node,
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", &args),
            ],
            conf,
        )
    }

    async fn handle_ips(&self, id: &str) -> Vec<IpAddr> {
        Ipam::new(self.ds.clone())
            .ips_for_handle(&format!("k8s-pod-network.{id}"), None)
            .await
            .expect("read handle")
    }
}

async fn lab(test: &str) -> Option<Lab> {
    if !require::lab_ready(test, &["ip", "etcd"]) {
        return None;
    }
    let etcd = EtcdServer::start(test)?;
    let node = Netns::new("cni").unwrap();
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    // An uplink with a default route, as most nodes have.
    let uplink = Netns::new("cniup").unwrap();
    serval_integration::link(&node, "eth0", &uplink, "eth0").unwrap();
    node.addr("eth0", "192.168.50.2/24").unwrap();
    uplink.addr("eth0", "192.168.50.1/24").unwrap();
    node.ip(&["route", "add", "default", "via", "192.168.50.1"])
        .unwrap();
    let forward = LoopbackForward::start(&node, 2379, etcd.addr()).unwrap();
    let ds = Datastore::new(EtcdBackend::connect(&[etcd.endpoint()]).await.unwrap());
    // Four addresses in one /30 block: enough for a few pods, small enough to run out.
    ipam_load::setup(&ds, "10.88.0.0/30", 30, &["node-a".to_string()], 0).await;
    Some(Lab {
        etcd_url: forward.url(),
        _forward: forward,
        node,
        _uplink: uplink,
        ds,
        _etcd: etcd,
    })
}

fn links(ns: &Netns) -> String {
    ns.output(&["ip", "-o", "link"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_add_check_del_and_errors_as_a_runtime_sees_them() {
    let Some(lab) = lab("cni_add_check_del").await else {
        return;
    };
    let conf = lab.conf(json!({}));

    // VERSION and STATUS.
    let v = cni(
        &lab.node,
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"1.0.0"}"#,
    );
    assert_eq!(v.code, 0, "{}", v.stdout);
    assert_eq!(
        v.json()["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );
    let s = cni(&lab.node, &[("CNI_COMMAND", "STATUS")], &conf);
    assert_eq!((s.code, s.stdout.as_str()), (0, ""));

    // ADD two pods.
    let pod1 = Netns::new("pod1").unwrap();
    let pod2 = Netns::new("pod2").unwrap();
    let add1 = lab.call("ADD", "pod1", &pod1, &conf);
    assert_eq!(add1.code, 0, "ADD pod1: {}", add1.stdout);
    let r1 = add1.json();
    let ip1: IpAddr = r1["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .parse()
        .unwrap();
    assert!(ip1.to_string().starts_with("10.88.0."), "{r1}");
    assert_eq!(r1["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(
        r1["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
    );
    let host1 = host_interface_name("ns1", "pod1");
    assert_eq!(r1["interfaces"][0]["name"], host1);
    assert_eq!(r1["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(r1["interfaces"][1]["mtu"], 1400);
    let add2 = lab.call("ADD", "pod2", &pod2, &conf);
    assert_eq!(add2.code, 0, "ADD pod2: {}", add2.stdout);
    let ip2: IpAddr = add2.json()["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .parse()
        .unwrap();
    assert_ne!(ip1, ip2);

    // The pod side and the host side look like Calico's.
    let inside = pod1.output(&["ip", "-4", "addr", "show", "eth0"]).unwrap();
    assert!(inside.contains(&format!("{ip1}/32")), "{inside}");
    assert!(inside.contains("mtu 1400"), "{inside}");
    let proutes = pod1.output(&["ip", "route"]).unwrap();
    assert!(
        proutes.contains("default via 169.254.1.1 dev eth0"),
        "{proutes}"
    );
    assert!(
        proutes.contains("169.254.1.1 dev eth0 scope link"),
        "{proutes}"
    );
    // The gateway's MAC is fixed in the pod, so it never depends on proxy ARP (which needs a
    // host route to 169.254.1.1).
    let neigh = pod1
        .output(&["ip", "neigh", "show", "dev", "eth0"])
        .unwrap();
    assert!(
        neigh.contains("169.254.1.1 lladdr ee:ee:ee:ee:ee:ee PERMANENT"),
        "{neigh}"
    );
    let hroutes = lab.node.output(&["ip", "route"]).unwrap();
    assert!(
        hroutes.contains(&format!("{ip1} dev {host1} scope link")),
        "{hroutes}"
    );
    let proxy = lab
        .node
        .output(&["cat", &format!("/proc/sys/net/ipv4/conf/{host1}/proxy_arp")])
        .unwrap();
    assert_eq!(proxy.trim(), "1");

    // The pods reach each other: ping and TCP.
    pod1.exec(&["ping", "-c", "1", "-W", "2", &ip2.to_string()])
        .unwrap_or_else(|e| panic!("pod1 → pod2 ping: {e}"));
    pod2.serve_tcp(8080, "hello from pod2").unwrap();
    let got = pod1.tcp_fetch(SocketAddr::new(ip2, 8080)).unwrap();
    assert_eq!(got, "hello from pod2");

    // The WorkloadEndpoint is recorded.
    let wep = lab
        .ds
        .get::<WorkloadEndpoint>(Some("ns1"), "node--a-k8s-pod1-eth0")
        .await
        .unwrap()
        .expect("WorkloadEndpoint for pod1");
    assert_eq!(wep.spec.interface_name, host1);
    let networks: Vec<&str> = wep.spec.ip_networks.iter().map(|n| n.text()).collect();
    assert_eq!(networks, vec![format!("{ip1}/32")]);
    assert_eq!(wep.spec.node, "node-a");

    // CHECK with the previous result passes; with a wrong one it fails.
    let with_prev = lab.conf(json!({"prevResult": r1}));
    let c = lab.call("CHECK", "pod1", &pod1, &with_prev);
    assert_eq!(c.code, 0, "CHECK: {}", c.stdout);
    let mut wrong = r1.clone();
    wrong["ips"][0]["address"] = json!("10.88.0.99/32");
    let c = lab.call(
        "CHECK",
        "pod1",
        &pod1,
        &lab.conf(json!({"prevResult": wrong})),
    );
    assert_ne!(c.code, 0);
    assert!(
        c.json()["details"].as_str().unwrap().contains("10.88.0.99"),
        "{}",
        c.stdout
    );

    // A repeated ADD fails (the interface exists) and leaves pod1 as it was.
    let again = lab.call("ADD", "pod1", &pod1, &conf);
    assert!(
        again.json()["msg"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{}",
        again.stdout
    );
    assert_eq!(lab.handle_ips("pod1").await, vec![ip1]);
    pod1.exec(&["ping", "-c", "1", "-W", "2", &ip2.to_string()])
        .unwrap();

    // A failed ADD after allocation (the kernel refuses the MTU) leaves nothing behind.
    let pod3 = Netns::new("pod3").unwrap();
    let bad_mtu = lab.conf(json!({"mtu": 100000}));
    let failed = lab.call("ADD", "pod3", &pod3, &bad_mtu);
    assert_eq!(failed.error_code(), 999, "{}", failed.stdout);
    assert!(lab.handle_ips("pod3").await.is_empty(), "address released");
    let host3 = host_interface_name("ns1", "pod3");
    assert!(!links(&lab.node).contains(&host3), "{}", links(&lab.node));
    assert!(!links(&pod3).contains("eth0"), "{}", links(&pod3));

    // Bad input gets the spec's codes.
    let no_netns = cni(
        &lab.node,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x1"),
            ("CNI_IFNAME", "eth0"),
        ],
        &conf,
    );
    assert_eq!(no_netns.error_code(), 4);
    assert!(
        no_netns.json()["msg"]
            .as_str()
            .unwrap()
            .contains("CNI_NETNS")
    );
    let bad_json = lab.call("ADD", "x2", &pod3, "{\"cniVersion\": ");
    assert_eq!(bad_json.error_code(), 6);
    let bad_version = lab.call(
        "ADD",
        "x3",
        &pod3,
        &lab.conf(json!({"cniVersion": "0.1.0"})),
    );
    assert_eq!(bad_version.error_code(), 1);
    let gone = cni(
        &lab.node,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x4"),
            ("CNI_NETNS", "/run/netns/does-not-exist-serval"),
            ("CNI_IFNAME", "eth0"),
        ],
        &conf,
    );
    assert_eq!(gone.error_code(), 3);

    // Exhaust the pool: the first ADD that finds no address gets code 100, and leaves no veth.
    let mut extra = Vec::new();
    let exhausted = loop {
        let id = format!("fill{}", extra.len());
        let ns = Netns::new(&id).unwrap();
        let call = lab.call("ADD", &id, &ns, &conf);
        extra.push(ns);
        if call.code != 0 {
            break (id, call);
        }
        assert!(extra.len() <= 4, "a /30 pool cannot hold this many pods");
    };
    assert_eq!(exhausted.1.error_code(), 100, "{}", exhausted.1.stdout);
    assert!(!links(&lab.node).contains(&host_interface_name("ns1", &exhausted.0)));

    // DEL pod1: plumbing, address and endpoint go; DEL again and DEL without a netns succeed.
    let d = lab.call("DEL", "pod1", &pod1, &conf);
    assert_eq!((d.code, d.stdout.as_str()), (0, ""), "DEL: {}", d.stdout);
    assert!(!links(&lab.node).contains(&host1));
    assert!(lab.handle_ips("pod1").await.is_empty());
    assert!(
        lab.ds
            .get::<WorkloadEndpoint>(Some("ns1"), "node--a-k8s-pod1-eth0")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(lab.call("DEL", "pod1", &pod1, &conf).code, 0);
    let del_no_netns = cni(
        &lab.node,
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "pod1"),
            ("CNI_IFNAME", "eth0"),
        ],
        &conf,
    );
    assert_eq!(del_no_netns.code, 0, "{}", del_no_netns.stdout);

    // The freed address is usable again.
    let (id, _) = exhausted;
    let ns = extra.last().unwrap();
    let retry = lab.call("ADD", &id, ns, &conf);
    assert_eq!(retry.code, 0, "ADD after a release: {}", retry.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_get_both_families_and_reach_each_other() {
    let Some(lab) = lab("dual_stack_pods").await else {
        return;
    };
    let v6pool: serval_agent::resources::IPPool = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "IPPool", "metadata": {"name": "v6"},
        "spec": {"cidr": "fd00:88::/120", "blockSize": 122}
    }))
    .unwrap();
    lab.ds.create(&v6pool).await.unwrap();
    lab.node
        .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();
    let conf = lab.conf(json!({"ipam": {"type": "serval-ipam", "assign_ipv6": true}}));
    let (p1, p2) = (Netns::new("ds1").unwrap(), Netns::new("ds2").unwrap());
    let a1 = lab.call("ADD", "ds1", &p1, &conf);
    assert_eq!(a1.code, 0, "{}", a1.stdout);
    let a2 = lab.call("ADD", "ds2", &p2, &conf);
    assert_eq!(a2.code, 0, "{}", a2.stdout);
    let r = a1.json();
    let addrs: Vec<&str> = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert_eq!(addrs.len(), 2, "{r}");
    assert!(
        addrs[1].starts_with("fd00:88::") && addrs[1].ends_with("/128"),
        "{r}"
    );
    assert_eq!(
        r["routes"][1],
        json!({"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"})
    );
    let v6_of = |c: &serval_integration::cni::CniCall| -> String {
        c.json()["ips"][1]["address"]
            .as_str()
            .unwrap()
            .trim_end_matches("/128")
            .to_string()
    };
    let host_routes = lab.node.output(&["ip", "-6", "route"]).unwrap();
    assert!(
        host_routes.contains(&format!(
            "{} dev {}",
            v6_of(&a1),
            host_interface_name("ns1", "ds1")
        )),
        "{host_routes}"
    );
    p1.exec(&["ping", "-6", "-c", "1", "-W", "2", &v6_of(&a2)])
        .unwrap_or_else(|e| panic!("IPv6 pod to pod: {e}"));
    p1.exec(&["ping", "-c", "1", "-W", "2", &a2.first_ip().to_string()])
        .unwrap_or_else(|e| panic!("IPv4 pod to pod: {e}"));
    // DEL releases both families.
    assert_eq!(lab.call("DEL", "ds1", &p1, &conf).code, 0);
    assert!(lab.handle_ips("ds1").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_pods_old_sandbox_del_never_touches_the_new_one() {
    let Some(lab) = lab("cni_sandbox_scoping").await else {
        return;
    };
    let conf = lab.conf(json!({}));
    let wep_name = serval_agent::cni::plugin::endpoint_name("node-a", "web", "eth0");
    let wep_owner = || async {
        lab.ds
            .get::<WorkloadEndpoint>(Some("ns1"), &wep_name)
            .await
            .unwrap()
            .map(|w| w.spec.container_id)
    };
    let usual = host_interface_name("ns1", "web");

    // Order 1: the new sandbox's ADD comes before the old one's DEL.
    let old = Netns::new("sbold").unwrap();
    let new = Netns::new("sbnew").unwrap();
    let a = lab.call_as("ADD", "c-old", "web", &old, &conf);
    assert_eq!(a.code, 0, "{}", a.stdout);
    assert_eq!(a.json()["interfaces"][0]["name"], usual);
    let b = lab.call_as("ADD", "c-new", "web", &new, &conf);
    assert_eq!(b.code, 0, "{}", b.stdout);
    let new_if = b.json()["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_if, usual, "the old sandbox still holds the usual name");
    assert!(
        links(&lab.node).contains(&format!("{usual}@")),
        "ADD did not delete the other container's veth"
    );
    assert_eq!(wep_owner().await.as_deref(), Some("c-new"));
    let new_ips = lab.handle_ips("c-new").await;
    let d = lab.call_as("DEL", "c-old", "web", &old, &conf);
    assert_eq!(d.code, 0, "{}", d.stdout);
    let l = links(&lab.node);
    assert!(!l.contains(&format!("{usual}@")), "old veth gone: {l}");
    assert!(l.contains(&format!("{new_if}@")), "new veth kept: {l}");
    assert!(lab.handle_ips("c-old").await.is_empty());
    assert_eq!(lab.handle_ips("c-new").await, new_ips, "new address kept");
    assert_eq!(
        wep_owner().await.as_deref(),
        Some("c-new"),
        "new endpoint kept"
    );
    // The new sandbox still passes CHECK.
    let mut prev: Value = serde_json::from_str(&conf).unwrap();
    prev["prevResult"] = b.json();
    let c = lab.call_as("CHECK", "c-new", "web", &new, &prev.to_string());
    assert_eq!(c.code, 0, "{}", c.stdout);
    let d = lab.call_as("DEL", "c-new", "web", &new, &conf);
    assert_eq!(d.code, 0, "{}", d.stdout);
    assert!(wep_owner().await.is_none());

    // Order 2: DEL of the old sandbox first, then ADD of the new one: the usual name.
    let old2 = Netns::new("sbold2").unwrap();
    let new2 = Netns::new("sbnew2").unwrap();
    assert_eq!(lab.call_as("ADD", "c-1", "web", &old2, &conf).code, 0);
    assert_eq!(lab.call_as("DEL", "c-1", "web", &old2, &conf).code, 0);
    let e = lab.call_as("ADD", "c-2", "web", &new2, &conf);
    assert_eq!(e.code, 0, "{}", e.stdout);
    assert_eq!(e.json()["interfaces"][0]["name"], usual);
    // A late, repeated DEL of the old sandbox changes nothing.
    assert_eq!(lab.call_as("DEL", "c-1", "web", &old2, &conf).code, 0);
    assert!(links(&lab.node).contains(&format!("{usual}@")));
    assert_eq!(wep_owner().await.as_deref(), Some("c-2"));
    assert_eq!(lab.call_as("DEL", "c-2", "web", &new2, &conf).code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_etcd_mode_the_endpoint_gets_the_pods_labels_account_and_ports_from_the_api() {
    let Some(lab) = lab("cni_pod_facts").await else {
        return;
    };
    let Some(api) = serval_integration::kube::KubeApi::start("cni_pod_facts") else {
        return;
    };
    api.apply_manifests(&["crds.yaml", "rbac.yaml"]).unwrap();
    let scratch = serval_integration::peers::Scratch::new("cni-facts");
    let objects = scratch.path("pod.yaml");
    std::fs::write(
        &objects,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns1}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web-sa, namespace: ns1}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: ns1, labels: {app: web, tier: front}}\n\
         spec:\n  nodeName: node-a\n  serviceAccountName: web-sa\n  automountServiceAccountToken: false\n\
         \x20 containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}, {containerPort: 9}]}]\n",
    )
    .unwrap();
    api.kubectl_ok(&["apply", "-f", &objects.display().to_string()]);
    // serval-cni's own identity, reached from the node's namespace.
    let token = api.token("kube-system", "serval-cni");
    let kubeconfig = api.kubeconfig_with_token("serval-cni", &token);
    let _forward = LoopbackForward::start(&lab.node, api.port(), api.addr()).unwrap();
    let conf = lab.conf(json!({"kubernetes": {"kubeconfig": kubeconfig.display().to_string()}}));
    let pod = Netns::new("factspod").unwrap();
    let add = lab.call("ADD", "web", &pod, &conf);
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    let wep_name = serval_agent::cni::plugin::endpoint_name("node-a", "web", "eth0");
    let w: WorkloadEndpoint = lab.ds.get(Some("ns1"), &wep_name).await.unwrap().unwrap();
    let labels = w.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        (labels["app"].as_str(), labels["tier"].as_str()),
        ("web", "front")
    );
    assert_eq!(w.spec.service_account_name.as_deref(), Some("web-sa"));
    assert!(
        w.spec.profiles.contains(&"ksa.ns1.web-sa".to_string()),
        "{:?}",
        w.spec.profiles
    );
    assert_eq!(
        w.spec.ports.len(),
        1,
        "only named ports: {:?}",
        w.spec.ports
    );
    assert_eq!(
        (w.spec.ports[0].name.as_str(), w.spec.ports[0].port),
        ("http", 8080)
    );
    // A pod the API server does not know: the ADD fails, retryably, and leaves nothing.
    let ghost = Netns::new("ghostpod").unwrap();
    let add = lab.call("ADD", "ghost", &ghost, &conf);
    assert_eq!(add.error_code(), 11, "{}", add.stdout);
    assert!(lab.handle_ips("ghost").await.is_empty());
}
