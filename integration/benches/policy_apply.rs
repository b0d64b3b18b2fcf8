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
use std::time::{Duration, Instant};

use serval_agent::dataplane::firewall::{Backend, FamilyRules, FirewallManager, FirewallRules};
use serval_integration::{Netns, require};
use serval_policy::compile::compile;
use serval_policy::fixtures::{ENDPOINTS, POLICIES};
use serval_policy::ipt::{Ruleset, Table, render_ipsets, render_restore};

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
    let mut w = serval_policy::fixtures::cluster();
    let t = Instant::now();
    let v4 = compile(&w, false);
    let compile_full = t.elapsed();
    let rules: usize = v4.chains.values().map(|c| c.len()).sum();
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
            // One pod changes its app label: its own chains and the sets that select it,
            // compiled as the agent does (patching its last compile).
            let mut compiler = serval_policy::compile::IncrementalCompiler::new(false);
            compiler.update(&w);
            w.local[17].labels.insert("app".into(), "app42".into());
            let t = Instant::now();
            let v4b = compiler.update(&w).clone();
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
