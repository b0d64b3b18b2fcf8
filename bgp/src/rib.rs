//! Routing tables: per-family Adj-RIB-In + Loc-RIB in one (sharded) map, the Adj-RIB-Out
//! of each update group (which prefixes it announced; what with is recomputed from the
//! Loc-RIB), and the attribute interner that makes a million routes with few distinct
//! attribute sets cheap. Owned by the speaker task only; nothing here is shared or locked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A hash map keyed by what peers send (prefixes, attribute sets): foldhash, seeded at
/// random per process, several times faster than the default SipHash on these keys and
/// still never an unkeyed hash a peer could aim collisions at.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// The set form of [`FastMap`].
pub type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

use crate::af::Prefix;
use crate::decision::{Decision, DecisionConfig, Path, PeerId, SourceInfo, decide};
use crate::packet::attribute::PathAttributes;
use crate::sharded::{ShardedMap, ShardedSet};

/// Stores each distinct attribute set once; paths hold `Arc`s into it.
#[derive(Debug, Default)]
pub struct Interner {
    set: FastSet<Arc<PathAttributes>>,
}

impl Interner {
    /// Returns the shared copy of `attrs`, adding it if new.
    pub fn intern(&mut self, attrs: PathAttributes) -> Arc<PathAttributes> {
        if let Some(existing) = self.set.get(&attrs) {
            return existing.clone();
        }
        let arc = Arc::new(attrs);
        self.set.insert(arc.clone());
        arc
    }

    /// Number of distinct attribute sets held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Forgets sets no path refers to any more.
    pub fn sweep(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
    }
}

/// Everything the decision needs besides the paths.
pub struct DecideCtx<'a> {
    /// Decision knobs.
    pub cfg: DecisionConfig,
    /// Facts about every peer that may appear in a path.
    pub sources: &'a HashMap<PeerId, SourceInfo>,
}

impl DecideCtx<'_> {
    fn decide(&self, paths: &[Path]) -> Option<Decision> {
        decide(paths, self.cfg, |p| &self.sources[&p])
    }
}

/// The candidates of one prefix. Almost every prefix has exactly one path, so that
/// case is stored inline: no heap allocation per prefix. The rare list is boxed so the
/// whole enum is one path's 16 bytes (the list pointer sits in a path's niche), which is
/// 8 bytes less per table slot than an inline `Vec`.
#[derive(Debug, Clone, Default)]
enum Paths {
    #[default]
    Empty,
    One(Path),
    // Boxed on purpose: a thin pointer fits beside the inline path (see above).
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Path>>),
}

// The table's memory per prefix depends on it: fail the build, not a benchmark.
const _: () = assert!(std::mem::size_of::<Paths>() == std::mem::size_of::<Path>());

impl std::ops::Deref for Paths {
    type Target = [Path];
    fn deref(&self) -> &[Path] {
        match self {
            Paths::Empty => &[],
            Paths::One(p) => std::slice::from_ref(p),
            Paths::Many(v) => v,
        }
    }
}

impl std::ops::DerefMut for Paths {
    fn deref_mut(&mut self) -> &mut [Path] {
        match self {
            Paths::Empty => &mut [],
            Paths::One(p) => std::slice::from_mut(p),
            Paths::Many(v) => v,
        }
    }
}

impl Paths {
    fn push(&mut self, path: Path) {
        *self = match std::mem::take(self) {
            Paths::Empty => Paths::One(path),
            Paths::One(first) => Paths::Many(Box::new(vec![first, path])),
            Paths::Many(mut v) => {
                v.push(path);
                Paths::Many(v)
            }
        };
    }

    fn remove(&mut self, at: usize) {
        *self = match std::mem::take(self) {
            Paths::Empty | Paths::One(_) => Paths::Empty,
            Paths::Many(mut v) => {
                v.remove(at);
                match v.len() {
                    1 => Paths::One(v.pop().expect("one left")),
                    _ => Paths::Many(v),
                }
            }
        };
    }
}

/// Candidate paths of one family: Adj-RIB-In (all paths) and Loc-RIB (index 0 of each).
#[derive(Debug)]
pub struct Table<P: Prefix> {
    /// Sharded, so a million-route table grows without its peak doubling (see `sharded`).
    dests: ShardedMap<P, Paths>,
}

