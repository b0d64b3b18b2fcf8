//! The policy manager: keeps the kernel's Serval chains and ipsets equal to the compiled
//! rulesets (IPv4 and IPv6), writing only what changed, in Felix's order: ipsets first, then
//! one atomic `iptables-restore --noflush` of the changed chains (declaring a chain rewrites
//! only it; nothing else in the table is touched), the single-jump hooks from FORWARD and
//! INPUT, and last the ipsets nothing refers to any more. A failed write forgets what it
//! knew so the next apply rewrites everything.
//!
//! When `iptables-restore` refuses the changed chains, the manager writes them one at a
//! time (policy chains first: they jump nowhere) to find which the kernel refuses, and
//! reports those ([`PolicyApplyError::Refused`]); [`apply_failing_closed`] then replaces the
//! objects behind them with their fail-closed stand-ins and applies again, so one bad object
//! never stops policy for the whole node.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use serval_policy::compile::{PolicyInputs, policy_chain};
use serval_policy::ipt::{IptRule, Ruleset, render_ipsets, render_restore};
use serval_policy::model::PolicyType;

use super::DataplaneError;
use super::nat::{Backend, run_tool};

/// Runs iptables and ipset tools (a seam so the manager's recovery is tested without a
/// kernel).
pub trait ToolRunner: Send + Sync {
    /// Runs `program` with `args` and `stdin`; its stdout, or why it failed.
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> impl Future<Output = Result<String, DataplaneError>> + Send;
}

/// The real tools, as processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemTools;

