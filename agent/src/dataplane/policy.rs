//! Policy that fails closed at the kernel: when `iptables-restore` refuses the chains of some
//! policies or endpoints (the firewall manager finds which, writing them one at a time),
//! [`apply_failing_closed`] replaces those objects with their fail-closed stand-ins and
//! applies again, so one bad object never stops policy for the whole node.

use std::collections::{BTreeMap, BTreeSet};

use serval_policy::compile::{PolicyInputs, policy_chain};
use serval_policy::ipt::Ruleset;
use serval_policy::model::PolicyType;

use super::DataplaneError;
use super::firewall::{
    FamilyRules, FirewallError, FirewallManager, FirewallReport, FirewallRules, ToolRunner,
};

/// Compiles and applies `inputs`; when the kernel refuses the chains of some policies or
/// endpoints, those are replaced by what fails closed (a policy by its deny-all stand-in, an
/// endpoint left without chains, so the dispatch drops its traffic), reported in the
/// returned map (object → why), and the rest is applied. Gives up after a few rounds.
/// `compiled` is `inputs` already compiled (IPv4, IPv6); `nat` is the nat table's rulesets
/// (IPv4, IPv6), written with it.
pub async fn apply_failing_closed<T: ToolRunner>(
    manager: &mut FirewallManager<T>,
    inputs: &PolicyInputs,
    compiled: (Ruleset, Ruleset),
    nat: &(Ruleset, Ruleset),
    stand_in: impl Fn(&serval_policy::compile::PolicyDef) -> serval_policy::compile::PolicyDef,
) -> Result<(FirewallReport, BTreeMap<String, String>), FirewallError> {
    // Copied only when an object has to be replaced.
    let mut inputs = std::borrow::Cow::Borrowed(inputs);
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
        let want = FirewallRules {
            v4: FamilyRules::new(v4, nat.0.clone()),
            v6: FamilyRules::new(v6, nat.1.clone()),
        };
        match manager.apply(&want).await {
            Ok(report) => return Ok((report, refused)),
            Err(FirewallError::Refused {
                chains,
                first_error,
            }) => {
                let mut progress = false;
                for p in inputs.to_mut().policies.iter_mut() {
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
                inputs.to_mut().local.retain(|e| {
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
                    return Err(FirewallError::Refused {
                        chains,
                        first_error,
                    });
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(FirewallError::Other(DataplaneError::Invalid(
        "policy still refused after replacing the refused objects".into(),
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serval_policy::compile::{Endpoint, PolicyDef};
    use serval_policy::model::{Action, Rule};
    use serval_policy::selector::Selector;

    use super::super::firewall::Backend;
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
            host: Default::default(),
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
        let mut m = FirewallManager::with_tools(Backend::Nft, tools.clone());
        let compiled = (
            serval_policy::compile::compile(&inputs, false),
            serval_policy::compile::compile(&inputs, true),
        );
        let (_, refused) = apply_failing_closed(
            &mut m,
            &inputs,
            compiled,
            &(Ruleset::default(), Ruleset::default()),
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
        let mut m = FirewallManager::with_tools(Backend::Nft, tools);
        let compiled = (
            serval_policy::compile::compile(&inputs, false),
            serval_policy::compile::compile(&inputs, true),
        );
        let r = apply_failing_closed(
            &mut m,
            &inputs,
            compiled,
            &(Ruleset::default(), Ruleset::default()),
            crate::calc::policy::fail_closed_def,
        )
        .await;
        assert!(matches!(r, Err(FirewallError::Other(_))), "{r:?}");
    }
}
