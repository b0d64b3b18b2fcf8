//! The route and tunnel managers against a real kernel, in a namespace this test creates:
//! routes are created, updated, swept and repaired; other owners' routes are never touched;
//! the VXLAN device and its ARP/FDB entries are kept right; IPIP is exercised where the
//! kernel has it and skipped, saying why, where it does not.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serval_agent::calc::kernel_table::kernel_table;
use serval_agent::calc::routes::{NextHop, RouteTarget};
use serval_agent::calc::tunnels::{
    IpipDevice, RemoteVtep, VXLAN_PORT, VXLAN_VNI, VxlanDevice, vxlan_mac,
};
use serval_agent::dataplane::DataplaneError;
use serval_agent::dataplane::netlink::Netlink;
use serval_agent::dataplane::route_manager::RouteManager;
use serval_agent::dataplane::tunnel::{ensure_ipip, ensure_vteps, ensure_vxlan};
use serval_integration::{Netns, link, require};

fn ns_path(ns: &Netns) -> PathBuf {
    PathBuf::from(format!("/run/netns/{}", ns.name()))
}

fn routes(ns: &Netns) -> String {
    ns.output(&["ip", "route", "show", "proto", "81"]).unwrap()
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A node namespace with an uplink `eth0` (192.168.1.5/24, peer .6 in `peer`) and a stand-in
/// pod interface `svpod1` (a veth whose other end stays in the node; this kernel has no dummy).
fn node() -> Option<(Netns, Netns)> {
    if !require::lab_ready("dataplane_kernel", &["ip"]) {
        return None;
    }
    let n = Netns::new("dp").unwrap();
    let peer = Netns::new("dppeer").unwrap();
    link(&n, "eth0", &peer, "eth0").unwrap();
    n.addr("eth0", "192.168.1.5/24").unwrap();
    peer.addr("eth0", "192.168.1.6/24").unwrap();
    pod_link(&n, "svpod1");
    Some((n, peer))
}

fn pod_link(n: &Netns, name: &str) {
    let peer = format!("{name}p");
    n.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])
        .unwrap();
    n.ip(&["link", "set", name, "up"]).unwrap();
    n.ip(&["link", "set", &peer, "up"]).unwrap();
}

