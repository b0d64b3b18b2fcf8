//! The sequencer: applies a [`Desired`] to the managers in a safe order and keeps only what
//! each one was last given (so it writes differences). BGP sessions first, then the prefixes
//! announced on them; then policy and NAT (ipsets before the chains that use them, inside
//! the firewall manager), so a new pod's route never exists without its policy; then tunnel
//! devices and VTEPs, then the routes over them; last the pod MTU file serval-cni reads.
//! Deletions happen inside each step in reverse (a hook before its chain, a chain before its
//! sets; routes over a tunnel go with the route table before the device changes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serval_bgp::config::{LocalRoute, PeerConfig};
use serval_bgp::speaker::{SpeakerError, SpeakerHandle};
use serval_policy::compile::{IncrementalCompiler, PolicyInputs};
use serval_policy::nat::NatSpec;
use tokio::sync::mpsc;

use crate::calc::desired::Desired;
use crate::dataplane::DataplaneError;
use crate::dataplane::firewall::FirewallManager;
use crate::dataplane::netlink::Netlink;
use crate::dataplane::route_manager::RouteCommand;
use crate::dataplane::tunnel;

/// Sets the BGP speaker's log level (`None`: back to the process's own), for
/// BGPConfiguration `logSeverityScreen`.
pub type BgpLogControl = std::sync::Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// Graceful-restart time for sessions that do not set one (BIRD's and Calico's 120 s).
pub const DEFAULT_RESTART_TIME: u16 = 120;

/// The managers and what each was last given.
pub struct Sequencer {
    metrics: crate::node_metrics::NodeMetrics,
    speaker: SpeakerHandle,
    routes: mpsc::Sender<RouteCommand>,
    netlink: Netlink,
    /// Where the pod MTU file goes.
    var_dir: PathBuf,
    /// BGP sessions as configured on the speaker.
    peers: BTreeMap<IpAddr, PeerConfig>,
    /// Announced prefixes and the communities they were announced with.
    exports: BTreeMap<IpNet, crate::calc::bgp_export::Communities>,
    /// The speaker's import/export policy (it starts with the default one).
    route_policy: crate::calc::bgp_export::NodeRoutePolicy,
    mtu_written: Option<u32>,
    /// The iptables and ipset manager (created with the detected backend on first use).
    firewall: Option<FirewallManager>,
    /// The policy inputs and natOutgoing pools last applied.
    firewall_written: Option<(PolicyInputs, NatSpec)>,
    /// Policy compilers (IPv4, IPv6) that patch their last output on label changes.
    compilers: [IncrementalCompiler; 2],
    /// Policies last reported as failed closed (key → why), to log each change once.
    policy_failures_reported: BTreeMap<String, String>,
    /// Objects whose rules the kernel refused at the last apply (enforced as fail-closed).
    policy_refused: BTreeMap<String, String>,
    warned: BTreeSet<String>,
    /// SERVAL_IPTABLES_BACKEND: `auto`, `nft` or `legacy`.
    iptables_backend: String,
    /// Where the speaker's log level is set, and the level last set.
    bgp_log: Option<(BgpLogControl, Option<&'static str>)>,
}

impl Sequencer {
    /// A sequencer that has applied nothing yet.
    pub fn new(
        metrics: crate::node_metrics::NodeMetrics,
        speaker: SpeakerHandle,
        routes: mpsc::Sender<RouteCommand>,
        netlink: Netlink,
        var_dir: PathBuf,
    ) -> Sequencer {
        Sequencer {
            metrics,
            speaker,
            routes,
            netlink,
            var_dir,
            peers: BTreeMap::new(),
            exports: BTreeMap::new(),
            route_policy: crate::calc::bgp_export::NodeRoutePolicy::default(),
            mtu_written: None,
            firewall: None,
            firewall_written: None,
            compilers: [
                IncrementalCompiler::new(false),
                IncrementalCompiler::new(true),
            ],
            policy_failures_reported: BTreeMap::new(),
            policy_refused: BTreeMap::new(),
            warned: BTreeSet::new(),
            iptables_backend: "auto".into(),
            bgp_log: None,
        }
    }

