//! What a peer can do to a speaker, across real sockets in namespaces: routes too large for
//! 4,096-byte messages reach BIRD through RFC 8654 extended messages and are withheld (not
//! stalled on) towards a session without them; a peer that stops reading while a
//! 1M-route table churns costs bounded memory and is closed by the RFC 9687 send hold timer.

use std::time::{Duration, Instant};

use serval_integration::peers::{ADDRS, Bird, RefRouter, Scratch, Serval};
use serval_integration::{Daemon, Netns, eventually, link, require};

const WAIT: Duration = Duration::from_secs(30);

/// Our namespace (10.0.0.1, 10.0.1.1) and theirs (10.0.0.2, 10.0.0.3, 10.0.1.2) on one veth.
fn lab() -> (Netns, Netns) {
    let ours = Netns::new("svh").expect("namespace");
    let theirs = Netns::new("refh").expect("namespace");
    link(&ours, "eth1", &theirs, "eth1").expect("veth");
    ours.addr("eth1", &format!("{}/24", ADDRS.ours4)).unwrap();
    theirs
        .addr("eth1", &format!("{}/24", ADDRS.theirs4))
        .unwrap();
    theirs.addr("eth1", "10.0.0.3/24").unwrap();
    // A second subnet for a second BIRD session (BIRD wants its own primary address).
    ours.addr("eth1", "10.0.1.1/24").unwrap();
    theirs.addr("eth1", "10.0.1.2/24").unwrap();
    (ours, theirs)
}

#[test]
fn extended_messages_carry_large_routes_to_bird_and_nothing_stalls_without_them() {
    if !require::lab_ready(
        "extended_messages_carry_large_routes_to_bird_and_nothing_stalls_without_them",
        &["bird", "birdc"],
    ) {
        return;
    }
    let (ours, theirs) = lab();
    let (d1, d2) = (Scratch::new("ext-sv"), Scratch::new("ext-bird"));
    // 1,100 communities: 4,400 bytes, more than any 4,096-byte UPDATE can hold.
    let communities: Vec<String> = (0..1100).map(|i| format!("\"65001:{i}\"")).collect();
    let yaml = format!(
        "speaker:\n  routerId: 10.0.0.1\n  asNumber: 65001\nhttpAddress: 127.0.0.1:9179\npeers:\n\
         \x20 - address: 10.0.0.2\n    asNumber: 65002\n    families: [ipv4-unicast]\n    connectRetryTime: 1\n\
         \x20 - address: 10.0.1.2\n    asNumber: 65002\n    families: [ipv4-unicast]\n    connectRetryTime: 1\n\
         announce:\n  - prefix: 10.100.0.0/24\n    communities: [{}]\n  - prefix: 10.101.0.0/24\n",
        communities.join(", ")
    );
    let mut serval = Serval::new(&ours, &d1.0, &yaml);
    let conf = "router id 10.0.0.2;\nlog stderr all;\nprotocol device {}\n\
        protocol bgp ext { local 10.0.0.2 as 65002; neighbor 10.0.0.1 as 65001; connect retry time 1;\n\
          enable extended messages; ipv4 { import all; export none; }; }\n\
        protocol bgp plain { local 10.0.1.2 as 65002; neighbor 10.0.1.1 as 65001; connect retry time 1;\n\
          ipv4 { import all; export none; }; }\n";
    let mut bird = Bird::with_config(&theirs, &d2.0, conf);
    bird.start();
    serval.start();
    let ctx = || format!("{}\n{}", serval.log(), bird.log());
    for addr in ["10.0.0.2", "10.0.1.2"] {
        eventually(
            &format!("session with {addr}"),
            WAIT,
            || serval.established(addr),
            ctx,
        );
    }
    let ext = serval.peer("10.0.0.2").unwrap();
    assert_eq!(ext["negotiated"]["extendedMessages"], true, "{ext}");
    let plain = serval.peer("10.0.1.2").unwrap();
    assert_eq!(plain["negotiated"]["extendedMessages"], false, "{plain}");

    // The extended session carries the large route with every community.
    let r = eventually(
        "BIRD has the large route over the extended session",
        WAIT,
        || {
            let out = bird.birdc("show route 10.100.0.0/24 protocol ext all");
            if out.contains("BGP.community") {
                Ok(out)
            } else {
                Err(out)
            }
        },
        ctx,
    );
    // birdc wraps the long community list over several lines.
    let list = &r[r.find("BGP.community").unwrap()..];
    assert_eq!(list.matches("(65001,").count(), 1100, "{r}");
    // The plain session gets the small route, never the large one, and stays up.
    eventually(
        "BIRD has the small route over the plain session",
        WAIT,
        || {
            let out = bird.birdc("show route protocol plain");
            if out.contains("10.101.0.0/24") {
                Ok(out)
            } else {
                Err(out)
            }
        },
        ctx,
    );
    let out = bird.birdc("show route protocol plain");
    assert!(!out.contains("10.100.0.0/24"), "{out}");
    let plain = serval.peer("10.0.1.2").unwrap();
    assert!(
        plain["routesTooLarge"].as_u64().unwrap_or(0) >= 1,
        "{plain}"
    );
    assert_eq!(plain["state"], "Established");
    let protocols = bird.birdc("show protocols");
    assert_eq!(protocols.matches("Established").count(), 2, "{protocols}");
}

