//! containerlab topology files (`*.clab.yml`), the subset a namespace runner can honour:
//! `name`, `prefix`, `topology.{defaults,kinds,nodes,links}` with node fields `kind`
//! (`linux`, `bridge`), `image` (recorded, not pulled), `exec`, `cmd`, `binds`, `env`,
//! `labels`, `sysctls`, and brief links `endpoints: ["a:eth1", "b:eth1"]` with `mtu`.
//! Inheritance runs node → kind → defaults, maps merging. `${VAR}`, `${VAR:=default}` and
//! the `__clab*__` magic variables are expanded. Anything else is refused by name, so a file
//! never silently means something different here than under containerlab.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A node after inheritance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Its name.
    pub name: String,
    /// `linux` or `bridge`.
    pub kind: String,
    /// The image (not pulled: programs come from the host).
    pub image: Option<String>,
    /// Commands run in order once all links exist.
    pub exec: Vec<String>,
    /// A long-running command started in the background.
    pub cmd: Option<String>,
    /// Bind mounts `host:container[:ro]` (host paths relative to the file).
    pub binds: Vec<(PathBuf, PathBuf, bool)>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Labels (also exported as `CLAB_LABEL_*`).
    pub labels: BTreeMap<String, String>,
    /// sysctls set in the node's namespace.
    pub sysctls: BTreeMap<String, String>,
}

/// A brief-form link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// (node, interface) at each end.
    pub ends: [(String, String); 2],
    /// MTU (containerlab's default is 9500).
    pub mtu: u32,
}

/// A parsed, validated topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The lab's name.
    pub name: String,
    /// Namespace name prefix (`clab` unless `prefix` says otherwise).
    pub prefix: String,
    /// Nodes in file order.
    pub nodes: Vec<NodeSpec>,
    /// Links.
    pub links: Vec<LinkSpec>,
    /// The directory of the file (binds are relative to it).
    pub dir: PathBuf,
}

/// What is wrong with a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct TopologyError {
    /// The file.
    pub file: String,
    /// Which field and why.
    pub message: String,
}

const TOP_KEYS: &[&str] = &["name", "prefix", "topology"];
const TOPOLOGY_KEYS: &[&str] = &["defaults", "kinds", "nodes", "links"];
const NODE_KEYS: &[&str] = &[
    "kind", "image", "exec", "cmd", "binds", "env", "labels", "sysctls",
];
const LINK_KEYS: &[&str] = &["endpoints", "mtu"];

impl Topology {
    /// The namespace of a node (`clab-<lab>-<node>`, as containerlab names containers).
    pub fn netns(&self, node: &str) -> String {
        if self.prefix.is_empty() {
            node.to_string()
        } else {
            format!("{}-{}-{node}", self.prefix, self.name)
        }
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let file = path.display().to_string();
        let err = |message: String| TopologyError {
            file: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, &dir).map_err(err)
    }

