//! Per-route rules and per-route bearer tokens, back to back in memory
//! (`common/`): the order of `choose_route` — the listener's rules, then
//! routing, then the chosen route's rules; a route's own provider, and a
//! route exempt from its listener's.

mod common;

use common::*;
use ferrogate_proxy::RouteJwt;
use ferrogate_proxy::jwt::{JwtAuth, JwtSettings};
use ferrogate_proxy::rules::{PathTest, Rewrite, Rule, RuleAction, RuleMatch, Rules, ValueTest};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

/// Two providers with their own secret and issuer: a token of one never
/// verifies with the other.
const USERS: (&str, &[u8]) = ("https://users.example", b"route-rules-users-secret-32bytes");
const PRIVATE: (&str, &[u8]) = (
    "https://private.example",
    b"route-rules-private-secret-32byt",
);

fn answer(status: u16, body: &str) -> Arc<DirectResponse> {
    Arc::new(DirectResponse {
        status,
        content_type: "text/plain".into(),
        body: body.as_bytes().to_vec(),
        location: None,
        retry_after: None,
        www_authenticate: None,
    })
}

fn prefix(p: &str) -> RuleMatch {
    RuleMatch {
        path: Some(PathTest::Prefix(p.into())),
        ..Default::default()
    }
}

fn provider(name: &str, (issuer, secret): (&str, &[u8])) -> Arc<JwtAuth> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut k = String::new();
    for c in secret.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            k.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    let jwks = format!(r#"{{"keys":[{{"kty":"oct","k":"{k}"}}]}}"#);
    let s = JwtSettings {
        name: name.into(),
        algorithms: vec![Algorithm::HS256],
        issuer: Some(issuer.into()),
        audience: Some("edge".into()),
        clock_skew_s: 0,
    };
    Arc::new(JwtAuth::new(&s, &jwks).expect("provider").0)
}

