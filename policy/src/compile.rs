//! From policies and endpoints to one family's [`Ruleset`], Calico's structure:
//!
//! ```text
//!  FORWARD ─► serval-FORWARD ─ -i sv+ ─► serval-from-wl-dispatch ─ -i svX -g ─► serval-fw-svX
//!  INPUT ───► serval-INPUT ──┘  -o sv+ ─► serval-to-wl-dispatch ─── -o svX -g ─► serval-tw-svX
//!                               (unknown sv* interface: DROP — fail closed)
//!  serval-fw-svX / serval-tw-svX: policies in order ─► serval-po-<id> / serval-pi-<id>
//!      accepted (mark 0x10000) → RETURN; no policy passed it → DROP;
//!      no policy selects the endpoint (or a Pass) → the namespace profile allows.
//! ```
//!
//! Selectors become ipsets of endpoint addresses; named ports become `hash:ip,port` sets of
//! the destination endpoints that define them; traffic from the node itself never enters
//! these chains (it leaves through OUTPUT), so the node always reaches its pods.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::ipt::{IptRule, MARK_ACCEPT, MARK_PASS, Match, Ruleset, Target};
use crate::model::{Action, EntityRule, PolicyType, Rule};
use crate::selector::{Labels, Selector};

mod endpoint;
mod host;
mod incremental;
mod matchers;
mod scope;

pub use endpoint::VXLAN_UDP_PORT;
use endpoint::{endpoint_chains, tunnel_guard};
pub use incremental::IncrementalCompiler;
pub use matchers::protocol_number;
use matchers::{chunk_ports, nets_of, parse_ports, proto_name};
use scope::{Family, Scope, SetSource};

/// The label every endpoint carries with its namespace's name (Calico's).
pub const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// Host interfaces of pods start with this.
pub const IFACE_PREFIX: &str = "sv";

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    /// The port's name.
    pub name: String,
    /// IP protocol number.
    pub protocol: u8,
    /// The number.
    pub port: u16,
}

/// A pod interface as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Namespace.
    pub namespace: String,
    /// Name (unique in the namespace).
    pub name: String,
    /// Host-side interface.
    pub iface: String,
    /// Addresses.
    pub addrs: Vec<IpAddr>,
    /// Pod labels.
    pub labels: Labels,
    /// Named ports.
    pub ports: Vec<NamedPort>,
}

/// A policy in compiled-selector form.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDef {
    /// Name.
    pub name: String,
    /// Namespace; `None` for a global policy.
    pub namespace: Option<String>,
    /// Order (lower first); `None` sorts last.
    pub order: Option<f64>,
    /// Which endpoints it applies to.
    pub selector: Selector,
    /// For global policies: which namespaces' endpoints.
    pub namespace_selector: Option<Selector>,
    /// Directions it applies to.
    pub types: Vec<PolicyType>,
    /// Ingress rules.
    pub ingress: Vec<Rule>,
    /// Egress rules.
    pub egress: Vec<Rule>,
    /// Where it applies on host endpoints (GlobalNetworkPolicy's doNotTrack, preDNAT and
    /// applyOnForward); the default is the normal, tracked policy of a host endpoint.
    pub host: HostPolicy,
}

/// A global policy's host endpoint flags (Calico's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// Evaluated in the raw table, before connection tracking; what it allows is untracked.
    pub do_not_track: bool,
    /// Evaluated in the mangle table before DNAT (ingress only).
    pub pre_dnat: bool,
    /// Also applied to traffic forwarded through the host endpoint.
    pub apply_on_forward: bool,
}

impl HostPolicy {
    /// A normal (tracked, after DNAT) policy.
    pub fn is_normal(&self) -> bool {
        !self.do_not_track && !self.pre_dnat
    }
}

impl PolicyDef {
    /// The key used for ordering ties and chain names.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Everything the compiler reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyInputs {
    /// Endpoints on this node (their chains are built) — and, for selectors, everywhere.
    pub local: Vec<Endpoint>,
    /// Endpoints on other nodes (only their addresses matter, for selector sets).
    pub remote: Vec<Endpoint>,
    /// Namespace labels by namespace name.
    pub namespaces: BTreeMap<String, Labels>,
    /// All policies.
    pub policies: Vec<PolicyDef>,
    /// Every node's address: only these may send the node tunnel traffic (VXLAN, IPIP).
    pub hosts: Vec<IpAddr>,
    /// The VXLAN UDP port when not IANA's 4789 (Felix's vxlanPort).
    pub vxlan_port: Option<u16>,
    /// Labelled sets of networks rule selectors match (NetworkSet, GlobalNetworkSet).
    pub network_sets: Vec<NetworkSetDef>,
    /// This node's host endpoints (HostEndpoint with an interface name), as endpoints with
    /// an empty namespace: global policies without namespaceSelector select them.
    pub host_endpoints: Vec<Endpoint>,
    /// Ports always open on host endpoints, so a policy cannot lock the operator out.
    pub failsafe: Failsafe,
}

