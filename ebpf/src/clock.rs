//! The clock of `bpf_ktime_get_ns`: expiries handed to the XDP program (and
//! to its Rust twin) are absolute values of it.

/// `CLOCK_MONOTONIC` in nanoseconds, the clock `bpf_ktime_get_ns()` reads:
/// compute `until_ns` for [`XdpFilter::block_source`](crate::XdpFilter::block_source)
/// and [`BlockedSources::block`](crate::swfilter::BlockedSources::block) as
/// `monotonic_ns() + ttl`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_is_monotonic_and_matches_instant() {
        // std's Instant is CLOCK_MONOTONIC on Linux too.
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b >= a + 2_000_000, "{a} then {b}");
    }
}
