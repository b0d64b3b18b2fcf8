//! From Loc-RIB changes to the wire: export rules and policy per update group, Adj-RIB-Out
//! diffing, packing UPDATEs by attribute set (encoded once per group), and best-path
//! batches for subscribers.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};

use super::groups::{GroupId, GroupKey, UpdateGroup};
use super::peer::join;
use super::{FamilyRib, Speaker};
use crate::af::Family;
use crate::decision::{LOCAL_PEER, PeerId};
use crate::export::{self, RouteSource, SpeakerSide, Target};
use crate::packet::attribute::{EncodeContext, PathAttributes};
use crate::packet::message::{Message, Update, pack_announcements, pack_withdrawals};
use crate::policy::{PolicyPeer, Verdict};
use crate::rib::{AdjRibOut, DecideCtx, OutChange};
use crate::status::{BestPathChange, BestRoute};

/// Announcements grouped by attribute set, plus withdrawals, for one peer.
struct PeerOut<P> {
    groups: HashMap<usize, (Arc<PathAttributes>, Vec<P>)>,
    withdraw: Vec<P>,
}

impl<P: crate::af::Prefix> PeerOut<P> {
    /// Withdrawals first, then announcements packed per attribute set.
    fn encode(self, ctx: EncodeContext) -> Vec<Vec<u8>> {
        let mut msgs = Vec::new();
        if !self.withdraw.is_empty() {
            pack_withdrawals(&self.withdraw, &mut msgs);
        }
        for (attrs, mut prefixes) in self.groups.into_values() {
            prefixes.sort_unstable();
            pack_announcements(&attrs, &prefixes, ctx, &mut msgs);
        }
        msgs
    }
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
        let groups: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.key.families.contains(&P::FAMILY))
            .map(|(id, _)| *id)
            .collect();
        for gid in groups {
            let msgs = self.export_group::<P>(gid, &dirty, true);
            self.send_to_members(gid, msgs, None);
        }
    }

    /// The update-group key of a peer's current session (None without a session).
    fn group_key(&self, id: PeerId) -> Option<GroupKey> {
        let entry = self.peers.get(&id)?;
        let session = entry.session.as_ref()?;
        let (self_v4, self_v6) = entry.self_addresses(&self.cfg);
        Some(GroupKey {
            families: session.neg.families.clone(),
            four_octet_as: session.neg.four_octet_as,
            as_number: entry.cfg.as_number,
            ebgp: entry.ebgp,
            rr_client: entry.cfg.route_reflector_client,
            next_hop: entry.cfg.next_hop,
            self_v4,
            self_v6,
            policy_address: self
                .policy
                .export_depends_on_peer_address()
                .then_some(entry.cfg.address),
        })
    }

    /// Puts a peer whose session just came up (or whose export inputs changed) into the
    /// right update group and sends it what it is missing; `initial` adds End-of-RIB
    /// markers after the table (RFC 4724 §2).
    pub(super) fn full_export(&mut self, id: PeerId, initial: bool) {
        let Some(key) = self.group_key(id) else {
            return;
        };
        let current = self.peers[&id].group;
        if let Some(gid) = current
            && self.groups[&gid].key == key
        {
            if initial {
                self.send_end_of_rib(id);
            }
            return;
        }
        // What the peer holds now (when it moves between groups), to send only the change.
        let before = current.map(|gid| self.leave_group(id, gid, true));
        let gid = match self.groups.iter().find(|(_, g)| g.key == key) {
            Some((gid, _)) => *gid,
            None => {
                let gid = self.next_group_id;
                self.next_group_id += 1;
                self.groups.insert(gid, UpdateGroup::new(key));
                gid
            }
        };
        let group = self.groups.get_mut(&gid).expect("just found or made");
        let old_members = group.members.clone();
        group.members.push(id);
        self.peers.get_mut(&id).expect("has a session").group = Some(gid);
        if old_members.len() <= 1 {
            // New, or was a group of one: its table changes (split horizon applies only to
            // a lone member), so recompute it and tell the existing member the difference.
            let tell = !old_members.is_empty();
            let m4 = self.rebuild_group::<Ipv4Net>(gid, tell);
            let m6 = self.rebuild_group::<Ipv6Net>(gid, tell);
            let mut msgs = m4;
            msgs.extend(m6);
            self.send_to_members(gid, msgs, Some(&old_members));
        }
        let (b4, b6) = before.unwrap_or_default();
        let mut msgs = self.table_difference::<Ipv4Net>(gid, &b4);
        msgs.extend(self.table_difference::<Ipv6Net>(gid, &b6));
        let n = msgs.len() as u64;
        let buf = join(msgs);
        if let Some(entry) = self.peers.get_mut(&id) {
            entry.send_batch(&buf, n, true);
        }
        if initial {
            self.send_end_of_rib(id);
        }
    }

    /// Takes a peer out of its update group (session down, or moving); with `held`, returns
    /// what the group had advertised, for a move's difference.
    pub(super) fn leave_group(
        &mut self,
        id: PeerId,
        gid: GroupId,
        held: bool,
    ) -> (AdjRibOut<Ipv4Net>, AdjRibOut<Ipv6Net>) {
        if let Some(entry) = self.peers.get_mut(&id) {
            entry.group = None;
        }
        let Some(group) = self.groups.get_mut(&gid) else {
            return Default::default();
        };
        group.members.retain(|m| *m != id);
        match group.members.len() {
            0 => {
                let g = self.groups.remove(&gid).expect("present");
                (g.out4, g.out6)
            }
            n => {
                let held = if held {
                    (group.out4.clone(), group.out6.clone())
                } else {
                    Default::default()
                };
                if n == 1 {
                    // The one left gets exact split horizon again: withdraw its own routes.
                    let mut msgs = self.rebuild_group::<Ipv4Net>(gid, true);
                    msgs.extend(self.rebuild_group::<Ipv6Net>(gid, true));
                    self.send_to_members(gid, msgs, None);
                }
                held
            }
        }
    }

    /// Recomputes a group's whole table for one family; returns the UPDATEs for the change
    /// when `encode` (nobody to tell: skip the encoding).
    fn rebuild_group<P: FamilyRib>(&mut self, gid: GroupId, encode: bool) -> Vec<Vec<u8>> {
        if !self.groups[&gid].key.families.contains(&P::FAMILY) {
            return Vec::new();
        }
        let mut prefixes: Vec<P> = P::table(&self.tables).iter().map(|(p, _)| *p).collect();
        let out = P::adj_out_ref(&self.groups[&gid]);
        if !out.is_empty() {
            let in_table: HashSet<P> = prefixes.iter().copied().collect();
            prefixes.extend(out.keys().filter(|p| !in_table.contains(p)));
        }
        self.export_group(gid, &prefixes, encode)
    }

    /// UPDATEs that take a peer from having been sent `before` to the group's table.
    fn table_difference<P: FamilyRib>(&self, gid: GroupId, before: &AdjRibOut<P>) -> Vec<Vec<u8>> {
        let group = &self.groups[&gid];
        if !group.key.families.contains(&P::FAMILY) {
            return Vec::new();
        }
        let now = P::adj_out_ref(group);
        let mut out = PeerOut::<P>::default();
        for (prefix, attrs) in now.entries() {
            if before
                .get(prefix)
                .is_some_and(|b| Arc::ptr_eq(b, attrs) || **b == **attrs)
            {
                continue;
            }
            out.groups
                .entry(Arc::as_ptr(attrs) as usize)
                .or_insert_with(|| (attrs.clone(), Vec::new()))
                .1
                .push(*prefix);
        }
        out.withdraw = before
            .keys()
            .filter(|p| now.get(p).is_none())
            .copied()
            .collect();
        out.encode(EncodeContext {
            four_octet_as: group.key.four_octet_as,
        })
    }

    /// Sends one encoded batch to the members of a group (or to `only` among them).
    fn send_to_members(&mut self, gid: GroupId, msgs: Vec<Vec<u8>>, only: Option<&[PeerId]>) {
        if msgs.is_empty() {
            return;
        }
        let Some(group) = self.groups.get(&gid) else {
            return;
        };
        let members: Vec<PeerId> = match only {
            Some(ids) => ids.to_vec(),
            None => group.members.clone(),
        };
        let n = msgs.len() as u64;
        let buf = join(msgs);
        for m in members {
            if let Some(entry) = self.peers.get_mut(&m) {
                entry.send_batch(&buf, n, true);
            }
        }
    }

    fn send_end_of_rib(&mut self, id: PeerId) {
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
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

    /// Re-sends a member the group's whole table for one family (ROUTE-REFRESH).
    pub(super) fn resend_table(&mut self, id: PeerId, family: Family) {
        let Some(gid) = self.peers.get(&id).and_then(|e| e.group) else {
            return;
        };
        let msgs = match family {
            Family::Ipv4Unicast => self.table_difference::<Ipv4Net>(gid, &AdjRibOut::default()),
            Family::Ipv6Unicast => self.table_difference::<Ipv6Net>(gid, &AdjRibOut::default()),
        };
        let n = msgs.len() as u64;
        let buf = join(msgs);
        if let Some(entry) = self.peers.get_mut(&id) {
            entry.send_batch(&buf, n, true);
        }
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

    /// Exports the current best path of each prefix to one update group, records it in the
    /// group's Adj-RIB-Out and returns the UPDATEs for the difference (encoded once for
    /// every member).
    fn export_group<P: FamilyRib>(
        &mut self,
        gid: GroupId,
        prefixes: &[P],
        encode: bool,
    ) -> Vec<Vec<u8>> {
        let Some(group) = self.groups.get(&gid) else {
            return Vec::new();
        };
        let key = group.key.clone();
        let ctx = EncodeContext {
            four_octet_as: key.four_octet_as,
        };
        let target = Target {
            // No member is excluded in a shared group (see the module notes in `groups`).
            peer: group.split_horizon_peer().unwrap_or(PeerId::MAX),
            as_number: key.as_number,
            ebgp: key.ebgp,
            rr_client: key.rr_client,
            next_hop: key.next_hop,
            self_v4: key.self_v4,
            self_v6: key.self_v6,
        };
        let me = SpeakerSide {
            local_as: self.cfg.as_number,
            router_id: self.cfg.router_id,
            cluster_id: self.cfg.cluster_id,
            default_local_pref: self.cfg.default_local_pref,
        };
        let policy_peer = PolicyPeer {
            address: key
                .policy_address
                .or_else(|| {
                    group
                        .members
                        .first()
                        .and_then(|m| self.peers.get(m))
                        .map(|e| e.cfg.address)
                })
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            as_number: key.as_number,
            ebgp: key.ebgp,
        };
        let sources = self.route_sources();
        // The RFC transformation depends only on the attribute set and the source peer,
        // so it runs once per distinct pair however many prefixes share it.
        let mut cache: HashMap<(usize, PeerId), Option<Arc<PathAttributes>>> = HashMap::new();
        let mut out = PeerOut::<P>::default();
        let table = P::table(&self.tables);
        let group = self.groups.get_mut(&gid).expect("checked above");
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
            match P::adj_out(group).set(*prefix, desired) {
                Some(_) if !encode => {}
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
        out.encode(ctx)
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
