//! Reading the kernel back: Serval's chains and hooks from `iptables-save -t TABLE`, and
//! Serval's ipsets from `ipset save`, in forms the manager compares with what it wants.
//! A rule is known by the hash at the start of its comment (`iptables-save` prints rules in
//! its own normal form, so the text we wrote is never what comes back); a rule without one
//! was not written by us.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serval_policy::ipt::{IpSet, SetKind, hash_in_comment};

/// The prefix of every chain and ipset Serval owns.
pub const OWNED_PREFIX: &str = "serval";
/// The comment on each jump from a kernel chain into ours.
pub const HOOK_COMMENT: &str = "serval:hook";

/// One table of one family as read back: our chains and our hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    /// `serval-` chains → the hash of each rule (None for a rule we did not write).
    pub chains: BTreeMap<String, Vec<Option<u64>>>,
    /// Our hooks, in order: (kernel chain, our chain). Duplicates are kept.
    pub hooks: Vec<(String, String)>,
}

/// Whether a chain is ours.
pub fn owned_chain(name: &str) -> bool {
    name.starts_with("serval-")
}

/// The text of a rule's `--comment`, quoted or not.
fn comment_of(line: &str) -> Option<&str> {
    let rest = &line[line.find("--comment ")? + "--comment ".len()..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split_whitespace().next(),
    }
}

/// The chain a rule jumps or goes to.
fn jump_of(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next();
        }
    }
    None
}

/// Parses `iptables-save -t TABLE` output.
pub fn parse_table(save: &str) -> TableState {
    let mut state = TableState::default();
    for line in save.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if owned_chain(name) {
                state.chains.entry(name.to_string()).or_default();
            }
            continue;
        }
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rule.split_whitespace().next().unwrap_or_default();
        let comment = comment_of(rule);
        if owned_chain(chain) {
            state
                .chains
                .entry(chain.to_string())
                .or_default()
                .push(comment.and_then(hash_in_comment));
        } else if comment == Some(HOOK_COMMENT)
            && let Some(target) = jump_of(rule)
        {
            state.hooks.push((chain.to_string(), target.to_string()));
        }
    }
    state
}

/// One of our ipsets as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetState {
    /// IPv6 (`family inet6`).
    pub v6: bool,
    /// Its type, when it is one we write.
    pub kind: Option<SetKind>,
    /// Members in normal form (see [`normal_members`]).
    pub members: BTreeSet<String>,
}

/// Parses `ipset save` output: our sets (any family) by name.
pub fn parse_sets(save: &str) -> BTreeMap<String, SetState> {
    let mut sets: BTreeMap<String, SetState> = BTreeMap::new();
    for line in save.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("create"), Some(name)) if name.starts_with(OWNED_PREFIX) => {
                let rest: Vec<&str> = words.collect();
                let kind = match rest.first().copied() {
                    Some("hash:net") => Some(SetKind::Net),
                    Some("hash:ip,port") => Some(SetKind::IpPort),
                    _ => None,
                };
                let v6 = rest.windows(2).any(|w| w == ["family", "inet6"]);
                sets.insert(
                    name.to_string(),
                    SetState {
                        v6,
                        kind,
                        members: BTreeSet::new(),
                    },
                );
            }
            (Some("add"), Some(name)) => {
                if let (Some(set), Some(member)) = (sets.get_mut(name), words.next()) {
                    let member = normal_member(set.kind, member);
                    set.members.insert(member);
                }
            }
            _ => {}
        }
    }
    sets
}

