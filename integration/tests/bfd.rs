//! BFD (RFC 5880/5881) against BIRD's bfd protocol and between two Serval speakers: the BFD
//! session comes up beside BGP, and when the peer's link goes down (behind a bridge, so our
//! own link stays up and only BFD can tell) our BGP session goes down within 1 s instead of
//! the 90 s hold time. It comes back when the link does.

use std::time::{Duration, Instant};

use serval_integration::peers::{Bird, RefRouter, Scratch, Serval};
use serval_integration::{Netns, eventually, link, require};

const BFD_YAML: &str = "bfd: {minTxMs: 100, minRxMs: 100, multiplier: 3}";

/// ours — bridge — theirs, on 10.81.0.0/24; returns (ours, bridge, theirs).
fn lab(tag: &str) -> (Netns, Netns, Netns) {
    let ours = Netns::new(&format!("bfda{tag}")).unwrap();
    let br = Netns::new(&format!("bfdbr{tag}")).unwrap();
    let theirs = Netns::new(&format!("bfdb{tag}")).unwrap();
    link(&ours, "eth1", &br, "pa").unwrap();
    link(&theirs, "eth1", &br, "pb").unwrap();
    br.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    for dev in ["pa", "pb", "br0"] {
        br.ip(&["link", "set", dev, "up"]).unwrap();
    }
    br.ip(&["link", "set", "pa", "master", "br0"]).unwrap();
    br.ip(&["link", "set", "pb", "master", "br0"]).unwrap();
    ours.addr("eth1", "10.81.0.1/24").unwrap();
    theirs.addr("eth1", "10.81.0.2/24").unwrap();
    (ours, br, theirs)
}

fn serval_yaml(me: &str, peer: &str, my_as: u32, peer_as: u32) -> String {
    format!(
        "speaker: {{routerId: {me}, asNumber: {my_as}}}\n\
         httpAddress: 127.0.0.1:9179\n\
         peers:\n  - {{address: {peer}, asNumber: {peer_as}, connectRetryTime: 1, {BFD_YAML}}}\n"
    )
}

fn bfd_up(s: &Serval<'_>, peer: &str) -> Result<(), String> {
    let p = s.peer(peer)?;
    (p["state"] == "Established" && p["bfd"] == "Up")
        .then_some(())
        .ok_or(format!("state {} bfd {}", p["state"], p["bfd"]))
}

