//! Decoding path attributes (RFC 4271 §4.3) with RFC 7606 error handling: each fault says
//! whether to treat the UPDATE as withdraw, discard the attribute or reset the session.

use super::*;

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
