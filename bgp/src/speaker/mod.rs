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

mod graceful;
mod groups;
mod handle;
mod ingest;
mod outbound;
mod peer;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use handle::Command;
pub use handle::{SpeakerError, SpeakerHandle};
use peer::{PeerEntry, Session, dir_index};

use crate::af::{Family, Prefix};
use crate::config::{
    LocalRoute, PeerConfig, SpeakerConfig, parse_community, parse_large_community,
};
use crate::connection::{self, ConnectParams, Input};
use crate::decision::{DecisionConfig, LOCAL_PEER, Path, PeerId, SourceInfo};
use crate::fsm::{Action, Direction, Event, State};
use crate::packet::attribute::{EncodeContext, PathAttributes};
use crate::packet::error::cease_subcode;
use crate::packet::message::Message;
use crate::policy::RoutePolicy;
use crate::rib::{AdjRibOut, DecideCtx, Interner, Table};
use crate::status::{
    BestPathChange, FamilyStatus, PathView, PeerStatus, PrefixCounts, RouteView, RoutesQuery,
    Status,
};

/// Per-family tables plus the prefixes whose best path may have changed since the
/// last flush.
#[derive(Default)]
pub(crate) struct Tables {
    v4: Table<Ipv4Net>,
    v6: Table<Ipv6Net>,
    dirty4: Vec<Ipv4Net>,
    dirty6: Vec<Ipv6Net>,
}

/// Lets RIB code be written once for both families (STYLE 7).
pub(crate) trait FamilyRib: Prefix {
    fn table(t: &Tables) -> &Table<Self>;
    fn table_and_dirty(t: &mut Tables) -> (&mut Table<Self>, &mut Vec<Self>);
    fn adj_out(g: &mut groups::UpdateGroup) -> &mut AdjRibOut<Self>;
    fn adj_out_ref(g: &groups::UpdateGroup) -> &AdjRibOut<Self>;
    fn batch_touched(b: &mut outbound::Batch) -> &mut Vec<Self>;
}

impl FamilyRib for Ipv4Net {
    fn table(t: &Tables) -> &Table<Self> {
        &t.v4
    }
    fn table_and_dirty(t: &mut Tables) -> (&mut Table<Self>, &mut Vec<Self>) {
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
    fn table_and_dirty(t: &mut Tables) -> (&mut Table<Self>, &mut Vec<Self>) {
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
    listener: Option<JoinHandle<()>>,
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
                Some(connection::spawn_listener(l, input_tx.clone()))
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
        if let Some(l) = self.listener.take() {
            l.abort();
        }
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
            return Err(SpeakerError::Config(format!(
                "peer {}: cannot install the TCP-MD5 key: {e}",
                cfg.address
            )));
        }
        if let Some(b) = &cfg.bfd {
            self.bfd_handle()?.add(cfg.address, b.clone());
        }
        self.by_addr.insert(cfg.address, id);
        let entry = PeerEntry::new(id, cfg, &self.cfg);
        entry
            .span
            .in_scope(|| tracing::info!(passive = entry.cfg.passive, "peer added"));
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
        let restart = self.peers[&id].cfg.session_differs(&cfg);
        if restart {
            self.stop_peer(id, cease_subcode::OTHER_CONFIGURATION_CHANGE);
            return self.add_peer(cfg);
        }
        let old_bfd = self.peers[&id].cfg.bfd.clone();
        if old_bfd != cfg.bfd {
            match &cfg.bfd {
                Some(b) => self.bfd_handle()?.add(cfg.address, b.clone()),
                None => {
                    if let Some(h) = &self.bfd {
                        h.remove(cfg.address);
                    }
                }
            }
            self.peers.get_mut(&id).expect("known id").bfd_state =
                cfg.bfd.as_ref().map(|_| crate::bfd::BfdState::Down);
        }
        self.peers.get_mut(&id).expect("known id").cfg = cfg;
        self.full_export(id, false);
        Ok(())
    }

