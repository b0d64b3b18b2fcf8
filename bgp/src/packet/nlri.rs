//! NLRI prefix encoding (RFC 4271 §4.3, RFC 4760 §5).
//!
//! ```text
//! +---------------------------+
//! |   Length (1 octet, bits)  |
//! +---------------------------+
//! |   Prefix (ceil(len/8))    |
//! +---------------------------+
//! ```

use bytes::BufMut;

use crate::af::Prefix;

/// Decodes a run of prefixes that fills `buf` exactly; `None` when a length is out of
/// range or a prefix runs past the end, which RFC 4271 calls an invalid network field.
pub fn decode_prefixes<P: Prefix>(mut buf: &[u8]) -> Option<Vec<P>> {
    // Most prefixes in real tables take 4 bytes on the wire; reserve for that.
    let mut out = Vec::with_capacity(buf.len() / 4);
    while let Some((&len, rest)) = buf.split_first() {
        if len > P::MAX_LEN {
            return None;
        }
        let n = usize::from(len).div_ceil(8);
        if rest.len() < n {
            return None;
        }
        out.push(P::from_wire(&rest[..n], len));
        buf = &rest[n..];
    }
    Some(out)
}

/// Bytes one prefix takes on the wire.
pub fn encoded_len<P: Prefix>(prefix: &P) -> usize {
    1 + usize::from(prefix.prefix_len()).div_ceil(8)
}

/// Appends one prefix in NLRI form.
pub fn encode_prefix<P: Prefix>(prefix: &P, out: &mut impl BufMut) {
    let len = prefix.prefix_len();
    out.put_u8(len);
    let octets = prefix.octets();
    out.put_slice(&octets[..usize::from(len).div_ceil(8)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::{Ipv4Net, Ipv6Net};

    #[test]
    fn round_trips_ipv4_prefixes_of_every_byte_width() {
        let prefixes: Vec<Ipv4Net> = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.3/32",
            "10.1.2.128/25",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut buf = Vec::new();
        for p in &prefixes {
            encode_prefix(p, &mut buf);
        }
        assert_eq!(
            buf,
            [
                0, 8, 10, 16, 10, 1, 24, 10, 1, 2, 32, 10, 1, 2, 3, 25, 10, 1, 2, 128
            ]
        );
        assert_eq!(decode_prefixes::<Ipv4Net>(&buf).unwrap(), prefixes);
    }

    #[test]
    fn clears_host_bits_on_decode() {
        let got = decode_prefixes::<Ipv4Net>(&[24, 10, 1, 2]).unwrap();
        assert_eq!(got, vec!["10.1.2.0/24".parse::<Ipv4Net>().unwrap()]);
        let got = decode_prefixes::<Ipv4Net>(&[20, 10, 1, 255]).unwrap();
        assert_eq!(got, vec!["10.1.240.0/20".parse::<Ipv4Net>().unwrap()]);
    }

    #[test]
    fn rejects_overlong_length_and_truncation() {
        assert!(decode_prefixes::<Ipv4Net>(&[33, 1, 2, 3, 4, 5]).is_none());
        assert!(decode_prefixes::<Ipv4Net>(&[24, 10, 1]).is_none());
        assert!(decode_prefixes::<Ipv6Net>(&[129; 17]).is_none());
    }

    #[test]
    fn round_trips_ipv6() {
        let p: Ipv6Net = "2001:db8:1::/48".parse().unwrap();
        let mut buf = Vec::new();
        encode_prefix(&p, &mut buf);
        assert_eq!(buf, [48, 0x20, 0x01, 0x0d, 0xb8, 0, 1]);
        assert_eq!(decode_prefixes::<Ipv6Net>(&buf).unwrap(), vec![p]);
    }
}
