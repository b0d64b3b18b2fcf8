//! BGPFilter evaluation with Calico's semantics: a peer's filters (in `BGPPeer.filters`
//! order, each filter's rules in order) are tried against a route; the first rule whose every
//! match holds decides (Accept, after its operations, or Reject); a route no rule matches
//! gets the default treatment (accepted). Export rules see the route as the peer would before
//! this node's AS is put in front (as BIRD's export filters do), so `asPathPrefix` matches
//! the path as learned and `prependASPath` lands behind our own AS on an eBGP session.
//!
//! A peer whose filter is missing or does not translate fails closed: nothing is taken from
//! it or sent to it until the filter is fixed (and the reason is reported).

use std::collections::BTreeMap;

use ipnet::IpNet;
use serval_bgp::packet::attribute::{LargeCommunity, PathAttributes};
use serval_bgp::policy::{RouteOrigin, Verdict};

use crate::resources::bgpfilter::{
    BGPFilterRule, BGPFilterSpec, FilterAction, FilterPeerType, MatchOperator, RouteSourceMatch,
};

/// A community in either form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Community {
    Standard(u32),
    Large(LargeCommunity),
}

fn parse_community(text: &str) -> Option<Community> {
    match text.matches(':').count() {
        1 => serval_bgp::config::parse_community(text)
            .ok()
            .map(Community::Standard),
        2 => serval_bgp::config::parse_large_community(text)
            .ok()
            .map(Community::Large),
        _ => None,
    }
}

/// One change an accepting rule makes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Operation {
    AddCommunity(Community),
    PrependAsPath(Vec<u32>),
    SetPriority(u32),
}

/// A rule, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    cidr: Option<(MatchOperator, IpNet)>,
    lengths: (u8, u8),
    remote_only: bool,
    peer_type: Option<FilterPeerType>,
    community: Option<Community>,
    as_path_prefix: Vec<u32>,
    interface: Option<String>,
    priority: Option<u32>,
    accept: bool,
    operations: Vec<Operation>,
}

/// Why a filter cannot be used (the peer then fails closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The BGPPeer names a filter that does not exist.
    #[error("BGPFilter {0:?} does not exist")]
    Missing(String),
    /// A rule uses something Serval cannot evaluate (validation refuses it at the door).
    #[error("BGPFilter {filter:?}: {field}: {reason}")]
    Untranslatable {
        /// The filter.
        filter: String,
        /// The rule's field, as `importV4[2].interface`.
        field: String,
        /// Why.
        reason: String,
    },
}

/// A priority as the kernel takes it, within Calico's bounds.
fn route_priority(value: i64) -> Option<u32> {
    u32::try_from(value)
        .ok()
        .filter(|v| (1..=crate::resources::bgp::MAX_ROUTE_PRIORITY).contains(v))
}

/// Whether `text` matches the shell-style `pattern` (`*` any run, `?` one character), as
/// BIRD's `~` on interface names.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn translate(
    filter: &str,
    field: &str,
    export: bool,
    r: &BGPFilterRule,
) -> Result<Rule, FilterError> {
    let bad = |what: &str, reason: &str| FilterError::Untranslatable {
        filter: filter.to_string(),
        field: format!("{field}.{what}"),
        reason: reason.to_string(),
    };
    if r.interface
        .as_deref()
        .is_some_and(|g| !crate::resources::validate::valid_interface_glob(g))
    {
        return Err(bad("interface", "not an interface name or pattern"));
    }
    let priority = match r.priority {
        None => None,
        Some(p) => Some(route_priority(p).ok_or_else(|| bad("priority", "not a route priority"))?),
    };
    let cidr = match (&r.match_operator, &r.cidr) {
        (Some(op), Some(c)) => Some((*op, c.get().ok_or_else(|| bad("cidr", "not a CIDR"))?)),
        (None, None) => None,
        _ => return Err(bad("matchOperator", "cidr and matchOperator go together")),
    };
    let lengths = r
        .prefix_length
        .map_or((0, 128), |l| (l.min.unwrap_or(0), l.max.unwrap_or(128)));
    let community = match &r.communities {
        None => None,
        Some(c) => match c.values.as_slice() {
            [one] => Some(parse_community(one).ok_or_else(|| bad("communities", "bad value"))?),
            _ => return Err(bad("communities", "exactly one value")),
        },
    };
    let mut operations = Vec::new();
    for op in &r.operations {
        operations.push(
            match (&op.add_community, &op.prepend_as_path, &op.set_priority) {
                (Some(c), None, None) => Operation::AddCommunity(
                    parse_community(&c.value).ok_or_else(|| bad("operations", "bad community"))?,
                ),
                (None, Some(p), None) => Operation::PrependAsPath(p.prefix.clone()),
                (None, None, Some(p)) if !export => Operation::SetPriority(
                    route_priority(p.value)
                        .ok_or_else(|| bad("operations", "setPriority: not a route priority"))?,
                ),
                (None, None, Some(_)) => {
                    return Err(bad(
                        "operations",
                        "setPriority applies to import rules only",
                    ));
                }
                _ => {
                    return Err(bad(
                        "operations",
                        "exactly one of addCommunity, prependASPath, setPriority",
                    ));
                }
            },
        );
    }
    Ok(Rule {
        cidr,
        lengths,
        remote_only: r.source == Some(RouteSourceMatch::RemotePeers),
        peer_type: r.peer_type,
        community,
        as_path_prefix: r.as_path_prefix.clone(),
        interface: r.interface.clone(),
        priority,
        accept: match r.action {
            Some(FilterAction::Accept) => true,
            Some(FilterAction::Reject) => false,
            None => return Err(bad("action", "required")),
        },
        operations,
    })
}

