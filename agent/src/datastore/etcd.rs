//! etcd v3 backend: one key per object under `/serval/v1/<plural>/[<namespace>/]<name>`, the
//! object as JSON, its `mod_revision` as `metadata.resourceVersion`, and every conditional
//! write as a transaction comparing that revision.

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use serde_json::Value;

use super::{
    Backend, DatastoreError, EventStream, KindInfo, RawEvent, RawList, display_name, object_name,
    object_revision,
};

/// Root of every key Serval writes.
pub const KEY_ROOT: &str = "/serval/v1";

/// `ETCD_ENDPOINTS` as a list: comma-separated, blanks and empty items dropped.
pub fn endpoint_list(text: Option<&str>) -> Vec<String> {
    text.unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The etcd datastore.
#[derive(Clone)]
pub struct EtcdBackend {
    client: Client,
}

fn key(kind: &KindInfo, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if kind.namespaced => format!("{KEY_ROOT}/{}/{ns}/{name}", kind.plural),
        _ => format!("{KEY_ROOT}/{}/{name}", kind.plural),
    }
}

fn prefix(kind: &KindInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if kind.namespaced => format!("{KEY_ROOT}/{}/{ns}/", kind.plural),
        _ => format!("{KEY_ROOT}/{}/", kind.plural),
    }
}

fn err(e: etcd_client::Error) -> DatastoreError {
    DatastoreError::backend(e)
}

fn decode(kind: &KindInfo, kv: &KeyValue) -> Result<Value, DatastoreError> {
    let mut value: Value =
        serde_json::from_slice(kv.value()).map_err(|source| DatastoreError::Decode {
            kind: kind.kind.clone(),
            name: String::from_utf8_lossy(kv.key()).into_owned(),
            source,
        })?;
    value["metadata"]["resourceVersion"] = Value::String(kv.mod_revision().to_string());
    Ok(value)
}

fn encode(object: &Value) -> Result<Vec<u8>, DatastoreError> {
    let mut stored = object.clone();
    if let Some(meta) = stored["metadata"].as_object_mut() {
        // The revision is etcd's, never part of the stored value.
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&stored).map_err(DatastoreError::backend)
}

fn revision_of(kind: &KindInfo, name: &str, revision: &str) -> Result<i64, DatastoreError> {
    revision.parse().map_err(|_| DatastoreError::Conflict {
        kind: kind.kind.clone(),
        name: name.to_string(),
        revision: revision.to_string(),
    })
}

impl EtcdBackend {
    /// Connects to the given endpoints (`http://127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, DatastoreError> {
        let client = Client::connect(endpoints, None).await.map_err(err)?;
        Ok(Self { client })
    }

    /// The raw client (for compaction in tests and tools).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs a transaction "if `compare` then put/delete else get" and maps failure.
    async fn conditional(
        &self,
        kind: &KindInfo,
        display: String,
        key: String,
        compare: Compare,
        then: TxnOp,
        revision: &str,
    ) -> Result<i64, DatastoreError> {
        let txn = Txn::new()
            .when([compare])
            .and_then([then])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.clone().txn(txn).await.map_err(err)?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        let exists = resp.op_responses().into_iter().any(|op| match op {
            TxnOpResponse::Get(g) => !g.kvs().is_empty(),
            _ => false,
        });
        if exists {
            Err(DatastoreError::Conflict {
                kind: kind.kind.clone(),
                name: display,
                revision: revision.to_string(),
            })
        } else {
            Err(DatastoreError::NotFound {
                kind: kind.kind.clone(),
                name: display,
            })
        }
    }
}

