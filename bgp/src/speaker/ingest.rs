//! Taking in a peer's UPDATE: RFC 7606 outcomes, loop checks, import policy, and the
//! Adj-RIB-In / Loc-RIB update.

use std::net::IpAddr;

use ipnet::IpNet;

use super::Speaker;
use crate::af::Family;
use crate::decision::{Path, PeerId};
use crate::packet::attribute::PathAttributes;
use crate::packet::error::UpdateErrorAction;
use crate::packet::message::Update;
use crate::policy::Verdict;

impl Speaker {
    pub(super) fn on_update(&mut self, id: PeerId, update: Update) {
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        if let Some(family) = update.end_of_rib() {
            entry
                .span()
                .in_scope(|| tracing::info!(%family, "End-of-RIB received"));
            self.on_end_of_rib(id, family);
            return;
        }
        if !update.errors.is_empty() {
            entry.count_update_error();
            for e in &update.errors {
                entry.span().in_scope(|| {
                    tracing::warn!(action = ?e.action, type_code = e.type_code, subcode = e.subcode, "malformed UPDATE attribute: {}", e.reason)
                });
            }
        }
        let withdraw_all = update.error_action() == Some(UpdateErrorAction::TreatAsWithdraw)
            || self.rejects_path(id, &update.attributes);

        for p in &update.withdrawn {
            self.withdraw_from(id, IpNet::V4(*p));
        }
        if let Some(u) = &update.mp_unreach {
            for p in &u.withdrawn {
                self.withdraw_from(id, *p);
            }
        }
        let mut batches: Vec<(PathAttributes, Vec<IpNet>)> = Vec::new();
        if !update.nlri.is_empty() {
            batches.push((
                update.attributes.clone(),
                update.nlri.iter().map(|p| IpNet::V4(*p)).collect(),
            ));
        }
        if let Some(mp) = update.mp_reach {
            let mut attrs = update.attributes;
            attrs.next_hop = mp.next_hop;
            attrs.link_local_next_hop = mp.link_local_next_hop.map(Box::new);
            batches.push((attrs, mp.nlri));
        }
        for (attrs, prefixes) in batches {
            if withdraw_all {
                prefixes.into_iter().for_each(|p| self.withdraw_from(id, p));
                continue;
            }
            let attrs = self.interner.intern(attrs);
            for prefix in prefixes {
                self.import(id, prefix, &attrs);
            }
        }
        self.updates_since_sweep += 1;
        if self.updates_since_sweep > 100_000 {
            self.updates_since_sweep = 0;
            self.interner.sweep();
        }
    }

    /// Loop and sanity checks that make a path unusable (RFC 4271 §9, RFC 4456 §8).
    fn rejects_path(&self, id: PeerId, attrs: &PathAttributes) -> bool {
        let entry = &self.peers[&id];
        let why = if entry.ebgp()
            && attrs
                .as_path
                .count(entry.cfg().local_as(self.cfg.as_number))
                > usize::from(entry.cfg().allow_local_as)
        {
            Some("AS path contains our AS (loop)")
        } else if entry.ebgp()
            && attrs
                .as_path
                .first_as()
                .is_some_and(|a| a != entry.cfg().as_number)
        {
            Some("first AS in the path is not the peer's AS")
        } else if attrs.originator_id == Some(self.cfg.router_id) {
            Some("ORIGINATOR_ID is our router ID (reflection loop)")
        } else if attrs
            .cluster_list
            .contains(&self.cfg.cluster_id.unwrap_or(self.cfg.router_id))
        {
            Some("CLUSTER_LIST contains our cluster ID (reflection loop)")
        } else if attrs.next_hop.is_some_and(|nh| self.is_own_address(nh)) {
            Some("next hop is one of our addresses")
        } else {
            None
        };
        if let Some(reason) = why {
            entry
                .span()
                .in_scope(|| tracing::debug!(reason, "UPDATE treated as withdraw"));
        }
        why.is_some()
    }

    fn is_own_address(&self, addr: IpAddr) -> bool {
        self.peers
            .values()
            .any(|p| p.session().is_some_and(|s| s.local.ip() == addr))
    }

    fn withdraw_from(&mut self, id: PeerId, prefix: IpNet) {
        let family = Family::of(&prefix);
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        if !entry.has_family(family) {
            return;
        }
        let removed = match prefix {
            IpNet::V4(p) => self.remove_path(p, id),
            IpNet::V6(p) => self.remove_path(p, id),
        };
        let entry = self.peers.get_mut(&id).expect("checked");
        entry.route_removed(prefix, removed.is_some());
    }

    fn import(&mut self, id: PeerId, prefix: IpNet, attrs: &std::sync::Arc<PathAttributes>) {
        let family = Family::of(&prefix);
        let entry = &self.peers[&id];
        // A session torn down mid-UPDATE (max-prefix) takes nothing more from it.
        if !entry.has_family(family) || entry.session().is_none() {
            return;
        }
        let verdict = self.policy.import(&entry.policy_peer(), prefix, attrs);
        let attrs = match verdict {
            Verdict::Accept => attrs.clone(),
            Verdict::Modify(a) => self.interner.intern(a),
            Verdict::Reject => {
                self.withdraw_from(id, prefix);
                self.peers
                    .get_mut(&id)
                    .expect("checked")
                    .route_filtered(prefix);
                return;
            }
        };
        let path = Path {
            peer: id,
            attrs,
            stale: false,
        };
        let (_, replaced) = match prefix {
            IpNet::V4(p) => self.insert_path(p, path),
            IpNet::V6(p) => self.insert_path(p, path),
        };
        let entry = self.peers.get_mut(&id).expect("checked");
        let count = entry.route_stored(prefix, replaced);
        if let Some(mp) = entry.cfg().max_prefix.clone()
            && count > mp.limit as usize
        {
            self.max_prefix_exceeded(id, family, &mp, count);
        }
    }

    /// RFC 4271 §8 / RFC 4486: warn, or send Cease "Maximum Number of Prefixes Reached" and
    /// try again after the configured delay.
    fn max_prefix_exceeded(
        &mut self,
        id: PeerId,
        family: Family,
        mp: &crate::config::MaxPrefix,
        count: usize,
    ) {
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        if !entry.trip_max_prefix() {
            return;
        }
        if mp.warning_only {
            entry.span().in_scope(|| {
                tracing::warn!(%family, count, limit = mp.limit, "max-prefix limit exceeded (warning only)")
            });
            return;
        }
        entry.span().in_scope(|| {
            tracing::warn!(%family, count, limit = mp.limit, restart_seconds = mp.restart_seconds,
                "max-prefix limit exceeded: tearing the session down")
        });
        self.fsm_event(
            id,
            crate::fsm::Event::Stop(crate::packet::error::cease_subcode::MAX_PREFIXES),
        );
        let tx = self.input_tx.clone();
        let delay = std::time::Duration::from_secs(mp.restart_seconds);
        let restart = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx
                .send(crate::connection::Input::Restart { peer: id })
                .await;
        });
        if let Some(entry) = self.peers.get_mut(&id) {
            entry.schedule_max_prefix_restart(restart);
        }
    }
}