/// A member as ipset prints it: a host as an address without `/32` or `/128`, a network
/// with its host bits cleared, an address,port entry with the address in canonical form.
fn normal_member(kind: Option<SetKind>, member: &str) -> String {
    match kind {
        Some(SetKind::Net) => {
            let net = member
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| member.parse::<IpAddr>().map(IpNet::from));
            match net {
                Ok(n) if n.prefix_len() == n.max_prefix_len() => n.addr().to_string(),
                Ok(n) => n.to_string(),
                Err(_) => member.to_string(),
            }
        }
        Some(SetKind::IpPort) => match member.split_once(',') {
            Some((addr, port)) => match addr.parse::<IpAddr>() {
                Ok(a) => format!("{a},{}", port.to_ascii_lowercase()),
                Err(_) => member.to_string(),
            },
            None => member.to_string(),
        },
        None => member.to_string(),
    }
}

/// A desired set's members in the normal form read-back uses.
pub fn normal_members(set: &IpSet) -> BTreeSet<String> {
    set.members
        .iter()
        .map(|m| normal_member(Some(set.kind), m))
        .collect()
}

/// Whether the kernel's set is exactly the desired one.
pub fn set_matches(actual: &SetState, want: &IpSet, v6: bool) -> bool {
    actual.v6 == v6 && actual.kind == Some(want.kind) && actual.members == normal_members(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from iptables-nft-save 1.8.9: rules come back reordered and normalised.
    const SAVE: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:serval-x - [0:0]
:serval-empty - [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment \"serval:hook\" -j serval-x
-A FORWARD -j serval-x
-A FORWARD -m comment --comment \"kube\" -j KUBE-FORWARD
-A serval-x -p tcp -m comment --comment \"h:0123456789abcdef ns/p rule 0 Allow\" -m set --match-set serval40s:abc src -j MARK --set-xmark 0x10000/0x10000
-A serval-x -s 10.0.0.1/32 -i sv1234 -j ACCEPT
-A KUBE-FORWARD -j ACCEPT
COMMIT
";

    #[test]
    fn our_chains_hashes_and_hooks_are_read_and_nothing_foreign() {
        let t = parse_table(SAVE);
        assert_eq!(
            t.chains.keys().collect::<Vec<_>>(),
            ["serval-empty", "serval-x"]
        );
        assert_eq!(t.chains["serval-x"], [Some(0x0123_4567_89ab_cdef), None]);
        assert!(t.chains["serval-empty"].is_empty());
        // The uncommented jump is someone else's: not a hook of ours.
        assert_eq!(t.hooks, [("FORWARD".to_string(), "serval-x".to_string())]);
    }

    #[test]
    fn sets_are_read_in_the_form_ipset_prints() {
        let save = "\
create serval40s:a hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
add serval40s:a 10.0.0.1
add serval40s:a 10.0.1.0/24
create serval60s:b hash:net family inet6 hashsize 1024 maxelem 65536
add serval60s:b 2001:db8::1
create serval40p:c hash:ip,port family inet hashsize 1024 maxelem 65536
add serval40p:c 10.0.0.1,tcp:80
create KUBE-X hash:net family inet
add KUBE-X 10.9.9.9
";
        let sets = parse_sets(save);
        assert_eq!(sets.len(), 3, "foreign sets are not ours: {sets:?}");
        let want = |kind, m: &[&str]| IpSet {
            kind,
            members: m.iter().map(|s| s.to_string()).collect(),
        };
        assert!(set_matches(
            &sets["serval40s:a"],
            &want(SetKind::Net, &["10.0.0.1/32", "10.0.1.0/24"]),
            false
        ));
        assert!(set_matches(
            &sets["serval60s:b"],
            &want(SetKind::Net, &["2001:DB8:0::1/128"]),
            true
        ));
        assert!(!set_matches(
            &sets["serval60s:b"],
            &want(SetKind::Net, &["2001:db8::1"]),
            false
        ));
        assert!(set_matches(
            &sets["serval40p:c"],
            &want(SetKind::IpPort, &["10.0.0.1,tcp:80"]),
            false
        ));
        assert!(!set_matches(
            &sets["serval40s:a"],
            &want(SetKind::Net, &["10.0.0.1"]),
            false
        ));
    }
}
