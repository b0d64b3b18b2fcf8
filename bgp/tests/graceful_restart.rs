//! Graceful restart as the receiving speaker (RFC 4724 §4.2), against a hand-driven peer on
//! loopback that can drop its TCP connection without a NOTIFICATION, as a crashing or
//! restarting BGP process does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use serval_bgp::af::Family;
use serval_bgp::config::{PeerConfig, SpeakerConfig};
use serval_bgp::fsm::State;
use serval_bgp::packet::attribute::{AsPath, PathAttributes};
use serval_bgp::packet::capability::{Capability, GracefulRestart, GracefulRestartFamily};
use serval_bgp::packet::message::{Message, Notification, Open, Update};
use serval_bgp::speaker::SpeakerHandle;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod common;

use common::{ENC, free_port, until};

/// A raw iBGP peer at `ip`: OPEN with the graceful-restart capability, then UPDATEs.
async fn connect(
    ip: IpAddr,
    speaker: SocketAddr,
    restart_time: u16,
    restarting: bool,
) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(ip, 0)).unwrap();
    let mut s = sock.connect(speaker).await.unwrap();
    let open = Open {
        my_as: 65000,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 9, 9, 4),
        capabilities: vec![
            Capability::FourOctetAs(65000),
            Capability::GracefulRestart(GracefulRestart {
                restarting,
                notification: false,
                restart_time,
                families: vec![GracefulRestartFamily {
                    afi: 1,
                    safi: 1,
                    forwarding_preserved: true,
                }],
            }),
        ],
    };
    s.write_all(&Message::Open(open).encode(ENC)).await.unwrap();
    s.write_all(&Message::Keepalive.encode(ENC)).await.unwrap();
    s
}

async fn announce(s: &mut TcpStream, prefixes: &[&str]) {
    let update = Update {
        attributes: PathAttributes {
            as_path: AsPath::default(),
            next_hop: Some("127.0.0.4".parse().unwrap()),
            local_pref: Some(100),
            ..PathAttributes::default()
        },
        nlri: prefixes
            .iter()
            .map(|p| p.parse::<Ipv4Net>().unwrap())
            .collect(),
        ..Update::default()
    };
    s.write_all(&Message::Update(update).encode(ENC))
        .await
        .unwrap();
}

async fn end_of_rib(s: &mut TcpStream) {
    s.write_all(&Message::Update(Update::end_of_rib_marker(Family::Ipv4Unicast)).encode(ENC))
        .await
        .unwrap();
}

/// Prefixes the speaker holds from the peer, with whether each is stale.
async fn held(a: &SpeakerHandle) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = a
        .routes(Family::Ipv4Unicast, None)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|r| {
            let prefix = r.prefix.to_string();
            r.paths
                .into_iter()
                .filter(|p| p.peer.is_some())
                .map(move |p| (prefix.clone(), p.stale))
        })
        .collect();
    out.sort();
    out
}

async fn speaker(peer_ip: IpAddr) -> (SpeakerHandle, SocketAddr) {
    let port = free_port();
    let mut cfg = SpeakerConfig::new(Ipv4Addr::new(10, 0, 0, 1), 65000);
    cfg.listen_address = Some("127.0.0.1".parse().unwrap());
    cfg.listen_port = port;
    let a = SpeakerHandle::start(cfg).await.unwrap();
    let mut p = PeerConfig::new(peer_ip, 65000);
    p.passive = true;
    p.graceful_restart_time = Some(120);
    a.add_peer(p).await.unwrap();
    (a, SocketAddr::new("127.0.0.1".parse().unwrap(), port))
}

async fn state(a: &SpeakerHandle) -> State {
    a.status().await.unwrap().peers[0].state
}

