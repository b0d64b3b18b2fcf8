//! The pure diff from the desired kernel table (calc's [`KernelTable`]) to the kernel's: what
//! to replace and what to delete. Only routes that carry Serval's protocol number ever reach
//! `actual`, so the diff can never touch a route someone else wrote.

use crate::calc::kernel_table::{KernelRoute, KernelTable, RouteKind};

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
    for (key, want) in desired {
        if !actual.get(key).is_some_and(|have| satisfies(have, want)) {
            out.replace.push(KernelRoute::at(*key, want.clone()));
        }
    }
    for (key, have) in actual {
        if !desired.contains_key(key) {
            out.delete.push(KernelRoute::at(*key, have.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use ipnet::IpNet;

    use super::*;
    use crate::calc::kernel_table::{Hop, RouteKey};

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
        desired.insert(net("10.0.1.0/26").into(), RouteKind::Blackhole);
        desired.insert(
            net("10.0.2.0/26").into(),
            RouteKind::Via(vec![via("192.168.1.2", None, false)]),
        );
        desired.insert(net("10.0.1.7/32").into(), RouteKind::Link("sv1".into()));
        let mut actual = KernelTable::new();
        actual.insert(net("10.0.1.0/26").into(), RouteKind::Blackhole);
        actual.insert(
            net("10.0.2.0/26").into(),
            RouteKind::Via(vec![via("192.168.1.3", Some("eth0"), false)]),
        );
        actual.insert(net("10.0.9.0/26").into(), RouteKind::Blackhole);
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

    #[test]
    fn a_new_metric_is_a_new_route_and_the_old_one_goes() {
        let dst = net("10.0.2.0/26");
        let hop = RouteKind::Via(vec![via("192.168.1.2", None, false)]);
        let desired: KernelTable = [(RouteKey { dst, metric: 512 }, hop.clone())].into();
        let actual: KernelTable = [(RouteKey { dst, metric: 1024 }, hop.clone())].into();
        let p = plan(&desired, &actual);
        assert_eq!(
            p.replace,
            [KernelRoute {
                dst,
                metric: 512,
                kind: hop.clone()
            }]
        );
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.delete[0].metric, 1024);
    }
}
