//! The compiled form: iptables rules and ipsets as data (so tests can evaluate them and the
//! agent can diff them), rendered to `iptables-restore` and `ipset restore` text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::sync::Arc;

use ipnet::IpNet;

/// The mark bit set when a policy (or profile) accepts a packet.
pub const MARK_ACCEPT: u32 = 0x1_0000;
/// The mark bit set when a policy passes a packet on (Calico's Pass / next-tier).
pub const MARK_PASS: u32 = 0x2_0000;

/// A port or an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (equal to `first` for one port).
    pub last: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// One match of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `-i NAME` (a trailing `+` matches a prefix).
    InIface(String),
    /// `-o NAME`.
    OutIface(String),
    /// `-p N` or `! -p N`.
    Protocol(u8, bool),
    /// `-s NET` / `! -s NET`.
    SrcNet(IpNet, bool),
    /// `-d NET` / `! -d NET`.
    DstNet(IpNet, bool),
    /// `-m set [!] --match-set NAME src`.
    SrcSet(String, bool),
    /// `-m set [!] --match-set NAME dst`.
    DstSet(String, bool),
    /// `-m set [!] --match-set NAME dst,dst` on a hash:ip,port set (named ports).
    DstIpPortSet(String, bool),
    /// `-m multiport [!] --sports ...`.
    SrcPorts(Vec<PortRange>, bool),
    /// `-m multiport [!] --dports ...`.
    DstPorts(Vec<PortRange>, bool),
    /// `-m mark --mark VALUE/MASK`.
    Mark(u32, u32),
    /// ICMP type and optional code (`-m icmp --icmp-type T[/C]` or the icmp6 form), negatable.
    Icmp(u8, Option<u8>, bool, bool),
    /// `-m conntrack --ctstate RELATED,ESTABLISHED`.
    Established,
    /// `-m conntrack --ctstate INVALID`.
    Invalid,
    /// `-m conntrack --ctstate UNTRACKED` (let through by doNotTrack policy in raw).
    Untracked,
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// ACCEPT.
    Accept,
    /// DROP.
    Drop,
    /// RETURN.
    Return,
    /// `-j CHAIN`.
    Jump(String),
    /// `-g CHAIN`.
    Goto(String),
    /// `-j MARK --set-xmark VALUE/MASK`.
    SetMark(u32, u32),
    /// `-j LOG --log-prefix P` (non-terminal).
    Log(String),
    /// `-j MASQUERADE --random-fully` (nat table only).
    Masquerade,
    /// `-j CT --notrack` (raw table only): the packet bypasses connection tracking.
    NoTrack,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IptRule {
    /// All must hold.
    pub matches: Vec<Match>,
    /// The target.
    pub target: Target,
    /// The comment (every Serval rule carries one, starting with `serval:`).
    pub comment: String,
}

impl IptRule {
    /// A rule with a comment.
    pub fn new(matches: Vec<Match>, target: Target, comment: impl Into<String>) -> Self {
        IptRule {
            matches,
            target,
            comment: comment.into(),
        }
    }
}

/// The kind of an ipset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetKind {
    /// `hash:net`: addresses and prefixes.
    Net,
    /// `hash:ip,port`: address plus protocol:port (named ports).
    IpPort,
}

/// One ipset's desired content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    /// Its kind.
    pub kind: SetKind,
    /// Members as `ipset` writes them (`10.0.0.1`, `10.0.0.0/24`, `10.0.0.1,tcp:80`).
    pub members: BTreeSet<String>,
}

/// Chains by name. A chain's rules are shared: copying a ruleset to keep it (the firewall
/// manager keeps what it applied) copies no rule, and an unchanged chain compares equal by
/// pointer before any rule is looked at.
pub type Chains = BTreeMap<String, Arc<Vec<IptRule>>>;

/// Everything Serval wants in one family's policy tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// filter-table chains by name.
    pub chains: Chains,
    /// raw-table chains (doNotTrack policy on host endpoints).
    pub raw: Chains,
    /// mangle-table chains (preDNAT policy on host endpoints).
    pub mangle: Chains,
    /// Sets by name.
    pub sets: BTreeMap<String, IpSet>,
}

fn neg(negated: bool) -> &'static str {
    if negated { "! " } else { "" }
}

fn ports(list: &[PortRange]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The longest comment iptables keeps (its limit is 256 bytes with the terminating NUL).
pub const MAX_COMMENT_LEN: usize = 255;

/// A rule comment as `iptables-restore` accepts it whatever an object's name holds: printable
/// ASCII only (quotes, backslashes and anything else become `_`), cut to [`MAX_COMMENT_LEN`].
pub fn comment_text(comment: &str) -> String {
    comment
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_COMMENT_LEN)
        .collect()
}

