//! glibc's allocator set up for a routing table. glibc serves a block of 128 KiB or more
//! from its own mapping, but raises that threshold to the size of each mapped block freed,
//! up to 32 MiB. A growing table frees mapped blocks all the time (every time one of the
//! RIB's shards doubles), so after a while its tables come from the heap, between attribute
//! sets that live for hours: the holes they leave when they grow again cannot be given
//! back. Measured on `bench/bgp-1m`'s realistic table, that was 176 MiB resident against
//! 150 MiB with the threshold held at 64 KiB (BIRD: 155 MiB).

/// Holds glibc's mmap threshold at 64 KiB, so blocks that big always get their own
/// mapping and go back to the system when freed. Call once, first thing in `main`; false
/// if glibc refused (say so once logging is up).
pub fn map_large_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; M_MMAP_THRESHOLD with a value
        // within glibc's bounds (at most 32 MiB on 64-bit) has no other effect. Setting it
        // also turns off the dynamic adjustment, which is the point.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024) };
        ok == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_threshold() {
        assert!(super::map_large_blocks());
    }
}
