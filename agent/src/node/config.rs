//! serval-node's start-up configuration: environment variables first (the DaemonSet way, with
//! Calico's names where Calico has one), flags to override, validated once with errors that
//! say which variable is wrong and what is accepted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::autodetect::Method;

/// The flags and variables of `serval-node run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// This node's name (Calico: NODENAME); defaults to the hostname.
    #[arg(long, env = "NODENAME")]
    pub node_name: Option<String>,
    /// `etcdv3` or `kubernetes`.
    #[arg(long, env = "DATASTORE_TYPE", default_value = "kubernetes")]
    pub datastore_type: String,
    /// etcd endpoints and TLS files (etcdv3 only).
    #[command(flatten)]
    pub etcd: crate::datastore::etcd::EtcdArgs,
    /// `autodetect` (default), `none`, or the node's IPv4 address with its prefix length.
    #[arg(long, env = "IP", default_value = "autodetect")]
    pub ip: String,
    /// How to autodetect: first-found, interface=REGEX, skip-interface=REGEX, cidr=CIDR,
    /// can-reach=ADDR.
    #[arg(long, env = "IP_AUTODETECTION_METHOD", default_value = "first-found")]
    pub ip_autodetection_method: String,
    /// `none` (the default, as Calico's: IPv4 only), `autodetect`, or the node's IPv6 address
    /// with its prefix length: turns on dual-stack (IPv6 pool, addresses and routes).
    #[arg(long, env = "IP6", default_value = "none")]
    pub ip6: String,
    /// How to autodetect the IPv6 address (the same methods as IP_AUTODETECTION_METHOD).
    #[arg(long, env = "IP6_AUTODETECTION_METHOD", default_value = "first-found")]
    pub ip6_autodetection_method: String,
    /// This node's AS (default: the cluster's, from BGPConfiguration, else 64512).
    #[arg(long = "as", env = "AS")]
    pub as_number: Option<u32>,
    /// Where `/status`, `/routes`, `/metrics`, `/livez` and `/readyz` are served: a loopback
    /// address only (the status API has no authentication).
    #[arg(long, env = "SERVAL_HTTP_ADDRESS", default_value = "127.0.0.1:9179")]
    pub http_address: SocketAddr,
    /// A separate listener serving only `/metrics` for Prometheus (Felix's
    /// prometheusMetricsEnabled + port 9091), e.g. `0.0.0.0:9091`; empty (the default) is off.
    #[arg(long, env = "SERVAL_METRICS_ADDRESS", default_value = "")]
    pub metrics_address: String,
    /// Where the node name and pod MTU are written for serval-cni.
    #[arg(long, env = "SERVAL_VAR_DIR", default_value = "/var/lib/serval")]
    pub var_dir: PathBuf,
    /// Seconds between full route resyncs (Felix's routeRefreshInterval).
    #[arg(long, env = "SERVAL_ROUTE_REFRESH_INTERVAL", default_value_t = 90)]
    pub route_refresh_interval: u64,
    /// Seconds between read-backs of Serval's iptables chains, ipsets and hooks, repairing
    /// drift (Felix's iptablesRefreshInterval; 90 s here, as its ipset and route refresh).
    #[arg(long, env = "SERVAL_IPTABLES_REFRESH_INTERVAL", default_value_t = 90)]
    pub iptables_refresh_interval: u64,
    /// The default pool created when the cluster has no IP pool yet (Calico's
    /// CALICO_IPV4POOL_CIDR).
    #[arg(long, env = "SERVAL_IPV4POOL_CIDR", default_value = "192.168.0.0/16")]
    pub ipv4pool_cidr: String,
    /// The default pool's block size.
    #[arg(long, env = "SERVAL_IPV4POOL_BLOCK_SIZE", default_value_t = 26)]
    pub ipv4pool_block_size: u8,
    /// The default pool's ipipMode (Always, CrossSubnet, Never).
    #[arg(long, env = "SERVAL_IPV4POOL_IPIP", default_value = "Never")]
    pub ipv4pool_ipip: String,
    /// The default pool's vxlanMode (Always, CrossSubnet, Never; default CrossSubnet, or
    /// Always with the vxlan networking backend, Never with none).
    #[arg(long, env = "SERVAL_IPV4POOL_VXLAN")]
    pub ipv4pool_vxlan: Option<String>,
    /// The default pool's nodeSelector.
    #[arg(long, env = "SERVAL_IPV4POOL_NODE_SELECTOR", default_value = "all()")]
    pub ipv4pool_node_selector: String,
    /// The default IPv6 pool created, with IP6 on, when the cluster has no IPv6 pool
    /// (Calico's CALICO_IPV6POOL_CIDR); empty (the default): a random ULA /48, as Calico.
    #[arg(long, env = "SERVAL_IPV6POOL_CIDR", default_value = "")]
    pub ipv6pool_cidr: String,
    /// The default IPv6 pool's block size.
    #[arg(long, env = "SERVAL_IPV6POOL_BLOCK_SIZE", default_value_t = 122)]
    pub ipv6pool_block_size: u8,
    /// The default IPv6 pool's vxlanMode (the same default as the IPv4 pool's).
    #[arg(long, env = "SERVAL_IPV6POOL_VXLAN")]
    pub ipv6pool_vxlan: Option<String>,
    /// The default IPv6 pool's natOutgoing (off by default, as Calico's).
    #[arg(long, env = "SERVAL_IPV6POOL_NAT_OUTGOING", default_value_t = false, action = clap::ArgAction::Set)]
    pub ipv6pool_nat_outgoing: bool,
    /// The default IPv6 pool's nodeSelector.
    #[arg(long, env = "SERVAL_IPV6POOL_NODE_SELECTOR", default_value = "all()")]
    pub ipv6pool_node_selector: String,
    /// How pod traffic between nodes is carried (Calico's CALICO_NETWORKING_BACKEND): `bird`
    /// (BGP; the default), `vxlan` (no BGP: VXLAN between nodes, routes from IPAM block
    /// affinities), `none` (no BGP; policy, and whatever encapsulation pools ask for).
    #[arg(long, env = "SERVAL_NETWORKING_BACKEND", default_value = "bird")]
    pub networking_backend: String,
    /// Which iptables binaries to use: auto, nft or legacy (Felix's iptablesBackend).
    #[arg(long, env = "SERVAL_IPTABLES_BACKEND", default_value = "auto")]
    pub iptables_backend: String,
    /// The VXLAN network identifier (Felix's vxlanVNI).
    #[arg(long, env = "SERVAL_VXLAN_VNI", default_value_t = 4096)]
    pub vxlan_vni: u32,
    /// The VXLAN UDP port (Felix's vxlanPort).
    #[arg(long, env = "SERVAL_VXLAN_PORT", default_value_t = 4789)]
    pub vxlan_port: u16,
    /// Ports always open to the host through a HostEndpoint, `proto:port,...` or `none`
    /// (Felix's failsafeInboundHostPorts; the default is Felix's).
    #[arg(
        long,
        env = "SERVAL_FAILSAFE_INBOUND_HOST_PORTS",
        default_value = "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667"
    )]
    pub failsafe_inbound_host_ports: String,
    /// Ports always open from the host through a HostEndpoint (Felix's
    /// failsafeOutboundHostPorts; the default is Felix's).
    #[arg(
        long,
        env = "SERVAL_FAILSAFE_OUTBOUND_HOST_PORTS",
        default_value = "udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667"
    )]
    pub failsafe_outbound_host_ports: String,
    /// tunl0's MTU; 0 (the default) is the host MTU less 20 (Felix's ipipMTU).
    #[arg(long, env = "SERVAL_IPIP_MTU", default_value_t = 0)]
    pub ipip_mtu: u32,
    /// vxlan.serval's MTU; 0 (the default) is the host MTU less 50 (Felix's vxlanMTU).
    #[arg(long, env = "SERVAL_VXLAN_MTU", default_value_t = 0)]
    pub vxlan_mtu: u32,
    /// The default pool's natOutgoing.
    #[arg(long, env = "SERVAL_IPV4POOL_NAT_OUTGOING", default_value_t = true, action = clap::ArgAction::Set)]
    pub ipv4pool_nat_outgoing: bool,
    /// Do not create a default pool.
    #[arg(long, env = "NO_DEFAULT_POOLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub no_default_pools: bool,
    /// Labels to set on this node's Node resource (`k=v,k2=v2`), for BGPPeer selectors.
    #[arg(long, env = "SERVAL_NODE_LABELS", default_value = "")]
    pub node_labels: String,
    /// Makes this node a route reflector with this cluster ID (IPv4 form).
    #[arg(long, env = "SERVAL_ROUTE_REFLECTOR_CLUSTER_ID")]
    pub route_reflector_cluster_id: Option<String>,
    /// Whether `/readyz` also requires every BGP session to be established.
    #[arg(long, env = "SERVAL_READINESS_REQUIRES_BGP", default_value_t = true, action = clap::ArgAction::Set)]
    pub readiness_requires_bgp: bool,
    /// serval-node's own namespace, where BGP password Secrets are read (the DaemonSet sets
    /// it from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    /// The host's CNI configuration directory as mounted here: with the Kubernetes datastore
    /// the agent keeps serval-cni's kubeconfig token fresh in it (skipped when absent).
    #[arg(
        long,
        env = "SERVAL_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    pub cni_conf_dir: PathBuf,
    /// serval-cni's own ServiceAccount, for which the agent mints tokens (Kubernetes
    /// datastore).
    #[arg(long, env = "SERVAL_CNI_SERVICE_ACCOUNT", default_value = "serval-cni")]
    pub cni_service_account: String,
    /// Where the service-account token and CA are mounted.
    #[arg(
        long,
        env = "SERVAL_SERVICE_ACCOUNT_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    pub service_account_dir: PathBuf,
}

