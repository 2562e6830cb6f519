//! Per-pool and per-endpoint counters (and the latency histogram and
//! status classes the proxy's per-route counters use too). A worker owns its own and updates them
//! with plain integer adds; readers sum copies across workers with `add` and
//! print `name value` lines like the engine's other counters.
//!
//! Gauges (an endpoint's `healthy`, a pool's `breaker_open`) are 0 or 1 per
//! worker, so summed across workers they count the workers holding that
//! view (each worker checks health and trips breakers on its own).

use std::fmt::Write;
use std::net::SocketAddr;

/// Buckets of [`LatencyHistogram`]: bucket `i < LATENCY_BUCKETS - 1` counts
/// latencies below `64 µs << i` (and at least the previous bound); the last
/// one everything from ~67 s up.
pub const LATENCY_BUCKETS: usize = 22;

/// Latency in fixed power-of-two buckets from 64 µs to ~67 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub counts: [u64; LATENCY_BUCKETS],
    pub sum_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: [0; LATENCY_BUCKETS],
            sum_us: 0,
        }
    }
}

impl LatencyHistogram {
    /// Exclusive upper bound of bucket `i` in µs (`None` for the last).
    pub fn bound_us(i: usize) -> Option<u64> {
        (i < LATENCY_BUCKETS - 1).then(|| 64u64 << i)
    }

    pub fn record(&mut self, micros: u64) {
        let i = (64 - (micros >> 6).leading_zeros()) as usize;
        self.counts[i.min(LATENCY_BUCKETS - 1)] += 1;
        self.sum_us = self.sum_us.saturating_add(micros);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1); `u64::MAX`
    /// for the overflow bucket, `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::bound_us(i).unwrap_or(u64::MAX));
            }
        }
        None
    }

    pub fn add(&mut self, o: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.sum_us = self.sum_us.saturating_add(o.sum_us);
    }

    /// Prometheus-style `{prefix}_latency_us_*` lines.
    pub fn render(&self, prefix: &str, out: &mut String) {
        for (i, c) in self.counts.iter().enumerate() {
            match Self::bound_us(i) {
                Some(b) => {
                    let _ = writeln!(out, "{prefix}_latency_us_lt_{b} {c}");
                }
                None => {
                    let _ = writeln!(out, "{prefix}_latency_us_overflow {c}");
                }
            }
        }
        let _ = writeln!(out, "{prefix}_latency_us_sum {}", self.sum_us);
        let _ = writeln!(out, "{prefix}_latency_us_count {}", self.count());
    }
}

/// Counts `status` in its class slot (1xx..5xx).
pub fn status_class(counts: &mut [u64; 6], status: u16) {
    let class = (status / 100) as usize;
    if class < counts.len() {
        counts[class] += 1;
    }
}

/// `{prefix}_responses_Nxx` lines of a class-count array.
pub fn render_classes(prefix: &str, counts: &[u64; 6], out: &mut String) {
    for (class, c) in counts.iter().enumerate().skip(1) {
        let _ = writeln!(out, "{prefix}_responses_{class}xx {c}");
    }
}

/// Counters of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointStats {
    pub addr: SocketAddr,
    pub attempts: u64,
    pub failures: u64,
    pub ejections: u64,
    /// Gauges, filled when the counters are read.
    pub in_flight: u64,
    pub healthy: u64,
}

impl EndpointStats {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            attempts: 0,
            failures: 0,
            ejections: 0,
            in_flight: 0,
            healthy: 0,
        }
    }

    fn add(&mut self, o: &EndpointStats) {
        self.attempts += o.attempts;
        self.failures += o.failures;
        self.ejections += o.ejections;
        self.in_flight += o.in_flight;
        self.healthy += o.healthy;
    }
}

/// Counters of one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests (first attempts) sent to the pool.
    pub requests: u64,
    pub responses_by_class: [u64; 6],
    /// Attempt start → response head from the upstream.
    pub latency: LatencyHistogram,
    pub retries: u64,
    pub retries_denied_budget: u64,
    /// Requests refused with 503 because the breaker was open.
    pub breaker_rejected: u64,
    pub breaker_opens: u64,
    /// Gauge: 1 when the breaker is not closed.
    pub breaker_open: u64,
    /// Picks refused (503) because no endpoint was usable and fail-open is off.
    pub no_healthy: u64,
    /// Picks made in panic mode (no endpoint usable, fail-open on).
    pub panic_picks: u64,
    pub ejections: u64,
    pub probes: u64,
    pub probe_failures: u64,
    pub endpoints: Vec<EndpointStats>,
}

impl PoolStats {
    pub fn count_response(&mut self, status: u16, latency_us: u64) {
        status_class(&mut self.responses_by_class, status);
        self.latency.record(latency_us);
    }

