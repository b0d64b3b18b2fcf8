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
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serval_bgp::config::{LocalRoute, PeerConfig};
use serval_bgp::speaker::{SpeakerError, SpeakerHandle};
use serval_policy::compile::IncrementalCompiler;
use serval_policy::nat::NatSpec;
use tokio::sync::{mpsc, watch};

use crate::calc::cache::ClusterState;
use crate::calc::desired::Desired;
use crate::dataplane::DataplaneError;
use crate::dataplane::firewall::FirewallManager;
use crate::dataplane::netlink::Netlink;
use crate::dataplane::route_manager::{RouteCommand, jittered};
use crate::dataplane::tunnel;
use crate::datastore::{AnyBackend, SyncEvent, SyncStatus, Syncer};

/// How often tunnel devices and VXLAN entries are re-checked even without changes.
const TUNNEL_RESYNC: Duration = Duration::from_secs(30);
/// How often our chains, sets and hooks are read back and repaired (Felix's
/// `iptablesRefreshInterval` default), with jitter.
pub const FIREWALL_REFRESH: Duration = Duration::from_secs(90);
/// Graceful-restart time for sessions that do not set one (BIRD's and Calico's 120 s).
pub const DEFAULT_RESTART_TIME: u16 = 120;
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
    pub cluster_id: Option<String>,
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
        cluster_id: bgp.and_then(|b| b.route_reflector_cluster_id),
        listen_port: cfg.listen_port,
    }
}