/// How the node's address is chosen.
#[derive(Debug, Clone)]
pub enum AddressSource {
    /// Autodetect with this method.
    Detect(Method),
    /// Given (with its prefix length).
    Fixed(ipnet::IpNet),
    /// No address of the family (IPv4: policy-only or IPv6-only nodes; IPv6: IPv4 only).
    None,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name.
    pub node_name: String,
    /// Datastore: how to reach etcd, or `None` for Kubernetes.
    pub etcd: Option<crate::datastore::etcd::EtcdConfig>,
    /// The IPv4 address source.
    pub address: AddressSource,
    /// The IPv6 address source (`None`: IPv6 off).
    pub address_v6: AddressSource,
    /// The AS to record on the Node.
    pub as_number: Option<u32>,
    /// HTTP endpoint (loopback).
    pub http_address: SocketAddr,
    /// serval-cni's configuration directory and the service-account directory, for the
    /// plugin's kubeconfig refresh.
    pub cni_conf_dir: PathBuf,
    /// See [`RunArgs::service_account_dir`].
    pub service_account_dir: PathBuf,
    /// See [`RunArgs::cni_service_account`].
    pub cni_service_account: String,
    /// The metrics-only listener, when on.
    pub metrics_address: Option<SocketAddr>,
    /// The directory shared with serval-cni.
    pub var_dir: PathBuf,
    /// Full resync period.
    pub route_refresh: Duration,
    /// Firewall read-back period.
    pub iptables_refresh: Duration,
    /// The IPv4 pool to create when there is none.
    pub default_pool: Option<crate::resources::IPPool>,
    /// The IPv6 pool to create when there is none (IPv6 on).
    pub default_pool_v6: Option<crate::resources::IPPool>,
    /// Settings given that have no effect in this configuration (the IPv6 pool's while IP6
    /// is off), for serval-node to name in a warning rather than drop silently.
    pub without_effect: Vec<&'static str>,
    /// Labels to put on the Node resource.
    pub node_labels: std::collections::BTreeMap<String, String>,
    /// Route-reflector cluster ID to put on the Node resource.
    pub route_reflector_cluster_id: Option<std::net::Ipv4Addr>,
    /// `/readyz` requires established BGP sessions.
    pub readiness_requires_bgp: bool,
    /// Where BGP password Secrets are read.
    pub namespace: String,
    /// Whether BGP carries routes (networking backend `bird`).
    pub bgp: bool,
    /// The iptables backend asked for (`auto`, `nft`, `legacy`).
    pub iptables_backend: String,
    /// VXLAN VNI and port, tunnel MTUs (None: from the host MTU).
    pub tunnels: TunnelConfig,
    /// The ports host endpoints always let through.
    pub failsafe: serval_policy::compile::Failsafe,
}

