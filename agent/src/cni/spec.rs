//! The CNI contract, pure: the environment variables, the network configuration on stdin, the
//! result and error JSON, the spec's error codes and version negotiation (spec 1.1.0, with
//! 0.4.0 and 1.0.0 accepted so older runtimes work).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The CNI spec's error codes (and our one plugin-specific code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in the network configuration.
    UnsupportedField = 2,
    /// 3: the container is unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid or missing environment variables.
    InvalidEnvironment = 4,
    /// 5: I/O failure.
    Io = 5,
    /// 6: failed to decode content.
    Decoding = 6,
    /// 7: invalid network configuration.
    InvalidConfig = 7,
    /// 11: try again later (the datastore is unreachable).
    TryAgainLater = 11,
    /// 50: the plugin is not available (STATUS).
    NotAvailable = 50,
    /// 100 (plugin-specific): no free address in the pools this node may use.
    PoolExhausted = 100,
    /// 999: anything else (the reference skel's internal error).
    Internal = 999,
}

/// A CNI error: printed as JSON on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The code.
    pub code: ErrorCode,
    /// One-line message.
    pub msg: String,
    /// Longer details (the cause), may be empty.
    pub details: String,
}

impl CniError {
    /// An error with a message and no details.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: impl fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    /// The spec's error object.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code as u32,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code as u32)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// The operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Is the plugin ready?
    Status,
    /// Which versions?
    Version,
}

/// The runtime's environment, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (optional for DEL).
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
}

fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(['/', ':']) // ':' would break the kernel's alias syntax
        && !name.chars().any(char::is_whitespace)
}

impl CniEnv {
    /// Reads and validates the variables (from `std::env::vars()` in the binary).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<CniEnv, CniError> {
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!(
                        "unknown CNI_COMMAND {other:?}: expected ADD, DEL, CHECK, STATUS or VERSION"
                    ),
                ));
            }
            None => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "required env variable CNI_COMMAND missing",
                ));
            }
        };
        let mut env = CniEnv {
            command,
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args: parse_args(get("CNI_ARGS").as_deref().unwrap_or(""))?,
        };
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            let mut missing = Vec::new();
            if env.container_id.is_empty() {
                missing.push("CNI_CONTAINERID");
            }
            if env.ifname.is_empty() {
                missing.push("CNI_IFNAME");
            }
            if env.netns.is_none() && command != Command::Del {
                missing.push("CNI_NETNS");
            }
            if !missing.is_empty() {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("required env variables [{}] missing", missing.join(" ")),
                ));
            }
            if !valid_container_id(&env.container_id) {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!(
                        "invalid CNI_CONTAINERID {:?}: it must start with a letter or digit and \
                         hold only letters, digits, '_', '.' and '-'",
                        env.container_id
                    ),
                ));
            }
            if !valid_ifname(&env.ifname) {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!(
                        "invalid CNI_IFNAME {:?}: at most 15 characters, no '/', ':' or spaces",
                        env.ifname
                    ),
                ));
            }
        } else {
            env.container_id.clear();
        }
        Ok(env)
    }

    /// The pod's namespace and name from `K8S_POD_NAMESPACE`/`K8S_POD_NAME`, or (outside
    /// Kubernetes) `default` and the container ID.
    pub fn pod(&self) -> (String, String) {
        match (
            self.args.get("K8S_POD_NAMESPACE"),
            self.args.get("K8S_POD_NAME"),
        ) {
            (Some(ns), Some(pod)) => (ns.clone(), pod.clone()),
            _ => ("default".into(), self.container_id.clone()),
        }
    }
}

fn parse_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
            )
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The IPAM section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpamConf {
    /// Must be `serval-ipam`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Limit IPv4 allocations to these pools (names).
    #[serde(default)]
    pub ipv4_pools: Vec<String>,
    /// Limit IPv6 allocations to these pools (names).
    #[serde(default)]
    pub ipv6_pools: Vec<String>,
    /// Whether to assign IPv4 (default true).
    #[serde(default = "yes")]
    pub assign_ipv4: bool,
    /// Whether to assign IPv6 (default false).
    #[serde(default)]
    pub assign_ipv6: bool,
}

fn yes() -> bool {
    true
}

