//! One decode + ingest pass over a 100,000-prefix feed, for machine-independent measures:
//! run it under `valgrind --tool=callgrind --toggle-collect=ingest_profile::ingest` for the
//! instructions of the pass alone (setup excluded), and read its own allocation counts (a
//! counting global allocator) printed at the end, per prefix.
//!
//!     cargo build --release -p serval-bgp --example ingest_profile
//!     target/release/examples/ingest_profile [sets]      # attribute sets, default 100
//!
//! `bench/bgp-ingest-profile` runs both and prints instructions and allocations per prefix.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::Ipv4Net;
use serval_bgp::decision::{DecisionConfig, Path, PeerId, SourceInfo};
use serval_bgp::packet::attribute::{AsPath, DecodeContext, EncodeContext, PathAttributes};
use serval_bgp::packet::message::{Message, pack_announcements};
use serval_bgp::rib::{DecideCtx, Interner, Table};

/// Counts allocations and bytes (live and peak) on top of the system allocator.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

// A global allocator is an unsafe trait by definition; this one only forwards to System.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        let live = LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed) + layout.size() as u64;
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PREFIXES: u32 = 100_000;

fn table_messages(sets: u32) -> Vec<Vec<u8>> {
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

/// The measured pass: decode every UPDATE, intern its attributes, insert every prefix.
#[inline(never)]
fn ingest(msgs: &[Vec<u8>], src: &HashMap<PeerId, SourceInfo>) -> (Interner, Table<Ipv4Net>) {
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

fn main() {
    let sets: u32 = std::env::args()
        .nth(1)
        .map_or(100, |s| s.parse().expect("attribute sets"));
    let msgs = table_messages(sets);
    let src: HashMap<PeerId, SourceInfo> = [(
        1,
        SourceInfo {
            ebgp: true,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        },
    )]
    .into();
    let (allocs0, bytes0, live0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
        LIVE.load(Ordering::Relaxed),
    );
    PEAK.store(live0, Ordering::Relaxed);
    let (interner, table) = ingest(&msgs, &src);
    assert_eq!(table.len(), PREFIXES as usize);
    let n = f64::from(PREFIXES);
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
    let bytes = BYTES.load(Ordering::Relaxed) - bytes0;
    let kept = LIVE.load(Ordering::Relaxed) - live0;
    let peak = PEAK.load(Ordering::Relaxed) - live0;
    println!(
        "{PREFIXES} prefixes, {sets} attribute sets, {} UPDATEs: {:.2} allocations and {:.0} bytes allocated per prefix; {:.0} bytes per prefix kept by the RIB (peak {:.0})",
        msgs.len(),
        allocs as f64 / n,
        bytes as f64 / n,
        kept as f64 / n,
        peak as f64 / n,
    );
    drop((interner, table));
}
