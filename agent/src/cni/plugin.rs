//! ADD, DEL, CHECK and STATUS: IPAM by handle through the datastore, the pod's plumbing, and
//! the WorkloadEndpoint the agent reads. A failed ADD undoes what it did (addresses released,
//! veth removed); DEL succeeds on repeat and with parts already gone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use kube::api::ObjectMeta;
use serval_ipam::{AssignRequest, Ipam, IpamError};

use super::pod_net::{self, POD_GATEWAY, PodNetError, PodNetwork};
use super::spec::{
    AddResult, CniEnv, CniError, ErrorCode, NODENAME_FILE, NetConf, ResultInterface, ResultIp,
    ResultRoute,
};
use crate::calc::routes::{host_interface_name, sandbox_interface_name};
use crate::calc::tunnels::format_mac;
use crate::dataplane::netlink::Netlink;
use crate::datastore::{
    AnyBackend, Datastore, DatastoreError, etcd::EtcdBackend, kubernetes::KubeBackend,
};
use crate::resources::{WorkloadEndpoint, WorkloadEndpointSpec};

/// How long to wait for the datastore before telling the runtime to try again.
const DATASTORE_TIMEOUT: Duration = Duration::from_secs(20);
/// The host-wide lock that serialises this node's allocations (fewer CAS conflicts).
const IPAM_LOCK: &str = "/var/run/serval/ipam.lock";
/// The pod MTU when neither the configuration nor the agent's file gives one.
const FALLBACK_MTU: u32 = 1500;

fn datastore_unreachable(e: impl std::fmt::Display) -> CniError {
    CniError::new(
        ErrorCode::TryAgainLater,
        "the Serval datastore is unreachable",
    )
    .with_details(e)
}

/// Connects to the datastore the configuration names.
pub async fn connect(conf: &NetConf) -> Result<Datastore<AnyBackend>, CniError> {
    let backend = async {
        match conf.datastore_type.as_str() {
            "kubernetes" => {
                if let Some(path) = conf
                    .other
                    .get("kubernetes")
                    .and_then(|k| k.get("kubeconfig"))
                    .and_then(|p| p.as_str())
                {
                    return kube_from_file(path).await;
                }
                KubeBackend::connect().await.map(AnyBackend::Kubernetes)
            }
            _ => EtcdBackend::connect_with(&conf.etcd_config())
                .await
                .map(|b| AnyBackend::Etcd(Box::new(b))),
        }
    };
    match tokio::time::timeout(DATASTORE_TIMEOUT, backend).await {
        Ok(Ok(b)) => Ok(Datastore::new(b)),
        Ok(Err(e)) => Err(datastore_unreachable(e)),
        Err(_) => Err(datastore_unreachable(format!(
            "no answer within {}s",
            DATASTORE_TIMEOUT.as_secs()
        ))),
    }
}

async fn kube_from_file(path: &str) -> Result<AnyBackend, DatastoreError> {
    KubeBackend::connect_with(path)
        .await
        .map(AnyBackend::Kubernetes)
}

/// This node's name: the configuration, else the file serval-node writes, else the hostname.
pub fn node_name(conf: &NetConf) -> Result<String, CniError> {
    if let Some(n) = conf.nodename.as_ref().filter(|n| !n.is_empty()) {
        return Ok(n.clone());
    }
    if let Ok(n) = std::fs::read_to_string(NODENAME_FILE) {
        let n = n.trim();
        if !n.is_empty() {
            return Ok(n.to_string());
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                format!("no node name: set \"nodename\" or start serval-node (it writes {NODENAME_FILE})"),
            )
        })
}

fn pod_mtu(conf: &NetConf) -> u32 {
    if conf.mtu > 0 {
        return conf.mtu;
    }
    std::fs::read_to_string(&conf.mtu_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|m| *m >= 576)
        .unwrap_or(FALLBACK_MTU)
}

