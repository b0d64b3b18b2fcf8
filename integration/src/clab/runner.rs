//! Builds a [`Topology`] out of network namespaces, without Docker: one namespace per node
//! (`clab-<lab>-<node>`), a namespace holding a Linux bridge per `bridge` node (the host is
//! never touched), veth pairs per link, a private mount namespace per node that has binds
//! (a holder process keeps it), the `exec` commands in order, and `cmd` in the background.
//! Everything made is written to a state directory first, so `down` removes it all, also
//! after a failed `up`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::topology::{NodeSpec, Topology};

static TMP_NAMES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Where labs keep their state.
pub const STATE_ROOT: &str = "/run/serval-lab";

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command failed.
    #[error("{what}: {detail}")]
    Step {
        /// What was being done.
        what: String,
        /// The command's error output.
        detail: String,
    },
    /// The lab is already up.
    #[error("lab {0:?} is already up (run `serval-lab down` first)")]
    AlreadyUp(String),
    /// State files.
    #[error("state {path}: {source}")]
    State {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn state_dir(lab: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(lab)
}

fn record(lab: &str, file: &str, line: &str) -> Result<(), LabError> {
    use std::io::Write;
    let dir = state_dir(lab);
    std::fs::create_dir_all(&dir).map_err(|source| LabError::State {
        path: dir.display().to_string(),
        source,
    })?;
    let path = dir.join(file);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|source| LabError::State {
            path: path.display().to_string(),
            source,
        })?;
    writeln!(f, "{line}").map_err(|source| LabError::State {
        path: path.display().to_string(),
        source,
    })
}

fn recorded(lab: &str, file: &str) -> Vec<String> {
    std::fs::read_to_string(state_dir(lab).join(file))
        .map(|s| s.lines().map(String::from).collect())
        .unwrap_or_default()
}

