//! The speaker task: the one owner of every FSM, connection handle and RIB.
//!
//! ```text
//!   SpeakerHandle ──Command──►┐
//!                             ├─► Speaker::run (select) ─► handle FSM actions ─► flush()
//!   I/O tasks ─────Input─────►┘                                   │
//!                                          writers ◄── UPDATEs ───┤
//!                                          subscribers ◄── best-path batches
//! ```
//!
//! Inputs are drained in batches; after each batch `flush` runs the decision for every
//! prefix that changed, tells subscribers, and sends each peer its packed UPDATEs.

mod exporter;
mod graceful;
mod groups;
mod handle;
mod ingest;
mod outbound;
mod peer;
mod reconfigure;
mod session;
mod views;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::task::OwnedTask;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::mpsc;

use handle::Command;
pub use handle::{SpeakerError, SpeakerHandle};
use peer::PeerEntry;

use crate::af::{Family, Prefix};
use crate::config::{
    LocalRoute, PeerConfig, SpeakerConfig, parse_community, parse_large_community,
};
use crate::connection::{self, ConnectParams, Input};
use crate::decision::{DecisionConfig, LOCAL_PEER, Path, PeerId, SourceInfo};
use crate::fsm::{Action, Direction, Event};
use crate::packet::attribute::PathAttributes;
use crate::packet::error::cease_subcode;

use crate::policy::RoutePolicy;
use crate::rib::{AdjRibOut, DecideCtx, Interner, Table};
use crate::status::{
    BestPathChange, FamilyStatus, PathView, PeerStatus, RouteView, RoutesQuery, Status,
};

/// Per-family tables plus the prefixes whose best path may have changed since the
/// last flush, each with its best path at that flush (what the update groups were sent is
/// a function of it; see `exporter`).
#[derive(Default)]
pub(crate) struct Tables {
    v4: Table<Ipv4Net>,
    v6: Table<Ipv6Net>,
    dirty4: Dirty<Ipv4Net>,
    dirty6: Dirty<Ipv6Net>,
}

/// Changed prefixes → their best path before the first change since the last flush.
pub(crate) type Dirty<P> = crate::rib::FastMap<P, Option<Path>>;

/// Records a change, keeping the oldest "before".
pub(crate) fn mark_dirty<P: Prefix>(dirty: &mut Dirty<P>, prefix: P, old_best: Option<Path>) {
    dirty.entry(prefix).or_insert(old_best);
}

/// Lets RIB code be written once for both families (STYLE 7).
pub(crate) trait FamilyRib: Prefix {
    fn table(t: &Tables) -> &Table<Self>;
    fn table_and_dirty(t: &mut Tables) -> (&mut Table<Self>, &mut Dirty<Self>);
    fn adj_out(g: &mut groups::UpdateGroup) -> &mut AdjRibOut<Self>;
    fn adj_out_ref(g: &groups::UpdateGroup) -> &AdjRibOut<Self>;
    fn batch_touched(b: &mut outbound::Batch) -> &mut Vec<Self>;
}

impl FamilyRib for Ipv4Net {
    fn table(t: &Tables) -> &Table<Self> {
        &t.v4
    }
    fn table_and_dirty(t: &mut Tables) -> (&mut Table<Self>, &mut Dirty<Self>) {
        (&mut t.v4, &mut t.dirty4)
    }
    fn adj_out(g: &mut groups::UpdateGroup) -> &mut AdjRibOut<Self> {
        &mut g.out4
    }
    fn adj_out_ref(g: &groups::UpdateGroup) -> &AdjRibOut<Self> {
        &g.out4
    }
    fn batch_touched(b: &mut outbound::Batch) -> &mut Vec<Self> {
        b.touched4()
    }
}

impl FamilyRib for Ipv6Net {
    fn table(t: &Tables) -> &Table<Self> {
        &t.v6
    }
    fn table_and_dirty(t: &mut Tables) -> (&mut Table<Self>, &mut Dirty<Self>) {
        (&mut t.v6, &mut t.dirty6)
    }
    fn adj_out(g: &mut groups::UpdateGroup) -> &mut AdjRibOut<Self> {
        &mut g.out6
    }
    fn adj_out_ref(g: &groups::UpdateGroup) -> &AdjRibOut<Self> {
        &g.out6
    }
    fn batch_touched(b: &mut outbound::Batch) -> &mut Vec<Self> {
        b.touched6()
    }
}

fn family_index(f: Family) -> usize {
    match f {
        Family::Ipv4Unicast => 0,
        Family::Ipv6Unicast => 1,
    }
}

