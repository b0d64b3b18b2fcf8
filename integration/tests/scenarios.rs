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

fn get(t: &Topology, node: &str, path: &str) -> Result<serde_json::Value, String> {
    let out = runner::exec_in(
        t,
        node,
        &[
            "python3".into(),
            "-c".into(),
            format!("import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9179{path}').read().decode())"),
        ],
    )
    .map_err(|e| e.to_string())?;
    serde_json::from_str(&out).map_err(|e| e.to_string())
}

/// One learned path: (peer, ORIGINATOR_ID, CLUSTER_LIST).
type PathSeen = (String, String, Vec<String>);

/// Prefixes learned from peers, each with its (peer, originatorId, clusterList) paths.
fn learned(t: &Topology, node: &str) -> Result<Vec<(String, Vec<PathSeen>)>, String> {
    let routes = get(t, node, "/routes?family=ipv4-unicast")?;
    Ok(routes
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            let paths: Vec<PathSeen> = r["paths"]
                .as_array()?
                .iter()
                .filter(|p| p["peer"].is_string())
                .map(|p| {
                    (
                        p["peer"].as_str().unwrap_or("").to_string(),
                        p["attributes"]["originatorId"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                        p["attributes"]["clusterList"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|c| c.as_str().map(String::from))
                            .collect(),
                    )
                })
                .collect();
            (!paths.is_empty()).then(|| (r["prefix"].as_str().unwrap_or("").to_string(), paths))
        })
        .collect())
}

fn established(t: &Topology, node: &str) -> Result<Vec<String>, String> {
    let s = get(t, node, "/status")?;
    Ok(s["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["state"] == "Established")
        .filter_map(|p| p["address"].as_str().map(String::from))
        .collect())
}

#[test]
fn two_route_reflectors_with_four_clients() {
    if !require::lab_ready(
        "scenario route reflectors",
        &["ip", "etcd", "python3", "unshare", "nsenter"],
    ) {
        return;
    }
    with_lab("rr.clab.yml", |t| {
        let ctl = require::serval_bin("servalctl").display().to_string();
        let peers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("topologies/rr/peers.yaml");
        eventually(
            "etcd: reflector peering applied (mesh off, peer with reflectors)",
            Duration::from_secs(30),
            || {
                runner::exec_in(
                    t,
                    "etcd",
                    &[
                        "env".into(),
                        "DATASTORE_TYPE=etcdv3".into(),
                        "ETCD_ENDPOINTS=http://10.98.0.100:2379".into(),
                        ctl.clone(),
                        "apply".into(),
                        "-f".into(),
                        peers.display().to_string(),
                    ],
                )
                .map_err(|e| e.to_string())
            },
            || log_tail(t, "etcd"),
        );
        let (rr1, rr2) = ("10.98.0.11", "10.98.0.12");
        let clients = [
            ("c1", "10.98.0.1"),
            ("c2", "10.98.0.2"),
            ("c3", "10.98.0.3"),
            ("c4", "10.98.0.4"),
        ];
        for (c, _) in clients {
            eventually(
                &format!("{c}: sessions with exactly the two reflectors"),
                Duration::from_secs(60),
                || {
                    let up = established(t, c)?;
                    (up == [rr1, rr2])
                        .then_some(())
                        .ok_or(format!("established with {up:?}"))
                },
                || log_tail(t, c),
            );
        }
        eventually(
            "rr1: the other reflector and the four clients",
            Duration::from_secs(60),
            || {
                let up = established(t, "rr1")?;
                (up.len() == 5 && up.contains(&rr2.to_string()))
                    .then_some(())
                    .ok_or(format!("{up:?}"))
            },
            || log_tail(t, "rr1"),
        );
        // Every client learns every other node's block from both reflectors, with the
        // originator's router ID and the cluster ID in CLUSTER_LIST.
        for (c, me) in clients {
            eventually(
                &format!("{c}: blocks of the five other nodes, reflected"),
                Duration::from_secs(60),
                || {
                    let l = learned(t, c)?;
                    if l.len() < 5 {
                        return Err(format!("{} prefixes: {l:?}", l.len()));
                    }
                    for (prefix, paths) in &l {
                        let from: Vec<&str> = paths.iter().map(|p| p.0.as_str()).collect();
                        if !(from.contains(&rr1) && from.contains(&rr2)) {
                            return Err(format!(
                                "{prefix}: paths from {from:?}, not both reflectors"
                            ));
                        }
                        for (peer, originator, clusters) in paths {
                            let from_client = clients.iter().any(|(_, a)| a == originator);
                            if from_client && (clusters != &["244.0.0.1"] || originator == me) {
                                return Err(format!(
                                    "{prefix} via {peer}: originator {originator}, cluster list {clusters:?}"
                                ));
                            }
                        }
                    }
                    Ok(())
                },
                || log_tail(t, c),
            );
        }
        // Kill one reflector's agent (by the PIDs in its namespace): nothing is lost.
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", &t.netns("rr1")])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for (c, _) in clients {
            eventually(
                &format!("{c}: rr1 gone, every block still known through rr2"),
                Duration::from_secs(30),
                || {
                    let up = established(t, c)?;
                    if up != [rr2] {
                        return Err(format!("established with {up:?}"));
                    }
                    let l = learned(t, c)?;
                    let via_rr2 = l
                        .iter()
                        .filter(|(_, p)| p.iter().any(|x| x.0 == rr2))
                        .count();
                    (via_rr2 >= 5)
                        .then_some(())
                        .ok_or(format!("{via_rr2} prefixes via rr2: {l:?}"))
                },
                || log_tail(t, c),
            );
        }
    });
}