#[tokio::test]
async fn route_manager_creates_updates_sweeps_and_repairs_routes() {
    let Some((n, _peer)) = node() else { return };
    // Left by a previous run (ours) and by someone else (not ours).
    n.ip(&["route", "add", "blackhole", "10.99.0.0/26", "proto", "81"])
        .unwrap();
    n.ip(&[
        "route",
        "add",
        "10.98.0.0/24",
        "via",
        "192.168.1.6",
        "proto",
        "static",
    ])
    .unwrap();
    let nl = Netlink::connect_in(&ns_path(&n)).unwrap();
    let mut m = RouteManager::new(nl.clone());

    let mut desired = BTreeMap::new();
    desired.insert(net("10.244.1.0/26"), RouteTarget::Blackhole);
    desired.insert(net("10.244.1.7/32"), RouteTarget::Local("svpod1".into()));
    desired.insert(
        net("10.244.2.0/26"),
        RouteTarget::Unicast(vec![NextHop::Via(ip("192.168.1.6"))]),
    );
    m.set_desired(kernel_table(&desired));
    assert!(m.apply().await.unwrap().waiting);
    assert!(
        routes(&n).contains("blackhole 10.99.0.0/26"),
        "nothing may change before the datastore is in sync"
    );

    m.datastore_in_sync();
    let r = m.apply().await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!((r.written, r.deleted), (3, 1));
    let table = routes(&n);
    assert!(table.contains("blackhole 10.244.1.0/26"), "{table}");
    assert!(
        table.contains("10.244.1.7 dev svpod1 scope link"),
        "{table}"
    );
    assert!(
        table.contains("10.244.2.0/26 via 192.168.1.6 dev eth0"),
        "{table}"
    );
    assert!(
        !table.contains("10.99.0.0"),
        "stale route of ours swept: {table}"
    );
    let all = n.output(&["ip", "route"]).unwrap();
    assert!(
        all.contains("10.98.0.0/24 via 192.168.1.6"),
        "not ours, kept: {all}"
    );
    // Reading back what we wrote matches what we want: nothing more to do.
    m.request_resync();
    let r = m.apply().await.unwrap();
    assert_eq!((r.written, r.deleted), (0, 0), "{}", routes(&n));

    // Update: the next hop moves, and an ECMP route appears.
    n.ip(&["addr", "add", "192.168.1.50/24", "dev", "eth0"])
        .unwrap();
    desired.insert(
        net("10.244.2.0/26"),
        RouteTarget::Unicast(vec![NextHop::Via(ip("192.168.1.7"))]),
    );
    desired.insert(
        net("10.244.3.0/26"),
        RouteTarget::Unicast(vec![
            NextHop::Via(ip("192.168.1.6")),
            NextHop::Via(ip("192.168.1.8")),
        ]),
    );
    m.set_desired(kernel_table(&desired));
    let r = m.apply().await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    let table = routes(&n);
    assert!(table.contains("10.244.2.0/26 via 192.168.1.7"), "{table}");
    assert!(table.contains("nexthop via 192.168.1.6"), "{table}");
    assert!(table.contains("nexthop via 192.168.1.8"), "{table}");

    // Drift: someone deletes one of our routes; the resync puts it back.
    n.ip(&["route", "del", "10.244.2.0/26"]).unwrap();
    m.request_resync();
    let r = m.apply().await.unwrap();
    assert_eq!(r.written, 1);
    assert_eq!(m.stats().drift, 1);
    assert!(routes(&n).contains("10.244.2.0/26 via 192.168.1.7"));

    // A route to an interface that does not exist yet fails alone and is retried.
    desired.insert(net("10.244.1.8/32"), RouteTarget::Local("svpod2".into()));
    m.set_desired(kernel_table(&desired));
    let r = m.apply().await.unwrap();
    assert_eq!(r.failed.len(), 1);
    assert!(r.failed[0].1.contains("svpod2"), "{:?}", r.failed);
    pod_link(&n, "svpod2");
    let r = m.apply().await.unwrap();
    assert!(r.failed.is_empty() && r.written == 1, "{r:?}");

    // Withdraw everything: only our routes go.
    m.set_desired(Default::default());
    m.apply().await.unwrap();
    assert_eq!(routes(&n).trim(), "");
    assert!(n.output(&["ip", "route"]).unwrap().contains("10.98.0.0/24"));
}