impl ToolRunner for SystemTools {
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, DataplaneError> {
        run_tool(program, args, stdin).await
    }
}

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyApplyError {
    /// The kernel refused these chains (each written alone); the rest was written.
    #[error("iptables-restore refused chains {chains:?}: {first_error}")]
    Refused {
        /// The chains refused.
        chains: Vec<String>,
        /// The first refusal's message.
        first_error: String,
    },
    /// Anything else (a tool missing, ipset failing): not tied to one object.
    #[error(transparent)]
    Other(#[from] DataplaneError),
}

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
pub struct PolicyManager<T: ToolRunner = SystemTools> {
    backend: Backend,
    tools: T,
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

impl PolicyManager<SystemTools> {
    /// A manager that has written nothing yet (its first apply writes everything).
    pub fn new(backend: Backend) -> Self {
        PolicyManager::with_tools(backend, SystemTools)
    }
}

impl<T: ToolRunner> PolicyManager<T> {
    /// A manager running its tools through `tools`.
    pub fn with_tools(backend: Backend, tools: T) -> Self {
        PolicyManager {
            backend,
            tools,
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
    ) -> Result<PolicyReport, PolicyApplyError> {
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
    ) -> Result<PolicyReport, PolicyApplyError> {
        let backend = self.backend;
        let tools = &self.tools;
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
            tools.run("ipset", &["restore"], Some(&before)).await?;
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
            let restore = restore_bin(backend, v6);
            if let Err(e) = tools
                .run(restore, &["--noflush", "--wait"], Some(&text))
                .await
            {
                return Err(find_refused(tools, restore, &changed, v6, e).await);
            }
        }
        if !applied.hooked {
            // Only hook chains that exist (an empty ruleset has none to jump to).
            for (kernel, ours) in HOOKS.iter().filter(|(_, c)| want.chains.contains_key(*c)) {
                let rule = ["-m", "comment", "--comment", HOOK_COMMENT, "-j", *ours];
                let mut check = vec!["--wait", "-t", "filter", "-C", *kernel];
                check.extend(rule);
                if tools
                    .run(tables_bin(backend, v6), &check, None)
                    .await
                    .is_err()
                {
                    let mut insert = vec!["--wait", "-t", "filter", "-I", *kernel, "1"];
                    insert.extend(rule);
                    tools.run(tables_bin(backend, v6), &insert, None).await?;
                }
            }
            applied.hooked = HOOKS.iter().all(|(_, c)| want.chains.contains_key(*c));
        }
        if !after.is_empty() {
            tools.run("ipset", &["restore"], Some(&after)).await?;
        }
        applied.chains = want.chains.clone();
        applied.sets = want.sets.clone();
        Ok(report)
    }
}

/// Writes the changed chains one at a time to find those the kernel refuses: policy chains
/// first (they jump to no other chain of ours), and only when none of those is refused the
/// rest, so a chain is never blamed for jumping to a refused one.
async fn find_refused<T: ToolRunner>(
    tools: &T,
    restore: &str,
    changed: &BTreeMap<String, Vec<IptRule>>,
    v6: bool,
    whole: DataplaneError,
) -> PolicyApplyError {
    let is_policy = |name: &str| name.starts_with("serval-pi-") || name.starts_with("serval-po-");
    let mut first_error = None;
    for policy_pass in [true, false] {
        let mut refused = Vec::new();
        for (name, rules) in changed.iter().filter(|(n, _)| is_policy(n) == policy_pass) {
            let one: BTreeMap<String, Vec<IptRule>> =
                [(name.clone(), rules.clone())].into_iter().collect();
            let text = render_restore(&one, &[], v6);
            if let Err(e) = tools
                .run(restore, &["--noflush", "--wait"], Some(&text))
                .await
            {
                first_error.get_or_insert_with(|| e.to_string());
                refused.push(name.clone());
            }
        }
        if !refused.is_empty() {
            return PolicyApplyError::Refused {
                chains: refused,
                first_error: first_error.unwrap_or_default(),
            };
        }
    }
    // Every chain was accepted alone: the failure is not one object's.
    PolicyApplyError::Other(whole)
}

/// Compiles and applies `inputs`; when the kernel refuses the chains of some policies or
/// endpoints, those are replaced by what fails closed (a policy by its deny-all stand-in, an
/// endpoint left without chains, so the dispatch drops its traffic), reported in the
/// returned map (object → why), and the rest is applied. Gives up after a few rounds.
/// `compiled` is `inputs` already compiled (IPv4, IPv6).
pub async fn apply_failing_closed<T: ToolRunner>(
    manager: &mut PolicyManager<T>,
    inputs: &PolicyInputs,
    compiled: (Ruleset, Ruleset),
    stand_in: impl Fn(&serval_policy::compile::PolicyDef) -> serval_policy::compile::PolicyDef,
) -> Result<(PolicyReport, BTreeMap<String, String>), PolicyApplyError> {
    let mut inputs = inputs.clone();
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    let mut closed: BTreeSet<String> = BTreeSet::new();
    let mut next = Some(compiled);
    for _ in 0..4 {
        let (v4, v6) = next.take().unwrap_or_else(|| {
            (
                serval_policy::compile::compile(&inputs, false),
                serval_policy::compile::compile(&inputs, true),
            )
        });
        match manager.apply(&v4, &v6).await {
            Ok(report) => return Ok((report, refused)),
            Err(PolicyApplyError::Refused {
                chains,
                first_error,
            }) => {
                let mut progress = false;
                for p in inputs.policies.iter_mut() {
                    let key = p.key();
                    let mine = [PolicyType::Ingress, PolicyType::Egress]
                        .into_iter()
                        .any(|d| chains.contains(&policy_chain(p, d)));
                    if mine && closed.insert(key.clone()) {
                        refused.insert(
                            format!("policy {key}"),
                            format!("the kernel refused its rules: {first_error}"),
                        );
                        *p = stand_in(p);
                        progress = true;
                    }
                }
                inputs.local.retain(|e| {
                    let mine = chains.contains(&format!("serval-tw-{}", e.iface))
                        || chains.contains(&format!("serval-fw-{}", e.iface));
                    if mine {
                        refused.insert(
                            format!("endpoint {}/{}", e.namespace, e.name),
                            format!("the kernel refused its chains: {first_error}"),
                        );
                        progress = true;
                    }
                    !mine
                });
                if !progress {
                    return Err(PolicyApplyError::Refused {
                        chains,
                        first_error,
                    });
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(PolicyApplyError::Other(DataplaneError::Invalid(
        "policy still refused after replacing the refused objects".into(),
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serval_policy::compile::{Endpoint, PolicyDef};
    use serval_policy::model::{Action, Rule};
    use serval_policy::selector::Selector;

    use super::*;

    /// Tools that accept everything except iptables-restore input containing one of the
    /// `refuse` markers (as the kernel would refuse a bad rule); records restore calls.
    #[derive(Clone, Default)]
    struct FakeTools {
        refuse: Vec<&'static str>,
        restores: Arc<Mutex<Vec<String>>>,
    }

    impl ToolRunner for FakeTools {
        async fn run(
            &self,
            program: &str,
            _args: &[&str],
            stdin: Option<&str>,
        ) -> Result<String, DataplaneError> {
            let text = stdin.unwrap_or_default();
            if program.contains("restore") && program.contains("tables") {
                self.restores.lock().unwrap().push(text.to_string());
                if let Some(m) = self.refuse.iter().find(|m| text.contains(**m)) {
                    return Err(DataplaneError::Netlink {
                        what: program.to_string(),
                        code: 2,
                        message: format!("line 3 failed ({m})"),
                    });
                }
            }
            Ok(String::new())
        }
    }

    fn ep(name: &str, ip: &str) -> Endpoint {
        Endpoint {
            namespace: "ns".into(),
            name: name.into(),
            iface: format!("sv{name}"),
            addrs: vec![ip.parse().unwrap()],
            labels: [("app".to_string(), name.to_string())].into(),
            ports: vec![],
        }
    }

    fn allow_all(name: &str) -> PolicyDef {
        PolicyDef {
            name: name.into(),
            namespace: Some("ns".into()),
            order: None,
            selector: Selector::All,
            namespace_selector: None,
            types: vec![PolicyType::Ingress],
            ingress: vec![Rule::any(Action::Allow)],
            egress: vec![],
        }
    }

    #[tokio::test]
    async fn a_refused_object_is_replaced_by_its_fail_closed_stand_in_and_the_rest_applies() {
        let inputs = PolicyInputs {
            local: vec![ep("good", "10.0.0.1"), ep("bad", "10.0.0.2")],
            policies: vec![allow_all("fine"), allow_all("poison")],
            ..PolicyInputs::default()
        };
        let tools = FakeTools {
            // The poison policy's Allow rule and the bad endpoint's from-chain are refused.
            refuse: vec!["ns/poison rule 0 Allow", "-A serval-fw-svbad"],
            ..FakeTools::default()
        };
        let mut m = PolicyManager::with_tools(Backend::Nft, tools.clone());
        let compiled = (
            serval_policy::compile::compile(&inputs, false),
            serval_policy::compile::compile(&inputs, true),
        );
        let (_, refused) = apply_failing_closed(
            &mut m,
            &inputs,
            compiled,
            crate::calc::policy::fail_closed_def,
        )
        .await
        .unwrap();
        let keys: Vec<&String> = refused.keys().collect();
        assert_eq!(keys, ["endpoint ns/bad", "policy ns/poison"], "{refused:?}");
        // The last restore written is whole: the stand-in denies, the good endpoint and
        // policy are there, the bad endpoint has no chain (the dispatch drops its traffic).
        let last = tools.restores.lock().unwrap().last().unwrap().clone();
        assert!(last.contains("ns/poison rule 0 Deny"), "{last}");
        assert!(last.contains("ns/fine rule 0 Allow"), "{last}");
        assert!(last.contains("serval-fw-svgood"), "{last}");
        assert!(!last.contains("serval-fw-svbad"), "{last}");
    }

    #[tokio::test]
    async fn a_failure_no_object_explains_is_an_error_not_a_guess() {
        let inputs = PolicyInputs {
            local: vec![ep("good", "10.0.0.1")],
            policies: vec![allow_all("fine")],
            ..PolicyInputs::default()
        };
        // Refuse only the combined write (it holds the dispatch and the hooks' chains
        // together): each chain alone is accepted.
        let tools = FakeTools {
            refuse: vec![":serval-FORWARD - [0:0]\n:serval-INPUT"],
            ..FakeTools::default()
        };
        let mut m = PolicyManager::with_tools(Backend::Nft, tools);
        let compiled = (
            serval_policy::compile::compile(&inputs, false),
            serval_policy::compile::compile(&inputs, true),
        );
        let r = apply_failing_closed(
            &mut m,
            &inputs,
            compiled,
            crate::calc::policy::fail_closed_def,
        )
        .await;
        assert!(matches!(r, Err(PolicyApplyError::Other(_))), "{r:?}");
    }
}
