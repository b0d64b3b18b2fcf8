//! `serval-node run`: the node agent. Start-up (datastore, address, Node resource, tunnel
//! addresses, files for serval-cni), then the speaker, the HTTP endpoint, the route task and
//! the agent loop, until a signal or a fatal error.
//!
//! Where each decision is made, two hops from `main`:
//!
//! ```text
//!  datastore ─ Syncer ─ SyncEvent ─┐                         (tasks: ─►  calls: ──)
//!  speaker ─ best paths ───────────┼─► agent::Agent::run   the event loop (this module's
//!  timers: tunnels, firewall resync┘        │                 agent.rs): feeds calc, drives
//!                                           │                 secrets, labels, tunnel IPs
//!                                           ├── calc::cache::ClusterState   typed cache
//!                                           ├── calc::desired               → Desired (pure:
//!                                           │     peers, exports, routes, tunnels, MTU,
//!                                           │     NAT, policy inputs; calc::* decides each)
//!                                           └── sequencer::Sequencer::apply, in order:
//!                                                 1 BGP peers, 2 exports  ──► bgp::Speaker
//!                                                 3 policy + NAT ── dataplane::firewall
//!                                                   (compile: serval_policy, incremental)
//!                                                 4 tunnel devices, VTEPs ── dataplane::tunnel
//!                                                 5 routes ─► route task (route_manager)
//!                                                 6 pod MTU file (serval-cni reads it)
//!  HTTP: /status /routes /metrics /readyz ◄── speaker status, node metrics
//! ```

pub mod agent;
pub mod calico_env;
pub mod cni_token;
pub mod config;
pub mod install_cni;
pub mod sequencer;
pub mod startup;

use std::net::{IpAddr, Ipv4Addr};

use serval_bgp::config::SpeakerConfig;
use serval_bgp::speaker::SpeakerHandle;
use tokio::sync::{mpsc, watch};