    pub fn add(&mut self, o: &PoolStats) {
        self.requests += o.requests;
        for (a, b) in self.responses_by_class.iter_mut().zip(o.responses_by_class) {
            *a += b;
        }
        self.latency.add(&o.latency);
        self.retries += o.retries;
        self.retries_denied_budget += o.retries_denied_budget;
        self.breaker_rejected += o.breaker_rejected;
        self.breaker_opens += o.breaker_opens;
        self.breaker_open += o.breaker_open;
        self.no_healthy += o.no_healthy;
        self.panic_picks += o.panic_picks;
        self.ejections += o.ejections;
        self.probes += o.probes;
        self.probe_failures += o.probe_failures;
        for e in &o.endpoints {
            match self.endpoints.iter_mut().find(|m| m.addr == e.addr) {
                Some(m) => m.add(e),
                None => self.endpoints.push(*e),
            }
        }
    }

    /// `pool_<name>_requests N`, ..., `pool_<name>_endpoint_<addr>_healthy N`.
    pub fn render(&self, name: &str, out: &mut String) {
        let p = format!("pool_{name}");
        let scalars = [
            ("requests", self.requests),
            ("retries", self.retries),
            ("retries_denied_budget", self.retries_denied_budget),
            ("breaker_rejected", self.breaker_rejected),
            ("breaker_opens", self.breaker_opens),
            ("breaker_open", self.breaker_open),
            ("no_healthy", self.no_healthy),
            ("panic_picks", self.panic_picks),
            ("ejections", self.ejections),
            ("probes", self.probes),
            ("probe_failures", self.probe_failures),
        ];
        for (k, v) in scalars {
            let _ = writeln!(out, "{p}_{k} {v}");
        }
        render_classes(&p, &self.responses_by_class, out);
        self.latency.render(&p, out);
        for e in &self.endpoints {
            let ep = format!("{p}_endpoint_{}", e.addr);
            let _ = writeln!(out, "{ep}_attempts {}", e.attempts);
            let _ = writeln!(out, "{ep}_failures {}", e.failures);
            let _ = writeln!(out, "{ep}_ejections {}", e.ejections);
            let _ = writeln!(out, "{ep}_in_flight {}", e.in_flight);
            let _ = writeln!(out, "{ep}_healthy {}", e.healthy);
        }
    }
}

/// Every pool's counters of one worker (or summed over workers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamStats {
    pub pools: Vec<(String, PoolStats)>,
}

impl UpstreamStats {
    pub fn add(&mut self, o: &UpstreamStats) {
        for (name, s) in &o.pools {
            match self.pools.iter_mut().find(|(n, _)| n == name) {
                Some((_, mine)) => mine.add(s),
                None => self.pools.push((name.clone(), s.clone())),
            }
        }
    }

    pub fn pool(&self, name: &str) -> Option<&PoolStats> {
        self.pools.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    pub fn render(&self, out: &mut String) {
        for (name, s) in &self.pools {
            s.render(name, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_power_of_two_buckets() {
        let mut h = LatencyHistogram::default();
        h.record(0);
        h.record(63);
        h.record(64);
        h.record(127);
        h.record(1_000);
        h.record(u64::MAX / 2);
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[1], 2);
        assert_eq!(h.counts[4], 1, "512 <= 1000 µs < 64 << 4 = 1024");
        assert_eq!(h.counts[LATENCY_BUCKETS - 1], 1);
        assert_eq!(LatencyHistogram::bound_us(20), Some(64 << 20));
        assert_eq!(h.quantile(0.5), Some(128));
        assert_eq!(h.quantile(1.0), Some(u64::MAX));
    }

    #[test]
    fn pool_counters_sum_endpoints_by_address() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let mut w1 = UpstreamStats::default();
        let p1 = PoolStats {
            requests: 5,
            breaker_open: 1,
            endpoints: vec![EndpointStats {
                healthy: 1,
                attempts: 3,
                ..EndpointStats::new(a)
            }],
            ..PoolStats::default()
        };
        w1.pools.push(("origin".into(), p1));
        let mut w2 = UpstreamStats::default();
        let p2 = PoolStats {
            requests: 1,
            endpoints: vec![
                EndpointStats {
                    healthy: 1,
                    ..EndpointStats::new(b)
                },
                EndpointStats {
                    healthy: 0,
                    attempts: 1,
                    ..EndpointStats::new(a)
                },
            ],
            ..PoolStats::default()
        };
        w2.pools.push(("origin".into(), p2));
        w1.add(&w2);
        let mut out = String::new();
        w1.render(&mut out);
        assert!(out.contains("pool_origin_requests 6\n"), "{out}");
        assert!(out.contains("pool_origin_breaker_open 1\n"));
        assert!(out.contains("pool_origin_endpoint_10.0.0.1:80_healthy 1\n"));
        assert!(out.contains("pool_origin_endpoint_10.0.0.1:80_attempts 4\n"));
        assert!(out.contains("pool_origin_endpoint_10.0.0.2:80_healthy 1\n"));
    }
}
