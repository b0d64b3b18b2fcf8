//! etcd with TLS and client-certificate auth, as a hardened cluster runs it: serval's
//! datastore, servalctl and serval-cni connect with Calico's ETCD_CA_CERT_FILE /
//! ETCD_CERT_FILE / ETCD_KEY_FILE (etcd_* keys in the CNI configuration); without a client
//! certificate, or trusting another CA, they fail with an error instead of hanging; an
//! endpoint that never answers fails within the request timeout.

use std::time::{Duration, Instant};

use serde_json::json;
use serval_agent::datastore::etcd::{EtcdBackend, EtcdConfig, REQUEST_TIMEOUT};
use serval_agent::datastore::{Datastore, DatastoreError};
use serval_agent::resources::IPPool;
use serval_integration::peers::Scratch;
use serval_integration::{EtcdServer, EtcdTls, Netns, require};

fn config(endpoint: &str, ca: &std::path::Path, client: Option<&EtcdTls>) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        ca_cert_file: Some(ca.to_path_buf()),
        cert_file: client.map(|t| t.client_cert.clone()),
        key_file: client.map(|t| t.client_key.clone()),
    }
}

/// Connects and lists pools; the error text when either fails.
async fn list_pools(c: &EtcdConfig) -> Result<usize, String> {
    let started = Instant::now();
    let r = async {
        let ds = Datastore::new(EtcdBackend::connect_with(c).await?);
        Ok::<_, DatastoreError>(ds.list::<IPPool>(None).await?.0.len())
    }
    .await
    .map_err(|e| e.to_string());
    assert!(
        started.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(10),
        "bounded by the timeouts"
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_client_certificates_for_the_datastore_servalctl_and_serval_cni() {
    let Some((etcd, tls)) = EtcdServer::start_tls("etcd_tls") else {
        return;
    };
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("https://"));

    // The datastore with the client certificate: reads and writes work.
    let good = config(&endpoint, &tls.ca, Some(&tls));
    let ds = Datastore::new(EtcdBackend::connect_with(&good).await.unwrap());
    let pool: IPPool = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "IPPool", "metadata": {"name": "tls-pool"},
        "spec": {"cidr": "10.77.0.0/16"}
    }))
    .unwrap();
    ds.create(&pool).await.unwrap();
    assert_eq!(list_pools(&good).await, Ok(1));

    // No client certificate: refused by etcd, reported, not hung.
    let anonymous = config(&endpoint, &tls.ca, None);
    assert!(list_pools(&anonymous).await.is_err());
    // Trusting another CA: the server's certificate is refused.
    let other = Scratch::new("other-ca");
    let other_tls = EtcdTls::generate(&other.0, "someone-else");
    let wrong_ca = config(&endpoint, &other_tls.ca, Some(&tls));
    assert!(list_pools(&wrong_ca).await.is_err());

    // servalctl with Calico's variables.
    let ctl = require::serval_bin("servalctl");
    let run_ctl = |cert: bool| {
        let mut cmd = std::process::Command::new(&ctl);
        cmd.args(["get", "ippools"])
            .env("DATASTORE_TYPE", "etcdv3")
            .env("ETCD_ENDPOINTS", &endpoint)
            .env("ETCD_CA_CERT_FILE", &tls.ca);
        if cert {
            cmd.env("ETCD_CERT_FILE", &tls.client_cert)
                .env("ETCD_KEY_FILE", &tls.client_key);
        }
        cmd.output().unwrap()
    };
    let out = run_ctl(true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("tls-pool"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!run_ctl(false).status.success());

    // serval-cni's STATUS with the etcd_* keys of its configuration.
    let cni = require::serval_bin("serval-cni");
    let conf = |with_cert: bool| {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "serval-cni",
            "datastore_type": "etcdv3", "etcd_endpoints": endpoint,
            "etcd_ca_cert_file": tls.ca, "ipam": {"type": "serval-ipam"}
        });
        if with_cert {
            c["etcd_cert_file"] = json!(tls.client_cert);
            c["etcd_key_file"] = json!(tls.client_key);
        }
        c.to_string()
    };
    let status = |stdin: String| {
        serval_integration::cni::run_with_stdin(
            std::process::Command::new(&cni).env("CNI_COMMAND", "STATUS"),
            &stdin,
        )
    };
    let ok = status(conf(true));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let refused = status(conf(false));
    assert!(!refused.status.success());
    let err: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert!(err["code"].as_u64().is_some(), "a CNI error: {err}");
}

#[tokio::test]
async fn an_etcd_that_never_answers_fails_within_the_timeouts() {
    if !require::lab_ready("an_etcd_that_never_answers_fails_within_the_timeouts", &[]) {
        return;
    }
    // A namespace of our own with a listener that accepts connections and says nothing.
    let ns = Netns::new("etcdmute").unwrap();
    let path = format!("/run/netns/{}", ns.name());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        let mut held = Vec::new();
        for c in l.incoming() {
            held.push(c);
        }
    });
    let addr = rx.recv().unwrap();
    // The client runs inside the namespace too.
    let path = format!("/run/netns/{}", ns.name());
    let took = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let started = Instant::now();
            let r = async {
                let ds = Datastore::new(EtcdBackend::connect(&[format!("http://{addr}")]).await?);
                ds.list::<IPPool>(None).await.map(|l| l.0.len())
            }
            .await;
            assert!(r.is_err(), "a mute endpoint cannot answer");
            started.elapsed()
        })
    })
    .join()
    .unwrap();
    assert!(
        took <= REQUEST_TIMEOUT + Duration::from_secs(5),
        "failed after {took:?}"
    );
}
