//! An in-memory [`IpamStore`] for tests and benchmarks (values go through JSON, as in a real
//! store, so nothing is shared by reference).

use std::collections::BTreeMap;
use std::sync::Mutex;

use ipnet::IpNet;
use serval_policy::Labels;

use crate::model::{IpamConfig, Pool};
use crate::store::{IpamObject, IpamStore, ObjectKind, StoreError, Versioned};

#[derive(Default)]
struct State {
    objects: BTreeMap<(ObjectKind, String), (serde_json::Value, u64)>,
    revision: u64,
    pools: Vec<Pool>,
    config: IpamConfig,
    nodes: BTreeMap<String, Labels>,
    reservations: Vec<IpNet>,
    /// Requests served: (reads, writes).
    requests: (u64, u64),
}

/// A process-local store with the same compare-and-swap rules as the real ones.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

fn decode<T: IpamObject>(
    value: &serde_json::Value,
    revision: u64,
) -> Result<Versioned<T>, StoreError> {
    let value = serde_json::from_value(value.clone()).map_err(|e| StoreError::Backend(e.into()))?;
    Ok(Versioned {
        value,
        revision: revision.to_string(),
    })
}

impl MemoryStore {
    /// A store with these pools and every listed node present (with no labels).
    pub fn new(pools: Vec<Pool>, nodes: &[&str]) -> MemoryStore {
        let store = MemoryStore::default();
        {
            let mut s = store.state.lock().expect("fresh lock");
            s.pools = pools;
            s.nodes = nodes
                .iter()
                .map(|n| (n.to_string(), Labels::new()))
                .collect();
        }
        store
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Replaces the IPAM configuration.
    pub fn set_config(&self, config: IpamConfig) {
        self.with(|s| s.config = config);
    }

    /// Adds or relabels a node.
    pub fn set_node(&self, node: &str, labels: Labels) {
        self.with(|s| s.nodes.insert(node.to_string(), labels));
    }

    /// Removes a node (its addresses become leaks for the GC to find).
    pub fn remove_node(&self, node: &str) {
        self.with(|s| s.nodes.remove(node));
    }

    /// Replaces the reserved ranges.
    pub fn set_reservations(&self, reservations: Vec<IpNet>) {
        self.with(|s| s.reservations = reservations);
    }

    /// Replaces the pools.
    pub fn set_pools(&self, pools: Vec<Pool>) {
        self.with(|s| s.pools = pools);
    }

    /// Requests served so far, (reads, writes): what an operation costs a real datastore.
    pub fn requests(&self) -> (u64, u64) {
        self.with(|s| s.requests)
    }
}

impl IpamStore for MemoryStore {
    async fn get<T: IpamObject>(&self, key: &str) -> Result<Option<Versioned<T>>, StoreError> {
        self.with(|s| s.requests.0 += 1);
        self.with(|s| match s.objects.get(&(T::KIND, key.to_string())) {
            Some((v, rev)) => decode(v, *rev).map(Some),
            None => Ok(None),
        })
    }

    async fn list<T: IpamObject>(&self) -> Result<Vec<Versioned<T>>, StoreError> {
        self.with(|s| s.requests.0 += 1);
        self.with(|s| {
            s.objects
                .iter()
                .filter(|((kind, _), _)| *kind == T::KIND)
                .map(|(_, (v, rev))| decode(v, *rev))
                .collect()
        })
    }

    async fn create<T: IpamObject>(&self, value: &T) -> Result<Versioned<T>, StoreError> {
        let json = serde_json::to_value(value).map_err(|e| StoreError::Backend(e.into()))?;
        self.with(|s| {
            s.requests.1 += 1;
            let key = (T::KIND, value.key());
            if s.objects.contains_key(&key) {
                return Err(StoreError::AlreadyExists {
                    kind: T::KIND,
                    key: key.1,
                });
            }
            s.revision += 1;
            s.objects.insert(key, (json, s.revision));
            Ok(Versioned {
                value: value.clone(),
                revision: s.revision.to_string(),
            })
        })
    }

    async fn update<T: IpamObject>(
        &self,
        value: &Versioned<T>,
    ) -> Result<Versioned<T>, StoreError> {
        let json = serde_json::to_value(&value.value).map_err(|e| StoreError::Backend(e.into()))?;
        self.with(|s| {
            s.requests.1 += 1;
            let key = (T::KIND, value.value.key());
            match s.objects.get(&key) {
                Some((_, rev)) if rev.to_string() == value.revision => {}
                _ => {
                    return Err(StoreError::Conflict {
                        kind: T::KIND,
                        key: key.1,
                    });
                }
            }
            s.revision += 1;
            s.objects.insert(key, (json, s.revision));
            Ok(Versioned {
                value: value.value.clone(),
                revision: s.revision.to_string(),
            })
        })
    }

    async fn delete<T: IpamObject>(&self, key: &str, revision: &str) -> Result<(), StoreError> {
        self.with(|s| {
            s.requests.1 += 1;
            let k = (T::KIND, key.to_string());
            match s.objects.get(&k) {
                Some((_, rev)) if rev.to_string() == revision => {
                    s.objects.remove(&k);
                    Ok(())
                }
                _ => Err(StoreError::Conflict {
                    kind: T::KIND,
                    key: key.to_string(),
                }),
            }
        })
    }

    async fn pools(&self) -> Result<Vec<Pool>, StoreError> {
        self.with(|s| s.requests.0 += 1);
        Ok(self.with(|s| s.pools.clone()))
    }

    async fn config(&self) -> Result<IpamConfig, StoreError> {
        self.with(|s| s.requests.0 += 1);
        Ok(self.with(|s| s.config.clone()))
    }

    async fn node_labels(&self, node: &str) -> Result<Option<Labels>, StoreError> {
        self.with(|s| s.requests.0 += 1);
        Ok(self.with(|s| s.nodes.get(node).cloned()))
    }

    async fn reservations(&self) -> Result<Vec<IpNet>, StoreError> {
        self.with(|s| s.requests.0 += 1);
        Ok(self.with(|s| s.reservations.clone()))
    }
}
