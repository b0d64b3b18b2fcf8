use super::*;
use crate::packet::attribute::{AsPath, Origin};
use crate::packet::capability::{GracefulRestart, GracefulRestartFamily};
use ipnet::{IpNet, Ipv6Net};

const CTX: DecodeContext = DecodeContext {
    four_octet_as: true,
    ebgp: true,
    extended_messages: false,
};
const ENC: EncodeContext = EncodeContext {
    four_octet_as: true,
    extended_messages: false,
};

fn header(len: u16, kind: u8) -> Vec<u8> {
    let mut v = vec![0xff; 16];
    v.extend_from_slice(&len.to_be_bytes());
    v.push(kind);
    v
}

fn with_header(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = header((HEADER_LEN + body.len()) as u16, kind);
    v.extend_from_slice(body);
    v
}

fn decode_err(buf: &[u8]) -> (u8, u8, Vec<u8>) {
    let e = Message::decode(buf, CTX).unwrap_err();
    (e.code, e.subcode, e.data)
}

#[test]
fn keepalive_byte_vector() {
    let wire = header(19, 4);
    assert_eq!(Message::Keepalive.encode(ENC), wire);
    assert_eq!(Message::decode(&wire, CTX).unwrap(), Message::Keepalive);
}

#[test]
fn open_byte_vector_both_ways() {
    let open = Open {
        my_as: 23456,
        hold_time: 90,
        router_id: "10.0.0.1".parse().unwrap(),
        capabilities: vec![
            Capability::multiprotocol(Family::Ipv4Unicast),
            Capability::RouteRefresh,
            Capability::FourOctetAs(4_200_000_000),
            Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                notification: false,
                restart_time: 120,
                families: vec![GracefulRestartFamily {
                    afi: 1,
                    safi: 1,
                    forwarding_preserved: true,
                }],
            }),
        ],
    };
    #[rustfmt::skip]
    let body = [
        4, 0x5b, 0xa0, 0, 90, 10, 0, 0, 1, 30,
        2, 6, 1, 4, 0, 1, 0, 1,
        2, 2, 2, 0,
        2, 6, 65, 4, 0xfa, 0x56, 0xea, 0x00,
        2, 8, 64, 6, 0, 120, 0, 1, 1, 0x80,
    ];
    let wire = with_header(1, &body);
    assert_eq!(Message::Open(open.clone()).encode(ENC), wire);
    let Message::Open(got) = Message::decode(&wire, CTX).unwrap() else {
        panic!("not an OPEN")
    };
    assert_eq!(got, open);
    assert_eq!(got.asn(), 4_200_000_000);
}

#[test]
fn open_with_several_capabilities_in_one_parameter_and_rfc9072_form() {
    let body = [
        4, 0xfd, 0xe9, 0, 180, 1, 1, 1, 1, 8, 2, 6, 2, 0, 65, 2, 0, 0,
    ];
    let bad = with_header(1, &body);
    // Four-octet AS capability of length 2 is malformed.
    assert_eq!(decode_err(&bad).0, 2);
    let body = [4, 0xfd, 0xe9, 0, 180, 1, 1, 1, 1, 6, 2, 4, 2, 0, 70, 0];
    let Message::Open(o) = Message::decode(&with_header(1, &body), CTX).unwrap() else {
        panic!()
    };
    assert_eq!(
        o.capabilities,
        vec![Capability::RouteRefresh, Capability::EnhancedRouteRefresh]
    );
    // RFC 9072 extended optional parameters.
    let body = [
        4, 0xfd, 0xe9, 0, 180, 1, 1, 1, 1, 255, 255, 0, 5, 2, 0, 2, 2, 0,
    ];
    let Message::Open(o) = Message::decode(&with_header(1, &body), CTX).unwrap() else {
        panic!()
    };
    assert_eq!(o.capabilities, vec![Capability::RouteRefresh]);
}

#[test]
fn open_errors_follow_rfc4271_section_6_2() {
    let base = [4u8, 0xfd, 0xe9, 0, 90, 10, 0, 0, 1, 0];
    let mut v3 = base;
    v3[0] = 3;
    assert_eq!(decode_err(&with_header(1, &v3)), (2, 1, vec![0, 4]));
    let mut hold = base;
    hold[4] = 2;
    assert_eq!(decode_err(&with_header(1, &hold)), (2, 6, vec![]));
    let mut id = base;
    id[5..9].copy_from_slice(&[0, 0, 0, 0]);
    assert_eq!(decode_err(&with_header(1, &id)), (2, 3, vec![]));
    let param = [4u8, 0xfd, 0xe9, 0, 90, 10, 0, 0, 1, 3, 1, 1, 0];
    assert_eq!(decode_err(&with_header(1, &param)), (2, 4, vec![]));
    let short = [4u8, 0xfd, 0xe9, 0, 90, 10, 0, 0, 1, 4, 2, 2];
    assert_eq!(decode_err(&with_header(1, &short)).0, 2);
}

