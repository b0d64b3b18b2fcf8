//! BGP messages: header framing, OPEN, UPDATE, NOTIFICATION, KEEPALIVE, ROUTE-REFRESH.
//!
//! ```text
//! 0                   1                   2                   3
//! 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                     Marker (16 octets of 0xff)                +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Length               |      Type     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::net::Ipv4Addr;

use bytes::BufMut;
use ipnet::Ipv4Net;

use super::attribute::{
    DecodeContext, EncodeContext, MpReach, MpUnreach, PathAttributes, Reach, decode_attributes,
    encode_mp_unreach,
};
use super::capability::Capability;
use super::error::{
    AttributeError, NotificationError, UpdateErrorAction, code, header_subcode, open_subcode,
    update_subcode,
};
use super::nlri;
use crate::af::{Family, Prefix};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 19;
/// Largest message without the extended-message capability (RFC 4271).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Largest message other than OPEN and KEEPALIVE once both sides advertised extended
/// messages (RFC 8654).
pub const MAX_EXTENDED_MESSAGE_LEN: usize = 65535;
/// The only BGP version there is.
pub const BGP_VERSION: u8 = 4;

/// Message type codes.
pub mod message_type {
    /// OPEN.
    pub const OPEN: u8 = 1;
    /// UPDATE.
    pub const UPDATE: u8 = 2;
    /// NOTIFICATION.
    pub const NOTIFICATION: u8 = 3;
    /// KEEPALIVE.
    pub const KEEPALIVE: u8 = 4;
    /// ROUTE-REFRESH (RFC 2918).
    pub const ROUTE_REFRESH: u8 = 5;
}

/// A decoded BGP message.
// UPDATE is the message that matters; boxing it would add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN.
    Open(Open),
    /// UPDATE.
    Update(Update),
    /// NOTIFICATION.
    Notification(Notification),
    /// KEEPALIVE.
    Keepalive,
    /// ROUTE-REFRESH.
    RouteRefresh(RouteRefresh),
}

/// OPEN (RFC 4271 §4.2).
///
/// ```text
/// +-----------+-----------------+---------------+-----------------------+
/// | Version 1 | My AS 2         | Hold Time 2   | BGP Identifier 4      |
/// +-----------+-----------------+---------------+-----------------------+
/// | Opt Parm Len 1 | Optional Parameters (type 1, length 1, value)       |
/// +----------------------------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The 2-octet AS field (AS_TRANS when the real AS needs four octets).
    pub my_as: u16,
    /// Proposed hold time in seconds (0 or at least 3).
    pub hold_time: u16,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Capabilities from all Capabilities optional parameters.
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// The sender's real AS: from the 4-octet AS capability when present.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(asn) => Some(*asn),
                _ => None,
            })
            .unwrap_or(u32::from(self.my_as))
    }
}

/// UPDATE (RFC 4271 §4.3), with MP_REACH/MP_UNREACH split out.
///
/// ```text
/// +-----------------------------------------------------+
/// |   Withdrawn Routes Length (2 octets)                |
/// |   Withdrawn Routes (variable)                       |
/// |   Total Path Attribute Length (2 octets)            |
/// |   Path Attributes (variable)                        |
/// |   Network Layer Reachability Information (variable) |
/// +-----------------------------------------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// IPv4 prefixes in the Withdrawn Routes field.
    pub withdrawn: Vec<Ipv4Net>,
    /// Path attributes (NEXT_HOP here is the IPv4 NEXT_HOP attribute).
    pub attributes: PathAttributes,
    /// IPv4 prefixes in the NLRI field.
    pub nlri: Vec<Ipv4Net>,
    /// MP_REACH_NLRI.
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI.
    pub mp_unreach: Option<MpUnreach>,
    /// The attribute section was empty.
    pub no_attributes: bool,
    /// Survivable attribute errors (RFC 7606).
    pub errors: Vec<AttributeError>,
}

impl Update {
    /// The strongest RFC 7606 action the errors call for.
    pub fn error_action(&self) -> Option<UpdateErrorAction> {
        self.errors.iter().map(|e| e.action).max()
    }

