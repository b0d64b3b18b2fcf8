//! Two in-process speakers on loopback: sessions, route exchange, withdrawal, removal.
//! No namespaces needed; the cross-implementation tests live in `integration/`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serval_bgp::af::Family;
use serval_bgp::config::{LocalRoute, PeerConfig, SpeakerConfig};
use serval_bgp::fsm::State;
use serval_bgp::speaker::SpeakerHandle;
use serval_bgp::status::Status;

mod common;

use common::free_port;

async fn eventually<F, Fut>(what: &str, mut check: F) -> Status
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Status>>,
{
    common::until(what, async || check().await).await
}

struct Pair {
    a: SpeakerHandle,
    b: SpeakerHandle,
    a_ip: IpAddr,
    b_ip: IpAddr,
}

async fn pair(b_as: u32) -> Pair {
    let (a_ip, b_ip): (IpAddr, IpAddr) =
        ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
    let (pa, pb) = (free_port(), free_port());
    let mut ca = SpeakerConfig::new(Ipv4Addr::new(10, 0, 0, 1), 65001);
    ca.listen_address = Some(a_ip);
    ca.listen_port = pa;
    let mut cb = SpeakerConfig::new(Ipv4Addr::new(10, 0, 0, 2), b_as);
    cb.listen_address = Some(b_ip);
    cb.listen_port = pb;
    let a = SpeakerHandle::start(ca).await.unwrap();
    let b = SpeakerHandle::start(cb).await.unwrap();
    let mut to_b = PeerConfig::new(b_ip, b_as);
    to_b.port = pb;
    to_b.source_address = Some(a_ip);
    to_b.connect_retry_time = 1;
    let mut to_a = PeerConfig::new(a_ip, 65001);
    to_a.port = pa;
    to_a.source_address = Some(b_ip);
    to_a.connect_retry_time = 1;
    a.add_peer(to_b).await.unwrap();
    b.add_peer(to_a).await.unwrap();
    Pair { a, b, a_ip, b_ip }
}

async fn established(h: &SpeakerHandle) -> Status {
    eventually("session established", || async {
        let s = h.status().await.unwrap();
        (s.peers[0].state == State::Established).then_some(s)
    })
    .await
}

