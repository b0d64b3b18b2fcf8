//! BFD's UDP sockets for one address family (RFC 5881): received on port 3784 with the TTL
//! (hop limit) of each packet, which must be 255 on a single-hop session (§5, GTSM), and
//! sent with TTL 255 from one source port in 49152–65535 for all sessions.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The destination port of single-hop BFD Control packets.
pub const BFD_PORT: u16 = 3784;

/// One received datagram.
pub struct Received {
    /// The bytes.
    pub data: Vec<u8>,
    /// Who sent it.
    pub from: IpAddr,
    /// Its TTL / hop limit on arrival (None if the kernel did not say).
    pub ttl: Option<u8>,
}

/// The receiving and sending sockets of one family.
pub struct BfdSockets {
    rx: UdpSocket,
    tx: UdpSocket,
}

fn udp(domain: Domain) -> io::Result<Socket> {
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if domain == Domain::IPV6 {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

impl BfdSockets {
    /// Binds both sockets on `local` (an address of the family, possibly unspecified) with
    /// receive port `port` (3784 except in tests).
    pub fn bind(local: IpAddr, port: u16) -> io::Result<BfdSockets> {
        let domain = if local.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let rx = udp(domain)?;
        rx.set_reuse_address(true)?;
        rx.bind(&SocketAddr::new(local, port).into())?;
        if local.is_ipv4() {
            setsockopt(&rx, sockopt::Ipv4RecvTtl, &true)?;
        } else {
            setsockopt(&rx, sockopt::Ipv6RecvHopLimit, &true)?;
        }
        let tx = udp(domain)?;
        if local.is_ipv4() {
            tx.set_ttl_v4(255)?;
        } else {
            tx.set_unicast_hops_v6(255)?;
        }
        // §4: one source port in the dynamic range for every session.
        let seed = std::process::id() as u16 ^ port;
        let mut bound = Err(io::Error::other("no free source port in 49152-65535"));
        for i in 0..200u16 {
            let p = 49152 + (seed.wrapping_add(i.wrapping_mul(157)) % 16384);
            if tx.bind(&SocketAddr::new(local, p).into()).is_ok() {
                bound = Ok(());
                break;
            }
        }
        bound?;
        Ok(BfdSockets {
            rx: UdpSocket::from_std(rx.into())?,
            tx: UdpSocket::from_std(tx.into())?,
        })
    }

    /// Sends one packet to `peer`'s BFD port.
    pub async fn send(&self, peer: IpAddr, port: u16, data: &[u8]) -> io::Result<()> {
        self.tx
            .send_to(data, SocketAddr::new(peer, port))
            .await
            .map(|_| ())
    }

    /// Waits for the next datagram.
    pub async fn recv(&self) -> io::Result<Received> {
        self.rx
            .async_io(Interest::READABLE, || {
                let mut buf = [0u8; 128];
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!(libc::c_int);
                let msg = recvmsg::<SockaddrStorage>(
                    self.rx.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)?;
                let mut ttl = None;
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    match c {
                        ControlMessageOwned::Ipv4Ttl(t) => ttl = u8::try_from(t).ok(),
                        ControlMessageOwned::Ipv6HopLimit(t) => ttl = u8::try_from(t).ok(),
                        _ => {}
                    }
                }
                let from = msg.address.and_then(|a: SockaddrStorage| {
                    if let Some(v4) = a.as_sockaddr_in() {
                        Some(IpAddr::V4(v4.ip()))
                    } else {
                        a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                    }
                });
                let len = msg.bytes;
                let from = from.ok_or_else(|| io::Error::other("datagram without a source"))?;
                Ok(Received {
                    data: buf[..len].to_vec(),
                    from,
                    ttl,
                })
            })
            .await
    }
}
