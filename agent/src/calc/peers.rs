//! Which BGP sessions this node should have, computed from BGPConfiguration, BGPPeer and Node
//! resources the way Calico's confd does: the node-to-node mesh (one passive side per pair,
//! reflectors left out), global peers, node-specific peers (`node` or `nodeSelector`), and
//! `peerSelector` peerings to other nodes, with reflector clients by cluster ID.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use kube::ResourceExt;
use serval_bgp::af::Family;
use serval_bgp::config::{NextHopMode, Password, PeerConfig};
use serval_policy::Selector;

use crate::resources::bgp::{
    BgpPassword, FailureDetectionMode, NextHopMode as PeerNextHop, SourceAddress,
};
use crate::resources::validate::parse_duration;
use crate::resources::{BGPConfiguration, BGPPeer, Node};

/// Calico's default cluster AS.
pub const DEFAULT_AS: u32 = 64512;
/// The BGP port when nothing says otherwise.
pub const DEFAULT_PORT: u16 = 179;

/// Why a session exists; `servalctl node status` prints it as Calico does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerType {
    /// From the full mesh.
    NodeMesh,
    /// From a BGPPeer that applies to every node.
    Global,
    /// From a BGPPeer for this node (by name or selector).
    NodeSpecific,
}

impl fmt::Display for PeerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerType::NodeMesh => "node-to-node mesh",
            PeerType::Global => "global",
            PeerType::NodeSpecific => "node specific",
        })
    }
}

/// One session this node should run.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPeer {
    /// The speaker's session configuration.
    pub config: PeerConfig,
    /// Where it came from.
    pub peer_type: PeerType,
    /// Settings not honoured yet (the MD5 key from its Secret, local AS), for a warning.
    pub unsupported: Vec<String>,
    /// The BGPFilters applied to the session, in order (BGPPeer `filters`).
    pub filters: Vec<String>,
}

/// Why peers could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerCalcError {
    /// The local Node resource is missing.
    #[error("node {0:?} has no Node resource yet")]
    NoNode(String),
    /// The local node has no BGP address.
    #[error("node {0:?} has no spec.bgp.ipv4Address or ipv6Address; BGP cannot start")]
    NoAddress(String),
}

/// A node's BGP identity as the calculation needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBgp {
    /// Node name.
    pub name: String,
    /// Node labels (for selectors).
    pub labels: BTreeMap<String, String>,
    /// IPv4 address with prefix.
    pub v4: Option<IpNet>,
    /// IPv6 address with prefix.
    pub v6: Option<IpNet>,
    /// Effective AS.
    pub as_number: u32,
    /// Route-reflector cluster ID, when the node is a reflector.
    pub cluster_id: Option<std::net::Ipv4Addr>,
}

impl NodeBgp {
    /// The node's BGP view, with the cluster default AS filled in; None without `spec.bgp`.
    pub fn from_node(node: &Node, default_as: u32) -> Option<NodeBgp> {
        let bgp = node.spec.bgp.as_ref()?;
        Some(NodeBgp {
            name: node.name_any(),
            labels: node.labels().clone(),
            v4: bgp.ipv4(),
            v6: bgp.ipv6(),
            as_number: bgp.as_number.unwrap_or(default_as),
            cluster_id: bgp.cluster_id(),
        })
    }

    fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.v4.iter().chain(self.v6.iter()).map(|n| n.addr())
    }

    /// The one session this node has with another of ours: over IPv4 when both have IPv4
    /// (else over IPv6), carrying every family both have, so dual-stack nodes exchange their
    /// IPv6 routes over the IPv4 session (MP-BGP). (peer address, our source, families.)
    fn session_with(&self, other: &NodeBgp) -> Option<(IpAddr, IpAddr, Vec<Family>)> {
        let both = |a: Option<IpNet>, b: Option<IpNet>| Some((b?.addr(), a?.addr()));
        let (v4, v6) = (both(self.v4, other.v4), both(self.v6, other.v6));
        let families = [(v4, Family::Ipv4Unicast), (v6, Family::Ipv6Unicast)]
            .into_iter()
            .filter_map(|(pair, f)| pair.map(|_| f))
            .collect();
        let (peer, source) = v4.or(v6)?;
        Some((peer, source, families))
    }

    fn address_for(&self, peer: &IpAddr) -> Option<IpAddr> {
        match peer {
            IpAddr::V4(_) => self.v4.map(|n| n.addr()),
            IpAddr::V6(_) => self.v6.map(|n| n.addr()),
        }
    }
}