/// Parses Felix's failsafe port list: `proto:port` entries (tcp, udp, sctp) or `none`.
fn failsafe_ports(variable: &'static str, text: &str) -> Result<Vec<(u8, u16)>, ConfigError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") || text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(str::trim)
        .map(|entry| {
            let parts: Vec<&str> = entry.split(':').collect();
            let [proto, port] = parts[..] else {
                return Err(bad(
                    variable,
                    format!(
                        "{entry:?}: expected protocol:port such as tcp:22 (a network in the entry is not supported)"
                    ),
                ));
            };
            let proto = match proto.to_ascii_lowercase().as_str() {
                "tcp" => 6,
                "udp" => 17,
                "sctp" => 132,
                other => {
                    return Err(bad(
                        variable,
                        format!("{entry:?}: {other:?} is not tcp, udp or sctp"),
                    ));
                }
            };
            match port.parse::<u16>() {
                Ok(p) if p > 0 => Ok((proto, p)),
                _ => Err(bad(variable, format!("{entry:?}: {port:?} is not a port"))),
            }
        })
        .collect()
}

/// The tunnel settings Felix exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelConfig {
    /// VXLAN VNI.
    pub vxlan_vni: u32,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// tunl0's MTU when set.
    pub ipip_mtu: Option<u32>,
    /// vxlan.serval's MTU when set.
    pub vxlan_mtu: Option<u32>,
}

/// How pod traffic between nodes is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetworkingBackend {
    Bird,
    Vxlan,
    None,
}

fn networking_backend(text: &str) -> Result<NetworkingBackend, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "bird" | "bgp" | "" => Ok(NetworkingBackend::Bird),
        "vxlan" => Ok(NetworkingBackend::Vxlan),
        "none" => Ok(NetworkingBackend::None),
        other => Err(bad(
            "SERVAL_NETWORKING_BACKEND",
            format!("{other:?}: expected bird, vxlan or none"),
        )),
    }
}

/// A tunnel MTU: 0 is automatic; otherwise IPv4's minimum (576) up to jumbo frames.
fn tunnel_mtu(variable: &'static str, mtu: u32) -> Result<Option<u32>, ConfigError> {
    match mtu {
        0 => Ok(None),
        576..=9000 => Ok(Some(mtu)),
        _ => Err(bad(
            variable,
            format!("{mtu}: expected 0 (automatic) or 576..=9000"),
        )),
    }
}

/// A configuration error naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    /// The environment variable (and flag) at fault.
    pub variable: &'static str,
    /// What is wrong and what is accepted.
    pub message: String,
}

