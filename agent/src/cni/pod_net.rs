//! A pod's network plumbing, Calico's way: a veth whose host end (`sv` + hash, MAC
//! `ee:ee:ee:ee:ee:ee`, no address, proxy ARP on) answers for the pod's gateway 169.254.1.1;
//! inside the pod a /32 on `eth0`, a link route to 169.254.1.1 and the default route via it;
//! on the host a /32 route to the veth. The pod also gets a permanent ARP entry for the
//! gateway: proxy ARP only answers when the host has a route to 169.254.1.1 (a default
//! route), and a node without one would leave its pods unable to send anything.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::IpNet;

use crate::calc::tunnels::format_mac;
use crate::dataplane::DataplaneError;
use crate::dataplane::netlink::Netlink;

/// The pod's gateway, answered by proxy ARP on the host veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The host veth's MAC (fixed, as Calico does, so pods' ARP caches survive a veth rebuild).
pub const HOST_VETH_MAC: [u8; 6] = [0xee; 6];
/// The host veth's IPv6 link-local address (EUI-64 of [`HOST_VETH_MAC`]): the pods' IPv6
/// gateway.
pub const HOST_VETH_LINK_LOCAL: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// What to build for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// Host-side interface names to use, in order of preference: the pod's usual name,
    /// then one unique to the sandbox for when another container still holds the first.
    pub host_ifnames: Vec<String>,
    /// The container ID, recorded as the host veth's alias: only its own container's
    /// ADD or DEL may remove it.
    pub owner: String,
    /// Interface inside the pod (`CNI_IFNAME`).
    pub container_ifname: String,
    /// The pod's network namespace path (`CNI_NETNS`).
    pub netns: String,
    /// The pod's addresses (host prefixes).
    pub addresses: Vec<IpAddr>,
    /// MTU of both ends.
    pub mtu: u32,
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAttachment {
    /// The host-side interface name used.
    pub host_ifname: String,
    /// The container interface's MAC.
    pub container_mac: String,
}

