//! Interop of Serval's speaker with BIRD 2, FRR and GoBGP, each in its own network
//! namespace: sessions over IPv4 and IPv6 (MP-BGP), routes and attributes both ways,
//! withdrawals, NOTIFICATIONs both ways, and a peer crash and restart.

use std::time::Duration;

use serval_integration::peers::{ADDRS, Bird, Frr, GoBgp, RefRouter, Scratch, Serval};
use serval_integration::{Netns, eventually, link, require};

const WAIT: Duration = Duration::from_secs(30);

fn serval_yaml(peer_as: u32, with_v4_route: bool, with_v4_peer: bool) -> String {
    let mut y = String::from(
        "speaker:\n  routerId: 10.0.0.1\n  asNumber: 65001\nhttpAddress: 127.0.0.1:9179\npeers:\n",
    );
    if with_v4_peer {
        y += &format!(
            "  - address: {}\n    asNumber: {peer_as}\n    families: [ipv4-unicast]\n    connectRetryTime: 1\n",
            ADDRS.theirs4
        );
    }
    y += &format!(
        "  - address: \"{}\"\n    asNumber: {peer_as}\n    families: [ipv6-unicast]\n    connectRetryTime: 1\n",
        ADDRS.theirs6
    );
    y += "announce:\n";
    if with_v4_route {
        y += "  - prefix: 10.100.0.0/24\n    med: 10\n    communities: [\"65001:100\"]\n";
    }
    y += "  - prefix: 2001:db8:100::/48\n    med: 10\n    communities: [\"65001:100\"]\n";
    y
}

/// Two namespaces joined by a veth, with the lab's IPv4 and IPv6 addresses.
fn lab() -> (Netns, Netns) {
    let ours = Netns::new("sv").expect("namespace");
    let theirs = Netns::new("ref").expect("namespace");
    link(&ours, "eth1", &theirs, "eth1").expect("veth");
    ours.addr("eth1", &format!("{}/24", ADDRS.ours4)).unwrap();
    ours.addr("eth1", &format!("{}/64", ADDRS.ours6)).unwrap();
    theirs
        .addr("eth1", &format!("{}/24", ADDRS.theirs4))
        .unwrap();
    theirs
        .addr("eth1", &format!("{}/64", ADDRS.theirs6))
        .unwrap();
    (ours, theirs)
}

/// The whole scenario against one reference router.
fn scenario(serval: &mut Serval<'_>, peer: &mut dyn RefRouter) {
    let name = peer.name();
    let ctx = |s: &Serval<'_>, p: &dyn RefRouter| format!("{}\n{}", s.log(), p.log());
    peer.start();
    serval.start();

    // 1. Sessions come up over both transports, seen from both ends.
    for (addr, v6) in [(ADDRS.theirs4, false), (ADDRS.theirs6, true)] {
        eventually(
            &format!("serval: session with {name} at {addr} Established"),
            WAIT,
            || serval.established(addr),
            || ctx(serval, peer),
        );
        eventually(
            &format!(
                "{name}: session over {} Established",
                if v6 { "IPv6" } else { "IPv4" }
            ),
            WAIT,
            || peer.established(v6),
            || ctx(serval, peer),
        );
    }

    // 2. Our routes reach them with the right attributes.
    for (prefix, nh, v6) in [
        ("10.100.0.0/24", ADDRS.ours4, false),
        ("2001:db8:100::/48", ADDRS.ours6, true),
    ] {
        let r = eventually(
            &format!("{name} has our {prefix}"),
            WAIT,
            || peer.route(prefix, v6),
            || ctx(serval, peer),
        );
        assert_eq!(r.as_path, vec![65001], "{name}: AS path of {prefix}");
        assert_eq!(r.next_hop, nh, "{name}: next hop of {prefix}");
        assert_eq!(r.med, Some(10), "{name}: MED of {prefix}");
        assert!(
            r.communities.contains(&"65001:100".to_string()),
            "{name}: communities of {prefix}: {:?}",
            r.communities
        );
    }

    // 3. Their routes reach us with the right attributes.
    let (theirs4, theirs6) = peer.own_prefixes();
    for (prefix, nh) in [(theirs4, ADDRS.theirs4), (theirs6, ADDRS.theirs6)] {
        let r = eventually(
            &format!("serval has {name}'s {prefix}"),
            WAIT,
            || serval.route(prefix),
            || ctx(serval, peer),
        );
        assert_eq!(
            r.as_path,
            vec![peer.asn()],
            "serval: AS path of {prefix} from {name}"
        );
        assert_eq!(r.next_hop, nh, "serval: next hop of {prefix} from {name}");
        assert_eq!(r.local_pref, None, "LOCAL_PREF never crosses eBGP");
        let community = format!("{}:7", peer.asn());
        assert!(
            r.communities.contains(&community),
            "serval: communities of {prefix} from {name}: {:?}",
            r.communities
        );
        if peer.sends_med() {
            assert_eq!(r.med, Some(5), "serval: MED of {prefix} from {name}");
        }
    }

    // 4. Withdrawals both ways.
    serval.reload(&serval_yaml(peer.asn(), false, true));
    eventually(
        &format!("{name} drops our withdrawn 10.100.0.0/24"),
        WAIT,
        || match peer.route("10.100.0.0/24", false) {
            Ok(r) => Err(format!("still there: {r:?}")),
            Err(_) => Ok(()),
        },
        || ctx(serval, peer),
    );
    peer.withdraw_v4();
    eventually(
        &format!("serval drops {name}'s withdrawn {theirs4}"),
        WAIT,
        || match serval.route(theirs4) {
            Ok(r) => Err(format!("still there: {r:?}")),
            Err(_) => Ok(()),
        },
        || ctx(serval, peer),
    );

    // 5. Their NOTIFICATION is understood by us.
    peer.shutdown_v4();
    eventually(
        &format!("serval reports {name}'s Cease"),
        WAIT,
        || {
            let p = serval.peer(ADDRS.theirs4)?;
            let e = p["lastError"].as_str().unwrap_or("");
            if p["state"] != "Established" && e.contains("received NOTIFICATION: cease") {
                Ok(())
            } else {
                Err(p.to_string())
            }
        },
        || ctx(serval, peer),
    );
    peer.enable_v4();
    eventually(
        &format!("IPv4 session with {name} back"),
        WAIT,
        || serval.established(ADDRS.theirs4),
        || ctx(serval, peer),
    );

    // 6. A crash and restart of the peer is survived: sessions and routes come back.
    peer.crash();
    eventually(
        &format!("serval notices {name} is gone"),
        WAIT,
        || match serval.established(ADDRS.theirs6) {
            Ok(()) => Err("still established".into()),
            Err(_) => Ok(()),
        },
        || ctx(serval, peer),
    );
    peer.start();
    eventually(
        &format!("serval re-learns {name}'s {theirs6} after its restart"),
        WAIT,
        || serval.route(theirs6),
        || ctx(serval, peer),
    );
    eventually(
        &format!("{name} re-learns our 2001:db8:100::/48 after its restart"),
        WAIT,
        || peer.route("2001:db8:100::/48", true),
        || ctx(serval, peer),
    );

    // 7. Our NOTIFICATION is understood by them: de-configuring the peer sends Cease/3.
    eventually(
        &format!("IPv4 session with {name} up before de-configuring"),
        WAIT,
        || serval.established(ADDRS.theirs4),
        || ctx(serval, peer),
    );
    serval.reload(&serval_yaml(peer.asn(), false, false));
    eventually(
        &format!("{name} reports our Cease (peer de-configured)"),
        WAIT,
        || peer.saw_our_cease(),
        || ctx(serval, peer),
    );
}

