//! Validation of every resource kind: the one place the CLI, the agent and the datastores
//! all call before trusting a resource. Each problem names the field and what was expected.

use std::fmt;

use ipnet::IpNet;
use serval_policy::Selector;
use serval_policy::model::validate_rule;

use super::bgp::{BGPConfigurationSpec, BGPPeerSpec};
use super::ipam::{
    BlockAffinitySpec, IPAMBlockSpec, IPAMConfigSpec, IPAMHandleSpec, IPReservationSpec,
};
use super::node::NodeSpec;
use super::parsed::Parsed;
use super::policy::{GlobalNetworkPolicySpec, NetworkPolicySpec};
use super::pool::{EncapMode, IPPoolSpec};
use super::workload::WorkloadEndpointSpec;

/// One problem in one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path from the object root (`spec.cidr`, `spec.ingress[0].source.nets[1]`).
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem found in one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// The object's kind.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// The problems, in field order.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} is invalid:", self.kind, self.name)?;
        for e in &self.errors {
            write!(f, "\n  {}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

/// Collects field errors for one object.
#[derive(Debug, Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    /// Records a problem.
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// The error for `kind`/`name`, or Ok when nothing was found.
    pub fn finish(self, kind: &str, name: &str) -> Result<(), ValidationError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                kind: kind.to_string(),
                name: name.to_string(),
                errors: self.0,
            })
        }
    }

    fn selector(&mut self, field: &str, text: Option<&str>) {
        if let Some(text) = text
            && let Err(e) = Selector::parse(text)
        {
            self.add(field, e.to_string());
        }
    }

    fn cidr(&mut self, field: &str, net: &Parsed<IpNet>) -> Option<IpNet> {
        match net.get() {
            Some(net) => Some(net),
            None => {
                self.add(field, format!("{net:?} is not an IP address or CIDR"));
                None
            }
        }
    }

    fn route_priority(&mut self, field: &str, value: Option<i64>) {
        let max = i64::from(super::bgp::MAX_ROUTE_PRIORITY);
        if let Some(v) = value
            && !(1..=max).contains(&v)
        {
            self.add(
                field,
                format!("{v} is not a route priority (1 to {max}, a kernel metric)"),
            );
        }
    }

    fn asn(&mut self, field: &str, asn: Option<u32>) {
        if asn == Some(0) {
            self.add(field, "AS number must be between 1 and 4294967295");
        }
    }

    fn duration(&mut self, field: &str, text: Option<&str>) {
        if let Some(t) = text
            && parse_duration(t).is_none()
        {
            self.add(
                field,
                format!("{t:?} is not a duration such as 90s, 2m or 1h30m"),
            );
        }
    }
}

/// Parses Go-style durations (`90s`, `2m`, `1h30m`, `500ms`) into milliseconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(factor)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Checks a Kubernetes object name (DNS-1123 subdomain).
pub fn check_name(problems: &mut Problems, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        problems.add(
            "metadata.name",
            format!(
                "{name:?} must be lower-case letters, digits, '-' and '.', \
                 start and end with a letter or digit, at most 253 characters"
            ),
        );
    }
}

/// BGPConfiguration fields Serval parses but does not act on yet: refused by name rather
/// than accepted and left doing nothing.
pub const UNSUPPORTED_BGP: &str = "is not supported yet; remove it or wait for support";

/// The unsupported BGPConfiguration fields that are set, by their names in `spec`.
pub fn unsupported_bgp_fields(s: &BGPConfigurationSpec) -> Vec<&'static str> {
    [(
        "bindMode",
        s.bind_mode == Some(crate::resources::bgp::BindMode::NodeIP),
    )]
    .into_iter()
    .filter_map(|(f, set)| set.then_some(f))
    .collect()
}

/// The fields set in `s` that Serval reads from the `default` BGPConfiguration only (set
/// on a `node.<name>` one, they would do nothing).
pub fn default_only_fields(s: &BGPConfigurationSpec) -> Vec<&'static str> {
    [
        ("serviceClusterIPs", !s.service_cluster_ips.is_empty()),
        ("serviceExternalIPs", !s.service_external_ips.is_empty()),
        (
            "serviceLoadBalancerIPs",
            !s.service_load_balancer_ips.is_empty(),
        ),
        ("communities", !s.communities.is_empty()),
        ("prefixAdvertisements", !s.prefix_advertisements.is_empty()),
        (
            "serviceLoadBalancerAggregation",
            s.service_load_balancer_aggregation.is_some(),
        ),
        (
            "ipv4NormalRoutePriority",
            s.ipv4_normal_route_priority.is_some(),
        ),
        (
            "ipv6NormalRoutePriority",
            s.ipv6_normal_route_priority.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(f, set)| set.then_some(f))
    .collect()
}

