//! natOutgoing: pod traffic from a pool with `natOutgoing: true` to anywhere outside all pools
//! is masqueraded; traffic between pools (other nodes' pods) is not. Serval owns two ipsets
//! and two nat chains, written atomically (`ipset restore` with a swap, `iptables-restore
//! --noflush` of our chains only) and hooked into POSTROUTING by one commented jump; nothing
//! else in the table is read or rewritten.

use std::fmt::Write as _;
use std::process::Stdio;

use ipnet::IpNet;
use tokio::io::AsyncWriteExt;

use super::DataplaneError;

/// Pools with natOutgoing (sources to masquerade).
pub const MASQ_SET: &str = "serval40masq-ipam-pools";
/// Every pool (destinations that stay unmasqueraded).
pub const ALL_SET: &str = "serval40all-ipam-pools";
/// Our POSTROUTING chain.
pub const POSTROUTING_CHAIN: &str = "serval-POSTROUTING";
/// The chain with the masquerade rule.
pub const NAT_OUTGOING_CHAIN: &str = "serval-nat-outgoing";
/// The comment on our jump from the kernel's POSTROUTING (how we recognise our hook).
pub const HOOK_COMMENT: &str = "serval:hook";

/// What natOutgoing needs from the pools (IPv4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatSpec {
    /// Pools with natOutgoing.
    pub masquerade: Vec<IpNet>,
    /// All pools.
    pub all: Vec<IpNet>,
}

/// Which iptables binaries to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft-*`.
    Nft,
    /// `iptables-legacy-*`.
    Legacy,
}

impl Backend {
    /// The `*-restore` binary.
    pub fn restore(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }
    /// The plain binary.
    pub fn iptables(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft",
            Backend::Legacy => "iptables-legacy",
        }
    }
    /// The `*-save` binary.
    pub fn save(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-save",
            Backend::Legacy => "iptables-legacy-save",
        }
    }
}

/// Chooses the backend the host already uses: `SERVAL_IPTABLES_BACKEND` (`nft`, `legacy`,
/// `auto`), else legacy when the legacy tables hold rules (kube-proxy or Docker in legacy
/// mode) and the nft ones do not, else nft.
pub fn choose_backend(setting: Option<&str>, legacy_rules: usize, nft_rules: usize) -> Backend {
    match setting.map(str::to_ascii_lowercase).as_deref() {
        Some("legacy") => Backend::Legacy,
        Some("nft") => Backend::Nft,
        _ if legacy_rules > 0 && nft_rules == 0 => Backend::Legacy,
        _ => Backend::Nft,
    }
}

/// Counts `-A` rules in a `*-save` dump.
pub fn count_rules(save_output: &str) -> usize {
    save_output.lines().filter(|l| l.starts_with("-A ")).count()
}

/// `ipset restore` input that replaces both sets' members atomically (fill a temporary set,
/// swap it in, destroy it), creating the sets on first use.
pub fn render_ipsets(spec: &NatSpec) -> String {
    let mut out = String::new();
    for (name, members) in [(MASQ_SET, &spec.masquerade), (ALL_SET, &spec.all)] {
        let tmp = format!("serval4t-{}", &name[8..name.len().min(8 + 22)]);
        let _ = writeln!(out, "create {name} hash:net family inet -exist");
        let _ = writeln!(out, "create {tmp} hash:net family inet -exist");
        let _ = writeln!(out, "flush {tmp}");
        for m in members.iter().filter(|m| m.addr().is_ipv4()) {
            let _ = writeln!(out, "add {tmp} {m}");
        }
        let _ = writeln!(out, "swap {tmp} {name}");
        let _ = writeln!(out, "destroy {tmp}");
    }
    out
}

/// `iptables-restore --noflush` input for our nat chains (declaring a chain flushes only it).
pub fn render_nat_chains(spec: &NatSpec) -> String {
    let mut out = String::from("*nat\n");
    let _ = writeln!(out, ":{POSTROUTING_CHAIN} - [0:0]");
    let _ = writeln!(out, ":{NAT_OUTGOING_CHAIN} - [0:0]");
    let _ = writeln!(
        out,
        "-A {POSTROUTING_CHAIN} -m comment --comment \"serval:nat-outgoing\" -j {NAT_OUTGOING_CHAIN}"
    );
    if !spec.masquerade.is_empty() {
        let _ = writeln!(
            out,
            "-A {NAT_OUTGOING_CHAIN} -m comment --comment \"serval:masquerade pod traffic leaving the pools\" \
             -m set --match-set {MASQ_SET} src -m set ! --match-set {ALL_SET} dst -j MASQUERADE --random-fully"
        );
    }
    out.push_str("COMMIT\n");
    out
}

