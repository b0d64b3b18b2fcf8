//! The speaker's thin I/O tasks: connect, listen, read, write and timers. They own
//! sockets, never state; everything they learn goes to the speaker task as an [`Input`].
//!
//! ```text
//!  listener ──Accepted──┐
//!  connect  ──Connected─┤
//!  reader   ──Received/Closed──► speaker task ──Outgoing──► writer (one per connection)
//!  timers   ──TimerFired┘
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::decision::PeerId;
use crate::fsm::Timer;
use crate::packet::attribute::DecodeContext;
use crate::packet::capability::Capability;
use crate::packet::error::NotificationError;
use crate::packet::message::{HEADER_LEN, Message, decode_header};

/// What the I/O tasks tell the speaker task.
// UPDATE is the message that matters; boxing it would add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Input {
    /// An outgoing connection attempt finished.
    Connected {
        peer: PeerId,
        attempt: u64,
        result: io::Result<TcpStream>,
    },
    /// Someone connected to our listener.
    Accepted {
        stream: TcpStream,
        remote: SocketAddr,
    },
    /// A message (or a decode error) arrived on a connection.
    Received {
        peer: PeerId,
        serial: u64,
        msg: Result<Message, NotificationError>,
    },
    /// A connection closed or failed.
    Closed { peer: PeerId, serial: u64 },
    /// A peer's graceful-restart time ran out (its stale routes go).
    StaleExpired { peer: PeerId, serial: u64 },
    /// Start a peer again (after a max-prefix tear-down's restart delay).
    Restart { peer: PeerId },
    /// A BFD session changed state.
    Bfd(crate::bfd::BfdEvent),
    /// A timer ran out.
    TimerFired {
        peer: PeerId,
        timer: Timer,
        serial: u64,
    },
}

/// What the speaker asks a writer task to do.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Write these bytes (one or more encoded messages), shared by an update group's members.
    Data(bytes::Bytes),
    /// Flush, then shut the connection down.
    Close,
}

/// The speaker's handle on one live connection.
#[derive(Debug)]
pub(crate) struct ConnIo {
    pub serial: u64,
    pub writer: mpsc::UnboundedSender<Outgoing>,
    pub reader: JoinHandle<()>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl ConnIo {
    /// Queues bytes; a closed writer just means the connection is going away.
    pub fn send(&self, bytes: bytes::Bytes) {
        let _ = self.writer.send(Outgoing::Data(bytes));
    }

    /// Flushes and closes; stops reading at once.
    pub fn close(self) {
        let _ = self.writer.send(Outgoing::Close);
        self.reader.abort();
    }
}

/// Where and how to connect to a peer.
#[derive(Debug, Clone)]
pub(crate) struct ConnectParams {
    pub remote: SocketAddr,
    pub source: Option<IpAddr>,
    pub ttl: u8,
    pub timeout: Duration,
    /// TCP-MD5 key for the session.
    pub md5: Option<Vec<u8>>,
    /// GTSM minimum TTL for packets from the peer.
    pub min_ttl: Option<u8>,
}

fn set_ttl(sock: SockRef<'_>, v6: bool, ttl: u8) -> io::Result<()> {
    if v6 {
        sock.set_unicast_hops_v6(u32::from(ttl))
    } else {
        sock.set_ttl_v4(u32::from(ttl))
    }
}

/// Sets the TTL of an accepted connection to what the peer's session needs, and the GTSM
/// minimum TTL when TTL security is on.
pub(crate) fn set_stream_ttl(stream: &TcpStream, ttl: u8, min_ttl: Option<u8>) -> io::Result<()> {
    let v6 = stream.local_addr()?.is_ipv6();
    set_ttl(SockRef::from(stream), v6, ttl)?;
    // On the dual-stack listener an IPv4 peer arrives v4-mapped: its packets follow IP_TTL,
    // not the IPv6 hop limit.
    if v6 {
        let _ = SockRef::from(stream).set_ttl_v4(u32::from(ttl));
    }
    if let Some(min) = min_ttl {
        use std::os::fd::AsRawFd;
        crate::sockopt::set_min_ttl(stream.as_raw_fd(), min)?;
    }
    Ok(())
}

async fn connect(p: &ConnectParams) -> io::Result<TcpStream> {
    let socket = if p.remote.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    set_ttl(SockRef::from(&socket), p.remote.is_ipv6(), p.ttl)?;
    {
        use std::os::fd::AsRawFd;
        if let Some(key) = &p.md5 {
            crate::sockopt::set_md5_key(socket.as_raw_fd(), p.remote.ip(), Some(key))?;
        }
        if let Some(min) = p.min_ttl {
            crate::sockopt::set_min_ttl(socket.as_raw_fd(), min)?;
        }
    }
    socket.set_nodelay(true)?;
    if let Some(src) = p.source {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    tokio::time::timeout(p.timeout, socket.connect(p.remote))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Starts one outgoing connection attempt.
pub(crate) fn spawn_connect(
    peer: PeerId,
    attempt: u64,
    params: ConnectParams,
    tx: mpsc::Sender<Input>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let result = connect(&params).await;
        let _ = tx
            .send(Input::Connected {
                peer,
                attempt,
                result,
            })
            .await;
    })
}

/// Binds the BGP listener (dual-stack when the address is `::`).
pub(crate) fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        SockRef::from(&socket).set_only_v6(false)?;
    }
    socket.set_reuseaddr(true)?;
    // The kernel answers a SYN from the listening socket, before any per-peer TTL is set on
    // the accepted one: send those SYN-ACKs with 255 so GTSM peers (RFC 5082) accept them.
    // Each accepted session then gets its own peer's TTL.
    set_ttl(SockRef::from(&socket), addr.is_ipv6(), 255)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        let _ = SockRef::from(&socket).set_ttl_v4(255);
    }
    socket.bind(addr)?;
    socket.listen(128)
}

