//! What the speaker task keeps per peer: its FSM, connections, timers, session and
//! Adj-RIB-Out. Plain data owned by the speaker task.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Instant, SystemTime};

use crate::task::OwnedTask;
use ipnet::IpNet;

use crate::af::Family;
use crate::config::{PeerConfig, SpeakerConfig};
use crate::connection::ConnIo;
use crate::decision::PeerId;
use crate::fsm::{Fsm, FsmConfig, Negotiated, State, Timer};
use crate::packet::capability::{GracefulRestart, GracefulRestartFamily};
use crate::policy::PolicyPeer;
use crate::status::{MessageCounts, PeerStatus, PrefixCounts};

/// An established session.
#[derive(Debug)]
pub(crate) struct Session {
    pub neg: Negotiated,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub since: SystemTime,
}

/// An FSM timer's task and when the timer is really due (later than the task's report
/// when the timer was restarted meanwhile; see [`PeerEntry::extend_timer`]).
struct ArmedTimer {
    serial: u64,
    _task: OwnedTask,
    reports_at: tokio::time::Instant,
    deadline: tokio::time::Instant,
}

/// What a timer task's report means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerReport {
    /// Stopped or replaced since: ignore.
    Stale,
    /// Restarted since: due after this much more.
    Extended(std::time::Duration),
    /// Due now.
    Due,
}

/// Everything about one peer. Its fields are private: the speaker changes a peer only
/// through the methods below, each of which keeps the related fields in step (a session
/// going down clears its backlog, End-of-RIB record and, unless routes are kept stale, its
/// prefix counts; a timer firing late is recognised by its serial).
pub(crate) struct PeerEntry {
    id: PeerId,
    cfg: PeerConfig,
    fsm: Fsm,
    ebgp: bool,
    span: tracing::Span,
    conns: [Option<ConnIo>; 2],
    connect_attempt: u64,
    connect_task: Option<OwnedTask>,
    timers: HashMap<Timer, ArmedTimer>,
    session: Option<Session>,
    /// The update group this peer's session is in (its Adj-RIB-Out is the group's).
    group: Option<super::groups::GroupId>,
    accepted: [usize; 2],
    filtered: Filtered,
    counts: MessageCounts,
    established_transitions: u64,
    last_state: State,
    state_since: Instant,
    /// Graceful restart: the timer that sweeps this peer's stale routes (serial, task).
    stale_timer: Option<(u64, OwnedTask)>,
    /// Families whose routes from this peer are stale, awaiting End-of-RIB.
    stale_families: HashSet<Family>,
    /// Families for which the current session sent End-of-RIB.
    eor_received: HashSet<Family>,
    /// The max-prefix limit was exceeded (warning given, or session torn down and waiting).
    max_prefix_tripped: bool,
    /// The delayed restart after a max-prefix teardown.
    max_prefix_restart: Option<OwnedTask>,
    /// The BFD session's last state, when BFD is on for this peer.
    bfd_state: Option<crate::bfd::BfdState>,
    /// Prefixes this member of an update group still has to be told about: set while it is
    /// paced (its write queue went over budget, it is receiving its first table, or it asked
    /// for a ROUTE-REFRESH). Sent from the group's current table as its queue drains.
    backlog: Option<Backlog>,
    /// Routes withheld from this peer because their attributes cannot fit in one UPDATE.
    too_large: u64,
}

/// Prefixes the peer sent that import policy rejected, with a count per family so status
/// stays O(peers) however many there are.
#[derive(Debug, Default)]
pub(crate) struct Filtered {
    set: HashSet<IpNet>,
    counts: [usize; 2],
}

impl Filtered {
    pub fn insert(&mut self, prefix: IpNet) {
        if self.set.insert(prefix) {
            self.counts[super::family_index(Family::of(&prefix))] += 1;
        }
    }

    pub fn remove(&mut self, prefix: &IpNet) {
        if self.set.remove(prefix) {
            self.counts[super::family_index(Family::of(prefix))] -= 1;
        }
    }

