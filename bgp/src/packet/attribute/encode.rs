//! Encoding path attributes, MP_REACH_NLRI and MP_UNREACH_NLRI (RFC 4760) for one
//! session's negotiated capabilities.

use super::*;

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
            crate::packet::message::MAX_EXTENDED_MESSAGE_LEN
        } else {
            crate::packet::message::MAX_MESSAGE_LEN
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
