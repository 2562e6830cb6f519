//! proxy-wasm plugins on listeners and routes, back to back in memory:
//! every HTTP context a request opens is closed (nothing piles up in the
//! guest), ticks run on the worker's clock, a snapshot swap that replaces
//! the plugin leaves requests in flight unharmed, and a route's plugins run
//! at the origin phases in the documented order around the listener's.

mod common;
#[path = "common/wasm.rs"]
mod wasm;

use common::*;
use ferrogate_proxy::plugin_phase::AttachedPlugin;
use ferrogate_proxy::plugins::{Plugin, PluginConfig, PluginLimits, PluginModule};
use ferrogate_proxy::{Listener, Route, RouteAction, RouteTable, Upstream};
use wasm::*;

/// Counts contexts created (not the root), deleted, and ticks (every
/// 100 ms), in three counters.
const COUNTING: &str = r#"(module
  (import "env" "proxy_define_metric" (func $def (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (data (i32.const 256) "created")
  (data (i32.const 264) "deleted")
  (data (i32.const 272) "ticks")
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $def (i32.const 0) (i32.const 256) (i32.const 7) (i32.const 16)))
    (drop (call $def (i32.const 0) (i32.const 264) (i32.const 7) (i32.const 20)))
    (drop (call $def (i32.const 0) (i32.const 272) (i32.const 5) (i32.const 24)))
    (drop (call $tick (i32.const 100)))
    (i32.const 1))
  (func (export "proxy_on_context_create") (param $id i32) (param $parent i32)
    (if (i32.ne (local.get $parent) (i32.const 0))
      (then (drop (call $inc (i32.load (i32.const 16)) (i64.const 1))))))
  (func (export "proxy_on_delete") (param i32)
    (drop (call $inc (i32.load (i32.const 20)) (i64.const 1))))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $inc (i32.load (i32.const 24)) (i64.const 1)))))"#;

fn counting_plugin(name: &str) -> Plugin {
    let bytes = wat::parse_str(COUNTING).unwrap();
    let module = PluginModule::compile(&bytes, &PluginLimits::default()).expect("compile");
    Plugin::new(
        module,
        PluginConfig {
            name: name.into(),
            ..PluginConfig::default()
        },
    )
}

fn metric(p: &Plugin, name: &str) -> i64 {
    p.metrics()
        .into_iter()
        .find(|m| m.name == name)
        .map_or(0, |m| m.value)
}

fn table(version: u64, plugin: &Plugin) -> Arc<RouteTable> {
    let upstream = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    Arc::new(RouteTable::new(
        version,
        vec![
            Listener::new(
                80,
                vec![Route::new("origin", RouteAction::Proxy(upstream.clone()))],
            )
            .with_plugins(vec![AttachedPlugin {
                plugin: plugin.clone(),
                fail_open: false,
            }]),
        ],
        vec![upstream],
    ))
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n").into_bytes()
}

#[test]
fn every_context_a_keep_alive_connection_opens_is_deleted() {
    let plugin = counting_plugin("count");
    let mut lab = Lab::with_routes(Origin::Serving, table(1, &plugin), |_| {});
    let c = lab.connect();
    for _ in 0..5 {
        assert_eq!(lab.exchange(c, &get("/")).status, 200);
    }
    assert_eq!(metric(&plugin, "created"), 5, "{:?}", plugin.metrics());
    assert_eq!(metric(&plugin, "deleted"), 5, "{:?}", plugin.metrics());
    let s = lab.edge.stats();
    assert_eq!(s.plugin_instances_started, 1);
    assert_eq!(s.plugin_failures, 0);
}

#[test]
fn a_request_the_proxy_fails_itself_deletes_its_context() {
    // Nothing listens at the origin: each request gets the proxy's 502 and
    // its connection closes, with the context deleted, not left behind.
    let plugin = counting_plugin("refused");
    let mut lab = Lab::with_routes(Origin::Refusing, table(1, &plugin), |_| {});
    for _ in 0..3 {
        let c = lab.connect();
        assert_eq!(lab.exchange(c, &get("/")).status, 502);
    }
    assert_eq!(metric(&plugin, "created"), 3, "{:?}", plugin.metrics());
    assert_eq!(metric(&plugin, "deleted"), 3, "{:?}", plugin.metrics());
}