/// The network configuration on stdin (Calico's key names, so existing conflists carry over).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NetConf {
    /// The version the runtime speaks.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The network's name (`k8s-pod-network`).
    pub name: String,
    /// `serval-cni`.
    #[serde(rename = "type")]
    pub kind: String,
    /// This node's name; falls back to the file the agent writes, then the hostname.
    #[serde(default)]
    pub nodename: Option<String>,
    /// `etcdv3` or `kubernetes`.
    #[serde(default = "default_datastore")]
    pub datastore_type: String,
    /// Comma-separated etcd endpoints.
    #[serde(default)]
    pub etcd_endpoints: Option<String>,
    /// CA certificate (PEM) for `https://` etcd endpoints (Calico's key).
    #[serde(default)]
    pub etcd_ca_cert_file: Option<String>,
    /// Client certificate (PEM) for etcd (Calico's key).
    #[serde(default)]
    pub etcd_cert_file: Option<String>,
    /// The client certificate's key (PEM) (Calico's key).
    #[serde(default)]
    pub etcd_key_file: Option<String>,
    /// Pod MTU; 0 reads the file the agent writes.
    #[serde(default)]
    pub mtu: u32,
    /// Where the agent writes the MTU.
    #[serde(default = "default_mtu_file")]
    pub mtu_file: String,
    /// IPAM settings.
    pub ipam: IpamConf,
    /// The previous result (DEL, CHECK).
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<Value>,
    /// Everything else (runtimeConfig, kubernetes, policy...), accepted and ignored.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl NetConf {
    /// How to reach etcd, from Calico's keys.
    pub fn etcd_config(&self) -> crate::datastore::etcd::EtcdConfig {
        crate::datastore::etcd::EtcdConfig::new(
            self.etcd_endpoints.as_deref(),
            self.etcd_ca_cert_file.as_deref(),
            self.etcd_cert_file.as_deref(),
            self.etcd_key_file.as_deref(),
        )
    }
}

fn default_datastore() -> String {
    "etcdv3".into()
}

/// Where serval-node writes the pod MTU.
pub const DEFAULT_MTU_FILE: &str = "/var/lib/serval/mtu";
/// Where serval-node writes its node name.
pub const NODENAME_FILE: &str = "/var/lib/serval/nodename";

fn default_mtu_file() -> String {
    DEFAULT_MTU_FILE.into()
}

impl NetConf {
    /// Parses and checks stdin.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            // Type and missing-field errors are configuration errors; syntax errors are decoding.
            let code = if e.is_data() {
                ErrorCode::InvalidConfig
            } else {
                ErrorCode::Decoding
            };
            CniError::new(code, "cannot read the network configuration on stdin").with_details(e)
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "CNI version {:?} is not supported; supported: {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if conf.ipam.kind != "serval-ipam" {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "ipam.type {:?} is not supported: serval-cni allocates from Serval's IP pools \
                     (set ipam.type to \"serval-ipam\")",
                    conf.ipam.kind
                ),
            ));
        }
        if !conf.ipam.assign_ipv4 && !conf.ipam.assign_ipv6 {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "ipam.assign_ipv4 and ipam.assign_ipv6 are both false: nothing to assign",
            ));
        }
        match conf.datastore_type.as_str() {
            "etcdv3" if conf.etcd_endpoints.as_deref().is_none_or(str::is_empty) => {
                return Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    "datastore_type etcdv3 needs etcd_endpoints (e.g. \"http://10.0.0.1:2379\")",
                ));
            }
            "etcdv3" => {
                if let Err(e) = conf.etcd_config().validate() {
                    return Err(CniError::new(
                        ErrorCode::InvalidConfig,
                        format!(
                            "etcd settings: {e} (keys etcd_endpoints, etcd_ca_cert_file, etcd_cert_file, etcd_key_file)"
                        ),
                    ));
                }
            }
            "kubernetes" => {
                // Calico's key names are the variables' in lower case; set with the
                // Kubernetes datastore they would do nothing, so they are refused.
                if let Some(var) = conf.etcd_config().set_variable() {
                    return Err(CniError::new(
                        ErrorCode::InvalidConfig,
                        format!(
                            "{} is set but datastore_type is kubernetes (etcd settings apply to etcdv3 only)",
                            var.to_ascii_lowercase()
                        ),
                    ));
                }
            }
            other => {
                return Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("datastore_type {other:?}: expected etcdv3 or kubernetes"),
                ));
            }
        }
        Ok(conf)
    }
}

