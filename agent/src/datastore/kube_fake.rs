//! A fake Kubernetes API server for tests, plugged into kube's `Client::new` as a tower
//! service (kube's mock-service support): the REST paths, verbs, status codes and watch
//! stream format the kube backend uses, over the in-memory store's revision rules.

use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};

use super::{Backend, DatastoreError, KindInfo, MemoryBackend, RawEvent};

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed_unsync())
        .expect("static response parts")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "code": code, "reason": reason, "message": message})
}

fn error_response(e: DatastoreError) -> Response<Body> {
    let (code, reason) = match &e {
        DatastoreError::NotFound { .. } => (404, "NotFound"),
        DatastoreError::AlreadyExists { .. } => (409, "AlreadyExists"),
        DatastoreError::Conflict { .. } => (409, "Conflict"),
        DatastoreError::Expired(_) => (410, "Expired"),
        _ => (500, "InternalError"),
    };
    full(
        StatusCode::from_u16(code).expect("valid code"),
        &status(code, reason, &e.to_string()),
    )
}

/// Where a request path points.
struct Target {
    kind: KindInfo,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str, kinds: &[KindInfo]) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some(name.to_string())),
        _ => return None,
    };
    let kind = kinds
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)?
        .clone();
    Some(Target {
        kind,
        namespace,
        name,
    })
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

fn watch_line(event: Result<RawEvent, DatastoreError>) -> Bytes {
    let line = match event {
        Ok(RawEvent::Added(o)) => json!({"type": "ADDED", "object": o}),
        Ok(RawEvent::Modified(o)) => json!({"type": "MODIFIED", "object": o}),
        Ok(RawEvent::Deleted(o)) => json!({"type": "DELETED", "object": o}),
        Ok(RawEvent::Bookmark(rv)) => {
            json!({"type": "BOOKMARK", "object": {"kind": "Bookmark", "apiVersion": "v1",
                   "metadata": {"resourceVersion": rv}}})
        }
        Err(e) => {
            let code = if matches!(e, DatastoreError::Expired(_)) {
                410
            } else {
                500
            };
            json!({"type": "ERROR", "object": status(code, "Expired", &e.to_string())})
        }
    };
    Bytes::from(format!("{line}\n"))
}

/// Serves one request against `store`, for the listed kinds.
pub async fn serve(
    store: MemoryBackend,
    kinds: Vec<KindInfo>,
    req: Request<kube::client::Body>,
) -> Result<Response<Body>, Infallible> {
    let Some(target) = parse_path(req.uri().path(), &kinds) else {
        return Ok(full(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                &format!("no route for {}", req.uri().path()),
            ),
        ));
    };
    let method = req.method().clone();
    let uri = req.uri().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let ns = target.namespace.as_deref();
    let result = match (&method, &target.name) {
        (&Method::GET, None) if query(&uri, "watch").as_deref() == Some("true") => {
            let rv = query(&uri, "resourceVersion").unwrap_or_else(|| "0".into());
            return Ok(match store.watch(&target.kind, &rv).await {
                Ok(stream) => Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(
                        BodyExt::boxed_unsync(StreamBody::new(
                            stream.map(|e| Ok(http_body::Frame::data(watch_line(e)))),
                        )),
                    )
                    .expect("static response parts"),
                Err(e) => error_response(e),
            });
        }
        (&Method::GET, None) => store.list(&target.kind, ns).await.map(|l| {
            json!({"apiVersion": target.kind.api_version(), "kind": format!("{}List", target.kind.kind),
                   "metadata": {"resourceVersion": l.revision}, "items": l.items})
        }),
        (&Method::GET, Some(name)) => match store.get(&target.kind, ns, name).await {
            Ok(Some(o)) => Ok(o),
            Ok(None) => Err(DatastoreError::NotFound {
                kind: target.kind.kind.clone(),
                name: name.clone(),
            }),
            Err(e) => Err(e),
        },
        (&Method::POST, None) => {
            let mut object = parsed;
            if let Some(ns) = ns {
                object["metadata"]["namespace"] = Value::String(ns.to_string());
            }
            store.create(&target.kind, object).await
        }
        (&Method::PUT, Some(_)) => store.update(&target.kind, parsed).await,
        (&Method::DELETE, Some(name)) => {
            let rv = parsed["preconditions"]["resourceVersion"].as_str();
            match store.delete(&target.kind, ns, name, rv).await {
                Ok(()) => Ok(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})),
                Err(e) => Err(e),
            }
        }
        _ => {
            return Ok(full(
                StatusCode::METHOD_NOT_ALLOWED,
                &status(405, "MethodNotAllowed", "not supported by the fake"),
            ));
        }
    };
    Ok(match result {
        Ok(v) => full(
            if method == Method::POST {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            &v,
        ),
        Err(e) => error_response(e),
    })
}

/// A kube client whose API server is the fake over `store`.
pub fn client(store: MemoryBackend, kinds: Vec<KindInfo>) -> kube::Client {
    let service = tower::service_fn(move |req| serve(store.clone(), kinds.clone(), req));
    kube::Client::new(service, "default")
}
