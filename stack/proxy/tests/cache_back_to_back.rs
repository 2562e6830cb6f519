//! The response cache in the proxy's request path, back to back in memory
//! (`common/`): hits, HEAD from GET, revalidation with 304, replacement,
//! stale-if-error, coalesced misses, what is never stored, chunked and
//! large bodies, Vary, purge, only-if-cached.

mod common;

use common::*;
use ferrogate_proxy::cache::core::PurgeMode;
use ferrogate_proxy::cache::{Purge, PurgeTarget, RouteCache};

fn caching_routes() -> Arc<RouteTable> {
    let upstream = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    Arc::new(RouteTable::new(
        1,
        vec![Listener::new(
            80,
            vec![
                Route {
                    path: PathMatch::Prefix("/cached".into()),
                    cache: Some(Arc::new(RouteCache::default())),
                    ..Route::new("cached", RouteAction::Proxy(upstream.clone()))
                },
                Route::new("origin", RouteAction::Proxy(upstream.clone())),
            ],
        )],
        vec![upstream],
    ))
}

fn lab() -> Lab {
    Lab::with_routes(Origin::Serving, caching_routes(), |_| {})
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n").into_bytes()
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn origin_hits(lab: &Lab, path: &str) -> usize {
    lab.origin_requests
        .iter()
        .filter(|r| r.split(' ').nth(1) == Some(path))
        .count()
}

#[test]
fn second_get_is_a_hit_served_without_the_origin() {
    let mut lab = lab();
    let c = lab.connect();
    let r1 = lab.exchange(c, &get("/cached/a"));
    assert_eq!(r1.status, 200);
    assert_eq!(header(&r1, "x-cache"), Some("MISS"), "{}", r1.head);
    let r2 = lab.exchange(c, &get("/cached/a"));
    assert_eq!(r2.status, 200);
    assert_eq!(header(&r2, "x-cache"), Some("HIT"), "{}", r2.head);
    assert_eq!(r2.body, r1.body);
    assert_eq!(header(&r2, "etag"), Some("\"v1\""));
    assert!(header(&r2, "age").is_some(), "{}", r2.head);
    assert_eq!(origin_hits(&lab, "/cached/a"), 1);
    // Another client, another connection: the same object.
    let c2 = lab.connect();
    let r3 = lab.exchange(c2, &get("/cached/a"));
    assert_eq!(header(&r3, "x-cache"), Some("HIT"));
    assert_eq!(origin_hits(&lab, "/cached/a"), 1);
    let s = lab.edge.stats();
    assert_eq!((s.cache.hit, s.cache.miss), (2, 1));
    assert_eq!(s.cache.bytes_served, 2 * r1.body.len() as u64);
}

#[test]
fn head_is_served_from_a_stored_get() {
    let mut lab = lab();
    let c = lab.connect();
    let r1 = lab.exchange(c, &get("/cached/h"));
    lab.send(c, b"HEAD /cached/h HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let raw = lab.read_until(c, 2_000, |b| find(b, b"\r\n\r\n").is_some());
    let head = String::from_utf8_lossy(&raw).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-cache: hit"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}", r1.body.len())),
        "{head}"
    );
    assert!(
        head.ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {head}"
    );
    // The connection goes on with the next request.
    let r3 = lab.exchange(c, &get("/cached/h"));
    assert_eq!(header(&r3, "x-cache"), Some("HIT"));
    assert_eq!(origin_hits(&lab, "/cached/h"), 1);
}

#[test]
fn stale_object_is_revalidated_with_its_etag_and_a_304_refreshes_it() {
    let mut lab = lab();
    lab.cache_control = "max-age=2".into();
    // Ages are whole seconds: with max-age=1 a hit right after a store
    // or a refresh is stale whenever the wall clock crosses a second.
    let c = lab.connect();
    let r1 = lab.exchange(c, &get("/cached/r"));
    assert_eq!(header(&r1, "x-cache"), Some("MISS"));
    for _ in 0..30 {
        lab.step(100);
    }
    let r2 = lab.exchange(c, &get("/cached/r"));
    assert_eq!(r2.status, 200, "{}", r2.head);
    assert_eq!(header(&r2, "x-cache"), Some("REVALIDATED"), "{}", r2.head);
    assert_eq!(r2.body, r1.body);
    let conditional = lab.origin_requests.last().unwrap().to_ascii_lowercase();
    assert!(
        conditional.contains("if-none-match: \"v1\""),
        "{conditional}"
    );
    // Fresh again after the 304.
    let r3 = lab.exchange(c, &get("/cached/r"));
    assert_eq!(header(&r3, "x-cache"), Some("HIT"), "{}", r3.head);
    assert_eq!(origin_hits(&lab, "/cached/r"), 2);
    assert_eq!(lab.edge.stats().cache.revalidated, 1);
}

#[test]
fn a_changed_resource_replaces_the_stored_one() {
    let mut lab = lab();
    lab.cache_control = "max-age=1".into();
    let c = lab.connect();
    let r1 = lab.exchange(c, &get("/cached/x"));
    assert!(String::from_utf8_lossy(&r1.body).starts_with("v1"));
    lab.cached_version = 2;
    for _ in 0..30 {
        lab.step(100);
    }
    lab.cache_control = "max-age=60".into();
    let r2 = lab.exchange(c, &get("/cached/x"));
    assert_eq!(header(&r2, "x-cache"), Some("EXPIRED"), "{}", r2.head);
    assert!(String::from_utf8_lossy(&r2.body).starts_with("v2"));
    let r3 = lab.exchange(c, &get("/cached/x"));
    assert_eq!(header(&r3, "x-cache"), Some("HIT"));
    assert!(String::from_utf8_lossy(&r3.body).starts_with("v2"));
}

#[test]
fn stale_if_error_serves_the_stored_response_when_the_origin_fails() {
    let mut lab = lab();
    lab.cache_control = "max-age=1, stale-if-error=600".into();
    let c = lab.connect();
    let r1 = lab.exchange(c, &get("/cached/e"));
    for _ in 0..30 {
        lab.step(100);
    }
    lab.cached_fail = true;
    let r2 = lab.exchange(c, &get("/cached/e"));
    assert_eq!(r2.status, 200, "{}", r2.head);
    assert_eq!(header(&r2, "x-cache"), Some("STALE"), "{}", r2.head);
    assert_eq!(r2.body, r1.body);
    // Without stale-if-error the origin's error goes through.
    lab.cached_fail = false;
    lab.cache_control = "max-age=1".into();
    let _ = lab.exchange(c, &get("/cached/e2"));
    for _ in 0..30 {
        lab.step(100);
    }
    lab.cached_fail = true;
    let r3 = lab.exchange(c, &get("/cached/e2"));
    assert_eq!(r3.status, 503, "{}", r3.head);
}

