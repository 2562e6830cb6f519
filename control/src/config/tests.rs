use super::*;

const GOOD: &str = r#"
vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = 2

[[upstreams]]
name = "origin"
endpoints = ["10.77.0.3:8080"]

[[listeners]]
port = 80
[[listeners.routes]]
path_prefix = "/direct"
respond = { status = 200, body = "hi" }
[[listeners.routes]]
upstream = "origin"
"#;

fn errors(text: &str) -> Vec<String> {
    match compile(Path::new("t.toml"), text) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn a_file_that_still_sets_the_dead_listen_backlog_loads() {
    let old = GOOD.replace("queues = 2", "queues = 2\nlisten_backlog = 128");
    assert_eq!(errors(&old), Vec::<String>::new());
    let typo = GOOD.replace("queues = 2", "queues = 2\nlisten_backlogg = 128");
    assert!(errors(&typo)[0].contains("unknown field"));
}

#[test]
fn pool_host_for_requests_without_one_is_checked() {
    let with = |host: &str| {
        GOOD.replace(
            "endpoints = [\"10.77.0.3:8080\"]",
            &format!("endpoints = [\"10.77.0.3:8080\"]\nhost = {host:?}"),
        )
    };
    let c = compile(Path::new("t.toml"), &with("api.example:8080")).unwrap();
    assert_eq!(
        c.engine.routes.upstreams[0].host.as_deref(),
        Some("api.example:8080")
    );
    for bad in ["", "a b", "evil.com/x", "user@evil"] {
        let e = errors(&with(bad));
        assert!(
            e.iter()
                .any(|e| e.starts_with("t.toml:11:") && e.contains("upstreams[0].host")),
            "{bad:?}: {e:?}"
        );
    }
    let c = compile(Path::new("t.toml"), GOOD).unwrap();
    assert_eq!(c.engine.routes.upstreams[0].host, None);
}

#[test]
fn pool_keepalive_and_max_requests_reach_the_policy_and_are_bounded() {
    let with = |extra: &str| {
        GOOD.replace(
            "endpoints = [\"10.77.0.3:8080\"]",
            &format!("endpoints = [\"10.77.0.3:8080\"]\n{extra}"),
        )
    };
    let c = compile(
        Path::new("t.toml"),
        &with("keepalive = 4\nmax_requests = 9"),
    )
    .unwrap();
    let p = &c.engine.routes.upstreams[0].policy;
    assert_eq!((p.keepalive, p.max_requests), (4, 9));
    let c = compile(Path::new("t.toml"), GOOD).unwrap();
    let p = &c.engine.routes.upstreams[0].policy;
    assert_eq!((p.keepalive, p.max_requests), (64, 1000));
    let e = errors(&with("keepalive = 10001"));
    assert!(
        e.iter()
            .any(|e| e.starts_with("t.toml:11:") && e.contains("upstreams[0].keepalive")),
        "{e:?}"
    );
}

#[test]
fn shipped_configs_compile() {
    for name in ["lab.toml", "filter.example.toml", "edge.example.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs")
            .join(name);
        let c = load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!c.engine.vips().is_empty());
    }
    let c = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/filter.example.toml"))
        .unwrap();
    let f = &c.engine.filter;
    assert_eq!(f.rate.len(), 4);
    assert_eq!(f.l4[0].allow, vec![(6, 80), (6, 443), (1, 0)]);
    // The generated upstream rule lets origin replies through.
    assert!(
        f.cidr
            .iter()
            .any(|r| r.id == UPSTREAM_RULE && r.action == CidrAction::Upstream)
    );
}

#[test]
fn filter_errors_name_their_field() {
    let bad = format!(
        "{GOOD}\n[filter]\n[[filter.rate]]\nid = \"r\"\nvip = \"10.9.9.9\"\npps = 1\n[[filter.l4]]\nid = \"l\"\nvip = \"10.77.0.10\"\nallow = [\"tcp/0\", \"sctp/9\"]\n[[filter.cidr]]\nid = \"r\"\naction = \"deny\"\ncidrs = [\"10.0.0.0/33\"]\n"
    );
    let e = errors(&bad);
    assert!(
        e.iter()
            .any(|l| l.contains("filter.rate[0].vip")
                && l.contains("not one of the configured vips")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|l| l.contains("filter.l4[0].allow[0]")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|l| l.contains("filter.l4[0].allow[1]")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|l| l.contains("filter.cidr[0].cidrs[0]")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.contains("duplicate or reserved rule id \"r\"")),
        "{e:?}"
    );
}

#[test]
fn good_config_compiles() {
    let c = compile(Path::new("t.toml"), GOOD).unwrap();
    assert_eq!(c.engine.queues, 2);
    assert_eq!(c.engine.routes.listeners[0].routes().len(), 2);
}

#[test]
fn unknown_upstream_is_named_with_line() {
    let bad = GOOD.replace("upstream = \"origin\"", "upstream = \"nope\"");
    let e = errors(&bad);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(
            "t.toml:18:12: listeners[0].routes[1].upstream: no upstream named \"nope\""
        ),
        "{e:?}"
    );
}

#[test]
fn unknown_key_and_bad_type_are_located() {
    let e = errors(&GOOD.replace("queues = 2", "queuez = 2"));
    assert!(e[0].starts_with("t.toml:6:1: queuez:"), "{e:?}");
    assert!(e[0].contains("unknown field"), "{e:?}");
    let e = errors(&GOOD.replace("queues = 2", "queues = \"two\""));
    assert!(e[0].starts_with("t.toml:6:10: queues:"), "{e:?}");
}

#[test]
fn several_semantic_errors_are_all_reported() {
    let bad = GOOD
        .replace("10.77.0.10/24", "10.77.0.300/24")
        .replace("10.77.0.3:8080", "nowhere")
        .replace("queues = 2", "queues = 0");
    let e = errors(&bad);
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e.iter().any(|l| l.contains("vips[0]")));
    assert!(e.iter().any(|l| l.contains("upstreams[0].endpoints[0]")));
    assert!(e.iter().any(|l| l.contains("engine.queues")));
}

