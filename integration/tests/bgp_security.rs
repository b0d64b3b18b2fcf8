//! Session protection against real peers in namespaces: TCP-MD5 with BIRD (right password up;
//! wrong or missing password never), and GTSM/TTL security blocking a peer two hops away
//! until the allowed hop count says two.

use std::time::{Duration, Instant};

use serval_integration::peers::{Bird, RefRouter, Scratch, Serval};
use serval_integration::{Netns, eventually, link, require};

fn bird_conf(password: Option<&str>) -> String {
    let pw = password
        .map(|p| format!("password \"{p}\";"))
        .unwrap_or_default();
    format!(
        r#"router id 10.80.0.2;
log stderr all;
protocol device {{}}
protocol static s4 {{ ipv4; route 10.200.0.0/24 unreachable; }}
protocol bgp v4peer {{
  local 10.80.0.2 as 65002; neighbor 10.80.0.1 as 65001; connect retry time 1; error wait time 1, 2;
  {pw}
  ipv4 {{ import all; export all; }};
}}
"#
    )
}

fn serval_yaml(password: Option<&str>) -> String {
    let pw = password
        .map(|p| format!(", password: {p}"))
        .unwrap_or_default();
    format!(
        "speaker: {{routerId: 10.80.0.1, asNumber: 65001}}\n\
         peers:\n  - {{address: 10.80.0.2, asNumber: 65002, connectRetryTime: 1{pw}}}\n"
    )
}

