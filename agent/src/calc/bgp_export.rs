//! What a node tells its BGP peers beyond the speaker's RFC rules: a route learned from one
//! external peer is never passed to another (a node is not a transit router between its
//! ToRs). Without this, a node re-announces one ToR's routes to the other ToR with the
//! first ToR as third-party next hop, and traffic keeps going to a ToR that is gone.

use ipnet::IpNet;
use serval_bgp::packet::attribute::PathAttributes;
use serval_bgp::policy::{PolicyPeer, RoutePolicy, Verdict};

/// The node agent's export policy.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodeExportPolicy;

/// Whether a route, as it is about to be sent to an external peer (our AS already in
/// front), came to us from another AS: our own and our iBGP peers' routes carry only ours.
fn learned_from_another_as(attrs: &PathAttributes) -> bool {
    attrs.as_path.path_len() > 1
}

impl RoutePolicy for NodeExportPolicy {
    fn export(&self, peer: &PolicyPeer, _prefix: IpNet, attrs: &PathAttributes) -> Verdict {
        if peer.ebgp && learned_from_another_as(attrs) {
            Verdict::Reject
        } else {
            Verdict::Accept
        }
    }

    fn export_depends_on_peer_address(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use serval_bgp::packet::attribute::AsPath;

    use super::*;

    fn peer(ebgp: bool) -> PolicyPeer {
        PolicyPeer {
            address: "10.97.1.1".parse().unwrap(),
            as_number: 65101,
            ebgp,
        }
    }

    fn path(asns: &[u32]) -> PathAttributes {
        PathAttributes {
            as_path: AsPath::from_sequence(asns.iter().copied()),
            ..Default::default()
        }
    }

    #[test]
    fn no_transit_between_external_peers() {
        let p = NodeExportPolicy;
        let block: IpNet = "10.244.1.0/26".parse().unwrap();
        // Our own block and an iBGP-learned one, as sent to a ToR: only our AS.
        assert_eq!(
            p.export(&peer(true), block, &path(&[65001])),
            Verdict::Accept
        );
        // Learned from the other ToR: not passed on to this one.
        assert_eq!(
            p.export(&peer(true), block, &path(&[65001, 65102, 65002])),
            Verdict::Reject
        );
        // iBGP peers (mesh, reflectors) get everything the speaker's rules allow.
        assert_eq!(
            p.export(&peer(false), block, &path(&[65102, 65002])),
            Verdict::Accept
        );
        assert!(
            !p.export_depends_on_peer_address(),
            "update groups stay shared"
        );
    }
}