/// One interface in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultInterface {
    /// Name.
    pub name: String,
    /// MAC.
    pub mac: String,
    /// MTU (container side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path, for interfaces inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultIp {
    /// `10.244.1.5/32`.
    pub address: String,
    /// `169.254.1.1` for IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultRoute {
    /// Destination.
    pub dst: String,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// The ADD result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    /// The version negotiated.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Host side first, then the container side.
    pub interfaces: Vec<ResultInterface>,
    /// Addresses.
    pub ips: Vec<ResultIp>,
    /// Routes inside the container.
    pub routes: Vec<ResultRoute>,
    /// DNS (empty; the runtime fills it in).
    #[serde(default)]
    pub dns: Value,
}

/// VERSION's answer.
pub fn version_result(cni_version: &str) -> Value {
    serde_json::json!({"cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_is_validated_with_the_spec_codes() {
        let ok = CniEnv::from_vars(&vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0",
            ),
        ]))
        .unwrap();
        assert_eq!(ok.command, Command::Add);
        assert_eq!(ok.pod(), ("prod".into(), "web-0".into()));

        let e = CniEnv::from_vars(&vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert_eq!(e.msg, "required env variables [CNI_NETNS] missing");
        // DEL may come without a netns.
        let del = CniEnv::from_vars(&vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(del.pod(), ("default".into(), "abc".into()));
        for (k, v) in [
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_IFNAME", "a-name-far-too-long"),
            ("CNI_IFNAME", "eth/0"),
            ("CNI_ARGS", "novalue"),
        ] {
            let mut m = vars(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", "eth0"),
            ]);
            m.insert(k.into(), v.into());
            assert_eq!(
                CniEnv::from_vars(&m).unwrap_err().code,
                ErrorCode::InvalidEnvironment,
                "{k}={v}"
            );
        }
        assert_eq!(
            CniEnv::from_vars(&vars(&[("CNI_COMMAND", "FROB")]))
                .unwrap_err()
                .code,
            ErrorCode::InvalidEnvironment
        );
        // VERSION and STATUS need nothing else.
        assert!(CniEnv::from_vars(&vars(&[("CNI_COMMAND", "VERSION")])).is_ok());
    }

    fn conf(extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"serval-cni",
                "etcd_endpoints":"http://127.0.0.1:2379","ipam":{{"type":"serval-ipam"}}{extra}}}"#
        )
    }

    #[test]
    fn configuration_errors_say_what_is_wrong() {
        let c = NetConf::parse(conf(r#","kubernetes":{"kubeconfig":"/x"}"#).as_bytes()).unwrap();
        assert_eq!(c.datastore_type, "etcdv3");
        assert_eq!(c.mtu_file, DEFAULT_MTU_FILE);
        assert!(c.ipam.assign_ipv4 && !c.ipam.assign_ipv6);
        assert!(c.other.contains_key("kubernetes"));

        let e = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::Decoding);
        assert!(!e.details.is_empty());
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.details.contains("missing field"), "{e}");
        let e = NetConf::parse(conf("").replace("1.0.0", "0.2.0").as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        assert!(e.msg.contains("1.1.0"));
        let e =
            NetConf::parse(conf("").replace("serval-ipam", "host-local").as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.msg.contains("serval-ipam"));
        let e = NetConf::parse(conf(r#","datastore_type":"consul""#).as_bytes()).unwrap_err();
        assert!(e.msg.contains("consul"));
        let e = NetConf::parse(
            conf("")
                .replace(r#""etcd_endpoints":"http://127.0.0.1:2379","#, "")
                .as_bytes(),
        )
        .unwrap_err();
        assert!(e.msg.contains("etcd_endpoints"));
        // etcd keys with the Kubernetes datastore: refused by name; empty ones (install-cni's
        // template in Kubernetes mode) are unset.
        let e = NetConf::parse(conf(r#","datastore_type":"kubernetes""#).as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(
            e.msg
                .starts_with("etcd_endpoints is set but datastore_type is kubernetes"),
            "{e}"
        );
        let k8s = conf(r#","datastore_type":"kubernetes""#).replace("http://127.0.0.1:2379", "");
        assert!(NetConf::parse(k8s.as_bytes()).is_ok());
    }

    #[test]
    fn errors_and_version_render_as_the_spec_says() {
        let e = CniError::new(ErrorCode::PoolExhausted, "no address").with_details("pool full");
        assert_eq!(
            e.to_json("1.0.0"),
            serde_json::json!({"cniVersion":"1.0.0","code":100,"msg":"no address","details":"pool full"})
        );
        assert_eq!(
            version_result("1.1.0")["supportedVersions"],
            serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
        );
    }
}
