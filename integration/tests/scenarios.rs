//! Scenarios over containerlab topology files run by the namespace runner. Expected state is
//! compared as a JSON subset with an "eventually" poll; a failure names the node, the
//! expectation and what was observed.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use serval_integration::clab::{runner, topology::Topology};
use serval_integration::poll::json_subset;
use serval_integration::{eventually, require};

/// Runs `f` with the lab up; tears it down afterwards, also when `f` panics.
fn with_lab(file: &str, f: impl FnOnce(&Topology)) {
    // Topologies take their binaries from ${SERVAL_BIN}: point it at this build.
    let bin = require::serval_bin("serval-node");
    let dir = bin.parent().unwrap().display().to_string();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("topologies")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("${SERVAL_BIN:=/usr/local/bin}", &dir);
    let t = Topology::parse(&text, path.parent().unwrap()).unwrap();
    runner::down(&t.name);
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            runner::down(&self.0);
        }
    }
    runner::up(&t).unwrap_or_else(|e| panic!("{file}: up: {e}"));
    let _down = Down(t.name.clone());
    f(&t);
}

fn status(t: &Topology, node: &str) -> Result<serde_json::Value, String> {
    let out = runner::exec_in(
        t,
        node,
        &["python3".into(), "-c".into(), "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9179/status').read().decode())".into()],
    )
    .map_err(|e| e.to_string())?;
    serde_json::from_str(&out).map_err(|e| e.to_string())
}

fn log_tail(t: &Topology, node: &str) -> String {
    let path = format!("/run/serval-lab/{}/{node}.log", t.name);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {path} ---\n{}",
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
}

#[test]
fn full_mesh_of_four_nodes() {
    if !require::lab_ready(
        "scenario full mesh",
        &["ip", "etcd", "python3", "unshare", "nsenter"],
    ) {
        return;
    }
    with_lab("mesh4.clab.yml", |t| {
        let addrs = ["10.99.0.1", "10.99.0.2", "10.99.0.3", "10.99.0.4"];
        for (i, node) in ["node1", "node2", "node3", "node4"].iter().enumerate() {
            let peers: Vec<serde_json::Value> = addrs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| json!({"address": a, "state": "Established", "description": "node-to-node mesh"}))
                .collect();
            let expected = json!({"asNumber": 64512, "peers": peers});
            eventually(
                &format!("{node}: meshed with the three others"),
                Duration::from_secs(60),
                || json_subset(&expected, &status(t, node)?),
                || log_tail(t, node),
            );
        }
    });
}