    pub fn clear(&mut self) {
        self.set.clear();
        self.counts = [0, 0];
    }

    pub fn count(&self, family: Family) -> usize {
        self.counts[super::family_index(family)]
    }
}

/// What a paced peer has yet to be sent: each prefix at most once, so repeated changes and
/// repeated ROUTE-REFRESH requests coalesce and memory stays bounded by the table.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    pub v4: crate::rib::FastSet<ipnet::Ipv4Net>,
    pub v6: crate::rib::FastSet<ipnet::Ipv6Net>,
    /// Send End-of-RIB markers once caught up (the session's first table, RFC 4724 §2).
    pub end_of_rib: bool,
}

impl Backlog {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

impl PeerEntry {
    pub fn new(id: PeerId, cfg: PeerConfig, speaker: &SpeakerConfig) -> Self {
        let bfd_state = cfg.bfd.as_ref().map(|_| crate::bfd::BfdState::Down);
        let ebgp = cfg.is_ebgp(speaker.as_number);
        let fsm = Fsm::new(FsmConfig {
            local_as: cfg.local_as(speaker.as_number),
            remote_as: cfg.as_number,
            router_id: speaker.router_id,
            hold_time: cfg.hold_time,
            keepalive_time: cfg.keepalive_time,
            extended_messages: cfg.extended_messages,
            min_hold_time: cfg.min_hold_time,
            connect_retry: cfg.connect_retry(),
            passive: cfg.passive,
            families: cfg.families.clone(),
            graceful_restart: cfg
                .graceful_restart_time
                .map(|restart_time| GracefulRestart {
                    restarting: false,
                    notification: false,
                    restart_time,
                    families: cfg
                        .families
                        .iter()
                        .map(|f| GracefulRestartFamily {
                            afi: f.afi(),
                            safi: f.safi(),
                            // The agent keeps its kernel routes across a restart.
                            forwarding_preserved: true,
                        })
                        .collect(),
                }),
        });
        let span = tracing::info_span!("peer", addr = %cfg.address, asn = cfg.as_number);
        PeerEntry {
            id,
            cfg,
            fsm,
            ebgp,
            conns: [None, None],
            connect_attempt: 0,
            connect_task: None,
            timers: HashMap::new(),
            session: None,
            group: None,
            accepted: [0, 0],
            filtered: Filtered::default(),
            counts: MessageCounts::default(),
            established_transitions: 0,
            last_state: State::Idle,
            state_since: Instant::now(),
            span,
            stale_timer: None,
            stale_families: HashSet::new(),
            eor_received: HashSet::new(),
            max_prefix_tripped: false,
            max_prefix_restart: None,
            bfd_state,
            backlog: None,
            too_large: 0,
        }
    }

    /// The peer's key in the speaker's maps.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The peer's configuration as last given.
    pub fn cfg(&self) -> &PeerConfig {
        &self.cfg
    }

    /// Whether the peer is in another AS (decided once, from the configuration).
    pub fn ebgp(&self) -> bool {
        self.ebgp
    }

    /// The tracing span every event of this peer is logged in.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The established session, if any.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The update group the session is in, if any.
    pub fn group(&self) -> Option<super::groups::GroupId> {
        self.group
    }

    /// Records the update group the session joined (or left, with None).
    pub fn set_group(&mut self, group: Option<super::groups::GroupId>) {
        self.group = group;
    }

    /// New settings that do not need a new session (the caller checked); BFD's state
    /// restarts at Down when BFD was turned on or off.
    pub fn reconfigure(&mut self, cfg: PeerConfig) {
        if cfg.bfd != self.cfg.bfd {
            self.bfd_state = cfg.bfd.as_ref().map(|_| crate::bfd::BfdState::Down);
        }
        self.cfg = cfg;
    }

    /// Feeds the FSM an event; the actions are the caller's to carry out.
    pub fn handle(&mut self, event: crate::fsm::Event) -> Vec<crate::fsm::Action> {
        self.fsm.handle(event)
    }

