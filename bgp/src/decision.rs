//! The decision process of RFC 4271 §9.1.2.2, plus RFC 4456's reflector tie-breaks and
//! the usual router-ID / peer-address ones, run as the RFC's elimination so that every
//! losing path can say at which step it lost (STYLE 8).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde::Serialize;

use crate::packet::attribute::PathAttributes;

/// Identifies where a path came from; [`LOCAL_PEER`] is this speaker itself.
pub type PeerId = u32;

/// The source of locally originated routes.
pub const LOCAL_PEER: PeerId = 0;

/// Facts about a path's source that the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// Learned over eBGP.
    pub ebgp: bool,
    /// Peer's BGP identifier.
    pub router_id: Ipv4Addr,
    /// Peer's address.
    pub address: IpAddr,
}

/// One candidate path for a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Where it came from.
    pub peer: PeerId,
    /// Its (interned) attributes.
    pub attrs: Arc<PathAttributes>,
    /// Kept from a restarting peer until it sends End-of-RIB (RFC 4724).
    pub stale: bool,
}

/// The step of the decision process at which a path lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// A locally originated path beats any learned one.
    LocalOrigin,
    /// Higher LOCAL_PREF wins (§9.1.2.2 preamble / §9.1.1).
    LocalPref,
    /// Shorter AS_PATH wins (§9.1.2.2 a).
    AsPathLength,
    /// Lower ORIGIN wins (§9.1.2.2 b).
    Origin,
    /// Lower MED wins among paths from the same neighbouring AS (§9.1.2.2 c).
    Med,
    /// eBGP-learned beats iBGP-learned (§9.1.2.2 d).
    EbgpOverIbgp,
    /// Shorter CLUSTER_LIST wins (RFC 4456 §9).
    ClusterListLength,
    /// Lower BGP identifier (ORIGINATOR_ID when present) wins (§9.1.2.2 f).
    RouterId,
    /// Lower peer address wins (§9.1.2.2 g).
    PeerAddress,
}

impl Step {
    /// Sentence for `servalctl bgp routes`.
    pub fn explain(self) -> &'static str {
        match self {
            Step::LocalOrigin => "a locally originated path is preferred",
            Step::LocalPref => "lower LOCAL_PREF",
            Step::AsPathLength => "longer AS_PATH",
            Step::Origin => "worse ORIGIN",
            Step::Med => "higher MED than a path from the same neighbour AS",
            Step::EbgpOverIbgp => "iBGP path while an eBGP path exists",
            Step::ClusterListLength => "longer CLUSTER_LIST",
            Step::RouterId => "higher router ID",
            Step::PeerAddress => "higher peer address",
        }
    }
}

/// Outcome of a decision over one prefix's candidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the best path.
    pub best: usize,
    /// Indexes of paths equal to the best up to the router-ID step (ECMP set, best first).
    pub multipath: Vec<usize>,
    /// For every other path, the step it lost at.
    pub lost: Vec<(usize, Step)>,
}

/// Knobs of the decision.
#[derive(Debug, Clone, Copy)]
pub struct DecisionConfig {
    /// LOCAL_PREF assumed for paths without one (eBGP-learned).
    pub default_local_pref: u32,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig {
            default_local_pref: 100,
        }
    }
}

/// Runs the decision; `source` answers for every peer in `paths`. `None` if no paths.
pub fn decide<'a>(
    paths: &[Path],
    cfg: DecisionConfig,
    source: impl Fn(PeerId) -> &'a SourceInfo,
) -> Option<Decision> {
    match paths.len() {
        0 => return None,
        1 => {
            return Some(Decision {
                best: 0,
                multipath: vec![0],
                lost: Vec::new(),
            });
        }
        _ => {}
    }
    let mut alive: Vec<usize> = (0..paths.len()).collect();
    let mut lost = Vec::new();
    let mut multipath = Vec::new();

    let local = |i: usize| paths[i].peer == LOCAL_PEER;
    let ebgp = |i: usize| !local(i) && source(paths[i].peer).ebgp;
    let a = |i: usize| &*paths[i].attrs;

    keep_min(&mut alive, &mut lost, Step::LocalOrigin, &|i| {
        u128::from(!local(i))
    });
    keep_min(&mut alive, &mut lost, Step::LocalPref, &|i| {
        u128::from(u32::MAX - a(i).local_pref.unwrap_or(cfg.default_local_pref))
    });
    keep_min(&mut alive, &mut lost, Step::AsPathLength, &|i| {
        a(i).as_path.path_len() as u128
    });
    keep_min(&mut alive, &mut lost, Step::Origin, &|i| {
        a(i).origin as u128
    });
    // MED: a path loses if another path from the same neighbour AS has a lower MED.
    // A missing MED counts as 0, as RFC 4271 §9.1.2.2 c prescribes.
    let neighbour = |i: usize| a(i).as_path.first_as();
    let med = |i: usize| a(i).med.unwrap_or(0);
    let snapshot = alive.clone();
    alive.retain(|&i| {
        let beaten = snapshot
            .iter()
            .any(|&j| j != i && neighbour(j) == neighbour(i) && med(j) < med(i));
        if beaten {
            lost.push((i, Step::Med));
        }
        !beaten
    });
    keep_min(&mut alive, &mut lost, Step::EbgpOverIbgp, &|i| {
        u128::from(!ebgp(i))
    });
    keep_min(&mut alive, &mut lost, Step::ClusterListLength, &|i| {
        a(i).cluster_list.len() as u128
    });
    multipath.extend(alive.iter().copied());
    keep_min(&mut alive, &mut lost, Step::RouterId, &|i| {
        if local(i) {
            return 0;
        }
        let id = a(i)
            .originator_id
            .unwrap_or(source(paths[i].peer).router_id);
        u128::from(u32::from(id))
    });
    keep_min(&mut alive, &mut lost, Step::PeerAddress, &|i| {
        if local(i) {
            return 0;
        }
        match source(paths[i].peer).address {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        }
    });
    // Identical sources (the same peer twice) cannot happen; keep the first if it did.
    let best = alive[0];
    for &i in &alive[1..] {
        lost.push((i, Step::PeerAddress));
    }
    multipath.retain(|&i| i != best);
    multipath.insert(0, best);
    Some(Decision {
        best,
        multipath,
        lost,
    })
}