fn token((issuer, secret): (&str, &[u8]), role: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({
        "sub": "u1", "role": role, "exp": exp, "iss": issuer, "aud": "edge"
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Port 80: listener rules (a claim deny, a deny, an allow by header),
/// routes with rules of their own, one with its own provider. Port 81: a
/// listener provider, an exempt route, a route with another provider, a
/// route rule on a claim.
fn table() -> Arc<RouteTable> {
    let origin = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    let proxy = || RouteAction::Proxy(origin.clone());
    let listener_rules = Rules::new(vec![
        // No provider on the listener: only a route's token has claims.
        Rule::new(
            "l-banned",
            RuleMatch {
                claims: vec![("role".into(), "banned".into())],
                ..Default::default()
            },
            RuleAction::Deny(answer(403, "listener: banned")),
        ),
        Rule::new(
            "l-blocked",
            prefix("/open/blocked/"),
            RuleAction::Deny(answer(403, "listener says no")),
        ),
        Rule::new(
            "l-trusted",
            RuleMatch {
                headers: vec![("x-trusted".into(), ValueTest::Equals("yes".into()))],
                ..Default::default()
            },
            RuleAction::Allow,
        )
        .with_rewrite(Rewrite {
            request_remove: vec!["x-secret".into()],
            request_add: vec![
                ("X-From".into(), "listener".into()),
                ("X-Listener-Only".into(), "1".into()),
            ],
            ..Rewrite::default()
        }),
    ])
    .unwrap();
    let admin = Route {
        path: PathMatch::Prefix("/admin/".into()),
        rules: Rules::new(vec![
            Rule::new(
                "admin-deny",
                prefix("/"),
                RuleAction::Deny(answer(403, "route says no")),
            )
            .with_tag("admin"),
        ])
        .unwrap(),
        ..Route::new("admin", proxy())
    };
    let v1 = Route {
        path: PathMatch::Prefix("/v1/".into()),
        rules: Rules::new(vec![
            Rule::new("v1-rewrite", prefix("/v1/"), RuleAction::Allow).with_rewrite(Rewrite {
                path_prefix: Some(("/v1/".into(), "/".into())),
                request_remove: vec!["x-listener-only".into()],
                request_add: vec![("X-From".into(), "route".into())],
                ..Rewrite::default()
            }),
        ])
        .unwrap(),
        ..Route::new("v1", proxy())
    };
    let private = Route {
        path: PathMatch::Prefix("/private/".into()),
        jwt: RouteJwt::Provider(provider("private", PRIVATE)),
        ..Route::new("private", proxy())
    };
    // Port 81: the listener's provider is `users`; this route needs
    // `private`'s token instead.
    let partner = Route {
        path: PathMatch::Prefix("/partner/".into()),
        jwt: RouteJwt::Provider(provider("private", PRIVATE)),
        ..Route::new("partner", proxy())
    };
    let open = Route {
        rules: Rules::new(vec![Rule::new(
            "open-allow",
            prefix("/"),
            RuleAction::Allow,
        )])
        .unwrap(),
        ..Route::new("open", proxy())
    };
    let acme = Route {
        path: PathMatch::Prefix("/.well-known/acme-challenge/".into()),
        jwt: RouteJwt::Exempt,
        ..Route::new("acme", RouteAction::Respond(answer(200, "acme")))
    };
    let guarded = Route {
        rules: Rules::new(vec![
            Rule::new(
                "g-admins",
                RuleMatch {
                    claims: vec![("role".into(), "admin".into())],
                    ..Default::default()
                },
                RuleAction::Allow,
            ),
            Rule::new(
                "g-others",
                prefix("/"),
                RuleAction::Deny(answer(403, "admins only")),
            ),
        ])
        .unwrap(),
        ..Route::new("guarded", proxy())
    };
    Arc::new(RouteTable::new(
        1,
        vec![
            Listener::new(80, vec![admin, v1, private, open]).with_rules(listener_rules),
            Listener::new(81, vec![acme, partner, guarded]).with_jwt(provider("users", USERS)),
        ],
        vec![origin.clone()],
    ))
}

fn hits<P: ProxyHttp>(lab: &Lab<P>, rule: &str) -> u64 {
    let mut out = String::new();
    lab.edge.route_stats().render(&mut out);
    let key = format!("rule_{rule}_hits ");
    out.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.parse().unwrap())
}

#[test]
fn route_rules_run_after_routing_and_the_listener_rules() {
    let mut lab = Lab::with_routes(Origin::Serving, table(), |_| {});
    let c = lab.connect_to(80);
    let get = |lab: &mut Lab, c, path: &str, extra: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a.example\r\n{extra}\r\n");
        lab.exchange(c, req.as_bytes())
    };
    // The admin route's rule denies; another route is proxied.
    let r = get(&mut lab, c, "/admin/x", "");
    assert_eq!((r.status, r.body.as_slice()), (403, &b"route says no"[..]));
    let r = get(&mut lab, c, "/open/x", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"origin:/open/x");
    // A listener allow does not skip the route's rules.
    let r = get(&mut lab, c, "/admin/x", "X-Trusted: yes\r\n");
    assert_eq!(r.status, 403);
    // A listener deny wins over the route's allow (never evaluated).
    let r = get(&mut lab, c, "/open/blocked/x", "");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (403, &b"listener says no"[..])
    );
    // A route rule rewrites the path; the listener allow's changes apply
    // too, first: its removal of X-Secret holds, its additions go up
    // unless the route's rule removes them.
    let before = lab.origin_requests.len();
    let r = get(
        &mut lab,
        c,
        "/v1/item",
        "X-Trusted: yes\r\nX-Secret: s3cr3t\r\n",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"origin:/item"[..]));
    let seen = &lab.origin_requests[before];
    let at = |h: &str| seen.find(h).unwrap_or_else(|| panic!("{h} in {seen}"));
    assert!(
        at("X-From: listener\r\n") < at("X-From: route\r\n"),
        "{seen}"
    );
    assert!(!seen.contains("s3cr3t"), "{seen}");
    assert!(!seen.contains("X-Listener-Only"), "{seen}");
    // Without the route's rule the listener allow's changes hold.
    let before = lab.origin_requests.len();
    assert_eq!(
        get(
            &mut lab,
            c,
            "/open/y",
            "X-Trusted: yes\r\nX-Secret: s3cr3t\r\n"
        )
        .status,
        200
    );
    let seen = &lab.origin_requests[before];
    assert!(
        seen.contains("X-From: listener\r\nX-Listener-Only: 1\r\n"),
        "{seen}"
    );
    assert!(!seen.contains("s3cr3t"), "{seen}");
    assert!(
        lab.origin_requests.iter().all(|r| !r.contains("/admin/")),
        "denied requests never went upstream"
    );
    assert_eq!(hits(&lab, "admin-deny"), 2);
    assert_eq!(hits(&lab, "l-trusted"), 3);
    assert_eq!(hits(&lab, "l-blocked"), 1);
    assert_eq!(hits(&lab, "open-allow"), 2, "not for the listener's deny");
    assert_eq!(hits(&lab, "v1-rewrite"), 1);
}