/// Most prefixes one batch of inputs may touch before it is flushed.
const BATCH_PREFIXES: usize = 16_384;
/// Longest one batch of inputs is drained before it is flushed.
const BATCH_TIME: Duration = Duration::from_millis(5);

/// The owner task's state.
pub(crate) struct Speaker {
    cfg: SpeakerConfig,
    policy: Arc<dyn RoutePolicy>,
    peers: HashMap<PeerId, PeerEntry>,
    by_addr: HashMap<IpAddr, PeerId>,
    next_peer_id: PeerId,
    next_serial: u64,
    sources: HashMap<PeerId, SourceInfo>,
    interner: Interner,
    tables: Tables,
    local_routes: HashMap<IpNet, LocalRoute>,
    /// Locally originated prefixes per family (status stays O(peers)).
    local_counts: [usize; 2],
    subscribers: Vec<mpsc::UnboundedSender<Vec<BestPathChange>>>,
    input_tx: mpsc::Sender<Input>,
    input_rx: Option<mpsc::Receiver<Input>>,
    listener: Option<OwnedTask>,
    /// The listening socket, for per-peer TCP-MD5 keys (lives as long as `listener`).
    listener_fd: Option<std::os::fd::RawFd>,
    updates_since_sweep: u64,
    /// The BFD task, started with the first peer that wants BFD.
    bfd: Option<crate::bfd::BfdHandle>,
    /// Update groups: sessions that share one Adj-RIB-Out and UPDATE stream.
    groups: HashMap<groups::GroupId, groups::UpdateGroup>,
    next_group_id: groups::GroupId,
}

