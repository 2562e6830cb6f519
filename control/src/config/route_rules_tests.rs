//! Per-route rules (`[[listeners.routes.rules]]`) and per-route `jwt`.

use super::*;

/// The example JWKS sits beside this (virtual) file.
fn path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/route-rules-test.toml")
}

fn try_compile(text: &str) -> Result<Compiled, Vec<String>> {
    compile(&path(), text).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

const BASE: &str = r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"

[[upstreams]]
name = "origin"
endpoints = ["10.77.0.3:8080"]

[[upstreams]]
name = "echo"
endpoints = ["10.77.0.3:8091"]

[[jwt]]
name = "partners"
jwks = "jwks.example.json"
"#;

/// Asserts one error starts with `file:line:` and names `field` and `what`.
fn has(errors: &[String], line: u32, field: &str, what: &str) {
    let at = format!("{}:{line}:", path().display());
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&at) && e.contains(field) && e.contains(what)),
        "line {line} {field} {what}: {errors:#?}"
    );
}

#[test]
fn route_rules_compile_per_route_with_ids_after_the_listeners() {
    let c = try_compile(&format!(
        "{BASE}{}",
        r#"
[[listeners]]
port = 80
[[listeners.rules]]
name = "l-deny"
path_prefix = "/blocked/"
action = "deny"
[[listeners.routes]]
name = "api"
path_prefix = "/api/"
upstream = "origin"
[[listeners.routes.rules]]
name = "api-v1"
path_prefix = "/api/v1/"
action = "allow"
rewrite_prefix = { from = "/api/v1/", to = "/v1/" }
pool = "echo"
request_headers = { set = { "X-Route" = "api" } }
[[listeners.routes.rules]]
name = "api-admin"
path_regex = "/api/admin(/.*)?"
action = "deny"
tag = "admin"
[[listeners.routes]]
name = "web"
upstream = "origin"
[[listeners.routes.rules]]
name = "web-old"
path_prefix = "/old/"
action = "redirect"
location = "/new{path}"
"#
    ))
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let t = &c.engine.routes;
    let all: Vec<_> = t.rules().map(|r| (r.name.as_str(), r.id)).collect();
    assert_eq!(
        all,
        [
            ("l-deny", 0),
            ("api-v1", 1),
            ("api-admin", 2),
            ("web-old", 3)
        ]
    );
    let l = t.listener(80).unwrap();
    assert_eq!(l.rules().rules().len(), 1);
    let api = &l.routes()[0];
    let names: Vec<_> = api.rules.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["api-v1", "api-admin"]);
    let rw = api.rules.rules()[0].rewrite.as_ref().unwrap();
    assert_eq!(rw.pool.as_ref().unwrap().name, "echo");
    assert_eq!(
        rw.path_prefix,
        Some(("/api/v1/".to_string(), "/v1/".to_string()))
    );
    assert_eq!(api.rules.rules()[1].tag.as_deref(), Some("admin"));
    assert!(matches!(api.jwt, RouteJwt::Listener));
    assert!(!l.jwt_by_route());
}

#[test]
fn bad_route_rules_name_file_line_and_field() {
    let e = try_compile(&format!(
        "{BASE}{}",
        r#"
[[listeners]]
port = 80
[[listeners.rules]]
name = "dup"
action = "allow"
[[listeners.routes]]
name = "direct"
respond = { status = 200, body = "hi" }
[[listeners.routes.rules]]
name = "dup"
action = "deny"
[[listeners.routes.rules]]
name = "bad-regex"
path_regex = "/x("
action = "deny"
[[listeners.routes.rules]]
name = "changes-a-direct-answer"
action = "allow"
pool = "echo"
[[listeners.routes.rules]]
name = "claims"
jwt_claims = { role = "admin" }
action = "allow"
[[listeners.routes]]
name = "origin"
upstream = "origin"
[[listeners.routes.rules]]
name = "r"
action = "redirect"
[[listeners.routes.rules]]
name = "p"
action = "allow"
pool = "nope"
"#
    ))
    .map(|_| ())
    .unwrap_err();
    // Line 27 is `name = "dup"` of the first route rule.
    has(
        &e,
        27,
        "listeners[0].routes[0].rules[0].name",
        "duplicate rule name",
    );
    has(
        &e,
        31,
        "listeners[0].routes[0].rules[1].path_regex",
        "invalid regex",
    );
    // At the change (`pool`, line 36), not the rule's name (34).
    has(
        &e,
        36,
        "listeners[0].routes[0].rules[2]",
        "this route responds itself",
    );
    // At `jwt_claims` (line 39), not the rule's name (38).
    has(
        &e,
        39,
        "listeners[0].routes[0].rules[3].jwt_claims",
        "needs a `jwt` provider",
    );
    has(
        &e,
        46,
        "listeners[0].routes[1].rules[0].location",
        "needs a location",
    );
    has(
        &e,
        50,
        "listeners[0].routes[1].rules[1].pool",
        "no upstream named \"nope\"",
    );
}