#[tokio::test]
async fn a_restarting_peer_keeps_its_routes_until_end_of_rib_or_expiry() {
    let peer_ip: IpAddr = "127.0.0.4".parse().unwrap();
    let (a, addr) = speaker(peer_ip).await;
    let mut s = connect(peer_ip, addr, 3, false).await;
    announce(&mut s, &["10.4.0.0/24", "10.4.1.0/24"]).await;
    end_of_rib(&mut s).await;
    until("both routes fresh", async || {
        (held(&a).await == vec![("10.4.0.0/24".into(), false), ("10.4.1.0/24".into(), false)])
            .then_some(())
    })
    .await;
    let st = a.status().await.unwrap();
    assert_eq!(st.peers[0].end_of_rib_received, vec![Family::Ipv4Unicast]);

    // The peer's process dies: TCP closes, no NOTIFICATION.
    drop(s);
    until("session down", async || {
        (state(&a).await != State::Established).then_some(())
    })
    .await;
    assert_eq!(
        held(&a).await,
        vec![("10.4.0.0/24".into(), true), ("10.4.1.0/24".into(), true)],
        "routes kept, marked stale"
    );
    let st = a.status().await.unwrap();
    assert_eq!(st.peers[0].stale_families, vec![Family::Ipv4Unicast]);

    // It comes back (R bit set), re-announces one of the two, then End-of-RIB.
    let mut s = connect(peer_ip, addr, 3, true).await;
    until("re-established", async || {
        (state(&a).await == State::Established).then_some(())
    })
    .await;
    announce(&mut s, &["10.4.0.0/24"]).await;
    until("refreshed route is fresh again", async || {
        held(&a)
            .await
            .contains(&("10.4.0.0/24".into(), false))
            .then_some(())
    })
    .await;
    assert!(
        held(&a).await.contains(&("10.4.1.0/24".into(), true)),
        "not re-announced yet: still stale before End-of-RIB"
    );
    end_of_rib(&mut s).await;
    until("End-of-RIB sweeps what was not refreshed", async || {
        (held(&a).await == vec![("10.4.0.0/24".into(), false)]).then_some(())
    })
    .await;
    let st = a.status().await.unwrap();
    assert!(st.peers[0].stale_families.is_empty());
    assert_eq!(st.peers[0].prefixes[0].accepted, 1);

    // Dies again and stays away: after its restart time (3 s) the stale route goes.
    drop(s);
    until("session down again", async || {
        (state(&a).await != State::Established).then_some(())
    })
    .await;
    assert_eq!(held(&a).await, vec![("10.4.0.0/24".into(), true)]);
    until("restart time expired", async || {
        held(&a).await.is_empty().then_some(())
    })
    .await;
    a.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_notification_or_a_peer_without_graceful_restart_drops_routes_at_once() {
    let peer_ip: IpAddr = "127.0.0.5".parse().unwrap();
    let (a, addr) = speaker(peer_ip).await;
    let mut s = connect(peer_ip, addr, 120, false).await;
    announce(&mut s, &["10.5.0.0/24"]).await;
    until("route in", async || {
        (!held(&a).await.is_empty()).then_some(())
    })
    .await;
    // An administrative shutdown (Cease) is not a restart.
    let cease = Notification {
        code: 6,
        subcode: 2,
        data: Vec::new(),
    };
    s.write_all(&Message::Notification(cease).encode(ENC))
        .await
        .unwrap();
    drop(s);
    until("routes dropped after Cease", async || {
        held(&a).await.is_empty().then_some(())
    })
    .await;

    // Back without graceful restart in its OPEN, then gone: nothing is kept.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(peer_ip, 0)).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let open = Open {
        my_as: 65000,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 9, 9, 5),
        capabilities: vec![Capability::FourOctetAs(65000)],
    };
    s.write_all(&Message::Open(open).encode(ENC)).await.unwrap();
    s.write_all(&Message::Keepalive.encode(ENC)).await.unwrap();
    announce(&mut s, &["10.5.1.0/24"]).await;
    until("route in", async || {
        (!held(&a).await.is_empty()).then_some(())
    })
    .await;
    drop(s);
    until("routes dropped with the connection", async || {
        held(&a).await.is_empty().then_some(())
    })
    .await;
    a.shutdown().await.unwrap();
}