/// Felix's failsafe ports: `(protocol number, port)`, inbound (to the host) and outbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failsafe {
    /// Allowed to the host through a host endpoint whatever the policy.
    pub inbound: Vec<(u8, u16)>,
    /// Allowed from the host through a host endpoint whatever the policy.
    pub outbound: Vec<(u8, u16)>,
}

impl Default for Failsafe {
    /// Felix's defaults: SSH, DHCP, BGP, etcd, Typha, the API server, kube-proxy health
    /// checks in; DNS, DHCP, BGP, etcd, Typha, the API server out.
    fn default() -> Failsafe {
        let tcp = |p| (6, p);
        let udp = |p| (17, p);
        Failsafe {
            inbound: vec![
                tcp(22),
                udp(68),
                tcp(179),
                tcp(2379),
                tcp(2380),
                tcp(5473),
                tcp(6443),
                tcp(6666),
                tcp(6667),
            ],
            outbound: vec![
                udp(53),
                udp(67),
                tcp(179),
                tcp(2379),
                tcp(2380),
                tcp(5473),
                tcp(6443),
                tcp(6666),
                tcp(6667),
            ],
        }
    }
}

/// A NetworkSet (with a namespace) or GlobalNetworkSet (without).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSetDef {
    /// Its namespace; None for a GlobalNetworkSet.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its labels, which selectors match.
    pub labels: Labels,
    /// Its networks.
    pub nets: Vec<IpNet>,
}

