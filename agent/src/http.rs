//! The local HTTP endpoint: `/status` and `/routes` (JSON, read by `servalctl` and the
//! tests), `/metrics` (Prometheus), `/livez` and `/readyz`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ipnet::IpNet;
use serde::Deserialize;
use serval_bgp::af::Family;
use serval_bgp::speaker::SpeakerHandle;
use tokio::sync::watch;

/// What the handlers read: the speaker, and (for the node agent) whether the node is ready.
#[derive(Clone)]
struct AppState {
    speaker: SpeakerHandle,
    ready: Option<watch::Receiver<bool>>,
    node: Option<crate::node_metrics::NodeMetrics>,
    /// `/readyz` also requires every BGP session to be established.
    require_bgp: bool,
}

/// `/routes?family=&prefix=&after=&limit=`: one page in prefix order. `limit` defaults to
/// (and is capped at) 10,000; a full page carries `x-serval-next-after`, the `after` that
/// fetches the next one.
#[derive(Deserialize)]
struct RoutesQuery {
    family: Option<Family>,
    prefix: Option<IpNet>,
    after: Option<IpNet>,
    limit: Option<usize>,
}

/// The response header naming the next page's `after`.
pub const NEXT_AFTER_HEADER: &str = "x-serval-next-after";

fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    match s.speaker.status().await {
        Ok(bgp) => axum::Json(crate::status_table::NodeStatus {
            bgp,
            dataplane: s
                .node
                .as_ref()
                .map(|n| crate::status_table::DataplaneStatus {
                    route_conflicts: n.route_conflict_list.borrow().clone(),
                }),
        })
        .into_response(),
        Err(e) => unavailable(e),
    }
}

async fn routes(State(s): State<AppState>, Query(q): Query<RoutesQuery>) -> Response {
    let query = serval_bgp::status::RoutesQuery {
        family: q.family.unwrap_or(Family::Ipv4Unicast),
        within: q.prefix,
        after: q.after,
        limit: q
            .limit
            .unwrap_or(serval_bgp::status::RoutesQuery::MAX_LIMIT)
            .clamp(1, serval_bgp::status::RoutesQuery::MAX_LIMIT),
    };
    let limit = query.limit;
    match s.speaker.routes_page(query).await {
        Ok(r) => {
            let next = (r.len() == limit)
                .then(|| r.last().map(|v| v.prefix.to_string()))
                .flatten();
            let mut resp = axum::Json(r).into_response();
            if let Some(n) = next.and_then(|n| header::HeaderValue::from_str(&n).ok()) {
                resp.headers_mut().insert(NEXT_AFTER_HEADER, n);
            }
            resp
        }
        Err(e) => unavailable(e),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    match s.speaker.status().await {
        Ok(st) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            crate::metrics::render_with(&st, s.node.as_ref()),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    if let Some(ready) = &s.ready
        && !*ready.borrow()
    {
        return unavailable(
            "not ready: the datastore is not in sync or the dataplane not applied yet",
        );
    }
    match s.speaker.status().await {
        Ok(st) if s.require_bgp => {
            let down: Vec<String> = st
                .peers
                .iter()
                .filter(|p| p.state != serval_bgp::fsm::State::Established)
                .map(|p| format!("{} ({:?})", p.address, p.state))
                .collect();
            if down.is_empty() {
                "ok".into_response()
            } else {
                unavailable(format!(
                    "not ready: BGP sessions not established: {}",
                    down.join(", ")
                ))
            }
        }
        Ok(_) => "ok".into_response(),
        Err(e) => unavailable(e),
    }
}

/// Serves until the process exits (the standalone speaker: ready when the speaker answers).
pub async fn serve(addr: SocketAddr, speaker: SpeakerHandle) -> std::io::Result<()> {
    serve_state(
        addr,
        AppState {
            speaker,
            ready: None,
            node: None,
            require_bgp: false,
        },
    )
    .await
}

/// Serves for the node agent: `/readyz` also waits for `ready` (datastore in sync and the
/// first dataplane apply done) and, with `require_bgp`, for every session to be up;
/// `/metrics` adds the agent's own metrics.
pub async fn serve_node(
    addr: SocketAddr,
    speaker: SpeakerHandle,
    ready: watch::Receiver<bool>,
    node: crate::node_metrics::NodeMetrics,
    require_bgp: bool,
) -> std::io::Result<()> {
    serve_state(
        addr,
        AppState {
            speaker,
            ready: Some(ready),
            node: Some(node),
            require_bgp,
        },
    )
    .await
}

/// The metrics-only listener (SERVAL_METRICS_ADDRESS): `/metrics` and nothing else, so it
/// can face the network while `/status` and `/routes` stay on loopback.
pub async fn serve_metrics(
    addr: SocketAddr,
    speaker: SpeakerHandle,
    node: crate::node_metrics::NodeMetrics,
) -> std::io::Result<()> {
    let app = metrics_router(AppState {
        speaker,
        ready: None,
        node: Some(node),
        require_bgp: false,
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics listening");
    axum::serve(listener, app).await
}

fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn serve_state(addr: SocketAddr, state: AppState) -> std::io::Result<()> {
    let app = Router::new()
        .route("/status", get(status))
        .route("/routes", get(routes))
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "HTTP status and metrics listening");
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn get_status(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.lines().next().unwrap_or("").to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_metrics_listener_serves_metrics_and_nothing_else() {
        let mut cfg = serval_bgp::config::SpeakerConfig::new("10.0.0.1".parse().unwrap(), 65001);
        cfg.listen_address = None;
        let speaker = SpeakerHandle::start(cfg).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = metrics_router(AppState {
            speaker: speaker.clone(),
            ready: None,
            node: Some(crate::node_metrics::NodeMetrics::default()),
            require_bgp: false,
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        let lines = tokio::task::spawn_blocking(move || {
            ["/metrics", "/status", "/routes", "/readyz"].map(|p| get_status(addr, p))
        })
        .await
        .unwrap();
        assert!(lines[0].contains("200"), "{lines:?}");
        for l in &lines[1..] {
            assert!(l.contains("404"), "{lines:?}");
        }
        speaker.shutdown().await.unwrap();
    }
}
