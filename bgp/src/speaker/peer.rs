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
use crate::status::MessageCounts;

/// An established session.
#[derive(Debug)]
pub(crate) struct Session {
    pub neg: Negotiated,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub since: SystemTime,
}

/// Everything about one peer.
pub(crate) struct PeerEntry {
    pub id: PeerId,
    pub cfg: PeerConfig,
    pub fsm: Fsm,
    pub ebgp: bool,
    pub conns: [Option<ConnIo>; 2],
    pub connect_attempt: u64,
    pub connect_task: Option<OwnedTask>,
    pub timers: HashMap<Timer, (u64, OwnedTask)>,
    pub session: Option<Session>,
    /// The update group this peer's session is in (its Adj-RIB-Out is the group's).
    pub group: Option<super::groups::GroupId>,
    pub accepted: [usize; 2],
    pub filtered: Filtered,
    pub counts: MessageCounts,
    pub established_transitions: u64,
    pub last_state: State,
    pub state_since: Instant,
    pub span: tracing::Span,
    /// Graceful restart: the timer that sweeps this peer's stale routes (serial, task).
    pub stale_timer: Option<(u64, OwnedTask)>,
    /// Families whose routes from this peer are stale, awaiting End-of-RIB.
    pub stale_families: HashSet<Family>,
    /// Families for which the current session sent End-of-RIB.
    pub eor_received: HashSet<Family>,
    /// The max-prefix limit was exceeded (warning given, or session torn down and waiting).
    pub max_prefix_tripped: bool,
    /// The BFD session's last state, when BFD is on for this peer.
    pub bfd_state: Option<crate::bfd::BfdState>,
    /// Prefixes this member of an update group still has to be told about: set while it is
    /// paced (its write queue went over budget, it is receiving its first table, or it asked
    /// for a ROUTE-REFRESH). Sent from the group's current table as its queue drains.
    pub backlog: Option<Backlog>,
    /// Routes withheld from this peer because their attributes cannot fit in one UPDATE.
    pub too_large: u64,
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
    pub v4: HashSet<ipnet::Ipv4Net>,
    pub v6: HashSet<ipnet::Ipv6Net>,
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
            local_as: speaker.as_number,
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
            bfd_state,
            backlog: None,
            too_large: 0,
        }
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

    /// Cancels every timer and pending connect (dropping their handles stops them).
    pub fn cancel_tasks(&mut self) {
        self.timers.clear();
        self.connect_task = None;
    }
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