impl Speaker {
    pub(crate) fn new(
        cfg: SpeakerConfig,
        policy: Arc<dyn RoutePolicy>,
    ) -> Result<Speaker, SpeakerError> {
        let (input_tx, input_rx) = mpsc::channel(4096);
        let mut listener_fd = None;
        let listener = match cfg.listen_address {
            Some(ip) => {
                let addr = SocketAddr::new(ip, cfg.listen_port);
                let l = connection::bind_listener(addr)
                    .map_err(|source| SpeakerError::Listen { addr, source })?;
                listener_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&l));
                Some(OwnedTask::new(connection::spawn_listener(
                    l,
                    input_tx.clone(),
                )))
            }
            None => None,
        };
        let mut sources = HashMap::new();
        sources.insert(
            LOCAL_PEER,
            SourceInfo {
                ebgp: false,
                router_id: cfg.router_id,
                address: IpAddr::V4(cfg.router_id),
            },
        );
        Ok(Speaker {
            cfg,
            policy,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            next_peer_id: 1,
            next_serial: 1,
            sources,
            interner: Interner::default(),
            tables: Tables::default(),
            local_routes: HashMap::new(),
            local_counts: [0, 0],
            subscribers: Vec::new(),
            input_tx,
            input_rx: Some(input_rx),
            listener,
            listener_fd,
            updates_since_sweep: 0,
            bfd: None,
            groups: HashMap::new(),
            next_group_id: 1,
        })
    }

    fn decision_config(&self) -> DecisionConfig {
        DecisionConfig {
            default_local_pref: self.cfg.default_local_pref,
        }
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut inputs = self.input_rx.take().expect("run is called once");
        let span = tracing::info_span!("speaker", router_id = %self.cfg.router_id, asn = self.cfg.as_number);
        let _enter = span.enter();
        tracing::info!("speaker started");
        loop {
            tokio::select! {
                // Commands first: a status or routes query never waits behind more than one
                // bounded batch of inputs.
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown();
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                    None => {
                        self.shutdown();
                        return;
                    }
                },
                Some(input) = inputs.recv() => {
                    self.input(input);
                    // Drain what is already queued so one flush covers many UPDATEs, but
                    // keep each batch small enough (prefixes touched, time) that commands
                    // and timers are served within milliseconds during a full-table load.
                    let started = Instant::now();
                    for _ in 0..512 {
                        if self.tables.dirty4.len() + self.tables.dirty6.len() >= BATCH_PREFIXES
                            || started.elapsed() >= BATCH_TIME
                        {
                            break;
                        }
                        match inputs.try_recv() {
                            Ok(input) => self.input(input),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.flush();
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.stop_peer(id, cease_subcode::ADMINISTRATIVE_SHUTDOWN);
        }
        self.listener = None;
        tracing::info!("speaker stopped");
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::AddPeer(cfg, reply) => {
                let _ = reply.send(self.add_peer(cfg));
            }
            Command::UpdatePeer(cfg, reply) => {
                let _ = reply.send(self.update_peer(cfg));
            }
            Command::RemovePeer(addr, reply) => {
                let r = match self.by_addr.get(&addr).copied() {
                    Some(id) => {
                        self.stop_peer(id, cease_subcode::PEER_DECONFIGURED);
                        Ok(())
                    }
                    None => Err(SpeakerError::UnknownPeer(addr)),
                };
                let _ = reply.send(r);
            }
            Command::Announce(route, reply) => {
                let _ = reply.send(self.announce(route));
            }
            Command::Withdraw(prefix, reply) => {
                if self.local_routes.remove(&prefix.trunc()).is_some() {
                    self.local_counts[family_index(Family::of(&prefix))] -= 1;
                }
                self.withdraw_local(prefix);
                let _ = reply.send(Ok(()));
            }
            Command::Subscribe(tx) => {
                let snapshot = self.snapshot_changes();
                if tx.send(snapshot).is_ok() {
                    self.subscribers.push(tx);
                }
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Routes(q, reply) => {
                let _ = reply.send(match q.family {
                    Family::Ipv4Unicast => self.routes::<Ipv4Net>(&q),
                    Family::Ipv6Unicast => self.routes::<Ipv6Net>(&q),
                });
            }
            Command::SetPolicy(policy, reply) => {
                self.set_policy(policy);
                let _ = reply.send(());
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn add_peer(&mut self, cfg: PeerConfig) -> Result<(), SpeakerError> {
        cfg.validate().map_err(SpeakerError::Config)?;
        if self.by_addr.contains_key(&cfg.address) {
            return Err(SpeakerError::DuplicatePeer(cfg.address));
        }
        let id = self.next_peer_id;
        self.next_peer_id += 1;
        if let (Some(fd), Some(pw)) = (self.listener_fd, &cfg.password)
            && let Err(e) = crate::sockopt::set_md5_key(fd, cfg.address, Some(pw.0.as_bytes()))
        {
            return Err(SpeakerError::Config(crate::config::ConfigError::peer(
                cfg.address,
                "password",
                &format!("cannot install the TCP-MD5 key: {e}"),
            )));
        }
        if let Some(b) = &cfg.bfd {
            self.bfd_handle()?.add(cfg.address, b.clone());
        }
        self.by_addr.insert(cfg.address, id);
        let entry = PeerEntry::new(id, cfg, &self.cfg);
        entry
            .span()
            .in_scope(|| tracing::info!(passive = entry.cfg().passive, "peer added"));
        self.peers.insert(id, entry);
        self.fsm_event(id, Event::Start);
        Ok(())
    }

    fn update_peer(&mut self, cfg: PeerConfig) -> Result<(), SpeakerError> {
        cfg.validate().map_err(SpeakerError::Config)?;
        let id = *self
            .by_addr
            .get(&cfg.address)
            .ok_or(SpeakerError::UnknownPeer(cfg.address))?;
        let restart = self.peers[&id].cfg().session_differs(&cfg);
        if restart {
            self.stop_peer(id, cease_subcode::OTHER_CONFIGURATION_CHANGE);
            return self.add_peer(cfg);
        }
        let old_bfd = self.peers[&id].cfg().bfd.clone();
        if old_bfd != cfg.bfd {
            match &cfg.bfd {
                Some(b) => self.bfd_handle()?.add(cfg.address, b.clone()),
                None => {
                    if let Some(h) = &self.bfd {
                        h.remove(cfg.address);
                    }
                }
            }
        }
        self.peers.get_mut(&id).expect("known id").reconfigure(cfg);
        self.full_export(id, false);
        Ok(())
    }

    /// Sends Cease, drops the session's routes and forgets the peer.
    fn stop_peer(&mut self, id: PeerId, subcode: u8) {
        self.fsm_event(id, Event::Stop(subcode));
        // Stale routes kept for a restarting peer go with the peer.
        self.drop_routes_of(id);
        if let Some(mut entry) = self.peers.remove(&id) {
            entry.shut_down();
            self.by_addr.remove(&entry.cfg().address);
            if let (Some(h), Some(_)) = (&self.bfd, &entry.cfg().bfd) {
                h.remove(entry.cfg().address);
            }
            if let (Some(fd), Some(_)) = (self.listener_fd, &entry.cfg().password) {
                let _ = crate::sockopt::set_md5_key(fd, entry.cfg().address, None);
            }
            entry.span().in_scope(|| tracing::info!("peer removed"));
        }
        self.sources.remove(&id);
    }

    fn local_attrs(&self, route: &LocalRoute) -> Result<PathAttributes, SpeakerError> {
        let communities = route
            .communities
            .iter()
            .map(|c| parse_community(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SpeakerError::Config)?;
        let large_communities = route
            .large_communities
            .iter()
            .map(|c| parse_large_community(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SpeakerError::Config)?;
        if let Some(nh) = route.next_hop
            && nh.is_ipv4() != route.prefix.addr().is_ipv4()
        {
            return Err(SpeakerError::Config(crate::config::ConfigError::speaker(
                "nextHop",
                &format!("route {}: {nh} is of the other family", route.prefix),
            )));
        }
        Ok(PathAttributes {
            next_hop: route.next_hop,
            med: route.med,
            local_pref: route.local_pref,
            communities,
            large_communities,
            ..Default::default()
        })
    }

    fn announce(&mut self, route: LocalRoute) -> Result<(), SpeakerError> {
        let attrs = self.local_attrs(&route)?;
        let attrs = self.interner.intern(attrs);
        let prefix = route.prefix.trunc();
        if self.local_routes.insert(prefix, route).is_none() {
            self.local_counts[family_index(Family::of(&prefix))] += 1;
        }
        let path = Path {
            peer: LOCAL_PEER,
            attrs,
            stale: false,
        };
        match prefix {
            IpNet::V4(p) => self.insert_path(p, path),
            IpNet::V6(p) => self.insert_path(p, path),
        };
        Ok(())
    }

    fn insert_path<P: FamilyRib>(&mut self, prefix: P, path: Path) -> (bool, bool) {
        let ctx = DecideCtx {
            cfg: self.decision_config(),
            sources: &self.sources,
        };
        let (table, dirty) = P::table_and_dirty(&mut self.tables);
        let u = table.upsert(prefix, path, &ctx);
        if u.changed {
            mark_dirty(dirty, prefix, u.old_best);
        }
        (u.changed, u.replaced)
    }

    fn remove_path<P: FamilyRib>(&mut self, prefix: P, peer: PeerId) -> Option<bool> {
        let ctx = DecideCtx {
            cfg: self.decision_config(),
            sources: &self.sources,
        };
        let (table, dirty) = P::table_and_dirty(&mut self.tables);
        let (changed, old_best) = table.take(&prefix, peer, &ctx)?;
        if changed {
            mark_dirty(dirty, prefix, old_best);
        }
        Some(changed)
    }

    fn withdraw_local(&mut self, prefix: IpNet) {
        match prefix.trunc() {
            IpNet::V4(p) => self.remove_path(p, LOCAL_PEER),
            IpNet::V6(p) => self.remove_path(p, LOCAL_PEER),
        };
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Connected {
                peer,
                attempt,
                result,
            } => {
                let Some(entry) = self.peers.get_mut(&peer) else {
                    return;
                };
                if !entry.connect_finished(attempt) {
                    return;
                }
                match result {
                    Ok(stream) => self.attach(peer, Direction::Outgoing, stream),
                    Err(e) => {
                        entry
                            .span()
                            .in_scope(|| tracing::debug!(error = %e, "connect failed"));
                        self.fsm_event(peer, Event::TcpFailed(Direction::Outgoing));
                    }
                }
            }
            Input::Accepted { stream, remote } => {
                let ip = remote.ip().to_canonical();
                let Some(&id) = self.by_addr.get(&ip) else {
                    tracing::info!(%remote, "refusing connection from an unconfigured address");
                    return;
                };
                let entry = &self.peers[&id];
                if entry.conn(Direction::Incoming).is_some() {
                    entry
                        .span()
                        .in_scope(|| tracing::info!("refusing a second incoming connection"));
                    return;
                }
                let ttl = entry.cfg().ttl(self.cfg.as_number);
                if let Err(e) = connection::set_stream_ttl(&stream, ttl, entry.cfg().min_ttl()) {
                    tracing::warn!(error = %e, "cannot set TTL on accepted connection");
                }
                self.attach(id, Direction::Incoming, stream);
            }
            Input::Received { peer, serial, msg } => {
                let Some(entry) = self.peers.get_mut(&peer) else {
                    return;
                };
                let Some(dir) = entry.direction_of(serial) else {
                    return;
                };
                entry.count_received(msg.as_ref().ok());
                let event = match msg {
                    Ok(msg) => Event::Message(dir, msg),
                    Err(n) => {
                        entry
                            .span()
                            .in_scope(|| tracing::warn!("malformed message: {n}"));
                        Event::DecodeError(dir, n)
                    }
                };
                self.fsm_event(peer, event);
            }
            Input::Closed { peer, serial } => {
                let Some(entry) = self.peers.get_mut(&peer) else {
                    return;
                };
                if let Some(dir) = entry.direction_of(serial) {
                    self.fsm_event(peer, Event::TcpFailed(dir));
                }
            }
            Input::StaleExpired { peer, serial } => self.on_stale_expired(peer, serial),
            Input::Drained { peer, serial } => {
                let current = self
                    .peers
                    .get(&peer)
                    .and_then(PeerEntry::session_conn)
                    .is_some_and(|c| c.serial == serial);
                if current {
                    self.pump(peer);
                }
            }
            Input::SendHoldExpired { peer, serial } => {
                let Some(entry) = self.peers.get_mut(&peer) else {
                    return;
                };
                if let Some(dir) = entry.direction_of(serial) {
                    entry.span().in_scope(|| {
                        tracing::warn!(
                            queued = entry.queued_bytes(),
                            "nothing could be written for the send hold time (RFC 9687)"
                        )
                    });
                    self.fsm_event(peer, Event::SendHoldTimerExpires(dir));
                }
            }
            Input::Bfd(ev) => self.on_bfd(ev),
            Input::Restart { peer } => {
                if let Some(entry) = self.peers.get_mut(&peer) {
                    entry.reset_max_prefix();
                    entry
                        .span()
                        .in_scope(|| tracing::info!("restarting after the max-prefix delay"));
                    self.fsm_event(peer, Event::Start);
                }
            }
            Input::TimerFired {
                peer,
                timer,
                serial,
            } => {
                let Some(entry) = self.peers.get_mut(&peer) else {
                    return;
                };
                match entry.timer_fired(timer, serial, tokio::time::Instant::now()) {
                    peer::TimerReport::Stale => return,
                    peer::TimerReport::Extended(rest) => {
                        // Restarted since its task began: wait out the rest.
                        let serial = self.next_serial;
                        self.next_serial += 1;
                        let handle = crate::connection::spawn_timer(
                            peer,
                            timer,
                            serial,
                            rest,
                            self.input_tx.clone(),
                        );
                        entry.arm_timer(timer, serial, handle, tokio::time::Instant::now() + rest);
                        return;
                    }
                    peer::TimerReport::Due => {}
                }
                let event = match timer {
                    crate::fsm::Timer::ConnectRetry => Event::ConnectRetryTimerExpires,
                    crate::fsm::Timer::Hold(d) => Event::HoldTimerExpires(d),
                    crate::fsm::Timer::Keepalive(d) => Event::KeepaliveTimerExpires(d),
                };
                self.fsm_event(peer, event);
            }
        }
    }

    /// The BFD task, started on first use on our listen address.
    fn bfd_handle(&mut self) -> Result<&crate::bfd::BfdHandle, SpeakerError> {
        if self.bfd.is_none() {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let handle = crate::bfd::BfdHandle::start(
                self.cfg.listen_address,
                crate::bfd::socket::BFD_PORT,
                tx,
            )
            .map_err(|e| {
                SpeakerError::Config(crate::config::ConfigError::speaker(
                    "bfd",
                    &format!("cannot start BFD (UDP port 3784): {e}"),
                ))
            })?;
            let inputs = self.input_tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    if inputs.send(Input::Bfd(ev)).await.is_err() {
                        return;
                    }
                }
            });
            self.bfd = Some(handle);
        }
        Ok(self.bfd.as_ref().expect("just set"))
    }

    /// A BFD session changed: Up is noted; a fall from Up ends the BGP session at once.
    fn on_bfd(&mut self, ev: crate::bfd::BfdEvent) {
        let Some(&id) = self.by_addr.get(&ev.peer) else {
            return;
        };
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        if entry.cfg().bfd.is_none() {
            return;
        }
        let was = entry.set_bfd_state(ev.state);
        // RFC 5882 §3.2: a peer that turned BFD off (AdminDown) has not failed.
        let fell = was == Some(crate::bfd::BfdState::Up)
            && ev.state != crate::bfd::BfdState::Up
            && !ev.remote_admin_down;
        entry
            .span()
            .in_scope(|| tracing::info!(state = ?ev.state, diag = ev.diag, "BFD session state"));
        if fell {
            entry
                .span()
                .in_scope(|| tracing::warn!("BFD declared the peer down; closing the BGP session"));
            self.fsm_event(id, Event::BfdDown);
        }
    }
}
