//! Import and export filters as a plain trait, so the agent can plug in its own
//! (IP pool and BGPFilter logic) without the speaker knowing about Kubernetes.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::packet::attribute::PathAttributes;

/// What a filter decided for one route.
// Accept is by far the common case and is returned by value; Modify is rare.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Take the route as it is.
    Accept,
    /// Drop the route.
    Reject,
    /// Take the route with these attributes instead.
    Modify(PathAttributes),
}

/// Where a route about to be exported came from: filters that pass on only the speaker's
/// own routes, or treat re-advertised ones differently, need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    /// Originated by this speaker.
    Local,
    /// Learned from an iBGP peer.
    Internal,
    /// Learned from an eBGP peer.
    External,
}

/// The peer a route is coming from or going to.
#[derive(Debug, Clone, Copy)]
pub struct PolicyPeer {
    /// Peer address.
    pub address: IpAddr,
    /// Peer AS.
    pub as_number: u32,
    /// The session is external.
    pub ebgp: bool,
}

/// Route filters; both directions default to accepting everything.
pub trait RoutePolicy: Send + Sync + 'static {
    /// Decides on a route received from `peer`.
    fn import(&self, peer: &PolicyPeer, prefix: IpNet, attrs: &PathAttributes) -> Verdict {
        let _ = (peer, prefix, attrs);
        Verdict::Accept
    }

    /// Decides on a route about to be sent to `peer`: `attrs` after the RFC's export rules,
    /// `held` the best path as this speaker holds it (its next hop as learned, its priority).
    fn export(
        &self,
        peer: &PolicyPeer,
        prefix: IpNet,
        attrs: &PathAttributes,
        held: &PathAttributes,
        origin: RouteOrigin,
    ) -> Verdict {
        let _ = (peer, prefix, attrs, held, origin);
        Verdict::Accept
    }

    /// Whether `export` to the peer at `address` looks at that address (not just the
    /// peer's AS and type): if so, the peer gets an update group of its own.
    fn export_depends_on_peer(&self, address: IpAddr) -> bool {
        let _ = address;
        true
    }
}

/// The policy of a speaker with no filters configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl RoutePolicy for AcceptAll {
    fn export_depends_on_peer(&self, _: IpAddr) -> bool {
        false
    }
}
