//! The BFD task: owns every session and the sockets, drives the sans-IO sessions with
//! received packets and the clock, and reports state changes. The speaker talks to it only
//! through [`BfdHandle`].

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::packet::ControlPacket;
use super::session::{Output, Session};
use super::socket::{BfdSockets, Received};
use super::{BfdConfig, BfdEvent, BfdPeerStatus};

enum Command {
    Add(IpAddr, BfdConfig),
    Remove(IpAddr),
    Status(oneshot::Sender<Vec<BfdPeerStatus>>),
}

/// The speaker's side of the BFD task.
#[derive(Clone)]
pub struct BfdHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl BfdHandle {
    /// Starts the task with sockets on `local` (v4 and v6: the address of that family, or the
    /// unspecified one) and `port`; state changes go to `events`.
    pub fn start(
        local: Option<IpAddr>,
        port: u16,
        events: mpsc::UnboundedSender<BfdEvent>,
    ) -> std::io::Result<BfdHandle> {
        let v4 = match local {
            Some(IpAddr::V4(a)) => Some(IpAddr::V4(a)),
            Some(IpAddr::V6(a)) if !a.is_unspecified() => None,
            _ => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        };
        let v6 = match local {
            Some(IpAddr::V6(a)) => Some(IpAddr::V6(a)),
            Some(IpAddr::V4(_)) => None,
            None => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        let s4 = v4.map(|a| BfdSockets::bind(a, port)).transpose()?;
        // IPv6 may be off on the host; IPv4 sessions must not depend on it.
        let s6 = match v6.map(|a| BfdSockets::bind(a, port)).transpose() {
            Ok(s) => s,
            Err(e) if s4.is_some() => {
                tracing::info!(error = %e, "BFD over IPv6 unavailable");
                None
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, s4, s6, port, events));
        Ok(BfdHandle { tx })
    }

    /// Starts a session with `peer` (replacing one with other settings).
    pub fn add(&self, peer: IpAddr, cfg: BfdConfig) {
        let _ = self.tx.send(Command::Add(peer, cfg));
    }

    /// Ends the session with `peer`, telling it AdminDown first.
    pub fn remove(&self, peer: IpAddr) {
        let _ = self.tx.send(Command::Remove(peer));
    }

    /// Every session's state.
    pub async fn status(&self) -> Vec<BfdPeerStatus> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Status(reply)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

struct Entry {
    session: Session,
    cfg: BfdConfig,
}

struct Task {
    sessions: HashMap<IpAddr, Entry>,
    s4: Option<BfdSockets>,
    s6: Option<BfdSockets>,
    port: u16,
    events: mpsc::UnboundedSender<BfdEvent>,
    random: std::collections::hash_map::RandomState,
}

impl Task {
    fn random(&self, salt: u64) -> u64 {
        let mut h = self.random.build_hasher();
        h.write_u64(salt);
        h.write_u128(Instant::now().elapsed().as_nanos());
        h.finish()
    }

    fn new_discriminator(&self) -> u32 {
        let mut salt = self.sessions.len() as u64;
        loop {
            let d = self.random(salt) as u32;
            if d != 0
                && self
                    .sessions
                    .values()
                    .all(|e| e.session.local_discriminator() != d)
            {
                return d;
            }
            salt += 1;
        }
    }

    async fn carry_out(&mut self, peer: IpAddr, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send(p) => {
                    let sockets = if peer.is_ipv4() { &self.s4 } else { &self.s6 };
                    if let Some(s) = sockets
                        && let Err(e) = s.send(peer, self.port, &p.encode()).await
                    {
                        tracing::debug!(%peer, error = %e, "BFD send failed");
                    }
                }
                Output::StateChanged {
                    from,
                    to,
                    diag,
                    remote,
                } => {
                    tracing::info!(%peer, ?from, ?to, diag, ?remote, "BFD session state");
                    let _ = self.events.send(BfdEvent {
                        peer,
                        state: to,
                        diag,
                        remote_admin_down: remote == super::BfdState::AdminDown,
                    });
                }
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Add(peer, cfg) => {
                if self.sessions.get(&peer).is_some_and(|e| e.cfg == cfg) {
                    return;
                }
                let discr = self.new_discriminator();
                let seed = self.random(u64::from(discr));
                let session = Session::new(cfg.clone(), discr, seed, Instant::now());
                self.sessions.insert(peer, Entry { session, cfg });
            }
            Command::Remove(peer) => {
                if let Some(mut e) = self.sessions.remove(&peer) {
                    let out = e.session.admin_down();
                    // Only the farewell packet: the speaker removed the peer itself.
                    let sends = out
                        .into_iter()
                        .filter(|o| matches!(o, Output::Send(_)))
                        .collect();
                    self.carry_out(peer, sends).await;
                }
            }
            Command::Status(reply) => {
                let mut v: Vec<BfdPeerStatus> = self
                    .sessions
                    .iter()
                    .map(|(peer, e)| BfdPeerStatus {
                        peer: *peer,
                        state: e.session.state(),
                        local_discriminator: e.session.local_discriminator(),
                        remote_discriminator: e.session.remote_discriminator(),
                        detection_time_ms: e.session.detection_time().as_millis() as u64,
                        diagnostic: e.session.diagnostic(),
                    })
                    .collect();
                v.sort_by_key(|s| s.peer);
                let _ = reply.send(v);
            }
        }
    }

    async fn received(&mut self, r: Received) {
        let from = match r.from {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if r.ttl.is_some_and(|t| t != 255) {
            tracing::debug!(%from, ttl = ?r.ttl, "BFD packet dropped: TTL is not 255 (RFC 5881 §5)");
            return;
        }
        let p = match ControlPacket::decode(&r.data) {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(%from, why, "BFD packet dropped");
                return;
            }
        };
        // §6.8.6: by Your Discriminator when set, else (single hop) by the source address.
        let peer = if p.your_discriminator != 0 {
            self.sessions
                .iter()
                .find(|(_, e)| e.session.local_discriminator() == p.your_discriminator)
                .map(|(a, _)| *a)
        } else {
            self.sessions.contains_key(&from).then_some(from)
        };
        let Some(peer) = peer.filter(|a| *a == from) else {
            tracing::debug!(%from, "BFD packet for no session of ours");
            return;
        };
        let out = self
            .sessions
            .get_mut(&peer)
            .expect("found above")
            .session
            .receive(&p, Instant::now());
        self.carry_out(peer, out).await;
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        let mut all = Vec::new();
        for (peer, e) in &mut self.sessions {
            let out = e.session.poll(now);
            if !out.is_empty() {
                all.push((*peer, out));
            }
        }
        for (peer, out) in all {
            self.carry_out(peer, out).await;
        }
    }

    fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.sessions
            .values()
            .map(|e| e.session.next_deadline())
            .min()
            .map(tokio::time::Instant::from_std)
    }
}

async fn recv_on(s: &Option<BfdSockets>) -> std::io::Result<Received> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn run(
    mut commands: mpsc::UnboundedReceiver<Command>,
    s4: Option<BfdSockets>,
    s6: Option<BfdSockets>,
    port: u16,
    events: mpsc::UnboundedSender<BfdEvent>,
) {
    let mut t = Task {
        sessions: HashMap::new(),
        s4,
        s6,
        port,
        events,
        random: std::collections::hash_map::RandomState::new(),
    };
    loop {
        let deadline = t.next_deadline();
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(cmd) => t.command(cmd).await,
                None => {
                    // The speaker is gone: say goodbye to every peer.
                    let peers: Vec<IpAddr> = t.sessions.keys().copied().collect();
                    for p in peers {
                        t.command(Command::Remove(p)).await;
                    }
                    return;
                }
            },
            r = recv_on(&t.s4) => match r {
                Ok(r) => t.received(r).await,
                Err(e) => tracing::debug!(error = %e, "BFD receive (IPv4)"),
            },
            r = recv_on(&t.s6) => match r {
                Ok(r) => t.received(r).await,
                Err(e) => tracing::debug!(error = %e, "BFD receive (IPv6)"),
            },
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        t.tick().await;
    }
}
