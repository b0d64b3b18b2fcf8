//! The one place that speaks rtnetlink: route dumps and batched route writes (many requests
//! in flight on one socket, like `ip -batch`), links, addresses and neighbour/FDB entries.
//! Everything above this module works on names and plain values and is tested without a kernel.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures::{StreamExt, TryStreamExt, stream};
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHopFlags,
    RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder, RouteNextHopBuilder};

use super::DataplaneError;
use crate::calc::kernel_table::{Hop, KernelRoute, KernelTable, RouteKind};
use crate::calc::routes::ROUTE_PROTOCOL;

/// Neighbour (ARP/ND) and FDB entries: the VXLAN device's static VTEP entries.
mod neighbours;

/// How many netlink requests are in flight at once during a batch.
const IN_FLIGHT: usize = 256;

/// How a batch of route requests writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Add, refusing an occupied destination and metric.
    Create,
    /// Replace the route at the destination and metric (ours).
    Replace,
    /// Delete (scoped to our protocol).
    Delete,
}

/// `EOPNOTSUPP`, which the kernel returns for a link type it was built without (ipip here).
const EOPNOTSUPP: i32 = libc::EOPNOTSUPP;

/// A link as the managers need to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// `ip -d link` kind (`vxlan`, `ipip`, `veth`, ...), if any.
    pub kind: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Hardware address.
    pub mac: Option<[u8; 6]>,
    /// VXLAN parameters (VNI, UDP port, local address), for VXLAN links.
    pub vxlan: Option<(u32, u16, Option<IpAddr>)>,
    /// The interface alias (`ip link set DEV alias ...`); on pod veths, the owning
    /// container's ID.
    pub alias: Option<String>,
}

/// A rtnetlink connection (to the namespace it was opened in) with its driver task.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> DataplaneError {
    let what = what.into();
    move |e| DataplaneError::Netlink {
        what,
        code: match &e {
            rtnetlink::Error::NetlinkError(m) => -m.raw_code(),
            _ => 0,
        },
        message: e.to_string(),
    }
}

