//! From Loc-RIB changes to the wire: each update group's export (`exporter`) of the changed
//! prefixes, compared with what the group was sent (the best path at the last flush through
//! the same export, or the current one through the group's previous export after a regroup
//! or a policy change), packing UPDATEs by attribute set (encoded once per group), pacing of
//! members that cannot keep up, and best-path batches for subscribers.
//!
//! Pacing: a member whose write queue is over the speaker's byte budget, that is receiving
//! its first table, or that asked for a ROUTE-REFRESH is *paced*. It is not sent the group's
//! incremental UPDATEs; the prefixes they concern go into its backlog (a set, so each is
//! held once however often it changes), and [`Speaker::pump`] sends it the group's current
//! state for backlog prefixes in chunks of about half the budget, each time its queue
//! drains to the low-water mark. Memory per slow peer is therefore the byte budget plus
//! one entry per distinct prefix, never a copy of every UPDATE it missed.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};

use super::exporter::{ExportInputs, Exporter};
use super::groups::{GroupId, GroupKey, UpdateGroup};
use super::peer::{Backlog, join};
use super::{Dirty, FamilyRib, Speaker};
use crate::af::Family;
use crate::decision::{LOCAL_PEER, PeerId};
use crate::export::RouteSource;
use crate::packet::attribute::{EncodeContext, PathAttributes};
use crate::packet::message::{Message, Update, pack_announcements_within, pack_withdrawals};
use crate::policy::RoutePolicy;
use crate::rib::{AdjRibOut, DecideCtx, FastMap, FastSet, OutChange};

/// What a group was sent before a pass, so that only real changes go out.
pub(super) enum Before<'a, P> {
    /// Best paths changed since the last pass (the export function did not): each changed
    /// prefix's best path then.
    Changed(&'a Dirty<P>),
    /// The group's split horizon changed (a member joined a group of one, or all but one
    /// left): the Loc-RIB did not.
    Split(Option<PeerId>),
    /// The export policy changed from this one.
    Policy(Arc<dyn RoutePolicy>),
    /// Nothing is known (a new group): every exported prefix is announced.
    Unknown,
}

impl<P> Before<'_, P> {
    /// A member joined a group that had `only` as its one member (or no member: new).
    fn joined(only: Option<PeerId>) -> Self {
        match only {
            Some(p) => Before::Split(Some(p)),
            None => Before::Unknown,
        }
    }
}

/// Encoded UPDATEs for a group and the prefixes they concern (what a paced member records
/// instead of receiving them).
#[derive(Default)]
pub(crate) struct Batch {
    msgs: Vec<Vec<u8>>,
    touched4: Vec<Ipv4Net>,
    touched6: Vec<Ipv6Net>,
}

impl Batch {
    pub(super) fn touched4(&mut self) -> &mut Vec<Ipv4Net> {
        &mut self.touched4
    }

    pub(super) fn touched6(&mut self) -> &mut Vec<Ipv6Net> {
        &mut self.touched6
    }

    pub(super) fn append(&mut self, other: Batch) {
        self.msgs.extend(other.msgs);
        self.touched4.extend(other.touched4);
        self.touched6.extend(other.touched6);
    }
}

/// Prefixes per step of a backlog catch-up, before checking the bytes produced.
const CATCH_UP_STEP: usize = 2048;
use crate::status::{BestPathChange, BestRoute};

/// Announcements grouped by attribute set (with its NLRI room), plus withdrawals, for one
/// peer.
struct PeerOut<P> {
    groups: FastMap<usize, (Arc<PathAttributes>, usize, Vec<P>)>,
    withdraw: Vec<P>,
}

impl<P: FamilyRib> PeerOut<P> {
    /// Adds an announcement of a set the exporter accepted (and sized).
    fn announce(&mut self, attrs: Arc<PathAttributes>, prefix: P, exporter: &Exporter<'_, P>) {
        self.groups
            .entry(Arc::as_ptr(&attrs) as usize)
            .or_insert_with(|| {
                let room = exporter.room_of(&attrs);
                (attrs, room, Vec::new())
            })
            .2
            .push(prefix);
    }

    /// Withdrawals first, then announcements packed per attribute set, each in the room
    /// the exporter measured for this `ctx`.
    fn encode(self, ctx: EncodeContext) -> Vec<Vec<u8>> {
        let mut msgs = Vec::new();
        if !self.withdraw.is_empty() {
            pack_withdrawals(&self.withdraw, ctx, &mut msgs);
        }
        for (attrs, room, mut prefixes) in self.groups.into_values() {
            prefixes.sort_unstable();
            pack_announcements_within(&attrs, &prefixes, ctx, room, &mut msgs);
        }
        msgs
    }