#[tokio::test]
async fn a_learned_route_never_replaces_another_owners_route() {
    let Some((n, _peer)) = node() else { return };
    n.addr("eth0", "fd00:1::5/64").unwrap();
    // An operator's static routes, same destination and metric as what BGP teaches us.
    n.ip(&[
        "route",
        "add",
        "10.97.0.0/24",
        "via",
        "192.168.1.6",
        "proto",
        "static",
    ])
    .unwrap();
    n.ip(&[
        "-6",
        "route",
        "add",
        "fd97::/64",
        "via",
        "fd00:1::6",
        "proto",
        "static",
    ])
    .unwrap();
    let nl = Netlink::connect_in(&ns_path(&n)).unwrap();
    let mut m = RouteManager::new(nl.clone());
    let mut desired = BTreeMap::new();
    for (dst, gw) in [
        ("10.97.0.0/24", "192.168.1.9"),
        ("10.96.0.0/24", "192.168.1.9"),
        ("fd97::/64", "fd00:1::9"),
    ] {
        desired.insert(net(dst), RouteTarget::Unicast(vec![NextHop::Via(ip(gw))]));
    }
    m.set_desired(kernel_table(&desired));
    m.datastore_in_sync();
    let r = m.apply().await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert_eq!(r.written, 1, "only the free destination is written");
    let mut held = r.new_conflicts.clone();
    held.sort();
    assert_eq!(held, vec![net("10.97.0.0/24"), net("fd97::/64")]);
    assert_eq!(m.stats().conflicts, 2);
    let all = n.output(&["ip", "route"]).unwrap();
    assert!(
        all.contains("10.97.0.0/24 via 192.168.1.6 dev eth0 proto static"),
        "{all}"
    );
    assert!(
        all.contains("10.96.0.0/24 via 192.168.1.9 dev eth0 proto 81"),
        "{all}"
    );
    let all6 = n.output(&["ip", "-6", "route"]).unwrap();
    assert!(
        all6.contains("fd97::/64 via fd00:1::6 dev eth0 proto static"),
        "{all6}"
    );
    // A resync tries again and still leaves them alone; withdrawing removes only ours.
    m.request_resync();
    let r = m.apply().await.unwrap();
    assert_eq!((r.written, r.deleted), (0, 0));
    m.set_desired(Default::default());
    m.apply().await.unwrap();
    assert_eq!(m.stats().conflicts, 0);
    let all = n.output(&["ip", "route"]).unwrap();
    assert!(all.contains("10.97.0.0/24 via 192.168.1.6"), "{all}");
    assert!(!all.contains("10.96.0.0/24"), "{all}");
    assert!(
        n.output(&["ip", "-6", "route"])
            .unwrap()
            .contains("fd97::/64 via fd00:1::6")
    );
}

#[tokio::test]
async fn vxlan_device_neighbours_and_routes_are_kept_right() {
    let Some((n, _peer)) = node() else { return };
    let nl = Netlink::connect_in(&ns_path(&n)).unwrap();
    let want = VxlanDevice {
        name: "vxlan.serval".into(),
        vni: VXLAN_VNI,
        port: VXLAN_PORT,
        local: "192.168.1.5".parse().unwrap(),
        mac: vxlan_mac("node-a"),
        mtu: 1450,
        address: Some("10.244.1.0".parse().unwrap()),
    };
    let index = ensure_vxlan(&nl, &want).await.unwrap();
    let shown = n
        .output(&["ip", "-d", "link", "show", "vxlan.serval"])
        .unwrap();
    assert!(shown.contains("vxlan id 4096"), "{shown}");
    assert!(shown.contains("local 192.168.1.5"), "{shown}");
    assert!(shown.contains("dstport 4789"), "{shown}");
    assert!(shown.contains("mtu 1450"), "{shown}");
    assert!(shown.contains("nolearning"), "{shown}");
    assert!(shown.contains(",UP"), "{shown}");
    let addrs = n
        .output(&["ip", "-4", "addr", "show", "vxlan.serval"])
        .unwrap();
    assert!(addrs.contains("10.244.1.0/32"), "{addrs}");

    // Someone breaks it: wrong MTU, down, a stray address. Ensure repairs all of it in place.
    n.ip(&["link", "set", "vxlan.serval", "mtu", "1400", "down"])
        .unwrap();
    n.ip(&["addr", "add", "10.9.9.9/32", "dev", "vxlan.serval"])
        .unwrap();
    assert_eq!(ensure_vxlan(&nl, &want).await.unwrap(), index);
    let shown = n.output(&["ip", "addr", "show", "vxlan.serval"]).unwrap();
    assert!(
        shown.contains("mtu 1450") && shown.contains(",UP"),
        "{shown}"
    );
    assert!(!shown.contains("10.9.9.9"), "{shown}");

    // The node's IP changes: the device is recreated with the new local address.
    n.ip(&["addr", "add", "192.168.1.9/24", "dev", "eth0"])
        .unwrap();
    let moved = VxlanDevice {
        local: "192.168.1.9".parse().unwrap(),
        ..want.clone()
    };
    let index = ensure_vxlan(&nl, &moved).await.unwrap();
    assert!(
        n.output(&["ip", "-d", "link", "show", "vxlan.serval"])
            .unwrap()
            .contains("local 192.168.1.9")
    );

    // Remote VTEPs: ARP + FDB entries, then a route through the device.
    let remote_mac = vxlan_mac("node-b");
    let vteps = [RemoteVtep {
        node_ip: ip("192.168.1.6"),
        tunnel_addr: ip("10.244.2.0"),
        mac: remote_mac,
    }];
    let p = ensure_vteps(&nl, index, &vteps).await.unwrap();
    assert_eq!((p.arp_set.len(), p.fdb_set.len()), (1, 1));
    let neigh = n
        .output(&["ip", "neigh", "show", "dev", "vxlan.serval"])
        .unwrap();
    let mac_text = serval_agent::calc::tunnels::format_mac(&remote_mac);
    assert!(
        neigh.contains(&format!("10.244.2.0 lladdr {mac_text} PERMANENT")),
        "{neigh}"
    );
    let fdb = n
        .output(&["bridge", "fdb", "show", "dev", "vxlan.serval"])
        .unwrap();
    assert!(
        fdb.contains(&format!("{mac_text} dst 192.168.1.6 self permanent")),
        "{fdb}"
    );
    // Idempotent.
    let p = ensure_vteps(&nl, index, &vteps).await.unwrap();
    assert_eq!(p, Default::default());

    let mut m = RouteManager::new(nl.clone());
    m.datastore_in_sync();
    let mut desired = BTreeMap::new();
    desired.insert(
        net("10.244.2.0/26"),
        RouteTarget::Unicast(vec![NextHop::Vxlan(ip("10.244.2.0"))]),
    );
    m.set_desired(kernel_table(&desired));
    let r = m.apply().await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert!(
        routes(&n).contains("10.244.2.0/26 via 10.244.2.0 dev vxlan.serval onlink"),
        "{}",
        routes(&n)
    );
    // The remote node goes away: its entries go too.
    let p = ensure_vteps(&nl, index, &[]).await.unwrap();
    assert_eq!((p.arp_del.len(), p.fdb_del.len()), (1, 1));
    let neigh = n
        .output(&["ip", "neigh", "show", "dev", "vxlan.serval"])
        .unwrap();
    assert!(!neigh.contains("10.244.2.0"), "{neigh}");
}

