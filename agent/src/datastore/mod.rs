//! The datastore: typed get / list / watch / create / update (compare-and-swap) / delete over
//! interchangeable backends (etcd, Kubernetes, in-memory), plus the syncer that turns
//! list + watch into a stream of updates with a sync status.
//!
//! ```text
//!  Datastore<B> (typed, validates) ──► B: Backend (raw JSON objects, resourceVersion)
//!                                        ├─ EtcdBackend   /serval/v1/[k8s/<group>/]<plural>/[<ns>/]<name>
//!                                        ├─ KubeBackend   CRDs + core kinds via kube
//!                                        └─ MemoryBackend tests only
//!  Syncer ── list, then watch from the list's revision; relist on expiry ──► SyncEvent
//! ```
//!
//! Every object, whatever the backend, carries its revision in `metadata.resourceVersion`;
//! `update` and `delete` succeed only if it is still current.

pub mod conformance;
pub mod etcd;
pub mod ipam_store;
pub mod kubernetes;
pub mod memory;
pub mod syncer;
pub mod trim;

#[cfg(test)]
mod kube_fake;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;

use futures::Stream;
use serde_json::Value;

use crate::resources::{ServalResource, ValidationError};

pub use etcd::EtcdBackend;
pub use kubernetes::KubeBackend;
pub use memory::MemoryBackend;
pub use syncer::{SyncEvent, SyncStatus, Syncer};

/// Where a kind lives: enough for every backend to build keys and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KindInfo {
    /// API group (empty for the core group).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind name.
    pub kind: String,
    /// Plural resource name (path segment and etcd key segment).
    pub plural: String,
    /// Whether objects are namespaced.
    pub namespaced: bool,
}

impl KindInfo {
    /// The kind of a resource type.
    pub fn of<R: ServalResource>() -> KindInfo {
        KindInfo {
            group: R::group(&()).into_owned(),
            version: R::version(&()).into_owned(),
            kind: R::kind(&()).into_owned(),
            plural: R::plural(&()).into_owned(),
            namespaced: R::NAMESPACED,
        }
    }

    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Why a datastore operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// The object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind.
        kind: String,
        /// Name (namespace/name for namespaced kinds).
        name: String,
    },
    /// Create found the name taken.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
    },
    /// The revision given is no longer current: someone else changed the object.
    #[error(
        "{kind} {name:?} was modified concurrently (revision {revision} is stale); re-read and retry"
    )]
    Conflict {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// The stale revision.
        revision: String,
    },
    /// The object failed validation; nothing was written.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// An update or delete without `metadata.resourceVersion`.
    #[error("{kind} {name:?}: metadata.resourceVersion is required for a compare-and-swap write")]
    MissingRevision {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
    },
    /// A stored value did not decode as its kind.
    #[error("{kind} {name:?} in the datastore does not decode: {source}")]
    Decode {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// The decode error.
        #[source]
        source: serde_json::Error,
    },
    /// The watch revision was compacted away; the caller must list again.
    #[error("watch revision {0} is no longer available (compacted); relist")]
    Expired(String),
    /// The backend failed (connection, permission, server error).
    #[error("datastore backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl DatastoreError {
    /// A backend error from anything printable.
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        DatastoreError::Backend(e.into())
    }
}

/// A list result and the revision to start watching after it.
#[derive(Debug, Clone)]
pub struct RawList {
    /// The objects, each with `metadata.resourceVersion`.
    pub items: Vec<Value>,
    /// The store revision the list was read at.
    pub revision: String,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum RawEvent {
    /// Created.
    Added(Value),
    /// Changed.
    Modified(Value),
    /// Deleted (the last state).
    Deleted(Value),
    /// Nothing changed, but the store reached this revision (resume point).
    Bookmark(String),
}

/// A boxed stream of watch events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<RawEvent, DatastoreError>> + Send>>;

/// What every backend provides, on raw JSON objects.
pub trait Backend: Send + Sync + 'static {
    /// Reads one object.
    fn get(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> impl Future<Output = Result<Option<Value>, DatastoreError>> + Send;
    /// Lists a kind (in one namespace, or all).
    fn list(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
    ) -> impl Future<Output = Result<RawList, DatastoreError>> + Send;
    /// Creates an object; `AlreadyExists` if the name is taken.
    fn create(
        &self,
        kind: &KindInfo,
        object: Value,
    ) -> impl Future<Output = Result<Value, DatastoreError>> + Send;
    /// Replaces an object if `metadata.resourceVersion` is current; `Conflict` otherwise.
    fn update(
        &self,
        kind: &KindInfo,
        object: Value,
    ) -> impl Future<Output = Result<Value, DatastoreError>> + Send;
    /// Deletes an object, if `revision` is given only while it is current.
    fn delete(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        revision: Option<&str>,
    ) -> impl Future<Output = Result<(), DatastoreError>> + Send;
    /// Watches a kind for changes after `revision`; `Expired` if that is no longer possible.
    fn watch(
        &self,
        kind: &KindInfo,
        revision: &str,
    ) -> impl Future<Output = Result<EventStream, DatastoreError>> + Send;
}

/// Name and namespace of a raw object.
pub fn object_name(object: &Value) -> (Option<String>, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().map(str::to_string),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// The revision of a raw object.
pub fn object_revision(object: &Value) -> Option<String> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string)
}

