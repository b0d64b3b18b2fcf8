//! The routing tables the BGP benchmarks feed, by profile, so a speaker is measured on the
//! shape of table it meets: one shared attribute set (the codec and RIB at their cheapest),
//! a thousand sets, or a realistic Internet-like table (prefix lengths /8–/24 in the
//! proportions of the public table, about one distinct attribute set per five routes, AS
//! paths of 1–8 hops, communities on a third of the routes).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serval_bgp::packet::attribute::{AsPath, PathAttributes};

/// A table's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Every route with the same attributes.
    Shared,
    /// A thousand attribute sets, routes spread evenly.
    Sets1000,
    /// Like a real full table (see the module notes).
    Realistic,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(Profile::Shared),
            "sets1000" => Ok(Profile::Sets1000),
            "realistic" => Ok(Profile::Realistic),
            other => Err(format!("{other:?}: expected shared, sets1000 or realistic")),
        }
    }
}

/// What the feeder announces: attribute sets with their prefixes.
pub type Table = Vec<(PathAttributes, Vec<Ipv4Net>)>;

/// Share of the public IPv4 table per prefix length, /24 down to /16 (per thousand); the
/// rest (/15 to /8, capped by what each length can hold) comes out of /24's share.
const LENGTH_SHARES: [(u8, u32); 9] = [
    (24, 600),
    (23, 100),
    (22, 120),
    (21, 50),
    (20, 40),
    (19, 30),
    (18, 20),
    (17, 15),
    (16, 15),
];

/// `count` distinct prefixes, the `offset`-th onwards, in the profile's lengths. /24s (the
/// only length of the uniform profiles) start at 16.0.0.0, so feeders with different
/// offsets announce disjoint tables.
fn prefixes(profile: Profile, count: u32, offset: u32) -> Vec<Ipv4Net> {
    let nth = |len: u8, j: u32| -> Ipv4Net {
        let base: u32 = 0x1000_0000;
        let addr = base
            .checked_add(j.checked_shl(32 - u32::from(len)).expect("shift"))
            .filter(|a| *a < 0x7f00_0000)
            .expect("the table fits below 127.0.0.0/8");
        Ipv4Net::new(Ipv4Addr::from(addr), len).expect("valid length")
    };
    if profile != Profile::Realistic {
        return (0..count).map(|i| nth(24, offset + i)).collect();
    }
    let mut per_length: Vec<(u8, u32)> = LENGTH_SHARES
        .iter()
        .map(|(len, share)| (*len, (u64::from(count) * u64::from(*share) / 1000) as u32))
        .collect();
    // /15../8: a few each, never more than a sixteenth of the length's room between
    // 16.0.0.0 and 127.0.0.0 (so up to sixteen feeders' tables stay disjoint).
    for len in 8u8..=15 {
        let room = (0x7f00_0000u32 - 0x1000_0000) >> (32 - u32::from(len));
        per_length.push((len, (count / 800).min(room / 16)));
    }
    let assigned: u32 = per_length.iter().map(|(_, n)| n).sum();
    per_length[0].1 += count.saturating_sub(assigned);
    let mut out = Vec::with_capacity(count as usize);
    for (len, n) in per_length {
        // Disjoint per feeder: the offset shifts every length's range.
        let first = offset / count.max(1) * n;
        out.extend((0..n).map(|j| nth(len, first + j)));
    }
    out.truncate(count as usize);
    out
}

/// The attribute set number `set` of a table fed by `asn` (eBGP: `asn` first in the path).
fn attributes(
    profile: Profile,
    set: u32,
    asn: u32,
    ibgp: bool,
    next_hop: Ipv4Addr,
) -> PathAttributes {
    let (hops, communities) = match profile {
        Profile::Shared | Profile::Sets1000 => (
            vec![3356, 64_000 + set % 1000],
            vec![asn << 16 | (set & 0xffff)],
        ),
        Profile::Realistic => {
            // 1–8 ASes in all, counting the feeder's own on eBGP.
            let total = 1 + set % 8;
            let hops = (1..total)
                .map(|k| 64_000 + (set * 31 + k * 7) % 1000)
                .collect();
            let communities = if set.is_multiple_of(3) {
                (0..1 + set / 3 % 3)
                    .map(|k| asn << 16 | ((set + k) & 0xffff))
                    .collect()
            } else {
                Vec::new()
            };
            (hops, communities)
        }
    };
    let mut path = Vec::with_capacity(hops.len() + 1);
    if !ibgp {
        path.push(asn);
    }
    path.extend(hops);
    if path.is_empty() {
        // An iBGP route of our own AS's neighbour: a one-hop path still.
        path.push(64_000 + set % 1000);
    }
    PathAttributes {
        as_path: AsPath::from_sequence(path),
        next_hop: Some(IpAddr::V4(next_hop)),
        // Distinct per set, so sets never merge.
        med: Some(set),
        local_pref: ibgp.then_some(100),
        communities,
        ..Default::default()
    }
}

