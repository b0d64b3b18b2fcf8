//! The iptables and ipset tools: which backend the host uses (nft or legacy, and the binary
//! for each family), and running a tool with a deadline behind a trait, so the managers'
//! recovery paths are tested without a kernel.

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::dataplane::DataplaneError;

/// How long one tool run may take (an `iptables-restore` of a large table waiting for the
/// xtables lock included); past it the process is killed and the write counts as failed.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Which iptables binaries to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft-*`.
    Nft,
    /// `iptables-legacy-*`.
    Legacy,
}

impl Backend {
    /// The `*-restore` binary for a family.
    pub fn restore(self, v6: bool) -> &'static str {
        match (self, v6) {
            (Backend::Nft, false) => "iptables-nft-restore",
            (Backend::Nft, true) => "ip6tables-nft-restore",
            (Backend::Legacy, false) => "iptables-legacy-restore",
            (Backend::Legacy, true) => "ip6tables-legacy-restore",
        }
    }

    /// The plain binary for a family (hooks are inserted and checked one rule at a time).
    pub fn iptables(self, v6: bool) -> &'static str {
        match (self, v6) {
            (Backend::Nft, false) => "iptables-nft",
            (Backend::Nft, true) => "ip6tables-nft",
            (Backend::Legacy, false) => "iptables-legacy",
            (Backend::Legacy, true) => "ip6tables-legacy",
        }
    }

    /// The `*-save` binary for a family (read-back).
    pub fn save(self, v6: bool) -> &'static str {
        match (self, v6) {
            (Backend::Nft, false) => "iptables-nft-save",
            (Backend::Nft, true) => "ip6tables-nft-save",
            (Backend::Legacy, false) => "iptables-legacy-save",
            (Backend::Legacy, true) => "ip6tables-legacy-save",
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

/// Detects the backend on this host (see [`choose_backend`]); `setting` is
/// SERVAL_IPTABLES_BACKEND (`auto`, `nft`, `legacy`).
pub async fn detect_backend(setting: &str) -> Backend {
    let count = |b: Backend| async move {
        run_tool(b.save(false), &[], None)
            .await
            .map(|s| count_rules(&s))
            .unwrap_or(0)
    };
    choose_backend(
        Some(setting),
        count(Backend::Legacy).await,
        count(Backend::Nft).await,
    )
}

/// Runs iptables and ipset tools (the seam the managers' tests replace).
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

/// Runs a tool, feeding `stdin`, within [`TOOL_TIMEOUT`]; a non-zero exit is an error with
/// its stderr, and a tool past its deadline is killed.
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
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DataplaneError::Netlink {
            what: what.clone(),
            code: e.raw_os_error().unwrap_or(0),
            message: e.to_string(),
        })?;
    let feed = async {
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(|e| DataplaneError::Invalid(format!("{what}: {e}")))?;
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| DataplaneError::Invalid(format!("{what}: {e}")))
    };
    let out = tokio::time::timeout(TOOL_TIMEOUT, feed)
        .await
        .map_err(|_| DataplaneError::Invalid(format!("{what}: no answer in {TOOL_TIMEOUT:?}")))??;
    if !out.status.success() {
        return Err(DataplaneError::Netlink {
            what,
            code: out.status.code().unwrap_or(-1),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(Backend::Legacy.restore(true), "ip6tables-legacy-restore");
        assert_eq!(Backend::Nft.save(false), "iptables-nft-save");
    }

    #[tokio::test]
    async fn a_failing_tool_reports_its_stderr_and_a_missing_one_its_name() {
        let e = run_tool("sh", &["-c", "echo nope >&2; exit 3"], None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = run_tool("serval-no-such-tool", &[], None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("serval-no-such-tool"), "{e}");
        assert_eq!(run_tool("cat", &[], Some("in")).await.unwrap(), "in");
    }
}
