//! Kubernetes backend: Serval's CRDs and the core kinds it reads, through kube's dynamic API.
//! Compare-and-swap is the API server's own: `resourceVersion` on replace, a precondition on
//! delete; a watch that has fallen behind gets 410 Gone, reported as `Expired`.

use futures::StreamExt;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions, WatchParams,
};
use kube::core::{ApiResource, WatchEvent};
use serde_json::Value;

use super::{
    Backend, DatastoreError, EventStream, KindInfo, RawEvent, RawList, display_name, object_name,
    object_revision,
};

/// The Kubernetes datastore.
#[derive(Clone)]
pub struct KubeBackend {
    client: kube::Client,
    /// How long the server keeps one watch open (`timeoutSeconds`; kube's default, 290 s,
    /// when unset); it sends a bookmark shortly before closing it.
    watch_timeout: Option<u32>,
}

fn resource(kind: &KindInfo) -> ApiResource {
    ApiResource {
        group: kind.group.clone(),
        version: kind.version.clone(),
        api_version: kind.api_version(),
        kind: kind.kind.clone(),
        plural: kind.plural.clone(),
    }
}

fn to_value(object: DynamicObject) -> Result<Value, DatastoreError> {
    serde_json::to_value(object).map_err(DatastoreError::backend)
}

/// Objects per list request: big kinds come in pages rather than one response.
const LIST_PAGE: u32 = 500;

/// An object for watchers and caches: without `metadata.managedFields`, which nothing here
/// reads and which is often the larger part of a Pod. (Single reads keep it, so an update
/// written back from one is exactly what was read.)
fn cached(object: DynamicObject) -> Result<Value, DatastoreError> {
    let mut v = to_value(object)?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    Ok(v)
}

fn from_value(value: Value) -> Result<DynamicObject, DatastoreError> {
    serde_json::from_value(value).map_err(DatastoreError::backend)
}

/// Maps API errors to the datastore's vocabulary (404, 409 AlreadyExists, 409 Conflict, 410).
fn map_err(kind: &KindInfo, name: &str, revision: Option<&str>, e: kube::Error) -> DatastoreError {
    if let kube::Error::Api(status) = &e {
        match (status.code, status.reason.as_str()) {
            (404, _) => {
                return DatastoreError::NotFound {
                    kind: kind.kind.clone(),
                    name: name.to_string(),
                };
            }
            (409, "AlreadyExists") => {
                return DatastoreError::AlreadyExists {
                    kind: kind.kind.clone(),
                    name: name.to_string(),
                };
            }
            (409, _) => {
                return DatastoreError::Conflict {
                    kind: kind.kind.clone(),
                    name: name.to_string(),
                    revision: revision.unwrap_or_default().to_string(),
                };
            }
            (410, _) => return DatastoreError::Expired(revision.unwrap_or_default().to_string()),
            _ => {}
        }
    }
    DatastoreError::backend(e)
}

impl KubeBackend {
    /// A backend over an existing client (in-cluster, kubeconfig, or a test service).
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            watch_timeout: None,
        }
    }

    /// The same backend with watches the server ends after `seconds` (each then resumes from
    /// the bookmark the server sent before ending it).
    pub fn with_watch_timeout(mut self, seconds: u32) -> Self {
        self.watch_timeout = Some(seconds);
        self
    }

    /// The client (for calls beyond the datastore, such as TokenRequest).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Connects with an explicit kubeconfig file.
    pub async fn connect_with(kubeconfig: &str) -> Result<Self, DatastoreError> {
        let kc =
            kube::config::Kubeconfig::read_from(kubeconfig).map_err(DatastoreError::backend)?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(DatastoreError::backend)?;
        let client = kube::Client::try_from(config).map_err(DatastoreError::backend)?;
        Ok(Self {
            client,
            watch_timeout: None,
        })
    }

    /// Connects using the environment: in-cluster config or `KUBECONFIG`.
    pub async fn connect() -> Result<Self, DatastoreError> {
        let client = kube::Client::try_default()
            .await
            .map_err(DatastoreError::backend)?;
        Ok(Self {
            client,
            watch_timeout: None,
        })
    }

    fn api(&self, kind: &KindInfo, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = resource(kind);
        match namespace {
            Some(ns) if kind.namespaced => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }
}