/// The four rule lists of one direction and family, index by [`slot`].
type Lists = [Vec<Rule>; 4];

fn slot(export: bool, v6: bool) -> usize {
    usize::from(export) * 2 + usize::from(v6)
}

/// What a rule may match besides the prefix and attributes: what this node knows about
/// the route and the session.
#[derive(Debug, Clone, Copy)]
pub struct RouteFacts<'a> {
    /// The session is external.
    pub ebgp: bool,
    /// The route's outgoing interface on this node (a local pod's host interface, the
    /// interface towards a learned route's next hop); `None` matches no `interface` rule.
    pub interface: Option<&'a str>,
    /// Its priority: the one an import filter set, else the family's normal priority.
    pub priority: u32,
}

/// One peer's filters, in order, ready to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerFilters {
    lists: Lists,
}

/// A peer's filtering: its rules, or closed (nothing in or out) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFilterState {
    /// The rules to apply.
    Rules(PeerFilters),
    /// Fail closed.
    Closed(FilterError),
}

impl PeerFilterState {
    /// Translates `names` (a BGPPeer's `filters`) against the filters that exist.
    pub fn of(names: &[String], filters: &BTreeMap<String, BGPFilterSpec>) -> PeerFilterState {
        let mut out = PeerFilters::default();
        for name in names {
            let Some(spec) = filters.get(name) else {
                return PeerFilterState::Closed(FilterError::Missing(name.clone()));
            };
            for (field, rules, export, v6) in [
                ("exportV4", &spec.export_v4, true, false),
                ("importV4", &spec.import_v4, false, false),
                ("exportV6", &spec.export_v6, true, true),
                ("importV6", &spec.import_v6, false, true),
            ] {
                for (i, r) in rules.iter().enumerate() {
                    match translate(name, &format!("{field}[{i}]"), export, r) {
                        Ok(rule) => out.lists[slot(export, v6)].push(rule),
                        Err(e) => return PeerFilterState::Closed(e),
                    }
                }
            }
        }
        PeerFilterState::Rules(out)
    }

    /// Whether a rule matches on a route's interface (the node then keeps its routes'
    /// interfaces for the filter).
    pub fn matches_interfaces(&self) -> bool {
        match self {
            PeerFilterState::Closed(_) => false,
            PeerFilterState::Rules(f) => f.lists.iter().flatten().any(|r| r.interface.is_some()),
        }
    }

    /// Decides on a route from the peer.
    pub fn import(&self, prefix: IpNet, attrs: &PathAttributes, facts: RouteFacts<'_>) -> Verdict {
        match self {
            PeerFilterState::Closed(_) => Verdict::Reject,
            PeerFilterState::Rules(f) => f.evaluate(false, prefix, attrs, facts, None),
        }
    }

