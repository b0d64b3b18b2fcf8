//! `serval-node controllers`: the cluster-wide duties Calico's kube-controllers perform, for
//! the Kubernetes datastore, with one active replica through a Lease.
//!
//! With the etcd datastore the Kubernetes facts (Nodes, Pods) still come from the API server,
//! Serval's state is in etcd, and the active replica also copies what agents need from the
//! API server into etcd ([`mirror`]).
//!
//! ```text
//!  lease task ──active──► pass loop (every interval, while active)
//!                           ├─ node clean-up: Serval Nodes without a Kubernetes Node go
//!                           └─ IPAM GC: addresses of gone nodes at once, of gone Pods after
//!                              the leak grace period; empty blocks and stale affinities
//!                       └─► etcd mode: mirror task (NetworkPolicies, Namespaces, Pods,
//!                           ServiceAccounts, node labels), stopped when the Lease is lost
//! ```

pub mod lease;
pub mod mirror;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node as K8sNode, Pod};
use kube::ResourceExt;
use serval_ipam::{Gc, Ipam, Owners};

use crate::datastore::{AnyBackend, Datastore, DatastoreError, KubeBackend};
use crate::resources::Node;

/// The flags and variables of `serval-node controllers`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// The namespace of the Lease (the Deployment's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    /// This replica's name in the Lease (the pod's name).
    #[arg(long, env = "POD_NAME", default_value = "serval-controllers")]
    pub identity: String,
    /// The Lease that elects the active replica.
    #[arg(
        long,
        env = "SERVAL_CONTROLLERS_LEASE",
        default_value = "serval-controllers"
    )]
    pub lease: String,
    /// Seconds between passes (node clean-up and IPAM GC).
    #[arg(long, env = "SERVAL_CONTROLLERS_INTERVAL", default_value_t = 60)]
    pub interval: u64,
    /// How long an address may outlive its Pod before it is released (Calico's
    /// leakGracePeriod), e.g. `15m`, `30s`.
    #[arg(long, env = "SERVAL_IPAM_LEAK_GRACE_PERIOD", default_value = "15m")]
    pub leak_grace_period: String,
    /// `kubernetes` (Serval's state in CRDs) or `etcdv3` (in etcd; Kubernetes objects are
    /// then copied into etcd for the agents).
    #[arg(long, env = "DATASTORE_TYPE", default_value = "kubernetes")]
    pub datastore_type: String,
    /// etcd endpoints and TLS files (etcdv3 only).
    #[command(flatten)]
    pub etcd: crate::datastore::etcd::EtcdArgs,
}

/// Where the controllers read and write.
#[derive(Clone)]
pub struct Stores {
    /// The API server: Kubernetes Nodes and Pods.
    pub api: Datastore<AnyBackend>,
    /// Serval's state (the API server again, or etcd).
    pub serval: Datastore<AnyBackend>,
    /// Whether Serval's state is in etcd.
    pub etcd: bool,
}

/// Why the controllers stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
    /// The API server is unreachable.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Serval Nodes deleted because their Kubernetes Node is gone.
    pub nodes_removed: Vec<String>,
    /// The IPAM collector's report.
    pub ipam: serval_ipam::GcReport,
}

