//! JSON forms of `/status` and `/stats` (for the web status page and for
//! scripts), and the page itself. Built from the same `EngineStats` as the
//! text endpoints, off the data path, once per request.

use serde_json::{Map, Value, json};

use ferrogate_engine::EngineStats;
use ferrogate_proxy::lb::LatencyHistogram;

/// The status page: one static file, inline CSS and JS, no CDN.
pub const PAGE: &str = include_str!("status_page.html");

/// Paths that serve the page. They also accept the admin token as a
/// `?token=` query parameter (a browser cannot send a header on its first
/// load); everything else needs the `Authorization` header.
pub const PAGE_PATHS: &[&str] = &["/", "/ui"];

/// Content type of the JSON answers.
pub const JSON: &str = "application/json";

/// A histogram as the page uses it: totals, quantile bounds since start,
/// and the bucket counts (the page diffs two samples for a window's
/// quantiles). Quantiles are bucket upper bounds in µs; `null` when empty
/// or in the overflow bucket.
pub fn histogram(h: &LatencyHistogram) -> Value {
    let q = |p| h.quantile(p).filter(|&v| v != u64::MAX);
    json!({
        "count": h.count(),
        "sum_us": h.sum_us,
        "p50_us": q(0.5),
        "p99_us": q(0.99),
        "counts": h.counts.to_vec(),
    })
}

/// Upper bounds (µs) of the histogram buckets, `null` for the last.
pub fn bucket_bounds() -> Value {
    let n = LatencyHistogram::default().counts.len();
    Value::Array(
        (0..n)
            .map(|i| LatencyHistogram::bound_us(i).map_or(Value::Null, Value::from))
            .collect(),
    )
}

fn classes(c: &[u64; 6]) -> Value {
    let mut m = Map::new();
    for (class, n) in c.iter().enumerate().skip(1) {
        m.insert(format!("{class}xx"), (*n).into());
    }
    Value::Object(m)
}

fn fields<'a>(it: impl IntoIterator<Item = (&'a str, u64)>) -> Value {
    Value::Object(
        it.into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect(),
    )
}

/// `GET /stats.json`: every counter of `st` plus `extra` (engine-process
/// counters that are not in `EngineStats`).
pub fn stats_json(st: &EngineStats, extra: &[(&str, u64)]) -> Value {
    let workers: Vec<Value> = st
        .workers
        .iter()
        .map(|w| {
            json!({
                "worker": w.worker,
                "queue": w.queue,
                "cpu": w.cpu,
                "rx_frames": w.io.rx_frames,
                "tx_frames": w.io.tx_frames,
                "rx_bytes": w.io.rx_bytes,
                "tx_bytes": w.io.tx_bytes,
                "rx_dropped": w.io.rx_dropped,
                "tx_ring_full": w.io.tx_ring_full,
                "requests": w.stack.requests,
                "active_connections": w.stack.active_connections,
                "handoff_out": w.handoff_out,
                "handoff_in": w.handoff_in,
                "handoff_dropped": w.handoff_dropped,
                "handoff_strays": w.handoff_strays,
                "sleeps": w.sleeps,
                "busy_ns": w.busy_ns,
                "uptime_ns": w.uptime_ns,
                "snapshot_version": w.snapshot_version,
            })
        })
        .collect();
    let xdp = st.xdp.as_ref().map(|x| {
        Value::Object(
            x.iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        json!({"packets": v.packets, "bytes": v.bytes}),
                    )
                })
                .collect(),
        )
    });
    let filter_rules: Vec<Value> = st
        .rules
        .iter()
        .map(|(id, v)| json!({"rule": id, "packets": v.packets, "bytes": v.bytes}))
        .collect();
    let pools: Vec<Value> = st
        .upstreams
        .pools
        .iter()
        .map(|(name, p)| {
            let endpoints: Vec<Value> = p
                .endpoints
                .iter()
                .map(|e| {
                    json!({
                        "addr": e.addr.to_string(),
                        "attempts": e.attempts,
                        "failures": e.failures,
                        "ejections": e.ejections,
                        "in_flight": e.in_flight,
                        "healthy_workers": e.healthy,
                    })
                })
                .collect();
            json!({
                "name": name,
                "requests": p.requests,
                "responses": classes(&p.responses_by_class),
                "latency": histogram(&p.latency),
                "retries": p.retries,
                "retries_denied_budget": p.retries_denied_budget,
                "breaker_rejected": p.breaker_rejected,
                "breaker_opens": p.breaker_opens,
                "breaker_open_workers": p.breaker_open,
                "no_healthy": p.no_healthy,
                "panic_picks": p.panic_picks,
                "ejections": p.ejections,
                "probes": p.probes,
                "probe_failures": p.probe_failures,
                "endpoints": endpoints,
            })
        })
        .collect();
    let mut all_routes = LatencyHistogram::default();
    let routes: Vec<Value> = st
        .routes
        .routes
        .iter()
        .map(|(name, r)| {
            all_routes.add(&r.latency);
            json!({
                "name": name,
                "requests": r.requests,
                "responses": classes(&r.responses_by_class),
                "retries": r.retries,
                "upstream_errors": r.upstream_errors,
                "latency": histogram(&r.latency),
            })
        })
        .collect();
    let l7_rules: Vec<Value> = st
        .routes
        .rules
        .iter()
        .map(|(name, hits)| json!({"rule": name, "hits": hits}))
        .collect();
    let limits: Vec<Value> = st
        .routes
        .limits
        .iter()
        .map(|(name, c)| {
            json!({"limit": name, "allowed": c.allowed, "limited": c.limited, "escalated": c.escalated})
        })
        .collect();
    let e = &st.escalation;
    json!({
        "backend": st.backend.to_string(),
        "snapshot_version": st.snapshot_version,
        "filter_generation": st.filter_generation,
        "workers": workers,
        "stack": fields(st.stack_total().fields()),
        "xdp": xdp,
        "filter_rules": filter_rules,
        "l7_rules": l7_rules,
        "rate_limits": limits,
        "pools": pools,
        "routes": routes,
        "latency": histogram(&all_routes),
        "latency_bounds_us": bucket_bounds(),
        "escalation": {
            "denied_now": e.denied_now,
            "escalated": e.escalated,
            "refused_allowed": e.refused_allowed,
            "failed": e.failed,
            "queue_dropped": e.queue_dropped,
        },
        "cache": fields(st.cache_fields()),
        "cache_disk": st.cache_disk.as_ref().map(|_| fields(st.cache_disk_fields())),
        "port": fields(st.port.iter().map(|(k, v)| (k.as_str(), *v))),
        "process": fields(extra.iter().copied()),
    })
}

