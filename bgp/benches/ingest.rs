//! Decode + ingest throughput of a large IPv4 table, and best-path decisions with
//! several candidates. Run: `cargo bench -p serval-bgp --bench ingest`.
//!
//! Baseline to compare against: the end-to-end harness in `bench/bgp-1m`, which runs
//! BIRD 2 on the same 1,000,000 prefixes in the same run.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serval_bgp::decision::{DecisionConfig, Path, PeerId, SourceInfo};
use serval_bgp::packet::attribute::{AsPath, DecodeContext, EncodeContext, PathAttributes};
use serval_bgp::packet::message::{Message, pack_announcements};
use serval_bgp::rib::{DecideCtx, Interner, Table};

const PREFIXES: u32 = 100_000;

fn table_messages() -> Vec<Vec<u8>> {
    // 100 distinct attribute sets, 1,000 /24s each, like a feed with real path diversity.
    let mut msgs = Vec::new();
    for set in 0..100u32 {
        let attrs = PathAttributes {
            as_path: AsPath::from_sequence([65002, 3356, 64_000 + set]),
            next_hop: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
            med: Some(set),
            communities: vec![65002 << 16 | set],
            ..Default::default()
        };
        let prefixes: Vec<Ipv4Net> = (0..PREFIXES / 100)
            .map(|i| {
                Ipv4Net::new(
                    Ipv4Addr::from(0x0b00_0000 + ((set * (PREFIXES / 100) + i) << 8)),
                    24,
                )
                .unwrap()
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

fn sources() -> HashMap<PeerId, SourceInfo> {
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

/// Decode every UPDATE of a 100k-prefix feed and insert each prefix into the table.
#[divan::bench(sample_count = 10)]
fn decode_and_ingest_100k(b: divan::Bencher) {
    let msgs = table_messages();
    let src = sources();
    b.counter(divan::counter::ItemsCount::new(PREFIXES as usize))
        .bench_local(|| {
            let ctx = DecideCtx {
                cfg: DecisionConfig::default(),
                sources: &src,
            };
            let mut interner = Interner::default();
            let mut table = Table::<Ipv4Net>::default();
            for m in &msgs {
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
            assert_eq!(table.len(), PREFIXES as usize);
            table
        });
}

/// Decode only, to separate codec cost from RIB cost.
#[divan::bench(sample_count = 10)]
fn decode_only_100k(b: divan::Bencher) {
    let msgs = table_messages();
    b.counter(divan::counter::ItemsCount::new(PREFIXES as usize))
        .bench_local(|| {
            let mut n = 0;
            for m in &msgs {
                if let Ok(Message::Update(u)) = Message::decode(
                    m,
                    DecodeContext {
                        four_octet_as: true,
                        ebgp: true,
                        extended_messages: false,
                    },
                ) {
                    n += u.nlri.len();
                }
            }
            n
        });
}

/// A second and third peer announcing the same 100k prefixes: every insert runs the
/// full decision over competing paths.
#[divan::bench(sample_count = 10)]
fn three_way_decision_100k(b: divan::Bencher) {
    let src = sources();
    let prefixes: Vec<Ipv4Net> = (0..PREFIXES)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + (i << 8)), 24).unwrap())
        .collect();
    let mut interner = Interner::default();
    let attrs: Vec<_> = (1..=3u32)
        .map(|p| {
            interner.intern(PathAttributes {
                as_path: AsPath::from_sequence([65000 + p, 3356]),
                ..Default::default()
            })
        })
        .collect();
    b.counter(divan::counter::ItemsCount::new(3 * PREFIXES as usize))
        .bench_local(|| {
            let ctx = DecideCtx {
                cfg: DecisionConfig::default(),
                sources: &src,
            };
            let mut table = Table::<Ipv4Net>::default();
            for (peer, a) in attrs.iter().enumerate() {
                for p in &prefixes {
                    table.insert(
                        *p,
                        Path {
                            peer: peer as PeerId + 1,
                            attrs: a.clone(),
                            stale: false,
                        },
                        &ctx,
                    );
                }
            }
            table
        });
}

fn main() {
    divan::main();
}
