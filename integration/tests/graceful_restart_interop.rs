//! Graceful restart with BIRD as the peer, both ways: our speaker restarting keeps its routes
//! in BIRD's table until it is back (refreshed, never withdrawn), and BIRD restarting keeps
//! its routes in ours, held stale, until its End-of-RIB.

use std::time::{Duration, Instant};

use serval_integration::peers::{Bird, RefRouter, Scratch, Serval};
use serval_integration::{Netns, eventually, link, require};

const BIRD_CONF: &str = r#"router id 10.82.0.2;
log stderr all;
protocol device {}
protocol static s4 { ipv4; route 10.200.0.0/24 unreachable; }
protocol bgp v4peer {
  local 10.82.0.2 as 65002; neighbor 10.82.0.1 as 65001; connect retry time 1; error wait time 1, 2;
  graceful restart on; graceful restart time 120;
  ipv4 { import all; export all; };
}
"#;

const SERVAL_YAML: &str = "speaker: {routerId: 10.82.0.1, asNumber: 65001}\n\
peers:\n  - {address: 10.82.0.2, asNumber: 65002, connectRetryTime: 1, gracefulRestartTime: 120}\n\
announce:\n  - {prefix: 10.220.0.0/24}\n";

/// Samples `present` every 100 ms until `done` holds; fails at the first absence.
fn always_while(
    what: &str,
    limit: Duration,
    mut present: impl FnMut() -> Result<(), String>,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        if let Err(e) = present() {
            panic!("{what}: route gone during the restart: {e}");
        }
        if done() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the restart did not complete in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn graceful_restart_with_bird_both_ways() {
    if !require::lab_ready("graceful_restart_interop", &["bird", "birdc"]) {
        return;
    }
    let a = Netns::new("gra").unwrap();
    let b = Netns::new("grb").unwrap();
    link(&a, "eth1", &b, "eth1").unwrap();
    a.addr("eth1", "10.82.0.1/24").unwrap();
    b.addr("eth1", "10.82.0.2/24").unwrap();
    let (da, db) = (Scratch::new("gra"), Scratch::new("grb"));
    let mut bird = Bird::with_config(&b, &db.0, BIRD_CONF);
    bird.start();
    let mut serval = Serval::new(&a, &da.0, SERVAL_YAML);
    serval.start();
    let ctx = |s: &Serval<'_>, b: &Bird<'_>| format!("{}\n{}", s.log(), b.log());
    eventually(
        "session up",
        Duration::from_secs(30),
        || serval.established("10.82.0.2"),
        || ctx(&serval, &bird),
    );
    eventually(
        "BIRD has our route",
        Duration::from_secs(20),
        || bird.route("10.220.0.0/24", false).map(drop),
        || ctx(&serval, &bird),
    );
    eventually(
        "we have BIRD's route",
        Duration::from_secs(20),
        || serval.route("10.200.0.0/24").map(drop),
        || serval.log(),
    );

    // 1. Our speaker crashes (no NOTIFICATION) and comes back.
    serval.daemon.as_mut().unwrap().kill();
    eventually(
        "BIRD notices the session is gone",
        Duration::from_secs(10),
        || match bird.established(false) {
            Ok(()) => Err("still Established".into()),
            Err(_) => Ok(()),
        },
        || bird.log(),
    );
    assert!(
        bird.route("10.220.0.0/24", false).is_ok(),
        "BIRD keeps our route while we restart"
    );
    serval.start();
    always_while(
        "BIRD's copy of our route",
        Duration::from_secs(30),
        || bird.route("10.220.0.0/24", false).map(drop),
        || serval.established("10.82.0.2").is_ok() && bird.established(false).is_ok(),
    );
    // Refreshed after our End-of-RIB: still there a moment later.
    std::thread::sleep(Duration::from_millis(500));
    bird.route("10.220.0.0/24", false)
        .expect("refreshed, not withdrawn");
    let protocols = bird.birdc("show protocols all v4peer");
    assert!(protocols.contains("Established"), "{protocols}");

    // 2. BIRD crashes and restarts in recovery: its route stays in ours, stale, until its
    //    End-of-RIB, then fresh.
    bird.crash();
    eventually(
        "we hold BIRD's routes stale",
        Duration::from_secs(10),
        || {
            let p = serval.peer("10.82.0.2")?;
            (p["staleFamilies"] == serde_json::json!(["ipv4-unicast"]))
                .then_some(())
                .ok_or(p.to_string())
        },
        || serval.log(),
    );
    serval
        .route("10.200.0.0/24")
        .expect("BIRD's route kept while it restarts");
    bird.start_recovering();
    always_while(
        "our copy of BIRD's route",
        Duration::from_secs(40),
        || serval.route("10.200.0.0/24").map(drop),
        || {
            serval
                .peer("10.82.0.2")
                .map(|p| p["state"] == "Established" && p["staleFamilies"] == serde_json::json!([]))
                .unwrap_or(false)
        },
    );
    serval
        .route("10.200.0.0/24")
        .expect("refreshed after BIRD's End-of-RIB");
}