    /// The family this UPDATE marks End-of-RIB for (RFC 4724 §2), if it is such a marker.
    pub fn end_of_rib(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || self.mp_reach.is_some() {
            return None;
        }
        if self.no_attributes {
            return Some(Family::Ipv4Unicast);
        }
        match &self.mp_unreach {
            Some(u) if u.withdrawn.is_empty() && self.attributes == PathAttributes::default() => {
                Family::from_afi_safi(u.afi, u.safi)
            }
            _ => None,
        }
    }

    /// The End-of-RIB marker for a family.
    pub fn end_of_rib_marker(family: Family) -> Update {
        match family {
            Family::Ipv4Unicast => Update {
                no_attributes: true,
                ..Default::default()
            },
            _ => Update {
                mp_unreach: Some(MpUnreach {
                    afi: family.afi(),
                    safi: family.safi(),
                    withdrawn: Vec::new(),
                }),
                ..Default::default()
            },
        }
    }
}

/// NOTIFICATION (RFC 4271 §4.5): code (1), subcode (1), data (variable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data.
    pub data: Vec<u8>,
}

impl Notification {
    /// RFC 8203 shutdown communication, when a Cease carries one.
    pub fn shutdown_message(&self) -> Option<String> {
        if self.code != code::CEASE || !(self.subcode == 2 || self.subcode == 4) {
            return None;
        }
        let (&len, rest) = self.data.split_first()?;
        let text = rest.get(..usize::from(len))?;
        String::from_utf8(text.to_vec()).ok()
    }
}

impl From<NotificationError> for Notification {
    fn from(e: NotificationError) -> Self {
        Notification {
            code: e.code,
            subcode: e.subcode,
            data: e.data,
        }
    }
}

/// ROUTE-REFRESH (RFC 2918, RFC 7313): AFI (2), subtype (1), SAFI (1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    /// AFI.
    pub afi: u16,
    /// Message subtype (0 normal, 1 BoRR, 2 EoRR).
    pub subtype: u8,
    /// SAFI.
    pub safi: u8,
}

/// Checks the fixed header and returns (type, total length). `extended` says both sides
/// advertised extended messages (RFC 8654), which lifts the limit to 65,535 bytes for every
/// type but OPEN and KEEPALIVE.
pub fn decode_header(buf: &[u8], extended: bool) -> Result<(u8, usize), NotificationError> {
    debug_assert!(buf.len() >= HEADER_LEN);
    if buf[..16].iter().any(|&b| b != 0xff) {
        return Err(NotificationError::new(
            code::MESSAGE_HEADER,
            header_subcode::CONNECTION_NOT_SYNCHRONIZED,
            Vec::new(),
        ));
    }
    let length = u16::from_be_bytes([buf[16], buf[17]]);
    let kind = buf[18];
    let len = usize::from(length);
    let min = match kind {
        message_type::OPEN => 29,
        message_type::UPDATE => 23,
        message_type::NOTIFICATION => 21,
        message_type::KEEPALIVE => HEADER_LEN,
        message_type::ROUTE_REFRESH => HEADER_LEN,
        _ => {
            return Err(NotificationError::new(
                code::MESSAGE_HEADER,
                header_subcode::BAD_MESSAGE_TYPE,
                vec![kind],
            ));
        }
    };
    let max = if extended && kind != message_type::OPEN && kind != message_type::KEEPALIVE {
        MAX_EXTENDED_MESSAGE_LEN
    } else {
        MAX_MESSAGE_LEN
    };
    if len < min.max(HEADER_LEN)
        || len > max
        || (kind == message_type::KEEPALIVE && len != HEADER_LEN)
    {
        return Err(NotificationError::bad_length(length));
    }
    Ok((kind, len))
}

