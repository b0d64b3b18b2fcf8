//! Graceful restart as the receiving speaker (RFC 4724 §4.2): when a session with a peer that
//! advertised graceful restart drops without a NOTIFICATION, its routes stay in the RIB marked
//! stale; they are swept when the peer's End-of-RIB arrives for the family, when the new
//! session shows the peer did not keep its forwarding state, or when the peer's restart time
//! runs out.

use std::time::Duration;

use super::{Speaker, mark_dirty};
use crate::af::Family;
use crate::connection::Input;
use crate::decision::PeerId;
use crate::fsm::{DownReason, Negotiated};
use crate::rib::DecideCtx;

impl Speaker {
    /// Called as the session goes down. Returns true when the peer's routes are kept stale
    /// (the caller must then not drop them).
    pub(super) fn begin_stale(&mut self, id: PeerId, reason: &DownReason) -> bool {
        let Some(entry) = self.peers.get_mut(&id) else {
            return false;
        };
        let peer_gr = entry.session().and_then(|s| s.neg.graceful_restart.clone());
        let ours = entry.cfg().graceful_restart_time.is_some();
        // RFC 4724: only a transport failure (no NOTIFICATION) is a restart.
        let (Some(gr), true, DownReason::ConnectionLost) = (peer_gr, ours, reason) else {
            return false;
        };
        if gr.restart_time == 0 {
            return false;
        }
        let families: Vec<Family> = gr
            .families
            .iter()
            .filter_map(|f| Family::from_afi_safi(f.afi, f.safi))
            .collect();
        let serial = self.next_serial;
        self.next_serial += 1;
        let after = Duration::from_secs(u64::from(gr.restart_time));
        let tx = self.input_tx.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Input::StaleExpired { peer: id, serial }).await;
        });
        let stale = (self.tables.v4.mark_stale(id), self.tables.v6.mark_stale(id));
        let entry = self.peers.get_mut(&id).expect("checked");
        entry.begin_stale(serial, timer, &families);
        // Families the peer did not list for graceful restart lose their routes now.
        for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            if !families.contains(&family) {
                self.remove_stale_paths(id, family);
            }
        }
        let entry = &self.peers[&id];
        entry.span().in_scope(|| {
            tracing::info!(
                restart_time = gr.restart_time,
                stale_v4 = stale.0,
                stale_v6 = stale.1,
                "peer restarting: keeping its routes as stale"
            )
        });
        true
    }

    /// The stale timer ran out: the peer did not come back in time.
    pub(super) fn on_stale_expired(&mut self, id: PeerId, serial: u64) {
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        if !entry.stale_timer_fired(serial) {
            return;
        }
        entry
            .span()
            .in_scope(|| tracing::warn!("restart time expired: removing the peer's stale routes"));
        for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            self.sweep_stale(id, family);
        }
    }

    /// The new session is up: families the peer no longer preserves are swept at once.
    pub(super) fn on_reestablished(&mut self, id: PeerId, neg: &Negotiated) {
        let Some(entry) = self.peers.get(&id) else {
            return;
        };
        if !entry.has_stale() {
            return;
        }
        let preserved: Vec<Family> = neg
            .graceful_restart
            .iter()
            .flat_map(|gr| gr.families.iter())
            .filter(|f| f.forwarding_preserved)
            .filter_map(|f| Family::from_afi_safi(f.afi, f.safi))
            .collect();
        for family in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            if !preserved.contains(&family) || !neg.families.contains(&family) {
                self.sweep_stale(id, family);
            }
        }
    }

    /// End-of-RIB from the peer: whatever is still stale in that family is gone.
    pub(super) fn on_end_of_rib(&mut self, id: PeerId, family: Family) {
        if let Some(entry) = self.peers.get_mut(&id) {
            entry.end_of_rib_received(family);
        }
        self.sweep_stale(id, family);
    }

    /// Removes `id`'s stale paths in `family`.
    pub(super) fn sweep_stale(&mut self, id: PeerId, family: Family) {
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        if !entry.end_stale(family) {
            return;
        }
        self.remove_stale_paths(id, family);
    }

    fn remove_stale_paths(&mut self, id: PeerId, family: Family) {
        let ctx = DecideCtx {
            cfg: self.decision_config(),
            sources: &self.sources,
        };
        let swept = match family {
            Family::Ipv4Unicast => {
                let c = self.tables.v4.remove_peer(id, true, &ctx);
                let n = c.len();
                for (prefix, old) in c {
                    mark_dirty(&mut self.tables.dirty4, prefix, old);
                }
                n
            }
            Family::Ipv6Unicast => {
                let c = self.tables.v6.remove_peer(id, true, &ctx);
                let n = c.len();
                for (prefix, old) in c {
                    mark_dirty(&mut self.tables.dirty6, prefix, old);
                }
                n
            }
        };
        let count = match family {
            Family::Ipv4Unicast => self.tables.v4.count_from(id),
            Family::Ipv6Unicast => self.tables.v6.count_from(id),
        };
        let entry = self.peers.get_mut(&id).expect("checked");
        entry.set_accepted(family, count);
        if swept > 0 {
            entry
                .span()
                .in_scope(|| tracing::info!(%family, swept, "stale routes removed"));
        }
    }
}