use crate::dataplane::netlink::Netlink;
use crate::dataplane::route_manager::{self, RouteManager, RouteStats, RouteTiming};
use crate::datastore::Backend;
use crate::resources::{BGPConfiguration, Node};
use agent::{Agent, AgentError, Identity};
use config::NodeConfig;
use startup::StartupError;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Start-up failed.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The agent loop failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The kernel interface failed.
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::DataplaneError),
    /// The speaker could not start.
    #[error("BGP speaker: {0}")]
    Speaker(#[from] serval_bgp::speaker::SpeakerError),
    /// The HTTP endpoint failed.
    #[error("HTTP endpoint {addr}: {source}")]
    Http {
        /// Its address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the node agent until `shutdown` resolves or something fatal happens.
pub async fn run(
    cfg: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
    bgp_log: sequencer::BgpLogControl,
) -> Result<(), NodeError> {
    let ds = startup::connect(&cfg).await;
    let (detected, detected_v6, interfaces) = startup::node_addresses(&cfg, &ds).await?;
    let address_v6 = detected_v6.map(|(a, _)| a);
    // The MTU of the IPv4 address's interface, else the IPv6 one's.
    let (address, host_mtu) = match (detected, detected_v6) {
        (Some((a, m)), _) => (Some(a), m),
        (None, Some((_, m))) => (None, m),
        (None, None) => (None, 1500),
    };
    tracing::info!(node = %cfg.node_name, address = ?address, address_v6 = ?address_v6, host_mtu, "starting");
    startup::ensure_default_pool(&ds, cfg.default_pool.as_ref()).await?;
    if address_v6.is_some() {
        startup::ensure_default_pool(&ds, cfg.default_pool_v6.as_ref()).await?;
    }
    let node = startup::register_node(&ds, &cfg, address, address_v6).await?;
    let node = startup::tunnel_addresses(&ds, node).await?;
    startup::write_file(&cfg.var_dir.join("nodename"), &cfg.node_name)?;
    startup::enable_forwarding(address_v6.is_some())?;

    // The speaker's identity from what the datastore says now.
    let identity = initial_identity(&ds, &cfg.node_name, &node).await?;
    let router_id = match address.map(|a| a.addr()) {
        Some(IpAddr::V4(v4)) => v4,
        _ => Ipv4Addr::new(0, 0, 0, 1),
    };
    // A node never passes one external peer's routes to another (no transit between ToRs).
    let speaker = SpeakerHandle::start_with_policy(
        SpeakerConfig {
            router_id,
            as_number: identity.as_number,
            // Without BGP (networking backend vxlan or none) nothing listens on port 179.
            listen_address: cfg
                .bgp
                .then_some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
            listen_port: identity.listen_port,
            cluster_id: identity.cluster_id,
            next_hop_ipv4: None,
            // IPv6 routes carried over an IPv4 session (dual-stack mesh) need a global IPv6
            // next hop: the node's own IPv6 address.
            next_hop_ipv6: address_v6.and_then(|a| match a.addr() {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            }),
            default_local_pref: 100,
            write_queue_bytes: serval_bgp::config::DEFAULT_WRITE_QUEUE_BYTES,
        },
        std::sync::Arc::new(crate::calc::bgp_export::NodeRoutePolicy::default()),
    )
    .await?;

    let (ready_tx, ready_rx) = watch::channel(false);
    let http_addr = cfg.http_address;
    let metrics = crate::node_metrics::NodeMetrics::default();
    let mut http = tokio::spawn(crate::http::serve_node(
        http_addr,
        speaker.clone(),
        ready_rx,
        metrics.clone(),
        cfg.readiness_requires_bgp,
    ));

    if let (crate::datastore::AnyBackend::Kubernetes(kb), Ok(host)) =
        (ds.backend(), std::env::var("KUBERNETES_SERVICE_HOST"))
    {
        if cfg.cni_conf_dir.is_dir() {
            tokio::spawn(cni_token::run(
                kb.client(),
                cni_token::CniCredentials {
                    namespace: cfg.namespace.clone(),
                    service_account: cfg.cni_service_account.clone(),
                    sa_dir: cfg.service_account_dir.clone(),
                    conf_dir: cfg.cni_conf_dir.clone(),
                    host,
                    port: std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into()),
                },
            ));
        } else {
            tracing::info!(dir = %cfg.cni_conf_dir.display(), "CNI configuration directory not mounted; serval-cni's credentials are not kept by the agent");
        }
    }
    if let Some(addr) = cfg.metrics_address {
        let (sp, m) = (speaker.clone(), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve_metrics(addr, sp, m).await {
                tracing::error!(%addr, error = %e, "metrics listener failed");
            }
        });
    }
    let netlink = Netlink::connect()?;
    let (routes_tx, routes_rx) = mpsc::channel(64);
    let (stats_tx, mut stats_rx) = watch::channel(RouteStats::default());
    let apply_hist = metrics.route_apply_seconds.clone();
    let route_task = tokio::spawn(route_manager::run(
        RouteManager::new(netlink.clone()),
        routes_rx,
        RouteTiming {
            resync: cfg.route_refresh,
            ..RouteTiming::default()
        },
        stats_tx,
        metrics.route_conflict_list.clone(),
        move |d| apply_hist.observe(d.as_secs_f64()),
    ));
    let link_routes = routes_tx.clone();
    let link_task = tokio::spawn(async move {
        if let Err(e) = crate::dataplane::link_watch::run(link_routes).await {
            tracing::warn!(error = %e, "cannot watch links; routes flushed by a link flap wait for the periodic resync");
        }
    });
    let route_metrics = metrics.clone();
    let stats_task = tokio::spawn(async move {
        let mut last = RouteStats::default();
        while stats_rx.changed().await.is_ok() {
            let now = *stats_rx.borrow_and_update();
            route_metrics.record_routes(&last, &now);
            last = now;
        }
    });

    let sequencer = sequencer::Sequencer::new(
        metrics,
        speaker.clone(),
        routes_tx,
        netlink,
        cfg.var_dir.clone(),
    )
    .with_iptables_backend(cfg.iptables_backend.clone())
    .with_bgp_log_control(bgp_log);
    let settings = crate::calc::desired::NodeSettings {
        host_mtu,
        bgp: cfg.bgp,
        vxlan_vni: cfg.tunnels.vxlan_vni,
        vxlan_port: cfg.tunnels.vxlan_port,
        ipip_mtu: cfg.tunnels.ipip_mtu,
        vxlan_mtu: cfg.tunnels.vxlan_mtu,
        failsafe: cfg.failsafe.clone(),
        host_interfaces: host_interfaces(interfaces),
    };
    let agent = Agent::new(
        cfg.node_name.clone(),
        identity,
        settings,
        sequencer,
        ready_tx,
    )
    .with_datastore(ds.clone())
    .with_node_labels(cfg.node_labels.clone())
    .with_secret_namespace(cfg.namespace.clone())
    .with_firewall_refresh(cfg.iptables_refresh);
    let backend = ds.backend().clone();
    let result = tokio::select! {
        r = agent.run(backend) => r.map_err(NodeError::from),
        r = &mut http => match r {
            Ok(Err(source)) => Err(NodeError::Http { addr: http_addr, source }),
            _ => Ok(()),
        },
        () = shutdown => {
            tracing::info!("shutting down; kernel routes stay in place for the next start");
            Ok(())
        }
    };
    // No Cease to the peers: the sessions just close, so they keep our routes as stale
    // (graceful restart) and the kernel keeps forwarding until we are back.
    route_task.abort();
    stats_task.abort();
    link_task.abort();
    drop(speaker);
    result
}

async fn initial_identity<B: Backend>(
    ds: &crate::datastore::Datastore<B>,
    me: &str,
    node: &Node,
) -> Result<Identity, StartupError> {
    let (configs, _) = ds.list::<BGPConfiguration>(None).await?;
    let mut state = crate::calc::cache::ClusterState::default();
    for c in configs {
        state.apply(&crate::datastore::SyncEvent::Upsert {
            kind: crate::datastore::KindInfo::of::<BGPConfiguration>(),
            object: serde_json::to_value(c).expect("resources serialise"),
        });
    }
    state.apply(&crate::datastore::SyncEvent::Upsert {
        kind: crate::datastore::KindInfo::of::<Node>(),
        object: serde_json::to_value(node).expect("resources serialise"),
    });
    Ok(agent::identity(&state, me))
}

/// The host's interface prefixes (as read at start-up), for BGPFilter `interface` rules.
fn host_interfaces(list: Vec<crate::autodetect::Interface>) -> Vec<(ipnet::IpNet, String)> {
    list.into_iter()
        .flat_map(|i| {
            i.addrs
                .into_iter()
                .map(move |a| (a.trunc(), i.name.clone()))
        })
        .filter(|(net, _)| !net.addr().is_loopback())
        .collect()
}