#[test]
fn ticks_follow_the_workers_clock() {
    let plugin = counting_plugin("ticks");
    let mut lab = Lab::with_routes(Origin::Serving, table(1, &plugin), |_| {});
    let at = lab.edge.poll_at(lab.now);
    assert!(at.is_some(), "the tick is a timer of the stack");
    for _ in 0..100 {
        lab.step(10);
    }
    // 1 s of lab time at a 100 ms period.
    let ticks = metric(&plugin, "ticks");
    assert!((9..=11).contains(&ticks), "{ticks} ticks in 1 s");
}

#[test]
fn a_snapshot_that_replaces_the_plugin_leaves_a_request_in_flight_whole() {
    let old = counting_plugin("old");
    let mut lab = Lab::with_routes(Origin::Serving, table(1, &old), |_| {});
    lab.origin_pace = Some(2000);
    let c = lab.connect();
    for _ in 0..20 {
        lab.step(1);
    }
    lab.send(c, &get("/big"));
    let mut raw = lab.read_until(c, 50, |b| b.len() > 10_000);
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    let new = counting_plugin("new");
    lab.edge.set_routes(table(2, &new));
    assert_eq!(metric(&old, "created"), 1);
    raw.extend(lab.read_until(c, 5_000, |b| Response::parse(b).is_some()));
    let r = Response::parse(&raw).expect("the whole response");
    assert_eq!(r.body.len(), 200_000);
    // The next request on the connection goes through the new plugin.
    lab.origin_pace = None;
    assert_eq!(lab.exchange(c, &get("/")).status, 200);
    assert_eq!(metric(&new, "created"), 1, "{:?}", new.metrics());
    assert_eq!(metric(&new, "deleted"), 1, "{:?}", new.metrics());
    assert_eq!(lab.edge.stats().plugin_instances_started, 2);
}

/// Adds `x-order: <tag>` to the request head and to the response head; at
/// the request it also copies the `route_name` property, when there is
/// one, into `x-route`. With `trap`, the request call traps instead.
fn tagging_plugin(name: &str, tag: char, trap: bool) -> Plugin {
    tagger(name, tag, trap, true)
}

/// [`tagging_plugin`]; without `on_request`, the request head is left as
/// it is (a changed one bypasses the cache).
fn tagger(name: &str, tag: char, trap: bool, on_request: bool) -> Plugin {
    let trap = if trap { "unreachable" } else { "" };
    let skip = if on_request {
        ""
    } else {
        "(return (i32.const 0))"
    };
    let text = format!(
        r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (data (i32.const 256) "x-order")
  (data (i32.const 264) "{tag}")
  (data (i32.const 272) "x-route")
  (data (i32.const 280) "route_name")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    {trap}
    {skip}
    (drop (call $add (i32.const 0) (i32.const 256) (i32.const 7) (i32.const 264) (i32.const 1)))
    (if (i32.eqz (call $prop (i32.const 280) (i32.const 10) (i32.const 0) (i32.const 4)))
      (then (drop (call $add (i32.const 0) (i32.const 272) (i32.const 7)
        (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 256) (i32.const 7) (i32.const 264) (i32.const 1)))
    (i32.const 0)))"#
    );
    let bytes = wat::parse_str(&text).unwrap();
    let module = PluginModule::compile(&bytes, &PluginLimits::default()).expect("compile");
    Plugin::new(
        module,
        PluginConfig {
            name: name.into(),
            ..PluginConfig::default()
        },
    )
}

fn attach(plugin: &Plugin, fail_open: bool) -> AttachedPlugin {
    AttachedPlugin {
        plugin: plugin.clone(),
        fail_open,
    }
}

/// Port 80: `listener`'s plugins; route `/direct` answers itself, the
/// route `origin` (everything else) proxies with `route`'s plugins.
fn table_with_route_plugins(
    listener: Vec<AttachedPlugin>,
    route: Vec<AttachedPlugin>,
) -> Arc<RouteTable> {
    let upstream = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    Arc::new(RouteTable::new(
        1,
        vec![
            Listener::new(
                80,
                vec![
                    Route {
                        path: ferrogate_proxy::PathMatch::Prefix("/plain".into()),
                        ..Route::new("plain", RouteAction::Proxy(upstream.clone()))
                    },
                    Route {
                        plugins: route,
                        ..Route::new("origin", RouteAction::Proxy(upstream.clone()))
                    },
                ],
            )
            .with_plugins(listener),
        ],
        vec![upstream],
    ))
}

