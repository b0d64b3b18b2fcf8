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

    /// Decides on a route about to be sent to `peer` (after the RFC's export rules).
    fn export(&self, peer: &PolicyPeer, prefix: IpNet, attrs: &PathAttributes) -> Verdict {
        let _ = (peer, prefix, attrs);
        Verdict::Accept
    }

    /// Whether `export` looks at the peer's address (not just its AS and type): if so, each
    /// peer gets its own update group.
    fn export_depends_on_peer_address(&self) -> bool {
        true
    }
}

/// The policy of a speaker with no filters configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl RoutePolicy for AcceptAll {
    fn export_depends_on_peer_address(&self) -> bool {
        false
    }
}
