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

/// AS_PATH segment types (RFC 4271, RFC 5065).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegmentType {
    /// Unordered set (from aggregation).
    Set = 1,
    /// Ordered sequence.
    Sequence = 2,
    /// Confederation sequence.
    ConfedSequence = 3,
    /// Confederation set.
    ConfedSet = 4,
}

impl SegmentType {
    fn from_wire(v: u8) -> Option<Self> {
        Some(match v {
            1 => SegmentType::Set,
            2 => SegmentType::Sequence,
            3 => SegmentType::ConfedSequence,
            4 => SegmentType::ConfedSet,
            _ => return None,
        })
    }
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct AsSegment {
    /// Segment type.
    pub kind: SegmentType,
    /// AS numbers in wire order.
    pub asns: Vec<u32>,
}

/// An AS_PATH, always held with 4-octet AS numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct AsPath {
    /// Segments in wire order.
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// A path made of one sequence.
    pub fn from_sequence(asns: impl IntoIterator<Item = u32>) -> Self {
        let asns: Vec<u32> = asns.into_iter().collect();
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![AsSegment {
                kind: SegmentType::Sequence,
                asns,
            }],
        }
    }

    /// Length for best-path selection: a set counts as one, confederation segments as zero.
    pub fn path_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentType::Sequence => s.asns.len(),
                SegmentType::Set => 1,
                SegmentType::ConfedSequence | SegmentType::ConfedSet => 0,
            })
            .sum()
    }

    /// Whether `asn` appears anywhere, for loop detection.
    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    /// How many times `asn` appears, for loop detection that tolerates a few.
    pub fn count(&self, asn: u32) -> usize {
        self.segments
            .iter()
            .map(|s| s.asns.iter().filter(|a| **a == asn).count())
            .sum()
    }

    /// The neighbouring AS (first AS of a leading sequence), used to scope MED comparison.
    pub fn first_as(&self) -> Option<u32> {
        match self.segments.first() {
            Some(AsSegment {
                kind: SegmentType::Sequence,
                asns,
            }) => asns.first().copied(),
            _ => None,
        }
    }

    /// Prepends our AS as we send the path to an eBGP peer.
    pub fn prepend(&mut self, asn: u32) {
        match self.segments.first_mut() {
            Some(seg) if seg.kind == SegmentType::Sequence && seg.asns.len() < 255 => {
                seg.asns.insert(0, asn)
            }
            _ => self.segments.insert(
                0,
                AsSegment {
                    kind: SegmentType::Sequence,
                    asns: vec![asn],
                },
            ),
        }
    }

    /// Whether any AS number needs four octets.
    fn needs_four_octets(&self) -> bool {
        self.segments
            .iter()
            .any(|s| s.asns.iter().any(|&a| a > 0xffff))
    }

    fn has_confed(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s.kind, SegmentType::ConfedSequence | SegmentType::ConfedSet))
    }

    fn encode(&self, four_octet: bool, out: &mut Vec<u8>) {
        for seg in &self.segments {
            for chunk in seg.asns.chunks(255) {
                out.put_u8(seg.kind as u8);
                out.put_u8(chunk.len() as u8);
                for &asn in chunk {
                    if four_octet {
                        out.put_u32(asn);
                    } else {
                        out.put_u16(u16::try_from(asn).unwrap_or(AS_TRANS as u16));
                    }
                }
            }
        }
    }

    /// Decodes segments; `None` when the value is malformed (RFC 7606 §7.2).
    fn decode(mut value: &[u8], four_octet: bool) -> Option<AsPath> {
        let width = if four_octet { 4 } else { 2 };
        let mut segments = Vec::new();
        while !value.is_empty() {
            if value.len() < 2 {
                return None;
            }
            let kind = SegmentType::from_wire(value[0])?;
            let count = usize::from(value[1]);
            if count == 0 || value.len() < 2 + count * width {
                return None;
            }
            let asns = value[2..2 + count * width]
                .chunks_exact(width)
                .map(|c| {
                    if four_octet {
                        u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                    } else {
                        u32::from(u16::from_be_bytes([c[0], c[1]]))
                    }
                })
                .collect();
            segments.push(AsSegment { kind, asns });
            value = &value[2 + count * width..];
        }
        Some(AsPath { segments })
    }

    /// Rebuilds the true path from AS_PATH and AS4_PATH (RFC 6793 §4.2.3).
    fn merge_as4(self, as4: AsPath) -> AsPath {
        let (n, n4) = (self.path_len(), as4.path_len());
        if n < n4 {
            return self;
        }
        let mut keep = n - n4;
        let mut segments = Vec::new();
        for seg in self.segments {
            if keep == 0 {
                break;
            }
            match seg.kind {
                SegmentType::Sequence if seg.asns.len() > keep => {
                    segments.push(AsSegment {
                        kind: seg.kind,
                        asns: seg.asns[..keep].to_vec(),
                    });
                    keep = 0;
                }
                SegmentType::Sequence => {
                    keep -= seg.asns.len();
                    segments.push(seg);
                }
                SegmentType::Set => {
                    keep -= 1;
                    segments.push(seg);
                }
                _ => segments.push(seg),
            }
        }
        for seg in as4.segments {
            match segments.last_mut() {
                Some(last)
                    if last.kind == SegmentType::Sequence
                        && seg.kind == SegmentType::Sequence
                        && last.asns.len() + seg.asns.len() <= 255 =>
                {
                    last.asns.extend(seg.asns)
                }
                _ => segments.push(seg),
            }
        }
        AsPath { segments }
    }
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
    /// Link-local IPv6 next hop from a 32-byte MP_REACH_NLRI next hop.
    pub link_local_next_hop: Option<Ipv6Addr>,
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
}

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

