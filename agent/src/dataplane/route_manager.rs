//! The route manager: owns Serval's kernel routes. It keeps the desired table and a cached
//! copy of the kernel's (Serval-protocol routes only), writes the difference in one batch,
//! re-reads the kernel on a jittered resync to repair drift (someone deleted a route: it
//! comes back), and does nothing until the datastore is in sync: the first apply after that
//! is the start-up sweep that removes routes a previous run left behind.
//!
//! It never overwrites or deletes a route it does not own: a destination new to our table
//! is *created* (the kernel refuses if another protocol's route holds the same destination
//! and metric), only our own routes are replaced, and deletes name our protocol. A refused
//! destination is held back (not retried until the next resync), counted and listed for
//! `/status`, and logged once.
//!
//! ```text
//!  RouteCommand (Desired / InSync / Resync) ─► run() ─► RouteManager::apply ─► RouteKernel
//!                     resync timer (jitter) ──┘     retry timer on failures ──┘
//! ```

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::DataplaneError;
use super::netlink::Netlink;
use super::route_table::plan;
use crate::calc::kernel_table::{KernelRoute, KernelTable};

/// The kernel side of the route manager, so the manager is tested without a kernel.
pub trait RouteKernel: Send + Sync {
    /// Serval's routes as the kernel has them.
    fn dump(&self) -> impl Future<Output = Result<KernelTable, DataplaneError>> + Send;
    /// Creates (never over another owner's route), replaces (our routes) and deletes (ours);
    /// returns the routes that failed.
    fn write(
        &self,
        create: &[KernelRoute],
        replace: &[KernelRoute],
        delete: &[KernelRoute],
    ) -> impl Future<Output = Result<Vec<(KernelRoute, DataplaneError)>, DataplaneError>> + Send;
}

impl RouteKernel for Netlink {
    async fn dump(&self) -> Result<KernelTable, DataplaneError> {
        self.routes().await
    }
    async fn write(
        &self,
        create: &[KernelRoute],
        replace: &[KernelRoute],
        delete: &[KernelRoute],
    ) -> Result<Vec<(KernelRoute, DataplaneError)>, DataplaneError> {
        self.apply_routes(create, replace, delete).await
    }
}

/// Counters the metrics endpoint exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Routes written (replace).
    pub written: u64,
    /// Routes deleted.
    pub deleted: u64,
    /// Writes that failed (retried later).
    pub failed: u64,
    /// Full re-reads of the kernel table.
    pub resyncs: u64,
    /// Differences found by a resync that the cache did not expect (drift repaired).
    pub drift: u64,
    /// Desired routes held back now because another owner's route holds the destination.
    pub conflicts: u64,
}

/// What one apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Skipped: the datastore is not in sync yet.
    pub waiting: bool,
    /// Whether the kernel was re-read first.
    pub resynced: bool,
    /// Routes written.
    pub written: usize,
    /// Routes deleted.
    pub deleted: usize,
    /// Routes that failed, with why (they are retried).
    pub failed: Vec<(KernelRoute, String)>,
    /// Destinations newly found held by another owner (left alone, reported).
    pub new_conflicts: Vec<ipnet::IpNet>,
}

/// Desired vs. actual for Serval's routes.
pub struct RouteManager<K> {
    kernel: K,
    desired: KernelTable,
    /// The kernel's table as last read or written; `None` forces a re-read.
    actual: Option<KernelTable>,
    in_sync: bool,
    applied_once: bool,
    /// While set, learned (`via`) routes are not deleted: after a restart the kernel keeps
    /// forwarding on the old routes until BGP has relearned the table.
    keep_learned: bool,
    /// Destinations another owner's route holds: not written until the next resync.
    conflicts: std::collections::BTreeSet<ipnet::IpNet>,
    stats: RouteStats,
}

impl<K: RouteKernel> RouteManager<K> {
    /// A manager that writes nothing until [`RouteManager::datastore_in_sync`].
    pub fn new(kernel: K) -> Self {
        RouteManager {
            kernel,
            desired: KernelTable::new(),
            actual: None,
            in_sync: false,
            applied_once: false,
            keep_learned: false,
            conflicts: std::collections::BTreeSet::new(),
            stats: RouteStats::default(),
        }
    }

    /// Holds (or releases) the deletion of learned routes.
    pub fn keep_learned(&mut self, keep: bool) {
        self.keep_learned = keep;
    }

    /// Replaces the desired table.
    pub fn set_desired(&mut self, desired: KernelTable) {
        self.desired = desired;
    }

