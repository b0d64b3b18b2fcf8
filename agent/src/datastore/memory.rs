//! In-memory backend for unit tests: the same revision, compare-and-swap, watch-resume and
//! compaction rules as etcd, in one process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::broadcast;

use super::{
    Backend, DatastoreError, EventStream, KindInfo, RawEvent, RawList, display_name, object_name,
    object_revision,
};

type Key = (String, String, String); // plural, namespace ("" if none), name

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    revision: u64,
    history: Vec<(u64, String, RawEvent)>,
    compacted: u64,
}

/// What live watchers receive: an event, or the news that their revision is gone.
#[derive(Clone)]
enum Wire {
    Event(String, RawEvent),
    Expire,
}

/// A datastore in process memory (tests only).
#[derive(Clone)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Wire>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            events: broadcast::channel(4096).0,
        }
    }
}

fn key(kind: &KindInfo, namespace: Option<&str>, name: &str) -> Key {
    (
        kind.plural.clone(),
        namespace.unwrap_or_default().to_string(),
        name.to_string(),
    )
}

fn with_revision(mut object: Value, revision: u64) -> Value {
    object["metadata"]["resourceVersion"] = Value::String(revision.to_string());
    object
}

fn parse_revision(kind: &KindInfo, name: &str, revision: &str) -> Result<u64, DatastoreError> {
    revision.parse().map_err(|_| DatastoreError::Conflict {
        kind: kind.kind.clone(),
        name: name.to_string(),
        revision: revision.to_string(),
    })
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets history up to `revision`, so older watches get `Expired` (as etcd compaction).
    pub fn compact(&self, revision: u64) {
        let mut s = self.lock();
        s.compacted = revision;
        s.history.retain(|(rev, _, _)| *rev > revision);
    }

    /// Compacts to the current revision and ends every live watch with `Expired`, as a
    /// restarted, compacted etcd would: watchers must relist.
    pub fn expire_watches(&self) {
        let current = self.lock().revision;
        self.compact(current);
        let _ = self.events.send(Wire::Expire);
    }

    fn record(&self, s: &mut State, plural: &str, event: RawEvent) {
        let entry = (s.revision, plural.to_string(), event);
        s.history.push(entry.clone());
        let _ = self.events.send(Wire::Event(entry.1, entry.2));
    }
}

impl Backend for MemoryBackend {
    async fn get(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, DatastoreError> {
        Ok(self
            .lock()
            .objects
            .get(&key(kind, namespace, name))
            .cloned())
    }

    async fn list(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
    ) -> Result<RawList, DatastoreError> {
        let s = self.lock();
        let items = s
            .objects
            .iter()
            .filter(|((plural, ns, _), _)| {
                plural == &kind.plural && namespace.is_none_or(|want| want == ns)
            })
            .map(|(_, v)| v.clone())
            .collect();
        Ok(RawList {
            items,
            revision: s.revision.to_string(),
        })
    }

    async fn create(&self, kind: &KindInfo, object: Value) -> Result<Value, DatastoreError> {
        let (ns, name) = object_name(&object);
        let mut s = self.lock();
        let k = key(kind, ns.as_deref(), &name);
        if s.objects.contains_key(&k) {
            return Err(DatastoreError::AlreadyExists {
                kind: kind.kind.clone(),
                name: display_name(ns.as_deref(), &name),
            });
        }
        s.revision += 1;
        let stored = with_revision(object, s.revision);
        s.objects.insert(k, stored.clone());
        self.record(&mut s, &kind.plural, RawEvent::Added(stored.clone()));
        Ok(stored)
    }

    async fn update(&self, kind: &KindInfo, object: Value) -> Result<Value, DatastoreError> {
        let (ns, name) = object_name(&object);
        let revision = object_revision(&object).unwrap_or_default();
        let wanted = parse_revision(kind, &name, &revision)?;
        let mut s = self.lock();
        let k = key(kind, ns.as_deref(), &name);
        let current = match s.objects.get(&k) {
            None => {
                return Err(DatastoreError::NotFound {
                    kind: kind.kind.clone(),
                    name: display_name(ns.as_deref(), &name),
                });
            }
            Some(v) => object_revision(v).unwrap_or_default(),
        };
        if current != wanted.to_string() {
            return Err(DatastoreError::Conflict {
                kind: kind.kind.clone(),
                name: display_name(ns.as_deref(), &name),
                revision,
            });
        }
        s.revision += 1;
        let stored = with_revision(object, s.revision);
        s.objects.insert(k, stored.clone());
        self.record(&mut s, &kind.plural, RawEvent::Modified(stored.clone()));
        Ok(stored)
    }

    async fn delete(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        revision: Option<&str>,
    ) -> Result<(), DatastoreError> {
        let mut s = self.lock();
        let k = key(kind, namespace, name);
        let Some(current) = s.objects.get(&k) else {
            return Err(DatastoreError::NotFound {
                kind: kind.kind.clone(),
                name: display_name(namespace, name),
            });
        };
        if let Some(rev) = revision
            && object_revision(current).as_deref() != Some(rev)
        {
            return Err(DatastoreError::Conflict {
                kind: kind.kind.clone(),
                name: display_name(namespace, name),
                revision: rev.to_string(),
            });
        }
        let old = s.objects.remove(&k).expect("checked above");
        s.revision += 1;
        self.record(&mut s, &kind.plural, RawEvent::Deleted(old));
        Ok(())
    }

    async fn watch(&self, kind: &KindInfo, revision: &str) -> Result<EventStream, DatastoreError> {
        let from: u64 = revision
            .parse()
            .map_err(|_| DatastoreError::Expired(revision.to_string()))?;
        let s = self.lock();
        if from < s.compacted {
            return Err(DatastoreError::Expired(revision.to_string()));
        }
        // Subscribe under the lock so no event falls between the replay and the live feed.
        let live = self.events.subscribe();
        let plural = kind.plural.clone();
        let replay: Vec<_> = s
            .history
            .iter()
            .filter(|(rev, p, _)| *rev > from && *p == plural)
            .map(|(_, _, e)| Ok(e.clone()))
            .collect();
        drop(s);
        let live = futures::stream::unfold(live, move |mut rx| {
            let plural = plural.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(Wire::Event(p, e)) if p == plural => return Some((Ok(e), rx)),
                        Ok(Wire::Event(..)) => continue,
                        Ok(Wire::Expire) => {
                            return Some((Err(DatastoreError::Expired("compacted".into())), rx));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            return Some((Err(DatastoreError::Expired("lagged".into())), rx));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(futures::stream::iter(replay).chain(live).boxed())
    }
}
