//! One BFD session, sans-IO (RFC 5880 §6.8, asynchronous mode, no Echo, no Demand): packets
//! and the clock go in, packets to send and state changes come out. The task that owns the
//! sockets only moves bytes and time.
//!
//! While the session is not Up it transmits at most once a second (§6.8.3); on reaching Up
//! it switches to the configured intervals with a Poll Sequence, so both ends agree on the
//! detection time before it shrinks.

use std::time::{Duration, Instant};

use super::BfdConfig;
use super::packet::{BfdState, ControlPacket, diag};

/// The slowest a session transmits while not Up.
const SLOW_TX: Duration = Duration::from_secs(1);

/// What the session asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this packet to the peer.
    Send(ControlPacket),
    /// The session changed state (with the diagnostic that explains a Down).
    StateChanged {
        /// Before.
        from: BfdState,
        /// After.
        to: BfdState,
        /// The local diagnostic.
        diag: u8,
        /// The peer's state as last heard: AdminDown means it stopped BFD on purpose, which
        /// RFC 5882 §3.2 says must not take the client session down.
        remote: BfdState,
    },
}

/// One session's variables (RFC 5880 §6.8.1 names in comments).
#[derive(Debug, Clone)]
pub struct Session {
    cfg: BfdConfig,
    state: BfdState,        // bfd.SessionState
    remote_state: BfdState, // bfd.RemoteSessionState
    local_discr: u32,       // bfd.LocalDiscr
    remote_discr: u32,      // bfd.RemoteDiscr
    local_diag: u8,         // bfd.LocalDiag
    remote_min_rx: Duration,
    remote_desired_tx: Duration,
    remote_detect_mult: u8,
    /// A Poll Sequence is running (the P bit goes on every packet until a Final arrives).
    polling: bool,
    last_rx: Option<Instant>,
    next_tx: Instant,
    jitter: u64,
}