impl Message {
    /// Decodes one whole message (header included) as framed by [`decode_header`].
    pub fn decode(buf: &[u8], ctx: DecodeContext) -> Result<Message, NotificationError> {
        if buf.len() < HEADER_LEN {
            return Err(NotificationError::bad_length(buf.len() as u16));
        }
        let (kind, len) = decode_header(buf, ctx.extended_messages)?;
        if len != buf.len() {
            return Err(NotificationError::bad_length(u16::from_be_bytes([
                buf[16], buf[17],
            ])));
        }
        let body = &buf[HEADER_LEN..];
        Ok(match kind {
            message_type::OPEN => Message::Open(decode_open(body)?),
            message_type::UPDATE => Message::Update(decode_update(body, ctx)?),
            message_type::NOTIFICATION => Message::Notification(Notification {
                code: body[0],
                subcode: body[1],
                data: body[2..].to_vec(),
            }),
            message_type::KEEPALIVE => Message::Keepalive,
            message_type::ROUTE_REFRESH => {
                if body.len() != 4 {
                    // RFC 7313 §5: ROUTE-REFRESH Message Error / Invalid Message Length.
                    return Err(NotificationError::new(code::ROUTE_REFRESH, 1, buf.to_vec()));
                }
                Message::RouteRefresh(RouteRefresh {
                    afi: u16::from_be_bytes([body[0], body[1]]),
                    subtype: body[2],
                    safi: body[3],
                })
            }
            _ => unreachable!("decode_header rejects unknown types"),
        })
    }

    /// Encodes the message with its header.
    pub fn encode(&self, ctx: EncodeContext) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.put_slice(&[0xff; 16]);
        out.put_u16(0);
        match self {
            Message::Open(open) => {
                out.put_u8(message_type::OPEN);
                encode_open(open, &mut out);
            }
            Message::Update(update) => {
                out.put_u8(message_type::UPDATE);
                encode_update(update, ctx, &mut out);
            }
            Message::Notification(n) => {
                out.put_u8(message_type::NOTIFICATION);
                out.put_u8(n.code);
                out.put_u8(n.subcode);
                // The data may quote a large received attribute; cut it to what any peer
                // accepts (the NOTIFICATION may go out before extended messages are agreed).
                let room = MAX_MESSAGE_LEN - HEADER_LEN - 2;
                out.put_slice(&n.data[..n.data.len().min(room)]);
            }
            Message::Keepalive => out.put_u8(message_type::KEEPALIVE),
            Message::RouteRefresh(r) => {
                out.put_u8(message_type::ROUTE_REFRESH);
                out.put_u16(r.afi);
                out.put_u8(r.subtype);
                out.put_u8(r.safi);
            }
        }
        let len = u16::try_from(out.len())
            .expect("Message::encode builds OPEN, KEEPALIVE, NOTIFICATION, ROUTE-REFRESH and End-of-RIB markers, all under 4096 bytes");
        out[16..18].copy_from_slice(&len.to_be_bytes());
        out
    }
}

fn decode_open(body: &[u8]) -> Result<Open, NotificationError> {
    let version = body[0];
    if version != BGP_VERSION {
        return Err(NotificationError::new(
            code::OPEN_MESSAGE,
            open_subcode::UNSUPPORTED_VERSION,
            u16::from(BGP_VERSION).to_be_bytes(),
        ));
    }
    let my_as = u16::from_be_bytes([body[1], body[2]]);
    let hold_time = u16::from_be_bytes([body[3], body[4]]);
    let router_id = Ipv4Addr::new(body[5], body[6], body[7], body[8]);
    let opt_len = usize::from(body[9]);
    let mut params = &body[10..];
    // RFC 9072: a first parameter of type 255 announces 2-octet parameter lengths.
    let extended = opt_len == 255 && params.first() == Some(&255);
    if extended {
        if params.len() < 3 {
            return Err(NotificationError::open(open_subcode::UNSPECIFIC));
        }
        let ext_len = usize::from(u16::from_be_bytes([params[1], params[2]]));
        params = &params[3..];
        if params.len() != ext_len {
            return Err(NotificationError::open(open_subcode::UNSPECIFIC));
        }
    } else if params.len() != opt_len {
        return Err(NotificationError::open(open_subcode::UNSPECIFIC));
    }
    if hold_time == 1 || hold_time == 2 {
        return Err(NotificationError::open(
            open_subcode::UNACCEPTABLE_HOLD_TIME,
        ));
    }
    if router_id.is_unspecified() {
        return Err(NotificationError::open(open_subcode::BAD_BGP_IDENTIFIER));
    }
    let header = if extended { 3 } else { 2 };
    let mut capabilities = Vec::new();
    while !params.is_empty() {
        if params.len() < header {
            return Err(NotificationError::open(open_subcode::UNSPECIFIC));
        }
        let kind = params[0];
        let len = if extended {
            usize::from(u16::from_be_bytes([params[1], params[2]]))
        } else {
            usize::from(params[1])
        };
        let value = params
            .get(header..header + len)
            .ok_or_else(|| NotificationError::open(open_subcode::UNSPECIFIC))?;
        if kind != 2 {
            return Err(NotificationError::open(
                open_subcode::UNSUPPORTED_OPTIONAL_PARAMETER,
            ));
        }
        capabilities.extend(
            Capability::decode_all(value)
                .ok_or_else(|| NotificationError::open(open_subcode::UNSPECIFIC))?,
        );
        params = &params[header + len..];
    }
    Ok(Open {
        my_as,
        hold_time,
        router_id,
        capabilities,
    })
}