fn display_name(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Typed access with validation on every write.
#[derive(Debug, Clone)]
pub struct Datastore<B> {
    backend: B,
}

fn decode<R: ServalResource>(value: Value) -> Result<R, DatastoreError> {
    let (ns, name) = object_name(&value);
    serde_json::from_value(value).map_err(|source| DatastoreError::Decode {
        kind: R::kind(&()).into_owned(),
        name: display_name(ns.as_deref(), &name),
        source,
    })
}

fn encode<R: ServalResource>(object: &R) -> Result<Value, DatastoreError> {
    let mut value = serde_json::to_value(object).map_err(DatastoreError::backend)?;
    // Fill in apiVersion/kind so a typed object built in code stores like one read from YAML.
    value["apiVersion"] = Value::String(R::api_version(&()).into_owned());
    value["kind"] = Value::String(R::kind(&()).into_owned());
    Ok(value)
}

impl<B: Backend> Datastore<B> {
    /// Typed access over `backend`.
    pub fn new(backend: B) -> Self {
        Self { backend }
    }

    /// The raw backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Reads one object.
    pub async fn get<R: ServalResource>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<R>, DatastoreError> {
        match self
            .backend
            .get(&KindInfo::of::<R>(), namespace, name)
            .await?
        {
            Some(v) => decode(v).map(Some),
            None => Ok(None),
        }
    }

    /// Lists a kind (one namespace, or all) with the revision to watch from.
    pub async fn list<R: ServalResource>(
        &self,
        namespace: Option<&str>,
    ) -> Result<(Vec<R>, String), DatastoreError> {
        let raw = self.backend.list(&KindInfo::of::<R>(), namespace).await?;
        let items = raw
            .items
            .into_iter()
            .map(decode)
            .collect::<Result<_, _>>()?;
        Ok((items, raw.revision))
    }

    /// Validates and creates; returns the stored object (with its revision).
    pub async fn create<R: ServalResource>(&self, object: &R) -> Result<R, DatastoreError> {
        object.validate()?;
        let mut value = encode(object)?;
        if let Some(meta) = value["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        decode(self.backend.create(&KindInfo::of::<R>(), value).await?)
    }

    /// Validates and replaces, if `metadata.resourceVersion` is still current.
    pub async fn update<R: ServalResource>(&self, object: &R) -> Result<R, DatastoreError> {
        object.validate()?;
        if object.meta().resource_version.is_none() {
            return Err(DatastoreError::MissingRevision {
                kind: R::kind(&()).into_owned(),
                name: object.meta().name.clone().unwrap_or_default(),
            });
        }
        decode(
            self.backend
                .update(&KindInfo::of::<R>(), encode(object)?)
                .await?,
        )
    }

    /// Deletes; with `revision`, only if it is still current.
    pub async fn delete<R: ServalResource>(
        &self,
        namespace: Option<&str>,
        name: &str,
        revision: Option<&str>,
    ) -> Result<(), DatastoreError> {
        self.backend
            .delete(&KindInfo::of::<R>(), namespace, name, revision)
            .await
    }
}

/// Any of the backends, chosen at run time (`DATASTORE_TYPE`).
#[derive(Clone)]
pub enum AnyBackend {
    /// etcd v3.
    Etcd(Box<EtcdBackend>),
    /// The Kubernetes API.
    Kubernetes(KubeBackend),
    /// Process memory (tests).
    Memory(MemoryBackend),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Etcd($b) => $e,
            AnyBackend::Kubernetes($b) => $e,
            AnyBackend::Memory($b) => $e,
        }
    };
}

impl Backend for AnyBackend {
    async fn get(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, DatastoreError> {
        dispatch!(self, b => b.get(kind, namespace, name).await)
    }
    async fn list(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
    ) -> Result<RawList, DatastoreError> {
        dispatch!(self, b => b.list(kind, namespace).await)
    }
    async fn create(&self, kind: &KindInfo, object: Value) -> Result<Value, DatastoreError> {
        dispatch!(self, b => b.create(kind, object).await)
    }
    async fn update(&self, kind: &KindInfo, object: Value) -> Result<Value, DatastoreError> {
        dispatch!(self, b => b.update(kind, object).await)
    }
    async fn delete(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        revision: Option<&str>,
    ) -> Result<(), DatastoreError> {
        dispatch!(self, b => b.delete(kind, namespace, name, revision).await)
    }
    async fn watch(&self, kind: &KindInfo, revision: &str) -> Result<EventStream, DatastoreError> {
        dispatch!(self, b => b.watch(kind, revision).await)
    }
}