impl Backend for KubeBackend {
    async fn get(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, DatastoreError> {
        match self.api(kind, namespace).get_opt(name).await {
            Ok(Some(o)) => to_value(o).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(map_err(kind, &display_name(namespace, name), None, e)),
        }
    }

    async fn list(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
    ) -> Result<RawList, DatastoreError> {
        // In pages, so a big kind (every Pod of the cluster) is never one response in memory;
        // the API server serves every page from the first page's snapshot.
        let api = self.api(kind, namespace);
        let mut params = ListParams::default().limit(LIST_PAGE);
        let mut items = Vec::new();
        let mut revision = None;
        loop {
            let page = api
                .list(&params)
                .await
                .map_err(|e| map_err(kind, &kind.plural, None, e))?;
            revision
                .get_or_insert_with(|| page.metadata.resource_version.clone().unwrap_or_default());
            for o in page.items {
                let mut v = cached(o)?;
                // List items carry no type meta; restore it so decoding is uniform.
                v["apiVersion"] = Value::String(kind.api_version());
                v["kind"] = Value::String(kind.kind.clone());
                items.push(v);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        Ok(RawList {
            items,
            revision: revision.unwrap_or_default(),
        })
    }

    async fn create(&self, kind: &KindInfo, object: Value) -> Result<Value, DatastoreError> {
        let (ns, name) = object_name(&object);
        let created = self
            .api(kind, ns.as_deref())
            .create(&PostParams::default(), &from_value(object)?)
            .await
            .map_err(|e| map_err(kind, &display_name(ns.as_deref(), &name), None, e))?;
        to_value(created)
    }

    async fn update(&self, kind: &KindInfo, object: Value) -> Result<Value, DatastoreError> {
        let (ns, name) = object_name(&object);
        let revision = object_revision(&object);
        let replaced = self
            .api(kind, ns.as_deref())
            .replace(&name, &PostParams::default(), &from_value(object)?)
            .await
            .map_err(|e| {
                map_err(
                    kind,
                    &display_name(ns.as_deref(), &name),
                    revision.as_deref(),
                    e,
                )
            })?;
        to_value(replaced)
    }

    async fn delete(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        revision: Option<&str>,
    ) -> Result<(), DatastoreError> {
        let params = DeleteParams {
            preconditions: revision.map(|rv| Preconditions {
                resource_version: Some(rv.to_string()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        self.api(kind, namespace)
            .delete(name, &params)
            .await
            .map(|_| ())
            .map_err(|e| map_err(kind, &display_name(namespace, name), revision, e))
    }

    async fn watch(&self, kind: &KindInfo, revision: &str) -> Result<EventStream, DatastoreError> {
        let mut params = WatchParams::default();
        if let Some(t) = self.watch_timeout {
            params = params.timeout(t);
        }
        let k = kind.clone();
        let rev = revision.to_string();
        let stream = self
            .api(kind, None)
            .watch(&params, revision)
            .await
            .map_err(|e| map_err(kind, &kind.plural, Some(revision), e))?;
        Ok(stream
            .map(move |item| match item {
                Ok(WatchEvent::Added(o)) => cached(o).map(RawEvent::Added),
                Ok(WatchEvent::Modified(o)) => cached(o).map(RawEvent::Modified),
                Ok(WatchEvent::Deleted(o)) => cached(o).map(RawEvent::Deleted),
                Ok(WatchEvent::Bookmark(b)) => Ok(RawEvent::Bookmark(b.metadata.resource_version)),
                Ok(WatchEvent::Error(status)) if status.code == 410 => {
                    Err(DatastoreError::Expired(rev.clone()))
                }
                Ok(WatchEvent::Error(status)) => Err(DatastoreError::backend(format!(
                    "watch of {} failed: {} ({})",
                    k.plural, status.message, status.code
                ))),
                Err(e) => Err(map_err(&k, &k.plural, Some(&rev), e)),
            })
            .boxed())
    }
}
