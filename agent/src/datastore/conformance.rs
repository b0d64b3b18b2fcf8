//! The behaviour every backend must show, as one suite run against each (in-memory in unit
//! tests, a fake Kubernetes API server in unit tests, a real etcd in `agent/tests/`).
//! Each check panics with what it expected and what it saw.

use std::time::Duration;

use futures::StreamExt;
use kube::api::ObjectMeta;

use super::{
    Backend, Datastore, DatastoreError, KindInfo, RawEvent, SyncEvent, SyncStatus, Syncer,
};
use std::collections::BTreeMap;

use serval_ipam::{AssignRequest, Ipam, IpamStore};

use crate::resources::{
    BlockAffinity, IPAMBlock, IPAMHandle, IPPool, IPPoolSpec, Node, WorkloadEndpoint,
    WorkloadEndpointSpec,
};

fn pool(name: &str, cidr: &str) -> IPPool {
    IPPool {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: IPPoolSpec {
            cidr: cidr.to_string().into(),
            ..IPPoolSpec::default()
        },
    }
}

fn endpoint(namespace: &str, name: &str) -> WorkloadEndpoint {
    WorkloadEndpoint {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        spec: WorkloadEndpointSpec {
            node: "node-1".to_string(),
            pod: name.to_string(),
            interface_name: "sv0123456789a".to_string(),
            ip_networks: vec!["10.0.0.1/32".into()],
            ..WorkloadEndpointSpec::default()
        },
    }
}

/// Create, read, compare-and-swap update and delete, with every failure mode.
pub async fn crud_and_cas<B: Backend>(ds: &Datastore<B>, tag: &str) {
    let name = format!("pool-{tag}");
    let created = ds
        .create(&pool(&name, "10.10.0.0/16"))
        .await
        .expect("create");
    let rev1 = created
        .metadata
        .resource_version
        .clone()
        .expect("revision set on create");
    match ds.create(&pool(&name, "10.11.0.0/16")).await {
        Err(DatastoreError::AlreadyExists { .. }) => {}
        other => panic!("second create: expected AlreadyExists, got {other:?}"),
    }
    let read: IPPool = ds.get(None, &name).await.expect("get").expect("exists");
    assert_eq!(read.spec, created.spec);
    assert_eq!(
        read.metadata.resource_version.as_deref(),
        Some(rev1.as_str())
    );

    let mut changed = read.clone();
    changed.spec.nat_outgoing = true;
    let updated = ds
        .update(&changed)
        .await
        .expect("update at current revision");
    let rev2 = updated.metadata.resource_version.clone().expect("revision");
    assert_ne!(rev1, rev2, "an update moves the revision");
    match ds.update(&changed).await {
        Err(DatastoreError::Conflict { .. }) => {}
        other => panic!("update at stale revision {rev1}: expected Conflict, got {other:?}"),
    }
    let mut no_rev = changed.clone();
    no_rev.metadata.resource_version = None;
    assert!(matches!(
        ds.update(&no_rev).await,
        Err(DatastoreError::MissingRevision { .. })
    ));
    let mut ghost = pool(&format!("ghost-{tag}"), "10.12.0.0/16");
    ghost.metadata.resource_version = Some(rev2.clone());
    assert!(
        matches!(
            ds.update(&ghost).await,
            Err(DatastoreError::NotFound { .. } | DatastoreError::Conflict { .. })
        ),
        "update of a missing object fails"
    );

    match ds.delete::<IPPool>(None, &name, Some(&rev1)).await {
        Err(DatastoreError::Conflict { .. }) => {}
        other => panic!("delete at stale revision: expected Conflict, got {other:?}"),
    }
    ds.delete::<IPPool>(None, &name, Some(&rev2))
        .await
        .expect("delete at current revision");
    assert!(ds.get::<IPPool>(None, &name).await.expect("get").is_none());
    assert!(matches!(
        ds.delete::<IPPool>(None, &name, None).await,
        Err(DatastoreError::NotFound { .. })
    ));
}

