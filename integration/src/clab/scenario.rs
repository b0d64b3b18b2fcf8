//! What scenario tests share: a lab that is torn down even when the test panics, a node's
//! agent API read from inside the node, its log tail for failure messages, and servalctl
//! run against the lab's etcd.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::runner;
use super::topology::Topology;
use crate::require;

/// One learned path: (from peer, ORIGINATOR_ID, CLUSTER_LIST).
pub type PathSeen = (String, String, Vec<String>);

/// A running lab; dropping it tears it down (also when the test panics).
pub struct Lab {
    /// The topology it was built from.
    pub topo: Topology,
    /// The directory of this build's binaries (what `${SERVAL_BIN}` points at).
    pub bin_dir: String,
}

impl Lab {
    /// Brings `integration/topologies/<file>` up with `${SERVAL_BIN}` set to this build.
    pub fn up(file: &str) -> Lab {
        let bin = require::serval_bin("serval-node");
        let bin_dir = bin.parent().unwrap().display().to_string();
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("topologies")
            .join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .replace("${SERVAL_BIN:=/usr/local/bin}", &bin_dir);
        let topo = Topology::parse(&text, path.parent().unwrap())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        runner::down(&topo.name);
        runner::up(&topo).unwrap_or_else(|e| panic!("{file}: up: {e}"));
        Lab { topo, bin_dir }
    }

    /// A path under `integration/topologies/`.
    pub fn file(&self, rel: &str) -> String {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("topologies")
            .join(rel)
            .display()
            .to_string()
    }

    /// Runs `argv` inside `node`; the error is the command's.
    pub fn exec(&self, node: &str, argv: &[&str]) -> Result<String, String> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        runner::exec_in(&self.topo, node, &argv).map_err(|e| e.to_string())
    }

    /// GET `path` from the agent API of `node` (port 9179), as JSON.
    pub fn get(&self, node: &str, path: &str) -> Result<serde_json::Value, String> {
        let script = format!(
            "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9179{path}', timeout=5).read().decode())"
        );
        let out = self.exec(node, &["python3", "-c", &script])?;
        serde_json::from_str(&out).map_err(|e| format!("{node} {path}: {e}: {out}"))
    }

    /// `node`'s status of its peer `addr`.
    pub fn peer(&self, node: &str, addr: &str) -> Result<serde_json::Value, String> {
        let s = self.get(node, "/status")?;
        s["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["address"] == addr).cloned())
            .ok_or(format!("{node}: no peer {addr}: {s}"))
    }

    /// The addresses of `node`'s Established BGP peers.
    pub fn established(&self, node: &str) -> Result<Vec<String>, String> {
        let s = self.get(node, "/status")?;
        Ok(s["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["state"] == "Established")
            .filter_map(|p| p["address"].as_str().map(String::from))
            .collect())
    }

    /// The IPv4 paths `node` (a Serval speaker or agent) learned from peers, by prefix:
    /// (peer, ORIGINATOR_ID, CLUSTER_LIST); prefixes with only a local path are left out.
    pub fn learned_paths(&self, node: &str) -> Result<BTreeMap<String, Vec<PathSeen>>, String> {
        let routes = self.get(node, "/routes?family=ipv4-unicast")?;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
        Ok(routes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let paths: Vec<PathSeen> = r["paths"]
                    .as_array()?
                    .iter()
                    .filter(|p| p["peer"].is_string())
                    .map(|p| {
                        let a = &p["attributes"];
                        let clusters = a["clusterList"].as_array().into_iter().flatten();
                        (
                            text(&p["peer"]),
                            text(&a["originatorId"]),
                            clusters.map(text).collect(),
                        )
                    })
                    .collect();
                (!paths.is_empty()).then(|| (text(&r["prefix"]), paths))
            })
            .collect())
    }

    /// Waits up to `secs` until `node` is Established with exactly `peers` (any order).
    pub fn wait_established(&self, node: &str, peers: &[&str], what: &str, secs: u64) {
        let mut want: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        want.sort();
        crate::eventually(
            &format!("{node}: {what}"),
            std::time::Duration::from_secs(secs),
            || {
                let mut up = self.established(node)?;
                up.sort();
                (up == want)
                    .then_some(())
                    .ok_or(format!("established with {up:?}, want {want:?}"))
            },
            || self.log_tail(node),
        );
    }

    /// `servalctl <args>` run from `node` (which has the lab's datastore in its env).
    pub fn servalctl(&self, node: &str, args: &[&str]) -> Result<String, String> {
        let ctl = format!("{}/servalctl", self.bin_dir);
        let mut argv = vec![ctl.as_str()];
        argv.extend(args);
        self.exec(node, &argv)
    }

    /// The last 20 lines of `node`'s `cmd` output, for failure messages.
    pub fn log_tail(&self, node: &str) -> String {
        let path = format!("{}/{}/{node}.log", runner::STATE_ROOT, self.topo.name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {path} ---\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    /// Destinations of `node`'s kernel routes, `ip -j route` style (`dst` strings).
    pub fn kernel_routes(&self, node: &str) -> Result<Vec<serde_json::Value>, String> {
        let out = self.exec(node, &["ip", "-j", "route", "show"])?;
        serde_json::from_str(&out).map_err(|e| format!("{node}: ip -j route: {e}"))
    }
}

impl Lab {
    /// Waits up to `secs` until every pair of `pods` that `which` selects answers a ping;
    /// the failure lists the pairs that did not, with `context_node`'s log.
    pub fn pods_reach(
        &self,
        what: &str,
        pods: &[super::pods::LabPod],
        which: impl Fn(&super::pods::LabPod, &super::pods::LabPod) -> bool,
        secs: u64,
        context_node: &str,
    ) {
        crate::eventually(
            what,
            std::time::Duration::from_secs(secs),
            || {
                let failing = super::pods::failing_pairs(pods, &which);
                failing
                    .is_empty()
                    .then_some(())
                    .ok_or(format!("no answer: {failing:?}"))
            },
            || self.log_tail(context_node),
        );
    }

    /// Makes pod `name` on `node`, retrying while the node is still starting.
    pub fn add_pod(&self, node: &str, name: &str) -> super::pods::LabPod {
        crate::eventually(
            &format!("{node}: pod {name} through serval-cni"),
            std::time::Duration::from_secs(30),
            || super::pods::add_pod(&self.topo, node, name, &self.bin_dir),
            || self.log_tail(node),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        runner::down(&self.topo.name);
    }
}