fn compiled(text: &str) -> Compiled {
    compile(Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn edge_example_compiles_every_new_key() {
    let c = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/edge.example.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let t = &c.engine.routes;
    let rules: Vec<_> = t.rules().map(|r| r.name.as_str()).collect();
    assert_eq!(
        rules,
        [
            "monitoring",
            "admin",
            "scanners",
            "old-docs",
            "legacy-api",
            "api-delete-internal",
            "api-no-delete",
            "partner-admin",
            "partner-no-admin",
            "partner-writes",
            "partner-read-only",
            "partner-no-forged-access"
        ]
    );
    let ids: Vec<_> = t.rules().map(|r| r.id).collect();
    assert_eq!(
        ids,
        (0..ids.len()).collect::<Vec<_>>(),
        "ids in rules() order"
    );
    let partners = t.listener(8080).unwrap();
    let health = partners
        .routes()
        .iter()
        .find(|r| r.name == "partner-health");
    assert!(matches!(health.unwrap().jwt, RouteJwt::Exempt));
    assert!(partners.jwt_by_route());
    let api_rules = t.routes().find(|r| r.name == "api").unwrap().rules.rules();
    assert_eq!(api_rules.len(), 2);
    // The partner API's last rule strips a client-sent X-Partner-Access
    // (only partner-writes sets it).
    let partner_api = t.routes().find(|r| r.name == "partner-api").unwrap();
    let last = partner_api.rules.rules().last().unwrap();
    assert!(last.matches.path.is_none() && last.matches.methods.is_empty());
    let strips = last.rewrite.as_ref().unwrap();
    assert!(strips.strips_request("x-partner-access"));
    let legacy = t.rules().nth(4).and_then(|r| r.rewrite.as_ref()).unwrap();
    assert!(legacy.pool.is_some() && legacy.path_prefix.is_some());
    assert_eq!(
        t.limits.len(),
        3,
        "per-client, per-api-key, per-partner (L7)"
    );
    assert!(t.listener(8080).unwrap().jwt().is_some());
    let api_route = t.routes().find(|r| r.name == "api").unwrap();
    let canary = api_route.canary.as_ref().expect("a canary");
    assert_eq!(
        (canary.per_10k, canary.pool.name.as_str()),
        (500, "sessions")
    );
    assert!(
        c.engine
            .filter
            .rate
            .iter()
            .any(|r| r.id == "syn-per-source" && r.syn_only)
    );
    let api = t.upstreams.iter().find(|u| u.name == "api").unwrap();
    assert_eq!(api.policy.balancer, Balancer::Weighted);
    assert!(api.weights.iter().any(|&w| w > 1));
    assert!(api.policy.health.is_some() && api.policy.breaker.is_some());
    let sessions = t.upstreams.iter().find(|u| u.name == "sessions").unwrap();
    assert!(sessions.maglev.is_some());
    assert!(t.routes().any(|r| matches!(r.path, PathMatch::Regex(_))));
    assert!(t.routes().any(|r| !r.headers.is_empty()));
    assert!(t.routes().any(|r| !r.query.is_empty()));
    assert!(t.routes().any(|r| !r.methods.is_empty()));
    assert!(t.listeners.iter().any(|l| l.tls.is_some()));
    assert!(t.routes().any(|r| r.client_cert_cn.is_some()));
    let tcp = t
        .listener(6379)
        .and_then(|l| l.l4.as_ref())
        .expect("tcp listener");
    assert_eq!(tcp.upstream.name, "sessions");
    assert_eq!(tcp.max_connections, Some(5000));
    for (i, u) in t.upstreams.iter().enumerate() {
        assert_eq!(u.index, i);
    }
    let assets = t.routes().find(|r| r.name == "assets").unwrap();
    let cache = assets.cache.as_ref().expect("a cached route");
    assert_eq!(
        (cache.policy.min_ttl, cache.policy.max_ttl),
        (60, Some(86400))
    );
    assert!(cache.policy.ignore_request_no_cache);
    assert_eq!(cache.key().ignore_params.len(), 2);
    assert_eq!(c.engine.cache.store.max_bytes, 256 << 20);
    assert_eq!(c.engine.cache.status_header.as_deref(), Some("x-cache"));
}

#[test]
fn tcp_buffer_growth_compiles_and_bad_bounds_name_their_line() {
    let c = compiled(GOOD);
    assert_eq!(c.engine.stack.net.tcp_tx_buffer_max, 4 * 1024 * 1024);
    assert_eq!(c.engine.stack.net.tcp_buffer_budget, 128 * 1024 * 1024);
    let set = GOOD.replace(
        "queues = 2",
        "queues = 2\ntcp_buffer = 131072\ntcp_buffer_max = 1048576\ntcp_buffer_budget = 33554432",
    );
    let c = compiled(&set);
    assert_eq!(c.engine.stack.net.tcp_tx_buffer, 131072);
    assert_eq!(c.engine.stack.net.tcp_tx_buffer_max, 1048576);
    assert_eq!(c.engine.stack.net.tcp_rx_buffer_max, 1048576);
    assert_eq!(c.engine.stack.net.tcp_buffer_budget, 33554432);
    // A large starting buffer without a maximum keeps loading (the
    // default maximum follows it).
    let big = GOOD.replace("queues = 2", "queues = 2\ntcp_buffer = 8388608");
    assert_eq!(compiled(&big).engine.stack.net.tcp_tx_buffer_max, 8388608);
    let below = GOOD.replace("queues = 2", "queues = 2\ntcp_buffer_max = 4096");
    let e = errors(&below);
    assert!(
        e.iter()
            .any(|l| l.starts_with("t.toml:7:18:") && l.contains("engine.tcp_buffer_max")),
        "{e:?}"
    );
}

#[test]
fn tcp_timestamps_and_the_upstream_port_range_compile_and_a_bad_range_names_its_line() {
    let c = compiled(GOOD);
    assert!(c.engine.stack.net.tcp_timestamps);
    assert_eq!(c.engine.upstream_port_range, 32_768..61_000);
    let set = GOOD.replace(
        "queues = 2",
        "queues = 2\ntcp_timestamps = false\nupstream_port_range = [40000, 40999]",
    );
    let c = compiled(&set);
    assert!(!c.engine.stack.net.tcp_timestamps);
    assert_eq!(c.engine.upstream_port_range, 40_000..41_000);
    // A listener may sit where the default range was, once the range moved.
    let moved = set.replace("port = 80", "port = 50000");
    assert!(
        compiled(&moved)
            .engine
            .routes
            .listeners
            .iter()
            .any(|l| l.port == 50000)
    );
    let inside = set.replace("port = 80", "port = 40500");
    let e = errors(&inside);
    assert!(
        e.iter()
            .any(|l| l.contains("listeners[0].port") && l.contains("40000..=40999")),
        "{e:?}"
    );
    for bad in [
        "[40000, 39999]",
        "[80, 40000]",
        "[40000, 40030]",
        "[65000, 65535]",
    ] {
        let text = GOOD.replace(
            "queues = 2",
            &format!("queues = 2\nupstream_port_range = {bad}"),
        );
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|l| l.starts_with("t.toml:7:") && l.contains("engine.upstream_port_range")),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn the_global_upstream_read_timeout_compiles_from_toml() {
    let text = format!("{GOOD}\n[timeouts]\nupstream_read_ms = 120000\n");
    let c = compiled(&text);
    let t = &c.engine.stack.timeouts;
    assert_eq!(t.upstream_read, Some(Duration::from_secs(120)));
    assert_eq!(t.upstream_response, Duration::from_secs(30));
}

#[test]
fn upstream_policy_compiles_from_toml() {
    let text = GOOD.replace(
        "endpoints = [\"10.77.0.3:8080\"]",
        r#"endpoints = ["10.77.0.3:8080", { address = "10.77.0.4:8080", weight = 3 }]
balancer = "hash"
hash_on = "cookie:sid"
fail_open = false
connect_ms = 250
read_ms = 300000
[upstreams.health]
type = "http"
path = "/healthz"
interval_ms = 1000
timeout_ms = 300
rise = 2
fall = 4
expect_status = "200-299"
[upstreams.passive]
consecutive_failures = 3
eject_ms = 15000
[upstreams.breaker]
failure_percent = 40
min_requests = 50
consecutive_failures = 10
window_ms = 5000
cooldown_ms = 2000
half_open_probes = 2
[upstreams.retry]
attempts = 3
budget_percent = 20
min_per_sec = 5"#,
    );
    let c = compiled(&text);
    let u = &c.engine.routes.upstreams[0];
    assert_eq!(u.weights, vec![1, 3]);
    let p = &u.policy;
    assert_eq!(p.balancer, Balancer::Hash(HashOn::Cookie("sid".into())));
    assert!(!p.fail_open);
    assert_eq!(p.timeouts.connect, Some(Duration::from_millis(250)));
    assert_eq!(p.timeouts.response, None);
    assert_eq!(p.timeouts.read, Some(Duration::from_secs(300)));
    assert_eq!(c.engine.stack.timeouts.upstream_read, None);
    let h = p.health.as_ref().unwrap();
    assert_eq!(
        h.kind,
        CheckKind::Http {
            path: "/healthz".into(),
            host: String::new()
        }
    );
    assert_eq!((h.rise, h.fall, h.expect_status), (2, 4, (200, 299)));
    assert_eq!(p.passive.unwrap().eject, Duration::from_secs(15));
    let b = p.breaker.unwrap();
    assert_eq!(
        (b.failure_percent, b.min_requests, b.half_open_probes),
        (40, 50, 2)
    );
    assert_eq!(
        (
            p.retry.attempts,
            p.retry.budget_percent,
            p.retry.min_per_sec
        ),
        (3, 20, 5)
    );
    assert!(u.maglev.is_some());
}

#[test]
fn route_matchers_compile_and_route_requests() {
    let text = GOOD.replace(
        "[[listeners.routes]]\nupstream = \"origin\"",
        r#"[[listeners.routes]]
name = "canary"
host = "*.example.com"
path_regex = "/v[0-9]+/users/[^/]+"
methods = ["GET", "HEAD"]
headers = { "X-Env" = "canary", "X-Trace" = true }
query = { v = "2" }
upstream = "origin"
[[listeners.routes]]
name = "exact"
path_exact = "/login"
upstream = "origin"
[[listeners.routes]]
upstream = "origin""#,
    );
    let c = compiled(&text);
    let l = &c.engine.routes.listeners[0];
    let h = [
        ferrogate_proxy::http::Header {
            name: "x-env",
            value: b"canary",
        },
        ferrogate_proxy::http::Header {
            name: "x-trace",
            value: b"1",
        },
    ];
    let req = |m, host, target, hs: &[ferrogate_proxy::http::Header<'_>]| {
        let hs = ferrogate_proxy::http::Headers::from_list(hs);
        l.route_request(&ferrogate_proxy::RequestView::new(m, host, target, hs))
            .map(|r| r.name.clone())
    };
    assert_eq!(
        req("GET", Some("a.example.com"), "/v2/users/bob?v=2", &h[..]).as_deref(),
        Some("canary")
    );
    assert_eq!(
        req("POST", Some("a.example.com"), "/v2/users/bob?v=2", &h[..]).as_deref(),
        Some("80:3")
    );
    assert_eq!(
        req("GET", Some("a.example.com"), "/v2/users/bob?v=2", &h[..1]).as_deref(),
        Some("80:3")
    );
    assert_eq!(req("GET", None, "/login", &[]).as_deref(), Some("exact"));
    assert_eq!(req("GET", None, "/direct", &[]).as_deref(), Some("80:0"));
}

#[test]
fn upstream_policy_errors_name_file_line_and_field() {
    let text = GOOD.replace(
            "endpoints = [\"10.77.0.3:8080\"]",
            r#"endpoints = ["10.77.0.3:8080", { address = "10.77.0.4:8080", weight = 0 }, "10.77.0.3:8080"]
balancer = "random"
hash_on = "ip"
[upstreams.health]
type = "udp"
interval_ms = 0
rise = 0
expect_status = "2xx"
[upstreams.passive]
consecutive_failures = 0
[upstreams.breaker]
failure_percent = 101
[upstreams.retry]
attempts = 0"#,
        );
    let e = errors(&text);
    let has = |needle: &str| {
        assert!(e.iter().any(|l| l.contains(needle)), "{needle}: {e:#?}");
    };
    has("t.toml:10:32: upstreams[0].endpoints[1].weight: must be 1..=10000");
    has("upstreams[0].endpoints[2]: duplicate endpoint 10.77.0.3:8080");
    has("t.toml:11:12: upstreams[0].balancer: unknown balancer \"random\"");
    has("t.toml:12:11: upstreams[0].hash_on: \"ip\" is not `header:NAME`");
    has("upstreams[0].health.type: unknown check type \"udp\"");
    has("upstreams[0].health.interval_ms: must be 1..=86400000");
    has("upstreams[0].health.rise: must be 1..=100");
    has("upstreams[0].health.expect_status:");
    has("upstreams[0].passive.consecutive_failures: must be 1..=1000");
    has("upstreams[0].breaker.failure_percent: must be 1..=100");
    has("upstreams[0].retry.attempts: must be 1..=10");
    assert!(
        !e.iter().any(|l| l.contains("only used with")),
        "no follow-on error for an unknown balancer: {e:#?}"
    );
}

#[test]
fn route_matcher_errors_name_file_line_and_field() {
    let text = GOOD.replace(
        "[[listeners.routes]]\nupstream = \"origin\"",
        r#"[[listeners.routes]]
name = "r"
path_regex = "/users/(["
methods = ["get"]
headers = { "X Bad" = "x", "X-Num" = 3 }
upstream = "origin"
[[listeners.routes]]
name = "r"
path_exact = "/a"
path_prefix = "/b"
upstream = "origin""#,
    );
    let e = errors(&text);
    let has = |needle: &str| {
        assert!(e.iter().any(|l| l.contains(needle)), "{needle}: {e:#?}");
    };
    has("t.toml:19:14: listeners[0].routes[1].path_regex: invalid regex: ");
    has("t.toml:20:12: listeners[0].routes[1].methods[0]: \"get\" is not an upper-case method");
    has("listeners[0].routes[1].headers.X Bad: \"X Bad\" is not a header name");
    has("listeners[0].routes[1].headers.X-Num: must be a string (exact value) or true");
    has("listeners[0].routes[2].name: duplicate route name \"r\"");
    has("listeners[0].routes[2]: at most one of `path_prefix`, `path_exact`, `path_regex`");
}

#[test]
fn http2_listener_and_limits_compile_and_bad_values_name_their_line() {
    let on = GOOD.replace("port = 80\n", "port = 80\nhttp2 = true\n")
        + "\n[http2]\nmax_concurrent_streams = 50\nstream_window = 131072\nmax_resets_per_second = 20\nsettings_timeout_ms = 3000\n";
    let c = compile(Path::new("t.toml"), &on).unwrap();
    assert!(c.engine.routes.listeners[0].http2);
    let h2 = &c.engine.stack.h2;
    assert_eq!(h2.max_concurrent_streams, 50);
    assert_eq!(h2.stream_window, 131_072);
    assert_eq!(h2.max_resets_per_window, 20);
    assert_eq!(h2.flood_window, Duration::from_secs(1));
    assert_eq!(h2.settings_timeout, Duration::from_millis(3000));
    // Off unless asked for; the defaults otherwise.
    let c = compile(Path::new("t.toml"), GOOD).unwrap();
    assert!(!c.engine.routes.listeners[0].http2);
    assert_eq!(
        c.engine.stack.h2,
        ferrogate_proxy::h2::ServerConfig::default()
    );

    let bad = GOOD.to_string()
        + "\n[http2]\nmax_frame_size = 1000\nmax_concurrent_streams = 0\nsettings_timeout_ms = 5\n";
    let e = errors(&bad);
    let has = |needle: &str| {
        assert!(e.iter().any(|l| l.contains(needle)), "{needle}: {e:#?}");
    };
    has("t.toml:21:18: http2.max_frame_size: must be 16384..=16777215");
    has("t.toml:22:26: http2.max_concurrent_streams: must be 1..=10000");
    has("t.toml:23:23: http2.settings_timeout_ms: must be 100..=600000");
    assert!(
        errors(&(GOOD.to_string() + "\n[http2]\nmax_streams = 1\n"))[0].contains("unknown field")
    );
}

const TCP: &str = r#"
vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"

[[upstreams]]
name = "origin"
endpoints = ["10.77.0.3:8080"]

[[upstreams]]
name = "db"
endpoints = ["10.77.0.3:6379", "10.77.0.4:6379"]
balancer = "hash"
hash_on = "source"

[[listeners]]
port = 80
[[listeners.routes]]
upstream = "origin"

[[listeners]]
port = 6379
protocol = "tcp"
upstream = "db"
"#;

#[test]
fn a_tcp_listener_compiles_to_its_pool_with_defaults() {
    let c = compile(Path::new("t.toml"), TCP).unwrap();
    let routes = &c.engine.routes;
    assert!(routes.listener(80).unwrap().l4.is_none());
    let l = routes.listener(6379).unwrap();
    let l4 = l.l4.as_ref().expect("tcp listener");
    assert_eq!(l4.upstream.name, "db");
    assert_eq!(l4.idle_timeout, ferrogate_proxy::route::L4_IDLE_TIMEOUT);
    assert_eq!(l4.max_connections, None);
    assert!(l.routes().is_empty());
    let set = TCP.replace(
        "upstream = \"db\"\n",
        "upstream = \"db\"\nidle_timeout_ms = 2500\nmax_connections = 10\n",
    );
    let c = compile(Path::new("t.toml"), &set).unwrap();
    let l4 = c.engine.routes.listener(6379).unwrap().l4.clone().unwrap();
    assert_eq!(l4.idle_timeout, Duration::from_millis(2500));
    assert_eq!(l4.max_connections, Some(10));
}

#[test]
fn tcp_listener_keys_are_checked_with_their_line() {
    let cases: [(&str, &str, &str); 8] = [
        (
            "protocol = \"tcp\"",
            "protocol = \"udpx\"",
            "t.toml:24:12: listeners[1].protocol",
        ),
        (
            "upstream = \"db\"",
            "upstream = \"nope\"",
            "t.toml:25:12: listeners[1].upstream: no upstream named \"nope\"",
        ),
        (
            "upstream = \"db\"\n",
            "",
            "t.toml:24:12: listeners[1].upstream: a TCP listener needs",
        ),
        (
            "upstream = \"db\"\n",
            "upstream = \"db\"\nidle_timeout_ms = 0\n",
            "t.toml:26:19: listeners[1].idle_timeout_ms",
        ),
        (
            "upstream = \"db\"\n",
            "upstream = \"db\"\nmax_connections = 0\n",
            "t.toml:26:19: listeners[1].max_connections",
        ),
        (
            "upstream = \"db\"\n",
            "upstream = \"db\"\nhttp2 = true\n",
            "t.toml:24:12: listeners[1].http2",
        ),
        (
            "upstream = \"db\"\n",
            "upstream = \"db\"\n[[listeners.routes]]\nupstream = \"origin\"\n",
            "t.toml:24:12: listeners[1].routes: a TCP listener has no routes",
        ),
        (
            "port = 80\n",
            "port = 80\nupstream = \"db\"\n",
            "t.toml:19:12: listeners[0].upstream: only a TCP or UDP listener",
        ),
    ];
    for (from, to, want) in cases {
        let text = TCP.replacen(from, to, 1);
        let e = errors(&text);
        assert!(e.iter().any(|e| e.starts_with(want)), "{want}: {e:?}");
    }
}

const UDP: &str = r#"
vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"

[[upstreams]]
name = "dns"
endpoints = ["10.77.0.3:53"]

[[listeners]]
port = 53
[[listeners.routes]]
upstream = "dns"

[[listeners]]
port = 53
protocol = "udp"
upstream = "dns"
"#;

#[test]
fn a_udp_listener_shares_its_port_number_with_a_tcp_one_and_has_defaults() {
    let c = compile(Path::new("t.toml"), UDP).unwrap();
    let routes = &c.engine.routes;
    assert!(routes.listener(53).is_some(), "the HTTP listener on 53");
    let u = routes.udp_listener(53).expect("the UDP listener on 53");
    assert_eq!(u.upstream.name, "dns");
    assert_eq!(u.idle_timeout, ferrogate_proxy::route::UDP_IDLE_TIMEOUT);
    assert_eq!(u.max_sessions, ferrogate_proxy::route::UDP_MAX_SESSIONS);
    let set = UDP.replacen(
        "protocol = \"udp\"\nupstream = \"dns\"\n",
        "protocol = \"udp\"\nupstream = \"dns\"\nidle_timeout_ms = 1500\nmax_sessions = 7\n",
        1,
    );
    let c = compile(Path::new("t.toml"), &set).unwrap();
    let u = c.engine.routes.udp_listener(53).unwrap();
    assert_eq!(
        (u.idle_timeout, u.max_sessions),
        (Duration::from_millis(1500), 7)
    );
}

#[test]
fn udp_listener_keys_are_checked_with_their_line() {
    let tail = "protocol = \"udp\"\nupstream = \"dns\"\n";
    let cases: [(&str, &str); 8] = [
        (
            "protocol = \"udp\"\nupstream = \"nope\"\n",
            "t.toml:19:12: listeners[1].upstream: no upstream named \"nope\"",
        ),
        (
            "protocol = \"udp\"\n",
            "t.toml:18:12: listeners[1].upstream: a UDP listener needs",
        ),
        (
            "protocol = \"udp\"\nupstream = \"dns\"\nidle_timeout_ms = 0\n",
            "t.toml:20:19: listeners[1].idle_timeout_ms",
        ),
        (
            "protocol = \"udp\"\nupstream = \"dns\"\nmax_sessions = 0\n",
            "t.toml:20:16: listeners[1].max_sessions: must be 1..=1000000",
        ),
        (
            "protocol = \"udp\"\nupstream = \"dns\"\nmax_connections = 5\n",
            "t.toml:20:19: listeners[1].max_connections: a UDP listener bounds `max_sessions`",
        ),
        (
            "protocol = \"udp\"\nupstream = \"dns\"\nsni = { a = \"dns\" }\n",
            "t.toml:20:7: listeners[1].sni: not for a UDP listener",
        ),
        (
            "protocol = \"udp\"\nupstream = \"dns\"\n[[listeners.routes]]\nupstream = \"dns\"\n",
            "t.toml:18:12: listeners[1].routes: a UDP listener has no routes",
        ),
        (
            "protocol = \"udp\"\nupstream = \"dns\"\nproxy_protocol_from = [\"10.0.0.0/8\"]\n",
            "t.toml:20:24: listeners[1].proxy_protocol_from: not for a UDP listener",
        ),
    ];
    for (to, want) in cases {
        let text = UDP.replacen(tail, to, 1);
        let e = errors(&text);
        assert!(e.iter().any(|e| e.starts_with(want)), "{want}: {e:?}");
    }
    // Two UDP listeners on one port are one too many.
    let twice = format!("{UDP}\n[[listeners]]\nport = 53\n{tail}");
    let e = errors(&twice);
    assert!(
        e.iter().any(|e| e.starts_with("t.toml:22:8: listeners[2].port: port 53 is zero or used twice")),
        "{e:?}"
    );
}

#[test]
fn tls_passthrough_sni_maps_names_to_pools_and_bad_entries_name_their_line() {
    let with = |sni: &str| {
        TCP.replace(
            "upstream = \"db\"\n",
            &format!("upstream = \"db\"\nsni = {sni}\n"),
        )
    };
    let c = compile(
        Path::new("t.toml"),
        &with(r#"{ "A.Example" = "origin", "*.b.example" = "origin" }"#),
    )
    .unwrap();
    let l4 = c.engine.routes.listener(6379).unwrap().l4.clone().unwrap();
    let names: Vec<&str> = l4.sni.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["*.b.example", "a.example"]);
    assert_eq!(l4.pool_for(Some("x.b.example")).name, "origin");
    assert_eq!(
        l4.pool_for(Some("b.example")).name,
        "db",
        "*.b.example is not b.example"
    );
    assert_eq!(l4.pool_for(None).name, "db");
    let e = errors(&with(r#"{ "a b" = "origin", "c.example" = "nope" }"#));
    assert!(
        e.iter()
            .any(|l| l.contains("listeners[1].sni.\"a b\": a server name is a host name")),
        "{e:#?}"
    );
    assert!(
        e.iter().any(|l| l.starts_with("t.toml:26:41:")
            && l.contains("listeners[1].sni.\"c.example\": no upstream named \"nope\"")),
        "{e:#?}"
    );
    // Only TCP listeners peek.
    let http = GOOD.replace(
        "port = 80\n",
        "port = 80\nsni = { \"a.example\" = \"origin\" }\n",
    );
    assert!(
        errors(&http)
            .iter()
            .any(|l| l.contains("listeners[0].sni: only a TCP listener")),
        "{:#?}",
        errors(&http)
    );
}

#[test]
fn proxy_protocol_pools_serve_tcp_listeners_only() {
    let text = TCP.replace(
        "hash_on = \"source\"\n",
        "hash_on = \"source\"\nproxy_protocol = \"v2\"\n",
    );
    let c = compile(Path::new("t.toml"), &text).unwrap();
    let l4 = c.engine.routes.listener(6379).unwrap().l4.clone().unwrap();
    assert_eq!(
        l4.upstream.proxy_protocol,
        Some(ferrogate_proxy::lb::ProxyProtocol::V2)
    );
    let bad = TCP.replace(
        "hash_on = \"source\"\n",
        "hash_on = \"source\"\nproxy_protocol = \"v3\"\n",
    );
    assert!(
        errors(&bad)
            .iter()
            .any(|l| l.contains("upstreams[1].proxy_protocol: \"v3\" is not \"v1\" or \"v2\"")),
        "{:#?}",
        errors(&bad)
    );
    // An HTTP route may not use it: one header per connection, many clients.
    let http = text.replace(
        "[[listeners.routes]]\nupstream = \"origin\"",
        "[[listeners.routes]]\nupstream = \"db\"",
    );
    assert!(
        errors(&http)
            .iter()
            .any(|l| l.contains("only TCP listeners may use it")),
        "{:#?}",
        errors(&http)
    );
}

#[test]
fn proxy_protocol_from_takes_prefixes_on_tcp_listeners() {
    let text = TCP.replace(
        "upstream = \"db\"\n",
        "upstream = \"db\"\nproxy_protocol_from = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
    );
    let c = compile(Path::new("t.toml"), &text).unwrap();
    let l4 = c.engine.routes.listener(6379).unwrap().l4.clone().unwrap();
    assert_eq!(l4.proxy_from.len(), 2);
    let bad = TCP.replace(
        "upstream = \"db\"\n",
        "upstream = \"db\"\nproxy_protocol_from = [\"10.0.0.0/33\"]\n",
    );
    assert!(
        errors(&bad).iter().any(|l| l.contains(
            "listeners[1].proxy_protocol_from[0]: \"10.0.0.0/33\" is not an address prefix"
        )),
        "{:#?}",
        errors(&bad)
    );
}

#[test]
fn rules_compile_in_order_and_bad_ones_name_file_line_and_field() {
    let good = format!(
        "{GOOD}{}",
        r#"
[[listeners.rules]]
name = "wp"
path_regex = "/wp-.*"
headers = { "user-agent" = { regex = "(?i)bot" }, "x-a" = true, "x-b" = false, "x-c" = "v" }
source = ["10.0.0.0/8", "2001:db8::1"]
action = "deny"
tag = "scanner"
[[listeners.rules]]
name = "docs"
path_prefix = "/docs/"
action = "redirect"
location = "https://{host}{request_uri}"
[[listeners.rules]]
name = "ok"
action = "allow"
"#
    );
    let c = compiled(&good);
    let names: Vec<_> = c
        .engine
        .routes
        .rules()
        .map(|r| (r.name.as_str(), r.id))
        .collect();
    assert_eq!(names, [("wp", 0), ("docs", 1), ("ok", 2)]);
    let bad = format!(
        "{GOOD}{}",
        r#"
[[listeners.rules]]
name = "wp"
path_regex = "/wp-("
action = "deny"
[[listeners.rules]]
name = "wp"
action = "block"
[[listeners.rules]]
name = "r"
action = "redirect"
status = 200
[[listeners.rules]]
name = "s"
source = ["10.0.0.0/33"]
headers = { "x" = 1 }
location = "/{nope}"
action = "redirect"
"#
    );
    let e = errors(&bad);
    let has = |line: &str, field: &str, what: &str| {
        assert!(
            e.iter()
                .any(|l| l.starts_with(line) && l.contains(field) && l.contains(what)),
            "{line} {field} {what}: {e:?}"
        );
    };
    has(
        "t.toml:22:",
        "listeners[0].rules[0].path_regex",
        "invalid regex",
    );
    has(
        "t.toml:25:",
        "listeners[0].rules[1].name",
        "duplicate rule name",
    );
    has("t.toml:26:", "listeners[0].rules[1].action", "\"block\"");
    has(
        "t.toml:30:",
        "listeners[0].rules[2].status",
        "301, 302, 303, 307 or 308",
    );
    has(
        "t.toml:29:",
        "listeners[0].rules[2].location",
        "needs a location",
    );
    has(
        "t.toml:33:",
        "listeners[0].rules[3].source[0]",
        "not an address or prefix",
    );
    has(
        "t.toml:34:",
        "listeners[0].rules[3].headers.x",
        "must be a string",
    );
    has(
        "t.toml:35:",
        "listeners[0].rules[3].location",
        "unknown placeholder",
    );
}

#[test]
fn a_rule_path_not_in_the_form_origins_resolve_is_refused() {
    let text = format!(
        "{GOOD}{}",
        r#"
[[listeners.rules]]
name = "enc"
path_prefix = "/a%20b/"
action = "deny"
[[listeners.rules]]
name = "cn"
client_cert_cn = "admin"
action = "allow"
"#
    );
    let e = errors(&text);
    assert!(
        e.iter().any(|l| l.starts_with("t.toml:22:")
            && l.contains("listeners[0].rules[0].path_prefix")
            && l.contains("\"/a b/\"")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.contains("listeners[0].rules[1].client_cert_cn") && l.contains("client_ca")),
        "{e:?}"
    );
}

const LIMITED: &str = r#"
vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"

[[upstreams]]
name = "origin"
endpoints = ["10.77.0.3:8080"]

[[rate_limits]]
name = "per-client"
rate = 20
prefix6 = 128
exempt = ["10.0.0.0/8"]
escalate = { factor = 5, after_s = 10, ttl_s = 300 }

[[rate_limits]]
name = "per-key"
rate = 0.5
burst = 3
key = "header:X-Api-Key"

[[rate_limits]]
name = "syn-flood"
enforce = "xdp"
unit = "connections"
rate = 100
burst = 200

[[listeners]]
port = 80
rate_limits = ["per-client"]
[[listeners.routes]]
name = "api"
path_prefix = "/api/"
upstream = "origin"
rate_limits = ["per-key"]
[[listeners.routes]]
upstream = "origin"
"#;

#[test]
fn rate_limits_compile_to_l7_limits_and_xdp_rate_rules() {
    use ferrogate_proxy::limits::LimitKey;
    let c = compiled(LIMITED);
    let routes = &c.engine.routes;
    let names: Vec<_> = routes.limits.iter().map(|l| &*l.name).collect();
    assert_eq!(names, ["per-client", "per-key"]);
    let per_client = &routes.limits[0];
    assert_eq!(
        per_client.key,
        LimitKey::Source {
            prefix4: 32,
            prefix6: 128
        }
    );
    assert_eq!(
        (per_client.spec.burst, per_client.spec.interval_ns),
        (20, 50_000_000)
    );
    let esc = per_client.escalate.as_ref().expect("escalates");
    assert_eq!(
        (esc.over_per_second, esc.windows, esc.ttl.as_secs()),
        (100, 10, 300)
    );
    assert_eq!(routes.limits[1].key, LimitKey::Header("x-api-key".into()));
    assert_eq!(routes.limits[1].spec.interval_ns, 2_000_000_000);
    let l = routes.listener(80).unwrap();
    assert_eq!(l.limits().len(), 1);
    assert_eq!(l.routes()[0].limits[0].name.as_ref(), "per-key");
    assert!(l.routes()[1].limits.is_empty());
    let xdp = c
        .engine
        .filter
        .rate
        .iter()
        .find(|r| r.id == "syn-flood")
        .expect("the XDP limit is a filter rate rule");
    assert!(xdp.syn_only && xdp.pps == 100 && xdp.burst_packets == 200);
}

#[test]
fn rate_limit_errors_name_file_line_and_field() {
    let bad = LIMITED
        .replace("rate = 0.5\n", "rate = 0\n")
        .replace("key = \"header:X-Api-Key\"", "key = \"cookie:x\"")
        .replace("exempt = [\"10.0.0.0/8\"]", "exempt = [\"10.0.0.0/33\"]")
        .replace("factor = 5,", "factor = 0.5,")
        .replace("rate = 100\n", "rate = 100.5\n")
        .replace("rate_limits = [\"per-key\"]", "rate_limits = [\"per-kee\"]");
    let e = errors(&bad);
    let has = |line: &str, field: &str, what: &str| {
        assert!(
            e.iter()
                .any(|l| l.starts_with(line) && l.contains(field) && l.contains(what)),
            "{line} {field} {what}: {e:?}"
        );
    };
    has(
        "t.toml:15:",
        "rate_limits[0].exempt[0]",
        "not an address or CIDR",
    );
    has("t.toml:16:", "rate_limits[0].escalate.factor", "1..=1000");
    has("t.toml:20:", "rate_limits[1].rate", "requests a second");
    has("t.toml:22:", "rate_limits[1].key", "\"cookie:x\"");
    has("t.toml:28:", "rate_limits[2].rate", "whole packets");
    has(
        "t.toml:38:",
        "listeners[0].routes[0].rate_limits[0]",
        "no [[rate_limits]] named \"per-kee\"",
    );
    assert_eq!(
        e.len(),
        6,
        "no knock-on errors from the invalid limits: {e:?}"
    );
    let xdp_listed = LIMITED.replace(
        "rate_limits = [\"per-key\"]",
        "rate_limits = [\"syn-flood\"]",
    );
    assert!(
        errors(&xdp_listed)
            .iter()
            .any(|l| l.starts_with("t.toml:38:") && l.contains("enforced in XDP")),
        "{:?}",
        errors(&xdp_listed)
    );
    let dup = LIMITED.replace("name = \"per-key\"", "name = \"per-client\"");
    assert!(
        errors(&dup)
            .iter()
            .any(|l| l.contains("rate_limits[1].name") && l.contains("duplicate")),
        "{:?}",
        errors(&dup)
    );
    let shared_bucket = LIMITED.replace("prefix6 = 128\n", "prefix4 = 24\n");
    assert!(
        errors(&shared_bucket)
            .iter()
            .any(|l| l.contains("rate_limits[0].escalate") && l.contains("prefix4 = 32")),
        "{:?}",
        errors(&shared_bucket)
    );
    let twice = LIMITED.replace(
        "rate_limits = [\"per-key\"]",
        "rate_limits = [\"per-key\", \"per-client\"]",
    );
    assert!(
        errors(&twice)
            .iter()
            .any(|l| l.contains("routes[0].rate_limits[1]")
                && l.contains("already applied by the listener")),
        "{:?}",
        errors(&twice)
    );
    let escalate_by_header = LIMITED.replace(
        "burst = 3\n",
        "burst = 3\nescalate = { factor = 2, after_s = 1, ttl_s = 1 }\n",
    );
    assert!(
        errors(&escalate_by_header)
            .iter()
            .any(|l| l.contains("rate_limits[1].escalate") && l.contains("keyed by source")),
        "{:?}",
        errors(&escalate_by_header)
    );
}

#[test]
fn rule_rewrites_compile_and_bad_ones_name_their_field() {
    use ferrogate_proxy::rules::Rule;
    let good = format!(
        "{GOOD}{}",
        r#"
[[listeners.rules]]
name = "api"
path_prefix = "/v1/"
action = "allow"
rewrite_prefix = { from = "/v1/", to = "/" }
pool = "origin"
request_headers = { set = { "X-Env" = "edge" }, add = { "X-A" = "1" }, remove = ["X-Secret"] }
response_headers = { remove = ["Server"] }
"#
    );
    let c = compiled(&good);
    let rule: &Rule = c.engine.routes.rules().next().expect("one rule");
    let rw = rule.rewrite.as_ref().expect("a rewrite");
    assert_eq!(rw.request_remove, ["x-env", "x-secret"]);
    assert_eq!(rw.request_add.len(), 2);
    assert_eq!(rw.response_remove, ["server"]);
    assert_eq!(rw.pool.as_ref().map(|p| p.name.as_str()), Some("origin"));
    let mut buf = String::new();
    assert_eq!(rw.target("/v1/users?id=1", &mut buf), "/users?id=1");
    assert_eq!(rw.target("/v2/x", &mut buf), "/v2/x");

    let bad = format!(
        "{GOOD}{}",
        r#"
[[listeners.rules]]
name = "d"
action = "deny"
request_headers = { add = { "X-A" = "1" } }
[[listeners.rules]]
name = "a"
action = "allow"
pool = "nope"
response_headers = { remove = ["Content-Length"] }
rewrite_prefix = { from = "v1", to = "/" }
[[listeners.rules]]
name = "b"
path_prefix = "/api/"
action = "allow"
request_headers = { remove = ["X-Forwarded-For"] }
rewrite_prefix = { from = "/api/", to = "/x?y=/" }
"#
    );
    let e = errors(&bad);
    let has = |line: &str, field: &str, what: &str| {
        assert!(
            e.iter()
                .any(|l| l.starts_with(line) && l.contains(field) && l.contains(what)),
            "{line} {field} {what}: {e:?}"
        );
    };
    has(
        "t.toml:22:",
        "listeners[0].rules[0].action",
        "only an allow rule",
    );
    has(
        "t.toml:27:",
        "listeners[0].rules[1].pool",
        "no upstream named \"nope\"",
    );
    has(
        "t.toml:28:",
        "listeners[0].rules[1].response_headers",
        "\"Content-Length\"",
    );
    has(
        "t.toml:29:",
        "listeners[0].rules[1].rewrite_prefix",
        "starting with `/`",
    );
    has(
        "t.toml:29:",
        "listeners[0].rules[1].rewrite_prefix",
        "path_prefix to start with",
    );
    has(
        "t.toml:34:",
        "listeners[0].rules[2].request_headers",
        "writes this field itself",
    );
    has(
        "t.toml:35:",
        "listeners[0].rules[2].rewrite_prefix",
        "no `?`",
    );
}

#[test]
fn canary_compiles_and_bad_ones_name_their_field() {
    let good = GOOD.replace(
        "[[listeners.routes]]\nupstream = \"origin\"\n",
        "[[upstreams]]\nname = \"v2\"\nendpoints = [\"10.77.0.4:8080\"]\n[[listeners.routes]]\nupstream = \"origin\"\ncanary = { pool = \"v2\", percent = 12.5, key = \"header:X-User\", brake = { max_p99_ratio = 3.0 } }\n",
    );
    assert_ne!(good, GOOD);
    let c = compiled(&good);
    let route = c.engine.routes.routes().last().unwrap();
    let canary = route.canary.as_ref().unwrap();
    assert_eq!(canary.per_10k, 1250);
    assert_eq!(
        canary.key,
        Some(ferrogate_proxy::canary::CohortKey::Header("x-user".into()))
    );
    let b = canary.brake.as_ref().unwrap();
    assert_eq!(
        (
            b.max_5xx_delta,
            b.max_p99_ratio,
            b.window_us,
            b.min_requests
        ),
        (0.05, Some(3.0), 30_000_000, 20)
    );
    for (bad, what) in [
        ("pool = \"nope\", percent = 1", "no upstream named"),
        ("pool = \"origin\", percent = 1", "the route's own pool"),
        ("pool = \"v2\", percent = 101", "0..=100"),
        (
            "pool = \"v2\", percent = 1, key = \"query:x\"",
            "\"header:NAME\" or \"cookie:NAME\"",
        ),
        (
            "pool = \"v2\", percent = 1, brake = { window_s = 0 }",
            "window_s 1..=3600",
        ),
    ] {
        let text = good.replace(
            "pool = \"v2\", percent = 12.5, key = \"header:X-User\", brake = { max_p99_ratio = 3.0 }",
            bad,
        );
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|l| l.contains("listeners[0].routes[1].canary") && l.contains(what)),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn the_drain_bound_defaults_to_30_s_and_is_checked() {
    assert_eq!(compiled(GOOD).drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    let with = |ms: &str| format!("{GOOD}[timeouts]\ndrain_ms = {ms}\n");
    assert_eq!(compiled(&with("0")).drain_timeout, Duration::ZERO);
    assert_eq!(
        compiled(&with("1500")).drain_timeout,
        Duration::from_millis(1500)
    );
    let e = errors(&with("3600001"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("t.toml:20:12: timeouts.drain_ms:")
            && e[0].contains("must be 0..=3600000"),
        "{e:?}"
    );
}

#[test]
fn dpdk_exception_iface_is_a_tap_name_other_than_the_ports() {
    let with = |name: &str| {
        format!(
            "{GOOD}\n[engine.dpdk]\nvdevs = [\"net_af_packet0,iface=eth0\"]\nexception_iface = {name:?}\n"
        )
    };
    let c = compile(Path::new("t.toml"), &with("fgx0")).unwrap();
    assert_eq!(c.engine.dpdk.exception_iface.as_deref(), Some("fgx0"));
    let line = with("x")
        .lines()
        .position(|l| l.starts_with("exception_iface"))
        .unwrap()
        + 1;
    for bad in [
        "",
        "a/b",
        "sixteen-chars-xx",
        "sp ace",
        "..",
        "all",
        "default",
    ] {
        let e = errors(&with(bad));
        assert!(
            e.iter().any(|e| e.starts_with(&format!("t.toml:{line}:"))
                && e.contains("engine.dpdk.exception_iface")),
            "{bad:?}: {e:?}"
        );
    }
    let e = errors(&with("eth0"));
    assert!(
        e.iter().any(|e| e.contains("the port's own interface")),
        "{e:?}"
    );
}

/// A TLS listener on 443 with `http3 = true` (line 12), `tls_extra` in its
/// [listeners.tls] (line 15), a UDP listener on `udp_port` and `tail`
/// after it (line 23 on).
fn h3_config(udp_port: u16, tls_extra: &str, tail: &str) -> String {
    let d = ferrogate_testkit::temp_dir("fg-cfg-h3");
    let p = ferrogate_testkit::Pem::self_signed("a.example");
    let (cert, key, ca) = (d.join("a.crt"), d.join("a.key"), d.join("ca.pem"));
    std::fs::write(&cert, &p.cert).unwrap();
    std::fs::write(&key, &p.key).unwrap();
    std::fs::write(&ca, ferrogate_testkit::Pem::self_signed("client ca").cert).unwrap();
    let tls_extra = tls_extra.replace("CA", &ca.display().to_string());
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"

[[upstreams]]
name = "dns"
endpoints = ["10.77.0.3:53"]

[[listeners]]
port = 443
http3 = true
[listeners.tls]
certificates = [{{ cert = "{}", key = "{}" }}]
{tls_extra}
[[listeners.routes]]
respond = {{ status = 200, body = "hi" }}

[[listeners]]
port = {udp_port}
protocol = "udp"
upstream = "dns"
{tail}"#,
        cert.display(),
        key.display()
    )
}

#[test]
fn http3_listener_and_limits_compile_into_its_quic_endpoint_config() {
    let tail = "\n[http3]\nretry = true\nmax_connections = 500\nidle_timeout_ms = 5000\nmax_concurrent_streams = 50\nmax_buffered_body = 131072\nmax_field_section_size = 32768\nalt_svc_max_age = 3600\nmax_connections_per_source = 7\nretry_above_handshakes = 9\n";
    let c = compile(Path::new("t.toml"), &h3_config(53, "", tail)).unwrap();
    let routes = &c.engine.routes;
    let l = routes.listener(443).unwrap();
    let h3 = l.http3.as_ref().expect("http3 on 443");
    let q = &h3.quic;
    assert_eq!(q.worker, 0);
    assert!(q.retry);
    assert_eq!(q.max_connections, 500);
    assert_eq!(q.idle_timeout, Duration::from_millis(5000));
    assert_eq!(q.max_bidi_streams, 50);
    assert_eq!(q.h3.max_concurrent_requests, 50);
    assert_eq!(q.max_buffered_body, 131_072);
    assert_eq!(q.h3.max_field_section_size, 32_768);
    assert_eq!(h3.alt_svc_max_age, 3600);
    assert_eq!(q.max_connections_per_source, 7);
    assert_eq!(q.retry_above_handshakes, 9);
    // The TCP listener's ALPN is its own: h3 is the QUIC endpoint's.
    let tls = l.tls.as_ref().unwrap();
    assert_eq!(tls.server.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    assert!(routes.udp_listener(53).is_some());

    // Without [http3]: the endpoint's defaults and a day of Alt-Svc.
    let c = compile(Path::new("t.toml"), &h3_config(53, "", "")).unwrap();
    let h3 = c
        .engine
        .routes
        .listener(443)
        .unwrap()
        .http3
        .clone()
        .unwrap();
    let d = ferrogate_proxy::quic::QuicConfig::default();
    assert_eq!(
        (
            h3.quic.retry,
            h3.quic.max_connections,
            h3.quic.idle_timeout,
            h3.quic.max_bidi_streams,
            h3.quic.max_buffered_body,
            h3.quic.h3.max_field_section_size,
        ),
        (
            false,
            10_000,
            Duration::from_secs(30),
            100,
            65_536,
            d.h3.max_field_section_size,
        )
    );
    assert_eq!(h3.alt_svc_max_age, 86_400);
    // client_auth = "none" beside a client_ca asks for no certificate.
    let none = h3_config(53, "client_ca = \"CA\"\nclient_auth = \"none\"", "");
    assert!(errors(&none).is_empty(), "{:?}", errors(&none));
    // Off unless asked for.
    let c = compile(Path::new("t.toml"), GOOD).unwrap();
    assert!(c.engine.routes.listeners[0].http3.is_none());
    let off = h3_config(53, "", "").replace("http3 = true", "http3 = false");
    let c = compile(Path::new("t.toml"), &off).unwrap();
    assert!(c.engine.routes.listener(443).unwrap().http3.is_none());
}

#[test]
fn http3_where_quic_cannot_serve_names_its_line() {
    let cases = [
        (
            GOOD.replace("port = 80\n", "port = 80\nhttp3 = true\n"),
            "t.toml:14:9: listeners[0].http3: needs [listeners.tls]",
        ),
        (
            TCP.to_string() + "http3 = true\n",
            "t.toml:26:9: listeners[1].http3: not for a TCP listener",
        ),
        (
            h3_config(53, "", "http3 = true\n"),
            "t.toml:23:9: listeners[1].http3: not for a UDP listener",
        ),
        (
            h3_config(53, "client_ca = \"CA\"", ""),
            "t.toml:12:9: listeners[0].http3: not with client certificates (client_ca / client_auth): mTLS over QUIC is not supported yet",
        ),
        (
            h3_config(443, "", ""),
            "t.toml:12:9: listeners[0].http3: UDP port 443 is a UDP listener's",
        ),
    ];
    for (text, want) in cases {
        let e = errors(&text);
        assert!(e.iter().any(|e| e.starts_with(want)), "{want}: {e:#?}");
    }
}

#[test]
fn http3_limits_out_of_range_or_unknown_name_their_line() {
    let bad = GOOD.to_string()
        + "\n[http3]\nmax_connections = 0\nidle_timeout_ms = 999\nmax_concurrent_streams = 10001\nmax_buffered_body = 1023\nmax_field_section_size = 100\nalt_svc_max_age = 31536001\nmax_connections_per_source = 0\n";
    let e = errors(&bad);
    let has = |needle: &str| {
        assert!(e.iter().any(|l| l.contains(needle)), "{needle}: {e:#?}");
    };
    has("t.toml:21:19: http3.max_connections: must be 1..=1000000");
    has("t.toml:22:19: http3.idle_timeout_ms: must be 1000..=600000");
    has("t.toml:23:26: http3.max_concurrent_streams: must be 1..=10000");
    has("t.toml:24:21: http3.max_buffered_body: must be 1024..=16777216");
    has("t.toml:25:26: http3.max_field_section_size: must be 1024..=1048576");
    has("t.toml:26:19: http3.alt_svc_max_age: must be 0..=31536000");
    has("t.toml:27:30: http3.max_connections_per_source: must be 1..=1000000");
    assert_eq!(e.len(), 7, "{e:#?}");
    let e = errors(&(GOOD.to_string() + "\n[http3]\nmax_streams = 1\n"));
    assert!(
        e[0].starts_with("t.toml:21:1") && e[0].contains("unknown field `max_streams`"),
        "{e:?}"
    );
}
