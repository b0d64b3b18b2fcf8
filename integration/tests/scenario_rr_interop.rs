//! Route reflection across implementations (rrmix.clab.yml): two Serval reflectors sharing
//! one cluster ID reflect between six clients — two Serval speakers, two BIRD, two FRR.
//! Every client must learn every other client's prefix from both reflectors with the
//! originator's router ID as ORIGINATOR_ID and the cluster ID as CLUSTER_LIST; killing one
//! reflector must lose no route. Failures name the client, the prefix and what was seen.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use serval_integration::clab::runner;
use serval_integration::clab::scenario::{Lab, PathSeen};
use serval_integration::{eventually, require};

const CLUSTER: &str = "244.0.0.9";
const RR: [&str; 2] = ["10.96.0.11", "10.96.0.12"];
const CLIENTS: [&str; 6] = ["s1", "s2", "b3", "b4", "f5", "f6"];

/// One path a client holds: (from reflector, ORIGINATOR_ID, CLUSTER_LIST).
type Seen = PathSeen;

fn client_number(c: &str) -> u8 {
    c[1..].parse().unwrap()
}

fn prefix_of(n: u8) -> String {
    format!("10.200.{n}.0/24")
}

/// The paths `client` holds for `prefixes`, read the way its implementation shows them.
fn paths(
    lab: &Lab,
    client: &str,
    prefixes: &[String],
) -> Result<BTreeMap<String, Vec<Seen>>, String> {
    let mut out = BTreeMap::new();
    match &client[..1] {
        "s" => out = lab.learned_paths(client)?,
        "b" => {
            let sock = format!("/run/serval-lab/{}/{client}.ctl", lab.topo.name);
            let text = lab.exec(client, &["birdc", "-s", &sock, "show route all"])?;
            let (mut prefix, mut current): (String, Option<Seen>) = (String::new(), None);
            let push = |prefix: &str, s: Option<Seen>, out: &mut BTreeMap<String, Vec<Seen>>| {
                if let Some(s) = s {
                    out.entry(prefix.to_string()).or_default().push(s);
                }
            };
            for line in text.lines() {
                let t = line.trim();
                if line.contains(" unicast [") {
                    push(&prefix, current.take(), &mut out);
                    if !line.starts_with(char::is_whitespace) {
                        prefix = t.split_whitespace().next().unwrap_or("").to_string();
                    }
                    let from = t
                        .split(" from ")
                        .nth(1)
                        .and_then(|x| x.split(']').next())
                        .unwrap_or("")
                        .to_string();
                    current = Some((from, String::new(), Vec::new()));
                } else if let (Some(v), Some(s)) =
                    (t.strip_prefix("BGP.originator_id: "), current.as_mut())
                {
                    s.1 = v.to_string();
                } else if let (Some(v), Some(s)) =
                    (t.strip_prefix("BGP.cluster_list: "), current.as_mut())
                {
                    s.2 = v.split_whitespace().map(String::from).collect();
                }
            }
            push(&prefix, current.take(), &mut out);
        }
        _ => {
            let dir = format!("/run/serval-lab/{}/{client}", lab.topo.name);
            for prefix in prefixes {
                let cmd = format!("show bgp ipv4 unicast {prefix} json");
                let text = lab.exec(client, &["vtysh", "--vty_socket", &dir, "-c", &cmd])?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| format!("{client}: {e}: {text}"))?;
                let seen: Vec<Seen> = v["paths"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        (
                            p["peer"]["peerId"].as_str().unwrap_or("").to_string(),
                            p["originatorId"].as_str().unwrap_or("").to_string(),
                            p["clusterList"]["list"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|c| c.as_str().map(String::from))
                                .collect(),
                        )
                    })
                    .collect();
                if !seen.is_empty() {
                    out.insert(prefix.clone(), seen);
                }
            }
        }
    }
    Ok(out)
}

/// Checks that `client` holds each other client's prefix via every reflector in `via`,
/// reflected correctly.
fn reflected(lab: &Lab, client: &str, via: &[&str]) -> Result<(), String> {
    let me = client_number(client);
    let others: Vec<u8> = CLIENTS
        .iter()
        .map(|c| client_number(c))
        .filter(|n| *n != me)
        .collect();
    let prefixes: Vec<String> = others.iter().map(|n| prefix_of(*n)).collect();
    let held = paths(lab, client, &prefixes)?;
    for n in others {
        let prefix = prefix_of(n);
        let seen = held
            .get(&prefix)
            .ok_or(format!("{prefix}: missing; holds {held:?}"))?;
        for rr in via {
            let Some((_, originator, clusters)) = seen.iter().find(|s| s.0 == *rr) else {
                return Err(format!("{prefix}: no path from reflector {rr}: {seen:?}"));
            };
            let want = format!("10.96.0.{n}");
            if *originator != want || clusters != &[CLUSTER.to_string()] {
                return Err(format!(
                    "{prefix} via {rr}: ORIGINATOR_ID {originator:?} (want {want}), CLUSTER_LIST {clusters:?} (want [{CLUSTER}])"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn serval_reflectors_serve_serval_bird_and_frr_clients() {
    if !require::lab_ready(
        "scenario route reflection across implementations",
        &[
            "ip",
            "python3",
            "unshare",
            "nsenter",
            "bird",
            "birdc",
            "vtysh",
            "/usr/lib/frr/bgpd",
        ],
    ) {
        return;
    }
    let lab = Lab::up("rrmix.clab.yml");
    for client in CLIENTS {
        eventually(
            &format!("{client}: every other client's prefix from both reflectors, reflected"),
            Duration::from_secs(60),
            || reflected(&lab, client, &RR),
            || lab.log_tail(client),
        );
    }
    // Kill rr1 (every process in its namespace): nothing is lost, all through rr2.
    runner::stop_processes(&lab.topo, "rr1", Signal::SIGKILL);
    for client in CLIENTS {
        eventually(
            &format!("{client}: rr1 killed, every route still there through rr2"),
            Duration::from_secs(30),
            || {
                reflected(&lab, client, &[RR[1]])?;
                let held = paths(
                    &lab,
                    client,
                    &[prefix_of(if client_number(client) == 1 { 2 } else { 1 })],
                )?;
                match held.values().flatten().find(|s| s.0 == RR[0]) {
                    Some(s) => Err(format!("still a path from rr1: {s:?}")),
                    None => Ok(()),
                }
            },
            || lab.log_tail(client),
        );
    }
}