fn hash20(text: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in text.as_bytes() {
        h ^= u128::from(*b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    format!("{:032x}", h)[..20].to_string()
}

/// The ingress chain of a policy.
pub fn policy_chain(p: &PolicyDef, dir: PolicyType) -> String {
    let prefix = match dir {
        PolicyType::Ingress => "serval-pi-",
        PolicyType::Egress => "serval-po-",
    };
    format!("{prefix}{}", &hash20(&p.key())[..16])
}

fn set_name(prefix: char, v6: bool, key: &str) -> String {
    format!("serval{}0{prefix}:{}", if v6 { 6 } else { 4 }, hash20(key))
}

/// Which endpoints a rule side refers to within a policy.
fn side_scope(policy: &PolicyDef, side: &EntityRule, negative: bool) -> Option<Scope> {
    let sel_text = if negative {
        side.not_selector.as_deref()
    } else {
        side.selector.as_deref()
    };
    // `namespaceSelector: global()` means non-namespaced resources only: global network
    // sets (never pods).
    let global_only = !negative
        && side
            .namespace_selector
            .as_deref()
            .is_some_and(|s| s.trim() == "global()");
    let ns_sel = side
        .namespace_selector
        .as_deref()
        .filter(|s| s.trim() != "global()");
    if sel_text.is_none() && (negative || ns_sel.is_none()) && !global_only {
        return None;
    }
    let pods = Selector::parse(sel_text.unwrap_or("")).ok()?;
    let ns_selector = if negative {
        None
    } else {
        ns_sel.and_then(|s| Selector::parse(s).ok())
    };
    let namespace = match (&policy.namespace, &ns_selector) {
        (Some(ns), None) => Some(ns.clone()),
        _ => None,
    };
    Some(Scope {
        pods,
        namespace: if global_only { None } else { namespace },
        ns_selector,
        global_only,
    })
}

/// The endpoints a policy applies to.
fn policy_scope(p: &PolicyDef) -> Scope {
    Scope {
        pods: p.selector.clone(),
        namespace: p.namespace.clone(),
        ns_selector: p.namespace_selector.clone(),
        global_only: false,
    }
}

/// The match alternatives (ORed) of one rule in one family; empty when the rule cannot
/// match in this family.
fn alternatives(
    fam: &mut Family<'_>,
    policy: &PolicyDef,
    rule: &Rule,
    dir: PolicyType,
) -> Vec<Vec<Match>> {
    let v6 = fam.v6;
    if rule.ip_version.is_some_and(|v| (v == 6) != v6) {
        return Vec::new();
    }
    // A rule with a part that does not parse (callers fail the whole policy closed before
    // it gets here) never matches: dropping the unreadable part would match more.
    if !crate::model::validate_rule(rule).is_empty() {
        return Vec::new();
    }
    let mut base = Vec::new();
    let proto = rule.protocol.as_ref().and_then(protocol_number);
    if let Some(p) = proto {
        if (p == 1 && v6) || (p == 58 && !v6) {
            return Vec::new();
        }
        base.push(Match::Protocol(p, false));
    }
    if let Some(p) = rule.not_protocol.as_ref().and_then(protocol_number) {
        base.push(Match::Protocol(p, true));
    }
    if let Some(icmp) = &rule.icmp
        && let Some(t) = icmp.icmp_type
    {
        base.push(Match::Icmp(t, icmp.code, false, v6));
    }
    if let Some(icmp) = &rule.not_icmp
        && let Some(t) = icmp.icmp_type
    {
        base.push(Match::Icmp(t, icmp.code, true, v6));
    }
    for (side, is_src) in [(&rule.source, true), (&rule.destination, false)] {
        let (nets, had) = nets_of(&side.nets, v6);
        if had && nets.is_empty() {
            return Vec::new();
        }
        match nets.len() {
            0 => {}
            1 => base.push(if is_src {
                Match::SrcNet(nets[0], false)
            } else {
                Match::DstNet(nets[0], false)
            }),
            _ => {
                let s = fam.net_set(&nets);
                base.push(if is_src {
                    Match::SrcSet(s, false)
                } else {
                    Match::DstSet(s, false)
                });
            }
        }
        let (not_nets, _) = nets_of(&side.not_nets, v6);
        if !not_nets.is_empty() {
            let s = fam.net_set(&not_nets);
            base.push(if is_src {
                Match::SrcSet(s, true)
            } else {
                Match::DstSet(s, true)
            });
        }
        if let Some(scope) = side_scope(policy, side, false) {
            let s = fam.selector_set(&scope);
            base.push(if is_src {
                Match::SrcSet(s, false)
            } else {
                Match::DstSet(s, false)
            });
        }
        if let Some(scope) = side_scope(policy, side, true) {
            let s = fam.selector_set(&scope);
            base.push(if is_src {
                Match::SrcSet(s, true)
            } else {
                Match::DstSet(s, true)
            });
        }
        let (not_ports, _) = parse_ports(&side.not_ports);
        for chunk in chunk_ports(&not_ports) {
            base.push(if is_src {
                Match::SrcPorts(chunk, true)
            } else {
                Match::DstPorts(chunk, true)
            });
        }
    }
    // Source ports (rare) are a single alternative; destination ports may be numeric and
    // named, each group its own alternative.
    let (src_ports, _) = parse_ports(&rule.source.ports);
    if !src_ports.is_empty() {
        base.push(Match::SrcPorts(src_ports, false));
    }
    let (dst_ports, dst_named) = parse_ports(&rule.destination.ports);
    if dst_ports.is_empty() && dst_named.is_empty() {
        return vec![base];
    }
    let mut out = Vec::new();
    for chunk in chunk_ports(&dst_ports) {
        let mut m = base.clone();
        m.push(Match::DstPorts(chunk, false));
        out.push(m);
    }
    if !dst_named.is_empty() {
        // The destination of an ingress rule is the policy's own endpoints; of an egress rule,
        // the destination selector (or every endpoint).
        let scope = match dir {
            PolicyType::Ingress => policy_scope(policy),
            PolicyType::Egress => side_scope(policy, &rule.destination, false).unwrap_or(Scope {
                pods: Selector::All,
                namespace: None,
                ns_selector: None,
                global_only: false,
            }),
        };
        let protocol = proto.unwrap_or(6);
        for name in dst_named {
            let s = fam.named_port_set(&scope, &name, protocol);
            let mut m = base.clone();
            m.push(Match::DstIpPortSet(s, false));
            out.push(m);
        }
    }
    out
}

/// Allow and Pass: set the verdict mark on every alternative, then return once it is set.
fn mark_then_return(
    out: &mut Vec<IptRule>,
    alts: &[Vec<Match>],
    mark: u32,
    comment: &str,
    done: &str,
) {
    for m in alts {
        out.push(IptRule::new(
            m.clone(),
            Target::SetMark(mark, mark),
            comment,
        ));
    }
    if !alts.is_empty() {
        out.push(IptRule::new(
            vec![Match::Mark(mark, mark)],
            Target::Return,
            done,
        ));
    }
}

fn policy_rules(
    fam: &mut Family<'_>,
    policy: &PolicyDef,
    rules: &[Rule],
    dir: PolicyType,
) -> Vec<IptRule> {
    let mut out = Vec::new();
    let who = policy.key();
    for (i, rule) in rules.iter().enumerate() {
        let alts = alternatives(fam, policy, rule, dir);
        let comment = format!("serval:{who} rule {i} {:?}", rule.action);
        match rule.action {
            Action::Allow => mark_then_return(
                &mut out,
                &alts,
                MARK_ACCEPT,
                &comment,
                &format!("serval:{who} accepted"),
            ),
            Action::Deny => {
                for m in alts {
                    out.push(IptRule::new(m, Target::Drop, &comment));
                }
            }
            Action::Pass => mark_then_return(
                &mut out,
                &alts,
                MARK_PASS,
                &comment,
                &format!("serval:{who} passed"),
            ),
            Action::Log => {
                for m in alts {
                    out.push(IptRule::new(
                        m,
                        Target::Log("serval-packet: ".into()),
                        &comment,
                    ));
                }
            }
        }
    }
    out
}

/// Whether the policy has rules for (or isolates in) `dir`: explicit types, else inferred as
/// Kubernetes does (ingress always; egress when there are egress rules).
pub fn applies_in(p: &PolicyDef, dir: PolicyType) -> bool {
    if !p.types.is_empty() {
        return p.types.contains(&dir);
    }
    match dir {
        PolicyType::Ingress => true,
        PolicyType::Egress => !p.egress.is_empty(),
    }
}

/// Policy indices in evaluation order: by order (none last), then by key.
fn policy_order(inputs: &PolicyInputs) -> Vec<usize> {
    let keys: Vec<String> = inputs.policies.iter().map(PolicyDef::key).collect();
    let mut order: Vec<usize> = (0..inputs.policies.len()).collect();
    order.sort_by(|&a, &b| {
        let oa = inputs.policies[a].order.unwrap_or(f64::INFINITY);
        let ob = inputs.policies[b].order.unwrap_or(f64::INFINITY);
        oa.total_cmp(&ob).then_with(|| keys[a].cmp(&keys[b]))
    });
    order
}

/// The two directions, in the order per-direction arrays use.
const DIRS: [PolicyType; 2] = [PolicyType::Ingress, PolicyType::Egress];

/// A compile's output and what the incremental compiler needs to patch it.
struct Compiled {
    ruleset: Ruleset,
    sources: BTreeMap<String, SetSource>,
    /// Policy indices in evaluation order.
    order: Vec<usize>,
    /// Per policy index, its scope.
    scopes: Vec<Scope>,
    /// Per policy index: how many local endpoints it applies to (ingress, egress).
    counts: Vec<[usize; 2]>,
}

/// Compiles one family (`v6` false: iptables, true: ip6tables).
pub fn compile(inputs: &PolicyInputs, v6: bool) -> Ruleset {
    compile_indexed(inputs, v6).ruleset
}

/// The policies applying to one local endpoint, in order, per direction, with their chains.
fn applying<'p>(
    inputs: &'p PolicyInputs,
    order: &[usize],
    scopes: &[Scope],
    ep: &Endpoint,
) -> [Vec<(&'p PolicyDef, String)>; 2] {
    let mut out: [Vec<(&PolicyDef, String)>; 2] = [Vec::new(), Vec::new()];
    for &pi in order {
        let p = &inputs.policies[pi];
        if !p.host.is_normal() {
            continue;
        }
        for (d, dir) in DIRS.into_iter().enumerate() {
            if applies_in(p, dir) && scopes[pi].contains(ep, &inputs.namespaces) {
                out[d].push((p, policy_chain(p, dir)));
            }
        }
    }
    out
}

/// Per host endpoint, the policies of one tier (`keep`) that apply, per direction, in order;
/// counted so their chains are compiled.
fn host_applied<'p>(
    inputs: &'p PolicyInputs,
    order: &[usize],
    scopes: &[Scope],
    counts: &mut [[usize; 2]],
    keep: impl Fn(&HostPolicy) -> bool,
) -> Vec<[Vec<(&'p PolicyDef, String)>; 2]> {
    let mut out = vec![[Vec::new(), Vec::new()]; inputs.host_endpoints.len()];
    for &pi in order {
        let p = &inputs.policies[pi];
        if !keep(&p.host) {
            continue;
        }
        for (d, dir) in DIRS.into_iter().enumerate() {
            if !applies_in(p, dir) {
                continue;
            }
            for (hi, hep) in inputs.host_endpoints.iter().enumerate() {
                if scopes[pi].contains_host(hep) {
                    out[hi][d].push((p, policy_chain(p, dir)));
                    counts[pi][d] += 1;
                }
            }
        }
    }
    out
}

fn compile_indexed(inputs: &PolicyInputs, v6: bool) -> Compiled {
    let mut fam = Family::new(inputs, v6);
    let mut chains: BTreeMap<String, Vec<IptRule>> = BTreeMap::new();
    let order = policy_order(inputs);
    let scopes: Vec<Scope> = inputs.policies.iter().map(policy_scope).collect();
    let mut counts = vec![[0usize; 2]; inputs.policies.len()];
    // Which policies apply to which local endpoint, per direction.
    let mut applied: Vec<[Vec<(&PolicyDef, String)>; 2]> =
        vec![[Vec::new(), Vec::new()]; inputs.local.len()];
    for &pi in &order {
        let p = &inputs.policies[pi];
        // doNotTrack and preDNAT policies apply to host endpoints only (as in Calico).
        if !p.host.is_normal() {
            continue;
        }
        for (d, dir) in DIRS.into_iter().enumerate() {
            if !applies_in(p, dir) {
                continue;
            }
            let chain = policy_chain(p, dir);
            for (ei, ep) in inputs.local.iter().enumerate() {
                if scopes[pi].contains(ep, &inputs.namespaces) {
                    applied[ei][d].push((p, chain.clone()));
                    counts[pi][d] += 1;
                }
            }
        }
    }
    // Host endpoints (global policies without namespaceSelector select them), by tier:
    // normal policy on INPUT/OUTPUT, the applyOnForward ones on FORWARD too, doNotTrack in
    // raw, preDNAT in mangle.
    let tiers = host::Tiers {
        filter: host_applied(inputs, &order, &scopes, &mut counts, |h| h.is_normal()),
        forward: host_applied(inputs, &order, &scopes, &mut counts, |h| {
            h.is_normal() && h.apply_on_forward
        }),
        untracked: host_applied(inputs, &order, &scopes, &mut counts, |h| h.do_not_track),
        pre_dnat: host_applied(inputs, &order, &scopes, &mut counts, |h| h.pre_dnat),
    };
    let mut raw: BTreeMap<String, Vec<IptRule>> = BTreeMap::new();
    let mut mangle: BTreeMap<String, Vec<IptRule>> = BTreeMap::new();
    for &pi in &order {
        let p = &inputs.policies[pi];
        for (d, dir) in DIRS.into_iter().enumerate() {
            if counts[pi][d] == 0 {
                continue;
            }
            let rules = match dir {
                PolicyType::Ingress => &p.ingress,
                PolicyType::Egress => &p.egress,
            };
            let compiled = policy_rules(&mut fam, p, rules, dir);
            let table = if p.host.do_not_track {
                &mut raw
            } else if p.host.pre_dnat {
                &mut mangle
            } else {
                &mut chains
            };
            table.insert(policy_chain(p, dir), compiled);
        }
    }
    let mut to_dispatch = Vec::new();
    let mut from_dispatch = Vec::new();
    for (ei, ep) in inputs.local.iter().enumerate() {
        let [(tw, to_rules), (fw, from_rules)] = endpoint_chains(&mut fam, ep, &applied[ei]);
        chains.insert(tw.clone(), to_rules);
        chains.insert(fw.clone(), from_rules);
        to_dispatch.push(IptRule::new(
            vec![Match::OutIface(ep.iface.clone())],
            Target::Goto(tw),
            format!("serval:to {}/{}", ep.namespace, ep.name),
        ));
        from_dispatch.push(IptRule::new(
            vec![Match::InIface(ep.iface.clone())],
            Target::Goto(fw),
            format!("serval:from {}/{}", ep.namespace, ep.name),
        ));
    }
    let unknown = || {
        IptRule::new(
            vec![],
            Target::Drop,
            "serval:unknown interface (no policy programmed yet)",
        )
    };
    to_dispatch.push(unknown());
    from_dispatch.push(unknown());
    chains.insert("serval-to-wl-dispatch".into(), to_dispatch);
    chains.insert("serval-from-wl-dispatch".into(), from_dispatch);
    let pods = format!("{IFACE_PREFIX}+");
    let clear = || {
        IptRule::new(
            vec![],
            Target::SetMark(0, MARK_ACCEPT | MARK_PASS),
            "serval:clear marks",
        )
    };
    let mut forward = vec![
        IptRule::new(
            vec![Match::InIface(pods.clone()), Match::Established],
            Target::Accept,
            "serval:pod connection already allowed",
        ),
        IptRule::new(
            vec![Match::OutIface(pods.clone()), Match::Established],
            Target::Accept,
            "serval:pod connection already allowed",
        ),
        IptRule::new(
            vec![Match::InIface(pods.clone()), Match::Invalid],
            Target::Drop,
            "serval:invalid",
        ),
        IptRule::new(
            vec![Match::OutIface(pods.clone()), Match::Invalid],
            Target::Drop,
            "serval:invalid",
        ),
        clear(),
    ];
    // Forwarded through host endpoints: their applyOnForward policies, before the pods'.
    let (host_fwd, host_fwd_chains) = host::forward_rules(&mut fam, &tiers);
    forward.extend(host_fwd);
    chains.extend(host_fwd_chains);
    forward.extend([
        IptRule::new(
            vec![Match::InIface(pods.clone())],
            Target::Jump("serval-from-wl-dispatch".into()),
            "serval:from pods",
        ),
        IptRule::new(
            vec![Match::OutIface(pods.clone())],
            Target::Jump("serval-to-wl-dispatch".into()),
            "serval:to pods",
        ),
        IptRule::new(
            vec![Match::Mark(MARK_ACCEPT, MARK_ACCEPT)],
            Target::Accept,
            "serval:policy accepted the packet",
        ),
    ]);
    chains.insert("serval-FORWARD".into(), forward);
    let mut input = tunnel_guard(&mut fam);
    input.extend([
        IptRule::new(
            vec![Match::InIface(pods.clone()), Match::Established],
            Target::Accept,
            "serval:pod connection already allowed",
        ),
        IptRule::new(
            vec![Match::InIface(pods.clone())],
            Target::SetMark(0, MARK_ACCEPT | MARK_PASS),
            "serval:clear marks",
        ),
        IptRule::new(
            vec![Match::InIface(pods.clone())],
            Target::Jump("serval-from-wl-dispatch".into()),
            "serval:from pods to the host",
        ),
        IptRule::new(
            vec![Match::InIface(pods), Match::Mark(MARK_ACCEPT, MARK_ACCEPT)],
            Target::Accept,
            "serval:policy accepted the packet",
        ),
    ]);
    let (host_in, host_in_chains) = host::host_endpoint_rules(&mut fam, &tiers, true);
    input.extend(host_in);
    chains.extend(host_in_chains);
    chains.insert("serval-INPUT".into(), input);
    let (host_out, host_out_chains) = host::host_endpoint_rules(&mut fam, &tiers, false);
    if !host_out.is_empty() {
        chains.extend(host_out_chains);
        chains.insert("serval-OUTPUT".into(), host_out);
    }
    // raw: doNotTrack; mangle: preDNAT. Each hook chain exists only when it has rules.
    for (inbound, hook) in [(true, "serval-PREROUTING"), (false, "serval-OUTPUT")] {
        let (rules, tier_chains) = host::untracked_rules(&mut fam, &tiers, inbound);
        if !rules.is_empty() {
            raw.extend(tier_chains);
            raw.insert(hook.into(), rules);
        }
    }
    let (rules, tier_chains) = host::pre_dnat_rules(&mut fam, &tiers);
    if !rules.is_empty() {
        mangle.extend(tier_chains);
        mangle.insert("serval-PREROUTING".into(), rules);
    }
    let shared = |m: BTreeMap<String, Vec<IptRule>>| -> crate::ipt::Chains {
        m.into_iter()
            .map(|(name, rules)| (name, std::sync::Arc::new(rules)))
            .collect()
    };
    Compiled {
        ruleset: Ruleset {
            chains: shared(chains),
            raw: shared(raw),
            mangle: shared(mangle),
            sets: fam.sets,
        },
        sources: fam.sources,
        order,
        scopes,
        counts,
    }
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
