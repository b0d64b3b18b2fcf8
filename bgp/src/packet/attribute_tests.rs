use super::*;
use crate::packet::error::UpdateErrorAction::{AttributeDiscard, TreatAsWithdraw};

const IBGP4: DecodeContext = DecodeContext {
    four_octet_as: true,
    ebgp: false,
    extended_messages: false,
};
const EBGP4: DecodeContext = DecodeContext {
    four_octet_as: true,
    ebgp: true,
    extended_messages: false,
};
const EBGP2: DecodeContext = DecodeContext {
    four_octet_as: false,
    ebgp: true,
    extended_messages: false,
};

fn decode_ok(buf: &[u8], ctx: DecodeContext) -> DecodedAttributes {
    decode_attributes(buf, ctx).expect("no session reset")
}

fn actions(d: &DecodedAttributes) -> Vec<(UpdateErrorAction, u8, u8)> {
    d.errors
        .iter()
        .map(|e| (e.action, e.type_code, e.subcode))
        .collect()
}

fn full_attrs() -> PathAttributes {
    PathAttributes {
        origin: Origin::Egp,
        as_path: AsPath::from_sequence([65001, 4_200_000_000]),
        next_hop: Some("192.0.2.1".parse().unwrap()),
        link_local_next_hop: None,
        med: Some(50),
        local_pref: Some(200),
        atomic_aggregate: true,
        aggregator: Some(Aggregator {
            asn: 65001,
            address: "192.0.2.9".parse().unwrap(),
        }),
        communities: vec![0xfde8_0001, 0xffff_ff01],
        originator_id: Some("10.0.0.1".parse().unwrap()),
        cluster_list: vec!["10.0.0.100".parse().unwrap()],
        extended_communities: vec![0x0002_fde8_0000_0001],
        large_communities: vec![LargeCommunity(4_200_000_000, 1, 2)],
        unknown: vec![RawAttribute {
            flags: flag::OPTIONAL | flag::TRANSITIVE | flag::PARTIAL,
            type_code: 99,
            value: vec![1, 2, 3],
        }],
        // Local to the speaker: never on the wire, so a round trip cannot carry it.
        priority: None,
    }
}

#[test]
fn byte_vector_of_every_attribute_round_trips() {
    let attrs = full_attrs();
    let mut buf = Vec::new();
    attrs.encode(
        EncodeContext {
            four_octet_as: true,
            extended_messages: false,
        },
        &Reach::Classic,
        &mut buf,
    );
    #[rustfmt::skip]
    let expected: Vec<u8> = [
        &[0x40, 1, 1, 1][..],                                   // ORIGIN EGP
        &[0x40, 2, 10, 2, 2, 0, 0, 0xfd, 0xe9, 0xfa, 0x56, 0xea, 0x00], // AS_PATH seq 65001 4200000000
        &[0x40, 3, 4, 192, 0, 2, 1],                            // NEXT_HOP
        &[0x80, 4, 4, 0, 0, 0, 50],                             // MED
        &[0x40, 5, 4, 0, 0, 0, 200],                            // LOCAL_PREF
        &[0x40, 6, 0],                                          // ATOMIC_AGGREGATE
        &[0xc0, 7, 8, 0, 0, 0xfd, 0xe9, 192, 0, 2, 9],          // AGGREGATOR
        &[0xc0, 8, 8, 0xfd, 0xe8, 0, 1, 0xff, 0xff, 0xff, 0x01], // COMMUNITIES
        &[0x80, 9, 4, 10, 0, 0, 1],                             // ORIGINATOR_ID
        &[0x80, 10, 4, 10, 0, 0, 100],                          // CLUSTER_LIST
        &[0xc0, 16, 8, 0, 2, 0xfd, 0xe8, 0, 0, 0, 1],           // EXTENDED_COMMUNITIES
        &[0xc0, 32, 12, 0xfa, 0x56, 0xea, 0, 0, 0, 0, 1, 0, 0, 0, 2], // LARGE_COMMUNITY
        &[0xe0, 99, 3, 1, 2, 3],                                // unknown, Partial set
    ].concat();
    assert_eq!(buf, expected);
    let d = decode_ok(&buf, IBGP4);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.attrs, attrs);
    assert!(d.has_origin && d.has_as_path && d.has_next_hop && d.has_local_pref);
    // A filter's priority is this speaker's kernel metric: it changes no byte sent.
    let mut with_priority = attrs.clone();
    with_priority.priority = std::num::NonZeroU32::new(512);
    let mut again = Vec::new();
    with_priority.encode(
        EncodeContext {
            four_octet_as: true,
            extended_messages: false,
        },
        &Reach::Classic,
        &mut again,
    );
    assert_eq!(again, expected);
}