    /// Sends Cease, drops the session's routes and forgets the peer.
    fn stop_peer(&mut self, id: PeerId, subcode: u8) {
        self.fsm_event(id, Event::Stop(subcode));
        // Stale routes kept for a restarting peer go with the peer.
        self.drop_routes_of(id);
        if let Some(mut entry) = self.peers.remove(&id) {
            entry.cancel_tasks();
            if let Some((_, t)) = entry.stale_timer.take() {
                t.abort();
            }
            for conn in entry.conns.iter_mut().filter_map(Option::take) {
                conn.close();
            }
            self.by_addr.remove(&entry.cfg.address);
            if let (Some(h), Some(_)) = (&self.bfd, &entry.cfg.bfd) {
                h.remove(entry.cfg.address);
            }
            if let (Some(fd), Some(_)) = (self.listener_fd, &entry.cfg.password) {
                let _ = crate::sockopt::set_md5_key(fd, entry.cfg.address, None);
            }
            entry.span.in_scope(|| tracing::info!("peer removed"));
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
            return Err(SpeakerError::Config(format!(
                "route {}: nextHop {nh} is of the other family",
                route.prefix
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
        let (changed, replaced) = table.upsert(prefix, path, &ctx);
        if changed {
            dirty.push(prefix);
        }
        (changed, replaced)
    }

    fn remove_path<P: FamilyRib>(&mut self, prefix: P, peer: PeerId) -> Option<bool> {
        let ctx = DecideCtx {
            cfg: self.decision_config(),
            sources: &self.sources,
        };
        let (table, dirty) = P::table_and_dirty(&mut self.tables);
        let r = table.take(&prefix, peer, &ctx);
        if r == Some(true) {
            dirty.push(prefix);
        }
        r
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
                if attempt != entry.connect_attempt {
                    return;
                }
                entry.connect_task = None;
                match result {
                    Ok(stream) => self.attach(peer, Direction::Outgoing, stream),
                    Err(e) => {
                        entry
                            .span
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
                if entry.conns[dir_index(Direction::Incoming)].is_some() {
                    entry
                        .span
                        .in_scope(|| tracing::info!("refusing a second incoming connection"));
                    return;
                }
                let ttl = entry.cfg.ttl(self.cfg.as_number);
                if let Err(e) = connection::set_stream_ttl(&stream, ttl, entry.cfg.min_ttl()) {
                    tracing::warn!(error = %e, "cannot set TTL on accepted connection");
                }
                self.attach(id, Direction::Incoming, stream);
            }
            Input::Received { peer, serial, msg } => {
                let Some(entry) = self.peers.get_mut(&peer) else {
                    return;
                };
                let Some(dir) = find_dir(entry, serial) else {
                    return;
                };
                entry.counts.messages_received += 1;
                let event = match msg {
                    Ok(msg) => {
                        match &msg {
                            Message::Update(_) => entry.counts.updates_received += 1,
                            Message::Notification(n) => {
                                entry.counts.notifications_received += 1;
                                entry.span.in_scope(|| {
                                    tracing::warn!(
                                        code = n.code,
                                        subcode = n.subcode,
                                        message = n.shutdown_message().unwrap_or_default(),
                                        "NOTIFICATION received: {}",
                                        crate::packet::error::describe(n.code, n.subcode)
                                    )
                                });
                            }
                            _ => {}
                        }
                        Event::Message(dir, msg)
                    }
                    Err(n) => {
                        entry
                            .span
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
                if let Some(dir) = find_dir(entry, serial) {
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
                if let Some(dir) = find_dir(entry, serial) {
                    entry.span.in_scope(|| {
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
                    entry.max_prefix_tripped = false;
                    entry
                        .span
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
                match entry.timers.get(&timer) {
                    Some((s, _)) if *s == serial => {
                        entry.timers.remove(&timer);
                    }
                    _ => return,
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

    fn attach(&mut self, id: PeerId, dir: Direction, stream: tokio::net::TcpStream) {
        let serial = self.next_serial;
        self.next_serial += 1;
        let entry = self.peers.get_mut(&id).expect("caller checked");
        let params = connection::ConnParams {
            ebgp: entry.ebgp,
            extended_messages: entry.cfg.extended_messages,
            low_water: self.cfg.write_queue_bytes / 2,
        };
        match connection::start_connection(id, serial, stream, params, self.input_tx.clone()) {
            Ok(conn) => {
                entry
                    .span
                    .in_scope(|| tracing::debug!(?dir, local = %conn.local, "TCP connection up"));
                entry.conns[dir_index(dir)] = Some(conn);
                self.fsm_event(id, Event::TcpConnected(dir));
            }
            Err(e) => {
                entry
                    .span
                    .in_scope(|| tracing::debug!(error = %e, "connection lost before use"));
                if dir == Direction::Outgoing {
                    self.fsm_event(id, Event::TcpFailed(dir));
                }
            }
        }
    }

    /// Feeds the FSM and carries out its actions.
    fn fsm_event(&mut self, id: PeerId, event: Event) {
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        let actions = entry.fsm.handle(event);
        for action in actions {
            self.act(id, action);
        }
        if let Some(entry) = self.peers.get_mut(&id) {
            let state = entry.fsm.state();
            if state != entry.last_state {
                entry.span.in_scope(
                    || tracing::info!(from = ?entry.last_state, to = ?state, "state change"),
                );
                entry.last_state = state;
                entry.state_since = Instant::now();
            }
        }
    }

    fn act(&mut self, id: PeerId, action: Action) {
        let local_as = self.cfg.as_number;
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        match action {
            Action::Connect => {
                entry.connect_attempt += 1;
                let params = ConnectParams {
                    remote: SocketAddr::new(entry.cfg.address, entry.cfg.port),
                    source: entry.cfg.source_address,
                    ttl: entry.cfg.ttl(local_as),
                    timeout: entry.cfg.connect_retry().max(Duration::from_secs(1)),
                    md5: entry.cfg.password.as_ref().map(|p| p.0.as_bytes().to_vec()),
                    min_ttl: entry.cfg.min_ttl(),
                };
                if let Some(t) = entry.connect_task.take() {
                    t.abort();
                }
                entry.connect_task = Some(connection::spawn_connect(
                    id,
                    entry.connect_attempt,
                    params,
                    self.input_tx.clone(),
                ));
            }
            Action::Send(dir, msg) => {
                if let Some(conn) = &entry.conns[dir_index(dir)] {
                    if let Message::Notification(n) = &msg {
                        entry.counts.notifications_sent += 1;
                        entry.span.in_scope(|| {
                            tracing::warn!(
                                code = n.code,
                                subcode = n.subcode,
                                "NOTIFICATION sent: {}",
                                crate::packet::error::describe(n.code, n.subcode)
                            )
                        });
                    }
                    entry.counts.messages_sent += 1;
                    conn.send(
                        msg.encode(EncodeContext {
                            four_octet_as: true,
                            extended_messages: false,
                        })
                        .into(),
                    );
                }
            }
            Action::Close(dir) => {
                if let Some(conn) = entry.conns[dir_index(dir)].take() {
                    conn.close();
                }
            }
            Action::StartTimer(timer, after) => {
                let serial = self.next_serial;
                self.next_serial += 1;
                let handle =
                    connection::spawn_timer(id, timer, serial, after, self.input_tx.clone());
                if let Some((_, old)) = entry.timers.insert(timer, (serial, handle)) {
                    old.abort();
                }
            }
            Action::StopTimer(timer) => {
                if let Some((_, old)) = entry.timers.remove(&timer) {
                    old.abort();
                }
            }
            Action::Established(neg) => {
                let Some(conn) = &entry.conns[dir_index(neg.direction)] else {
                    return;
                };
                entry.span.in_scope(|| {
                    tracing::info!(remote_id = %neg.remote_id, hold = neg.hold_time, families = ?neg.families, extended_messages = neg.extended_messages, "session established")
                });
                conn.meter.set_send_hold(entry.cfg.send_hold(neg.hold_time));
                self.sources.insert(
                    id,
                    SourceInfo {
                        ebgp: entry.ebgp,
                        router_id: neg.remote_id,
                        address: entry.cfg.address,
                    },
                );
                entry.session = Some(Session {
                    local: conn.local,
                    remote: conn.remote,
                    since: SystemTime::now(),
                    neg: *neg,
                });
                entry.established_transitions += 1;
                let neg = entry.session.as_ref().map(|s| s.neg.clone());
                if let Some(neg) = neg {
                    self.on_reestablished(id, &neg);
                }
                self.full_export(id, true);
            }
            Action::Down(reason) => {
                entry
                    .span
                    .in_scope(|| tracing::warn!(?reason, "session down"));
                let kept = self.begin_stale(id, &reason);
                if let Some(gid) = self.peers[&id].group {
                    self.leave_group(id, gid, false);
                }
                let entry = self.peers.get_mut(&id).expect("checked above");
                entry.session = None;
                entry.backlog = None;
                entry.eor_received.clear();
                if !kept {
                    entry.accepted = [0, 0];
                    entry.filtered.clear();
                    self.drop_routes_of(id);
                }
            }
            Action::Update(update) => self.on_update(id, *update),
            Action::RouteRefresh(rr) => {
                if let Some(family) = Family::from_afi_safi(rr.afi, rr.safi) {
                    entry
                        .span
                        .in_scope(|| tracing::info!(%family, "route refresh requested"));
                    self.resend_table(id, family);
                }
            }
        }
    }

    fn drop_routes_of(&mut self, id: PeerId) {
        let ctx = DecideCtx {
            cfg: self.decision_config(),
            sources: &self.sources,
        };
        let changed4 = self.tables.v4.remove_peer(id, false, &ctx);
        let changed6 = self.tables.v6.remove_peer(id, false, &ctx);
        self.tables.dirty4.extend(changed4);
        self.tables.dirty6.extend(changed6);
    }

    fn status(&self) -> Status {
        let mut peers: Vec<PeerStatus> = self.peers.values().map(|p| self.peer_status(p)).collect();
        peers.sort_by_key(|p| p.address);
        let local = |f: Family| self.local_counts[family_index(f)];
        Status {
            router_id: self.cfg.router_id,
            as_number: self.cfg.as_number,
            cluster_id: self.cfg.cluster_id,
            peers,
            families: vec![
                FamilyStatus {
                    family: Family::Ipv4Unicast,
                    prefixes: self.tables.v4.len(),
                    local_prefixes: local(Family::Ipv4Unicast),
                },
                FamilyStatus {
                    family: Family::Ipv6Unicast,
                    prefixes: self.tables.v6.len(),
                    local_prefixes: local(Family::Ipv6Unicast),
                },
            ],
            attribute_sets: self.interner.len(),
            update_groups: {
                let mut g: Vec<crate::status::UpdateGroupStatus> = self
                    .groups
                    .values()
                    .map(|g| crate::status::UpdateGroupStatus {
                        members: g
                            .members
                            .iter()
                            .filter_map(|m| self.peers.get(m).map(|e| e.cfg.address))
                            .collect(),
                        advertised: g
                            .key
                            .families
                            .iter()
                            .map(|f| {
                                let n = match f {
                                    Family::Ipv4Unicast => g.out4.len(),
                                    Family::Ipv6Unicast => g.out6.len(),
                                };
                                (*f, n)
                            })
                            .collect(),
                    })
                    .collect();
                g.sort_by(|a, b| a.members.cmp(&b.members));
                g
            },
        }
    }

    fn peer_status(&self, p: &PeerEntry) -> PeerStatus {
        let received = |f: Family| p.accepted[family_index(f)] + p.filtered.count(f);
        PeerStatus {
            address: p.cfg.address,
            port: p.cfg.port,
            as_number: p.cfg.as_number,
            kind: if p.ebgp { "ebgp" } else { "ibgp" }.to_string(),
            description: p.cfg.description.clone(),
            state: p.fsm.state(),
            state_age_seconds: p.state_since.elapsed().as_secs(),
            established_since_unix: p
                .session
                .as_ref()
                .and_then(|s| s.since.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            local_address: p.session.as_ref().map(|s| s.local.to_string()),
            remote_address: p.session.as_ref().map(|s| s.remote.to_string()),
            negotiated: p.session.as_ref().map(|s| s.neg.clone()),
            last_error: match p.fsm.state() {
                State::Established => None,
                _ => p.fsm.last_error().map(describe_down),
            },
            prefixes: Family::ALL
                .iter()
                .filter(|f| p.cfg.families.contains(f))
                .map(|&f| PrefixCounts {
                    family: f,
                    received: received(f),
                    accepted: p.accepted[family_index(f)],
                    advertised: p
                        .group
                        .and_then(|g| self.groups.get(&g))
                        .map_or(0, |g| match f {
                            Family::Ipv4Unicast => g.out4.len(),
                            Family::Ipv6Unicast => g.out6.len(),
                        }),
                })
                .collect(),
            messages: p.counts.clone(),
            established_transitions: p.established_transitions,
            end_of_rib_received: sorted(&p.eor_received),
            stale_families: sorted(&p.stale_families),
            max_prefix_exceeded: p.max_prefix_tripped,
            bfd: p.bfd_state,
            write_queue_bytes: p.queued_bytes(),
            paced_prefixes: p.backlog.as_ref().map_or(0, peer::Backlog::len),
            routes_too_large: p.too_large,
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
            .map_err(|e| SpeakerError::Config(format!("cannot start BFD (UDP port 3784): {e}")))?;
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
        if entry.cfg.bfd.is_none() {
            return;
        }
        let was = entry.bfd_state.replace(ev.state);
        // RFC 5882 §3.2: a peer that turned BFD off (AdminDown) has not failed.
        let fell = was == Some(crate::bfd::BfdState::Up)
            && ev.state != crate::bfd::BfdState::Up
            && !ev.remote_admin_down;
        entry
            .span
            .in_scope(|| tracing::info!(state = ?ev.state, diag = ev.diag, "BFD session state"));
        if fell {
            entry
                .span
                .in_scope(|| tracing::warn!("BFD declared the peer down; closing the BGP session"));
            self.fsm_event(id, Event::BfdDown);
        }
    }

    /// One page of the Loc-RIB in prefix order: a scan of the keys and a partial selection
    /// (no sort of the whole table), then the decision explained for the page only.
    fn routes<P: FamilyRib>(&self, q: &RoutesQuery) -> Vec<RouteView> {
        let ctx = DecideCtx {
            cfg: self.decision_config(),
            sources: &self.sources,
        };
        let table = P::table(&self.tables);
        let after = q.after.and_then(P::from_ipnet);
        let mut keys: Vec<P> = table
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| q.within.is_none_or(|w| w.contains(&p.into_ipnet())))
            .filter(|p| after.is_none_or(|a| *p > a))
            .collect();
        let limit = q.limit.clamp(1, RoutesQuery::MAX_LIMIT);
        if keys.len() > limit {
            keys.select_nth_unstable(limit);
            keys.truncate(limit);
        }
        keys.sort_unstable();
        keys.iter()
            .map(|p| (p, table.paths(p)))
            .map(|(prefix, paths)| {
                let decision = table.explain(prefix, &ctx);
                let lost: HashMap<usize, crate::decision::Step> = decision
                    .map(|d| d.lost.into_iter().collect())
                    .unwrap_or_default();
                RouteView {
                    prefix: prefix.into_ipnet(),
                    paths: paths
                        .iter()
                        .enumerate()
                        .map(|(i, path)| PathView {
                            peer: (path.peer != LOCAL_PEER)
                                .then(|| self.sources.get(&path.peer).map(|s| s.address))
                                .flatten(),
                            best: i == 0,
                            stale: path.stale,
                            lost_at: lost.get(&i).copied(),
                            reason: lost.get(&i).map(|s| s.explain()),
                            attributes: (*path.attrs).clone(),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

fn find_dir(entry: &PeerEntry, serial: u64) -> Option<Direction> {
    [Direction::Outgoing, Direction::Incoming]
        .into_iter()
        .find(|d| {
            entry.conns[dir_index(*d)]
                .as_ref()
                .is_some_and(|c| c.serial == serial)
        })
}

fn describe_down(reason: &crate::fsm::DownReason) -> String {
    use crate::fsm::DownReason::*;
    match reason {
        NotificationSent { code, subcode } => {
            format!(
                "sent NOTIFICATION: {}",
                crate::packet::error::describe(*code, *subcode)
            )
        }
        NotificationReceived { code, subcode } => {
            format!(
                "received NOTIFICATION: {}",
                crate::packet::error::describe(*code, *subcode)
            )
        }
        ConnectionLost => "connection lost".into(),
        Stopped => "stopped".into(),
    }
}

fn sorted(set: &std::collections::HashSet<Family>) -> Vec<Family> {
    let mut v: Vec<Family> = set.iter().copied().collect();
    v.sort_by_key(|f| f.afi());
    v
}