impl Backend for EtcdBackend {
    async fn get(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, DatastoreError> {
        let resp = self
            .client
            .clone()
            .get(key(kind, namespace, name), None)
            .await
            .map_err(err)?;
        resp.kvs().first().map(|kv| decode(kind, kv)).transpose()
    }

    async fn list(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
    ) -> Result<RawList, DatastoreError> {
        let resp = self
            .client
            .clone()
            .get(
                prefix(kind, namespace),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(err)?;
        let items = resp
            .kvs()
            .iter()
            .map(|kv| decode(kind, kv))
            .collect::<Result<_, _>>()?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok(RawList {
            items,
            revision: revision.to_string(),
        })
    }

    async fn create(&self, kind: &KindInfo, object: Value) -> Result<Value, DatastoreError> {
        let (ns, name) = object_name(&object);
        let k = key(kind, ns.as_deref(), &name);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, encode(&object)?, None)]);
        let resp = self.client.clone().txn(txn).await.map_err(err)?;
        if !resp.succeeded() {
            return Err(DatastoreError::AlreadyExists {
                kind: kind.kind.clone(),
                name: display_name(ns.as_deref(), &name),
            });
        }
        let mut stored = object;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        stored["metadata"]["resourceVersion"] = Value::String(revision.to_string());
        Ok(stored)
    }

    async fn update(&self, kind: &KindInfo, object: Value) -> Result<Value, DatastoreError> {
        let (ns, name) = object_name(&object);
        let display = display_name(ns.as_deref(), &name);
        let revision = object_revision(&object).unwrap_or_default();
        let wanted = revision_of(kind, &display, &revision)?;
        let k = key(kind, ns.as_deref(), &name);
        let new_revision = self
            .conditional(
                kind,
                display,
                k.clone(),
                Compare::mod_revision(k.clone(), CompareOp::Equal, wanted),
                TxnOp::put(k, encode(&object)?, None),
                &revision,
            )
            .await?;
        let mut stored = object;
        stored["metadata"]["resourceVersion"] = Value::String(new_revision.to_string());
        Ok(stored)
    }

    async fn delete(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        revision: Option<&str>,
    ) -> Result<(), DatastoreError> {
        let display = display_name(namespace, name);
        let k = key(kind, namespace, name);
        let compare = match revision {
            Some(rev) => Compare::mod_revision(
                k.clone(),
                CompareOp::Equal,
                revision_of(kind, &display, rev)?,
            ),
            None => Compare::create_revision(k.clone(), CompareOp::Greater, 0),
        };
        self.conditional(
            kind,
            display,
            k.clone(),
            compare,
            TxnOp::delete(k, None),
            revision.unwrap_or_default(),
        )
        .await
        .map(|_| ())
    }

    async fn watch(&self, kind: &KindInfo, revision: &str) -> Result<EventStream, DatastoreError> {
        let from: i64 = revision
            .parse()
            .map_err(|_| DatastoreError::Expired(revision.to_string()))?;
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(from + 1)
            .with_progress_notify();
        let stream = self
            .client
            .clone()
            .watch(prefix(kind, None), Some(options))
            .await
            .map_err(err)?;
        let kind = kind.clone();
        let events = futures::stream::unfold(Some(stream), move |state| {
            let kind = kind.clone();
            async move {
                let mut stream = state?;
                loop {
                    let resp = match stream.message().await {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return None,
                        Err(e) => return Some((vec![Err(err(e))], None)),
                    };
                    if resp.compact_revision() > 0 || resp.canceled() {
                        let why = DatastoreError::Expired(resp.compact_revision().to_string());
                        return Some((vec![Err(why)], None));
                    }
                    let mut out = Vec::new();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let item = match ev.event_type() {
                            EventType::Put => decode(&kind, kv).map(|v| {
                                if kv.create_revision() == kv.mod_revision() {
                                    RawEvent::Added(v)
                                } else {
                                    RawEvent::Modified(v)
                                }
                            }),
                            EventType::Delete => match ev.prev_kv() {
                                Some(prev) => decode(&kind, prev).map(|mut v| {
                                    v["metadata"]["resourceVersion"] =
                                        Value::String(kv.mod_revision().to_string());
                                    RawEvent::Deleted(v)
                                }),
                                None => continue,
                            },
                        };
                        out.push(item);
                    }
                    if out.is_empty() {
                        // A progress notification: remember how far the store has come.
                        if let Some(h) = resp.header() {
                            out.push(Ok(RawEvent::Bookmark(h.revision().to_string())));
                        }
                    }
                    if !out.is_empty() {
                        return Some((out, Some(stream)));
                    }
                }
            }
        });
        Ok(Box::pin(futures::StreamExt::flat_map(
            events,
            futures::stream::iter,
        )))
    }
}
