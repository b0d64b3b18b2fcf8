//! UPDATE packing under the message-size limits (RFC 4271's 4,096 bytes and RFC 8654's
//! 65,535): for attribute sets of any size, packing terminates, never builds a message over
//! the limit, and every prefix is either in a message that decodes back or reported as not
//! packable because the attribute set alone leaves no room.
#![no_main]

use ipnet::{Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;
use serval_bgp::packet::attribute::{
    AsPath, DecodeContext, EncodeContext, LargeCommunity, PathAttributes,
};
use serval_bgp::packet::message::{Message, announcement_room, pack_announcements};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let ext = data[0] & 1 == 1;
    let v6 = data[0] & 2 == 2;
    let ctx = EncodeContext {
        four_octet_as: data[0] & 4 == 4,
        extended_messages: ext,
    };
    let dctx = DecodeContext {
        four_octet_as: ctx.four_octet_as,
        ebgp: true,
        extended_messages: ext,
    };
    // Sizes up to well past both limits.
    let communities = usize::from(u16::from_be_bytes([data[1], data[2]])) % 20_000;
    let large = usize::from(data[3]) * 8;
    let path_len = usize::from(data[4]) * 4;
    let count = usize::from(u16::from_be_bytes([data[5], data[6]])) % 3000 + 1;
    let len = data[7];
    let attrs = PathAttributes {
        as_path: AsPath::from_sequence((0..path_len).map(|i| 64_512 + i as u32)),
        next_hop: Some(if v6 {
            "2001:db8::1".parse().unwrap()
        } else {
            "192.0.2.1".parse().unwrap()
        }),
        communities: (0..communities as u32).collect(),
        large_communities: (0..large as u32).map(|i| LargeCommunity(i, i, i)).collect(),
        ..PathAttributes::default()
    };
    let limit = if ext { 65_535 } else { 4_096 };
    let mut msgs = Vec::new();
    let (unsent, room) = if v6 {
        let bits = len % 129;
        let prefixes: Vec<Ipv6Net> = (0..count as u128)
            .map(|i| Ipv6Net::new((i << 64).into(), bits).unwrap().trunc())
            .collect();
        (
            pack_announcements(&attrs, &prefixes, ctx, &mut msgs),
            announcement_room::<Ipv6Net>(&attrs, ctx),
        )
    } else {
        let bits = len % 33;
        let prefixes: Vec<Ipv4Net> = (0..count as u32)
            .map(|i| Ipv4Net::new((i << 8).into(), bits).unwrap().trunc())
            .collect();
        (
            pack_announcements(&attrs, &prefixes, ctx, &mut msgs),
            announcement_room::<Ipv4Net>(&attrs, ctx),
        )
    };
    match room {
        None => assert!(unsent == count && msgs.is_empty()),
        Some(_) => {
            assert_eq!(unsent, 0);
            for m in &msgs {
                assert!(m.len() <= limit, "{} bytes over a {limit} limit", m.len());
                match Message::decode(m, dctx) {
                    Ok(Message::Update(u)) => assert!(!u.nlri.is_empty() || u.mp_reach.is_some()),
                    other => panic!("packed UPDATE does not decode: {other:?}"),
                }
            }
        }
    }
});