impl<P: Prefix> Default for Table<P> {
    fn default() -> Self {
        Table {
            dests: ShardedMap::default(),
        }
    }
}

fn same_path(a: Option<&Path>, b: Option<&Path>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.peer == b.peer && Arc::ptr_eq(&a.attrs, &b.attrs),
        (None, None) => true,
        _ => false,
    }
}

impl<P: Prefix> Table<P> {
    /// Number of prefixes with at least one path (the Loc-RIB size).
    pub fn len(&self) -> usize {
        self.dests.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }

    /// The best path for a prefix.
    pub fn best(&self, prefix: &P) -> Option<&Path> {
        self.dests.get(prefix).and_then(|p| p.first())
    }

    /// All candidate paths for a prefix, best first.
    pub fn paths(&self, prefix: &P) -> &[Path] {
        self.dests.get(prefix).map(|p| &**p).unwrap_or(&[])
    }

    /// Every prefix with its candidates, best first, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&P, &[Path])> {
        self.dests.iter().map(|(p, v)| (p, &**v))
    }

    /// Decision details for a prefix (why each path lost).
    pub fn explain(&self, prefix: &P, ctx: &DecideCtx<'_>) -> Option<Decision> {
        ctx.decide(self.paths(prefix))
    }

    /// Adds or replaces `path.peer`'s path; returns whether the best path changed.
    pub fn insert(&mut self, prefix: P, path: Path, ctx: &DecideCtx<'_>) -> bool {
        self.upsert(prefix, path, ctx).changed
    }

    /// Adds or replaces `path.peer`'s path.
    pub fn upsert(&mut self, prefix: P, path: Path, ctx: &DecideCtx<'_>) -> Upsert {
        let paths = self.dests.get_or_default(prefix);
        if paths.is_empty() {
            paths.push(path);
            return Upsert {
                changed: true,
                replaced: false,
                old_best: None,
            };
        }
        let old_best = paths.first().cloned();
        let before = Self::multipath_peers(paths, ctx);
        let peer = path.peer;
        let replaced = match paths.iter_mut().find(|p| p.peer == path.peer) {
            Some(existing) => {
                *existing = path;
                true
            }
            None => {
                paths.push(path);
                false
            }
        };
        let after = Self::reselect(paths, ctx);
        // The FIB sees every multipath (ECMP) member, not just the best path.
        let changed = !same_path(old_best.as_ref(), paths.first())
            || before != after
            || (replaced && after.contains(&peer));
        Upsert {
            changed,
            replaced,
            old_best,
        }
    }

    /// Removes `peer`'s path; returns whether the best path or the multipath set changed.
    pub fn remove(&mut self, prefix: &P, peer: PeerId, ctx: &DecideCtx<'_>) -> bool {
        self.take(prefix, peer, ctx)
            .is_some_and(|(changed, _)| changed)
    }

    /// Removes `peer`'s path; `None` if it had none, else whether the best path or the
    /// multipath set changed, and the best path before.
    pub fn take(
        &mut self,
        prefix: &P,
        peer: PeerId,
        ctx: &DecideCtx<'_>,
    ) -> Option<(bool, Option<Path>)> {
        let paths = self.dests.get_mut(prefix)?;
        let at = paths.iter().position(|p| p.peer == peer)?;
        let was_multipath = at == 0 || Self::multipath_peers(paths, ctx).contains(&peer);
        let old_best = paths.first().cloned();
        paths.remove(at);
        if paths.is_empty() {
            self.dests.remove(prefix);
            return Some((true, old_best));
        }
        Self::reselect(paths, ctx);
        Some((was_multipath, old_best))
    }

    /// Removes every path from `peer` (or only its stale ones); returns the prefixes
    /// whose best path or multipath set changed, each with its best path before.
    pub fn remove_peer(
        &mut self,
        peer: PeerId,
        only_stale: bool,
        ctx: &DecideCtx<'_>,
    ) -> Vec<(P, Option<Path>)> {
        let mut changed = Vec::new();
        self.dests.retain(|prefix, paths| {
            let Some(at) = paths
                .iter()
                .position(|p| p.peer == peer && (!only_stale || p.stale))
            else {
                return true;
            };
            let was_multipath = at == 0 || Self::multipath_peers(paths, ctx).contains(&peer);
            let old_best = was_multipath.then(|| paths.first().cloned()).flatten();
            paths.remove(at);
            if was_multipath {
                changed.push((*prefix, old_best));
                Self::reselect(paths, ctx);
            }
            !paths.is_empty()
        });
        changed
    }

    /// Marks every path from `peer` stale (graceful restart, RFC 4724 §4.2).
    pub fn mark_stale(&mut self, peer: PeerId) -> usize {
        let mut n = 0;
        for paths in self.dests.values_mut() {
            for p in paths.iter_mut().filter(|p| p.peer == peer) {
                p.stale = true;
                n += 1;
            }
        }
        n
    }

    /// Number of paths from `peer`.
    pub fn count_from(&self, peer: PeerId) -> usize {
        self.dests
            .values()
            .filter(|paths| paths.iter().any(|p| p.peer == peer))
            .count()
    }

    /// Puts the best path first; returns the multipath (ECMP) members' peers, sorted.
    fn reselect(paths: &mut [Path], ctx: &DecideCtx<'_>) -> Vec<PeerId> {
        if paths.len() <= 1 {
            return paths.iter().map(|p| p.peer).collect();
        }
        let d = ctx.decide(paths).expect("non-empty");
        let mut members: Vec<PeerId> = d.multipath.iter().map(|&i| paths[i].peer).collect();
        members.sort_unstable();
        paths.swap(0, d.best);
        members
    }

    /// The multipath (ECMP) members' peers, sorted, without reordering the paths.
    fn multipath_peers(paths: &[Path], ctx: &DecideCtx<'_>) -> Vec<PeerId> {
        if paths.len() <= 1 {
            return paths.iter().map(|p| p.peer).collect();
        }
        let d = ctx.decide(paths).expect("non-empty");
        let mut members: Vec<PeerId> = d.multipath.iter().map(|&i| paths[i].peer).collect();
        members.sort_unstable();
        members
    }
}

