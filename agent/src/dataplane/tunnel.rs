//! Tunnel devices and their static entries: `tunl0` (IPIP) and `vxlan.serval` (VXLAN, with a
//! permanent ARP entry and FDB entry per remote VTEP, as Felix does, so no flooding or
//! learning is ever needed). The decisions (create, recreate, tune, which addresses and
//! entries to add or remove) are pure functions tested without a kernel; `ensure_*` applies them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::DataplaneError;
use super::netlink::{LinkState, Netlink};

/// Calico's VXLAN network identifier.
pub const VXLAN_VNI: u32 = 4096;
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;

/// The VXLAN device this node wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    /// Device name.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// Outer source address (the node's IP).
    pub local: Ipv4Addr,
    /// The device MAC (published in the Node resource for the other nodes' FDBs).
    pub mac: [u8; 6],
    /// MTU (host MTU − 50).
    pub mtu: u32,
    /// The device's tunnel address from IPAM (as a /32).
    pub address: Option<Ipv4Addr>,
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

/// What to do to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceFix {
    /// It is right.
    Keep,
    /// It does not exist.
    Create,
    /// It exists with the wrong type or parameters that cannot change in place.
    Recreate(u32),
    /// MTU or admin state is wrong.
    Tune(u32),
}

/// The fix for a VXLAN device given what the kernel has.
pub fn vxlan_fix(want: &VxlanDevice, have: Option<&LinkState>) -> DeviceFix {
    let Some(have) = have else {
        return DeviceFix::Create;
    };
    let params_ok = have.kind.as_deref() == Some("vxlan")
        && have.vxlan == Some((want.vni, want.port, Some(want.local)))
        && have.mac == Some(want.mac);
    if !params_ok {
        DeviceFix::Recreate(have.index)
    } else if have.mtu != want.mtu || !have.up {
        DeviceFix::Tune(have.index)
    } else {
        DeviceFix::Keep
    }
}

/// The fix for an IPIP device given what the kernel has.
pub fn ipip_fix(want: &IpipDevice, have: Option<&LinkState>) -> DeviceFix {
    let Some(have) = have else {
        return DeviceFix::Create;
    };
    if have.kind.as_deref() != Some("ipip") {
        DeviceFix::Recreate(have.index)
    } else if have.mtu != want.mtu || !have.up {
        DeviceFix::Tune(have.index)
    } else {
        DeviceFix::Keep
    }
}

/// Addresses to add and remove so a tunnel device holds exactly `want` (as a /32).
pub fn address_fix(want: Option<Ipv4Addr>, have: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let want: Option<IpNet> = want.map(|a| IpNet::new(IpAddr::V4(a), 32).expect("/32 is valid"));
    let add = want.filter(|w| !have.contains(w)).into_iter().collect();
    let del = have
        .iter()
        .filter(|h| h.addr().is_ipv4() && Some(**h) != want)
        .copied()
        .collect();
    (add, del)
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

/// Entries to write and remove on the VXLAN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VtepPlan {
    /// ARP entries to write: tunnel address → MAC.
    pub arp_set: Vec<(IpAddr, [u8; 6])>,
    /// ARP entries to remove.
    pub arp_del: Vec<IpAddr>,
    /// FDB entries to write: MAC → node IP.
    pub fdb_set: Vec<([u8; 6], IpAddr)>,
    /// FDB entries to remove.
    pub fdb_del: Vec<([u8; 6], IpAddr)>,
}

/// Diffs the wanted VTEPs against the device's permanent ARP and FDB entries.
pub fn vtep_plan(
    want: &[RemoteVtep],
    arp: &BTreeMap<IpAddr, [u8; 6]>,
    fdb: &BTreeMap<[u8; 6], IpAddr>,
) -> VtepPlan {
    let want_arp: BTreeMap<IpAddr, [u8; 6]> = want.iter().map(|v| (v.tunnel_addr, v.mac)).collect();
    let want_fdb: BTreeMap<[u8; 6], IpAddr> = want.iter().map(|v| (v.mac, v.node_ip)).collect();
    VtepPlan {
        arp_set: want_arp
            .iter()
            .filter(|(ip, mac)| arp.get(ip) != Some(mac))
            .map(|(ip, mac)| (*ip, *mac))
            .collect(),
        arp_del: arp
            .keys()
            .filter(|ip| !want_arp.contains_key(ip))
            .copied()
            .collect(),
        fdb_set: want_fdb
            .iter()
            .filter(|(mac, ip)| fdb.get(*mac) != Some(ip))
            .map(|(mac, ip)| (*mac, *ip))
            .collect(),
        fdb_del: fdb
            .iter()
            .filter(|(mac, ip)| want_fdb.get(*mac) != Some(ip))
            .map(|(mac, ip)| (*mac, *ip))
            .collect(),
    }
}