    /// The desired table.
    pub fn desired(&self) -> &KernelTable {
        &self.desired
    }

    /// The datastore has been read completely: writes may start.
    pub fn datastore_in_sync(&mut self) {
        self.in_sync = true;
    }

    /// The next apply re-reads the kernel first.
    pub fn request_resync(&mut self) {
        self.actual = None;
    }

    /// Counters so far.
    pub fn stats(&self) -> RouteStats {
        self.stats
    }

    /// Desired destinations left to another owner's route.
    pub fn conflicts(&self) -> &std::collections::BTreeSet<ipnet::IpNet> {
        &self.conflicts
    }

    /// Makes the kernel match the desired table.
    pub async fn apply(&mut self) -> Result<ApplyReport, DataplaneError> {
        if !self.in_sync {
            return Ok(ApplyReport {
                waiting: true,
                ..ApplyReport::default()
            });
        }
        let mut report = ApplyReport::default();
        let actual = match self.actual.take() {
            Some(a) => a,
            None => {
                let fresh = self.kernel.dump().await?;
                self.stats.resyncs += 1;
                report.resynced = true;
                fresh
            }
        };
        let mut todo = plan(&self.desired, &actual);
        // Held-back destinations are tried again only when the kernel was re-read (the
        // other owner may have gone); and forgotten once we no longer want them.
        let desired = &self.desired;
        self.conflicts
            .retain(|d| crate::calc::kernel_table::route_to(desired, d).is_some());
        if !report.resynced {
            todo.replace.retain(|r| !self.conflicts.contains(&r.dst));
        }
        if self.keep_learned {
            todo.delete
                .retain(|r| !matches!(r.kind, crate::calc::kernel_table::RouteKind::Via(_)));
        }
        if report.resynced && self.applied_once {
            self.stats.drift += (todo.replace.len() + todo.delete.len()) as u64;
        }
        let mut actual = actual;
        if !todo.is_empty() {
            // A destination our table does not hold is created, never replaced over
            // another owner's route.
            let (replace, create): (Vec<KernelRoute>, Vec<KernelRoute>) = todo
                .replace
                .iter()
                .cloned()
                .partition(|r| actual.contains_key(&r.key()));
            let failed = match self.kernel.write(&create, &replace, &todo.delete).await {
                Ok(f) => f,
                Err(e) => {
                    // The cache no longer says what the kernel holds: re-read next time.
                    return Err(e);
                }
            };
            let failed_keys: std::collections::BTreeSet<_> =
                failed.iter().map(|(r, _)| r.key()).collect();
            for r in &todo.replace {
                if !failed_keys.contains(&r.key()) {
                    actual.insert(r.key(), r.kind.clone());
                    report.written += 1;
                }
            }
            for r in &todo.delete {
                if !failed_keys.contains(&r.key()) {
                    actual.remove(&r.key());
                    report.deleted += 1;
                }
            }
            for r in &create {
                if !failed_keys.contains(&r.key()) {
                    self.conflicts.remove(&r.dst);
                }
            }
            let (foreign, failed): (Vec<_>, Vec<_>) =
                failed.into_iter().partition(|(_, e)| e.is_foreign_route());
            for (r, _) in foreign {
                if self.conflicts.insert(r.dst) {
                    report.new_conflicts.push(r.dst);
                }
            }
            report.failed = failed
                .into_iter()
                .map(|(r, e)| (r, e.to_string()))
                .collect();
        }
        self.stats.conflicts = self.conflicts.len() as u64;
        self.stats.written += report.written as u64;
        self.stats.deleted += report.deleted as u64;
        self.stats.failed += report.failed.len() as u64;
        self.actual = Some(actual);
        self.applied_once = true;
        Ok(report)
    }
}

/// What the agent tells the route task.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteCommand {
    /// A new desired table.
    Desired(KernelTable),
    /// The datastore is in sync.
    InSync,
    /// Re-read the kernel now (a link appeared, an operator asked).
    Resync,
    /// Keep (true) or allow deleting (false) learned routes the desired table lacks.
    KeepLearned(bool),
}

/// Timing of the route task.
#[derive(Debug, Clone, Copy)]
pub struct RouteTiming {
    /// Period of the full resync (Felix's routeRefreshInterval is 90 s).
    pub resync: Duration,
    /// Delay before retrying failed routes.
    pub retry: Duration,
}

impl Default for RouteTiming {
    fn default() -> Self {
        RouteTiming {
            resync: Duration::from_secs(90),
            retry: Duration::from_secs(1),
        }
    }
}