impl Netlink {
    /// Opens a connection in the caller's network namespace (needs a tokio runtime).
    pub fn connect() -> Result<Netlink, DataplaneError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(DataplaneError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Opens a connection in the namespace at `netns` (e.g. `/run/netns/x`): the socket is
    /// created on a thread that entered it, and stays bound there.
    pub fn connect_in(netns: &Path) -> Result<Netlink, DataplaneError> {
        let file = std::fs::File::open(netns).map_err(DataplaneError::Socket)?;
        let rt = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| DataplaneError::Socket(e.into()))?;
            let _guard = rt.enter();
            Netlink::connect()
        })
        .join()
        .map_err(|_| DataplaneError::Socket(std::io::Error::other("netns thread panicked")))?
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<LinkState>, DataplaneError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list links"))?;
        Ok(msgs.iter().map(link_state).collect())
    }

    /// One link by name, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>, DataplaneError> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    /// Serval's routes (our protocol, main table), IPv4 and IPv6.
    pub async fn routes(&self) -> Result<KernelTable, DataplaneError> {
        let names: BTreeMap<u32, String> = self
            .links()
            .await?
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect();
        let mut out = KernelTable::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut filter = RouteMessage::default();
            filter.header.address_family = family;
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(filter)
                .execute()
                .try_collect()
                .await
                .map_err(nl_err("dump routes"))?;
            for m in msgs {
                if m.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
                    || m.header.table != RouteHeader::RT_TABLE_MAIN
                {
                    continue;
                }
                if let Some(route) = parse_route(&m, &names) {
                    out.insert(route.key(), route.kind);
                }
            }
        }
        Ok(out)
    }

    /// Creates, replaces and deletes routes, many requests in flight; returns the routes
    /// that failed with why, so the caller retries only those. `create` never replaces: a
    /// route another protocol holds at the same destination and metric makes it fail with
    /// EEXIST (see [`DataplaneError::is_foreign_route`]) and is left alone. `replace` is
    /// only for destinations our own route already holds; deletes name our protocol, so the
    /// kernel never removes another owner's route for them.
    pub async fn apply_routes(
        &self,
        create: &[KernelRoute],
        replace: &[KernelRoute],
        delete: &[KernelRoute],
    ) -> Result<Vec<(KernelRoute, DataplaneError)>, DataplaneError> {
        let index: BTreeMap<String, u32> = self
            .links()
            .await?
            .into_iter()
            .map(|l| (l.name, l.index))
            .collect();
        let mut failed = Vec::new();
        let dels: Vec<_> = delete
            .iter()
            .map(|r| (r.clone(), route_message(r, &index)))
            .collect();
        for (r, res) in self.batch(dels, Write::Delete).await {
            match res {
                // Already gone (the device went away and took the route with it).
                Err(DataplaneError::Netlink { code, .. }) if code == libc::ESRCH => {}
                Err(e) => failed.push((r, e)),
                Ok(()) => {}
            }
        }
        for (routes, how) in [(create, Write::Create), (replace, Write::Replace)] {
            let msgs: Vec<_> = routes
                .iter()
                .map(|r| (r.clone(), route_message(r, &index)))
                .collect();
            for (r, res) in self.batch(msgs, how).await {
                if let Err(e) = res {
                    failed.push((r, e));
                }
            }
        }
        Ok(failed)
    }

    /// Sends route writes or deletes with up to [`IN_FLIGHT`] requests outstanding.
    async fn batch(
        &self,
        routes: Vec<(KernelRoute, Result<RouteMessage, DataplaneError>)>,
        how: Write,
    ) -> Vec<(KernelRoute, Result<(), DataplaneError>)> {
        let handle = self.handle.clone();
        stream::iter(routes.into_iter().map(move |(r, msg)| {
            let h = handle.clone();
            async move {
                let res = match msg {
                    Ok(m) if how == Write::Replace => h
                        .route()
                        .add(m)
                        .replace()
                        .execute()
                        .await
                        .map_err(nl_err(format!("replace {r}"))),
                    // NLM_F_CREATE | NLM_F_EXCL: fails if any route holds the slot.
                    Ok(m) if how == Write::Create => h
                        .route()
                        .add(m)
                        .execute()
                        .await
                        .map_err(nl_err(format!("create {r}"))),
                    Ok(m) => h
                        .route()
                        .del(m)
                        .execute()
                        .await
                        .map_err(nl_err(format!("delete {r}"))),
                    Err(e) => Err(e),
                };
                (r, res)
            }
        }))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
    }

    /// Creates a VXLAN device (not yet up).
    pub async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        local: IpAddr,
        mac: [u8; 6],
        mtu: u32,
    ) -> Result<(), DataplaneError> {
        let msg = rtnetlink::LinkVxlan::new(name, vni).port(port);
        let msg = match local {
            IpAddr::V4(v4) => msg.local(v4),
            IpAddr::V6(v6) => msg.local6(v6),
        };
        let msg = msg.learning(false).mtu(mtu).address(mac.to_vec()).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl_err(format!("create VXLAN device {name}")))
    }

    /// Creates an IPIP device (no remote: the fallback-style device every tunnel route uses).
    /// Fails with [`DataplaneError::Unsupported`] when the kernel has no `ipip`.
    pub async fn add_ipip(&self, name: &str, mtu: u32) -> Result<(), DataplaneError> {
        let msg = rtnetlink::LinkIpIp::new(name).mtu(mtu).build();
        match self.handle.link().add(msg).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == EOPNOTSUPP => {
                Err(DataplaneError::Unsupported(format!(
                    "the kernel cannot create `ipip` links ({name}): it was built without IPIP \
                     tunnel support (CONFIG_NET_IPIP); use vxlanMode on the pool instead"
                )))
            }
            other => other.map_err(nl_err(format!("create IPIP device {name}"))),
        }
    }

    /// Creates a veth pair: `host` here, `peer` created directly inside the namespace open
    /// as `peer_netns` (so no temporary name ever exists), both with `mtu`.
    pub async fn add_veth_into(
        &self,
        host: &str,
        peer: &str,
        peer_netns: &std::fs::File,
        mtu: u32,
    ) -> Result<(), DataplaneError> {
        use std::os::fd::AsRawFd;
        let peer_msg = rtnetlink::LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .setns_by_fd(peer_netns.as_raw_fd())
            .build();
        let msg = rtnetlink::LinkVeth::new(host, peer)
            .set_info_data(InfoData::Veth(netlink_packet_route::link::InfoVeth::Peer(
                peer_msg,
            )))
            .mtu(mtu)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl_err(format!("create veth {host} (peer {peer})")))
    }

    /// Sends one `ip link set`-style change.
    async fn set_link(&self, msg: LinkMessage, what: String) -> Result<(), DataplaneError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl_err(what))
    }

    /// Sets a link's MAC address.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), DataplaneError> {
        let msg = rtnetlink::LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.set_link(msg, format!("set MAC on link {index}")).await
    }

    /// Sets a link's alias (what owns it).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<(), DataplaneError> {
        let msg = rtnetlink::LinkUnspec::new_with_index(index)
            .alias(alias)
            .build();
        self.set_link(msg, format!("set alias on link {index}"))
            .await
    }

    /// Brings a link up.
    pub async fn set_up(&self, index: u32) -> Result<(), DataplaneError> {
        let msg = rtnetlink::LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl_err(format!("bring link {index} up")))
    }

    /// Adds a plain route (not Serval's protocol: used inside pods and for the CNI plugin's
    /// first host route, which the agent then adopts): `dst [via gw] dev index`, link scope
    /// when there is no gateway.
    pub async fn add_plain_route(
        &self,
        dst: IpNet,
        gateway: Option<IpAddr>,
        index: u32,
    ) -> Result<(), DataplaneError> {
        let what = format!("route {dst} dev {index}");
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| DataplaneError::Invalid(format!("{what}: {e}")))?
            .output_interface(index)
            .protocol(RouteProtocol::Boot);
        b = match gateway {
            Some(gw) => b
                .gateway(gw)
                .map_err(|e| DataplaneError::Invalid(format!("{what}: {e}")))?,
            None => b.scope(RouteScope::Link),
        };
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(nl_err(what))
    }

    /// Every route in the main table (any protocol) to `dst`, as (gateway, device index).
    pub async fn routes_to(
        &self,
        dst: IpNet,
    ) -> Result<Vec<(Option<IpAddr>, Option<u32>)>, DataplaneError> {
        let mut filter = RouteMessage::default();
        filter.header.address_family = if dst.addr().is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("dump routes"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
            .filter(|m| m.header.destination_prefix_length == dst.prefix_len())
            .filter(|m| {
                let have = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(d) => route_addr(d),
                    _ => None,
                });
                // A default route carries no destination attribute.
                have.map_or(dst.prefix_len() == 0, |h| h == dst.addr())
            })
            .map(|m| {
                let gw = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => route_addr(g),
                    _ => None,
                });
                let oif = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                (gw, oif)
            })
            .collect())
    }

    /// Deletes a link by index.
    pub async fn del_link(&self, index: u32) -> Result<(), DataplaneError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(nl_err(format!("delete link {index}")))
    }

    /// Sets a link's MTU and brings it up.
    pub async fn set_mtu_up(&self, index: u32, mtu: u32) -> Result<(), DataplaneError> {
        let msg = rtnetlink::LinkUnspec::new_with_index(index)
            .mtu(mtu)
            .up()
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl_err(format!("set MTU {mtu} and up on link {index}")))
    }

    /// The addresses on a link, with prefix lengths.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, DataplaneError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err(format!("list addresses of link {index}")))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds an address to a link (replacing an identical one). IPv6 addresses skip duplicate
    /// address detection: Serval's IPAM already guarantees uniqueness, and DAD would delay
    /// the address by a second or more.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), DataplaneError> {
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .replace();
        if addr.addr().is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(
                netlink_packet_route::address::AddressFlags::Nodad,
            ));
        }
        req.execute()
            .await
            .map_err(nl_err(format!("add {addr} to link {index}")))
    }

    /// Removes an address from a link.
    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<(), DataplaneError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr.addr())
            .execute()
            .try_collect()
            .await
            .map_err(nl_err(format!("find {addr} on link {index}")))?;
        for m in msgs {
            self.handle
                .address()
                .del(m)
                .execute()
                .await
                .map_err(nl_err(format!("remove {addr} from link {index}")))?;
        }
        Ok(())
    }
}

