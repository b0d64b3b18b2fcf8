//! NLRI prefix lists of both families: never panic, and decoded prefixes re-encode to
//! a list that decodes to the same prefixes.
#![no_main]

use ipnet::{Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;
use serval_bgp::packet::nlri::{decode_prefixes, encode_prefix};

fuzz_target!(|data: &[u8]| {
    if let Some(v4) = decode_prefixes::<Ipv4Net>(data) {
        let mut out = Vec::new();
        v4.iter().for_each(|p| encode_prefix(p, &mut out));
        assert_eq!(decode_prefixes::<Ipv4Net>(&out), Some(v4));
    }
    if let Some(v6) = decode_prefixes::<Ipv6Net>(data) {
        let mut out = Vec::new();
        v6.iter().for_each(|p| encode_prefix(p, &mut out));
        assert_eq!(decode_prefixes::<Ipv6Net>(&out), Some(v6));
    }
});