/// Why a BGP password's Secret gives no password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// The Secret is missing, or serval-node may not read it.
    #[error(
        "password: Secret {0:?} not found or not readable (it is read from serval-node's namespace)"
    )]
    NoSecret(String),
    /// The Secret lacks the key.
    #[error("password: Secret {secret:?} has no key {key:?}")]
    NoKey {
        /// The Secret's name.
        secret: String,
        /// The key asked for.
        key: String,
    },
}

/// The resources the calculation reads.
#[derive(Debug, Clone, Default)]
pub struct BgpResources {
    /// All BGPConfiguration objects (`default` and `node.<name>`).
    pub configs: Vec<BGPConfiguration>,
    /// All BGPPeer objects.
    pub peers: Vec<BGPPeer>,
    /// All Node objects.
    pub nodes: Vec<Node>,
    /// Secrets in serval-node's namespace that BGP passwords name: Secret → key → value.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

impl BgpResources {
    /// The TCP-MD5 password a `secretKeyRef` names, or why there is none.
    pub fn password(&self, p: &BgpPassword) -> Result<Password, PasswordError> {
        let r = &p.secret_key_ref;
        let data = self
            .secrets
            .get(&r.name)
            .ok_or_else(|| PasswordError::NoSecret(r.name.clone()))?;
        data.get(&r.key)
            .map(|v| Password(v.clone()))
            .ok_or_else(|| PasswordError::NoKey {
                secret: r.name.clone(),
                key: r.key.clone(),
            })
    }

    /// The Secret names BGP passwords refer to (peers and the mesh).
    pub fn secret_names(&self) -> BTreeSet<String> {
        let mesh = self
            .configs
            .iter()
            .filter(|c| c.name_any() == "default")
            .filter_map(|c| c.spec.node_mesh_password.as_ref());
        let peers = self.peers.iter().filter_map(|p| p.spec.password.as_ref());
        mesh.chain(peers)
            .map(|p| p.secret_key_ref.name.clone())
            .collect()
    }
}

/// Cluster settings after `default` and `node.<name>` are merged.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectiveBgpConfig {
    /// Default AS.
    pub as_number: u32,
    /// Whether the full mesh is on.
    pub mesh: bool,
    /// The listen port (also the port other nodes are dialled on).
    pub listen_port: u16,
    /// Graceful-restart time for mesh peers, seconds.
    pub mesh_restart_time: Option<u16>,
    /// TCP-MD5 password for mesh peers (only on `default`).
    pub mesh_password: Option<BgpPassword>,
}

fn seconds(text: Option<&str>) -> Option<u16> {
    parse_duration(text?).map(|ms| u16::try_from(ms / 1000).unwrap_or(u16::MAX))
}

impl BgpResources {
    /// The settings for `node`: its `node.<name>` object overrides `default` field by field.
    pub fn effective_config(&self, node: &str) -> EffectiveBgpConfig {
        let find = |name: &str| {
            self.configs
                .iter()
                .find(|c| c.name_any() == name)
                .map(|c| &c.spec)
        };
        let global = find("default");
        let local = find(&format!("node.{node}"));
        let pick = |f: &dyn Fn(&crate::resources::BGPConfigurationSpec) -> Option<u32>| {
            local.and_then(f).or_else(|| global.and_then(f))
        };
        EffectiveBgpConfig {
            as_number: pick(&|s| s.as_number).unwrap_or(DEFAULT_AS),
            mesh: global
                .and_then(|s| s.node_to_node_mesh_enabled)
                .unwrap_or(true),
            listen_port: pick(&|s| s.listen_port.map(u32::from))
                .map(|p| p as u16)
                .unwrap_or(DEFAULT_PORT),
            mesh_restart_time: seconds(
                global.and_then(|s| s.node_mesh_max_restart_time.as_deref()),
            ),
            mesh_password: global.and_then(|s| s.node_mesh_password.clone()),
        }
    }
}

fn family_of(ip: &IpAddr) -> Family {
    if ip.is_ipv4() {
        Family::Ipv4Unicast
    } else {
        Family::Ipv6Unicast
    }
}

