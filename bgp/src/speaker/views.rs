//! Read-only views of the speaker for the agent and the CLI: the status snapshot (O(peers))
//! and paged route listings.

use super::*;

impl Speaker {
    pub(super) fn status(&self) -> Status {
        let mut peers: Vec<PeerStatus> = self.peers.values().map(|p| self.peer_status(p)).collect();
        peers.sort_by_key(|p| p.address);
        let local = |f: Family| self.local_counts[family_index(f)];
        Status {
            router_id: self.cfg.router_id,
            as_number: self.cfg.as_number,
            cluster_id: self.cfg.cluster_id,
            peers,
            families: vec![
                FamilyStatus {
                    family: Family::Ipv4Unicast,
                    prefixes: self.tables.v4.len(),
                    local_prefixes: local(Family::Ipv4Unicast),
                },
                FamilyStatus {
                    family: Family::Ipv6Unicast,
                    prefixes: self.tables.v6.len(),
                    local_prefixes: local(Family::Ipv6Unicast),
                },
            ],
            attribute_sets: self.interner.len(),
            update_groups: {
                let mut g: Vec<crate::status::UpdateGroupStatus> = self
                    .groups
                    .values()
                    .map(|g| crate::status::UpdateGroupStatus {
                        members: g
                            .members
                            .iter()
                            .filter_map(|m| self.peers.get(m).map(|e| e.cfg().address))
                            .collect(),
                        advertised: g
                            .key
                            .families
                            .iter()
                            .map(|f| {
                                let n = match f {
                                    Family::Ipv4Unicast => g.out4.len(),
                                    Family::Ipv6Unicast => g.out6.len(),
                                };
                                (*f, n)
                            })
                            .collect(),
                    })
                    .collect();
                g.sort_by(|a, b| a.members.cmp(&b.members));
                g
            },
        }
    }

    pub(super) fn peer_status(&self, p: &PeerEntry) -> PeerStatus {
        let group = p.group().and_then(|g| self.groups.get(&g));
        p.status(|f| {
            group.map_or(0, |g| match f {
                Family::Ipv4Unicast => g.out4.len(),
                Family::Ipv6Unicast => g.out6.len(),
            })
        })
    }

    /// One page of the Loc-RIB in prefix order: a scan of the keys and a partial selection
    /// (no sort of the whole table), then the decision explained for the page only.
    pub(super) fn routes<P: FamilyRib>(&self, q: &RoutesQuery) -> Vec<RouteView> {
        let ctx = DecideCtx {
            cfg: self.decision_config(),
            sources: &self.sources,
        };
        let table = P::table(&self.tables);
        let after = q.after.and_then(P::from_ipnet);
        let mut keys: Vec<P> = table
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| q.within.is_none_or(|w| w.contains(&p.into_ipnet())))
            .filter(|p| after.is_none_or(|a| *p > a))
            .collect();
        let limit = q.limit.clamp(1, RoutesQuery::MAX_LIMIT);
        if keys.len() > limit {
            keys.select_nth_unstable(limit);
            keys.truncate(limit);
        }
        keys.sort_unstable();
        keys.iter()
            .map(|p| (p, table.paths(p)))
            .map(|(prefix, paths)| {
                let decision = table.explain(prefix, &ctx);
                let lost: HashMap<usize, crate::decision::Step> = decision
                    .map(|d| d.lost.into_iter().collect())
                    .unwrap_or_default();
                RouteView {
                    prefix: prefix.into_ipnet(),
                    paths: paths
                        .iter()
                        .enumerate()
                        .map(|(i, path)| PathView {
                            peer: (path.peer != LOCAL_PEER)
                                .then(|| self.sources.get(&path.peer).map(|s| s.address))
                                .flatten(),
                            best: i == 0,
                            stale: path.stale,
                            lost_at: lost.get(&i).copied(),
                            reason: lost.get(&i).map(|s| s.explain()),
                            attributes: (*path.attrs).clone(),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
