//! Start-up: reach the datastore, find the node's address, register the Node resource (address
//! with its prefix length, AS), allocate tunnel addresses when a pool encapsulates, and write
//! the files serval-cni reads. Every step is idempotent, so a restarted agent converges on
//! the same state.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use kube::ResourceExt;
use kube::api::ObjectMeta;
use serval_ipam::{Ipam, TunnelKind};

use super::config::{AddressSource, NodeConfig};
use crate::autodetect;
use crate::calc::tunnels::{format_mac, vxlan_mac, vxlan_mac_v6};
use crate::datastore::{
    AnyBackend, Datastore, DatastoreError, etcd::EtcdBackend, kubernetes::KubeBackend,
};
use crate::resources::{EncapMode, IPPool, Node, NodeBgpSpec, NodeSpec};

/// Why start-up failed.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// No address of the family could be found.
    #[error(
        "no {0} address found for this node with {1}; set IP / IP_AUTODETECTION_METHOD (IPv4) or IP6 / IP6_AUTODETECTION_METHOD (IPv6)"
    )]
    NoAddress(&'static str, String),
    /// Reading interfaces failed.
    #[error("cannot read the node's interfaces: {0}")]
    Interfaces(#[source] std::io::Error),
    /// The datastore refused a write.
    #[error("datastore: {0}")]
    Datastore(#[from] DatastoreError),
    /// IPAM failed.
    #[error("tunnel address: {0}")]
    Ipam(#[from] serval_ipam::IpamError),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Connects to the datastore, retrying (with a log line) until it answers.
pub async fn connect(cfg: &NodeConfig) -> Datastore<AnyBackend> {
    let mut delay = Duration::from_millis(500);
    loop {
        let attempt = match &cfg.etcd {
            Some(etcd) => EtcdBackend::connect_with(etcd)
                .await
                .map(|b| AnyBackend::Etcd(Box::new(b))),
            None => KubeBackend::connect().await.map(AnyBackend::Kubernetes),
        };
        match attempt {
            Ok(b) => {
                let ds = Datastore::new(b);
                // A cheap read proves the connection works.
                match ds.list::<IPPool>(None).await {
                    Ok(_) => return ds,
                    Err(e) => tracing::warn!(error = %e, "datastore not answering yet; retrying"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot reach the datastore yet; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Creates a default pool when the cluster has no pool of its family (as calico-node does
/// on first start, for IPv4 and, with IPv6 on, for IPv6).
pub async fn ensure_default_pool(
    ds: &Datastore<AnyBackend>,
    pool: Option<&IPPool>,
) -> Result<(), StartupError> {
    let Some(pool) = pool else { return Ok(()) };
    let v6 = pool.spec.cidr_net().is_some_and(|c| c.addr().is_ipv6());
    let (pools, _) = ds.list::<IPPool>(None).await?;
    if pools
        .iter()
        .any(|p| p.spec.cidr_net().is_some_and(|c| c.addr().is_ipv6() == v6))
    {
        return Ok(());
    }
    match ds.create(pool).await {
        Ok(_) => {
            tracing::info!(cidr = %pool.spec.cidr, name = %pool.name_any(), "no IP pool of its family yet: created the default");
            Ok(())
        }
        // Another node got there first.
        Err(DatastoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A node address with its prefix length, and the MTU of its interface.
pub type DetectedAddress = Option<(IpNet, u32)>;

/// The node's IPv4 address (IP, IP_AUTODETECTION_METHOD) and IPv6 address (IP6,
/// IP6_AUTODETECTION_METHOD; None when IPv6 is off, Calico's default), each with its
/// prefix length and its interface's MTU, from one read of the interfaces (returned too:
/// BGPFilter `interface` rules use them). `kubernetes-internal-ip` reads the Kubernetes
/// Node's InternalIP from the datastore.
pub async fn node_addresses(
    cfg: &NodeConfig,
    ds: &Datastore<AnyBackend>,
) -> Result<(DetectedAddress, DetectedAddress, Vec<autodetect::Interface>), StartupError> {
    let interfaces = autodetect::local_interfaces().map_err(StartupError::Interfaces)?;
    Ok((
        family_address(cfg, &cfg.address, false, &interfaces, ds).await?,
        family_address(cfg, &cfg.address_v6, true, &interfaces, ds).await?,
        interfaces,
    ))
}

async fn family_address(
    cfg: &NodeConfig,
    source: &AddressSource,
    v6: bool,
    interfaces: &[autodetect::Interface],
    ds: &Datastore<AnyBackend>,
) -> Result<DetectedAddress, StartupError> {
    let family = if v6 { "IPv6" } else { "IPv4" };
    let chosen = match source {
        AddressSource::None => return Ok(None),
        AddressSource::Fixed(n) => *n,
        AddressSource::Detect(autodetect::Method::KubernetesInternalIp) => {
            let node = ds
                .get::<k8s_openapi::api::core::v1::Node>(None, &cfg.node_name)
                .await?
                .ok_or_else(|| {
                    StartupError::NoAddress(
                        family,
                        format!(
                            "kubernetes-internal-ip: no Kubernetes Node named {:?}",
                            cfg.node_name
                        ),
                    )
                })?;
            let ip = autodetect::node_internal_ip(&node, v6).ok_or_else(|| {
                StartupError::NoAddress(
                    family,
                    format!(
                        "kubernetes-internal-ip: Node {:?} lists no {family} InternalIP",
                        cfg.node_name
                    ),
                )
            })?;
            autodetect::with_prefix(interfaces, ip).ok_or_else(|| {
                StartupError::NoAddress(
                    family,
                    format!(
                        "kubernetes-internal-ip: {ip} (the Node's InternalIP) is on no local interface"
                    ),
                )
            })?
        }
        AddressSource::Detect(method) => autodetect::choose(method, interfaces, v6)
            .ok_or_else(|| StartupError::NoAddress(family, format!("{method:?}")))?,
    };
    let iface = interfaces
        .iter()
        .find(|i| i.addrs.iter().any(|a| a.addr() == chosen.addr()))
        .map(|i| i.name.clone());
    let mtu = iface
        .and_then(|name| std::fs::read_to_string(format!("/sys/class/net/{name}/mtu")).ok())
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(1500);
    Ok(Some((chosen, mtu)))
}

/// Creates or updates this node's Node resource with its address and AS, keeping every
/// other field (tunnel addresses, reflector cluster ID, labels) as it is.
pub async fn register_node(
    ds: &Datastore<AnyBackend>,
    cfg: &super::config::NodeConfig,
    address: Option<IpNet>,
    address_v6: Option<IpNet>,
) -> Result<Node, StartupError> {
    let name = cfg.node_name.as_str();
    let as_number = cfg.as_number;
    for _ in 0..10 {
        let current = ds.get::<Node>(None, name).await?;
        let mut node = current.clone().unwrap_or_else(|| Node {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            spec: NodeSpec::default(),
        });
        let bgp = node.spec.bgp.get_or_insert_with(NodeBgpSpec::default);
        bgp.ipv4_address = address.map(|a| a.to_string().into());
        bgp.ipv6_address = address_v6.map(|a| a.to_string().into());
        if as_number.is_some() {
            bgp.as_number = as_number;
        }
        if let Some(id) = cfg.route_reflector_cluster_id {
            bgp.route_reflector_cluster_id = Some(id.to_string().into());
        }
        if !cfg.node_labels.is_empty() {
            let labels = node.metadata.labels.get_or_insert_with(Default::default);
            for (k, v) in &cfg.node_labels {
                labels.insert(k.clone(), v.clone());
            }
        }
        if current.as_ref() == Some(&node) {
            return Ok(node);
        }
        let res = if current.is_some() {
            ds.update(&node).await
        } else {
            ds.create(&node).await
        };
        match res {
            Ok(n) => {
                tracing::info!(node = %name, address = ?address, address_v6 = ?address_v6, "Node resource registered");
                return Ok(n);
            }
            Err(DatastoreError::Conflict { .. } | DatastoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StartupError::Datastore(DatastoreError::backend(
        "the Node resource kept changing under us (10 conflicts)",
    )))
}

/// Allocates the IPIP and VXLAN tunnel addresses the pools need and records them (and the
/// VXLAN MACs) on the Node: an IPv6 VXLAN address only on a node with an IPv6 address.
pub async fn tunnel_addresses(
    ds: &Datastore<AnyBackend>,
    node: Node,
) -> Result<Node, StartupError> {
    let (pools, _) = ds.list::<IPPool>(None).await?;
    let of_family = |v6: bool| {
        pools.iter().filter(move |p| {
            p.spec.cidr_net().is_some_and(|c| c.addr().is_ipv6() == v6) && !p.spec.disabled
        })
    };
    let want_ipip = of_family(false).any(|p| p.spec.ipip_mode != EncapMode::Never);
    let want_vxlan = of_family(false).any(|p| p.spec.vxlan_mode != EncapMode::Never);
    let has_v6 = node.spec.bgp.as_ref().and_then(|b| b.ipv6()).is_some();
    let want_vxlan_v6 = has_v6 && of_family(true).any(|p| p.spec.vxlan_mode != EncapMode::Never);
    if !want_ipip && !want_vxlan && !want_vxlan_v6 {
        return Ok(node);
    }
    let name = node.name_any();
    let ipam = Ipam::new(ds.clone());
    let mut next = node.clone();
    if want_ipip {
        let ip: IpAddr = ipam.assign_tunnel_address(&name, TunnelKind::Ipip).await?;
        next.spec
            .bgp
            .get_or_insert_with(NodeBgpSpec::default)
            .ipv4_ipip_tunnel_addr = Some(ip.to_string().into());
    }
    if want_vxlan {
        let ip: IpAddr = ipam.assign_tunnel_address(&name, TunnelKind::Vxlan).await?;
        next.spec.ipv4_vxlan_tunnel_addr = Some(ip.to_string().into());
        if next.spec.vxlan_tunnel_mac_addr.is_none() {
            next.spec.vxlan_tunnel_mac_addr = Some(format_mac(&vxlan_mac(&name)));
        }
    }
    if want_vxlan_v6 {
        let ip: IpAddr = ipam
            .assign_tunnel_address(&name, TunnelKind::VxlanV6)
            .await?;
        next.spec.ipv6_vxlan_tunnel_addr = Some(ip.to_string().into());
        if next.spec.vxlan_tunnel_mac_addr_v6.is_none() {
            next.spec.vxlan_tunnel_mac_addr_v6 = Some(format_mac(&vxlan_mac_v6(&name)));
        }
    }
    if next == node {
        return Ok(node);
    }
    let saved = ds.update(&next).await?;
    tracing::info!(
        ipip = ?saved.spec.bgp.as_ref().and_then(|b| b.ipv4_ipip_tunnel_addr.clone()),
        vxlan = ?saved.spec.ipv4_vxlan_tunnel_addr,
        vxlan_v6 = ?saved.spec.ipv6_vxlan_tunnel_addr,
        "tunnel addresses allocated"
    );
    Ok(saved)
}

/// Writes a file atomically (write + rename), creating its directory.
pub fn write_file(path: &Path, contents: &str) -> Result<(), StartupError> {
    let err = |source| StartupError::File {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Turns on IPv4 forwarding, and IPv6 forwarding when the node has IPv6 (pods are routed
/// through the host). Already on (the DaemonSet's privileged init container sets it, so the
/// agent itself need not write /proc/sys) is fine.
pub fn enable_forwarding(v6: bool) -> Result<(), StartupError> {
    let paths = [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ];
    for path in &paths[..1 + usize::from(v6)] {
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        std::fs::write(path, "1").map_err(|source| StartupError::File {
            path: (*path).into(),
            source,
        })?;
    }
    Ok(())
}
