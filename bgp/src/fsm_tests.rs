use super::*;
use Direction::{Incoming, Outgoing};

fn cfg(passive: bool) -> FsmConfig {
    FsmConfig {
        local_as: 65001,
        remote_as: 65002,
        router_id: "10.0.0.1".parse().unwrap(),
        hold_time: 90,
        keepalive_time: None,
        connect_retry: Duration::from_secs(5),
        passive,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: None,
        extended_messages: true,
        min_hold_time: 3,
    }
}

fn peer_open(asn: u32, id: &str, hold: u16) -> Message {
    Message::Open(Open {
        my_as: asn as u16,
        hold_time: hold,
        router_id: id.parse().unwrap(),
        capabilities: vec![
            Capability::multiprotocol(Family::Ipv4Unicast),
            Capability::FourOctetAs(asn),
            Capability::RouteRefresh,
        ],
    })
}

fn sends(actions: &[Action], dir: Direction) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(d, m) if *d == dir => Some(m),
            _ => None,
        })
        .collect()
}

fn notification_of(actions: &[Action], dir: Direction) -> Option<(u8, u8)> {
    sends(actions, dir).into_iter().find_map(|m| match m {
        Message::Notification(n) => Some((n.code, n.subcode)),
        _ => None,
    })
}

/// An active FSM that connected and got `open` from the peer; the actions of that OPEN.
fn open_from_peer(c: FsmConfig, open: Message) -> (Fsm, Vec<Action>) {
    let mut fsm = Fsm::new(c);
    fsm.handle(Event::Start);
    fsm.handle(Event::TcpConnected(Outgoing));
    let a = fsm.handle(Event::Message(Outgoing, open));
    (fsm, a)
}

/// Drives an active FSM to Established over the outgoing connection.
fn established(fsm: &mut Fsm) -> Vec<Action> {
    fsm.handle(Event::Start);
    fsm.handle(Event::TcpConnected(Outgoing));
    fsm.handle(Event::Message(Outgoing, peer_open(65002, "10.0.0.2", 30)));
    fsm.handle(Event::Message(Outgoing, Message::Keepalive))
}

#[test]
fn active_peer_connects_and_retries() {
    let mut fsm = Fsm::new(cfg(false));
    assert_eq!(fsm.state(), State::Idle);
    let a = fsm.handle(Event::Start);
    assert_eq!(
        a,
        vec![
            Action::Connect,
            Action::StartTimer(Timer::ConnectRetry, Duration::from_secs(5))
        ]
    );
    assert_eq!(fsm.state(), State::Connect);
    let a = fsm.handle(Event::TcpFailed(Outgoing));
    assert_eq!(
        a,
        vec![Action::StartTimer(
            Timer::ConnectRetry,
            Duration::from_secs(5)
        )]
    );
    assert_eq!(fsm.state(), State::Active);
    let a = fsm.handle(Event::ConnectRetryTimerExpires);
    assert_eq!(a[0], Action::Connect);
}

#[test]
fn passive_peer_never_connects() {
    let mut fsm = Fsm::new(cfg(true));
    assert!(fsm.handle(Event::Start).is_empty());
    assert_eq!(fsm.state(), State::Active);
    assert!(fsm.handle(Event::ConnectRetryTimerExpires).is_empty());
    let a = fsm.handle(Event::TcpConnected(Incoming));
    assert!(matches!(sends(&a, Incoming)[..], [Message::Open(_)]));
    assert_eq!(fsm.state(), State::OpenSent);
}

