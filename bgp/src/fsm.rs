//! The BGP finite state machine of RFC 4271 §8, sans IO.
//!
//! `Fsm::handle(event) -> Vec<Action>`: the speaker task feeds it connection, message and
//! timer events and performs the actions (connect, send, close, arm timers). Up to two
//! TCP connections exist per peer, one we opened and one the peer opened, each with its
//! own OpenSent/OpenConfirm progress; collisions are resolved by router ID when an OPEN
//! arrives while the other connection is in OpenConfirm (RFC 4271 §6.8).

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::af::Family;
use crate::packet::capability::{Capability, GracefulRestart};
use crate::packet::error::{NotificationError, cease_subcode, code, fsm_subcode, open_subcode};
use crate::packet::message::{Message, Notification, Open, RouteRefresh, Update};

/// Hold time used while waiting for the peer's OPEN (RFC 4271 suggests 4 minutes).
pub const LARGE_HOLD_TIME: Duration = Duration::from_secs(240);

/// Peer states as RFC 4271 names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    /// Not trying.
    Idle,
    /// Waiting for our outgoing TCP connection.
    Connect,
    /// Waiting for the peer to connect (or for the retry timer).
    Active,
    /// OPEN sent, waiting for theirs.
    OpenSent,
    /// OPENs exchanged, waiting for KEEPALIVE.
    OpenConfirm,
    /// Session up.
    Established,
}

/// Which of the (at most two) TCP connections an event concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// We connected to the peer.
    Outgoing,
    /// The peer connected to us.
    Incoming,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::Outgoing => 0,
            Direction::Incoming => 1,
        }
    }
    fn other(self) -> Direction {
        match self {
            Direction::Outgoing => Direction::Incoming,
            Direction::Incoming => Direction::Outgoing,
        }
    }
}

/// Timers the driver arms for the FSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// ConnectRetryTimer (also used as the idle hold after an error).
    ConnectRetry,
    /// HoldTimer of one connection.
    Hold(Direction),
    /// KeepaliveTimer of one connection.
    Keepalive(Direction),
}

/// What the FSM needs to know about the session it runs.
#[derive(Debug, Clone)]
pub struct FsmConfig {
    /// Our AS.
    pub local_as: u32,
    /// The AS the peer must have.
    pub remote_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Hold time we propose (seconds; 0 disables keepalives).
    pub hold_time: u16,
    /// Keepalive interval we use when hold time is our proposal; else a third of it.
    pub keepalive_time: Option<u16>,
    /// Retry interval for outgoing connections and idle hold after errors.
    pub connect_retry: Duration,
    /// Never connect out; wait for the peer.
    pub passive: bool,
    /// Families we offer.
    pub families: Vec<Family>,
    /// Graceful-restart capability we advertise, if any.
    pub graceful_restart: Option<GracefulRestart>,
    /// Advertise extended messages (RFC 8654).
    pub extended_messages: bool,
    /// The lowest hold time we accept from the peer, seconds; an offer below it, 0
    /// included, is refused with Unacceptable Hold Time. 0 accepts anything (even no
    /// liveness at all), as BIRD's `min hold time` and FRR's `bgp minimum-holdtime` allow.
    pub min_hold_time: u16,
}

impl FsmConfig {
    /// The OPEN we send.
    pub fn open(&self) -> Open {
        let mut capabilities: Vec<Capability> = self
            .families
            .iter()
            .map(|f| Capability::multiprotocol(*f))
            .collect();
        capabilities.push(Capability::RouteRefresh);
        capabilities.push(Capability::FourOctetAs(self.local_as));
        if let Some(gr) = &self.graceful_restart {
            capabilities.push(Capability::GracefulRestart(gr.clone()));
        }
        if self.extended_messages {
            capabilities.push(Capability::ExtendedMessage);
        }
        Open {
            my_as: u16::try_from(self.local_as)
                .unwrap_or(crate::packet::attribute::AS_TRANS as u16),
            hold_time: self.hold_time,
            router_id: self.router_id,
            capabilities,
        }
    }
}

/// What both sides agreed on, handed to the speaker when the session comes up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Negotiated {
    /// The connection that won.
    pub direction: Direction,
    /// Peer's AS.
    pub remote_as: u32,
    /// Peer's BGP identifier.
    pub remote_id: Ipv4Addr,
    /// Negotiated hold time (seconds).
    pub hold_time: u16,
    /// Keepalive interval (seconds).
    pub keepalive_time: u16,
    /// 4-octet AS numbers on the wire.
    pub four_octet_as: bool,
    /// Families both sides offered.
    pub families: Vec<Family>,
    /// Peer supports ROUTE-REFRESH.
    pub route_refresh: bool,
    /// Peer's graceful-restart capability.
    pub graceful_restart: Option<GracefulRestart>,
    /// Both sides advertised extended messages (RFC 8654).
    #[serde(default)]
    pub extended_messages: bool,
    /// All capabilities the peer sent, for status output.
    pub remote_capabilities: Vec<Capability>,
}