fn us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl Session {
    /// A Down session that starts transmitting at `now`; `local_discr` must be unique and
    /// non-zero, `seed` feeds the transmit jitter.
    pub fn new(cfg: BfdConfig, local_discr: u32, seed: u64, now: Instant) -> Session {
        Session {
            cfg,
            state: BfdState::Down,
            remote_state: BfdState::Down,
            local_discr,
            remote_discr: 0,
            local_diag: diag::NONE,
            // §6.8.1: initialised to 1 µs so we transmit until told otherwise.
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_detect_mult: 0,
            polling: false,
            last_rx: None,
            next_tx: now,
            jitter: seed | 1,
        }
    }

    /// The current state.
    pub fn state(&self) -> BfdState {
        self.state
    }

    /// Our discriminator (packets for us carry it as Your Discriminator).
    pub fn local_discriminator(&self) -> u32 {
        self.local_discr
    }

    /// The peer's discriminator, 0 until heard.
    pub fn remote_discriminator(&self) -> u32 {
        self.remote_discr
    }

    /// The local diagnostic (why the session last went down).
    pub fn diagnostic(&self) -> u8 {
        self.local_diag
    }

    /// bfd.DesiredMinTxInterval as advertised now.
    fn desired_tx(&self) -> Duration {
        let configured = Duration::from_millis(u64::from(self.cfg.min_tx_ms));
        if self.state == BfdState::Up {
            configured
        } else {
            configured.max(SLOW_TX)
        }
    }

    fn required_rx(&self) -> Duration {
        Duration::from_millis(u64::from(self.cfg.min_rx_ms))
    }

    /// How long without a packet before the peer is declared down (§6.8.4).
    pub fn detection_time(&self) -> Duration {
        self.required_rx().max(self.remote_desired_tx) * u32::from(self.remote_detect_mult)
    }

    /// The interval between our packets: the slower of what we want and what the peer can
    /// take, less 0–25 % jitter (0–10 % more with a multiplier of 1), §6.8.7.
    fn tx_interval(&mut self) -> Duration {
        let base = self.desired_tx().max(self.remote_min_rx);
        // xorshift64: cheap, deterministic per seed, plenty for jitter.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let (lo, span) = if self.cfg.multiplier == 1 {
            (75, 15)
        } else {
            (75, 25)
        };
        let pct = lo + self.jitter % (span + 1);
        base * u32::try_from(pct).unwrap_or(100) / 100
    }

    fn packet(&self, final_: bool) -> ControlPacket {
        ControlPacket {
            diag: self.local_diag,
            state: self.state,
            poll: self.polling && !final_,
            final_,
            detect_mult: self.cfg.multiplier,
            my_discriminator: self.local_discr,
            your_discriminator: self.remote_discr,
            desired_min_tx_us: us(self.desired_tx()),
            required_min_rx_us: us(self.required_rx()),
        }
    }

    fn set_state(&mut self, to: BfdState, diag: u8, out: &mut Vec<Output>) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        self.local_diag = diag;
        // Up moves to the configured (faster) rates, Down back to one a second: either way
        // the peer must hear about it through a Poll Sequence before relying on it.
        self.polling = to == BfdState::Up;
        out.push(Output::StateChanged {
            from,
            to,
            diag,
            remote: self.remote_state,
        });
    }

    /// Takes a packet that decoded cleanly and was addressed to this session (§6.8.6).
    pub fn receive(&mut self, p: &ControlPacket, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        self.remote_discr = p.my_discriminator;
        self.remote_state = p.state;
        self.remote_desired_tx = Duration::from_micros(u64::from(p.desired_min_tx_us));
        self.remote_detect_mult = p.detect_mult;
        let min_rx = Duration::from_micros(u64::from(p.required_min_rx_us));
        if min_rx > self.remote_min_rx && self.next_tx > now {
            // The peer slowed down: do not send faster than it now accepts.
            self.next_tx = self.next_tx.max(now + min_rx.min(SLOW_TX));
        }
        self.remote_min_rx = min_rx;
        if p.final_ {
            self.polling = false;
        }
        self.last_rx = Some(now);
        if self.state == BfdState::AdminDown {
            return out;
        }
        match (self.state, p.state) {
            (BfdState::Init | BfdState::Up, BfdState::AdminDown) => {
                self.set_state(BfdState::Down, diag::NEIGHBOR_DOWN, &mut out)
            }
            (BfdState::Down, BfdState::Down) => {
                self.set_state(BfdState::Init, diag::NONE, &mut out)
            }
            (BfdState::Down, BfdState::Init) => self.set_state(BfdState::Up, diag::NONE, &mut out),
            (BfdState::Init, BfdState::Init | BfdState::Up) => {
                self.set_state(BfdState::Up, diag::NONE, &mut out)
            }
            (BfdState::Up, BfdState::Down) => {
                self.set_state(BfdState::Down, diag::NEIGHBOR_DOWN, &mut out)
            }
            _ => {}
        }
        if p.poll {
            // Answer a Poll at once, with our current parameters (§6.8.6).
            out.push(Output::Send(self.packet(true)));
        }
        if matches!(out.first(), Some(Output::StateChanged { .. })) {
            // A state change is news: tell the peer now rather than at the next interval.
            out.push(Output::Send(self.packet(false)));
            let iv = self.tx_interval();
            self.next_tx = now + iv;
        }
        out
    }

    /// Advances the clock: detection-time expiry and periodic transmission.
    pub fn poll(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        if matches!(self.state, BfdState::Init | BfdState::Up)
            && let Some(last) = self.last_rx
            && now >= last + self.detection_time()
        {
            self.set_state(BfdState::Down, diag::DETECTION_TIME_EXPIRED, &mut out);
            // §6.8.1: the remote discriminator is forgotten when the detection time passes.
            self.remote_discr = 0;
            self.remote_min_rx = Duration::from_micros(1);
        }
        let peer_wants_packets = !self.remote_min_rx.is_zero();
        if now >= self.next_tx && self.state != BfdState::AdminDown && peer_wants_packets {
            out.push(Output::Send(self.packet(false)));
            let iv = self.tx_interval();
            self.next_tx = now + iv;
        }
        out
    }

    /// The next instant [`Session::poll`] has something to do.
    pub fn next_deadline(&self) -> Instant {
        match (self.state, self.last_rx) {
            (BfdState::Init | BfdState::Up, Some(last)) => {
                self.next_tx.min(last + self.detection_time())
            }
            _ => self.next_tx,
        }
    }

    /// Takes the session administratively down (the peer is being removed): one last packet
    /// tells the peer, so it does not mistake this for a failure.
    pub fn admin_down(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        self.set_state(BfdState::AdminDown, diag::ADMIN_DOWN, &mut out);
        self.polling = false;
        out.push(Output::Send(self.packet(false)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ms: u32) -> BfdConfig {
        BfdConfig {
            min_tx_ms: ms,
            min_rx_ms: ms,
            multiplier: 3,
        }
    }

    fn sent(out: &[Output]) -> Vec<ControlPacket> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    fn changes(out: &[Output]) -> Vec<BfdState> {
        out.iter()
            .filter_map(|o| match o {
                Output::StateChanged { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }

    /// Runs two sessions against each other on a virtual clock, delivering every packet
    /// unless `link_up` says the link is down at that moment.
    fn run(
        a: &mut Session,
        b: &mut Session,
        start: Instant,
        until: Duration,
        link_up: impl Fn(Duration) -> bool,
    ) -> Vec<(Duration, char, BfdState)> {
        let mut log = Vec::new();
        let mut t = Duration::ZERO;
        let step = Duration::from_millis(5);
        while t <= until {
            let now = start + t;
            let (oa, ob) = (a.poll(now), b.poll(now));
            changes(&oa).into_iter().for_each(|s| log.push((t, 'a', s)));
            changes(&ob).into_iter().for_each(|s| log.push((t, 'b', s)));
            let mut to_b = sent(&oa);
            let mut to_a = sent(&ob);
            // Deliver (and deliver answers) until quiet.
            while !to_a.is_empty() || !to_b.is_empty() {
                let (mut next_a, mut next_b) = (Vec::new(), Vec::new());
                for p in to_b.drain(..) {
                    if link_up(t) {
                        let o = b.receive(&p, now);
                        changes(&o).into_iter().for_each(|s| log.push((t, 'b', s)));
                        next_a.extend(sent(&o));
                    }
                }
                for p in to_a.drain(..) {
                    if link_up(t) {
                        let o = a.receive(&p, now);
                        changes(&o).into_iter().for_each(|s| log.push((t, 'a', s)));
                        next_b.extend(sent(&o));
                    }
                }
                to_a = next_a;
                to_b = next_b;
            }
            t += step;
        }
        log
    }

    #[test]
    fn three_way_handshake_then_fast_rates_after_a_poll() {
        let start = Instant::now();
        let mut a = Session::new(cfg(100), 11, 1, start);
        let mut b = Session::new(cfg(100), 22, 2, start);
        let log = run(&mut a, &mut b, start, Duration::from_secs(3), |_| true);
        assert_eq!(a.state(), BfdState::Up, "{log:?}");
        assert_eq!(b.state(), BfdState::Up, "{log:?}");
        assert_eq!(a.remote_discriminator(), 22);
        assert_eq!(b.remote_discriminator(), 11);
        // Up within about one slow interval, and the Poll Sequence is over.
        assert!(
            log.iter().all(|(t, _, _)| *t < Duration::from_millis(1100)),
            "{log:?}"
        );
        assert!(!a.polling && !b.polling);
        assert_eq!(a.packet(false).desired_min_tx_us, 100_000);
        assert_eq!(a.detection_time(), Duration::from_millis(300));
    }

    #[test]
    fn silence_brings_the_session_down_within_the_detection_time() {
        let start = Instant::now();
        let mut a = Session::new(cfg(100), 11, 1, start);
        let mut b = Session::new(cfg(100), 22, 2, start);
        let cut = Duration::from_secs(3);
        let log = run(&mut a, &mut b, start, Duration::from_secs(5), |t| t < cut);
        let down: Vec<_> = log
            .iter()
            .filter(|(t, _, s)| *t >= cut && *s == BfdState::Down)
            .collect();
        assert_eq!(down.len(), 2, "both ends notice: {log:?}");
        for (t, who, _) in down {
            let after = *t - cut;
            assert!(
                after <= Duration::from_millis(310),
                "{who} noticed {after:?} after the cut (3 × 100 ms)"
            );
        }
        assert_eq!(a.diagnostic(), diag::DETECTION_TIME_EXPIRED);
        assert_eq!(a.remote_discriminator(), 0);
        // Back down to one packet a second while Down.
        assert_eq!(a.packet(false).desired_min_tx_us, 1_000_000);
    }

    #[test]
    fn the_session_comes_back_when_the_link_does() {
        let start = Instant::now();
        let mut a = Session::new(cfg(100), 11, 1, start);
        let mut b = Session::new(cfg(100), 22, 2, start);
        let down = Duration::from_secs(2)..Duration::from_secs(4);
        run(&mut a, &mut b, start, Duration::from_secs(7), |t| {
            !down.contains(&t)
        });
        assert_eq!((a.state(), b.state()), (BfdState::Up, BfdState::Up));
    }

    #[test]
    fn admin_down_is_not_a_failure_for_the_peer() {
        let start = Instant::now();
        let mut a = Session::new(cfg(100), 11, 1, start);
        let mut b = Session::new(cfg(100), 22, 2, start);
        run(&mut a, &mut b, start, Duration::from_secs(2), |_| true);
        let last = sent(&a.admin_down());
        assert_eq!(last[0].state, BfdState::AdminDown);
        let o = b.receive(&last[0], start + Duration::from_secs(2));
        assert_eq!(changes(&o), [BfdState::Down]);
        assert_eq!(b.diagnostic(), diag::NEIGHBOR_DOWN);
        // An AdminDown session sends nothing more.
        assert!(sent(&a.poll(start + Duration::from_secs(9))).is_empty());
    }

    #[test]
    fn a_poll_gets_a_final_at_once() {
        let start = Instant::now();
        let mut b = Session::new(cfg(300), 22, 2, start);
        let poll = ControlPacket {
            diag: 0,
            state: BfdState::Down,
            poll: true,
            final_: false,
            detect_mult: 3,
            my_discriminator: 11,
            your_discriminator: 0,
            desired_min_tx_us: 1_000_000,
            required_min_rx_us: 300_000,
        };
        let out = sent(&b.receive(&poll, start));
        assert!(out.iter().any(|p| p.final_ && !p.poll), "{out:?}");
    }

    #[test]
    fn jitter_keeps_intervals_between_75_and_100_percent() {
        let start = Instant::now();
        let mut s = Session::new(cfg(100), 1, 42, start);
        for _ in 0..1000 {
            let iv = s.tx_interval();
            assert!(
                iv >= Duration::from_millis(750) && iv <= Duration::from_secs(1),
                "{iv:?}"
            );
        }
    }
}
