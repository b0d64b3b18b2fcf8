//! What a peer can and cannot do to the speaker, on loopback with hand-driven peers: a valid
//! UPDATE too large to re-export, a peer that stops reading, ROUTE-REFRESH floods, and a
//! peer that offers hold time 0.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{ENC, raw_peer, read_message, speaker_on, to, until, until_within};
use ipnet::Ipv4Net;
use serval_bgp::af::Family;
use serval_bgp::fsm::State;
use serval_bgp::packet::attribute::{AsPath, DecodeContext, PathAttributes};
use serval_bgp::packet::capability::Capability;
use serval_bgp::packet::message::{MAX_MESSAGE_LEN, Message, RouteRefresh, Update};
use serval_bgp::speaker::SpeakerHandle;
use serval_bgp::status::PeerStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;

const DEC: DecodeContext = DecodeContext {
    four_octet_as: true,
    ebgp: true,
    extended_messages: false,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn peer_status(h: &SpeakerHandle, addr: IpAddr) -> PeerStatus {
    let s = h.status().await.unwrap();
    s.peers.into_iter().find(|p| p.address == addr).unwrap()
}

async fn prefixes_of(h: &SpeakerHandle) -> Vec<String> {
    h.routes(Family::Ipv4Unicast, None)
        .await
        .unwrap()
        .iter()
        .map(|r| r.prefix.to_string())
        .collect()
}

/// A raw eBGP feeder at `from` (AS 65009) whose incoming messages are read and dropped.
async fn feeder(a: &SpeakerHandle, from: IpAddr, speaker: SocketAddr) -> OwnedWriteHalf {
    let mut cfg = to(from, 179, 65009, speaker.ip());
    cfg.passive = true;
    a.add_peer(cfg).await.unwrap();
    let s = raw_peer(from, speaker, 65009, 90, vec![]).await;
    let (mut r, w) = s.into_split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        while r.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    until("the feeder's session", async || {
        (peer_status(a, from).await.state == State::Established).then_some(())
    })
    .await;
    w
}

fn update(prefix: &str, attrs: PathAttributes) -> Vec<u8> {
    let u = Update {
        attributes: attrs,
        nlri: vec![prefix.parse::<Ipv4Net>().unwrap()],
        ..Update::default()
    };
    Message::Update(u).encode(ENC)
}

fn attrs(communities: u32) -> PathAttributes {
    PathAttributes {
        as_path: AsPath::from_sequence([65009]),
        next_hop: Some(ip("127.0.0.3")),
        communities: (0..communities).collect(),
        ..PathAttributes::default()
    }
}

#[tokio::test]
async fn a_route_too_large_to_re_export_is_withheld_and_the_speaker_keeps_going() {
    let (a, a_ip, a_port) = speaker_on("127.0.0.1", 1, 65001, |_| {}).await;
    let (b, b_ip, b_port) = speaker_on("127.0.0.2", 2, 65002, |_| {}).await;
    let (c, c_ip, c_port) = speaker_on("127.0.0.4", 4, 65003, |_| {}).await;
    // B does not offer extended messages; C does (the default).
    let mut b_to_a = to(a_ip, a_port, 65001, b_ip);
    b_to_a.extended_messages = false;
    b.add_peer(b_to_a).await.unwrap();
    a.add_peer(to(b_ip, b_port, 65002, a_ip)).await.unwrap();
    c.add_peer(to(a_ip, a_port, 65001, c_ip)).await.unwrap();
    a.add_peer(to(c_ip, c_port, 65003, a_ip)).await.unwrap();
    let mut feed = feeder(&a, ip("127.0.0.3"), SocketAddr::new(a_ip, a_port)).await;
    until("A's sessions with B and C", async || {
        let s = a.status().await.unwrap();
        s.peers
            .iter()
            .all(|p| p.state == State::Established)
            .then_some(())
    })
    .await;
    let neg = |p: PeerStatus| p.negotiated.unwrap().extended_messages;
    assert!(!neg(peer_status(&a, b_ip).await));
    assert!(neg(peer_status(&a, c_ip).await));

    // 10.3/24 first goes out small, then comes back too large: B must see it withdrawn.
    feed.write_all(&update("10.3.0.0/24", attrs(0)))
        .await
        .unwrap();
    until("B has 10.3.0.0/24", async || {
        prefixes_of(&b)
            .await
            .contains(&"10.3.0.0/24".to_string())
            .then_some(())
    })
    .await;
    // A valid UPDATE that fits 4,096 bytes as sent (1,010 communities), but not once A
    // prepends its AS: the case that stalled the speaker.
    let big = update("10.1.0.0/24", attrs(1010));
    assert!(big.len() <= MAX_MESSAGE_LEN, "{} bytes", big.len());
    feed.write_all(&big).await.unwrap();
    feed.write_all(&update("10.3.0.0/24", attrs(1010)))
        .await
        .unwrap();
    feed.write_all(&update("10.2.0.0/24", attrs(0)))
        .await
        .unwrap();
    until("B gets the later route and loses 10.3/24", async || {
        let p = prefixes_of(&b).await;
        (p == ["10.2.0.0/24"]).then_some(())
    })
    .await;
    let to_b = peer_status(&a, b_ip).await;
    assert!(to_b.routes_too_large >= 2, "{to_b:?}");
    assert_eq!(to_b.prefixes[0].advertised, 1);
    assert_eq!(a.status().await.unwrap().families[0].prefixes, 3);

    // C negotiated extended messages and gets all three, attributes intact.
    until("C has all three routes", async || {
        (prefixes_of(&c).await.len() == 3).then_some(())
    })
    .await;
    let routes = c.routes(Family::Ipv4Unicast, None).await.unwrap();
    let big = routes
        .iter()
        .find(|r| r.prefix.to_string() == "10.1.0.0/24")
        .unwrap();
    let attrs = &big.paths[0].attributes;
    assert_eq!(attrs.communities.len(), 1010);
    assert_eq!(attrs.as_path.segments[0].asns, vec![65001, 65009]);
    assert_eq!(peer_status(&a, c_ip).await.routes_too_large, 0);
    for h in [a, b, c] {
        h.shutdown().await.unwrap();
    }
}

/// `count` /32s from 10.64.0.0 on, each with communities of its own (`round:0` and one
/// numbering the route), so every one is its own UPDATE when re-exported.
fn churn(round: u32, count: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..count {
        let a = PathAttributes {
            communities: vec![round << 16, 0xffff_0000 | i],
            ..attrs(0)
        };
        let addr = std::net::Ipv4Addr::from(0x0a40_0000 + i);
        let u = Update {
            attributes: a,
            nlri: vec![Ipv4Net::new(addr, 32).unwrap()],
            ..Update::default()
        };
        out.extend(Message::Update(u).encode(ENC));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_paced_within_budget_then_closed_by_send_hold() {
    const BUDGET: usize = 1 << 20;
    let (a, a_ip, a_port) =
        speaker_on("127.0.0.1", 1, 65001, |c| c.write_queue_bytes = BUDGET).await;
    let (b, b_ip, b_port) = speaker_on("127.0.0.2", 2, 65002, |_| {}).await;
    a.add_peer(to(b_ip, b_port, 65002, a_ip)).await.unwrap();
    b.add_peer(to(a_ip, a_port, 65001, b_ip)).await.unwrap();
    // The stalled peer: sends KEEPALIVEs (so the hold timer never fires) and reads nothing.
    let stalled = ip("127.0.0.5");
    let mut cfg = to(stalled, 179, 65005, a_ip);
    cfg.passive = true;
    cfg.send_hold_time = Some(6);
    a.add_peer(cfg).await.unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(SocketAddr::new(stalled, 0)).unwrap();
    let mut s = sock.connect(SocketAddr::new(a_ip, a_port)).await.unwrap();
    let open = serval_bgp::packet::message::Open {
        my_as: 65005,
        hold_time: 9,
        router_id: "10.5.5.5".parse().unwrap(),
        capabilities: vec![Capability::FourOctetAs(65005)],
    };
    s.write_all(&Message::Open(open).encode(ENC)).await.unwrap();
    s.write_all(&Message::Keepalive.encode(ENC)).await.unwrap();
    let keepalives = tokio::spawn(async move {
        loop {
            if s.write_all(&Message::Keepalive.encode(ENC)).await.is_err() {
                return s;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    until("the stalled peer's session", async || {
        (peer_status(&a, stalled).await.state == State::Established).then_some(())
    })
    .await;
    let mut feed = feeder(&a, ip("127.0.0.3"), SocketAddr::new(a_ip, a_port)).await;

    // Several rounds of churn: ~3 MB of UPDATEs towards each receiver per round.
    const ROUTES: u32 = 50_000;
    let started = tokio::time::Instant::now();
    let mut peak_queue = 0;
    let mut paced_seen = false;
    for round in 0..4 {
        feed.write_all(&churn(round, ROUTES)).await.unwrap();
        for _ in 0..10 {
            let p = peer_status(&a, stalled).await;
            peak_queue = peak_queue.max(p.write_queue_bytes);
            paced_seen |= p.paced_prefixes > 0;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The reader that keeps up gets every route of the last round.
    until_within("B has the last round", 60, async || {
        let routes = b.routes(Family::Ipv4Unicast, None).await.unwrap();
        (routes.len() == ROUTES as usize
            && routes
                .iter()
                .all(|r| r.paths[0].attributes.communities.first() == Some(&(3 << 16))))
        .then_some(())
    })
    .await;
    let p = peer_status(&a, stalled).await;
    peak_queue = peak_queue.max(p.write_queue_bytes);
    assert!(paced_seen, "the stalled peer was paced: {p:?}");
    // The budget, plus at most one flush's batch queued before the check.
    assert!(
        peak_queue <= 3 * BUDGET,
        "queue for the stalled peer peaked at {peak_queue} bytes (budget {BUDGET})"
    );
    assert!(
        p.paced_prefixes <= ROUTES as usize,
        "backlog holds each prefix once"
    );

    // RFC 9687: the session ends with NOTIFICATION 8 once nothing could be written for 6 s.
    let down = until_within("send hold timer expiry", 30, async || {
        let p = peer_status(&a, stalled).await;
        (p.state != State::Established).then_some(p)
    })
    .await;
    let took = started.elapsed();
    assert_eq!(
        down.last_error.as_deref(),
        Some("sent NOTIFICATION: send hold timer expired"),
        "{down:?}"
    );
    assert!(down.messages.notifications_sent >= 1);
    assert_eq!(down.paced_prefixes, 0, "the backlog goes with the session");
    eprintln!("stalled peer: queue peak {peak_queue} bytes, session closed after {took:?}");
    // The peer's socket is closed under it: its KEEPALIVEs start failing.
    let _ = tokio::time::timeout(Duration::from_secs(20), keepalives).await;
    assert_eq!(
        peer_status(&a, b_ip).await.state,
        State::Established,
        "the good session is untouched"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn route_refresh_requests_coalesce_into_one_resend_in_flight() {
    let (a, a_ip, a_port) = speaker_on("127.0.0.1", 1, 65001, |c| {
        c.write_queue_bytes = 1 << 16;
    })
    .await;
    const TABLE: u32 = 20_000;
    for i in 0..TABLE {
        let p = Ipv4Net::new(std::net::Ipv4Addr::from(0x0a50_0000 + (i << 8)), 24).unwrap();
        let mut r = serval_bgp::config::LocalRoute::new(p.into());
        r.med = Some(i); // one UPDATE per route: a resend is ~1 MB
        a.announce(r).await.unwrap();
    }
    let peer = ip("127.0.0.6");
    let mut cfg = to(peer, 179, 65006, a_ip);
    cfg.passive = true;
    a.add_peer(cfg).await.unwrap();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(SocketAddr::new(peer, 0)).unwrap();
    let mut s = sock.connect(SocketAddr::new(a_ip, a_port)).await.unwrap();
    let open = serval_bgp::packet::message::Open {
        my_as: 65006,
        hold_time: 90,
        router_id: "10.6.6.6".parse().unwrap(),
        capabilities: vec![Capability::FourOctetAs(65006), Capability::RouteRefresh],
    };
    s.write_all(&Message::Open(open).encode(ENC)).await.unwrap();
    s.write_all(&Message::Keepalive.encode(ENC)).await.unwrap();
    until("the refreshing peer's session", async || {
        (peer_status(&a, peer).await.state == State::Established).then_some(())
    })
    .await;
    // Without reading, ask for the table 100 times.
    let rr = Message::RouteRefresh(RouteRefresh {
        afi: 1,
        subtype: 0,
        safi: 1,
    })
    .encode(ENC);
    for _ in 0..100 {
        s.write_all(&rr).await.unwrap();
    }
    until("the requests are handled", async || {
        let p = peer_status(&a, peer).await;
        (p.messages.messages_received >= 102).then_some(())
    })
    .await;
    let p = peer_status(&a, peer).await;
    assert!(p.paced_prefixes <= TABLE as usize, "{p:?}");
    // Now read everything: the initial table, one resend in flight, one coalesced.
    let mut announced = 0usize;
    let mut eor = false;
    let ctx = DecodeContext { ebgp: true, ..DEC };
    loop {
        match tokio::time::timeout(Duration::from_secs(3), read_message(&mut s, ctx)).await {
            Ok(Some(Message::Update(u))) => {
                eor |= u.end_of_rib().is_some();
                announced += u.nlri.len();
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    assert!(eor, "End-of-RIB after the first table");
    // Uncoalesced, 100 refreshes would be 100 tables. Coalesced: the first table, what the
    // kernel took while requests were arriving (each request re-covers it), and one
    // resend.
    assert!(
        announced >= TABLE as usize && announced <= 5 * TABLE as usize,
        "{announced} announcements for a {TABLE}-route table and 100 refreshes"
    );
    a.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_peer_offering_hold_time_zero_is_refused_by_default() {
    let (a, a_ip, a_port) = speaker_on("127.0.0.1", 1, 65001, |_| {}).await;
    let peer = ip("127.0.0.7");
    let mut cfg = to(peer, 179, 65007, a_ip);
    cfg.passive = true;
    a.add_peer(cfg.clone()).await.unwrap();
    let mut s = raw_peer(peer, SocketAddr::new(a_ip, a_port), 65007, 0, vec![]).await;
    let mut notification = None;
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_secs(5), read_message(&mut s, DEC)).await
    {
        if let Message::Notification(n) = m {
            notification = Some((n.code, n.subcode));
            break;
        }
    }
    assert_eq!(
        notification,
        Some((2, 6)),
        "OPEN error: unacceptable hold time"
    );
    // Configured to allow it, the same offer is accepted.
    cfg.min_hold_time = 0;
    a.update_peer(cfg).await.unwrap();
    let _s = until("a session without liveness, as configured", async || {
        let s = raw_peer(peer, SocketAddr::new(a_ip, a_port), 65007, 0, vec![]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        (peer_status(&a, peer).await.state == State::Established).then_some(s)
    })
    .await;
    a.shutdown().await.unwrap();
}

#[tokio::test]
async fn routes_come_in_ordered_pages_and_status_counts_without_scanning() {
    let (a, _, _) = speaker_on("127.0.0.1", 1, 65001, |_| {}).await;
    const N: u32 = 25_000;
    for i in 0..N {
        let p = Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap();
        a.announce(serval_bgp::config::LocalRoute::new(p.into()))
            .await
            .unwrap();
    }
    // Withdrawing a prefix never announced leaves the local count alone.
    a.withdraw("192.0.2.0/24".parse().unwrap()).await.unwrap();
    let s = a.status().await.unwrap();
    assert_eq!(s.families[0].local_prefixes, N as usize);
    let mut q = serval_bgp::status::RoutesQuery::first(Family::Ipv4Unicast, None);
    q.limit = 1000;
    let first = a.routes_page(q.clone()).await.unwrap();
    assert_eq!(first.len(), 1000);
    assert_eq!(first[0].prefix.to_string(), "10.0.0.0/24");
    assert!(first.windows(2).all(|w| w[0].prefix < w[1].prefix));
    q.after = Some(first[999].prefix);
    let second = a.routes_page(q.clone()).await.unwrap();
    assert_eq!(
        second[0].prefix.to_string(),
        "10.3.232.0/24",
        "the 1,001st prefix"
    );
    // Pages never exceed the cap, whatever is asked.
    q.limit = usize::MAX;
    q.after = None;
    assert_eq!(
        a.routes_page(q).await.unwrap().len(),
        serval_bgp::status::RoutesQuery::MAX_LIMIT
    );
    // The whole table, fetched page by page, in order and complete.
    let all = a.routes(Family::Ipv4Unicast, None).await.unwrap();
    assert_eq!(all.len(), N as usize);
    assert!(all.windows(2).all(|w| w[0].prefix < w[1].prefix));
    let within = a
        .routes(Family::Ipv4Unicast, Some("10.1.0.0/16".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(within.len(), 256);
    a.shutdown().await.unwrap();
}