/// Why a session left Established or never got there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum DownReason {
    /// We sent this NOTIFICATION.
    NotificationSent {
        /// Code.
        code: u8,
        /// Subcode.
        subcode: u8,
    },
    /// The peer sent this NOTIFICATION.
    NotificationReceived {
        /// Code.
        code: u8,
        /// Subcode.
        subcode: u8,
    },
    /// The TCP connection dropped.
    ConnectionLost,
    /// Stopped by configuration.
    Stopped,
}

/// Why a stop ends a session: an operator's stop, or (max-prefix) a NOTIFICATION we had to send.
fn stop_reason(subcode: u8) -> DownReason {
    if subcode == crate::packet::error::cease_subcode::MAX_PREFIXES {
        DownReason::NotificationSent { code: 6, subcode }
    } else {
        DownReason::Stopped
    }
}

/// Inputs to the FSM, named after RFC 4271 §8.1's events.
// UPDATE is the message that matters; boxing it would add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Event {
    /// ManualStart (or AutomaticStart with passive TCP when configured so).
    Start,
    /// ManualStop, with the Cease subcode to send.
    Stop(u8),
    /// ConnectRetryTimer_Expires.
    ConnectRetryTimerExpires,
    /// HoldTimer_Expires.
    HoldTimerExpires(Direction),
    /// KeepaliveTimer_Expires.
    KeepaliveTimerExpires(Direction),
    /// SendHoldTimer_Expires (RFC 9687): the connection's writer made no progress for the
    /// send hold time.
    SendHoldTimerExpires(Direction),
    /// Tcp_CR_Acked / TcpConnectionConfirmed.
    TcpConnected(Direction),
    /// TcpConnectionFails (connect failed, or the connection closed).
    TcpFailed(Direction),
    /// A decoded message arrived.
    Message(Direction, Message),
    /// A message failed to decode; this NOTIFICATION must be sent.
    DecodeError(Direction, NotificationError),
    /// BFD declared the peer down: the established session ends now (RFC 5882 §10.2).
    BfdDown,
}

/// Outputs the driver carries out, in order.
// UPDATE is the message that matters; boxing it would add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open an outgoing TCP connection.
    Connect,
    /// Send a message on a connection.
    Send(Direction, Message),
    /// Close a connection (after flushing what was queued).
    Close(Direction),
    /// Arm (or re-arm) a timer.
    StartTimer(Timer, Duration),
    /// Cancel a timer.
    StopTimer(Timer),
    /// The session reached Established.
    Established(Box<Negotiated>),
    /// The session left Established; routes learned over it must go.
    Down(DownReason),
    /// An UPDATE to process (only in Established).
    Update(Box<Update>),
    /// A ROUTE-REFRESH to answer (only in Established).
    RouteRefresh(RouteRefresh),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Debug, Clone)]
struct Conn {
    state: ConnState,
    negotiated: Option<Negotiated>,
}

/// One peer's FSM.
#[derive(Debug)]
pub struct Fsm {
    cfg: FsmConfig,
    running: bool,
    connecting: bool,
    retry_armed: bool,
    conns: [Option<Conn>; 2],
    last_error: Option<DownReason>,
}