#[test]
fn route_jwt_names_a_provider_or_none_and_is_validated() {
    let c = try_compile(&format!(
        "{BASE}{}",
        r#"
[[rate_limits]]
name = "per-partner"
rate = 10
key = "jwt:sub"

[[listeners]]
port = 80
[[listeners.routes]]
name = "partner"
path_prefix = "/partner/"
jwt = "partners"
rate_limits = ["per-partner"]
upstream = "origin"
[[listeners.routes.rules]]
name = "writers"
jwt_claims = { scope = "write" }
action = "allow"
[[listeners.routes]]
name = "open"
upstream = "origin"

[[listeners]]
port = 81
jwt = "partners"
[[listeners.routes]]
name = "acme"
path_prefix = "/.well-known/acme-challenge/"
jwt = "none"
upstream = "origin"
[[listeners.routes]]
name = "same"
path_prefix = "/same/"
jwt = "partners"
upstream = "origin"
[[listeners.routes]]
name = "guarded"
upstream = "origin"
"#
    ))
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let t = &c.engine.routes;
    let l80 = t.listener(80).unwrap();
    assert!(l80.jwt().is_none() && l80.jwt_by_route());
    let (partner, open) = (&l80.routes()[0], &l80.routes()[1]);
    assert!(matches!(partner.jwt, RouteJwt::Provider(_)));
    assert!(l80.jwt_for(Some(partner)).is_some());
    assert!(l80.jwt_for(Some(open)).is_none());
    assert!(l80.jwt_for(None).is_none());
    let l81 = t.listener(81).unwrap();
    let (acme, same, guarded) = (&l81.routes()[0], &l81.routes()[1], &l81.routes()[2]);
    assert!(
        matches!(same.jwt, RouteJwt::Listener),
        "the listener's own provider"
    );
    assert!(l81.jwt_for(Some(acme)).is_none());
    assert!(l81.jwt_for(Some(guarded)).is_some());
    assert!(l81.jwt_for(None).is_some(), "no route: the listener's");

    let e = try_compile(&format!(
        "{BASE}{}",
        r#"
[[jwt]]
name = "none"
jwks = "jwks.example.json"

[[rate_limits]]
name = "per-sub"
rate = 10
key = "jwt:sub"

[[listeners]]
port = 80
[[listeners.routes]]
name = "a"
path_prefix = "/a/"
jwt = "none"
upstream = "origin"
[[listeners.routes]]
name = "b"
path_prefix = "/b/"
jwt = "nobody"
upstream = "origin"
[[listeners.routes]]
name = "c"
rate_limits = ["per-sub"]
upstream = "origin"
"#
    ))
    .map(|_| ())
    .unwrap_err();
    has(&e, 19, "jwt[1].name", "\"none\" is reserved");
    has(
        &e,
        32,
        "listeners[0].routes[0].jwt",
        "the listener has none",
    );
    has(
        &e,
        37,
        "listeners[0].routes[1].jwt",
        "no [[jwt]] provider named \"nobody\"",
    );
    has(
        &e,
        41,
        "listeners[0].routes[2].rate_limits",
        "jwt:sub needs a `jwt` provider",
    );
}

#[test]
fn an_exempt_route_on_a_guarded_listener_loses_the_claims_its_rules_would_test() {
    let e = try_compile(&format!(
        "{BASE}{}",
        r#"
[[listeners]]
port = 80
jwt = "partners"
[[listeners.routes]]
name = "health"
jwt = "none"
upstream = "origin"
[[listeners.routes.rules]]
name = "admins"
jwt_claims = { role = "admin" }
action = "allow"
"#
    ))
    .map(|_| ())
    .unwrap_err();
    has(
        &e,
        27,
        "listeners[0].routes[0].rules[0].jwt_claims",
        "not exempt",
    );
}