/// The values of `name` in a head, in order.
fn values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

#[test]
fn a_routes_plugins_run_after_the_listeners_on_the_request_and_before_them_on_the_response() {
    let (l, r) = (
        tagging_plugin("l", 'L', false),
        tagging_plugin("r", 'R', false),
    );
    let routes = table_with_route_plugins(vec![attach(&l, false)], vec![attach(&r, false)]);
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let c = lab.connect();
    let resp = lab.exchange(c, &get("/"));
    assert_eq!(resp.status, 200);
    let seen = lab.origin_requests.last().expect("the origin's request");
    // Origin request after viewer request, on the head the listener's left.
    assert_eq!(values(seen, "x-order"), ["L", "R"], "{seen}");
    // Only the route's plugin has a route to name.
    assert_eq!(values(seen, "x-route"), ["origin"], "{seen}");
    // Origin response (the route's) before viewer response (the listener's).
    assert_eq!(values(&resp.head, "x-order"), ["R", "L"], "{}", resp.head);
    let s = lab.edge.stats();
    assert_eq!(
        s.plugin_instances_started, 2,
        "route plugins start at the swap"
    );
    assert_eq!((s.plugin_contexts_created, s.plugin_contexts_ended), (2, 2));
    assert_eq!(s.plugin_failures, 0);
}

#[test]
fn a_route_without_plugins_runs_only_the_listeners() {
    let (l, r) = (
        tagging_plugin("l", 'L', false),
        tagging_plugin("r", 'R', false),
    );
    let routes = table_with_route_plugins(vec![attach(&l, false)], vec![attach(&r, false)]);
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let c = lab.connect();
    let resp = lab.exchange(c, &get("/plain"));
    assert_eq!(resp.status, 200);
    let seen = lab.origin_requests.last().unwrap();
    assert_eq!(values(seen, "x-order"), ["L"], "{seen}");
    assert_eq!(values(&resp.head, "x-order"), ["L"], "{}", resp.head);
    let s = lab.edge.stats();
    assert_eq!((s.plugin_contexts_created, s.plugin_contexts_ended), (1, 1));
}

#[test]
fn a_failing_route_plugin_answers_500_and_ends_the_listeners_context() {
    let (l, r) = (
        tagging_plugin("l", 'L', false),
        tagging_plugin("r", 'R', true),
    );
    let routes = table_with_route_plugins(vec![attach(&l, false)], vec![attach(&r, false)]);
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let c = lab.connect();
    let resp = lab.exchange(c, &get("/"));
    assert_eq!(resp.status, 500);
    assert!(lab.origin_requests.is_empty(), "{:?}", lab.origin_requests);
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 1);
    assert_eq!((s.plugin_contexts_created, s.plugin_contexts_ended), (2, 2));
}

#[test]
fn a_fail_open_route_plugin_that_fails_leaves_the_listeners_edits() {
    let (l, r) = (
        tagging_plugin("l", 'L', false),
        tagging_plugin("r", 'R', true),
    );
    let routes = table_with_route_plugins(vec![attach(&l, false)], vec![attach(&r, true)]);
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let c = lab.connect();
    let resp = lab.exchange(c, &get("/"));
    assert_eq!(resp.status, 200);
    let seen = lab.origin_requests.last().unwrap();
    assert_eq!(values(seen, "x-order"), ["L"], "{seen}");
    // The failed plugin's context ended with its failure: it does not see
    // the response.
    assert_eq!(values(&resp.head, "x-order"), ["L"], "{}", resp.head);
    let s = lab.edge.stats();
    assert_eq!((s.plugin_failures, s.plugin_failed_open), (1, 1));
    assert_eq!((s.plugin_contexts_created, s.plugin_contexts_ended), (2, 2));
}