/// What a path change did to the table.
#[derive(Debug, Clone)]
pub struct Upsert {
    /// The best path or the multipath set changed.
    pub changed: bool,
    /// The peer's earlier path was replaced.
    pub replaced: bool,
    /// The best path before (`None` for a new prefix): what the update groups were sent
    /// is a function of it, so the next export can tell a real change from none.
    pub old_best: Option<Path>,
}

/// What one update group has announced in one family: the prefixes only. The attributes
/// it sent are a function of the Loc-RIB (`speaker::exporter`), recomputed when needed
/// instead of kept per prefix, so an announced prefix costs one small set slot and no
/// exported attribute set outlives the pass that encoded it.
#[derive(Debug, Clone)]
pub struct AdjRibOut<P: Prefix> {
    announced: ShardedSet<P>,
}

impl<P: Prefix> Default for AdjRibOut<P> {
    fn default() -> Self {
        AdjRibOut {
            announced: ShardedSet::default(),
        }
    }
}

/// The change to send to a peer for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutChange {
    /// Announce with these attributes.
    Announce(Arc<PathAttributes>),
    /// Withdraw.
    Withdraw,
}

impl<P: Prefix> AdjRibOut<P> {
    /// Records what should be advertised now and returns the change to send, if any.
    /// `before` is what the caller knows the group was sent for the prefix (`None` when it
    /// cannot tell): only an announced prefix whose attributes are known to be the same is
    /// left alone, so an unknown past costs at most a repeated announcement, never a lost
    /// change.
    pub fn set(
        &mut self,
        prefix: P,
        attrs: Option<Arc<PathAttributes>>,
        before: Option<&Arc<PathAttributes>>,
    ) -> Option<OutChange> {
        match attrs {
            None => self
                .announced
                .remove(&prefix)
                .then_some(OutChange::Withdraw),
            Some(a) => {
                let fresh = self.announced.insert(prefix);
                let same = !fresh && before.is_some_and(|b| Arc::ptr_eq(b, &a) || **b == *a);
                (!same).then_some(OutChange::Announce(a))
            }
        }
    }

    /// Number of prefixes advertised.
    pub fn len(&self) -> usize {
        self.announced.len()
    }