/// `base` ±10 %, from the clock's low bits (no need for a random crate), so nodes that
/// started together do not resync in lock-step.
pub fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let fraction = f64::from(nanos % 1000) / 1000.0; // 0..1
    base.mul_f64(0.9 + 0.2 * fraction)
}

/// Drives a manager: applies after every burst of commands, on the resync timer, and after
/// failures. Publishes each apply's stats on `stats`. Ends when the command channel closes.
pub async fn run<K: RouteKernel>(
    mut manager: RouteManager<K>,
    mut commands: mpsc::Receiver<RouteCommand>,
    timing: RouteTiming,
    stats: watch::Sender<RouteStats>,
    conflicts: std::sync::Arc<watch::Sender<Vec<ipnet::IpNet>>>,
    observe: impl Fn(Duration) + Send,
) {
    let mut next_resync = tokio::time::Instant::now() + jittered(timing.resync);
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let wake = retry_at.map_or(next_resync, |r| r.min(next_resync));
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return };
                handle(&mut manager, cmd);
                // Take the whole burst before writing once.
                while let Ok(cmd) = commands.try_recv() {
                    handle(&mut manager, cmd);
                }
            }
            () = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= next_resync {
                    manager.request_resync();
                    next_resync = tokio::time::Instant::now() + jittered(timing.resync);
                }
            }
        }
        retry_at = None;
        let started = std::time::Instant::now();
        let result = manager.apply().await;
        observe(started.elapsed());
        match result {
            Ok(report) => {
                for dst in &report.new_conflicts {
                    tracing::warn!(
                        %dst,
                        "another owner's route holds this destination and metric; leaving it alone (ours is not installed)"
                    );
                }
                if !report.failed.is_empty() {
                    for (route, why) in report.failed.iter().take(5) {
                        tracing::warn!(%route, %why, "route write failed; will retry");
                    }
                    retry_at = Some(tokio::time::Instant::now() + timing.retry);
                }
                if report.resynced || report.written + report.deleted > 0 {
                    tracing::debug!(
                        written = report.written,
                        deleted = report.deleted,
                        resynced = report.resynced,
                        "routes applied"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "route apply failed; will re-read the kernel and retry");
                manager.request_resync();
                retry_at = Some(tokio::time::Instant::now() + timing.retry);
            }
        }
        let _ = stats.send(manager.stats());
        conflicts.send_if_modified(|list| {
            let now: Vec<ipnet::IpNet> = manager.conflicts().iter().copied().collect();
            let changed = *list != now;
            *list = now;
            changed
        });
    }
}

