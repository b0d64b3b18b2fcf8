//! Policy ipsets on a real kernel, in a namespace of the test's own: a full rewrite (what
//! happens after a restart or a refresh, when nothing is known) swaps a filled set in, so a
//! set an iptables rule refers to keeps its common members throughout and ends exact.

use std::collections::{BTreeMap, BTreeSet};

use serval_integration::{Netns, require};
use serval_policy::ipt::{IpSet, SetKind, render_ipsets};

fn set(members: &[&str]) -> IpSet {
    IpSet {
        kind: SetKind::Net,
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

fn restore(ns: &Netns, text: &str) {
    let out = serval_integration::cni::run_with_stdin(
        std::process::Command::new("ip").args(["netns", "exec", ns.name(), "ipset", "restore"]),
        text,
    );
    assert!(
        out.status.success(),
        "ipset restore failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn members(ns: &Netns, name: &str) -> BTreeSet<String> {
    let out = ns.output(&["ipset", "list", name]).unwrap();
    out.lines()
        .skip_while(|l| !l.starts_with("Members:"))
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn a_full_rewrite_swaps_a_referenced_set_and_never_flushes_it() {
    if !require::lab_ready(
        "a_full_rewrite_swaps_a_referenced_set_and_never_flushes_it",
        &["ipset", "iptables"],
    ) {
        return;
    }
    let ns = Netns::new("ipset").unwrap();
    let name = "serval40s:testset";
    let mut first = BTreeMap::new();
    first.insert(name.to_string(), set(&["10.0.0.1", "10.0.0.2"]));
    let (text, _) = render_ipsets(&BTreeMap::new(), &first, false);
    restore(&ns, &text);
    // A rule refers to the set, as a policy chain does (a referenced set cannot be
    // destroyed or recreated, only swapped).
    ns.exec(&[
        "iptables",
        "-w",
        "-A",
        "INPUT",
        "-m",
        "set",
        "--match-set",
        name,
        "src",
        "-j",
        "DROP",
    ])
    .unwrap();
    // The agent restarted (nothing known): the full rewrite must not empty the live set.
    let mut second = BTreeMap::new();
    second.insert(name.to_string(), set(&["10.0.0.2", "10.0.0.3"]));
    let (text, _) = render_ipsets(&BTreeMap::new(), &second, false);
    assert!(!text.contains(&format!("flush {name}")), "{text}");
    restore(&ns, &text);
    assert_eq!(
        members(&ns, name),
        ["10.0.0.2", "10.0.0.3"].map(String::from).into()
    );
    let all = ns.output(&["ipset", "list", "-n"]).unwrap();
    assert!(
        !all.contains("serval-tmp"),
        "scratch set left behind: {all}"
    );
    let rules = ns.output(&["iptables", "-w", "-S", "INPUT"]).unwrap();
    assert!(rules.contains(name), "{rules}");
    // And again (the scratch name is reused).
    restore(&ns, &render_ipsets(&BTreeMap::new(), &first, false).0);
    assert_eq!(
        members(&ns, name),
        ["10.0.0.1", "10.0.0.2"].map(String::from).into()
    );
}