/// A stable, locally administered unicast MAC for a node's VXLAN device, derived from the node
/// name so a restarted agent keeps the MAC the other nodes already have in their FDBs.
pub fn vxlan_mac(node: &str) -> [u8; 6] {
    let d = sha1_smol::Sha1::from(format!("vxlan.{node}"))
        .digest()
        .bytes();
    [(d[0] & 0xfe) | 0x02, d[1], d[2], d[3], d[4], d[5]]
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

async fn fix_addresses(
    nl: &Netlink,
    index: u32,
    want: Option<Ipv4Addr>,
) -> Result<(), DataplaneError> {
    let have = nl.addresses(index).await?;
    let (add, del) = address_fix(want, &have);
    for a in del {
        nl.del_address(index, a).await?;
    }
    for a in add {
        nl.add_address(index, a).await?;
    }
    Ok(())
}

/// Makes the VXLAN device exist with the right parameters, MTU, state and address.
pub async fn ensure_vxlan(nl: &Netlink, want: &VxlanDevice) -> Result<u32, DataplaneError> {
    let have = nl.link(&want.name).await?;
    match vxlan_fix(want, have.as_ref()) {
        DeviceFix::Keep => {}
        DeviceFix::Tune(i) => nl.set_mtu_up(i, want.mtu).await?,
        fix => {
            if let DeviceFix::Recreate(i) = fix {
                tracing::info!(device = %want.name, "VXLAN device has wrong parameters; recreating");
                nl.del_link(i).await?;
            }
            nl.add_vxlan(
                &want.name, want.vni, want.port, want.local, want.mac, want.mtu,
            )
            .await?;
        }
    }
    finish_device(nl, &want.name, want.mtu, want.address).await
}

/// The step both tunnel devices end with: the device as it is now, up with `mtu`, holding
/// exactly `address`; returns its index.
async fn finish_device(
    nl: &Netlink,
    name: &str,
    mtu: u32,
    address: Option<Ipv4Addr>,
) -> Result<u32, DataplaneError> {
    let link = nl
        .link(name)
        .await?
        .ok_or_else(|| DataplaneError::NoDevice(name.to_string()))?;
    if !link.up || link.mtu != mtu {
        nl.set_mtu_up(link.index, mtu).await?;
    }
    fix_addresses(nl, link.index, address).await?;
    Ok(link.index)
}

/// Makes the IPIP device exist, up, with the right MTU and address. On a kernel without
/// IPIP this returns [`DataplaneError::Unsupported`] saying so.
pub async fn ensure_ipip(nl: &Netlink, want: &IpipDevice) -> Result<u32, DataplaneError> {
    let have = nl.link(&want.name).await?;
    match ipip_fix(want, have.as_ref()) {
        DeviceFix::Keep => {}
        DeviceFix::Tune(i) => nl.set_mtu_up(i, want.mtu).await?,
        fix => {
            if let DeviceFix::Recreate(i) = fix {
                nl.del_link(i).await?;
            }
            nl.add_ipip(&want.name, want.mtu).await?;
        }
    }
    finish_device(nl, &want.name, want.mtu, want.address).await
}

/// Writes the VXLAN device's ARP and FDB entries for `vteps` and removes the others.
pub async fn ensure_vteps(
    nl: &Netlink,
    index: u32,
    vteps: &[RemoteVtep],
) -> Result<VtepPlan, DataplaneError> {
    let arp = nl.neighbours(index).await?;
    let fdb = nl.fdb(index).await?;
    let todo = vtep_plan(vteps, &arp, &fdb);
    for (mac, ip) in &todo.fdb_del {
        nl.del_fdb(index, *mac, *ip).await?;
    }
    for ip in &todo.arp_del {
        nl.del_neighbour(index, *ip).await?;
    }
    for (mac, ip) in &todo.fdb_set {
        nl.set_fdb(index, *mac, *ip).await?;
    }
    for (ip, mac) in &todo.arp_set {
        nl.set_neighbour(index, *ip, *mac).await?;
    }
    Ok(todo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vx() -> VxlanDevice {
        VxlanDevice {
            name: "vxlan.serval".into(),
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local: "192.168.1.5".parse().unwrap(),
            mac: vxlan_mac("node-a"),
            mtu: 1450,
            address: Some("10.244.1.0".parse().unwrap()),
        }
    }

    fn link(kind: &str, mtu: u32, up: bool) -> LinkState {
        LinkState {
            index: 7,
            name: "x".into(),
            kind: Some(kind.into()),
            mtu,
            up,
            mac: None,
            vxlan: None,
            alias: None,
        }
    }

    #[test]
    fn vxlan_device_is_created_tuned_or_recreated() {
        let want = vx();
        assert_eq!(vxlan_fix(&want, None), DeviceFix::Create);
        let mut good = link("vxlan", 1450, true);
        good.mac = Some(want.mac);
        good.vxlan = Some((VXLAN_VNI, VXLAN_PORT, Some(want.local)));
        assert_eq!(vxlan_fix(&want, Some(&good)), DeviceFix::Keep);
        let mut down = good.clone();
        down.up = false;
        assert_eq!(vxlan_fix(&want, Some(&down)), DeviceFix::Tune(7));
        let mut mtu = good.clone();
        mtu.mtu = 1500;
        assert_eq!(vxlan_fix(&want, Some(&mtu)), DeviceFix::Tune(7));
        // The node's IP changed: the VXLAN local address cannot change in place.
        let mut moved = good.clone();
        moved.vxlan = Some((VXLAN_VNI, VXLAN_PORT, Some("192.168.9.9".parse().unwrap())));
        assert_eq!(vxlan_fix(&want, Some(&moved)), DeviceFix::Recreate(7));
        assert_eq!(
            vxlan_fix(&want, Some(&link("dummy", 1450, true))),
            DeviceFix::Recreate(7)
        );
    }

    #[test]
    fn ipip_device_logic() {
        let want = IpipDevice {
            name: "tunl0".into(),
            mtu: 1480,
            address: Some("10.244.1.1".parse().unwrap()),
        };
        assert_eq!(ipip_fix(&want, None), DeviceFix::Create);
        // The fallback tunl0 appears down with MTU 1480 when the module loads.
        assert_eq!(
            ipip_fix(&want, Some(&link("ipip", 1480, false))),
            DeviceFix::Tune(7)
        );
        assert_eq!(
            ipip_fix(&want, Some(&link("ipip", 1480, true))),
            DeviceFix::Keep
        );
        assert_eq!(
            ipip_fix(&want, Some(&link("veth", 1480, true))),
            DeviceFix::Recreate(7)
        );
    }

    #[test]
    fn tunnel_addresses_are_exactly_the_ipam_one() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let want = Some("10.244.1.1".parse().unwrap());
        assert_eq!(address_fix(want, &[]), (vec![n("10.244.1.1/32")], vec![]));
        assert_eq!(address_fix(want, &[n("10.244.1.1/32")]), (vec![], vec![]));
        assert_eq!(
            address_fix(want, &[n("10.244.9.9/32"), n("fe80::1/64")]),
            (vec![n("10.244.1.1/32")], vec![n("10.244.9.9/32")])
        );
        assert_eq!(
            address_fix(None, &[n("10.244.1.1/32")]),
            (vec![], vec![n("10.244.1.1/32")])
        );
    }

    #[test]
    fn vtep_entries_follow_the_remote_nodes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (ma, mb) = (vxlan_mac("a"), vxlan_mac("b"));
        let want = [
            RemoteVtep {
                node_ip: ip("192.168.2.7"),
                tunnel_addr: ip("10.244.2.0"),
                mac: ma,
            },
            RemoteVtep {
                node_ip: ip("192.168.3.7"),
                tunnel_addr: ip("10.244.3.0"),
                mac: mb,
            },
        ];
        let mut arp = BTreeMap::new();
        arp.insert(ip("10.244.2.0"), ma);
        arp.insert(ip("10.244.9.0"), vxlan_mac("gone"));
        let mut fdb = BTreeMap::new();
        fdb.insert(ma, ip("192.168.2.99")); // node a moved
        let p = vtep_plan(&want, &arp, &fdb);
        assert_eq!(p.arp_set, vec![(ip("10.244.3.0"), mb)]);
        assert_eq!(p.arp_del, vec![ip("10.244.9.0")]);
        let mut want_fdb = vec![(ma, ip("192.168.2.7")), (mb, ip("192.168.3.7"))];
        want_fdb.sort();
        assert_eq!(p.fdb_set, want_fdb);
        assert_eq!(p.fdb_del, vec![(ma, ip("192.168.2.99"))]);
    }

    #[test]
    fn macs_are_stable_unicast_and_local() {
        let m = vxlan_mac("node-a");
        assert_eq!(m, vxlan_mac("node-a"));
        assert_ne!(m, vxlan_mac("node-b"));
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        assert_eq!(parse_mac(&format_mac(&m)), Some(m));
        assert_eq!(parse_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:fg"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:f"), None);
    }
}
