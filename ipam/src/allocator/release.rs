//! Release: by handle, by address, and the empty-block give-back, in the write order the
//! allocator's notes give (block first, then handle).

use std::net::IpAddr;

use super::*;

impl<S: IpamStore> Ipam<S> {
    /// Releases every address of a handle; releasing an unknown handle is not an error.
    pub async fn release_by_handle(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        let Some(h) = self.store.get::<Handle>(handle).await? else {
            return Ok(Vec::new());
        };
        let mut released = Vec::new();
        let mut per_block = Vec::new();
        for block in h.value.block.keys() {
            let n = self
                .release_in_block(block, |b| b.release_handle(handle))
                .await?;
            released.extend(n.iter().map(|r| r.ip));
            per_block.push((block.clone(), n.len() as u32));
        }
        // One write for the index: delete it if nobody touched it meanwhile; otherwise take off
        // exactly what was released here.
        match self.store.delete::<Handle>(handle, &h.revision).await {
            Ok(()) => {}
            Err(e) if e.is_race() => {
                self.conflict();
                for (block, n) in per_block {
                    self.remove_from_handle(handle, &block, n).await?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(released)
    }

    /// Releases the given addresses; ones already free are skipped. Returns those released.
    pub async fn release_ips(&self, ips: &[IpAddr]) -> Result<Vec<IpAddr>, IpamError> {
        let mut by_block: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for ip in ips {
            let pool = self.pool_of(*ip).await?;
            by_block
                .entry(cidr::block_of(*ip, pool.block_size).to_string())
                .or_default()
                .push(*ip);
        }
        let mut out = Vec::new();
        for (block, ips) in by_block {
            let released = self
                .release_in_block(&block, |b| b.release_ips(&ips))
                .await?;
            self.unindex(&block, &released).await?;
            out.extend(released.into_iter().map(|r| r.ip));
        }
        Ok(out)
    }

    /// Releases `ip` only if it is still the allocation made at `sequence` (used by the GC).
    pub async fn release_if_unchanged(&self, ip: IpAddr, sequence: u64) -> Result<bool, IpamError> {
        let pool = self.pool_of(ip).await?;
        let block = cidr::block_of(ip, pool.block_size).to_string();
        let released = self
            .release_in_block(&block, |b| b.release_if_sequence(ip, sequence))
            .await?;
        self.unindex(&block, &released).await?;
        Ok(!released.is_empty())
    }

    async fn unindex(
        &self,
        block: &str,
        released: &[crate::block::Released],
    ) -> Result<(), IpamError> {
        let mut per_handle: BTreeMap<&str, u32> = BTreeMap::new();
        for r in released {
            if let Some(h) = &r.handle_id {
                *per_handle.entry(h).or_insert(0) += 1;
            }
        }
        for (handle, n) in per_handle {
            self.remove_from_handle(handle, block, n).await?;
        }
        Ok(())
    }

    async fn release_in_block(
        &self,
        key: &str,
        release: impl Fn(&mut Block) -> Vec<crate::block::Released>,
    ) -> Result<Vec<crate::block::Released>, IpamError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(mut block) = self.store.get::<Block>(key).await? else {
                return Ok(Vec::new());
            };
            let released = release(&mut block.value);
            if released.is_empty() {
                return Ok(released);
            }
            match self.store.update(&block).await {
                Ok(_) => return Ok(released),
                Err(e) if e.is_race() => self.conflict(),
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::TooManyConflicts {
            what: format!("block {key}"),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    /// Gives up a node's empty block: affinity → pendingDeletion, delete the block only if it
    /// is unchanged since `seen`, then drop the affinity. Returns whether it was released.
    pub async fn release_empty_block(
        &self,
        node: &str,
        seen: &Versioned<Block>,
    ) -> Result<bool, IpamError> {
        if !seen.value.is_empty() {
            return Ok(false);
        }
        let cidr = seen.value.cidr;
        self.set_affinity_state(node, &cidr, AffinityState::PendingDeletion)
            .await?;
        match self
            .store
            .delete::<Block>(&cidr.to_string(), &seen.revision)
            .await
        {
            Ok(()) => {
                self.drop_affinity(node, &cidr).await?;
                tracing::info!(%node, block = %cidr, "released empty block");
                Ok(true)
            }
            Err(e) if e.is_race() => {
                // Someone allocated in the meantime: the node keeps its block.
                self.conflict();
                self.set_affinity_state(node, &cidr, AffinityState::Confirmed)
                    .await?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}