/// Invalid objects are refused before anything is written.
pub async fn validation_guards_writes<B: Backend>(ds: &Datastore<B>, tag: &str) {
    let name = format!("bad-{tag}");
    match ds.create(&pool(&name, "10.0.0.1/16")).await {
        Err(DatastoreError::Invalid(e)) => {
            assert!(e.to_string().contains("spec.cidr"), "{e}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(ds.get::<IPPool>(None, &name).await.expect("get").is_none());
}

/// Namespaced kinds list per namespace or across all (a real API server needs namespaces
/// `ns-a-<tag>` and `ns-b-<tag>` to exist).
pub async fn namespaced_lists<B: Backend>(ds: &Datastore<B>, tag: &str) {
    let (a, b) = (format!("ns-a-{tag}"), format!("ns-b-{tag}"));
    ds.create(&endpoint(&a, "web")).await.expect("create in a");
    ds.create(&endpoint(&b, "web"))
        .await
        .expect("same name in b");
    ds.create(&endpoint(&b, "db")).await.expect("create in b");
    let (in_b, _) = ds.list::<WorkloadEndpoint>(Some(&b)).await.expect("list b");
    assert_eq!(in_b.len(), 2, "namespace b holds two endpoints");
    let (all, _) = ds.list::<WorkloadEndpoint>(None).await.expect("list all");
    let ours = all
        .iter()
        .filter(|w| [&a, &b].contains(&&w.metadata.namespace.clone().unwrap_or_default()))
        .count();
    assert_eq!(ours, 3);
    let got: WorkloadEndpoint = ds.get(Some(&a), "web").await.expect("get").expect("exists");
    assert_eq!(got.metadata.namespace.as_deref(), Some(a.as_str()));
}

async fn next_event(stream: &mut super::EventStream) -> RawEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch event within 10 s")
        .expect("stream open")
        .expect("no watch error")
}

fn skip_bookmarks(e: &RawEvent) -> bool {
    matches!(e, RawEvent::Bookmark(_))
}

/// A watch from a list's revision sees later changes in order, and resumes mid-way.
pub async fn watch_from_revision<B: Backend>(ds: &Datastore<B>, tag: &str) {
    let kind = KindInfo::of::<IPPool>();
    let name = format!("watched-{tag}");
    let (_, start) = ds.list::<IPPool>(None).await.expect("list");
    let created = ds
        .create(&pool(&name, "10.20.0.0/16"))
        .await
        .expect("create");
    let mut changed = created.clone();
    changed.spec.disabled = true;
    let updated = ds.update(&changed).await.expect("update");
    ds.delete::<IPPool>(None, &name, updated.metadata.resource_version.as_deref())
        .await
        .expect("delete");

    let mut stream = ds.backend().watch(&kind, &start).await.expect("watch");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = next_event(&mut stream).await;
        if skip_bookmarks(&e) {
            continue;
        }
        let (_, n) = match &e {
            RawEvent::Added(o) | RawEvent::Modified(o) | RawEvent::Deleted(o) => {
                super::object_name(o)
            }
            RawEvent::Bookmark(_) => unreachable!(),
        };
        if n == name {
            seen.push(e);
        }
    }
    assert!(matches!(seen[0], RawEvent::Added(_)), "first {seen:?}");
    assert!(
        matches!(&seen[1], RawEvent::Modified(o) if o["spec"]["disabled"] == true),
        "second {seen:?}"
    );
    assert!(matches!(seen[2], RawEvent::Deleted(_)), "third {seen:?}");

    // Resuming from the update's revision yields only the delete.
    let mut resumed = ds
        .backend()
        .watch(
            &kind,
            updated.metadata.resource_version.as_deref().expect("rev"),
        )
        .await
        .expect("resume");
    loop {
        match next_event(&mut resumed).await {
            RawEvent::Bookmark(_) => continue,
            RawEvent::Deleted(o) if super::object_name(&o).1 == name => break,
            RawEvent::Deleted(_) => continue,
            other => panic!("resumed watch: expected only the delete, got {other:?}"),
        }
    }
}

async fn next_sync(rx: &mut tokio::sync::mpsc::Receiver<SyncEvent>) -> SyncEvent {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a sync event within 15 s")
        .expect("syncer running")
}

/// Waits for an update about `name` (skipping others), returning it.
async fn sync_update_for(rx: &mut tokio::sync::mpsc::Receiver<SyncEvent>, name: &str) -> SyncEvent {
    loop {
        let e = next_sync(rx).await;
        let n = match &e {
            SyncEvent::Upsert { object, .. } => super::object_name(object).1,
            SyncEvent::Delete { name, .. } => name.clone(),
            SyncEvent::Status(_) => continue,
        };
        if n == name {
            return e;
        }
    }
}

/// The syncer reports waiting → in sync after the initial state, then streams changes; after
/// `expire` makes the watch revision unusable it relists and reports what changed meanwhile.
pub async fn syncer_lists_watches_and_relists<B, F, Fut>(ds: &Datastore<B>, tag: &str, expire: F)
where
    B: Backend + Clone,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = format!("sync-before-{tag}");
    let after = format!("sync-after-{tag}");
    ds.create(&pool(&before, "10.30.0.0/16"))
        .await
        .expect("create");
    let (syncer, mut rx) = Syncer::start(ds.backend().clone(), vec![KindInfo::of::<IPPool>()]);
    assert_eq!(
        next_sync(&mut rx).await,
        SyncEvent::Status(SyncStatus::WaitingForDatastore)
    );
    let mut saw_before = false;
    loop {
        match next_sync(&mut rx).await {
            SyncEvent::Upsert { object, .. } if super::object_name(&object).1 == before => {
                saw_before = true
            }
            SyncEvent::Status(SyncStatus::InSync) => break,
            _ => {}
        }
    }
    assert!(saw_before, "initial state arrives before InSync");
    let created = ds
        .create(&pool(&after, "10.31.0.0/16"))
        .await
        .expect("create");
    assert!(matches!(
        sync_update_for(&mut rx, &after).await,
        SyncEvent::Upsert { .. }
    ));

    expire().await;
    // A change made while the watch is being re-established must not be lost.
    ds.delete::<IPPool>(None, &after, created.metadata.resource_version.as_deref())
        .await
        .expect("delete");
    assert!(matches!(
        sync_update_for(&mut rx, &after).await,
        SyncEvent::Delete { .. }
    ));
    drop(syncer);
}

