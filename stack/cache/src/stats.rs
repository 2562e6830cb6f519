//! Per-request cache outcomes and their counters.
//!
//! The request-level counters are plain integers in a per-worker struct
//! (no shared cache line on the hit path); the engine sums the workers'
//! copies when it reports. Store-level figures (evictions, bytes) are
//! atomics in the shared store, changed under its shard locks anyway
//! ([`crate::StoreStats`]).

use std::ops::AddAssign;

/// What the cache did for one request (also the `X-Cache` value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served fresh from the cache.
    Hit,
    /// Not stored (or not for this variant): fetched.
    Miss,
    /// Served stale (stale-while-revalidate, stale-if-error, light purge).
    Stale,
    /// Stored, stale, revalidated with a 304 and served.
    Revalidated,
    /// Stored but stale and replaced by a full response.
    Expired,
    /// Not for the cache (method, route, no-store request).
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

/// One worker's request counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounters {
    pub hit: u64,
    pub miss: u64,
    pub stale: u64,
    pub revalidated: u64,
    pub expired: u64,
    pub bypass: u64,
    /// Body bytes served from the cache.
    pub bytes_served: u64,
}

impl CacheCounters {
    pub fn record(&mut self, s: CacheStatus) {
        *match s {
            CacheStatus::Hit => &mut self.hit,
            CacheStatus::Miss => &mut self.miss,
            CacheStatus::Stale => &mut self.stale,
            CacheStatus::Revalidated => &mut self.revalidated,
            CacheStatus::Expired => &mut self.expired,
            CacheStatus::Bypass => &mut self.bypass,
        } += 1;
    }

    /// Sums workers' counters.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a CacheCounters>) -> CacheCounters {
        let mut t = CacheCounters::default();
        for c in all {
            t += *c;
        }
        t
    }
}

impl AddAssign for CacheCounters {
    fn add_assign(&mut self, o: Self) {
        self.hit += o.hit;
        self.miss += o.miss;
        self.stale += o.stale;
        self.revalidated += o.revalidated;
        self.expired += o.expired;
        self.bypass += o.bypass;
        self.bytes_served += o.bytes_served;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_sum() {
        let mut a = CacheCounters::default();
        let mut b = CacheCounters::default();
        for s in [
            CacheStatus::Hit,
            CacheStatus::Hit,
            CacheStatus::Miss,
            CacheStatus::Stale,
            CacheStatus::Revalidated,
            CacheStatus::Expired,
            CacheStatus::Bypass,
        ] {
            a.record(s);
        }
        b.record(CacheStatus::Hit);
        b.bytes_served = 10;
        let t = CacheCounters::sum([&a, &b]);
        assert_eq!(
            t,
            CacheCounters {
                hit: 3,
                miss: 1,
                stale: 1,
                revalidated: 1,
                expired: 1,
                bypass: 1,
                bytes_served: 10
            }
        );
        assert_eq!(CacheStatus::Revalidated.as_str(), "REVALIDATED");
    }
}