#[test]
fn unknown_optional_transitive_gets_partial_bit_and_non_transitive_is_dropped() {
    let d = decode_ok(&[0xc0, 99, 1, 7, 0x80, 98, 1, 8], IBGP4);
    assert_eq!(
        d.attrs.unknown,
        vec![RawAttribute {
            flags: 0xe0,
            type_code: 99,
            value: vec![7]
        }]
    );
}

#[test]
fn unknown_well_known_resets_session_with_attribute_as_data() {
    let err = decode_attributes(&[0x40, 99, 1, 7], IBGP4).unwrap_err();
    assert_eq!(
        (err.code, err.subcode, err.data),
        (3, 2, vec![0x40, 99, 1, 7])
    );
}

#[test]
fn extended_length_attributes_decode_and_are_emitted_over_255_bytes() {
    let d = decode_ok(&[0x50, 1, 0, 1, 2], IBGP4);
    assert_eq!(d.attrs.origin, Origin::Incomplete);
    let attrs = PathAttributes {
        communities: (0..100).collect(),
        ..Default::default()
    };
    let mut buf = Vec::new();
    attrs.encode(
        EncodeContext {
            four_octet_as: true,
            extended_messages: false,
        },
        &Reach::Classic,
        &mut buf,
    );
    let at = buf
        .windows(2)
        .position(|w| w == [0xd0, 8])
        .expect("extended-length COMMUNITIES");
    assert_eq!(&buf[at + 2..at + 4], &[1, 144]);
    assert_eq!(decode_ok(&buf, IBGP4).attrs.communities.len(), 100);
}