/// Session facts the attribute decoder needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeContext {
    /// Both sides advertised 4-octet AS support.
    pub four_octet_as: bool,
    /// The peer is external (changes LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST handling).
    pub ebgp: bool,
    /// Both sides advertised extended messages (RFC 8654): UPDATEs may reach 65,535 bytes.
    pub extended_messages: bool,
}

/// Everything the attribute section of an UPDATE held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodedAttributes {
    /// The attributes proper.
    pub attrs: PathAttributes,
    /// MP_REACH_NLRI, if present.
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI, if present.
    pub mp_unreach: Option<MpUnreach>,
    /// Survivable errors, for logs; the strongest action decides the UPDATE's fate.
    pub errors: Vec<AttributeError>,
    /// ORIGIN was present.
    pub has_origin: bool,
    /// AS_PATH was present.
    pub has_as_path: bool,
    /// NEXT_HOP was present.
    pub has_next_hop: bool,
    /// LOCAL_PREF was present.
    pub has_local_pref: bool,
    /// Any attribute at all was present.
    pub any: bool,
}

enum Fault {
    Reset(NotificationError),
    Survive(UpdateErrorAction, u8, &'static str),
}

/// The O and T bits a known attribute must carry.
fn expected_flags(tc: u8) -> Option<u8> {
    use type_code::*;
    Some(match tc {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => flag::TRANSITIVE,
        MULTI_EXIT_DISC | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH_NLRI | MP_UNREACH_NLRI => {
            flag::OPTIONAL
        }
        AGGREGATOR | COMMUNITIES | EXTENDED_COMMUNITIES | AS4_PATH | AS4_AGGREGATOR
        | LARGE_COMMUNITY => flag::OPTIONAL | flag::TRANSITIVE,
        _ => return None,
    })
}

/// The RFC 7606 action for a malformed instance of a known attribute.
fn malformed_action(tc: u8) -> Option<UpdateErrorAction> {
    use type_code::*;
    match tc {
        ATOMIC_AGGREGATE | AGGREGATOR | AS4_PATH | AS4_AGGREGATOR => {
            Some(UpdateErrorAction::AttributeDiscard)
        }
        MP_REACH_NLRI | MP_UNREACH_NLRI => None,
        _ => Some(UpdateErrorAction::TreatAsWithdraw),
    }
}

fn malformed(tc: u8, subcode: u8, raw: &[u8], reason: &'static str) -> Fault {
    match malformed_action(tc) {
        Some(action) => Fault::Survive(action, subcode, reason),
        None => Fault::Reset(NotificationError::update(subcode, raw.to_vec())),
    }
}

fn u32_at(v: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]])
}

fn ipv4_at(v: &[u8], i: usize) -> Ipv4Addr {
    Ipv4Addr::new(v[i], v[i + 1], v[i + 2], v[i + 3])
}