fn bad(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

/// A Kubernetes-style node name (RFC 1123 subdomain).
fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn encap_mode(
    variable: &'static str,
    text: &str,
) -> Result<crate::resources::EncapMode, ConfigError> {
    use crate::resources::EncapMode;
    match text.to_ascii_lowercase().as_str() {
        "always" => Ok(EncapMode::Always),
        "crosssubnet" | "cross-subnet" => Ok(EncapMode::CrossSubnet),
        "never" | "off" | "" => Ok(EncapMode::Never),
        _ => Err(bad(
            variable,
            format!("{text:?}: expected Always, CrossSubnet or Never"),
        )),
    }
}

/// The variables that set one family's default pool, for errors that name them.
struct PoolVars {
    cidr: &'static str,
    ipip: &'static str,
    vxlan: &'static str,
    node_selector: &'static str,
}

const V4_POOL_VARS: PoolVars = PoolVars {
    cidr: "SERVAL_IPV4POOL_CIDR",
    ipip: "SERVAL_IPV4POOL_IPIP",
    vxlan: "SERVAL_IPV4POOL_VXLAN",
    node_selector: "SERVAL_IPV4POOL_NODE_SELECTOR",
};

const V6_POOL_VARS: PoolVars = PoolVars {
    cidr: "SERVAL_IPV6POOL_CIDR",
    ipip: "SERVAL_IPV6POOL_IPIP",
    vxlan: "SERVAL_IPV6POOL_VXLAN",
    node_selector: "SERVAL_IPV6POOL_NODE_SELECTOR",
};

/// One family's default pool settings.
struct PoolArgs<'a> {
    name: &'static str,
    vars: &'static PoolVars,
    cidr: &'a str,
    block_size: u8,
    ipip: &'a str,
    vxlan: Option<&'a str>,
    nat_outgoing: bool,
    node_selector: &'a str,
}

/// A random unique local /48 (RFC 4193's `fd` + 40 random bits), Calico's default IPv6 pool.
fn random_ula() -> String {
    let mut id = [0u8; 5];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut id);
    }
    format!(
        "fd{:02x}:{:02x}{:02x}:{:02x}{:02x}::/48",
        id[0], id[1], id[2], id[3], id[4]
    )
}

impl RunArgs {
    /// The default pool from the SERVAL_IPV4POOL_* settings, validated like any IPPool.
    fn default_pool(&self) -> Result<crate::resources::IPPool, ConfigError> {
        self.family_pool(&PoolArgs {
            name: "default-ipv4-ippool",
            vars: &V4_POOL_VARS,
            cidr: &self.ipv4pool_cidr,
            block_size: self.ipv4pool_block_size,
            ipip: &self.ipv4pool_ipip,
            vxlan: self.ipv4pool_vxlan.as_deref(),
            nat_outgoing: self.ipv4pool_nat_outgoing,
            node_selector: &self.ipv4pool_node_selector,
        })
    }

    /// The default IPv6 pool from the SERVAL_IPV6POOL_* settings (no IPIP: IPv4 only).
    fn default_pool_v6(&self) -> Result<crate::resources::IPPool, ConfigError> {
        let cidr = match self.ipv6pool_cidr.trim() {
            "" => random_ula(),
            given => given.to_string(),
        };
        let pool = self.family_pool(&PoolArgs {
            name: "default-ipv6-ippool",
            vars: &V6_POOL_VARS,
            cidr: &cidr,
            block_size: self.ipv6pool_block_size,
            ipip: "Never",
            vxlan: self.ipv6pool_vxlan.as_deref(),
            nat_outgoing: self.ipv6pool_nat_outgoing,
            node_selector: &self.ipv6pool_node_selector,
        })?;
        if !pool.spec.cidr_net().is_some_and(|c| c.addr().is_ipv6()) {
            return Err(bad(
                "SERVAL_IPV6POOL_CIDR",
                format!("{cidr:?} is not an IPv6 prefix"),
            ));
        }
        Ok(pool)
    }

    fn family_pool(&self, a: &PoolArgs<'_>) -> Result<crate::resources::IPPool, ConfigError> {
        use crate::resources::{EncapMode, IPPool, IPPoolSpec, ServalResource};
        let backend = networking_backend(&self.networking_backend)?;
        let ipip = encap_mode(a.vars.ipip, a.ipip)?;
        if ipip != EncapMode::Never && backend != NetworkingBackend::Bird {
            return Err(bad(
                a.vars.ipip,
                "IPIP routes are learned over BGP: it needs the bird networking backend (use VXLAN with vxlan)",
            ));
        }
        let vxlan_default = match backend {
            NetworkingBackend::Bird => "CrossSubnet",
            NetworkingBackend::Vxlan => "Always",
            NetworkingBackend::None => "Never",
        };
        let vxlan = encap_mode(a.vars.vxlan, a.vxlan.unwrap_or(vxlan_default))?;
        serval_policy::Selector::parse(a.node_selector)
            .map_err(|e| bad(a.vars.node_selector, e.to_string()))?;
        // Both on is invalid; IPIP given explicitly wins over the VXLAN default.
        let vxlan = if ipip != EncapMode::Never {
            EncapMode::Never
        } else {
            vxlan
        };
        let pool = IPPool {
            metadata: kube::api::ObjectMeta {
                name: Some(a.name.into()),
                ..Default::default()
            },
            spec: IPPoolSpec {
                cidr: a.cidr.into(),
                block_size: Some(a.block_size),
                ipip_mode: ipip,
                vxlan_mode: vxlan,
                nat_outgoing: a.nat_outgoing,
                node_selector: Some(a.node_selector.to_string())
                    .filter(|s| !s.trim().is_empty() && s.trim() != "all()"),
                ..IPPoolSpec::default()
            },
        };
        pool.validate()
            .map_err(|e| bad(a.vars.cidr, e.to_string()))?;
        Ok(pool)
    }

