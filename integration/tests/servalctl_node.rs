//! `servalctl node status`, `bgp peers` and `bgp routes` against running standalone speakers:
//! one established peer, one idle (nothing answers at its address).

use std::process::Command;
use std::time::Duration;

use serval_integration::peers::{Scratch, Serval};
use serval_integration::{Netns, eventually, link, require};

fn servalctl(ns: &Netns, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(require::serval_bin("servalctl"))
        .args(args)
        .output()
        .expect("run servalctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn node_status_and_bgp_details_show_established_and_idle_peers() {
    if !require::lab_ready("servalctl_node", &["ip"]) {
        return;
    }
    let a = Netns::new("cta").unwrap();
    let b = Netns::new("ctb").unwrap();
    link(&a, "eth0", &b, "eth0").unwrap();
    a.addr("eth0", "10.70.0.1/24").unwrap();
    b.addr("eth0", "10.70.0.2/24").unwrap();
    let (da, db) = (Scratch::new("cta"), Scratch::new("ctb"));
    let mut sa = Serval::new(
        &a,
        &da.0,
        "speaker: {routerId: 10.70.0.1, asNumber: 64512}\n\
         peers:\n\
           - {address: 10.70.0.2, asNumber: 64512, description: node-to-node mesh, connectRetryTime: 1}\n\
           - {address: 10.70.0.9, asNumber: 65000, description: global, connectRetryTime: 1}\n\
         announce:\n  - {prefix: 10.244.1.0/26}\n",
    );
    let mut sb = Serval::new(
        &b,
        &db.0,
        "speaker: {routerId: 10.70.0.2, asNumber: 64512}\n\
         peers:\n  - {address: 10.70.0.1, asNumber: 64512, passive: true}\n\
         announce:\n  - {prefix: 10.244.2.0/26}\n",
    );
    sb.start();
    sa.start();
    eventually(
        "a's session with b established",
        Duration::from_secs(30),
        || sa.established("10.70.0.2"),
        || format!("{}\n{}", sa.log(), sb.log()),
    );

    let (code, out, err) = servalctl(&a, &["node", "status"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "IPv4 BGP status");
    assert_eq!(
        lines[2],
        "| PEER ADDRESS | PEER TYPE         | STATE | SINCE    | INFO        |"
    );
    let mesh = lines.iter().find(|l| l.contains("10.70.0.2")).unwrap();
    assert!(
        mesh.contains("| node-to-node mesh | up    |") && mesh.contains("| Established |"),
        "{out}"
    );
    let idle = lines.iter().find(|l| l.contains("10.70.0.9")).unwrap();
    assert!(
        idle.contains("| global") && idle.contains("| start |"),
        "{out}"
    );
    assert!(!idle.contains("Established"), "{out}");
    assert!(
        out.contains("IPv6 BGP status\nNo IPv6 peers found."),
        "{out}"
    );

    let (code, out, err) = servalctl(&a, &["bgp", "peers"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Router ID 10.70.0.1, AS 64512"), "{out}");
    assert!(
        out.contains("Peer 10.70.0.2 port 179 AS 64512 (ibgp, node-to-node mesh)"),
        "{out}"
    );
    assert!(out.contains("negotiated:   hold 90s"), "{out}");
    assert!(out.contains("4-octet AS"), "{out}");
    assert!(
        out.contains("ipv4-unicast: received 1, accepted 1, advertised 1"),
        "{out}"
    );
    assert!(
        out.contains("Peer 10.70.0.9 port 179 AS 65000 (ebgp, global)"),
        "{out}"
    );

    let (code, out, err) = servalctl(&a, &["bgp", "routes"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(lines[0], "PREFIX FROM BEST NEXT HOP AS PATH WHY NOT BEST");
    assert!(
        lines.contains(&"10.244.1.0/26 local * - i".to_string()),
        "{out}"
    );
    assert!(
        lines.contains(&"10.244.2.0/26 10.70.0.2 * 10.70.0.2 i".to_string()),
        "{out}"
    );

    // Nothing listening: a clear error, not a panic.
    let (code, _, err) = servalctl(&b, &["node", "status", "--address", "127.0.0.1:9"]);
    assert_ne!(code, 0);
    assert!(err.contains("is serval-node running?"), "{err}");
}
