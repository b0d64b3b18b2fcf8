//! Capability TLVs: never panic, and what decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serval_bgp::packet::capability::Capability;

fuzz_target!(|data: &[u8]| {
    if let Some(caps) = Capability::decode_all(data) {
        let mut out = Vec::new();
        caps.iter().for_each(|c| c.encode(&mut out));
        assert_eq!(Capability::decode_all(&out), Some(caps));
    }
});