/// A listener rule on claims sees the token its request was checked
/// with: on a listener whose routes name another provider it would take
/// that provider's claims for the listener's, so it is refused.
#[test]
fn listener_claim_rules_need_the_listeners_provider_and_no_route_naming_another() {
    let e = try_compile(&format!(
        "{BASE}{}",
        r#"
[[jwt]]
name = "others"
jwks = "jwks.example.json"

[[listeners]]
port = 80
jwt = "partners"
[[listeners.rules]]
name = "admins"
jwt_claims = { scope = "admin" }
action = "allow"
[[listeners.routes]]
name = "other"
path_prefix = "/other/"
jwt = "others"
upstream = "origin"
[[listeners.routes]]
name = "rest"
upstream = "origin"

[[listeners]]
port = 81
[[listeners.rules]]
name = "writers"
jwt_claims = { scope = "write" }
action = "allow"
[[listeners.routes]]
name = "partner"
jwt = "partners"
upstream = "origin"
"#
    ))
    .map(|_| ())
    .unwrap_err();
    has(
        &e,
        27,
        "listeners[0].rules[0].jwt_claims",
        "provider \"others\"",
    );
    has(
        &e,
        42,
        "listeners[1].rules[0].jwt_claims",
        "needs the listener's `jwt` provider",
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    // The listener's own provider named again, or "none", is fine.
    try_compile(&format!(
        "{BASE}{}",
        r#"
[[listeners]]
port = 80
jwt = "partners"
[[listeners.rules]]
name = "admins"
jwt_claims = { scope = "admin" }
action = "allow"
[[listeners.routes]]
name = "health"
path_exact = "/health"
jwt = "none"
upstream = "origin"
[[listeners.routes]]
name = "same"
jwt = "partners"
upstream = "origin"
"#
    ))
    .unwrap_or_else(|e| panic!("{e:#?}"));
}

/// An unknown listener provider is reported once, at the listener: a
/// route's `jwt = "none"` there is not "a listener without one".
#[test]
fn none_on_a_listener_naming_an_unknown_provider_is_not_reported_again() {
    let e = try_compile(&format!(
        "{BASE}{}",
        r#"
[[listeners]]
port = 80
jwt = "nobody"
[[listeners.routes]]
name = "health"
jwt = "none"
upstream = "origin"
"#
    ))
    .map(|_| ())
    .unwrap_err();
    has(
        &e,
        20,
        "listeners[0].jwt",
        "no [[jwt]] provider named \"nobody\"",
    );
    assert_eq!(e.len(), 1, "{e:#?}");
}

/// A route whose requests get a token, rules, limits or an answer of their
/// own must name its path as origins resolve it: `/files%20a/` would be
/// refused on every request (it routes elsewhere once normalized). A
/// route without policy may keep any form.
#[test]
fn a_policy_routes_path_must_be_in_resolved_form() {
    let e = try_compile(&format!(
        "{BASE}{}",
        r#"
[[rate_limits]]
name = "by-route"
rate = 10
key = "route"

[[listeners]]
port = 80
[[listeners.routes]]
name = "files"
path_prefix = "/files%20a/"
jwt = "partners"
upstream = "origin"
[[listeners.routes]]
name = "blocked"
path_exact = "/x/../admin"
respond = { status = 403 }
[[listeners.routes]]
name = "plain"
path_prefix = "/odd//form/"
upstream = "origin"

[[listeners]]
port = 81
rate_limits = ["by-route"]
[[listeners.routes]]
name = "keyed"
path_prefix = "/a//b/"
upstream = "origin"
"#
    ))
    .map(|_| ())
    .unwrap_err();
    has(
        &e,
        27,
        "listeners[0].routes[0].path_prefix",
        "write it as origins resolve it: \"/files a/\"",
    );
    has(
        &e,
        32,
        "listeners[0].routes[1].path_exact",
        "write it as origins resolve it: \"/admin\"",
    );
    has(
        &e,
        44,
        "listeners[1].routes[0].path_prefix",
        "write it as origins resolve it: \"/a/b/\"",
    );
    assert!(
        !e.iter().any(|e| e.contains("listeners[0].routes[2]")),
        "a route without policy keeps its form: {e:#?}"
    );
    assert_eq!(e.len(), 3, "{e:#?}");
}
