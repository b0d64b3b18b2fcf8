//! Allocation and release: the compare-and-swap loops around the pure block operations.
//!
//! Write order (what a crash can leave behind, and who repairs it):
//! 1. claim: pending affinity → block (with affinity) → confirmed affinity. A crash leaves a
//!    pending affinity, which the same node resumes and the GC removes if abandoned.
//! 2. assign: block → handle. A crash leaves an allocation its handle does not count; the GC
//!    rebuilds handles from blocks (blocks are the truth) and releases leaked owners.
//! 3. release: block → handle, in the same order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use serval_policy::Selector;

use crate::cidr;
use crate::error::{Family, IpamError};
use crate::model::{
    ATTR_NODE, ATTR_TYPE, AffinityState, AllocationAttribute, Block, BlockAffinity, Handle, Pool,
};
use crate::store::{IpamStore, Versioned, affinity_key};

mod release;

/// Bound on compare-and-swap attempts for one object before giving up.
pub const MAX_CAS_ATTEMPTS: u32 = 100;

/// A request for addresses under one handle.
#[derive(Debug, Clone, Default)]
pub struct AssignRequest {
    /// Handle ID (e.g. `k8s-pod-network.<containerID>`); the same handle gets the same addresses.
    pub handle: String,
    /// The node allocating.
    pub node: String,
    /// IPv4 addresses wanted.
    pub num_v4: usize,
    /// IPv6 addresses wanted.
    pub num_v6: usize,
    /// Owner attributes stored with the allocation (`pod`, `namespace`, `type`...).
    pub attrs: BTreeMap<String, String>,
    /// Limit to these pool names (empty: every pool that selects the node).
    pub pools: Vec<String>,
}

/// Addresses handed out for a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    /// IPv4 addresses.
    pub v4: Vec<IpAddr>,
    /// IPv6 addresses.
    pub v6: Vec<IpAddr>,
    /// The handle held addresses before this request (a repeated ADD): undoing it must not
    /// release them.
    pub held_before: bool,
}

/// What one family's assignment starts from, read concurrently: one round trip to the
/// datastore instead of six in a row.
struct AssignStart {
    held: Vec<IpAddr>,
    handle_absent: bool,
    pools: Vec<Pool>,
    config: crate::model::IpamConfig,
    reserved: Vec<IpNet>,
    affine: Vec<IpNet>,
}

/// Which tunnel a node address is for; decides the handle and the `type` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    /// `tunl0` (IPv4 only).
    Ipip,
    /// The IPv4 VXLAN device.
    Vxlan,
    /// The IPv6 VXLAN device.
    VxlanV6,
}

impl TunnelKind {
    /// Calico's handle ID for this tunnel on `node`.
    pub fn handle(self, node: &str) -> String {
        match self {
            TunnelKind::Ipip => format!("ipip-tunnel-addr-{node}"),
            TunnelKind::Vxlan => format!("vxlan-tunnel-addr-{node}"),
            TunnelKind::VxlanV6 => format!("vxlan-v6-tunnel-addr-{node}"),
        }
    }

    fn type_attr(self) -> &'static str {
        match self {
            TunnelKind::Ipip => "ipipTunnelAddress",
            TunnelKind::Vxlan => "vxlanTunnelAddress",
            TunnelKind::VxlanV6 => "vxlanV6TunnelAddress",
        }
    }
}

/// Counters a caller can report (conflict retries show contention).
#[derive(Debug, Default)]
pub struct IpamStats {
    /// Compare-and-swap writes that lost a race and were retried.
    pub conflicts: AtomicU64,
    /// Blocks claimed.
    pub blocks_claimed: AtomicU64,
    /// Addresses handed out from another node's block.
    pub borrowed: AtomicU64,
}

/// Block IPAM over a compare-and-swap store.
pub struct Ipam<S> {
    store: S,
    stats: IpamStats,
}

