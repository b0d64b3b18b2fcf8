//! Pods inside a lab, made the way a container runtime makes them: a namespace of the lab's
//! own and a serval-cni ADD run inside the node, with the node's etcd, name and state dir.
//! Reachability is checked with ping from the pod's namespace.

use std::io::Write;
use std::net::IpAddr;
use std::process::Stdio;

use super::runner;
use super::topology::Topology;

/// A pod the lab made.
#[derive(Debug, Clone)]
pub struct LabPod {
    /// Pod name (unique in the lab).
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address.
    pub ip: IpAddr,
}

/// Creates pod `name` on `node` through serval-cni (found next to `serval-node` in
/// `bin_dir`); the error says which node and what the plugin printed.
pub fn add_pod(t: &Topology, node: &str, name: &str, bin_dir: &str) -> Result<LabPod, String> {
    let var = |v: &str| runner::node_var(t, node, v).ok_or(format!("{node}: no {v} in its env"));
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "serval-cni",
        "nodename": var("NODENAME")?, "datastore_type": "etcdv3",
        "etcd_endpoints": var("ETCD_ENDPOINTS")?,
        "mtu_file": format!("{}/mtu", var("SERVAL_VAR_DIR")?),
        "ipam": {"type": "serval-ipam"}
    })
    .to_string();
    let netns = runner::add_netns(t, &format!("pod-{name}")).map_err(|e| e.to_string())?;
    let mut cmd = runner::command_in(t, node, &[format!("{bin_dir}/serval-cni")])
        .map_err(|e| e.to_string())?;
    let mut child = cmd
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("lab-{name}"))
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=lab;K8S_POD_NAME={name}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{node}: start serval-cni: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(conf.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{node}: serval-cni ADD {name} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let result: serde_json::Value = serde_json::from_str(&stdout)
        .map_err(|e| format!("{node}: ADD {name} printed no JSON ({e}): {stdout}"))?;
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or(format!("{node}: ADD {name}: no address in {result}"))?;
    Ok(LabPod {
        name: name.to_string(),
        node: node.to_string(),
        netns,
        ip,
    })
}

/// One ping from `from` to `to` (1 s timeout).
pub fn ping(from: &LabPod, to: IpAddr) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &from.netns,
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-q",
        ])
        .arg(to.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The ordered pairs (from → to) among `pods` that `which` selects and that do not answer
/// a ping, probed in parallel.
pub fn failing_pairs(pods: &[LabPod], which: impl Fn(&LabPod, &LabPod) -> bool) -> Vec<String> {
    let pairs: Vec<(&LabPod, &LabPod)> = pods
        .iter()
        .flat_map(|a| pods.iter().map(move |b| (a, b)))
        .filter(|(a, b)| a.name != b.name && which(a, b))
        .collect();
    std::thread::scope(|s| {
        let probes: Vec<_> = pairs
            .iter()
            .map(|(a, b)| s.spawn(move || (ping(a, b.ip), a, b)))
            .collect();
        probes
            .into_iter()
            .filter_map(|h| h.join().ok())
            .filter(|(ok, _, _)| !ok)
            .map(|(_, a, b)| format!("{}@{} → {}@{} ({})", a.name, a.node, b.name, b.node, b.ip))
            .collect()
    })
}
