//! `[cache]` and a route's `cache`: what compiles, and each diagnostic
//! with its file:line:col and field.

use std::time::Duration;

use ferrogate_proxy::cache::RouteCache;
use ferrogate_proxy::cache::core::{CachePolicyConfig, KeyConfig, StoreConfig};

use super::*;

/// The proxying route's keys end on line 18; what is added follows.
const BASE: &str = r#"
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

fn compiled(text: &str) -> Compiled {
    compile(Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

/// `cache = <value>` on the proxying route (line 19).
fn route_cache(value: &str) -> String {
    format!("{BASE}cache = {value}\n")
}

/// A `[cache]` table (its keys from line 20).
fn section(keys: &str) -> String {
    format!("{BASE}[cache]\n{keys}\n")
}

fn the_route_cache(c: &Compiled) -> Option<Arc<RouteCache>> {
    c.engine.routes.listeners[0].routes()[1].cache.clone()
}

/// One error, starting with `prefix` and containing `text`.
fn one_error(file: &str, prefix: &str, text: &str) {
    let e = errors(file);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(prefix) && e[0].contains(text),
        "want {prefix}… {text:?}, got {e:?}"
    );
}

#[test]
fn without_cache_keys_routes_do_not_cache_and_the_store_has_defaults() {
    let c = compiled(BASE);
    assert!(the_route_cache(&c).is_none());
    let s = &c.engine.cache;
    let d = StoreConfig::default();
    assert_eq!(
        (s.store.max_bytes, s.store.shards, s.store.max_object_bytes),
        (d.max_bytes, d.shards, d.max_object_bytes)
    );
    assert_eq!(s.store.tag_header.as_deref(), Some("surrogate-key"));
    assert_eq!(s.status_header.as_deref(), Some("x-cache"));
    assert_eq!(s.lock_timeout, Duration::from_secs(5));
    assert_eq!(c.engine.cache_key_seed, None, "random at engine start");
}

#[test]
fn cache_true_is_the_defaults_and_false_is_none() {
    let c = compiled(&route_cache("true"));
    let rc = the_route_cache(&c).expect("cached");
    assert_eq!(rc.policy, CachePolicyConfig::default());
    assert_eq!(rc.key(), RouteCache::default().key());
    assert!(the_route_cache(&compiled(&route_cache("false"))).is_none());
}

#[test]
fn a_full_cache_config_compiles_into_the_store_settings_and_the_route_cache() {
    let text = format!(
        "{BASE}cache = {{ ttl = 60, min_ttl = 5, max_ttl = 3600, heuristic_percent = 20, heuristic_max = 600, ignore_params = [\"utm_source\", \"fbclid\"], key_headers = [\"Accept-Language\"], ignore_request_no_cache = true, ignore_response_no_cache = true, store_set_cookie = true }}\n\
         [cache]\nmax_bytes = 67108864\nmax_object_bytes = 1048576\nshards = 8\ntag_header = \"Cache-Tag\"\nstatus_header = false\nlock_timeout_ms = 250\nkey_seed = \"00ff\"\n"
    );
    let c = compiled(&text);
    let rc = the_route_cache(&c).expect("cached");
    assert_eq!(
        rc.policy,
        CachePolicyConfig {
            ttl_override: Some(60),
            min_ttl: 5,
            max_ttl: Some(3600),
            heuristic_percent: 20,
            heuristic_max: 600,
            ignore_response_no_cache: true,
            ignore_request_no_cache: true,
            store_set_cookie: true,
        }
    );
    assert_eq!(
        rc.key(),
        RouteCache::new(
            CachePolicyConfig::default(),
            KeyConfig {
                ignore_params: vec!["utm_source".into(), "fbclid".into()],
                ignore_query: false,
                headers: vec!["accept-language".into()],
            },
        )
        .key()
    );
    let s = &c.engine.cache;
    assert_eq!(
        (s.store.max_bytes, s.store.shards, s.store.max_object_bytes),
        (64 << 20, 8, 1 << 20)
    );
    assert_eq!(s.store.tag_header.as_deref(), Some("Cache-Tag"));
    assert_eq!(s.status_header, None);
    assert_eq!(s.lock_timeout, Duration::from_millis(250));
    assert_eq!(c.engine.cache_key_seed, Some(0xff));
    assert_eq!(
        compiled(&section("key_seed = 42")).engine.cache_key_seed,
        Some(42)
    );
    // "" is none as false is; ignore_query alone.
    let c = compiled(&format!(
        "{}\n{}",
        route_cache("{ ignore_query = true }"),
        "[cache]\ntag_header = \"\"\nstatus_header = \"X-Edge-Cache\""
    ));
    assert!(the_route_cache(&c).unwrap().key().ignore_query);
    assert_eq!(c.engine.cache.store.tag_header, None);
    assert_eq!(
        c.engine.cache.status_header.as_deref(),
        Some("X-Edge-Cache")
    );
}

#[test]
fn a_route_cache_sub_table_compiles_and_its_unknown_key_is_located() {
    let c = compiled(&format!(
        "{BASE}[listeners.routes.cache]\nttl = 30\nkey_headers = [\"x-tenant\"]\n"
    ));
    let rc = the_route_cache(&c).expect("cached");
    assert_eq!(rc.policy.ttl_override, Some(30));
    assert_eq!(
        rc.key(),
        RouteCache::new(
            CachePolicyConfig::default(),
            KeyConfig {
                headers: vec!["x-tenant".into()],
                ..KeyConfig::default()
            },
        )
        .key()
    );
    let e = errors(&format!(
        "{BASE}[listeners.routes.cache]\nttl = 30\nttll = 3\n"
    ));
    assert!(
        e.len() == 1 && e[0].starts_with("t.toml:21:1: ttll:") && e[0].contains("unknown field"),
        "{e:?}"
    );
}

#[test]
fn unknown_keys_are_located() {
    let e = errors(&route_cache("{ ttl = 5, tll = 5 }"));
    assert!(
        e.len() == 1 && e[0].starts_with("t.toml:19:") && e[0].contains("unknown field `tll`"),
        "{e:?}"
    );
    let e = errors(&section("max_bytes = 1024\nmax_byte = 1"));
    assert!(
        e.len() == 1
            && e[0].starts_with("t.toml:21:1: max_byte:")
            && e[0].contains("unknown field"),
        "{e:?}"
    );
    let e = errors(&route_cache("\"yes\""));
    assert!(
        e.len() == 1 && e[0].starts_with("t.toml:19:") && e[0].contains("true, false or a table"),
        "{e:?}"
    );
}

#[test]
fn cache_on_a_route_that_responds_itself_is_refused() {
    let text = BASE.replace(
        "respond = { status = 200, body = \"hi\" }",
        "respond = { status = 200, body = \"hi\" }\ncache = true",
    );
    one_error(
        &text,
        "t.toml:17:9: listeners[0].routes[0].cache:",
        "responds itself",
    );
    // `cache = false` there says nothing worth refusing.
    let text = BASE.replace(
        "respond = { status = 200, body = \"hi\" }",
        "respond = { status = 200, body = \"hi\" }\ncache = false",
    );
    assert_eq!(errors(&text), Vec::<String>::new());
}

#[test]
fn cache_on_a_tcp_or_udp_listener_is_refused() {
    for proto in ["tcp", "udp"] {
        let text = format!(
            "{BASE}[[listeners]]\nport = 6379\nprotocol = \"{proto}\"\nupstream = \"origin\"\n[[listeners.routes]]\nupstream = \"origin\"\ncache = true\n"
        );
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|l| l
                    .starts_with("t.toml:25:9: listeners[1].routes[0].cache: only HTTP listeners")),
            "{proto}: {e:?}"
        );
    }
}

