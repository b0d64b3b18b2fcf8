//! The contract's skip rules, in one place so every test applies them the same way.

use std::process::Command;

/// Whether a tool is on PATH (or an absolute path that exists).
pub fn have(tool: &str) -> bool {
    if tool.starts_with('/') {
        return std::path::Path::new(tool).exists();
    }
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether we run in CI, where a missing installed tool is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether the tools the set-up installs are here: outside CI a missing one skips (saying
/// so), under `CI=true` it is a failure.
pub fn tools_present(test: &str, tools: &[&str]) -> bool {
    for tool in tools {
        if !have(tool) {
            if in_ci() {
                panic!(
                    "{test}: `{tool}` is missing but CI installs it (.ci/run); this is a set-up bug"
                );
            }
            eprintln!(
                "SKIP {test}: `{tool}` is not installed (run .ci/run or scripts/setup to install it)"
            );
            return false;
        }
    }
    true
}

/// Returns `false` (after printing why) when the test must be skipped: not root, or
/// no network namespaces. Missing `tools` skip locally and panic under `CI=true`.
pub fn lab_ready(test: &str, tools: &[&str]) -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP {test}: needs root for network namespaces");
        return false;
    }
    if !tools_present(test, tools) {
        return false;
    }
    let probe = crate::netns::Netns::new("probe");
    if let Err(e) = probe {
        eprintln!("SKIP {test}: cannot create a network namespace: {e}");
        return false;
    }
    true
}

/// The path of a workspace binary built by cargo for this test run.
pub fn serval_bin(name: &str) -> std::path::PathBuf {
    // Integration tests live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not built; run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}