    /// One family's address source from its IP / IP6 and autodetection variables.
    fn address_source(&self, v6: bool) -> Result<AddressSource, ConfigError> {
        let (ip_var, method_var, text, method, family, example) = if v6 {
            (
                "IP6",
                "IP6_AUTODETECTION_METHOD",
                &self.ip6,
                &self.ip6_autodetection_method,
                "IPv6",
                "fd00:1::5/64",
            )
        } else {
            (
                "IP",
                "IP_AUTODETECTION_METHOD",
                &self.ip,
                &self.ip_autodetection_method,
                "IPv4",
                "10.0.0.5/24",
            )
        };
        Ok(match text.trim() {
            "" | "autodetect" => AddressSource::Detect(
                method
                    .parse()
                    .map_err(|e: crate::autodetect::MethodError| bad(method_var, e.to_string()))?,
            ),
            "none" => AddressSource::None,
            given => {
                let net: ipnet::IpNet = given.parse().map_err(|_| {
                    bad(
                        ip_var,
                        format!(
                            "{given:?}: expected autodetect, none, or an {family} address with its \
                             prefix length ({example}; the prefix decides CrossSubnet)"
                        ),
                    )
                })?;
                if net.addr().is_ipv6() != v6 {
                    return Err(bad(ip_var, format!("{given:?} is not an {family} address")));
                }
                AddressSource::Fixed(net)
            }
        })
    }

