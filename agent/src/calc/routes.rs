//! Which kernel routes the node wants: local pod routes, a blackhole per local block, and for
//! every remote block learned over BGP either a plain route via the node (same subnet or no
//! encapsulation) or a tunnel route (IPIP through `tunl0`, VXLAN through `vxlan.serval`),
//! decided per pool by its `ipipMode`/`vxlanMode` and the CrossSubnet test.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::resources::EncapMode;

/// The route protocol number on every route Serval writes (so it can find and sweep its own
/// routes, and never touches anyone else's). Felix uses 80, kube-router 17, BIRD 12.
pub const ROUTE_PROTOCOL: u8 = 81;
/// The IPIP device (the kernel's fallback tunnel device name).
pub const IPIP_DEVICE: &str = "tunl0";
/// The IPv4 VXLAN device.
pub const VXLAN_DEVICE: &str = "vxlan.serval";
/// The IPv6 VXLAN device (Felix's `vxlan-v6.calico`; 15 characters, the kernel's limit).
pub const VXLAN_V6_DEVICE: &str = "vxlan-v6.serval";
/// IPIP header overhead.
pub const IPIP_OVERHEAD: u32 = 20;
/// VXLAN over IPv4 overhead (outer IP + UDP + VXLAN + inner Ethernet).
pub const VXLAN_OVERHEAD: u32 = 50;
/// VXLAN over IPv6 overhead.
pub const VXLAN_V6_OVERHEAD: u32 = 70;

/// How traffic to one remote node's block is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// Routed natively.
    None,
    /// IP-in-IP.
    Ipip,
    /// VXLAN.
    Vxlan,
}

/// The pool facts routing needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRouting {
    /// Pool prefix.
    pub cidr: IpNet,
    /// IPIP mode.
    pub ipip: EncapMode,
    /// VXLAN mode.
    pub vxlan: EncapMode,
}

/// One next hop of a route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum NextHop {
    /// `via <gateway>` (the kernel picks the device).
    Via(IpAddr),
    /// `via <node IP> dev tunl0 onlink`.
    Ipip(IpAddr),
    /// `via <remote VTEP address> dev vxlan.serval onlink` (`vxlan-v6.serval` for an IPv6
    /// VTEP), with the neighbour/FDB entries for that VTEP.
    Vxlan(IpAddr),
}

/// What a route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// A local pod: `dev <host veth> scope link`.
    Local(String),
    /// A local block: `blackhole` (addresses without a pod are dropped, not sent upstream).
    Blackhole,
    /// A remote block from IPAM: one or more next hops (ECMP when several).
    Unicast(Vec<NextHop>),
    /// A route learned over BGP, at its priority (the kernel metric).
    Learned {
        /// The next hops (ECMP when several).
        hops: Vec<NextHop>,
        /// The kernel metric: what an import filter's `setPriority` gave it, else the
        /// family's normal route priority.
        metric: u32,
    },
}

/// A prefix learned over BGP, as the node routes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedRoute {
    /// The best path's next hop and those equal to it (node addresses).
    pub next_hops: Vec<IpAddr>,
    /// Its kernel metric.
    pub metric: u32,
}

/// Calico's normal route priority (`ipv4NormalRoutePriority` / `ipv6NormalRoutePriority`):
/// the metric of routes learned over BGP unless a filter sets another.
pub const DEFAULT_ROUTE_PRIORITY: u32 = 1024;

/// Everything the route manager should hold, by destination.
pub type DesiredRoutes = BTreeMap<IpNet, RouteTarget>;

/// IPIP or VXLAN or neither, for traffic from a node on `local` to the node at `next_hop`.
/// CrossSubnet encapsulates only when `next_hop` is outside the local node's subnet; a node
/// address without its real prefix length (a /32) makes every peer look remote.
pub fn encapsulation(pool: Option<&PoolRouting>, local: Option<IpNet>, next_hop: IpAddr) -> Encap {
    let Some(pool) = pool else {
        return Encap::None;
    };
    let same_subnet = local.is_some_and(|l| l.trunc().contains(&next_hop));
    let wanted = |mode: EncapMode| match mode {
        EncapMode::Always => true,
        EncapMode::CrossSubnet => !same_subnet,
        EncapMode::Never => false,
    };
    if next_hop.is_ipv4() && wanted(pool.ipip) {
        Encap::Ipip
    } else if wanted(pool.vxlan) {
        Encap::Vxlan
    } else {
        Encap::None
    }
}

