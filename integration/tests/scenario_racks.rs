//! Two racks behind eBGP ToRs (one FRR, one BIRD per rack; racks.clab.yml): every node peers
//! with its rack's two ToRs, the ToRs carry the pod routes between racks, pods everywhere
//! reach each other, a ToR's rack link going down fails traffic over to the other ToR (by
//! BFD within about a second for the BIRD ToRs), and
//! switching the pool to VXLAN CrossSubnet live tunnels only the traffic between racks.
//! Failures name the node, the expectation and what was observed.

use std::time::Duration;

use serval_integration::clab::pods::{self, LabPod};
use serval_integration::clab::scenario::Lab;
use serval_integration::{eventually, require};

const NODES: [(&str, &str); 4] = [
    ("r1n1", "r1"),
    ("r1n2", "r1"),
    ("r2n1", "r2"),
    ("r2n2", "r2"),
];

fn tors(rack: &str) -> [&'static str; 2] {
    if rack == "r1" {
        ["10.97.1.1", "10.97.1.2"]
    } else {
        ["10.97.2.1", "10.97.2.2"]
    }
}

/// The non-connected kernel routes on `node` that cover `ip`, as "dst via gateways".
fn routes_covering(lab: &Lab, node: &str, ip: &str) -> Result<Vec<String>, String> {
    let out = lab.exec(node, &["ip", "-j", "route", "show", "match", ip])?;
    let routes: Vec<serde_json::Value> =
        serde_json::from_str(&out).map_err(|e| format!("{node}: {e}: {out}"))?;
    Ok(routes
        .iter()
        .filter(|r| r["protocol"] != "kernel" && r["dst"] != "default")
        .map(|r| {
            let mut gws: Vec<String> = r["gateway"]
                .as_str()
                .into_iter()
                .map(String::from)
                .collect();
            for h in r["nexthops"].as_array().into_iter().flatten() {
                gws.extend(h["gateway"].as_str().map(String::from));
            }
            format!(
                "{} via {} dev {}",
                r["dst"].as_str().unwrap_or("?"),
                gws.join(","),
                r["dev"].as_str().unwrap_or("")
            )
        })
        .collect())
}

/// Every node's and ToR's routes into the pod range and the nodes' sessions, for failure
/// messages.
fn pod_routes(lab: &Lab) -> String {
    let mut out = String::new();
    for n in [
        "r1n1", "r1n2", "r2n1", "r2n2", "tor1f", "tor1b", "tor2f", "tor2b",
    ] {
        let r = lab
            .exec(n, &["ip", "route", "show", "root", "10.244.0.0/16"])
            .unwrap_or_else(|e| e);
        out.push_str(&format!("--- {n}\n{r}"));
        if let Ok(st) = lab.get(n, "/status") {
            for p in st["peers"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "  peer {} {} bfd {} ({})\n",
                    p["address"], p["state"], p["bfd"], p["lastError"]
                ));
            }
        }
    }
    out
}