fn handle<K: RouteKernel>(manager: &mut RouteManager<K>, cmd: RouteCommand) {
    match cmd {
        RouteCommand::Desired(t) => manager.set_desired(t),
        RouteCommand::InSync => manager.datastore_in_sync(),
        RouteCommand::Resync => manager.request_resync(),
        RouteCommand::KeepLearned(k) => manager.keep_learned(k),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::calc::kernel_table::{Hop, RouteKey, RouteKind};

    /// A kernel table in memory; `fail` lists destinations whose writes fail.
    #[derive(Clone, Default)]
    struct FakeKernel {
        table: Arc<Mutex<KernelTable>>,
        /// Destinations another protocol's route holds (invisible to `dump`).
        foreign: Arc<Mutex<Vec<ipnet::IpNet>>>,
        fail: Arc<Mutex<Vec<ipnet::IpNet>>>,
        writes: Arc<Mutex<usize>>,
    }

    impl RouteKernel for FakeKernel {
        async fn dump(&self) -> Result<KernelTable, DataplaneError> {
            Ok(self.table.lock().unwrap().clone())
        }
        async fn write(
            &self,
            create: &[KernelRoute],
            replace: &[KernelRoute],
            delete: &[KernelRoute],
        ) -> Result<Vec<(KernelRoute, DataplaneError)>, DataplaneError> {
            let mut t = self.table.lock().unwrap();
            let fail = self.fail.lock().unwrap();
            let foreign = self.foreign.lock().unwrap();
            let mut failed = Vec::new();
            for r in delete {
                t.remove(&r.key());
            }
            for r in create {
                if foreign.contains(&r.dst) {
                    failed.push((
                        r.clone(),
                        DataplaneError::Netlink {
                            what: format!("create {r}"),
                            code: libc::EEXIST,
                            message: "File exists".into(),
                        },
                    ));
                } else if fail.contains(&r.dst) {
                    failed.push((r.clone(), DataplaneError::NoDevice("sv-missing".into())));
                } else {
                    t.insert(r.key(), r.kind.clone());
                }
            }
            for r in replace {
                if fail.contains(&r.dst) {
                    failed.push((r.clone(), DataplaneError::NoDevice("sv-missing".into())));
                } else {
                    t.insert(r.key(), r.kind.clone());
                }
            }
            *self.writes.lock().unwrap() += create.len() + replace.len() + delete.len();
            Ok(failed)
        }
    }

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    fn table(routes: &[(&str, RouteKind)]) -> KernelTable {
        routes
            .iter()
            .map(|(d, k)| (RouteKey::from(net(d)), k.clone()))
            .collect()
    }

    fn via(gw: &str) -> RouteKind {
        RouteKind::Via(vec![Hop {
            gateway: gw.parse().unwrap(),
            dev: None,
            onlink: false,
        }])
    }

    #[tokio::test]
    async fn nothing_is_written_before_the_datastore_is_in_sync() {
        let k = FakeKernel::default();
        k.table
            .lock()
            .unwrap()
            .insert(net("10.0.9.0/26").into(), RouteKind::Blackhole);
        let mut m = RouteManager::new(k.clone());
        m.set_desired(table(&[("10.0.1.0/26", RouteKind::Blackhole)]));
        assert!(m.apply().await.unwrap().waiting);
        assert_eq!(*k.writes.lock().unwrap(), 0);
        assert!(
            k.table
                .lock()
                .unwrap()
                .contains_key(&RouteKey::from(net("10.0.9.0/26")))
        );
        // In sync: the start-up sweep removes the stale route and writes the wanted one.
        m.datastore_in_sync();
        let r = m.apply().await.unwrap();
        assert!(r.resynced);
        assert_eq!((r.written, r.deleted), (1, 1));
        assert_eq!(*k.table.lock().unwrap(), *m.desired());
        assert_eq!(m.stats().drift, 0, "the start-up sweep is not drift");
    }

    #[tokio::test]
    async fn incremental_applies_touch_only_changes_and_resync_repairs_drift() {
        let k = FakeKernel::default();
        let mut m = RouteManager::new(k.clone());
        m.datastore_in_sync();
        m.set_desired(table(&[
            ("10.0.1.0/26", RouteKind::Blackhole),
            ("10.0.2.0/26", via("192.168.1.2")),
        ]));
        m.apply().await.unwrap();
        *k.writes.lock().unwrap() = 0;
        m.set_desired(table(&[
            ("10.0.1.0/26", RouteKind::Blackhole),
            ("10.0.2.0/26", via("192.168.1.2")),
            ("10.0.3.0/26", via("192.168.1.3")),
        ]));
        let r = m.apply().await.unwrap();
        assert!(!r.resynced);
        assert_eq!((r.written, r.deleted), (1, 0));
        assert_eq!(*k.writes.lock().unwrap(), 1);
        // Someone deletes one of our routes: the cache does not know, the resync does.
        k.table
            .lock()
            .unwrap()
            .remove(&RouteKey::from(net("10.0.2.0/26")));
        assert_eq!(m.apply().await.unwrap().written, 0);
        m.request_resync();
        let r = m.apply().await.unwrap();
        assert!(r.resynced);
        assert_eq!(r.written, 1);
        assert_eq!(m.stats().drift, 1);
        assert_eq!(*k.table.lock().unwrap(), *m.desired());
    }

    #[tokio::test]
    async fn learned_routes_survive_a_restart_until_released() {
        let k = FakeKernel::default();
        k.table
            .lock()
            .unwrap()
            .insert(net("10.0.2.0/26").into(), via("192.168.1.2"));
        k.table
            .lock()
            .unwrap()
            .insert(net("10.0.9.0/26").into(), RouteKind::Blackhole);
        let mut m = RouteManager::new(k.clone());
        m.keep_learned(true);
        m.datastore_in_sync();
        // BGP has not relearned anything yet: the learned route stays, the stale blackhole goes.
        m.set_desired(table(&[("10.0.1.0/26", RouteKind::Blackhole)]));
        let r = m.apply().await.unwrap();
        assert_eq!((r.written, r.deleted), (1, 1));
        assert!(
            k.table
                .lock()
                .unwrap()
                .contains_key(&RouteKey::from(net("10.0.2.0/26")))
        );
        m.keep_learned(false);
        let r = m.apply().await.unwrap();
        assert_eq!(r.deleted, 1);
        assert_eq!(*k.table.lock().unwrap(), *m.desired());
    }

    #[tokio::test]
    async fn a_route_another_owner_holds_is_left_alone_and_reported() {
        let k = FakeKernel::default();
        // An operator's static route for a destination BGP also teaches us.
        k.foreign.lock().unwrap().push(net("10.0.2.0/26"));
        let mut m = RouteManager::new(k.clone());
        m.datastore_in_sync();
        m.set_desired(table(&[
            ("10.0.1.0/26", RouteKind::Blackhole),
            ("10.0.2.0/26", via("192.168.1.2")),
        ]));
        let r = m.apply().await.unwrap();
        assert_eq!(r.written, 1);
        assert!(r.failed.is_empty(), "a conflict is not a failure to retry");
        assert_eq!(r.new_conflicts, vec![net("10.0.2.0/26")]);
        assert_eq!(m.stats().conflicts, 1);
        assert!(
            !k.table
                .lock()
                .unwrap()
                .contains_key(&RouteKey::from(net("10.0.2.0/26")))
        );
        // Not retried (nor reported again) until the kernel is re-read.
        *k.writes.lock().unwrap() = 0;
        let r = m.apply().await.unwrap();
        assert!(r.new_conflicts.is_empty());
        assert_eq!(*k.writes.lock().unwrap(), 0);
        // The other owner removes its route: the next resync installs ours.
        k.foreign.lock().unwrap().clear();
        m.request_resync();
        let r = m.apply().await.unwrap();
        assert_eq!(r.written, 1);
        assert_eq!(m.stats().conflicts, 0);
        assert_eq!(*k.table.lock().unwrap(), *m.desired());
        // A route we own is replaced in place, not created.
        m.set_desired(table(&[
            ("10.0.1.0/26", RouteKind::Blackhole),
            ("10.0.2.0/26", via("192.168.1.9")),
        ]));
        k.foreign.lock().unwrap().push(net("10.0.2.0/26"));
        let r = m.apply().await.unwrap();
        assert_eq!((r.written, r.new_conflicts.len()), (1, 0));
    }

    #[tokio::test]
    async fn failed_routes_are_retried_until_they_succeed() {
        let k = FakeKernel::default();
        k.fail.lock().unwrap().push(net("10.0.1.5/32"));
        let mut m = RouteManager::new(k.clone());
        m.datastore_in_sync();
        m.set_desired(table(&[
            ("10.0.1.5/32", RouteKind::Link("sv-missing".into())),
            ("10.0.1.0/26", RouteKind::Blackhole),
        ]));
        let r = m.apply().await.unwrap();
        assert_eq!(r.written, 1);
        assert_eq!(r.failed.len(), 1);
        assert!(r.failed[0].1.contains("sv-missing"));
        // Still failing: retried, still reported.
        assert_eq!(m.apply().await.unwrap().failed.len(), 1);
        // The interface appears.
        k.fail.lock().unwrap().clear();
        let r = m.apply().await.unwrap();
        assert_eq!((r.written, r.failed.len()), (1, 0));
        assert_eq!(m.stats().failed, 2);
    }

    #[tokio::test]
    async fn the_task_applies_bursts_once_and_resyncs_on_its_timer() {
        let k = FakeKernel::default();
        let (tx, rx) = mpsc::channel(16);
        let (stats_tx, mut stats_rx) = watch::channel(RouteStats::default());
        let timing = RouteTiming {
            resync: Duration::from_millis(300),
            retry: Duration::from_millis(100),
        };
        let conflicts_tx = Arc::new(watch::channel(Vec::new()).0);
        tokio::spawn(run(
            RouteManager::new(k.clone()),
            rx,
            timing,
            stats_tx,
            conflicts_tx,
            |_| {},
        ));
        tx.send(RouteCommand::Desired(table(&[(
            "10.0.1.0/26",
            RouteKind::Blackhole,
        )])))
        .await
        .unwrap();
        tx.send(RouteCommand::InSync).await.unwrap();
        stats_rx.changed().await.unwrap();
        while stats_rx.borrow().written < 1 {
            stats_rx.changed().await.unwrap();
        }
        assert_eq!(stats_rx.borrow().resyncs, 1);
        k.table.lock().unwrap().clear();
        // After the (jittered) resync period the route is back.
        while stats_rx.borrow().resyncs < 2 {
            stats_rx.changed().await.unwrap();
        }
        assert_eq!(k.table.lock().unwrap().len(), 1);
        assert_eq!(stats_rx.borrow().drift, 1);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(100));
            assert!(d >= Duration::from_secs(90) && d <= Duration::from_secs(110));
        }
    }
}
