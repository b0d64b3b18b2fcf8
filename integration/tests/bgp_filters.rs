//! BGPFilter against real peers (issue 17, item 3): node-a of the three-node cluster peers
//! with BIRD on the router and with FRR in a namespace of its own on the same bridge, each
//! through a BGPPeer that names filters (and node-b meets BIRD with its own
//! localASNumber). An import filter picks BIRD's routes by prefix and another refuses FRR's
//! routes by community; an export filter sends FRR only node-a's own
//! block, with a community added and our AS prepended once more, and none of the routes
//! node-a learned from the other nodes (source RemotePeers). Editing a filter takes effect on
//! the running sessions (the routes already held are filtered again), and a peer whose filter
//! does not exist fails closed: nothing from it is used and nothing is sent to it. Import
//! rules set route priorities (the kernel metric of the learned route) by prefix and by the
//! interface towards the peer.

use std::time::Duration;

use serval_integration::cluster::{Cluster, Encap, three_nodes};
use serval_integration::peers::{Bird, Frr, RefRouter, Scratch};
use serval_integration::{Netns, eventually, link, require};

const TEST: &str = "bgp_filters_choose_what_node_a_takes_from_and_sends_to_bird_and_frr";

async fn apply(c: &Cluster, yaml: &str) {
    let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    match v["kind"].as_str().unwrap() {
        "BGPFilter" => {
            let f: serval_agent::resources::BGPFilter = serde_json::from_value(v).unwrap();
            let name = f.metadata.name.clone().unwrap();
            match c
                .ds
                .get::<serval_agent::resources::BGPFilter>(None, &name)
                .await
                .unwrap()
            {
                Some(old) => {
                    let mut f = f;
                    f.metadata.resource_version = old.metadata.resource_version;
                    c.ds.update(&f).await.unwrap();
                }
                None => {
                    c.ds.create(&f).await.unwrap();
                }
            }
        }
        "BGPPeer" => {
            let p: serval_agent::resources::BGPPeer = serde_json::from_value(v).unwrap();
            let name = p.metadata.name.clone().unwrap();
            match c
                .ds
                .get::<serval_agent::resources::BGPPeer>(None, &name)
                .await
                .unwrap()
            {
                Some(old) => {
                    let mut p = p;
                    p.metadata.resource_version = old.metadata.resource_version;
                    c.ds.update(&p).await.unwrap();
                }
                None => {
                    c.ds.create(&p).await.unwrap();
                }
            }
        }
        other => panic!("{other}"),
    }
}

/// node-a's kernel routes learned over BGP (protocol 81), as text.
fn learned(c: &Cluster) -> String {
    c.routes(0)
}

