//! Update groups: peers whose export inputs are the same (negotiated families and AS
//! encoding, AS, eBGP or not, reflector client or not, next-hop handling, our next-hop
//! addresses, and the peer address only when the export policy looks at it) share one
//! Adj-RIB-Out and one encoded UPDATE stream, so reflecting to many clients costs about
//! what reflecting to one does.
//!
//! In a group of several, a route may go back to the member it came from: the member drops
//! it (its own ORIGINATOR_ID, RFC 4456 §8, or its own AS in the path), as with FRR's update
//! groups. A group of one keeps exact split horizon.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::af::Family;
use crate::config::NextHopMode;
use crate::decision::PeerId;
use crate::rib::AdjRibOut;

/// An update group's identity.
pub(crate) type GroupId = u64;

/// Everything that decides what a peer is sent and how it is encoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey {
    pub families: Vec<Family>,
    pub four_octet_as: bool,
    /// Extended messages (RFC 8654) were negotiated: UPDATEs may reach 65,535 bytes.
    pub extended_messages: bool,
    pub as_number: u32,
    /// Our AS towards the group (the speaker's, or the peers' `local_as`).
    pub local_as: u32,
    pub ebgp: bool,
    pub rr_client: bool,
    pub next_hop: NextHopMode,
    pub self_v4: Option<Ipv4Addr>,
    pub self_v6: Option<Ipv6Addr>,
    /// Set only when the export policy depends on the peer's address.
    pub policy_address: Option<IpAddr>,
}

impl GroupKey {
    /// How the group's UPDATEs are encoded.
    pub fn encode_context(&self) -> crate::packet::attribute::EncodeContext {
        crate::packet::attribute::EncodeContext {
            four_octet_as: self.four_octet_as,
            extended_messages: self.extended_messages,
        }
    }
}

/// Peers sharing one export.
pub(crate) struct UpdateGroup {
    pub key: GroupKey,
    /// Members, in join order.
    pub members: Vec<PeerId>,
    pub out4: AdjRibOut<Ipv4Net>,
    pub out6: AdjRibOut<Ipv6Net>,
}

impl UpdateGroup {
    pub fn new(key: GroupKey) -> Self {
        UpdateGroup {
            key,
            members: Vec::new(),
            out4: AdjRibOut::default(),
            out6: AdjRibOut::default(),
        }
    }

    /// The peer whose routes must not be sent back: the only member, if there is one.
    pub fn split_horizon_peer(&self) -> Option<PeerId> {
        match self.members.as_slice() {
            [only] => Some(*only),
            _ => None,
        }
    }
}