    /// The encoded UPDATEs with the prefixes they concern.
    fn into_batch(self, ctx: EncodeContext) -> Batch {
        let mut batch = Batch::default();
        let touched = P::batch_touched(&mut batch);
        touched.extend(self.withdraw.iter().copied());
        for (_, _, prefixes) in self.groups.values() {
            touched.extend(prefixes.iter().copied());
        }
        batch.msgs = self.encode(ctx);
        batch
    }
}

impl<P> Default for PeerOut<P> {
    fn default() -> Self {
        PeerOut {
            groups: FastMap::default(),
            withdraw: Vec::new(),
        }
    }
}

impl Speaker {
    /// Runs after every batch of inputs: tells subscribers and peers what changed.
    pub(super) fn flush(&mut self) {
        if self.tables.dirty4.is_empty() && self.tables.dirty6.is_empty() {
            return;
        }
        let mut d4 = std::mem::take(&mut self.tables.dirty4);
        let mut d6 = std::mem::take(&mut self.tables.dirty6);
        let mut changes = Vec::new();
        self.flush_family::<Ipv4Net>(&d4, &mut changes);
        self.flush_family::<Ipv6Net>(&d6, &mut changes);
        if !changes.is_empty() {
            self.subscribers.retain(|s| s.send(changes.clone()).is_ok());
        }
        // The maps go back empty with their room (a batch is up to BATCH_PREFIXES changes;
        // growing them again every batch is wasted work), unless changes came meanwhile.
        d4.clear();
        d6.clear();
        if self.tables.dirty4.is_empty() {
            self.tables.dirty4 = d4;
        }
        if self.tables.dirty6.is_empty() {
            self.tables.dirty6 = d6;
        }
    }

