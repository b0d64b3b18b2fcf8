//! The firewall manager: owns every `serval-` chain (filter and nat tables, IPv4 and IPv6),
//! every `serval` ipset and the commented jumps that hook our chains into the kernel's, and
//! keeps them equal to what calc wants, Felix's way:
//!
//! - **incremental apply** when it knows what the kernel holds: ipsets first (members added
//!   and removed, a new set built aside and swapped in), then one `iptables-restore
//!   --noflush` per table of the changed and removed chains, hooks, and last the sets nothing
//!   refers to any more;
//! - **read-back passes** at start-up (and after any failed write, when it no longer knows):
//!   `iptables-save` and `ipset save` are compared with what is wanted, rule by rule through
//!   the hash in each rule's comment, and only the difference is written; stale chains, sets
//!   and hooks of ours are removed; anything not ours is never touched;
//! - **resync** on a timer: the same read-back against what it last wrote; what it finds
//!   wrong is repaired and counted as drift.
//!
//! No chain or set is ever flushed while live (chains are replaced atomically, sets swapped),
//! so a resync never opens a gap.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serval_policy::ipt::{
    Chains, IpSet, Ruleset, SetKind, Table, render_ipsets, render_restore, rule_hash,
};

use super::readback::{HOOK_COMMENT, SetState, TableState, parse_sets, parse_table, set_matches};
use super::tools::{Backend, SystemTools, ToolRunner};
use crate::dataplane::DataplaneError;

/// The hooks: (table, kernel chain, our chain). A hook exists while our chain does.
pub const HOOKS: [(Table, &str, &str); 7] = [
    (Table::Filter, "FORWARD", "serval-FORWARD"),
    (Table::Filter, "INPUT", "serval-INPUT"),
    (Table::Filter, "OUTPUT", "serval-OUTPUT"),
    (Table::Nat, "POSTROUTING", "serval-POSTROUTING"),
    (Table::Raw, "PREROUTING", "serval-PREROUTING"),
    (Table::Raw, "OUTPUT", "serval-OUTPUT"),
    (Table::Mangle, "PREROUTING", "serval-PREROUTING"),
];

/// The tables the manager writes.
const TABLES: [Table; 4] = [Table::Filter, Table::Nat, Table::Raw, Table::Mangle];

/// What Serval wants in one family's tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyRules {
    /// filter-table chains (policy).
    pub filter: Chains,
    /// nat-table chains (natOutgoing).
    pub nat: Chains,
    /// raw-table chains (doNotTrack policy).
    pub raw: Chains,
    /// mangle-table chains (preDNAT policy).
    pub mangle: Chains,
    /// Every ipset either refers to.
    pub sets: BTreeMap<String, IpSet>,
}

impl FamilyRules {
    /// Policy's filter ruleset and natOutgoing's nat ruleset, as one family's state.
    pub fn new(filter: Ruleset, nat: Ruleset) -> FamilyRules {
        let mut sets = filter.sets;
        sets.extend(nat.sets);
        FamilyRules {
            filter: filter.chains,
            nat: nat.chains,
            raw: filter.raw,
            mangle: filter.mangle,
            sets,
        }
    }

    fn chains(&self, table: Table) -> &Chains {
        match table {
            Table::Filter => &self.filter,
            Table::Nat => &self.nat,
            Table::Raw => &self.raw,
            Table::Mangle => &self.mangle,
        }
    }

    /// The hooks these chains need: (kernel chain, our chain) per table.
    fn hooks(&self, table: Table) -> Vec<(&'static str, &'static str)> {
        HOOKS
            .iter()
            .filter(|(t, _, ours)| *t == table && self.chains(table).contains_key(*ours))
            .map(|(_, kernel, ours)| (*kernel, *ours))
            .collect()
    }
}

/// Both families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallRules {
    /// IPv4.
    pub v4: FamilyRules,
    /// IPv6.
    pub v6: FamilyRules,
}

/// What a pass found wrong in the kernel and put right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repairs {
    /// Chains rewritten (missing or altered) or removed (ours, not wanted).
    pub chains: usize,
    /// Sets rebuilt (missing or altered) or destroyed (ours, not wanted).
    pub sets: usize,
    /// Hooks inserted (missing) or deleted (stale or duplicated).
    pub hooks: usize,
}

impl Repairs {
    /// Whether nothing was found wrong.
    pub fn is_empty(&self) -> bool {
        *self == Repairs::default()
    }

    fn add(&mut self, other: Repairs) {
        self.chains += other.chains;
        self.sets += other.sets;
        self.hooks += other.hooks;
    }
}

