//! The exposition of one fixed set of counters, kept as `golden.prom`: it
//! was written by the hand-made text writer this crate had before it
//! moved to `prometheus-client`, so every series name, label set, type,
//! help and value of that writer is pinned, and compared series by series
//! with what is exported now.

use ferrogate_engine::{EngineStats, WorkerStats};
use ferrogate_proxy::lb::{EndpointStats, PoolStats};
use ferrogate_proxy::plugins::{MetricKind, MetricSample};

use std::collections::HashMap;

use super::Info;
use super::parse::{Sample, parse};

pub const GOLDEN: &str = include_str!("golden.prom");

pub fn info() -> Info<'static> {
    Info {
        version: "7-1a2b",
        counter: 7,
        uptime_s: 1.5,
        ..Default::default()
    }
}

fn sample(name: &str, kind: MetricKind, value: i64, count: u64) -> MetricSample {
    MetricSample {
        name: name.into(),
        kind,
        value,
        count,
    }
}

/// One of every family, with label values that need escaping, latencies
/// in every kind of bucket (below 1 s, above it, past the last bound) and
/// distinct values, so a field exported under another's name shows.
pub fn stats() -> EngineStats {
    let worker = |i: usize| {
        let mut w = WorkerStats {
            worker: i,
            queue: i as u32 + 10,
            cpu: i + 2,
            handoff_out: 11 + i as u64,
            handoff_in: 12 + i as u64,
            handoff_dropped: 13,
            handoff_wakeups: 14,
            sleeps: 15,
            busy_ns: 250,
            uptime_ns: 1000,
            snapshot_version: 7 - i as u64,
            ..Default::default()
        };
        w.io.rx_frames = 100 + i as u64;
        w.io.tx_frames = 200 + i as u64;
        w.io.rx_dropped = 3;
        w.io.tx_ring_full = 4;
        w.stack.requests = 21 + i as u64;
        w.stack.active_connections = 5;
        w.stack.upstream_idle = 6;
        w.stack.bad_requests = 22;
        w.stack.tls_handshakes_full = 23;
        w.stack.cache.hit = 24;
        w.stack.net.rx_frames = 25;
        w
    };
    let mut pool = PoolStats {
        requests: 31,
        retries: 32,
        retries_denied_budget: 33,
        breaker_rejected: 34,
        breaker_opens: 35,
        breaker_open: 1,
        no_healthy: 36,
        panic_picks: 37,
        ejections: 38,
        probes: 39,
        probe_failures: 40,
        endpoints: vec![EndpointStats {
            attempts: 41,
            failures: 42,
            ejections: 43,
            in_flight: 2,
            healthy: 1,
            ..EndpointStats::new("10.0.0.1:80".parse().unwrap())
        }],
        ..PoolStats::default()
    };
    pool.count_response(200, 100);
    pool.count_response(503, 2_000_000);
    pool.count_response(404, 100_000_000);
    let mut xdp = ferrogate_ebpf::XdpCounters::default();
    xdp.pass_host.packets = 51;
    xdp.pass_host.bytes = 5100;
    xdp.redirect_vip.packets = 52;
    let mut st = EngineStats {
        backend: ferrogate_engine::BackendKind::Memory,
        workers: vec![worker(0), worker(1)],
        xdp: Some(xdp),
        rules: vec![(
            "deny \"bad\"".into(),
            ferrogate_ebpf::Verdict {
                packets: 61,
                bytes: 6100,
            },
        )],
        filter_generation: Some(3),
        snapshot_version: 7,
        upstreams: Default::default(),
        routes: Default::default(),
        port: vec![
            ("dpdk_port_ipackets".into(), 71),
            ("dpdk_xstat_rx_good_packets".into(), 72),
            ("other".into(), 73),
        ],
        escalation: ferrogate_engine::EscalationStats {
            denied_now: 81,
            escalated: 82,
            refused_allowed: 83,
            failed: 84,
            queue_dropped: 85,
        },
        cache: Default::default(),
        cache_disk: Some(Default::default()),
        plugins: vec![ferrogate_engine::PluginReading {
            name: "wasm\"x".into(),
            metrics: vec![
                sample("requests", MetricKind::Counter, 131, 0),
                sample("in_flight", MetricKind::Gauge, -2, 0),
                sample("size", MetricKind::Histogram, 1500, 3),
            ],
            stats: ferrogate_proxy::plugins::PluginStats {
                traps: 132,
                timeouts: 133,
                out_of_memory: 134,
                abi_errors: 135,
                reinstantiations: 136,
                metrics_refused: 137,
            },
        }],
    };
    st.cache.objects = 91;
    st.cache.bytes = 92;
    st.cache.inserted = 93;
    if let Some(d) = st.cache_disk.as_mut() {
        d.files = 94;
        d.loaded = 95;
    }
    st.upstreams.pools.push(("origin\\a".into(), pool));
    let mut route = ferrogate_proxy::route_stats::RouteStats {
        requests: 101,
        retries: 102,
        upstream_errors: 103,
        ..Default::default()
    };
    route.responses_by_class = [0, 1, 2, 3, 4, 5];
    route.latency.record(10);
    route.latency.record(70);
    route.latency.record(1_500_000);
    route.latency.record(200_000_000);
    st.routes.routes.push(("api\nv1".into(), route));
    st.routes.rules.push(("waf".into(), 111));
    st.routes.limits.push((
        "per-ip".into(),
        ferrogate_proxy::route_stats::LimitCounts {
            allowed: 121,
            limited: 122,
            escalated: 123,
        },
    ));
    st
}