fn link_state(m: &LinkMessage) -> LinkState {
    let mut out = LinkState {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        mac: None,
        vxlan: None,
        alias: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => out.name = n.clone(),
            LinkAttribute::IfAlias(a) => out.alias = Some(a.clone()),
            LinkAttribute::Mtu(mtu) => out.mtu = *mtu,
            LinkAttribute::Address(b) => out.mac = b.as_slice().try_into().ok(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => out.kind = Some(kind_name(k)),
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            let (mut vni, mut port, mut local) = (0, 0, None);
                            for x in v {
                                match x {
                                    InfoVxlan::Id(id) => vni = *id,
                                    InfoVxlan::Port(p) => port = *p,
                                    InfoVxlan::Local(l) => local = Some(IpAddr::V4(*l)),
                                    InfoVxlan::Local6(l) => local = Some(IpAddr::V6(*l)),
                                    _ => {}
                                }
                            }
                            out.vxlan = Some((vni, port, local));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::IpIp => "ipip".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Dummy => "dummy".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Reads one of our routes back; `None` for shapes Serval never writes.
fn parse_route(m: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<KernelRoute> {
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut multipath = None;
    let mut metric = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => gateway = route_addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::MultiPath(hops) => multipath = Some(hops.clone()),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    let len = m.header.destination_prefix_length;
    let dst = match dst {
        Some(ip) => IpNet::new(ip, len).ok()?,
        None if m.header.address_family == AddressFamily::Inet6 => {
            IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), len).ok()?
        }
        None => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), len).ok()?,
    };
    let name = |i: u32| names.get(&i).cloned();
    let kind = if m.header.kind == RouteType::BlackHole {
        RouteKind::Blackhole
    } else if let Some(hops) = multipath {
        RouteKind::Via(
            hops.iter()
                .filter_map(|h| {
                    let gw = h.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(g) => route_addr(g),
                        _ => None,
                    })?;
                    Some(Hop {
                        gateway: gw,
                        dev: name(h.interface_index),
                        onlink: h.flags.contains(RouteNextHopFlags::Onlink),
                    })
                })
                .collect(),
        )
    } else if let Some(gw) = gateway {
        RouteKind::Via(vec![Hop {
            gateway: gw,
            dev: oif.and_then(name),
            onlink: m.header.flags.contains(RouteFlags::Onlink),
        }])
    } else {
        RouteKind::Link(oif.and_then(name)?)
    };
    Some(KernelRoute {
        metric: metric.unwrap_or_else(|| crate::calc::kernel_table::default_metric(&dst)),
        dst,
        kind,
    })
}

