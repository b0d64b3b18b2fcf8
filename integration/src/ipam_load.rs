//! IPAM load against a real datastore, shared by the concurrency test and the benchmark:
//! simulated nodes allocate and release through their own connections while a shared ledger
//! catches any address handed to two owners at once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use serval_agent::datastore::{Backend, Datastore};
use serval_agent::resources::{IPAMConfig, IPPool, Node};
use serval_ipam::{AssignRequest, Ipam, IpamError};

/// Creates the pool, the IPAM configuration and the nodes.
pub async fn setup<B: Backend>(
    ds: &Datastore<B>,
    cidr: &str,
    block_size: u8,
    nodes: &[String],
    max_blocks_per_host: u32,
) {
    let pool: IPPool = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "IPPool", "metadata": {"name": "load"},
        "spec": {"cidr": cidr, "blockSize": block_size}
    }))
    .expect("pool literal");
    ds.create(&pool).await.expect("create pool");
    let config: IPAMConfig = serde_json::from_value(json!({
        "apiVersion": "serval.dev/v1", "kind": "IPAMConfig", "metadata": {"name": "default"},
        "spec": {"strictAffinity": false, "autoAllocateBlocks": true, "maxBlocksPerHost": max_blocks_per_host}
    }))
    .expect("config literal");
    ds.create(&config).await.expect("create IPAM config");
    for n in nodes {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "serval.dev/v1", "kind": "Node", "metadata": {"name": n}, "spec": {}
        }))
        .expect("node literal");
        ds.create(&node).await.expect("create node");
    }
}

/// Who holds which address right now, across all simulated nodes.
#[derive(Default)]
pub struct Ledger {
    held: Mutex<HashMap<IpAddr, String>>,
    duplicates: Mutex<Vec<String>>,
}

impl Ledger {
    fn take(&self, ip: IpAddr, owner: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(prev) = held.insert(ip, owner.to_string()) {
            self.duplicates
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("{ip} given to {owner} while {prev} held it"));
        }
    }

    fn give_back(&self, ip: IpAddr) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }

    /// Every double assignment seen.
    pub fn duplicates(&self) -> Vec<String> {
        self.duplicates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What one simulated node did.
#[derive(Debug, Clone, Default)]
pub struct NodeReport {
    /// Addresses allocated.
    pub allocated: usize,
    /// Addresses released.
    pub released: usize,
    /// Times the pool was momentarily full and the node released before retrying.
    pub exhausted: usize,
    /// Compare-and-swap conflicts retried.
    pub conflicts: u64,
    /// Addresses borrowed from other nodes' blocks.
    pub borrowed: u64,
    /// Blocks claimed.
    pub blocks_claimed: u64,
    /// Time spent allocating only.
    pub alloc_time: Duration,
}

/// One node: allocate `count` addresses (one handle each), keeping at most `live_cap` held
/// (releasing the oldest first), then release the rest.
pub async fn churn<B: Backend>(
    ipam: Ipam<Datastore<B>>,
    node: String,
    count: usize,
    live_cap: usize,
    ledger: Arc<Ledger>,
) -> Result<NodeReport, IpamError> {
    let mut report = NodeReport::default();
    let mut live: VecDeque<(String, IpAddr)> = VecDeque::new();
    let mut i = 0;
    while report.allocated < count {
        if live.len() >= live_cap {
            release_oldest(&ipam, &mut live, &ledger, &mut report).await?;
        }
        let handle = format!("{node}-h{i}");
        let req = AssignRequest {
            handle: handle.clone(),
            node: node.clone(),
            num_v4: 1,
            attrs: BTreeMap::from([
                ("pod".into(), handle.clone()),
                ("namespace".into(), "load".into()),
            ]),
            ..AssignRequest::default()
        };
        let started = Instant::now();
        let result = ipam.auto_assign(&req).await;
        report.alloc_time += started.elapsed();
        match result {
            Ok(got) => {
                let ip = got.v4[0];
                ledger.take(ip, &handle);
                live.push_back((handle, ip));
                report.allocated += 1;
                i += 1;
            }
            Err(IpamError::Exhausted { .. }) if !live.is_empty() => {
                report.exhausted += 1;
                release_oldest(&ipam, &mut live, &ledger, &mut report).await?;
            }
            Err(e) => return Err(e),
        }
    }
    while !live.is_empty() {
        release_oldest(&ipam, &mut live, &ledger, &mut report).await?;
    }
    let stats = ipam.stats();
    report.conflicts = stats.conflicts.load(Ordering::Relaxed);
    report.borrowed = stats.borrowed.load(Ordering::Relaxed);
    report.blocks_claimed = stats.blocks_claimed.load(Ordering::Relaxed);
    Ok(report)
}

async fn release_oldest<B: Backend>(
    ipam: &Ipam<Datastore<B>>,
    live: &mut VecDeque<(String, IpAddr)>,
    ledger: &Ledger,
    report: &mut NodeReport,
) -> Result<(), IpamError> {
    let Some((handle, ip)) = live.pop_front() else {
        return Ok(());
    };
    // Leave the ledger first: once released, another node may rightly get the address.
    ledger.give_back(ip);
    let released = ipam.release_by_handle(&handle).await?;
    assert_eq!(
        released,
        vec![ip],
        "release of {handle} returned what it held"
    );
    report.released += 1;
    Ok(())
}