fn ipv6_at(v: &[u8], i: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&v[i..i + 16]);
    Ipv6Addr::from(o)
}

fn usable_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

fn decode_prefix_list(family: Option<Family>, value: &[u8]) -> Option<Vec<IpNet>> {
    Some(match family {
        Some(Family::Ipv4Unicast) => nlri::decode_prefixes::<Ipv4Net>(value)?
            .into_iter()
            .map(Prefix::into_ipnet)
            .collect(),
        Some(Family::Ipv6Unicast) => nlri::decode_prefixes::<Ipv6Net>(value)?
            .into_iter()
            .map(Prefix::into_ipnet)
            .collect(),
        None => Vec::new(),
    })
}

fn decode_mp_reach(value: &[u8], raw: &[u8]) -> Result<MpReach, Fault> {
    let reset = || {
        Fault::Reset(NotificationError::update(
            sub::OPTIONAL_ATTRIBUTE_ERROR,
            raw.to_vec(),
        ))
    };
    if value.len() < 5 {
        return Err(reset());
    }
    let afi = u16::from_be_bytes([value[0], value[1]]);
    let safi = value[2];
    let nh_len = usize::from(value[3]);
    if value.len() < 4 + nh_len + 1 {
        return Err(reset());
    }
    let nh = &value[4..4 + nh_len];
    let family = Family::from_afi_safi(afi, safi);
    let (next_hop, link_local) = match (family, nh_len) {
        (None, _) => (None, None),
        (Some(Family::Ipv4Unicast), 4) => (Some(IpAddr::V4(ipv4_at(nh, 0))), None),
        (Some(_), 16) => (Some(IpAddr::V6(ipv6_at(nh, 0))), None),
        (Some(_), 32) => (Some(IpAddr::V6(ipv6_at(nh, 0))), Some(ipv6_at(nh, 16))),
        _ => return Err(reset()),
    };
    // One reserved octet (formerly SNPAs) follows the next hop; RFC 4760 says ignore it.
    let nlri = decode_prefix_list(family, &value[4 + nh_len + 1..]).ok_or_else(|| {
        Fault::Reset(NotificationError::update(
            sub::OPTIONAL_ATTRIBUTE_ERROR,
            raw.to_vec(),
        ))
    })?;
    Ok(MpReach {
        afi,
        safi,
        next_hop,
        link_local_next_hop: link_local,
        nlri,
    })
}

fn decode_mp_unreach(value: &[u8], raw: &[u8]) -> Result<MpUnreach, Fault> {
    let reset = || {
        Fault::Reset(NotificationError::update(
            sub::OPTIONAL_ATTRIBUTE_ERROR,
            raw.to_vec(),
        ))
    };
    if value.len() < 3 {
        return Err(reset());
    }
    let afi = u16::from_be_bytes([value[0], value[1]]);
    let safi = value[2];
    let withdrawn =
        decode_prefix_list(Family::from_afi_safi(afi, safi), &value[3..]).ok_or_else(reset)?;
    Ok(MpUnreach {
        afi,
        safi,
        withdrawn,
    })
}

/// Holds AS4_PATH / AS4_AGGREGATOR until the whole list is read.
#[derive(Default)]
struct As4Parts {
    path: Option<AsPath>,
    aggregator: Option<Aggregator>,
}