/// The inputs for remote routes.
#[derive(Debug, Clone, Default)]
pub struct RouteInputs {
    /// Pools (the innermost containing pool decides the mode).
    pub pools: Vec<PoolRouting>,
    /// This node's IPv4 address with prefix.
    pub local_v4: Option<IpNet>,
    /// This node's IPv6 address with prefix.
    pub local_v6: Option<IpNet>,
    /// Remote node address → its VXLAN tunnel address.
    pub vxlan_tunnels: BTreeMap<IpAddr, IpAddr>,
    /// Local pod address → host interface.
    pub local_pods: BTreeMap<IpNet, String>,
    /// Blocks this node owns.
    pub local_blocks: Vec<IpNet>,
    /// Remote prefixes from BGP: destination → best-path next hops and metric.
    pub remote: BTreeMap<IpNet, LearnedRoute>,
    /// Other nodes' confirmed blocks → the owner's address (same family), from IPAM. Tunnel
    /// routes follow these, as Felix's do, so they work whatever BGP's next hop is (a ToR
    /// between racks) and without BGP at all.
    pub block_owners: BTreeMap<IpNet, IpAddr>,
    /// No BGP on this node (networking backend vxlan or none): blocks routed natively
    /// (same subnet under CrossSubnet, or Never) get a route to their owner from IPAM too.
    pub without_bgp: bool,
}

fn pool_for<'a>(pools: &'a [PoolRouting], dst: &IpNet) -> Option<&'a PoolRouting> {
    pools
        .iter()
        .filter(|p| p.cidr.contains(dst))
        .max_by_key(|p| p.cidr.prefix_len())
}

/// The next hop for one remote node, or None when VXLAN is wanted but the node has no VTEP.
pub fn next_hop(inputs: &RouteInputs, dst: &IpNet, node: IpAddr) -> Option<NextHop> {
    let local = if node.is_ipv4() {
        inputs.local_v4
    } else {
        inputs.local_v6
    };
    match encapsulation(pool_for(&inputs.pools, dst), local, node) {
        Encap::None => Some(NextHop::Via(node)),
        Encap::Ipip => Some(NextHop::Ipip(node)),
        Encap::Vxlan => inputs.vxlan_tunnels.get(&node).map(|t| NextHop::Vxlan(*t)),
    }
}

/// The complete desired route table.
pub fn desired_routes(inputs: &RouteInputs) -> DesiredRoutes {
    let mut out = DesiredRoutes::new();
    for (block, owner) in &inputs.block_owners {
        if inputs.local_blocks.contains(block) {
            continue;
        }
        let local = if owner.is_ipv4() {
            inputs.local_v4
        } else {
            inputs.local_v6
        };
        if encapsulation(pool_for(&inputs.pools, block), local, *owner) == Encap::None
            && !inputs.without_bgp
        {
            // Routed natively: BGP's next hops carry it (the owner, or a ToR).
            continue;
        }
        if let Some(hop) = next_hop(inputs, block, *owner) {
            out.insert(*block, RouteTarget::Unicast(vec![hop]));
        }
    }
    for (dst, learned) in &inputs.remote {
        if inputs.local_blocks.contains(dst) || out.contains_key(dst) {
            continue;
        }
        // A learned route covering our own address (our subnet, a default route) would
        // replace the host's connected or default route; the host keeps its own.
        let local = if dst.addr().is_ipv4() {
            inputs.local_v4
        } else {
            inputs.local_v6
        };
        if local.is_some_and(|l| dst.contains(&l.addr())) {
            continue;
        }
        let mut hops: Vec<NextHop> = learned
            .next_hops
            .iter()
            .filter_map(|n| next_hop(inputs, dst, *n))
            .collect();
        hops.sort();
        hops.dedup();
        if !hops.is_empty() {
            out.insert(
                *dst,
                RouteTarget::Learned {
                    hops,
                    metric: learned.metric,
                },
            );
        }
    }
    for block in &inputs.local_blocks {
        out.insert(*block, RouteTarget::Blackhole);
    }
    for (ip, dev) in &inputs.local_pods {
        out.insert(*ip, RouteTarget::Local(dev.clone()));
    }
    out
}

