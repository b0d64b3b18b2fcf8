//! The IPAM garbage collector: finds what crashes and deleted owners leave behind and repairs
//! it, carefully enough to run while allocators are busy.
//!
//! - **Handles** are rebuilt from blocks (blocks are the truth). A mismatch is repaired only
//!   when two scans see the same handle revision and the same block contents, so an
//!   allocation between its block write and its handle write is never "repaired" twice.
//! - **Leaks**: an address whose node is gone is released at once; one whose workload is gone
//!   after `leak_grace` seconds. Releases quote the allocation's sequence number, so an
//!   address handed to someone new in the meantime is left alone.
//! - **Empty blocks** lose their affinity after two consecutive empty observations.
//! - **Stale affinities** (a pending claim nobody finished, an affinity whose block is gone or
//!   belongs to another node) are removed after two observations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::allocator::Ipam;
use crate::error::IpamError;
use crate::model::{
    ATTR_NAMESPACE, ATTR_NODE, ATTR_POD, AffinityState, Block, BlockAffinity, Handle,
};
use crate::store::IpamStore;

/// Who may own addresses right now (nodes and workloads), as the caller sees the cluster.
#[derive(Debug, Clone, Default)]
pub struct Owners {
    /// Existing node names.
    pub nodes: BTreeSet<String>,
    /// Existing workloads as (namespace, pod).
    pub workloads: BTreeSet<(String, String)>,
}

/// What one scan found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Handles rewritten to match the blocks.
    pub handles_repaired: Vec<String>,
    /// Addresses whose owner is gone (released or still in their grace period).
    pub leaks_seen: Vec<IpAddr>,
    /// Addresses released this scan.
    pub released: Vec<IpAddr>,
    /// Empty blocks whose affinity was freed.
    pub blocks_released: Vec<IpNet>,
    /// Affinity records removed.
    pub affinities_removed: Vec<String>,
}

/// Collector state carried between scans (first sightings).
#[derive(Debug, Default)]
pub struct Gc {
    leak_grace_secs: u64,
    leak_first_seen: HashMap<(IpAddr, u64), u64>,
    handle_mismatch: HashMap<String, (Option<String>, BTreeMap<String, u32>)>,
    empty_seen: HashMap<IpNet, String>,
    stale_affinity: BTreeSet<String>,
}

impl Gc {
    /// A collector that releases workload leaks after `leak_grace_secs`.
    pub fn new(leak_grace_secs: u64) -> Self {
        Gc {
            leak_grace_secs,
            ..Gc::default()
        }
    }

    /// One full scan at time `now` (seconds, any epoch, monotonic).
    pub async fn scan<S: IpamStore>(
        &mut self,
        ipam: &Ipam<S>,
        owners: &Owners,
        now: u64,
    ) -> Result<GcReport, IpamError> {
        let mut report = GcReport::default();
        let blocks = ipam.store().list::<Block>().await?;
        self.repair_handles(ipam, &blocks, &mut report).await?;
        self.release_leaks(ipam, &blocks, owners, now, &mut report)
            .await?;
        self.release_empty_blocks(ipam, owners, &mut report).await?;
        self.remove_stale_affinities(ipam, &mut report).await?;
        Ok(report)
    }

    async fn repair_handles<S: IpamStore>(
        &mut self,
        ipam: &Ipam<S>,
        blocks: &[crate::store::Versioned<Block>],
        report: &mut GcReport,
    ) -> Result<(), IpamError> {
        let mut truth: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
        for b in blocks {
            for (handle, n) in b.value.handle_counts() {
                truth
                    .entry(handle)
                    .or_default()
                    .insert(b.value.cidr.to_string(), n);
            }
        }
        let stored: BTreeMap<String, crate::store::Versioned<Handle>> = ipam
            .store()
            .list::<Handle>()
            .await?
            .into_iter()
            .map(|h| (h.value.handle_id.clone(), h))
            .collect();
        let names: BTreeSet<&String> = truth.keys().chain(stored.keys()).collect();
        let mut mismatched = HashMap::new();
        for name in names {
            let want = truth.get(name).cloned().unwrap_or_default();
            let have = stored.get(name);
            if have.map(|h| &h.value.block) == Some(&want) || (have.is_none() && want.is_empty()) {
                continue;
            }
            let observation = (have.map(|h| h.revision.clone()), want.clone());
            let confirmed = self.handle_mismatch.get(name) == Some(&observation);
            if !confirmed {
                mismatched.insert(name.clone(), observation);
                continue;
            }
            tracing::warn!(handle = %name, "repairing handle that disagrees with its blocks");
            ipam.change_handle(name, |h| h.block = want.clone()).await?;
            report.handles_repaired.push(name.clone());
        }
        self.handle_mismatch = mismatched;
        Ok(())
    }

