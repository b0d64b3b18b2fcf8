//! A new import/export policy on a running speaker, as an operator changing filters expects
//! from BIRD's `configure`: what we send is re-filtered at once (each update group's table
//! recomputed, only the difference sent), and what we hold is re-filtered by asking each peer
//! for its table again (ROUTE-REFRESH, RFC 2918); a peer that cannot refresh has its session
//! restarted, since routes filtered out before are not kept.

use super::*;
use crate::packet::attribute::EncodeContext;
use crate::packet::message::{Message, RouteRefresh};
use crate::policy::RoutePolicy;

impl Speaker {
    pub(super) fn set_policy(&mut self, policy: Arc<dyn RoutePolicy>) {
        // The groups' tables match the Loc-RIB under the old policy, which the difference
        // below is computed against.
        self.flush();
        let old = std::mem::replace(&mut self.policy, policy);
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        // Group keys may change (whether export looks at the peer's address): regroup, then
        // recompute every group's table under the new export filter.
        for &id in &ids {
            self.full_export(id, false);
        }
        let groups: Vec<groups::GroupId> = self.groups.keys().copied().collect();
        for gid in groups {
            let mut batch =
                self.rebuild_group::<Ipv4Net>(gid, outbound::Before::Policy(old.clone()), true);
            batch.append(self.rebuild_group::<Ipv6Net>(
                gid,
                outbound::Before::Policy(old.clone()),
                true,
            ));
            self.send_to_members(gid, batch, None);
        }
        for id in ids {
            self.refresh_inbound(id);
        }
    }

    /// Has the peer send its table again so the import filter sees it all.
    fn refresh_inbound(&mut self, id: PeerId) {
        let Some(entry) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(session) = entry.session() else {
            return;
        };
        if session.neg.route_refresh {
            let families = session.neg.families.clone();
            let msgs = families
                .iter()
                .map(|f| {
                    Message::RouteRefresh(RouteRefresh {
                        afi: f.afi(),
                        subtype: 0,
                        safi: f.safi(),
                    })
                    .encode(EncodeContext {
                        four_octet_as: true,
                        extended_messages: false,
                    })
                })
                .collect();
            entry.span().in_scope(
                || tracing::info!(families = ?families, "policy changed: asking for the table again"),
            );
            entry.send_session(msgs, false);
        } else {
            entry.span().in_scope(|| {
                tracing::warn!("policy changed and the peer cannot refresh: restarting the session")
            });
            let cfg = entry.cfg().clone();
            self.stop_peer(id, cease_subcode::OTHER_CONFIGURATION_CHANGE);
            if let Err(e) = self.add_peer(cfg) {
                tracing::error!(error = %e, "could not re-add a peer after a policy change");
            }
        }
    }
}