pub(crate) fn bgp_configuration(name: &str, s: &BGPConfigurationSpec, p: &mut Problems) {
    let is_default = name == "default";
    if !is_default && !name.starts_with("node.") {
        p.add(
            "metadata.name",
            "must be \"default\" (cluster-wide) or \"node.<nodename>\" (one node)",
        );
    }
    p.asn("spec.asNumber", s.as_number);
    if s.listen_port == Some(0) {
        p.add("spec.listenPort", "must be between 1 and 65535");
    }
    if let Some(level) = &s.log_severity_screen
        && !["Trace", "Debug", "Info", "Warning", "Error", "Fatal"].contains(&level.as_str())
    {
        p.add(
            "spec.logSeverityScreen",
            format!("{level:?} is not one of Trace, Debug, Info, Warning, Error, Fatal"),
        );
    }
    for (field, list) in [
        ("serviceClusterIPs", &s.service_cluster_ips),
        ("serviceExternalIPs", &s.service_external_ips),
        ("serviceLoadBalancerIPs", &s.service_load_balancer_ips),
    ] {
        for (i, c) in list.iter().enumerate() {
            p.cidr(&format!("spec.{field}[{i}].cidr"), &c.cidr);
        }
    }
    if !is_default {
        for field in default_only_fields(s) {
            p.add(
                format!("spec.{field}"),
                "is read from the cluster-wide \"default\" BGPConfiguration only",
            );
        }
    }
    for field in unsupported_bgp_fields(s) {
        p.add(format!("spec.{field}"), UNSUPPORTED_BGP);
    }
    for (field, value) in [
        ("ipv4NormalRoutePriority", s.ipv4_normal_route_priority),
        ("ipv6NormalRoutePriority", s.ipv6_normal_route_priority),
    ] {
        p.route_priority(&format!("spec.{field}"), value.map(i64::from));
    }
    for (i, c) in s.communities.iter().enumerate() {
        if !is_community(&c.value) {
            p.add(
                format!("spec.communities[{i}].value"),
                format!("{:?} is not aa:nn or aa:nn:mm", c.value),
            );
        }
    }
    for (i, a) in s.prefix_advertisements.iter().enumerate() {
        p.cidr(&format!("spec.prefixAdvertisements[{i}].cidr"), &a.cidr);
        for (j, c) in a.communities.iter().enumerate() {
            if !is_community(c) && !s.communities.iter().any(|n| &n.name == c) {
                p.add(
                    format!("spec.prefixAdvertisements[{i}].communities[{j}]"),
                    format!("{c:?} is neither a community value nor a name in spec.communities"),
                );
            }
        }
    }
    p.duration(
        "spec.nodeMeshMaxRestartTime",
        s.node_mesh_max_restart_time.as_deref(),
    );
    let mesh_off = s.node_to_node_mesh_enabled == Some(false);
    for (field, set) in [
        ("nodeMeshPassword", s.node_mesh_password.is_some()),
        (
            "nodeMeshMaxRestartTime",
            s.node_mesh_max_restart_time.is_some(),
        ),
    ] {
        if set && (!is_default || mesh_off) {
            p.add(
                format!("spec.{field}"),
                "only allowed on \"default\" with the node-to-node mesh enabled",
            );
        }
    }
}

/// A HostEndpoint: a named interface on a node; what Serval does not use is refused by name.
pub(crate) fn host_endpoint(s: &super::hostendpoint::HostEndpointSpec, p: &mut Problems) {
    if s.node.is_empty() {
        p.add("spec.node", "is required");
    }
    match s.interface_name.as_deref() {
        None | Some("") => p.add(
            "spec.interfaceName",
            "is required (Serval polices named interfaces)",
        ),
        Some("*") => p.add(
            "spec.interfaceName",
            "\"*\" (all interfaces) is not supported; name the interface",
        ),
        Some(i) if i.len() > 15 || i.contains(['/', ' ']) => p.add(
            "spec.interfaceName",
            format!("{i:?} is not an interface name"),
        ),
        Some(_) => {}
    }
    for (field, set) in [
        ("expectedIPs", !s.expected_ips.is_empty()),
        ("profiles", !s.profiles.is_empty()),
        ("ports", !s.ports.is_empty()),
    ] {
        if set {
            p.add(format!("spec.{field}"), UNSUPPORTED_BY_SERVAL);
        }
    }
}

