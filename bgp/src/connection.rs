//! The speaker's thin I/O tasks: connect, listen, read, write and timers. They own
//! sockets, never state; everything they learn goes to the speaker task as an [`Input`].
//!
//! ```text
//!  listener ──Accepted──┐
//!  connect  ──Connected─┤
//!  reader   ──Received/Closed──► speaker task ──Outgoing──► writer (one per connection)
//!  timers   ──TimerFired┘                ▲                       │
//!                                        └─Drained/SendHoldExpired┘
//! ```
//!
//! Every connection's write queue is metered in bytes ([`WriteMeter`]): the speaker adds
//! what it queues, the writer subtracts what reached the socket and says when the queue
//! has drained below the low-water mark, so the speaker can pace a slow reader instead of
//! buffering for it without limit. A writer that cannot write a byte for the send hold
//! time (RFC 9687) gives up and reports it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// A connection's write queue fell to its low-water mark (asked for with
    /// [`WriteMeter::notify_when_drained`]).
    Drained { peer: PeerId, serial: u64 },
    /// A connection's writer could not write anything for the send hold time (RFC 9687).
    SendHoldExpired { peer: PeerId, serial: u64 },
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
    Data(Bytes),
    /// Flush, then shut the connection down.
    Close,
}

/// How long a closing connection may spend flushing (a NOTIFICATION, usually) before its
/// writer is stopped, so a peer that stopped reading cannot keep a dead connection alive.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Send hold time before the session is up: twice RFC 4271's large hold time (RFC 9687's
/// 8-minute suggestion).
const SEND_HOLD_BEFORE_OPEN: Duration = Duration::from_secs(480);

/// The byte count of one connection's write queue, shared by the speaker and the writer.
#[derive(Debug)]
pub(crate) struct WriteMeter {
    queued: AtomicUsize,
    low_water: usize,
    want_drain: AtomicBool,
    /// RFC 9687 send hold time in milliseconds; 0 switches it off.
    send_hold_ms: AtomicU64,
}

impl WriteMeter {
    fn new(low_water: usize) -> Self {
        WriteMeter {
            queued: AtomicUsize::new(0),
            low_water,
            want_drain: AtomicBool::new(false),
            send_hold_ms: AtomicU64::new(SEND_HOLD_BEFORE_OPEN.as_millis() as u64),
        }
    }

    /// Bytes queued and not yet written to the socket.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Asks for one [`Input::Drained`] once the queue is at or below the low-water mark.
    /// Returns true when it already is (no message will come for this request).
    pub fn notify_when_drained(&self) -> bool {
        self.want_drain.store(true, Ordering::Release);
        if self.queued() <= self.low_water {
            // Whoever clears the flag owns the notification; if the writer got there first
            // it sends one, and handling a spare one is harmless.
            return self.want_drain.swap(false, Ordering::AcqRel);
        }
        false
    }

    /// Sets the send hold time once the session's hold time is known.
    pub fn set_send_hold(&self, hold: Option<Duration>) {
        let ms = hold.map_or(0, |d| d.as_millis().max(1) as u64);
        self.send_hold_ms.store(ms, Ordering::Release);
    }

