//! Address arithmetic: ordinals inside a block, blocks inside a pool.
//!
//! Everything is done on `u128` so IPv4 and IPv6 share one code path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The address as a number, so ordinals and block indexes are plain arithmetic.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`to_u128`] in the family of `like`.
pub fn from_u128(value: u128, like: &IpNet) -> IpAddr {
    match like {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// Number of addresses in `net` (saturating at `u128::MAX` for `::/0`).
pub fn size(net: &IpNet) -> u128 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// Ordinal of `ip` inside `block`, if it is inside.
pub fn ordinal(block: &IpNet, ip: IpAddr) -> Option<usize> {
    if !block.contains(&ip) {
        return None;
    }
    usize::try_from(to_u128(ip) - to_u128(block.network())).ok()
}

/// Address of ordinal `n` inside `block`.
pub fn address(block: &IpNet, n: usize) -> IpAddr {
    from_u128(to_u128(block.network()) + n as u128, block)
}

/// Builds a prefix of the same family as `like`.
pub fn net(addr: IpAddr, prefix: u8) -> IpNet {
    match addr {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, prefix).expect("prefix checked by caller")),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, prefix).expect("prefix checked by caller")),
    }
}

/// The block of size `block_prefix` inside `pool` that holds `ip`.
pub fn block_of(ip: IpAddr, block_prefix: u8) -> IpNet {
    net(ip, block_prefix).trunc()
}

/// How many blocks of `block_prefix` fit in `pool`.
pub fn block_count(pool: &IpNet, block_prefix: u8) -> u128 {
    let bits = u32::from(block_prefix.saturating_sub(pool.prefix_len()));
    1u128.checked_shl(bits).unwrap_or(u128::MAX)
}

/// The `index`-th block of `block_prefix` in `pool`.
pub fn nth_block(pool: &IpNet, block_prefix: u8, index: u128) -> IpNet {
    let block_size = size(&net(pool.network(), block_prefix));
    let start = to_u128(pool.network()) + index * block_size;
    net(from_u128(start, pool), block_prefix)
}

/// A stable per-node starting point for the block search, so nodes that claim at the same
/// time spread over the pool instead of racing for the same first block.
pub fn start_index(node: &str, count: u128) -> u128 {
    // FNV-1a: stable across runs and platforms (std's hasher is randomised per process).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u128::from(hash) % count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_round_trip_at_block_edges() {
        let block: IpNet = "10.0.0.64/26".parse().unwrap();
        assert_eq!(ordinal(&block, "10.0.0.64".parse().unwrap()), Some(0));
        assert_eq!(ordinal(&block, "10.0.0.127".parse().unwrap()), Some(63));
        assert_eq!(ordinal(&block, "10.0.0.128".parse().unwrap()), None);
        assert_eq!(ordinal(&block, "10.0.0.63".parse().unwrap()), None);
        assert_eq!(address(&block, 63), "10.0.0.127".parse::<IpAddr>().unwrap());
        let v6: IpNet = "fd00::40/122".parse().unwrap();
        assert_eq!(size(&v6), 64);
        assert_eq!(address(&v6, 1), "fd00::41".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn blocks_tile_the_pool() {
        let pool: IpNet = "192.168.0.0/24".parse().unwrap();
        assert_eq!(block_count(&pool, 26), 4);
        assert_eq!(nth_block(&pool, 26, 3).to_string(), "192.168.0.192/26");
        assert_eq!(
            block_of("192.168.0.200".parse().unwrap(), 26).to_string(),
            "192.168.0.192/26"
        );
        let big: IpNet = "fd00::/48".parse().unwrap();
        assert_eq!(block_count(&big, 122), 1 << 74);
        assert_eq!(nth_block(&big, 122, 2).to_string(), "fd00::80/122");
        assert!(start_index("node-a", 4) < 4);
        assert_eq!(start_index("node-a", 1000), start_index("node-a", 1000));
    }
}
