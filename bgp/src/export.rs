//! The RFC 4271 §9.1.3 / RFC 4456 rules for what a peer may be sent and how the
//! attributes change on the way out. Pure, so every rule has a unit test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::af::Family;
use crate::config::NextHopMode;
use crate::decision::{LOCAL_PEER, PeerId};
use crate::packet::attribute::PathAttributes;

/// The sender's side of an export decision.
#[derive(Debug, Clone, Copy)]
pub struct SpeakerSide {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Our cluster ID when we reflect routes.
    pub cluster_id: Option<Ipv4Addr>,
    /// LOCAL_PREF for routes without one.
    pub default_local_pref: u32,
}

/// Where a route came from.
#[derive(Debug, Clone, Copy)]
pub struct RouteSource {
    /// Peer id ([`LOCAL_PEER`] for our own routes).
    pub peer: PeerId,
    /// Learned over eBGP.
    pub ebgp: bool,
    /// The source peer is one of our reflector clients.
    pub rr_client: bool,
    /// The source peer's BGP identifier.
    pub router_id: Ipv4Addr,
}

/// The peer a route may go to.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its id.
    pub peer: PeerId,
    /// Its AS.
    pub as_number: u32,
    /// The session is external.
    pub ebgp: bool,
    /// It is one of our reflector clients.
    pub rr_client: bool,
    /// Next-hop handling configured for it.
    pub next_hop: NextHopMode,
    /// Our IPv4 address to use as next hop towards it.
    pub self_v4: Option<Ipv4Addr>,
    /// Our IPv6 address to use as next hop towards it.
    pub self_v6: Option<Ipv6Addr>,
}

