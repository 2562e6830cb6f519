//! Prometheus text exposition (format 0.0.4) of the engine's counters:
//! one `# TYPE` per family, worker/pool/endpoint/route/rule as labels.

use std::fmt::Write;

use ferrogate_engine::EngineStats;
use ferrogate_proxy::lb::LatencyHistogram;

/// Snapshot facts that are not in `EngineStats`.
pub struct Info<'a> {
    pub version: &'a str,
    pub counter: u64,
    pub uptime_s: f64,
}

#[derive(Default)]
struct Families {
    fams: Vec<(String, &'static str, String, Vec<String>)>,
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn labels(l: &[(&str, String)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

impl Families {
    fn family(&mut self, name: &str, typ: &'static str, help: &str) -> &mut Vec<String> {
        let i = match self.fams.iter().position(|f| f.0 == name) {
            Some(i) => i,
            None => {
                self.fams
                    .push((name.to_string(), typ, help.to_string(), Vec::new()));
                self.fams.len() - 1
            }
        };
        &mut self.fams[i].3
    }

    fn sample(
        &mut self,
        name: &str,
        typ: &'static str,
        help: &str,
        l: &[(&str, String)],
        v: impl std::fmt::Display,
    ) {
        let line = format!("{name}{} {v}", labels(l));
        self.family(name, typ, help).push(line);
    }

    fn counter(&mut self, name: &str, help: &str, l: &[(&str, String)], v: u64) {
        self.sample(name, "counter", help, l, v);
    }

    fn gauge(&mut self, name: &str, help: &str, l: &[(&str, String)], v: impl std::fmt::Display) {
        self.sample(name, "gauge", help, l, v);
    }

    fn histogram(&mut self, name: &str, help: &str, l: &[(&str, String)], h: &LatencyHistogram) {
        let mut lines = Vec::new();
        let mut cum = 0u64;
        for (i, c) in h.counts.iter().enumerate() {
            cum += c;
            let le = match LatencyHistogram::bound_us(i) {
                Some(b) => b.to_string(),
                None => "+Inf".to_string(),
            };
            let mut ll = l.to_vec();
            ll.push(("le", le));
            lines.push(format!("{name}_bucket{} {cum}", labels(&ll)));
        }
        if LatencyHistogram::bound_us(h.counts.len() - 1).is_some() {
            let mut ll = l.to_vec();
            ll.push(("le", "+Inf".into()));
            lines.push(format!("{name}_bucket{} {cum}", labels(&ll)));
        }
        lines.push(format!("{name}_sum{} {}", labels(l), h.sum_us));
        lines.push(format!("{name}_count{} {}", labels(l), h.count()));
        self.family(name, "histogram", help).extend(lines);
    }

    fn render(self) -> String {
        let mut s = String::new();
        for (name, typ, help, lines) in self.fams {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {typ}");
            for l in lines {
                s.push_str(&l);
                s.push('\n');
            }
        }
        s
    }
}

fn is_gauge(stack_field: &str) -> bool {
    matches!(
        stack_field,
        "active_connections"
            | "upstream_idle"
            | "sockets_parked"
            | "sockets_open"
            | "upstream_ports_in_use"
            | "tcp_buffer_grown_bytes"
            | "l4_active"
            | "udp_active"
    )
}

/// Renders every counter of `st` as Prometheus text.
pub fn render(st: &EngineStats, info: &Info<'_>) -> String {
    let mut f = Families::default();
    f.gauge(
        "ferrogate_snapshot_info",
        "the running configuration snapshot",
        &[("version", info.version.to_string())],
        1,
    );
    f.gauge(
        "ferrogate_snapshot_counter",
        "apply counter of the running snapshot",
        &[],
        info.counter,
    );
    f.gauge(
        "ferrogate_uptime_seconds",
        "seconds since the engine started",
        &[],
        format!("{:.3}", info.uptime_s),
    );
    f.gauge(
        "ferrogate_backend_info",
        "packet I/O backend",
        &[("backend", st.backend.to_string())],
        1,
    );
    if let Some(g) = st.filter_generation {
        f.gauge(
            "ferrogate_filter_generation",
            "XDP filter rule-set generation",
            &[],
            g,
        );
    }
    for w in &st.workers {
        let l = [
            ("worker", w.worker.to_string()),
            ("queue", w.queue.to_string()),
            ("cpu", w.cpu.to_string()),
        ];
        f.counter(
            "ferrogate_worker_rx_frames_total",
            "frames received",
            &l,
            w.io.rx_frames,
        );
        f.counter(
            "ferrogate_worker_tx_frames_total",
            "frames sent",
            &l,
            w.io.tx_frames,
        );
        f.counter(
            "ferrogate_worker_rx_dropped_total",
            "frames the kernel dropped before the worker saw them (rx ring full)",
            &l,
            w.io.rx_dropped,
        );
        f.counter(
            "ferrogate_worker_tx_ring_full_total",
            "times a frame found the tx ring full (kept for the next flush; the DPDK backend drops it)",
            &l,
            w.io.tx_ring_full,
        );
        f.counter(
            "ferrogate_worker_handoff_out_total",
            "frames handed to another worker",
            &l,
            w.handoff_out,
        );
        f.counter(
            "ferrogate_worker_handoff_in_total",
            "frames received from another worker",
            &l,
            w.handoff_in,
        );
        f.counter(
            "ferrogate_worker_handoff_dropped_total",
            "hand-offs dropped (ring full)",
            &l,
            w.handoff_dropped,
        );
        f.counter(
            "ferrogate_worker_handoff_wakeups_total",
            "sleeping workers woken for frames handed to them",
            &l,
            w.handoff_wakeups,
        );
        f.counter("ferrogate_worker_sleeps_total", "idle sleeps", &l, w.sleeps);
        f.counter(
            "ferrogate_worker_busy_nanoseconds_total",
            "time spent on work",
            &l,
            w.busy_ns,
        );
        f.gauge(
            "ferrogate_worker_busy_ratio",
            "busy time / uptime",
            &l,
            format!("{:.6}", w.busy_ns as f64 / w.uptime_ns.max(1) as f64),
        );
        f.gauge(
            "ferrogate_worker_snapshot_counter",
            "snapshot counter the worker runs",
            &l,
            w.snapshot_version,
        );
        for (k, v) in w.stack.fields() {
            if is_gauge(k) {
                f.gauge(&format!("ferrogate_stack_{k}"), "stack gauge", &l[..1], v);
            } else {
                f.counter(
                    &format!("ferrogate_stack_{k}_total"),
                    "stack counter",
                    &l[..1],
                    v,
                );
            }
        }
    }
    if let Some(x) = &st.xdp {
        for (k, v) in x.iter() {
            let l = [("verdict", k.to_string())];
            f.counter("ferrogate_xdp_packets_total", "XDP verdicts", &l, v.packets);
            f.counter("ferrogate_xdp_bytes_total", "XDP verdicts", &l, v.bytes);
        }
    }
    for (id, v) in &st.rules {
        let l = [("rule", id.clone())];
        f.counter(
            "ferrogate_xdp_rule_packets_total",
            "packets matched per filter rule",
            &l,
            v.packets,
        );
        f.counter(
            "ferrogate_xdp_rule_bytes_total",
            "bytes matched per filter rule",
            &l,
            v.bytes,
        );
    }
    // DPDK port counters (empty for the other backends).
    for (k, v) in &st.port {
        if let Some(c) = k.strip_prefix("dpdk_port_") {
            let l = [("counter", c.to_string())];
            f.counter(
                "ferrogate_dpdk_port_total",
                "DPDK port counters (rte_eth_stats)",
                &l,
                *v,
            );
        } else if let Some(c) = k.strip_prefix("dpdk_xstat_") {
            let l = [("xstat", c.to_string())];
            f.counter(
                "ferrogate_dpdk_xstat_total",
                "DPDK driver extended statistics",
                &l,
                *v,
            );
        }
    }
    for (pool, p) in &st.upstreams.pools {
        let l = [("pool", pool.clone())];
        let scalars = [
            ("requests", p.requests),
            ("retries", p.retries),
            ("retries_denied_budget", p.retries_denied_budget),
            ("breaker_rejected", p.breaker_rejected),
            ("breaker_opens", p.breaker_opens),
            ("no_healthy", p.no_healthy),
            ("panic_picks", p.panic_picks),
            ("ejections", p.ejections),
            ("probes", p.probes),
            ("probe_failures", p.probe_failures),
        ];
        for (k, v) in scalars {
            f.counter(&format!("ferrogate_pool_{k}_total"), "pool counter", &l, v);
        }
        f.gauge(
            "ferrogate_pool_breaker_open",
            "1 when the breaker is not closed",
            &l,
            p.breaker_open,
        );
        for (class, c) in p.responses_by_class.iter().enumerate().skip(1) {
            let mut ll = l.to_vec();
            ll.push(("class", format!("{class}xx")));
            f.counter(
                "ferrogate_pool_responses_total",
                "upstream responses by status class",
                &ll,
                *c,
            );
        }
        f.histogram(
            "ferrogate_pool_latency_microseconds",
            "attempt start to response head",
            &l,
            &p.latency,
        );
        for e in &p.endpoints {
            let l = [("pool", pool.clone()), ("endpoint", e.addr.to_string())];
            f.counter(
                "ferrogate_endpoint_attempts_total",
                "attempts",
                &l,
                e.attempts,
            );
            f.counter(
                "ferrogate_endpoint_failures_total",
                "failures",
                &l,
                e.failures,
            );
            f.counter(
                "ferrogate_endpoint_ejections_total",
                "ejections",
                &l,
                e.ejections,
            );
            f.gauge(
                "ferrogate_endpoint_in_flight",
                "requests in flight",
                &l,
                e.in_flight,
            );
            f.gauge(
                "ferrogate_endpoint_healthy",
                "workers that see the endpoint healthy",
                &l,
                e.healthy,
            );
        }
    }
    for (route, r) in &st.routes.routes {
        let l = [("route", route.clone())];
        f.counter(
            "ferrogate_route_requests_total",
            "requests per route",
            &l,
            r.requests,
        );
        f.counter(
            "ferrogate_route_retries_total",
            "retries per route",
            &l,
            r.retries,
        );
        f.counter(
            "ferrogate_route_upstream_errors_total",
            "502/503/504 answered by the proxy",
            &l,
            r.upstream_errors,
        );
        for (class, c) in r.responses_by_class.iter().enumerate().skip(1) {
            let mut ll = l.to_vec();
            ll.push(("class", format!("{class}xx")));
            f.counter(
                "ferrogate_route_responses_total",
                "responses by status class",
                &ll,
                *c,
            );
        }
        f.histogram(
            "ferrogate_route_latency_microseconds",
            "request start to response head",
            &l,
            &r.latency,
        );
    }
    for (rule, hits) in &st.routes.rules {
        f.counter(
            "ferrogate_rule_hits_total",
            "requests an L7 rule matched",
            &[("rule", rule.clone())],
            *hits,
        );
    }
    for (limit, c) in &st.routes.limits {
        for (outcome, n) in [("allowed", c.allowed), ("limited", c.limited)] {
            f.counter(
                "ferrogate_rate_limit_requests_total",
                "requests an L7 rate limit counted, by outcome (limited: answered 429)",
                &[("limit", limit.clone()), ("outcome", outcome.into())],
                n,
            );
        }
        f.counter(
            "ferrogate_rate_limit_escalations_total",
            "sources an L7 rate limit escalated to the XDP deny set",
            &[("limit", limit.clone())],
            c.escalated,
        );
    }
    for (k, v) in st.cache_fields() {
        let name = format!("ferrogate_cache_store_{k}");
        if matches!(k, "objects" | "bytes") {
            f.gauge(&name, "response cache store (engine-wide) now", &[], v);
        } else {
            f.counter(
                &format!("{name}_total"),
                "response cache store (engine-wide)",
                &[],
                v,
            );
        }
    }
    for (k, v) in st.cache_disk_fields() {
        let name = format!("ferrogate_cache_disk_{k}");
        if matches!(k, "files" | "bytes") {
            f.gauge(&name, "response cache disk tier now", &[], v);
        } else {
            f.counter(&format!("{name}_total"), "response cache disk tier", &[], v);
        }
    }
    let e = &st.escalation;
    f.gauge(
        "ferrogate_escalated_sources",
        "sources in the XDP deny set by escalation now",
        &[],
        e.denied_now,
    );
    for (what, n) in [
        ("refused_allowed", e.refused_allowed),
        ("failed", e.failed),
        ("queue_dropped", e.queue_dropped),
    ] {
        f.counter(
            "ferrogate_escalations_not_applied_total",
            "escalations not applied: allow-listed source, full deny set, full queue",
            &[("reason", what.into())],
            n,
        );
    }
    f.render()
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;

    /// Dashboards and alerts key on these names: renaming a crate must not
    /// rename a metric.
    #[test]
    fn stack_counters_keep_their_exported_names() {
        let mut w = ferrogate_engine::WorkerStats::default();
        w.stack.requests = 7;
        w.stack.net.rx_frames = 9;
        w.stack.active_connections = 2;
        w.stack.cache.hit = 5;
        let mut st = EngineStats {
            backend: ferrogate_engine::BackendKind::Memory,
            workers: vec![w],
            xdp: None,
            rules: vec![],
            filter_generation: None,
            snapshot_version: 1,
            upstreams: Default::default(),
            routes: Default::default(),
            port: vec![],
            escalation: Default::default(),
            cache: Default::default(),
            cache_disk: Some(Default::default()),
        };
        st.cache.objects = 3;
        if let Some(d) = st.cache_disk.as_mut() {
            d.files = 4;
            d.loaded = 6;
        }
        st.cache.bytes = 4096;
        st.cache.evicted = 2;
        st.cache.purged = 1;
        let s = render(
            &st,
            &Info {
                version: "1",
                counter: 1,
                uptime_s: 1.0,
            },
        );
        for line in [
            "ferrogate_stack_requests_total{worker=\"0\"} 7",
            "ferrogate_stack_rx_frames_total{worker=\"0\"} 9",
            "ferrogate_stack_active_connections{worker=\"0\"} 2",
            "ferrogate_stack_cache_hits_total{worker=\"0\"} 5",
            "ferrogate_cache_store_objects 3",
            "ferrogate_cache_disk_files 4",
            "ferrogate_cache_disk_loaded_total 6",
            "ferrogate_cache_store_bytes 4096",
            "ferrogate_cache_store_evicted_total 2",
            "ferrogate_cache_store_purged_total 1",
            "ferrogate_cache_store_inserted_total 0",
            "# TYPE ferrogate_cache_store_objects gauge",
        ] {
            assert!(s.contains(line), "{line} missing in:\n{s}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn one_type_line_per_family_and_histograms_are_cumulative() {
        let mut f = Families::default();
        f.counter("a_total", "h", &[("pool", "p\"1".into())], 1);
        f.counter("a_total", "h", &[("pool", "p2".into())], 2);
        let mut h = LatencyHistogram::default();
        h.record(10);
        h.record(100);
        f.histogram("lat", "h", &[], &h);
        let s = f.render();
        assert_eq!(s.matches("# TYPE a_total counter").count(), 1);
        assert!(s.contains("a_total{pool=\"p\\\"1\"} 1"), "{s}");
        assert!(s.contains("lat_bucket{le=\"+Inf\"} 2"), "{s}");
        assert!(s.contains("lat_count 2"), "{s}");
    }
}