    /// Notes the FSM's current state: a change is logged and restarts the state's clock.
    pub fn note_state(&mut self) {
        let state = self.fsm.state();
        if state != self.last_state {
            let from = self.last_state;
            self.span
                .in_scope(|| tracing::info!(from = ?from, to = ?state, "state change"));
            self.last_state = state;
            self.state_since = Instant::now();
        }
    }

    /// The connection in one direction, if open.
    pub fn conn(&self, dir: crate::fsm::Direction) -> Option<&ConnIo> {
        self.conns[dir_index(dir)].as_ref()
    }

    /// Keeps a newly opened connection.
    pub fn attach_conn(&mut self, dir: crate::fsm::Direction, conn: ConnIo) {
        self.conns[dir_index(dir)] = Some(conn);
    }

    /// Closes the connection in one direction, if open.
    pub fn close_conn(&mut self, dir: crate::fsm::Direction) {
        if let Some(conn) = self.conns[dir_index(dir)].take() {
            conn.close();
        }
    }

    /// Which direction's connection has this serial: reports from a connection that was
    /// replaced are recognised and ignored.
    pub fn direction_of(&self, serial: u64) -> Option<crate::fsm::Direction> {
        use crate::fsm::Direction;
        [Direction::Outgoing, Direction::Incoming]
            .into_iter()
            .find(|d| self.conn(*d).is_some_and(|c| c.serial == serial))
    }

    /// Starts an outgoing connection attempt; `spawn` gets the attempt's number, which its
    /// report carries back.
    pub fn begin_connect(&mut self, spawn: impl FnOnce(u64) -> tokio::task::JoinHandle<()>) {
        self.connect_attempt += 1;
        self.connect_task = Some(OwnedTask::new(spawn(self.connect_attempt)));
    }

    /// A connect attempt reported back: whether it is the current one (older ones are
    /// ignored); the current one is over either way.
    pub fn connect_finished(&mut self, attempt: u64) -> bool {
        if attempt != self.connect_attempt {
            return false;
        }
        self.connect_task = None;
        true
    }

    /// Starts (or restarts: the old one stops) an FSM timer.
    pub fn arm_timer(
        &mut self,
        timer: Timer,
        serial: u64,
        task: tokio::task::JoinHandle<()>,
        deadline: tokio::time::Instant,
    ) {
        self.timers.insert(
            timer,
            ArmedTimer {
                serial,
                _task: OwnedTask::new(task),
                reports_at: deadline,
                deadline,
            },
        );
    }

    /// Restarts an armed timer without a new task when its task reports no later than
    /// `deadline`: the report is then re-checked against the new deadline. The hold timer
    /// restarts on every message received, which would otherwise cost a task per UPDATE.
    /// False when a new task is needed (none armed, or the deadline moved earlier).
    pub fn extend_timer(&mut self, timer: Timer, deadline: tokio::time::Instant) -> bool {
        match self.timers.get_mut(&timer) {
            Some(t) if t.reports_at <= deadline => {
                t.deadline = deadline;
                true
            }
            _ => false,
        }
    }

    /// Stops an FSM timer.
    pub fn stop_timer(&mut self, timer: Timer) {
        self.timers.remove(&timer);
    }

    /// A timer's task reported: stale (stopped or replaced since), extended (it must be
    /// re-armed for the time left), or due (the current one is forgotten).
    pub fn timer_fired(
        &mut self,
        timer: Timer,
        serial: u64,
        now: tokio::time::Instant,
    ) -> TimerReport {
        match self.timers.get(&timer) {
            Some(t) if t.serial == serial && t.deadline > now => {
                TimerReport::Extended(t.deadline - now)
            }
            Some(t) if t.serial == serial => {
                self.timers.remove(&timer);
                TimerReport::Due
            }
            _ => TimerReport::Stale,
        }
    }