fn decode_one(
    tc: u8,
    flags: u8,
    value: &[u8],
    raw: &[u8],
    ctx: DecodeContext,
    out: &mut DecodedAttributes,
    as4: &mut As4Parts,
) -> Result<(), Fault> {
    use type_code::*;
    let Some(expected) = expected_flags(tc) else {
        if flags & flag::OPTIONAL == 0 {
            return Err(Fault::Reset(NotificationError::update(
                sub::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                raw.to_vec(),
            )));
        }
        if flags & flag::TRANSITIVE != 0 {
            out.attrs.unknown.push(RawAttribute {
                flags: (flags | flag::PARTIAL) & !flag::EXTENDED_LENGTH,
                type_code: tc,
                value: value.to_vec(),
            });
        }
        return Ok(());
    };
    let partial_ok = expected == flag::OPTIONAL | flag::TRANSITIVE;
    if flags & (flag::OPTIONAL | flag::TRANSITIVE) != expected
        || (!partial_ok && flags & flag::PARTIAL != 0)
    {
        return Err(malformed(
            tc,
            sub::ATTRIBUTE_FLAGS_ERROR,
            raw,
            "attribute flags do not match its type",
        ));
    }
    let len_err = |reason| malformed(tc, sub::ATTRIBUTE_LENGTH_ERROR, raw, reason);
    let a = &mut out.attrs;
    match tc {
        ORIGIN => {
            if value.len() != 1 {
                return Err(len_err("ORIGIN length is not 1"));
            }
            a.origin = match value[0] {
                0 => Origin::Igp,
                1 => Origin::Egp,
                2 => Origin::Incomplete,
                _ => {
                    return Err(malformed(
                        tc,
                        sub::INVALID_ORIGIN_ATTRIBUTE,
                        raw,
                        "ORIGIN value is not 0, 1 or 2",
                    ));
                }
            };
            out.has_origin = true;
        }
        AS_PATH => {
            let path = AsPath::decode(value, ctx.four_octet_as).ok_or_else(|| {
                malformed(
                    tc,
                    sub::MALFORMED_AS_PATH,
                    raw,
                    "AS_PATH segments do not parse",
                )
            })?;
            if ctx.ebgp && path.has_confed() {
                return Err(malformed(
                    tc,
                    sub::MALFORMED_AS_PATH,
                    raw,
                    "confederation segment from an external peer",
                ));
            }
            a.as_path = path;
            out.has_as_path = true;
        }
        NEXT_HOP => {
            if value.len() != 4 {
                return Err(len_err("NEXT_HOP length is not 4"));
            }
            let nh = IpAddr::V4(ipv4_at(value, 0));
            if !usable_unicast(nh) {
                return Err(malformed(
                    tc,
                    sub::INVALID_NEXT_HOP_ATTRIBUTE,
                    raw,
                    "NEXT_HOP is not a unicast address",
                ));
            }
            a.next_hop = Some(nh);
            out.has_next_hop = true;
        }
        MULTI_EXIT_DISC => {
            if value.len() != 4 {
                return Err(len_err("MULTI_EXIT_DISC length is not 4"));
            }
            a.med = Some(u32_at(value, 0));
        }
        LOCAL_PREF => {
            if ctx.ebgp {
                // RFC 7606 §7.5: from an external peer it is discarded, whatever its form.
                return Err(Fault::Survive(
                    UpdateErrorAction::AttributeDiscard,
                    sub::OPTIONAL_ATTRIBUTE_ERROR,
                    "LOCAL_PREF from an external peer",
                ));
            }
            if value.len() != 4 {
                return Err(len_err("LOCAL_PREF length is not 4"));
            }
            a.local_pref = Some(u32_at(value, 0));
            out.has_local_pref = true;
        }
        ATOMIC_AGGREGATE => {
            if !value.is_empty() {
                return Err(len_err("ATOMIC_AGGREGATE length is not 0"));
            }
            a.atomic_aggregate = true;
        }
        AGGREGATOR => {
            a.aggregator = Some(match (value.len(), ctx.four_octet_as) {
                (8, true) => Aggregator {
                    asn: u32_at(value, 0),
                    address: ipv4_at(value, 4),
                },
                (6, false) => Aggregator {
                    asn: u32::from(u16::from_be_bytes([value[0], value[1]])),
                    address: ipv4_at(value, 2),
                },
                _ => return Err(len_err("AGGREGATOR length does not match the AS width")),
            });
        }
        COMMUNITIES => {
            if value.is_empty() || !value.len().is_multiple_of(4) {
                return Err(len_err(
                    "COMMUNITIES length is not a positive multiple of 4",
                ));
            }
            a.communities = value.chunks_exact(4).map(|c| u32_at(c, 0)).collect();
        }
        ORIGINATOR_ID | CLUSTER_LIST if ctx.ebgp => {
            return Err(Fault::Survive(
                UpdateErrorAction::AttributeDiscard,
                sub::OPTIONAL_ATTRIBUTE_ERROR,
                "route reflection attribute from an external peer",
            ));
        }
        ORIGINATOR_ID => {
            if value.len() != 4 {
                return Err(len_err("ORIGINATOR_ID length is not 4"));
            }
            a.originator_id = Some(ipv4_at(value, 0));
        }
        CLUSTER_LIST => {
            if value.is_empty() || !value.len().is_multiple_of(4) {
                return Err(len_err(
                    "CLUSTER_LIST length is not a positive multiple of 4",
                ));
            }
            a.cluster_list = value.chunks_exact(4).map(|c| ipv4_at(c, 0)).collect();
        }
        MP_REACH_NLRI => out.mp_reach = Some(decode_mp_reach(value, raw)?),
        MP_UNREACH_NLRI => out.mp_unreach = Some(decode_mp_unreach(value, raw)?),
        EXTENDED_COMMUNITIES => {
            if !value.len().is_multiple_of(8) {
                return Err(len_err(
                    "EXTENDED_COMMUNITIES length is not a multiple of 8",
                ));
            }
            a.extended_communities = value
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().expect("chunk of 8")))
                .collect();
        }
        LARGE_COMMUNITY => {
            if value.is_empty() || !value.len().is_multiple_of(12) {
                return Err(len_err(
                    "LARGE_COMMUNITY length is not a positive multiple of 12",
                ));
            }
            a.large_communities = value
                .chunks_exact(12)
                .map(|c| LargeCommunity(u32_at(c, 0), u32_at(c, 4), u32_at(c, 8)))
                .collect();
        }
        AS4_PATH => {
            if ctx.four_octet_as {
                // RFC 6793 §6: a NEW speaker discards AS4_PATH from another NEW speaker.
                return Err(Fault::Survive(
                    UpdateErrorAction::AttributeDiscard,
                    sub::OPTIONAL_ATTRIBUTE_ERROR,
                    "AS4_PATH from a 4-octet AS peer",
                ));
            }
            let path = AsPath::decode(value, true).filter(|p| !p.has_confed());
            as4.path = Some(path.ok_or_else(|| {
                malformed(
                    tc,
                    sub::OPTIONAL_ATTRIBUTE_ERROR,
                    raw,
                    "AS4_PATH is malformed",
                )
            })?);
        }
        AS4_AGGREGATOR => {
            if ctx.four_octet_as {
                return Err(Fault::Survive(
                    UpdateErrorAction::AttributeDiscard,
                    sub::OPTIONAL_ATTRIBUTE_ERROR,
                    "AS4_AGGREGATOR from a 4-octet AS peer",
                ));
            }
            if value.len() != 8 {
                return Err(len_err("AS4_AGGREGATOR length is not 8"));
            }
            as4.aggregator = Some(Aggregator {
                asn: u32_at(value, 0),
                address: ipv4_at(value, 4),
            });
        }
        _ => unreachable!("expected_flags covers exactly the codes matched above"),
    }
    Ok(())
}

