//! Session protection between two in-process speakers on loopback: TCP-MD5 (right, wrong
//! and missing passwords) and max-prefix (tear-down with restart, and warning only).
//! TTL security needs a router between the speakers and is tested in `integration/`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serval_bgp::config::{LocalRoute, MaxPrefix, Password, PeerConfig, SpeakerConfig};
use serval_bgp::fsm::State;
use serval_bgp::speaker::SpeakerHandle;
use serval_bgp::status::PeerStatus;

mod common;

use common::free_port;

struct Pair {
    a: SpeakerHandle,
    b: SpeakerHandle,
}

/// A (127.0.0.1, AS 65001) and B (127.0.0.x, AS 65002), each with a peer config from `tweak`.
async fn pair(
    b_last: u8,
    tweak_a: impl Fn(&mut PeerConfig),
    tweak_b: impl Fn(&mut PeerConfig),
) -> Pair {
    let (a_ip, b_ip): (IpAddr, IpAddr) = (
        "127.0.0.1".parse().unwrap(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, b_last)),
    );
    let (pa, pb) = (free_port(), free_port());
    let mut ca = SpeakerConfig::new(Ipv4Addr::new(10, 0, 0, 1), 65001);
    ca.listen_address = Some(a_ip);
    ca.listen_port = pa;
    let mut cb = SpeakerConfig::new(Ipv4Addr::new(10, 0, 0, b_last), 65002);
    cb.listen_address = Some(b_ip);
    cb.listen_port = pb;
    let a = SpeakerHandle::start(ca).await.unwrap();
    let b = SpeakerHandle::start(cb).await.unwrap();
    let mut to_b = PeerConfig::new(b_ip, 65002);
    to_b.port = pb;
    to_b.source_address = Some(a_ip);
    to_b.connect_retry_time = 1;
    tweak_a(&mut to_b);
    let mut to_a = PeerConfig::new(a_ip, 65001);
    to_a.port = pa;
    to_a.source_address = Some(b_ip);
    to_a.connect_retry_time = 1;
    tweak_b(&mut to_a);
    a.add_peer(to_b).await.unwrap();
    b.add_peer(to_a).await.unwrap();
    Pair { a, b }
}

async fn peer(h: &SpeakerHandle) -> PeerStatus {
    h.status().await.unwrap().peers.remove(0)
}

async fn until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts the session never reaches Established within `secs` (a negative check needs a
/// bounded watch; the connect retry is 1 s, so several attempts happen in this time).
async fn never_established(p: &Pair, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        assert_ne!(peer(&p.a).await.state, State::Established);
        assert_ne!(peer(&p.b).await.state, State::Established);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pw(s: &str) -> Option<Password> {
    Some(Password(s.into()))
}

#[tokio::test]
async fn md5_sessions_need_the_same_password_on_both_sides() {
    let good = pair(
        11,
        |c| c.password = pw("s3cret"),
        |c| c.password = pw("s3cret"),
    )
    .await;
    until("MD5 session up", 20, async || {
        peer(&good.a).await.state == State::Established
    })
    .await;

    let wrong = pair(
        12,
        |c| c.password = pw("s3cret"),
        |c| c.password = pw("other"),
    )
    .await;
    let missing = pair(13, |c| c.password = pw("s3cret"), |_| {}).await;
    never_established(&wrong, 4).await;
    never_established(&missing, 1).await;
    // The password never shows up in debug output.
    let mut c = PeerConfig::new("127.0.0.9".parse().unwrap(), 1);
    c.password = pw("s3cret");
    assert!(!format!("{c:?}").contains("s3cret"));
    for p in [good, wrong, missing] {
        p.a.shutdown().await.unwrap();
        p.b.shutdown().await.unwrap();
    }
}

fn announce_five(prefix: u8) -> Vec<LocalRoute> {
    (0..5)
        .map(|i| LocalRoute {
            prefix: format!("10.{prefix}.{i}.0/24").parse().unwrap(),
            next_hop: None,
            med: None,
            local_pref: None,
            communities: vec![],
            large_communities: vec![],
        })
        .collect()
}

#[tokio::test]
async fn max_prefix_tears_down_with_cease_and_restarts_or_only_warns() {
    let p = pair(
        21,
        |c| {
            c.max_prefix = Some(MaxPrefix {
                limit: 3,
                warning_only: false,
                restart_seconds: 1,
            })
        },
        |_| {},
    )
    .await;
    until("up", 20, async || {
        peer(&p.a).await.state == State::Established
    })
    .await;
    for r in announce_five(21) {
        p.b.announce(r).await.unwrap();
    }
    until(
        "B is told Cease / Maximum Number of Prefixes Reached",
        20,
        async || {
            let b = peer(&p.b).await;
            b.messages.notifications_received >= 1
                && b.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("cease: maximum number of prefixes reached"))
        },
    )
    .await;
    let a = peer(&p.a).await;
    assert!(a.messages.notifications_sent >= 1);
    // A tries again after the delay (and trips again on the same table).
    until("restarted", 20, async || {
        peer(&p.a).await.established_transitions >= 2
    })
    .await;
    let routes =
        p.a.routes(serval_bgp::af::Family::Ipv4Unicast, None)
            .await
            .unwrap();
    assert!(
        routes
            .iter()
            .filter(|r| r.paths.iter().any(|x| x.peer.is_some()))
            .count()
            <= 3,
        "never more than the limit kept"
    );

    let w = pair(
        22,
        |c| {
            c.max_prefix = Some(MaxPrefix {
                limit: 3,
                warning_only: true,
                restart_seconds: 1,
            })
        },
        |_| {},
    )
    .await;
    until("up", 20, async || {
        peer(&w.a).await.state == State::Established
    })
    .await;
    for r in announce_five(22) {
        w.b.announce(r).await.unwrap();
    }
    until("all five accepted, flagged", 20, async || {
        let a = peer(&w.a).await;
        a.prefixes[0].accepted == 5 && a.max_prefix_exceeded
    })
    .await;
    let a = peer(&w.a).await;
    assert_eq!(a.state, State::Established);
    assert_eq!(
        a.established_transitions, 1,
        "warning only: the session stays up"
    );
    for x in [p, w] {
        x.a.shutdown().await.unwrap();
        x.b.shutdown().await.unwrap();
    }
}