    fn send_hold(&self) -> Option<Duration> {
        match self.send_hold_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Counts written bytes; true when the speaker asked to hear about the drain.
    fn written(&self, n: usize) -> bool {
        let left = self.queued.fetch_sub(n, Ordering::AcqRel) - n;
        left <= self.low_water && self.want_drain.swap(false, Ordering::AcqRel)
    }
}

/// The speaker's handle on one live connection. Dropping it stops the reader at once and
/// the writer after at most [`CLOSE_GRACE`].
#[derive(Debug)]
pub(crate) struct ConnIo {
    pub serial: u64,
    writer: mpsc::UnboundedSender<Outgoing>,
    writer_task: JoinHandle<()>,
    reader: JoinHandle<()>,
    pub meter: Arc<WriteMeter>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl ConnIo {
    /// Queues bytes; a closed writer just means the connection is going away.
    pub fn send(&self, bytes: Bytes) {
        let n = bytes.len();
        self.meter.queued.fetch_add(n, Ordering::AcqRel);
        if self.writer.send(Outgoing::Data(bytes)).is_err() {
            self.meter.queued.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Flushes what is queued (within [`CLOSE_GRACE`]) and closes; stops reading at once.
    pub fn close(self) {
        let _ = self.writer.send(Outgoing::Close);
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        self.reader.abort();
        let writer = self.writer_task.abort_handle();
        if writer.is_finished() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(CLOSE_GRACE).await;
                writer.abort();
            });
        } else {
            writer.abort();
        }
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

/// What a new connection's tasks need to know about the session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnParams {
    pub ebgp: bool,
    /// We advertise extended messages (the peer's OPEN says whether it does too).
    pub extended_messages: bool,
    /// The write queue's low-water mark, bytes.
    pub low_water: usize,
}

/// Starts the reader and writer tasks of a connection.
pub(crate) fn start_connection(
    peer: PeerId,
    serial: u64,
    stream: TcpStream,
    params: ConnParams,
    tx: mpsc::Sender<Input>,
) -> io::Result<ConnIo> {
    let local = canonical(stream.local_addr()?);
    let remote = canonical(stream.peer_addr()?);
    let (read, write) = stream.into_split();
    // The channel is unbounded in messages but metered in bytes: the speaker stops queuing
    // for a connection whose meter is over budget (see the module notes).
    let (wtx, wrx) = mpsc::unbounded_channel();
    let meter = Arc::new(WriteMeter::new(params.low_water));
    let writer_task = tokio::spawn(write_loop(
        peer,
        serial,
        write,
        wrx,
        meter.clone(),
        tx.clone(),
    ));
    let reader = tokio::spawn(read_loop(peer, serial, read, params, tx));
    Ok(ConnIo {
        serial,
        writer: wtx,
        writer_task,
        reader,
        meter,
        local,
        remote,
    })
}

/// Maps IPv4-mapped IPv6 socket addresses (from a dual-stack listener) back to IPv4.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Why a write stopped.
enum WriteStop {
    /// The socket failed or closed.
    Io,
    /// No byte could be written for the send hold time.
    SendHold,
}

/// Writes all of `buf`; each write call must make progress within `hold`.
async fn write_fully(
    w: &mut OwnedWriteHalf,
    mut buf: &[u8],
    hold: Option<Duration>,
) -> Result<(), WriteStop> {
    while !buf.is_empty() {
        let n = match hold {
            Some(h) => match tokio::time::timeout(h, w.write(buf)).await {
                Ok(r) => r,
                Err(_) => return Err(WriteStop::SendHold),
            },
            None => w.write(buf).await,
        };
        match n {
            Ok(0) | Err(_) => return Err(WriteStop::Io),
            Ok(n) => buf = &buf[n..],
        }
    }
    Ok(())
}

/// Writes and empties the coalescing buffer.
async fn write_staged(
    w: &mut OwnedWriteHalf,
    staged: &mut BytesMut,
    hold: Option<Duration>,
) -> Result<(), WriteStop> {
    if staged.is_empty() {
        return Ok(());
    }
    let r = write_fully(w, staged, hold).await;
    staged.clear();
    r
}

/// A writer that had to stop: a send-hold expiry is reported (unless the connection was
/// closing anyway); a failed socket is noticed by the reader.
async fn stopped(
    stop: WriteStop,
    closing: bool,
    tx: &mpsc::Sender<Input>,
    peer: PeerId,
    serial: u64,
) {
    if matches!(stop, WriteStop::SendHold) && !closing {
        let _ = tx.send(Input::SendHoldExpired { peer, serial }).await;
    }
}

/// Small messages queued together go out in one write; big batches go out as they are.
const COALESCE: usize = 64 * 1024;

async fn write_loop(
    peer: PeerId,
    serial: u64,
    mut write: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    meter: Arc<WriteMeter>,
    tx: mpsc::Sender<Input>,
) {
    let mut staged = BytesMut::new();
    let mut closing = false;
    while !closing {
        let Some(first) = rx.recv().await else {
            break;
        };
        // Take what is already queued, coalescing small pieces.
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut taken = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Outgoing::Data(b) => {
                    taken += b.len();
                    pieces.push(b);
                }
                Outgoing::Close => {
                    closing = true;
                    break;
                }
            }
            if taken >= COALESCE {
                break;
            }
            next = rx.try_recv().ok();
        }
        let hold = if closing {
            Some(
                meter
                    .send_hold()
                    .map_or(CLOSE_GRACE, |h| h.min(CLOSE_GRACE)),
            )
        } else {
            meter.send_hold()
        };
        for piece in pieces {
            let small = piece.len() < COALESCE / 4;
            if small {
                staged.extend_from_slice(&piece);
            }
            let mut r = Ok(());
            if !small || staged.len() >= COALESCE {
                r = write_staged(&mut write, &mut staged, hold).await;
                if r.is_ok() && !small {
                    r = write_fully(&mut write, &piece, hold).await;
                }
            }
            if let Err(stop) = r {
                return stopped(stop, closing, &tx, peer, serial).await;
            }
            // Staged bytes count as written once handed to the socket below; counting them
            // a little early only brings the drain notice forward by one write.
            if meter.written(piece.len()) {
                let _ = tx.send(Input::Drained { peer, serial }).await;
            }
        }
        if let Err(stop) = write_staged(&mut write, &mut staged, hold).await {
            return stopped(stop, closing, &tx, peer, serial).await;
        }
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, write.shutdown()).await;
}

async fn read_loop(
    peer: PeerId,
    serial: u64,
    mut read: OwnedReadHalf,
    params: ConnParams,
    tx: mpsc::Sender<Input>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut ctx = DecodeContext {
        four_octet_as: false,
        ebgp: params.ebgp,
        extended_messages: false,
    };
    loop {
        while buf.len() >= HEADER_LEN {
            let len = match decode_header(&buf[..HEADER_LEN], ctx.extended_messages) {
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
                // RFC 8654: larger messages only once both sides advertised it.
                ctx.extended_messages = params.extended_messages
                    && open
                        .capabilities
                        .iter()
                        .any(|c| matches!(c, Capability::ExtendedMessage));
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