#[tokio::test]
async fn ipip_device_and_routes_or_a_clear_skip() {
    let Some((n, _peer)) = node() else { return };
    let nl = Netlink::connect_in(&ns_path(&n)).unwrap();
    let want = IpipDevice {
        name: "tunl0".into(),
        mtu: 1480,
        address: Some("10.244.1.1".parse().unwrap()),
    };
    match ensure_ipip(&nl, &want).await {
        Err(DataplaneError::Unsupported(why)) => {
            eprintln!("SKIP ipip_device_and_routes_or_a_clear_skip: {why}");
            assert!(why.contains("ipip"), "{why}");
            return;
        }
        Err(e) => panic!("ensure_ipip: {e}"),
        Ok(_) => {}
    }
    let shown = n.output(&["ip", "-d", "addr", "show", "tunl0"]).unwrap();
    assert!(
        shown.contains("ipip") && shown.contains("mtu 1480"),
        "{shown}"
    );
    assert!(shown.contains("10.244.1.1/32"), "{shown}");
    let mut m = RouteManager::new(nl);
    m.datastore_in_sync();
    let mut desired = BTreeMap::new();
    desired.insert(
        net("10.244.2.0/26"),
        RouteTarget::Unicast(vec![NextHop::Ipip(ip("192.168.2.7"))]),
    );
    m.set_desired(kernel_table(&desired));
    let r = m.apply().await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert!(
        routes(&n).contains("10.244.2.0/26 via 192.168.2.7 dev tunl0 onlink"),
        "{}",
        routes(&n)
    );
}