#[test]
fn open_exchange_reaches_established_with_negotiated_values() {
    let mut fsm = Fsm::new(cfg(false));
    fsm.handle(Event::Start);
    let a = fsm.handle(Event::TcpConnected(Outgoing));
    let Message::Open(ours) = sends(&a, Outgoing)[0] else {
        panic!("expected OPEN")
    };
    assert_eq!((ours.my_as, ours.hold_time, ours.asn()), (65001, 90, 65001));
    assert!(a.contains(&Action::StartTimer(Timer::Hold(Outgoing), LARGE_HOLD_TIME)));
    assert_eq!(fsm.state(), State::OpenSent);

    let a = fsm.handle(Event::Message(Outgoing, peer_open(65002, "10.0.0.2", 30)));
    assert_eq!(sends(&a, Outgoing), vec![&Message::Keepalive]);
    assert!(a.contains(&Action::StartTimer(
        Timer::Hold(Outgoing),
        Duration::from_secs(30)
    )));
    assert!(a.contains(&Action::StartTimer(
        Timer::Keepalive(Outgoing),
        Duration::from_secs(10)
    )));
    assert_eq!(fsm.state(), State::OpenConfirm);

    let a = fsm.handle(Event::Message(Outgoing, Message::Keepalive));
    let neg = a
        .iter()
        .find_map(|x| match x {
            Action::Established(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(neg.families, vec![Family::Ipv4Unicast]);
    assert!(neg.four_octet_as && neg.route_refresh);
    assert_eq!((neg.hold_time, neg.remote_as), (30, 65002));
    assert!(a.contains(&Action::StopTimer(Timer::ConnectRetry)));
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn keepalive_timer_sends_and_rearms() {
    let mut fsm = Fsm::new(cfg(false));
    established(&mut fsm);
    let a = fsm.handle(Event::KeepaliveTimerExpires(Outgoing));
    assert_eq!(
        a,
        vec![
            Action::Send(Outgoing, Message::Keepalive),
            Action::StartTimer(Timer::Keepalive(Outgoing), Duration::from_secs(10))
        ]
    );
}

#[test]
fn update_restarts_hold_timer_and_is_delivered() {
    let mut fsm = Fsm::new(cfg(false));
    established(&mut fsm);
    let a = fsm.handle(Event::Message(Outgoing, Message::Update(Update::default())));
    assert_eq!(
        a[0],
        Action::StartTimer(Timer::Hold(Outgoing), Duration::from_secs(30))
    );
    assert!(matches!(a[1], Action::Update(_)));
}

#[test]
fn hold_timer_expiry_sends_code_4_and_goes_down() {
    let mut fsm = Fsm::new(cfg(false));
    established(&mut fsm);
    let a = fsm.handle(Event::HoldTimerExpires(Outgoing));
    assert_eq!(notification_of(&a, Outgoing), Some((4, 0)));
    assert!(a.contains(&Action::Close(Outgoing)));
    assert!(a.contains(&Action::Down(DownReason::NotificationSent {
        code: 4,
        subcode: 0
    })));
    assert!(a.contains(&Action::StartTimer(
        Timer::ConnectRetry,
        Duration::from_secs(5)
    )));
    assert_eq!(fsm.state(), State::Active);
}

#[test]
fn wrong_peer_as_is_refused_with_bad_peer_as() {
    let mut fsm = Fsm::new(cfg(false));
    fsm.handle(Event::Start);
    fsm.handle(Event::TcpConnected(Outgoing));
    let a = fsm.handle(Event::Message(Outgoing, peer_open(65009, "10.0.0.2", 90)));
    assert_eq!(notification_of(&a, Outgoing), Some((2, 2)));
    assert!(
        !a.iter().any(|x| matches!(x, Action::Down(_))),
        "never established, so no Down"
    );
}

#[test]
fn ibgp_peer_with_our_router_id_is_refused() {
    let mut c = cfg(false);
    c.remote_as = 65001;
    let mut fsm = Fsm::new(c);
    fsm.handle(Event::Start);
    fsm.handle(Event::TcpConnected(Outgoing));
    let a = fsm.handle(Event::Message(Outgoing, peer_open(65001, "10.0.0.1", 90)));
    assert_eq!(notification_of(&a, Outgoing), Some((2, 3)));
}

#[test]
fn unexpected_messages_get_rfc6608_fsm_errors() {
    let mut fsm = Fsm::new(cfg(false));
    fsm.handle(Event::Start);
    fsm.handle(Event::TcpConnected(Outgoing));
    let a = fsm.handle(Event::Message(Outgoing, Message::Keepalive));
    assert_eq!(notification_of(&a, Outgoing), Some((5, 1)));

    let mut fsm = Fsm::new(cfg(false));
    fsm.handle(Event::Start);
    fsm.handle(Event::TcpConnected(Outgoing));
    fsm.handle(Event::Message(Outgoing, peer_open(65002, "10.0.0.2", 90)));
    let a = fsm.handle(Event::Message(Outgoing, Message::Update(Update::default())));
    assert_eq!(notification_of(&a, Outgoing), Some((5, 2)));

    let mut fsm = Fsm::new(cfg(false));
    established(&mut fsm);
    let a = fsm.handle(Event::Message(Outgoing, peer_open(65002, "10.0.0.2", 90)));
    assert_eq!(notification_of(&a, Outgoing), Some((5, 3)));
}

#[test]
fn decode_error_sends_the_given_notification() {
    let mut fsm = Fsm::new(cfg(false));
    established(&mut fsm);
    let a = fsm.handle(Event::DecodeError(
        Outgoing,
        NotificationError::update(1, vec![]),
    ));
    assert_eq!(notification_of(&a, Outgoing), Some((3, 1)));
    assert!(a.iter().any(|x| matches!(x, Action::Down(_))));
}

#[test]
fn received_notification_takes_session_down() {
    let mut fsm = Fsm::new(cfg(false));
    established(&mut fsm);
    let n = Notification {
        code: 6,
        subcode: 2,
        data: vec![],
    };
    let a = fsm.handle(Event::Message(Outgoing, Message::Notification(n)));
    assert!(a.contains(&Action::Down(DownReason::NotificationReceived {
        code: 6,
        subcode: 2
    })));
    assert!(
        sends(&a, Outgoing).is_empty(),
        "never answer a NOTIFICATION with one"
    );
    assert_eq!(
        fsm.last_error(),
        Some(&DownReason::NotificationReceived {
            code: 6,
            subcode: 2
        })
    );
}

#[test]
fn collision_keeps_connection_of_higher_router_id() {
    // Our ID 10.0.0.1 < peer's 10.0.0.2: the peer's connection (Incoming) wins.
    let mut fsm = Fsm::new(cfg(false));
    fsm.handle(Event::Start);
    fsm.handle(Event::TcpConnected(Outgoing));
    fsm.handle(Event::TcpConnected(Incoming));
    fsm.handle(Event::Message(Outgoing, peer_open(65002, "10.0.0.2", 90)));
    let a = fsm.handle(Event::Message(Incoming, peer_open(65002, "10.0.0.2", 90)));
    assert_eq!(notification_of(&a, Outgoing), Some((6, 7)));
    assert!(a.contains(&Action::Close(Outgoing)));
    assert_eq!(sends(&a, Incoming), vec![&Message::Keepalive]);
    let a = fsm.handle(Event::Message(Incoming, Message::Keepalive));
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::Established(n) if n.direction == Incoming))
    );

    // Our ID higher: our own connection survives and the new OPEN's connection closes.
    let mut c = cfg(false);
    c.router_id = "10.0.0.9".parse().unwrap();
    let mut fsm = Fsm::new(c);
    fsm.handle(Event::Start);
    fsm.handle(Event::TcpConnected(Outgoing));
    fsm.handle(Event::TcpConnected(Incoming));
    fsm.handle(Event::Message(Outgoing, peer_open(65002, "10.0.0.2", 90)));
    let a = fsm.handle(Event::Message(Incoming, peer_open(65002, "10.0.0.2", 90)));
    assert_eq!(notification_of(&a, Incoming), Some((6, 7)));
    assert!(sends(&a, Outgoing).is_empty());
    assert_eq!(fsm.state(), State::OpenConfirm);
}

#[test]
fn connection_while_established_is_rejected() {
    let mut fsm = Fsm::new(cfg(false));
    established(&mut fsm);
    let a = fsm.handle(Event::TcpConnected(Incoming));
    assert_eq!(notification_of(&a, Incoming), Some((6, 7)));
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn stop_sends_cease_and_goes_idle() {
    let mut fsm = Fsm::new(cfg(false));
    established(&mut fsm);
    let a = fsm.handle(Event::Stop(cease_subcode::PEER_DECONFIGURED));
    assert_eq!(notification_of(&a, Outgoing), Some((6, 3)));
    assert!(a.contains(&Action::Down(DownReason::Stopped)));
    assert_eq!(fsm.state(), State::Idle);
    assert!(fsm.handle(Event::ConnectRetryTimerExpires).is_empty());
}

#[test]
fn hold_time_zero_from_the_peer_is_refused_unless_allowed() {
    // By default a peer cannot switch off liveness by offering 0 (or 1..=2).
    for offered in [0, 2] {
        let (fsm, a) = open_from_peer(cfg(false), peer_open(65002, "10.0.0.2", offered));
        assert_eq!(
            notification_of(&a, Outgoing),
            Some((2, 6)),
            "offer {offered}"
        );
        assert_ne!(fsm.state(), State::OpenConfirm);
    }
    // A minimum above the default refuses what is below it.
    let mut c = cfg(false);
    c.min_hold_time = 30;
    let (_, a) = open_from_peer(c, peer_open(65002, "10.0.0.2", 9));
    assert_eq!(notification_of(&a, Outgoing), Some((2, 6)));
}

#[test]
fn send_hold_timer_expiry_sends_code_8_and_goes_down() {
    let mut fsm = Fsm::new(cfg(false));
    established(&mut fsm);
    let a = fsm.handle(Event::SendHoldTimerExpires(Outgoing));
    assert_eq!(notification_of(&a, Outgoing), Some((8, 0)));
    assert!(a.contains(&Action::Down(DownReason::NotificationSent {
        code: 8,
        subcode: 0
    })));
    assert_ne!(fsm.state(), State::Established);
}

#[test]
fn extended_messages_need_both_sides() {
    let open_with = |ext: bool| {
        let mut caps = vec![
            Capability::multiprotocol(Family::Ipv4Unicast),
            Capability::FourOctetAs(65002),
        ];
        if ext {
            caps.push(Capability::ExtendedMessage);
        }
        Message::Open(Open {
            my_as: 65002,
            hold_time: 90,
            router_id: "10.0.0.2".parse().unwrap(),
            capabilities: caps,
        })
    };
    for (ours, theirs, want) in [
        (true, true, true),
        (true, false, false),
        (false, true, false),
    ] {
        let mut c = cfg(false);
        c.extended_messages = ours;
        assert_eq!(
            c.open().capabilities.contains(&Capability::ExtendedMessage),
            ours
        );
        let (mut fsm, _) = open_from_peer(c, open_with(theirs));
        let a = fsm.handle(Event::Message(Outgoing, Message::Keepalive));
        let neg = a
            .iter()
            .find_map(|x| match x {
                Action::Established(n) => Some(n.clone()),
                _ => None,
            })
            .expect("established");
        assert_eq!(neg.extended_messages, want, "ours {ours} theirs {theirs}");
    }
}

#[test]
fn hold_time_zero_disables_keepalives() {
    let mut c = cfg(false);
    c.min_hold_time = 0;
    let (_, a) = open_from_peer(c, peer_open(65002, "10.0.0.2", 0));
    assert!(a.contains(&Action::StopTimer(Timer::Hold(Outgoing))));
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::StartTimer(Timer::Keepalive(_), _)))
    );
}