/// The sessions `local` should have, keyed and ordered by peer address.
pub fn compute_peers(local: &str, res: &BgpResources) -> Result<Vec<DesiredPeer>, PeerCalcError> {
    let cfg = res.effective_config(local);
    let nodes: Vec<NodeBgp> = res
        .nodes
        .iter()
        .filter_map(|n| NodeBgp::from_node(n, cfg.as_number))
        .collect();
    let me = match nodes.iter().find(|n| n.name == local) {
        Some(me) => me.clone(),
        None if res.nodes.iter().any(|n| n.name_any() == local) => {
            return Err(PeerCalcError::NoAddress(local.to_string()));
        }
        None => return Err(PeerCalcError::NoNode(local.to_string())),
    };
    if me.v4.is_none() && me.v6.is_none() {
        return Err(PeerCalcError::NoAddress(local.to_string()));
    }
    let mut out: BTreeMap<IpAddr, DesiredPeer> = BTreeMap::new();
    let my_addresses: Vec<IpAddr> = me.addresses().collect();
    let mut add = |peer: DesiredPeer| {
        if my_addresses.contains(&peer.config.address) {
            return;
        }
        // A more specific source replaces a less specific one for the same address.
        match out.get(&peer.config.address) {
            Some(existing) if existing.peer_type > peer.peer_type => {}
            _ => {
                out.insert(peer.config.address, peer);
            }
        }
    };

    // The mesh: every other non-reflector node, per family both have; reflectors stay out.
    if cfg.mesh && me.cluster_id.is_none() {
        for other in nodes
            .iter()
            .filter(|n| n.name != me.name && n.cluster_id.is_none())
        {
            if let Some((addr, source, families)) = me.session_with(other) {
                let mut pc = PeerConfig::new(addr, other.as_number);
                pc.port = cfg.listen_port;
                pc.source_address = Some(source);
                // One side dials (as Calico: the side whose peer has the higher address listens).
                pc.passive = addr > source;
                pc.families = families;
                pc.graceful_restart_time = cfg.mesh_restart_time;
                pc.description = Some(format!("Mesh_{}", other.name));
                let mut unsupported = Vec::new();
                if let Some(p) = &cfg.mesh_password {
                    match res.password(p) {
                        Ok(pw) => pc.password = Some(pw),
                        Err(e) => unsupported.push(e.to_string()),
                    }
                }
                add(DesiredPeer {
                    config: pc,
                    peer_type: PeerType::NodeMesh,
                    unsupported,
                    filters: Vec::new(),
                });
            }
        }
    }

    for bp in &res.peers {
        let spec = &bp.spec;
        let mut targets: Vec<Target<'_>> = Vec::new();
        if applies_to(bp, &me) {
            if let Some(ip) = &spec.peer_ip {
                if let Some(crate::resources::PeerAddress { ip: addr, port }) = ip.get() {
                    let node = nodes.iter().find(|n| n.addresses().any(|a| a == addr));
                    let port = port.unwrap_or(if node.is_some() {
                        cfg.listen_port
                    } else {
                        DEFAULT_PORT
                    });
                    targets.push((addr, port, spec.as_number.unwrap_or(cfg.as_number), node));
                }
            } else if let Some(sel) = spec
                .peer_selector
                .as_deref()
                .and_then(|s| Selector::parse(s).ok())
            {
                for other in nodes
                    .iter()
                    .filter(|n| n.name != me.name && sel.matches(&n.labels))
                {
                    if let Some((addr, _, _)) = me.session_with(other) {
                        targets.push((addr, cfg.listen_port, other.as_number, Some(other)));
                    }
                }
            }
        }
        // The reverse side of node-to-node peerings (Calico's reversePeering: Auto): a node
        // this BGPPeer applies to and that selects us gets a session from us too, so both
        // ends agree the session exists and exactly one of them dials.
        if let Some(sel) = spec
            .peer_selector
            .as_deref()
            .and_then(|s| Selector::parse(s).ok())
            && sel.matches(&me.labels)
        {
            for other in nodes
                .iter()
                .filter(|n| n.name != me.name && applies_to(bp, n))
            {
                if let Some((addr, _, _)) = me.session_with(other) {
                    targets.push((addr, cfg.listen_port, other.as_number, Some(other)));
                }
            }
        }
        for target in targets {
            let Some(source) = me.address_for(&target.0) else {
                continue;
            };
            add(session(bp, &me, target, source, res));
        }
    }
    Ok(out.into_values().collect())
}

