//! Whole messages (header, OPEN, UPDATE, NOTIFICATION, KEEPALIVE, ROUTE-REFRESH) under
//! both AS widths, both session types and with or without extended messages (RFC 8654):
//! never panic, and an UPDATE that decodes cleanly must survive encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serval_bgp::packet::attribute::{DecodeContext, EncodeContext};
use serval_bgp::packet::message::{HEADER_LEN, Message, decode_header};

fuzz_target!(|data: &[u8]| {
    if data.len() < 1 {
        return;
    }
    let ctx = DecodeContext {
        four_octet_as: data[0] & 1 == 1,
        ebgp: data[0] & 2 == 2,
        extended_messages: data[0] & 4 == 4,
    };
    let mut msg = vec![0xff; 16];
    let body = &data[1..];
    let total = (18 + body.len()).min(usize::from(u16::MAX)) as u16;
    msg.extend_from_slice(&total.to_be_bytes());
    msg.extend_from_slice(body);
    if msg.len() >= HEADER_LEN {
        let _ = decode_header(&msg[..HEADER_LEN], ctx.extended_messages);
    }
    if let Ok(Message::Update(u)) = Message::decode(&msg, ctx) {
        if u.errors.is_empty() && u.mp_reach.as_ref().is_none_or(|m| !m.nlri.is_empty()) {
            let again = Message::Update(u.clone()).encode(EncodeContext {
                four_octet_as: ctx.four_octet_as,
                extended_messages: ctx.extended_messages,
            });
            let limit = if ctx.extended_messages { 65535 } else { 4096 };
            if again.len() <= limit {
                match Message::decode(&again, ctx) {
                    Ok(Message::Update(v)) => {
                        assert_eq!(u.nlri, v.nlri);
                        assert_eq!(u.withdrawn, v.withdrawn);
                    }
                    other => panic!("re-encoded UPDATE no longer decodes: {other:?}"),
                }
            }
        }
    }
});