#[test]
fn route_plugin_ticks_run_too() {
    let plugin = counting_plugin("route-ticks");
    let routes = table_with_route_plugins(Vec::new(), vec![attach(&plugin, false)]);
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    for _ in 0..50 {
        lab.step(10);
    }
    let ticks = metric(&plugin, "ticks");
    assert!((4..=6).contains(&ticks), "{ticks} ticks in 0.5 s");
    let c = lab.connect();
    assert_eq!(lab.exchange(c, &get("/")).status, 200);
    assert_eq!(metric(&plugin, "created"), 1);
    assert_eq!(metric(&plugin, "deleted"), 1);
}

#[test]
fn a_cache_hit_goes_through_the_response_phases_like_the_miss() {
    let (l, r) = (
        tagger("l", 'L', false, false),
        tagger("r", 'R', false, false),
    );
    let upstream = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    let routes = Arc::new(RouteTable::new(
        1,
        vec![
            Listener::new(
                80,
                vec![Route {
                    cache: Some(Arc::new(ferrogate_proxy::cache::RouteCache::default())),
                    plugins: vec![attach(&r, false)],
                    ..Route::new("cached", RouteAction::Proxy(upstream.clone()))
                }],
            )
            .with_plugins(vec![attach(&l, false)]),
        ],
        vec![upstream],
    ));
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let c = lab.connect();
    let miss = lab.exchange(c, &get("/cached/a"));
    let hit = lab.exchange(c, &get("/cached/a"));
    assert_eq!((miss.status, hit.status), (200, 200));
    assert_eq!(values(&miss.head, "x-cache"), ["MISS"], "{}", miss.head);
    assert_eq!(values(&hit.head, "x-cache"), ["HIT"], "{}", hit.head);
    assert_eq!(lab.origin_requests.len(), 1, "{:?}", lab.origin_requests);
    for resp in [&miss, &hit] {
        assert_eq!(values(&resp.head, "x-order"), ["R", "L"], "{}", resp.head);
    }
    // A conditional request the store answers (304) too.
    let cond = b"GET /cached/a HTTP/1.1\r\nHost: example.com\r\nIf-None-Match: \"v1\"\r\n\r\n";
    lab.send(c, cond);
    let raw = lab.read_until(c, 500, |b| find(b, b"\r\n\r\n").is_some());
    let head = String::from_utf8_lossy(&raw).to_string();
    assert!(head.starts_with("HTTP/1.1 304"), "{head}");
    assert_eq!(values(&head, "x-order"), ["R", "L"], "{head}");
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 0);
    assert_eq!((s.plugin_contexts_created, s.plugin_contexts_ended), (6, 6));
    // Each context: its request head and its response head.
    assert_eq!(s.plugin_calls, 12);
}

#[test]
fn a_body_plugin_sees_the_whole_body_once_and_the_client_gets_it_rechunked() {
    let listener = body_wrapper("square", '[', ']');
    let route = body_wrapper("round", '(', ')');
    let table =
        table_with_route_plugins(vec![attach(&listener, false)], vec![attach(&route, false)]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    // Two chunks from the origin, one call at the end: the route's context
    // first (the response order), then the listener's.
    let r = lab.exchange(c, &get("/chunked"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"[(hello, world)]", "{}", r.head);
    assert_eq!(
        values(&r.head, "transfer-encoding"),
        ["chunked"],
        "{}",
        r.head
    );
    assert!(values(&r.head, "content-length").is_empty(), "{}", r.head);
    // A body past every buffer, announced by length: re-framed too, and
    // the connection goes on.
    let r = lab.exchange(c, &get("/big"));
    assert_eq!(r.status, 200);
    let big: Vec<u8> = (0..lab.big_body).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(r.body.len(), big.len() + 4);
    assert!(r.body.starts_with(b"[(") && r.body.ends_with(b")]"));
    assert!(
        r.body[2..r.body.len() - 2] == big[..],
        "the body in between differs"
    );
    // Only the plain route: the listener's wrapper alone.
    let r = lab.exchange(c, &get("/plain"));
    assert_eq!(r.status, 200);
    assert!(
        r.body.starts_with(b"[") && r.body.ends_with(b"]"),
        "{:?}",
        r.body
    );
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 0);
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}

#[test]
fn a_body_plugin_holding_more_than_its_bound_fails_and_cuts_the_response() {
    let square = body_wrapper("square", '[', ']');
    let table = table_with_route_plugins(vec![attach(&square, false)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    lab.big_body = (ferrogate_proxy::plugin_phase::MAX_HELD + 100_000) as u32;
    let c = lab.connect();
    lab.send(c, &get("/big"));
    let raw = lab.read_until(c, 3_000, |b| Response::parse(b).is_some());
    assert!(
        Response::parse(&raw).is_none(),
        "a cut body, not a whole response"
    );
    assert!(raw.starts_with(b"HTTP/1.1 200"), "the head went out first");
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 1);
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}

/// A body plugin that passes every piece on unchanged.
fn body_passer(name: &str) -> Plugin {
    let text = r#"(module
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    (i32.const 0)))"#;
    let bytes = wat::parse_str(text).unwrap();
    let module = PluginModule::compile(&bytes, &PluginLimits::default()).expect("compile");
    Plugin::new(
        module,
        PluginConfig {
            name: name.into(),
            ..PluginConfig::default()
        },
    )
}

