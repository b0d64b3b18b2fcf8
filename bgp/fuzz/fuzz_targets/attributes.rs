//! The path attribute section alone, under every decode context: never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serval_bgp::packet::attribute::{DecodeContext, decode_attributes};

fuzz_target!(|data: &[u8]| {
    for four_octet_as in [false, true] {
        for ebgp in [false, true] {
            let _ = decode_attributes(data, DecodeContext {
                    four_octet_as,
                    ebgp,
                    extended_messages: false,
                });
        }
    }
});
