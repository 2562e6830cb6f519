//! The Grafana dashboard (`configs/grafana/ferrogate.json`) queries only
//! metrics the engine exports: every PromQL expression of every panel (and
//! of the annotations and template variables) is scanned for `ferrogate_…` names, and each
//! must be a series name of `metrics::render` over counters in which every
//! family is present (histograms as `_bucket`/`_sum`/`_count`, counters
//! with `_total`, as exported), or of `metrics::render_control` (the
//! control daemon's state, which its `/metrics` adds). A renamed metric
//! fails here, not on an operator's empty graph.

use std::collections::BTreeSet;

use ferrogate_control::metrics::{ControlInfo, Info, render, render_control};
use ferrogate_engine::{EngineStats, WorkerStats};
use ferrogate_proxy::lb::{EndpointStats, PoolStats};
use serde_json::Value;

/// Counters with one of everything, so every family is rendered.
fn populated() -> EngineStats {
    let mut pool = PoolStats {
        endpoints: vec![EndpointStats::new("10.0.0.1:80".parse().unwrap())],
        ..PoolStats::default()
    };
    pool.count_response(200, 100);
    let mut st = EngineStats {
        backend: ferrogate_engine::BackendKind::Memory,
        workers: vec![WorkerStats::default()],
        xdp: Some(Default::default()),
        rules: vec![("deny".into(), Default::default())],
        filter_generation: Some(1),
        snapshot_version: 1,
        upstreams: Default::default(),
        routes: Default::default(),
        port: vec![
            ("dpdk_port_ipackets".into(), 1),
            ("dpdk_xstat_rx_good_packets".into(), 1),
        ],
        escalation: Default::default(),
        cache: Default::default(),
        cache_disk: Some(Default::default()),
        plugins: Vec::new(),
    };
    st.upstreams.pools.push(("origin".into(), pool));
    st.routes.routes.push(("r".into(), Default::default()));
    st.routes.rules.push(("waf".into(), 1));
    st.routes.limits.push(("per-ip".into(), Default::default()));
    st
}

/// Every series name the engine exports.
fn exported() -> BTreeSet<String> {
    let text = render(
        &populated(),
        &Info {
            version: "1-0",
            counter: 1,
            uptime_s: 1.0,
            process: &[("snapshot_persist_errors", 0)],
            ..Default::default()
        },
    ) + &render_control(&ControlInfo::default());
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.split(['{', ' '])
                .next()
                .expect("a sample line has a name")
                .to_string()
        })
        .collect()
}

/// The `ferrogate_…` names in one PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    while i < b.len() {
        if word(b[i]) && (i == 0 || !word(b[i - 1])) {
            let start = i;
            while i < b.len() && word(b[i]) {
                i += 1;
            }
            let w = &expr[start..i];
            if w.starts_with("ferrogate_") {
                out.push(w.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// (where, expression) of every query in the dashboard.
fn queries(dash: &Value) -> Vec<(String, String)> {
    fn panels(v: &Value, out: &mut Vec<(String, String)>) {
        for p in v.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {title:?}"), e.to_string()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(e) = a["expr"].as_str() {
            let name = a["name"].as_str().unwrap_or("?");
            out.push((format!("annotation {name:?}"), e.to_string()));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let q = match &v["query"] {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("query").and_then(|q| q.as_str()).map(String::from),
            _ => None,
        };
        if let Some(q) = q {
            let name = v["name"].as_str().unwrap_or("?");
            out.push((format!("variable {name:?}"), q));
        }
    }
    out
}

/// The queries that name a metric the engine does not export.
fn unknown(dash: &Value, exported: &BTreeSet<String>) -> Vec<String> {
    let mut bad = Vec::new();
    for (at, expr) in queries(dash) {
        for m in metric_names(&expr) {
            if !exported.contains(&m) {
                bad.push(format!("{at}: {m} (in {expr})"));
            }
        }
    }
    bad
}

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/grafana/ferrogate.json"
    );
    let text = std::fs::read_to_string(path).expect("configs/grafana/ferrogate.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

#[test]
fn every_dashboard_query_names_an_exported_metric() {
    let dash = dashboard();
    let exported = exported();
    let qs = queries(&dash);
    assert!(qs.len() >= 20, "only {} queries found", qs.len());
    let bad = unknown(&dash, &exported);
    assert!(
        bad.is_empty(),
        "metrics the engine does not export:\n{}\nexported:\n{:?}",
        bad.join("\n"),
        exported
    );
    // Every graph queries something of ours.
    fn check(v: &Value) {
        for p in v.as_array().into_iter().flatten() {
            if p["type"] != "row" {
                let exprs: Vec<&str> = p["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t["expr"].as_str())
                    .collect();
                assert!(
                    exprs.iter().any(|e| !metric_names(e).is_empty()),
                    "panel {} has no ferrogate query",
                    p["title"]
                );
            }
            check(&p["panels"]);
        }
    }
    check(&dash["panels"]);
}

#[test]
fn the_check_catches_a_renamed_metric_and_reads_histograms_and_counters() {
    let exported = exported();
    for name in [
        "ferrogate_stack_requests_total",
        "ferrogate_route_latency_microseconds_bucket",
        "ferrogate_pool_latency_microseconds_count",
        "ferrogate_xdp_packets_total",
        "ferrogate_endpoint_healthy",
        "ferrogate_config_applies_total",
        "ferrogate_control_engine_connected",
    ] {
        assert!(exported.contains(name), "{name} not in {exported:?}");
    }
    // The family name alone is not a series of a histogram.
    assert!(!exported.contains("ferrogate_route_latency_microseconds"));
    let dash: Value = serde_json::json!({
        "panels": [{"type": "row", "title": "r", "panels": [
            {"type": "timeseries", "title": "t", "targets": [
                {"expr": "sum(rate(ferrogate_stack_requests_total[5m])) / sum(rate(ferrogate_stack_request_total[5m]))"}
            ]}
        ]}],
        "templating": {"list": [{"name": "w", "query": {"query": "label_values(ferrogate_worker_rx_frame_total, worker)"}}]},
        "annotations": {"list": [{"name": "a", "expr": "changes(ferrogate_snapshot_count[1m])"}]}
    });
    let bad = unknown(&dash, &exported);
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad[1].contains("ferrogate_snapshot_count "), "{bad:?}");
    assert!(bad[0].contains("ferrogate_stack_request_total"), "{bad:?}");
    assert!(
        bad[2].contains("ferrogate_worker_rx_frame_total"),
        "{bad:?}"
    );
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(ferrogate_a_bucket{x=\"ferrogate_b\"}[1m])))"
        ),
        ["ferrogate_a_bucket", "ferrogate_b"],
        "label values are scanned too (a false alarm beats a missed rename)"
    );
}