/// The IPAM handle of a container (Calico's `<network>.<containerID>`).
pub fn handle_id(conf: &NetConf, env: &CniEnv) -> String {
    format!("{}.{}", conf.name, env.container_id)
}

/// The WorkloadEndpoint name: `<node>-k8s-<pod>-<endpoint>` with `-` doubled inside each part
/// (Calico's encoding, so names never collide).
pub fn endpoint_name(node: &str, pod: &str, endpoint: &str) -> String {
    let esc = |s: &str| s.replace('-', "--");
    format!("{}-k8s-{}-{}", esc(node), esc(pod), esc(endpoint))
}

fn ipam_error(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted { .. } | IpamError::NoPool { .. } => CniError::new(
            ErrorCode::PoolExhausted,
            "no IP address available for the pod",
        )
        .with_details(e),
        IpamError::Store(_) => datastore_unreachable(e),
        other => {
            CniError::new(ErrorCode::Internal, "IP address assignment failed").with_details(other)
        }
    }
}

fn pod_net_error(e: PodNetError) -> CniError {
    match e {
        PodNetError::Netns { .. } => CniError::new(
            ErrorCode::UnknownContainer,
            "the container's network namespace is gone",
        )
        .with_details(e),
        PodNetError::Sysctl { .. } => {
            CniError::new(ErrorCode::Io, "cannot configure the host interface").with_details(e)
        }
        other => {
            CniError::new(ErrorCode::Internal, "pod network set-up failed").with_details(other)
        }
    }
}

/// Takes the host-wide IPAM lock (best effort: a missing directory only loses serialisation).
fn ipam_lock() -> Option<nix::fcntl::Flock<std::fs::File>> {
    let _ = std::fs::create_dir_all("/var/run/serval");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(IPAM_LOCK)
        .ok()?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok()
}

