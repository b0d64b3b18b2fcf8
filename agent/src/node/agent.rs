//! The node agent's event loop: one task owns the cluster picture and the applied state; the
//! syncer, the speaker's best-path stream and two timers only send it messages. Nothing is
//! written before the datastore is in sync; after that every change recomputes the desired
//! state (pure) and applies the difference: sessions, exports, policy and NAT, tunnel
//! devices, then routes.
//!
//! ```text
//!  Syncer ── SyncEvent ──────┐
//!  Speaker ── best paths ────┼─► Agent::run ─► SpeakerHandle (peers, announce/withdraw)
//!  tunnel timer ─────────────┤        │        FirewallManager (policy + nat; read back)
//!  firewall resync (jitter) ─┘        │        tunnel::ensure_* (netlink)
//!                                     └──────► route task (RouteCommand)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serval_bgp::speaker::SpeakerError;
use tokio::sync::{mpsc, watch};

use super::sequencer::{DEFAULT_RESTART_TIME, Sequencer};
use crate::calc::cache::ClusterState;
use crate::calc::desired::{Desired, NodeSettings};
use crate::dataplane::route_manager::{RouteCommand, jittered};
use crate::datastore::{AnyBackend, SyncEvent, SyncStatus, Syncer};

/// How often tunnel devices and VXLAN entries are re-checked even without changes.
const TUNNEL_RESYNC: Duration = Duration::from_secs(30);
/// How often our chains, sets and hooks are read back and repaired, with jitter: Felix's
/// ipsetsRefreshInterval and routeRefreshInterval (90 s); its iptablesRefreshInterval is
/// 180 s in code, and SERVAL_IPTABLES_REFRESH_INTERVAL sets ours.
pub const FIREWALL_REFRESH: Duration = Duration::from_secs(90);
/// How long after start learned routes are kept at most while BGP relearns the table.
const SETTLE_DEADLINE: Duration = Duration::from_secs(DEFAULT_RESTART_TIME as u64);

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The speaker task died.
    #[error("BGP speaker: {0}")]
    Speaker(#[from] SpeakerError),
    /// The datastore stream ended.
    #[error("the datastore syncer stopped")]
    SyncerStopped,
    /// The BGP identity changed; the speaker must restart (the DaemonSet restarts us, and
    /// graceful restart keeps the routes meanwhile).
    #[error("the node's BGP identity changed ({0}); restarting to apply it")]
    IdentityChanged(String),
}

/// The speaker's identity, fixed for its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Our AS.
    pub as_number: u32,
    /// Reflector cluster ID, if a reflector.
    pub cluster_id: Option<std::net::Ipv4Addr>,
    /// BGP port.
    pub listen_port: u16,
}

/// Computes the identity `me` should run with.
pub fn identity(state: &ClusterState, me: &str) -> Identity {
    let cfg = state.bgp_resources().effective_config(me);
    let bgp = state.node(me).and_then(|n| n.spec.bgp.clone());
    Identity {
        as_number: bgp
            .as_ref()
            .and_then(|b| b.as_number)
            .unwrap_or(cfg.as_number),
        cluster_id: bgp.and_then(|b| b.cluster_id()),
        listen_port: cfg.listen_port,
    }
}

/// The event loop's state: the cluster picture and what the loop itself drives (secrets,
/// node labels, tunnel addresses, the settle check); applying is the sequencer's.
pub struct Agent {
    /// This node.
    name: String,
    /// The identity the speaker started with.
    identity: Identity,
    /// The node's own settings calc decides with (host MTU, BGP on or off, tunnels).
    settings: NodeSettings,
    /// Set when the first full apply after in-sync is done (`/readyz`).
    ready: watch::Sender<bool>,
    /// Applies what calc decides, in order.
    sequencer: Sequencer,
    state: ClusterState,
    in_sync: bool,
    warned: BTreeSet<String>,
    /// Whether BGP has relearned the table since start (then learned routes may be deleted).
    settled: bool,
    /// How often the firewall state is read back (`SERVAL_IPTABLES_REFRESH_INTERVAL`).
    firewall_refresh: Duration,
    /// SERVAL_NODE_LABELS, kept on top of the Kubernetes Node's labels.
    extra_node_labels: BTreeMap<String, String>,
    /// The write of this node's labels in flight.
    label_write: Option<tokio::task::JoinHandle<()>>,
    /// For writes the agent makes itself (tunnel addresses when a pool starts to need them).
    datastore: Option<crate::datastore::Datastore<AnyBackend>>,
    /// The tunnel-address allocation in flight, and when the last one started.
    tunnel_alloc: Option<(tokio::task::JoinHandle<()>, tokio::time::Instant)>,
    /// serval-node's namespace, where BGP password Secrets live.
    secret_namespace: String,
    /// Secret reads come back here: (name, data or None).
    secrets_tx: mpsc::UnboundedSender<SecretRead>,
    secrets_rx: Option<mpsc::UnboundedReceiver<SecretRead>>,
    /// The Secret names last asked for, and when.
    secrets_asked: Option<(BTreeSet<String>, tokio::time::Instant)>,
}

