use super::parse::{Exposition, parse};
use super::*;

fn value(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
        .value
}

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
        plugins: Vec::new(),
    };
    st.cache.objects = 3;
    if let Some(d) = st.cache_disk.as_mut() {
        d.files = 4;
        d.loaded = 6;
        d.pending_applied = 8;
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
            ..Default::default()
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
        "ferrogate_cache_disk_pending_applied_total 8",
        "ferrogate_cache_store_bytes 4096",
        "ferrogate_cache_store_evicted_total 2",
        "ferrogate_cache_store_purged_total 1",
        "ferrogate_cache_store_inserted_total 0",
        "# TYPE ferrogate_cache_store_objects gauge",
        "# TYPE ferrogate_stack_requests_total counter",
    ] {
        assert!(s.contains(line), "{line} missing in:\n{s}");
    }
}

/// The whole exposition reads back: valid names, one TYPE per family
/// with its samples together, label values that need escaping come back
/// as they went in, histograms cumulative with +Inf = count.
#[test]
fn the_exposition_round_trips_through_a_strict_reader() {
    let st = super::golden::stats();
    let text = render(&st, &super::golden::info());
    let e = parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    assert_eq!(
        value(
            &e,
            "ferrogate_route_requests_total",
            &[("route", "api\nv1")]
        ),
        101.0
    );
    assert_eq!(
        value(
            &e,
            "ferrogate_pool_requests_total",
            &[("pool", "origin\\a")]
        ),
        31.0
    );
    assert_eq!(
        value(
            &e,
            "ferrogate_xdp_rule_packets_total",
            &[("rule", "deny \"bad\"")]
        ),
        61.0
    );
    let r = &st.routes.routes[0].1.latency;
    let route = [("route", "api\nv1")];
    assert_eq!(
        value(&e, "ferrogate_route_latency_microseconds_count", &route),
        r.count() as f64
    );
    assert_eq!(
        value(&e, "ferrogate_route_latency_microseconds_sum", &route),
        r.sum_us as f64
    );
    // 10 and 70 µs fall below 128 µs; 1.5 s below 2.097152 s; 200 s past the last bound.
    let le = |b: &str| {
        value(
            &e,
            "ferrogate_route_latency_microseconds_bucket",
            &[("route", "api\nv1"), ("le", b)],
        )
    };
    assert_eq!(le("64"), 1.0);
    assert_eq!(le("128"), 2.0);
    assert_eq!(le("1.048576e+06"), 2.0);
    assert_eq!(le("2.097152e+06"), 3.0);
    assert_eq!(le("6.7108864e+07"), 3.0);
    assert_eq!(le("+Inf"), 4.0);
    assert_eq!(
        e.samples
            .iter()
            .filter(|s| s.name == "ferrogate_route_latency_microseconds_bucket")
            .count(),
        ferrogate_proxy::lb::LATENCY_BUCKETS
    );
    assert_eq!(
        value(&e, "ferrogate_worker_busy_ratio", &[("worker", "1")]),
        0.25
    );
    assert_eq!(value(&e, "ferrogate_uptime_seconds", &[]), 1.5);
    assert_eq!(e.types["ferrogate_snapshot_info"], "gauge");
    assert_eq!(
        value(&e, "ferrogate_snapshot_info", &[("version", "7-1a2b")]),
        1.0
    );
    // No OpenMetrics in the 0.0.4 text: no `# EOF`, no `_created` samples.
    assert!(!text.contains("# EOF"), "{text}");
    assert!(
        !e.samples.iter().any(|s| s.name.ends_with("_created")),
        "{text}"
    );
}

#[test]
fn the_content_type_is_the_encoders_text_format() {
    let ct = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
    assert!(ct.starts_with(CONTENT_TYPE), "{ct} vs {CONTENT_TYPE}");
    assert!(CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));
}

#[test]
fn an_empty_engine_still_renders_valid_text() {
    let st = EngineStats {
        backend: ferrogate_engine::BackendKind::Memory,
        workers: vec![],
        xdp: None,
        rules: vec![],
        filter_generation: None,
        snapshot_version: 0,
        upstreams: Default::default(),
        routes: Default::default(),
        port: vec![],
        escalation: Default::default(),
        cache: Default::default(),
        cache_disk: None,
        plugins: Vec::new(),
    };
    let e = parse(&render(&st, &Info::default())).unwrap();
    assert!(!e.types.contains_key("ferrogate_worker_rx_frames_total"));
    assert!(!e.types.contains_key("ferrogate_filter_generation"));
    assert_eq!(value(&e, "ferrogate_snapshot_counter", &[]), 0.0);
}