/// The table a feeder announces: `count` prefixes from the `offset`-th, grouped by set.
pub fn table(
    profile: Profile,
    count: u32,
    offset: u32,
    asn: u32,
    ibgp: bool,
    next_hop: Ipv4Addr,
) -> Table {
    let prefixes = prefixes(profile, count, offset);
    let sets = match profile {
        Profile::Shared => 1,
        Profile::Sets1000 => 1000.min(count.max(1)),
        // About one distinct set per five routes.
        Profile::Realistic => (count / 5).max(1),
    };
    let mut grouped: Vec<Vec<Ipv4Net>> = vec![Vec::new(); sets as usize];
    for (i, p) in prefixes.into_iter().enumerate() {
        let set = match profile {
            // Contiguous runs, as the uniform profiles always sent them.
            Profile::Shared | Profile::Sets1000 => {
                (i as u64 * u64::from(sets) / u64::from(count.max(1))) as usize
            }
            Profile::Realistic => i % sets as usize,
        };
        grouped[set].push(p);
    }
    grouped
        .into_iter()
        .enumerate()
        .map(|(set, ps)| (attributes(profile, set as u32, asn, ibgp, next_hop), ps))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn nh() -> Ipv4Addr {
        Ipv4Addr::new(10, 1, 0, 1)
    }

    #[test]
    fn every_profile_has_exactly_count_distinct_prefixes() {
        for profile in [Profile::Shared, Profile::Sets1000, Profile::Realistic] {
            let t = table(profile, 100_000, 0, 65001, false, nh());
            let all: Vec<Ipv4Net> = t.iter().flat_map(|(_, ps)| ps.iter().copied()).collect();
            assert_eq!(all.len(), 100_000, "{profile:?}");
            assert_eq!(
                all.iter().collect::<HashSet<_>>().len(),
                100_000,
                "{profile:?}"
            );
        }
        assert_eq!(table(Profile::Shared, 1000, 0, 1, false, nh()).len(), 1);
        assert_eq!(
            table(Profile::Sets1000, 5000, 0, 1, false, nh()).len(),
            1000
        );
    }

    #[test]
    fn the_realistic_profile_looks_like_a_full_table() {
        let t = table(Profile::Realistic, 100_000, 0, 65001, false, nh());
        let routes: Vec<(&PathAttributes, &Ipv4Net)> = t
            .iter()
            .flat_map(|(a, ps)| ps.iter().map(move |p| (a, p)))
            .collect();
        // About a fifth as many attribute sets as routes, all distinct.
        assert_eq!(t.len(), 20_000);
        let slash24 = routes.iter().filter(|(_, p)| p.prefix_len() == 24).count();
        assert!((55_000..70_000).contains(&slash24), "{slash24} /24s");
        assert!(routes.iter().any(|(_, p)| p.prefix_len() == 8));
        assert!(
            routes
                .iter()
                .all(|(_, p)| (8..=24).contains(&p.prefix_len()))
        );
        let path_lengths: HashSet<usize> = t.iter().map(|(a, _)| a.as_path.path_len()).collect();
        assert_eq!(path_lengths, (1..=8).collect());
        let with_communities = routes
            .iter()
            .filter(|(a, _)| !a.communities.is_empty())
            .count();
        assert!(
            (30_000..37_000).contains(&with_communities),
            "{with_communities} routes with communities"
        );
    }

    #[test]
    fn feeders_with_different_offsets_announce_disjoint_tables() {
        for profile in [Profile::Sets1000, Profile::Realistic] {
            let a = table(profile, 10_000, 0, 65001, false, nh());
            let b = table(profile, 10_000, 10_000, 65002, false, nh());
            let set = |t: &Table| -> HashSet<Ipv4Net> {
                t.iter().flat_map(|(_, ps)| ps.iter().copied()).collect()
            };
            assert!(set(&a).is_disjoint(&set(&b)), "{profile:?}");
        }
    }
}
