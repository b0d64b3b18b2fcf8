//! Speaker and peer configuration, with the defaults BIRD and Calico users expect.
//!
//! Field names are camelCase so the same YAML reads naturally next to Calico's
//! BGPConfiguration/BGPPeer resources.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::af::Family;

/// Why a speaker, peer or route setting is refused: whose, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The peer the setting belongs to; None for the speaker's own settings.
    pub peer: Option<IpAddr>,
    /// The field, by its configuration name (`holdTime`).
    pub field: &'static str,
    /// What is wrong and what is accepted.
    pub reason: String,
}

impl ConfigError {
    /// A speaker-wide setting.
    pub fn speaker(field: &'static str, reason: &str) -> ConfigError {
        ConfigError {
            peer: None,
            field,
            reason: reason.to_string(),
        }
    }

    /// A peer's setting.
    pub fn peer(peer: IpAddr, field: &'static str, reason: &str) -> ConfigError {
        ConfigError {
            peer: Some(peer),
            field,
            reason: reason.to_string(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = self.peer {
            write!(f, "peer {p}: ")?;
        }
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Default BGP port.
pub const BGP_PORT: u16 = 179;

/// Speaker-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpeakerConfig {
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Our AS.
    pub as_number: u32,
    /// Address to accept sessions on; `None` means do not listen (active-only).
    #[serde(default = "default_listen_address")]
    pub listen_address: Option<IpAddr>,
    /// TCP port to accept sessions on.
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// Route-reflector cluster ID; setting it makes this speaker a reflector.
    #[serde(default)]
    pub cluster_id: Option<Ipv4Addr>,
    /// Next hop for IPv4 routes when the session itself is not IPv4.
    #[serde(default)]
    pub next_hop_ipv4: Option<Ipv4Addr>,
    /// Next hop for IPv6 routes when the session itself is not IPv6.
    #[serde(default)]
    pub next_hop_ipv6: Option<Ipv6Addr>,
    /// LOCAL_PREF for routes that carry none.
    #[serde(default = "default_local_pref")]
    pub default_local_pref: u32,
    /// Bytes that may wait in one connection's write queue. A peer that reads slower than
    /// this is paced: it stops receiving incremental UPDATEs, the prefixes it missed are
    /// remembered (each at most once), and it is caught up from the current table as its
    /// queue drains, so a stalled reader costs a bounded amount of memory.
    #[serde(default = "default_write_queue_bytes")]
    pub write_queue_bytes: usize,
}

/// Default per-connection write budget: room for several full-size UPDATE batches.
pub const DEFAULT_WRITE_QUEUE_BYTES: usize = 8 << 20;

fn default_write_queue_bytes() -> usize {
    DEFAULT_WRITE_QUEUE_BYTES
}

fn default_listen_address() -> Option<IpAddr> {
    Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
}
fn default_port() -> u16 {
    BGP_PORT
}
fn default_local_pref() -> u32 {
    100
}
fn default_hold_time() -> u16 {
    90
}
fn default_min_hold_time() -> u16 {
    3
}
fn default_true() -> bool {
    true
}
fn default_connect_retry() -> u64 {
    5
}
fn default_families() -> Vec<Family> {
    Family::ALL.to_vec()
}

impl SpeakerConfig {
    /// A speaker with defaults for everything but identity.
    pub fn new(router_id: Ipv4Addr, as_number: u32) -> Self {
        SpeakerConfig {
            router_id,
            as_number,
            listen_address: default_listen_address(),
            listen_port: BGP_PORT,
            cluster_id: None,
            next_hop_ipv4: None,
            next_hop_ipv6: None,
            default_local_pref: 100,
            write_queue_bytes: DEFAULT_WRITE_QUEUE_BYTES,
        }
    }

    /// Checks values serde cannot; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: &str| Err(ConfigError::speaker(field, reason));
        if self.as_number == 0 {
            return bad("asNumber", "0 is reserved (RFC 7607); use 1..=4294967295");
        }
        if self.router_id.is_unspecified() {
            return bad("routerId", "0.0.0.0 is not a valid BGP identifier");
        }
        if self.write_queue_bytes < 64 * 1024 {
            return bad(
                "writeQueueBytes",
                &format!(
                    "{} is below the 65536 bytes one extended UPDATE may need",
                    self.write_queue_bytes
                ),
            );
        }
        Ok(())
    }
}

/// How to set NEXT_HOP when advertising to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NextHopMode {
    /// Self towards eBGP peers and for local routes; unchanged towards iBGP peers.
    #[default]
    Auto,
    /// Always our own address (BIRD's `next hop self`).
    #[serde(rename = "self")]
    SelfAddress,
    /// Never change it (Calico's keepOriginalNextHop).
    Keep,
}

/// One neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerConfig {
    /// Peer address; also the key the speaker knows the peer by.
    pub address: IpAddr,
    /// Peer AS; equal to ours means iBGP.
    pub as_number: u32,
    /// Our AS on this session when not the speaker's (BIRD's `local as`, Calico's
    /// BGPPeer `localASNumber`): sent in OPEN, prepended on eBGP export, checked for loops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_as: Option<u32>,
    /// Peer's TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Local address to connect from.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// Only accept connections; never connect out.
    #[serde(default)]
    pub passive: bool,
    /// Hold time to propose, seconds (0, or 3 and above).
    #[serde(default = "default_hold_time")]
    pub hold_time: u16,
    /// Keepalive interval, seconds (defaults to a third of the hold time).
    #[serde(default)]
    pub keepalive_time: Option<u16>,
    /// The lowest hold time accepted from the peer, seconds (BIRD's `min hold time`, FRR's
    /// `bgp minimum-holdtime`). An offer below it, 0 included, is refused with "unacceptable
    /// hold time", so a peer cannot switch liveness checks off; 0 accepts any offer.
    #[serde(default = "default_min_hold_time")]
    pub min_hold_time: u16,
    /// RFC 9687 send hold time, seconds: a session whose queued messages cannot be written
    /// for this long is closed with NOTIFICATION 8. Defaults to the larger of 8 minutes and
    /// twice the negotiated hold time, as the RFC suggests; off when the hold time is 0.
    #[serde(default)]
    pub send_hold_time: Option<u16>,
    /// Advertise extended messages (RFC 8654): with a peer that does too, UPDATEs may be
    /// up to 65,535 bytes, so routes with very long attributes can still be sent.
    #[serde(default = "default_true")]
    pub extended_messages: bool,
    /// Seconds between connection attempts, and before retrying after an error.
    #[serde(default = "default_connect_retry")]
    pub connect_retry_time: u64,
    /// TTL for eBGP sessions more than one hop away (eBGP defaults to 1, iBGP to 255).
    #[serde(default)]
    pub multihop: Option<u8>,
    /// Next-hop handling.
    #[serde(default)]
    pub next_hop: NextHopMode,
    /// Families to offer.
    #[serde(default = "default_families")]
    pub families: Vec<Family>,
    /// Whether this peer is sent routes at all; `false` is BIRD's `export none` (a feed
    /// that only gives routes): the peer is in no update group and gets only End-of-RIB.
    #[serde(default = "default_true")]
    pub export: bool,
    /// Treat this iBGP peer as a route-reflector client (needs a cluster ID).
    #[serde(default)]
    pub route_reflector_client: bool,
    /// Graceful restart (RFC 4724) with this restart time (seconds, 0..=4095): the
    /// capability is advertised with forwarding preserved, and this peer's routes are kept
    /// stale when its session drops without a NOTIFICATION.
    #[serde(default)]
    pub graceful_restart_time: Option<u16>,
    /// TCP-MD5 password (RFC 2385); the peer must use the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Password>,
    /// GTSM (RFC 5082): the peer is at most this many hops away. We send with TTL 255 and
    /// drop what arrives with a TTL below 256 − hops.
    #[serde(default)]
    pub ttl_security: Option<u8>,
    /// A limit on the prefixes the peer may send, per family.
    #[serde(default)]
    pub max_prefix: Option<MaxPrefix>,
    /// Accept routes whose AS path holds our AS up to this many times (BIRD's `allow local
    /// as`, Calico's numAllowedLocalASNumbers): lets nodes of one rack AS learn each other's
    /// routes back from their eBGP ToR. 0 keeps RFC 4271 loop detection.
    #[serde(default)]
    pub allow_local_as: u8,
    /// Single-hop BFD (RFC 5880/5881) with these timers: when the BFD session goes down the
    /// BGP session is torn down at once (Cease "BFD Down"), without waiting for the hold time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<crate::bfd::BfdConfig>,
    /// Free text shown in status output.
    #[serde(default)]
    pub description: Option<String>,
}