#[test]
fn the_engine_exports_its_configuration_state() {
    let mut applies = ApplyCounts::default();
    applies.count(false, true);
    applies.count(false, true);
    applies.count(false, false);
    applies.count(true, true);
    let process = [("snapshot_persist_errors", 2), ("access_log_written", 9)];
    let mut info = Info {
        version: "3-ab",
        counter: 3,
        uptime_s: 2.0,
        config: ConfigState {
            applies,
            last_success_unix_s: 1_700_000_000.5,
            last_failure_unix_s: 1_700_000_100.0,
            last_duration_s: 0.25,
            last_failed: true,
            started_from_last_known_good: true,
            kept_versions: 2,
            draining: true,
        },
        process: &process,
    };
    let st = super::golden::stats();
    let e = parse(&render(&st, &info)).unwrap();
    let applied = |kind: &str, result: &str| {
        value(
            &e,
            "ferrogate_config_applies_total",
            &[("kind", kind), ("result", result)],
        )
    };
    assert_eq!(applied("apply", "ok"), 2.0);
    assert_eq!(applied("apply", "failed"), 1.0);
    assert_eq!(applied("rollback", "ok"), 1.0);
    assert_eq!(applied("rollback", "failed"), 0.0);
    assert_eq!(e.types["ferrogate_config_applies_total"], "counter");
    // The failure came after the last success.
    assert_eq!(
        value(&e, "ferrogate_config_last_apply_successful", &[]),
        0.0
    );
    assert_eq!(
        value(
            &e,
            "ferrogate_config_last_apply_success_timestamp_seconds",
            &[]
        ),
        1_700_000_000.5
    );
    assert_eq!(
        value(
            &e,
            "ferrogate_config_last_apply_failure_timestamp_seconds",
            &[]
        ),
        1_700_000_100.0
    );
    assert_eq!(
        value(&e, "ferrogate_config_last_apply_duration_seconds", &[]),
        0.25
    );
    assert_eq!(
        value(&e, "ferrogate_config_started_from_last_known_good", &[]),
        1.0
    );
    assert_eq!(value(&e, "ferrogate_config_kept_versions", &[]), 2.0);
    assert_eq!(value(&e, "ferrogate_draining", &[]), 1.0);
    assert_eq!(
        value(&e, "ferrogate_snapshot_persist_errors_total", &[]),
        2.0
    );
    assert_eq!(value(&e, "ferrogate_access_log_written_total", &[]), 9.0);
    assert_eq!(e.types["ferrogate_access_log_written_total"], "counter");

    info.config.last_failed = false;
    let e = parse(&render(&st, &info)).unwrap();
    assert_eq!(
        value(&e, "ferrogate_config_last_apply_successful", &[]),
        1.0
    );
}

