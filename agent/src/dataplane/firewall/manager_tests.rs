use std::sync::{Arc, Mutex};

use serval_policy::ipt::{IpSet, IptRule, Match, SetKind, Target, render_rule};

use super::*;

/// Tools that answer read-backs from canned text and record every call.
#[derive(Clone, Default)]
struct Canned {
    answers: BTreeMap<String, String>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Canned {
    fn answer(mut self, call: &str, text: &str) -> Self {
        self.answers.insert(call.to_string(), text.to_string());
        self
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl ToolRunner for Canned {
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, DataplaneError> {
        let call = format!("{program} {}", args.join(" "));
        self.calls
            .lock()
            .unwrap()
            .push(format!("{call}\n{}", stdin.unwrap_or_default()));
        if call.contains(" -C ") {
            // No hook is there yet.
            return Err(DataplaneError::Invalid("no such rule".into()));
        }
        Ok(self.answers.get(&call).cloned().unwrap_or_default())
    }
}

fn rule(comment: &str) -> IptRule {
    IptRule::new(vec![Match::Protocol(6, false)], Target::Accept, comment)
}

fn want() -> FirewallRules {
    let mut v4 = FamilyRules::default();
    v4.filter
        .insert("serval-FORWARD".into(), Arc::new(vec![rule("dispatch")]));
    v4.filter
        .insert("serval-pi-a".into(), Arc::new(vec![rule("a")]));
    v4.sets.insert(
        "serval40s:x".into(),
        IpSet {
            kind: SetKind::Net,
            members: ["10.0.0.1/32".to_string()].into(),
        },
    );
    FirewallRules {
        v4,
        v6: FamilyRules::default(),
    }
}

/// The kernel as iptables-save prints it: `serval-FORWARD` as wanted (its rule text
/// reordered the way the tool does), `serval-pi-a` altered by hand, a stale chain of ours, a
/// foreign chain with a foreign jump, our hook twice.
fn kernel_filter() -> String {
    let ours = render_rule(&rule("dispatch"), false);
    let comment = ours.split('"').nth(1).unwrap();
    format!(
        "*filter\n:FORWARD ACCEPT [0:0]\n:serval-FORWARD - [0:0]\n:serval-pi-a - [0:0]\n\
         :serval-pi-old - [0:0]\n:KUBE-X - [0:0]\n\
         -A FORWARD -m comment --comment \"serval:hook\" -j serval-FORWARD\n\
         -A FORWARD -m comment --comment \"serval:hook\" -j serval-FORWARD\n\
         -A FORWARD -j KUBE-X\n\
         -A serval-FORWARD -p tcp -m comment --comment \"{comment}\" -j ACCEPT\n\
         -A serval-pi-a -j ACCEPT\n-A KUBE-X -j ACCEPT\nCOMMIT\n"
    )
}

#[tokio::test]
async fn a_read_back_pass_writes_only_the_difference_and_sweeps_only_what_is_ours() {
    let tools = Canned::default()
        .answer("iptables-nft-save -t filter", &kernel_filter())
        .answer(
            "ipset save",
            "create serval40s:x hash:net family inet hashsize 1024\nadd serval40s:x 10.0.0.1\n\
             create serval40s:stale hash:net family inet hashsize 1024\n\
             create KUBE-SET hash:net family inet hashsize 1024\n",
        );
    let mut m = FirewallManager::with_tools(Backend::Nft, tools.clone());
    let report = m.apply(&want()).await.unwrap();
    assert_eq!(
        report.repairs,
        Repairs {
            chains: 2, // serval-pi-a rewritten, serval-pi-old removed
            sets: 1,   // serval40s:stale destroyed
            hooks: 1,  // the second copy of the hook
        },
        "{report:?}"
    );
    let calls = tools.calls().join("\n");
    // The chain that matched was not rewritten; the altered one was.
    assert!(calls.contains(":serval-pi-a - [0:0]"), "{calls}");
    assert!(!calls.contains(":serval-FORWARD - [0:0]"), "{calls}");
    assert!(calls.contains("-X serval-pi-old"), "{calls}");
    assert!(calls.contains("destroy serval40s:stale"), "{calls}");
    assert!(
        !calls.contains("serval40s:x"),
        "a matching set is left alone: {calls}"
    );
    // Nothing foreign was named in any write.
    assert!(!calls.contains("KUBE"), "{calls}");
    assert!(calls.contains("-D FORWARD -m comment --comment serval:hook -j serval-FORWARD"));

    // Known now: the next apply of the same state writes nothing at all.
    let before = tools.calls().len();
    let again = m.apply(&want()).await.unwrap();
    assert_eq!(tools.calls().len(), before, "{:?}", tools.calls());
    assert_eq!(again.chains_written + again.sets_changed, 0);
}

#[tokio::test]
async fn a_resync_reads_back_and_counts_what_it_repairs() {
    let tools = Canned::default().answer("iptables-nft-save -t filter", &kernel_filter());
    let mut m = FirewallManager::with_tools(Backend::Nft, tools.clone());
    // Nothing applied yet: a resync has nothing to compare with and reads nothing.
    assert!(m.resync().await.unwrap().repairs.is_empty());
    assert!(tools.calls().is_empty());
    m.apply(&want()).await.unwrap();
    // The canned kernel still shows the drift (the fake does not change): the resync finds
    // it again, and the set is missing from `ipset save`, so it is rebuilt.
    let r = m.resync().await.unwrap();
    assert_eq!(r.repairs.chains, 2, "{r:?}");
    assert_eq!(r.repairs.sets, 1, "{r:?}");
    let last = tools.calls().join("\n");
    assert!(last.contains("swap serval-tmp-n4 serval40s:x"), "{last}");
}

#[tokio::test]
async fn hooks_follow_their_chains_incrementally() {
    let tools = Canned::default();
    let mut m = FirewallManager::with_tools(Backend::Nft, tools.clone());
    m.apply(&want()).await.unwrap();
    assert!(
        tools
            .calls()
            .iter()
            .any(|c| c.contains("-I FORWARD 1 -m comment --comment serval:hook"))
    );
    // serval-FORWARD goes: its hook is deleted before the chain is.
    let mut less = want();
    less.v4.filter.remove("serval-FORWARD");
    let n = tools.calls().len();
    m.apply(&less).await.unwrap();
    let calls = tools.calls()[n..].to_vec();
    let hook = calls.iter().position(|c| c.contains("-D FORWARD")).unwrap();
    let chain = calls
        .iter()
        .position(|c| c.contains("-X serval-FORWARD"))
        .unwrap();
    assert!(hook < chain, "{calls:?}");
}
