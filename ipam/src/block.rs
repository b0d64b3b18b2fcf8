//! Pure operations on one block: assign, release, inspect. No store, no retries; the
//! allocator wraps these in compare-and-swap loops.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::cidr;
use crate::model::{AllocationAttribute, Block};

/// One address released from a block, with the handle it was allocated under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The address.
    pub ip: IpAddr,
    /// Its handle, if it had one.
    pub handle_id: Option<String>,
}

/// Why a block refused a specific-address assignment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The address is not inside this block.
    #[error("{ip} is not in block {block}")]
    NotInBlock {
        /// The address.
        ip: IpAddr,
        /// The block.
        block: IpNet,
    },
    /// Someone already holds the address.
    #[error("{ip} is already allocated (handle {handle:?})")]
    InUse {
        /// The address.
        ip: IpAddr,
        /// The holder's handle.
        handle: Option<String>,
    },
}

impl Block {
    /// Number of free ordinals (including reserved ones).
    pub fn free_count(&self) -> usize {
        self.unallocated.len()
    }

    /// Whether nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.allocations.iter().all(Option::is_none)
    }

    /// Allocated addresses with their attributes, in ordinal order.
    pub fn allocated(&self) -> impl Iterator<Item = (usize, IpAddr, &AllocationAttribute)> {
        self.allocations.iter().enumerate().filter_map(|(n, a)| {
            let attr = &self.attributes[(*a)? as usize];
            Some((n, cidr::address(&self.cidr, n), attr))
        })
    }

    /// Addresses held by `handle`.
    pub fn ips_for_handle(&self, handle: &str) -> Vec<IpAddr> {
        self.allocated()
            .filter(|(_, _, a)| a.handle_id.as_deref() == Some(handle))
            .map(|(_, ip, _)| ip)
            .collect()
    }

    /// The sequence number an allocated address was handed out at.
    pub fn allocation_sequence(&self, ordinal: usize) -> Option<u64> {
        self.sequence_number_for_allocation
            .get(&ordinal.to_string())
            .copied()
    }

    fn attribute_index(&mut self, attr: &AllocationAttribute) -> u32 {
        if let Some(i) = self.attributes.iter().position(|a| a == attr) {
            return i as u32;
        }
        self.attributes.push(attr.clone());
        (self.attributes.len() - 1) as u32
    }

    fn bump(&mut self) {
        self.sequence_number += 1;
    }

    fn take_ordinal(&mut self, ordinal: usize, attr_index: u32) {
        self.allocations[ordinal] = Some(attr_index);
        self.sequence_number_for_allocation
            .insert(ordinal.to_string(), self.sequence_number);
    }

    /// Assigns up to `count` free addresses that are not inside `reserved`, oldest-freed first.
    pub fn assign(
        &mut self,
        count: usize,
        attr: &AllocationAttribute,
        reserved: &[IpNet],
    ) -> Vec<IpAddr> {
        let mut picked = Vec::new();
        let mut kept = Vec::with_capacity(self.unallocated.len());
        for &ordinal in &self.unallocated {
            let ip = cidr::address(&self.cidr, ordinal as usize);
            if picked.len() < count && !reserved.iter().any(|r| r.contains(&ip)) {
                picked.push((ordinal as usize, ip));
            } else {
                kept.push(ordinal);
            }
        }
        if picked.is_empty() {
            return Vec::new();
        }
        self.unallocated = kept;
        self.bump();
        let index = self.attribute_index(attr);
        for &(ordinal, _) in &picked {
            self.take_ordinal(ordinal, index);
        }
        picked.into_iter().map(|(_, ip)| ip).collect()
    }

    /// Assigns one given address.
    pub fn assign_specific(
        &mut self,
        ip: IpAddr,
        attr: &AllocationAttribute,
    ) -> Result<(), BlockError> {
        let ordinal = cidr::ordinal(&self.cidr, ip).ok_or(BlockError::NotInBlock {
            ip,
            block: self.cidr,
        })?;
        if let Some(i) = self.allocations[ordinal] {
            return Err(BlockError::InUse {
                ip,
                handle: self.attributes[i as usize].handle_id.clone(),
            });
        }
        self.unallocated.retain(|&o| o as usize != ordinal);
        self.bump();
        let index = self.attribute_index(attr);
        self.take_ordinal(ordinal, index);
        Ok(())
    }

    /// Releases the ordinals chosen by `pick`; returns what was released.
    fn release_where(
        &mut self,
        mut pick: impl FnMut(usize, &AllocationAttribute) -> bool,
    ) -> Vec<Released> {
        let mut released = Vec::new();
        for ordinal in 0..self.allocations.len() {
            let Some(index) = self.allocations[ordinal] else {
                continue;
            };
            let attr = &self.attributes[index as usize];
            if !pick(ordinal, attr) {
                continue;
            }
            released.push(Released {
                ip: cidr::address(&self.cidr, ordinal),
                handle_id: attr.handle_id.clone(),
            });
            self.allocations[ordinal] = None;
            self.unallocated.push(ordinal as u32);
            self.sequence_number_for_allocation
                .remove(&ordinal.to_string());
        }
        if !released.is_empty() {
            self.bump();
            self.compact_attributes();
        }
        released
    }

    /// Releases every address of `handle`.
    pub fn release_handle(&mut self, handle: &str) -> Vec<Released> {
        self.release_where(|_, a| a.handle_id.as_deref() == Some(handle))
    }

    /// Releases the given addresses (those outside the block or already free are ignored).
    pub fn release_ips(&mut self, ips: &[IpAddr]) -> Vec<Released> {
        let ordinals: Vec<usize> = ips
            .iter()
            .filter_map(|ip| cidr::ordinal(&self.cidr, *ip))
            .collect();
        self.release_where(|o, _| ordinals.contains(&o))
    }

    /// Releases `ip` only if it is still the allocation made at `sequence` (so a release
    /// decided on an old read never frees an address that was since handed to someone else).
    pub fn release_if_sequence(&mut self, ip: IpAddr, sequence: u64) -> Vec<Released> {
        let Some(ordinal) = cidr::ordinal(&self.cidr, ip) else {
            return Vec::new();
        };
        if self.allocation_sequence(ordinal) != Some(sequence) {
            return Vec::new();
        }
        self.release_where(|o, _| o == ordinal)
    }

    /// Drops attributes no ordinal refers to and renumbers the rest.
    fn compact_attributes(&mut self) {
        let mut used = vec![false; self.attributes.len()];
        for index in self.allocations.iter().flatten() {
            used[*index as usize] = true;
        }
        let mut remap = vec![0u32; self.attributes.len()];
        let mut next = 0u32;
        for (i, is_used) in used.iter().enumerate() {
            if *is_used {
                remap[i] = next;
                next += 1;
            }
        }
        let mut i = 0;
        self.attributes.retain(|_| {
            let keep = used[i];
            i += 1;
            keep
        });
        for index in self.allocations.iter_mut().flatten() {
            *index = remap[*index as usize];
        }
    }

    /// Handle → number of its addresses here (the truth a Handle object should mirror).
    pub fn handle_counts(&self) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for (_, _, attr) in self.allocated() {
            if let Some(h) = &attr.handle_id {
                *counts.entry(h.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(handle: &str) -> AllocationAttribute {
        AllocationAttribute {
            handle_id: Some(handle.to_string()),
            secondary: BTreeMap::new(),
        }
    }

    #[test]
    fn assigns_in_order_and_reuses_released_addresses_last() {
        let mut b = Block::new("10.0.0.0/30".parse().unwrap(), None);
        assert_eq!(
            b.assign(1, &attr("a"), &[]),
            vec!["10.0.0.0".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(b.assign(2, &attr("b"), &[]).len(), 2);
        let released = b.release_handle("a");
        assert_eq!(released.len(), 1);
        // .3 was never used, so it comes before the just-released .0.
        assert_eq!(
            b.assign(1, &attr("c"), &[]),
            vec!["10.0.0.3".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            b.assign(1, &attr("d"), &[]),
            vec!["10.0.0.0".parse::<IpAddr>().unwrap()]
        );
        assert!(b.assign(1, &attr("e"), &[]).is_empty(), "block full");
        assert_eq!(b.attributes.len(), 3, "a's attribute was compacted away");
        assert_eq!(b.handle_counts().get("b"), Some(&2));
    }

    #[test]
    fn skips_reserved_addresses() {
        let mut b = Block::new("10.0.0.0/30".parse().unwrap(), None);
        let reserved = ["10.0.0.0/31".parse().unwrap()];
        let got = b.assign(4, &attr("a"), &reserved);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|ip| !reserved[0].contains(ip)));
        assert_eq!(b.free_count(), 2);
    }

    #[test]
    fn specific_assignment_and_sequence_guarded_release() {
        let mut b = Block::new("fd00::/126".parse().unwrap(), None);
        let ip: IpAddr = "fd00::2".parse().unwrap();
        b.assign_specific(ip, &attr("a")).unwrap();
        assert!(matches!(
            b.assign_specific(ip, &attr("b")),
            Err(BlockError::InUse { .. })
        ));
        assert!(matches!(
            b.assign_specific("fd00::9".parse().unwrap(), &attr("b")),
            Err(BlockError::NotInBlock { .. })
        ));
        let seq = b.allocation_sequence(2).unwrap();
        b.release_ips(&[ip]);
        b.assign_specific(ip, &attr("c")).unwrap();
        assert!(
            b.release_if_sequence(ip, seq).is_empty(),
            "stale release refused"
        );
        assert_eq!(b.ips_for_handle("c"), vec![ip]);
        let seq = b.allocation_sequence(2).unwrap();
        assert_eq!(b.release_if_sequence(ip, seq).len(), 1);
        assert!(b.is_empty());
    }
}