/// Decodes the path attribute section of an UPDATE.
///
/// Returns `Err` only when RFC 4271/7606 require a session reset; survivable problems
/// are listed in [`DecodedAttributes::errors`].
pub fn decode_attributes(
    mut buf: &[u8],
    ctx: DecodeContext,
) -> Result<DecodedAttributes, NotificationError> {
    let mut out = DecodedAttributes {
        any: !buf.is_empty(),
        ..Default::default()
    };
    let mut seen = [false; 256];
    let mut as4 = As4Parts::default();
    while !buf.is_empty() {
        let ext = buf[0] & flag::EXTENDED_LENGTH != 0;
        let header = if ext { 4 } else { 3 };
        if buf.len() < header {
            out.errors.push(overrun());
            break;
        }
        let len = if ext {
            usize::from(u16::from_be_bytes([buf[2], buf[3]]))
        } else {
            usize::from(buf[2])
        };
        if buf.len() < header + len {
            out.errors.push(overrun());
            break;
        }
        let (flags, tc) = (buf[0], buf[1]);
        let raw = &buf[..header + len];
        let value = &buf[header..header + len];
        buf = &buf[header + len..];
        if std::mem::replace(&mut seen[usize::from(tc)], true) {
            if tc == type_code::MP_REACH_NLRI || tc == type_code::MP_UNREACH_NLRI {
                return Err(NotificationError::update(
                    sub::MALFORMED_ATTRIBUTE_LIST,
                    Vec::new(),
                ));
            }
            out.errors.push(AttributeError {
                action: UpdateErrorAction::AttributeDiscard,
                type_code: tc,
                subcode: sub::MALFORMED_ATTRIBUTE_LIST,
                reason: "attribute repeated; later copies discarded",
            });
            continue;
        }
        match decode_one(tc, flags, value, raw, ctx, &mut out, &mut as4) {
            Ok(()) => {}
            Err(Fault::Reset(n)) => return Err(n),
            Err(Fault::Survive(action, subcode, reason)) => out.errors.push(AttributeError {
                action,
                type_code: tc,
                subcode,
                reason,
            }),
        }
    }
    if !ctx.four_octet_as {
        merge_as4(&mut out.attrs, as4);
    }
    Ok(out)
}

