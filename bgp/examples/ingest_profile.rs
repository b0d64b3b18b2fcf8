//! One decode + ingest pass over a 100,000-prefix feed, for machine-independent measures:
//! run it under `valgrind --tool=callgrind --toggle-collect=ingest_profile::feed::ingest` for the
//! instructions of the pass alone (setup excluded), and read its own allocation counts (a
//! counting global allocator) printed at the end, per prefix.
//!
//!     cargo build --release -p serval-bgp --example ingest_profile
//!     target/release/examples/ingest_profile [sets]      # attribute sets, default 100
//!
//! `bench/bgp-ingest-profile` runs both and prints instructions and allocations per prefix.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

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

#[path = "../benches/support/feed.rs"]
mod feed;

use feed::{PREFIXES, ingest, table_messages};

fn main() {
    let sets: u32 = std::env::args()
        .nth(1)
        .map_or(100, |s| s.parse().expect("attribute sets"));
    let msgs = table_messages(sets);
    let src = feed::sources();
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