/// Keeps the candidates minimising `key`; the rest lose at `step`.
fn keep_min(
    alive: &mut Vec<usize>,
    lost: &mut Vec<(usize, Step)>,
    step: Step,
    key: &dyn Fn(usize) -> u128,
) {
    let min = alive.iter().map(|&i| key(i)).min().expect("non-empty");
    alive.retain(|&i| {
        let keep = key(i) == min;
        if !keep {
            lost.push((i, step));
        }
        keep
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::attribute::{AsPath, Origin};
    use std::collections::HashMap;

    fn path(peer: PeerId, f: impl FnOnce(&mut PathAttributes)) -> Path {
        let mut a = PathAttributes {
            as_path: AsPath::from_sequence([65000 + peer]),
            ..Default::default()
        };
        f(&mut a);
        Path {
            peer,
            attrs: Arc::new(a),
            stale: false,
        }
    }

    fn sources() -> HashMap<PeerId, SourceInfo> {
        (1..=4)
            .map(|p| {
                let info = SourceInfo {
                    ebgp: p % 2 == 1,
                    router_id: Ipv4Addr::new(10, 0, 0, 10 - p as u8),
                    address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, p as u8)),
                };
                (p, info)
            })
            .collect()
    }

    fn run(paths: &[Path]) -> Decision {
        let s = sources();
        decide(paths, DecisionConfig::default(), |p| &s[&p]).unwrap()
    }

    #[test]
    fn each_step_decides_and_is_reported() {
        // LOCAL_PREF.
        let d = run(&[
            path(2, |a| a.local_pref = Some(100)),
            path(4, |a| a.local_pref = Some(200)),
        ]);
        assert_eq!((d.best, d.lost.clone()), (1, vec![(0, Step::LocalPref)]));
        // AS path length.
        let d = run(&[
            path(1, |a| a.as_path = AsPath::from_sequence([1, 2])),
            path(3, |_| {}),
        ]);
        assert_eq!((d.best, d.lost.clone()), (1, vec![(0, Step::AsPathLength)]));
        // Origin.
        let d = run(&[path(1, |a| a.origin = Origin::Incomplete), path(3, |_| {})]);
        assert_eq!(d.lost, vec![(0, Step::Origin)]);
        // eBGP over iBGP.
        let d = run(&[path(2, |_| {}), path(3, |_| {})]);
        assert_eq!((d.best, d.lost.clone()), (1, vec![(0, Step::EbgpOverIbgp)]));
        // Cluster list length (both iBGP).
        let d = run(&[
            path(2, |a| a.cluster_list = vec![Ipv4Addr::LOCALHOST]),
            path(4, |_| {}),
        ]);
        assert_eq!(d.lost, vec![(0, Step::ClusterListLength)]);
        // Router ID: peer 3 has 10.0.0.7, peer 1 has 10.0.0.9.
        let d = run(&[path(1, |_| {}), path(3, |_| {})]);
        assert_eq!((d.best, d.lost.clone()), (1, vec![(0, Step::RouterId)]));
        assert_eq!(
            d.multipath,
            vec![1, 0],
            "equal up to router ID: both are ECMP candidates"
        );
        // ORIGINATOR_ID stands in for router ID.
        let d = run(&[
            path(1, |a| a.originator_id = Some(Ipv4Addr::new(1, 1, 1, 1))),
            path(3, |_| {}),
        ]);
        assert_eq!(d.best, 0);
        // Local beats everything.
        let d = run(&[
            path(1, |a| a.local_pref = Some(1000)),
            path(LOCAL_PEER, |_| {}),
        ]);
        assert_eq!((d.best, d.lost.clone()), (1, vec![(0, Step::LocalOrigin)]));
    }

    #[test]
    fn med_is_compared_only_within_the_same_neighbour_as() {
        let from = |peer, nas: u32, med| {
            path(peer, move |a| {
                a.as_path = AsPath::from_sequence([nas, 64999]);
                a.med = Some(med);
            })
        };
        // Different neighbour ASes: MED ignored; router ID decides (peer 3 lower ID).
        let d = run(&[from(1, 65010, 5), from(3, 65020, 50)]);
        assert_eq!(d.best, 1);
        // Same neighbour AS: lower MED wins even with higher router ID.
        let d = run(&[from(1, 65010, 5), from(3, 65010, 50)]);
        assert_eq!((d.best, d.lost.clone()), (0, vec![(1, Step::Med)]));
        // Missing MED counts as 0 (best).
        let none = path(3, |a| a.as_path = AsPath::from_sequence([65010, 64999]));
        let d = run(&[from(1, 65010, 5), none]);
        assert_eq!(d.best, 1);
    }

    #[test]
    fn single_and_empty() {
        assert!(decide(&[], DecisionConfig::default(), |_| unreachable!()).is_none());
        let d = decide(
            &[path(1, |_| {})],
            DecisionConfig::default(),
            |_| unreachable!(),
        )
        .unwrap();
        assert_eq!(d.best, 0);
    }
}
