//! Kernel routes as Serval writes and reads them (interfaces by name), and the pure diff from
//! the desired table to the kernel's: what to replace and what to delete. Only routes that
//! carry Serval's protocol number ever reach `actual`, so the diff can never touch a route
//! someone else wrote.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::calc::routes::{DesiredRoutes, IPIP_DEVICE, NextHop, RouteTarget, VXLAN_DEVICE};

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
            dev: Some(VXLAN_DEVICE.to_string()),
            onlink: true,
        },
    }
}

/// Whether the kernel's route already does what we want: same kind, same hops in any order,
/// with an unpinned desired device matching whatever device the kernel picked.
pub fn satisfies(actual: &RouteKind, desired: &RouteKind) -> bool {
    match (actual, desired) {
        (RouteKind::Blackhole, RouteKind::Blackhole) => true,
        (RouteKind::Link(a), RouteKind::Link(d)) => a == d,
        (RouteKind::Via(a), RouteKind::Via(d)) => {
            a.len() == d.len()
                && d.iter().all(|want| {
                    a.iter().any(|have| {
                        have.gateway == want.gateway
                            && have.onlink == want.onlink
                            && want
                                .dev
                                .as_ref()
                                .is_none_or(|dev| have.dev.as_ref() == Some(dev))
                    })
                })
        }
        _ => false,
    }
}

/// The writes that turn `actual` into `desired`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Routes to write with replace semantics (missing or different).
    pub replace: Vec<KernelRoute>,
    /// Serval routes the kernel has and we no longer want.
    pub delete: Vec<KernelRoute>,
}

impl RoutePlan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty() && self.delete.is_empty()
    }
}

/// Computes the plan. Both tables are sorted maps, so this is one merge pass.
pub fn plan(desired: &KernelTable, actual: &KernelTable) -> RoutePlan {
    let mut out = RoutePlan::default();
    for (dst, want) in desired {
        if !actual.get(dst).is_some_and(|have| satisfies(have, want)) {
            out.replace.push(KernelRoute {
                dst: *dst,
                kind: want.clone(),
            });
        }
    }
    for (dst, have) in actual {
        if !desired.contains_key(dst) {
            out.delete.push(KernelRoute {
                dst: *dst,
                kind: have.clone(),
            });
        }
    }
    out
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
            ]
        );
    }

    #[test]
    fn unpinned_devices_match_any_device_but_pinned_ones_must_agree() {
        let want = RouteKind::Via(vec![via("192.168.1.2", None, false)]);
        assert!(satisfies(
            &RouteKind::Via(vec![via("192.168.1.2", Some("eth0"), false)]),
            &want
        ));
        let tunnel = RouteKind::Via(vec![via("192.168.2.2", Some("tunl0"), true)]);
        assert!(!satisfies(
            &RouteKind::Via(vec![via("192.168.2.2", Some("eth0"), true)]),
            &tunnel
        ));
        assert!(!satisfies(
            &RouteKind::Via(vec![via("192.168.2.2", Some("tunl0"), false)]),
            &tunnel
        ));
        // ECMP hops match in any order, but not a subset.
        let ecmp = RouteKind::Via(vec![
            via("1.1.1.1", None, false),
            via("2.2.2.2", None, false),
        ]);
        assert!(satisfies(
            &RouteKind::Via(vec![
                via("2.2.2.2", Some("e1"), false),
                via("1.1.1.1", Some("e0"), false)
            ]),
            &ecmp
        ));
        assert!(!satisfies(
            &RouteKind::Via(vec![via("1.1.1.1", Some("e0"), false)]),
            &ecmp
        ));
        assert!(!satisfies(&RouteKind::Blackhole, &want));
        assert!(!satisfies(
            &RouteKind::Link("a".into()),
            &RouteKind::Link("b".into())
        ));
    }

    #[test]
    fn plan_replaces_what_differs_and_deletes_what_is_unwanted() {
        let mut desired = KernelTable::new();
        desired.insert(net("10.0.1.0/26"), RouteKind::Blackhole);
        desired.insert(
            net("10.0.2.0/26"),
            RouteKind::Via(vec![via("192.168.1.2", None, false)]),
        );
        desired.insert(net("10.0.1.7/32"), RouteKind::Link("sv1".into()));
        let mut actual = KernelTable::new();
        actual.insert(net("10.0.1.0/26"), RouteKind::Blackhole);
        actual.insert(
            net("10.0.2.0/26"),
            RouteKind::Via(vec![via("192.168.1.3", Some("eth0"), false)]),
        );
        actual.insert(net("10.0.9.0/26"), RouteKind::Blackhole);
        let p = plan(&desired, &actual);
        assert_eq!(
            p.replace
                .iter()
                .map(|r| r.dst.to_string())
                .collect::<Vec<_>>(),
            ["10.0.1.7/32", "10.0.2.0/26"]
        );
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.delete[0].dst, net("10.0.9.0/26"));
        assert!(plan(&desired, &desired).is_empty());
    }
}
