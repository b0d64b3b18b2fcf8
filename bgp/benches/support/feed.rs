//! The 100,000-prefix feed the decode+ingest benchmark and the `ingest_profile` example
//! both measure, and the pass they measure, so the two count the same work.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serval_bgp::decision::{DecisionConfig, Path, PeerId, SourceInfo};
use serval_bgp::packet::attribute::{AsPath, DecodeContext, EncodeContext, PathAttributes};
use serval_bgp::packet::message::{Message, pack_announcements};
use serval_bgp::rib::{DecideCtx, Interner, Table};

/// Prefixes in the feed.
pub const PREFIXES: u32 = 100_000;

/// The feed's UPDATEs: `sets` distinct attribute sets, `PREFIXES / sets` /24s each.
pub fn table_messages(sets: u32) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    let per = PREFIXES / sets;
    for set in 0..sets {
        let attrs = PathAttributes {
            as_path: AsPath::from_sequence([65002, 3356, 64_000 + set]),
            next_hop: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
            med: Some(set),
            communities: vec![65002 << 16 | set],
            ..Default::default()
        };
        let prefixes: Vec<Ipv4Net> = (0..per)
            .map(|i| {
                Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + ((set * per + i) << 8)), 24).unwrap()
            })
            .collect();
        pack_announcements(
            &attrs,
            &prefixes,
            EncodeContext {
                four_octet_as: true,
                extended_messages: false,
            },
            &mut msgs,
        );
    }
    msgs
}

/// Four eBGP peers the decision may meet.
pub fn sources() -> HashMap<PeerId, SourceInfo> {
    (1..=4)
        .map(|p| {
            (
                p,
                SourceInfo {
                    ebgp: true,
                    router_id: Ipv4Addr::new(10, 0, 0, p as u8),
                    address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, p as u8)),
                },
            )
        })
        .collect()
}

/// The measured pass: decode every UPDATE, intern its attributes, insert every prefix.
#[inline(never)]
pub fn ingest(msgs: &[Vec<u8>], src: &HashMap<PeerId, SourceInfo>) -> (Interner, Table<Ipv4Net>) {
    let ctx = DecideCtx {
        cfg: DecisionConfig::default(),
        sources: src,
    };
    let mut interner = Interner::default();
    let mut table = Table::<Ipv4Net>::default();
    for m in msgs {
        let Ok(Message::Update(u)) = Message::decode(
            m,
            DecodeContext {
                four_octet_as: true,
                ebgp: true,
                extended_messages: false,
            },
        ) else {
            panic!("bad message")
        };
        let attrs = interner.intern(u.attributes);
        for p in u.nlri {
            table.insert(
                p,
                Path {
                    peer: 1,
                    attrs: attrs.clone(),
                    stale: false,
                },
                &ctx,
            );
        }
    }
    (interner, table)
}