/// Peak RSS (VmHWM) of a process, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs one speaker fed `rounds` x 1M routes, with or without a stalled reader; returns
/// (peak RSS KiB, time from the table's arrival to the stalled session's end).
fn run(ours: &Netns, theirs: &Netns, stalled: bool, rounds: u32) -> (u64, Option<Duration>) {
    let d = Scratch::new(if stalled { "stall-sv" } else { "base-sv" });
    let mut yaml = String::from(
        "speaker:\n  routerId: 10.0.0.1\n  asNumber: 65001\nhttpAddress: 127.0.0.1:9179\npeers:\n\
         \x20 - address: 10.0.0.2\n    asNumber: 65009\n    passive: true\n    families: [ipv4-unicast]\n",
    );
    if stalled {
        yaml += "  - address: 10.0.0.3\n    asNumber: 65005\n    passive: true\n    families: [ipv4-unicast]\n    sendHoldTime: 10\n";
    }
    let mut serval = Serval::new(ours, &d.0, &yaml);
    serval.start();
    let ctx = || serval.log();
    eventually("speaker answers", WAIT, || serval.status().map(|_| ()), ctx);
    let blaster = require::serval_bin("bgp-blaster");
    let blaster = blaster.to_str().unwrap();
    let mut staller = stalled.then(|| {
        Daemon::start(
            theirs,
            "stall",
            &[
                blaster,
                "stall",
                "--peer",
                "10.0.0.1:179",
                "--as",
                "65005",
                "--id",
                "10.0.0.3",
                "--source",
                "10.0.0.3",
            ],
            &d.0,
        )
        .unwrap()
    });
    if stalled {
        eventually(
            "stalled peer established",
            WAIT,
            || serval.established("10.0.0.3"),
            ctx,
        );
    }
    let rounds_s = rounds.to_string();
    let _feed = Daemon::start(
        theirs,
        "feed",
        &[
            blaster,
            "feed",
            "--peer",
            "10.0.0.1:179",
            "--as",
            "65009",
            "--id",
            "10.0.0.2",
            "--count",
            "1000000",
            "--next-hop",
            "10.0.0.2",
            "--rounds",
            &rounds_s,
        ],
        &d.0,
    )
    .unwrap();
    // The table is in once the feeder's last round (and End-of-RIB) arrived.
    eventually(
        "speaker holds the whole table",
        Duration::from_secs(300),
        || {
            let p = serval.peer("10.0.0.2")?;
            let eor = p["endOfRibReceived"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            let n = p["prefixes"][0]["accepted"].as_u64().unwrap_or(0);
            if eor && n == 1_000_000 {
                Ok(())
            } else {
                Err(p.to_string())
            }
        },
        ctx,
    );
    let loaded = Instant::now();
    let closed = stalled.then(|| {
        let p = eventually(
            "send hold timer closes the stalled session",
            Duration::from_secs(120),
            || {
                let p = serval.peer("10.0.0.3")?;
                if p["state"] != "Established" {
                    Ok(p)
                } else {
                    Err(p.to_string())
                }
            },
            ctx,
        );
        assert_eq!(
            p["lastError"], "sent NOTIFICATION: send hold timer expired",
            "{p}"
        );
        loaded.elapsed()
    });
    let pid = serval.daemon.as_ref().and_then(Daemon::pid).unwrap();
    let peak = peak_rss_kib(pid);
    if let Some(s) = staller.as_mut() {
        s.stop();
    }
    (peak, closed)
}

#[test]
fn a_stalled_reader_costs_bounded_memory_and_is_closed_by_send_hold() {
    if !require::lab_ready(
        "a_stalled_reader_costs_bounded_memory_and_is_closed_by_send_hold",
        &[],
    ) {
        return;
    }
    let (ours, theirs) = lab();
    // Three rounds of the 1M-route table (each with other communities): without a bound,
    // every round's UPDATEs would pile up for the stalled peer.
    let (base, _) = run(&ours, &theirs, false, 3);
    let (with_stall, closed) = run(&ours, &theirs, true, 3);
    let closed = closed.expect("stalled run");
    eprintln!(
        "1M routes x 3 rounds: peak RSS {} MiB without a stalled reader, {} MiB with one \
         (+{} MiB); stalled session closed {:.1} s after the table was in (send hold 10 s)",
        base / 1024,
        with_stall / 1024,
        with_stall.saturating_sub(base) / 1024,
        closed.as_secs_f64()
    );
    // The stated bound: the 8 MiB write budget plus the backlog (one entry per prefix,
    // ~24 MiB at 1M) and allocator slack.
    assert!(
        with_stall <= base + 64 * 1024,
        "peak RSS {with_stall} KiB with a stalled reader vs {base} KiB without"
    );
    assert!(closed < Duration::from_secs(60), "{closed:?}");
}