#[test]
fn header_errors_follow_rfc4271_section_6_1() {
    let mut bad_marker = header(19, 4);
    bad_marker[3] = 0;
    assert_eq!(decode_err(&bad_marker), (1, 1, vec![]));
    assert_eq!(decode_err(&header(20, 4)), (1, 2, vec![0, 20]));
    assert_eq!(decode_err(&header(18, 2)), (1, 2, vec![0, 18]));
    let mut short_open = header(28, 1);
    short_open.extend_from_slice(&[0; 9]);
    assert_eq!(decode_err(&short_open), (1, 2, vec![0, 28]));
    assert_eq!(decode_err(&header(19, 9)), (1, 3, vec![9]));
    assert_eq!(
        decode_header(&header(4097, 2), false).unwrap_err().data,
        vec![0x10, 0x01]
    );
}

#[test]
fn notification_and_route_refresh_byte_vectors() {
    let n = Message::Notification(Notification {
        code: 6,
        subcode: 2,
        data: vec![3, b'b', b'y', b'e'],
    });
    let wire = with_header(3, &[6, 2, 3, b'b', b'y', b'e']);
    assert_eq!(n.encode(ENC), wire);
    let Message::Notification(got) = Message::decode(&wire, CTX).unwrap() else {
        panic!()
    };
    assert_eq!(got.shutdown_message().as_deref(), Some("bye"));

    let rr = Message::RouteRefresh(RouteRefresh {
        afi: 2,
        subtype: 0,
        safi: 1,
    });
    let wire = with_header(5, &[0, 2, 0, 1]);
    assert_eq!(rr.encode(ENC), wire);
    assert_eq!(Message::decode(&wire, CTX).unwrap(), rr);
    assert_eq!(decode_err(&with_header(5, &[0, 2, 0])).0, 7);
}

fn ipv4_update() -> Update {
    Update {
        withdrawn: vec!["10.9.0.0/16".parse().unwrap()],
        attributes: PathAttributes {
            origin: Origin::Igp,
            as_path: AsPath::from_sequence([65002]),
            next_hop: Some("192.0.2.2".parse().unwrap()),
            med: Some(10),
            communities: vec![0xfdea_0064],
            ..Default::default()
        },
        nlri: vec![
            "10.1.0.0/24".parse().unwrap(),
            "10.2.0.0/26".parse().unwrap(),
        ],
        ..Default::default()
    }
}

#[test]
fn update_byte_vector_both_ways() {
    #[rustfmt::skip]
    let body = [
        0, 3, 16, 10, 9,
        0, 34,
        0x40, 1, 1, 0,
        0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea,
        0x40, 3, 4, 192, 0, 2, 2,
        0x80, 4, 4, 0, 0, 0, 10,
        0xc0, 8, 4, 0xfd, 0xea, 0, 0x64,
        24, 10, 1, 0, 26, 10, 2, 0, 0,
    ];
    let wire = with_header(2, &body);
    assert_eq!(Message::Update(ipv4_update()).encode(ENC), wire);
    assert_eq!(
        Message::decode(&wire, CTX).unwrap(),
        Message::Update(ipv4_update())
    );
}

#[test]
fn update_length_errors_reset_with_malformed_attribute_list() {
    assert_eq!(decode_err(&with_header(2, &[0, 9, 0, 0])), (3, 1, vec![]));
    assert_eq!(
        decode_err(&with_header(2, &[0, 0, 0, 9, 0x40])),
        (3, 1, vec![])
    );
    // NLRI field with a /33 is an invalid network field.
    let body = [0, 0, 0, 4, 0x40, 1, 1, 0, 33, 1, 2, 3, 4, 5];
    assert_eq!(decode_err(&with_header(2, &body)), (3, 10, vec![]));
    // Withdrawn routes that run past their length too.
    assert_eq!(
        decode_err(&with_header(2, &[0, 2, 24, 10, 0, 0])),
        (3, 10, vec![])
    );
}