    fn flush_family<P: FamilyRib>(&mut self, dirty: &Dirty<P>, changes: &mut Vec<BestPathChange>) {
        if dirty.is_empty() {
            return;
        }
        // A prefix may have changed several times in the batch: it is decided and sent once,
        // against its best path at the last flush.
        let mut prefixes: Vec<P> = dirty.keys().copied().collect();
        prefixes.sort_unstable();
        if !self.subscribers.is_empty() {
            changes.extend(prefixes.iter().map(|p| self.best_change(*p)));
        }
        let groups: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.key.families.contains(&P::FAMILY))
            .map(|(id, _)| *id)
            .collect();
        for gid in groups {
            let batch = self.export_group::<P>(gid, &prefixes, Before::Changed(dirty), true);
            self.send_to_members(gid, batch, None);
        }
    }

    /// The update-group key of a peer's current session (None without a session).
    fn group_key(&self, id: PeerId) -> Option<GroupKey> {
        let entry = self.peers.get(&id)?;
        let session = entry.session()?;
        let (self_v4, self_v6) = entry.self_addresses(&self.cfg);
        Some(GroupKey {
            families: session.neg.families.clone(),
            four_octet_as: session.neg.four_octet_as,
            extended_messages: session.neg.extended_messages,
            as_number: entry.cfg().as_number,
            local_as: entry.cfg().local_as(self.cfg.as_number),
            ebgp: entry.ebgp(),
            rr_client: entry.cfg().route_reflector_client,
            next_hop: entry.cfg().next_hop,
            self_v4,
            self_v6,
            policy_address: self
                .policy
                .export_depends_on_peer(entry.cfg().address)
                .then_some(entry.cfg().address),
        })
    }

    /// Puts a peer whose session just came up (or whose export inputs changed) into the
    /// right update group and sends it what it is missing; `initial` adds End-of-RIB
    /// markers after the table (RFC 4724 §2).
    pub(super) fn full_export(&mut self, id: PeerId, initial: bool) {
        if self.peers.get(&id).is_some_and(|e| !e.cfg().export) {
            // `export none`: no update group, no per-prefix work; the (empty) table still
            // ends with End-of-RIB.
            if initial {
                self.send_end_of_rib(id);
            }
            return;
        }
        let Some(key) = self.group_key(id) else {
            return;
        };
        // Every group's Adj-RIB-Out matches the Loc-RIB before membership changes (what
        // the "before" of a regroup is computed from).
        self.flush();
        let current = self.peers[&id].group();
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
        self.peers
            .get_mut(&id)
            .expect("has a session")
            .set_group(Some(gid));
        if old_members.len() <= 1 {
            // New, or was a group of one: its table changes (split horizon applies only to
            // a lone member), so recompute it and tell the existing member the difference.
            let tell = !old_members.is_empty();
            let only = old_members.first().copied();
            let mut batch = self.rebuild_group::<Ipv4Net>(gid, Before::joined(only), tell);
            batch.append(self.rebuild_group::<Ipv6Net>(gid, Before::joined(only), tell));
            self.send_to_members(gid, batch, Some(&old_members));
        }
        // The newcomer is caught up from the group's table, paced by its own queue. After a
        // move, what the old group had sent it is re-sent or withdrawn too.
        let group = &self.groups[&gid];
        let mut backlog = Backlog {
            end_of_rib: initial,
            ..Backlog::default()
        };
        backlog.v4.extend(group.out4.keys().copied());
        backlog.v6.extend(group.out6.keys().copied());
        if let Some((b4, b6)) = before {
            backlog.v4.extend(b4.keys().copied());
            backlog.v6.extend(b6.keys().copied());
        }
        let pacing = self.peers.get_mut(&id).expect("has a session").pace();
        pacing.v4.extend(backlog.v4);
        pacing.v6.extend(backlog.v6);
        pacing.end_of_rib |= initial;
        self.pump(id);
    }

    /// Takes a peer out of its update group (session down, or moving); with `held`, returns
    /// what the group had advertised, for a move's difference.
    pub(super) fn leave_group(
        &mut self,
        id: PeerId,
        gid: GroupId,
        held: bool,
    ) -> (AdjRibOut<Ipv4Net>, AdjRibOut<Ipv6Net>) {
        self.flush();
        if let Some(entry) = self.peers.get_mut(&id) {
            entry.set_group(None);
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
                    let mut batch = self.rebuild_group::<Ipv4Net>(gid, Before::Split(None), true);
                    batch.append(self.rebuild_group::<Ipv6Net>(gid, Before::Split(None), true));
                    self.send_to_members(gid, batch, None);
                }
                held
            }
        }
    }

    /// Recomputes a group's whole table for one family; returns the UPDATEs for the change
    /// when `encode` (nobody to tell: skip the encoding).
    pub(super) fn rebuild_group<P: FamilyRib>(
        &mut self,
        gid: GroupId,
        before: Before<'_, P>,
        encode: bool,
    ) -> Batch {
        if !self.groups[&gid].key.families.contains(&P::FAMILY) {
            return Batch::default();
        }
        // The table's prefixes, and any announced one no longer in it (to withdraw), found
        // by looking each up rather than by a set of the whole table.
        let table = P::table(&self.tables);
        let mut prefixes: Vec<P> = table.iter().map(|(p, _)| *p).collect();
        let out = P::adj_out_ref(&self.groups[&gid]);
        prefixes.extend(out.keys().filter(|p| table.best(p).is_none()));
        self.export_group(gid, &prefixes, before, encode)
    }

    /// Sends one encoded batch to the members of a group (or to `only` among them). A
    /// member that is paced, or whose queue is over budget, records the batch's prefixes in
    /// its backlog instead.
    pub(super) fn send_to_members(&mut self, gid: GroupId, batch: Batch, only: Option<&[PeerId]>) {
        if batch.msgs.is_empty() {
            return;
        }
        let Some(group) = self.groups.get(&gid) else {
            return;
        };
        let members: Vec<PeerId> = match only {
            Some(ids) => ids.to_vec(),
            None => group.members.clone(),
        };
        let budget = self.cfg.write_queue_bytes;
        let n = batch.msgs.len() as u64;
        let buf = join(batch.msgs);
        let mut paced = Vec::new();
        for m in members {
            let Some(entry) = self.peers.get_mut(&m) else {
                continue;
            };
            if !entry.is_paced() && entry.queued_bytes() <= budget {
                entry.send_batch(&buf, n, true);
                continue;
            }
            if !entry.is_paced() {
                entry.span().in_scope(|| {
                    tracing::info!(
                        queued = entry.queued_bytes(),
                        budget,
                        "peer reads slower than we send; pacing it from the table"
                    )
                });
            }
            let b = entry.pace();
            b.v4.extend(batch.touched4.iter().copied());
            b.v6.extend(batch.touched6.iter().copied());
            paced.push(m);
        }
        for m in paced {
            self.pump(m);
        }
    }

    /// Sends a paced member the next part of its backlog while its queue has room; asks
    /// the writer for a `Drained` report when it has not. Rejoins normal sending (and sends
    /// End-of-RIB when due) once the backlog is empty.
    pub(super) fn pump(&mut self, id: PeerId) {
        let low_water = self.cfg.write_queue_bytes / 2;
        loop {
            let Some(entry) = self.peers.get_mut(&id) else {
                return;
            };
            let (Some(gid), Some(conn)) = (entry.group(), entry.session_conn()) else {
                return;
            };
            if !entry.is_paced() {
                return;
            }
            if conn.meter.queued() > low_water && !conn.meter.notify_when_drained() {
                // A `Drained` input brings us back.
                return;
            }
            let mut backlog = entry.take_backlog().expect("checked above");
            let mut msgs = self.catch_up::<Ipv4Net>(gid, &mut backlog.v4, low_water);
            if msgs.iter().map(Vec::len).sum::<usize>() < low_water {
                msgs.extend(self.catch_up::<Ipv6Net>(gid, &mut backlog.v6, low_water));
            }
            let done = backlog.is_empty();
            let end_of_rib = done && backlog.end_of_rib;
            let entry = self.peers.get_mut(&id).expect("checked above");
            if !done {
                entry.resume_backlog(backlog);
            }
            if !msgs.is_empty() {
                entry.send_session(msgs, true);
            }
            if end_of_rib {
                self.send_end_of_rib(id);
            }
            if done {
                return;
            }
        }
    }

    /// UPDATEs (about `bytes` of them, at least one step) that bring backlog prefixes up to
    /// the group's current table; the prefixes sent leave the backlog.
    fn catch_up<P: FamilyRib>(
        &self,
        gid: GroupId,
        backlog: &mut FastSet<P>,
        bytes: usize,
    ) -> Vec<Vec<u8>> {
        let group = &self.groups[&gid];
        let ctx = group.key.encode_context();
        let sources = self.route_sources();
        let inputs = ExportInputs {
            split_horizon: group.split_horizon_peer(),
            policy: &*self.policy,
        };
        let first = self.first_member_address(gid);
        let n = backlog.len();
        let mut now = Exporter::<P>::new(group, inputs, &self.cfg, &sources, first, n);
        let table = P::table(&self.tables);
        let mut msgs: Vec<Vec<u8>> = Vec::new();
        let mut produced = 0;
        // Taken out whole and walked once (taking steps from the front of a set after
        // removals would rescan the emptied slots every step); the rest goes back.
        let mut rest = std::mem::take(backlog).into_iter();
        while produced < bytes {
            let step: Vec<P> = rest.by_ref().take(CATCH_UP_STEP).collect();
            if step.is_empty() {
                break;
            }
            let mut out = PeerOut::<P>::default();
            for prefix in step {
                // The group's current export, recomputed from the Loc-RIB.
                match now.export(prefix, table.best(&prefix)) {
                    Some(attrs) => out.announce(attrs, prefix, &now),
                    // Gone since (or never sent): a withdrawal of an unknown prefix is
                    // harmless to the peer.
                    None => out.withdraw.push(prefix),
                }
            }
            let encoded = out.encode(ctx);
            produced += encoded.iter().map(Vec::len).sum::<usize>();
            msgs.extend(encoded);
        }
        backlog.extend(rest);
        msgs
    }

    fn send_end_of_rib(&mut self, id: PeerId) {
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        let families = entry
            .session()
            .map(|s| s.neg.families.clone())
            .unwrap_or_default();
        let msgs = families
            .into_iter()
            .map(|f| {
                Message::Update(Update::end_of_rib_marker(f)).encode(EncodeContext {
                    four_octet_as: true,
                    extended_messages: false,
                })
            })
            .collect();
        entry.send_session(msgs, true);
    }

    /// ROUTE-REFRESH: the member is paced through the group's whole table for one family.
    /// Requests that arrive while one is still being served coalesce into the same backlog.
    pub(super) fn resend_table(&mut self, id: PeerId, family: Family) {
        let Some(gid) = self.peers.get(&id).and_then(|e| e.group()) else {
            return;
        };
        let group = &self.groups[&gid];
        let entry = self.peers.get_mut(&id).expect("checked above");
        let b = entry.pace();
        match family {
            Family::Ipv4Unicast => b.v4.extend(group.out4.keys().copied()),
            Family::Ipv6Unicast => b.v6.extend(group.out6.keys().copied()),
        }
        self.pump(id);
    }

    fn route_sources(&self) -> FastMap<PeerId, RouteSource> {
        let mut m: FastMap<PeerId, RouteSource> = self
            .peers
            .values()
            .map(|p| {
                let router_id = self
                    .sources
                    .get(&p.id())
                    .map(|s| s.router_id)
                    .unwrap_or(self.cfg.router_id);
                (
                    p.id(),
                    RouteSource {
                        peer: p.id(),
                        ebgp: p.ebgp(),
                        rr_client: p.cfg().route_reflector_client,
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

    /// The address the policy sees for a group whose key does not name one.
    fn first_member_address(&self, gid: GroupId) -> Option<IpAddr> {
        let group = self.groups.get(&gid)?;
        let first = group.members.first()?;
        self.peers.get(first).map(|e| e.cfg().address)
    }

    /// Exports the current best path of each prefix to one update group, records what is
    /// announced in the group's Adj-RIB-Out and returns the UPDATEs for the difference
    /// (encoded once for every member). `before` says what the group was sent, so that only
    /// real changes go out.
    fn export_group<P: FamilyRib>(
        &mut self,
        gid: GroupId,
        prefixes: &[P],
        before: Before<'_, P>,
        encode: bool,
    ) -> Batch {
        let Some(group) = self.groups.get(&gid) else {
            return Batch::default();
        };
        let ctx = group.key.encode_context();
        let sources = self.route_sources();
        let first = self.first_member_address(gid);
        let now_inputs = ExportInputs {
            split_horizon: group.split_horizon_peer(),
            policy: &*self.policy,
        };
        let n = prefixes.len();
        let mut now = Exporter::<P>::new(group, now_inputs, &self.cfg, &sources, first, n);
        let mut then = match &before {
            Before::Changed(_) | Before::Unknown => None,
            Before::Split(split_horizon) => Some(Exporter::<P>::new(
                group,
                ExportInputs {
                    split_horizon: *split_horizon,
                    ..now_inputs
                },
                &self.cfg,
                &sources,
                first,
                n,
            )),
            Before::Policy(old) => Some(Exporter::<P>::new(
                group,
                ExportInputs {
                    policy: &**old,
                    ..now_inputs
                },
                &self.cfg,
                &sources,
                first,
                n,
            )),
        };
        let mut out = PeerOut::<P>::default();
        let table = P::table(&self.tables);
        let group = self.groups.get_mut(&gid).expect("checked above");
        for prefix in prefixes {
            let best = table.best(prefix);
            let desired = now.export(*prefix, best);
            // What the group holds, where it can be told: the previous best path through
            // today's function, or today's best path through the previous function.
            let sent = match (&before, then.as_mut()) {
                (Before::Changed(old), _) => old
                    .get(prefix)
                    .and_then(|old_best| now.export(*prefix, old_best.as_ref())),
                (_, Some(then)) => then.export(*prefix, best),
                _ => None,
            };
            match P::adj_out(group).set(*prefix, desired, sent.as_ref()) {
                Some(_) if !encode => {}
                Some(OutChange::Announce(a)) => out.announce(a, *prefix, &now),
                Some(OutChange::Withdraw) => out.withdraw.push(*prefix),
                None => {}
            }
        }
        let too_large = std::mem::take(&mut now.too_large);
        drop((now, then));
        if !too_large.is_empty() {
            self.report_too_large(gid, ctx, &too_large);
        }
        out.into_batch(ctx)
    }

    /// Counts and logs (once per attribute set and batch) routes withheld from a group
    /// because they do not fit in one UPDATE.
    fn report_too_large<P: FamilyRib>(
        &mut self,
        gid: GroupId,
        ctx: EncodeContext,
        too_large: &FastMap<usize, (usize, P)>,
    ) {
        let total: usize = too_large.values().map(|(n, _)| n).sum();
        let members = self.groups[&gid].members.clone();
        let addresses: Vec<IpAddr> = members
            .iter()
            .filter_map(|m| self.peers.get(m).map(|e| e.cfg().address))
            .collect();
        for m in &members {
            if let Some(e) = self.peers.get_mut(m) {
                e.withhold(total as u64);
            }
        }
        for (count, first) in too_large.values() {
            tracing::warn!(
                peers = ?addresses,
                prefixes = count,
                first = %first.into_ipnet(),
                limit = ctx.max_update_len(),
                "route attributes do not fit in one UPDATE for these peers; not sent (withdrawn where advertised)"
            );
        }
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