#[test]
fn a_body_plugin_that_keeps_the_length_keeps_the_origins_framing() {
    let passer = body_passer("passer");
    let table = table_with_route_plugins(vec![attach(&passer, false)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    let r = lab.exchange(c, &get("/big"));
    assert_eq!(r.status, 200);
    assert_eq!(
        values(&r.head, "content-length"),
        [lab.big_body.to_string()],
        "{}",
        r.head
    );
    assert!(
        values(&r.head, "transfer-encoding").is_empty(),
        "{}",
        r.head
    );
    let big: Vec<u8> = (0..lab.big_body).map(|i| b'a' + (i % 26) as u8).collect();
    assert!(r.body == big, "the body differs");
    // Many pieces, each through the plugin.
    assert!(lab.edge.stats().plugin_calls > 10);
    // HTTP/1.0 keeps its keep-alive: the length still frames the body.
    let r = lab.exchange(
        c,
        b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(!values(&r.head, "content-length").is_empty(), "{}", r.head);
    assert_eq!(values(&r.head, "connection"), ["keep-alive"], "{}", r.head);
    assert_eq!(lab.edge.stats().plugin_failures, 0);
}

#[test]
fn a_body_plugin_that_changes_a_length_it_left_in_place_fails() {
    let wrapper = body_wrapper_that("square", '[', ']', false);
    let table = table_with_route_plugins(vec![attach(&wrapper, false)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    lab.send(c, &get("/"));
    let raw = lab.read_until(c, 3_000, |b| Response::parse(b).is_some());
    assert!(
        Response::parse(&raw).is_none(),
        "a cut body, not a whole response"
    );
    assert_eq!(lab.edge.stats().plugin_failures, 1);
    // A chunked origin announces no length: that body may change.
    let c = lab.connect();
    let r = lab.exchange(c, &get("/chunked"));
    assert_eq!(r.body, b"[hello, world]");
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 1);
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}

/// Changes the piece it is handed (prepends `X`), then traps.
fn body_trap(name: &str) -> Plugin {
    let text = r#"(module
  (import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (data (i32.const 256) "X")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    (drop (call $set (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 256) (i32.const 1)))
    unreachable))"#;
    let bytes = wat::parse_str(text).unwrap();
    let module = PluginModule::compile(&bytes, &PluginLimits::default()).expect("compile");
    Plugin::new(
        module,
        PluginConfig {
            name: name.into(),
            ..PluginConfig::default()
        },
    )
}

#[test]
fn a_fail_open_body_plugin_that_traps_is_passed_by_once_with_the_body_as_it_came() {
    let trap = body_trap("trap");
    let table = table_with_route_plugins(vec![attach(&trap, true)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    let r = lab.exchange(c, &get("/big"));
    assert_eq!(r.status, 200);
    let big: Vec<u8> = (0..lab.big_body).map(|i| b'a' + (i % 26) as u8).collect();
    assert!(
        r.body == big,
        "the body as it came, without the guest's change"
    );
    let s = lab.edge.stats();
    // One failure for the whole body, not one per piece.
    assert_eq!((s.plugin_failures, s.plugin_failed_open), (1, 1), "{s:?}");
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}

#[test]
fn an_idle_instance_whose_heap_grew_past_half_its_limit_starts_over() {
    // Each context grows the guest's memory by a page (64 KiB), as a heap
    // that creeps with every request; the limit is 1 MiB.
    let text = r#"(module
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param $id i32) (param $parent i32)
    (if (i32.ne (local.get $parent) (i32.const 0))
      (then (drop (memory.grow (i32.const 1)))))))"#;
    let limits = PluginLimits {
        memory_bytes: 1 << 20,
        ..PluginLimits::default()
    };
    let module = PluginModule::compile(&wat::parse_str(text).unwrap(), &limits).expect("compile");
    let plugin = Plugin::new(
        module,
        PluginConfig {
            name: "creep".into(),
            ..PluginConfig::default()
        },
    );
    let mut lab = Lab::with_routes(Origin::Serving, table(1, &plugin), |_| {});
    let c = lab.connect();
    // 2 pages at start, one more per request: past 8 pages (half of 16)
    // after 7 requests, recycled at the next; 30 requests never reach the
    // limit (which would fail a request).
    for i in 0..30 {
        assert_eq!(lab.exchange(c, &get("/")).status, 200, "request {i}");
    }
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 0, "{s:?}");
    assert!(s.plugin_instances_recycled >= 3, "{s:?}");
    assert_eq!(s.plugin_instances_started, 1 + s.plugin_instances_recycled);
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}

#[test]
fn a_request_body_plugin_sees_the_body_on_its_way_up() {
    let wrapper = request_body_wrapper("req-wrap", true);
    let table = table_with_route_plugins(vec![attach(&wrapper, false)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    // A length it removed: the body goes up chunked, wrapped.
    let r = lab.exchange(
        c,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, b"got 7: [hello]", "{r:?}");
    let up = lab.origin_requests.last().unwrap().to_ascii_lowercase();
    assert!(up.contains("transfer-encoding: chunked"), "{up}");
    assert!(!up.contains("content-length"), "{up}");
    // A chunked body from the client, in two chunks: one call at its end.
    let r = lab.exchange(
        c,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    );
    assert_eq!(r.body, b"got 7: [abcde]", "{r:?}");
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 0, "{s:?}");
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}

#[test]
fn a_request_body_plugin_that_changes_a_length_it_left_in_place_fails_with_500() {
    let wrapper = request_body_wrapper("req-wrap", false);
    let table = table_with_route_plugins(vec![attach(&wrapper, false)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    let r = lab.exchange(
        c,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(r.status, 500, "{r:?}");
    assert!(
        lab.origin_bodies.iter().all(|b| b.len() <= 5),
        "nothing longer went up"
    );
    let s = lab.edge.stats();
    assert!(s.plugin_failures >= 1, "{s:?}");
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}

/// An HTTP/1.1 client gets a chunked origin's trailers: unchanged on the
/// plain path (the chunked bytes pass through), in the chunked end the
/// proxy writes when a body plugin re-frames the body (framing and
/// hop-by-hop fields left out).
#[test]
fn chunked_origin_trailers_reach_an_http1_client_with_and_without_a_body_plugin() {
    let mut lab = Lab::new(Origin::Serving);
    let c = lab.connect();
    let r = lab.exchange(c, &get("/trailers"));
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    assert_eq!(
        r.trailers,
        [
            "X-Checksum: abc",
            "Content-Length: 5",
            "Proxy-Thing: p",
            "Grpc-Status: 0"
        ]
    );

    let square = body_wrapper("square", '[', ']');
    let table = table_with_route_plugins(vec![attach(&square, false)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    let r = lab.exchange(c, &get("/trailers"));
    assert_eq!((r.status, &r.body[..]), (200, &b"[hello]"[..]));
    assert_eq!(r.trailers, ["x-checksum: abc", "grpc-status: 0"]);
    assert_eq!(lab.edge.stats().trailers_forwarded, 1);
    // Past the bound: dropped and counted, the body whole, the connection
    // goes on.
    let r = lab.exchange(c, &get("/trailers-many"));
    assert_eq!((r.status, &r.body[..]), (200, &b"[hello]"[..]));
    assert!(r.trailers.is_empty(), "{:?}", r.trailers);
    assert_eq!(lab.edge.stats().trailers_dropped, 1);
    let r = lab.exchange(c, &get("/chunked"));
    assert_eq!(r.body, b"[hello, world]");
}

/// A plugin at `proxy_on_response_trailers` reads, replaces and adds
/// trailers; the client gets its output (less the fields that never go as
/// trailers); the contexts end.
#[test]
fn a_trailers_plugin_replaces_and_adds_response_trailers() {
    let editor = trailer_editor("editor", false);
    let table = table_with_route_plugins(vec![attach(&editor, false)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    let r = lab.exchange(c, &get("/trailers"));
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    let mut got = r.trailers.clone();
    got.sort();
    assert_eq!(
        got,
        ["grpc-status: 0", "x-checksum: def", "x-plugin: yes"],
        "{:?}",
        r.trailers
    );
    // No trailers from the origin: the plugin is not called for them.
    let r = lab.exchange(c, &get("/chunked"));
    assert_eq!((r.body, r.trailers), (b"hello, world".to_vec(), vec![]));
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 0);
    assert_eq!(s.plugin_edits_ignored, 1, "content-length left out");
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}

/// A body plugin that waits for the end of the body makes the same body
/// whether or not a trailers plugin is attached beside it: it has no
/// trailers callback, so its last call says the body ended.
#[test]
fn a_body_plugin_beside_a_trailers_plugin_still_sees_the_end_of_the_body() {
    let square = body_wrapper("square", '[', ']');
    let editor = trailer_editor("editor", false);
    let table =
        table_with_route_plugins(vec![attach(&square, false), attach(&editor, false)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    let r = lab.exchange(c, &get("/trailers"));
    assert_eq!((r.status, &r.body[..]), (200, &b"[hello]"[..]), "{r:?}");
    let mut got = r.trailers.clone();
    got.sort();
    assert_eq!(got, ["grpc-status: 0", "x-checksum: def", "x-plugin: yes"]);
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 0);
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}

/// A plugin that traps at the trailers: fail-closed, the response is cut
/// (no chunked end); under `fail_open` the trailers go on as they came,
/// one failure counted.
#[test]
fn a_trailers_plugin_that_traps_cuts_the_response_unless_fail_open() {
    let trap = trailer_editor("trap", true);
    let table = table_with_route_plugins(vec![attach(&trap, false)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    lab.send(c, &get("/trailers"));
    let raw = lab.read_until(c, 3_000, |b| Response::parse(b).is_some());
    // The reset may take the unsent head with it: no whole response.
    assert!(
        Response::parse(&raw).is_none(),
        "a cut body, not a whole response: {:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(
        matches!(
            lab.client_state(c),
            tcp::State::Closed | tcp::State::CloseWait | tcp::State::TimeWait
        ),
        "{:?}",
        lab.client_state(c)
    );
    let s = lab.edge.stats();
    assert_eq!((s.plugin_failures, s.plugin_failed_open), (1, 0));
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);

    let table = table_with_route_plugins(vec![attach(&trap, true)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    let r = lab.exchange(c, &get("/trailers"));
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    assert_eq!(r.trailers, ["x-checksum: abc", "grpc-status: 0"]);
    let s = lab.edge.stats();
    assert_eq!((s.plugin_failures, s.plugin_failed_open), (1, 1));
}

/// An HTTP/1.1 client's chunked trailers go through
/// `proxy_on_request_trailers` and up in the chunked trailer section as the
/// plugin left them.
#[test]
fn a_chunked_requests_trailers_go_through_the_trailers_plugin_to_the_origin() {
    let editor = trailer_editor("editor", false);
    let table = table_with_route_plugins(vec![attach(&editor, false)], vec![]);
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let c = lab.connect();
    let r = lab.exchange(
        c,
        b"POST /upload HTTP/1.1\r\nHost: x.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n",
    );
    assert_eq!((r.status, &r.body[..]), (200, &b"got 5: hello"[..]));
    let sent = String::from_utf8_lossy(&lab.origin_bodies[0]).to_string();
    assert!(sent.contains("x-checksum: def\r\n"), "{sent:?}");
    assert!(sent.contains("x-plugin: yes\r\n"), "{sent:?}");
    assert!(!sent.contains("abc"), "{sent:?}");
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 0, "{s:?}");
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}