/// Accepts connections until the speaker goes away.
pub(crate) fn spawn_listener(listener: TcpListener, tx: mpsc::Sender<Input>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    if tx.send(Input::Accepted { stream, remote }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// Starts the reader and writer tasks of a connection.
pub(crate) fn start_connection(
    peer: PeerId,
    serial: u64,
    stream: TcpStream,
    ebgp: bool,
    tx: mpsc::Sender<Input>,
) -> io::Result<ConnIo> {
    let local = canonical(stream.local_addr()?);
    let remote = canonical(stream.peer_addr()?);
    let (read, write) = stream.into_split();
    let (wtx, wrx) = mpsc::unbounded_channel();
    tokio::spawn(write_loop(write, wrx));
    let reader = tokio::spawn(read_loop(peer, serial, read, ebgp, tx));
    Ok(ConnIo {
        serial,
        writer: wtx,
        reader,
        local,
        remote,
    })
}

/// Maps IPv4-mapped IPv6 socket addresses (from a dual-stack listener) back to IPv4.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

async fn write_loop(write: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut w = BufWriter::with_capacity(64 * 1024, write);
    while let Some(msg) = rx.recv().await {
        let mut next = Some(msg);
        // Write everything already queued before flushing, so bursts go out in few syscalls.
        while let Some(msg) = next.take() {
            match msg {
                Outgoing::Data(bytes) => {
                    if w.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Outgoing::Close => {
                    let _ = w.flush().await;
                    let _ = w.shutdown().await;
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn read_loop(
    peer: PeerId,
    serial: u64,
    mut read: OwnedReadHalf,
    ebgp: bool,
    tx: mpsc::Sender<Input>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut ctx = DecodeContext {
        four_octet_as: false,
        ebgp,
    };
    loop {
        while buf.len() >= HEADER_LEN {
            let len = match decode_header(&buf[..HEADER_LEN]) {
                Ok((_, len)) => len,
                Err(e) => {
                    let _ = tx
                        .send(Input::Received {
                            peer,
                            serial,
                            msg: Err(e),
                        })
                        .await;
                    return;
                }
            };
            if buf.len() < len {
                break;
            }
            let frame = buf.split_to(len);
            let msg = Message::decode(&frame, ctx);
            let fatal = msg.is_err();
            if let Ok(Message::Open(open)) = &msg {
                // We always offer 4-octet AS, so the peer's offer decides the AS width.
                ctx.four_octet_as = open
                    .capabilities
                    .iter()
                    .any(|c| matches!(c, Capability::FourOctetAs(_)));
            }
            if tx
                .send(Input::Received { peer, serial, msg })
                .await
                .is_err()
                || fatal
            {
                return;
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(Input::Closed { peer, serial }).await;
                return;
            }
            Ok(_) => {}
        }
    }
}

/// Arms a timer that reports back unless aborted first.
pub(crate) fn spawn_timer(
    peer: PeerId,
    timer: Timer,
    serial: u64,
    after: Duration,
    tx: mpsc::Sender<Input>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = tx
            .send(Input::TimerFired {
                peer,
                timer,
                serial,
            })
            .await;
    })
}