/// What one apply or resync wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallReport {
    /// Chains rewritten.
    pub chains_written: usize,
    /// Chains deleted.
    pub chains_deleted: usize,
    /// ipsets created or changed.
    pub sets_changed: usize,
    /// ipsets destroyed.
    pub sets_deleted: usize,
    /// Read-back passes only: what the kernel had wrong.
    pub repairs: Repairs,
    /// Wall time of the kernel reads and writes.
    pub took: Duration,
}

impl FirewallReport {
    fn add(&mut self, other: &FirewallReport) {
        self.chains_written += other.chains_written;
        self.chains_deleted += other.chains_deleted;
        self.sets_changed += other.sets_changed;
        self.sets_deleted += other.sets_deleted;
        self.repairs.add(other.repairs);
    }
}

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The kernel refused these chains (each written alone); the rest was written.
    #[error("iptables-restore refused chains {chains:?}: {first_error}")]
    Refused {
        /// The chains refused.
        chains: Vec<String>,
        /// The first refusal's message.
        first_error: String,
    },
    /// Anything else (a tool missing or failing): not tied to one object.
    #[error(transparent)]
    Other(#[from] DataplaneError),
}

/// Owns Serval's iptables and ipset state for both families.
pub struct FirewallManager<T: ToolRunner = SystemTools> {
    backend: Backend,
    tools: T,
    /// What each family's kernel state is known to be (IPv4, IPv6); None: not known (start,
    /// or after a failed write), so the next apply reads the kernel back first.
    applied: [Option<FamilyRules>; 2],
}

impl FirewallManager<SystemTools> {
    /// A manager that knows nothing yet: its first apply reads the kernel back, sweeps what
    /// is stale and writes only what differs.
    pub fn new(backend: Backend) -> Self {
        FirewallManager::with_tools(backend, SystemTools)
    }
}

impl<T: ToolRunner> FirewallManager<T> {
    /// A manager running its tools through `tools`.
    pub fn with_tools(backend: Backend, tools: T) -> Self {
        FirewallManager {
            backend,
            tools,
            applied: [None, None],
        }
    }

    /// Makes the kernel match `want`: incrementally where the kernel's state is known,
    /// through a read-back pass where it is not.
    pub async fn apply(&mut self, want: &FirewallRules) -> Result<FirewallReport, FirewallError> {
        let start = Instant::now();
        let mut report = FirewallReport::default();
        let mut sets = None;
        for (i, family) in [&want.v4, &want.v6].into_iter().enumerate() {
            let v6 = i == 1;
            let part = match self.applied[i].take() {
                Some(old) => self.write_difference(&old, family, v6).await,
                None => self.read_back_and_repair(family, v6, &mut sets).await,
            }?;
            self.applied[i] = Some(family.clone());
            report.add(&part);
        }
        report.took = start.elapsed();
        Ok(report)
    }

    /// Reads the kernel back and repairs whatever differs from what was last written
    /// (drift: a chain, set or hook altered, added or removed by someone else).
    pub async fn resync(&mut self) -> Result<FirewallReport, FirewallError> {
        let start = Instant::now();
        let mut report = FirewallReport::default();
        let mut sets = None;
        for i in 0..2 {
            let Some(family) = self.applied[i].take() else {
                continue; // not known: the next apply reads it back anyway
            };
            let part = self
                .read_back_and_repair(&family, i == 1, &mut sets)
                .await?;
            self.applied[i] = Some(family);
            report.add(&part);
        }
        report.took = start.elapsed();
        Ok(report)
    }