/// A BGPFilter's rules: what Serval cannot evaluate is refused by name (the agent would
/// otherwise close the peers that use the filter).
pub(crate) fn bgp_filter(s: &super::bgpfilter::BGPFilterSpec, p: &mut Problems) {
    use super::bgpfilter::FilterAction;
    for (list, rules, v6, export) in [
        ("exportV4", &s.export_v4, false, true),
        ("importV4", &s.import_v4, false, false),
        ("exportV6", &s.export_v6, true, true),
        ("importV6", &s.import_v6, true, false),
    ] {
        let max_len = if v6 { 128 } else { 32 };
        for (i, r) in rules.iter().enumerate() {
            let f = format!("spec.{list}[{i}]");
            if r.action.is_none() {
                p.add(format!("{f}.action"), "is required: Accept or Reject");
            }
            match (&r.cidr, &r.match_operator) {
                (Some(c), Some(_)) => {
                    if let Some(net) = p.cidr(&format!("{f}.cidr"), c)
                        && net.addr().is_ipv6() != v6
                    {
                        p.add(
                            format!("{f}.cidr"),
                            format!("{c:?} is not an IPv{} prefix", if v6 { 6 } else { 4 }),
                        );
                    }
                }
                (None, None) => {}
                _ => p.add(
                    format!("{f}.matchOperator"),
                    "cidr and matchOperator are set together or not at all",
                ),
            }
            if let Some(l) = r.prefix_length {
                let (min, max) = (l.min.unwrap_or(0), l.max.unwrap_or(max_len));
                if min > max || max > max_len {
                    p.add(
                        format!("{f}.prefixLength"),
                        format!("must satisfy min <= max <= {max_len}"),
                    );
                }
            }
            if r.source.is_some() && !export {
                p.add(
                    format!("{f}.source"),
                    "applies to export rules only (routes re-advertised from peers)",
                );
            }
            if let Some(glob) = &r.interface
                && !valid_interface_glob(glob)
            {
                p.add(
                    format!("{f}.interface"),
                    format!("{glob:?} is not an interface name or pattern (1-15 of A-Z a-z 0-9 . _ - with * and ?)"),
                );
            }
            p.route_priority(&format!("{f}.priority"), r.priority);
            if let Some(c) = &r.communities {
                match c.values.as_slice() {
                    [v] if is_community(v) => {}
                    [v] => p.add(
                        format!("{f}.communities.values[0]"),
                        format!("{v:?} is not aa:nn or aa:nn:mm"),
                    ),
                    _ => p.add(
                        format!("{f}.communities.values"),
                        "must hold exactly one value",
                    ),
                }
            }
            if r.as_path_prefix.contains(&0) {
                p.add(format!("{f}.asPathPrefix"), "AS 0 is not an AS number");
            }
            if !r.operations.is_empty() && r.action != Some(FilterAction::Accept) {
                p.add(
                    format!("{f}.operations"),
                    "are allowed only with action Accept",
                );
            }
            if r.operations.len() > 10 {
                p.add(format!("{f}.operations"), "at most 10");
            }
            for (j, op) in r.operations.iter().enumerate() {
                let o = format!("{f}.operations[{j}]");
                let set = [
                    op.add_community.is_some(),
                    op.prepend_as_path.is_some(),
                    op.set_priority.is_some(),
                ];
                if set.iter().filter(|s| **s).count() != 1 {
                    p.add(
                        &o,
                        "must set exactly one of addCommunity, prependASPath, setPriority",
                    );
                }
                if let Some(c) = &op.add_community
                    && !is_community(&c.value)
                {
                    p.add(
                        format!("{o}.addCommunity.value"),
                        format!("{:?} is not aa:nn or aa:nn:mm", c.value),
                    );
                }
                if let Some(pp) = &op.prepend_as_path
                    && (pp.prefix.is_empty() || pp.prefix.contains(&0))
                {
                    p.add(
                        format!("{o}.prependASPath.prefix"),
                        "must list AS numbers (not 0)",
                    );
                }
                if let Some(sp) = &op.set_priority {
                    if export {
                        p.add(
                            format!("{o}.setPriority"),
                            "applies to import rules only (a priority is this node's kernel metric for the route; it is not sent to peers)",
                        );
                    }
                    p.route_priority(&format!("{o}.setPriority.value"), Some(sp.value));
                }
            }
        }
    }
}