    /// Counts a message received, logging a NOTIFICATION in the peer's span.
    pub fn count_received(&mut self, msg: Option<&crate::packet::message::Message>) {
        use crate::packet::message::Message;
        self.counts.messages_received += 1;
        match msg {
            Some(Message::Update(_)) => self.counts.updates_received += 1,
            Some(Message::Notification(n)) => {
                self.counts.notifications_received += 1;
                self.span.in_scope(|| {
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
    }

    /// Counts an UPDATE that carried malformed attributes (RFC 7606).
    pub fn count_update_error(&mut self) {
        self.counts.update_errors += 1;
    }

    /// Sends one FSM message on the connection in `dir`, counting it (and logging a
    /// NOTIFICATION).
    pub fn send_message(
        &mut self,
        dir: crate::fsm::Direction,
        msg: &crate::packet::message::Message,
    ) {
        use crate::packet::attribute::EncodeContext;
        use crate::packet::message::Message;
        let Some(conn) = self.conns[dir_index(dir)].as_ref() else {
            return;
        };
        if let Message::Notification(n) = msg {
            self.counts.notifications_sent += 1;
            self.span.in_scope(|| {
                tracing::warn!(
                    code = n.code,
                    subcode = n.subcode,
                    "NOTIFICATION sent: {}",
                    crate::packet::error::describe(n.code, n.subcode)
                )
            });
        }
        self.counts.messages_sent += 1;
        conn.send(
            msg.encode(EncodeContext {
                four_octet_as: true,
                extended_messages: false,
            })
            .into(),
        );
    }

    /// The session came up on the connection `neg` names; None if that connection is gone.
    pub fn establish(&mut self, neg: Negotiated) -> Option<&Session> {
        let conn = self.conns[dir_index(neg.direction)].as_ref()?;
        conn.meter.set_send_hold(self.cfg.send_hold(neg.hold_time));
        self.session = Some(Session {
            local: conn.local,
            remote: conn.remote,
            since: SystemTime::now(),
            neg,
        });
        self.established_transitions += 1;
        self.session.as_ref()
    }

    /// The session went down: what it was owed and what it said is forgotten; its routes'
    /// counts go too unless graceful restart keeps the routes (`routes_kept`).
    pub fn session_down(&mut self, routes_kept: bool) {
        self.session = None;
        self.backlog = None;
        self.eor_received.clear();
        if !routes_kept {
            self.accepted = [0, 0];
            self.filtered.clear();
        }
    }

    /// Routes accepted from the peer in one family.
    pub fn accepted(&self, family: Family) -> usize {
        self.accepted[super::family_index(family)]
    }

    /// Sets the accepted count after a sweep recounted the table.
    pub fn set_accepted(&mut self, family: Family, count: usize) {
        self.accepted[super::family_index(family)] = count;
    }

    /// A prefix the peer sent was stored: a new one is counted (and is no longer filtered);
    /// returns the family's count.
    pub fn route_stored(&mut self, prefix: IpNet, replaced: bool) -> usize {
        let family = Family::of(&prefix);
        if !replaced {
            self.accepted[super::family_index(family)] += 1;
            self.filtered.remove(&prefix);
        }
        self.accepted(family)
    }

    /// A prefix the peer had is gone (withdrawn, or replaced by a filtered one).
    pub fn route_removed(&mut self, prefix: IpNet, was_stored: bool) {
        self.filtered.remove(&prefix);
        if was_stored {
            self.accepted[super::family_index(Family::of(&prefix))] -= 1;
        }
    }

    /// A prefix import policy rejected.
    pub fn route_filtered(&mut self, prefix: IpNet) {
        self.filtered.insert(prefix);
    }

    /// Graceful restart begins: `families`' routes are stale until End-of-RIB or the timer.
    pub fn begin_stale(
        &mut self,
        serial: u64,
        timer: tokio::task::JoinHandle<()>,
        families: &[Family],
    ) {
        self.stale_timer = Some((serial, OwnedTask::new(timer)));
        self.stale_families = families.iter().copied().collect();
    }

    /// The stale timer fired: whether it is the current one (it is then forgotten).
    pub fn stale_timer_fired(&mut self, serial: u64) -> bool {
        if self.stale_timer.as_ref().map(|(s, _)| *s) != Some(serial) {
            return false;
        }
        self.stale_timer = None;
        true
    }

    /// Whether any family's routes are still stale.
    pub fn has_stale(&self) -> bool {
        !self.stale_families.is_empty()
    }

    /// A family's stale routes are being swept: whether it was stale (the timer stops when
    /// the last family is done).
    pub fn end_stale(&mut self, family: Family) -> bool {
        if !self.stale_families.remove(&family) {
            return false;
        }
        if self.stale_families.is_empty() {
            self.stale_timer = None;
        }
        true
    }

    /// End-of-RIB arrived for a family.
    pub fn end_of_rib_received(&mut self, family: Family) {
        self.eor_received.insert(family);
    }

    /// Marks the max-prefix limit exceeded; false if it already was (act once per trip).
    pub fn trip_max_prefix(&mut self) -> bool {
        !std::mem::replace(&mut self.max_prefix_tripped, true)
    }

    /// Schedules the restart after a max-prefix teardown (stops with the peer).
    pub fn schedule_max_prefix_restart(&mut self, task: tokio::task::JoinHandle<()>) {
        self.max_prefix_restart = Some(OwnedTask::new(task));
    }

    /// The max-prefix delay is over: the peer may try again.
    pub fn reset_max_prefix(&mut self) {
        self.max_prefix_tripped = false;
        self.max_prefix_restart = None;
    }

    /// Records BFD's new state; returns the one before.
    pub fn set_bfd_state(&mut self, state: crate::bfd::BfdState) -> Option<crate::bfd::BfdState> {
        self.bfd_state.replace(state)
    }

    /// Whether the peer is being paced from a backlog.
    pub fn is_paced(&self) -> bool {
        self.backlog.is_some()
    }

    /// The backlog to add to, started if the peer was not paced.
    pub fn pace(&mut self) -> &mut Backlog {
        self.backlog.get_or_insert_with(Backlog::default)
    }

    /// Takes the backlog to work on; `resume_backlog` puts back what is left.
    pub fn take_backlog(&mut self) -> Option<Backlog> {
        self.backlog.take()
    }

    /// Puts back a backlog not yet finished.
    pub fn resume_backlog(&mut self, backlog: Backlog) {
        self.backlog = Some(backlog);
    }

    /// Routes withheld because their attributes do not fit in one UPDATE.
    pub fn withhold(&mut self, routes: u64) {
        self.too_large += routes;
    }

    pub fn policy_peer(&self) -> PolicyPeer {
        PolicyPeer {
            address: self.cfg.address,
            as_number: self.cfg.as_number,
            ebgp: self.ebgp,
        }
    }

    /// Families usable on the current session.
    pub fn has_family(&self, family: Family) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.neg.families.contains(&family))
    }

    /// Our addresses to use as next hop towards this peer.
    pub fn self_addresses(&self, speaker: &SpeakerConfig) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let local = self.session.as_ref().map(|s| s.local.ip());
        let v4 = match local {
            Some(IpAddr::V4(a)) => Some(a),
            _ => speaker.next_hop_ipv4,
        };
        let v6 = match local {
            Some(IpAddr::V6(a)) if !a.is_unicast_link_local() => Some(a),
            _ => speaker.next_hop_ipv6,
        };
        (v4, v6)
    }

    /// The established connection, if any.
    pub fn session_conn(&self) -> Option<&ConnIo> {
        let dir = self.session.as_ref()?.neg.direction;
        self.conns[dir_index(dir)].as_ref()
    }

    /// Bytes waiting in the session's write queue.
    pub fn queued_bytes(&self) -> usize {
        self.session_conn().map_or(0, |c| c.meter.queued())
    }

    /// Sends encoded messages on the established connection.
    pub fn send_session(&mut self, msgs: Vec<Vec<u8>>, updates: bool) {
        let n = msgs.len() as u64;
        self.send_batch(&join(msgs), n, updates);
    }

    /// Sends `n` messages already joined into one buffer (shared with other members of the
    /// update group: cloning `Bytes` copies nothing).
    pub fn send_batch(&mut self, buf: &bytes::Bytes, n: u64, updates: bool) {
        let Some(conn) = self.session_conn() else {
            return;
        };
        if n == 0 {
            return;
        }
        conn.send(buf.clone());
        self.counts.messages_sent += n;
        if updates {
            self.counts.updates_sent += n;
        }
    }

    /// The peer is removed: every task it owns stops and its connections close.
    pub fn shut_down(&mut self) {
        self.timers.clear();
        self.connect_task = None;
        self.stale_timer = None;
        self.max_prefix_restart = None;
        for conn in self.conns.iter_mut().filter_map(Option::take) {
            conn.close();
        }
    }

    /// The peer as `servalctl node status` shows it; `advertised` counts what its update
    /// group sends in a family.
    pub fn status(&self, advertised: impl Fn(Family) -> usize) -> PeerStatus {
        let session = self.session.as_ref();
        PeerStatus {
            address: self.cfg.address,
            port: self.cfg.port,
            as_number: self.cfg.as_number,
            kind: if self.ebgp { "ebgp" } else { "ibgp" }.to_string(),
            description: self.cfg.description.clone(),
            state: self.fsm.state(),
            state_age_seconds: self.state_since.elapsed().as_secs(),
            established_since_unix: session
                .and_then(|s| s.since.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            local_address: session.map(|s| s.local.to_string()),
            remote_address: session.map(|s| s.remote.to_string()),
            negotiated: session.map(|s| s.neg.clone()),
            last_error: match self.fsm.state() {
                State::Established => None,
                _ => self.fsm.last_error().map(describe_down),
            },
            prefixes: Family::ALL
                .iter()
                .filter(|f| self.cfg.families.contains(f))
                .map(|&f| PrefixCounts {
                    family: f,
                    received: self.accepted(f) + self.filtered.count(f),
                    accepted: self.accepted(f),
                    advertised: advertised(f),
                })
                .collect(),
            messages: self.counts.clone(),
            established_transitions: self.established_transitions,
            end_of_rib_received: sorted(&self.eor_received),
            stale_families: sorted(&self.stale_families),
            max_prefix_exceeded: self.max_prefix_tripped,
            bfd: self.bfd_state,
            write_queue_bytes: self.queued_bytes(),
            paced_prefixes: self.backlog.as_ref().map_or(0, Backlog::len),
            routes_too_large: self.too_large,
        }
    }
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

fn sorted(set: &HashSet<Family>) -> Vec<Family> {
    let mut v: Vec<Family> = set.iter().copied().collect();
    v.sort_by_key(|f| f.afi());
    v
}

pub(crate) fn dir_index(dir: crate::fsm::Direction) -> usize {
    match dir {
        crate::fsm::Direction::Outgoing => 0,
        crate::fsm::Direction::Incoming => 1,
    }
}

/// One write request for a whole batch keeps the writer's queue short.
pub(crate) fn join(msgs: Vec<Vec<u8>>) -> bytes::Bytes {
    let total: usize = msgs.iter().map(Vec::len).sum();
    let mut buf = Vec::with_capacity(total);
    msgs.iter().for_each(|m| buf.extend_from_slice(m));
    bytes::Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::Timer;

    fn entry() -> PeerEntry {
        let speaker = SpeakerConfig::new(Ipv4Addr::new(192, 0, 2, 1), 64512);
        let cfg = PeerConfig::new("192.0.2.2".parse().unwrap(), 64512);
        PeerEntry::new(7, cfg, &speaker)
    }

    #[test]
    fn a_session_going_down_forgets_its_counts_unless_routes_are_kept() {
        let mut p = entry();
        let a: IpNet = "10.0.0.0/24".parse().unwrap();
        let b: IpNet = "10.0.1.0/24".parse().unwrap();
        assert_eq!(p.route_stored(a, false), 1);
        assert_eq!(
            p.route_stored(a, true),
            1,
            "a replaced path is not counted twice"
        );
        p.route_filtered(b);
        p.end_of_rib_received(Family::Ipv4Unicast);
        p.pace().v4.insert("10.0.2.0/24".parse().unwrap());

        p.session_down(true);
        assert_eq!(p.accepted(Family::Ipv4Unicast), 1, "kept stale");
        assert!(!p.is_paced(), "a backlog is owed to a session, not a peer");
        let status = p.status(|_| 0);
        assert_eq!(status.prefixes[0].received, 2);
        assert!(status.end_of_rib_received.is_empty());

        p.session_down(false);
        assert_eq!(p.accepted(Family::Ipv4Unicast), 0);
        assert_eq!(p.status(|_| 0).prefixes[0].received, 0);
    }

    #[test]
    fn a_removed_route_is_uncounted_once() {
        let mut p = entry();
        let a: IpNet = "10.0.0.0/24".parse().unwrap();
        p.route_stored(a, false);
        p.route_removed(a, true);
        p.route_removed(a, false);
        assert_eq!(p.accepted(Family::Ipv4Unicast), 0);
    }

    #[tokio::test]
    async fn late_timer_and_connect_reports_are_recognised_by_serial() {
        let mut p = entry();
        let idle = || tokio::spawn(std::future::pending::<()>());
        let now = tokio::time::Instant::now();
        p.arm_timer(Timer::ConnectRetry, 1, idle(), now);
        p.arm_timer(Timer::ConnectRetry, 2, idle(), now);
        assert_eq!(
            p.timer_fired(Timer::ConnectRetry, 1, now),
            TimerReport::Stale,
            "replaced"
        );
        assert_eq!(p.timer_fired(Timer::ConnectRetry, 2, now), TimerReport::Due);
        assert_eq!(
            p.timer_fired(Timer::ConnectRetry, 2, now),
            TimerReport::Stale,
            "already fired"
        );

        // A restart to a later deadline keeps the task; its report asks for the rest.
        let hold = Timer::Hold(crate::fsm::Direction::Outgoing);
        let secs = std::time::Duration::from_secs;
        p.arm_timer(hold, 3, idle(), now + secs(90));
        assert!(p.extend_timer(hold, now + secs(100)));
        assert!(
            !p.extend_timer(hold, now + secs(50)),
            "earlier needs a new task"
        );
        assert_eq!(
            p.timer_fired(hold, 3, now + secs(90)),
            TimerReport::Extended(secs(10))
        );
        assert_eq!(p.timer_fired(hold, 3, now + secs(100)), TimerReport::Due);
        assert!(!p.extend_timer(hold, now + secs(200)), "nothing armed");

        p.begin_connect(|_| idle());
        p.begin_connect(|_| idle());
        assert!(!p.connect_finished(1), "an older attempt");
        assert!(p.connect_finished(2));
    }

    #[tokio::test]
    async fn stale_routes_end_family_by_family_and_the_timer_with_the_last() {
        let mut p = entry();
        let idle = tokio::spawn(std::future::pending::<()>());
        p.begin_stale(9, idle, &[Family::Ipv4Unicast, Family::Ipv6Unicast]);
        assert!(p.end_stale(Family::Ipv4Unicast));
        assert!(!p.end_stale(Family::Ipv4Unicast));
        assert!(p.has_stale());
        assert!(p.end_stale(Family::Ipv6Unicast));
        assert!(!p.has_stale());
        assert!(
            !p.stale_timer_fired(9),
            "the timer went with the last family"
        );
    }

    #[test]
    fn the_max_prefix_trip_acts_once_until_reset() {
        let mut p = entry();
        assert!(p.trip_max_prefix());
        assert!(!p.trip_max_prefix());
        p.reset_max_prefix();
        assert!(p.trip_max_prefix());
    }
}