    /// Validates; `hostname` is the fallback node name.
    pub fn validate(&self, hostname: &str) -> Result<NodeConfig, ConfigError> {
        if !self.http_address.ip().is_loopback() {
            return Err(bad(
                "SERVAL_HTTP_ADDRESS",
                format!(
                    "{}: the status API (/status, /routes) has no authentication and stays on a loopback address; to expose metrics use SERVAL_METRICS_ADDRESS",
                    self.http_address
                ),
            ));
        }
        let metrics_address = match self.metrics_address.trim() {
            "" | "off" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|e| {
                bad(
                    "SERVAL_METRICS_ADDRESS",
                    format!("{text:?}: {e} (expected ADDRESS:PORT such as 0.0.0.0:9091, or empty for off)"),
                )
            })?),
        };
        let node_name = self
            .node_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| hostname.trim().to_lowercase());
        if !valid_node_name(&node_name) {
            return Err(bad(
                "NODENAME",
                format!(
                    "{node_name:?} is not a valid node name (lower-case letters, digits, '-' and '.')"
                ),
            ));
        }
        let etcd = match self.datastore_type.as_str() {
            "kubernetes" => {
                if let Some(var) = self.etcd.config().set_variable() {
                    return Err(bad(
                        var,
                        "is set but DATASTORE_TYPE is kubernetes (etcd settings apply to etcdv3 only)",
                    ));
                }
                None
            }
            "etcdv3" => {
                let c = self.etcd.config();
                c.validate().map_err(|e| bad(e.variable, e.reason))?;
                Some(c)
            }
            other => {
                return Err(bad(
                    "DATASTORE_TYPE",
                    format!("{other:?}: expected kubernetes or etcdv3"),
                ));
            }
        };
        let address = self.address_source(false)?;
        // Calico's IP6 default is none; an empty IP6 means the same here, not autodetect.
        let address_v6 = if self.ip6.trim().is_empty() {
            AddressSource::None
        } else {
            self.address_source(true)?
        };
        if self.as_number == Some(0) {
            return Err(bad("AS", "0 is not a valid AS number"));
        }
        if self.route_refresh_interval == 0 {
            return Err(bad(
                "SERVAL_ROUTE_REFRESH_INTERVAL",
                "must be at least 1 second",
            ));
        }
        if self.iptables_refresh_interval == 0 {
            return Err(bad(
                "SERVAL_IPTABLES_REFRESH_INTERVAL",
                "must be at least 1 second",
            ));
        }
        let bgp = networking_backend(&self.networking_backend)? == NetworkingBackend::Bird;
        let iptables_backend = match self.iptables_backend.trim().to_ascii_lowercase().as_str() {
            b @ ("auto" | "nft" | "legacy") => b.to_string(),
            other => {
                return Err(bad(
                    "SERVAL_IPTABLES_BACKEND",
                    format!("{other:?}: expected auto, nft or legacy"),
                ));
            }
        };
        if !(1..=0xff_ffff).contains(&self.vxlan_vni) {
            return Err(bad(
                "SERVAL_VXLAN_VNI",
                format!("{}: expected 1..=16777215", self.vxlan_vni),
            ));
        }
        if self.vxlan_port == 0 {
            return Err(bad("SERVAL_VXLAN_PORT", "0: expected 1..=65535"));
        }
        let tunnels = TunnelConfig {
            vxlan_vni: self.vxlan_vni,
            vxlan_port: self.vxlan_port,
            ipip_mtu: tunnel_mtu("SERVAL_IPIP_MTU", self.ipip_mtu)?,
            vxlan_mtu: tunnel_mtu("SERVAL_VXLAN_MTU", self.vxlan_mtu)?,
        };
        let failsafe = serval_policy::compile::Failsafe {
            inbound: failsafe_ports(
                "SERVAL_FAILSAFE_INBOUND_HOST_PORTS",
                &self.failsafe_inbound_host_ports,
            )?,
            outbound: failsafe_ports(
                "SERVAL_FAILSAFE_OUTBOUND_HOST_PORTS",
                &self.failsafe_outbound_host_ports,
            )?,
        };
        let default_pool = if self.no_default_pools {
            None
        } else {
            Some(self.default_pool()?)
        };
        let ipv6_on = !matches!(address_v6, AddressSource::None);
        let default_pool_v6 = if self.no_default_pools || !ipv6_on {
            None
        } else {
            Some(self.default_pool_v6()?)
        };
        let without_effect = if ipv6_on {
            Vec::new()
        } else {
            [
                (
                    "SERVAL_IPV6POOL_CIDR",
                    !self.ipv6pool_cidr.trim().is_empty(),
                ),
                (
                    "SERVAL_IPV6POOL_BLOCK_SIZE",
                    self.ipv6pool_block_size != 122,
                ),
                ("SERVAL_IPV6POOL_VXLAN", self.ipv6pool_vxlan.is_some()),
                ("SERVAL_IPV6POOL_NAT_OUTGOING", self.ipv6pool_nat_outgoing),
                (
                    "SERVAL_IPV6POOL_NODE_SELECTOR",
                    self.ipv6pool_node_selector.trim() != "all()",
                ),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
        };
        let mut node_labels = std::collections::BTreeMap::new();
        for pair in self
            .node_labels
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad("SERVAL_NODE_LABELS", format!("{pair:?} is not key=value")))?;
            node_labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        let route_reflector_cluster_id = self
            .route_reflector_cluster_id
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse().map_err(|_| {
                    bad(
                        "SERVAL_ROUTE_REFLECTOR_CLUSTER_ID",
                        format!("{c:?} is not an IPv4-formatted cluster ID (e.g. 244.0.0.1)"),
                    )
                })
            })
            .transpose()?;
        Ok(NodeConfig {
            failsafe,
            bgp,
            iptables_backend,
            tunnels,
            namespace: self.namespace.clone(),
            readiness_requires_bgp: self.readiness_requires_bgp,
            node_labels,
            route_reflector_cluster_id,
            default_pool,
            default_pool_v6,
            without_effect,
            node_name,
            etcd,
            address,
            address_v6,
            as_number: self.as_number,
            http_address: self.http_address,
            cni_conf_dir: self.cni_conf_dir.clone(),
            service_account_dir: self.service_account_dir.clone(),
            cni_service_account: self.cni_service_account.clone(),
            metrics_address,
            var_dir: self.var_dir.clone(),
            route_refresh: Duration::from_secs(self.route_refresh_interval),
            iptables_refresh: Duration::from_secs(self.iptables_refresh_interval),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: RunArgs,
    }

    fn args(flags: &[&str]) -> RunArgs {
        let mut all = vec!["serval-node"];
        all.extend_from_slice(flags);
        Wrap::try_parse_from(all).unwrap().args
    }

    #[test]
    fn defaults_and_fixed_address() {
        let c = args(&[
            "--datastore-type",
            "etcdv3",
            "--etcd-endpoints",
            "http://a:2379, http://b:2379",
        ])
        .validate("Node-A")
        .unwrap();
        assert_eq!(c.node_name, "node-a", "hostname fallback, lower-cased");
        assert_eq!(
            c.etcd.map(|e| e.endpoints),
            Some(vec!["http://a:2379".into(), "http://b:2379".into()])
        );
        assert!(matches!(
            c.address,
            AddressSource::Detect(Method::FirstFound)
        ));
        assert_eq!(c.route_refresh, Duration::from_secs(90));
        assert_eq!(c.iptables_refresh, Duration::from_secs(90));
        let c = args(&["--ip", "10.0.0.5/24", "--node-name", "n1"])
            .validate("h")
            .unwrap();
        assert!(matches!(c.address, AddressSource::Fixed(n) if n.prefix_len() == 24));
        assert!(c.etcd.is_none(), "kubernetes by default");
        let pool = c.default_pool.expect("a default pool");
        assert_eq!(pool.spec.cidr, "192.168.0.0/16");
        assert_eq!(
            pool.spec.vxlan_mode,
            crate::resources::EncapMode::CrossSubnet
        );
        assert!(pool.spec.nat_outgoing);
        let c = args(&["--no-default-pools", "true", "--ipv4pool-ipip", "Always"])
            .validate("h")
            .unwrap();
        assert!(c.default_pool.is_none());
        let c = args(&["--ipv4pool-ipip", "Always"]).validate("h").unwrap();
        let pool = c.default_pool.unwrap();
        assert_eq!(
            (pool.spec.ipip_mode, pool.spec.vxlan_mode),
            (
                crate::resources::EncapMode::Always,
                crate::resources::EncapMode::Never
            )
        );
    }

    #[test]
    fn ipv6_is_off_by_default_and_ip6_turns_on_dual_stack() {
        use crate::resources::EncapMode;
        let c = args(&[]).validate("h").unwrap();
        assert!(matches!(c.address_v6, AddressSource::None));
        assert!(c.default_pool_v6.is_none(), "no IPv6 pool without IP6");
        assert!(c.without_effect.is_empty());
        // IPv6 pool settings without IP6 have no effect: named, not dropped silently.
        let c = args(&[
            "--ipv6pool-cidr",
            "fd00:10::/48",
            "--ipv6pool-vxlan",
            "Always",
        ])
        .validate("h")
        .unwrap();
        assert_eq!(
            c.without_effect,
            ["SERVAL_IPV6POOL_CIDR", "SERVAL_IPV6POOL_VXLAN"]
        );
        let c = args(&[
            "--ip6",
            "autodetect",
            "--ip6-autodetection-method",
            "interface=eth0",
        ])
        .validate("h")
        .unwrap();
        assert!(matches!(
            c.address_v6,
            AddressSource::Detect(Method::Interface(_))
        ));
        let pool = c.default_pool_v6.expect("a default IPv6 pool");
        assert_eq!(pool.metadata.name.as_deref(), Some("default-ipv6-ippool"));
        let cidr = pool.spec.cidr_net().unwrap();
        assert!(
            cidr.prefix_len() == 48 && pool.spec.cidr.text().starts_with("fd"),
            "a random ULA /48: {cidr}"
        );
        assert_eq!(pool.spec.block_size, Some(122));
        assert!(!pool.spec.nat_outgoing, "Calico's IPv6 default");
        assert_eq!(pool.spec.vxlan_mode, EncapMode::CrossSubnet);
        let c = args(&[
            "--ip6",
            "fd00:1::5/64",
            "--ipv6pool-cidr",
            "fd00:10::/48",
            "--ipv6pool-vxlan",
            "Never",
            "--ipv6pool-nat-outgoing",
            "true",
        ])
        .validate("h")
        .unwrap();
        assert!(matches!(c.address_v6, AddressSource::Fixed(n) if n.prefix_len() == 64));
        let pool = c.default_pool_v6.unwrap();
        assert_eq!(pool.spec.cidr, "fd00:10::/48");
        assert!(pool.spec.nat_outgoing && pool.spec.vxlan_mode == EncapMode::Never);
        let e = |flags: &[&str]| args(flags).validate("h").unwrap_err();
        assert_eq!(e(&["--ip6", "10.0.0.5/24"]).variable, "IP6");
        assert_eq!(e(&["--ip", "fd00::5/64"]).variable, "IP");
        assert_eq!(
            e(&[
                "--ip6",
                "autodetect",
                "--ip6-autodetection-method",
                "sideways"
            ])
            .variable,
            "IP6_AUTODETECTION_METHOD"
        );
        assert_eq!(
            e(&["--ip6", "autodetect", "--ipv6pool-cidr", "10.0.0.0/16"]).variable,
            "SERVAL_IPV6POOL_CIDR"
        );
        assert_eq!(
            e(&["--ip6", "autodetect", "--ipv6pool-block-size", "64"]).variable,
            "SERVAL_IPV6POOL_CIDR"
        );
    }

    #[test]
    fn networking_backend_and_felix_tunnel_settings() {
        let ok = |flags: &[&str]| args(flags).validate("h").unwrap();
        let e = |flags: &[&str]| args(flags).validate("h").unwrap_err();
        let pool = |c: &NodeConfig| c.default_pool.clone().unwrap().spec;
        // bird (the default): BGP, CrossSubnet VXLAN.
        let c = ok(&[]);
        assert!(c.bgp);
        assert_eq!(
            pool(&c).vxlan_mode,
            crate::resources::EncapMode::CrossSubnet
        );
        assert_eq!(c.iptables_backend, "auto");
        assert_eq!(c.failsafe, serval_policy::compile::Failsafe::default());
        // Failsafe ports, Felix's syntax; a network in an entry is refused by name.
        let c = ok(&[
            "--failsafe-inbound-host-ports",
            "tcp:22, UDP:68",
            "--failsafe-outbound-host-ports",
            "none",
        ]);
        assert_eq!(c.failsafe.inbound, [(6, 22), (17, 68)]);
        assert!(c.failsafe.outbound.is_empty());
        assert_eq!(
            e(&["--failsafe-inbound-host-ports", "tcp:10.0.0.0/8:22"]).variable,
            "SERVAL_FAILSAFE_INBOUND_HOST_PORTS"
        );
        assert_eq!(
            e(&["--failsafe-outbound-host-ports", "icmp:1"]).variable,
            "SERVAL_FAILSAFE_OUTBOUND_HOST_PORTS"
        );
        // vxlan: no BGP, VXLAN Always unless the pool says otherwise.
        let c = ok(&["--networking-backend", "vxlan"]);
        assert!(!c.bgp);
        assert_eq!(pool(&c).vxlan_mode, crate::resources::EncapMode::Always);
        let c = ok(&[
            "--networking-backend",
            "vxlan",
            "--ipv4pool-vxlan",
            "CrossSubnet",
        ]);
        assert_eq!(
            pool(&c).vxlan_mode,
            crate::resources::EncapMode::CrossSubnet
        );
        // none: no BGP, no encapsulation by default.
        let c = ok(&["--networking-backend", "none"]);
        assert!(!c.bgp);
        assert_eq!(pool(&c).vxlan_mode, crate::resources::EncapMode::Never);
        // IPIP routes need BGP.
        assert_eq!(
            e(&["--networking-backend", "vxlan", "--ipv4pool-ipip", "Always"]).variable,
            "SERVAL_IPV4POOL_IPIP"
        );
        assert_eq!(
            e(&["--networking-backend", "calico"]).variable,
            "SERVAL_NETWORKING_BACKEND"
        );
        // Tunnel settings and the iptables backend.
        let c = ok(&[
            "--vxlan-vni",
            "4097",
            "--vxlan-port",
            "8472",
            "--vxlan-mtu",
            "1410",
            "--iptables-backend",
            "Legacy",
        ]);
        assert_eq!(
            c.tunnels,
            TunnelConfig {
                vxlan_vni: 4097,
                vxlan_port: 8472,
                ipip_mtu: None,
                vxlan_mtu: Some(1410),
            }
        );
        assert_eq!(c.iptables_backend, "legacy");
        assert_eq!(e(&["--vxlan-vni", "0"]).variable, "SERVAL_VXLAN_VNI");
        assert_eq!(e(&["--vxlan-vni", "16777216"]).variable, "SERVAL_VXLAN_VNI");
        assert_eq!(e(&["--vxlan-port", "0"]).variable, "SERVAL_VXLAN_PORT");
        assert_eq!(e(&["--ipip-mtu", "100"]).variable, "SERVAL_IPIP_MTU");
        assert_eq!(
            e(&["--iptables-backend", "ebpf"]).variable,
            "SERVAL_IPTABLES_BACKEND"
        );
        // The default pool's node selector.
        let c = ok(&["--ipv4pool-node-selector", "zone == 'a'"]);
        assert_eq!(pool(&c).node_selector.as_deref(), Some("zone == 'a'"));
        assert_eq!(ok(&[]).default_pool.unwrap().spec.node_selector, None);
        assert_eq!(
            e(&["--ipv4pool-node-selector", "zone =="]).variable,
            "SERVAL_IPV4POOL_NODE_SELECTOR"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let e = |flags: &[&str]| args(flags).validate("h").unwrap_err();
        assert_eq!(
            e(&["--datastore-type", "etcdv3"]).variable,
            "ETCD_ENDPOINTS"
        );
        assert_eq!(
            e(&["--datastore-type", "etcdv3", "--etcd-endpoints", "a:2379"]).variable,
            "ETCD_ENDPOINTS"
        );
        assert_eq!(
            e(&["--datastore-type", "consul"]).variable,
            "DATASTORE_TYPE"
        );
        // etcd settings with the Kubernetes datastore would do nothing: refused by name.
        assert_eq!(
            e(&["--etcd-endpoints", "http://10.0.0.1:2379"]).variable,
            "ETCD_ENDPOINTS"
        );
        assert_eq!(
            e(&["--etcd-key-file", "/etc/etcd/key.pem"]).variable,
            "ETCD_KEY_FILE"
        );
        assert!(args(&["--etcd-endpoints", ""]).validate("h").is_ok());
        assert_eq!(e(&["--ip", "10.0.0.300/24"]).variable, "IP");
        assert_eq!(e(&["--ip", "fd00::1/64"]).variable, "IP");
        let m = e(&["--ip-autodetection-method", "nic=eth0"]);
        assert_eq!(m.variable, "IP_AUTODETECTION_METHOD");
        assert!(m.message.contains("can-reach"), "{m}");
        assert_eq!(e(&["--node-name", "Bad_Name"]).variable, "NODENAME");
        assert_eq!(e(&["--as", "0"]).variable, "AS");
        assert_eq!(e(&["--node-labels", "rr"]).variable, "SERVAL_NODE_LABELS");
        assert_eq!(
            e(&["--route-reflector-cluster-id", "rack1"]).variable,
            "SERVAL_ROUTE_REFLECTOR_CLUSTER_ID"
        );
        assert_eq!(
            e(&["--ipv4pool-cidr", "10.0.0.1/16"]).variable,
            "SERVAL_IPV4POOL_CIDR",
            "host bits set"
        );
        assert_eq!(
            e(&["--ipv4pool-vxlan", "sometimes"]).variable,
            "SERVAL_IPV4POOL_VXLAN"
        );
        // etcd over TLS, with Calico's variables.
        let tls = [
            "--datastore-type",
            "etcdv3",
            "--etcd-endpoints",
            "https://a:2379",
        ];
        assert_eq!(e(&tls).variable, "ETCD_CA_CERT_FILE");
        let mut with_cert = tls.to_vec();
        with_cert.extend([
            "--etcd-ca-cert-file",
            "/ca.pem",
            "--etcd-cert-file",
            "/c.pem",
        ]);
        assert_eq!(e(&with_cert).variable, "ETCD_KEY_FILE");
        let mut plain = vec![
            "--datastore-type",
            "etcdv3",
            "--etcd-endpoints",
            "http://a:2379",
        ];
        plain.extend(["--etcd-ca-cert-file", "/ca.pem"]);
        assert!(e(&plain).message.contains("https://"));
        // The status API never leaves loopback; metrics have their own listener.
        let m = e(&["--http-address", "0.0.0.0:9179"]);
        assert_eq!(m.variable, "SERVAL_HTTP_ADDRESS");
        assert!(m.message.contains("SERVAL_METRICS_ADDRESS"), "{m}");
        assert_eq!(
            e(&["--metrics-address", "everywhere"]).variable,
            "SERVAL_METRICS_ADDRESS"
        );
    }

    #[test]
    fn metrics_listener_is_off_unless_asked_for() {
        let c = args(&[]).validate("h").unwrap();
        assert_eq!(c.metrics_address, None);
        let c = args(&["--metrics-address", "0.0.0.0:9091"])
            .validate("h")
            .unwrap();
        assert_eq!(c.metrics_address, Some("0.0.0.0:9091".parse().unwrap()));
        let c = args(&["--http-address", "[::1]:9179"])
            .validate("h")
            .unwrap();
        assert!(c.http_address.ip().is_loopback());
    }
}