/// Pod MTU: the host MTU minus the largest overhead among the encapsulations in use.
pub fn pod_mtu(host_mtu: u32, pools: &[PoolRouting]) -> u32 {
    pod_mtu_with(host_mtu, pools, None, None)
}

/// The pod MTU when the tunnel devices' MTUs may be set (Felix's ipipMTU, vxlanMTU): the
/// smallest MTU of any path a pod's packet may take (a set device MTU, or the host MTU less
/// that encapsulation's overhead).
pub fn pod_mtu_with(
    host_mtu: u32,
    pools: &[PoolRouting],
    ipip_mtu: Option<u32>,
    vxlan_mtu: Option<u32>,
) -> u32 {
    pools
        .iter()
        .flat_map(|p| {
            let ipip = (p.ipip != EncapMode::Never)
                .then(|| ipip_mtu.unwrap_or(host_mtu.saturating_sub(IPIP_OVERHEAD)));
            let vxlan = match (p.vxlan, p.cidr) {
                (EncapMode::Never, _) => None,
                (_, IpNet::V4(_)) => {
                    Some(vxlan_mtu.unwrap_or(host_mtu.saturating_sub(VXLAN_OVERHEAD)))
                }
                (_, IpNet::V6(_)) => Some(host_mtu.saturating_sub(VXLAN_V6_OVERHEAD)),
            };
            [ipip, vxlan]
        })
        .flatten()
        .fold(host_mtu, u32::min)
}

/// The host-side interface of a pod: `sv` + 11 hex characters of SHA-1 of "namespace.pod"
/// (Calico's scheme with our prefix).
pub fn host_interface_name(namespace: &str, pod: &str) -> String {
    let digest = sha1_smol::Sha1::from(format!("{namespace}.{pod}"))
        .digest()
        .to_string();
    format!("sv{}", &digest[..11])
}

