//! One update group's export function: from a prefix's best path to the attributes the
//! group's members are sent (the RFC's export rules, then the policy, then the check that
//! the set fits one UPDATE), or nothing. Adj-RIB-Out keeps only which prefixes were
//! announced; what they were announced with is recomputed here when it is needed (catching
//! a member up, the "before" side of a change), so no exported attribute set is kept
//! between passes. Each pass builds one `Exporter`, so its caches live as long as the pass.

use std::net::IpAddr;
use std::sync::Arc;

use super::groups::UpdateGroup;
use crate::af::Prefix;
use crate::config::SpeakerConfig;
use crate::decision::{LOCAL_PEER, Path, PeerId};
use crate::export::{self, RouteSource, SpeakerSide, Target};
use crate::packet::attribute::{EncodeContext, PathAttributes};
use crate::packet::message::announcement_room_in;
use crate::policy::{PolicyPeer, RouteOrigin, RoutePolicy, Verdict};
use crate::rib::{FastMap, FastSet};

/// Distinct attribute sets a pass is sized for up front.
const SETS_PER_PASS: usize = 1024;

/// What decides a group's export besides its key: who must not get their own routes back
/// and which policy applies (a change of either is a new export function).
#[derive(Clone, Copy)]
pub(super) struct ExportInputs<'a> {
    /// The group's only member, when it has one (exact split horizon).
    pub split_horizon: Option<PeerId>,
    /// The export policy.
    pub policy: &'a dyn RoutePolicy,
}

/// A group's export function for one pass, with its caches.
pub(super) struct Exporter<'a, P> {
    target: Target,
    me: SpeakerSide,
    policy_peer: PolicyPeer,
    policy: &'a dyn RoutePolicy,
    sources: &'a FastMap<PeerId, RouteSource>,
    ctx: EncodeContext,
    /// The RFC transformation depends only on the attribute set and the source peer, so it
    /// runs once per distinct pair however many prefixes share it.
    rfc: FastMap<(usize, PeerId), Option<Arc<PathAttributes>>>,
    /// Exported sets of this pass, one `Arc` per distinct set so equal sets pack together.
    sets: FastSet<Arc<PathAttributes>>,
    /// Bytes left for NLRI in one UPDATE with each exported set (`None`: it does not fit).
    room: FastMap<usize, Option<usize>>,
    /// Encoding scratch for sizing sets.
    scratch: Vec<u8>,
    /// Prefixes withheld because their set does not fit: count and first, per set.
    pub too_large: FastMap<usize, (usize, P)>,
}

impl<'a, P: Prefix> Exporter<'a, P> {
    /// The export of `group` under `inputs`; `sources` describes every peer a best path
    /// may come from, `first_member` names the group to the policy when its key does not,
    /// `prefixes` is about how many this pass will export.
    pub fn new(
        group: &UpdateGroup,
        inputs: ExportInputs<'a>,
        cfg: &SpeakerConfig,
        sources: &'a FastMap<PeerId, RouteSource>,
        first_member: Option<IpAddr>,
        prefixes: usize,
    ) -> Self {
        let key = &group.key;
        let room = prefixes.min(SETS_PER_PASS);
        Exporter {
            target: Target {
                // No member is excluded in a shared group (see the notes in `groups`).
                peer: inputs.split_horizon.unwrap_or(PeerId::MAX),
                as_number: key.as_number,
                ebgp: key.ebgp,
                rr_client: key.rr_client,
                next_hop: key.next_hop,
                self_v4: key.self_v4,
                self_v6: key.self_v6,
            },
            me: SpeakerSide {
                local_as: key.local_as,
                router_id: cfg.router_id,
                cluster_id: cfg.cluster_id,
                default_local_pref: cfg.default_local_pref,
            },
            policy_peer: PolicyPeer {
                address: key
                    .policy_address
                    .or(first_member)
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                as_number: key.as_number,
                ebgp: key.ebgp,
            },
            policy: inputs.policy,
            sources,
            ctx: key.encode_context(),
            // Sized for the pass (up to a full-table batch's thousand-odd distinct sets), so
            // the maps do not grow step by step on every pass.
            rfc: FastMap::with_capacity_and_hasher(room, Default::default()),
            sets: FastSet::with_capacity_and_hasher(room, Default::default()),
            room: FastMap::with_capacity_and_hasher(room, Default::default()),
            scratch: Vec::with_capacity(256),
            too_large: FastMap::default(),
        }
    }

    fn share(&mut self, attrs: PathAttributes) -> Arc<PathAttributes> {
        if let Some(a) = self.sets.get(&attrs) {
            return a.clone();
        }
        let a = Arc::new(attrs);
        self.sets.insert(a.clone());
        a
    }

    /// What the group is sent for `prefix` when `best` is its best path; `None` when
    /// nothing (not exported, or too large for one UPDATE), or when `best` comes from a
    /// peer this pass knows nothing about.
    pub fn export(&mut self, prefix: P, best: Option<&Path>) -> Option<Arc<PathAttributes>> {
        let best = best?;
        let src = self.sources.get(&best.peer)?;
        let key = (Arc::as_ptr(&best.attrs) as usize, best.peer);
        let exported = match self.rfc.get(&key) {
            Some(cached) => cached.clone(),
            None => {
                let fresh = export::export(P::FAMILY, &best.attrs, src, &self.target, &self.me)
                    .map(|a| self.share(a));
                self.rfc.insert(key, fresh.clone());
                fresh
            }
        }?;
        let origin = if best.peer == LOCAL_PEER {
            RouteOrigin::Local
        } else if src.ebgp {
            RouteOrigin::External
        } else {
            RouteOrigin::Internal
        };
        let chosen = match self.policy.export(
            &self.policy_peer,
            prefix.into_ipnet(),
            &exported,
            &best.attrs,
            origin,
        ) {
            Verdict::Accept => exported,
            Verdict::Reject => return None,
            Verdict::Modify(a) => self.share(a),
        };
        // A route whose attributes leave no room for its prefix in one UPDATE cannot go to
        // this group at all: it is treated as not exported (withdrawn if it was).
        let ptr = Arc::as_ptr(&chosen) as usize;
        let room = match self.room.get(&ptr) {
            Some(r) => *r,
            None => {
                let r = announcement_room_in::<P>(&chosen, self.ctx, &mut self.scratch);
                self.room.insert(ptr, r);
                r
            }
        };
        if room.is_none() {
            self.too_large.entry(ptr).or_insert((0, prefix)).0 += 1;
            return None;
        }
        Some(chosen)
    }

    /// The NLRI room of a set this pass exported (so packing does not size it again).
    pub fn room_of(&self, attrs: &Arc<PathAttributes>) -> usize {
        self.room
            .get(&(Arc::as_ptr(attrs) as usize))
            .copied()
            .flatten()
            .expect("only sets this pass exported, which fit, are packed")
    }
}