/// The hook rule's arguments (after `-t nat -{A,C,I} POSTROUTING`).
pub fn hook_rule() -> Vec<&'static str> {
    vec![
        "-m",
        "comment",
        "--comment",
        HOOK_COMMENT,
        "-j",
        POSTROUTING_CHAIN,
    ]
}

/// Runs an iptables/ipset tool, feeding `stdin`; a non-zero exit is an error with its stderr.
pub async fn run_tool(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, DataplaneError> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DataplaneError::Netlink {
            what: what.clone(),
            code: e.raw_os_error().unwrap_or(0),
            message: e.to_string(),
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| DataplaneError::Invalid(format!("{what}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| DataplaneError::Invalid(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(DataplaneError::Netlink {
            what,
            code: out.status.code().unwrap_or(-1),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Detects the backend on this host (see [`choose_backend`]).
pub async fn detect_backend() -> Backend {
    let setting = std::env::var("SERVAL_IPTABLES_BACKEND").ok();
    let count = |b: Backend| async move {
        run_tool(b.save(), &[], None)
            .await
            .map(|s| count_rules(&s))
            .unwrap_or(0)
    };
    choose_backend(
        setting.as_deref(),
        count(Backend::Legacy).await,
        count(Backend::Nft).await,
    )
}

/// Writes the sets, our chains and (once) the hook.
pub async fn apply(backend: Backend, spec: &NatSpec) -> Result<(), DataplaneError> {
    run_tool("ipset", &["restore"], Some(&render_ipsets(spec))).await?;
    run_tool(
        backend.restore(),
        &["--noflush", "--wait"],
        Some(&render_nat_chains(spec)),
    )
    .await?;
    let mut check = vec!["--wait", "-t", "nat", "-C", "POSTROUTING"];
    check.extend(hook_rule());
    if run_tool(backend.iptables(), &check, None).await.is_err() {
        let mut insert = vec!["--wait", "-t", "nat", "-I", "POSTROUTING", "1"];
        insert.extend(hook_rule());
        run_tool(backend.iptables(), &insert, None).await?;
        tracing::info!(
            backend = backend.iptables(),
            "hooked {POSTROUTING_CHAIN} into nat POSTROUTING"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NatSpec {
        NatSpec {
            masquerade: vec!["10.244.0.0/16".parse().unwrap()],
            all: vec![
                "10.244.0.0/16".parse().unwrap(),
                "10.250.0.0/16".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn ipsets_are_swapped_in_atomically() {
        let text = render_ipsets(&spec());
        assert!(text.contains("create serval40masq-ipam-pools hash:net family inet -exist"));
        assert!(text.contains("add serval4t-masq-ipam-pools 10.244.0.0/16"));
        assert!(text.contains("swap serval4t-all-ipam-pools serval40all-ipam-pools"));
        assert_eq!(text.matches("add serval4t-all-ipam-pools").count(), 2);
        // ipset names are at most 31 characters.
        for line in text.lines() {
            for word in line.split(' ').filter(|w| w.starts_with("serval")) {
                assert!(word.len() <= 31, "{word}");
            }
        }
    }

    #[test]
    fn chains_masquerade_only_traffic_leaving_all_pools() {
        let text = render_nat_chains(&spec());
        assert!(text.starts_with("*nat\n:serval-POSTROUTING - [0:0]\n"));
        assert!(text.contains(
            "-m set --match-set serval40masq-ipam-pools src -m set ! --match-set serval40all-ipam-pools dst -j MASQUERADE"
        ));
        assert!(text.ends_with("COMMIT\n"));
        // No pool with natOutgoing: the chain exists but masquerades nothing.
        let none = render_nat_chains(&NatSpec {
            masquerade: vec![],
            all: spec().all,
        });
        assert!(!none.contains("MASQUERADE"));
        // Only our chains are declared, so --noflush leaves every other chain alone.
        for line in text.lines().filter(|l| l.starts_with(':')) {
            assert!(line.starts_with(":serval-"), "{line}");
        }
    }

    #[test]
    fn backend_follows_the_host() {
        assert_eq!(choose_backend(None, 0, 0), Backend::Nft);
        assert_eq!(choose_backend(None, 12, 0), Backend::Legacy);
        assert_eq!(choose_backend(None, 12, 3), Backend::Nft);
        assert_eq!(choose_backend(Some("legacy"), 0, 5), Backend::Legacy);
        assert_eq!(choose_backend(Some("NFT"), 5, 0), Backend::Nft);
        assert_eq!(
            count_rules("*nat\n:A - [0:0]\n-A A -j RETURN\n-A B -j X\nCOMMIT\n"),
            2
        );
    }
}