/// An interface name, or a shell-style pattern of one (`*` any run, `?` one character),
/// as BGPFilter's `interface` takes.
pub(crate) fn valid_interface_glob(glob: &str) -> bool {
    let literal = glob.chars().filter(|c| !matches!(c, '*' | '?')).count();
    !glob.is_empty()
        && literal <= 15
        && glob
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?'))
}

fn is_community(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    match parts.len() {
        2 => parts.iter().all(|x| x.parse::<u16>().is_ok()),
        3 => parts.iter().all(|x| x.parse::<u32>().is_ok()),
        _ => false,
    }
}

pub(crate) fn bgp_peer(s: &BGPPeerSpec, p: &mut Problems) {
    for (i, name) in s.filters.iter().enumerate() {
        if name.is_empty() {
            p.add(format!("spec.filters[{i}]"), "must name a BGPFilter");
        }
    }
    if s.local_as_number.is_some() && s.peer_ip.is_none() {
        p.add(
            "spec.localASNumber",
            "applies to a peerIP peering only (a node-to-node session runs with the node's AS)",
        );
    }
    if s.reachable_by.is_some() {
        p.add(
            "spec.reachableBy",
            "is not supported yet (no static route to the peer would be added); remove it",
        );
    }
    if s.node.is_some() && s.node_selector.is_some() {
        p.add("spec.nodeSelector", "cannot be set together with spec.node");
    }
    p.selector("spec.nodeSelector", s.node_selector.as_deref());
    p.selector("spec.peerSelector", s.peer_selector.as_deref());
    match (&s.peer_ip, &s.peer_selector) {
        (Some(_), Some(_)) => p.add(
            "spec.peerSelector",
            "cannot be set together with spec.peerIP",
        ),
        (None, None) => p.add("spec", "one of peerIP or peerSelector is required"),
        (Some(ip), None) => {
            if ip.value().is_none() {
                p.add(
                    "spec.peerIP",
                    format!("{ip:?} is not IP, IPv4:port or [IPv6]:port"),
                );
            }
            if s.as_number.is_none() {
                p.add("spec.asNumber", "required with spec.peerIP");
            }
        }
        (None, Some(_)) => {
            if s.as_number.is_some() {
                p.add(
                    "spec.asNumber",
                    "must be empty with spec.peerSelector (the selected nodes' AS is used)",
                );
            }
        }
    }
    p.asn("spec.asNumber", s.as_number);
    p.asn("spec.localASNumber", s.local_as_number);
    if s.keep_original_next_hop.is_some() && s.next_hop_mode.is_some() {
        p.add(
            "spec.keepOriginalNextHop",
            "cannot be set together with spec.nextHopMode (use nextHopMode: Keep)",
        );
    }
    if s.ttl_security == Some(0) {
        p.add("spec.ttlSecurity", "must be between 1 and 255 hops");
    }
    p.duration("spec.maxRestartTime", s.max_restart_time.as_deref());
    p.duration("spec.keepaliveTime", s.keepalive_time.as_deref());
    if s.max_prefix.as_ref().is_some_and(|m| m.limit == 0) {
        p.add("spec.maxPrefix.limit", "must be at least 1");
    }
    if s.num_allowed_local_as_numbers.is_some_and(|n| n > 255) {
        p.add(
            "spec.numAllowedLocalASNumbers",
            "must be at most 255 (it is a count of our AS in one path)",
        );
    }
    if let Some(gw) = &s.reachable_by {
        if gw.value().is_none() {
            p.add("spec.reachableBy", format!("{gw:?} is not an IP address"));
        }
        if s.peer_ip.is_none() {
            p.add("spec.reachableBy", "requires spec.peerIP");
        }
    }
}

