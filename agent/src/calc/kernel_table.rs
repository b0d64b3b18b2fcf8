//! Kernel routes as Serval writes and reads them (interfaces by name): the form calc's
//! desired routes take for the route manager, with tunnel hops pinned to their device.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::routes::{
    DesiredRoutes, IPIP_DEVICE, NextHop, RouteTarget, VXLAN_DEVICE, VXLAN_V6_DEVICE,
};

/// One next hop of a kernel route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hop {
    /// The gateway.
    pub gateway: IpAddr,
    /// The device, when Serval pins it (tunnels); `None` lets the kernel choose, and then any
    /// device the kernel reports back matches.
    pub dev: Option<String>,
    /// `onlink`: the gateway is reachable on `dev` without a connected route (tunnels).
    pub onlink: bool,
}

/// What a kernel route does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// `blackhole <dst>`.
    Blackhole,
    /// `<dst> dev <name> scope link` (a local pod).
    Link(String),
    /// `<dst> via ...` with one hop, or `nexthop ...` entries (ECMP) with several.
    Via(Vec<Hop>),
}

/// A route in the kernel's main table with Serval's protocol number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelRoute {
    /// Destination prefix.
    pub dst: IpNet,
    /// What it does.
    pub kind: RouteKind,
}

impl fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            RouteKind::Blackhole => write!(f, "blackhole {}", self.dst),
            RouteKind::Link(dev) => write!(f, "{} dev {dev} scope link", self.dst),
            RouteKind::Via(hops) => {
                write!(f, "{}", self.dst)?;
                for h in hops {
                    let word = if hops.len() > 1 {
                        " nexthop via"
                    } else {
                        " via"
                    };
                    write!(f, "{word} {}", h.gateway)?;
                    if let Some(dev) = &h.dev {
                        write!(f, " dev {dev}")?;
                    }
                    if h.onlink {
                        f.write_str(" onlink")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// The kernel table Serval wants, by destination.
pub type KernelTable = BTreeMap<IpNet, RouteKind>;

/// Turns the calculation's desired routes into kernel routes (tunnel hops pinned to their
/// device with `onlink`, plain hops left to the kernel's choice of device).
pub fn kernel_table(desired: &DesiredRoutes) -> KernelTable {
    desired
        .iter()
        .map(|(dst, target)| {
            let kind = match target {
                RouteTarget::Blackhole => RouteKind::Blackhole,
                RouteTarget::Local(dev) => RouteKind::Link(dev.clone()),
                RouteTarget::Unicast(hops) => RouteKind::Via(hops.iter().map(hop).collect()),
            };
            (*dst, kind)
        })
        .collect()
}

fn hop(nh: &NextHop) -> Hop {
    match nh {
        NextHop::Via(gateway) => Hop {
            gateway: *gateway,
            dev: None,
            onlink: false,
        },
        NextHop::Ipip(gateway) => Hop {
            gateway: *gateway,
            dev: Some(IPIP_DEVICE.to_string()),
            onlink: true,
        },
        NextHop::Vxlan(gateway) => Hop {
            gateway: *gateway,
            dev: Some(
                if gateway.is_ipv6() {
                    VXLAN_V6_DEVICE
                } else {
                    VXLAN_DEVICE
                }
                .to_string(),
            ),
            onlink: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn via(gw: &str, dev: Option<&str>, onlink: bool) -> Hop {
        Hop {
            gateway: gw.parse().unwrap(),
            dev: dev.map(str::to_string),
            onlink,
        }
    }

    #[test]
    fn desired_routes_become_kernel_routes_with_pinned_tunnels() {
        let mut d = DesiredRoutes::new();
        d.insert(net("10.0.1.0/26"), RouteTarget::Blackhole);
        d.insert(net("10.0.1.5/32"), RouteTarget::Local("sv123".into()));
        d.insert(
            net("10.0.2.0/26"),
            RouteTarget::Unicast(vec![
                NextHop::Via("192.168.1.2".parse().unwrap()),
                NextHop::Ipip("192.168.2.2".parse().unwrap()),
            ]),
        );
        d.insert(
            net("10.0.3.0/26"),
            RouteTarget::Unicast(vec![NextHop::Vxlan("10.0.3.0".parse().unwrap())]),
        );
        d.insert(
            net("fd00:10:0:3::/122"),
            RouteTarget::Unicast(vec![NextHop::Vxlan("fd00:10:0:3::".parse().unwrap())]),
        );
        let t = kernel_table(&d);
        assert_eq!(t[&net("10.0.1.0/26")], RouteKind::Blackhole);
        assert_eq!(t[&net("10.0.1.5/32")], RouteKind::Link("sv123".into()));
        assert_eq!(
            t[&net("10.0.2.0/26")],
            RouteKind::Via(vec![
                via("192.168.1.2", None, false),
                via("192.168.2.2", Some("tunl0"), true)
            ])
        );
        assert_eq!(
            t[&net("10.0.3.0/26")],
            RouteKind::Via(vec![via("10.0.3.0", Some("vxlan.serval"), true)])
        );
        let shown: Vec<String> = t
            .iter()
            .map(|(dst, kind)| {
                KernelRoute {
                    dst: *dst,
                    kind: kind.clone(),
                }
                .to_string()
            })
            .collect();
        assert_eq!(
            shown,
            [
                "blackhole 10.0.1.0/26",
                "10.0.1.5/32 dev sv123 scope link",
                "10.0.2.0/26 nexthop via 192.168.1.2 nexthop via 192.168.2.2 dev tunl0 onlink",
                "10.0.3.0/26 via 10.0.3.0 dev vxlan.serval onlink",
                "fd00:10:0:3::/122 via fd00:10:0:3:: dev vxlan-v6.serval onlink",
            ]
        );
    }
}
