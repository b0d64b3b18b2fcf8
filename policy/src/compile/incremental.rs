//! The incremental compiler: keeps the last inputs and output, and when only endpoints'
//! labels or named ports changed (the common event: a pod relabelled, on this node or
//! another) patches the output instead of compiling everything again: the changed local
//! endpoints' own chains are rebuilt and the endpoint is moved in or out of each selector
//! and named-port set. Anything else (a policy, a namespace, an endpoint added, removed or
//! readdressed, a policy starting or stopping to apply anywhere) compiles in full. The
//! result is always exactly what [`compile`] returns; the tests hold it to that.

use std::collections::BTreeMap;

use super::{Compiled, Endpoint, Family, PolicyInputs, applying, compile_indexed, endpoint_chains};
use crate::ipt::Ruleset;

/// One family's compiler with its memory of the last compile.
#[derive(Default)]
pub struct IncrementalCompiler {
    v6: bool,
    last: Option<(PolicyInputs, Compiled)>,
    full: u64,
}

/// Whether two versions of an endpoint differ only where a patch can follow (labels, named
/// ports), not in identity, interface or addresses.
fn patchable(old: &Endpoint, new: &Endpoint) -> bool {
    old.namespace == new.namespace
        && old.name == new.name
        && old.iface == new.iface
        && old.addrs == new.addrs
}

/// The indices where two endpoint lists differ, when every difference is patchable.
fn changed(old: &[Endpoint], new: &[Endpoint]) -> Option<Vec<usize>> {
    if old.len() != new.len() {
        return None;
    }
    let mut out = Vec::new();
    for (i, (o, n)) in old.iter().zip(new).enumerate() {
        if o != n {
            if !patchable(o, n) {
                return None;
            }
            out.push(i);
        }
    }
    Some(out)
}

impl IncrementalCompiler {
    /// A compiler for IPv4 (`v6` false) or IPv6 that has compiled nothing yet.
    pub fn new(v6: bool) -> Self {
        IncrementalCompiler {
            v6,
            last: None,
            full: 0,
        }
    }

    /// The ruleset for `inputs`, patched from the last one where possible.
    pub fn update(&mut self, inputs: &PolicyInputs) -> &Ruleset {
        let patched = match self.last.as_mut() {
            Some((old, compiled)) => patch(old, compiled, inputs, self.v6),
            None => false,
        };
        if !patched {
            self.full += 1;
            self.last = Some((inputs.clone(), compile_indexed(inputs, self.v6)));
        }
        &self.last.as_ref().expect("set above").1.ruleset
    }

    /// How many updates compiled in full (the rest were patches).
    pub fn full_compiles(&self) -> u64 {
        self.full
    }

    /// The last ruleset, if any.
    pub fn current(&self) -> Option<&Ruleset> {
        self.last.as_ref().map(|(_, c)| &c.ruleset)
    }
}

