//! From Loc-RIB changes to the wire: export rules and policy per peer, Adj-RIB-Out
//! diffing, packing UPDATEs by attribute set, and best-path batches for subscribers.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};

use super::{FamilyRib, Speaker};
use crate::af::Family;
use crate::decision::{LOCAL_PEER, PeerId};
use crate::export::{self, RouteSource, SpeakerSide, Target};
use crate::packet::attribute::{EncodeContext, PathAttributes};
use crate::packet::message::{Message, Update, pack_announcements, pack_withdrawals};
use crate::policy::Verdict;
use crate::rib::{DecideCtx, OutChange};
use crate::status::{BestPathChange, BestRoute};

/// Announcements grouped by attribute set, plus withdrawals, for one peer.
struct PeerOut<P> {
    groups: HashMap<usize, (Arc<PathAttributes>, Vec<P>)>,
    withdraw: Vec<P>,
}

impl<P> Default for PeerOut<P> {
    fn default() -> Self {
        PeerOut {
            groups: HashMap::new(),
            withdraw: Vec::new(),
        }
    }
}

impl Speaker {
    /// Runs after every batch of inputs: tells subscribers and peers what changed.
    pub(super) fn flush(&mut self) {
        let d4 = std::mem::take(&mut self.tables.dirty4);
        let d6 = std::mem::take(&mut self.tables.dirty6);
        if d4.is_empty() && d6.is_empty() {
            return;
        }
        let mut changes = Vec::new();
        self.flush_family::<Ipv4Net>(d4, &mut changes);
        self.flush_family::<Ipv6Net>(d6, &mut changes);
        if !changes.is_empty() {
            self.subscribers.retain(|s| s.send(changes.clone()).is_ok());
        }
    }

