//! etcd v3 backend: one key per object under `/serval/v1/<plural>/[<namespace>/]<name>`
//! (Kubernetes kinds under `/serval/v1/k8s/<group or core>/<plural>/...`), the
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

/// How long one etcd request may take before it fails (and the caller retries or reports).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long connecting to an endpoint may take.
pub const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An etcd setting that cannot work, named by Calico's variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct EtcdSettingsError {
    /// The variable (or variables) at fault, as Calico names them.
    pub variable: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// Where etcd is and how to reach it securely: Calico's `ETCD_ENDPOINTS`,
/// `ETCD_CA_CERT_FILE`, `ETCD_CERT_FILE` and `ETCD_KEY_FILE`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://` or `https://` endpoints.
    pub endpoints: Vec<String>,
    /// CA bundle (PEM) that signed the servers' certificates; needed for `https://`.
    pub ca_cert_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for servers that require client-certificate auth.
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    pub key_file: Option<std::path::PathBuf>,
}

/// The etcd flags and variables every binary takes (Calico's names).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdArgs {
    /// Comma-separated etcd endpoints (`https://` with the files below).
    #[arg(long, env = "ETCD_ENDPOINTS", global = true)]
    pub etcd_endpoints: Option<String>,
    /// CA certificate (PEM) that signed etcd's server certificates.
    #[arg(long, env = "ETCD_CA_CERT_FILE", global = true)]
    pub etcd_ca_cert_file: Option<String>,
    /// Client certificate (PEM), when etcd requires client-certificate auth.
    #[arg(long, env = "ETCD_CERT_FILE", global = true)]
    pub etcd_cert_file: Option<String>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "ETCD_KEY_FILE", global = true)]
    pub etcd_key_file: Option<String>,
}

impl EtcdArgs {
    /// The connection settings these flags describe (not yet validated).
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig::new(
            self.etcd_endpoints.as_deref(),
            self.etcd_ca_cert_file.as_deref(),
            self.etcd_cert_file.as_deref(),
            self.etcd_key_file.as_deref(),
        )
    }
}

impl EtcdConfig {
    /// From `ETCD_ENDPOINTS`-style text and optional file paths (empty strings are unset).
    pub fn new(
        endpoints: Option<&str>,
        ca_cert_file: Option<&str>,
        cert_file: Option<&str>,
        key_file: Option<&str>,
    ) -> Self {
        let path = |p: Option<&str>| {
            p.map(str::trim)
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from)
        };
        EtcdConfig {
            endpoints: endpoint_list(endpoints),
            ca_cert_file: path(ca_cert_file),
            cert_file: path(cert_file),
            key_file: path(key_file),
        }
    }

    /// The first etcd setting given, by Calico's name: with the Kubernetes datastore such a
    /// setting would do nothing, so it is refused rather than ignored.
    pub fn set_variable(&self) -> Option<&'static str> {
        [
            ("ETCD_ENDPOINTS", !self.endpoints.is_empty()),
            ("ETCD_CA_CERT_FILE", self.ca_cert_file.is_some()),
            ("ETCD_CERT_FILE", self.cert_file.is_some()),
            ("ETCD_KEY_FILE", self.key_file.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name))
    }

    /// Checks the combination; the message names Calico's variable.
    pub fn validate(&self) -> Result<(), EtcdSettingsError> {
        let err = |variable, reason: String| Err(EtcdSettingsError { variable, reason });
        if self.endpoints.is_empty() {
            return err(
                "ETCD_ENDPOINTS",
                "at least one endpoint is needed, e.g. https://10.0.0.1:2379".into(),
            );
        }
        if let Some(e) = self
            .endpoints
            .iter()
            .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return err(
                "ETCD_ENDPOINTS",
                format!("{e:?} must start with http:// or https://"),
            );
        }
        let https = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != self.endpoints.len() {
            return err(
                "ETCD_ENDPOINTS",
                "mix of http:// and https:// endpoints".into(),
            );
        }
        let tls_files =
            self.ca_cert_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if https == 0 && tls_files {
            return err(
                "ETCD_CA_CERT_FILE/ETCD_CERT_FILE/ETCD_KEY_FILE",
                "set but ETCD_ENDPOINTS are http:// (use https://)".into(),
            );
        }
        if https != 0 && self.ca_cert_file.is_none() {
            return err(
                "ETCD_CA_CERT_FILE",
                "https:// endpoints need the CA that signed etcd's certificate".into(),
            );
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return err(
                    "ETCD_KEY_FILE",
                    "the client certificate (ETCD_CERT_FILE) needs its key".into(),
                );
            }
            (None, Some(_)) => {
                return err(
                    "ETCD_CERT_FILE",
                    "the key (ETCD_KEY_FILE) needs its client certificate".into(),
                );
            }
            _ => {}
        }
        Ok(())
    }

    fn options(&self) -> Result<etcd_client::ConnectOptions, DatastoreError> {
        let mut opts = etcd_client::ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(DIAL_TIMEOUT);
        if let Some(ca) = &self.ca_cert_file {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| {
                    DatastoreError::backend(format!("cannot read {}: {e}", p.display()))
                })
            };
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            opts = opts.with_tls(tls);
        }
        Ok(opts)
    }
}

