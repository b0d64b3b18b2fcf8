//! Helpers shared by the speaker's loopback tests: ports, polling, in-process speakers and
//! hand-driven raw peers.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serval_bgp::config::{PeerConfig, SpeakerConfig};
use serval_bgp::packet::attribute::{DecodeContext, EncodeContext};
use serval_bgp::packet::capability::Capability;
use serval_bgp::packet::message::{HEADER_LEN, Message, Open, decode_header};
use serval_bgp::speaker::SpeakerHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Plain encoding: 4-octet AS, no extended messages.
pub const ENC: EncodeContext = EncodeContext {
    four_octet_as: true,
    extended_messages: false,
};

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it returns a value, failing after `secs` seconds.
pub async fn until_within<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`until_within`] with the usual 20 seconds.
pub async fn until<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    until_within(what, 20, f).await
}

/// A speaker listening on `ip` (a loopback address) on a port of its own.
pub async fn speaker_on(
    ip: &str,
    router_id: u8,
    asn: u32,
    tweak: impl FnOnce(&mut SpeakerConfig),
) -> (SpeakerHandle, IpAddr, u16) {
    let addr: IpAddr = ip.parse().unwrap();
    let port = free_port();
    let mut c = SpeakerConfig::new(Ipv4Addr::new(10, 0, 0, router_id), asn);
    c.listen_address = Some(addr);
    c.listen_port = port;
    tweak(&mut c);
    (SpeakerHandle::start(c).await.unwrap(), addr, port)
}

/// A peer configuration reaching `addr:port` from `source`, retrying every second.
pub fn to(addr: IpAddr, port: u16, asn: u32, source: IpAddr) -> PeerConfig {
    let mut p = PeerConfig::new(addr, asn);
    p.port = port;
    p.source_address = Some(source);
    p.connect_retry_time = 1;
    p
}

/// A raw peer at `ip` connected to `speaker`, after sending OPEN (with `caps` and `hold`)
/// and KEEPALIVE.
pub async fn raw_peer(
    ip: IpAddr,
    speaker: SocketAddr,
    asn: u32,
    hold: u16,
    mut caps: Vec<Capability>,
) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(ip, 0)).unwrap();
    let mut s = sock.connect(speaker).await.unwrap();
    caps.push(Capability::FourOctetAs(asn));
    let open = Open {
        my_as: u16::try_from(asn).unwrap_or(23456),
        hold_time: hold,
        router_id: match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::new(10, 9, 9, 9),
        },
        capabilities: caps,
    };
    s.write_all(&Message::Open(open).encode(ENC)).await.unwrap();
    s.write_all(&Message::Keepalive.encode(ENC)).await.unwrap();
    s
}

/// Reads one message (`None` at end of stream or on an error).
pub async fn read_message(s: &mut TcpStream, ctx: DecodeContext) -> Option<Message> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).await.ok()?;
    let (_, len) = decode_header(&head, ctx.extended_messages).ok()?;
    let mut msg = head.to_vec();
    msg.resize(len, 0);
    s.read_exact(&mut msg[HEADER_LEN..]).await.ok()?;
    Message::decode(&msg, ctx).ok()
}
