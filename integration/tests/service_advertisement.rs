//! Service IP advertisement as a ToR sees it (issue 17, items 1 and 2): three serval-node
//! agents in Kubernetes mode on a real API server peer with BIRD on the router between their
//! subnets. The service ranges come through every node (ECMP at the ToR) and carry the
//! configured community; a Service with `externalTrafficPolicy: Local` has its cluster IP,
//! external IP and LoadBalancer IP advertised as /32 only by the node whose endpoint is ready,
//! following the endpoint when it moves and withdrawn when none is left. No node learns
//! another node's service routes (none becomes a kernel route). With
//! `serviceLoadBalancerAggregation: Disabled` the LoadBalancer range goes and each address
//! comes as a /32 (from every node for a Cluster-policy Service). Traffic to a service address
//! still needs kube-proxy on the node; this test checks the routing only.

use std::collections::BTreeSet;
use std::time::Duration;

use serval_integration::cluster::{Cluster, three_nodes_kubernetes};
use serval_integration::peers::{Bird, RefRouter, Scratch};
use serval_integration::{eventually, require};

const TEST: &str = "services_are_advertised_by_every_node_and_local_ones_by_their_endpoints_nodes";

fn kubectl_apply(c: &Cluster, scratch: &Scratch, yaml: &str) {
    let file = scratch.path("objects.yaml");
    std::fs::write(&file, yaml).unwrap();
    c.api()
        .kubectl_ok(&["apply", "-f", &file.display().to_string()]);
}