fn overrun() -> AttributeError {
    AttributeError {
        action: UpdateErrorAction::TreatAsWithdraw,
        type_code: 0,
        subcode: sub::MALFORMED_ATTRIBUTE_LIST,
        reason: "attribute length runs past the attribute section",
    }
}

/// RFC 6793 §4.2.3: AS4 attributes only count when AGGREGATOR agrees they are current.
fn merge_as4(attrs: &mut PathAttributes, as4: As4Parts) {
    if let Some(agg) = attrs.aggregator {
        if agg.asn != AS_TRANS {
            return;
        }
        if let Some(a4) = as4.aggregator {
            attrs.aggregator = Some(a4);
        }
    }
    if let Some(path) = as4.path {
        attrs.as_path = std::mem::take(&mut attrs.as_path).merge_as4(path);
    }
}

/// Session facts the encoder needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncodeContext {
    /// Both sides advertised 4-octet AS support.
    pub four_octet_as: bool,
    /// Both sides advertised extended messages (RFC 8654): UPDATEs may reach 65,535 bytes.
    pub extended_messages: bool,
}

impl EncodeContext {
    /// The largest UPDATE this session may carry.
    pub fn max_update_len(&self) -> usize {
        if self.extended_messages {
            super::message::MAX_EXTENDED_MESSAGE_LEN
        } else {
            super::message::MAX_MESSAGE_LEN
        }
    }
}

fn put_attr(out: &mut Vec<u8>, flags: u8, tc: u8, value: &[u8]) {
    if value.len() > 255 {
        out.put_u8(flags | flag::EXTENDED_LENGTH);
        out.put_u8(tc);
        // A value past 65,535 bytes cannot be sent at all; the length saturates and the
        // packer, which checks the whole encoded size against the message limit, refuses
        // the attribute set before anything reaches a peer.
        out.put_u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
    } else {
        out.put_u8(flags & !flag::EXTENDED_LENGTH);
        out.put_u8(tc);
        out.put_u8(value.len() as u8);
    }
    out.put_slice(value);
}

/// Where the reachability information of an UPDATE goes.
pub enum Reach<'a> {
    /// IPv4 unicast with an IPv4 next hop: NEXT_HOP attribute, prefixes in the NLRI field.
    Classic,
    /// Any other family or next hop: MP_REACH_NLRI with these pre-encoded prefixes.
    Multiprotocol {
        /// Family of the prefixes.
        family: Family,
        /// Global next hop.
        next_hop: Option<IpAddr>,
        /// Link-local IPv6 next hop.
        link_local: Option<Ipv6Addr>,
        /// Encoded NLRI bytes.
        nlri: &'a [u8],
    },
}