    /// Parses YAML text; `dir` resolves relative bind paths.
    pub fn parse(text: &str, dir: &Path) -> Result<Topology, String> {
        let raw: Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let obj = raw.as_object().ok_or("the file is not a mapping")?;
        refuse_unknown("", obj, TOP_KEYS)?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or("`name` is required")?
            .to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!("name {name:?}: letters, digits, '-' and '_' only"));
        }
        let prefix = match obj.get("prefix") {
            None => "clab".to_string(),
            Some(Value::String(p)) if p == "__lab-name" => {
                return Err("prefix __lab-name is not supported by the namespace runner".into());
            }
            Some(Value::String(p)) => p.clone(),
            Some(_) => return Err("prefix must be a string".into()),
        };
        let topo = obj
            .get("topology")
            .and_then(Value::as_object)
            .ok_or("`topology` is required")?;
        refuse_unknown("topology.", topo, TOPOLOGY_KEYS)?;
        let empty = serde_json::Map::new();
        let defaults = topo
            .get("defaults")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        refuse_unknown("topology.defaults.", defaults, NODE_KEYS)?;
        let kinds = topo
            .get("kinds")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        for (k, v) in kinds {
            let m = v
                .as_object()
                .ok_or(format!("topology.kinds.{k} must be a mapping"))?;
            refuse_unknown(&format!("topology.kinds.{k}."), m, NODE_KEYS)?;
        }
        let nodes_raw = topo
            .get("nodes")
            .and_then(Value::as_object)
            .ok_or("topology.nodes is required")?;
        let mut nodes = Vec::new();
        for (node_name, v) in nodes_raw {
            if node_name.is_empty()
                || !node_name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                || !node_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            {
                return Err(format!("topology.nodes.{node_name}: invalid node name"));
            }
            let m = v.as_object().cloned().unwrap_or_default();
            refuse_unknown(&format!("topology.nodes.{node_name}."), &m, NODE_KEYS)?;
            let kind = m
                .get("kind")
                .or_else(|| defaults.get("kind"))
                .and_then(Value::as_str)
                .unwrap_or("linux")
                .to_string();
            if kind != "linux" && kind != "bridge" {
                return Err(format!(
                    "topology.nodes.{node_name}.kind {kind:?} is not supported by the namespace runner (linux or bridge)"
                ));
            }
            let layers = [
                Some(&m),
                kinds.get(&kind).and_then(Value::as_object),
                Some(defaults),
            ];
            let pick = |key: &str| layers.iter().flatten().find_map(|l| l.get(key)).cloned();
            let merge = |key: &str| -> Result<BTreeMap<String, String>, String> {
                let mut out = BTreeMap::new();
                for l in layers.iter().rev().flatten() {
                    if let Some(v) = l.get(key) {
                        let map = v.as_object().ok_or(format!("{key} must be a mapping"))?;
                        for (k, v) in map {
                            out.insert(k.clone(), scalar(v));
                        }
                    }
                }
                Ok(out)
            };
            // Env values get the magic names and the process env too (a var dir per lab).
            let env = merge("env")?
                .into_iter()
                .map(|(k, v)| Ok((k, expand(&v, &name, node_name, dir, &BTreeMap::new())?)))
                .collect::<Result<BTreeMap<_, _>, String>>()?;
            let labels = merge("labels")?;
            let sysctls = merge("sysctls")?;
            let ctx = |s: &str| expand(s, &name, node_name, dir, &env);
            let exec = match pick("exec") {
                None => Vec::new(),
                Some(Value::Array(list)) => list
                    .iter()
                    .map(|v| ctx(&scalar(v)))
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(format!("topology.nodes.{node_name}.exec must be a list")),
            };
            let cmd = pick("cmd").map(|v| ctx(&scalar(&v))).transpose()?;
            let mut binds = Vec::new();
            for b in pick("binds")
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
            {
                let text = ctx(&scalar(&b))?;
                let parts: Vec<&str> = text.split(':').collect();
                let (host, inside, ro) = match parts.as_slice() {
                    [h, c] | [h, c, "rw"] => (*h, *c, false),
                    [h, c, "ro"] => (*h, *c, true),
                    _ => {
                        return Err(format!(
                            "topology.nodes.{node_name}.binds: {text:?} is not host:container[:ro]"
                        ));
                    }
                };
                let host = if Path::new(host).is_absolute() {
                    PathBuf::from(host)
                } else {
                    dir.join(host)
                };
                binds.push((host, PathBuf::from(inside), ro));
            }
            nodes.push(NodeSpec {
                name: node_name.clone(),
                kind,
                image: pick("image").map(|v| scalar(&v)),
                exec,
                cmd,
                binds,
                env,
                labels,
                sysctls,
            });
        }
        let mut links = Vec::new();
        for (i, l) in topo
            .get("links")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let m = l
                .as_object()
                .ok_or(format!("topology.links[{i}] must be a mapping"))?;
            if m.contains_key("type") {
                return Err(format!(
                    "topology.links[{i}]: the extended link form (type) is not supported by the namespace runner; use endpoints"
                ));
            }
            refuse_unknown(&format!("topology.links[{i}]."), m, LINK_KEYS)?;
            let eps = m
                .get("endpoints")
                .and_then(Value::as_array)
                .filter(|e| e.len() == 2)
                .ok_or(format!(
                    "topology.links[{i}].endpoints must list two \"node:interface\" ends"
                ))?;
            let mut ends = Vec::new();
            for e in eps {
                let s = scalar(e);
                let (n, ifname) = s
                    .split_once(':')
                    .ok_or(format!("topology.links[{i}]: {s:?} is not node:interface"))?;
                if n == "host" || n == "mgmt-net" || n == "macvlan" {
                    return Err(format!(
                        "topology.links[{i}]: {n}: endpoints are not supported by the namespace runner"
                    ));
                }
                if !nodes.iter().any(|x| x.name == n) {
                    return Err(format!("topology.links[{i}]: node {n:?} is not defined"));
                }
                if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') {
                    return Err(format!(
                        "topology.links[{i}]: interface {ifname:?} (at most 15 characters, no '/')"
                    ));
                }
                ends.push((n.to_string(), ifname.to_string()));
            }
            let mtu = m.get("mtu").and_then(Value::as_u64).unwrap_or(9500) as u32;
            links.push(LinkSpec {
                ends: [ends[0].clone(), ends[1].clone()],
                mtu,
            });
        }
        Ok(Topology {
            name,
            prefix,
            nodes,
            links,
            dir: dir.to_path_buf(),
        })
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn refuse_unknown(
    at: &str,
    obj: &serde_json::Map<String, Value>,
    known: &[&str],
) -> Result<(), String> {
    for k in obj.keys() {
        if !known.contains(&k.as_str()) {
            return Err(format!(
                "{at}{k} is not supported by the namespace runner (supported here: {})",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

/// `${VAR}`, `${VAR:=default}` / `${VAR:-default}` from the node's env then the process env,
/// and the magic `__clab*__` names.
fn expand(
    s: &str,
    lab: &str,
    node: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<String, String> {
    let lab_dir = dir.join(format!("clab-{lab}"));
    let mut out = s
        .replace("__clabLabName__", lab)
        .replace("__clabNodeName__", node)
        .replace("__clabNodeDir__", &lab_dir.join(node).display().to_string())
        .replace("__clabDir__", &lab_dir.display().to_string());
    while let Some(start) = out.find("${") {
        let end = out[start..]
            .find('}')
            .ok_or(format!("unterminated ${{ in {s:?}"))?
            + start;
        let inner = &out[start + 2..end];
        let (var, default) = match inner.split_once(":=").or_else(|| inner.split_once(":-")) {
            Some((v, d)) => (v, Some(d)),
            None => (inner, None),
        };
        let value = env
            .get(var)
            .cloned()
            .or_else(|| std::env::var(var).ok())
            .or(default.map(String::from))
            .unwrap_or_default();
        out.replace_range(start..=end, &value);
    }
    Ok(out.replace("$$", "$"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inheritance_expansion_and_names() {
        let t = Topology::parse(
            r#"
name: demo
topology:
  defaults:
    env: {ROLE: default, ZONE: z1}
  kinds:
    linux:
      env: {ROLE: node, STATE: /run/x/__clabLabName__/__clabNodeName__}
      labels: {tier: kind}
  nodes:
    r1:
      kind: linux
      image: frrouting/frr:v8.4.0
      labels: {tier: core}
      exec:
        - ip addr add ${ADDR:=10.0.0.1/24} dev eth1
        - echo __clabNodeName__ in __clabLabName__ as ${ROLE}
      binds: [r1/frr.conf:/etc/frr/frr.conf:ro]
    sw: {kind: bridge}
  links:
    - endpoints: ["r1:eth1", "sw:p1"]
"#,
            Path::new("/labs"),
        )
        .unwrap();
        assert_eq!(t.netns("r1"), "clab-demo-r1");
        let r1 = &t.nodes[0];
        assert_eq!(r1.env["ROLE"], "node", "kind over defaults");
        assert_eq!(r1.env["ZONE"], "z1");
        assert_eq!(
            r1.env["STATE"], "/run/x/demo/r1",
            "magic names in env values"
        );
        assert_eq!(r1.labels["tier"], "core", "node over kind");
        assert_eq!(r1.exec[0], "ip addr add 10.0.0.1/24 dev eth1");
        assert_eq!(r1.exec[1], "echo r1 in demo as node");
        assert_eq!(
            r1.binds,
            vec![(
                PathBuf::from("/labs/r1/frr.conf"),
                PathBuf::from("/etc/frr/frr.conf"),
                true
            )]
        );
        assert_eq!(t.links[0].mtu, 9500);
        assert_eq!(t.nodes[1].kind, "bridge");
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let e = |text: &str| Topology::parse(text, Path::new(".")).unwrap_err();
        assert!(
            e("name: x\ntopology:\n  nodes:\n    a: {kind: nokia_srlinux}\n")
                .contains("nokia_srlinux")
        );
        assert!(
            e("name: x\ntopology:\n  nodes:\n    a: {ports: ['80:80']}\n")
                .contains("topology.nodes.a.ports")
        );
        assert!(e("name: x\nmgmt: {network: m}\ntopology: {nodes: {a: {}}}\n").contains("mgmt"));
        assert!(e("name: x\ntopology:\n  nodes: {a: {}}\n  links:\n    - endpoints: [\"a:eth1\", \"host:veth0\"]\n").contains("host"));
        assert!(e("name: x\ntopology:\n  nodes: {a: {}}\n  links:\n    - endpoints: [\"a:eth1\", \"b:eth1\"]\n").contains("\"b\" is not defined"));
        assert!(
            e("name: x\ntopology:\n  nodes: {a: {}}\n  links:\n    - type: veth\n")
                .contains("extended link form")
        );
        assert!(e("topology: {nodes: {a: {}}}\n").contains("`name` is required"));
    }
}