#[test]
fn interop_with_bird() {
    if !require::lab_ready("interop_with_bird", &["bird", "birdc"]) {
        return;
    }
    let (ours, theirs) = lab();
    let (d1, d2) = (Scratch::new("bird-sv"), Scratch::new("bird-ref"));
    let mut serval = Serval::new(&ours, &d1.0, &serval_yaml(65002, true, true));
    let mut bird = Bird::new(&theirs, &d2.0);
    scenario(&mut serval, &mut bird);
}

#[test]
fn interop_with_frr() {
    if !require::lab_ready("interop_with_frr", &["/usr/lib/frr/bgpd", "vtysh"]) {
        return;
    }
    let (ours, theirs) = lab();
    let (d1, d2) = (Scratch::new("frr-sv"), Scratch::new("frr-ref"));
    let mut serval = Serval::new(&ours, &d1.0, &serval_yaml(65003, true, true));
    let mut frr = Frr::new(&theirs, &d2.0);
    scenario(&mut serval, &mut frr);
}

#[test]
fn interop_with_gobgp() {
    if !require::lab_ready("interop_with_gobgp", &["gobgpd", "gobgp"]) {
        return;
    }
    let (ours, theirs) = lab();
    let (d1, d2) = (Scratch::new("gobgp-sv"), Scratch::new("gobgp-ref"));
    let mut serval = Serval::new(&ours, &d1.0, &serval_yaml(65004, true, true));
    let mut gobgp = GoBgp::new(&theirs, &d2.0);
    scenario(&mut serval, &mut gobgp);
}

/// iBGP: LOCAL_PREF both ways, AS path left empty, next hop of local routes is the
/// session address.
#[test]
fn ibgp_local_pref_with_bird() {
    if !require::lab_ready("ibgp_local_pref_with_bird", &["bird", "birdc"]) {
        return;
    }
    let (ours, theirs) = lab();
    let (d1, d2) = (Scratch::new("ibgp-sv"), Scratch::new("ibgp-ref"));
    let yaml = format!(
        "speaker:\n  routerId: 10.0.0.1\n  asNumber: 65001\nhttpAddress: 127.0.0.1:9179\npeers:\n  - address: {}\n    asNumber: 65001\n    families: [ipv4-unicast]\n    connectRetryTime: 1\nannounce:\n  - prefix: 10.150.0.0/24\n    localPref: 150\n",
        ADDRS.theirs4
    );
    let mut serval = Serval::new(&ours, &d1.0, &yaml);
    let conf = format!(
        "router id {t};\nprotocol device {{}}\nprotocol static s4 {{ ipv4; route 10.250.0.0/24 unreachable; }}\n\
         protocol bgp v4peer {{ local {t} as 65001; neighbor {o} as 65001; connect retry time 1;\n\
         ipv4 {{ import all; export filter {{ bgp_local_pref = 200; accept; }}; }}; }}\n",
        t = ADDRS.theirs4,
        o = ADDRS.ours4
    );
    let mut bird = Bird::with_config(&theirs, &d2.0, &conf);
    bird.start();
    serval.start();
    let ctx = || format!("{}\n{}", serval.log(), bird.log());
    let r = eventually(
        "BIRD has our iBGP route",
        WAIT,
        || bird.route("10.150.0.0/24", false),
        ctx,
    );
    assert_eq!(
        (r.as_path.clone(), r.local_pref, r.next_hop.as_str()),
        (vec![], Some(150), ADDRS.ours4),
        "{r:?}"
    );
    let r = eventually(
        "serval has BIRD's iBGP route",
        WAIT,
        || serval.route("10.250.0.0/24"),
        ctx,
    );
    assert_eq!(
        (r.as_path.clone(), r.local_pref, r.next_hop.as_str()),
        (vec![], Some(200), ADDRS.theirs4),
        "{r:?}"
    );
}