#[test]
fn missing_well_known_attributes_are_treat_as_withdraw() {
    // NLRI with only ORIGIN.
    let body = [0, 0, 0, 4, 0x40, 1, 1, 0, 8, 10];
    let Message::Update(u) = Message::decode(&with_header(2, &body), CTX).unwrap() else {
        panic!()
    };
    assert_eq!(u.error_action(), Some(UpdateErrorAction::TreatAsWithdraw));
    let missing: Vec<u8> = u.errors.iter().map(|e| e.type_code).collect();
    assert_eq!(missing, vec![2, 3]);
    assert!(u.errors.iter().all(|e| e.subcode == 3));
    // iBGP also needs LOCAL_PREF.
    let ibgp = DecodeContext {
        four_octet_as: true,
        ebgp: false,
        extended_messages: false,
    };
    let mut buf = Message::Update(Update {
        withdrawn: vec![],
        ..ipv4_update()
    })
    .encode(ENC);
    let Message::Update(u) = Message::decode(&buf, ibgp).unwrap() else {
        panic!()
    };
    assert_eq!(
        u.errors.iter().map(|e| e.type_code).collect::<Vec<_>>(),
        vec![5]
    );
    // A withdraw-only UPDATE needs no attributes at all.
    buf = with_header(2, &[0, 2, 8, 10, 0, 0]);
    let Message::Update(u) = Message::decode(&buf, ibgp).unwrap() else {
        panic!()
    };
    assert!(u.errors.is_empty());
}

#[test]
fn end_of_rib_markers() {
    for family in Family::ALL {
        let wire = Message::Update(Update::end_of_rib_marker(family)).encode(ENC);
        let Message::Update(u) = Message::decode(&wire, CTX).unwrap() else {
            panic!()
        };
        assert_eq!(u.end_of_rib(), Some(family));
    }
    assert_eq!(
        with_header(2, &[0, 0, 0, 0]),
        Message::Update(Update::end_of_rib_marker(Family::Ipv4Unicast)).encode(ENC)
    );
    assert_eq!(ipv4_update().end_of_rib(), None);
}

#[test]
fn packing_splits_many_prefixes_under_4096_bytes_and_decodes_back() {
    let attrs = PathAttributes {
        as_path: AsPath::from_sequence([65001]),
        next_hop: Some("192.0.2.1".parse().unwrap()),
        ..Default::default()
    };
    let prefixes: Vec<Ipv4Net> = (0..5000u32)
        .map(|i| Ipv4Net::new((0x0a00_0000 + (i << 8)).into(), 24).unwrap())
        .collect();
    let mut msgs = Vec::new();
    pack_announcements(&attrs, &prefixes, ENC, &mut msgs);
    assert!(msgs.len() > 1 && msgs.len() < 6, "{} messages", msgs.len());
    let mut got = Vec::new();
    for m in &msgs {
        assert!(m.len() <= MAX_MESSAGE_LEN);
        let Message::Update(u) = Message::decode(m, CTX).unwrap() else {
            panic!()
        };
        assert!(u.errors.is_empty());
        got.extend(u.nlri);
    }
    assert_eq!(got, prefixes);
    // With the room measured once beforehand (into a reused buffer): the same messages.
    let mut scratch = vec![0xee; 7];
    let room = announcement_room_in::<Ipv4Net>(&attrs, ENC, &mut scratch).unwrap();
    assert_eq!(Some(room), announcement_room::<Ipv4Net>(&attrs, ENC));
    let mut again = Vec::new();
    pack_announcements_within(&attrs, &prefixes, ENC, room, &mut again);
    assert_eq!(again, msgs);

    let v6: Vec<Ipv6Net> = (0..3000u128)
        .map(|i| Ipv6Net::new((0x2001_0db8_u128 << 96 | i << 64).into(), 64).unwrap())
        .collect();
    let attrs6 = PathAttributes {
        next_hop: Some("2001:db8::1".parse().unwrap()),
        ..attrs.clone()
    };
    let mut msgs = Vec::new();
    pack_announcements(&attrs6, &v6, ENC, &mut msgs);
    let mut got: Vec<IpNet> = Vec::new();
    for m in &msgs {
        assert!(m.len() <= MAX_MESSAGE_LEN);
        let Message::Update(u) = Message::decode(m, CTX).unwrap() else {
            panic!()
        };
        let mp = u.mp_reach.unwrap();
        assert_eq!(mp.next_hop, attrs6.next_hop);
        got.extend(mp.nlri);
    }
    assert_eq!(got, v6.iter().map(|p| IpNet::V6(*p)).collect::<Vec<_>>());

    let mut msgs = Vec::new();
    pack_withdrawals(&v6, ENC, &mut msgs);
    let n: usize = msgs
        .iter()
        .map(|m| match Message::decode(m, CTX).unwrap() {
            Message::Update(u) => u.mp_unreach.unwrap().withdrawn.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(n, v6.len());
}

/// About 4,068 bytes of attributes: ~1,000 communities, as a peer may legitimately send.
fn huge_attrs(communities: u32) -> PathAttributes {
    PathAttributes {
        as_path: AsPath::from_sequence([65001, 65002]),
        next_hop: Some("192.0.2.1".parse().unwrap()),
        communities: (0..communities).collect(),
        ..Default::default()
    }
}

#[test]
fn attributes_too_large_for_one_update_are_refused_not_looped_on() {
    // 1,012 communities: 4,048 bytes of value, so with the path, origin and next hop the
    // set leaves no room for a /24 in 4,096 bytes (the case that stalled the speaker).
    let attrs = huge_attrs(1012);
    let p: Vec<Ipv4Net> = vec![
        "10.1.0.0/24".parse().unwrap(),
        "10.2.0.0/24".parse().unwrap(),
    ];
    assert_eq!(announcement_room::<Ipv4Net>(&attrs, ENC), None);
    let mut msgs = Vec::new();
    assert_eq!(pack_announcements(&attrs, &p, ENC, &mut msgs), 2);
    assert!(msgs.is_empty(), "nothing half-built is sent");
    // With extended messages the same set fits, in one message well over 4,096 bytes
    // that decodes back under the extended limit only.
    let ext = EncodeContext {
        extended_messages: true,
        ..ENC
    };
    assert!(announcement_room::<Ipv4Net>(&attrs, ext).is_some());
    assert_eq!(pack_announcements(&attrs, &p, ext, &mut msgs), 0);
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].len() > MAX_MESSAGE_LEN);
    assert!(
        Message::decode(&msgs[0], CTX).is_err(),
        "4,096 limit without the capability"
    );
    let ext_ctx = DecodeContext {
        extended_messages: true,
        ..CTX
    };
    let Message::Update(u) = Message::decode(&msgs[0], ext_ctx).unwrap() else {
        panic!()
    };
    assert_eq!(u.nlri, p);
    assert_eq!(u.attributes.communities.len(), 1012);
}