#[test]
fn sizes_must_be_positive_and_fit_each_other() {
    let cases = [
        (
            "max_bytes = 0",
            "t.toml:20:13: cache.max_bytes:",
            "must be 1..=",
        ),
        (
            "max_bytes = -5",
            "t.toml:20:13: cache.max_bytes:",
            "must be 1..=",
        ),
        (
            "shards = 0",
            "t.toml:20:10: cache.shards:",
            "must be 1..=1024",
        ),
        (
            "shards = -1",
            "t.toml:20:10: cache.shards:",
            "must be 1..=1024",
        ),
        (
            "max_object_bytes = 0",
            "t.toml:20:20: cache.max_object_bytes:",
            "at least 1 byte",
        ),
        (
            "max_object_bytes = -1",
            "t.toml:20:20: cache.max_object_bytes:",
            "at least 1 byte",
        ),
        (
            "max_bytes = 1000\nmax_object_bytes = 1001",
            "t.toml:21:20: cache.max_object_bytes:",
            "larger than cache.max_bytes (1000)",
        ),
        (
            "max_bytes = 1048576\nshards = 4\nmax_object_bytes = 524288",
            "t.toml:22:20: cache.max_object_bytes:",
            "one shard's share of cache.max_bytes (262144",
        ),
        (
            "lock_timeout_ms = 0",
            "t.toml:20:19: cache.lock_timeout_ms:",
            "must be 1..=600000",
        ),
        (
            "key_seed = -1",
            "t.toml:20:12: cache.key_seed:",
            "hex digits",
        ),
        (
            "key_seed = \"xyz\"",
            "t.toml:20:12: cache.key_seed:",
            "hex digits",
        ),
    ];
    for (keys, prefix, text) in cases {
        one_error(&section(keys), prefix, text);
    }
    // A small store keeps objects up to a shard's share by default.
    let c = compiled(&section("max_bytes = 1048576\nshards = 4"));
    assert_eq!(c.engine.cache.store.max_object_bytes, 262_144);
}

#[test]
fn store_errors_are_reported_beside_route_errors() {
    let text = format!("{BASE}cache = {{ heuristic_percent = 101 }}\n[cache]\nshards = 0\n");
    let e = errors(&text);
    assert!(
        e.len() == 2
            && e[0].contains("routes[1].cache.heuristic_percent")
            && e[1].starts_with("t.toml:21:10: cache.shards"),
        "{e:?}"
    );
}