/// IPAM over the datastore: objects stored under Calico's names, pool node selectors read
/// from Node labels, idempotent allocation, release.
pub async fn ipam_basics<B: Backend>(ds: Datastore<B>) {
    ds.create(
        &serde_json::from_value::<IPPool>(serde_json::json!({
            "apiVersion": "serval.dev/v1", "kind": "IPPool", "metadata": {"name": "pods"},
            "spec": {"cidr": "10.44.0.0/24", "blockSize": 28, "nodeSelector": "rack == 'a'"}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    ds.create(
        &serde_json::from_value::<Node>(serde_json::json!({
            "apiVersion": "serval.dev/v1", "kind": "Node",
            "metadata": {"name": "node-1", "labels": {"rack": "a"}}, "spec": {}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let ipam = Ipam::new(ds);
    let req = AssignRequest {
        handle: "k8s-pod-network.abc123".into(),
        node: "node-1".into(),
        num_v4: 1,
        attrs: BTreeMap::from([
            ("pod".into(), "web".into()),
            ("namespace".into(), "prod".into()),
        ]),
        ..AssignRequest::default()
    };
    let got = ipam.auto_assign(&req).await.unwrap();
    let again = ipam.auto_assign(&req).await.unwrap();
    assert_eq!(
        (&again.v4, &again.v6),
        (&got.v4, &got.v6),
        "idempotent by handle"
    );
    assert!(!got.held_before && again.held_before);
    let blocks = ipam.affine_blocks("node-1").await.unwrap();
    assert_eq!(blocks.len(), 1);
    // Stored as Calico names them.
    let block_name = blocks[0].to_string().replace(['.', '/'], "-");
    let ds = ipam.store();
    assert!(
        ds.get::<IPAMBlock>(None, &block_name)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        ds.get::<BlockAffinity>(None, &format!("node-1-{block_name}"))
            .await
            .unwrap()
            .is_some()
    );
    let handle: IPAMHandle = ds
        .get(None, "k8s-pod-network.abc123")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.spec.inner.block[&blocks[0].to_string()], 1);
    // Pool node selectors use Node labels.
    let other = AssignRequest {
        node: "node-2".into(),
        handle: "h2".into(),
        ..req.clone()
    };
    assert!(ipam.auto_assign(&other).await.is_err());
    assert_eq!(ipam.release_by_handle(&req.handle).await.unwrap(), got.v4);
    assert!(
        IpamStore::list::<serval_ipam::Handle>(ds)
            .await
            .unwrap()
            .is_empty()
    );
}
