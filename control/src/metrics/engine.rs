//! The engine's counters: per worker, XDP verdicts and rules, DPDK port
//! counters, pools and endpoints, routes, L7 rules and rate limits, the
//! response cache and escalations.

use ferrogate_engine::EngineStats;
use ferrogate_proxy::plugins::MetricKind;

use super::{Families, Info};

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
            | "plugin_memory_bytes"
    )
}

/// The engine's counters and the running snapshot's identity, in the
/// order and under the names the hand-written writer used.
pub(super) fn counters(f: &mut Families, st: &EngineStats, info: &Info<'_>) {
    f.info(
        "ferrogate_snapshot_info",
        "the running configuration snapshot",
        &[("version", info.version.to_string())],
    );
    f.gauge(
        "ferrogate_snapshot_counter",
        "apply counter of the running snapshot",
        &[],
        info.counter,
    );
    f.gauge_f64(
        "ferrogate_uptime_seconds",
        "seconds since the engine started",
        &[],
        info.uptime_s,
    );
    f.info(
        "ferrogate_backend_info",
        "packet I/O backend",
        &[("backend", st.backend.to_string())],
    );
    if let Some(g) = st.filter_generation {
        f.gauge(
            "ferrogate_filter_generation",
            "XDP filter rule-set generation",
            &[],
            g.into(),
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
            "ferrogate_worker_handoff_strays_total",
            "client segments this worker held no socket for, asked of the next worker",
            &l,
            w.handoff_strays,
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
        f.counter(
            "ferrogate_worker_exception_to_host_total",
            "frames of a DPDK port passed to the host's exception TAP (not a VIP's)",
            &l,
            w.exception_to_host,
        );
        f.counter(
            "ferrogate_worker_exception_from_host_total",
            "frames the host sent out of the DPDK port through the exception TAP",
            &l,
            w.exception_from_host,
        );
        f.counter(
            "ferrogate_worker_exception_dropped_total",
            "exception frames refused (the TAP queue or the tx ring full)",
            &l,
            w.exception_dropped,
        );
        f.counter(
            "ferrogate_worker_upgrade_relayed_out_total",
            "binary upgrade: frames of the predecessor's flows relayed to it",
            &l,
            w.upgrade_relayed_out,
        );
        f.counter(
            "ferrogate_worker_upgrade_relayed_in_total",
            "binary upgrade: frames of the predecessor sent out of the NIC for it",
            &l,
            w.upgrade_relayed_in,
        );
        f.counter(
            "ferrogate_worker_upgrade_relay_dropped_total",
            "binary upgrade: relays refused (the predecessor's ring full)",
            &l,
            w.upgrade_relay_dropped,
        );
        f.counter("ferrogate_worker_sleeps_total", "idle sleeps", &l, w.sleeps);
        f.counter(
            "ferrogate_worker_busy_nanoseconds_total",
            "time spent on work",
            &l,
            w.busy_ns,
        );
        f.gauge_f64(
            "ferrogate_worker_busy_ratio",
            "busy time / uptime",
            &l,
            w.busy_ns as f64 / w.uptime_ns.max(1) as f64,
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
}

/// The running plugins' own metrics (`proxy_define_metric`), by plugin and
/// name, one family per proxy-wasm kind, and their failures.
pub(super) fn plugins(f: &mut Families, st: &EngineStats) {
    for p in &st.plugins {
        for m in &p.metrics {
            let l = [("plugin", p.name.clone()), ("name", m.name.clone())];
            match m.kind {
                MetricKind::Counter => f.counter(
                    "ferrogate_plugin_counter_total",
                    "a plugin's counter (proxy-wasm define_metric), summed over workers",
                    &l,
                    m.value.max(0) as u64,
                ),
                MetricKind::Gauge => f.gauge_i64(
                    "ferrogate_plugin_gauge",
                    "a plugin's gauge (proxy-wasm define_metric)",
                    &l,
                    m.value,
                ),
                MetricKind::Histogram => f.sum_count(
                    "ferrogate_plugin_histogram",
                    "a plugin's histogram (proxy-wasm define_metric): sum and count of the recorded values, no buckets",
                    &l,
                    m.value as f64,
                    m.count,
                ),
            }
        }
        let s = &p.stats;
        for (kind, n) in [
            ("trap", s.traps),
            ("timeout", s.timeouts),
            ("out_of_memory", s.out_of_memory),
            ("abi_violation", s.abi_errors),
        ] {
            f.counter(
                "ferrogate_plugin_failures_total",
                "guest calls of a plugin stopped by the sandbox, by cause",
                &[("plugin", p.name.clone()), ("kind", kind.into())],
                n,
            );
        }
        let l = [("plugin", p.name.clone())];
        f.counter(
            "ferrogate_plugin_reinstantiations_total",
            "failed plugin instances replaced by a fresh one",
            &l,
            s.reinstantiations,
        );
        f.counter(
            "ferrogate_plugin_metrics_refused_total",
            "metric definitions refused (past the per-plugin bound, a bad name, or another kind)",
            &l,
            s.metrics_refused,
        );
    }
}