/// The agent's inputs and applied state.
pub struct Agent {
    /// This node.
    pub name: String,
    /// The speaker.
    pub speaker: SpeakerHandle,
    /// The identity the speaker started with.
    pub identity: Identity,
    /// The host interface's MTU.
    pub host_mtu: u32,
    /// The route task's inbox.
    pub routes: mpsc::Sender<RouteCommand>,
    /// Netlink for tunnel devices.
    pub netlink: Netlink,
    /// Where the pod MTU file goes.
    pub var_dir: PathBuf,
    /// Set when the first full apply after in-sync is done (`/readyz`).
    pub ready: watch::Sender<bool>,
    state: ClusterState,
    in_sync: bool,
    peers: BTreeMap<IpAddr, PeerConfig>,
    /// Announced prefixes and the communities they were announced with.
    exports: BTreeMap<IpNet, crate::calc::bgp_export::Communities>,
    mtu_written: Option<u32>,
    warned: BTreeSet<String>,
    /// Whether BGP has relearned the table since start (then learned routes may be deleted).
    settled: bool,
    /// The iptables and ipset manager (created with the detected backend on first use).
    firewall: Option<FirewallManager>,
    /// The policy inputs and natOutgoing pools last applied.
    firewall_written: Option<(serval_policy::compile::PolicyInputs, NatSpec)>,
    /// Policy compilers (IPv4, IPv6) that patch their last output on label changes.
    compilers: [IncrementalCompiler; 2],
    /// How often the firewall state is read back (`SERVAL_IPTABLES_REFRESH_INTERVAL`).
    firewall_refresh: Duration,
    /// Policies last reported as failed closed (key → why), to log each change once.
    policy_failures_reported: BTreeMap<String, String>,
    /// Objects whose rules the kernel refused at the last apply (enforced as fail-closed).
    policy_refused: BTreeMap<String, String>,
    /// SERVAL_NODE_LABELS, kept on top of the Kubernetes Node's labels.
    extra_node_labels: BTreeMap<String, String>,
    /// The write of this node's labels in flight.
    label_write: Option<tokio::task::JoinHandle<()>>,
    /// Where the agent records its metrics.
    metrics: crate::node_metrics::NodeMetrics,
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
    /// An agent with nothing applied yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        metrics: crate::node_metrics::NodeMetrics,
        name: String,
        speaker: SpeakerHandle,
        identity: Identity,
        host_mtu: u32,
        routes: mpsc::Sender<RouteCommand>,
        netlink: Netlink,
        var_dir: PathBuf,
        ready: watch::Sender<bool>,
    ) -> Agent {
        let (secrets_tx, secrets_rx) = mpsc::unbounded_channel();
        Agent {
            metrics,
            name,
            speaker,
            identity,
            host_mtu,
            routes,
            netlink,
            var_dir,
            ready,
            state: ClusterState::default(),
            in_sync: false,
            peers: BTreeMap::new(),
            exports: BTreeMap::new(),
            mtu_written: None,
            warned: BTreeSet::new(),
            settled: false,
            firewall: None,
            firewall_written: None,
            firewall_refresh: FIREWALL_REFRESH,
            compilers: [
                IncrementalCompiler::new(false),
                IncrementalCompiler::new(true),
            ],
            policy_failures_reported: BTreeMap::new(),
            policy_refused: BTreeMap::new(),
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
        if (!want_ipip || has_ipip) && (!want_vxlan || has_vxlan) {
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
        let mut best = self.speaker.subscribe().await?;
        let mut tick = tokio::time::interval(TUNNEL_RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = tokio::time::Instant::now();
        let mut settle = tokio::time::interval(Duration::from_millis(500));
        let _ = self.routes.send(RouteCommand::KeepLearned(true)).await;
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
                    self.resync_firewall().await;
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
            self.metrics
                .datastore_in_sync
                .set(i64::from(*s == SyncStatus::InSync));
            if *s == SyncStatus::InSync && !self.in_sync {
                self.in_sync = true;
                let _ = self.routes.send(RouteCommand::InSync).await;
                return true;
            }
            return false;
        }
        self.state.apply(&ev)
    }

    /// Learned routes may be deleted once every session is up and has sent End-of-RIB (the
    /// table is complete), or when the deadline passed.
    async fn check_settled(&mut self, deadline_passed: bool) -> Result<(), AgentError> {
        let status = self.speaker.status().await?;
        let complete = status
            .peers
            .iter()
            .filter(|p| self.peers.contains_key(&p.address))
            .all(|p| {
                p.state == serval_bgp::fsm::State::Established && !p.end_of_rib_received.is_empty()
            });
        if complete || deadline_passed {
            tracing::info!(
                complete,
                "BGP table relearned; stale learned routes may now be removed"
            );
            self.settled = true;
            let _ = self.routes.send(RouteCommand::KeepLearned(false)).await;
        }
        Ok(())
    }

    fn warn_once(&mut self, what: String) {
        if self.warned.insert(what.clone()) {
            tracing::warn!("{what}");
        }
    }

    async fn reconcile(&mut self) -> Result<(), AgentError> {
        let desired = match self.state.desired(&self.name, self.host_mtu) {
            Ok(d) => d,
            Err(e) => {
                self.warn_once(format!("cannot compute this node's state yet: {e}"));
                return Ok(());
            }
        };
        self.record_ipam(&desired);
        self.ensure_tunnel_addresses();
        self.refresh_secrets();
        self.apply_peers(&desired).await?;
        self.apply_exports(&desired).await?;
        // Felix's order: policy (ipsets, then chains) before routes, so a new pod's route
        // never exists without its policy.
        self.apply_firewall(&desired).await;
        self.apply_tunnels(&desired).await;
        let _ = self
            .routes
            .send(RouteCommand::Desired(desired.routes.clone()))
            .await;
        if self.mtu_written != Some(desired.pod_mtu) {
            let path = self.var_dir.join("mtu");
            match super::startup::write_file(&path, &desired.pod_mtu.to_string()) {
                Ok(()) => self.mtu_written = Some(desired.pod_mtu),
                Err(e) => self.warn_once(e.to_string()),
            }
        }
        self.ready.send_replace(true);
        Ok(())
    }

    async fn apply_peers(&mut self, d: &Desired) -> Result<(), AgentError> {
        let want: BTreeMap<IpAddr, PeerConfig> = d
            .peers
            .iter()
            .map(|p| {
                let mut c = p.config.clone();
                // The status table's PEER TYPE column, as calicoctl node status shows it.
                c.description = Some(p.peer_type.to_string());
                c.graceful_restart_time.get_or_insert(DEFAULT_RESTART_TIME);
                for u in &p.unsupported {
                    self.warned
                        .insert(format!("peer {}: {u}", c.address))
                        .then(|| tracing::warn!(peer = %c.address, "{u}"));
                }
                (c.address, c)
            })
            .collect();
        let gone: Vec<IpAddr> = self
            .peers
            .keys()
            .filter(|a| !want.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            tracing::info!(peer = %addr, "removing BGP peer");
            match self.speaker.remove_peer(addr).await {
                Ok(()) | Err(SpeakerError::UnknownPeer(_)) => {}
                Err(e) => return Err(e.into()),
            }
            self.peers.remove(&addr);
        }
        for (addr, cfg) in want {
            let res = match self.peers.get(&addr) {
                None => {
                    tracing::info!(peer = %addr, kind = ?cfg.description, "adding BGP peer");
                    self.speaker.add_peer(cfg.clone()).await
                }
                Some(old) if *old != cfg => self.speaker.update_peer(cfg.clone()).await,
                Some(_) => continue,
            };
            match res {
                Ok(()) => {
                    self.peers.insert(addr, cfg);
                }
                Err(SpeakerError::Config(e)) => {
                    self.warn_once(format!("peer {addr} rejected by the speaker: {e}"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn apply_exports(&mut self, d: &Desired) -> Result<(), AgentError> {
        let gone: Vec<IpNet> = self
            .exports
            .keys()
            .filter(|p| !d.exports.contains(p))
            .copied()
            .collect();
        for prefix in gone {
            self.speaker.withdraw(prefix).await?;
            self.exports.remove(&prefix);
        }
        for prefix in &d.exports {
            let want = d.communities.for_prefix(prefix);
            if self.exports.get(prefix) == Some(&want) {
                continue;
            }
            // New, or its communities changed: announcing again replaces the route.
            tracing::info!(block = %prefix, communities = ?want, "announcing block");
            self.speaker
                .announce(LocalRoute {
                    prefix: *prefix,
                    next_hop: None,
                    med: None,
                    local_pref: None,
                    communities: want.standard.clone(),
                    large_communities: want.large.clone(),
                })
                .await?;
            self.exports.insert(*prefix, want);
        }
        Ok(())
    }

    fn record_ipam(&self, d: &Desired) {
        let blocks = self.state.node_blocks(&self.name);
        let capacity: u64 = blocks
            .iter()
            .map(|b| 1u64 << (u32::from(b.max_prefix_len() - b.prefix_len())).min(63))
            .sum();
        self.metrics.ipam_blocks.set(blocks.len() as i64);
        self.metrics.ipam_addresses_capacity.set(capacity as i64);
        let in_use: usize = d.policy.local.iter().map(|e| e.addrs.len()).sum();
        self.metrics.ipam_addresses_in_use.set(in_use as i64);
    }

    /// The firewall manager, created with the host's iptables backend on first use.
    async fn firewall(&mut self) -> &mut FirewallManager {
        if self.firewall.is_none() {
            let b = crate::dataplane::firewall::detect_backend().await;
            tracing::info!(backend = b.iptables(false), "iptables backend");
            self.firewall = Some(FirewallManager::new(b));
        }
        self.firewall.as_mut().expect("just created")
    }

    /// Reads our chains, sets and hooks back and repairs what someone else changed.
    async fn resync_firewall(&mut self) {
        let Some(manager) = self.firewall.as_mut() else {
            return; // nothing written yet
        };
        self.metrics.firewall_resyncs.inc();
        match manager.resync().await {
            Ok(r) if r.repairs.is_empty() => {}
            Ok(r) => {
                self.metrics.record_firewall_drift(&r.repairs);
                tracing::warn!(
                    chains = r.repairs.chains,
                    sets = r.repairs.sets,
                    hooks = r.repairs.hooks,
                    "iptables/ipset drift repaired (changed by something other than Serval)"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "iptables/ipset resync failed; will read back at the next apply")
            }
        }
    }

    /// Logs each newly failed-closed object once and keeps the gauge current.
    fn report_policy_failures(&mut self, failures: BTreeMap<String, String>) {
        if self.policy_failures_reported == failures {
            return;
        }
        for (key, why) in &failures {
            if self.policy_failures_reported.get(key) != Some(why) {
                tracing::error!(
                    object = %key,
                    error = %why,
                    "cannot be enforced as written; what it governs is denied until it is fixed"
                );
            }
        }
        self.metrics.policy_failed_closed.set(failures.len() as i64);
        self.policy_failures_reported = failures;
    }

    /// Writes policy (filter table) and natOutgoing (nat table) through the firewall manager.
    async fn apply_firewall(&mut self, d: &Desired) {
        if self
            .firewall_written
            .as_ref()
            .is_some_and(|(p, n)| *p == d.policy && *n == d.nat)
        {
            let mut all = d.policy_failures.clone();
            all.extend(self.policy_refused.clone());
            self.report_policy_failures(all);
            return;
        }
        let compile_start = std::time::Instant::now();
        let v4 = self.compilers[0].update(&d.policy).clone();
        let v6 = self.compilers[1].update(&d.policy).clone();
        let compiled = compile_start.elapsed();
        self.metrics
            .policy_compile_seconds
            .observe(compiled.as_secs_f64());
        let rules: usize = v4
            .chains
            .values()
            .chain(v6.chains.values())
            .map(|c| c.len())
            .sum();
        self.metrics.policy_rules.set(rules as i64);
        self.metrics
            .policy_ipsets
            .set((v4.sets.len() + v6.sets.len()) as i64);
        let nat = serval_policy::nat::nat_ruleset(&d.nat);
        let manager = self.firewall().await;
        let result = crate::dataplane::policy::apply_failing_closed(
            manager,
            &d.policy,
            (v4, v6),
            &nat,
            crate::calc::policy::fail_closed_def,
        )
        .await;
        let mut all = d.policy_failures.clone();
        match result {
            Ok((r, refused)) => {
                all.extend(refused.clone());
                self.policy_refused = refused;
                self.metrics
                    .policy_apply_seconds
                    .observe(r.took.as_secs_f64());
                if !r.repairs.is_empty() {
                    tracing::info!(
                        chains = r.repairs.chains,
                        sets = r.repairs.sets,
                        hooks = r.repairs.hooks,
                        "read the kernel back: stale or altered chains, sets and hooks of ours replaced"
                    );
                }
                tracing::debug!(
                    chains = r.chains_written,
                    deleted = r.chains_deleted,
                    sets = r.sets_changed,
                    compile_ms = compiled.as_secs_f64() * 1e3,
                    apply_ms = r.took.as_secs_f64() * 1e3,
                    "policy applied"
                );
                self.firewall_written = Some((d.policy.clone(), d.nat.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "policy not applied; will read the kernel back and retry")
            }
        }
        self.report_policy_failures(all);
    }

    async fn apply_tunnels(&mut self, d: &Desired) {
        if let Some(ipip) = &d.ipip {
            match tunnel::ensure_ipip(&self.netlink, ipip).await {
                Ok(_) => {}
                Err(DataplaneError::Unsupported(why)) => self.warn_once(why),
                Err(e) => tracing::warn!(error = %e, "IPIP device"),
            }
        }
        if let Some(vx) = &d.vxlan {
            match tunnel::ensure_vxlan(&self.netlink, vx).await {
                Ok(index) => {
                    if let Err(e) = tunnel::ensure_vteps(&self.netlink, index, &d.vteps).await {
                        tracing::warn!(error = %e, "VXLAN neighbour/FDB entries");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "VXLAN device"),
            }
        }
    }
}