#[test]
fn two_racks_behind_frr_and_bird_tors() {
    if !require::lab_ready(
        "scenario racks",
        &[
            "ip",
            "etcd",
            "python3",
            "unshare",
            "nsenter",
            "bird",
            "ping",
            "/usr/lib/frr/bgpd",
            "/usr/lib/frr/zebra",
        ],
    ) {
        return;
    }
    let lab = Lab::up("racks.clab.yml");
    let peers = lab.file("racks/peers.yaml");
    eventually(
        "r1n1: ToR peering applied (mesh off, two ToRs per rack)",
        Duration::from_secs(30),
        || lab.servalctl("r1n1", &["apply", "-f", &peers]),
        || lab.log_tail("etcd"),
    );
    for (node, rack) in NODES {
        lab.wait_established(
            node,
            &tors(rack),
            "Established with exactly its rack's two ToRs",
            60,
        );
    }

    // One pod per node, made through serval-cni inside the node.
    let pods: Vec<LabPod> = NODES
        .iter()
        .map(|(node, _)| lab.add_pod(node, &format!("p-{node}")))
        .collect();

    // Each ToR's kernel has a route to every pod's block (learned over eBGP).
    for tor in ["tor1f", "tor1b", "tor2f", "tor2b"] {
        for p in &pods {
            eventually(
                &format!("{tor}: a BGP route to {}'s pod {}", p.node, p.ip),
                Duration::from_secs(30),
                || {
                    let r = routes_covering(&lab, tor, &p.ip.to_string())?;
                    (!r.is_empty()).then_some(()).ok_or("no route".to_string())
                },
                || lab.log_tail(tor),
            );
        }
    }
    // From the BIRD ToR's view, each rack-1 pod's block carries the communities the
    // BGPConfiguration's prefixAdvertisements give the pool.
    let sock = format!("/run/serval-lab/{}/tor1b.ctl", lab.topo.name);
    for p in pods.iter().filter(|p| p.node.starts_with("r1")) {
        eventually(
            &format!("tor1b: {}'s block carries the pool's communities", p.node),
            Duration::from_secs(30),
            || {
                let ip = p.ip.to_string();
                let text = lab.exec("tor1b", &["birdc", "-s", &sock, "show route all for", &ip])?;
                (text.contains("BGP.community: (64512,100)")
                    && text.contains("BGP.large_community: (64512, 1, 2)"))
                .then_some(())
                .ok_or(text)
            },
            || lab.log_tail("tor1b"),
        );
    }
    lab.pods_reach(
        "every pod reaches every other pod",
        &pods,
        |_, _| true,
        30,
        "r1n1",
    );
    // Between racks the nodes route natively through their ToRs.
    let remote = pods
        .iter()
        .find(|p| p.node == "r2n1")
        .unwrap()
        .ip
        .to_string();
    let r = routes_covering(&lab, "r1n1", &remote).unwrap();
    assert!(
        r.iter()
            .any(|x| x.contains("via 10.97.1.1") || x.contains("via 10.97.1.2")),
        "r1n1: the route to r2n1's pod {remote} goes through a rack-1 ToR; observed {r:?}"
    );

    // tor1f's rack link goes down: the rack-1 nodes lose that session (hold timer, 9 s
    // with FRR's datacenter defaults) and every pod pair works again through tor1b.
    lab.exec("tor1f", &["ip", "link", "set", "eth1", "down"])
        .unwrap();
    for node in ["r1n1", "r1n2"] {
        lab.wait_established(
            node,
            &["10.97.1.2"],
            "only tor1b left while tor1f's link is down",
            30,
        );
    }
    lab.pods_reach(
        "every pod pair through tor1b alone",
        &pods,
        |_, _| true,
        30,
        "r1n1",
    );
    lab.exec("tor1f", &["ip", "link", "set", "eth1", "up"])
        .unwrap();
    for node in ["r1n1", "r1n2"] {
        lab.wait_established(
            node,
            &tors("r1"),
            "both ToRs again after tor1f's link is back",
            60,
        );
    }

    // The BIRD ToRs run BFD with the nodes (failureDetectionMode: BFDIfDirectlyConnected):
    // when tor1b's rack link goes down, the rack-1 nodes drop that session in about a
    // second (300 ms x 3 on our side), not after the hold time.
    for node in ["r1n1", "r1n2"] {
        eventually(
            &format!("{node}: BFD Up with tor1b"),
            Duration::from_secs(30),
            || {
                let p = lab.peer(node, "10.97.1.2")?;
                (p["bfd"] == "Up").then_some(()).ok_or(p.to_string())
            },
            || lab.log_tail(node),
        );
    }
    let cut = std::time::Instant::now();
    lab.exec("tor1b", &["ip", "link", "set", "eth1", "down"])
        .unwrap();
    let took = eventually(
        "r1n1: the tor1b session ends through BFD",
        Duration::from_secs(10),
        || {
            let p = lab.peer("r1n1", "10.97.1.2")?;
            if p["state"] == "Established" {
                return Err(p.to_string());
            }
            let why = p["lastError"].as_str().unwrap_or("");
            why.contains("BFD")
                .then(|| cut.elapsed())
                .ok_or(format!("down, but not by BFD: {why}"))
        },
        || lab.log_tail("r1n1"),
    );
    eprintln!("racks: r1n1 dropped tor1b {took:?} after its link went down (BFD)");
    assert!(
        took < Duration::from_millis(1500),
        "r1n1: BFD took {took:?} to notice tor1b's link"
    );
    eventually(
        "tor1b's link down: every pod pair through tor1f",
        Duration::from_secs(30),
        || {
            let failing = pods::failing_pairs(&pods, |_, _| true);
            failing
                .is_empty()
                .then_some(())
                .ok_or(format!("no answer: {failing:?}"))
        },
        || pod_routes(&lab),
    );
    lab.exec("tor1b", &["ip", "link", "set", "eth1", "up"])
        .unwrap();
    for node in ["r1n1", "r1n2"] {
        lab.wait_established(
            node,
            &tors("r1"),
            "both ToRs again after tor1b's link is back",
            60,
        );
    }

    // Cross-subnet encapsulation, switched on live: between racks VXLAN to the owner node,
    // inside a rack still native.
    lab.servalctl(
        "r1n1",
        &[
            "patch",
            "ippool",
            "default-ipv4-ippool",
            "-p",
            r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#,
        ],
    )
    .unwrap();
    let same_rack = pods
        .iter()
        .find(|p| p.node == "r1n2")
        .unwrap()
        .ip
        .to_string();
    eventually(
        "r1n1: VXLAN to r2n1's pod, native to r1n2's",
        Duration::from_secs(30),
        || {
            let far = routes_covering(&lab, "r1n1", &remote)?;
            let near = routes_covering(&lab, "r1n1", &same_rack)?;
            let far_ok = far.iter().any(|r| r.contains("dev vxlan.serval"));
            let near_ok = !near.is_empty() && near.iter().all(|r| !r.contains("vxlan"));
            (far_ok && near_ok)
                .then_some(())
                .ok_or(format!("to {remote}: {far:?}; to {same_rack}: {near:?}"))
        },
        || lab.log_tail("r1n1"),
    );
    lab.pods_reach(
        "every pod pair with VXLAN between the racks",
        &pods,
        |_, _| true,
        30,
        "r1n1",
    );
    // And a pod made after the switch is reachable from the other rack.
    let late = lab.add_pod("r2n2", "late");
    let mut all = pods.clone();
    all.push(late);
    lab.pods_reach(
        "the new pod on r2n2 is reachable from both racks",
        &all,
        |_, _| true,
        30,
        "r1n1",
    );
}