/// The route that decides the token and the rules is the one the origin
/// serves: a path that routes elsewhere once normalized (`..`, `%XX`,
/// `//`) is refused, on a listener with per-route tokens or rules.
#[test]
fn a_path_that_routes_elsewhere_once_normalized_is_refused() {
    let mut lab = Lab::with_routes(Origin::Serving, table(), |_| {});
    let get = |lab: &mut Lab, port: u16, path: &str| {
        let c = lab.connect_to(port);
        let req = format!("GET {path} HTTP/1.1\r\nHost: a.example\r\n\r\n");
        lab.exchange(c, req.as_bytes())
    };
    for path in [
        "/open/../private/x",
        "/%70rivate/x",
        "//private/x",
        "/x/../admin/y",
        "/open/%2e%2e/admin/y",
    ] {
        let r = get(&mut lab, 80, path);
        assert_eq!(r.status, 400, "{path}: {}", r.head);
    }
    // The exempt ACME route does not exempt what its path resolves to.
    let r = get(&mut lab, 81, "/.well-known/acme-challenge/../../x");
    assert_eq!(r.status, 400, "{}", r.head);
    assert_eq!(lab.origin_requests.len(), 0, "{:?}", lab.origin_requests);
    // A path that normalizes to the same route goes on (as sent).
    let r = get(&mut lab, 80, "/open/a/../%41");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"origin:/open/a/../%41"[..])
    );
    let r = get(&mut lab, 81, "/.well-known/acme-challenge/t");
    assert_eq!(r.status, 200);
    let s = lab.edge.stats();
    assert_eq!(s.ambiguous_paths, 6);
    assert_eq!((s.jwt_verified, s.jwt_rejected), (0, 0));
}

#[test]
fn a_route_names_its_own_provider_or_is_exempt_from_the_listeners() {
    let mut lab = Lab::with_routes(Origin::Serving, table(), |_| {});
    let get = |lab: &mut Lab, port: u16, path: &str, tok: Option<&str>| {
        let c = lab.connect_to(port);
        let auth = tok.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let req = format!("GET {path} HTTP/1.1\r\nHost: a.example\r\n{auth}\r\n");
        lab.exchange(c, req.as_bytes())
    };
    let admin = token(USERS, "admin");
    let user = token(USERS, "user");
    let private = token(PRIVATE, "admin");
    // Port 80 has no provider; its private route has one.
    let r = get(&mut lab, 80, "/private/x", None);
    assert_eq!(r.status, 401);
    assert!(r.head.contains("realm=\"private\""), "{}", r.head);
    assert_eq!(get(&mut lab, 80, "/private/x", Some(&private)).status, 200);
    assert_eq!(get(&mut lab, 80, "/private/x", Some(&admin)).status, 401);
    assert_eq!(get(&mut lab, 80, "/open/x", None).status, 200);
    // Port 81 needs the listener's token, except on the exempt route.
    let r = get(&mut lab, 81, "/.well-known/acme-challenge/t", None);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"acme"[..]));
    let r = get(&mut lab, 81, "/x", None);
    assert_eq!(r.status, 401);
    assert!(r.head.contains("realm=\"users\""), "{}", r.head);
    // The claims reach the route's rules.
    assert_eq!(get(&mut lab, 81, "/x", Some(&admin)).status, 200);
    assert_eq!(get(&mut lab, 81, "/x", Some(&user)).status, 403);
    // A route with another provider than its listener's: only that
    // provider's token opens it, and its token opens nothing else.
    let r = get(&mut lab, 81, "/partner/x", Some(&admin));
    assert_eq!(r.status, 401);
    assert!(r.head.contains("realm=\"private\""), "{}", r.head);
    assert_eq!(get(&mut lab, 81, "/partner/x", Some(&private)).status, 200);
    let r = get(&mut lab, 81, "/x", Some(&private));
    assert_eq!(r.status, 401);
    assert!(r.head.contains("realm=\"users\""), "{}", r.head);
    let s = lab.edge.stats();
    assert_eq!((s.jwt_verified, s.jwt_rejected), (4, 5));
}

