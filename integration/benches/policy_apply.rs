//! Policy at scale: 1,000 policies over 1,000 local endpoints. Measures, in one run and in a
//! namespace the bench creates:
//! - full compile (IPv4) and full apply through the firewall manager (read-back of the
//!   empty tables, ipsets, one iptables-restore --noflush, hooks), next to a plain `ipset restore` + `iptables-restore`
//!   of exactly the same rules and sets in a fresh namespace;
//! - one pod-label change: recompile + apply of the difference (sets and chains touched);
//! - the number of rules and sets.
//!
//! Run: `cargo bench -p serval-integration --bench policy_apply` (or `bench/policy`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serval_agent::dataplane::firewall::{Backend, FamilyRules, FirewallManager, FirewallRules};
use serval_integration::{Netns, require};
use serval_policy::compile::{Endpoint, NamedPort, PolicyDef, PolicyInputs, compile};
use serval_policy::ipt::{Ruleset, Table, render_ipsets, render_restore};
use serval_policy::model::{Action, EntityRule, IntOrString, PolicyType, Rule};
use serval_policy::{Labels, Selector};

const ENDPOINTS: usize = 1000;
const POLICIES: usize = 1000;
const APPS: usize = 100;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn inputs() -> PolicyInputs {
    let mut namespaces = BTreeMap::new();
    for n in 0..10 {
        namespaces.insert(format!("ns{n}"), labels(&[("team", format!("t{}", n % 3))]));
    }
    let local = (0..ENDPOINTS)
        .map(|i| Endpoint {
            namespace: format!("ns{}", i % 10),
            name: format!("pod{i}"),
            iface: format!("sv{i:011x}"),
            addrs: vec![IpAddr::from([10, 90, (i / 250) as u8, (i % 250) as u8 + 1])],
            labels: labels(&[
                ("app", format!("app{}", i % APPS)),
                ("tier", format!("tier{}", i % 4)),
            ]),
            ports: vec![NamedPort {
                name: "http".into(),
                protocol: 6,
                port: 8080,
            }],
        })
        .collect();
    let policies = (0..POLICIES)
        .map(|i| {
            let rule = |sel: String, ns_sel: Option<String>, ports: Vec<IntOrString>| Rule {
                action: Action::Allow,
                ip_version: None,
                protocol: Some(IntOrString::String("TCP".into())),
                not_protocol: None,
                icmp: None,
                not_icmp: None,
                source: EntityRule {
                    selector: Some(sel),
                    namespace_selector: ns_sel,
                    ..EntityRule::default()
                },
                destination: EntityRule {
                    ports,
                    ..EntityRule::default()
                },
            };
            PolicyDef {
                name: format!("policy-{i}"),
                namespace: Some(format!("ns{}", i % 10)),
                order: Some(f64::from(i as u32 % 7)),
                selector: Selector::parse(&format!("app == 'app{}'", i % APPS)).unwrap(),
                namespace_selector: None,
                types: vec![PolicyType::Ingress],
                ingress: vec![
                    rule(
                        format!("app == 'app{}'", (i * 7) % APPS),
                        None,
                        vec![IntOrString::Int(80)],
                    ),
                    rule(
                        format!("tier == 'tier{}'", i % 4),
                        Some(format!("team == 't{}'", i % 3)),
                        vec![
                            IntOrString::String("http".into()),
                            IntOrString::String("9000:9100".into()),
                        ],
                    ),
                ],
                egress: vec![],
            }
        })
        .collect();
    PolicyInputs {
        local,
        remote: vec![],
        namespaces,
        policies,
        hosts: vec![],
    }
}

fn plain_restore(ns: &Netns, rs: &Ruleset) -> Duration {
    let dir = serval_integration::peers::Scratch::new("policybench");
    let (sets, _) = render_ipsets(&BTreeMap::new(), &rs.sets, false);
    let rules = render_restore(Table::Filter, &rs.chains, &[], false);
    std::fs::write(dir.path("sets"), sets).unwrap();
    std::fs::write(dir.path("rules"), rules).unwrap();
    let t = Instant::now();
    ns.exec(&[
        "sh",
        "-c",
        &format!("ipset restore < {}", dir.path("sets").display()),
    ])
    .expect("ipset restore");
    ns.exec(&[
        "sh",
        "-c",
        &format!(
            "iptables-nft-restore --noflush < {}",
            dir.path("rules").display()
        ),
    ])
    .expect("iptables-restore");
    t.elapsed()
}

/// Runs `f` on a thread inside `ns` with its own runtime (the tools it spawns inherit the
/// namespace).
fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if !require::lab_ready("policy_apply bench", &["iptables-nft-restore", "ipset"]) {
        return;
    }
    let mut w = inputs();
    let t = Instant::now();
    let v4 = compile(&w, false);
    let compile_full = t.elapsed();
    let rules: usize = v4.chains.values().map(Vec::len).sum();
    let members: usize = v4.sets.values().map(|s| s.members.len()).sum();

    let plain_ns = Netns::new("polplain").unwrap();
    let plain = plain_restore(&plain_ns, &v4);

    let ns = Netns::new("polbench").unwrap();
    let v4c = v4.clone();
    let (full, report, label_change) = in_ns(&ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut m = FirewallManager::new(Backend::Nft);
            let rules = |v4: Ruleset| FirewallRules {
                v4: FamilyRules::new(v4, Ruleset::default()),
                v6: FamilyRules::default(),
            };
            let t = Instant::now();
            let report = m.apply(&rules(v4c)).await.expect("full apply");
            let full = t.elapsed();
            // One pod changes its app label: its own chains and the sets that select it.
            w.local[17].labels.insert("app".into(), "app42".into());
            let t = Instant::now();
            let v4b = compile(&w, false);
            let compile_again = t.elapsed();
            let t = Instant::now();
            let inc = m.apply(&rules(v4b)).await.expect("incremental apply");
            (full, report, (compile_again, t.elapsed(), inc))
        })
    });
    let (compile_again, apply_inc, inc) = label_change;
    println!("policy: {POLICIES} policies over {ENDPOINTS} local endpoints (IPv4)");
    println!(
        "  compiled: {} chains, {rules} rules, {} ipsets with {members} members",
        v4.chains.len(),
        v4.sets.len()
    );
    println!(
        "  full compile:                      {:>8.1} ms",
        ms(compile_full)
    );
    println!(
        "  full apply (firewall manager):     {:>8.1} ms  ({} chains, {} sets written)",
        ms(full),
        report.chains_written,
        report.sets_changed
    );
    println!("  plain ipset + iptables-restore:    {:>8.1} ms", ms(plain));
    println!(
        "  full compile+apply / plain restore: {:.2}x",
        (compile_full + full).as_secs_f64() / plain.as_secs_f64()
    );
    println!(
        "  one label change: compile {:.1} ms + apply {:.1} ms = {:.1} ms; wrote {} chains, {} sets",
        ms(compile_again),
        ms(apply_inc),
        ms(compile_again + apply_inc),
        inc.chains_written,
        inc.sets_changed
    );
}