#[test]
fn open_advertises_configured_capabilities() {
    let mut c = cfg(false);
    c.graceful_restart = Some(GracefulRestart {
        restarting: false,
        notification: false,
        restart_time: 120,
        families: vec![],
    });
    let open = c.open();
    assert!(open.capabilities.contains(&Capability::FourOctetAs(65001)));
    assert!(
        open.capabilities
            .contains(&Capability::multiprotocol(Family::Ipv6Unicast))
    );
    assert!(
        open.capabilities
            .iter()
            .any(|x| matches!(x, Capability::GracefulRestart(g) if g.restart_time == 120))
    );
    c.local_as = 4_200_000_000;
    assert_eq!(c.open().my_as, 23456, "AS_TRANS in the 2-octet field");
}

#[test]
fn bfd_down_ends_an_established_session_with_cease_bfd_down() {
    let mut fsm = Fsm::new(cfg(false));
    // Before Established, BFD has nothing to end.
    fsm.handle(Event::Start);
    assert!(fsm.handle(Event::BfdDown).is_empty());
    let mut fsm = Fsm::new(cfg(false));
    established(&mut fsm);
    assert_eq!(fsm.state(), State::Established);
    let a = fsm.handle(Event::BfdDown);
    assert_eq!(notification_of(&a, Outgoing), Some((6, 10)));
    assert!(a.contains(&Action::Down(DownReason::NotificationSent {
        code: 6,
        subcode: 10
    })));
    assert!(a.contains(&Action::StartTimer(
        Timer::ConnectRetry,
        Duration::from_secs(5)
    )));
    assert_ne!(fsm.state(), State::Established);
}