fn never(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        assert!(!f(), "{what} happened");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn md5_with_bird_right_wrong_and_missing_password() {
    if !require::lab_ready("md5_with_bird", &["bird", "birdc"]) {
        return;
    }
    for (ours, theirs, should_come_up) in [
        (Some("s3cret"), Some("s3cret"), true),
        (Some("s3cret"), Some("wrong"), false),
        (None, Some("s3cret"), false),
        (Some("s3cret"), None, false),
    ] {
        let a = Netns::new("md5a").unwrap();
        let b = Netns::new("md5b").unwrap();
        link(&a, "eth1", &b, "eth1").unwrap();
        a.addr("eth1", "10.80.0.1/24").unwrap();
        b.addr("eth1", "10.80.0.2/24").unwrap();
        let (da, db) = (Scratch::new("md5a"), Scratch::new("md5b"));
        let mut bird = Bird::with_config(&b, &db.0, &bird_conf(theirs));
        bird.start();
        let mut serval = Serval::new(&a, &da.0, &serval_yaml(ours));
        serval.start();
        let case = format!("ours {ours:?}, BIRD {theirs:?}");
        if should_come_up {
            eventually(
                &format!("{case}: session Established"),
                Duration::from_secs(30),
                || serval.established("10.80.0.2"),
                || format!("{}\n{}", serval.log(), bird.log()),
            );
            eventually(
                &format!("{case}: BIRD's route arrives over the signed session"),
                Duration::from_secs(20),
                || serval.route("10.200.0.0/24").map(drop),
                || serval.log(),
            );
        } else {
            never(&format!("{case}: session Established"), 6, || {
                serval.established("10.80.0.2").is_ok() || bird.established(false).is_ok()
            });
        }
    }
}

/// a — r — b in fresh namespaces: b is two hops from a. Returns (a, r, b) and the speakers'
/// scratch directories.
fn two_hops() -> (Netns, Netns, Netns) {
    let a = Netns::new("gtsma").unwrap();
    let r = Netns::new("gtsmr").unwrap();
    let b = Netns::new("gtsmb").unwrap();
    link(&a, "eth0", &r, "eth0").unwrap();
    link(&r, "eth1", &b, "eth0").unwrap();
    a.addr("eth0", "10.81.1.1/24").unwrap();
    r.addr("eth0", "10.81.1.254/24").unwrap();
    r.addr("eth1", "10.81.2.254/24").unwrap();
    b.addr("eth0", "10.81.2.1/24").unwrap();
    r.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
    a.ip(&["route", "add", "default", "via", "10.81.1.254"])
        .unwrap();
    b.ip(&["route", "add", "default", "via", "10.81.2.254"])
        .unwrap();
    (a, r, b)
}

fn gtsm_yaml(me: &str, peer: &str, hops: u8) -> String {
    format!(
        "speaker: {{routerId: {me}, asNumber: 64512}}\n\
         peers:\n  - {{address: {peer}, asNumber: 64512, connectRetryTime: 1, ttlSecurity: {hops}}}\n"
    )
}

#[test]
fn ttl_security_blocks_a_peer_two_hops_away_and_allows_it_at_two() {
    if !require::lab_ready("ttl_security", &["ip"]) {
        return;
    }
    for (hops, should_come_up) in [(1u8, false), (2, true)] {
        let (a, _r, b) = two_hops();
        let (da, db) = (Scratch::new("gtsma"), Scratch::new("gtsmb"));
        let mut sa = Serval::new(&a, &da.0, &gtsm_yaml("10.81.1.1", "10.81.2.1", hops));
        // b sends with TTL 255 (GTSM on its side too, allowing two hops).
        let mut sb = Serval::new(&b, &db.0, &gtsm_yaml("10.81.2.1", "10.81.1.1", 2));
        sb.start();
        sa.start();
        if should_come_up {
            eventually(
                "session Established with two hops allowed",
                Duration::from_secs(30),
                || sa.established("10.81.2.1"),
                || format!("{}\n{}", sa.log(), sb.log()),
            );
        } else {
            eventually(
                "a's status endpoint",
                Duration::from_secs(20),
                || sa.status().map(drop),
                || sa.log(),
            );
            never(
                "a session with a peer beyond the allowed single hop",
                6,
                || sa.established("10.81.2.1").is_ok(),
            );
        }
    }
}

fn bird_five_routes() -> String {
    let routes: String = (1..=5)
        .map(|i| format!("route 10.210.{i}.0/24 unreachable; "))
        .collect();
    format!(
        r#"router id 10.80.0.2;
log stderr all;
protocol device {{}}
protocol static s4 {{ ipv4; {routes}}}
protocol bgp v4peer {{
  local 10.80.0.2 as 65002; neighbor 10.80.0.1 as 65001; connect retry time 1; error wait time 1, 2;
  ipv4 {{ import all; export all; }};
}}
"#
    )
}

#[test]
fn max_prefix_against_bird_tears_down_with_cease_or_only_warns() {
    if !require::lab_ready("max_prefix with BIRD", &["bird", "birdc"]) {
        return;
    }
    for warning_only in [false, true] {
        let a = Netns::new("mpa").unwrap();
        let b = Netns::new("mpb").unwrap();
        link(&a, "eth1", &b, "eth1").unwrap();
        a.addr("eth1", "10.80.0.1/24").unwrap();
        b.addr("eth1", "10.80.0.2/24").unwrap();
        let (da, db) = (Scratch::new("mpa"), Scratch::new("mpb"));
        let mut bird = Bird::with_config(&b, &db.0, &bird_five_routes());
        bird.start();
        let yaml = format!(
            "speaker: {{routerId: 10.80.0.1, asNumber: 65001}}\n\
             httpAddress: 127.0.0.1:9179\n\
             peers:\n  - {{address: 10.80.0.2, asNumber: 65002, connectRetryTime: 1, families: [ipv4-unicast],\n      \
             maxPrefix: {{limit: 3, warningOnly: {warning_only}, restartSeconds: 2}}}}\n"
        );
        let mut serval = Serval::new(&a, &da.0, &yaml);
        serval.start();
        let ctx = || format!("{}\n{}", serval.log(), bird.log());
        if warning_only {
            eventually(
                "warning only: the session stays up with all five routes, flagged",
                Duration::from_secs(30),
                || {
                    let p = serval.peer("10.80.0.2")?;
                    (p["state"] == "Established"
                        && p["maxPrefixExceeded"] == true
                        && p["prefixes"][0]["accepted"] == 5)
                        .then_some(())
                        .ok_or(p.to_string())
                },
                ctx,
            );
        } else {
            eventually(
                "tear-down: BIRD is told Cease / maximum number of prefixes",
                Duration::from_secs(30),
                || {
                    let out = bird.birdc("show protocols all v4peer");
                    out.contains("Maximum number of prefixes reached")
                        .then_some(())
                        .ok_or(out)
                },
                ctx,
            );
            let p = serval.peer("10.80.0.2").unwrap();
            assert_eq!(p["maxPrefixExceeded"], true, "{p}");
            // After the restart delay the session is tried again, and trips again.
            eventually(
                "tear-down: the session is retried after restartSeconds and trips again",
                Duration::from_secs(30),
                || {
                    let p = serval.peer("10.80.0.2")?;
                    (p["establishedTransitions"].as_u64().unwrap_or(0) >= 2
                        && p["state"] != "Established")
                        .then_some(())
                        .ok_or(p.to_string())
                },
                ctx,
            );
        }
    }
}