/// Whether a BGPPeer applies to a node: by name, by selector, or (neither) to all.
fn applies_to(bp: &BGPPeer, node: &NodeBgp) -> bool {
    match (&bp.spec.node, &bp.spec.node_selector) {
        (Some(n), _) => *n == node.name,
        (None, Some(sel)) => Selector::parse(sel).is_ok_and(|s| s.matches(&node.labels)),
        (None, None) => true,
    }
}

/// The session a BGPPeer describes from `me` to `addr`.
/// (peer address, port, AS, the peer node if it is one of ours).
type Target<'a> = (IpAddr, u16, u32, Option<&'a NodeBgp>);

fn session(
    bp: &BGPPeer,
    me: &NodeBgp,
    (addr, port, as_number, node): Target<'_>,
    source: IpAddr,
    res: &BgpResources,
) -> DesiredPeer {
    let spec = &bp.spec;
    let peer_type = if spec.node.is_none() && spec.node_selector.is_none() {
        PeerType::Global
    } else {
        PeerType::NodeSpecific
    };
    let mut unsupported = Vec::new();

    if spec.reachable_by.is_some() {
        unsupported.push("reachableBy (static route to the peer)".to_string());
    }
    let mut pc = PeerConfig::new(addr, as_number);
    pc.port = port;
    // Our AS on this session (validation allows it with peerIP only).
    pc.local_as = spec.local_as_number.filter(|_| spec.peer_ip.is_some());
    // Towards one of our nodes at its session address, every family both have.
    pc.families = node
        .and_then(|n| me.session_with(n))
        .filter(|(session_addr, _, _)| *session_addr == addr)
        .map_or_else(|| vec![family_of(&addr)], |(_, _, families)| families);
    pc.next_hop = match (spec.next_hop_mode, spec.keep_original_next_hop) {
        (Some(PeerNextHop::Keep), _) | (None, Some(true)) => NextHopMode::Keep,
        (Some(PeerNextHop::SelfAddress), _) => NextHopMode::SelfAddress,
        _ => NextHopMode::Auto,
    };
    pc.source_address = match spec.source_address {
        Some(SourceAddress::None) => None,
        _ => Some(source),
    };
    if let Some(p) = &spec.password {
        // Without its password the session cannot come up against an MD5 peer; say why.
        match res.password(p) {
            Ok(pw) => pc.password = Some(pw),
            Err(e) => unsupported.push(e.to_string()),
        }
    }
    pc.graceful_restart_time = seconds(spec.max_restart_time.as_deref());
    pc.keepalive_time = seconds(spec.keepalive_time.as_deref());
    // Calico's ttlSecurity is the hop count (GTSM).
    pc.ttl_security = spec.ttl_security.filter(|h| *h > 0);
    // BFD only towards a peer on one of our subnets (single hop), as the mode's name says.
    let on_link = [me.v4, me.v6]
        .into_iter()
        .flatten()
        .any(|net| net.prefix_len() < net.max_prefix_len() && net.trunc().contains(&addr));
    if spec.failure_detection_mode == Some(FailureDetectionMode::BFDIfDirectlyConnected) && on_link
    {
        pc.bfd = Some(serval_bgp::bfd::BfdConfig::default());
    }
    pc.max_prefix = spec
        .max_prefix
        .as_ref()
        .map(|m| serval_bgp::config::MaxPrefix {
            limit: m.limit,
            warning_only: m.warning_only.unwrap_or(false),
            restart_seconds: m.restart_seconds.unwrap_or(30),
        });
    // Validation caps it at 255; a count beyond any real path is as good as "any".
    pc.allow_local_as = spec
        .num_allowed_local_as_numbers
        .map_or(0, |n| u8::try_from(n).unwrap_or(u8::MAX));
    // A reflector treats iBGP nodes outside its cluster as clients.
    pc.route_reflector_client = me.cluster_id.is_some()
        && as_number == me.as_number
        && node.is_some_and(|n| n.cluster_id != me.cluster_id);
    // Between two of our nodes both ends have the session; one listens, as in the mesh.
    pc.passive = node.is_some() && addr > source;
    pc.description = Some(bp.name_any());
    DesiredPeer {
        config: pc,
        peer_type,
        unsupported,
        filters: spec.filters.clone(),
    }
}