    /// The incremental write from a known state.
    async fn write_difference(
        &self,
        old: &FamilyRules,
        want: &FamilyRules,
        v6: bool,
    ) -> Result<FirewallReport, FirewallError> {
        let mut report = FirewallReport::default();
        let (before, after) = render_ipsets(&old.sets, &want.sets, v6);
        report.sets_changed = want
            .sets
            .iter()
            .filter(|(k, v)| old.sets.get(*k) != Some(v))
            .count();
        report.sets_deleted = old
            .sets
            .keys()
            .filter(|k| !want.sets.contains_key(*k))
            .count();
        self.ipset(&before).await?;
        for table in TABLES {
            let (old_chains, want_chains) = (old.chains(table), want.chains(table));
            let (old_hooks, want_hooks) = (old.hooks(table), want.hooks(table));
            for &(kernel, ours) in old_hooks.iter().filter(|h| !want_hooks.contains(h)) {
                self.delete_hook(table, kernel, ours, v6).await?;
            }
            let changed: Chains = want_chains
                .iter()
                .filter(|(k, v)| old_chains.get(*k) != Some(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let removed: Vec<String> = old_chains
                .keys()
                .filter(|k| !want_chains.contains_key(*k))
                .cloned()
                .collect();
            report.chains_written += changed.len();
            report.chains_deleted += removed.len();
            self.restore(table, &changed, &removed, v6).await?;
            for &(kernel, ours) in want_hooks.iter().filter(|h| !old_hooks.contains(h)) {
                self.ensure_hook(table, kernel, ours, v6).await?;
            }
        }
        self.ipset(&after).await?;
        Ok(report)
    }

    /// Reads the kernel back, writes what differs from `want` and removes what is ours and
    /// not wanted; the report's `repairs` says what was found wrong. `sets` is `ipset save`
    /// as read by the first family's pass of the same call (one family's writes never touch
    /// the other's sets, so one read serves both).
    async fn read_back_and_repair(
        &self,
        want: &FamilyRules,
        v6: bool,
        sets: &mut Option<BTreeMap<String, SetState>>,
    ) -> Result<FirewallReport, FirewallError> {
        let mut report = FirewallReport::default();
        if sets.is_none() {
            *sets = Some(parse_sets(&self.tools.run("ipset", &["save"], None).await?));
        }
        let actual_sets: BTreeMap<String, SetState> = sets
            .iter()
            .flatten()
            .filter(|(_, s)| s.v6 == v6)
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let mut tables = BTreeMap::new();
        for table in TABLES {
            let save = self
                .tools
                .run(self.backend.save(v6), &["-t", table.name()], None)
                .await?;
            tables.insert(table, parse_table(&save));
        }

        // Sets: those that match are known; the others are rebuilt aside and swapped in;
        // ours that are not wanted are destroyed once no chain refers to them.
        let mut known: BTreeMap<String, IpSet> = BTreeMap::new();
        for (name, set) in &want.sets {
            match actual_sets.get(name) {
                Some(a) if set_matches(a, set, v6) => {
                    known.insert(name.clone(), set.clone());
                }
                _ => report.sets_changed += 1,
            }
        }
        let stale_sets: Vec<&String> = actual_sets
            .keys()
            .filter(|n| !want.sets.contains_key(*n))
            .collect();
        for name in &stale_sets {
            let empty = IpSet {
                kind: SetKind::Net,
                members: BTreeSet::new(),
            };
            known.insert((*name).clone(), empty);
        }
        report.sets_deleted = stale_sets.len();
        let (before, after) = render_ipsets(&known, &want.sets, v6);
        self.ipset(&before).await?;

        for (table, actual) in &tables {
            let table = *table;
            let want_chains = want.chains(table);
            let changed: Chains = want_chains
                .iter()
                .filter(|(name, rules)| {
                    let hashes: Vec<Option<u64>> =
                        rules.iter().map(|r| Some(rule_hash(r, v6))).collect();
                    actual.chains.get(*name) != Some(&hashes)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let removed: Vec<String> = actual
                .chains
                .keys()
                .filter(|k| !want_chains.contains_key(*k))
                .cloned()
                .collect();
            let (extra, missing) = hook_difference(actual, &want.hooks(table));
            for (kernel, ours) in &extra {
                self.delete_hook(table, kernel, ours, v6).await?;
            }
            self.restore(table, &changed, &[], v6).await?;
            let none = BTreeMap::new();
            if self.restore(table, &none, &removed, v6).await.is_err() {
                // One at a time, so a chain someone else still jumps to stays (flushed) and
                // the rest go.
                for name in &removed {
                    if let Err(e) = self
                        .restore(table, &none, std::slice::from_ref(name), v6)
                        .await
                    {
                        tracing::warn!(chain = %name, error = %e, "stale chain of ours not removed");
                    }
                }
            }
            for (kernel, ours) in &missing {
                self.ensure_hook(table, kernel, ours, v6).await?;
            }
            report.chains_written += changed.len();
            report.chains_deleted += removed.len();
            report.repairs.chains += changed.len() + removed.len();
            report.repairs.hooks += extra.len() + missing.len();
        }
        // Destroy stale sets one at a time: one still referenced elsewhere must not keep the
        // others.
        for line in after.lines() {
            if let Err(e) = self.ipset(&format!("{line}\n")).await {
                tracing::warn!(error = %e, "stale ipset of ours not destroyed: {line}");
            }
        }
        report.repairs.sets = report.sets_changed + report.sets_deleted;
        Ok(report)
    }

    async fn ipset(&self, text: &str) -> Result<(), DataplaneError> {
        if !text.is_empty() {
            self.tools.run("ipset", &["restore"], Some(text)).await?;
        }
        Ok(())
    }

    /// One `iptables-restore --noflush` of `changed` and `removed`; when the kernel refuses
    /// it, finds which chains it refuses.
    async fn restore(
        &self,
        table: Table,
        changed: &Chains,
        removed: &[String],
        v6: bool,
    ) -> Result<(), FirewallError> {
        if changed.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let text = render_restore(table, changed, removed, v6);
        let restore = self.backend.restore(v6);
        match self
            .tools
            .run(restore, &["--noflush", "--wait"], Some(&text))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(find_refused(&self.tools, restore, table, changed, v6, e).await),
        }
    }

    /// Inserts our hook at the top of `kernel` unless it is there.
    async fn ensure_hook(
        &self,
        table: Table,
        kernel: &str,
        ours: &str,
        v6: bool,
    ) -> Result<(), DataplaneError> {
        let rule = hook_rule(ours);
        let bin = self.backend.iptables(v6);
        let mut check = vec!["--wait", "-t", table.name(), "-C", kernel];
        check.extend(rule);
        if self.tools.run(bin, &check, None).await.is_ok() {
            return Ok(());
        }
        let mut insert = vec!["--wait", "-t", table.name(), "-I", kernel, "1"];
        insert.extend(rule);
        self.tools.run(bin, &insert, None).await?;
        tracing::info!(
            backend = bin,
            "hooked {ours} into {} {kernel}",
            table.name()
        );
        Ok(())
    }

    /// Deletes one of our hooks (one occurrence).
    async fn delete_hook(
        &self,
        table: Table,
        kernel: &str,
        ours: &str,
        v6: bool,
    ) -> Result<(), DataplaneError> {
        let mut delete = vec!["--wait", "-t", table.name(), "-D", kernel];
        delete.extend(hook_rule(ours));
        self.tools
            .run(self.backend.iptables(v6), &delete, None)
            .await?;
        Ok(())
    }
}

/// A hook's rule arguments (after `-t TABLE -C|-I|-D CHAIN`): a commented jump to `ours`.
fn hook_rule(ours: &str) -> [&str; 6] {
    ["-m", "comment", "--comment", HOOK_COMMENT, "-j", ours]
}

/// A hook as (kernel chain, our chain).
type Hook = (String, String);

/// Our hooks in the kernel that are not wanted (stale, or a second copy), and the wanted
/// ones that are missing.
fn hook_difference(actual: &TableState, want: &[(&str, &str)]) -> (Vec<Hook>, Vec<Hook>) {
    let mut wanted: Vec<Hook> = want
        .iter()
        .map(|(k, o)| (k.to_string(), o.to_string()))
        .collect();
    let mut extra = Vec::new();
    for hook in &actual.hooks {
        match wanted.iter().position(|w| w == hook) {
            Some(i) => {
                wanted.remove(i);
            }
            None => extra.push(hook.clone()),
        }
    }
    (extra, wanted)
}

/// Writes the changed chains one at a time to find those the kernel refuses: policy chains
/// first (they jump to no other chain of ours), and only when none of those is refused the
/// rest, so a chain is never blamed for jumping to a refused one.
async fn find_refused<T: ToolRunner>(
    tools: &T,
    restore: &str,
    table: Table,
    changed: &Chains,
    v6: bool,
    whole: DataplaneError,
) -> FirewallError {
    let is_policy = |name: &str| name.starts_with("serval-pi-") || name.starts_with("serval-po-");
    let mut first_error = None;
    for policy_pass in [true, false] {
        let mut refused = Vec::new();
        for (name, rules) in changed.iter().filter(|(n, _)| is_policy(n) == policy_pass) {
            let one: Chains = [(name.clone(), rules.clone())].into_iter().collect();
            let text = render_restore(table, &one, &[], v6);
            if let Err(e) = tools
                .run(restore, &["--noflush", "--wait"], Some(&text))
                .await
            {
                first_error.get_or_insert_with(|| e.to_string());
                refused.push(name.clone());
            }
        }
        if !refused.is_empty() {
            return FirewallError::Refused {
                chains: refused,
                first_error: first_error.unwrap_or_default(),
            };
        }
    }
    // Every chain was accepted alone: the failure is not one object's.
    FirewallError::Other(whole)
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