/// A TCP-MD5 password; never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// What happens when a peer sends more prefixes than allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaxPrefix {
    /// Prefixes per family.
    pub limit: u32,
    /// Only log (and flag in status); keep the session.
    #[serde(default)]
    pub warning_only: bool,
    /// Seconds before the session is tried again after a tear-down.
    #[serde(default = "default_max_prefix_restart")]
    pub restart_seconds: u64,
}

fn default_max_prefix_restart() -> u64 {
    30
}

impl PeerConfig {
    /// A peer with defaults for everything but address and AS.
    pub fn new(address: IpAddr, as_number: u32) -> Self {
        PeerConfig {
            address,
            as_number,
            local_as: None,
            export: true,
            port: BGP_PORT,
            source_address: None,
            passive: false,
            hold_time: 90,
            keepalive_time: None,
            min_hold_time: default_min_hold_time(),
            send_hold_time: None,
            extended_messages: true,
            connect_retry_time: 5,
            multihop: None,
            next_hop: NextHopMode::Auto,
            families: default_families(),
            route_reflector_client: false,
            graceful_restart_time: None,
            password: None,
            ttl_security: None,
            max_prefix: None,
            allow_local_as: 0,
            bfd: None,
            description: None,
        }
    }

    /// Checks values serde cannot; the error names the peer and the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason: &str| Err(ConfigError::peer(self.address, field, reason));
        if self.as_number == 0 {
            return bad("asNumber", "0 is reserved");
        }
        if self.local_as == Some(0) {
            return bad("localAs", "0 is reserved");
        }
        if self.hold_time == 1 || self.hold_time == 2 {
            return bad("holdTime", "must be 0 or at least 3 seconds (RFC 4271)");
        }
        if self.send_hold_time.is_some_and(|t| t < 3) {
            return bad("sendHoldTime", "must be at least 3 seconds");
        }
        if self.keepalive_time == Some(0) {
            return bad("keepaliveTime", "must be at least 1 second");
        }
        if self.connect_retry_time == 0 {
            return bad("connectRetryTime", "must be at least 1 second");
        }
        if let Some(p) = &self.password
            && (p.0.is_empty() || p.0.len() > crate::sockopt::MD5_MAX_KEY)
        {
            return bad(
                "password",
                &format!(
                    "must be 1..={} bytes (TCP-MD5)",
                    crate::sockopt::MD5_MAX_KEY
                ),
            );
        }
        if let Some(hops) = self.ttl_security {
            if hops == 0 || hops == 255 {
                return bad("ttlSecurity", "must be 1..=254 hops");
            }
            if self.multihop.is_some() {
                return bad(
                    "ttlSecurity",
                    "excludes multihop (TTL security always sends 255)",
                );
            }
        }
        if let Some(b) = &self.bfd {
            if let Err(e) = b.validate() {
                return Err(ConfigError {
                    peer: Some(self.address),
                    ..e
                });
            }
            if self.multihop.is_some() {
                return bad("bfd", "is single-hop here and excludes multihop");
            }
        }
        if self.max_prefix.as_ref().is_some_and(|m| m.limit == 0) {
            return bad("maxPrefix.limit", "must be at least 1");
        }
        if self.families.is_empty() {
            return bad("families", "must list at least one family");
        }
        if self.graceful_restart_time.is_some_and(|t| t > 4095) {
            return bad(
                "gracefulRestartTime",
                "must be 0..=4095 seconds (12 bits, RFC 4724)",
            );
        }
        if self.multihop == Some(0) {
            return bad("multihop", "TTL must be 1..=255");
        }
        Ok(())
    }

    /// Connect-retry interval as a duration.
    pub fn connect_retry(&self) -> Duration {
        Duration::from_secs(self.connect_retry_time)
    }

    /// The RFC 9687 send hold time for a session with this negotiated hold time
    /// (`None`: no send hold timer, because the hold time is 0 and no explicit value is set).
    pub fn send_hold(&self, negotiated_hold: u16) -> Option<Duration> {
        match (self.send_hold_time, negotiated_hold) {
            (Some(t), _) => Some(Duration::from_secs(u64::from(t))),
            (None, 0) => None,
            (None, h) => Some(Duration::from_secs(480.max(2 * u64::from(h)))),
        }
    }

    /// Our AS on this session, given the speaker's.
    pub fn local_as(&self, speaker_as: u32) -> u32 {
        self.local_as.unwrap_or(speaker_as)
    }

    /// Whether the session with this peer is external (`speaker_as` is the speaker's AS;
    /// the session's own `local_as` wins over it).
    pub fn is_ebgp(&self, speaker_as: u32) -> bool {
        self.as_number != self.local_as(speaker_as)
    }

    /// The TTL our packets to this peer carry.
    pub fn ttl(&self, local_as: u32) -> u8 {
        if self.ttl_security.is_some() {
            return 255;
        }
        match self.multihop {
            Some(ttl) => ttl,
            None if self.is_ebgp(local_as) => 1,
            None => 255,
        }
    }

    /// GTSM's minimum TTL for packets from the peer, when TTL security is on.
    pub fn min_ttl(&self) -> Option<u8> {
        self.ttl_security
            .map(|hops| 255u8.saturating_sub(hops.saturating_sub(1)))
    }

    /// Whether a change from `self` to `other` needs the session restarted.
    pub fn session_differs(&self, other: &PeerConfig) -> bool {
        let strip = |p: &PeerConfig| PeerConfig {
            description: None,
            next_hop: NextHopMode::Auto,
            // BFD is its own session, started and stopped beside BGP's.
            bfd: None,
            ..p.clone()
        };
        strip(self) != strip(other)
    }
}