pub(crate) fn node(s: &NodeSpec, p: &mut Problems) {
    if let Some(text) = &s.ipv6_vxlan_tunnel_addr
        && text.value().is_none()
    {
        p.add(
            "spec.ipv6VXLANTunnelAddr",
            format!("{text:?} is not an IPv6 address"),
        );
    }
    for (field, mac) in [
        ("spec.vxlanTunnelMACAddr", &s.vxlan_tunnel_mac_addr),
        ("spec.vxlanTunnelMACAddrV6", &s.vxlan_tunnel_mac_addr_v6),
    ] {
        if let Some(text) = mac
            && crate::calc::tunnels::parse_mac(text).is_none()
        {
            p.add(
                field,
                format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
            );
        }
    }
    let Some(bgp) = &s.bgp else {
        return;
    };
    p.asn("spec.bgp.asNumber", bgp.as_number);
    for (field, value, v4) in [
        ("spec.bgp.ipv4Address", &bgp.ipv4_address, true),
        ("spec.bgp.ipv6Address", &bgp.ipv6_address, false),
    ] {
        if let Some(text) = value
            && let Some(net) = p.cidr(field, text)
            && net.addr().is_ipv4() != v4
        {
            p.add(
                field,
                format!("{text:?} is not an IPv{} address", if v4 { 4 } else { 6 }),
            );
        }
    }
    for (field, value) in [
        ("spec.bgp.ipv4IPIPTunnelAddr", &bgp.ipv4_ipip_tunnel_addr),
        ("spec.ipv4VXLANTunnelAddr", &s.ipv4_vxlan_tunnel_addr),
    ] {
        if let Some(text) = value
            && text.value().is_none()
        {
            p.add(field, format!("{text:?} is not an IPv4 address"));
        }
    }
    if let Some(id) = &bgp.route_reflector_cluster_id
        && id.value().is_none()
    {
        p.add(
            "spec.bgp.routeReflectorClusterID",
            format!("{id:?} must be in IPv4 address form, e.g. 224.0.0.1"),
        );
    }
}

/// Serval allocates pod and tunnel addresses from any pool: a pool limited to one use
/// would be used for the other anyway, so only the default (both, or unset) is accepted.
pub fn allowed_uses_supported(uses: &[crate::resources::pool::AllowedUse]) -> bool {
    use crate::resources::pool::AllowedUse;
    uses.is_empty() || (uses.contains(&AllowedUse::Workload) && uses.contains(&AllowedUse::Tunnel))
}

/// A network set's `spec.nets`: every entry an address or a CIDR.
pub(crate) fn nets(nets: &[Parsed<IpNet>], p: &mut Problems) {
    for (i, n) in nets.iter().enumerate() {
        if n.value().is_none() {
            p.add(
                format!("spec.nets[{i}]"),
                format!("{n:?} is not an address or a CIDR such as 198.51.100.0/28"),
            );
        }
    }
}

pub(crate) fn ip_pool(s: &IPPoolSpec, p: &mut Problems) {
    p.selector("spec.nodeSelector", s.node_selector.as_deref());
    if !allowed_uses_supported(&s.allowed_uses) {
        p.add(
            "spec.allowedUses",
            "only both Workload and Tunnel (the default) are supported by Serval yet; remove it",
        );
    }
    // A pool is a prefix: a bare address (which other fields read as its /32) is refused.
    let Some(cidr) = s.cidr.get().filter(|_| s.cidr.text().contains('/')) else {
        p.add(
            "spec.cidr",
            format!("{:?} is not a CIDR such as 10.244.0.0/16", s.cidr),
        );
        return;
    };
    if cidr.trunc() != cidr {
        p.add(
            "spec.cidr",
            format!("{cidr} has host bits set; did you mean {}?", cidr.trunc()),
        );
    }
    let link_local: [IpNet; 2] = [
        "169.254.0.0/16".parse().expect("literal"),
        "fe80::/10".parse().expect("literal"),
    ];
    if link_local
        .iter()
        .any(|ll| ll.contains(&cidr.network()) || cidr.contains(&ll.network()))
    {
        p.add("spec.cidr", format!("{cidr} overlaps the link-local range"));
    }
    let (lo, hi) = if cidr.addr().is_ipv4() {
        (20, 32)
    } else {
        (116, 128)
    };
    let block = s.effective_block_size().unwrap_or(lo);
    if block < lo || block > hi {
        p.add(
            "spec.blockSize",
            format!(
                "{block} is outside {lo}..={hi} for an IPv{} pool",
                if lo == 20 { 4 } else { 6 }
            ),
        );
    } else if block < cidr.prefix_len() {
        p.add(
            "spec.blockSize",
            format!(
                "/{block} blocks do not fit in the /{} pool",
                cidr.prefix_len()
            ),
        );
    }
    if s.ipip_mode != EncapMode::Never && cidr.addr().is_ipv6() {
        p.add(
            "spec.ipipMode",
            "IPIP is not supported on IPv6 pools (use vxlanMode)",
        );
    }
    if s.ipip_mode != EncapMode::Never && s.vxlan_mode != EncapMode::Never {
        p.add(
            "spec.vxlanMode",
            "cannot be enabled together with spec.ipipMode",
        );
    }
}