/// The etcd datastore.
#[derive(Clone)]
pub struct EtcdBackend {
    client: Client,
}

/// The keyspace of a kind: Serval's kinds by plural; Kubernetes' kinds (copied into etcd) in
/// a space of their own per API group, so `networking.k8s.io` NetworkPolicies and Serval
/// NetworkPolicies, or Kubernetes and Serval Nodes, never share keys.
fn kind_space(kind: &KindInfo) -> String {
    match kind.group.as_str() {
        "serval.dev" => kind.plural.clone(),
        "" => format!("k8s/core/{}", kind.plural),
        group => format!("k8s/{group}/{}", kind.plural),
    }
}

fn key(kind: &KindInfo, namespace: Option<&str>, name: &str) -> String {
    let space = kind_space(kind);
    match namespace {
        Some(ns) if kind.namespaced => format!("{KEY_ROOT}/{space}/{ns}/{name}"),
        _ => format!("{KEY_ROOT}/{space}/{name}"),
    }
}

fn prefix(kind: &KindInfo, namespace: Option<&str>) -> String {
    let space = kind_space(kind);
    match namespace {
        Some(ns) if kind.namespaced => format!("{KEY_ROOT}/{space}/{ns}/"),
        _ => format!("{KEY_ROOT}/{space}/"),
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
    /// Connects to the given plain endpoints (`http://127.0.0.1:2379`), with the request and
    /// dial timeouts.
    pub async fn connect(endpoints: &[String]) -> Result<Self, DatastoreError> {
        Self::connect_with(&EtcdConfig {
            endpoints: endpoints.to_vec(),
            ..EtcdConfig::default()
        })
        .await
    }

    /// Connects as `config` says (TLS with an optional client certificate, timeouts).
    pub async fn connect_with(config: &EtcdConfig) -> Result<Self, DatastoreError> {
        config.validate().map_err(DatastoreError::backend)?;
        let client = Client::connect(&config.endpoints, Some(config.options()?))
            .await
            .map_err(err)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_kinds_never_share_keys_with_servals() {
        use crate::resources::{NetworkPolicy, Node};
        type K8sPolicy = k8s_openapi::api::networking::v1::NetworkPolicy;
        type K8sNode = k8s_openapi::api::core::v1::Node;
        let serval = key(&KindInfo::of::<NetworkPolicy>(), Some("prod"), "web");
        let k8s = key(&KindInfo::of::<K8sPolicy>(), Some("prod"), "web");
        assert_eq!(serval, "/serval/v1/networkpolicies/prod/web");
        assert_eq!(
            k8s,
            "/serval/v1/k8s/networking.k8s.io/networkpolicies/prod/web"
        );
        assert!(!k8s.starts_with(&prefix(&KindInfo::of::<NetworkPolicy>(), Some("prod"))));
        assert_eq!(
            key(&KindInfo::of::<Node>(), None, "n1"),
            "/serval/v1/nodes/n1"
        );
        assert_eq!(
            key(&KindInfo::of::<K8sNode>(), None, "n1"),
            "/serval/v1/k8s/core/nodes/n1"
        );
    }
}