/// Whether an interface name is one the kernel and iptables both accept (1..=15 characters
/// of letters, digits, `.`, `_`, `-`), so it can go into rule text unquoted.
pub fn valid_iface(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The table a ruleset's chains live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `filter`: policy.
    Filter,
    /// `nat`: natOutgoing.
    Nat,
    /// `raw`: doNotTrack policy (before connection tracking).
    Raw,
    /// `mangle`: preDNAT policy (before DNAT).
    Mangle,
}

impl Table {
    /// The table's name as the tools spell it.
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
            Table::Raw => "raw",
            Table::Mangle => "mangle",
        }
    }
}

/// FNV-1a: a fixed, seedless 64-bit hash, so the same rule hashes the same in every process
/// and release (the kernel keeps the hash in the rule's comment across restarts).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The prefix of the hash tag every rule's comment starts with (`h:` + 16 hex digits).
const HASH_TAG: &str = "h:";

/// The hash a rendered rule carries in its comment: what read-back compares, because
/// `iptables-save` prints a rule in its own normal form, never the text we wrote.
pub fn rule_hash(r: &IptRule, v6: bool) -> u64 {
    fnv1a(&[&render_body(r, v6), &r.comment])
}

/// The hash at the start of a rule comment as read back from the kernel, if it has one.
pub fn hash_in_comment(comment: &str) -> Option<u64> {
    let hex = comment.strip_prefix(HASH_TAG)?.get(..16)?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Renders one rule's arguments (after `-A CHAIN`): the comment, with the rule's hash in
/// front, then the matches and the target.
pub fn render_rule(r: &IptRule, v6: bool) -> String {
    let body = render_body(r, v6);
    let hash = fnv1a(&[&body, &r.comment]);
    let comment = comment_text(&format!("{HASH_TAG}{hash:016x} {}", r.comment));
    format!("-m comment --comment \"{comment}\" {body}")
}

/// The matches and the target, as `iptables-restore` reads them.
fn render_body(r: &IptRule, v6: bool) -> String {
    let mut out = String::new();
    for m in &r.matches {
        out.push_str(if out.is_empty() { "" } else { " " });
        match m {
            Match::InIface(i) => {
                let _ = write!(out, "-i {i}");
            }
            Match::OutIface(i) => {
                let _ = write!(out, "-o {i}");
            }
            Match::Protocol(p, n) => {
                let _ = write!(out, "{}-p {p}", neg(*n));
            }
            Match::SrcNet(net, n) => {
                let _ = write!(out, "{}-s {net}", neg(*n));
            }
            Match::DstNet(net, n) => {
                let _ = write!(out, "{}-d {net}", neg(*n));
            }
            Match::SrcSet(s, n) => {
                let _ = write!(out, "-m set {}--match-set {s} src", neg(*n));
            }
            Match::DstSet(s, n) => {
                let _ = write!(out, "-m set {}--match-set {s} dst", neg(*n));
            }
            Match::DstIpPortSet(s, n) => {
                let _ = write!(out, "-m set {}--match-set {s} dst,dst", neg(*n));
            }
            Match::SrcPorts(p, n) => {
                let _ = write!(out, "-m multiport {}--sports {}", neg(*n), ports(p));
            }
            Match::DstPorts(p, n) => {
                let _ = write!(out, "-m multiport {}--dports {}", neg(*n), ports(p));
            }
            Match::Mark(v, m) => {
                let _ = write!(out, "-m mark --mark {v:#x}/{m:#x}");
            }
            Match::Icmp(t, c, n, is_v6) => {
                let code = c.map(|c| format!("/{c}")).unwrap_or_default();
                if *is_v6 || v6 {
                    let _ = write!(out, "-m icmp6 {}--icmpv6-type {t}{code}", neg(*n));
                } else {
                    let _ = write!(out, "-m icmp {}--icmp-type {t}{code}", neg(*n));
                }
            }
            Match::Established => out.push_str("-m conntrack --ctstate RELATED,ESTABLISHED"),
            Match::Invalid => out.push_str("-m conntrack --ctstate INVALID"),
            Match::Untracked => out.push_str("-m conntrack --ctstate UNTRACKED"),
        }
    }
    if !out.is_empty() {
        out.push(' ');
    }
    match &r.target {
        Target::Accept => out.push_str("-j ACCEPT"),
        Target::Drop => out.push_str("-j DROP"),
        Target::Return => out.push_str("-j RETURN"),
        Target::Jump(c) => {
            let _ = write!(out, "-j {c}");
        }
        Target::Goto(c) => {
            let _ = write!(out, "-g {c}");
        }
        Target::SetMark(v, m) => {
            let _ = write!(out, "-j MARK --set-xmark {v:#x}/{m:#x}");
        }
        Target::Log(p) => {
            let _ = write!(out, "-j LOG --log-prefix \"{p}\"");
        }
        Target::Masquerade => out.push_str("-j MASQUERADE --random-fully"),
        Target::NoTrack => out.push_str("-j CT --notrack"),
    }
    out
}

/// `iptables-restore --noflush` input for `table` that rewrites `chains` (declaring a chain
/// flushes it) and deletes `removed` (after the rewrite drops every reference to them).
pub fn render_restore(table: Table, chains: &Chains, removed: &[String], v6: bool) -> String {
    let mut out = format!("*{}\n", table.name());
    for name in chains.keys().chain(removed) {
        let _ = writeln!(out, ":{name} - [0:0]");
    }
    for (name, rules) in chains {
        for r in rules.iter() {
            let _ = writeln!(out, "-A {name} {}", render_rule(r, v6));
        }
    }
    for name in removed {
        let _ = writeln!(out, "-X {name}");
    }
    out.push_str("COMMIT\n");
    out
}

/// The scratch set a full rewrite is built in (one per type and family; destroyed after
/// each swap, so one name serves every set).
fn temp_set_name(kind: SetKind, v6: bool) -> String {
    let k = match kind {
        SetKind::Net => 'n',
        SetKind::IpPort => 'p',
    };
    format!("serval-tmp-{k}{}", if v6 { 6 } else { 4 })
}

fn set_type(kind: SetKind) -> &'static str {
    match kind {
        SetKind::Net => "hash:net",
        SetKind::IpPort => "hash:ip,port",
    }
}

