//! The tunnel devices and VXLAN endpoints a node wants, as calc decides them: `tunl0`
//! (IPIP), `vxlan.serval` and `vxlan-v6.serval` (VXLAN over IPv4 and over IPv6: VNI, port,
//! MAC, MTU, address) and the remote VTEPs of each; and the node's stable VXLAN MACs. The tunnel manager in `dataplane::tunnel` applies them.

use std::net::{IpAddr, Ipv4Addr};

/// Calico's VXLAN network identifier.
pub const VXLAN_VNI: u32 = 4096;
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;

/// A VXLAN device this node wants (one per family, as Felix: the family of its outer
/// addresses is the family of the pod addresses it carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    /// Device name.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// Outer source address (the node's IP of the device's family).
    pub local: IpAddr,
    /// The device MAC (published in the Node resource for the other nodes' FDBs).
    pub mac: [u8; 6],
    /// MTU (host MTU − 50 over IPv4, − 70 over IPv6).
    pub mtu: u32,
    /// The device's tunnel address from IPAM (as a /32 or /128).
    pub address: Option<IpAddr>,
}

/// The IPIP device this node wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpipDevice {
    /// Device name (`tunl0`).
    pub name: String,
    /// MTU (host MTU − 20).
    pub mtu: u32,
    /// The device's tunnel address from IPAM (as a /32).
    pub address: Option<Ipv4Addr>,
}

/// A remote node's VXLAN endpoint, from its Node resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteVtep {
    /// The node's IP (outer destination).
    pub node_ip: IpAddr,
    /// Its VXLAN device's tunnel address (route gateway, ARP entry).
    pub tunnel_addr: IpAddr,
    /// Its VXLAN device's MAC.
    pub mac: [u8; 6],
}

/// A stable, locally administered unicast MAC for a node's VXLAN device, derived from the node
/// name so a restarted agent keeps the MAC the other nodes already have in their FDBs.
pub fn vxlan_mac(node: &str) -> [u8; 6] {
    let d = sha1_smol::Sha1::from(format!("vxlan.{node}"))
        .digest()
        .bytes();
    [(d[0] & 0xfe) | 0x02, d[1], d[2], d[3], d[4], d[5]]
}

/// The MAC of a node's IPv6 VXLAN device: stable like [`vxlan_mac`] and different from it,
/// so both devices can sit on one host and in the peers' FDBs.
pub fn vxlan_mac_v6(node: &str) -> [u8; 6] {
    vxlan_mac(&format!("{node}/v6"))
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_unicast_and_local() {
        let m = vxlan_mac("node-a");
        assert_eq!(m, vxlan_mac("node-a"));
        assert_ne!(m, vxlan_mac("node-b"));
        assert_ne!(m, vxlan_mac_v6("node-a"));
        assert_eq!(vxlan_mac_v6("node-a")[0] & 0x03, 0x02);
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        assert_eq!(parse_mac(&format_mac(&m)), Some(m));
        assert_eq!(parse_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:fg"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:f"), None);
    }
}