/// The host-side interface for a sandbox whose pod's usual name
/// ([`host_interface_name`]) is still held by another container (the pod was recreated
/// before the old sandbox's DEL): the same scheme over "namespace.pod.containerID".
pub fn sandbox_interface_name(namespace: &str, pod: &str, container_id: &str) -> String {
    host_interface_name(namespace, &format!("{pod}.{container_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, ipip: EncapMode, vxlan: EncapMode) -> PoolRouting {
        PoolRouting {
            cidr: cidr.parse().unwrap(),
            ipip,
            vxlan,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cross_subnet_uses_the_node_prefix() {
        let p = pool("10.244.0.0/16", EncapMode::CrossSubnet, EncapMode::Never);
        let local = Some("192.168.1.5/24".parse().unwrap());
        assert_eq!(
            encapsulation(Some(&p), local, ip("192.168.1.9")),
            Encap::None
        );
        assert_eq!(
            encapsulation(Some(&p), local, ip("192.168.2.9")),
            Encap::Ipip
        );
        // The gotcha: a /32 node address makes every peer cross-subnet.
        let host_only = Some("192.168.1.5/32".parse().unwrap());
        assert_eq!(
            encapsulation(Some(&p), host_only, ip("192.168.1.9")),
            Encap::Ipip
        );
        let always = pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never);
        assert_eq!(
            encapsulation(Some(&always), local, ip("192.168.1.9")),
            Encap::Ipip
        );
        let vx = pool("10.244.0.0/16", EncapMode::Never, EncapMode::CrossSubnet);
        assert_eq!(
            encapsulation(Some(&vx), local, ip("192.168.2.9")),
            Encap::Vxlan
        );
        assert_eq!(encapsulation(None, local, ip("192.168.2.9")), Encap::None);
        // IPIP never applies to IPv6.
        let v6 = pool("fd00:10::/48", EncapMode::Always, EncapMode::Never);
        assert_eq!(
            encapsulation(
                Some(&v6),
                Some("fd00::1/64".parse().unwrap()),
                ip("fd01::1")
            ),
            Encap::None
        );
    }

    fn learned_via(next_hops: Vec<IpAddr>) -> LearnedRoute {
        LearnedRoute {
            next_hops,
            metric: DEFAULT_ROUTE_PRIORITY,
        }
    }

    fn learned(hops: Vec<NextHop>) -> RouteTarget {
        RouteTarget::Learned {
            hops,
            metric: DEFAULT_ROUTE_PRIORITY,
        }
    }

    #[test]
    fn a_learned_route_keeps_the_metric_its_filter_gave_it() {
        let mut inputs = RouteInputs {
            local_v4: Some("192.168.1.5/24".parse().unwrap()),
            ..Default::default()
        };
        inputs.remote.insert(
            "10.9.0.0/16".parse().unwrap(),
            LearnedRoute {
                next_hops: vec![ip("192.168.1.6")],
                metric: 512,
            },
        );
        assert_eq!(
            desired_routes(&inputs)[&"10.9.0.0/16".parse().unwrap()],
            RouteTarget::Learned {
                hops: vec![NextHop::Via(ip("192.168.1.6"))],
                metric: 512
            }
        );
    }

    #[test]
    fn desired_table_combines_local_blackhole_and_remote_with_ecmp() {
        let mut inputs = RouteInputs {
            pools: vec![pool(
                "10.244.0.0/16",
                EncapMode::CrossSubnet,
                EncapMode::Never,
            )],
            local_v4: Some("192.168.1.5/24".parse().unwrap()),
            local_blocks: vec!["10.244.1.0/26".parse().unwrap()],
            ..Default::default()
        };
        inputs
            .local_pods
            .insert("10.244.1.7/32".parse().unwrap(), "sv0123456789a".into());
        inputs.remote.insert(
            "10.244.2.0/26".parse().unwrap(),
            learned_via(vec![ip("192.168.1.6")]),
        );
        inputs.remote.insert(
            "10.244.3.0/26".parse().unwrap(),
            learned_via(vec![ip("192.168.2.7"), ip("192.168.1.6")]),
        );
        // Our own block echoed back by a reflector is not routed away.
        inputs.remote.insert(
            "10.244.1.0/26".parse().unwrap(),
            learned_via(vec![ip("192.168.1.6")]),
        );
        let t = desired_routes(&inputs);
        assert_eq!(t[&"10.244.1.0/26".parse().unwrap()], RouteTarget::Blackhole);
        assert_eq!(
            t[&"10.244.1.7/32".parse().unwrap()],
            RouteTarget::Local("sv0123456789a".into())
        );
        assert_eq!(
            t[&"10.244.2.0/26".parse().unwrap()],
            learned(vec![NextHop::Via(ip("192.168.1.6"))])
        );
        assert_eq!(
            t[&"10.244.3.0/26".parse().unwrap()],
            learned(vec![
                NextHop::Via(ip("192.168.1.6")),
                NextHop::Ipip(ip("192.168.2.7"))
            ])
        );
    }

    #[test]
    fn tunnels_follow_the_block_owner_not_the_bgp_next_hop() {
        // Racks behind eBGP ToRs: every BGP next hop is the local ToR (same subnet), so a
        // next-hop test alone would never encapsulate; the block's owner decides.
        let mut inputs = RouteInputs {
            pools: vec![pool(
                "10.244.0.0/16",
                EncapMode::Never,
                EncapMode::CrossSubnet,
            )],
            local_v4: Some("10.97.1.11/24".parse().unwrap()),
            local_blocks: vec!["10.244.1.0/26".parse().unwrap()],
            ..Default::default()
        };
        let tor = ip("10.97.1.1");
        let (same_rack, other_rack) = ("10.244.2.0/26", "10.244.3.0/26");
        for b in [same_rack, other_rack, "10.244.1.0/26"] {
            inputs
                .remote
                .insert(b.parse().unwrap(), learned_via(vec![tor]));
        }
        inputs
            .block_owners
            .insert(same_rack.parse().unwrap(), ip("10.97.1.12"));
        inputs
            .block_owners
            .insert(other_rack.parse().unwrap(), ip("10.97.2.11"));
        inputs
            .vxlan_tunnels
            .insert(ip("10.97.2.11"), ip("10.244.3.0"));
        // Learned routes over our own subnet and a default route are left to the host.
        inputs
            .remote
            .insert("10.97.1.0/24".parse().unwrap(), learned_via(vec![tor]));
        inputs
            .remote
            .insert("0.0.0.0/0".parse().unwrap(), learned_via(vec![tor]));
        inputs
            .remote
            .insert("10.97.2.0/24".parse().unwrap(), learned_via(vec![tor]));
        let t = desired_routes(&inputs);
        let at = |s: &str| t.get(&s.parse::<IpNet>().unwrap()).cloned();
        assert_eq!(
            at(same_rack),
            Some(learned(vec![NextHop::Via(tor)])),
            "same subnet: native, through whatever BGP chose"
        );
        assert_eq!(
            at(other_rack),
            Some(RouteTarget::Unicast(vec![NextHop::Vxlan(ip("10.244.3.0"))])),
            "cross-subnet: VXLAN to the owner's VTEP"
        );
        assert_eq!(at("10.244.1.0/26"), Some(RouteTarget::Blackhole));
        assert_eq!(at("10.97.1.0/24"), None);
        assert_eq!(at("0.0.0.0/0"), None);
        assert_eq!(
            at("10.97.2.0/24"),
            Some(learned(vec![NextHop::Via(tor)])),
            "the other rack's node subnet, for the tunnel's outer packets"
        );
        // Without BGP (a VXLAN-only cluster) the owner alone gives the tunnel route.
        inputs.remote.clear();
        let t = desired_routes(&inputs);
        assert_eq!(
            t.get(&other_rack.parse::<IpNet>().unwrap()),
            Some(&RouteTarget::Unicast(vec![NextHop::Vxlan(ip(
                "10.244.3.0"
            ))]))
        );
        assert_eq!(t.get(&same_rack.parse::<IpNet>().unwrap()), None);
    }

    #[test]
    fn vxlan_needs_the_remote_vtep() {
        let mut inputs = RouteInputs {
            pools: vec![pool("10.244.0.0/16", EncapMode::Never, EncapMode::Always)],
            local_v4: Some("192.168.1.5/24".parse().unwrap()),
            ..Default::default()
        };
        inputs.remote.insert(
            "10.244.2.0/26".parse().unwrap(),
            learned_via(vec![ip("192.168.2.7")]),
        );
        assert!(
            desired_routes(&inputs).is_empty(),
            "no VTEP known yet: no route"
        );
        inputs
            .vxlan_tunnels
            .insert(ip("192.168.2.7"), ip("10.244.2.1"));
        assert_eq!(
            desired_routes(&inputs)[&"10.244.2.0/26".parse().unwrap()],
            learned(vec![NextHop::Vxlan(ip("10.244.2.1"))])
        );
    }

    #[test]
    fn mtu_and_names() {
        let ipip = pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never);
        let vx6 = pool("fd00::/48", EncapMode::Never, EncapMode::CrossSubnet);
        assert_eq!(pod_mtu(1500, &[]), 1500);
        assert_eq!(pod_mtu(1500, std::slice::from_ref(&ipip)), 1480);
        assert_eq!(pod_mtu(9000, &[ipip, vx6]), 8930);
        let name = host_interface_name("prod", "web-0");
        assert_eq!(name.len(), 13);
        assert!(name.starts_with("sv") && name.len() <= 15);
        assert_eq!(name, host_interface_name("prod", "web-0"));
        assert_ne!(name, host_interface_name("prod", "web-1"));
        // SHA-1("prod.web-0") starts with these hex digits (fixed so names never change).
        assert_eq!(name, "svaa960f0d82e");
    }
}