/// A Secret as read: its name and its data, or None when it is missing or unreadable.
type SecretRead = (String, Option<BTreeMap<String, String>>);

/// How often referenced Secrets are read again (password rotation).
const SECRET_REFRESH: Duration = Duration::from_secs(60);

impl Agent {
    /// An agent for node `name` whose speaker started with `identity`, applying through
    /// `sequencer`; `ready` turns true after the first full apply.
    pub fn new(
        name: String,
        identity: Identity,
        settings: NodeSettings,
        sequencer: Sequencer,
        ready: watch::Sender<bool>,
    ) -> Agent {
        let (secrets_tx, secrets_rx) = mpsc::unbounded_channel();
        Agent {
            name,
            identity,
            settings,
            ready,
            sequencer,
            state: ClusterState::default(),
            in_sync: false,
            warned: BTreeSet::new(),
            settled: false,
            firewall_refresh: FIREWALL_REFRESH,
            extra_node_labels: BTreeMap::new(),
            label_write: None,
            datastore: None,
            tunnel_alloc: None,
            secret_namespace: "kube-system".into(),
            secrets_tx,
            secrets_rx: Some(secrets_rx),
            secrets_asked: None,
        }
    }

    /// How often our iptables chains, ipsets and hooks are read back and repaired.
    pub fn with_firewall_refresh(mut self, every: Duration) -> Agent {
        self.firewall_refresh = every;
        self
    }

    /// Where BGP password Secrets are read (serval-node's own namespace).
    pub fn with_secret_namespace(mut self, namespace: String) -> Agent {
        self.secret_namespace = namespace;
        self
    }

    /// Reads the Secrets BGP passwords name when the set changes and every minute; results
    /// come back as messages. Secrets no longer named are forgotten.
    fn refresh_secrets(&mut self) {
        let names = self.state.secret_names();
        for held in self.state.secrets_held() {
            if !names.contains(&held) {
                self.state.set_secret(&held, None);
            }
        }
        if names.is_empty() {
            self.secrets_asked = None;
            return;
        }
        let due = match &self.secrets_asked {
            Some((asked, at)) => *asked != names || at.elapsed() >= SECRET_REFRESH,
            None => true,
        };
        let Some(ds) = self.datastore.clone().filter(|_| due) else {
            return;
        };
        self.secrets_asked = Some((names.clone(), tokio::time::Instant::now()));
        let (ns, tx) = (self.secret_namespace.clone(), self.secrets_tx.clone());
        tokio::spawn(async move {
            for name in names {
                let read = ds
                    .get::<k8s_openapi::api::core::v1::Secret>(Some(&ns), &name)
                    .await;
                let data = match read {
                    Ok(Some(s)) => Some(crate::calc::cache::secret_strings(&s)),
                    Ok(None) => {
                        tracing::warn!(secret = %name, namespace = %ns, "BGP password Secret not found");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(secret = %name, namespace = %ns, error = %e, "cannot read BGP password Secret");
                        None
                    }
                };
                if tx.send((name, data)).is_err() {
                    return;
                }
            }
        });
    }