#[test]
fn concurrent_misses_for_one_key_make_one_upstream_request() {
    let mut lab = lab();
    let clients: Vec<_> = (0..40).map(|_| lab.connect()).collect();
    for _ in 0..20 {
        lab.step(1);
    }
    for &c in &clients {
        lab.sockets
            .get_mut::<tcp::Socket>(c)
            .send_slice(&get("/cached/hot"))
            .unwrap();
    }
    let mut bodies = Vec::new();
    for &c in &clients {
        let raw = lab.read_until(c, 3_000, |b| Response::parse(b).is_some());
        let r = Response::parse(&raw).expect("response");
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        origin_hits(&lab, "/cached/hot"),
        1,
        "{:?}",
        lab.origin_requests
    );
    let s = lab.edge.stats().cache;
    assert_eq!(s.miss, 1, "{s:?}");
    assert_eq!(s.hit, 39, "{s:?}");
}

#[test]
fn responses_the_policy_refuses_are_not_stored() {
    for cc in ["no-store", "private", "max-age=0", "no-cache, max-age=0"] {
        let mut lab = lab();
        lab.cache_control = cc.into();
        let c = lab.connect();
        let r1 = lab.exchange(c, &get("/cached/n"));
        assert_eq!(header(&r1, "x-cache"), Some("MISS"), "{cc}");
        let r2 = lab.exchange(c, &get("/cached/n"));
        assert_ne!(header(&r2, "x-cache"), Some("HIT"), "{cc}: {}", r2.head);
        assert_eq!(origin_hits(&lab, "/cached/n"), 2, "{cc}");
    }
    // A route without cache: no X-Cache at all.
    let mut lab = lab();
    let c = lab.connect();
    let r = lab.exchange(c, &get("/other"));
    assert_eq!(header(&r, "x-cache"), None);
    // POST on a caching route: bypass.
    let r = lab.exchange(
        c,
        b"POST /cached/p HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_eq!(header(&r, "x-cache"), Some("BYPASS"), "{}", r.head);
}

#[test]
fn a_chunked_origin_body_is_stored_without_its_framing() {
    let mut lab = lab();
    let c = lab.connect();
    let r1 = lab.exchange(c, &get("/cached/chunked"));
    assert_eq!(header(&r1, "x-cache"), Some("MISS"));
    let r2 = lab.exchange(c, &get("/cached/chunked"));
    assert_eq!(header(&r2, "x-cache"), Some("HIT"), "{}", r2.head);
    assert_eq!(r2.body, r1.body);
    assert_eq!(
        header(&r2, "content-length"),
        Some(r1.body.len().to_string().as_str())
    );
    assert!(header(&r2, "transfer-encoding").is_none(), "{}", r2.head);
}

#[test]
fn a_large_body_streams_from_the_store_to_a_slow_client() {
    let mut lab = lab();
    let c = lab.connect();
    let r1 = lab.exchange(c, &get("/cached/big"));
    assert_eq!(r1.body.len(), 200_000);
    // A client with a small receive window: the store's chunks go out as
    // it takes them.
    let small = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 4096]),
        tcp::SocketBuffer::new(vec![0; 4096]),
    );
    let c2 = lab.connect_with(80, small);
    let r2 = lab.exchange(c2, &get("/cached/big"));
    assert_eq!(header(&r2, "x-cache"), Some("HIT"));
    assert_eq!(r2.body, r1.body);
    assert_eq!(origin_hits(&lab, "/cached/big"), 1);
}

#[test]
fn vary_keeps_a_variant_per_listed_request_header() {
    let mut lab = lab();
    let c = lab.connect();
    let req = |lang: &str| {
        format!("GET /cached/vary HTTP/1.1\r\nHost: example.com\r\nAccept-Language: {lang}\r\n\r\n")
            .into_bytes()
    };
    let en = lab.exchange(c, &req("en"));
    let de = lab.exchange(c, &req("de"));
    assert!(String::from_utf8_lossy(&en.body).ends_with("en"));
    assert!(String::from_utf8_lossy(&de.body).ends_with("de"));
    assert_eq!(header(&de, "x-cache"), Some("MISS"));
    let en2 = lab.exchange(c, &req("en"));
    let de2 = lab.exchange(c, &req("de"));
    assert_eq!(header(&en2, "x-cache"), Some("HIT"));
    assert_eq!(header(&de2, "x-cache"), Some("HIT"));
    assert_eq!(en2.body, en.body);
    assert_eq!(de2.body, de.body);
    assert_eq!(origin_hits(&lab, "/cached/vary"), 2);
}

#[test]
fn purges_hard_and_light_by_url_prefix_and_tag() {
    let mut lab = lab();
    let c = lab.connect();
    for p in ["/cached/p/1", "/cached/p/2", "/cached/q"] {
        let _ = lab.exchange(c, &get(p));
    }
    let cache = lab.edge.cache().clone();
    let hard = |target| Purge {
        mode: PurgeMode::Hard,
        target,
    };
    assert_eq!(
        cache
            .purge(&hard(PurgeTarget::Url(
                "http://example.com/cached/p/1".into()
            )))
            .unwrap()
            .memory,
        1
    );
    let r = lab.exchange(c, &get("/cached/p/1"));
    assert_eq!(header(&r, "x-cache"), Some("MISS"));
    let r = lab.exchange(c, &get("/cached/p/2"));
    assert_eq!(header(&r, "x-cache"), Some("HIT"));
    assert_eq!(
        cache
            .purge(&hard(PurgeTarget::Prefix(
                "http://example.com/cached/p/".into()
            )))
            .unwrap()
            .memory,
        2
    );
    let r = lab.exchange(c, &get("/cached/p/2"));
    assert_eq!(header(&r, "x-cache"), Some("MISS"));
    // By tag (Surrogate-Key: all cached-q).
    assert_eq!(
        cache
            .purge(&hard(PurgeTarget::Tag("cached-q".into())))
            .unwrap()
            .memory,
        1
    );
    let r = lab.exchange(c, &get("/cached/q"));
    assert_eq!(header(&r, "x-cache"), Some("MISS"));
    // Light: the next request revalidates (a 304 keeps the body).
    let n = cache
        .purge(&Purge {
            mode: PurgeMode::Light,
            target: PurgeTarget::Url("http://example.com/cached/q".into()),
        })
        .unwrap();
    assert_eq!(n.memory, 1);
    let before = origin_hits(&lab, "/cached/q");
    let r = lab.exchange(c, &get("/cached/q"));
    assert_ne!(header(&r, "x-cache"), Some("HIT"), "{}", r.head);
    assert_eq!(origin_hits(&lab, "/cached/q"), before + 1);
    assert!(
        cache
            .purge(&hard(PurgeTarget::Url("ftp://x/".into())))
            .is_err()
    );
}