/// Patches `compiled` (for `old`) to be the compile of `new`; false when it cannot.
fn patch(old: &mut PolicyInputs, compiled: &mut Compiled, new: &PolicyInputs, v6: bool) -> bool {
    if old.policies != new.policies
        || old.namespaces != new.namespaces
        || old.hosts != new.hosts
        || old.vxlan_port != new.vxlan_port
        || old.network_sets != new.network_sets
        || old.host_endpoints != new.host_endpoints
        || old.failsafe != new.failsafe
    {
        return false;
    }
    let (Some(local), Some(remote)) = (
        changed(&old.local, &new.local),
        changed(&old.remote, &new.remote),
    ) else {
        return false;
    };
    // A policy that starts or stops applying to any local endpoint adds or removes its
    // chains: compile in full.
    let mut counts = compiled.counts.clone();
    for &i in &local {
        let (before, after) = (&old.local[i], &new.local[i]);
        for (pi, p) in new.policies.iter().enumerate() {
            if !p.host.is_normal() {
                continue;
            }
            for (d, dir) in super::DIRS.into_iter().enumerate() {
                if !super::applies_in(p, dir) {
                    continue;
                }
                let was = compiled.scopes[pi].contains(before, &new.namespaces);
                let is = compiled.scopes[pi].contains(after, &new.namespaces);
                if was != is {
                    counts[pi][d] = if is {
                        counts[pi][d] + 1
                    } else {
                        counts[pi][d] - 1
                    };
                    if (counts[pi][d] == 0) != (compiled.counts[pi][d] == 0) {
                        return false;
                    }
                }
            }
        }
    }
    compiled.counts = counts;
    // Set membership: move each changed endpoint out of the sets it left and into those it
    // joined.
    let moved = local
        .iter()
        .map(|&i| (&old.local[i], &new.local[i]))
        .chain(remote.iter().map(|&i| (&old.remote[i], &new.remote[i])));
    for (before, after) in moved {
        for (name, source) in &compiled.sources {
            let gone = source.members_of(before, &new.namespaces, v6);
            let came = source.members_of(after, &new.namespaces, v6);
            if gone == came {
                continue;
            }
            let set = compiled
                .ruleset
                .sets
                .get_mut(name)
                .expect("every source has its set");
            for m in gone {
                set.members.remove(&m);
            }
            set.members.extend(came);
        }
    }
    // The changed local endpoints' own chains.
    let mut sets = std::mem::take(&mut compiled.ruleset.sets);
    let mut rebuilt: BTreeMap<String, Vec<crate::ipt::IptRule>> = BTreeMap::new();
    {
        let mut fam = Family::new(new, v6);
        fam.sets = std::mem::take(&mut sets);
        for &i in &local {
            let ep = &new.local[i];
            let applied = applying(new, &compiled.order, &compiled.scopes, ep);
            for (name, rules) in endpoint_chains(&mut fam, ep, &applied) {
                rebuilt.insert(name, rules);
            }
        }
        sets = fam.sets;
    }
    compiled.ruleset.sets = sets;
    compiled.ruleset.chains.extend(
        rebuilt
            .into_iter()
            .map(|(name, rules)| (name, std::sync::Arc::new(rules))),
    );
    for &i in &local {
        old.local[i] = new.local[i].clone();
    }
    for &i in &remote {
        old.remote[i] = new.remote[i].clone();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::compile;
    use super::*;
    use crate::fixtures::cluster;

    /// Applies `steps` one after another, checking each patched result against a full
    /// compile, for both families.
    /// Returns the number of full compiles (IPv4).
    fn check(steps: &[&dyn Fn(&mut PolicyInputs)]) -> u64 {
        let mut full = 0;
        for v6 in [false, true] {
            let mut inputs = cluster();
            let mut c = IncrementalCompiler::new(v6);
            assert_eq!(*c.update(&inputs), compile(&inputs, v6));
            for (n, step) in steps.iter().enumerate() {
                step(&mut inputs);
                let patched = c.update(&inputs).clone();
                assert!(
                    patched == compile(&inputs, v6),
                    "step {n} (v6 {v6}) differs"
                );
            }
            if !v6 {
                full = c.full_compiles();
            }
        }
        full
    }

    #[test]
    fn label_changes_patch_to_exactly_what_a_full_compile_gives() {
        let full = check(&[
            // A local pod moves to another app: its chains and two selector sets change.
            &|i| {
                i.local[17].labels.insert("app".into(), "app42".into());
            },
            // And its tier: a namespace-scoped set changes.
            &|i| {
                i.local[17].labels.insert("tier".into(), "tier3".into());
            },
            // A label no selector reads.
            &|i| {
                i.local[3].labels.insert("unused".into(), "x".into());
            },
            // Its named port goes away: the named-port sets lose it.
            &|i| i.local[17].ports.clear(),
            // Two pods at once, one losing every label.
            &|i| {
                i.local[5].labels.clear();
                i.local[6].labels.insert("app".into(), "app5".into());
            },
        ]);
        assert_eq!(full, 1, "only the first update compiles in full");
    }

    #[test]
    fn other_changes_compile_in_full_and_stay_exact() {
        let full = check(&[
            // An endpoint removed, then one readdressed, then a policy changed.
            &|i| {
                i.local.pop();
            },
            &|i| i.local[9].addrs = vec!["10.99.0.9".parse().unwrap()],
            &|i| i.policies[0].ingress.clear(),
            // A label change after all that still patches correctly.
            &|i| {
                i.local[1].labels.insert("app".into(), "app7".into());
            },
            // The last pod an app's policies select leaves it: those policies stop
            // applying (their chains go), which a patch does not do.
            &|i| {
                for ep in i.local.iter_mut() {
                    if ep.labels.get("app").map(String::as_str) == Some("app99") {
                        ep.labels.insert("app".into(), "app98".into());
                    }
                }
            },
        ]);
        // The first, the three structural changes and the last; the label change patched.
        assert_eq!(full, 5);
    }
}
