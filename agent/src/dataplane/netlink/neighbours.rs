//! Neighbour (ARP/ND) and bridge FDB entries over rtnetlink: what the VXLAN device needs
//! for each remote VTEP (a permanent neighbour for its tunnel address, an FDB entry for its
//! MAC), read back and written one at a time.

use super::*;

impl Netlink {
    /// Permanent ARP/ND entries on a link: address → MAC.
    pub async fn neighbours(
        &self,
        index: u32,
    ) -> Result<BTreeMap<IpAddr, [u8; 6]>, DataplaneError> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list neighbours"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
            .filter_map(|m| Some((destination_of(&m.attributes)?, mac_of(&m.attributes)?)))
            .collect())
    }

    /// Writes a permanent ARP/ND entry.
    pub async fn set_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), DataplaneError> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("neighbour {ip} on link {index}")))
    }

    /// Deletes an ARP/ND entry.
    pub async fn del_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), DataplaneError> {
        let mut m = NeighbourMessage::default();
        m.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        self.handle
            .neighbours()
            .del(m)
            .execute()
            .await
            .map_err(nl_err(format!("delete neighbour {ip} on link {index}")))
    }

    /// The link's static FDB entries: MAC → remote VTEP.
    pub async fn fdb(&self, index: u32) -> Result<BTreeMap<[u8; 6], IpAddr>, DataplaneError> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list FDB"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
            .filter_map(|m| {
                let dst = destination_of(&m.attributes)?;
                Some((mac_of(&m.attributes)?, dst))
            })
            .collect())
    }

    /// Writes a static FDB entry `MAC dst VTEP self permanent` on a VXLAN device.
    pub async fn set_fdb(
        &self,
        index: u32,
        mac: [u8; 6],
        vtep: IpAddr,
    ) -> Result<(), DataplaneError> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .destination(vtep)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("FDB entry for {vtep} on link {index}")))
    }

    /// Deletes a static FDB entry.
    pub async fn del_fdb(
        &self,
        index: u32,
        mac: [u8; 6],
        vtep: IpAddr,
    ) -> Result<(), DataplaneError> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(match vtep {
                IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
            }));
        self.handle
            .neighbours()
            .del(m)
            .execute()
            .await
            .map_err(nl_err(format!(
                "delete FDB entry for {vtep} on link {index}"
            )))
    }
}

/// A neighbour or FDB entry's address. In the bridge family the library leaves the VTEP
/// address as raw bytes.
fn destination_of(attrs: &[NeighbourAttribute]) -> Option<IpAddr> {
    attrs.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn mac_of(attrs: &[NeighbourAttribute]) -> Option<[u8; 6]> {
    attrs.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => b.as_slice().try_into().ok(),
        _ => None,
    })
}