/// A route this speaker originates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRoute {
    /// The prefix.
    pub prefix: IpNet,
    /// Explicit next hop; by default each peer gets our session address.
    #[serde(default)]
    pub next_hop: Option<IpAddr>,
    /// MULTI_EXIT_DISC to attach.
    #[serde(default)]
    pub med: Option<u32>,
    /// LOCAL_PREF to attach (iBGP only).
    #[serde(default)]
    pub local_pref: Option<u32>,
    /// Standard communities, as `asn:value` strings.
    #[serde(default)]
    pub communities: Vec<String>,
    /// Large communities, as `global:local1:local2` strings.
    #[serde(default)]
    pub large_communities: Vec<String>,
}

impl LocalRoute {
    /// A plain route for a prefix.
    pub fn new(prefix: IpNet) -> Self {
        LocalRoute {
            prefix,
            next_hop: None,
            med: None,
            local_pref: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
        }
    }
}

/// Parses `65000:100` into a 32-bit community value.
pub fn parse_community(s: &str) -> Result<u32, ConfigError> {
    let bad = |reason: String| ConfigError::speaker("communities", &reason);
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| bad(format!("{s:?}: expected ASN:VALUE")))?;
    let a: u16 = a
        .parse()
        .map_err(|_| bad(format!("{s:?}: {a:?} is not 0..=65535")))?;
    let b: u16 = b
        .parse()
        .map_err(|_| bad(format!("{s:?}: {b:?} is not 0..=65535")))?;
    Ok(u32::from(a) << 16 | u32::from(b))
}