fn encode_open(open: &Open, out: &mut Vec<u8>) {
    out.put_u8(BGP_VERSION);
    out.put_u16(open.my_as);
    out.put_u16(open.hold_time);
    out.put_slice(&open.router_id.octets());
    let mut caps = Vec::new();
    for cap in &open.capabilities {
        cap.encode(&mut caps);
    }
    if caps.is_empty() {
        out.put_u8(0);
        return;
    }
    // One Capabilities parameter per capability keeps each under 255 bytes, which every
    // implementation accepts.
    let mut params = Vec::new();
    let mut rest = caps.as_slice();
    while !rest.is_empty() {
        let n = 2 + usize::from(rest[1]);
        params.put_u8(2);
        params.put_u8(n as u8);
        params.put_slice(&rest[..n]);
        rest = &rest[n..];
    }
    out.put_u8(u8::try_from(params.len()).expect("our capabilities fit in 255 bytes"));
    out.put_slice(&params);
}

fn decode_update(body: &[u8], ctx: DecodeContext) -> Result<Update, NotificationError> {
    let malformed_list =
        || NotificationError::update(update_subcode::MALFORMED_ATTRIBUTE_LIST, Vec::new());
    let wlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
    if 2 + wlen + 2 > body.len() {
        return Err(malformed_list());
    }
    let withdrawn_raw = &body[2..2 + wlen];
    let alen = usize::from(u16::from_be_bytes([body[2 + wlen], body[3 + wlen]]));
    let attr_start = 4 + wlen;
    if attr_start + alen > body.len() {
        return Err(malformed_list());
    }
    let invalid_network =
        || NotificationError::update(update_subcode::INVALID_NETWORK_FIELD, Vec::new());
    let withdrawn = nlri::decode_prefixes::<Ipv4Net>(withdrawn_raw).ok_or_else(invalid_network)?;
    let nlri =
        nlri::decode_prefixes::<Ipv4Net>(&body[attr_start + alen..]).ok_or_else(invalid_network)?;
    let decoded = decode_attributes(&body[attr_start..attr_start + alen], ctx)?;
    let mut errors = decoded.errors;
    let announces = !nlri.is_empty()
        || decoded
            .mp_reach
            .as_ref()
            .is_some_and(|m| !m.nlri.is_empty());
    if announces {
        let mut missing = |present: bool, tc: u8| {
            if !present {
                errors.push(AttributeError {
                    action: UpdateErrorAction::TreatAsWithdraw,
                    type_code: tc,
                    subcode: update_subcode::MISSING_WELL_KNOWN_ATTRIBUTE,
                    reason: "mandatory well-known attribute missing",
                });
            }
        };
        use super::attribute::type_code as tc;
        missing(decoded.has_origin, tc::ORIGIN);
        missing(decoded.has_as_path, tc::AS_PATH);
        missing(decoded.has_next_hop || nlri.is_empty(), tc::NEXT_HOP);
        missing(ctx.ebgp || decoded.has_local_pref, tc::LOCAL_PREF);
    }
    Ok(Update {
        withdrawn,
        attributes: decoded.attrs,
        nlri,
        mp_reach: decoded.mp_reach,
        mp_unreach: decoded.mp_unreach,
        no_attributes: alen == 0,
        errors,
    })
}

