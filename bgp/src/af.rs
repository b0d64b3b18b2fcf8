//! Address families: the one place that knows how IPv4 and IPv6 prefixes differ, so the
//! RIB and the UPDATE code are written once for both (STYLE 7).

use std::fmt;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// AFI for IPv4 (RFC 4760).
pub const AFI_IPV4: u16 = 1;
/// AFI for IPv6 (RFC 4760).
pub const AFI_IPV6: u16 = 2;
/// SAFI for unicast forwarding (RFC 4760).
pub const SAFI_UNICAST: u8 = 1;

/// The address families this speaker carries routes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// IPv4 unicast (AFI 1, SAFI 1).
    Ipv4Unicast,
    /// IPv6 unicast (AFI 2, SAFI 1).
    Ipv6Unicast,
}

impl Family {
    /// Both families, in the order status output lists them.
    pub const ALL: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

    /// The family's AFI on the wire.
    pub fn afi(self) -> u16 {
        match self {
            Family::Ipv4Unicast => AFI_IPV4,
            Family::Ipv6Unicast => AFI_IPV6,
        }
    }

    /// The family's SAFI on the wire.
    pub fn safi(self) -> u8 {
        SAFI_UNICAST
    }

    /// Maps a wire AFI/SAFI pair to a family we support.
    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (AFI_IPV4, SAFI_UNICAST) => Some(Family::Ipv4Unicast),
            (AFI_IPV6, SAFI_UNICAST) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    /// The family a prefix belongs to.
    pub fn of(prefix: &IpNet) -> Family {
        match prefix {
            IpNet::V4(_) => Family::Ipv4Unicast,
            IpNet::V6(_) => Family::Ipv6Unicast,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4Unicast => "ipv4-unicast",
            Family::Ipv6Unicast => "ipv6-unicast",
        })
    }
}

/// A prefix type of one address family; the RIB is generic over it.
pub trait Prefix:
    Copy + Eq + Hash + Ord + fmt::Debug + fmt::Display + Send + Sync + 'static
{
    /// The family this prefix type belongs to.
    const FAMILY: Family;
    /// Longest valid prefix length.
    const MAX_LEN: u8;
    /// Builds a prefix from zero-padded address bytes, clearing host bits.
    fn from_wire(bytes: &[u8], len: u8) -> Self;
    /// Prefix length in bits.
    fn prefix_len(&self) -> u8;
    /// Address octets (network order).
    fn octets(&self) -> Vec<u8>;
    /// Widens the prefix to the family-agnostic type.
    fn into_ipnet(self) -> IpNet;
    /// Narrows a family-agnostic prefix, when it belongs to this family.
    fn from_ipnet(net: IpNet) -> Option<Self>;
}

impl Prefix for Ipv4Net {
    const FAMILY: Family = Family::Ipv4Unicast;
    const MAX_LEN: u8 = 32;

    fn from_wire(bytes: &[u8], len: u8) -> Self {
        let mut octets = [0u8; 4];
        octets[..bytes.len()].copy_from_slice(bytes);
        Ipv4Net::new(Ipv4Addr::from(octets), len)
            .expect("length checked by caller")
            .trunc()
    }
    fn prefix_len(&self) -> u8 {
        Ipv4Net::prefix_len(self)
    }
    fn octets(&self) -> Vec<u8> {
        self.network().octets().to_vec()
    }
    fn into_ipnet(self) -> IpNet {
        IpNet::V4(self)
    }
    fn from_ipnet(net: IpNet) -> Option<Self> {
        match net {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        }
    }
}

impl Prefix for Ipv6Net {
    const FAMILY: Family = Family::Ipv6Unicast;
    const MAX_LEN: u8 = 128;

    fn from_wire(bytes: &[u8], len: u8) -> Self {
        let mut octets = [0u8; 16];
        octets[..bytes.len()].copy_from_slice(bytes);
        Ipv6Net::new(Ipv6Addr::from(octets), len)
            .expect("length checked by caller")
            .trunc()
    }
    fn prefix_len(&self) -> u8 {
        Ipv6Net::prefix_len(self)
    }
    fn octets(&self) -> Vec<u8> {
        self.network().octets().to_vec()
    }
    fn into_ipnet(self) -> IpNet {
        IpNet::V6(self)
    }
    fn from_ipnet(net: IpNet) -> Option<Self> {
        match net {
            IpNet::V6(n) => Some(n),
            IpNet::V4(_) => None,
        }
    }
}