/// ADD.
pub async fn add(env: &CniEnv, conf: &NetConf) -> Result<AddResult, CniError> {
    let netns = env.netns.clone().expect("validated: ADD has CNI_NETNS");
    if !std::path::Path::new(&netns).exists() {
        return Err(CniError::new(
            ErrorCode::UnknownContainer,
            format!("CNI_NETNS {netns} does not exist"),
        ));
    }
    let node = node_name(conf)?;
    let (namespace, pod) = env.pod();
    // The spec: ADD fails if the interface exists. Check before allocating anything, so a
    // repeated ADD cannot take the running pod's address away when it fails.
    let inside = Netlink::connect_in(std::path::Path::new(&netns)).map_err(|e| {
        CniError::new(
            ErrorCode::UnknownContainer,
            "cannot enter the container's network namespace",
        )
        .with_details(e)
    })?;
    match inside.link(&env.ifname).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(CniError::new(
                ErrorCode::Internal,
                format!("interface {} already exists in the container", env.ifname),
            ));
        }
        Err(e) => {
            return Err(
                CniError::new(ErrorCode::Io, "cannot list the container's interfaces")
                    .with_details(e),
            );
        }
    }
    let ds = connect(conf).await?;
    let ipam = Ipam::new(ds.clone());
    let handle = handle_id(conf, env);
    let req = AssignRequest {
        handle: handle.clone(),
        node: node.clone(),
        num_v4: usize::from(conf.ipam.assign_ipv4),
        num_v6: usize::from(conf.ipam.assign_ipv6),
        attrs: BTreeMap::from([
            ("namespace".to_string(), namespace.clone()),
            ("pod".to_string(), pod.clone()),
            ("node".to_string(), node.clone()),
        ]),
        pools: conf
            .ipam
            .ipv4_pools
            .iter()
            .chain(&conf.ipam.ipv6_pools)
            .cloned()
            .collect(),
    };
    let assigned = {
        let _lock = ipam_lock();
        ipam.auto_assign(&req).await.map_err(ipam_error)?
    };
    let addresses: Vec<IpAddr> = assigned.v4.iter().chain(&assigned.v6).copied().collect();
    // Undo only what this call allocated.
    let undo_ipam = |e: CniError| async {
        if !assigned.held_before {
            let _ = ipam.release_by_handle(&handle).await;
        }
        e
    };
    let mtu = pod_mtu(conf);
    let spec = PodNetwork {
        host_ifnames: host_ifnames(env),
        owner: env.container_id.clone(),
        container_ifname: env.ifname.clone(),
        netns: netns.clone(),
        addresses: addresses.clone(),
        mtu,
    };
    // In etcd mode nothing else copies the Pod's labels, service account and named ports:
    // read them from the API server (as Calico's plugin does) before plumbing anything.
    let pod_facts = match pod_facts(conf, &namespace, &pod).await {
        Ok(f) => f,
        Err(e) => return Err(undo_ipam(e).await),
    };
    let host = match Netlink::connect() {
        Ok(h) => h,
        Err(e) => {
            return Err(undo_ipam(
                CniError::new(ErrorCode::Io, "cannot open netlink").with_details(e),
            )
            .await);
        }
    };
    let attached = match pod_net::setup(&host, &spec).await {
        Ok(a) => a,
        Err(e) => return Err(undo_ipam(pod_net_error(e)).await),
    };
    let host_ifname = attached.host_ifname.clone();
    let wep = WorkloadEndpoint {
        metadata: ObjectMeta {
            name: Some(endpoint_name(&node, &pod, &env.ifname)),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: WorkloadEndpointSpec {
            orchestrator: "k8s".into(),
            node: node.clone(),
            pod: pod.clone(),
            container_id: env.container_id.clone(),
            endpoint: env.ifname.clone(),
            interface_name: host_ifname.clone(),
            mac: Some(attached.container_mac.clone()),
            ip_networks: addresses
                .iter()
                .map(|ip| ipnet::IpNet::from(*ip).into())
                .collect(),
            profiles: vec![format!("kns.{namespace}")],
            ..WorkloadEndpointSpec::default()
        },
    };
    let mut wep = wep;
    if let Some(f) = pod_facts {
        wep.metadata.labels = Some(f.labels);
        if let Some(sa) = &f.service_account {
            wep.spec.profiles.push(format!("ksa.{namespace}.{sa}"));
        }
        wep.spec.service_account_name = f.service_account;
        wep.spec.ports = f.ports;
    }
    if let Err(e) = write_endpoint(&ds, wep).await {
        let _ = pod_net::teardown(&host, &spec.host_ifnames, &spec.owner).await;
        return Err(undo_ipam(
            CniError::new(
                ErrorCode::TryAgainLater,
                "cannot record the WorkloadEndpoint",
            )
            .with_details(e),
        )
        .await);
    }
    Ok(AddResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            ResultInterface {
                name: host_ifname,
                mac: format_mac(&pod_net::HOST_VETH_MAC),
                mtu: None,
                sandbox: None,
            },
            ResultInterface {
                name: env.ifname.clone(),
                mac: attached.container_mac,
                mtu: Some(mtu),
                sandbox: Some(netns),
            },
        ],
        ips: addresses
            .iter()
            .map(|ip| ResultIp {
                address: format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
                gateway: Some(if ip.is_ipv4() {
                    POD_GATEWAY.to_string()
                } else {
                    pod_net::HOST_VETH_LINK_LOCAL.to_string()
                }),
                interface: Some(1),
            })
            .collect(),
        routes: {
            let mut r = Vec::new();
            if !assigned.v4.is_empty() {
                r.push(ResultRoute {
                    dst: "0.0.0.0/0".into(),
                    gw: Some(POD_GATEWAY.to_string()),
                });
            }
            if !assigned.v6.is_empty() {
                r.push(ResultRoute {
                    dst: "::/0".into(),
                    gw: Some(pod_net::HOST_VETH_LINK_LOCAL.to_string()),
                });
            }
            r
        },
        dns: serde_json::json!({}),
    })
}

