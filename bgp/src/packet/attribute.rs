//! Path attributes (RFC 4271 §4.3, §5) with RFC 7606 error handling.
//!
//! ```text
//! 0                   1
//! 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |O|T|P|E|  0    |  Type code    |   O optional, T transitive,
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+   P partial, E extended length
//! | Length (1 octet, or 2 if E)   |
//! +-------------------------------+
//! | Value ...                     |
//! +-------------------------------+
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BufMut;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use super::error::{AttributeError, NotificationError, UpdateErrorAction, update_subcode as sub};
use super::nlri;
use crate::af::{Family, Prefix};

/// Attribute flag bits.
pub mod flag {
    /// The attribute is optional.
    pub const OPTIONAL: u8 = 0x80;
    /// The attribute is transitive.
    pub const TRANSITIVE: u8 = 0x40;
    /// Some speaker on the path did not understand this optional transitive attribute.
    pub const PARTIAL: u8 = 0x20;
    /// The length field is two octets.
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// Attribute type codes we decode.
pub mod type_code {
    /// ORIGIN (RFC 4271).
    pub const ORIGIN: u8 = 1;
    /// AS_PATH (RFC 4271).
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP (RFC 4271).
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC (RFC 4271).
    pub const MULTI_EXIT_DISC: u8 = 4;
    /// LOCAL_PREF (RFC 4271).
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE (RFC 4271).
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// AGGREGATOR (RFC 4271).
    pub const AGGREGATOR: u8 = 7;
    /// COMMUNITIES (RFC 1997).
    pub const COMMUNITIES: u8 = 8;
    /// ORIGINATOR_ID (RFC 4456).
    pub const ORIGINATOR_ID: u8 = 9;
    /// CLUSTER_LIST (RFC 4456).
    pub const CLUSTER_LIST: u8 = 10;
    /// MP_REACH_NLRI (RFC 4760).
    pub const MP_REACH_NLRI: u8 = 14;
    /// MP_UNREACH_NLRI (RFC 4760).
    pub const MP_UNREACH_NLRI: u8 = 15;
    /// EXTENDED_COMMUNITIES (RFC 4360).
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    /// AS4_PATH (RFC 6793).
    pub const AS4_PATH: u8 = 17;
    /// AS4_AGGREGATOR (RFC 6793).
    pub const AS4_AGGREGATOR: u8 = 18;
    /// LARGE_COMMUNITY (RFC 8092).
    pub const LARGE_COMMUNITY: u8 = 32;
}

/// The AS number that stands in for a 4-octet AS towards 2-octet speakers (RFC 6793).
pub const AS_TRANS: u32 = 23456;

/// ORIGIN values; lower is preferred in best-path selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Learned from an interior protocol or configured.
    #[default]
    Igp = 0,
    /// Learned from EGP.
    Egp = 1,
    /// Learned some other way (redistribution).
    Incomplete = 2,
}

/// AGGREGATOR contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Aggregator {
    /// AS of the aggregating speaker.
    pub asn: u32,
    /// BGP identifier of the aggregating speaker.
    pub address: Ipv4Addr,
}

/// A large community (RFC 8092): global administrator and two local data parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct LargeCommunity(pub u32, pub u32, pub u32);

/// An attribute we do not interpret but must pass on (optional transitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RawAttribute {
    /// Flags as they will be sent (Partial set once we have relayed it).
    pub flags: u8,
    /// Type code.
    pub type_code: u8,
    /// Value bytes.
    pub value: Vec<u8>,
}

/// The attributes of one path, with the next hop of its family folded in.
/// Identical sets are interned by the RIB, so keep this `Hash + Eq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathAttributes {
    /// ORIGIN.
    pub origin: Origin,
    /// AS_PATH, with AS4_PATH already merged in.
    pub as_path: AsPath,
    /// Next hop from NEXT_HOP (IPv4) or MP_REACH_NLRI.
    pub next_hop: Option<IpAddr>,
    /// Link-local IPv6 next hop from a 32-byte MP_REACH_NLRI next hop (boxed: rare, and
    /// every attribute set would otherwise carry its 17 bytes).
    pub link_local_next_hop: Option<Box<Ipv6Addr>>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE present.
    pub atomic_aggregate: bool,
    /// AGGREGATOR, with AS4_AGGREGATOR merged in.
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES (shown as `asn:value`).
    #[serde(serialize_with = "ser_communities")]
    pub communities: Vec<u32>,
    /// ORIGINATOR_ID.
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST.
    pub cluster_list: Vec<Ipv4Addr>,
    /// EXTENDED_COMMUNITIES, each as its 8 octets in a big-endian integer (shown in hex).
    #[serde(serialize_with = "ser_extended")]
    pub extended_communities: Vec<u64>,
    /// LARGE_COMMUNITY (shown as `global:local1:local2`).
    #[serde(serialize_with = "ser_large")]
    pub large_communities: Vec<LargeCommunity>,
    /// Unknown optional transitive attributes, relayed with Partial set.
    pub unknown: Vec<RawAttribute>,
    /// The kernel route metric an import filter gave this path (BIRD's `krt_metric`):
    /// local to this speaker, never sent or received; `None` is the node's normal priority.
    /// (A metric is never 0, so the option costs 4 bytes: with the boxed link-local next
    /// hop, a set is no larger than before priorities existed.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<std::num::NonZeroU32>,
}

// A million routes may hold a few hundred thousand distinct sets, each in an `Arc`: 16
// bytes of counts plus this, which at 216 bytes is a 240-byte allocation and at 224 would be
// 256 (glibc rounds request + 8 up to 16). Grow it only by boxing something rare.
const _: () = assert!(std::mem::size_of::<PathAttributes>() <= 216);

fn ser_communities<S: serde::Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|c| format!("{}:{}", c >> 16, c & 0xffff)))
}

fn ser_extended<S: serde::Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|c| format!("0x{c:016x}")))
}

fn ser_large<S: serde::Serializer>(v: &[LargeCommunity], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|c| format!("{}:{}:{}", c.0, c.1, c.2)))
}

/// MP_REACH_NLRI (RFC 4760 §3).
///
/// ```text
/// +---------------------------------------------------------+
/// | AFI (2) | SAFI (1) | NH len (1) | Next hop (var) | 0 (1) |
/// +---------------------------------------------------------+
/// | NLRI (variable)                                         |
/// +---------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    /// AFI on the wire.
    pub afi: u16,
    /// SAFI on the wire.
    pub safi: u8,
    /// Global next hop.
    pub next_hop: Option<IpAddr>,
    /// Link-local next hop, when 32 bytes were sent.
    pub link_local_next_hop: Option<Ipv6Addr>,
    /// Reachable prefixes; empty for families we do not support.
    pub nlri: Vec<IpNet>,
}

/// MP_UNREACH_NLRI (RFC 4760 §4): AFI (2), SAFI (1), withdrawn routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    /// AFI on the wire.
    pub afi: u16,
    /// SAFI on the wire.
    pub safi: u8,
    /// Withdrawn prefixes; empty for families we do not support.
    pub withdrawn: Vec<IpNet>,
}

/// How AS_PATH is kept and changed.
mod as_path;
/// Reading attributes off the wire, with RFC 7606 error handling.
mod decode;
/// Writing attributes, MP_REACH and MP_UNREACH.
mod encode;

pub use as_path::{AsPath, AsSegment, SegmentType};
pub use decode::{DecodeContext, DecodedAttributes, decode_attributes};
pub use encode::{EncodeContext, Reach, encode_mp_unreach};

#[cfg(test)]
#[path = "attribute_tests.rs"]
mod tests;