fn route_message(
    r: &KernelRoute,
    index: &BTreeMap<String, u32>,
) -> Result<RouteMessage, DataplaneError> {
    let dev_index = |dev: &str| {
        index
            .get(dev)
            .copied()
            .ok_or_else(|| DataplaneError::NoDevice(dev.to_string()))
    };
    let base = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .map_err(|e| DataplaneError::Invalid(format!("{r}: {e}")))?
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .priority(r.metric);
    let msg = match &r.kind {
        RouteKind::Blackhole => base.kind(RouteType::BlackHole).build(),
        RouteKind::Link(dev) => base
            .output_interface(dev_index(dev)?)
            .scope(RouteScope::Link)
            .build(),
        RouteKind::Via(hops) if hops.len() == 1 => {
            let h = &hops[0];
            let mut b = base
                .gateway(h.gateway)
                .map_err(|e| DataplaneError::Invalid(format!("{r}: {e}")))?;
            if let Some(dev) = &h.dev {
                b = b.output_interface(dev_index(dev)?);
            }
            if h.onlink {
                b = b.onlink();
            }
            b.build()
        }
        RouteKind::Via(hops) => {
            let family = if r.dst.addr().is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let mut nhs = Vec::with_capacity(hops.len());
            for h in hops {
                let mut b = RouteNextHopBuilder::new(family)
                    .via(h.gateway)
                    .map_err(|e| DataplaneError::Invalid(format!("{r}: {e}")))?;
                if let Some(dev) = &h.dev {
                    b = b.interface(dev_index(dev)?);
                }
                if h.onlink {
                    b = b.onlink();
                }
                nhs.push(b.build());
            }
            base.multipath(nhs).build()
        }
    };
    Ok(msg)
}