#[test]
fn rfc7606_treat_as_withdraw_cases() {
    let cases: &[(&[u8], u8, u8)] = &[
        (&[0x40, 1, 2, 0, 0], 1, 5),                  // ORIGIN length
        (&[0x40, 1, 1, 3], 1, 6),                     // ORIGIN value
        (&[0x40, 2, 3, 2, 1, 0], 2, 11),              // AS_PATH truncated segment
        (&[0x40, 2, 2, 2, 0], 2, 11),                 // AS_PATH zero-length segment
        (&[0x40, 2, 6, 9, 1, 0, 0, 0, 1], 2, 11),     // AS_PATH bad segment type
        (&[0x40, 3, 3, 1, 2, 3], 3, 5),               // NEXT_HOP length
        (&[0x40, 3, 4, 0, 0, 0, 0], 3, 8),            // NEXT_HOP 0.0.0.0
        (&[0x40, 3, 4, 224, 0, 0, 1], 3, 8),          // NEXT_HOP multicast
        (&[0x80, 4, 2, 0, 1], 4, 5),                  // MED length
        (&[0x40, 5, 3, 0, 0, 1], 5, 5),               // LOCAL_PREF length (iBGP)
        (&[0xc0, 8, 3, 0, 0, 1], 8, 5),               // COMMUNITIES length
        (&[0xc0, 8, 0], 8, 5),                        // COMMUNITIES empty
        (&[0x80, 9, 5, 1, 2, 3, 4, 5], 9, 5),         // ORIGINATOR_ID length
        (&[0x80, 10, 3, 1, 2, 3], 10, 5),             // CLUSTER_LIST length
        (&[0xc0, 16, 7, 0, 0, 0, 0, 0, 0, 0], 16, 5), // EXT COMMUNITIES length
        (&[0xc0, 32, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 32, 5), // LARGE length
        (&[0xc0, 1, 1, 0], 1, 4),                     // ORIGIN with optional flag
        (&[0x60, 1, 1, 0], 1, 4),                     // ORIGIN with partial flag
        (&[0x40, 4, 4, 0, 0, 0, 1], 4, 4),            // MED marked well-known
    ];
    for (wire, tc, subcode) in cases {
        let d = decode_ok(wire, IBGP4);
        assert_eq!(
            actions(&d),
            vec![(TreatAsWithdraw, *tc, *subcode)],
            "input {wire:?}"
        );
    }
}

#[test]
fn rfc7606_attribute_discard_cases() {
    let cases: &[(&[u8], DecodeContext, u8)] = &[
        (&[0x40, 6, 1, 0], IBGP4, 6),                  // ATOMIC_AGGREGATE length
        (&[0xc0, 7, 6, 0, 1, 1, 2, 3, 4], IBGP4, 7),   // AGGREGATOR 6 bytes to a 4-octet peer
        (&[0x40, 5, 4, 0, 0, 0, 100], EBGP4, 5),       // LOCAL_PREF from eBGP
        (&[0x80, 9, 4, 1, 2, 3, 4], EBGP4, 9),         // ORIGINATOR_ID from eBGP
        (&[0xc0, 17, 6, 2, 1, 0, 0, 0, 1], EBGP4, 17), // AS4_PATH from a NEW speaker
        (&[0xc0, 17, 3, 2, 1, 0], EBGP2, 17),          // AS4_PATH malformed
    ];
    for (wire, ctx, tc) in cases {
        let d = decode_ok(wire, *ctx);
        assert_eq!(d.errors.len(), 1, "input {wire:?}");
        assert_eq!(
            (d.errors[0].action, d.errors[0].type_code),
            (AttributeDiscard, *tc),
            "input {wire:?}"
        );
    }
    assert_eq!(
        decode_ok(&[0x40, 5, 4, 0, 0, 0, 100], EBGP4)
            .attrs
            .local_pref,
        None
    );
}

#[test]
fn repeated_attribute_keeps_first_copy() {
    let d = decode_ok(&[0x40, 1, 1, 0, 0x40, 1, 1, 2], IBGP4);
    assert_eq!(d.attrs.origin, Origin::Igp);
    assert_eq!(actions(&d), vec![(AttributeDiscard, 1, 1)]);
}

#[test]
fn repeated_mp_reach_resets_session() {
    let mp = [0x80, 15, 3, 0, 2, 1];
    let err = decode_attributes(&[mp, mp].concat(), IBGP4).unwrap_err();
    assert_eq!((err.code, err.subcode), (3, 1));
}

#[test]
fn attribute_overrunning_the_section_is_treat_as_withdraw() {
    let d = decode_ok(&[0x40, 1, 1, 0, 0x40, 2, 9, 2, 1], IBGP4);
    assert_eq!(actions(&d), vec![(TreatAsWithdraw, 0, 1)]);
    let d = decode_ok(&[0x40, 1, 1, 0, 0x40, 2], IBGP4);
    assert_eq!(actions(&d), vec![(TreatAsWithdraw, 0, 1)]);
}

#[test]
fn mp_reach_ipv6_with_link_local_round_trips() {
    let wire: Vec<u8> = [
        &[0x80, 14, 46, 0, 2, 1, 32][..],
        &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(),
        &"fe80::1".parse::<Ipv6Addr>().unwrap().octets(),
        &[0, 64, 0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0],
    ]
    .concat();
    let d = decode_ok(&wire, IBGP4);
    let mp = d.mp_reach.unwrap();
    assert_eq!((mp.afi, mp.safi), (2, 1));
    assert_eq!(mp.next_hop, Some("2001:db8::1".parse().unwrap()));
    assert_eq!(mp.link_local_next_hop, Some("fe80::1".parse().unwrap()));
    assert_eq!(mp.nlri, vec!["2001:db8:1::/64".parse::<IpNet>().unwrap()]);

    let mut nlri = Vec::new();
    nlri::encode_prefix(&"2001:db8:1::/64".parse::<Ipv6Net>().unwrap(), &mut nlri);
    let mut out = Vec::new();
    PathAttributes::default().encode(
        EncodeContext {
            four_octet_as: true,
            extended_messages: false,
        },
        &Reach::Multiprotocol {
            family: Family::Ipv6Unicast,
            next_hop: mp.next_hop,
            link_local: mp.link_local_next_hop,
            nlri: &nlri,
        },
        &mut out,
    );
    assert!(out.ends_with(&wire), "{out:?}");
}

#[test]
fn malformed_mp_reach_resets_with_optional_attribute_error() {
    // IPv6 next hop of 5 bytes.
    let err = decode_attributes(&[0x80, 14, 10, 0, 2, 1, 5, 1, 2, 3, 4, 5, 0], IBGP4).unwrap_err();
    assert_eq!((err.code, err.subcode), (3, 9));
    // NLRI prefix length beyond 128.
    let mut wire = vec![0x80, 14, 22, 0, 2, 1, 16];
    wire.extend_from_slice(&[0x20; 16]);
    wire.extend_from_slice(&[0, 200]);
    let err = decode_attributes(&wire, IBGP4).unwrap_err();
    assert_eq!((err.code, err.subcode), (3, 9));
    // MP_UNREACH with a flags error is a reset too.
    let err = decode_attributes(&[0x40, 15, 3, 0, 2, 1], IBGP4).unwrap_err();
    assert_eq!((err.code, err.subcode), (3, 4));
}

#[test]
fn unknown_family_in_mp_reach_is_kept_without_prefixes() {
    let d = decode_ok(&[0x80, 14, 10, 0, 25, 70, 4, 1, 2, 3, 4, 0, 8, 10], IBGP4);
    let mp = d.mp_reach.unwrap();
    assert_eq!((mp.afi, mp.safi, mp.nlri.len()), (25, 70, 0));
}

#[test]
fn two_octet_peer_as4_path_is_merged() {
    // AS_PATH: 65001 23456 23456, AS4_PATH: 4200000000 4200000001.
    let wire = [
        &[0x40, 2, 8, 2, 3, 0xfd, 0xe9, 0x5b, 0xa0, 0x5b, 0xa0][..],
        &[
            0xc0, 17, 10, 2, 2, 0xfa, 0x56, 0xea, 0x00, 0xfa, 0x56, 0xea, 0x01,
        ],
    ]
    .concat();
    let d = decode_ok(&wire, EBGP2);
    assert_eq!(
        d.attrs.as_path,
        AsPath::from_sequence([65001, 4_200_000_000, 4_200_000_001])
    );

    // An AS4_PATH longer than AS_PATH is ignored.
    let wire = [&[0x40, 2, 4, 2, 1, 0xfd, 0xe9][..], &wire[10..]].concat();
    assert_eq!(
        decode_ok(&wire, EBGP2).attrs.as_path,
        AsPath::from_sequence([65001])
    );
}

#[test]
fn as4_aggregator_only_counts_when_aggregator_is_as_trans() {
    let wire = [
        &[0xc0, 7, 6, 0x5b, 0xa0, 1, 2, 3, 4][..],
        &[0xc0, 18, 8, 0xfa, 0x56, 0xea, 0x00, 1, 2, 3, 4],
    ]
    .concat();
    assert_eq!(
        decode_ok(&wire, EBGP2).attrs.aggregator.unwrap().asn,
        4_200_000_000
    );
    let wire = [&[0xc0, 7, 6, 0xfd, 0xe9, 1, 2, 3, 4][..], &wire[9..]].concat();
    assert_eq!(decode_ok(&wire, EBGP2).attrs.aggregator.unwrap().asn, 65001);
}

#[test]
fn two_octet_encoding_uses_as_trans_and_adds_as4_attributes() {
    let attrs = PathAttributes {
        as_path: AsPath::from_sequence([4_200_000_000, 65001]),
        aggregator: Some(Aggregator {
            asn: 4_200_000_000,
            address: "1.2.3.4".parse().unwrap(),
        }),
        ..Default::default()
    };
    let mut buf = Vec::new();
    attrs.encode(
        EncodeContext {
            four_octet_as: false,
            extended_messages: false,
        },
        &Reach::Classic,
        &mut buf,
    );
    let d = decode_ok(&buf, EBGP2);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d.attrs.as_path, attrs.as_path);
    assert_eq!(d.attrs.aggregator, attrs.aggregator);
    assert!(
        buf.windows(2).any(|w| w == [0x5b, 0xa0]),
        "AS_TRANS on the wire"
    );
}

#[test]
fn confederation_segment_from_ebgp_is_treat_as_withdraw() {
    let d = decode_ok(&[0x40, 2, 6, 3, 1, 0, 0, 0, 1], EBGP4);
    assert_eq!(actions(&d), vec![(TreatAsWithdraw, 2, 11)]);
    assert!(
        decode_ok(&[0x40, 2, 6, 3, 1, 0, 0, 0, 1], IBGP4)
            .errors
            .is_empty()
    );
}

#[test]
fn as_path_length_rules() {
    let path = AsPath {
        segments: vec![
            AsSegment {
                kind: SegmentType::ConfedSequence,
                asns: vec![1, 2],
            },
            AsSegment {
                kind: SegmentType::Sequence,
                asns: vec![3, 4],
            },
            AsSegment {
                kind: SegmentType::Set,
                asns: vec![5, 6, 7],
            },
        ],
    };
    assert_eq!(path.path_len(), 3);
    assert!(path.contains(6));
    assert_eq!(path.first_as(), None);
    let mut p = AsPath::from_sequence([2]);
    p.prepend(1);
    assert_eq!(p, AsPath::from_sequence([1, 2]));
}