/// Why the plumbing failed.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    /// The netns path does not exist or cannot be opened.
    #[error("cannot open the container's network namespace {path}: {source}")]
    Netns {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The container already has the interface (the spec says ADD must fail).
    #[error("interface {0} already exists in the container")]
    Exists(String),
    /// A kernel call failed.
    #[error(transparent)]
    Kernel(#[from] DataplaneError),
    /// A sysctl could not be written.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        /// The /proc path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// CHECK found a difference.
    #[error("{0}")]
    Mismatch(String),
    /// Every host interface name this sandbox may use belongs to other containers.
    #[error("host interfaces {0:?} belong to other containers")]
    NamesTaken(Vec<String>),
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix")
}

fn sysctl(path: &str, value: &str) -> Result<(), PodNetError> {
    std::fs::write(path, value).map_err(|source| PodNetError::Sysctl {
        path: path.to_string(),
        source,
    })
}

fn open_netns(path: &str) -> Result<std::fs::File, PodNetError> {
    std::fs::File::open(path).map_err(|source| PodNetError::Netns {
        path: path.to_string(),
        source,
    })
}

/// The first host interface name that is free or already this container's (a leftover of
/// its own failed attempt, removed here). Another container's veth is never touched.
async fn claim_name(host: &Netlink, pod: &PodNetwork) -> Result<String, PodNetError> {
    for name in &pod.host_ifnames {
        match host.link(name).await? {
            None => return Ok(name.clone()),
            Some(l) if l.alias.as_deref() == Some(pod.owner.as_str()) => {
                host.del_link(l.index).await?;
                return Ok(name.clone());
            }
            Some(_) => {}
        }
    }
    Err(PodNetError::NamesTaken(pod.host_ifnames.clone()))
}

/// Builds the pod's network. On failure everything it made is removed again.
pub async fn setup(host: &Netlink, pod: &PodNetwork) -> Result<PodAttachment, PodNetError> {
    let ns_file = open_netns(&pod.netns)?;
    let inside = Netlink::connect_in(Path::new(&pod.netns))?;
    if inside.link(&pod.container_ifname).await?.is_some() {
        return Err(PodNetError::Exists(pod.container_ifname.clone()));
    }
    let host_ifname = claim_name(host, pod).await?;
    host.add_veth_into(&host_ifname, &pod.container_ifname, &ns_file, pod.mtu)
        .await?;
    match plumb(host, &inside, pod, &host_ifname).await {
        Ok(a) => Ok(a),
        Err(e) => {
            // Deleting the host end removes the pod end too.
            if let Ok(Some(l)) = host.link(&host_ifname).await {
                let _ = host.del_link(l.index).await;
            }
            Err(e)
        }
    }
}

async fn plumb(
    host: &Netlink,
    inside: &Netlink,
    pod: &PodNetwork,
    host_ifname: &str,
) -> Result<PodAttachment, PodNetError> {
    let h = host
        .link(host_ifname)
        .await?
        .ok_or_else(|| DataplaneError::NoDevice(host_ifname.to_string()))?;
    host.set_alias(h.index, &pod.owner).await?;
    host.set_mac(h.index, HOST_VETH_MAC).await?;
    let conf = format!("/proc/sys/net/ipv4/conf/{host_ifname}");
    sysctl(&format!("{conf}/proxy_arp"), "1")?;
    sysctl(&format!("{conf}/forwarding"), "1")?;
    // Anti-spoofing: strict reverse-path filtering (the pod's /32 is routed back through
    // this veth, so only its own source passes) and no routing to 127.0.0.0/8 from the pod,
    // so node services bound to loopback stay out of its reach (no Serval feature needs
    // route_localnet; set explicitly in case the host's default says otherwise).
    sysctl(&format!("{conf}/rp_filter"), "1")?;
    sysctl(&format!("{conf}/route_localnet"), "0")?;
    sysctl(
        &format!("/proc/sys/net/ipv4/neigh/{host_ifname}/proxy_delay"),
        "0",
    )?;
    let v6 = pod.addresses.iter().any(IpAddr::is_ipv6);
    if v6 {
        let conf6 = format!("/proc/sys/net/ipv6/conf/{host_ifname}");
        sysctl(&format!("{conf6}/disable_ipv6"), "0")?;
        sysctl(&format!("{conf6}/accept_dad"), "0")?;
        sysctl(&format!("{conf6}/accept_ra"), "0")?;
        sysctl(&format!("{conf6}/proxy_ndp"), "1")?;
        sysctl(&format!("{conf6}/forwarding"), "1")?;
    }
    host.set_up(h.index).await?;

    let c = inside
        .link(&pod.container_ifname)
        .await?
        .ok_or_else(|| DataplaneError::NoDevice(pod.container_ifname.clone()))?;
    inside.set_up(c.index).await?;
    for ip in &pod.addresses {
        inside.add_address(c.index, host_prefix(*ip)).await?;
    }
    if pod.addresses.iter().any(IpAddr::is_ipv4) {
        let gw = IpAddr::V4(POD_GATEWAY);
        inside
            .add_plain_route(host_prefix(gw), None, c.index)
            .await?;
        inside
            .add_plain_route("0.0.0.0/0".parse().expect("default"), Some(gw), c.index)
            .await?;
        inside.set_neighbour(c.index, gw, HOST_VETH_MAC).await?;
    }
    if v6 {
        // Via the host veth's link-local address, as Calico does.
        inside
            .add_plain_route(
                "::/0".parse().expect("default"),
                Some(IpAddr::V6(HOST_VETH_LINK_LOCAL)),
                c.index,
            )
            .await?;
    }
    for ip in &pod.addresses {
        host.add_plain_route(host_prefix(*ip), None, h.index)
            .await?;
    }
    Ok(PodAttachment {
        host_ifname: host_ifname.to_string(),
        container_mac: c.mac.as_ref().map(format_mac).unwrap_or_default(),
    })
}

/// Removes the container's host veth (and with it the pod end and the host routes) under
/// whichever of `names` it has. A veth of another container (its alias says so) is left
/// alone: DEL for an old sandbox never touches the pod's new one. Returns whether one was
/// removed; none is success (DEL is idempotent).
pub async fn teardown(host: &Netlink, names: &[String], owner: &str) -> Result<bool, PodNetError> {
    let mut removed = false;
    for name in names {
        if let Some(l) = host.link(name).await?
            && l.alias.as_deref() == Some(owner)
        {
            host.del_link(l.index).await?;
            removed = true;
        }
    }
    Ok(removed)
}

/// Verifies the plumbing is still as ADD left it.
pub async fn check(host: &Netlink, pod: &PodNetwork) -> Result<(), PodNetError> {
    let mut mine = None;
    for name in &pod.host_ifnames {
        if let Some(l) = host.link(name).await?
            && l.alias.as_deref() == Some(pod.owner.as_str())
        {
            mine = Some(l);
            break;
        }
    }
    let h = mine.ok_or_else(|| {
        PodNetError::Mismatch(format!(
            "no host interface of this container ({:?})",
            pod.host_ifnames
        ))
    })?;
    if !h.up {
        return Err(PodNetError::Mismatch(format!(
            "host interface {} is down",
            h.name
        )));
    }
    let inside = Netlink::connect_in(Path::new(&pod.netns))?;
    let c = inside.link(&pod.container_ifname).await?.ok_or_else(|| {
        PodNetError::Mismatch(format!(
            "interface {} is missing in the container",
            pod.container_ifname
        ))
    })?;
    let have = inside.addresses(c.index).await?;
    for ip in &pod.addresses {
        if !have.contains(&host_prefix(*ip)) {
            return Err(PodNetError::Mismatch(format!(
                "{} in the container lacks address {}",
                pod.container_ifname,
                host_prefix(*ip)
            )));
        }
        let routes = host.routes_to(host_prefix(*ip)).await?;
        if !routes.iter().any(|(_, oif)| *oif == Some(h.index)) {
            return Err(PodNetError::Mismatch(format!(
                "the host has no route {} dev {}",
                host_prefix(*ip),
                h.name
            )));
        }
    }
    if pod.addresses.iter().any(IpAddr::is_ipv4) {
        let default = inside
            .routes_to("0.0.0.0/0".parse().expect("default"))
            .await?;
        if !default
            .iter()
            .any(|(gw, _)| *gw == Some(IpAddr::V4(POD_GATEWAY)))
        {
            return Err(PodNetError::Mismatch(format!(
                "the container has no default route via {POD_GATEWAY}"
            )));
        }
    }
    Ok(())
}
