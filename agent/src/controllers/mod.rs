//! `serval-node controllers`: the cluster-wide duties Calico's kube-controllers perform, for
//! the Kubernetes datastore, with one active replica through a Lease.
//!
//! ```text
//!  lease task ──active──► pass loop (every interval, while active)
//!                           ├─ node clean-up: Serval Nodes without a Kubernetes Node go
//!                           └─ IPAM GC: addresses of gone nodes at once, of gone Pods after
//!                              the leak grace period; empty blocks and stale affinities
//! ```
//!
//! Not yet: the etcd-mode sync of Kubernetes objects into etcd.

pub mod lease;

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
pub async fn pass(
    ds: &Datastore<AnyBackend>,
    gc: &mut Gc,
    now: u64,
) -> Result<PassReport, ControllerError> {
    let mut report = PassReport::default();
    let (k8s_nodes, _) = ds.list::<K8sNode>(None).await?;
    let nodes: BTreeSet<String> = k8s_nodes.iter().map(|n| n.name_any()).collect();
    let (serval_nodes, _) = ds.list::<Node>(None).await?;
    for n in serval_nodes {
        let name = n.name_any();
        if nodes.contains(&name) {
            continue;
        }
        match ds
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
    let (pods, _) = ds.list::<Pod>(None).await?;
    let owners = Owners {
        nodes,
        workloads: pods
            .iter()
            .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
            .collect(),
    };
    let ipam = Ipam::new(ds.clone());
    report.ipam = gc
        .scan(&ipam, &owners, now)
        .await
        .map_err(|e| ControllerError::Datastore(DatastoreError::backend(e)))?;
    Ok(report)
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

/// Runs the controllers until the process stops.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let grace = leak_grace_secs(&args)?;
    tracing::info!(
        leak_grace_s = grace,
        interval_s = args.interval,
        identity = %args.identity,
        "controllers started"
    );
    let backend = KubeBackend::connect().await?;
    let client = backend.client();
    let ds = Datastore::new(AnyBackend::Kubernetes(backend));
    let (active_tx, mut active) = tokio::sync::watch::channel(false);
    tokio::spawn(lease::run(
        client,
        args.namespace.clone(),
        args.lease.clone(),
        args.identity.clone(),
        Duration::from_secs(15),
        active_tx,
    ));
    let mut gc = Gc::new(grace);
    let started = std::time::Instant::now();
    loop {
        if !*active.borrow() {
            // Stand by; a new collector starts fresh when this replica takes over.
            gc = Gc::new(grace);
            let _ = active.changed().await;
            continue;
        }
        match pass(&ds, &mut gc, started.elapsed().as_secs()).await {
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
        }
    }

    #[test]
    fn the_leak_grace_period_reads_as_calico_writes_it() {
        assert_eq!(leak_grace_secs(&args("15m", 60)).unwrap(), 900);
        assert_eq!(leak_grace_secs(&args("3s", 60)).unwrap(), 3);
        assert!(leak_grace_secs(&args("soon", 60)).is_err());
        assert!(leak_grace_secs(&args("3s", 0)).is_err());
    }
}