    /// Lets the agent allocate tunnel addresses when a pool's IPIP or VXLAN mode is switched
    /// on while it runs (at start-up they are allocated before the agent exists).
    pub fn with_datastore(mut self, ds: crate::datastore::Datastore<AnyBackend>) -> Agent {
        self.datastore = Some(ds);
        self
    }

    /// Starts allocating this node's missing tunnel addresses, at most one attempt at a time
    /// and one per 5 s; the Node update comes back through the syncer like any other.
    fn ensure_tunnel_addresses(&mut self) {
        let Some(ds) = self.datastore.clone() else {
            return;
        };
        let Some(node) = self.state.node(&self.name).cloned() else {
            return;
        };
        let (want_ipip, want_vxlan) = self.state.encapsulation_wanted();
        let has_ipip = node
            .spec
            .bgp
            .as_ref()
            .is_some_and(|b| b.ipv4_ipip_tunnel_addr.is_some());
        let has_vxlan = node.spec.ipv4_vxlan_tunnel_addr.is_some();
        // An IPv6 VXLAN pool added after start-up needs this node's IPv6 VTEP too.
        let want_vxlan_v6 = self.state.vxlan_wanted(true)
            && node.spec.bgp.as_ref().and_then(|b| b.ipv6()).is_some();
        let has_vxlan_v6 = node.spec.ipv6_vxlan_tunnel_addr.is_some();
        if (!want_ipip || has_ipip)
            && (!want_vxlan || has_vxlan)
            && (!want_vxlan_v6 || has_vxlan_v6)
        {
            return;
        }
        if let Some((task, started)) = &self.tunnel_alloc
            && (!task.is_finished() || started.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        let task = tokio::spawn(async move {
            if let Err(e) = super::startup::tunnel_addresses(&ds, node).await {
                tracing::warn!(error = %e, "could not allocate tunnel addresses; will retry");
            }
        });
        self.tunnel_alloc = Some((task, tokio::time::Instant::now()));
    }

    /// Sets SERVAL_NODE_LABELS that also apply on top of the Kubernetes Node's labels.
    pub fn with_node_labels(mut self, labels: BTreeMap<String, String>) -> Agent {
        self.extra_node_labels = labels;
        self
    }

    /// Kubernetes datastore: keeps this node's Serval Node labels equal to its Kubernetes
    /// Node's (plus SERVAL_NODE_LABELS), so nodeSelector and peerSelector follow
    /// `kubectl label node` without a restart. One write at a time; a conflict is retried on
    /// the next change.
    fn sync_node_labels(&mut self) {
        if self.label_write.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Some(want) = self
            .state
            .node_labels_to_write(&self.name, &self.extra_node_labels)
        else {
            return;
        };
        let Some(ds) = self.datastore.clone() else {
            return;
        };
        let name = self.name.clone();
        self.label_write = Some(tokio::spawn(async move {
            let Ok(Some(mut node)) = ds.get::<crate::resources::Node>(None, &name).await else {
                return;
            };
            node.metadata.labels = Some(want);
            match ds.update(&node).await {
                Ok(_) => tracing::info!(node = %name, "node labels follow the Kubernetes Node"),
                Err(e) => tracing::warn!(error = %e, "cannot update the node's labels; will retry"),
            }
        }));
    }

    /// Runs until the syncer or the speaker stops.
    pub async fn run(mut self, backend: AnyBackend) -> Result<(), AgentError> {
        let kubernetes = matches!(backend, AnyBackend::Kubernetes(_));
        let (_syncer, mut events) =
            Syncer::start(backend, crate::calc::cache::watched_kinds_for(kubernetes));
        let mut best = self.sequencer.speaker().subscribe().await?;
        let mut tick = tokio::time::interval(TUNNEL_RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = tokio::time::Instant::now();
        let mut settle = tokio::time::interval(Duration::from_millis(500));
        let _ = self
            .sequencer
            .routes()
            .send(RouteCommand::KeepLearned(true))
            .await;
        let mut secrets = self.secrets_rx.take().expect("run is called once");
        let mut next_firewall_resync =
            tokio::time::Instant::now() + jittered(self.firewall_refresh);
        loop {
            let mut dirty = false;
            tokio::select! {
                Some((name, data)) = secrets.recv() => {
                    dirty |= self.state.set_secret(&name, data);
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { return Err(AgentError::SyncerStopped) };
                    dirty |= self.on_event(ev).await;
                    while let Ok(ev) = events.try_recv() {
                        dirty |= self.on_event(ev).await;
                    }
                }
                changes = best.recv() => {
                    let Some(changes) = changes else {
                        return Err(AgentError::Speaker(SpeakerError::Stopped));
                    };
                    dirty |= self.state.apply_best_paths(&changes);
                    while let Ok(more) = best.try_recv() {
                        dirty |= self.state.apply_best_paths(&more);
                    }
                }
                _ = tick.tick() => {
                    // Tunnel devices and VTEPs are ensured again on every reconcile.
                    dirty = true;
                }
                _ = tokio::time::sleep_until(next_firewall_resync) => {
                    next_firewall_resync = tokio::time::Instant::now() + jittered(self.firewall_refresh);
                    self.sequencer.resync_firewall().await;
                }
                _ = settle.tick(), if !self.settled && self.in_sync => {
                    self.check_settled(started.elapsed() >= SETTLE_DEADLINE).await?;
                }
            }
            if dirty {
                self.sync_node_labels();
            }
            if dirty && self.in_sync {
                let now = identity(&self.state, &self.name);
                if now != self.identity {
                    return Err(AgentError::IdentityChanged(format!(
                        "{:?} -> {:?}",
                        self.identity, now
                    )));
                }
                self.reconcile().await?;
            }
        }
    }

    async fn on_event(&mut self, ev: SyncEvent) -> bool {
        if let SyncEvent::Status(s) = &ev {
            tracing::info!(status = ?s, "datastore sync status");
            self.sequencer
                .metrics()
                .datastore_in_sync
                .set(i64::from(*s == SyncStatus::InSync));
            if *s == SyncStatus::InSync && !self.in_sync {
                self.in_sync = true;
                let _ = self.sequencer.routes().send(RouteCommand::InSync).await;
                return true;
            }
            return false;
        }
        self.state.apply(&ev)
    }

    /// Learned routes may be deleted once every session is up and has sent End-of-RIB (the
    /// table is complete), or when the deadline passed.
    async fn check_settled(&mut self, deadline_passed: bool) -> Result<(), AgentError> {
        let status = self.sequencer.speaker().status().await?;
        let complete = status
            .peers
            .iter()
            .filter(|p| self.sequencer.peers().contains_key(&p.address))
            .all(|p| {
                p.state == serval_bgp::fsm::State::Established && !p.end_of_rib_received.is_empty()
            });
        if complete || deadline_passed {
            tracing::info!(
                complete,
                "BGP table relearned; stale learned routes may now be removed"
            );
            self.settled = true;
            let _ = self
                .sequencer
                .routes()
                .send(RouteCommand::KeepLearned(false))
                .await;
        }
        Ok(())
    }

    fn warn_once(&mut self, what: String) {
        if self.warned.insert(what.clone()) {
            tracing::warn!("{what}");
        }
    }

    async fn reconcile(&mut self) -> Result<(), AgentError> {
        let desired = match self.state.desired_with(&self.name, &self.settings) {
            Ok(d) => d,
            Err(e) => {
                self.warn_once(format!("cannot compute this node's state yet: {e}"));
                return Ok(());
            }
        };
        self.record_ipam(&desired);
        self.ensure_tunnel_addresses();
        self.refresh_secrets();
        self.sequencer.apply(&desired).await?;
        self.ready.send_replace(true);
        Ok(())
    }

    fn record_ipam(&self, d: &Desired) {
        let blocks = self.state.node_blocks(&self.name);
        let capacity: u64 = blocks
            .iter()
            .map(|b| 1u64 << (u32::from(b.max_prefix_len() - b.prefix_len())).min(63))
            .sum();
        self.sequencer
            .metrics()
            .ipam_blocks
            .set(blocks.len() as i64);
        self.sequencer
            .metrics()
            .ipam_addresses_capacity
            .set(capacity as i64);
        let in_use: usize = d.policy.local.iter().map(|e| e.addrs.len()).sum();
        self.sequencer
            .metrics()
            .ipam_addresses_in_use
            .set(in_use as i64);
    }
}
