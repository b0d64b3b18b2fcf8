//! Driving serval-cni as a container runtime does: `CNI_*` variables, the network
//! configuration on stdin, JSON on stdout, run inside the node's namespace.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::netns::Netns;
use crate::require;

/// What one plugin call returned.
pub struct CniCall {
    /// Trimmed stdout.
    pub stdout: String,
    /// Exit code.
    pub code: i32,
    /// Stderr (for failure messages).
    pub stderr: String,
}

impl CniCall {
    /// Stdout as JSON (panics with the text when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}; stderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// The CNI error code (panics if the call succeeded).
    pub fn error_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected a failure, got {:?}", self.stdout);
        self.json()["code"].as_u64().expect("error code")
    }

    /// Every address of an ADD result (IPv4 first, as serval-cni lists them), without
    /// prefix lengths.
    pub fn ips(&self) -> Vec<std::net::IpAddr> {
        let r = self.json();
        r["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .map(|a| a.split('/').next().unwrap_or(a).parse().expect("an IP"))
            .collect()
    }

    /// The first address of an ADD result, without its prefix length.
    pub fn first_ip(&self) -> std::net::IpAddr {
        let r = self.json();
        let a = r["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address in {r}"));
        a.split('/').next().unwrap_or(a).parse().expect("an IP")
    }
}

/// Runs `cmd` with `stdin` fed to it and stdout and stderr captured.
pub fn run_with_stdin(cmd: &mut Command, stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("command output")
}

/// Runs serval-cni inside `node` with exactly `env` (plus PATH and CNI_PATH) and `stdin`.
pub fn call(node: &Netns, env: &[(&str, &str)], stdin: &str) -> CniCall {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node.name()])
        .arg(require::serval_bin("serval-cni"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_PATH", "/opt/cni/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_with_stdin(&mut cmd, stdin);
    CniCall {
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// ADD for pod `namespace/name` with sandbox `pod` (container ID `<namespace>-<name>`, unique
/// as a runtime's sandbox IDs are).
pub fn add_pod(node: &Netns, pod: &Netns, namespace: &str, name: &str, conf: &str) -> CniCall {
    let netns = format!("/run/netns/{}", pod.name());
    let args = format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
    let id = format!("{namespace}-{name}");
    call(
        node,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", &id),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", &args),
        ],
        conf,
    )
}
