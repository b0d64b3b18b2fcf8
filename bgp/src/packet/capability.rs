//! Capabilities advertised in OPEN (RFC 5492) and the ones we understand.
//!
//! ```text
//! +------------------------------+
//! | Capability Code (1 octet)    |
//! +------------------------------+
//! | Capability Length (1 octet)  |
//! +------------------------------+
//! | Capability Value (variable)  |
//! +------------------------------+
//! ```

use bytes::BufMut;
use nom::bytes::complete::take;
use nom::number::complete::{be_u8, be_u16, be_u32};
use nom::{IResult, Parser};
use serde::{Deserialize, Serialize};

use crate::af::Family;

/// Capability codes from the IANA registry that we decode.
pub mod code {
    /// Multiprotocol extensions (RFC 4760).
    pub const MULTIPROTOCOL: u8 = 1;
    /// Route refresh (RFC 2918).
    pub const ROUTE_REFRESH: u8 = 2;
    /// Extended next hop encoding (RFC 8950).
    pub const EXTENDED_NEXT_HOP: u8 = 5;
    /// BGP extended messages, up to 65,535 bytes (RFC 8654).
    pub const EXTENDED_MESSAGE: u8 = 6;
    /// Graceful restart (RFC 4724).
    pub const GRACEFUL_RESTART: u8 = 64;
    /// 4-octet AS numbers (RFC 6793).
    pub const FOUR_OCTET_AS: u8 = 65;
    /// Enhanced route refresh (RFC 7313).
    pub const ENHANCED_ROUTE_REFRESH: u8 = 70;
}

/// One family entry of the graceful-restart capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GracefulRestartFamily {
    /// AFI on the wire.
    pub afi: u16,
    /// SAFI on the wire.
    pub safi: u8,
    /// Forwarding state was preserved across the restart (the F bit).
    pub forwarding_preserved: bool,
}

/// The graceful-restart capability (RFC 4724 §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GracefulRestart {
    /// The sender has restarted (the R bit).
    pub restarting: bool,
    /// The sender supports graceful notification (the N bit, RFC 8538).
    pub notification: bool,
    /// Seconds the peer should keep our routes after the session drops (12 bits).
    pub restart_time: u16,
    /// Families whose state is preserved.
    pub families: Vec<GracefulRestartFamily>,
}

/// A capability as decoded from, or encoded into, an OPEN message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Capability {
    /// Multiprotocol extensions for one AFI/SAFI.
    Multiprotocol {
        /// AFI on the wire.
        afi: u16,
        /// SAFI on the wire.
        safi: u8,
    },
    /// Route refresh.
    RouteRefresh,
    /// Enhanced route refresh.
    EnhancedRouteRefresh,
    /// Extended next hop: NLRI AFI/SAFI that may carry a next hop of another AFI.
    ExtendedNextHop(Vec<(u16, u16, u16)>),
    /// Messages other than OPEN and KEEPALIVE may be up to 65,535 bytes (RFC 8654).
    ExtendedMessage,
    /// Graceful restart.
    GracefulRestart(GracefulRestart),
    /// 4-octet AS number support, carrying our real AS.
    FourOctetAs(u32),
    /// Anything else, kept verbatim.
    Unknown {
        /// Capability code.
        code: u8,
        /// Raw value.
        value: Vec<u8>,
    },
}

impl Capability {
    /// Multiprotocol capability for one of our families.
    pub fn multiprotocol(family: Family) -> Self {
        Capability::Multiprotocol {
            afi: family.afi(),
            safi: family.safi(),
        }
    }

    /// The capability code on the wire.
    pub fn code(&self) -> u8 {
        match self {
            Capability::Multiprotocol { .. } => code::MULTIPROTOCOL,
            Capability::RouteRefresh => code::ROUTE_REFRESH,
            Capability::EnhancedRouteRefresh => code::ENHANCED_ROUTE_REFRESH,
            Capability::ExtendedNextHop(_) => code::EXTENDED_NEXT_HOP,
            Capability::ExtendedMessage => code::EXTENDED_MESSAGE,
            Capability::GracefulRestart(_) => code::GRACEFUL_RESTART,
            Capability::FourOctetAs(_) => code::FOUR_OCTET_AS,
            Capability::Unknown { code, .. } => *code,
        }
    }

    /// Appends code, length and value.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u8(self.code());
        let len_at = out.len();
        out.put_u8(0);
        match self {
            Capability::Multiprotocol { afi, safi } => {
                out.put_u16(*afi);
                out.put_u8(0);
                out.put_u8(*safi);
            }
            Capability::RouteRefresh
            | Capability::EnhancedRouteRefresh
            | Capability::ExtendedMessage => {}
            Capability::ExtendedNextHop(entries) => {
                for (afi, safi, nh_afi) in entries {
                    out.put_u16(*afi);
                    out.put_u16(*safi);
                    out.put_u16(*nh_afi);
                }
            }
            Capability::GracefulRestart(gr) => {
                let mut head = gr.restart_time & 0x0fff;
                if gr.restarting {
                    head |= 0x8000;
                }
                if gr.notification {
                    head |= 0x4000;
                }
                out.put_u16(head);
                for f in &gr.families {
                    out.put_u16(f.afi);
                    out.put_u8(f.safi);
                    out.put_u8(if f.forwarding_preserved { 0x80 } else { 0 });
                }
            }
            Capability::FourOctetAs(asn) => out.put_u32(*asn),
            Capability::Unknown { value, .. } => out.put_slice(value),
        }
        let len = out.len() - len_at - 1;
        out[len_at] = u8::try_from(len).expect("capability values are far below 256 bytes");
    }

    /// Decodes the capabilities packed in one Capabilities optional parameter.
    /// `None` means the TLVs do not add up, or a known capability has a bad length.
    pub fn decode_all(mut buf: &[u8]) -> Option<Vec<Capability>> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let (rest, cap) = capability(buf).ok()?;
            out.push(cap?);
            buf = rest;
        }
        Some(out)
    }
}