#[test]
fn only_if_cached_without_a_stored_response_is_504() {
    let mut lab = lab();
    let c = lab.connect();
    let r = lab.exchange(
        c,
        b"GET /cached/o HTTP/1.1\r\nHost: example.com\r\nCache-Control: only-if-cached\r\n\r\n",
    );
    assert_eq!(r.status, 504, "{}", r.head);
    assert_eq!(origin_hits(&lab, "/cached/o"), 0);
    let _ = lab.exchange(c, &get("/cached/o"));
    let r = lab.exchange(
        c,
        b"GET /cached/o HTTP/1.1\r\nHost: example.com\r\nCache-Control: only-if-cached\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(header(&r, "x-cache"), Some("HIT"));
}

#[test]
fn client_validators_are_not_forwarded_on_cache_fetches() {
    let mut lab = lab();
    let c = lab.connect();
    let r = lab.exchange(
        c,
        b"GET /cached/v HTTP/1.1\r\nHost: example.com\r\nIf-None-Match: \"v1\"\r\n\r\n",
    );
    // The cache needs the full response to store it.
    assert_eq!(r.status, 200, "{}", r.head);
    let sent = lab.origin_requests.last().unwrap().to_ascii_lowercase();
    assert!(!sent.contains("if-none-match"), "{sent}");
    let r2 = lab.exchange(c, &get("/cached/v"));
    assert_eq!(header(&r2, "x-cache"), Some("HIT"));
}

#[test]
fn range_requests_are_served_from_a_complete_stored_response() {
    let mut lab = lab();
    let c = lab.connect();
    let range = |r: &str, extra: &str| {
        format!("GET /cached/big HTTP/1.1\r\nHost: example.com\r\nRange: {r}\r\n{extra}\r\n")
            .into_bytes()
    };
    // Cold: upstream untouched (the sim origin ignores Range), not stored.
    let r0 = lab.exchange(c, &range("bytes=0-9", ""));
    assert_eq!(header(&r0, "x-cache"), Some("BYPASS"), "{}", r0.head);
    let full = lab.exchange(c, &get("/cached/big"));
    assert_eq!(full.body.len(), 200_000);
    assert_eq!(origin_hits(&lab, "/cached/big"), 2);
    // A range across the stored chunks.
    let r = lab.exchange(c, &range("bytes=70000-140001", ""));
    assert_eq!(r.status, 206, "{}", r.head);
    assert_eq!(
        header(&r, "content-range"),
        Some("bytes 70000-140001/200000")
    );
    assert_eq!(r.body, full.body[70_000..=140_001]);
    assert_eq!(header(&r, "x-cache"), Some("HIT"));
    // Suffix and open-ended ranges.
    let r = lab.exchange(c, &range("bytes=-5", ""));
    assert_eq!((r.status, &r.body[..]), (206, &full.body[199_995..]));
    let r = lab.exchange(c, &range("bytes=199998-", ""));
    assert_eq!((r.status, &r.body[..]), (206, &full.body[199_998..]));
    // If-Range naming another version: the whole response.
    let r = lab.exchange(c, &range("bytes=0-9", "If-Range: \"v0\"\r\n"));
    assert_eq!((r.status, r.body.len()), (200, 200_000));
    let r = lab.exchange(c, &range("bytes=0-9", "If-Range: \"v1\"\r\n"));
    assert_eq!((r.status, &r.body[..]), (206, &full.body[..10]));
    // Several ranges, or none satisfiable: the origin answers.
    let before = origin_hits(&lab, "/cached/big");
    let r = lab.exchange(c, &range("bytes=0-1,5-6", ""));
    assert_eq!(header(&r, "x-cache"), Some("BYPASS"));
    let r = lab.exchange(c, &range("bytes=300000-", ""));
    assert_eq!(header(&r, "x-cache"), Some("BYPASS"));
    assert_eq!(origin_hits(&lab, "/cached/big"), before + 2);
    // The connection is still in step.
    let r = lab.exchange(c, &get("/cached/big"));
    assert_eq!(r.body, full.body);
}

/// Two caching routes for one path, told apart by a header, on two
/// listeners: each keeps its own objects.
#[test]
fn routes_and_listeners_never_share_objects() {
    let upstream = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    let cached = |name: &str, mobile: bool| Route {
        path: PathMatch::Prefix("/cached".into()),
        headers: if mobile {
            vec![ferrogate_proxy::HeaderMatch {
                name: "x-device".into(),
                value: Some("mobile".into()),
            }]
        } else {
            vec![]
        },
        cache: Some(Arc::new(RouteCache::default())),
        ..Route::new(name, RouteAction::Proxy(upstream.clone()))
    };
    let routes = Arc::new(RouteTable::new(
        1,
        vec![
            Listener::new(80, vec![cached("mobile", true), cached("desktop", false)]),
            Listener::new(81, vec![cached("desktop", false)]),
        ],
        vec![upstream.clone()],
    ));
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let c = lab.connect();
    let mobile = b"GET /cached/s HTTP/1.1\r\nHost: example.com\r\nX-Device: mobile\r\n\r\n";
    assert_eq!(header(&lab.exchange(c, mobile), "x-cache"), Some("MISS"));
    assert_eq!(
        header(&lab.exchange(c, &get("/cached/s")), "x-cache"),
        Some("MISS")
    );
    assert_eq!(header(&lab.exchange(c, mobile), "x-cache"), Some("HIT"));
    let c81 = lab.connect_to(81);
    assert_eq!(
        header(&lab.exchange(c81, &get("/cached/s")), "x-cache"),
        Some("MISS")
    );
    assert_eq!(
        header(&lab.exchange(c81, &get("/cached/s")), "x-cache"),
        Some("HIT")
    );
    assert_eq!(origin_hits(&lab, "/cached/s"), 3);
}

#[test]
fn a_304_for_another_version_fails_the_exchange_and_drops_the_object() {
    let mut lab = lab();
    lab.cache_control = "max-age=1".into();
    let c = lab.connect();
    let _ = lab.exchange(c, &get("/cached/m"));
    for _ in 0..30 {
        lab.step(100);
    }
    lab.cached_304_etag = Some("\"other\"".into());
    let r = lab.exchange(c, &get("/cached/m"));
    assert_eq!(
        r.status, 502,
        "never a 304 the client did not ask for: {}",
        r.head
    );
    lab.cached_304_etag = None;
    let c = lab.connect();
    let r = lab.exchange(c, &get("/cached/m"));
    assert_eq!(
        (r.status, header(&r, "x-cache")),
        (200, Some("MISS")),
        "{}",
        r.head
    );
}

#[test]
fn a_304_that_makes_the_response_private_is_served_once_and_evicted() {
    let mut lab = lab();
    lab.cache_control = "max-age=1".into();
    let c = lab.connect();
    let r1 = lab.exchange(c, &get("/cached/pv"));
    for _ in 0..30 {
        lab.step(100);
    }
    lab.cache_control = "private, max-age=60".into();
    let r2 = lab.exchange(c, &get("/cached/pv"));
    assert_eq!((r2.status, &r2.body), (200, &r1.body));
    let r3 = lab.exchange(c, &get("/cached/pv"));
    assert_eq!(header(&r3, "x-cache"), Some("MISS"), "{}", r3.head);
    let r4 = lab.exchange(c, &get("/cached/pv"));
    assert_eq!(
        header(&r4, "x-cache"),
        Some("MISS"),
        "private: never stored"
    );
}

#[test]
fn unsafe_methods_invalidate_their_target_on_success() {
    let mut lab = lab();
    let c = lab.connect();
    let _ = lab.exchange(c, &get("/cached/u"));
    assert_eq!(
        header(&lab.exchange(c, &get("/cached/u")), "x-cache"),
        Some("HIT")
    );
    let r = lab.exchange(
        c,
        b"PUT /cached/u HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!((r.status, header(&r, "x-cache")), (200, Some("BYPASS")));
    // Marked stale: the next request revalidates with the origin.
    let before = origin_hits(&lab, "/cached/u");
    assert_eq!(
        header(&lab.exchange(c, &get("/cached/u")), "x-cache"),
        Some("REVALIDATED")
    );
    assert_eq!(origin_hits(&lab, "/cached/u"), before + 1);
    // An unknown method goes upstream untouched and invalidates nothing.
    let r = lab.exchange(c, b"FOO /cached/u HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(header(&r, "x-cache"), Some("BYPASS"));
    assert_eq!(
        header(&lab.exchange(c, &get("/cached/u")), "x-cache"),
        Some("HIT")
    );
    // A failed one leaves it.
    lab.cached_fail = true;
    let r = lab.exchange(c, b"DELETE /cached/u HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(r.status, 503);
    lab.cached_fail = false;
    assert_eq!(
        header(&lab.exchange(c, &get("/cached/u")), "x-cache"),
        Some("HIT")
    );
}

#[test]
fn a_fresh_hit_the_client_already_has_is_a_304_and_head_errors_carry_no_body() {
    let mut lab = lab();
    let c = lab.connect();
    let _ = lab.exchange(c, &get("/cached/nm"));
    lab.send(
        c,
        b"GET /cached/nm HTTP/1.1\r\nHost: example.com\r\nIf-None-Match: W/\"v1\", \"x\"\r\n\r\n",
    );
    let raw = lab.read_until(c, 2_000, |b| find(b, b"\r\n\r\n").is_some());
    let head = String::from_utf8_lossy(&raw).to_string();
    assert!(head.starts_with("HTTP/1.1 304"), "{head}");
    assert!(
        head.contains("ETag: \"v1\"") || head.contains("etag: \"v1\""),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"));
    // HEAD + only-if-cached, nothing stored: 504 without a body, and the
    // connection stays in step.
    lab.send(
        c,
        b"HEAD /cached/none HTTP/1.1\r\nHost: example.com\r\nCache-Control: only-if-cached\r\n\r\n",
    );
    let raw = lab.read_until(c, 2_000, |b| find(b, b"\r\n\r\n").is_some());
    let head = String::from_utf8_lossy(&raw).to_string();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(
        head.ends_with("\r\n\r\n"),
        "no body after a HEAD's head: {head:?}"
    );
    let r = lab.exchange(c, &get("/cached/nm"));
    assert_eq!((r.status, header(&r, "x-cache")), (200, Some("HIT")));
    assert_eq!(origin_hits(&lab, "/cached/nm"), 1);
}

#[test]
fn what_the_proxy_sets_is_never_stored_or_replayed() {
    let mut lab = lab();
    let c = lab.connect();
    // The origin echoes the request id: a hit must not replay the first one.
    let with_id = |id: &str| {
        format!("GET /cached/id HTTP/1.1\r\nHost: example.com\r\nX-Request-Id: {id}\r\n\r\n")
            .into_bytes()
    };
    let r1 = lab.exchange(c, &with_id("first-id"));
    assert_eq!(header(&r1, "x-request-id"), Some("first-id"));
    let r2 = lab.exchange(c, &with_id("second-id"));
    assert_eq!(header(&r2, "x-cache"), Some("HIT"));
    assert_eq!(
        header(&r2, "x-request-id"),
        Some("second-id"),
        "{}",
        r2.head
    );
    // Varying on a field the proxy rewrites: not stored.
    let _ = lab.exchange(c, &get("/cached/varyxff"));
    let r = lab.exchange(c, &get("/cached/varyxff"));
    assert_eq!(header(&r, "x-cache"), Some("MISS"), "{}", r.head);
    // Chunked with a Content-Length too: stored by its chunked framing.
    let r1 = lab.exchange(c, &get("/cached/tecl"));
    assert_eq!(r1.body, b"hello world");
    let r2 = lab.exchange(c, &get("/cached/tecl"));
    assert_eq!(
        (header(&r2, "x-cache"), &r2.body[..]),
        (Some("HIT"), &b"hello world"[..])
    );
    assert_eq!(header(&r2, "content-length"), Some("11"));
}

#[test]
fn waiters_read_a_slow_body_while_it_is_stored() {
    for path in ["/cached/big", "/cached/bigchunked"] {
        let mut lab = lab();
        lab.origin_pace = Some(3000);
        let clients: Vec<_> = (0..4).map(|_| lab.connect()).collect();
        for _ in 0..20 {
            lab.step(1);
        }
        for &c in &clients {
            lab.sockets
                .get_mut::<tcp::Socket>(c)
                .send_slice(&get(path))
                .unwrap();
        }
        let mut bodies = Vec::new();
        for &c in &clients {
            let raw = lab.read_until(c, 5_000, |b| Response::parse(b).is_some());
            let r = Response::parse(&raw).unwrap_or_else(|| panic!("{path}: incomplete"));
            assert_eq!(r.status, 200);
            bodies.push(r.body);
        }
        assert_eq!(bodies[0].len(), 200_000, "{path}");
        assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{path}");
        assert_eq!(origin_hits(&lab, path), 1, "{path}");
        let s = lab.edge.stats().cache;
        assert_eq!((s.miss, s.hit), (1, 3), "{path}: {s:?}");
    }
}

#[test]
fn a_body_larger_than_an_object_reaches_its_client_and_is_not_kept() {
    use ferrogate_proxy::cache::{CacheSettings, ClockAnchor, EdgeCache};
    let mut lab = lab();
    let mut settings = CacheSettings::default();
    settings.store.max_object_bytes = 50_000;
    lab.edge
        .set_cache(Arc::new(EdgeCache::new(settings)), ClockAnchor::at(lab.now));
    let c = lab.connect();
    for _ in 0..2 {
        let r = lab.exchange(c, &get("/cached/bigchunked"));
        assert_eq!(r.body.len(), 200_000);
        assert_eq!(header(&r, "x-cache"), Some("MISS"));
    }
    assert_eq!(lab.edge.cache().stats().objects, 0);
}

#[test]
fn waiters_get_the_whole_body_when_the_fetching_client_leaves() {
    for path in ["/cached/big", "/cached/bigchunked"] {
        let mut lab = lab();
        lab.origin_pace = Some(2000);
        let fetcher = lab.connect();
        let waiter = lab.connect();
        for _ in 0..20 {
            lab.step(1);
        }
        lab.send(fetcher, &get(path));
        for _ in 0..5 {
            lab.step(1);
        }
        lab.send(waiter, &get(path));
        // Some of the body is through, then the fetching client resets.
        let _ = lab.read_until(fetcher, 30, |b| b.len() > 20_000);
        lab.sockets.get_mut::<tcp::Socket>(fetcher).abort();
        let raw = lab.read_until(waiter, 5_000, |b| Response::parse(b).is_some());
        let r = Response::parse(&raw).unwrap_or_else(|| panic!("{path}: waiter's body incomplete"));
        assert_eq!(r.body.len(), 200_000, "{path}");
        assert_eq!(origin_hits(&lab, path), 1, "{path}");
        // Stored whole: the next request is a hit.
        let c = lab.connect();
        let r2 = lab.exchange(c, &get(path));
        assert_eq!(header(&r2, "x-cache"), Some("HIT"), "{path}");
        assert_eq!(r2.body, r.body);
        assert_eq!(lab.edge.stats().client_aborts, 1, "{path}");
    }
}

#[test]
fn poisoning_vectors_are_not_stored() {
    let mut lab = lab();
    let c = lab.connect();
    // The Host's port is part of the key (the origin sees it).
    let with_host = |h: &str| format!("GET /cached/hp HTTP/1.1\r\nHost: {h}\r\n\r\n").into_bytes();
    assert_eq!(
        header(&lab.exchange(c, &with_host("example.com")), "x-cache"),
        Some("MISS")
    );
    assert_eq!(
        header(&lab.exchange(c, &with_host("example.com:1337")), "x-cache"),
        Some("MISS")
    );
    assert_eq!(
        header(&lab.exchange(c, &with_host("EXAMPLE.com:80")), "x-cache"),
        Some("HIT")
    );
    assert_eq!(
        header(&lab.exchange(c, &with_host("example.com:1337")), "x-cache"),
        Some("HIT")
    );
    // Unkeyed overrides the origin may honour: upstream untouched.
    for f in [
        "X-Forwarded-Host: evil.example",
        "X-HTTP-Method-Override: DELETE",
        "If-Match: \"nope\"",
    ] {
        let r = lab.exchange(
            c,
            format!("GET /cached/ov HTTP/1.1\r\nHost: example.com\r\n{f}\r\n\r\n").as_bytes(),
        );
        assert_eq!(header(&r, "x-cache"), Some("BYPASS"), "{f}");
    }
    assert_eq!(
        header(&lab.exchange(c, &get("/cached/ov")), "x-cache"),
        Some("MISS")
    );
    // An error with a lifetime is not stored (CPDoS).
    for _ in 0..2 {
        let r = lab.exchange(c, &get("/cached/err500"));
        assert_eq!((r.status, header(&r, "x-cache")), (500, Some("MISS")));
    }
    // A close-delimited body is not stored (a cut one looks whole).
    for _ in 0..2 {
        let c = lab.connect();
        lab.send(c, &get("/cached/closebody"));
        let raw = lab.read_until(c, 2_000, |_| false);
        let text = String::from_utf8_lossy(&raw).to_string();
        assert!(text.ends_with("until-close"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("x-cache: miss"),
            "{text}"
        );
    }
}

#[test]
fn a_stale_head_with_the_clients_own_validator_revalidates_with_ours_only() {
    let mut lab = lab();
    lab.cache_control = "max-age=1".into();
    let c = lab.connect();
    let _ = lab.exchange(c, &get("/cached/hv"));
    for _ in 0..30 {
        lab.step(100);
    }
    lab.cached_version = 2;
    lab.send(
        c,
        b"HEAD /cached/hv HTTP/1.1\r\nHost: example.com\r\nIf-None-Match: \"v2\"\r\n\r\n",
    );
    let raw = lab.read_until(c, 2_000, |b| find(b, b"\r\n\r\n").is_some());
    let head = String::from_utf8_lossy(&raw).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let sent = lab.origin_requests.last().unwrap().to_ascii_lowercase();
    assert_eq!(sent.matches("if-none-match").count(), 1, "{sent}");
    assert!(sent.contains("if-none-match: \"v1\""), "{sent}");
}

#[test]
fn waiters_use_a_response_fetched_since_they_arrived() {
    let mut lab = lab();
    // Must be revalidated before every use: without this, each waiter
    // would revalidate in turn.
    lab.cache_control = "no-cache".into();
    lab.origin_pace = Some(40);
    let clients: Vec<_> = (0..10).map(|_| lab.connect()).collect();
    for _ in 0..20 {
        lab.step(1);
    }
    for &c in &clients {
        lab.sockets
            .get_mut::<tcp::Socket>(c)
            .send_slice(&get("/cached/nc"))
            .unwrap();
    }
    for &c in &clients {
        let raw = lab.read_until(c, 3_000, |b| Response::parse(b).is_some());
        assert_eq!(Response::parse(&raw).expect("response").status, 200);
    }
    assert_eq!(
        origin_hits(&lab, "/cached/nc"),
        1,
        "{:?}",
        lab.origin_requests
    );
}

#[test]
fn query_cloaking_with_ignored_parameters_bypasses() {
    use ferrogate_proxy::cache::core::{CachePolicyConfig, KeyConfig};
    let upstream = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    let rc = RouteCache::new(
        CachePolicyConfig::default(),
        KeyConfig {
            ignore_params: vec!["utm".into()],
            ..KeyConfig::default()
        },
    );
    let route = Route {
        cache: Some(Arc::new(rc)),
        ..Route::new("cached", RouteAction::Proxy(upstream.clone()))
    };
    let routes = Arc::new(RouteTable::new(
        1,
        vec![Listener::new(80, vec![route])],
        vec![upstream],
    ));
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let c = lab.connect();
    assert_eq!(
        header(&lab.exchange(c, &get("/cached/q?utm=1")), "x-cache"),
        Some("MISS")
    );
    assert_eq!(
        header(&lab.exchange(c, &get("/cached/q?utm=2")), "x-cache"),
        Some("HIT")
    );
    let r = lab.exchange(c, &get("/cached/q?utm=1;admin=1"));
    assert_eq!(header(&r, "x-cache"), Some("BYPASS"));
}

/// The disk tier under the proxy: objects written by one cache are served
/// by the next one opened on the same directory (an engine restart).
mod disk {
    use super::*;
    use ferrogate_proxy::cache::core::DiskConfig;
    use ferrogate_proxy::cache::{CacheSettings, ClockAnchor, EdgeCache};
    use std::path::PathBuf;
    use std::time::{Duration, Instant as WallClock};

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("fg-proxy-disk-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn object_files(dir: &TempDir) -> usize {
        std::fs::read_dir(&dir.0)
            .unwrap()
            .filter(|f| {
                f.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|e| e == "fgc")
            })
            .count()
    }

    #[test]
    fn a_second_cache_on_a_directory_in_use_is_refused() {
        let dir = TempDir::new("busy");
        let (_lab, _edge) = disk_lab(&dir);
        let settings = CacheSettings {
            disk: Some(DiskConfig::new(dir.0.clone(), 16 << 20)),
            ..CacheSettings::default()
        };
        let e = EdgeCache::open(settings).expect_err("refused");
        assert!(e.to_string().contains("in use by another process"), "{e}");
    }

    /// A lab whose cache has a disk tier in `dir`.
    fn disk_lab(dir: &TempDir) -> (Lab, Arc<EdgeCache>) {
        let mut lab = lab();
        let settings = CacheSettings {
            disk: Some(DiskConfig::new(dir.0.clone(), 16 << 20)),
            ..CacheSettings::default()
        };
        let edge = Arc::new(EdgeCache::open(settings).expect("the disk tier opens"));
        lab.edge.set_cache(edge.clone(), ClockAnchor::at(lab.now));
        (lab, edge)
    }

    /// Waits (real time: the tier's thread does the I/O) until `done`.
    fn until(what: &str, mut done: impl FnMut() -> bool) {
        let start = WallClock::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "waited too long for {what}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Reads a whole response, letting real time pass between the lab's
    /// steps (a disk load runs on the tier's thread, not on the lab clock).
    fn read_response(lab: &mut Lab, c: SocketHandle) -> Response {
        let mut raw = Vec::new();
        for _ in 0..3_000 {
            raw.extend(lab.read_until(c, 1, |_| true));
            if let Some(r) = Response::parse(&raw) {
                return r;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        panic!("no complete response: {:?}", String::from_utf8_lossy(&raw))
    }

    /// Stores `path` through a first cache and closes it with its file
    /// written; returns the body.
    fn stored_on_disk(dir: &TempDir, paths: &[&str]) -> Vec<Vec<u8>> {
        let (mut lab, edge) = disk_lab(dir);
        let c = lab.connect();
        let bodies = paths
            .iter()
            .map(|p| {
                let r = lab.exchange(c, &get(p));
                assert_eq!(header(&r, "x-cache"), Some("MISS"), "{}", r.head);
                r.body
            })
            .collect();
        until("the files", || {
            edge.disk_stats().unwrap().written == paths.len() as u64
        });
        bodies
    }

    #[test]
    fn a_restarted_cache_serves_what_the_last_one_wrote_without_the_origin() {
        let dir = TempDir::new("restart");
        let body = stored_on_disk(&dir, &["/cached/d"]).remove(0);
        let (mut lab, edge) = disk_lab(&dir);
        assert_eq!(edge.disk_stats().unwrap().files, 1);
        assert_eq!(edge.stats().objects, 0, "memory starts empty");
        let c = lab.connect();
        lab.send(c, &get("/cached/d"));
        let r = read_response(&mut lab, c);
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(header(&r, "x-cache"), Some("HIT"), "{}", r.head);
        assert_eq!(r.body, body);
        assert_eq!(origin_hits(&lab, "/cached/d"), 0);
        assert_eq!(edge.disk_stats().unwrap().loaded, 1);
        // From memory now: no second load.
        let r2 = lab.exchange(c, &get("/cached/d"));
        assert_eq!(header(&r2, "x-cache"), Some("HIT"));
        assert_eq!(edge.disk_stats().unwrap().loaded, 1);
        assert_eq!(origin_hits(&lab, "/cached/d"), 0);
    }

    #[test]
    fn concurrent_requests_for_a_key_on_disk_share_one_load() {
        let dir = TempDir::new("coalesce");
        let body = stored_on_disk(&dir, &["/cached/big"]).remove(0);
        let (mut lab, edge) = disk_lab(&dir);
        let clients: Vec<_> = (0..8).map(|_| lab.connect()).collect();
        for _ in 0..20 {
            lab.step(1);
        }
        for &c in &clients {
            lab.send(c, &get("/cached/big"));
        }
        for &c in &clients {
            let r = read_response(&mut lab, c);
            assert_eq!(r.status, 200, "{}", r.head);
            assert_eq!(r.body, body);
        }
        let d = edge.disk_stats().unwrap();
        assert_eq!((d.load_jobs, d.loaded, d.load_failed), (1, 1, 0), "{d:?}");
        assert_eq!(origin_hits(&lab, "/cached/big"), 0);
    }

    #[test]
    fn a_file_gone_since_the_scan_is_fetched_from_the_origin_once() {
        let dir = TempDir::new("gone");
        let body = stored_on_disk(&dir, &["/cached/g"]).remove(0);
        let (mut lab, edge) = disk_lab(&dir);
        assert_eq!(edge.disk_stats().unwrap().files, 1);
        for f in std::fs::read_dir(&dir.0).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "fgc") {
                std::fs::remove_file(path).unwrap();
            }
        }
        let clients: Vec<_> = (0..4).map(|_| lab.connect()).collect();
        for _ in 0..20 {
            lab.step(1);
        }
        for &c in &clients {
            lab.send(c, &get("/cached/g"));
        }
        for &c in &clients {
            let r = read_response(&mut lab, c);
            assert_eq!(r.status, 200, "{}", r.head);
            assert_eq!(r.body, body);
        }
        assert_eq!(edge.disk_stats().unwrap().load_failed, 1);
        assert_eq!(
            origin_hits(&lab, "/cached/g"),
            1,
            "the waiters share the fetch"
        );
    }

    #[test]
    fn a_successful_post_deletes_the_disk_copy() {
        let dir = TempDir::new("post");
        stored_on_disk(&dir, &["/cached/u"]);
        let (mut lab, edge) = disk_lab(&dir);
        assert_eq!(object_files(&dir), 1);
        let c = lab.connect();
        let r = lab.exchange(
            c,
            b"POST /cached/u HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(r.status, 200, "{}", r.head);
        until("the invalidation", || {
            edge.disk_stats().unwrap().invalidated == 1
        });
        until("the file's delete", || object_files(&dir) == 0);
        lab.send(c, &get("/cached/u"));
        let r = read_response(&mut lab, c);
        assert_eq!(header(&r, "x-cache"), Some("MISS"), "{}", r.head);
    }

    #[test]
    fn a_purge_reaches_the_disk_and_a_restart_does_not_bring_the_object_back() {
        let dir = TempDir::new("purge");
        stored_on_disk(&dir, &["/cached/p1", "/cached/p2"]);
        {
            let (_lab, edge) = disk_lab(&dir);
            let n = edge
                .purge(&Purge {
                    mode: PurgeMode::Hard,
                    target: PurgeTarget::Url("http://example.com/cached/p1".into()),
                })
                .unwrap();
            assert_eq!(
                (n.memory, n.disk),
                (0, 1),
                "nothing in memory, a file on disk"
            );
            assert_eq!(edge.disk_stats().unwrap().purged, 1);
            until("the purged file's delete", || object_files(&dir) == 1);
        }
        let (mut lab, edge) = disk_lab(&dir);
        assert_eq!(edge.disk_stats().unwrap().files, 1);
        let c = lab.connect();
        lab.send(c, &get("/cached/p1"));
        let r = read_response(&mut lab, c);
        assert_eq!(header(&r, "x-cache"), Some("MISS"), "{}", r.head);
        lab.send(c, &get("/cached/p2"));
        let r = read_response(&mut lab, c);
        assert_eq!(header(&r, "x-cache"), Some("HIT"), "{}", r.head);
        assert_eq!(origin_hits(&lab, "/cached/p1"), 1);
        assert_eq!(origin_hits(&lab, "/cached/p2"), 0);
    }
}

/// Stores `path` with `max-age=1, stale-while-revalidate=60` and lets it
/// go stale (3 s); returns the stored body.
fn stored_then_stale(lab: &mut Lab, c: SocketHandle, path: &str) -> Vec<u8> {
    lab.cache_control = "max-age=1, stale-while-revalidate=60".into();
    let r = lab.exchange(c, &get(path));
    assert_eq!(header(&r, "x-cache"), Some("MISS"), "{}", r.head);
    for _ in 0..30 {
        lab.step(100);
    }
    r.body
}

/// A stale GET answered within `steps` ms (the origin is not waited for).
fn stale_at_once(lab: &mut Lab, c: SocketHandle, path: &str, steps: usize) -> Response {
    lab.send(c, &get(path));
    let raw = lab.read_until(c, steps, |b| Response::parse(b).is_some());
    Response::parse(&raw).unwrap_or_else(|| {
        panic!(
            "no response within {steps} ms (waits for the origin?): {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// The conditional requests the origin got for `path`.
fn conditional_hits(lab: &Lab, path: &str) -> usize {
    lab.origin_requests
        .iter()
        .filter(|r| r.split(' ').nth(1) == Some(path))
        .filter(|r| r.to_ascii_lowercase().contains("if-none-match: \"v1\""))
        .count()
}

#[test]
fn stale_while_revalidate_serves_stale_at_once_and_revalidates_once_in_the_background() {
    let mut lab = lab();
    let c = lab.connect();
    let body = stored_then_stale(&mut lab, c, "/cached/swr");
    // The origin holds its answer: nothing reaches it until released.
    lab.origin = Origin::BlackHole;
    lab.cache_control = "max-age=60".into();
    let r = stale_at_once(&mut lab, c, "/cached/swr", 50);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
    assert_eq!(r.body, body);
    // More stale hits, on other connections, while it runs: served stale,
    // no second revalidation.
    let others: Vec<_> = (0..4).map(|_| lab.connect()).collect();
    for &o in &others {
        let r = stale_at_once(&mut lab, o, "/cached/swr", 50);
        assert_eq!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
        assert_eq!(r.body, body);
    }
    assert_eq!(origin_hits(&lab, "/cached/swr"), 1);
    // Released: the one conditional request gets its 304, which refreshes
    // the stored object (its new Cache-Control included).
    lab.origin = Origin::Serving;
    for _ in 0..100 {
        lab.step(100);
        if conditional_hits(&lab, "/cached/swr") > 0 {
            break;
        }
    }
    for _ in 0..10 {
        lab.step(10);
    }
    assert_eq!(
        conditional_hits(&lab, "/cached/swr"),
        1,
        "{:?}",
        lab.origin_requests
    );
    assert_eq!(origin_hits(&lab, "/cached/swr"), 2);
    let r = lab.exchange(c, &get("/cached/swr"));
    assert_eq!(header(&r, "x-cache"), Some("HIT"), "{}", r.head);
    assert_eq!(
        header(&r, "cache-control"),
        Some("max-age=60"),
        "{}",
        r.head
    );
    assert_eq!(r.body, body);
    assert_eq!(origin_hits(&lab, "/cached/swr"), 2);
    let s = lab.edge.stats();
    assert_eq!(s.cache.stale, 5, "{:?}", s.cache);
    assert_eq!(s.cache.revalidated, 0, "{:?}", s.cache);
    assert_eq!(
        (
            s.cache_background_revalidations,
            s.cache_background_refreshed,
            s.cache_background_replaced,
            s.cache_background_failed,
            s.cache_background_skipped
        ),
        (1, 1, 0, 0, 0)
    );
    // No lock left behind.
    assert!(lab.edge.cache().locks.is_empty());
}

#[test]
fn stale_while_revalidate_replaces_a_changed_object_in_the_background() {
    let mut lab = lab();
    let c = lab.connect();
    let body = stored_then_stale(&mut lab, c, "/cached/swr2");
    lab.cached_version = 2;
    lab.cache_control = "max-age=60".into();
    let r = stale_at_once(&mut lab, c, "/cached/swr2", 50);
    assert_eq!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
    assert_eq!(r.body, body);
    for _ in 0..20 {
        lab.step(10);
    }
    let r = lab.exchange(c, &get("/cached/swr2"));
    assert_eq!(header(&r, "x-cache"), Some("HIT"), "{}", r.head);
    assert!(String::from_utf8_lossy(&r.body).starts_with("v2"), "{r:?}");
    assert_eq!(header(&r, "etag"), Some("\"v2\""));
    assert_eq!(origin_hits(&lab, "/cached/swr2"), 2);
    let s = lab.edge.stats();
    assert_eq!(
        (s.cache_background_replaced, s.cache_background_refreshed),
        (1, 0)
    );
}

#[test]
fn a_background_revalidation_whose_new_body_ends_short_is_counted_failed_not_replaced() {
    let mut lab = lab();
    let c = lab.connect();
    let body = stored_then_stale(&mut lab, c, "/cached/swr-short");
    lab.cached_version = 2;
    lab.cached_short_body = true;
    let r = stale_at_once(&mut lab, c, "/cached/swr-short", 50);
    assert_eq!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
    assert_eq!(r.body, body);
    for _ in 0..50 {
        lab.step(10);
    }
    assert_eq!(origin_hits(&lab, "/cached/swr-short"), 2);
    let s = lab.edge.stats();
    assert_eq!(
        (
            s.cache_background_revalidations,
            s.cache_background_replaced,
            s.cache_background_failed
        ),
        (1, 0, 1)
    );
    // The cut object is never served as a hit.
    lab.cached_short_body = false;
    let r = lab.exchange(c, &get("/cached/swr-short"));
    assert!(!r.body.starts_with(b"short"), "{r:?}");
    assert!(r.body == body || r.body.starts_with(b"v2"), "{r:?}");
    assert!(lab.edge.cache().locks.is_empty());
}

#[test]
fn a_failing_background_revalidation_keeps_the_stale_copy_and_the_next_stale_hit_retries() {
    let mut lab = lab();
    let c = lab.connect();
    let body = stored_then_stale(&mut lab, c, "/cached/swr3");
    lab.cached_fail = true;
    for round in 1..=2 {
        let r = stale_at_once(&mut lab, c, "/cached/swr3", 50);
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
        assert_eq!(r.body, body);
        for _ in 0..20 {
            lab.step(10);
        }
        // The origin's 503 came back and was dropped: one per stale hit
        // that found the lock free.
        assert_eq!(origin_hits(&lab, "/cached/swr3"), 1 + round);
        assert_eq!(lab.edge.stats().cache_background_failed, round as u64);
    }
    // The origin is back: the next stale hit's revalidation refreshes it.
    lab.cached_fail = false;
    lab.cache_control = "max-age=60".into();
    let r = stale_at_once(&mut lab, c, "/cached/swr3", 50);
    assert_eq!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
    for _ in 0..20 {
        lab.step(10);
    }
    let r = lab.exchange(c, &get("/cached/swr3"));
    assert_eq!(header(&r, "x-cache"), Some("HIT"), "{}", r.head);
    assert_eq!(r.body, body);
    let s = lab.edge.stats();
    assert_eq!(
        (
            s.cache_background_revalidations,
            s.cache_background_refreshed,
            s.cache_background_failed
        ),
        (3, 1, 2)
    );
}

/// The origin's new answer may no longer be stored (`no-store`): the
/// stale copy is not served on for the rest of its window.
#[test]
fn a_background_revalidation_that_gets_an_uncacheable_answer_ends_the_stale_copy() {
    let mut lab = lab();
    let c = lab.connect();
    stored_then_stale(&mut lab, c, "/cached/swr5");
    lab.cache_control = "no-store".into();
    let r = stale_at_once(&mut lab, c, "/cached/swr5", 50);
    assert_eq!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
    for _ in 0..20 {
        lab.step(10);
    }
    assert_eq!(origin_hits(&lab, "/cached/swr5"), 2);
    // Not stale again, also once the key's hit-for-pass (10 s) is over
    // and well inside the 60 s window: requests go to the origin.
    for _ in 0..15 {
        lab.step(1000);
    }
    let r = lab.exchange(c, &get("/cached/swr5"));
    assert_ne!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
    assert_eq!(origin_hits(&lab, "/cached/swr5"), 3);
}

/// A 304 that makes the response private refreshes nothing (the stale
/// copy is evicted): the revalidation failed, it did not refresh.
#[test]
fn a_background_304_that_refreshes_nothing_is_counted_failed_not_refreshed() {
    let mut lab = lab();
    let c = lab.connect();
    stored_then_stale(&mut lab, c, "/cached/swr6");
    lab.cache_control = "private, max-age=60".into();
    let r = stale_at_once(&mut lab, c, "/cached/swr6", 50);
    assert_eq!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
    for _ in 0..20 {
        lab.step(10);
    }
    assert_eq!(
        conditional_hits(&lab, "/cached/swr6"),
        1,
        "{:?}",
        lab.origin_requests
    );
    let s = lab.edge.stats();
    assert_eq!(
        (
            s.cache_background_revalidations,
            s.cache_background_refreshed,
            s.cache_background_failed
        ),
        (1, 0, 1)
    );
    let r = lab.exchange(c, &get("/cached/swr6"));
    assert_eq!(header(&r, "x-cache"), Some("MISS"), "{}", r.head);
    assert!(lab.edge.cache().locks.is_empty());
}

/// The balancer's in-flight picks on the origin pool's one endpoint.
fn in_flight(lab: &Lab) -> u64 {
    lab.edge.upstream_stats().pools[0].1.endpoints[0].in_flight
}

/// A stale hit's background revalidation waits on an origin that never
/// answers (its pick is out) until `end` ends it: the pick goes back to
/// the balancer, the lock is released.
fn revalidation_ended_gives_its_pick_back(path: &str, end: impl FnOnce(&mut Lab)) {
    let mut lab = lab();
    let c = lab.connect();
    stored_then_stale(&mut lab, c, path);
    assert_eq!(in_flight(&lab), 0);
    lab.origin = Origin::BlackHole;
    let r = stale_at_once(&mut lab, c, path, 50);
    assert_eq!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
    assert_eq!(in_flight(&lab), 1, "the revalidation's pick");
    end(&mut lab);
    assert_eq!(in_flight(&lab), 0, "least-connections would shun it");
    assert!(lab.edge.cache().locks.is_empty());
}

#[test]
fn a_background_revalidation_a_drain_ends_gives_its_pick_back() {
    revalidation_ended_gives_its_pick_back("/cached/swr7", |lab| {
        let now = lab.now;
        lab.edge.begin_drain(now);
    });
}

#[test]
fn a_background_revalidation_a_stop_cuts_gives_its_pick_back() {
    revalidation_ended_gives_its_pick_back("/cached/swr8", |lab| {
        let now = lab.now;
        lab.edge.close_idle_upstreams(now);
    });
}

#[test]
fn a_drain_does_not_wait_for_a_background_revalidation() {
    let mut lab = lab();
    let c = lab.connect();
    stored_then_stale(&mut lab, c, "/cached/swr4");
    lab.origin = Origin::BlackHole;
    let r = stale_at_once(&mut lab, c, "/cached/swr4", 50);
    assert_eq!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
    let now = lab.now;
    lab.edge.begin_drain(now);
    for _ in 0..100 {
        lab.step(10);
        if lab.edge.drained() {
            break;
        }
    }
    assert!(lab.edge.drained(), "{:?}", lab.edge.stats());
    // Its lock went with it.
    assert!(lab.edge.cache().locks.is_empty());
}

#[test]
fn background_revalidations_are_bounded_per_worker_and_the_rest_skipped() {
    let mut lab = lab();
    let c = lab.connect();
    lab.cache_control = "max-age=1, stale-while-revalidate=60".into();
    let paths: Vec<String> = (0..66).map(|i| format!("/cached/bound/{i}")).collect();
    for p in &paths {
        let r = lab.exchange(c, &get(p));
        assert_eq!(header(&r, "x-cache"), Some("MISS"), "{}", r.head);
    }
    for _ in 0..30 {
        lab.step(100);
    }
    // The origin holds every answer: 64 revalidations stay in flight.
    lab.origin = Origin::BlackHole;
    for p in &paths {
        let r = stale_at_once(&mut lab, c, p, 50);
        assert_eq!(header(&r, "x-cache"), Some("STALE"), "{}", r.head);
    }
    let s = lab.edge.stats();
    assert_eq!(
        (s.cache_background_revalidations, s.cache_background_skipped),
        (64, 2)
    );
    // A skipped key holds no lock: its next stale hit may revalidate.
    assert_eq!(lab.edge.cache().locks.len(), 64);
}
