//! IPAM against a real etcd: eight nodes allocating and releasing at once from one small pool,
//! and an allocator killed between its block write and its handle write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ipnet::IpNet;
use serval_agent::datastore::{Datastore, EtcdBackend};
use serval_integration::EtcdServer;
use serval_integration::ipam_load::{self, Ledger};
use serval_ipam::{
    AssignRequest, Block, Gc, Handle, Ipam, IpamConfig, IpamObject, IpamStore, ObjectKind, Owners,
    Pool, StoreError, Versioned,
};

async fn datastore(etcd: &EtcdServer) -> Datastore<EtcdBackend> {
    Datastore::new(
        EtcdBackend::connect(&[etcd.endpoint()])
            .await
            .expect("connect to etcd"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_nodes_share_a_small_pool_without_duplicates_or_leaks() {
    let Some(etcd) = EtcdServer::start("eight_nodes_share_a_small_pool") else {
        return;
    };
    let nodes: Vec<String> = (1..=8).map(|i| format!("node-{i}")).collect();
    let setup = datastore(&etcd).await;
    // 128 addresses in eight /28 blocks for eight nodes; half the nodes keep up to 20 live
    // addresses, half up to 10 (120 at peak). The busy nodes outgrow their 16-address block when
    // no block is left to claim, so they borrow from the quiet nodes' blocks, and owners and
    // borrowers collide on the same blocks.
    ipam_load::setup(&setup, "10.77.0.0/25", 28, &nodes, 0).await;
    let ledger = Arc::new(Ledger::default());
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let ipam = Ipam::new(datastore(&etcd).await);
        let live_cap = if i % 2 == 0 { 20 } else { 10 };
        tasks.push(tokio::spawn(ipam_load::churn(
            ipam,
            node.clone(),
            500,
            live_cap,
            ledger.clone(),
        )));
    }
    let mut total = ipam_load::NodeReport::default();
    for (node, task) in nodes.iter().zip(tasks) {
        let r = task
            .await
            .expect("node task")
            .unwrap_or_else(|e| panic!("{node}: {e}"));
        assert_eq!((r.allocated, r.released), (500, 500), "{node}: {r:?}");
        total.conflicts += r.conflicts;
        total.borrowed += r.borrowed;
        total.exhausted += r.exhausted;
        total.blocks_claimed += r.blocks_claimed;
    }
    println!(
        "8 nodes x 500 allocations: {} CAS conflict retries, {} borrowed addresses, \
         {} blocks claimed, {} momentary exhaustions",
        total.conflicts, total.borrowed, total.blocks_claimed, total.exhausted
    );
    assert_eq!(
        ledger.duplicates(),
        Vec::<String>::new(),
        "no address held twice"
    );
    assert!(
        total.borrowed > 0,
        "the pool is small enough that nodes must borrow"
    );
    assert!(
        total.conflicts > 0,
        "owners and borrowers share blocks, so some writes collide"
    );
    // Zero leaks: every block empty, no handle left.
    let ipam = Ipam::new(setup);
    for b in IpamStore::list::<Block>(ipam.store()).await.unwrap() {
        let held: Vec<_> = b
            .value
            .allocated()
            .map(|(_, ip, a)| (ip, a.handle_id.clone()))
            .collect();
        assert!(
            held.is_empty(),
            "block {} still holds {held:?}",
            b.value.cidr
        );
    }
    let handles = IpamStore::list::<Handle>(ipam.store()).await.unwrap();
    assert!(
        handles.is_empty(),
        "{} handles left: {:?}",
        handles.len(),
        handles.first()
    );
}

/// A store that never completes the first handle write: the allocator "dies" there.
struct DiesBeforeHandleWrite {
    inner: Datastore<EtcdBackend>,
    reached: Arc<tokio::sync::Notify>,
    armed: AtomicBool,
}

impl DiesBeforeHandleWrite {
    async fn maybe_die(&self, kind: ObjectKind) {
        if kind == ObjectKind::Handle && self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

impl IpamStore for DiesBeforeHandleWrite {
    async fn get<T: IpamObject>(&self, key: &str) -> Result<Option<Versioned<T>>, StoreError> {
        IpamStore::get(&self.inner, key).await
    }
    async fn list<T: IpamObject>(&self) -> Result<Vec<Versioned<T>>, StoreError> {
        IpamStore::list(&self.inner).await
    }
    async fn create<T: IpamObject>(&self, value: &T) -> Result<Versioned<T>, StoreError> {
        self.maybe_die(T::KIND).await;
        IpamStore::create(&self.inner, value).await
    }
    async fn update<T: IpamObject>(
        &self,
        value: &Versioned<T>,
    ) -> Result<Versioned<T>, StoreError> {
        self.maybe_die(T::KIND).await;
        IpamStore::update(&self.inner, value).await
    }
    async fn delete<T: IpamObject>(&self, key: &str, revision: &str) -> Result<(), StoreError> {
        IpamStore::delete::<T>(&self.inner, key, revision).await
    }
    async fn pools(&self) -> Result<Vec<Pool>, StoreError> {
        IpamStore::pools(&self.inner).await
    }
    async fn config(&self) -> Result<IpamConfig, StoreError> {
        IpamStore::config(&self.inner).await
    }
    async fn node_labels(
        &self,
        node: &str,
    ) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        IpamStore::node_labels(&self.inner, node).await
    }
    async fn reservations(&self) -> Result<Vec<IpNet>, StoreError> {
        IpamStore::reservations(&self.inner).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_repairs_an_allocator_killed_between_block_and_handle_writes() {
    let Some(etcd) = EtcdServer::start("gc_repairs_a_killed_allocator") else {
        return;
    };
    let nodes = vec!["node-1".to_string()];
    ipam_load::setup(&datastore(&etcd).await, "10.88.0.0/24", 26, &nodes, 0).await;
    let reached = Arc::new(tokio::sync::Notify::new());
    let dying = Ipam::new(DiesBeforeHandleWrite {
        inner: datastore(&etcd).await,
        reached: reached.clone(),
        armed: AtomicBool::new(true),
    });
    let req = AssignRequest {
        handle: "k8s-pod-network.c0ffee".into(),
        node: "node-1".into(),
        num_v4: 1,
        attrs: BTreeMap::from([
            ("pod".into(), "web".into()),
            ("namespace".into(), "prod".into()),
        ]),
        ..AssignRequest::default()
    };
    let task = tokio::spawn(async move { dying.auto_assign(&req).await });
    reached.notified().await;
    task.abort(); // The process dies: no rollback runs.
    let _ = task.await;

    let ipam = Ipam::new(datastore(&etcd).await);
    let blocks = IpamStore::list::<Block>(ipam.store()).await.unwrap();
    let orphan: Vec<_> = blocks
        .iter()
        .flat_map(|b| b.value.ips_for_handle("k8s-pod-network.c0ffee"))
        .collect();
    assert_eq!(orphan.len(), 1, "the block write landed");
    assert!(
        ipam.ips_for_handle("k8s-pod-network.c0ffee", None)
            .await
            .unwrap()
            .is_empty(),
        "handle write did not"
    );

    // While the pod exists, the GC rebuilds the missing handle (after a second, identical look)...
    let mut owners = Owners {
        nodes: nodes.iter().cloned().collect(),
        workloads: [("prod".to_string(), "web".to_string())].into(),
    };
    let mut gc = Gc::new(30);
    assert!(
        gc.scan(&ipam, &owners, 0)
            .await
            .unwrap()
            .handles_repaired
            .is_empty()
    );
    let r = gc.scan(&ipam, &owners, 1).await.unwrap();
    assert_eq!(
        r.handles_repaired,
        vec!["k8s-pod-network.c0ffee".to_string()]
    );
    assert_eq!(
        ipam.ips_for_handle("k8s-pod-network.c0ffee", None)
            .await
            .unwrap(),
        orphan
    );

    // ...and once the pod is gone (the CNI ADD failed), the address is released after the grace.
    owners.workloads.clear();
    let r = gc.scan(&ipam, &owners, 2).await.unwrap();
    assert_eq!(r.leaks_seen, orphan);
    assert!(r.released.is_empty(), "still within the grace period");
    let r = gc.scan(&ipam, &owners, 40).await.unwrap();
    assert_eq!(r.released, orphan);
    assert!(
        IpamStore::list::<Handle>(ipam.store())
            .await
            .unwrap()
            .is_empty()
    );
}
