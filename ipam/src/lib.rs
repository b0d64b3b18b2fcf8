//! Serval's block IPAM, in the style of Calico's: pools are split into blocks, a node claims
//! blocks by affinity (pending → confirmed), allocates from them by handle, borrows from other
//! nodes' blocks unless strict affinity is on, and a GC repairs what crashes leave behind.
//!
//! Pure logic over the small [`IpamStore`] trait: every write is a compare-and-swap with a
//! bounded retry loop, so concurrent allocators on many nodes never hand out an address twice.
//! The agent implements the store on etcd and Kubernetes; [`MemoryStore`] serves tests.

pub mod allocator;
pub mod block;
pub mod cidr;
pub mod error;
pub mod gc;
pub mod memory;
pub mod model;
pub mod store;

pub use allocator::{AssignRequest, Assigned, Ipam, IpamStats, MAX_CAS_ATTEMPTS, TunnelKind};
pub use error::{Family, IpamError};
pub use gc::{Gc, GcReport, Owners};
pub use memory::MemoryStore;
pub use model::{
    AffinityState, AllocationAttribute, Block, BlockAffinity, Handle, IpamConfig, Pool,
};
pub use store::{IpamObject, IpamStore, ObjectKind, StoreError, Versioned};

#[cfg(test)]
mod allocator_tests;
