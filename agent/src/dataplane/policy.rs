//! The policy manager: keeps the kernel's Serval chains and ipsets equal to the compiled
//! rulesets (IPv4 and IPv6), writing only what changed, in Felix's order: ipsets first, then
//! one atomic `iptables-restore --noflush` of the changed chains (declaring a chain rewrites
//! only it; nothing else in the table is touched), the single-jump hooks from FORWARD and
//! INPUT, and last the ipsets nothing refers to any more. A failed write forgets what it
//! knew so the next apply rewrites everything.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serval_policy::ipt::{IptRule, Ruleset, render_ipsets, render_restore};

use super::DataplaneError;
use super::nat::{Backend, run_tool};

/// The hooks: (kernel chain, our chain).
pub const HOOKS: [(&str, &str); 2] = [("FORWARD", "serval-FORWARD"), ("INPUT", "serval-INPUT")];
/// The comment on each hook rule.
pub const HOOK_COMMENT: &str = "serval:hook";

/// What one apply wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// Chains rewritten.
    pub chains_written: usize,
    /// Chains deleted.
    pub chains_deleted: usize,
    /// ipsets created or changed.
    pub sets_changed: usize,
    /// ipsets destroyed.
    pub sets_deleted: usize,
    /// Wall time of the kernel writes.
    pub took: Duration,
}

/// One family's applied state.
#[derive(Default)]
struct Applied {
    chains: BTreeMap<String, Vec<IptRule>>,
    sets: BTreeMap<String, serval_policy::ipt::IpSet>,
    hooked: bool,
}

/// Owns Serval's filter-table state for both families.
pub struct PolicyManager {
    backend: Backend,
    v4: Applied,
    v6: Applied,
}

fn restore_bin(backend: Backend, v6: bool) -> &'static str {
    match (backend, v6) {
        (Backend::Nft, false) => "iptables-nft-restore",
        (Backend::Nft, true) => "ip6tables-nft-restore",
        (Backend::Legacy, false) => "iptables-legacy-restore",
        (Backend::Legacy, true) => "ip6tables-legacy-restore",
    }
}

fn tables_bin(backend: Backend, v6: bool) -> &'static str {
    match (backend, v6) {
        (Backend::Nft, false) => "iptables-nft",
        (Backend::Nft, true) => "ip6tables-nft",
        (Backend::Legacy, false) => "iptables-legacy",
        (Backend::Legacy, true) => "ip6tables-legacy",
    }
}

impl PolicyManager {
    /// A manager that has written nothing yet (its first apply writes everything).
    pub fn new(backend: Backend) -> Self {
        PolicyManager {
            backend,
            v4: Applied::default(),
            v6: Applied::default(),
        }
    }

    /// Forgets what was applied: the next apply rewrites every chain and set (periodic
    /// refresh, or after an error).
    pub fn forget(&mut self) {
        self.v4 = Applied::default();
        self.v6 = Applied::default();
    }

    /// Makes the kernel match `v4` and `v6`.
    pub async fn apply(
        &mut self,
        v4: &Ruleset,
        v6: &Ruleset,
    ) -> Result<PolicyReport, DataplaneError> {
        let start = Instant::now();
        let mut report = PolicyReport::default();
        for (want, is_v6) in [(v4, false), (v6, true)] {
            let r = self.apply_family(want, is_v6).await;
            match r {
                Ok(part) => {
                    report.chains_written += part.chains_written;
                    report.chains_deleted += part.chains_deleted;
                    report.sets_changed += part.sets_changed;
                    report.sets_deleted += part.sets_deleted;
                }
                Err(e) => {
                    self.forget();
                    return Err(e);
                }
            }
        }
        report.took = start.elapsed();
        Ok(report)
    }

    async fn apply_family(
        &mut self,
        want: &Ruleset,
        v6: bool,
    ) -> Result<PolicyReport, DataplaneError> {
        let backend = self.backend;
        let applied = if v6 { &mut self.v6 } else { &mut self.v4 };
        let mut report = PolicyReport::default();
        let (before, after) = render_ipsets(&applied.sets, &want.sets, v6);
        report.sets_changed = want
            .sets
            .iter()
            .filter(|(k, v)| applied.sets.get(*k) != Some(v))
            .count();
        report.sets_deleted = applied
            .sets
            .keys()
            .filter(|k| !want.sets.contains_key(*k))
            .count();
        if !before.is_empty() {
            run_tool("ipset", &["restore"], Some(&before)).await?;
        }
        let changed: BTreeMap<String, Vec<IptRule>> = want
            .chains
            .iter()
            .filter(|(k, v)| applied.chains.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let removed: Vec<String> = applied
            .chains
            .keys()
            .filter(|k| !want.chains.contains_key(*k))
            .cloned()
            .collect();
        report.chains_written = changed.len();
        report.chains_deleted = removed.len();
        if !changed.is_empty() || !removed.is_empty() {
            let text = render_restore(&changed, &removed, v6);
            run_tool(
                restore_bin(backend, v6),
                &["--noflush", "--wait"],
                Some(&text),
            )
            .await?;
        }
        if !applied.hooked {
            // Only hook chains that exist (an empty ruleset has none to jump to).
            for (kernel, ours) in HOOKS.iter().filter(|(_, c)| want.chains.contains_key(*c)) {
                let rule = ["-m", "comment", "--comment", HOOK_COMMENT, "-j", *ours];
                let mut check = vec!["--wait", "-t", "filter", "-C", *kernel];
                check.extend(rule);
                if run_tool(tables_bin(backend, v6), &check, None)
                    .await
                    .is_err()
                {
                    let mut insert = vec!["--wait", "-t", "filter", "-I", *kernel, "1"];
                    insert.extend(rule);
                    run_tool(tables_bin(backend, v6), &insert, None).await?;
                }
            }
            applied.hooked = HOOKS.iter().all(|(_, c)| want.chains.contains_key(*c));
        }
        if !after.is_empty() {
            run_tool("ipset", &["restore"], Some(&after)).await?;
        }
        applied.chains = want.chains.clone();
        applied.sets = want.sets.clone();
        Ok(report)
    }
}
