//! The small compare-and-swap store IPAM runs over. The agent implements it on its
//! datastores (etcd, Kubernetes); [`crate::MemoryStore`] implements it for tests.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{Block, BlockAffinity, Handle, IpamConfig, Pool};
use serval_policy::Labels;

/// Which of IPAM's own object kinds a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// [`Block`].
    Block,
    /// [`BlockAffinity`].
    Affinity,
    /// [`Handle`].
    Handle,
}

/// An IPAM object the store keeps: its kind and its key.
pub trait IpamObject: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The kind, so one store can keep all three.
    const KIND: ObjectKind;
    /// The object's key inside its kind.
    fn key(&self) -> String;
}

impl IpamObject for Block {
    const KIND: ObjectKind = ObjectKind::Block;
    fn key(&self) -> String {
        self.cidr.to_string()
    }
}

impl IpamObject for BlockAffinity {
    const KIND: ObjectKind = ObjectKind::Affinity;
    fn key(&self) -> String {
        affinity_key(&self.node, &self.cidr.to_string())
    }
}

impl IpamObject for Handle {
    const KIND: ObjectKind = ObjectKind::Handle;
    fn key(&self) -> String {
        self.handle_id.clone()
    }
}

/// Key of a node's affinity for a block.
pub fn affinity_key(node: &str, cidr: &str) -> String {
    format!("{node}/{cidr}")
}

/// A stored value and the revision a compare-and-swap must quote to replace it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value as read.
    pub value: T,
    /// Opaque revision (etcd mod_revision, Kubernetes resourceVersion).
    pub revision: String,
}

/// Store failures IPAM reacts to; everything else is `Backend`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Create found the key taken.
    #[error("{kind:?} {key} already exists")]
    AlreadyExists {
        /// Kind of the object.
        kind: ObjectKind,
        /// Its key.
        key: String,
    },
    /// The revision quoted is no longer current (or the key vanished).
    #[error("{kind:?} {key} was changed by someone else")]
    Conflict {
        /// Kind of the object.
        kind: ObjectKind,
        /// Its key.
        key: String,
    },
    /// The datastore failed (connection, encoding, permissions...).
    #[error("datastore error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Whether a retry after re-reading may succeed.
    pub fn is_race(&self) -> bool {
        matches!(
            self,
            StoreError::AlreadyExists { .. } | StoreError::Conflict { .. }
        )
    }
}

/// Compare-and-swap access to IPAM objects plus the read-only inputs IPAM needs.
pub trait IpamStore: Send + Sync {
    /// Reads one object.
    fn get<T: IpamObject>(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Versioned<T>>, StoreError>> + Send;
    /// Lists every object of a kind.
    fn list<T: IpamObject>(
        &self,
    ) -> impl Future<Output = Result<Vec<Versioned<T>>, StoreError>> + Send;
    /// Creates an object; `AlreadyExists` if the key is taken.
    fn create<T: IpamObject>(
        &self,
        value: &T,
    ) -> impl Future<Output = Result<Versioned<T>, StoreError>> + Send;
    /// Replaces an object if its revision is still `value.revision`; `Conflict` otherwise.
    fn update<T: IpamObject>(
        &self,
        value: &Versioned<T>,
    ) -> impl Future<Output = Result<Versioned<T>, StoreError>> + Send;
    /// Deletes an object if its revision is still `revision`; `Conflict` otherwise.
    fn delete<T: IpamObject>(
        &self,
        key: &str,
        revision: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The configured IP pools.
    fn pools(&self) -> impl Future<Output = Result<Vec<Pool>, StoreError>> + Send;
    /// The IPAM configuration (defaults when none is stored).
    fn config(&self) -> impl Future<Output = Result<IpamConfig, StoreError>> + Send;
    /// A node's labels, or `None` when the node does not exist.
    fn node_labels(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Option<Labels>, StoreError>> + Send;
    /// Addresses allocation must skip (from IPReservation resources).
    fn reservations(&self) -> impl Future<Output = Result<Vec<ipnet::IpNet>, StoreError>> + Send;
}