fn run(what: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| LabError::Step {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LabError::Step {
            what: what.to_string(),
            detail: format!(
                "`{}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Splits a command line the way a shell would for plain words and quotes (no expansion),
/// as containerlab's `exec` does.
pub fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut has = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                has = true;
            }
            (None, c) if c.is_whitespace() => {
                if has || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if has || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn node_env(node: &NodeSpec) -> BTreeMap<String, String> {
    let mut env = node.env.clone();
    for (k, v) in &node.labels {
        let key: String = k
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        env.insert(format!("CLAB_LABEL_{key}"), v.clone());
    }
    env
}

/// The command prefix that runs something inside a node (its network and, if it has
/// binds, its mount namespace).
fn node_prefix(topo: &Topology, node: &str) -> Vec<String> {
    let ns = topo.netns(node);
    let holder = recorded(&topo.name, "holders")
        .into_iter()
        .find_map(|l| l.strip_prefix(&format!("{node} ")).map(String::from));
    let mut p = Vec::new();
    if let Some(pid) = holder {
        p.extend(["nsenter".into(), "-t".into(), pid, "-m".into()]);
    }
    p.extend(["ip".into(), "netns".into(), "exec".into(), ns]);
    p
}

fn spec<'t>(topo: &'t Topology, node: &str) -> Result<&'t NodeSpec, LabError> {
    topo.nodes
        .iter()
        .find(|n| n.name == node)
        .ok_or_else(|| LabError::Step {
            what: format!("node {node}"),
            detail: "no such node".into(),
        })
}

/// The full argv that runs `argv` inside `node` with its env.
fn argv_in(topo: &Topology, n: &NodeSpec, argv: &[String]) -> Vec<String> {
    let mut full = node_prefix(topo, &n.name);
    full.push("env".into());
    for (k, v) in node_env(n) {
        full.push(format!("{k}={v}"));
    }
    full.extend(argv.iter().cloned());
    full
}

/// A command that runs `argv` inside `node` (namespaces and env), for callers that need
/// stdin or their own output handling.
pub fn command_in(topo: &Topology, node: &str, argv: &[String]) -> Result<Command, LabError> {
    let full = argv_in(topo, spec(topo, node)?, argv);
    let mut cmd = Command::new(&full[0]);
    cmd.args(&full[1..]);
    Ok(cmd)
}

/// Runs `argv` inside `node`, with its env; returns its output.
pub fn exec_in(topo: &Topology, node: &str, argv: &[String]) -> Result<String, LabError> {
    let full = argv_in(topo, spec(topo, node)?, argv);
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    run(&format!("node {node}: `{}`", argv.join(" ")), &refs)
}

/// The value of `var` in `node`'s env, as its processes see it.
pub fn node_var(topo: &Topology, node: &str, var: &str) -> Option<String> {
    spec(topo, node)
        .ok()
        .and_then(|n| node_env(n).get(var).cloned())
}

/// A namespace that belongs to the lab (a pod's, say): `clab-<lab>-<name>`, removed by
/// `down` with the rest.
pub fn add_netns(topo: &Topology, name: &str) -> Result<String, LabError> {
    let ns = topo.netns(name);
    if Path::new("/run/netns").join(&ns).exists() {
        // Made by an earlier attempt of the same caller (a retried pod ADD).
        return Ok(ns);
    }
    record(&topo.name, "netns", &ns)?;
    run(
        &format!("create namespace {ns}"),
        &["ip", "netns", "add", &ns],
    )?;
    run("loopback up", &["ip", "-n", &ns, "link", "set", "lo", "up"])?;
    Ok(ns)
}

/// Starts `node`'s `cmd` in the background, its output appended to `<node>.log`.
pub fn start_cmd(topo: &Topology, node: &str) -> Result<(), LabError> {
    let n = spec(topo, node)?;
    let Some(cmd) = &n.cmd else {
        return Err(LabError::Step {
            what: format!("start cmd of {node}"),
            detail: "the node has no cmd".into(),
        });
    };
    let full = argv_in(topo, n, &["sh".into(), "-c".into(), cmd.clone()]);
    let log = state_dir(&topo.name).join(format!("{}.log", n.name));
    let state_err = |source| LabError::State {
        path: log.display().to_string(),
        source,
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(state_err)?;
    let child = Command::new(&full[0])
        .args(&full[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(state_err)?)
        .stderr(out)
        .spawn()
        .map_err(|e| LabError::Step {
            what: format!("start cmd of {}", n.name),
            detail: e.to_string(),
        })?;
    record(&topo.name, "pids", &child.id().to_string())?;
    // Reap it whenever it ends, so a stopped node leaves no zombie behind.
    let mut child = child;
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// Every process inside `node`'s network namespace (its `cmd` and whatever that started).
fn pids_in(topo: &Topology, node: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", &topo.netns(node)])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Stops everything running inside `node`, by PID, with `signal` (SIGKILL for a crash,
/// SIGTERM for a clean stop), and waits until it is gone. Returns how many it signalled.
pub fn stop_processes(topo: &Topology, node: &str, signal: nix::sys::signal::Signal) -> usize {
    let pids = pids_in(topo, node);
    for &pid in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
    for _ in 0..250 {
        if pids.iter().all(|p| !alive(*p)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    pids.len()
}

/// Brings the lab up; on failure, tears down what was made and returns the error.
pub fn up(topo: &Topology) -> Result<(), LabError> {
    if state_dir(&topo.name).exists() {
        return Err(LabError::AlreadyUp(topo.name.clone()));
    }
    match build(topo) {
        Ok(()) => Ok(()),
        Err(e) => {
            down(&topo.name);
            Err(e)
        }
    }
}

fn build(topo: &Topology) -> Result<(), LabError> {
    record(&topo.name, "file", &topo.dir.display().to_string())?;
    for n in &topo.nodes {
        let ns = topo.netns(&n.name);
        record(&topo.name, "netns", &ns)?;
        run(
            &format!("create namespace for {}", n.name),
            &["ip", "netns", "add", &ns],
        )?;
        run("loopback up", &["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        if n.kind == "bridge" {
            let br: String = n.name.chars().take(15).collect();
            run(
                &format!("bridge {}", n.name),
                &["ip", "-n", &ns, "link", "add", &br, "type", "bridge"],
            )?;
            run(
                &format!("bridge {} up", n.name),
                &["ip", "-n", &ns, "link", "set", &br, "up"],
            )?;
        }
        for (k, v) in &n.sysctls {
            run(
                &format!("sysctl {k} on {}", n.name),
                &[
                    "ip",
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    &format!("{k}={v}"),
                ],
            )?;
        }
    }
    for l in &topo.links {
        // Temporary names in the host namespace must be unique across labs built at once.
        let n = TMP_NAMES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 10000;
        let pid = std::process::id() % 10000;
        let tmp = [format!("svl{pid}a{n}"), format!("svl{pid}b{n}")];
        let what = format!(
            "link {}:{} — {}:{}",
            l.ends[0].0, l.ends[0].1, l.ends[1].0, l.ends[1].1
        );
        run(
            &what,
            &[
                "ip", "link", "add", &tmp[0], "type", "veth", "peer", "name", &tmp[1],
            ],
        )?;
        for (end, t) in l.ends.iter().zip(&tmp) {
            let ns = topo.netns(&end.0);
            run(
                &what,
                &["ip", "link", "set", t, "netns", &ns, "name", &end.1],
            )?;
            run(
                &what,
                &[
                    "ip",
                    "-n",
                    &ns,
                    "link",
                    "set",
                    &end.1,
                    "mtu",
                    &l.mtu.to_string(),
                    "up",
                ],
            )?;
            if let Some(bridge) = topo
                .nodes
                .iter()
                .find(|n| n.name == end.0 && n.kind == "bridge")
            {
                let br: String = bridge.name.chars().take(15).collect();
                run(
                    &what,
                    &["ip", "-n", &ns, "link", "set", &end.1, "master", &br],
                )?;
            }
        }
    }
    for n in topo.nodes.iter().filter(|n| !n.binds.is_empty()) {
        start_holder(topo, n)?;
    }
    for n in topo.nodes.iter().filter(|n| n.kind == "linux") {
        for cmd in &n.exec {
            exec_in(topo, &n.name, &split_words(cmd))?;
        }
    }
    for n in topo
        .nodes
        .iter()
        .filter(|n| n.kind == "linux" && n.cmd.is_some())
    {
        start_cmd(topo, &n.name)?;
    }
    Ok(())
}

/// A process that owns the node's private mount namespace with its binds applied.
fn start_holder(topo: &Topology, n: &NodeSpec) -> Result<(), LabError> {
    let mut script = String::new();
    for (host, inside, ro) in &n.binds {
        if !host.exists() {
            return Err(LabError::Step {
                what: format!("bind on {}", n.name),
                detail: format!("{} does not exist", host.display()),
            });
        }
        let (h, c) = (host.display().to_string(), inside.display().to_string());
        // The mount point must exist; what is created for it is removed by `down`.
        if !inside.exists() {
            // Record every directory this creates, outermost first, so `down` removes them.
            let mut missing: Vec<&Path> = inside
                .ancestors()
                .skip(1)
                .take_while(|a| !a.exists())
                .collect();
            missing.reverse();
            for dir in missing {
                record(&topo.name, "created", &dir.display().to_string())?;
            }
            if host.is_dir() {
                std::fs::create_dir_all(inside)
            } else {
                inside
                    .parent()
                    .map(std::fs::create_dir_all)
                    .unwrap_or(Ok(()))
                    .and_then(|()| std::fs::write(inside, b""))
            }
            .map_err(|source| LabError::State {
                path: c.clone(),
                source,
            })?;
            record(&topo.name, "created", &c)?;
        }
        script.push_str(&format!("mount --bind '{h}' '{c}' && "));
        if *ro {
            script.push_str(&format!("mount -o remount,bind,ro '{c}' && "));
        }
    }
    script.push_str("exec sleep infinity");
    let (tx_pid, holder) = {
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Step {
                what: format!("mount namespace of {}", n.name),
                detail: e.to_string(),
            })?;
        (child.id(), child)
    };
    record(&topo.name, "pids", &tx_pid.to_string())?;
    record(&topo.name, "holders", &format!("{} {tx_pid}", n.name))?;
    // Wait until the binds are in place (or the holder died saying why).
    let mut holder = holder;
    for _ in 0..100 {
        if let Ok(Some(status)) = holder.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = holder.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(LabError::Step {
                what: format!("binds of {}", n.name),
                detail: format!("{status}: {}", err.trim()),
            });
        }
        let mounts =
            std::fs::read_to_string(format!("/proc/{tx_pid}/mountinfo")).unwrap_or_default();
        if n.binds
            .iter()
            .all(|(_, c, _)| mounts.contains(&format!(" {} ", c.display())))
        {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(LabError::Step {
        what: format!("binds of {}", n.name),
        detail: "the mount namespace did not come up in 2 s".into(),
    })
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Tears the lab down: its processes (by recorded PID), namespaces, created mount points and
/// state. Safe to run twice.
pub fn down(lab: &str) {
    let pids: Vec<i32> = recorded(lab, "pids")
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    for &pid in &pids {
        // Stop the whole tree `ip netns exec`/`nsenter`/`sh` may have made: the command's
        // children share its process group only if it made one, so signal each by PID.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for _ in 0..50 {
        if pids.iter().all(|p| !alive(*p)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(40));
    }
    for &pid in &pids {
        if alive(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for ns in recorded(lab, "netns") {
        // Processes still inside the namespace (children of `cmd`) are stopped by PID.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    }
    for path in recorded(lab, "created").iter().rev() {
        let p = Path::new(path);
        let _ = if p.is_dir() {
            std::fs::remove_dir(p)
        } else {
            std::fs::remove_file(p)
        };
    }
    let _ = std::fs::remove_dir_all(state_dir(lab));
    // The state root goes too once no lab is left in it.
    let _ = std::fs::remove_dir(STATE_ROOT);
}

/// One line per node: namespace present, processes inside.
pub fn status(topo: &Topology) -> String {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut out = format!(
        "lab {} ({})\n",
        topo.name,
        if state_dir(&topo.name).exists() {
            "up"
        } else {
            "down"
        }
    );
    for n in &topo.nodes {
        let ns = topo.netns(&n.name);
        let present = list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns.as_str()));
        let pids = Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .count()
            })
            .unwrap_or(0);
        out.push_str(&format!(
            "  {:<12} {:<6} {:<28} {} process(es)\n",
            n.name,
            n.kind,
            if present {
                ns
            } else {
                format!("{ns} (missing)")
            },
            pids
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_lines_split_like_a_shell() {
        assert_eq!(
            split_words("ip addr add 10.0.0.1/24 dev eth1"),
            ["ip", "addr", "add", "10.0.0.1/24", "dev", "eth1"]
        );
        assert_eq!(
            split_words("vtysh -c 'conf t' -c \"router bgp 65000\""),
            ["vtysh", "-c", "conf t", "-c", "router bgp 65000"]
        );
        assert_eq!(split_words("echo ''"), ["echo", ""]);
    }
}