/// Phases that route every request to the `private` route, whatever the
/// default lookup says.
struct ToPrivate;

impl ProxyHttp for ToPrivate {
    type Ctx = ();

    fn upstream_peer<'t>(
        &self,
        listener: &'t Listener,
        _req: &ferrogate_proxy::RequestInfo<'_>,
        _ctx: &mut (),
    ) -> Option<&'t Route> {
        listener.routes().iter().find(|r| r.name == "private")
    }
}

/// The token is checked before the rules with the default route lookup;
/// phases that route elsewhere still get the chosen route's provider, and
/// the listener's rules run again with its claims.
#[test]
fn phases_that_route_elsewhere_than_the_lookup_still_need_that_routes_token() {
    let mut lab = Lab::with_phases(Origin::Serving, table(), |_| {}, ToPrivate);
    let get = |lab: &mut Lab<ToPrivate>, tok: Option<&str>| {
        let c = lab.connect_to(80);
        let auth = tok.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let req = format!("GET /open/x HTTP/1.1\r\nHost: a.example\r\n{auth}\r\n");
        lab.exchange(c, req.as_bytes())
    };
    let r = get(&mut lab, None);
    assert_eq!(r.status, 401, "{}", r.head);
    assert!(r.head.contains("realm=\"private\""), "{}", r.head);
    assert_eq!(get(&mut lab, Some(&token(PRIVATE, "user"))).status, 200);
    // The listener's claim rule saw no claims before routing (the lookup's
    // route needs no token); it sees the private provider's after.
    let r = get(&mut lab, Some(&token(PRIVATE, "banned")));
    assert_eq!(
        (r.status, r.body.as_slice()),
        (403, &b"listener: banned"[..])
    );
    assert_eq!(
        lab.origin_requests.len(),
        1,
        "only the request with a good token"
    );
    assert_eq!(lab.edge.stats().jwt_rejected, 1);
    assert_eq!(hits(&lab, "l-banned"), 1);
    // The listener's rules ran twice for this request (without claims,
    // then with the private provider's): its allow counts once.
    let c = lab.connect_to(80);
    let req = format!(
        "GET /open/x HTTP/1.1\r\nHost: a.example\r\nX-Trusted: yes\r\nAuthorization: Bearer {}\r\n\r\n",
        token(PRIVATE, "user")
    );
    assert_eq!(lab.exchange(c, req.as_bytes()).status, 200);
    assert_eq!(hits(&lab, "l-trusted"), 1, "one request, one hit");
}

/// A rule matches the path as origins resolve it too, but its
/// `rewrite_prefix` can only change the target as sent: a target that
/// reached the rule only once resolved (`/x/../api/internal`) would go up
/// unrewritten, so it is refused.
#[test]
fn a_rewrite_whose_prefix_the_target_as_sent_lacks_is_refused() {
    let origin = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    let rules = Rules::new(vec![
        Rule::new("api-public", prefix("/api/"), RuleAction::Allow).with_rewrite(Rewrite {
            path_prefix: Some(("/api/".into(), "/public-api/".into())),
            ..Rewrite::default()
        }),
    ])
    .unwrap();
    let table = Arc::new(RouteTable::new(
        1,
        vec![
            Listener::new(
                80,
                vec![Route::new("all", RouteAction::Proxy(origin.clone()))],
            )
            .with_rules(rules),
        ],
        vec![origin.clone()],
    ));
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let get = |lab: &mut Lab, path: &str| {
        let c = lab.connect_to(80);
        let req = format!("GET {path} HTTP/1.1\r\nHost: a.example\r\n\r\n");
        lab.exchange(c, req.as_bytes())
    };
    let r = get(&mut lab, "/api/internal");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"origin:/public-api/internal"[..])
    );
    for path in ["/x/../api/internal", "/%61pi/internal", "//api/internal"] {
        let r = get(&mut lab, path);
        assert_eq!(r.status, 400, "{path}: {}", r.head);
    }
    assert_eq!(lab.origin_requests.len(), 1, "{:?}", lab.origin_requests);
    assert_eq!(lab.edge.stats().ambiguous_paths, 3);
}