#[test]
fn a_set_just_under_the_limit_still_packs_one_prefix_per_message() {
    // Every size from comfortably fitting to not fitting at all: packing terminates, and
    // every message is within the limit and carries at least one prefix.
    let prefixes: Vec<Ipv4Net> = (0..50u32)
        .map(|i| Ipv4Net::new((0x0a00_0000 + (i << 8)).into(), 24).unwrap())
        .collect();
    for n in 990..1020 {
        let attrs = huge_attrs(n);
        let mut msgs = Vec::new();
        let unsent = pack_announcements(&attrs, &prefixes, ENC, &mut msgs);
        match announcement_room::<Ipv4Net>(&attrs, ENC) {
            Some(_) => {
                assert_eq!(unsent, 0);
                let mut got = 0;
                for m in &msgs {
                    assert!(m.len() <= MAX_MESSAGE_LEN, "{n}: {} bytes", m.len());
                    let Message::Update(u) = Message::decode(m, CTX).unwrap() else {
                        panic!()
                    };
                    assert!(!u.nlri.is_empty());
                    got += u.nlri.len();
                }
                assert_eq!(got, prefixes.len());
            }
            None => assert_eq!((unsent, msgs.len()), (prefixes.len(), 0)),
        }
    }
}

#[test]
fn extended_limit_applies_to_updates_but_never_to_open_or_keepalive() {
    assert_eq!(decode_header(&header(5000, 2), true).unwrap(), (2, 5000));
    assert_eq!(decode_header(&header(65535, 3), true).unwrap(), (3, 65535));
    assert!(decode_header(&header(5000, 2), false).is_err());
    assert!(
        decode_header(&header(5000, 1), true).is_err(),
        "OPEN stays 4096"
    );
    assert!(decode_header(&header(5000, 4), true).is_err());
}

#[test]
fn a_notification_quoting_a_huge_attribute_is_cut_to_4096_bytes() {
    let n = Message::Notification(Notification {
        code: 3,
        subcode: 5,
        data: vec![7; 60_000],
    });
    let wire = n.encode(ENC);
    assert_eq!(wire.len(), MAX_MESSAGE_LEN);
    assert!(Message::decode(&wire, CTX).is_ok());
}
