//! The datastore behaviour suite against a real etcd (Debian's etcd-server on loopback).

use serval_agent::datastore::{Datastore, EtcdBackend, conformance};
use serval_integration::EtcdServer;

async fn datastore(etcd: &EtcdServer) -> Datastore<EtcdBackend> {
    Datastore::new(
        EtcdBackend::connect(&[etcd.endpoint()])
            .await
            .expect("connect to etcd"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backend_conformance() {
    let Some(mut etcd) = EtcdServer::start("etcd_backend_conformance") else {
        return;
    };
    let ds = datastore(&etcd).await;
    conformance::crud_and_cas(&ds, "e").await;
    conformance::validation_guards_writes(&ds, "e").await;
    conformance::namespaced_lists(&ds, "e").await;
    conformance::watch_from_revision(&ds, "e").await;
    // Expiry the etcd way: compact everything, then take the server down and bring it back, so
    // the syncer's watch breaks, its resume revision is compacted away, and it must relist.
    let client = ds.backend().client();
    conformance::syncer_lists_watches_and_relists(&ds, "e", || async {
        let mut client = client.clone();
        serval_integration::etcd::compact_to_now(ds.backend()).await;
        etcd.restart();
        // Wait until the client has reconnected, so the test's next write is not lost to it.
        for _ in 0..100 {
            if client.get("/", None).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_over_etcd() {
    let Some(etcd) = EtcdServer::start("ipam_over_etcd") else {
        return;
    };
    conformance::ipam_basics(datastore(&etcd).await).await;
}