pub(crate) fn ipam_block(s: &IPAMBlockSpec, p: &mut Problems) {
    let b = &s.inner;
    let size = serval_ipam::cidr::size(&b.cidr);
    if size > 1 << 16 || b.allocations.len() as u128 != size {
        p.add(
            "spec.allocations",
            format!(
                "has {} entries but {} holds {size} addresses",
                b.allocations.len(),
                b.cidr
            ),
        );
    }
    if b.allocations
        .iter()
        .flatten()
        .any(|i| *i as usize >= b.attributes.len())
    {
        p.add(
            "spec.allocations",
            "refers to an attribute that does not exist",
        );
    }
    if b.unallocated.iter().any(|o| *o as u128 >= size) {
        p.add("spec.unallocated", "holds an ordinal outside the block");
    }
}

pub(crate) fn block_affinity(s: &BlockAffinitySpec, p: &mut Problems) {
    if s.inner.node.is_empty() {
        p.add("spec.node", "is required");
    }
}

pub(crate) fn ipam_handle(s: &IPAMHandleSpec, p: &mut Problems) {
    for cidr in s.inner.block.keys() {
        if cidr.parse::<IpNet>().is_err() {
            p.add("spec.block", format!("key {cidr:?} is not a CIDR"));
        }
    }
}

pub(crate) fn ipam_config(name: &str, _s: &IPAMConfigSpec, p: &mut Problems) {
    if name != "default" {
        p.add(
            "metadata.name",
            "the IPAM configuration must be named \"default\"",
        );
    }
}

pub(crate) fn ip_reservation(s: &IPReservationSpec, p: &mut Problems) {
    for (i, c) in s.reserved_cidrs.iter().enumerate() {
        p.cidr(&format!("spec.reservedCIDRs[{i}]"), c);
    }
}

pub(crate) fn workload_endpoint(s: &WorkloadEndpointSpec, p: &mut Problems) {
    if s.node.is_empty() {
        p.add("spec.node", "is required");
    }
    if s.interface_name.is_empty() || s.interface_name.len() > 15 {
        p.add(
            "spec.interfaceName",
            "must be 1 to 15 characters (a Linux interface name)",
        );
    }
    for (i, n) in s.ip_networks.iter().enumerate() {
        p.cidr(&format!("spec.ipNetworks[{i}]"), n);
    }
    for (i, port) in s.ports.iter().enumerate() {
        if !["TCP", "UDP", "SCTP"].contains(&port.protocol.as_str()) {
            p.add(
                format!("spec.ports[{i}].protocol"),
                "must be TCP, UDP or SCTP",
            );
        }
    }
}

fn rules(p: &mut Problems, direction: &str, rules: &[serval_policy::model::Rule]) {
    for (i, r) in rules.iter().enumerate() {
        for (field, message) in validate_rule(r) {
            p.add(format!("spec.{direction}[{i}].{field}"), message);
        }
    }
}

/// What the CRDs say of a field Serval parses but does not implement.
pub const UNSUPPORTED_BY_SERVAL: &str = "is not supported by Serval yet; remove it";

pub(crate) fn network_policy(s: &NetworkPolicySpec, p: &mut Problems) {
    p.selector("spec.selector", Some(&s.selector));
    p.selector(
        "spec.serviceAccountSelector",
        s.service_account_selector.as_deref(),
    );
    rules(p, "ingress", &s.ingress);
    rules(p, "egress", &s.egress);
}

pub(crate) fn global_network_policy(s: &GlobalNetworkPolicySpec, p: &mut Problems) {
    p.selector("spec.selector", Some(&s.selector));
    p.selector("spec.namespaceSelector", s.namespace_selector.as_deref());
    p.selector(
        "spec.serviceAccountSelector",
        s.service_account_selector.as_deref(),
    );
    rules(p, "ingress", &s.ingress);
    rules(p, "egress", &s.egress);
    if s.pre_dnat && !s.egress.is_empty() {
        p.add(
            "spec.egress",
            "preDNAT policies can only have ingress rules",
        );
    }
    if (s.pre_dnat || s.do_not_track) && !s.apply_on_forward {
        p.add(
            "spec.applyOnForward",
            "must be true for preDNAT and doNotTrack policies",
        );
    }
    if s.pre_dnat && s.do_not_track {
        p.add("spec.preDNAT", "cannot be combined with doNotTrack");
    }
    if s.pre_dnat && s.types.contains(&serval_policy::model::PolicyType::Egress) {
        p.add("spec.types", "preDNAT policies apply to ingress only");
    }
}