/// Takes `theirs`' link down and returns how long until our session left Established.
fn time_to_detect(ours: &Serval<'_>, theirs: &Netns, peer: &str) -> Duration {
    let cut = Instant::now();
    theirs.ip(&["link", "set", "eth1", "down"]).unwrap();
    loop {
        let elapsed = cut.elapsed();
        let p = ours.peer(peer).unwrap();
        if p["state"] != "Established" {
            assert!(
                p["lastError"].as_str().unwrap_or("").contains("BFD"),
                "ours: the session went down for another reason: {p}"
            );
            return elapsed;
        }
        assert!(
            elapsed < Duration::from_secs(5),
            "ours: still Established {elapsed:?} after the peer's link went down: {p}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn bfd_with_bird_takes_the_session_down_within_a_second() {
    if !require::lab_ready("bfd with BIRD", &["bird", "birdc"]) {
        return;
    }
    let (ours, _br, theirs) = lab("1");
    let (da, db) = (Scratch::new("bfda"), Scratch::new("bfdb"));
    let bird_conf = r#"router id 10.81.0.2;
log stderr all;
protocol device {}
protocol bfd { interface "eth1" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }
protocol static s4 { ipv4; route 10.201.0.0/24 unreachable; }
protocol bgp tor {
  local 10.81.0.2 as 65002; neighbor 10.81.0.1 as 65001; connect retry time 1; error wait time 1, 2;
  bfd on;
  ipv4 { import all; export all; };
}
"#;
    let mut bird = Bird::with_config(&theirs, &db.0, bird_conf);
    bird.start();
    let mut serval = Serval::new(
        &ours,
        &da.0,
        &serval_yaml("10.81.0.1", "10.81.0.2", 65001, 65002),
    );
    serval.start();
    eventually(
        "ours: BGP Established and BFD Up with BIRD",
        Duration::from_secs(30),
        || bfd_up(&serval, "10.81.0.2"),
        || format!("{}\n{}", serval.log(), bird.log()),
    );
    eventually(
        "BIRD: its BFD session with us is Up",
        Duration::from_secs(10),
        || {
            let s = bird.birdc("show bfd sessions");
            s.contains("10.81.0.1")
                .then_some(())
                .filter(|_| s.contains("Up"))
                .ok_or(s)
        },
        || bird.log(),
    );
    let took = time_to_detect(&serval, &theirs, "10.81.0.2");
    eprintln!("BFD (100 ms x 3) against BIRD: session down {took:?} after the peer's link");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    theirs.ip(&["link", "set", "eth1", "up"]).unwrap();
    eventually(
        "ours: back to Established with BFD Up after the link returns",
        Duration::from_secs(30),
        || bfd_up(&serval, "10.81.0.2"),
        || format!("{}\n{}", serval.log(), bird.log()),
    );
}

#[test]
fn bfd_over_ipv6_between_two_serval_speakers() {
    if !require::lab_ready("bfd over IPv6", &["ip"]) {
        return;
    }
    let (ours, _br, theirs) = lab("6");
    for (ns, a) in [(&ours, "fd00:81::1/64"), (&theirs, "fd00:81::2/64")] {
        ns.ip(&["-6", "addr", "add", a, "dev", "eth1", "nodad"])
            .unwrap();
    }
    let yaml = |me: &str, id: &str, peer: &str, my_as: u32, peer_as: u32| {
        format!(
            "speaker: {{routerId: {id}, asNumber: {my_as}}}\n\
             httpAddress: 127.0.0.1:9179\n\
             peers:\n  - {{address: \"{peer}\", asNumber: {peer_as}, connectRetryTime: 1, families: [ipv6-unicast], sourceAddress: \"{me}\", {BFD_YAML}}}\n"
        )
    };
    let (da, db) = (Scratch::new("bfd6a"), Scratch::new("bfd6b"));
    let mut a = Serval::new(
        &ours,
        &da.0,
        &yaml("fd00:81::1", "10.81.0.1", "fd00:81::2", 65001, 65002),
    );
    let mut b = Serval::new(
        &theirs,
        &db.0,
        &yaml("fd00:81::2", "10.81.0.2", "fd00:81::1", 65002, 65001),
    );
    a.start();
    b.start();
    for (who, s, peer) in [("a", &a, "fd00:81::2"), ("b", &b, "fd00:81::1")] {
        eventually(
            &format!("{who}: BGP Established and BFD Up over IPv6"),
            Duration::from_secs(30),
            || bfd_up(s, peer),
            || s.log(),
        );
    }
    let took = time_to_detect(&a, &theirs, "fd00:81::2");
    eprintln!("BFD (100 ms x 3) over IPv6: session down {took:?} after the peer's link");
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn bfd_between_two_serval_speakers() {
    if !require::lab_ready("bfd between serval speakers", &["ip"]) {
        return;
    }
    let (ours, _br, theirs) = lab("2");
    let (da, db) = (Scratch::new("bfdsa"), Scratch::new("bfdsb"));
    let mut a = Serval::new(
        &ours,
        &da.0,
        &serval_yaml("10.81.0.1", "10.81.0.2", 65001, 65002),
    );
    let mut b = Serval::new(
        &theirs,
        &db.0,
        &serval_yaml("10.81.0.2", "10.81.0.1", 65002, 65001),
    );
    a.start();
    b.start();
    for (who, s, peer) in [("a", &a, "10.81.0.2"), ("b", &b, "10.81.0.1")] {
        eventually(
            &format!("{who}: BGP Established and BFD Up"),
            Duration::from_secs(30),
            || bfd_up(s, peer),
            || s.log(),
        );
    }
    let took = time_to_detect(&a, &theirs, "10.81.0.2");
    eprintln!(
        "BFD (100 ms x 3) between serval speakers: session down {took:?} after the peer's link"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    theirs.ip(&["link", "set", "eth1", "up"]).unwrap();
    eventually(
        "a: back to Established with BFD Up",
        Duration::from_secs(30),
        || bfd_up(&a, "10.81.0.2"),
        || format!("{}\n{}", a.log(), b.log()),
    );
}
