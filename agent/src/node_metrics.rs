//! The node agent's own metrics (beyond the speaker's, which are rendered from its status
//! snapshot): dataplane apply latencies, resyncs and drift, policy size, IPAM usage and the
//! datastore sync state. Prometheus types are atomics, so the agent and the route task
//! record into them directly and the HTTP handler registers clones at scrape time.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::dataplane::route_manager::RouteStats;

/// The agent's metric handles (cheap to clone; all clones share the values).
#[derive(Clone)]
pub struct NodeMetrics {
    /// Seconds per route-manager apply.
    pub route_apply_seconds: Histogram,
    /// Seconds per policy apply (kernel writes).
    pub policy_apply_seconds: Histogram,
    /// Seconds per policy compile.
    pub policy_compile_seconds: Histogram,
    /// Full re-reads of the kernel route table.
    pub route_resyncs: Counter,
    /// Routes the resync found wrong or missing and repaired.
    pub route_drift_repaired: Counter,
    /// Routes written.
    pub route_writes: Counter,
    /// Route writes that failed.
    pub route_write_failures: Counter,
    /// Desired routes held back because another owner's route holds the destination.
    pub route_conflicts: Gauge,
    /// Which destinations those are, for `/status` (the route task publishes them).
    pub route_conflict_list: std::sync::Arc<tokio::sync::watch::Sender<Vec<ipnet::IpNet>>>,
    /// Serval's iptables rules (IPv4 + IPv6).
    pub policy_rules: Gauge,
    /// Serval's ipsets.
    pub policy_ipsets: Gauge,
    /// Policies that did not translate and are enforced as deny-all stand-ins.
    pub policy_failed_closed: Gauge,
    /// IPAM blocks affine to this node.
    pub ipam_blocks: Gauge,
    /// Pod addresses in use on this node.
    pub ipam_addresses_in_use: Gauge,
    /// Addresses in this node's blocks.
    pub ipam_addresses_capacity: Gauge,
    /// 1 when the datastore is in sync.
    pub datastore_in_sync: Gauge,
    /// Read-backs of our iptables chains, ipsets and hooks.
    pub firewall_resyncs: Counter,
    /// What those read-backs found changed by someone else and repaired, by kind.
    pub firewall_drift: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        // 1 ms .. ~16 s.
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        NodeMetrics {
            route_apply_seconds: buckets(),
            policy_apply_seconds: buckets(),
            policy_compile_seconds: buckets(),
            route_resyncs: Counter::default(),
            route_drift_repaired: Counter::default(),
            route_writes: Counter::default(),
            route_write_failures: Counter::default(),
            route_conflicts: Gauge::default(),
            route_conflict_list: std::sync::Arc::new(tokio::sync::watch::channel(Vec::new()).0),
            policy_rules: Gauge::default(),
            policy_ipsets: Gauge::default(),
            policy_failed_closed: Gauge::default(),
            ipam_blocks: Gauge::default(),
            ipam_addresses_in_use: Gauge::default(),
            ipam_addresses_capacity: Gauge::default(),
            datastore_in_sync: Gauge::default(),
            firewall_resyncs: Counter::default(),
            firewall_drift: Family::default(),
        }
    }
}

impl NodeMetrics {
    /// Registers every metric (clones share values) into `reg`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "serval_route_apply_duration_seconds",
            "Time to apply the desired route table to the kernel",
            self.route_apply_seconds.clone(),
        );
        reg.register(
            "serval_policy_apply_duration_seconds",
            "Time to write changed policy ipsets and chains to the kernel",
            self.policy_apply_seconds.clone(),
        );
        reg.register(
            "serval_policy_compile_duration_seconds",
            "Time to compile policies and endpoints into rules",
            self.policy_compile_seconds.clone(),
        );
        reg.register(
            "serval_route_resyncs",
            "Full re-reads of the kernel route table",
            self.route_resyncs.clone(),
        );
        reg.register(
            "serval_route_drift_repaired",
            "Routes found wrong or missing by a resync and repaired",
            self.route_drift_repaired.clone(),
        );
        reg.register(
            "serval_route_writes",
            "Routes written to the kernel",
            self.route_writes.clone(),
        );
        reg.register(
            "serval_route_write_failures",
            "Route writes that failed (retried)",
            self.route_write_failures.clone(),
        );
        reg.register(
            "serval_route_conflicts",
            "Routes not installed because another owner's route holds the destination and metric",
            self.route_conflicts.clone(),
        );
        reg.register(
            "serval_policy_rules",
            "iptables rules Serval owns (IPv4 and IPv6)",
            self.policy_rules.clone(),
        );
        reg.register(
            "serval_policy_ipsets",
            "ipsets Serval owns",
            self.policy_ipsets.clone(),
        );
        reg.register(
            "serval_policy_failed_closed",
            "Policies that could not be translated and deny everything they govern until fixed",
            self.policy_failed_closed.clone(),
        );
        reg.register(
            "serval_ipam_blocks",
            "IPAM blocks affine to this node",
            self.ipam_blocks.clone(),
        );
        reg.register(
            "serval_ipam_addresses_in_use",
            "Pod addresses in use on this node",
            self.ipam_addresses_in_use.clone(),
        );
        reg.register(
            "serval_ipam_addresses_capacity",
            "Addresses in the blocks affine to this node",
            self.ipam_addresses_capacity.clone(),
        );
        reg.register(
            "serval_iptables_resyncs",
            "Read-backs of Serval's iptables chains, ipsets and hooks",
            self.firewall_resyncs.clone(),
        );
        reg.register(
            "serval_iptables_drift_repaired",
            "Chains, ipsets and hooks of Serval's found changed by something else and repaired",
            self.firewall_drift.clone(),
        );
        reg.register(
            "serval_datastore_in_sync",
            "1 when the datastore syncer is in sync",
            self.datastore_in_sync.clone(),
        );
    }

    /// Counts what a firewall resync repaired.
    pub fn record_firewall_drift(&self, r: &crate::dataplane::firewall::Repairs) {
        for (kind, n) in [("chain", r.chains), ("set", r.sets), ("hook", r.hooks)] {
            self.firewall_drift
                .get_or_create(&vec![("kind", kind)])
                .inc_by(n as u64);
        }
    }

    /// Folds a route-task stats update in (counters move by the difference).
    pub fn record_routes(&self, before: &RouteStats, now: &RouteStats) {
        self.route_resyncs
            .inc_by(now.resyncs.saturating_sub(before.resyncs));
        self.route_drift_repaired
            .inc_by(now.drift.saturating_sub(before.drift));
        self.route_writes
            .inc_by((now.written + now.deleted).saturating_sub(before.written + before.deleted));
        self.route_write_failures
            .inc_by(now.failed.saturating_sub(before.failed));
        self.route_conflicts
            .set(i64::try_from(now.conflicts).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_follow_prometheus_naming_and_move() {
        let m = NodeMetrics::default();
        m.route_apply_seconds.observe(0.004);
        m.record_routes(
            &RouteStats::default(),
            &RouteStats {
                written: 3,
                deleted: 1,
                failed: 1,
                resyncs: 2,
                drift: 1,
                conflicts: 1,
            },
        );
        m.datastore_in_sync.set(1);
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains("serval_route_apply_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("serval_route_writes_total 4"), "{text}");
        assert!(text.contains("serval_route_resyncs_total 2"), "{text}");
        assert!(
            text.contains("serval_route_drift_repaired_total 1"),
            "{text}"
        );
        assert!(text.contains("serval_datastore_in_sync 1"), "{text}");
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(name.starts_with("serval_"), "{line}");
        }
    }
}
