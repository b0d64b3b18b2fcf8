//! Decode + ingest throughput of a large IPv4 table, and best-path decisions with
//! several candidates. Run: `cargo bench -p serval-bgp --bench ingest`.
//!
//! Baseline to compare against: the end-to-end harness in `bench/bgp-1m`, which runs
//! BIRD 2 on the same 1,000,000 prefixes in the same run.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serval_bgp::decision::{DecisionConfig, Path, PeerId};
use serval_bgp::packet::attribute::{AsPath, DecodeContext, PathAttributes};
use serval_bgp::packet::message::Message;
use serval_bgp::rib::{DecideCtx, Interner, Table};

#[path = "support/feed.rs"]
mod feed;

use feed::{PREFIXES, sources};

/// Decode every UPDATE of a 100k-prefix feed and insert each prefix into the table.
#[divan::bench(sample_count = 10)]
fn decode_and_ingest_100k(b: divan::Bencher) {
    // 100 distinct attribute sets, 1,000 /24s each, like a feed with real path diversity.
    let msgs = feed::table_messages(100);
    let src = sources();
    b.counter(divan::counter::ItemsCount::new(PREFIXES as usize))
        .bench_local(|| {
            let (_, table) = feed::ingest(&msgs, &src);
            assert_eq!(table.len(), PREFIXES as usize);
            table
        });
}

/// Decode only, to separate codec cost from RIB cost.
#[divan::bench(sample_count = 10)]
fn decode_only_100k(b: divan::Bencher) {
    let msgs = feed::table_messages(100);
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