/// `ipset restore` input: applies membership changes (`add`/`del`) to sets we know, builds
/// the others (new, or unknown after a restart or a refresh) in a temporary set and `swap`s
/// it in, so a live set is never empty or partial in between (a Deny or a negated match
/// would fail open for that moment), and (in a second text, applied after iptables no longer
/// refers to them) destroys removed ones.
pub fn render_ipsets(
    old: &BTreeMap<String, IpSet>,
    new: &BTreeMap<String, IpSet>,
    v6: bool,
) -> (String, String) {
    let family = if v6 { "inet6" } else { "inet" };
    let mut before = String::new();
    let mut after = String::new();
    for (name, set) in new {
        match old.get(name) {
            Some(o) if o.kind == set.kind => {
                for m in set.members.difference(&o.members) {
                    let _ = writeln!(before, "add {name} {m} -exist");
                }
                for m in o.members.difference(&set.members) {
                    let _ = writeln!(before, "del {name} {m} -exist");
                }
            }
            _ => {
                let kind = set_type(set.kind);
                let tmp = temp_set_name(set.kind, v6);
                let _ = writeln!(before, "create {tmp} {kind} family {family} -exist");
                let _ = writeln!(before, "flush {tmp}");
                for m in &set.members {
                    let _ = writeln!(before, "add {tmp} {m} -exist");
                }
                let _ = writeln!(before, "create {name} {kind} family {family} -exist");
                let _ = writeln!(before, "swap {tmp} {name}");
                let _ = writeln!(before, "destroy {tmp}");
            }
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        let _ = writeln!(after, "destroy {name}");
    }
    (before, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_render_as_iptables_restore_expects() {
        let r = IptRule::new(
            vec![
                Match::Protocol(6, false),
                Match::SrcSet("serval40s:abc".into(), false),
                Match::DstPorts(
                    vec![
                        PortRange {
                            first: 80,
                            last: 80,
                        },
                        PortRange {
                            first: 8000,
                            last: 8080,
                        },
                    ],
                    false,
                ),
            ],
            Target::SetMark(MARK_ACCEPT, MARK_ACCEPT),
            "serval:allow web",
        );
        let hash = rule_hash(&r, false);
        assert_eq!(
            render_rule(&r, false),
            format!(
                "-m comment --comment \"h:{hash:016x} serval:allow web\" -p 6 -m set --match-set \
                 serval40s:abc src -m multiport --dports 80,8000:8080 -j MARK --set-xmark \
                 0x10000/0x10000"
            )
        );
        let mut chains = BTreeMap::new();
        chains.insert("serval-pi-x".to_string(), Arc::new(vec![r]));
        let text = render_restore(Table::Filter, &chains, &["serval-pi-old".into()], false);
        assert!(text.starts_with("*filter\n:serval-pi-x - [0:0]\n:serval-pi-old - [0:0]\n"));
        assert!(text.ends_with("-X serval-pi-old\nCOMMIT\n"));
    }

    #[test]
    fn a_rule_hash_follows_its_content_and_is_read_back_from_its_comment() {
        let r = IptRule::new(
            vec![Match::Protocol(6, false)],
            Target::Accept,
            "ns/p rule 0",
        );
        let same = r.clone();
        let mut other = r.clone();
        other.target = Target::Drop;
        assert_eq!(rule_hash(&r, false), rule_hash(&same, false));
        assert_ne!(rule_hash(&r, false), rule_hash(&other, false));
        // The family changes the text (icmp vs icmp6), so it is part of the hash.
        let icmp = IptRule::new(
            vec![Match::Icmp(8, None, false, false)],
            Target::Accept,
            "x",
        );
        assert_ne!(rule_hash(&icmp, false), rule_hash(&icmp, true));
        // As iptables-save prints it: the comment is quoted and may move within the rule.
        let line = render_rule(&r, false);
        let comment = line.split('"').nth(1).unwrap();
        assert_eq!(hash_in_comment(comment), Some(rule_hash(&r, false)));
        assert_eq!(hash_in_comment("serval:hook"), None);
        assert_eq!(hash_in_comment("h:12zz"), None);
        // A comment cut to the kernel's limit keeps its hash (it comes first).
        let long = IptRule::new(vec![], Target::Drop, "n".repeat(400));
        let line = render_rule(&long, false);
        let comment = line.split('"').nth(1).unwrap();
        assert_eq!(comment.len(), MAX_COMMENT_LEN);
        assert_eq!(hash_in_comment(comment), Some(rule_hash(&long, false)));
    }

    #[test]
    fn ipset_updates_are_incremental() {
        let set = |members: &[&str]| IpSet {
            kind: SetKind::Net,
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        let mut old = BTreeMap::new();
        old.insert("a".to_string(), set(&["10.0.0.1", "10.0.0.2"]));
        old.insert("gone".to_string(), set(&[]));
        let mut new = BTreeMap::new();
        new.insert("a".to_string(), set(&["10.0.0.2", "10.0.0.3"]));
        new.insert("b".to_string(), set(&["10.0.1.0/24"]));
        let (before, after) = render_ipsets(&old, &new, false);
        assert_eq!(
            before,
            "add a 10.0.0.3 -exist\ndel a 10.0.0.1 -exist\n\
             create serval-tmp-n4 hash:net family inet -exist\nflush serval-tmp-n4\n\
             add serval-tmp-n4 10.0.1.0/24 -exist\ncreate b hash:net family inet -exist\n\
             swap serval-tmp-n4 b\ndestroy serval-tmp-n4\n"
        );
        assert_eq!(after, "destroy gone\n");
        // A full rewrite (nothing known: after a restart or refresh) never flushes a live set.
        let (before, _) = render_ipsets(&BTreeMap::new(), &new, true);
        assert!(
            !before.contains("flush a\n") && !before.contains("flush b\n"),
            "{before}"
        );
        assert!(before.contains("swap serval-tmp-n6 a\n"), "{before}");
    }

    #[test]
    fn comments_and_interface_names_cannot_break_the_restore_text() {
        let evil = format!(
            "serval:ns/\"x\"\nCOMMIT\n-A INPUT -j ACCEPT \\ {}",
            "é".repeat(300)
        );
        let c = comment_text(&evil);
        assert!(c.len() <= MAX_COMMENT_LEN);
        assert!(
            c.chars().all(|ch| ch.is_ascii_graphic() || ch == ' '),
            "{c}"
        );
        assert!(
            !c.contains('"') && !c.contains('\\') && !c.contains('\n'),
            "{c}"
        );
        let r = IptRule::new(vec![], Target::Drop, &evil);
        let line = render_rule(&r, false);
        assert_eq!(line.matches('"').count(), 2, "{line}");
        assert!(valid_iface("sv1a2b3c4d5e6f7"));
        for bad in ["", "sv1a2b3c4d5e6f78", "sv x", "sv\"", "sv;drop", "sv\n"] {
            assert!(!valid_iface(bad), "{bad:?}");
        }
    }
}
