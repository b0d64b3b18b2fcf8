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

/// The kernel's metric for a route written without one: 0 for IPv4, 1024 for IPv6 (the
/// kernel stores and reports 1024 for an IPv6 route given none).
pub fn default_metric(dst: &IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1024,
    }
}

/// What names one kernel route: two routes to one destination with different metrics are
/// two routes (the kernel keeps both and uses the lower metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// Destination prefix.
    pub dst: IpNet,
    /// The metric (`priority`), as the kernel holds it.
    pub metric: u32,
}

impl From<IpNet> for RouteKey {
    /// The route to `dst` at the kernel's default metric.
    fn from(dst: IpNet) -> RouteKey {
        RouteKey {
            dst,
            metric: default_metric(&dst),
        }
    }
}

/// A route in the kernel's main table with Serval's protocol number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelRoute {
    /// Destination prefix.
    pub dst: IpNet,
    /// The metric, as the kernel holds it ([`default_metric`] when Serval sets none).
    pub metric: u32,
    /// What it does.
    pub kind: RouteKind,
}

impl KernelRoute {
    /// A route at `key`.
    pub fn at(key: RouteKey, kind: RouteKind) -> KernelRoute {
        KernelRoute {
            dst: key.dst,
            metric: key.metric,
            kind,
        }
    }

    /// Its destination and metric.
    pub fn key(&self) -> RouteKey {
        RouteKey {
            dst: self.dst,
            metric: self.metric,
        }
    }
}

impl fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_kind(f)?;
        if self.metric != default_metric(&self.dst) {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

impl KernelRoute {
    fn fmt_kind(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// Serval's kernel routes (wanted, or read back), by destination and metric.
pub type KernelTable = BTreeMap<RouteKey, RouteKind>;

/// The route the kernel uses for `dst` among Serval's (the lowest metric).
pub fn route_to<'a>(table: &'a KernelTable, dst: &IpNet) -> Option<&'a RouteKind> {
    let from = RouteKey {
        dst: *dst,
        metric: 0,
    };
    let to = RouteKey {
        dst: *dst,
        metric: u32::MAX,
    };
    table.range(from..=to).next().map(|(_, kind)| kind)
}

/// Turns the calculation's desired routes into kernel routes (tunnel hops pinned to their
/// device with `onlink`, plain hops left to the kernel's choice of device).
pub fn kernel_table(desired: &DesiredRoutes) -> KernelTable {
    desired
        .iter()
        .map(|(dst, target)| {
            let mut key = RouteKey::from(*dst);
            let kind = match target {
                RouteTarget::Blackhole => RouteKind::Blackhole,
                RouteTarget::Local(dev) => RouteKind::Link(dev.clone()),
                RouteTarget::Unicast(hops) => RouteKind::Via(hops.iter().map(hop).collect()),
                RouteTarget::Learned { hops, metric } => {
                    key.metric = *metric;
                    RouteKind::Via(hops.iter().map(hop).collect())
                }
            };
            (key, kind)
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
            net("10.0.4.0/24"),
            RouteTarget::Learned {
                hops: vec![NextHop::Via("192.168.1.9".parse().unwrap())],
                metric: 512,
            },
        );
        d.insert(
            net("fd00:10:0:3::/122"),
            RouteTarget::Unicast(vec![NextHop::Vxlan("fd00:10:0:3::".parse().unwrap())]),
        );
        let t = kernel_table(&d);
        assert_eq!(t[&RouteKey::from(net("10.0.1.0/26"))], RouteKind::Blackhole);
        assert_eq!(
            t[&RouteKey::from(net("10.0.1.5/32"))],
            RouteKind::Link("sv123".into())
        );
        assert_eq!(
            t[&RouteKey::from(net("10.0.2.0/26"))],
            RouteKind::Via(vec![
                via("192.168.1.2", None, false),
                via("192.168.2.2", Some("tunl0"), true)
            ])
        );
        assert_eq!(
            t[&RouteKey::from(net("10.0.3.0/26"))],
            RouteKind::Via(vec![via("10.0.3.0", Some("vxlan.serval"), true)])
        );
        assert_eq!(
            route_to(&t, &net("10.0.4.0/24")),
            t.get(&RouteKey {
                dst: net("10.0.4.0/24"),
                metric: 512
            })
        );
        assert_eq!(
            t.keys().last().map(|k| k.metric),
            Some(1024),
            "an IPv6 route without a metric is at the kernel's 1024"
        );
        let shown: Vec<String> = t
            .iter()
            .map(|(key, kind)| KernelRoute::at(*key, kind.clone()).to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "blackhole 10.0.1.0/26",
                "10.0.1.5/32 dev sv123 scope link",
                "10.0.2.0/26 nexthop via 192.168.1.2 nexthop via 192.168.2.2 dev tunl0 onlink",
                "10.0.3.0/26 via 10.0.3.0 dev vxlan.serval onlink",
                "10.0.4.0/24 via 192.168.1.9 metric 512",
                "fd00:10:0:3::/122 via fd00:10:0:3:: dev vxlan-v6.serval onlink",
            ]
        );
    }
}