fn until(c: &Cluster, what: &str, check: impl Fn() -> Result<(), String>) {
    eventually(what, Duration::from_secs(30), check, || c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_filters_choose_what_node_a_takes_from_and_sends_to_bird_and_frr() {
    if !require::lab_ready(TEST, &["bird", "birdc", "vtysh", "/usr/lib/frr/bgpd"]) {
        return;
    }
    let Some(mut c) = three_nodes(TEST, Encap::Vxlan).await else {
        return;
    };
    // Pods on a and b give each its block.
    let pa = c.add_pod(0, "pa");
    let pb = c.add_pod(1, "pb");
    let block_of = |ip: std::net::IpAddr| ipnet::IpNet::new(ip, 26).unwrap().trunc().to_string();
    let (block_a, block_b) = (block_of(pa), block_of(pb));
    let scratch = Scratch::new("bgp-filters");
    let (bird_dir, frr_dir) = (scratch.path("bird"), scratch.path("frr"));
    std::fs::create_dir_all(&bird_dir).unwrap();
    std::fs::create_dir_all(&frr_dir).unwrap();
    // BIRD on the router: two prefixes to node-a.
    let mut bird = Bird::with_config(
        &c.router,
        &bird_dir,
        "router id 192.168.1.1;\nlog stderr all;\nprotocol device {}\n\
         protocol static { ipv4; route 10.200.0.0/24 unreachable; route 10.201.0.0/24 unreachable; }\n\
         protocol bgp na { local as 65002; neighbor 192.168.1.2 as 64512; \
         connect retry time 1; error wait time 1, 2; ipv4 { import all; export all; }; }\n\
         protocol bgp nb { local as 65002; neighbor 192.168.1.3 as 65010; \
         connect retry time 1; error wait time 1, 2; ipv4 { import all; export none; }; }\n",
    );
    bird.start();
    // FRR on the bridge at 192.168.1.10: two prefixes, one marked with 65003:666.
    let ext = Netns::new("ext").unwrap();
    link(&ext, "eth0", &c.router, "p-ext").unwrap();
    c.router
        .ip(&["link", "set", "p-ext", "master", "br0"])
        .unwrap();
    ext.addr("eth0", "192.168.1.10/24").unwrap();
    let mut frr = Frr::with_config(
        &ext,
        &frr_dir,
        "hostname ext\n\
         ip prefix-list BAD seq 5 permit 10.211.0.0/24\n\
         route-map OUT permit 10\n match ip address prefix-list BAD\n set community 65003:666 additive\n\
         route-map OUT permit 20\n!\n\
         router bgp 65003\n bgp router-id 192.168.1.10\n no bgp ebgp-requires-policy\n\
         \x20no bgp default ipv4-unicast\n no bgp network import-check\n\
         \x20neighbor 192.168.1.2 remote-as 64512\n neighbor 192.168.1.2 timers connect 1\n\
         \x20address-family ipv4 unicast\n  network 10.210.0.0/24\n  network 10.211.0.0/24\n\
         \x20 neighbor 192.168.1.2 activate\n  neighbor 192.168.1.2 route-map OUT out\n\
         \x20exit-address-family\n!\n",
    );
    frr.start();

    apply(
        &c,
        "apiVersion: serval.dev/v1\nkind: BGPFilter\nmetadata: {name: from-bird}\nspec:\n  importV4:\n\
         \x20 - {action: Accept, matchOperator: Equal, cidr: 10.200.0.0/24,\n\
         \x20    operations: [{setPriority: {value: 300}}]}\n\
         \x20 - {action: Reject, matchOperator: In, cidr: 10.0.0.0/8}\n",
    )
    .await;
    apply(
        &c,
        "apiVersion: serval.dev/v1\nkind: BGPFilter\nmetadata: {name: from-frr}\nspec:\n  importV4:\n\
         \x20 - {action: Reject, communities: {values: ['65003:666']}}\n\
         \x20 - {action: Reject, interface: 'lo*'}\n\
         \x20 - {action: Accept, interface: 'e?h*', priority: 1024,\n\
         \x20    operations: [{setPriority: {value: 400}}]}\n",
    )
    .await;
    apply(
        &c,
        "apiVersion: serval.dev/v1\nkind: BGPFilter\nmetadata: {name: to-frr}\nspec:\n  exportV4:\n\
         \x20 - {action: Reject, source: RemotePeers}\n\
         \x20 - {action: Accept, matchOperator: In, cidr: 10.244.0.0/16,\n\
         \x20    operations: [{addCommunity: {value: '64512:77'}}, {prependASPath: {prefix: [64512]}}]}\n",
    )
    .await;
    apply(
        &c,
        "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: bird}\n\
         spec: {node: node-a, peerIP: 192.168.1.1, asNumber: 65002, filters: [from-bird]}\n",
    )
    .await;
    apply(
        &c,
        "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: frr}\n\
         spec: {node: node-a, peerIP: 192.168.1.10, asNumber: 65003, filters: [from-frr, to-frr]}\n",
    )
    .await;

    // Import: 10.200 from BIRD (10.201 rejected), 10.210 from FRR (10.211 has the community).
    until(
        &c,
        "node-a's learned routes follow the import filters",
        || {
            let r = learned(&c);
            let has = |p: &str| r.contains(p);
            if has("10.200.0.0/24")
                && has("10.210.0.0/24")
                && !has("10.201.0.0/24")
                && !has("10.211.0.0/24")
            {
                Ok(())
            } else {
                Err(r)
            }
        },
    );
    // Priorities: the kernel routes carry the metric each import filter set (BIRD's by
    // prefix, FRR's through the interface towards FRR at the normal priority).
    until(
        &c,
        "the learned routes carry their filters' metrics",
        || {
            let r = learned(&c);
            let line = |p: &str| {
                r.lines()
                    .find(|l| l.starts_with(p))
                    .unwrap_or("")
                    .to_string()
            };
            if line("10.200.0.0/24").contains("metric 300")
                && line("10.210.0.0/24").contains("metric 400")
            {
                Ok(())
            } else {
                Err(r)
            }
        },
    );
    // Export: FRR gets node-a's block with the community and one more 64512, and not node-b's.
    until(&c, "FRR has node-a's block, marked", || {
        let route = frr.route(&block_a, false)?;
        if route.as_path == [64512, 64512] && route.communities.contains(&"64512:77".to_string()) {
            Ok(())
        } else {
            Err(format!("{route:?}"))
        }
    });
    assert!(
        frr.route(&block_b, false).is_err(),
        "node-b's block is a remote route for node-a: {:?}",
        frr.route(&block_b, false)
    );
    // BIRD has no filter: it gets node-b's block from node-a too.
    until(&c, "BIRD has both blocks", || {
        let out = bird.birdc(&format!("show route {block_b}"));
        if out.contains(&block_b) {
            Ok(())
        } else {
            Err(out)
        }
    });

    // BGPPeer localASNumber: node-b meets BIRD as AS 65010, not the cluster's 64512.
    apply(
        &c,
        "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: bird-b}\n\
         spec: {node: node-b, peerIP: 192.168.1.1, asNumber: 65002, localASNumber: 65010}\n",
    )
    .await;
    until(&c, "BIRD has node-b's block from AS 65010", || {
        let out = bird.birdc(&format!("show route {block_b} protocol nb all"));
        if out.contains("BGP.as_path: 65010") {
            Ok(())
        } else {
            Err(out)
        }
    });

    // Editing a filter re-filters what is already held: 10.201 comes in.
    apply(
        &c,
        "apiVersion: serval.dev/v1\nkind: BGPFilter\nmetadata: {name: from-bird}\nspec:\n  importV4:\n\
         \x20 - {action: Reject, matchOperator: Equal, cidr: 10.200.0.0/24}\n",
    )
    .await;
    until(
        &c,
        "the edited filter applies to routes BIRD already sent",
        || {
            let r = learned(&c);
            // No filter sets 10.201's priority: the normal 1024, written as such.
            let line = r.lines().find(|l| l.starts_with("10.201.0.0/24"));
            if line.is_some_and(|l| l.contains("metric 1024")) && !r.contains("10.200.0.0/24") {
                Ok(())
            } else {
                Err(r)
            }
        },
    );

    // A filter that does not exist: FRR's peer fails closed both ways.
    apply(
        &c,
        "apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: frr}\n\
         spec: {node: node-a, peerIP: 192.168.1.10, asNumber: 65003, filters: [nope]}\n",
    )
    .await;
    until(&c, "nothing from or to FRR", || {
        let r = learned(&c);
        match frr.route(&block_a, false) {
            Err(_) if !r.contains("10.210.0.0/24") => Ok(()),
            other => Err(format!("{other:?}\n{r}")),
        }
    });
    assert!(
        c.logs().contains("BGP filter cannot be applied"),
        "the closed peer is reported"
    );
}