/// The outcome of the last apply (or rollback) the engine was asked for.
#[derive(Debug, Clone)]
pub struct LastApply {
    pub at: std::time::SystemTime,
    pub ok: bool,
    /// `apply` or `rollback`.
    pub kind: &'static str,
    /// The running version after it.
    pub version: String,
    /// The answer's first line (the error, or "applied version …").
    pub message: String,
    pub took_ms: u64,
}

impl LastApply {
    pub fn to_json(&self) -> Value {
        json!({
            "at_unix_s": self.at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "ok": self.ok,
            "kind": self.kind,
            "version": self.version,
            "message": self.message,
            "took_ms": self.took_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn populated() -> EngineStats {
        use ferrogate_proxy::lb::{EndpointStats, PoolStats};
        let mut w = ferrogate_engine::WorkerStats::default();
        w.stack.requests = 7;
        w.io.rx_frames = 11;
        w.busy_ns = 5;
        w.uptime_ns = 10;
        let mut pool = PoolStats {
            requests: 3,
            breaker_open: 1,
            endpoints: vec![EndpointStats {
                healthy: 1,
                attempts: 3,
                ..EndpointStats::new("10.0.0.1:80".parse().unwrap())
            }],
            ..PoolStats::default()
        };
        pool.count_response(200, 100);
        let mut st = EngineStats {
            backend: ferrogate_engine::BackendKind::Memory,
            workers: vec![w],
            xdp: None,
            rules: vec![("deny-1".into(), Default::default())],
            filter_generation: Some(2),
            snapshot_version: 4,
            upstreams: Default::default(),
            routes: Default::default(),
            port: vec![],
            escalation: Default::default(),
            cache: Default::default(),
            cache_disk: None,
            plugins: Vec::new(),
        };
        st.upstreams.pools.push(("origin".into(), pool));
        st
    }

    #[test]
    fn stats_json_carries_workers_pools_rules_and_quantiles() {
        let v = stats_json(&populated(), &[("access_log_written", 9)]);
        // It is valid JSON text, and round-trips.
        let text = serde_json::to_string(&v).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["workers"][0]["requests"], 7);
        assert_eq!(v["workers"][0]["rx_frames"], 11);
        assert_eq!(v["stack"]["requests"], 7);
        assert_eq!(v["filter_generation"], 2);
        assert_eq!(v["filter_rules"][0]["rule"], "deny-1");
        let pool = &v["pools"][0];
        assert_eq!(pool["name"], "origin");
        assert_eq!(pool["breaker_open_workers"], 1);
        assert_eq!(pool["responses"]["2xx"], 1);
        assert_eq!(pool["latency"]["p50_us"], 128, "100 µs is in [64, 128)");
        assert_eq!(pool["endpoints"][0]["addr"], "10.0.0.1:80");
        assert_eq!(pool["endpoints"][0]["healthy_workers"], 1);
        assert_eq!(v["process"]["access_log_written"], 9);
        assert!(v["latency"]["p99_us"].is_null(), "no route answered yet");
        assert_eq!(
            v["latency_bounds_us"].as_array().unwrap().len(),
            v["latency"]["counts"].as_array().unwrap().len()
        );
    }

    #[test]
    fn the_page_is_self_contained() {
        assert!(PAGE.contains("/stats.json") && PAGE.contains("/status.json"));
        // No CDN, no external fetch: every URL it names is on this host.
        for needle in ["http://", "https://", "//cdn", "src=\"//"] {
            assert!(!PAGE.contains(needle), "the page names {needle}");
        }
    }
}