/// One pass: node clean-up, then IPAM GC at `now` (seconds).
pub async fn pass(stores: &Stores, gc: &mut Gc, now: u64) -> Result<PassReport, ControllerError> {
    let mut report = PassReport::default();
    let mut nodes = live_nodes(&stores.api).await?;
    let (serval_nodes, _) = stores.serval.list::<Node>(None).await?;
    for n in serval_nodes {
        let name = n.name_any();
        if nodes.contains(&name) {
            continue;
        }
        // In etcd, a Serval Node that never matched a Kubernetes Node (a host outside the
        // cluster, a route reflector on its own) is not the controllers' to remove, and its
        // addresses stay owned.
        if stores.etcd && !mirror::is_kubernetes_node(&n) {
            nodes.insert(name);
            continue;
        }
        match stores
            .serval
            .delete::<Node>(None, &name, n.metadata.resource_version.as_deref())
            .await
        {
            Ok(()) => {
                tracing::info!(node = %name, "Kubernetes Node gone: Serval Node removed");
                report.nodes_removed.push(name);
            }
            Err(DatastoreError::NotFound { .. } | DatastoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let owners = Owners {
        nodes,
        workloads: live_pods(&stores.api).await?,
    };
    let ipam = Ipam::new(stores.serval.clone());
    report.ipam = gc
        .scan(&ipam, &owners, now)
        .await
        .map_err(|e| ControllerError::Datastore(DatastoreError::backend(e)))?;
    Ok(report)
}

/// The Pods that exist, as (namespace, name): the owners of workload addresses.
pub async fn live_pods(
    api: &Datastore<AnyBackend>,
) -> Result<BTreeSet<(String, String)>, DatastoreError> {
    let (pods, _) = api.list::<Pod>(None).await?;
    Ok(pods
        .iter()
        .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
        .collect())
}

/// The Kubernetes Nodes that exist: the owners of node addresses and affinities.
pub async fn live_nodes(api: &Datastore<AnyBackend>) -> Result<BTreeSet<String>, DatastoreError> {
    let (nodes, _) = api.list::<K8sNode>(None).await?;
    Ok(nodes.iter().map(|n| n.name_any()).collect())
}

/// The leak grace period in seconds, with the settings checked.
pub fn leak_grace_secs(args: &ControllerArgs) -> Result<u64, ControllerError> {
    if args.interval == 0 {
        return Err(ControllerError::Config(
            "SERVAL_CONTROLLERS_INTERVAL must be at least 1 second".into(),
        ));
    }
    crate::resources::validate::parse_duration(&args.leak_grace_period)
        .map(|ms| ms / 1000)
        .ok_or_else(|| {
            ControllerError::Config(format!(
                "SERVAL_IPAM_LEAK_GRACE_PERIOD: {:?} is not a duration such as 15m or 30s",
                args.leak_grace_period
            ))
        })
}

/// The etcd settings when `DATASTORE_TYPE` is etcdv3, `None` for kubernetes; checked before
/// anything connects, and etcd settings given with kubernetes are refused by name.
pub fn etcd_settings(
    args: &ControllerArgs,
) -> Result<Option<crate::datastore::etcd::EtcdConfig>, ControllerError> {
    let etcd = args.etcd.config();
    match args.datastore_type.as_str() {
        "kubernetes" => match etcd.set_variable() {
            Some(var) => Err(ControllerError::Config(format!(
                "{var} is set but DATASTORE_TYPE is kubernetes (etcd settings apply to etcdv3 only)"
            ))),
            None => Ok(None),
        },
        "etcdv3" => {
            etcd.validate()
                .map_err(|e| ControllerError::Config(e.to_string()))?;
            Ok(Some(etcd))
        }
        other => Err(ControllerError::Config(format!(
            "DATASTORE_TYPE: {other:?}: expected kubernetes or etcdv3"
        ))),
    }
}

/// The API server, and Serval's datastore (the same, or etcd).
async fn connect_stores(
    etcd: Option<&crate::datastore::etcd::EtcdConfig>,
    api: KubeBackend,
) -> Result<Stores, ControllerError> {
    let api = Datastore::new(AnyBackend::Kubernetes(api));
    Ok(match etcd {
        None => Stores {
            serval: api.clone(),
            api,
            etcd: false,
        },
        Some(c) => {
            let backend = crate::datastore::etcd::EtcdBackend::connect_with(c).await?;
            Stores {
                api,
                serval: Datastore::new(AnyBackend::Etcd(Box::new(backend))),
                etcd: true,
            }
        }
    })
}

/// A task that stops when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the controllers until the process stops.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let grace = leak_grace_secs(&args)?;
    let etcd = etcd_settings(&args)?;
    tracing::info!(
        leak_grace_s = grace,
        interval_s = args.interval,
        identity = %args.identity,
        "controllers started"
    );
    let api = KubeBackend::connect().await?;
    let client = api.client();
    let stores = connect_stores(etcd.as_ref(), api.clone()).await?;
    let (active_tx, mut active) = tokio::sync::watch::channel(false);
    tokio::spawn(lease::run(
        client,
        args.namespace.clone(),
        args.lease.clone(),
        args.identity.clone(),
        Duration::from_secs(15),
        active_tx,
    ));
    let mut mirror_task: Option<AbortOnDrop> = None;
    let mut gc = Gc::new(grace);
    let started = std::time::Instant::now();
    loop {
        if !*active.borrow() {
            // Stand by; a new collector starts fresh when this replica takes over, and
            // only the active replica writes the etcd copy.
            gc = Gc::new(grace);
            mirror_task = None;
            let _ = active.changed().await;
            continue;
        }
        if stores.etcd && mirror_task.is_none() {
            let store = stores.serval.backend().clone();
            mirror_task = Some(AbortOnDrop(tokio::spawn(mirror::run(
                api.clone(),
                store,
                Duration::from_secs(args.interval),
            ))));
        }
        match pass(&stores, &mut gc, started.elapsed().as_secs()).await {
            Ok(r) => {
                tracing::debug!(report = ?r, "controllers pass done");
                if !r.nodes_removed.is_empty() || !r.ipam.released.is_empty() {
                    tracing::info!(
                        nodes_removed = ?r.nodes_removed,
                        released = ?r.ipam.released,
                        blocks_released = ?r.ipam.blocks_released,
                        "controllers pass"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "controllers pass failed; will retry"),
        }
        tokio::time::sleep(Duration::from_secs(args.interval)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(grace: &str, interval: u64) -> ControllerArgs {
        ControllerArgs {
            namespace: "kube-system".into(),
            identity: "c".into(),
            lease: "l".into(),
            interval,
            leak_grace_period: grace.into(),
            datastore_type: "kubernetes".into(),
            etcd: Default::default(),
        }
    }

    #[test]
    fn the_leak_grace_period_reads_as_calico_writes_it() {
        assert_eq!(leak_grace_secs(&args("15m", 60)).unwrap(), 900);
        assert_eq!(leak_grace_secs(&args("3s", 60)).unwrap(), 3);
        assert!(leak_grace_secs(&args("soon", 60)).is_err());
        assert!(leak_grace_secs(&args("3s", 0)).is_err());
    }

    #[test]
    fn etcd_settings_are_for_etcd_only() {
        let mut a = args("15m", 60);
        assert_eq!(etcd_settings(&a).unwrap(), None);
        a.etcd.etcd_endpoints = Some("http://10.0.0.1:2379".into());
        let e = etcd_settings(&a).unwrap_err().to_string();
        assert!(e.starts_with("ETCD_ENDPOINTS is set"), "{e}");
        a.datastore_type = "etcdv3".into();
        assert_eq!(
            etcd_settings(&a).unwrap().unwrap().endpoints,
            ["http://10.0.0.1:2379"]
        );
        a.etcd.etcd_endpoints = None;
        assert!(
            etcd_settings(&a)
                .unwrap_err()
                .to_string()
                .contains("ETCD_ENDPOINTS")
        );
        a.datastore_type = "consul".into();
        assert!(
            etcd_settings(&a)
                .unwrap_err()
                .to_string()
                .contains("DATASTORE_TYPE")
        );
    }
}