    fn flush_family<P: FamilyRib>(&mut self, mut dirty: Vec<P>, changes: &mut Vec<BestPathChange>) {
        if dirty.is_empty() {
            return;
        }
        // A prefix may have changed several times in the batch; decide and send it once.
        dirty.sort_unstable();
        dirty.dedup();
        if !self.subscribers.is_empty() {
            changes.extend(dirty.iter().map(|p| self.best_change(*p)));
        }
        let ids: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| p.has_family(P::FAMILY))
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.export_prefixes(id, &dirty);
        }
    }

    /// Sends a peer everything it should have, withdrawing what it should no longer have;
    /// `initial` adds End-of-RIB markers after the table (RFC 4724 §2).
    pub(super) fn full_export(&mut self, id: PeerId, initial: bool) {
        let Some(entry) = self.peers.get(&id) else {
            return;
        };
        let Some(session) = &entry.session else {
            return;
        };
        let families = session.neg.families.clone();
        for family in families {
            match family {
                Family::Ipv4Unicast => self.full_export_family::<Ipv4Net>(id),
                Family::Ipv6Unicast => self.full_export_family::<Ipv6Net>(id),
            }
        }
        if initial && let Some(entry) = self.peers.get_mut(&id) {
            let families = entry
                .session
                .as_ref()
                .map(|s| s.neg.families.clone())
                .unwrap_or_default();
            let msgs = families
                .into_iter()
                .map(|f| {
                    Message::Update(Update::end_of_rib_marker(f)).encode(EncodeContext {
                        four_octet_as: true,
                    })
                })
                .collect();
            entry.send_session(msgs, true);
        }
    }

    fn full_export_family<P: FamilyRib>(&mut self, id: PeerId) {
        let mut prefixes: Vec<P> = P::table(&self.tables).iter().map(|(p, _)| *p).collect();
        let entry = &self.peers[&id];
        let out = P::adj_out_ref(entry);
        if !out.is_empty() {
            let in_table: HashSet<P> = prefixes.iter().copied().collect();
            prefixes.extend(out.keys().filter(|p| !in_table.contains(p)));
        }
        self.export_prefixes(id, &prefixes);
    }

    fn route_sources(&self) -> HashMap<PeerId, RouteSource> {
        let mut m: HashMap<PeerId, RouteSource> = self
            .peers
            .values()
            .map(|p| {
                let router_id = self
                    .sources
                    .get(&p.id)
                    .map(|s| s.router_id)
                    .unwrap_or(self.cfg.router_id);
                (
                    p.id,
                    RouteSource {
                        peer: p.id,
                        ebgp: p.ebgp,
                        rr_client: p.cfg.route_reflector_client,
                        router_id,
                    },
                )
            })
            .collect();
        m.insert(
            LOCAL_PEER,
            RouteSource {
                peer: LOCAL_PEER,
                ebgp: false,
                rr_client: false,
                router_id: self.cfg.router_id,
            },
        );
        m
    }

    /// Exports the current best path of each prefix to one peer and sends the difference.
    fn export_prefixes<P: FamilyRib>(&mut self, id: PeerId, prefixes: &[P]) {
        let Some(entry) = self.peers.get(&id) else {
            return;
        };
        let Some(session) = &entry.session else {
            return;
        };
        let ctx = EncodeContext {
            four_octet_as: session.neg.four_octet_as,
        };
        let (self_v4, self_v6) = entry.self_addresses(&self.cfg);
        let target = Target {
            peer: id,
            as_number: entry.cfg.as_number,
            ebgp: entry.ebgp,
            rr_client: entry.cfg.route_reflector_client,
            next_hop: entry.cfg.next_hop,
            self_v4,
            self_v6,
        };
        let me = SpeakerSide {
            local_as: self.cfg.as_number,
            router_id: self.cfg.router_id,
            cluster_id: self.cfg.cluster_id,
            default_local_pref: self.cfg.default_local_pref,
        };
        let policy_peer = entry.policy_peer();
        let sources = self.route_sources();
        // The RFC transformation depends only on the attribute set and the source peer,
        // so it runs once per distinct pair however many prefixes share it.
        let mut cache: HashMap<(usize, PeerId), Option<Arc<PathAttributes>>> = HashMap::new();
        let mut out = PeerOut::<P>::default();
        let table = P::table(&self.tables);
        let entry = self.peers.get_mut(&id).expect("checked above");
        let interner = &mut self.interner;
        for prefix in prefixes {
            let desired = table.best(prefix).and_then(|best| {
                let src = sources.get(&best.peer)?;
                let key = (Arc::as_ptr(&best.attrs) as usize, best.peer);
                let exported = cache
                    .entry(key)
                    .or_insert_with(|| {
                        export::export(P::FAMILY, &best.attrs, src, &target, &me)
                            .map(|a| interner.intern(a))
                    })
                    .clone()?;
                match self
                    .policy
                    .export(&policy_peer, prefix.into_ipnet(), &exported)
                {
                    Verdict::Accept => Some(exported),
                    Verdict::Reject => None,
                    Verdict::Modify(a) => Some(interner.intern(a)),
                }
            });
            match P::adj_out(entry).set(*prefix, desired) {
                Some(OutChange::Announce(a)) => out
                    .groups
                    .entry(Arc::as_ptr(&a) as usize)
                    .or_insert_with(|| (a, Vec::new()))
                    .1
                    .push(*prefix),
                Some(OutChange::Withdraw) => out.withdraw.push(*prefix),
                None => {}
            }
        }
        let mut msgs = Vec::new();
        if !out.withdraw.is_empty() {
            pack_withdrawals(&out.withdraw, &mut msgs);
        }
        for (attrs, mut prefixes) in out.groups.into_values() {
            prefixes.sort_unstable();
            pack_announcements(&attrs, &prefixes, ctx, &mut msgs);
        }
        entry.send_session(msgs, true);
    }

    fn best_change<P: FamilyRib>(&self, prefix: P) -> BestPathChange {
        let table = P::table(&self.tables);
        let paths = table.paths(&prefix);
        let Some(best) = paths.first() else {
            return BestPathChange {
                prefix: prefix.into_ipnet(),
                best: None,
            };
        };
        let ctx = DecideCtx {
            cfg: self.decision_config(),
            sources: &self.sources,
        };
        let mut next_hops: Vec<IpAddr> = Vec::new();
        let multipath = if paths.len() > 1 {
            table
                .explain(&prefix, &ctx)
                .map(|d| d.multipath)
                .unwrap_or_default()
        } else {
            vec![0]
        };
        for i in multipath {
            if let Some(nh) = paths[i].attrs.next_hop
                && !next_hops.contains(&nh)
            {
                next_hops.push(nh);
            }
        }
        BestPathChange {
            prefix: prefix.into_ipnet(),
            best: Some(BestRoute {
                peer: (best.peer != LOCAL_PEER)
                    .then(|| self.sources.get(&best.peer).map(|s| s.address))
                    .flatten(),
                next_hops,
                attributes: best.attrs.clone(),
            }),
        }
    }

    /// The whole Loc-RIB as changes, for a new subscriber.
    pub(super) fn snapshot_changes(&self) -> Vec<BestPathChange> {
        let v4 = self.tables.v4.iter().map(|(p, _)| self.best_change(*p));
        let v6 = self.tables.v6.iter().map(|(p, _)| self.best_change(*p));
        v4.chain(v6).collect()
    }
}