/// Families exported since the golden file was written (the control
/// plane's state); anything else new fails.
const ADDED: &[&str] = &[
    "ferrogate_cache_disk_journal_errors_total",
    "ferrogate_cache_disk_pending_applied_total",
    "ferrogate_cache_disk_pending_unreadable_total",
    "ferrogate_config_applies_total",
    "ferrogate_config_last_apply_successful",
    "ferrogate_config_last_apply_success_timestamp_seconds",
    "ferrogate_config_last_apply_failure_timestamp_seconds",
    "ferrogate_config_last_apply_duration_seconds",
    "ferrogate_config_started_from_last_known_good",
    "ferrogate_config_kept_versions",
    "ferrogate_draining",
    "ferrogate_worker_exception_to_host_total",
    "ferrogate_worker_exception_from_host_total",
    "ferrogate_worker_exception_dropped_total",
    "ferrogate_plugin_counter_total",
    "ferrogate_plugin_gauge",
    "ferrogate_plugin_histogram",
    "ferrogate_plugin_failures_total",
    "ferrogate_plugin_reinstantiations_total",
    "ferrogate_plugin_metrics_refused_total",
    "ferrogate_worker_upgrade_relayed_out_total",
    "ferrogate_worker_upgrade_relayed_in_total",
    "ferrogate_worker_upgrade_relay_dropped_total",
    "ferrogate_worker_handoff_strays_total",
];

/// A series' identity: name and labels, `le` by its number (the old
/// writer spelled 1048576 what `prometheus-client` spells 1.048576e+06,
/// as Go's client does; Prometheus reads both as the same bound).
fn key(s: &Sample) -> (String, Vec<(String, String)>) {
    let labels = s
        .labels
        .iter()
        .map(|(k, v)| match k.as_str() {
            "le" => (
                k.clone(),
                format!("{:?}", v.parse::<f64>().expect("le is a float")),
            ),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    (s.name.clone(), labels)
}

#[test]
fn every_series_of_the_old_writer_is_exported_with_its_name_labels_type_help_and_value() {
    let old = parse(GOLDEN).expect("the golden file parses");
    let new_text = super::render(&stats(), &info());
    let new = parse(&new_text).unwrap_or_else(|e| panic!("{e}\n{new_text}"));
    assert!(old.samples.len() > 150, "{} samples", old.samples.len());
    let by_key: HashMap<_, _> = new.samples.iter().map(|s| (key(s), s)).collect();
    assert_eq!(
        by_key.len(),
        new.samples.len(),
        "a series is exported twice"
    );
    for s in &old.samples {
        let n = by_key
            .get(&key(s))
            .unwrap_or_else(|| panic!("{} {:?} is gone", s.name, s.labels));
        assert_eq!(n.value, s.value, "{} {:?}", s.name, s.labels);
    }
    for (fam, typ) in &old.types {
        assert_eq!(new.types.get(fam), Some(typ), "type of {fam}");
        assert_eq!(new.help.get(fam), old.help.get(fam), "help of {fam}");
    }
    // New families: the control plane's, and stack counters added to
    // `StackStats` since (named by the same rule).
    let stack: Vec<String> = stats().workers[0]
        .stack
        .fields()
        .iter()
        .flat_map(|(k, _)| {
            [
                format!("ferrogate_stack_{k}"),
                format!("ferrogate_stack_{k}_total"),
            ]
        })
        .collect();
    for fam in new.types.keys() {
        assert!(
            old.types.contains_key(fam) || ADDED.contains(&fam.as_str()) || stack.contains(fam),
            "{fam} is new: add it to ADDED (and to the dashboard if it matters)"
        );
    }
    // What the text changed: only `le` spellings from 1 s up, and floats
    // written as floats (`_sum` 123.0, uptime 1.5 for 1.500).
    let le_old: Vec<&str> = old.samples.iter().filter_map(|s| s.label("le")).collect();
    // (Of the old families: the added ones have buckets of their own.)
    let le_new: Vec<&str> = new
        .samples
        .iter()
        .filter(|s| old.samples.iter().any(|o| o.name == s.name))
        .filter_map(|s| s.label("le"))
        .collect();
    assert_eq!(le_old.len(), le_new.len());
    for (o, n) in le_old.iter().zip(&le_new) {
        if o.parse::<f64>().unwrap() < 1e6 || *o == "+Inf" {
            assert_eq!(o, n);
        }
    }
    assert!(le_new.contains(&"1.048576e+06"), "{le_new:?}");
}
