//! Routes programmed per second: 10,000 remote blocks written by Serval's route manager
//! (rtnetlink, many requests in flight) next to `ip -batch` writing the same routes, in the same
//! run and the same kind of namespace, alternating, so the ratio holds on a noisy machine.
//! Deletion is measured the same way.
//!
//! Run: `cargo bench -p serval-integration --bench route_programming` (or `bench/routes`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use serval_agent::calc::kernel_table::kernel_table;
use serval_agent::calc::routes::{NextHop, RouteTarget};
use serval_agent::dataplane::netlink::Netlink;
use serval_agent::dataplane::route_manager::RouteManager;
use serval_integration::{Netns, link, require};

const ROUTES: u32 = 10_000;
const ROUNDS: usize = 3;

/// 10,000 /26 blocks in 10.128.0.0/10, each via one of 250 nodes on the uplink /16.
fn blocks() -> Vec<(IpNet, IpAddr)> {
    (0..ROUTES)
        .map(|i| {
            let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 64;
            let dst = IpNet::V4(Ipv4Net::new(Ipv4Addr::from(base), 26).expect("/26"));
            let gw = IpAddr::V4(Ipv4Addr::new(
                192,
                168,
                (i % 250) as u8 / 50,
                10 + (i % 50) as u8,
            ));
            (dst, gw)
        })
        .collect()
}

fn node() -> (Netns, Netns) {
    let n = Netns::new("rb").expect("namespace");
    let peer = Netns::new("rbpeer").expect("namespace");
    link(&n, "eth0", &peer, "eth0").expect("veth");
    n.addr("eth0", "192.168.0.1/16").expect("address");
    (n, peer)
}

fn count(ns: &Netns) -> usize {
    ns.output(&["ip", "route", "show", "proto", "81"])
        .expect("ip route")
        .lines()
        .count()
}

async fn serval(routes: &[(IpNet, IpAddr)]) -> (Duration, Duration) {
    let (n, _peer) = node();
    let nl =
        Netlink::connect_in(&PathBuf::from(format!("/run/netns/{}", n.name()))).expect("netlink");
    let mut m = RouteManager::new(nl);
    m.datastore_in_sync();
    // First apply reads the (empty) table, as the start-up sweep does.
    m.apply().await.expect("empty apply");
    let desired: BTreeMap<IpNet, RouteTarget> = routes
        .iter()
        .map(|(d, gw)| (*d, RouteTarget::Unicast(vec![NextHop::Via(*gw)])))
        .collect();
    m.set_desired(kernel_table(&desired));
    let t = Instant::now();
    let r = m.apply().await.expect("apply");
    let add = t.elapsed();
    assert!(r.failed.is_empty(), "{:?}", &r.failed[..1]);
    assert_eq!(count(&n), routes.len());
    m.set_desired(Default::default());
    let t = Instant::now();
    m.apply().await.expect("delete");
    let del = t.elapsed();
    assert_eq!(count(&n), 0);
    (add, del)
}

fn ip_batch(routes: &[(IpNet, IpAddr)]) -> (Duration, Duration) {
    let (n, _peer) = node();
    let dir = serval_integration::peers::Scratch::new("routes");
    let add_file = dir.path("add.batch");
    let del_file = dir.path("del.batch");
    let mut add = String::new();
    let mut del = String::new();
    for (d, gw) in routes {
        add.push_str(&format!("route replace {d} via {gw} proto 81\n"));
        del.push_str(&format!("route del {d} proto 81\n"));
    }
    std::fs::write(&add_file, add).expect("batch file");
    std::fs::write(&del_file, del).expect("batch file");
    let run = |file: &std::path::Path| {
        let t = Instant::now();
        n.ip(&["-batch", &file.display().to_string()])
            .expect("ip -batch");
        t.elapsed()
    };
    let a = run(&add_file);
    assert_eq!(count(&n), routes.len());
    let d = run(&del_file);
    assert_eq!(count(&n), 0);
    (a, d)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn per_sec(d: Duration) -> f64 {
    f64::from(ROUTES) / d.as_secs_f64()
}

fn main() {
    if !require::lab_ready("route_programming bench", &["ip"]) {
        return;
    }
    let routes = blocks();
    let rt = serval_integration::bench_runtime();
    let (mut s_add, mut s_del, mut i_add, mut i_del) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let (a, d) = rt.block_on(serval(&routes));
        s_add.push(a);
        s_del.push(d);
        let (a, d) = ip_batch(&routes);
        i_add.push(a);
        i_del.push(d);
    }
    let (sa, sd, ia, id) = (median(s_add), median(s_del), median(i_add), median(i_del));
    println!(
        "route programming, {ROUTES} remote /26 blocks, median of {ROUNDS} alternating rounds"
    );
    println!(
        "  serval route manager: add {:>8.1} ms ({:>7.0} routes/s)   delete {:>8.1} ms ({:>7.0} routes/s)",
        sa.as_secs_f64() * 1e3,
        per_sec(sa),
        sd.as_secs_f64() * 1e3,
        per_sec(sd)
    );
    println!(
        "  ip -batch:            add {:>8.1} ms ({:>7.0} routes/s)   delete {:>8.1} ms ({:>7.0} routes/s)",
        ia.as_secs_f64() * 1e3,
        per_sec(ia),
        id.as_secs_f64() * 1e3,
        per_sec(id)
    );
    println!(
        "  serval / ip -batch throughput: add {:.2}x, delete {:.2}x",
        per_sec(sa) / per_sec(ia),
        per_sec(sd) / per_sec(id)
    );
}