impl Fsm {
    /// A stopped FSM in Idle.
    pub fn new(cfg: FsmConfig) -> Self {
        Fsm {
            cfg,
            running: false,
            connecting: false,
            retry_armed: false,
            conns: [None, None],
            last_error: None,
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &FsmConfig {
        &self.cfg
    }

    /// The peer state as RFC 4271 would report it.
    pub fn state(&self) -> State {
        let best = self
            .conns
            .iter()
            .flatten()
            .map(|c| c.state)
            .max_by_key(|s| *s as u8);
        match best {
            Some(ConnState::Established) => State::Established,
            Some(ConnState::OpenConfirm) => State::OpenConfirm,
            Some(ConnState::OpenSent) => State::OpenSent,
            None if !self.running => State::Idle,
            None if self.connecting => State::Connect,
            None => State::Active,
        }
    }

    /// The connection carrying the established session, if any.
    pub fn established(&self) -> Option<&Negotiated> {
        self.conns
            .iter()
            .flatten()
            .find(|c| c.state == ConnState::Established)
            .and_then(|c| c.negotiated.as_ref())
    }

    /// Why the last session attempt or session ended.
    pub fn last_error(&self) -> Option<&DownReason> {
        self.last_error.as_ref()
    }

    /// Feeds one event; returns what to do.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start => {
                if !self.running {
                    self.running = true;
                    self.try_connect(&mut out);
                }
            }
            Event::Stop(subcode) => self.stop(subcode, &mut out),
            Event::ConnectRetryTimerExpires => {
                self.retry_armed = false;
                if self.running && self.conns.iter().all(Option::is_none) {
                    self.try_connect(&mut out);
                }
            }
            Event::HoldTimerExpires(dir) => {
                if self.conns[dir.index()].is_some() {
                    let n = NotificationError::new(code::HOLD_TIMER_EXPIRED, 0, Vec::new());
                    self.fail(dir, n, &mut out);
                }
            }
            Event::SendHoldTimerExpires(dir) => {
                if self.conns[dir.index()].is_some() {
                    let n = NotificationError::new(code::SEND_HOLD_TIMER_EXPIRED, 0, Vec::new());
                    self.fail(dir, n, &mut out);
                }
            }
            Event::KeepaliveTimerExpires(dir) => {
                if let Some(Negotiated { keepalive_time, .. }) = self.conns[dir.index()]
                    .as_ref()
                    .and_then(|c| c.negotiated.as_ref())
                {
                    let k = Duration::from_secs(u64::from(*keepalive_time));
                    out.push(Action::Send(dir, Message::Keepalive));
                    out.push(Action::StartTimer(Timer::Keepalive(dir), k));
                }
            }
            Event::TcpConnected(dir) => self.connected(dir, &mut out),
            Event::TcpFailed(dir) => {
                if dir == Direction::Outgoing {
                    self.connecting = false;
                }
                if self.drop_conn(dir, DownReason::ConnectionLost, &mut out) {
                    self.after_loss(&mut out);
                } else if dir == Direction::Outgoing
                    && self.running
                    && self.conns.iter().all(Option::is_none)
                {
                    self.arm_retry(&mut out);
                }
            }
            Event::Message(dir, msg) => self.message(dir, msg, &mut out),
            Event::DecodeError(dir, n) => {
                if self.conns[dir.index()].is_some() {
                    self.fail(dir, n, &mut out);
                }
            }
            Event::BfdDown => {
                for dir in [Direction::Outgoing, Direction::Incoming] {
                    if self.conns[dir.index()]
                        .as_ref()
                        .is_some_and(|c| c.state == ConnState::Established)
                    {
                        let n = NotificationError::cease(cease_subcode::BFD_DOWN);
                        self.fail(dir, n, &mut out);
                    }
                }
            }
        }
        out
    }

    fn try_connect(&mut self, out: &mut Vec<Action>) {
        if !self.cfg.passive && !self.connecting && self.conns[0].is_none() {
            self.connecting = true;
            out.push(Action::Connect);
        }
        if !self.cfg.passive {
            self.arm_retry(out);
        }
    }

    fn arm_retry(&mut self, out: &mut Vec<Action>) {
        self.retry_armed = true;
        out.push(Action::StartTimer(
            Timer::ConnectRetry,
            self.cfg.connect_retry,
        ));
    }

    fn stop(&mut self, subcode: u8, out: &mut Vec<Action>) {
        self.running = false;
        self.connecting = false;
        self.retry_armed = false;
        out.push(Action::StopTimer(Timer::ConnectRetry));
        for dir in [Direction::Outgoing, Direction::Incoming] {
            if self.conns[dir.index()].is_some() {
                out.push(Action::Send(
                    dir,
                    Message::Notification(NotificationError::cease(subcode).into()),
                ));
                self.drop_conn(dir, stop_reason(subcode), out);
            }
        }
        self.last_error = Some(stop_reason(subcode));
    }

    /// Removes a connection; returns whether it was the established one.
    fn drop_conn(&mut self, dir: Direction, reason: DownReason, out: &mut Vec<Action>) -> bool {
        let Some(conn) = self.conns[dir.index()].take() else {
            return false;
        };
        out.push(Action::StopTimer(Timer::Hold(dir)));
        out.push(Action::StopTimer(Timer::Keepalive(dir)));
        out.push(Action::Close(dir));
        if conn.state == ConnState::Established {
            out.push(Action::Down(reason.clone()));
        }
        self.last_error = Some(reason);
        true
    }

    /// After losing a connection: back to Active with the retry timer, if nothing is left.
    fn after_loss(&mut self, out: &mut Vec<Action>) {
        if self.running && self.conns.iter().all(Option::is_none) && !self.retry_armed {
            self.arm_retry(out);
        }
    }

    /// Sends a NOTIFICATION, closes the connection, and waits before trying again.
    fn fail(&mut self, dir: Direction, n: NotificationError, out: &mut Vec<Action>) {
        let reason = DownReason::NotificationSent {
            code: n.code,
            subcode: n.subcode,
        };
        out.push(Action::Send(dir, Message::Notification(n.into())));
        self.drop_conn(dir, reason, out);
        self.after_loss(out);
    }

    fn connected(&mut self, dir: Direction, out: &mut Vec<Action>) {
        if dir == Direction::Outgoing {
            self.connecting = false;
        }
        let busy = self.conns[dir.index()].is_some()
            || self.conns[dir.other().index()]
                .as_ref()
                .is_some_and(|c| c.state == ConnState::Established);
        if !self.running || busy {
            let sub = if self.running {
                cease_subcode::CONNECTION_COLLISION_RESOLUTION
            } else {
                cease_subcode::CONNECTION_REJECTED
            };
            out.push(Action::Send(
                dir,
                Message::Notification(NotificationError::cease(sub).into()),
            ));
            out.push(Action::Close(dir));
            return;
        }
        self.conns[dir.index()] = Some(Conn {
            state: ConnState::OpenSent,
            negotiated: None,
        });
        out.push(Action::Send(dir, Message::Open(self.cfg.open())));
        out.push(Action::StartTimer(Timer::Hold(dir), LARGE_HOLD_TIME));
    }

    fn message(&mut self, dir: Direction, msg: Message, out: &mut Vec<Action>) {
        let Some(conn) = self.conns[dir.index()].as_ref() else {
            return;
        };
        let state = conn.state;
        let unexpected = |state| {
            let sub = match state {
                ConnState::OpenSent => fsm_subcode::UNEXPECTED_IN_OPEN_SENT,
                ConnState::OpenConfirm => fsm_subcode::UNEXPECTED_IN_OPEN_CONFIRM,
                ConnState::Established => fsm_subcode::UNEXPECTED_IN_ESTABLISHED,
            };
            NotificationError::new(code::FSM, sub, Vec::new())
        };
        match (state, msg) {
            (_, Message::Notification(n)) => self.notified(dir, n, out),
            (ConnState::OpenSent, Message::Open(open)) => self.open_received(dir, open, out),
            (ConnState::OpenConfirm, Message::Keepalive) => {
                let conn = self.conns[dir.index()].as_mut().expect("checked above");
                conn.state = ConnState::Established;
                let neg = conn
                    .negotiated
                    .clone()
                    .expect("set when the OPEN was accepted");
                self.last_error = None;
                self.retry_armed = false;
                out.push(Action::StopTimer(Timer::ConnectRetry));
                self.restart_hold(dir, &neg, out);
                out.push(Action::Established(Box::new(neg)));
            }
            (ConnState::Established, Message::Keepalive) => self.restart_hold_of(dir, out),
            (ConnState::Established, Message::Update(u)) => {
                self.restart_hold_of(dir, out);
                out.push(Action::Update(Box::new(u)));
            }
            (ConnState::Established, Message::RouteRefresh(r)) => {
                self.restart_hold_of(dir, out);
                out.push(Action::RouteRefresh(r));
            }
            (state, _) => self.fail(dir, unexpected(state), out),
        }
    }

    fn notified(&mut self, dir: Direction, n: Notification, out: &mut Vec<Action>) {
        let reason = DownReason::NotificationReceived {
            code: n.code,
            subcode: n.subcode,
        };
        self.drop_conn(dir, reason, out);
        self.after_loss(out);
    }

    fn restart_hold_of(&self, dir: Direction, out: &mut Vec<Action>) {
        if let Some(neg) = self.conns[dir.index()]
            .as_ref()
            .and_then(|c| c.negotiated.as_ref())
        {
            self.restart_hold(dir, neg, out);
        }
    }

    fn restart_hold(&self, dir: Direction, neg: &Negotiated, out: &mut Vec<Action>) {
        if neg.hold_time > 0 {
            out.push(Action::StartTimer(
                Timer::Hold(dir),
                Duration::from_secs(u64::from(neg.hold_time)),
            ));
        }
    }

    fn open_received(&mut self, dir: Direction, open: Open, out: &mut Vec<Action>) {
        let remote_as = open.asn();
        if open.hold_time < self.cfg.min_hold_time {
            // RFC 4271 §6.2: a hold time we cannot accept. Without this a peer offering 0
            // would switch off every liveness check on our side.
            return self.fail(
                dir,
                NotificationError::open(open_subcode::UNACCEPTABLE_HOLD_TIME),
                out,
            );
        }
        if remote_as != self.cfg.remote_as {
            return self.fail(dir, NotificationError::open(open_subcode::BAD_PEER_AS), out);
        }
        if remote_as == self.cfg.local_as && open.router_id == self.cfg.router_id {
            return self.fail(
                dir,
                NotificationError::open(open_subcode::BAD_BGP_IDENTIFIER),
                out,
            );
        }
        // Collision detection (RFC 4271 §6.8): the connection opened by the side with the
        // higher BGP identifier survives.
        let other = dir.other();
        if let Some(oc) = &self.conns[other.index()] {
            if oc.state == ConnState::Established {
                let n = NotificationError::cease(cease_subcode::CONNECTION_COLLISION_RESOLUTION);
                return self.fail(dir, n, out);
            }
            if oc.state == ConnState::OpenConfirm {
                let local_wins = u32::from(self.cfg.router_id) > u32::from(open.router_id);
                let loser = if local_wins {
                    Direction::Incoming
                } else {
                    Direction::Outgoing
                };
                let n = NotificationError::cease(cease_subcode::CONNECTION_COLLISION_RESOLUTION);
                out.push(Action::Send(loser, Message::Notification(n.clone().into())));
                self.drop_conn(
                    loser,
                    DownReason::NotificationSent {
                        code: n.code,
                        subcode: n.subcode,
                    },
                    out,
                );
                if loser == dir {
                    return;
                }
            }
        }
        let neg = self.negotiate(dir, open);
        out.push(Action::Send(dir, Message::Keepalive));
        if neg.hold_time > 0 {
            out.push(Action::StartTimer(
                Timer::Hold(dir),
                Duration::from_secs(u64::from(neg.hold_time)),
            ));
            out.push(Action::StartTimer(
                Timer::Keepalive(dir),
                Duration::from_secs(u64::from(neg.keepalive_time)),
            ));
        } else {
            out.push(Action::StopTimer(Timer::Hold(dir)));
        }
        let conn = self.conns[dir.index()]
            .as_mut()
            .expect("connection present");
        conn.state = ConnState::OpenConfirm;
        conn.negotiated = Some(neg);
    }

    fn negotiate(&self, dir: Direction, open: Open) -> Negotiated {
        let hold_time = open.hold_time.min(self.cfg.hold_time);
        let keepalive_time = match self.cfg.keepalive_time {
            Some(k) if hold_time == self.cfg.hold_time => k.min(hold_time / 3).max(1),
            _ => (hold_time / 3).max(1),
        };
        let theirs: Vec<Family> = open
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol { afi, safi } => Family::from_afi_safi(*afi, *safi),
                _ => None,
            })
            .collect();
        let any_mp = open
            .capabilities
            .iter()
            .any(|c| matches!(c, Capability::Multiprotocol { .. }));
        // RFC 4760: a peer that sends no multiprotocol capability speaks IPv4 unicast only.
        let families = self
            .cfg
            .families
            .iter()
            .copied()
            .filter(|f| {
                if any_mp {
                    theirs.contains(f)
                } else {
                    *f == Family::Ipv4Unicast
                }
            })
            .collect();
        Negotiated {
            direction: dir,
            remote_as: open.asn(),
            remote_id: open.router_id,
            hold_time,
            keepalive_time,
            four_octet_as: open
                .capabilities
                .iter()
                .any(|c| matches!(c, Capability::FourOctetAs(_))),
            families,
            route_refresh: open.capabilities.iter().any(|c| {
                matches!(
                    c,
                    Capability::RouteRefresh | Capability::EnhancedRouteRefresh
                )
            }),
            graceful_restart: open.capabilities.iter().find_map(|c| match c {
                Capability::GracefulRestart(gr) => Some(gr.clone()),
                _ => None,
            }),
            extended_messages: self.cfg.extended_messages
                && open
                    .capabilities
                    .iter()
                    .any(|c| matches!(c, Capability::ExtendedMessage)),
            remote_capabilities: open.capabilities,
        }
    }
}

#[cfg(test)]
#[path = "fsm_tests.rs"]
mod tests;