    /// Applies BGPConfiguration `logSeverityScreen` through `control`.
    pub fn with_bgp_log_control(mut self, control: BgpLogControl) -> Sequencer {
        self.bgp_log = Some((control, None));
        self
    }

    /// Uses these iptables binaries (`nft`, `legacy`) or the host's (`auto`).
    pub fn with_iptables_backend(mut self, setting: String) -> Sequencer {
        self.iptables_backend = setting;
        self
    }

    /// The speaker the sessions and announcements go to.
    pub fn speaker(&self) -> &SpeakerHandle {
        &self.speaker
    }

    /// The route task's inbox.
    pub fn routes(&self) -> &mpsc::Sender<RouteCommand> {
        &self.routes
    }

    /// Where the node's metrics are recorded.
    pub fn metrics(&self) -> &crate::node_metrics::NodeMetrics {
        &self.metrics
    }

    /// The BGP sessions configured, by peer address.
    pub fn peers(&self) -> &BTreeMap<IpAddr, PeerConfig> {
        &self.peers
    }

    /// Applies `desired` in order; only the speaker's failure stops it (the other managers
    /// log, count and retry on the next pass).
    pub async fn apply(&mut self, desired: &Desired) -> Result<(), SpeakerError> {
        if let Some((control, level)) = &mut self.bgp_log
            && *level != desired.bgp_log_level
        {
            tracing::info!(level = ?desired.bgp_log_level, "BGP log level (BGPConfiguration logSeverityScreen)");
            control(desired.bgp_log_level);
            *level = desired.bgp_log_level;
        }
        // The filter first: service routes are refused before any are announced or learned.
        if self.route_policy != desired.route_policy {
            tracing::info!(service_ranges = ?desired.route_policy.service_ranges, filtered_peers = desired.route_policy.peer_filters.len(), "BGP route policy");
            for (peer, state) in &desired.route_policy.peer_filters {
                if let crate::calc::bgp_filter::PeerFilterState::Closed(why) = state {
                    tracing::error!(%peer, error = %why, "BGP filter cannot be applied: nothing is taken from or sent to this peer until it is fixed");
                }
            }
            self.speaker
                .set_policy(std::sync::Arc::new(desired.route_policy.clone()))
                .await?;
            self.route_policy = desired.route_policy.clone();
        }
        self.apply_peers(desired).await?;
        self.apply_exports(desired).await?;
        self.apply_firewall(desired).await;
        self.apply_tunnels(desired).await;
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
        Ok(())
    }

    fn warn_once(&mut self, what: String) {
        if self.warned.insert(what.clone()) {
            tracing::warn!("{what}");
        }
    }

    async fn apply_peers(&mut self, d: &Desired) -> Result<(), SpeakerError> {
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
                Err(e) => return Err(e),
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
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn apply_exports(&mut self, d: &Desired) -> Result<(), SpeakerError> {
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
            tracing::info!(prefix = %prefix, communities = ?want, "announcing");
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

    /// The firewall manager, created with the host's iptables backend on first use.
    async fn firewall(&mut self) -> &mut FirewallManager {
        if self.firewall.is_none() {
            let b = crate::dataplane::firewall::detect_backend(&self.iptables_backend).await;
            tracing::info!(backend = b.iptables(false), "iptables backend");
            self.firewall = Some(FirewallManager::new(b));
        }
        self.firewall.as_mut().expect("just created")
    }

    /// Reads our chains, sets and hooks back and repairs what someone else changed.
    pub async fn resync_firewall(&mut self) {
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
        let nat = (
            serval_policy::nat::nat_ruleset(&d.nat, false),
            serval_policy::nat::nat_ruleset(&d.nat, true),
        );
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
        for (vx, vteps) in [(&d.vxlan, &d.vteps), (&d.vxlan_v6, &d.vteps_v6)] {
            let Some(vx) = vx else { continue };
            match tunnel::ensure_vxlan(&self.netlink, vx).await {
                Ok(index) => {
                    if let Err(e) = tunnel::ensure_vteps(&self.netlink, index, vteps).await {
                        tracing::warn!(device = %vx.name, error = %e, "VXLAN neighbour/FDB entries");
                    }
                }
                Err(e) => tracing::warn!(device = %vx.name, error = %e, "VXLAN device"),
            }
        }
    }
}