/// What the API server says about a pod that policy needs.
struct PodFacts {
    labels: BTreeMap<String, String>,
    service_account: Option<String>,
    ports: Vec<crate::resources::workload::EndpointPort>,
}

/// The Pod's labels, service account and named container ports, read with the configured
/// kubeconfig when the datastore is etcd (`None` without one, or in Kubernetes mode, where
/// the agent reads Pods itself). A Pod that cannot be read fails the ADD: an endpoint
/// without its labels would fall outside the policies written for it.
async fn pod_facts(
    conf: &NetConf,
    namespace: &str,
    pod: &str,
) -> Result<Option<PodFacts>, CniError> {
    if conf.datastore_type == "kubernetes" {
        return Ok(None);
    }
    let Some(path) = conf
        .other
        .get("kubernetes")
        .and_then(|k| k.get("kubeconfig"))
        .and_then(|p| p.as_str())
    else {
        return Ok(None);
    };
    let read = async {
        let AnyBackend::Kubernetes(kb) = kube_from_file(path).await? else {
            unreachable!("kube_from_file makes a Kubernetes backend")
        };
        Datastore::new(kb)
            .get::<k8s_openapi::api::core::v1::Pod>(Some(namespace), pod)
            .await
    };
    let found = tokio::time::timeout(DATASTORE_TIMEOUT, read)
        .await
        .map_err(|_| datastore_unreachable("the API server did not answer for the Pod"))?
        .map_err(datastore_unreachable)?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::TryAgainLater,
                format!("Pod {namespace}/{pod} is not in the API server (yet)"),
            )
        })?;
    let spec = found.spec.unwrap_or_default();
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(crate::resources::workload::EndpointPort {
                name: p.name.clone()?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect();
    Ok(Some(PodFacts {
        labels: found.metadata.labels.unwrap_or_default(),
        service_account: spec.service_account_name.filter(|s| !s.is_empty()),
        ports,
    }))
}

/// Creates the endpoint, or replaces one left by an earlier attempt for the same pod.
async fn write_endpoint(
    ds: &Datastore<AnyBackend>,
    wep: WorkloadEndpoint,
) -> Result<(), DatastoreError> {
    match ds.create(&wep).await {
        Ok(_) => Ok(()),
        Err(DatastoreError::AlreadyExists { .. }) => {
            let ns = wep.metadata.namespace.clone();
            let name = wep.metadata.name.clone().unwrap_or_default();
            let current = ds.get::<WorkloadEndpoint>(ns.as_deref(), &name).await?;
            let mut next = wep;
            next.metadata.resource_version = current.and_then(|c| c.metadata.resource_version);
            ds.update(&next).await.map(drop)
        }
        Err(e) => Err(e),
    }
}

/// The host interface names a sandbox may use (see [`sandbox_interface_name`]).
fn host_ifnames(env: &CniEnv) -> Vec<String> {
    let (namespace, pod) = env.pod();
    vec![
        host_interface_name(&namespace, &pod),
        sandbox_interface_name(&namespace, &pod, &env.container_id),
    ]
}

/// DEL: removes this container's plumbing, releases its addresses, deletes the endpoint if
/// it is still this container's. Parts already gone are fine; nothing of a newer sandbox of
/// the same pod (another container ID) is touched, as Calico checks.
pub async fn del(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let (namespace, pod) = env.pod();
    // The plumbing first: the pod loses its network even when the datastore is down.
    let host = Netlink::connect()
        .map_err(|e| CniError::new(ErrorCode::Io, "cannot open netlink").with_details(e))?;
    pod_net::teardown(&host, &host_ifnames(env), &env.container_id)
        .await
        .map_err(pod_net_error)?;
    let node = node_name(conf)?;
    let ds = connect(conf).await?;
    Ipam::new(ds.clone())
        .release_by_handle(&handle_id(conf, env))
        .await
        .map_err(ipam_error)?;
    let name = endpoint_name(&node, &pod, &env.ifname);
    let current = ds
        .get::<WorkloadEndpoint>(Some(&namespace), &name)
        .await
        .map_err(datastore_unreachable)?;
    let Some(current) = current else {
        return Ok(());
    };
    if current.spec.container_id != env.container_id {
        // The pod was recreated: the endpoint is the new sandbox's.
        return Ok(());
    }
    // Delete exactly the version we looked at: if the new sandbox's ADD rewrote it in
    // between, the delete fails and is checked again.
    match ds
        .delete::<WorkloadEndpoint>(
            Some(&namespace),
            &name,
            current.metadata.resource_version.as_deref(),
        )
        .await
    {
        Ok(()) | Err(DatastoreError::NotFound { .. }) => Ok(()),
        Err(DatastoreError::Conflict { .. }) => {
            match ds.get::<WorkloadEndpoint>(Some(&namespace), &name).await {
                Ok(Some(w)) if w.spec.container_id == env.container_id => Err(CniError::new(
                    ErrorCode::TryAgainLater,
                    "the WorkloadEndpoint changed while being deleted",
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(datastore_unreachable(e)),
            }
        }
        Err(e) => Err(datastore_unreachable(e)),
    }
}

/// CHECK: the plumbing matches `prevResult` and IPAM still holds its addresses.
pub async fn check(env: &CniEnv, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "CHECK needs prevResult in the configuration",
        )
    })?;
    let prev: AddResult = serde_json::from_value(prev.clone()).map_err(|e| {
        CniError::new(ErrorCode::Decoding, "cannot read prevResult").with_details(e)
    })?;
    let addresses: Vec<IpAddr> = prev
        .ips
        .iter()
        .map(|ip| {
            ip.address
                .parse::<ipnet::IpNet>()
                .map(|n| n.addr())
                .map_err(|e| {
                    CniError::new(
                        ErrorCode::Decoding,
                        format!("prevResult address {:?}", ip.address),
                    )
                    .with_details(e)
                })
        })
        .collect::<Result<_, _>>()?;
    let spec = PodNetwork {
        host_ifnames: host_ifnames(env),
        owner: env.container_id.clone(),
        container_ifname: env.ifname.clone(),
        netns: env.netns.clone().expect("validated: CHECK has CNI_NETNS"),
        addresses: addresses.clone(),
        mtu: 0,
    };
    let host = Netlink::connect()
        .map_err(|e| CniError::new(ErrorCode::Io, "cannot open netlink").with_details(e))?;
    pod_net::check(&host, &spec).await.map_err(pod_net_error)?;
    let ds = connect(conf).await?;
    let held = Ipam::new(ds)
        .ips_for_handle(&handle_id(conf, env), None)
        .await
        .map_err(ipam_error)?;
    if let Some(missing) = addresses.iter().find(|a| !held.contains(a)) {
        return Err(CniError::new(
            ErrorCode::Internal,
            format!("IPAM no longer holds {missing} for this container"),
        ));
    }
    Ok(())
}

/// STATUS: ready when the datastore answers and has at least one enabled pool.
pub async fn status(conf: &NetConf) -> Result<(), CniError> {
    let ds = connect(conf).await.map_err(|e| CniError {
        code: ErrorCode::NotAvailable,
        ..e
    })?;
    let (pools, _) = ds
        .list::<crate::resources::IPPool>(None)
        .await
        .map_err(|e| {
            CniError::new(
                ErrorCode::NotAvailable,
                "the Serval datastore is unreachable",
            )
            .with_details(e)
        })?;
    if !pools.iter().any(|p| !p.spec.disabled) {
        return Err(CniError::new(
            ErrorCode::NotAvailable,
            "no enabled IPPool: pods cannot get addresses",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_escape_dashes_like_calico() {
        assert_eq!(
            endpoint_name("node-a", "web-0", "eth0"),
            "node--a-k8s-web--0-eth0"
        );
        assert_ne!(
            endpoint_name("a-b", "c", "eth0"),
            endpoint_name("a", "b-c", "eth0")
        );
    }
}