/// Parses `4200000000:1:2` into a large community.
pub fn parse_large_community(
    s: &str,
) -> Result<crate::packet::attribute::LargeCommunity, ConfigError> {
    let bad = |reason: String| ConfigError::speaker("largeCommunities", &reason);
    let parts: Vec<&str> = s.split(':').collect();
    let [a, b, c] = parts[..] else {
        return Err(bad(format!("{s:?}: expected GLOBAL:LOCAL1:LOCAL2")));
    };
    let n = |x: &str| {
        x.parse::<u32>()
            .map_err(|_| bad(format!("{s:?}: {x:?} is not a 32-bit number")))
    };
    Ok(crate::packet::attribute::LargeCommunity(
        n(a)?,
        n(b)?,
        n(c)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communities_parse_and_reject_garbage() {
        assert_eq!(parse_community("65000:100").unwrap(), 0xfde8_0064);
        let e = parse_community("70000:1").unwrap_err();
        assert_eq!(e.field, "communities");
        assert!(e.to_string().contains("70000"), "{e}");
        assert!(parse_community("1").is_err());
        assert_eq!(
            parse_large_community("4200000000:1:2").unwrap().0,
            4_200_000_000
        );
        assert!(parse_large_community("1:2").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = PeerConfig::new("192.0.2.1".parse().unwrap(), 65001);
        assert!(p.validate().is_ok());
        p.hold_time = 2;
        let e = p.validate().unwrap_err();
        assert_eq!((e.peer, e.field), (Some(p.address), "holdTime"));
        assert!(
            e.to_string().starts_with("peer 192.0.2.1: holdTime: "),
            "{e}"
        );
        let e = SpeakerConfig::new(Ipv4Addr::UNSPECIFIED, 1)
            .validate()
            .unwrap_err();
        assert_eq!((e.peer, e.field), (None, "routerId"));
    }

    #[test]
    fn ttl_defaults_follow_session_type() {
        let mut p = PeerConfig::new("192.0.2.1".parse().unwrap(), 65001);
        assert_eq!(p.ttl(65000), 1);
        assert_eq!(p.ttl(65001), 255);
        p.multihop = Some(4);
        assert_eq!(p.ttl(65000), 4);
    }

    #[test]
    fn description_change_does_not_restart_the_session() {
        let a = PeerConfig::new("192.0.2.1".parse().unwrap(), 65001);
        let mut b = a.clone();
        b.description = Some("tor-1".into());
        assert!(!a.session_differs(&b));
        b.hold_time = 30;
        assert!(a.session_differs(&b));
    }
}