    /// Whether nothing is advertised.
    pub fn is_empty(&self) -> bool {
        self.announced.is_empty()
    }

    /// Forgets everything (the session went down).
    pub fn clear(&mut self) {
        self.announced.clear();
    }

    /// Every prefix advertised.
    pub fn keys(&self) -> impl Iterator<Item = &P> {
        self.announced.iter()
    }

    /// Whether a prefix is advertised.
    pub fn contains(&self, prefix: &P) -> bool {
        self.announced.contains(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::LOCAL_PEER;
    use crate::packet::attribute::AsPath;
    use ipnet::Ipv4Net;
    use std::net::{IpAddr, Ipv4Addr};

    fn sources() -> HashMap<PeerId, SourceInfo> {
        (1..=2)
            .map(|p| {
                (
                    p,
                    SourceInfo {
                        ebgp: true,
                        router_id: Ipv4Addr::new(10, 0, 0, p as u8),
                        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, p as u8)),
                    },
                )
            })
            .collect()
    }

    fn ctx(sources: &HashMap<PeerId, SourceInfo>) -> DecideCtx<'_> {
        DecideCtx {
            cfg: DecisionConfig::default(),
            sources,
        }
    }

    fn attrs(len: u32) -> PathAttributes {
        PathAttributes {
            as_path: AsPath::from_sequence(0..len),
            ..Default::default()
        }
    }

    #[test]
    fn interner_shares_identical_sets_and_sweeps_unused() {
        let mut i = Interner::default();
        let a = i.intern(attrs(2));
        let b = i.intern(attrs(2));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.len(), 1);
        drop((a, b));
        i.sweep();
        assert!(i.is_empty());
    }

    #[test]
    fn best_path_follows_inserts_and_withdrawals() {
        let s = sources();
        let ctx = ctx(&s);
        let mut i = Interner::default();
        let mut t = Table::<Ipv4Net>::default();
        let p: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let long = Path {
            peer: 1,
            attrs: i.intern(attrs(3)),
            stale: false,
        };
        let short = Path {
            peer: 2,
            attrs: i.intern(attrs(1)),
            stale: false,
        };
        assert!(t.insert(p, long.clone(), &ctx));
        assert!(t.insert(p, short.clone(), &ctx));
        assert_eq!(t.best(&p).unwrap().peer, 2);
        // Re-announcing the same losing path changes nothing.
        assert!(!t.insert(p, long.clone(), &ctx));
        // Withdrawing the loser leaves the best alone.
        assert!(!t.remove(&p, 1, &ctx));
        assert!(!t.insert(p, long, &ctx));
        // Withdrawing the best promotes the other.
        assert!(t.remove(&p, 2, &ctx));
        assert_eq!(t.best(&p).unwrap().peer, 1);
        assert!(t.remove(&p, 1, &ctx));
        assert!(t.is_empty());
        // Local routes win.
        let local = Path {
            peer: LOCAL_PEER,
            attrs: i.intern(attrs(0)),
            stale: false,
        };
        t.insert(p, short, &ctx);
        assert!(t.insert(p, local, &ctx));
        assert_eq!(t.best(&p).unwrap().peer, LOCAL_PEER);
    }

    #[test]
    fn removing_a_peer_reports_changed_bests() {
        let s = sources();
        let ctx = ctx(&s);
        let mut i = Interner::default();
        let mut t = Table::<Ipv4Net>::default();
        for n in 0..10u32 {
            let p = Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (n << 8)), 24).unwrap();
            t.insert(
                p,
                Path {
                    peer: 1,
                    attrs: i.intern(attrs(1)),
                    stale: false,
                },
                &ctx,
            );
            if n % 2 == 0 {
                t.insert(
                    p,
                    Path {
                        peer: 2,
                        attrs: i.intern(attrs(5)),
                        stale: false,
                    },
                    &ctx,
                );
            }
        }
        assert_eq!(t.count_from(2), 5);
        assert!(
            t.remove_peer(2, false, &ctx).is_empty(),
            "peer 2 was never best"
        );
        assert_eq!(t.remove_peer(1, false, &ctx).len(), 10);
        assert!(t.is_empty());
    }

    #[test]
    fn multipath_members_coming_and_going_are_changes_for_the_fib() {
        let s = sources();
        let ctx = ctx(&s);
        let mut i = Interner::default();
        let mut t = Table::<Ipv4Net>::default();
        let p: Ipv4Net = "10.244.8.0/26".parse().unwrap();
        let path = |peer, i: &mut Interner| Path {
            peer,
            attrs: i.intern(attrs(3)),
            stale: false,
        };
        assert!(t.insert(p, path(1, &mut i), &ctx));
        // An equal path joins the ECMP set without becoming best: still a change.
        let best_before = t.best(&p).unwrap().peer;
        assert!(
            t.insert(p, path(2, &mut i), &ctx),
            "a second next hop for the FIB"
        );
        assert_eq!(t.best(&p).unwrap().peer, best_before);
        let other = if best_before == 1 { 2 } else { 1 };
        // And it leaving (its session went down) is one too, as is a whole peer going.
        assert!(
            t.remove(&p, other, &ctx),
            "the ECMP member's next hop must go"
        );
        assert!(t.insert(p, path(other, &mut i), &ctx));
        let removed: Vec<Ipv4Net> = t
            .remove_peer(other, false, &ctx)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(removed, vec![p]);
        // A worse path that is not a multipath member stays a non-event.
        let worse = Path {
            peer: other,
            attrs: i.intern(attrs(6)),
            stale: false,
        };
        assert!(!t.insert(p, worse, &ctx));
        assert!(!t.remove(&p, other, &ctx));
    }

    #[test]
    fn stale_paths_are_swept_but_fresh_ones_stay() {
        let s = sources();
        let ctx = ctx(&s);
        let mut i = Interner::default();
        let mut t = Table::<Ipv4Net>::default();
        let a: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let b: Ipv4Net = "10.0.1.0/24".parse().unwrap();
        t.insert(
            a,
            Path {
                peer: 1,
                attrs: i.intern(attrs(1)),
                stale: false,
            },
            &ctx,
        );
        t.insert(
            b,
            Path {
                peer: 1,
                attrs: i.intern(attrs(1)),
                stale: false,
            },
            &ctx,
        );
        assert_eq!(t.mark_stale(1), 2);
        t.insert(
            a,
            Path {
                peer: 1,
                attrs: i.intern(attrs(1)),
                stale: false,
            },
            &ctx,
        );
        let swept = t.remove_peer(1, true, &ctx);
        assert_eq!(swept.len(), 1);
        assert_eq!(swept[0].0, b);
        assert_eq!(
            swept[0].1.as_ref().map(|p| p.peer),
            Some(1),
            "the best path before comes back with the change"
        );
        assert!(t.best(&a).is_some());
    }

    #[test]
    fn adj_rib_out_reports_only_real_changes_and_repeats_when_the_past_is_unknown() {
        let mut i = Interner::default();
        let mut out = AdjRibOut::<Ipv4Net>::default();
        let p: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let (a, b) = (i.intern(attrs(1)), i.intern(attrs(2)));
        assert_eq!(
            out.set(p, Some(a.clone()), None),
            Some(OutChange::Announce(a.clone()))
        );
        // Known to be what was sent: nothing to do; an equal set (not the same Arc) too.
        assert_eq!(out.set(p, Some(a.clone()), Some(&a)), None);
        let equal = Arc::new(attrs(1));
        assert_eq!(out.set(p, Some(equal), Some(&a)), None);
        // Different, or unknown: announced again.
        assert_eq!(
            out.set(p, Some(b.clone()), Some(&a)),
            Some(OutChange::Announce(b.clone()))
        );
        assert_eq!(
            out.set(p, Some(b.clone()), None),
            Some(OutChange::Announce(b.clone()))
        );
        // A prefix not announced is announced whatever the caller believes was sent.
        let q: Ipv4Net = "10.0.1.0/24".parse().unwrap();
        assert_eq!(
            out.set(q, Some(b.clone()), Some(&b)),
            Some(OutChange::Announce(b.clone()))
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out.set(p, None, Some(&b)), Some(OutChange::Withdraw));
        assert_eq!(out.set(p, None, None), None);
        assert!(!out.contains(&p) && out.contains(&q));
    }
}
