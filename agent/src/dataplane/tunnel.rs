//! Tunnel devices and their static entries: `tunl0` (IPIP), `vxlan.serval` and
//! `vxlan-v6.serval` (VXLAN over IPv4 and IPv6, each with a permanent ARP/ND entry and FDB
//! entry per remote VTEP, as Felix does, so no flooding or learning is ever needed). The decisions (create, recreate, tune, which addresses and
//! entries to add or remove) are pure functions tested without a kernel; `ensure_*` applies them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::DataplaneError;
use super::netlink::{LinkState, Netlink};
use crate::calc::tunnels::{IpipDevice, RemoteVtep, VxlanDevice};

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

/// Addresses to add and remove so a tunnel device holds exactly `want` (as a /32 or /128)
/// among the addresses of the device's family (`v6`). The kernel's own IPv6 link-local
/// address stays.
pub fn address_fix(want: Option<IpAddr>, v6: bool, have: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    let want: Option<IpNet> = want.map(IpNet::from);
    let add = want.filter(|w| !have.contains(w)).into_iter().collect();
    let ours = |n: &IpNet| match n {
        IpNet::V4(_) => !v6,
        IpNet::V6(n6) => v6 && !n6.addr().is_unicast_link_local(),
    };
    let del = have
        .iter()
        .filter(|h| ours(h) && Some(**h) != want)
        .copied()
        .collect();
    (add, del)
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

async fn fix_addresses(
    nl: &Netlink,
    index: u32,
    want: Option<IpAddr>,
    v6: bool,
) -> Result<(), DataplaneError> {
    let have = nl.addresses(index).await?;
    let (add, del) = address_fix(want, v6, &have);
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
    finish_device(nl, &want.name, want.mtu, want.address, want.local.is_ipv6()).await
}

/// The step every tunnel device ends with: the device as it is now, up with `mtu`, holding
/// exactly `address` among its family's (`v6`) addresses; returns its index.
async fn finish_device(
    nl: &Netlink,
    name: &str,
    mtu: u32,
    address: Option<IpAddr>,
    v6: bool,
) -> Result<u32, DataplaneError> {
    let link = nl
        .link(name)
        .await?
        .ok_or_else(|| DataplaneError::NoDevice(name.to_string()))?;
    if !link.up || link.mtu != mtu {
        nl.set_mtu_up(link.index, mtu).await?;
    }
    fix_addresses(nl, link.index, address, v6).await?;
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
    finish_device(
        nl,
        &want.name,
        want.mtu,
        want.address.map(IpAddr::V4),
        false,
    )
    .await
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
    use crate::calc::tunnels::{VXLAN_PORT, VXLAN_VNI, vxlan_mac};

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
        assert_eq!(
            address_fix(want, false, &[]),
            (vec![n("10.244.1.1/32")], vec![])
        );
        assert_eq!(
            address_fix(want, false, &[n("10.244.1.1/32")]),
            (vec![], vec![])
        );
        assert_eq!(
            address_fix(want, false, &[n("10.244.9.9/32"), n("fe80::1/64")]),
            (vec![n("10.244.1.1/32")], vec![n("10.244.9.9/32")])
        );
        assert_eq!(
            address_fix(None, false, &[n("10.244.1.1/32")]),
            (vec![], vec![n("10.244.1.1/32")])
        );
        // The IPv6 device: its /128 from IPAM; the kernel's link-local address stays, and
        // IPv4 addresses are not its business.
        let want6 = Some("fd00:10::1:0".parse().unwrap());
        assert_eq!(
            address_fix(
                want6,
                true,
                &[n("fe80::1/64"), n("fd00:10::9:0/128"), n("10.0.0.1/32")]
            ),
            (vec![n("fd00:10::1:0/128")], vec![n("fd00:10::9:0/128")])
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
}