#[test]
fn header_names_are_checked() {
    let cases = [
        (
            section("tag_header = \"surrogate key\""),
            "t.toml:20:14: cache.tag_header:",
            "not a header name",
        ),
        (
            section("status_header = \"x:cache\""),
            "t.toml:20:17: cache.status_header:",
            "not a header name",
        ),
        (
            section("status_header = true"),
            "t.toml:20:17: cache.status_header:",
            "a header name",
        ),
        (
            route_cache("{ key_headers = [\"accept\", \"bad header\"] }"),
            "t.toml:19:",
            "listeners[0].routes[1].cache.key_headers[1]: \"bad header\" is not a header name",
        ),
        (
            route_cache("{ key_headers = [\"Accept\", \"accept\"] }"),
            "t.toml:19:",
            "key_headers[1]: \"accept\" is listed twice",
        ),
        (
            route_cache("{ key_headers = [\"X-Forwarded-For\"] }"),
            "t.toml:19:",
            "key_headers[0]: \"X-Forwarded-For\" is set or removed by the proxy",
        ),
        (
            route_cache("{ ignore_params = [\"\"] }"),
            "t.toml:19:",
            "ignore_params[0]: \"\" is not a query parameter name",
        ),
    ];
    for (file, prefix, text) in cases {
        one_error(&file, prefix, text);
    }
}

#[test]
fn route_cache_values_are_checked() {
    let cases = [
        ("{ ttl = -1 }", "cache.ttl: must be 0..="),
        (
            "{ min_ttl = 10, max_ttl = 5 }",
            "cache.max_ttl: smaller than min_ttl (10)",
        ),
        (
            "{ heuristic_percent = 101 }",
            "cache.heuristic_percent: must be 0..=100",
        ),
        (
            "{ max_ttl = 40000000 }",
            "cache.max_ttl: must be 0..=31536000",
        ),
        (
            "{ ignore_query = true, ignore_params = [\"a\"] }",
            "cache.ignore_params: has no effect with ignore_query",
        ),
    ];
    for (value, text) in cases {
        one_error(&route_cache(value), "t.toml:19:", text);
    }
}

/// `[cache.disk]` (its keys from line 21).
fn disk_section(keys: &str) -> String {
    section(&format!("[cache.disk]\n{keys}"))
}

#[test]
fn a_disk_tier_compiles_with_its_directory_relative_to_the_config() {
    let text = disk_section("dir = \"cache\"\nmax_bytes = 1048576\nfsync = true");
    let c = compile(Path::new("/etc/ferrogate/edge.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let d = c.engine.cache.disk.as_ref().expect("a disk tier");
    assert_eq!(d.dir, Path::new("/etc/ferrogate/cache"));
    assert_eq!(
        (d.max_bytes, d.max_object_bytes, d.fsync),
        (1_048_576, 131_072, true)
    );
    let c = compiled(&disk_section(
        "dir = \"/var/cache/fg\"\nmax_bytes = 1048576\nmax_object_bytes = 4096",
    ));
    let d = c.engine.cache.disk.as_ref().expect("a disk tier");
    assert_eq!(d.dir, Path::new("/var/cache/fg"), "an absolute dir stays");
    assert_eq!((d.max_object_bytes, d.fsync), (4096, false));
    assert!(compiled(BASE).engine.cache.disk.is_none());
    // A relative config path: the directory is made absolute (against the
    // working directory the config path is relative to).
    let c = compiled(&disk_section("dir = \"d\"\nmax_bytes = 10"));
    let d = c.engine.cache.disk.as_ref().expect("a disk tier");
    assert_eq!(d.dir, std::env::current_dir().unwrap().join("d"));
}

#[test]
fn disk_tier_diagnostics_name_their_field() {
    let not_a_dir = std::env::temp_dir().join(format!("fg-not-a-dir-{}", std::process::id()));
    std::fs::write(&not_a_dir, b"x").unwrap();
    let file_dir = format!(
        "dir = {:?}\nmax_bytes = 10",
        not_a_dir.display().to_string()
    );
    let cases = [
        (
            "dir = \"\"\nmax_bytes = 10",
            "t.toml:21:7: cache.disk.dir:",
            "must name a directory",
        ),
        (
            "dir = \"d\"\nmax_bytes = 0",
            "t.toml:22:13: cache.disk.max_bytes:",
            "must be 1..=",
        ),
        (
            "dir = \"d\"\nmax_bytes = 10\nmax_object_bytes = 11",
            "t.toml:23:20: cache.disk.max_object_bytes:",
            "must be 1..=cache.disk.max_bytes (10)",
        ),
        (
            &file_dir,
            "t.toml:21:7: cache.disk.dir:",
            "is not a directory",
        ),
        ("dir = \"d\"", "t.toml:20:", "max_bytes"),
        (
            "dir = \"d\"\nmax_bytes = 10\nsize = 3",
            "t.toml:23:",
            "size",
        ),
    ];
    for (keys, prefix, text) in cases {
        one_error(&disk_section(keys), prefix, text);
    }
    let _ = std::fs::remove_file(&not_a_dir);
}