    async fn release_leaks<S: IpamStore>(
        &mut self,
        ipam: &Ipam<S>,
        blocks: &[crate::store::Versioned<Block>],
        owners: &Owners,
        now: u64,
        report: &mut GcReport,
    ) -> Result<(), IpamError> {
        let mut still_leaking = HashMap::new();
        for b in blocks {
            for (ordinal, ip, attr) in b.value.allocated() {
                let node = attr.secondary.get(ATTR_NODE);
                let node_gone = node.is_some_and(|n| !owners.nodes.contains(n));
                let workload = attr
                    .secondary
                    .get(ATTR_NAMESPACE)
                    .zip(attr.secondary.get(ATTR_POD));
                let workload_gone = workload.is_some_and(|(ns, pod)| {
                    !owners.workloads.contains(&(ns.clone(), pod.clone()))
                });
                if !node_gone && !workload_gone {
                    continue;
                }
                let Some(seq) = b.value.allocation_sequence(ordinal) else {
                    continue;
                };
                report.leaks_seen.push(ip);
                let first = *self.leak_first_seen.get(&(ip, seq)).unwrap_or(&now);
                if node_gone || now.saturating_sub(first) >= self.leak_grace_secs {
                    if ipam.release_if_unchanged(ip, seq).await? {
                        tracing::info!(%ip, handle = ?attr.handle_id, "released leaked address");
                        report.released.push(ip);
                    }
                } else {
                    still_leaking.insert((ip, seq), first);
                }
            }
        }
        self.leak_first_seen = still_leaking;
        Ok(())
    }

    async fn release_empty_blocks<S: IpamStore>(
        &mut self,
        ipam: &Ipam<S>,
        owners: &Owners,
        report: &mut GcReport,
    ) -> Result<(), IpamError> {
        // Re-read: leak releases above may have emptied blocks.
        let blocks = ipam.store().list::<Block>().await?;
        let mut seen = HashMap::new();
        for b in blocks {
            let Some(node) = b.value.affine_node().map(str::to_string) else {
                continue;
            };
            if !b.value.is_empty() {
                continue;
            }
            let second_sighting = self.empty_seen.get(&b.value.cidr) == Some(&b.revision);
            if (second_sighting || !owners.nodes.contains(&node))
                && ipam.release_empty_block(&node, &b).await?
            {
                report.blocks_released.push(b.value.cidr);
                continue;
            }
            seen.insert(b.value.cidr, b.revision.clone());
        }
        self.empty_seen = seen;
        Ok(())
    }

    async fn remove_stale_affinities<S: IpamStore>(
        &mut self,
        ipam: &Ipam<S>,
        report: &mut GcReport,
    ) -> Result<(), IpamError> {
        let blocks: BTreeMap<IpNet, Option<String>> = ipam
            .store()
            .list::<Block>()
            .await?
            .into_iter()
            .map(|b| (b.value.cidr, b.value.affine_node().map(str::to_string)))
            .collect();
        let mut stale = BTreeSet::new();
        for a in ipam.store().list::<BlockAffinity>().await? {
            let backed = blocks.get(&a.value.cidr) == Some(&Some(a.value.node.clone()));
            if backed && a.value.state == AffinityState::Confirmed {
                continue;
            }
            let key = crate::store::affinity_key(&a.value.node, &a.value.cidr.to_string());
            let id = format!("{key}@{}", a.revision);
            if self.stale_affinity.contains(&id) {
                if backed {
                    // A claim that got as far as writing the block: finish it.
                    ipam.finish_claim(&a.value.node, &a.value.cidr).await?;
                } else {
                    ipam.drop_affinity(&a.value.node, &a.value.cidr).await?;
                    report.affinities_removed.push(key);
                }
            } else {
                stale.insert(id);
            }
        }
        self.stale_affinity = stale;
        Ok(())
    }
}
