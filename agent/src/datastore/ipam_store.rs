//! IPAM's compare-and-swap store on top of any datastore: IPAM objects become IPAMBlock,
//! BlockAffinity and IPAMHandle resources (names as Calico encodes them), pools come from
//! IPPool, the configuration from the `default` IPAMConfig, node labels from Node.

use ipnet::IpNet;
use serde_json::{Value, json};
use serval_ipam::{IpamConfig, IpamObject, IpamStore, ObjectKind, Pool, StoreError, Versioned};
use serval_policy::Labels;

use super::{Backend, Datastore, DatastoreError, KindInfo, object_revision};
use crate::resources::{
    BlockAffinity, IPAMBlock, IPAMConfig, IPAMHandle, IPPool, IPReservation, Node,
};

/// Block and affinity names: the CIDR with `.`, `:` and `/` turned into `-` (Calico's encoding).
pub fn cidr_name(cidr: &str) -> String {
    cidr.replace(['.', ':', '/'], "-")
}

fn kind_of(kind: ObjectKind) -> KindInfo {
    match kind {
        ObjectKind::Block => KindInfo::of::<IPAMBlock>(),
        ObjectKind::Affinity => KindInfo::of::<BlockAffinity>(),
        ObjectKind::Handle => KindInfo::of::<IPAMHandle>(),
    }
}

/// The resource name for an IPAM key.
pub fn resource_name(kind: ObjectKind, key: &str) -> String {
    match kind {
        ObjectKind::Block => cidr_name(key),
        ObjectKind::Affinity => {
            let (node, cidr) = key.split_once('/').unwrap_or((key, ""));
            format!("{node}-{}", cidr_name(cidr))
        }
        ObjectKind::Handle => key.to_string(),
    }
}

fn store_err(kind: ObjectKind, key: &str, e: DatastoreError) -> StoreError {
    match e {
        DatastoreError::AlreadyExists { .. } => StoreError::AlreadyExists {
            kind,
            key: key.to_string(),
        },
        DatastoreError::Conflict { .. } | DatastoreError::NotFound { .. } => StoreError::Conflict {
            kind,
            key: key.to_string(),
        },
        other => StoreError::Backend(Box::new(other)),
    }
}

fn versioned<T: IpamObject>(value: Value) -> Result<Versioned<T>, StoreError> {
    let revision = object_revision(&value).unwrap_or_default();
    let spec = value.get("spec").cloned().unwrap_or(Value::Null);
    let value = serde_json::from_value(spec).map_err(|e| StoreError::Backend(Box::new(e)))?;
    Ok(Versioned { value, revision })
}

fn object<T: IpamObject>(value: &T, revision: Option<&str>) -> Result<Value, StoreError> {
    let kind = kind_of(T::KIND);
    let mut metadata = json!({ "name": resource_name(T::KIND, &value.key()) });
    if let Some(rev) = revision {
        metadata["resourceVersion"] = Value::String(rev.to_string());
    }
    let spec = serde_json::to_value(value).map_err(|e| StoreError::Backend(Box::new(e)))?;
    Ok(json!({
        "apiVersion": kind.api_version(),
        "kind": kind.kind,
        "metadata": metadata,
        "spec": spec,
    }))
}

fn backend_err(e: DatastoreError) -> StoreError {
    StoreError::Backend(Box::new(e))
}

impl<B: Backend> IpamStore for Datastore<B> {
    async fn get<T: IpamObject>(&self, key: &str) -> Result<Option<Versioned<T>>, StoreError> {
        let name = resource_name(T::KIND, key);
        match self.backend().get(&kind_of(T::KIND), None, &name).await {
            Ok(Some(v)) => versioned(v).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(store_err(T::KIND, key, e)),
        }
    }

    async fn list<T: IpamObject>(&self) -> Result<Vec<Versioned<T>>, StoreError> {
        let list = self
            .backend()
            .list(&kind_of(T::KIND), None)
            .await
            .map_err(backend_err)?;
        list.items.into_iter().map(versioned).collect()
    }

    async fn create<T: IpamObject>(&self, value: &T) -> Result<Versioned<T>, StoreError> {
        let key = value.key();
        let stored = self
            .backend()
            .create(&kind_of(T::KIND), object(value, None)?)
            .await
            .map_err(|e| store_err(T::KIND, &key, e))?;
        Ok(Versioned {
            value: value.clone(),
            revision: object_revision(&stored).unwrap_or_default(),
        })
    }

    async fn update<T: IpamObject>(
        &self,
        value: &Versioned<T>,
    ) -> Result<Versioned<T>, StoreError> {
        let key = value.value.key();
        let stored = self
            .backend()
            .update(
                &kind_of(T::KIND),
                object(&value.value, Some(&value.revision))?,
            )
            .await
            .map_err(|e| store_err(T::KIND, &key, e))?;
        Ok(Versioned {
            value: value.value.clone(),
            revision: object_revision(&stored).unwrap_or_default(),
        })
    }

    async fn delete<T: IpamObject>(&self, key: &str, revision: &str) -> Result<(), StoreError> {
        let name = resource_name(T::KIND, key);
        self.backend()
            .delete(&kind_of(T::KIND), None, &name, Some(revision))
            .await
            .map_err(|e| store_err(T::KIND, key, e))
    }

    async fn pools(&self) -> Result<Vec<Pool>, StoreError> {
        let (pools, _) = Datastore::list::<IPPool>(self, None)
            .await
            .map_err(backend_err)?;
        Ok(pools
            .into_iter()
            .filter_map(|p| {
                let cidr: IpNet = p.spec.cidr_net()?;
                Some(Pool {
                    name: p.metadata.name.clone().unwrap_or_default(),
                    cidr,
                    block_size: p.spec.effective_block_size()?,
                    node_selector: p.spec.node_selector.clone().unwrap_or_default(),
                    disabled: p.spec.disabled,
                })
            })
            .collect())
    }

    async fn config(&self) -> Result<IpamConfig, StoreError> {
        Ok(Datastore::get::<IPAMConfig>(self, None, "default")
            .await
            .map_err(backend_err)?
            .map(|c| c.spec.inner)
            .unwrap_or_default())
    }

    async fn node_labels(&self, node: &str) -> Result<Option<Labels>, StoreError> {
        Ok(Datastore::get::<Node>(self, None, node)
            .await
            .map_err(backend_err)?
            .map(|n| n.metadata.labels.unwrap_or_default()))
    }

    async fn reservations(&self) -> Result<Vec<IpNet>, StoreError> {
        let (list, _) = Datastore::list::<IPReservation>(self, None)
            .await
            .map_err(backend_err)?;
        Ok(list
            .iter()
            .flat_map(|r| r.spec.reserved_cidrs.iter())
            .filter_map(crate::resources::Parsed::get)
            .collect())
    }
}