fn encode_update(update: &Update, ctx: EncodeContext, out: &mut Vec<u8>) {
    let mut withdrawn = Vec::new();
    update
        .withdrawn
        .iter()
        .for_each(|p| nlri::encode_prefix(p, &mut withdrawn));
    out.put_u16(withdrawn.len() as u16);
    out.put_slice(&withdrawn);
    let mut attrs = Vec::new();
    if let Some(u) = &update.mp_unreach {
        let family = Family::from_afi_safi(u.afi, u.safi).unwrap_or(Family::Ipv6Unicast);
        let mut w = Vec::new();
        encode_ip_prefixes(&u.withdrawn, &mut w);
        encode_mp_unreach(family, &w, &mut attrs);
    }
    if !update.nlri.is_empty() || update.mp_reach.is_some() {
        let mut mp_nlri = Vec::new();
        let reach = match &update.mp_reach {
            Some(mp) => {
                encode_ip_prefixes(&mp.nlri, &mut mp_nlri);
                Reach::Multiprotocol {
                    family: Family::from_afi_safi(mp.afi, mp.safi).unwrap_or(Family::Ipv6Unicast),
                    next_hop: mp.next_hop,
                    link_local: mp.link_local_next_hop,
                    nlri: &mp_nlri,
                }
            }
            None => Reach::Classic,
        };
        update.attributes.encode(ctx, &reach, &mut attrs);
    }
    out.put_u16(attrs.len() as u16);
    out.put_slice(&attrs);
    update.nlri.iter().for_each(|p| nlri::encode_prefix(p, out));
}

fn encode_ip_prefixes(prefixes: &[ipnet::IpNet], out: &mut Vec<u8>) {
    for p in prefixes {
        match p {
            ipnet::IpNet::V4(p) => nlri::encode_prefix(p, out),
            ipnet::IpNet::V6(p) => nlri::encode_prefix(p, out),
        }
    }
}

/// The longest NLRI encoding a prefix of this family can have (length octet + address).
fn max_nlri_len<P: Prefix>() -> usize {
    1 + usize::from(P::MAX_LEN).div_ceil(8)
}

/// Encodes an attribute set for one family's UPDATEs (with `nlri` inside MP_REACH_NLRI
/// when the family needs it) and reports whether the NLRI go in the classic field.
fn encode_for<P: Prefix>(
    attrs: &PathAttributes,
    ctx: EncodeContext,
    nlri: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let family = P::FAMILY;
    let classic =
        family == Family::Ipv4Unicast && matches!(attrs.next_hop, Some(std::net::IpAddr::V4(_)));
    let reach = if classic {
        Reach::Classic
    } else {
        Reach::Multiprotocol {
            family,
            next_hop: attrs.next_hop,
            link_local: attrs.link_local_next_hop.as_deref().copied(),
            nlri,
        }
    };
    attrs.encode(ctx, &reach, out);
    classic
}

/// Bytes left for NLRI in one UPDATE carrying this attribute set, or `None` when not even
/// the longest single prefix of the family fits (the route cannot be sent on this session).
pub fn announcement_room<P: Prefix>(attrs: &PathAttributes, ctx: EncodeContext) -> Option<usize> {
    announcement_room_in::<P>(attrs, ctx, &mut Vec::with_capacity(128))
}

/// [`announcement_room`], encoding into `scratch` (cleared first): a caller sizing many
/// attribute sets allocates once.
pub fn announcement_room_in<P: Prefix>(
    attrs: &PathAttributes,
    ctx: EncodeContext,
    scratch: &mut Vec<u8>,
) -> Option<usize> {
    scratch.clear();
    encode_for::<P>(attrs, ctx, &[], scratch);
    // Header, both length fields, the attributes, and 2 spare bytes in case MP_REACH_NLRI
    // switches to an extended length once the prefixes are in.
    let room = ctx
        .max_update_len()
        .checked_sub(HEADER_LEN + 4 + scratch.len() + 2)?;
    (room >= max_nlri_len::<P>()).then_some(room)
}