/// One TLV; the inner `None` flags a known code with a malformed value.
fn capability(input: &[u8]) -> IResult<&[u8], Option<Capability>> {
    let (input, (code, len)) = (be_u8, be_u8).parse(input)?;
    let (input, value) = take(len).parse(input)?;
    Ok((input, decode_value(code, value)))
}

fn decode_value(code: u8, value: &[u8]) -> Option<Capability> {
    let cap = match code {
        code::MULTIPROTOCOL => {
            let (rest, (afi, _reserved, safi)) =
                (be_u16::<_, ()>, be_u8, be_u8).parse(value).ok()?;
            if !rest.is_empty() {
                return None;
            }
            Capability::Multiprotocol { afi, safi }
        }
        code::ROUTE_REFRESH if value.is_empty() => Capability::RouteRefresh,
        code::ENHANCED_ROUTE_REFRESH if value.is_empty() => Capability::EnhancedRouteRefresh,
        code::ROUTE_REFRESH | code::ENHANCED_ROUTE_REFRESH => return None,
        code::EXTENDED_MESSAGE if value.is_empty() => Capability::ExtendedMessage,
        code::EXTENDED_MESSAGE => return None,
        code::EXTENDED_NEXT_HOP => {
            if !value.len().is_multiple_of(6) {
                return None;
            }
            let entries = value
                .chunks_exact(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u16::from_be_bytes([c[2], c[3]]),
                        u16::from_be_bytes([c[4], c[5]]),
                    )
                })
                .collect();
            Capability::ExtendedNextHop(entries)
        }
        code::GRACEFUL_RESTART => {
            if value.len() < 2 || !(value.len() - 2).is_multiple_of(4) {
                return None;
            }
            let head = u16::from_be_bytes([value[0], value[1]]);
            let families = value[2..]
                .chunks_exact(4)
                .map(|c| GracefulRestartFamily {
                    afi: u16::from_be_bytes([c[0], c[1]]),
                    safi: c[2],
                    forwarding_preserved: c[3] & 0x80 != 0,
                })
                .collect();
            Capability::GracefulRestart(GracefulRestart {
                restarting: head & 0x8000 != 0,
                notification: head & 0x4000 != 0,
                restart_time: head & 0x0fff,
                families,
            })
        }
        code::FOUR_OCTET_AS => {
            let (rest, asn) = be_u32::<_, ()>(value).ok()?;
            if !rest.is_empty() {
                return None;
            }
            Capability::FourOctetAs(asn)
        }
        _ => Capability::Unknown {
            code,
            value: value.to_vec(),
        },
    };
    Some(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(cap: Capability, wire: &[u8]) {
        let mut buf = Vec::new();
        cap.encode(&mut buf);
        assert_eq!(buf, wire, "encoding of {cap:?}");
        assert_eq!(Capability::decode_all(wire).unwrap(), vec![cap]);
    }

    #[test]
    fn byte_vectors_for_each_capability() {
        round_trip(
            Capability::multiprotocol(Family::Ipv6Unicast),
            &[1, 4, 0, 2, 0, 1],
        );
        round_trip(Capability::RouteRefresh, &[2, 0]);
        round_trip(Capability::EnhancedRouteRefresh, &[70, 0]);
        round_trip(Capability::ExtendedMessage, &[6, 0]);
        round_trip(
            Capability::FourOctetAs(4_200_000_001),
            &[65, 4, 0xfa, 0x56, 0xea, 0x01],
        );
        round_trip(
            Capability::ExtendedNextHop(vec![(1, 1, 2)]),
            &[5, 6, 0, 1, 0, 1, 0, 2],
        );
        round_trip(
            Capability::GracefulRestart(GracefulRestart {
                restarting: true,
                notification: false,
                restart_time: 120,
                families: vec![GracefulRestartFamily {
                    afi: 1,
                    safi: 1,
                    forwarding_preserved: true,
                }],
            }),
            &[64, 6, 0x80, 120, 0, 1, 1, 0x80],
        );
        round_trip(
            Capability::Unknown {
                code: 73,
                value: b"host".to_vec(),
            },
            &[73, 4, b'h', b'o', b's', b't'],
        );
    }

    #[test]
    fn rejects_bad_lengths() {
        assert!(Capability::decode_all(&[1, 3, 0, 1, 0]).is_none());
        assert!(Capability::decode_all(&[65, 2, 0, 1]).is_none());
        assert!(Capability::decode_all(&[2, 1, 0]).is_none());
        assert!(Capability::decode_all(&[6, 1, 0]).is_none());
        assert!(Capability::decode_all(&[64, 3, 0, 1, 2]).is_none());
        // Length runs past the end of the parameter.
        assert!(Capability::decode_all(&[1, 9, 0, 1]).is_none());
    }
}