impl PathAttributes {
    /// Encodes the attributes in type-code order, as most implementations send them.
    pub fn encode(&self, ctx: EncodeContext, reach: &Reach<'_>, out: &mut Vec<u8>) {
        use type_code::*;
        let mut v = Vec::with_capacity(64);
        put_attr(out, flag::TRANSITIVE, ORIGIN, &[self.origin as u8]);
        self.as_path.encode(ctx.four_octet_as, &mut v);
        put_attr(out, flag::TRANSITIVE, AS_PATH, &v);
        if let Some(IpAddr::V4(nh)) = self.next_hop {
            put_attr(out, flag::TRANSITIVE, NEXT_HOP, &nh.octets());
        }
        if let Some(med) = self.med {
            put_attr(out, flag::OPTIONAL, MULTI_EXIT_DISC, &med.to_be_bytes());
        }
        if let Some(lp) = self.local_pref {
            put_attr(out, flag::TRANSITIVE, LOCAL_PREF, &lp.to_be_bytes());
        }
        if self.atomic_aggregate {
            put_attr(out, flag::TRANSITIVE, ATOMIC_AGGREGATE, &[]);
        }
        if let Some(agg) = self.aggregator {
            v.clear();
            if ctx.four_octet_as {
                v.put_u32(agg.asn);
            } else {
                v.put_u16(u16::try_from(agg.asn).unwrap_or(AS_TRANS as u16));
            }
            v.put_slice(&agg.address.octets());
            put_attr(out, flag::OPTIONAL | flag::TRANSITIVE, AGGREGATOR, &v);
        }
        if !self.communities.is_empty() {
            v.clear();
            self.communities.iter().for_each(|c| v.put_u32(*c));
            put_attr(out, flag::OPTIONAL | flag::TRANSITIVE, COMMUNITIES, &v);
        }
        if let Some(id) = self.originator_id {
            put_attr(out, flag::OPTIONAL, ORIGINATOR_ID, &id.octets());
        }
        if !self.cluster_list.is_empty() {
            v.clear();
            self.cluster_list
                .iter()
                .for_each(|c| v.put_slice(&c.octets()));
            put_attr(out, flag::OPTIONAL, CLUSTER_LIST, &v);
        }
        if let Reach::Multiprotocol {
            family,
            next_hop,
            link_local,
            nlri,
        } = reach
        {
            v.clear();
            v.put_u16(family.afi());
            v.put_u8(family.safi());
            match (*next_hop, *link_local) {
                (Some(IpAddr::V4(nh)), _) => {
                    v.put_u8(4);
                    v.put_slice(&nh.octets());
                }
                (Some(IpAddr::V6(nh)), Some(ll)) => {
                    v.put_u8(32);
                    v.put_slice(&nh.octets());
                    v.put_slice(&ll.octets());
                }
                (Some(IpAddr::V6(nh)), None) => {
                    v.put_u8(16);
                    v.put_slice(&nh.octets());
                }
                (None, _) => v.put_u8(0),
            }
            v.put_u8(0);
            v.put_slice(nlri);
            put_attr(out, flag::OPTIONAL, MP_REACH_NLRI, &v);
        }
        if !self.extended_communities.is_empty() {
            v.clear();
            self.extended_communities.iter().for_each(|c| v.put_u64(*c));
            put_attr(
                out,
                flag::OPTIONAL | flag::TRANSITIVE,
                EXTENDED_COMMUNITIES,
                &v,
            );
        }
        if !ctx.four_octet_as {
            if self.as_path.needs_four_octets() {
                v.clear();
                let mut as4 = self.as_path.clone();
                as4.segments
                    .retain(|s| matches!(s.kind, SegmentType::Sequence | SegmentType::Set));
                as4.encode(true, &mut v);
                put_attr(out, flag::OPTIONAL | flag::TRANSITIVE, AS4_PATH, &v);
            }
            if let Some(agg) = self.aggregator.filter(|a| a.asn > 0xffff) {
                v.clear();
                v.put_u32(agg.asn);
                v.put_slice(&agg.address.octets());
                put_attr(out, flag::OPTIONAL | flag::TRANSITIVE, AS4_AGGREGATOR, &v);
            }
        }
        if !self.large_communities.is_empty() {
            v.clear();
            for c in &self.large_communities {
                v.put_u32(c.0);
                v.put_u32(c.1);
                v.put_u32(c.2);
            }
            put_attr(out, flag::OPTIONAL | flag::TRANSITIVE, LARGE_COMMUNITY, &v);
        }
        for raw in &self.unknown {
            put_attr(out, raw.flags | flag::PARTIAL, raw.type_code, &raw.value);
        }
    }
}

/// Encodes an MP_UNREACH_NLRI attribute for pre-encoded withdrawn prefixes.
pub fn encode_mp_unreach(family: Family, withdrawn: &[u8], out: &mut Vec<u8>) {
    let mut v = Vec::with_capacity(3 + withdrawn.len());
    v.put_u16(family.afi());
    v.put_u8(family.safi());
    v.put_slice(withdrawn);
    put_attr(out, flag::OPTIONAL, type_code::MP_UNREACH_NLRI, &v);
}

#[cfg(test)]
#[path = "attribute_tests.rs"]
mod tests;