/// Packs announcements of one attribute set into as few UPDATEs as the session's message
/// limit allows. Returns how many prefixes could not be packed because the attribute set
/// alone leaves no room for them (callers check [`announcement_room`] first, so normally 0);
/// every pass of the loop consumes at least one prefix.
pub fn pack_announcements<P: Prefix>(
    attrs: &PathAttributes,
    prefixes: &[P],
    ctx: EncodeContext,
    out: &mut Vec<Vec<u8>>,
) -> usize {
    let Some(budget) = announcement_room::<P>(attrs, ctx) else {
        return prefixes.len();
    };
    pack_announcements_within(attrs, prefixes, ctx, budget, out);
    0
}

/// [`pack_announcements`] for a set whose room the caller already has from
/// [`announcement_room`] with the same `ctx` (so the attributes are not encoded again to
/// size them).
pub fn pack_announcements_within<P: Prefix>(
    attrs: &PathAttributes,
    prefixes: &[P],
    ctx: EncodeContext,
    budget: usize,
    out: &mut Vec<Vec<u8>>,
) {
    let max_len = ctx.max_update_len();
    let mut start = 0;
    while start < prefixes.len() {
        let mut used = 0;
        let mut end = start;
        while end < prefixes.len() && used + nlri::encoded_len(&prefixes[end]) <= budget {
            used += nlri::encoded_len(&prefixes[end]);
            end += 1;
        }
        // `budget` holds the family's longest prefix, so at least one always fits.
        debug_assert!(end > start);
        let end = end.max(start + 1);
        let mut nlri_bytes = Vec::with_capacity(used);
        prefixes[start..end]
            .iter()
            .for_each(|p| nlri::encode_prefix(p, &mut nlri_bytes));
        let mut msg = Vec::with_capacity(max_len.min(HEADER_LEN + 4 + 256 + used));
        msg.put_slice(&[0xff; 16]);
        msg.put_u16(0);
        msg.put_u8(message_type::UPDATE);
        msg.put_u16(0);
        let len_at = msg.len();
        msg.put_u16(0);
        let classic = encode_for::<P>(attrs, ctx, &nlri_bytes, &mut msg);
        let attrs_len = msg.len() - len_at - 2;
        msg[len_at..len_at + 2].copy_from_slice(&(attrs_len as u16).to_be_bytes());
        if classic {
            msg.put_slice(&nlri_bytes);
        }
        let len = msg.len() as u16;
        msg[16..18].copy_from_slice(&len.to_be_bytes());
        out.push(msg);
        start = end;
    }
}

/// Packs withdrawals into as few UPDATEs as the session's message limit allows.
pub fn pack_withdrawals<P: Prefix>(prefixes: &[P], ctx: EncodeContext, out: &mut Vec<Vec<u8>>) {
    let max_len = ctx.max_update_len();
    let budget = max_len - HEADER_LEN - 4 - 8;
    for chunk in chunk_by_size(prefixes, budget) {
        let mut w = Vec::with_capacity(budget);
        chunk.iter().for_each(|p| nlri::encode_prefix(p, &mut w));
        let mut msg = Vec::with_capacity(HEADER_LEN + 12 + w.len());
        msg.put_slice(&[0xff; 16]);
        msg.put_u16(0);
        msg.put_u8(message_type::UPDATE);
        if P::FAMILY == Family::Ipv4Unicast {
            msg.put_u16(w.len() as u16);
            msg.put_slice(&w);
            msg.put_u16(0);
        } else {
            msg.put_u16(0);
            let mut a = Vec::new();
            encode_mp_unreach(P::FAMILY, &w, &mut a);
            msg.put_u16(a.len() as u16);
            msg.put_slice(&a);
        }
        let len = msg.len() as u16;
        msg[16..18].copy_from_slice(&len.to_be_bytes());
        out.push(msg);
    }
}

fn chunk_by_size<P: Prefix>(prefixes: &[P], budget: usize) -> Vec<&[P]> {
    let mut chunks = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, p) in prefixes.iter().enumerate() {
        let n = nlri::encoded_len(p);
        if used + n > budget {
            chunks.push(&prefixes[start..i]);
            start = i;
            used = 0;
        }
        used += n;
    }
    if start < prefixes.len() {
        chunks.push(&prefixes[start..]);
    }
    chunks
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