#[test]
fn the_daemon_exports_its_state_as_its_own_families() {
    let c = ControlInfo {
        engine_connected: true,
        in_sync: false,
        uptime_s: 12.5,
        file_changes_applied: 3,
        file_changes_rejected: 1,
        pushes: 4,
        admin_auth_failures: 2,
        last_change_failed: true,
        fleet: None,
    };
    let text = render_control(&c);
    assert!(
        !text.contains("fleet"),
        "file mode has no fleet families: {text}"
    );
    let e = parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    assert_eq!(value(&e, "ferrogate_control_engine_connected", &[]), 1.0);
    assert_eq!(value(&e, "ferrogate_control_in_sync", &[]), 0.0);
    assert_eq!(value(&e, "ferrogate_control_last_change_failed", &[]), 1.0);
    assert_eq!(value(&e, "ferrogate_control_uptime_seconds", &[]), 12.5);
    assert_eq!(
        value(&e, "ferrogate_control_file_changes_applied_total", &[]),
        3.0
    );
    assert_eq!(
        value(&e, "ferrogate_control_file_changes_rejected_total", &[]),
        1.0
    );
    assert_eq!(value(&e, "ferrogate_control_pushes_total", &[]), 4.0);
    assert_eq!(
        value(&e, "ferrogate_control_admin_auth_failures_total", &[]),
        2.0
    );
    // Appended to the engine's exposition, the whole still reads (no
    // family twice).
    let engine = render(&super::golden::stats(), &super::golden::info());
    parse(&(engine + &text)).unwrap();

    let fleet = ControlInfo {
        fleet: Some(super::FleetInfo {
            etcd_connected: false,
            in_sync: true,
            revision: 42,
            bundles_applied: 5,
            bundles_refused: 2,
            compactions: 1,
        }),
        ..c
    };
    let text = render_control(&fleet);
    let e = parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    assert_eq!(
        value(&e, "ferrogate_control_fleet_etcd_connected", &[]),
        0.0
    );
    assert_eq!(value(&e, "ferrogate_control_fleet_in_sync", &[]), 1.0);
    assert_eq!(value(&e, "ferrogate_control_fleet_revision", &[]), 42.0);
    assert_eq!(
        value(
            &e,
            "ferrogate_control_fleet_bundles_total",
            &[("result", "refused")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &e,
            "ferrogate_control_fleet_bundles_total",
            &[("result", "applied")]
        ),
        5.0
    );
    assert_eq!(
        value(&e, "ferrogate_control_fleet_watch_compactions_total", &[]),
        1.0
    );
}

#[test]
fn one_type_line_per_family_whatever_the_sample_order() {
    let mut f = Families::default();
    f.counter("a_total", "h", &[("pool", "p1".into())], 1);
    f.gauge("b", "h", &[], 3);
    f.counter("a_total", "h", &[("pool", "p2".into())], 2);
    let s = encode(f);
    assert_eq!(s.matches("# TYPE a_total counter").count(), 1, "{s}");
    assert_eq!(
        s,
        "# HELP a_total h\n# TYPE a_total counter\na_total{pool=\"p1\"} 1\na_total{pool=\"p2\"} 2\n\
         # HELP b h\n# TYPE b gauge\nb 3\n"
    );
}

/// A plugin's metrics come out per kind under its name and the plugin's
/// (a negative gauge stays negative, a histogram is its sum and count),
/// beside the plugin's failure counters.
#[test]
fn plugin_metrics_are_exported_by_plugin_and_name() {
    let st = super::golden::stats();
    let text = render(&st, &super::golden::info());
    let e = parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    let l = |n: &'static str| [("plugin", "wasm\"x"), ("name", n)];
    assert_eq!(
        value(&e, "ferrogate_plugin_counter_total", &l("requests")),
        131.0
    );
    assert_eq!(value(&e, "ferrogate_plugin_gauge", &l("in_flight")), -2.0);
    assert_eq!(
        value(&e, "ferrogate_plugin_histogram_sum", &l("size")),
        1500.0
    );
    assert_eq!(
        value(&e, "ferrogate_plugin_histogram_count", &l("size")),
        3.0
    );
    let inf = [("plugin", "wasm\"x"), ("name", "size"), ("le", "+Inf")];
    assert_eq!(value(&e, "ferrogate_plugin_histogram_bucket", &inf), 3.0);
    assert_eq!(e.types["ferrogate_plugin_counter_total"], "counter");
    assert_eq!(e.types["ferrogate_plugin_gauge"], "gauge");
    assert_eq!(e.types["ferrogate_plugin_histogram"], "histogram");
    let p = [("plugin", "wasm\"x")];
    let failures = |k: &'static str| {
        value(
            &e,
            "ferrogate_plugin_failures_total",
            &[("plugin", "wasm\"x"), ("kind", k)],
        )
    };
    assert_eq!(failures("trap"), 132.0);
    assert_eq!(failures("timeout"), 133.0);
    assert_eq!(failures("out_of_memory"), 134.0);
    assert_eq!(failures("abi_violation"), 135.0);
    assert_eq!(
        value(&e, "ferrogate_plugin_reinstantiations_total", &p),
        136.0
    );
    assert_eq!(
        value(&e, "ferrogate_plugin_metrics_refused_total", &p),
        137.0
    );
}