/// The attributes to send `target` for a best path, or `None` when it must not get it.
pub fn export(
    family: Family,
    attrs: &PathAttributes,
    src: &RouteSource,
    target: &Target,
    me: &SpeakerSide,
) -> Option<PathAttributes> {
    if src.peer == target.peer && src.peer != LOCAL_PEER {
        return None;
    }
    let local = src.peer == LOCAL_PEER;
    let from_ibgp = !local && !src.ebgp;
    let mut out = attrs.clone();
    if from_ibgp && !target.ebgp {
        // RFC 4456 §6: a reflector passes client routes to everyone and non-client
        // routes to clients; a plain speaker never passes iBGP routes to iBGP peers.
        me.cluster_id?;
        if !src.rr_client && !target.rr_client {
            return None;
        }
        if out.originator_id.is_none() {
            out.originator_id = Some(src.router_id);
        }
        out.cluster_list
            .insert(0, me.cluster_id.expect("checked above"));
    }
    let self_hop = match family {
        Family::Ipv4Unicast => target.self_v4.map(IpAddr::V4),
        Family::Ipv6Unicast => target.self_v6.map(IpAddr::V6),
    };
    let use_self = match target.next_hop {
        NextHopMode::SelfAddress => true,
        NextHopMode::Keep => attrs.next_hop.is_none(),
        NextHopMode::Auto => target.ebgp || attrs.next_hop.is_none(),
    };
    if use_self {
        out.next_hop = Some(self_hop?);
        out.link_local_next_hop = None;
    }
    if target.ebgp {
        out.as_path.prepend(me.local_as);
        out.local_pref = None;
        out.originator_id = None;
        out.cluster_list.clear();
        // RFC 4271 §5.1.4: a MED learned from one AS is not passed to another.
        if !local {
            out.med = None;
        }
    } else if out.local_pref.is_none() {
        out.local_pref = Some(me.default_local_pref);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::attribute::AsPath;

    const ME: SpeakerSide = SpeakerSide {
        local_as: 65000,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        cluster_id: None,
        default_local_pref: 100,
    };

    fn src(peer: PeerId, ebgp: bool, rr_client: bool) -> RouteSource {
        RouteSource {
            peer,
            ebgp,
            rr_client,
            router_id: Ipv4Addr::new(10, 0, 0, 9),
        }
    }

    fn target(peer: PeerId, ebgp: bool, rr_client: bool) -> Target {
        Target {
            peer,
            as_number: if ebgp { 65100 } else { 65000 },
            ebgp,
            rr_client,
            next_hop: NextHopMode::Auto,
            self_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
            self_v6: None,
        }
    }

    fn learned() -> PathAttributes {
        PathAttributes {
            as_path: AsPath::from_sequence([65200]),
            next_hop: Some("192.0.2.50".parse().unwrap()),
            med: Some(7),
            local_pref: Some(300),
            ..Default::default()
        }
    }

    #[test]
    fn ebgp_export_prepends_sets_self_and_strips_ibgp_attributes() {
        let out = export(
            Family::Ipv4Unicast,
            &learned(),
            &src(1, false, false),
            &target(2, true, false),
            &ME,
        )
        .unwrap();
        assert_eq!(out.as_path, AsPath::from_sequence([65000, 65200]));
        assert_eq!(out.next_hop, Some("192.0.2.1".parse().unwrap()));
        assert_eq!((out.local_pref, out.med), (None, None));
    }

    #[test]
    fn ibgp_export_keeps_next_hop_and_sets_local_pref() {
        let mut a = learned();
        a.local_pref = None;
        let out = export(
            Family::Ipv4Unicast,
            &a,
            &src(1, true, false),
            &target(2, false, false),
            &ME,
        )
        .unwrap();
        assert_eq!(out.next_hop, a.next_hop);
        assert_eq!(out.local_pref, Some(100));
        assert_eq!(out.as_path, a.as_path);
    }

    #[test]
    fn local_routes_go_everywhere_with_our_next_hop_and_keep_med() {
        let a = PathAttributes {
            med: Some(5),
            ..Default::default()
        };
        let local = src(LOCAL_PEER, false, false);
        let out = export(
            Family::Ipv4Unicast,
            &a,
            &local,
            &target(2, false, false),
            &ME,
        )
        .unwrap();
        assert_eq!(out.next_hop, Some("192.0.2.1".parse().unwrap()));
        let out = export(
            Family::Ipv4Unicast,
            &a,
            &local,
            &target(2, true, false),
            &ME,
        )
        .unwrap();
        assert_eq!(
            (out.med, out.as_path.clone()),
            (Some(5), AsPath::from_sequence([65000]))
        );
    }

    #[test]
    fn split_horizon_and_ibgp_to_ibgp_rule() {
        assert!(
            export(
                Family::Ipv4Unicast,
                &learned(),
                &src(2, true, false),
                &target(2, true, false),
                &ME
            )
            .is_none()
        );
        assert!(
            export(
                Family::Ipv4Unicast,
                &learned(),
                &src(1, false, false),
                &target(2, false, false),
                &ME
            )
            .is_none()
        );
    }

    #[test]
    fn reflector_rules_and_attributes() {
        let rr = SpeakerSide {
            cluster_id: Some(Ipv4Addr::new(1, 1, 1, 1)),
            ..ME
        };
        // Client → non-client: reflected with ORIGINATOR_ID and CLUSTER_LIST.
        let out = export(
            Family::Ipv4Unicast,
            &learned(),
            &src(1, false, true),
            &target(2, false, false),
            &rr,
        )
        .unwrap();
        assert_eq!(out.originator_id, Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(out.cluster_list, vec![Ipv4Addr::new(1, 1, 1, 1)]);
        assert_eq!(
            out.next_hop,
            learned().next_hop,
            "a reflector does not touch the next hop"
        );
        // Non-client → client: reflected. Non-client → non-client: not.
        assert!(
            export(
                Family::Ipv4Unicast,
                &learned(),
                &src(1, false, false),
                &target(2, false, true),
                &rr
            )
            .is_some()
        );
        assert!(
            export(
                Family::Ipv4Unicast,
                &learned(),
                &src(1, false, false),
                &target(2, false, false),
                &rr
            )
            .is_none()
        );
    }

    #[test]
    fn next_hop_modes() {
        let mut t = target(2, true, false);
        t.next_hop = NextHopMode::Keep;
        let out = export(
            Family::Ipv4Unicast,
            &learned(),
            &src(1, true, false),
            &t,
            &ME,
        )
        .unwrap();
        assert_eq!(out.next_hop, learned().next_hop);
        let mut t = target(2, false, false);
        t.next_hop = NextHopMode::SelfAddress;
        let out = export(
            Family::Ipv4Unicast,
            &learned(),
            &src(1, true, false),
            &t,
            &ME,
        )
        .unwrap();
        assert_eq!(out.next_hop, Some("192.0.2.1".parse().unwrap()));
        // No IPv6 address towards this peer: IPv6 routes needing next-hop-self are held back.
        let v6 = PathAttributes::default();
        assert!(
            export(
                Family::Ipv6Unicast,
                &v6,
                &src(LOCAL_PEER, false, false),
                &t,
                &ME
            )
            .is_none()
        );
    }
}