/// The next hops BIRD has for exactly `prefix` (one per node that advertises it).
fn next_hops(bird: &Bird<'_>, prefix: &str) -> BTreeSet<String> {
    let out = bird.birdc(&format!("show route {prefix}"));
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("via "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(String::from)
        .collect()
}

fn expect_hops(c: &Cluster, bird: &Bird<'_>, prefix: &str, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(
        &format!("the ToR's next hops for {prefix} are {want:?}"),
        Duration::from_secs(30),
        || {
            let got = next_hops(bird, prefix);
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
        || format!("{}\n{}", bird.birdc("show protocols"), c.logs()),
    );
}

/// An EndpointSlice for Service `web` with one endpoint per `(node, ready)`.
fn slice(endpoints: &[(&str, bool)]) -> String {
    let mut yaml = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                    metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\n\
                    addressType: IPv4\nports: [{port: 8080, protocol: TCP}]\nendpoints:\n"
        .to_string();
    for (i, (node, ready)) in endpoints.iter().enumerate() {
        yaml += &format!(
            "  - {{addresses: [10.244.250.{}], nodeName: {node}, conditions: {{ready: {ready}}}}}\n",
            i + 1
        );
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_advertised_by_every_node_and_local_ones_by_their_endpoints_nodes() {
    if !require::lab_ready(TEST, &["bird", "birdc"]) {
        return;
    }
    let Some(c) = three_nodes_kubernetes(TEST).await else {
        return;
    };
    let scratch = Scratch::new("svc-adv");
    let bird_dir = scratch.path("bird");
    std::fs::create_dir_all(&bird_dir).unwrap();
    // The ToR: one eBGP session per node, taking everything, sending nothing.
    let mut conf = "router id 192.168.1.1;\nlog stderr all;\nprotocol device {}\n".to_string();
    for (name, ip) in [
        ("na", "192.168.1.2"),
        ("nb", "192.168.1.3"),
        ("nc", "192.168.2.2"),
    ] {
        conf += &format!(
            "protocol bgp {name} {{ local as 65000; neighbor {ip} as 64512; \
             connect retry time 1; error wait time 1, 2; ipv4 {{ import all; export none; }}; }}\n"
        );
    }
    let mut bird = Bird::with_config(&c.router, &bird_dir, &conf);
    bird.start();

    kubectl_apply(
        &c,
        &scratch,
        "apiVersion: serval.dev/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec:\n\
         \x20 serviceClusterIPs: [{cidr: 10.96.0.0/16}]\n\
         \x20 serviceExternalIPs: [{cidr: 198.51.100.0/24}]\n\
         \x20 serviceLoadBalancerIPs: [{cidr: 198.18.0.0/24}]\n\
         \x20 communities: [{name: svc, value: '64512:300'}]\n\
         \x20 prefixAdvertisements: [{cidr: 10.96.0.0/16, communities: [svc]}]\n\
         ---\napiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: tor-a}\n\
         spec: {node: node-a, peerIP: 192.168.1.1, asNumber: 65000}\n\
         ---\napiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: tor-b}\n\
         spec: {node: node-b, peerIP: 192.168.1.1, asNumber: 65000}\n\
         ---\napiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: tor-c}\n\
         spec: {node: node-c, peerIP: 192.168.2.1, asNumber: 65000}\n",
    );
    let all = ["192.168.1.2", "192.168.1.3", "192.168.2.2"];
    for range in ["10.96.0.0/16", "198.51.100.0/24", "198.18.0.0/24"] {
        expect_hops(&c, &bird, range, &all);
    }
    let detail = bird.birdc("show route 10.96.0.0/16 all");
    assert!(
        detail.contains("(64512,300)"),
        "the range carries the community:\n{detail}"
    );

    // A LoadBalancer Service with traffic kept on its endpoints' nodes; the API server picks
    // its cluster IP, the load balancer's address is set in status as a controller would.
    kubectl_apply(
        &c,
        &scratch,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n\
         spec: {type: LoadBalancer, externalTrafficPolicy: Local, selector: {app: web},\n\
         \x20      externalIPs: [198.51.100.7], ports: [{port: 80, targetPort: 8080}]}\n",
    );
    c.api().kubectl_ok(&[
        "patch",
        "service",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"198.18.0.5"}]}}}"#,
    ]);
    let cluster_ip =
        c.api()
            .kubectl_ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let hosts = [
        format!("{}/32", cluster_ip.trim()),
        "198.51.100.7/32".to_string(),
        "198.18.0.5/32".to_string(),
    ];
    // No ready endpoint yet: no host routes.
    kubectl_apply(&c, &scratch, &slice(&[("node-a", false)]));
    std::thread::sleep(Duration::from_secs(2));
    for h in &hosts {
        assert!(next_hops(&bird, h).is_empty(), "{h} with no ready endpoint");
    }

    kubectl_apply(&c, &scratch, &slice(&[("node-a", true), ("node-b", false)]));
    for h in &hosts {
        expect_hops(&c, &bird, h, &["192.168.1.2"]);
    }
    // The endpoint moves to node-c (and one appears on node-b): the routes follow.
    kubectl_apply(
        &c,
        &scratch,
        &slice(&[("node-a", false), ("node-b", true), ("node-c", true)]),
    );
    for h in &hosts {
        expect_hops(&c, &bird, h, &["192.168.1.3", "192.168.2.2"]);
    }
    // No node took another node's service routes: none is a kernel route anywhere.
    for i in 0..3 {
        let routes = c.nodes[i]
            .ns
            .output(&["ip", "route", "show", "match", cluster_ip.trim()])
            .unwrap();
        assert!(
            !routes.contains("10.96.") && !routes.contains(&cluster_ip),
            "{}: {routes}",
            c.nodes[i].name
        );
    }
    // The last endpoint goes: withdrawn; the ranges stay.
    c.api()
        .kubectl_ok(&["delete", "endpointslice", "web-1", "-n", "default"]);
    for h in &hosts {
        expect_hops(&c, &bird, h, &[]);
    }
    expect_hops(&c, &bird, "10.96.0.0/16", &all);

    // serviceLoadBalancerAggregation: Disabled: the LoadBalancer range is withdrawn and a
    // Cluster-policy Service's LoadBalancer address comes from every node as a /32.
    kubectl_apply(
        &c,
        &scratch,
        "apiVersion: v1\nkind: Service\nmetadata: {name: shop, namespace: default}\n\
         spec: {type: LoadBalancer, selector: {app: shop}, ports: [{port: 80}]}\n",
    );
    c.api().kubectl_ok(&[
        "patch",
        "service",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"198.18.0.9"}]}}}"#,
    ]);
    c.api().kubectl_ok(&[
        "patch",
        "bgpconfigurations.serval.dev",
        "default",
        "--type=merge",
        "-p",
        r#"{"spec":{"serviceLoadBalancerAggregation":"Disabled"}}"#,
    ]);
    expect_hops(&c, &bird, "198.18.0.0/24", &[]);
    expect_hops(&c, &bird, "198.18.0.9/32", &all);
    expect_hops(&c, &bird, "10.96.0.0/16", &all);
    drop(bird);
}