fn family_of(net: &IpNet) -> Family {
    match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

fn family_of_ip(ip: &IpAddr) -> Family {
    if ip.is_ipv4() { Family::V4 } else { Family::V6 }
}

impl<S: IpamStore> Ipam<S> {
    /// IPAM over `store`.
    pub fn new(store: S) -> Self {
        Self {
            store,
            stats: IpamStats::default(),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Contention and activity counters.
    pub fn stats(&self) -> &IpamStats {
        &self.stats
    }

    fn conflict(&self) {
        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// Pools of `family` that are enabled, select `node`, and are named in `names` (if any).
    pub async fn pools_for(
        &self,
        node: &str,
        family: Family,
        names: &[String],
    ) -> Result<Vec<Pool>, IpamError> {
        let (labels, pools) = futures::try_join!(self.store.node_labels(node), self.store.pools())?;
        let labels = labels.unwrap_or_default();
        let mut out = Vec::new();
        for pool in pools {
            if pool.disabled || family_of(&pool.cidr) != family {
                continue;
            }
            if !names.is_empty() && !names.contains(&pool.name) {
                continue;
            }
            let selector =
                Selector::parse(&pool.node_selector).map_err(|source| IpamError::Selector {
                    pool: pool.name.clone(),
                    source,
                })?;
            if selector.matches(&labels) {
                out.push(pool);
            }
        }
        Ok(out)
    }

    /// The pool holding `ip`.
    async fn pool_of(&self, ip: IpAddr) -> Result<Pool, IpamError> {
        self.store
            .pools()
            .await?
            .into_iter()
            .find(|p| p.cidr.contains(&ip))
            .ok_or(IpamError::NotInPool(ip))
    }

    /// Blocks `node` holds a confirmed affinity for (what it announces over BGP).
    pub async fn affine_blocks(&self, node: &str) -> Result<Vec<IpNet>, IpamError> {
        let mut out: Vec<IpNet> = self
            .store
            .list::<BlockAffinity>()
            .await?
            .into_iter()
            .filter(|a| a.value.node == node && a.value.state == AffinityState::Confirmed)
            .map(|a| a.value.cidr)
            .collect();
        out.sort();
        Ok(out)
    }

    /// Assigns addresses for a request; idempotent per handle.
    pub async fn auto_assign(&self, req: &AssignRequest) -> Result<Assigned, IpamError> {
        let (v4, held_v4) = self.assign_family(req, Family::V4, req.num_v4).await?;
        let (v6, held_v6) = match self.assign_family(req, Family::V6, req.num_v6).await {
            Ok(v6) => v6,
            Err(e) => {
                // All or nothing: do not keep the IPv4 half of a failed dual-stack request.
                if !v4.is_empty() && !held_v4 {
                    self.release_ips(&v4).await?;
                }
                return Err(e);
            }
        };
        Ok(Assigned {
            v4,
            v6,
            held_before: held_v4 || held_v6,
        })
    }

    /// The node's tunnel address of the given kind, allocated once and then returned again.
    pub async fn assign_tunnel_address(
        &self,
        node: &str,
        kind: TunnelKind,
    ) -> Result<IpAddr, IpamError> {
        let family = if kind == TunnelKind::VxlanV6 {
            Family::V6
        } else {
            Family::V4
        };
        let req = AssignRequest {
            handle: kind.handle(node),
            node: node.to_string(),
            num_v4: usize::from(family == Family::V4),
            num_v6: usize::from(family == Family::V6),
            attrs: BTreeMap::from([(ATTR_TYPE.to_string(), kind.type_attr().to_string())]),
            pools: Vec::new(),
        };
        let got = self.auto_assign(&req).await?;
        Ok(got
            .v4
            .into_iter()
            .chain(got.v6)
            .next()
            .expect("one address asked for"))
    }

    /// Addresses `handle` already holds (of `family`).
    pub async fn ips_for_handle(
        &self,
        handle: &str,
        family: Option<Family>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self.held_by_handle(handle, family).await?.0)
    }

    /// Addresses `handle` already holds (of `family`), and whether the handle is absent.
    async fn held_by_handle(
        &self,
        handle: &str,
        family: Option<Family>,
    ) -> Result<(Vec<IpAddr>, bool), IpamError> {
        let Some(h) = self.store.get::<Handle>(handle).await? else {
            return Ok((Vec::new(), true));
        };
        let mut out = Vec::new();
        for cidr in h.value.block.keys() {
            if let Some(b) = self.store.get::<Block>(cidr).await? {
                out.extend(b.value.ips_for_handle(handle));
            }
        }
        out.retain(|ip| family.is_none_or(|f| family_of_ip(ip) == f));
        Ok((out, false))
    }

    /// Everything an assignment of `family` starts from, read at once.
    async fn assign_start(
        &self,
        req: &AssignRequest,
        family: Family,
    ) -> Result<AssignStart, IpamError> {
        let ((held, handle_absent), pools, config, reserved, affine) = futures::try_join!(
            self.held_by_handle(&req.handle, Some(family)),
            self.pools_for(&req.node, family, &req.pools),
            async { self.store.config().await.map_err(IpamError::from) },
            async { self.store.reservations().await.map_err(IpamError::from) },
            self.affine_blocks(&req.node),
        )?;
        Ok(AssignStart {
            held,
            handle_absent,
            pools,
            config,
            reserved,
            affine,
        })
    }

    /// The family's addresses for the request, and whether the handle held some before.
    async fn assign_family(
        &self,
        req: &AssignRequest,
        family: Family,
        wanted: usize,
    ) -> Result<(Vec<IpAddr>, bool), IpamError> {
        if wanted == 0 {
            return Ok((Vec::new(), false));
        }
        let AssignStart {
            held: mut got,
            handle_absent,
            pools,
            config,
            reserved,
            affine: first_affine,
        } = self.assign_start(req, family).await?;
        let held_before = !got.is_empty();
        if got.len() >= wanted {
            got.truncate(wanted);
            return Ok((got, held_before));
        }
        if pools.is_empty() {
            return Err(IpamError::NoPool {
                family,
                node: req.node.clone(),
                names: if req.pools.is_empty() {
                    String::new()
                } else {
                    format!(" among {:?}", req.pools)
                },
            });
        }
        let mut secondary = req.attrs.clone();
        secondary.insert(ATTR_NODE.to_string(), req.node.clone());
        let attr = AllocationAttribute {
            handle_id: Some(req.handle.clone()),
            secondary,
        };
        let host = Block::host_affinity(&req.node);
        let newly_got_from = got.len();
        // Known absent (no read before the first write); after any write, read as usual.
        let mut handle_absent = handle_absent;
        let mut first_affine = Some(first_affine);
        let result = async {
            for _ in 0..MAX_CAS_ATTEMPTS {
                if got.len() >= wanted {
                    return Ok(());
                }
                // 1. The node's own blocks (read again after a claim).
                let affine_now = match first_affine.take() {
                    Some(a) => a,
                    None => self.affine_blocks(&req.node).await?,
                };
                let affine: Vec<IpNet> = affine_now
                    .into_iter()
                    .filter(|b| pools.iter().any(|p| p.cidr.contains(b)))
                    .collect();
                for cidr in &affine {
                    let need = wanted - got.len();
                    let ips = self
                        .assign_in_block(cidr, need, &attr, &reserved, handle_absent, |b| {
                            b.affinity.as_deref() == Some(host.as_str())
                        })
                        .await?;
                    handle_absent &= ips.is_empty();
                    got.extend(ips);
                    if got.len() >= wanted {
                        return Ok(());
                    }
                }
                // 2. A new block, within the cap.
                if config.auto_allocate_blocks
                    && affine.len() < config.block_cap() as usize
                    && self.claim_block(&req.node, &pools).await?.is_some()
                {
                    continue;
                }
                // 3. Borrow from any block with room, unless strict affinity forbids it.
                if config.strict_affinity {
                    break;
                }
                let before = got.len();
                let blocks = self.store.list::<Block>().await?;
                for b in blocks {
                    let cidr = b.value.cidr;
                    let usable = pools.iter().any(|p| p.cidr.contains(&cidr))
                        && b.value.affinity.as_deref() != Some(host.as_str())
                        && !b.value.deleted
                        && b.value.free_count() > 0;
                    if !usable {
                        continue;
                    }
                    let need = wanted - got.len();
                    let ips = self
                        .assign_in_block(&cidr, need, &attr, &reserved, handle_absent, |_| true)
                        .await?;
                    handle_absent &= ips.is_empty();
                    self.stats
                        .borrowed
                        .fetch_add(ips.len() as u64, Ordering::Relaxed);
                    got.extend(ips);
                    if got.len() >= wanted {
                        return Ok(());
                    }
                }
                if got.len() == before {
                    break;
                }
            }
            Ok::<(), IpamError>(())
        }
        .await;
        if result.is_err() || got.len() < wanted {
            let fresh = got.split_off(newly_got_from);
            if !fresh.is_empty() {
                self.release_ips(&fresh).await?;
            }
            result?;
            return Err(IpamError::Exhausted {
                family,
                node: req.node.clone(),
                wanted,
                got: got.len() + fresh.len(),
            });
        }
        Ok((got, held_before))
    }

    /// Assigns up to `count` addresses in one block (block write, then handle write; the
    /// handle is created without reading it first when `handle_absent`).
    async fn assign_in_block(
        &self,
        cidr: &IpNet,
        count: usize,
        attr: &AllocationAttribute,
        reserved: &[IpNet],
        handle_absent: bool,
        still_usable: impl Fn(&Block) -> bool,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let key = cidr.to_string();
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(mut block) = self.store.get::<Block>(&key).await? else {
                return Ok(Vec::new());
            };
            if block.value.deleted || !still_usable(&block.value) {
                return Ok(Vec::new());
            }
            let ips = block.value.assign(count, attr, reserved);
            if ips.is_empty() {
                return Ok(Vec::new());
            }
            match self.store.update(&block).await {
                Ok(_) => {
                    let handle = attr
                        .handle_id
                        .as_deref()
                        .expect("allocations carry a handle");
                    let added = self
                        .change_handle_from(handle, handle_absent, |h| {
                            *h.block.entry(key.clone()).or_insert(0) += ips.len() as u32;
                        })
                        .await;
                    if let Err(e) = added {
                        // Undo the block write so nothing is held without a handle.
                        self.release_ips(&ips).await?;
                        return Err(e);
                    }
                    return Ok(ips);
                }
                Err(e) if e.is_race() => self.conflict(),
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyConflicts {
            what: format!("block {key}"),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    /// Claims one free block from `pools` for `node` (two-phase), returning its CIDR.
    pub async fn claim_block(
        &self,
        node: &str,
        pools: &[Pool],
    ) -> Result<Option<IpNet>, IpamError> {
        let blocks: BTreeSet<IpNet> = self
            .store
            .list::<Block>()
            .await?
            .into_iter()
            .map(|b| b.value.cidr)
            .collect();
        let affinities = self.store.list::<BlockAffinity>().await?;
        // A pending claim of our own (left by a crash) is resumed, not skipped.
        let taken: BTreeSet<IpNet> = affinities
            .iter()
            .filter(|a| !(a.value.node == node && a.value.state == AffinityState::Pending))
            .map(|a| a.value.cidr)
            .collect();
        for pool in pools {
            let count = cidr::block_count(&pool.cidr, pool.block_size);
            let start = cidr::start_index(node, count);
            let budget = count.min((blocks.len() + taken.len()) as u128 + 64);
            for i in 0..budget {
                let candidate = cidr::nth_block(&pool.cidr, pool.block_size, (start + i) % count);
                if blocks.contains(&candidate) || taken.contains(&candidate) {
                    continue;
                }
                if self.claim_specific_block(node, candidate).await? {
                    return Ok(Some(candidate));
                }
            }
        }
        Ok(None)
    }

    /// Two-phase claim of one given block; `false` if someone else has it.
    async fn claim_specific_block(&self, node: &str, cidr: IpNet) -> Result<bool, IpamError> {
        let pending = BlockAffinity {
            state: AffinityState::Pending,
            node: node.to_string(),
            cidr,
        };
        match self.store.create(&pending).await {
            Ok(_) => {}
            Err(e) if e.is_race() => {
                // Our own earlier claim; carry on with it unless it moved past pending.
                match self
                    .store
                    .get::<BlockAffinity>(&pending_key(node, &cidr))
                    .await?
                {
                    Some(a) if a.value.state == AffinityState::Pending => {}
                    _ => return Ok(false),
                }
            }
            Err(e) => return Err(e.into()),
        }
        match self
            .store
            .create(&Block::new(cidr, Some(Block::host_affinity(node))))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_race() => {
                self.conflict();
                let ours = self
                    .store
                    .get::<Block>(&cidr.to_string())
                    .await?
                    .is_some_and(|b| b.value.affine_node() == Some(node));
                if !ours {
                    self.drop_affinity(node, &cidr).await?;
                    return Ok(false);
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.set_affinity_state(node, &cidr, AffinityState::Confirmed)
            .await?;
        self.stats.blocks_claimed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%node, block = %cidr, "claimed block");
        Ok(true)
    }

    async fn set_affinity_state(
        &self,
        node: &str,
        cidr: &IpNet,
        state: AffinityState,
    ) -> Result<(), IpamError> {
        let key = pending_key(node, cidr);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(mut a) = self.store.get::<BlockAffinity>(&key).await? else {
                let created = BlockAffinity {
                    state,
                    node: node.to_string(),
                    cidr: *cidr,
                };
                match self.store.create(&created).await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_race() => {
                        self.conflict();
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            a.value.state = state;
            match self.store.update(&a).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_race() => self.conflict(),
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyConflicts {
            what: format!("affinity {key}"),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    /// Confirms a claim whose block write already happened (resuming after a crash).
    pub(crate) async fn finish_claim(&self, node: &str, cidr: &IpNet) -> Result<(), IpamError> {
        self.set_affinity_state(node, cidr, AffinityState::Confirmed)
            .await
    }

    /// Deletes a node's affinity record for a block (whatever its state).
    pub(crate) async fn drop_affinity(&self, node: &str, cidr: &IpNet) -> Result<(), IpamError> {
        let key = pending_key(node, cidr);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(a) = self.store.get::<BlockAffinity>(&key).await? else {
                return Ok(());
            };
            match self.store.delete::<BlockAffinity>(&key, &a.revision).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_race() => self.conflict(),
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyConflicts {
            what: format!("affinity {key}"),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    /// Adds `delta` addresses in `block` to a handle (creating it).
    async fn add_to_handle(&self, handle: &str, block: &str, delta: u32) -> Result<(), IpamError> {
        self.change_handle(handle, |h| {
            *h.block.entry(block.to_string()).or_insert(0) += delta;
        })
        .await
    }

    /// Removes `delta` addresses in `block` from a handle (deleting it when it holds none).
    async fn remove_from_handle(
        &self,
        handle: &str,
        block: &str,
        delta: u32,
    ) -> Result<(), IpamError> {
        self.change_handle(handle, |h| {
            if let Some(n) = h.block.get_mut(block) {
                *n = n.saturating_sub(delta);
                if *n == 0 {
                    h.block.remove(block);
                }
            }
        })
        .await
    }

    /// Read-modify-write of a handle; an emptied handle is deleted.
    pub(crate) async fn change_handle(
        &self,
        handle: &str,
        change: impl Fn(&mut Handle),
    ) -> Result<(), IpamError> {
        self.change_handle_from(handle, false, change).await
    }

    /// [`Ipam::change_handle`]; with `assume_absent` the first attempt creates the handle
    /// without reading it (a create is itself the compare-and-swap: if the handle appeared
    /// meanwhile it fails as a race and the next attempt reads it).
    async fn change_handle_from(
        &self,
        handle: &str,
        assume_absent: bool,
        change: impl Fn(&mut Handle),
    ) -> Result<(), IpamError> {
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let current = if attempt == 0 && assume_absent {
                None
            } else {
                self.store.get::<Handle>(handle).await?
            };
            let result = match current {
                None => {
                    let mut h = Handle {
                        handle_id: handle.to_string(),
                        block: BTreeMap::new(),
                        deleted: false,
                    };
                    change(&mut h);
                    if h.block.is_empty() {
                        return Ok(());
                    }
                    self.store.create(&h).await.map(|_| ())
                }
                Some(mut h) => {
                    change(&mut h.value);
                    if h.value.block.is_empty() {
                        self.store.delete::<Handle>(handle, &h.revision).await
                    } else {
                        self.store.update(&h).await.map(|_| ())
                    }
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_race() => self.conflict(),
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyConflicts {
            what: format!("handle {handle}"),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    /// Assigns one given address to a handle, claiming its block for `node` if unclaimed.
    pub async fn assign_ip(
        &self,
        ip: IpAddr,
        handle: &str,
        node: &str,
        attrs: BTreeMap<String, String>,
    ) -> Result<(), IpamError> {
        let pool = self.pool_of(ip).await?;
        let cidr = cidr::block_of(ip, pool.block_size);
        let key = cidr.to_string();
        let mut secondary = attrs;
        secondary.insert(ATTR_NODE.to_string(), node.to_string());
        let attr = AllocationAttribute {
            handle_id: Some(handle.to_string()),
            secondary,
        };
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(mut block) = self.store.get::<Block>(&key).await? else {
                self.claim_specific_block(node, cidr).await?;
                continue;
            };
            block.value.assign_specific(ip, &attr)?;
            match self.store.update(&block).await {
                Ok(_) => return self.add_to_handle(handle, &key, 1).await,
                Err(e) if e.is_race() => self.conflict(),
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyConflicts {
            what: format!("block {key}"),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }
}

fn pending_key(node: &str, cidr: &IpNet) -> String {
    affinity_key(node, &cidr.to_string())
}