    /// Decides on a route to the peer (`attrs` as exported, our AS in front on eBGP).
    pub fn export(
        &self,
        prefix: IpNet,
        attrs: &PathAttributes,
        facts: RouteFacts<'_>,
        origin: RouteOrigin,
    ) -> Verdict {
        match self {
            PeerFilterState::Closed(_) => Verdict::Reject,
            PeerFilterState::Rules(f) => f.evaluate(true, prefix, attrs, facts, Some(origin)),
        }
    }
}

impl PeerFilters {
    fn evaluate(
        &self,
        export: bool,
        prefix: IpNet,
        attrs: &PathAttributes,
        facts: RouteFacts<'_>,
        origin: Option<RouteOrigin>,
    ) -> Verdict {
        let ebgp = facts.ebgp;
        let rules = &self.lists[slot(export, prefix.addr().is_ipv6())];
        // On an eBGP export our own AS is already in front: rules see the path behind it.
        let skip_own = usize::from(export && ebgp);
        let path: Vec<u32> = attrs
            .as_path
            .segments
            .iter()
            .flat_map(|s| s.asns.iter().copied())
            .skip(skip_own)
            .collect();
        let Some(rule) = rules
            .iter()
            .find(|r| r.matches(prefix, attrs, &path, facts, origin))
        else {
            return Verdict::Accept;
        };
        if !rule.accept {
            return Verdict::Reject;
        }
        if rule.operations.is_empty() {
            return Verdict::Accept;
        }
        let mut out = attrs.clone();
        for op in &rule.operations {
            match op {
                Operation::AddCommunity(Community::Standard(c)) => {
                    if !out.communities.contains(c) {
                        out.communities.push(*c);
                    }
                }
                Operation::AddCommunity(Community::Large(c)) => {
                    if !out.large_communities.contains(c) {
                        out.large_communities.push(*c);
                    }
                }
                Operation::PrependAsPath(asns) => {
                    // Behind our own AS on eBGP, in front otherwise; first listed first.
                    let own = (skip_own == 1).then(|| out.as_path.first_as()).flatten();
                    if own.is_some() {
                        strip_first_as(&mut out);
                    }
                    for asn in asns.iter().rev() {
                        out.as_path.prepend(*asn);
                    }
                    if let Some(own) = own {
                        out.as_path.prepend(own);
                    }
                }
                Operation::SetPriority(p) => out.priority = std::num::NonZeroU32::new(*p),
            }
        }
        Verdict::Modify(out)
    }
}

/// Removes the path's first AS (ours, put there by the export rules).
fn strip_first_as(attrs: &mut PathAttributes) {
    if let Some(seg) = attrs.as_path.segments.first_mut() {
        if !seg.asns.is_empty() {
            seg.asns.remove(0);
        }
        if seg.asns.is_empty() {
            attrs.as_path.segments.remove(0);
        }
    }
}

impl Rule {
    fn matches(
        &self,
        prefix: IpNet,
        attrs: &PathAttributes,
        path: &[u32],
        facts: RouteFacts<'_>,
        origin: Option<RouteOrigin>,
    ) -> bool {
        let cidr_ok = self.cidr.is_none_or(|(op, cidr)| match op {
            MatchOperator::Equal => prefix == cidr,
            MatchOperator::NotEqual => prefix != cidr,
            MatchOperator::In => cidr.contains(&prefix),
            MatchOperator::NotIn => !cidr.contains(&prefix),
        });
        let len = prefix.prefix_len();
        cidr_ok
            && (self.lengths.0..=self.lengths.1).contains(&len)
            && (!self.remote_only || origin.is_some_and(|o| o != RouteOrigin::Local))
            && self
                .peer_type
                .is_none_or(|t| (t == FilterPeerType::Ebgp) == facts.ebgp)
            && self.community.is_none_or(|c| match c {
                Community::Standard(v) => attrs.communities.contains(&v),
                Community::Large(v) => attrs.large_communities.contains(&v),
            })
            && path.starts_with(&self.as_path_prefix)
            && self.priority.is_none_or(|p| p == facts.priority)
            && self
                .interface
                .as_deref()
                .is_none_or(|glob| facts.interface.is_some_and(|name| glob_matches(glob, name)))
    }
}

#[cfg(test)]
#[path = "bgp_filter_tests.rs"]
mod tests;
