//! Read-only snapshots of the speaker for the CLI, metrics and tests, and the best-path
//! change events the FIB consumes.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::af::Family;
use crate::decision::Step;
use crate::fsm::{Negotiated, State};
use crate::packet::attribute::PathAttributes;

/// The speaker as a whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Our AS.
    pub as_number: u32,
    /// Reflector cluster ID, when reflecting.
    pub cluster_id: Option<Ipv4Addr>,
    /// One entry per configured peer.
    pub peers: Vec<PeerStatus>,
    /// Loc-RIB sizes.
    pub families: Vec<FamilyStatus>,
    /// Distinct attribute sets held (interned).
    pub attribute_sets: usize,
    /// Update groups: sessions that share one Adj-RIB-Out and UPDATE stream.
    #[serde(default)]
    pub update_groups: Vec<UpdateGroupStatus>,
}

/// One update group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateGroupStatus {
    /// Member peers' addresses.
    pub members: Vec<std::net::IpAddr>,
    /// Prefixes advertised to the group, per family.
    pub advertised: Vec<(Family, usize)>,
}

/// Loc-RIB size of one family.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilyStatus {
    /// The family.
    pub family: Family,
    /// Prefixes with a best path.
    pub prefixes: usize,
    /// Locally originated prefixes.
    pub local_prefixes: usize,
}

/// One peer, as `servalctl node status` and `/metrics` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// Peer address.
    pub address: IpAddr,
    /// Peer port.
    pub port: u16,
    /// Configured peer AS.
    pub as_number: u32,
    /// `ebgp` or `ibgp`.
    pub kind: String,
    /// Free text from the configuration.
    pub description: Option<String>,
    /// FSM state.
    pub state: State,
    /// Seconds since the state last changed.
    pub state_age_seconds: u64,
    /// Unix time the session was established, if it is.
    pub established_since_unix: Option<u64>,
    /// Local and remote socket addresses of the session.
    pub local_address: Option<String>,
    /// Remote socket address of the session.
    pub remote_address: Option<String>,
    /// What was negotiated, if established.
    pub negotiated: Option<Negotiated>,
    /// Why the last session ended or failed, for the `info` column.
    pub last_error: Option<String>,
    /// Per-family prefix counts.
    pub prefixes: Vec<PrefixCounts>,
    /// Message counters.
    pub messages: MessageCounts,
    /// Times the session reached Established.
    pub established_transitions: u64,
    /// Families for which the current session has sent End-of-RIB (initial table complete).
    #[serde(default)]
    pub end_of_rib_received: Vec<Family>,
    /// Families whose routes from this peer are held stale (graceful restart in progress).
    #[serde(default)]
    pub stale_families: Vec<Family>,
    /// The peer sent more prefixes than its max-prefix limit.
    #[serde(default)]
    pub max_prefix_exceeded: bool,
    /// BFD session state, when BFD is on for this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<crate::bfd::BfdState>,
    /// Bytes queued for the session's writer and not yet taken by the peer's socket.
    #[serde(default)]
    pub write_queue_bytes: usize,
    /// Prefixes waiting to be sent to a paced (slow-reading or catching-up) peer.
    #[serde(default)]
    pub paced_prefixes: usize,
    /// Routes not sent to this peer because their attributes do not fit in one UPDATE of
    /// the session (a count of occurrences, not of distinct prefixes).
    #[serde(default)]
    pub routes_too_large: u64,
}

/// Prefix counters of one peer in one family.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefixCounts {
    /// The family.
    pub family: Family,
    /// Prefixes the peer currently announces to us (accepted + filtered).
    pub received: usize,
    /// Prefixes that passed import and are candidates.
    pub accepted: usize,
    /// Prefixes we currently advertise to the peer.
    pub advertised: usize,
}

/// Message counters of one peer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageCounts {
    /// UPDATEs received.
    pub updates_received: u64,
    /// UPDATEs sent.
    pub updates_sent: u64,
    /// NOTIFICATIONs received.
    pub notifications_received: u64,
    /// NOTIFICATIONs sent.
    pub notifications_sent: u64,
    /// All messages received.
    pub messages_received: u64,
    /// All messages sent.
    pub messages_sent: u64,
    /// UPDATEs with attribute errors handled by RFC 7606.
    pub update_errors: u64,
}

/// A page of a Loc-RIB query: prefixes in order, after `after` and inside `within`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesQuery {
    /// The family to list.
    pub family: Family,
    /// Only prefixes inside this one.
    pub within: Option<IpNet>,
    /// Only prefixes after this one (the last of the previous page).
    pub after: Option<IpNet>,
    /// At most this many entries.
    pub limit: usize,
}

impl RoutesQuery {
    /// The largest page the speaker computes in one go; bigger tables are walked in pages
    /// so other work interleaves.
    pub const MAX_LIMIT: usize = 10_000;

    /// The first page of a family, optionally inside `within`.
    pub fn first(family: Family, within: Option<IpNet>) -> Self {
        RoutesQuery {
            family,
            within,
            after: None,
            limit: Self::MAX_LIMIT,
        }
    }
}

/// One prefix in the Loc-RIB with every candidate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    /// The prefix.
    pub prefix: IpNet,
    /// Candidates, best first.
    pub paths: Vec<PathView>,
}

/// One candidate path.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathView {
    /// Source peer address; `None` for our own routes.
    pub peer: Option<IpAddr>,
    /// This is the best path.
    pub best: bool,
    /// Held from a restarting peer.
    pub stale: bool,
    /// The step it lost at, when not best.
    pub lost_at: Option<Step>,
    /// Plain-words reason it lost.
    pub reason: Option<&'static str>,
    /// Its attributes.
    pub attributes: PathAttributes,
}

/// A best-path change, as the FIB needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestPathChange {
    /// The prefix.
    pub prefix: IpNet,
    /// The new best route, or `None` when the prefix is gone.
    pub best: Option<BestRoute>,
}

/// The forwarding-relevant part of a best path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestRoute {
    /// Source peer address; `None` for our own routes.
    pub peer: Option<IpAddr>,
    /// Next hops of the best path and of paths equal to it (ECMP), best first.
    pub next_hops: Vec<IpAddr>,
    /// Attributes of the best path.
    pub attributes: Arc<PathAttributes>,
}