#[tokio::test]
async fn ebgp_pair_exchanges_and_withdraws_routes() {
    let p = pair(65002).await;
    established(&p.a).await;
    let s = established(&p.b).await;
    let neg = s.peers[0].negotiated.as_ref().unwrap();
    assert!(neg.four_octet_as && neg.route_refresh);
    assert_eq!(neg.families, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);

    let mut route = LocalRoute::new("10.10.0.0/24".parse().unwrap());
    route.med = Some(42);
    route.communities = vec!["65001:7".into()];
    p.a.announce(route).await.unwrap();
    p.a.announce(LocalRoute::new("10.10.1.0/24".parse().unwrap()))
        .await
        .unwrap();

    let mut changes = p.b.subscribe().await.unwrap();
    eventually("B learns both prefixes", || async {
        let s = p.b.status().await.unwrap();
        (s.families[0].prefixes == 2).then_some(s)
    })
    .await;
    let routes = p.b.routes(Family::Ipv4Unicast, None).await.unwrap();
    let r = &routes[0];
    assert_eq!(r.prefix, "10.10.0.0/24".parse().unwrap());
    let attrs = &r.paths[0].attributes;
    assert_eq!(attrs.as_path.segments[0].asns, vec![65001]);
    assert_eq!(attrs.next_hop, Some(p.a_ip));
    assert_eq!(
        attrs.med,
        Some(42),
        "locally originated MED is sent over eBGP"
    );
    assert_eq!(attrs.communities, vec![65001 << 16 | 7]);
    assert_eq!(r.paths[0].peer, Some(p.a_ip));

    // The FIB subscriber gets the next hop.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), changes.recv())
            .await
            .unwrap()
            .unwrap();
        seen.extend(batch);
    }
    assert!(
        seen.iter()
            .all(|c| c.best.as_ref().unwrap().next_hops == vec![p.a_ip])
    );

    // B does not echo A's routes back to A (split horizon), and A's own view is local.
    let sa = p.a.status().await.unwrap();
    assert_eq!(sa.peers[0].prefixes[0].received, 0);
    assert_eq!(sa.peers[0].prefixes[0].advertised, 2);

    p.a.withdraw("10.10.0.0/24".parse().unwrap()).await.unwrap();
    eventually("withdrawal reaches B", || async {
        let s = p.b.status().await.unwrap();
        (s.families[0].prefixes == 1).then_some(s)
    })
    .await;

    // Removing the peer sends a Cease; B sees the session drop and forgets A's routes.
    p.a.remove_peer(p.b_ip).await.unwrap();
    let s = eventually("B drops the session", || async {
        let s = p.b.status().await.unwrap();
        (s.peers[0].state != State::Established && s.families[0].prefixes == 0).then_some(s)
    })
    .await;
    assert!(
        s.peers[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("de-configured"),
        "{:?}",
        s.peers[0].last_error
    );
    p.a.shutdown().await.unwrap();
    p.b.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_as_never_establishes_and_says_why() {
    let p = pair(65002).await;
    established(&p.b).await;
    // B now expects A to be AS 65009: the session restarts and A's OPEN is refused.
    let a_port = p.b.status().await.unwrap().peers[0].port;
    let mut wrong = PeerConfig::new(p.a_ip, 65009);
    wrong.port = a_port;
    wrong.source_address = Some(p.b_ip);
    wrong.connect_retry_time = 1;
    p.b.update_peer(wrong).await.unwrap();
    let s = eventually("A hears Bad Peer AS", || async {
        let s = p.a.status().await.unwrap();
        s.peers[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("bad peer AS"))
            .then_some(s)
    })
    .await;
    assert_ne!(s.peers[0].state, State::Established);
    let sb = p.b.status().await.unwrap();
    assert!(sb.peers[0].messages.notifications_sent >= 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ne!(
        p.b.status().await.unwrap().peers[0].state,
        State::Established,
        "never comes up"
    );
    p.a.shutdown().await.unwrap();
    p.b.shutdown().await.unwrap();
}

#[tokio::test]
async fn ibgp_peer_gets_local_pref_and_unchanged_path() {
    let p = pair(65001).await;
    established(&p.b).await;
    p.a.announce(LocalRoute::new("2001:db8:5::/48".parse().unwrap()))
        .await
        .unwrap();
    p.a.announce(LocalRoute::new("10.20.0.0/16".parse().unwrap()))
        .await
        .unwrap();
    eventually("B learns the IPv4 route", || async {
        let s = p.b.status().await.unwrap();
        (s.families[0].prefixes == 1).then_some(s)
    })
    .await;
    let r = p.b.routes(Family::Ipv4Unicast, None).await.unwrap();
    let a = &r[0].paths[0].attributes;
    assert!(a.as_path.segments.is_empty());
    assert_eq!(a.local_pref, Some(100));
    // IPv6 over an IPv4 session has no IPv6 next hop configured: held back, not sent wrong.
    let s = p.b.status().await.unwrap();
    assert_eq!(s.families[1].prefixes, 0);
    p.a.shutdown().await.unwrap();
    p.b.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_update_gets_notification_and_other_sessions_stay_up() {
    use serval_bgp::packet::attribute::{DecodeContext, EncodeContext};
    use serval_bgp::packet::capability::Capability;
    use serval_bgp::packet::message::{Message, Open};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let p = pair(65002).await;
    established(&p.a).await;
    // A third, misbehaving peer at 127.0.0.3 that A expects.
    let bad_ip: IpAddr = "127.0.0.3".parse().unwrap();
    let mut bad = PeerConfig::new(bad_ip, 65009);
    bad.passive = true;
    p.a.add_peer(bad).await.unwrap();
    let a_port = p.b.status().await.unwrap().peers[0].port;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::new(bad_ip, 0)).unwrap();
    let mut s = sock
        .connect(std::net::SocketAddr::new(p.a_ip, a_port))
        .await
        .unwrap();
    let enc = EncodeContext {
        four_octet_as: true,
        extended_messages: false,
    };
    let open = Open {
        my_as: 65009,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 9, 9, 9),
        capabilities: vec![Capability::FourOctetAs(65009)],
    };
    s.write_all(&Message::Open(open).encode(enc)).await.unwrap();
    s.write_all(&Message::Keepalive.encode(enc)).await.unwrap();
    // An UPDATE whose withdrawn-routes length runs past the message: RFC 4271 §6.3,
    // Malformed Attribute List.
    let mut update = vec![0xff; 16];
    update.extend_from_slice(&[0, 25, 2, 0, 9, 0, 0, 0, 0, 0]);
    s.write_all(&update).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    let ctx = DecodeContext {
        four_octet_as: true,
        ebgp: true,
        extended_messages: false,
    };
    let mut rest = &got[..];
    let mut notification = None;
    while rest.len() >= 19 {
        let len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        if let Ok(Message::Notification(n)) = Message::decode(&rest[..len], ctx) {
            notification = Some((n.code, n.subcode));
        }
        rest = &rest[len..];
    }
    assert_eq!(
        notification,
        Some((3, 1)),
        "A answers with UPDATE Message Error / Malformed Attribute List"
    );
    let s = p.a.status().await.unwrap();
    let good = s.peers.iter().find(|x| x.address == p.b_ip).unwrap();
    assert_eq!(
        good.state,
        State::Established,
        "the well-behaved session is untouched"
    );
    assert_eq!(good.established_transitions, 1);
    p.a.shutdown().await.unwrap();
    p.b.shutdown().await.unwrap();
}

/// A speaker on `ip` with its own port.
async fn speaker_on(ip: &str, router_id: u8, asn: u32) -> (SpeakerHandle, IpAddr, u16) {
    let addr: IpAddr = ip.parse().unwrap();
    let port = free_port();
    let mut c = SpeakerConfig::new(Ipv4Addr::new(10, 0, 0, router_id), asn);
    c.listen_address = Some(addr);
    c.listen_port = port;
    (SpeakerHandle::start(c).await.unwrap(), addr, port)
}

fn to(addr: IpAddr, port: u16, asn: u32, source: IpAddr) -> PeerConfig {
    let mut p = PeerConfig::new(addr, asn);
    p.port = port;
    p.source_address = Some(source);
    p.connect_retry_time = 1;
    p
}

#[tokio::test]
async fn own_as_in_the_path_is_a_loop_unless_allowed_as_in_a_rack() {
    // Two nodes of rack AS 65001 behind one eBGP ToR (AS 65100): n2 gets n1's route back
    // through the ToR as "65100 65001", a loop by RFC 4271 unless allow_local_as permits it.
    let (n1, n1_ip, n1_port) = speaker_on("127.0.0.1", 1, 65001).await;
    let (tor, tor_ip, tor_port) = speaker_on("127.0.0.2", 2, 65100).await;
    let (n2, n2_ip, n2_port) = speaker_on("127.0.0.3", 3, 65001).await;
    n1.add_peer(to(tor_ip, tor_port, 65100, n1_ip))
        .await
        .unwrap();
    tor.add_peer(to(n1_ip, n1_port, 65001, tor_ip))
        .await
        .unwrap();
    tor.add_peer(to(n2_ip, n2_port, 65001, tor_ip))
        .await
        .unwrap();
    n2.add_peer(to(tor_ip, tor_port, 65100, n2_ip))
        .await
        .unwrap();
    n1.announce(LocalRoute::new("10.244.1.0/26".parse().unwrap()))
        .await
        .unwrap();
    let s = eventually("the ToR has n1's block and both sessions", || async {
        let s = tor.status().await.unwrap();
        (s.families[0].prefixes == 1 && s.peers.iter().all(|p| p.state == State::Established))
            .then_some(s)
    })
    .await;
    assert_eq!(s.peers.len(), 2);
    eventually("the ToR has sent n1's block to n2", || async {
        let s = tor.status().await.unwrap();
        s.peers
            .iter()
            .any(|p| p.address == n2_ip && p.prefixes[0].advertised == 1)
            .then_some(s)
    })
    .await;
    // A route of the ToR's own, sent after it on the same ordered stream: once n2 has it,
    // n2 has also judged n1's block, and dropped it as a loop.
    tor.announce(LocalRoute::new("10.0.100.0/24".parse().unwrap()))
        .await
        .unwrap();
    eventually("n2 has the ToR's own route", || async {
        let s = n2.status().await.unwrap();
        (s.families[0].prefixes >= 1).then_some(s)
    })
    .await;
    let routes = n2.routes(Family::Ipv4Unicast, None).await.unwrap();
    let prefixes: Vec<String> = routes.iter().map(|r| r.prefix.to_string()).collect();
    assert_eq!(
        prefixes,
        ["10.0.100.0/24"],
        "a path with our AS is a loop by default"
    );

    // Allowing our AS once (the session restarts with the new setting) lets it in.
    let mut allow = to(tor_ip, tor_port, 65100, n2_ip);
    allow.allow_local_as = 1;
    n2.update_peer(allow).await.unwrap();
    eventually("n2 learns n1's block through the ToR", || async {
        let s = n2.status().await.unwrap();
        (s.families[0].prefixes == 2).then_some(s)
    })
    .await;
    let routes = n2.routes(Family::Ipv4Unicast, None).await.unwrap();
    let block = routes
        .iter()
        .find(|r| r.prefix.to_string() == "10.244.1.0/26")
        .expect("n1's block");
    assert_eq!(
        block.paths[0].attributes.as_path.segments[0].asns,
        vec![65100, 65001]
    );
    for h in [n1, tor, n2] {
        h.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_session_local_as_is_what_the_peer_sees() {
    // A node of AS 64512 meets a ToR (AS 65100) that expects it as AS 65010 (BIRD's
    // `local as`, Calico's BGPPeer localASNumber); its other sessions keep 64512.
    let (node, node_ip, node_port) = speaker_on("127.0.0.1", 1, 64512).await;
    let (tor, tor_ip, tor_port) = speaker_on("127.0.0.2", 2, 65100).await;
    let (other, other_ip, other_port) = speaker_on("127.0.0.3", 3, 65200).await;
    let mut to_tor = to(tor_ip, tor_port, 65100, node_ip);
    to_tor.local_as = Some(65010);
    node.add_peer(to_tor).await.unwrap();
    tor.add_peer(to(node_ip, node_port, 65010, tor_ip))
        .await
        .unwrap();
    node.add_peer(to(other_ip, other_port, 65200, node_ip))
        .await
        .unwrap();
    other
        .add_peer(to(node_ip, node_port, 64512, other_ip))
        .await
        .unwrap();
    node.announce(LocalRoute::new("10.244.1.0/26".parse().unwrap()))
        .await
        .unwrap();
    for (h, who) in [(&tor, "the ToR"), (&other, "the other peer")] {
        eventually(&format!("{who} has the node's block"), || async {
            let s = h.status().await.unwrap();
            (s.families[0].prefixes == 1).then_some(s)
        })
        .await;
    }
    let path_at = async |h: &SpeakerHandle| {
        let routes = h.routes(Family::Ipv4Unicast, None).await.unwrap();
        routes[0].paths[0].attributes.as_path.segments[0]
            .asns
            .clone()
    };
    assert_eq!(path_at(&tor).await, vec![65010], "the session's local AS");
    assert_eq!(
        path_at(&other).await,
        vec![64512],
        "the speaker's AS elsewhere"
    );
    // The ToR's own route reaches the node and is passed on to the other peer from 64512.
    tor.announce(LocalRoute::new("10.0.100.0/24".parse().unwrap()))
        .await
        .unwrap();
    eventually(
        "the other peer has the ToR's route through the node",
        || async {
            let s = other.status().await.unwrap();
            (s.families[0].prefixes == 2).then_some(s)
        },
    )
    .await;
    let routes = other.routes(Family::Ipv4Unicast, None).await.unwrap();
    let via_node = routes
        .iter()
        .find(|r| r.prefix.to_string() == "10.0.100.0/24")
        .unwrap();
    assert_eq!(
        via_node.paths[0].attributes.as_path.segments[0].asns,
        vec![64512, 65100]
    );
    for h in [node, tor, other] {
        h.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_peer_with_export_off_is_sent_nothing() {
    // BIRD's `export none`: a feed that only gives routes. The node learns the feed's
    // route and passes it to the other peer, and sends the feed nothing of the other's.
    let (node, node_ip, node_port) = speaker_on("127.0.0.1", 1, 65001).await;
    let (feed, feed_ip, feed_port) = speaker_on("127.0.0.2", 2, 65002).await;
    let (other, other_ip, other_port) = speaker_on("127.0.0.3", 3, 65003).await;
    let mut to_feed = to(feed_ip, feed_port, 65002, node_ip);
    to_feed.export = false;
    node.add_peer(to_feed.clone()).await.unwrap();
    feed.add_peer(to(node_ip, node_port, 65001, feed_ip))
        .await
        .unwrap();
    node.add_peer(to(other_ip, other_port, 65003, node_ip))
        .await
        .unwrap();
    other
        .add_peer(to(node_ip, node_port, 65001, other_ip))
        .await
        .unwrap();
    feed.announce(LocalRoute::new("10.1.0.0/24".parse().unwrap()))
        .await
        .unwrap();
    other
        .announce(LocalRoute::new("10.3.0.0/24".parse().unwrap()))
        .await
        .unwrap();
    eventually(
        "the other peer has the feed's route through the node",
        || async {
            let s = other.status().await.unwrap();
            (s.families[0].prefixes == 2).then_some(s)
        },
    )
    .await;
    eventually("the node has both routes", || async {
        let s = node.status().await.unwrap();
        (s.families[0].prefixes == 2).then_some(s)
    })
    .await;
    // The node's status says it sent the feed nothing, and the feed holds only its own.
    let s = node.status().await.unwrap();
    let to_feed_status = s.peers.iter().find(|p| p.address == feed_ip).unwrap();
    assert_eq!(to_feed_status.state, State::Established);
    assert_eq!(to_feed_status.prefixes[0].advertised, 0);
    assert_eq!(feed.status().await.unwrap().families[0].prefixes, 1);
    // Exporting again (the session restarts with the change) sends the other's route.
    to_feed.export = true;
    node.update_peer(to_feed).await.unwrap();
    eventually("the feed gets the other peer's route", || async {
        let s = feed.status().await.unwrap();
        (s.families[0].prefixes == 2).then_some(s)
    })
    .await;
    for h in [node, feed, other] {
        h.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn reflector_clients_share_one_update_group() {
    // A reflector and three clients on 127.0.0.1-4.
    let mut rr_cfg = SpeakerConfig::new(Ipv4Addr::new(10, 0, 0, 1), 65000);
    let rr_port = free_port();
    let rr_ip: IpAddr = "127.0.0.1".parse().unwrap();
    rr_cfg.listen_address = Some(rr_ip);
    rr_cfg.listen_port = rr_port;
    rr_cfg.cluster_id = Some(Ipv4Addr::new(244, 0, 0, 1));
    let rr = SpeakerHandle::start(rr_cfg).await.unwrap();
    let mut clients = Vec::new();
    for i in 2..=4u8 {
        let (c, ip, port) = speaker_on(&format!("127.0.0.{i}"), i, 65000).await;
        c.add_peer(to(rr_ip, rr_port, 65000, ip)).await.unwrap();
        let mut p = to(ip, port, 65000, rr_ip);
        p.route_reflector_client = true;
        rr.add_peer(p).await.unwrap();
        clients.push((c, ip));
    }
    let s = eventually("three client sessions", || async {
        let s = rr.status().await.unwrap();
        s.peers
            .iter()
            .all(|p| p.state == State::Established)
            .then_some(s)
    })
    .await;
    assert_eq!(s.update_groups.len(), 1, "{:?}", s.update_groups);
    assert_eq!(s.update_groups[0].members.len(), 3);

    // One client's route reaches the other two, reflected.
    let (c0, c0_ip) = clients.remove(0);
    let c0_ip = &c0_ip;
    c0.announce(LocalRoute::new("10.9.0.0/24".parse().unwrap()))
        .await
        .unwrap();
    for (c, _) in &clients {
        eventually("reflected route", || async {
            let s = c.status().await.unwrap();
            (s.families[0].prefixes == 1).then_some(s)
        })
        .await;
        let r = c.routes(Family::Ipv4Unicast, None).await.unwrap();
        let a = &r[0].paths[0].attributes;
        assert_eq!(a.originator_id, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(a.cluster_list, vec![Ipv4Addr::new(244, 0, 0, 1)]);
        assert_eq!(a.next_hop, Some(*c0_ip));
    }
    // The group's one stream also reaches the originator, which ignores its own route.
    let s = rr.status().await.unwrap();
    assert_eq!(
        s.update_groups[0].advertised,
        vec![(Family::Ipv4Unicast, 1), (Family::Ipv6Unicast, 0)]
    );
    let own = c0.routes(Family::Ipv4Unicast, None).await.unwrap();
    assert!(
        own.iter().all(|r| r.paths.iter().all(|p| p.peer.is_none())),
        "c0 keeps only its local path: {own:?}"
    );

    // Two clients leave: the last one is alone, gets exact split horizon again, and its own
    // route is withdrawn from what it was sent.
    for (c, ip) in clients {
        rr.remove_peer(ip).await.unwrap();
        c.shutdown().await.unwrap();
    }
    let s = eventually("a group of one without c0's own route", || async {
        let s = rr.status().await.unwrap();
        (s.update_groups.len() == 1
            && s.update_groups[0].members == vec![*c0_ip]
            && s.update_groups[0].advertised[0] == (Family::Ipv4Unicast, 0))
            .then_some(s)
    })
    .await;
    assert_eq!(s.peers[0].prefixes[0].advertised, 0);
    rr.shutdown().await.unwrap();
    c0.shutdown().await.unwrap();
}

/// Rejects one prefix on import, on export, or neither.
struct Refuse {
    prefix: ipnet::IpNet,
    on_import: bool,
    on_export: bool,
}

impl serval_bgp::policy::RoutePolicy for Refuse {
    fn import(
        &self,
        _: &serval_bgp::policy::PolicyPeer,
        prefix: ipnet::IpNet,
        _: &serval_bgp::packet::attribute::PathAttributes,
    ) -> serval_bgp::policy::Verdict {
        if self.on_import && prefix == self.prefix {
            serval_bgp::policy::Verdict::Reject
        } else {
            serval_bgp::policy::Verdict::Accept
        }
    }

    fn export(
        &self,
        _: &serval_bgp::policy::PolicyPeer,
        prefix: ipnet::IpNet,
        _: &serval_bgp::packet::attribute::PathAttributes,
        _: &serval_bgp::packet::attribute::PathAttributes,
        _: serval_bgp::policy::RouteOrigin,
    ) -> serval_bgp::policy::Verdict {
        if self.on_export && prefix == self.prefix {
            serval_bgp::policy::Verdict::Reject
        } else {
            serval_bgp::policy::Verdict::Accept
        }
    }
}

async fn b_holds(p: &Pair) -> Vec<String> {
    let routes = p.b.routes(Family::Ipv4Unicast, None).await.unwrap();
    routes.iter().map(|r| r.prefix.to_string()).collect()
}

#[tokio::test]
async fn a_new_policy_refilters_routes_held_and_routes_sent_without_a_session_reset() {
    let p = pair(65002).await;
    established(&p.a).await;
    established(&p.b).await;
    for prefix in ["10.30.0.0/24", "10.30.1.0/24"] {
        p.a.announce(LocalRoute::new(prefix.parse().unwrap()))
            .await
            .unwrap();
    }
    eventually("B holds both", || async {
        (b_holds(&p).await.len() == 2).then_some(p.b.status().await.unwrap())
    })
    .await;
    let refuse = |on_import, on_export| {
        std::sync::Arc::new(Refuse {
            prefix: "10.30.1.0/24".parse().unwrap(),
            on_import,
            on_export,
        })
    };

    // B's import filter now refuses one prefix: the route held is dropped (A sends its table
    // again on B's ROUTE-REFRESH), and comes back when the filter is lifted.
    p.b.set_policy(refuse(true, false)).await.unwrap();
    eventually("B drops the refused prefix", || async {
        (b_holds(&p).await == ["10.30.0.0/24"]).then_some(p.b.status().await.unwrap())
    })
    .await;
    let s = p.b.status().await.unwrap();
    assert_eq!(s.peers[0].prefixes[0].received, 2, "received, one filtered");
    p.b.set_policy(std::sync::Arc::new(serval_bgp::policy::AcceptAll))
        .await
        .unwrap();
    eventually("B takes it again", || async {
        (b_holds(&p).await.len() == 2).then_some(p.b.status().await.unwrap())
    })
    .await;

    // A's export filter now refuses it: A withdraws it from B at once.
    p.a.set_policy(refuse(false, true)).await.unwrap();
    eventually("A withdrew it", || async {
        (b_holds(&p).await == ["10.30.0.0/24"]).then_some(p.b.status().await.unwrap())
    })
    .await;
    let s = p.b.status().await.unwrap();
    assert_eq!(
        s.peers[0].established_transitions, 1,
        "no session was reset for any of it"
    );
}

/// UPDATEs the speaker has sent to the peer at `addr`.
async fn updates_sent_to(h: &SpeakerHandle, addr: IpAddr) -> u64 {
    let s = h.status().await.unwrap();
    let p = s.peers.iter().find(|p| p.address == addr).unwrap();
    p.messages.updates_sent
}

#[tokio::test]
async fn a_new_best_path_that_exports_the_same_sends_nothing_and_a_withdrawal_still_goes_out() {
    // Hub s (AS 65000) learns 10.9.0.0/24 over iBGP from x and then from y (lower router
    // ID, so y's path becomes best), and passes it to b over eBGP with itself as next hop:
    // the same attributes whichever path is best. Adj-RIB-Out keeps no attributes, so this
    // holds only if the best path before the change is remembered and compared.
    let (s, s_ip, s_port) = speaker_on("127.0.0.1", 1, 65000).await;
    let (x, x_ip, x_port) = speaker_on("127.0.0.2", 9, 65000).await;
    let (y, y_ip, y_port) = speaker_on("127.0.0.3", 5, 65000).await;
    let (b, b_ip, b_port) = speaker_on("127.0.0.4", 4, 65100).await;
    for (h, ip, port, asn) in [
        (&x, x_ip, x_port, 65000),
        (&y, y_ip, y_port, 65000),
        (&b, b_ip, b_port, 65100),
    ] {
        s.add_peer(to(ip, port, asn, s_ip)).await.unwrap();
        h.add_peer(to(s_ip, s_port, 65000, ip)).await.unwrap();
    }
    eventually("three sessions", || async {
        let st = s.status().await.unwrap();
        st.peers
            .iter()
            .all(|p| p.state == State::Established)
            .then_some(st)
    })
    .await;
    let prefix: ipnet::IpNet = "10.9.0.0/24".parse().unwrap();
    let paths_at_s = async |n: usize| {
        eventually(&format!("{n} paths at s"), || async {
            let r = s.routes(Family::Ipv4Unicast, None).await.unwrap();
            let have = r
                .iter()
                .find(|v| v.prefix == prefix)
                .map_or(0, |v| v.paths.len());
            (have == n).then(|| s.status())?.await.ok()
        })
        .await
    };
    x.announce(LocalRoute::new(prefix)).await.unwrap();
    eventually("b has the route", || async {
        let st = b.status().await.unwrap();
        (st.families[0].prefixes == 1).then_some(st)
    })
    .await;
    let sent = updates_sent_to(&s, b_ip).await;

    y.announce(LocalRoute::new(prefix)).await.unwrap();
    paths_at_s(2).await;
    let r = s.routes(Family::Ipv4Unicast, None).await.unwrap();
    assert_eq!(r[0].paths[0].peer, Some(y_ip), "y's lower router ID wins");
    assert_eq!(
        updates_sent_to(&s, b_ip).await,
        sent,
        "b is sent nothing: its route is the same"
    );
    y.withdraw(prefix).await.unwrap();
    paths_at_s(1).await;
    assert_eq!(
        updates_sent_to(&s, b_ip).await,
        sent,
        "x's path again: same"
    );

    x.withdraw(prefix).await.unwrap();
    eventually("b's route withdrawn", || async {
        let st = b.status().await.unwrap();
        (st.families[0].prefixes == 0).then_some(st)
    })
    .await;
    assert_eq!(updates_sent_to(&s, b_ip).await, sent + 1);
    for h in [s, x, y, b] {
        h.shutdown().await.unwrap();
    }
}