/// A `jwt:sub` limit shared by routes of different providers keeps a
/// bucket per provider and subject: the two providers' `u1` (every token
/// here has `sub = "u1"`) are different users.
#[test]
fn a_subject_limit_keeps_a_bucket_per_provider() {
    use ferrogate_proxy::limits::{Limit, LimitKey};
    use ferrogate_proxy::quota::LimitSpec;
    let origin = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    let spec = LimitSpec::per_second(1.0 / 60.0, 1).unwrap();
    let limit = Arc::new(Limit::new("per-sub", 0, spec, LimitKey::JwtSubject));
    let partner = Route {
        path: PathMatch::Prefix("/partner/".into()),
        jwt: RouteJwt::Provider(provider("private", PRIVATE)),
        ..Route::new("partner", RouteAction::Proxy(origin.clone()))
    };
    let table = Arc::new(
        RouteTable::new(
            1,
            vec![
                Listener::new(
                    81,
                    vec![
                        partner,
                        Route::new("all", RouteAction::Proxy(origin.clone())),
                    ],
                )
                .with_jwt(provider("users", USERS))
                .with_limits(vec![limit.clone()]),
            ],
            vec![origin.clone()],
        )
        .with_limits(vec![limit]),
    );
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let get = |lab: &mut Lab, path: &str, tok: &str| {
        let c = lab.connect_to(81);
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: a.example\r\nAuthorization: Bearer {tok}\r\n\r\n"
        );
        lab.exchange(c, req.as_bytes()).status
    };
    let (users, private) = (token(USERS, "user"), token(PRIVATE, "user"));
    assert_eq!(get(&mut lab, "/x", &users), 200);
    assert_eq!(
        get(&mut lab, "/partner/x", &private),
        200,
        "another provider's u1"
    );
    assert_eq!(get(&mut lab, "/x", &users), 429);
    assert_eq!(get(&mut lab, "/partner/x", &private), 429);
}

/// A `respond` route that blocks a path beside a catch-all that proxies:
/// `/x/../admin/` is refused rather than handed to the origin, while a
/// path that only moves between routes without policy goes on as sent.
#[test]
fn a_blocking_respond_route_is_not_dodged_and_plain_routes_pass() {
    let origin = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    let proxy = |name: &str, p: &str| Route {
        path: PathMatch::Prefix(p.into()),
        ..Route::new(name, RouteAction::Proxy(origin.clone()))
    };
    let admin = Route {
        path: PathMatch::Prefix("/admin/".into()),
        ..Route::new("admin", RouteAction::Respond(answer(403, "blocked")))
    };
    let table = Arc::new(RouteTable::new(
        1,
        vec![Listener::new(
            80,
            vec![admin, proxy("assets", "/assets/"), proxy("all", "/")],
        )],
        vec![origin.clone()],
    ));
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let get = |lab: &mut Lab, path: &str| {
        let c = lab.connect_to(80);
        let req = format!("GET {path} HTTP/1.1\r\nHost: a.example\r\n\r\n");
        lab.exchange(c, req.as_bytes())
    };
    assert_eq!(get(&mut lab, "/admin/").status, 403);
    for path in ["/x/../admin/", "/%61dmin/", "//admin/", "/admin;x/"] {
        let r = get(&mut lab, path);
        assert_eq!(r.status, 400, "{path}: {}", r.head);
    }
    let r = get(&mut lab, "//assets/app.js");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"origin://assets/app.js"[..])
    );
    assert_eq!(lab.origin_requests.len(), 1, "{:?}", lab.origin_requests);
    assert_eq!(lab.edge.stats().ambiguous_paths, 4);
}
