//! The syncer: list + watch per kind, turned into one ordered stream of updates and a sync
//! status (waiting → resyncing → in sync), so consumers (the calculation graph, the dataplane)
//! never write before they have seen everything.
//!
//! ```text
//!  kind task (one per kind) ── list ─► diff vs. cache ─► watch from revision ─┐
//!        ▲ relist on Expired; rewatch from last revision on error ◄───────────┘
//!        │ KindMsg
//!  aggregator task ── SyncEvent (Upsert / Delete / Status) ──► consumer
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Backend, DatastoreError, KindInfo, RawEvent, object_name, object_revision};

/// Where the syncer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    /// Not yet listed everything once (the datastore may be unreachable).
    WaitingForDatastore,
    /// Relisting after a gap; updates are flowing but the picture may be incomplete.
    ResyncInProgress,
    /// Every kind is listed and watched.
    InSync,
}

/// One update for the consumer.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncEvent {
    /// The aggregate status changed.
    Status(SyncStatus),
    /// An object was created or changed (or seen for the first time).
    Upsert {
        /// Its kind.
        kind: KindInfo,
        /// The object, with `metadata.resourceVersion`.
        object: Value,
    },
    /// An object is gone.
    Delete {
        /// Its kind.
        kind: KindInfo,
        /// Its namespace.
        namespace: Option<String>,
        /// Its name.
        name: String,
    },
}

enum KindMsg {
    Event(SyncEvent),
    InSync(usize, bool),
}

/// Runs the per-kind tasks; dropping it stops them.
pub struct Syncer {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Syncer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Delay before retrying a failed list or watch.
const RETRY_DELAY: Duration = Duration::from_millis(500);

impl Syncer {
    /// Starts syncing `kinds`; updates arrive on the returned channel.
    pub fn start<B: Backend + Clone>(
        backend: B,
        kinds: Vec<KindInfo>,
    ) -> (Syncer, mpsc::Receiver<SyncEvent>) {
        let (kind_tx, mut kind_rx) = mpsc::channel::<KindMsg>(1024);
        let (out_tx, out_rx) = mpsc::channel(1024);
        let count = kinds.len();
        let mut tasks: Vec<JoinHandle<()>> = kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| tokio::spawn(sync_kind(backend.clone(), kind, i, kind_tx.clone())))
            .collect();
        drop(kind_tx);
        tasks.push(tokio::spawn(async move {
            let mut in_sync = vec![false; count];
            let mut ever_synced = false;
            let mut status = SyncStatus::WaitingForDatastore;
            if out_tx.send(SyncEvent::Status(status)).await.is_err() {
                return;
            }
            while let Some(msg) = kind_rx.recv().await {
                let event = match msg {
                    KindMsg::Event(e) => e,
                    KindMsg::InSync(i, synced) => {
                        in_sync[i] = synced;
                        let now = if in_sync.iter().all(|s| *s) {
                            ever_synced = true;
                            SyncStatus::InSync
                        } else if ever_synced {
                            SyncStatus::ResyncInProgress
                        } else {
                            SyncStatus::WaitingForDatastore
                        };
                        if now == status {
                            continue;
                        }
                        status = now;
                        SyncEvent::Status(now)
                    }
                };
                if out_tx.send(event).await.is_err() {
                    return;
                }
            }
        }));
        (Syncer { tasks }, out_rx)
    }
}

type CacheKey = (Option<String>, String);

async fn sync_kind<B: Backend>(
    backend: B,
    kind: KindInfo,
    index: usize,
    tx: mpsc::Sender<KindMsg>,
) {
    let mut cache: BTreeMap<CacheKey, String> = BTreeMap::new();
    loop {
        // List, and tell the consumer exactly what changed since the last picture.
        let list = match backend.list(&kind, None).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(kind = %kind.kind, error = %e, "list failed; retrying");
                tokio::time::sleep(RETRY_DELAY).await;
                continue;
            }
        };
        let mut fresh = BTreeMap::new();
        for object in list.items {
            let key = object_name(&object);
            let rev = object_revision(&object).unwrap_or_default();
            if cache.get(&key) != Some(&rev) {
                let e = SyncEvent::Upsert {
                    kind: kind.clone(),
                    object,
                };
                if tx.send(KindMsg::Event(e)).await.is_err() {
                    return;
                }
            }
            fresh.insert(key, rev);
        }
        for (namespace, name) in cache.keys().filter(|k| !fresh.contains_key(*k)) {
            let e = SyncEvent::Delete {
                kind: kind.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
            };
            if tx.send(KindMsg::Event(e)).await.is_err() {
                return;
            }
        }
        cache = fresh;
        if tx.send(KindMsg::InSync(index, true)).await.is_err() {
            return;
        }
        // Watch from the list's revision; resume from the last seen one after errors.
        let mut revision = list.revision;
        'watch: loop {
            let mut stream = match backend.watch(&kind, &revision).await {
                Ok(s) => s,
                Err(DatastoreError::Expired(_)) => break 'watch,
                Err(e) => {
                    tracing::warn!(kind = %kind.kind, error = %e, "watch failed; retrying");
                    tokio::time::sleep(RETRY_DELAY).await;
                    continue 'watch;
                }
            };
            while let Some(item) = stream.next().await {
                let (event, rev) = match item {
                    Ok(RawEvent::Bookmark(rev)) => {
                        revision = rev;
                        continue;
                    }
                    Ok(RawEvent::Added(o) | RawEvent::Modified(o)) => {
                        let rev = object_revision(&o).unwrap_or_default();
                        cache.insert(object_name(&o), rev.clone());
                        (
                            SyncEvent::Upsert {
                                kind: kind.clone(),
                                object: o,
                            },
                            rev,
                        )
                    }
                    Ok(RawEvent::Deleted(o)) => {
                        let rev = object_revision(&o).unwrap_or_default();
                        let (namespace, name) = object_name(&o);
                        if cache.remove(&(namespace.clone(), name.clone())).is_none() {
                            revision = rev;
                            continue;
                        }
                        (
                            SyncEvent::Delete {
                                kind: kind.clone(),
                                namespace,
                                name,
                            },
                            rev,
                        )
                    }
                    Err(DatastoreError::Expired(_)) => break 'watch,
                    Err(e) => {
                        tracing::warn!(kind = %kind.kind, error = %e, "watch broke; resuming");
                        tokio::time::sleep(RETRY_DELAY).await;
                        continue 'watch;
                    }
                };
                revision = rev;
                if tx.send(KindMsg::Event(event)).await.is_err() {
                    return;
                }
            }
            // The server closed the watch (timeouts do this): resume where we were.
        }
        tracing::info!(kind = %kind.kind, "watch expired; relisting");
        if tx.send(KindMsg::InSync(index, false)).await.is_err() {
            return;
        }
    }
}
