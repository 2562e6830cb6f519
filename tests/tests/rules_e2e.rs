//! L7 rules in the lab with curl (issue #20): ordered per listener, first
//! match wins, before routing — deny by path regex, header regex, cookie +
//! query + method, source prefix (IPv4 and IPv6); an allow rule ahead of a
//! deny; a redirect with a templated location (HTTP/1.1 and h2c); counters
//! per rule and the rule and tag in the access log. A route's own rules
//! after routing: a deny scoped to its route, a listener deny winning over
//! the route's allow, a route rule's rewrite and pool.

use std::time::Duration;

use ferrogate_tests::{Lab, VIP, lab_test};

fn config() -> String {
    r#"vips = ["10.77.0.10/24", "fd77::10/64"]

[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[access_log]
path = "access.log"

[[upstreams]]
name = "origin"
endpoints = ["10.77.0.3:8080"]

[[upstreams]]
name = "echo"
endpoints = ["10.77.0.3:8091"]

[[listeners]]
port = 80
http2 = true

[[listeners.rules]]
name = "trusted"
source = ["10.77.0.2"]
headers = { "x-trusted" = "yes" }
action = "allow"

[[listeners.rules]]
name = "wp"
path_regex = "/wp-(admin|login)[^/]*"
action = "deny"
body = "no wp here\n"
tag = "scanner"

[[listeners.rules]]
name = "sqlmap"
headers = { "user-agent" = { regex = "(?i)sqlmap" } }
action = "deny"
status = 406

[[listeners.rules]]
name = "old-docs"
path_prefix = "/docs/v1/"
action = "redirect"
status = 301
location = "https://docs.example{path}{query}"

[[listeners.rules]]
name = "debug"
methods = ["GET"]
cookies = { debug = "1" }
query = { trace = true }
action = "deny"
status = 451

[[listeners.rules]]
name = "v6-admin"
source = ["fd77::/64"]
path_prefix = "/admin"
action = "deny"

[[listeners.rules]]
name = "v1-api"
path_prefix = "/v1/"
action = "allow"
rewrite_prefix = { from = "/v1/", to = "/" }
pool = "echo"
request_headers = { set = { "X-Env" = "edge" }, add = { "X-Via-Rule" = "v1-api" }, remove = ["X-Secret"] }
response_headers = { add = { "X-Served-By" = "ferrogate" }, remove = ["X-Origin"] }

# Header hygiene for the shop, kept when a shop route rule has changes.
[[listeners.rules]]
name = "shop-hygiene"
path_prefix = "/shop/"
action = "allow"
request_headers = { add = { "X-Hygiene" = "listener" }, remove = ["X-Secret"] }

# A route with rules of its own, evaluated after the listener's.
[[listeners.routes]]
name = "shop"
path_prefix = "/shop/"
upstream = "origin"

[[listeners.routes.rules]]
name = "shop-no-debug"
query = { debug = true }
action = "deny"
status = 409
body = "no debugging the shop\n"
tag = "shop"

[[listeners.routes.rules]]
name = "shop-v2"
path_prefix = "/shop/v2/"
action = "allow"
rewrite_prefix = { from = "/shop/v2/", to = "/" }
pool = "echo"
request_headers = { add = { "X-Route-Rule" = "shop-v2" } }

[[listeners.routes.rules]]
name = "shop-open"
action = "allow"

[[listeners.routes]]
name = "origin"
upstream = "origin"
"#
    .to_string()
}

/// (status, Location, body) of a curl from the client namespace.
fn get(lab: &Lab, args: &[&str]) -> (u16, String, String) {
    let mut argv = vec!["curl", "-sS", "-m", "5", "-D", "-"];
    argv.extend_from_slice(args);
    let out = lab.exec("client", &argv).expect("curl");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    let location = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, location, body.to_string())
}

#[test]
fn rules_deny_allow_and_redirect_before_routing_and_are_counted() {
    lab_test("rules", || {
        let lab = Lab::up(1);
        let path = lab.state_dir().join("rules.toml");
        std::fs::write(&path, config()).unwrap();
        let engine = lab.start_engine_with(&path, "af_xdp", 1);
        let url = |p: &str| format!("http://{VIP}{p}");

        // No rule matches: routed to the origin.
        let (s, _, body) = get(&lab, &[&url("/hello")]);
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("path=/hello"), "{body}");
        // Path regex (whole path), with the configured body.
        let (s, _, body) = get(&lab, &[&url("/wp-login.php")]);
        assert_eq!((s, body.as_str()), (403, "no wp here\n"));
        assert_eq!(get(&lab, &[&url("/blog/wp-login.php")]).0, 200);
        // The allow rule ahead of it lets the trusted client through.
        let (s, _, body) = get(&lab, &["-H", "X-Trusted: yes", &url("/wp-login.php")]);
        assert_eq!(s, 200, "{body}");
        // Header regex, case-insensitive pattern.
        assert_eq!(get(&lab, &["-A", "SQLMap/1.7", &url("/")]).0, 406);
        // Cookie AND query argument AND method.
        let debug = ["-b", "debug=1"];
        assert_eq!(get(&lab, &[debug[0], debug[1], &url("/x?trace")]).0, 451);
        assert_eq!(get(&lab, &[debug[0], debug[1], &url("/x?other=1")]).0, 200);
        assert_eq!(
            get(&lab, &["-X", "POST", debug[0], debug[1], &url("/x?trace")]).0,
            200
        );
        // Redirect with the path and query filled in, over HTTP/1.1 and h2c.
        let (s, to, _) = get(&lab, &[&url("/docs/v1/intro?lang=en")]);
        assert_eq!(
            (s, to.as_str()),
            (301, "https://docs.example/docs/v1/intro?lang=en")
        );
        let (s, to, _) = get(&lab, &["--http2-prior-knowledge", &url("/docs/v1/a")]);
        assert_eq!((s, to.as_str()), (301, "https://docs.example/docs/v1/a"));
        // Source prefix over IPv6: the IPv4 client is routed, the IPv6 one
        // is not.
        assert_eq!(get(&lab, &[&url("/admin")]).0, 200);
        let (s, _, body) = get(&lab, &["-g", "http://[fd77::10]/admin"]);
        assert_eq!((s, body.as_str()), (403, "forbidden\n"));

        // An allow rule that rewrites: the path's prefix, the pool, request
        // fields set, added and removed, response fields added and
        // removed — over HTTP/1.1 and h2c. The echo origin lists the
        // fields it got (`/headers`) and sends `X-Origin`.
        let _echo = lab.start_origin("echo", "10.77.0.3:8091");
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let (s, head_and_body) = {
                let mut argv = vec!["curl", "-sS", "-m", "5", "-D", "-", proto];
                argv.extend_from_slice(&["-H", "X-Env: client", "-H", "X-Secret: s3cret"]);
                let u = url("/v1/headers");
                argv.push(&u);
                let out = lab.exec("client", &argv).expect("curl");
                let s = out
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse::<u16>().ok());
                (s, out)
            };
            assert_eq!(s, Some(200), "{proto}: {head_and_body}");
            let (head, body) = head_and_body
                .split_once("\r\n\r\n")
                .unwrap_or((&head_and_body, ""));
            let head = head.to_ascii_lowercase();
            assert!(head.contains("x-served-by: ferrogate"), "{proto}: {head}");
            assert!(!head.contains("x-origin"), "{proto}: {head}");
            let body = body.to_ascii_lowercase();
            assert!(body.contains("x-env: edge"), "{proto}: {body}");
            assert!(!body.contains("x-env: client"), "{proto}: {body}");
            assert!(body.contains("x-via-rule: v1-api"), "{proto}: {body}");
            assert!(!body.contains("s3cret"), "{proto}: {body}");
        }
        // The next request on the same keep-alive connection is not
        // rewritten (a rule's changes belong to its request).
        let out = lab
            .exec(
                "client",
                &[
                    "curl",
                    "-sS",
                    "-m",
                    "5",
                    "-D",
                    "-",
                    &url("/v1/headers"),
                    &url("/hello"),
                ],
            )
            .expect("curl");
        let second = out.rsplit("HTTP/1.1 ").next().unwrap_or("");
        assert!(second.starts_with("200"), "{out}");
        assert!(
            second.contains("path=/hello"),
            "the origin pool, not echo: {out}"
        );
        assert!(
            !second.to_ascii_lowercase().contains("x-served-by"),
            "{out}"
        );
        // A doubled slash after the prefix does not become `//host/...`
        // upstream: the echo origin sees `/headers`.
        let (s, _, body) = get(&lab, &["--path-as-is", &url("/v1//headers")]);
        assert_eq!(s, 200, "{body}");
        assert!(body.to_ascii_lowercase().contains("x-env: edge"), "{body}");
        // The rewritten path reached the origin: `/v1/x` is `/x` upstream.
        let (s, _, body) = get(&lab, &["-H", "X-Secret: s", &url("/v1/status/201")]);
        assert_eq!(s, 201, "{body}");

        let stats = engine.stats_until(|s| {
            s.get("rule_debug_hits") == Some(&1) && s.get("rule_v1-api_hits") == Some(&5)
        });
        let hits = |r: &str| stats.get(&format!("rule_{r}_hits")).copied();
        assert_eq!(hits("wp"), Some(1), "{stats:?}");
        assert_eq!(hits("trusted"), Some(1));
        assert_eq!(hits("sqlmap"), Some(1));
        assert_eq!(hits("debug"), Some(1));
        assert_eq!(hits("old-docs"), Some(2));
        assert_eq!(hits("v6-admin"), Some(1));
        assert_eq!(hits("v1-api"), Some(5));

        // Route rules (after routing, after the listener's): the shop
        // route's rule denies, the same request on another route does not.
        let (s, _, body) = get(&lab, &[&url("/shop/cart?debug=1")]);
        assert_eq!((s, body.as_str()), (409, "no debugging the shop\n"));
        let (s, _, body) = get(&lab, &[&url("/cart?debug=1")]);
        assert_eq!(s, 200, "{body}");
        // A listener allow does not skip them.
        let (s, _, _) = get(&lab, &["-H", "X-Trusted: yes", &url("/shop/cart?debug=1")]);
        assert_eq!(s, 409);
        // A listener deny wins over the route's allow-all (never reached).
        assert_eq!(get(&lab, &["-A", "sqlmap", &url("/shop/cart")]).0, 406);
        let (s, _, body) = get(&lab, &[&url("/shop/cart")]);
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("path=/shop/cart"), "{body}");
        // A route rule's rewrite and pool, over HTTP/1.1 and h2c; the
        // listener allow's changes apply too (X-Secret removed, its
        // addition kept).
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let (s, _, body) = get(
                &lab,
                &[proto, "-H", "X-Secret: s3cret", &url("/shop/v2/headers")],
            );
            assert_eq!(s, 200, "{proto}: {body}");
            let body = body.to_ascii_lowercase();
            assert!(body.contains("x-route-rule: shop-v2"), "{proto}: {body}");
            assert!(body.contains("x-hygiene: listener"), "{proto}: {body}");
            assert!(!body.contains("s3cret"), "{proto}: {body}");
        }
        // A path routed to the origin as sent but to the shop once
        // resolved would skip the shop's rules: refused (400).
        for path in ["/x/../shop/cart?debug=1", "/%73hop/cart?debug=1"] {
            for proto in ["--http1.1", "--http2-prior-knowledge"] {
                let (s, _, body) = get(&lab, &["--path-as-is", proto, &url(path)]);
                assert_eq!(s, 400, "{path} {proto}: {body}");
            }
        }
        let stats = engine.stats_until(|s| {
            s.get("rule_shop-v2_hits") == Some(&2) && s.get("stack_ambiguous_paths") == Some(&4)
        });
        let hits = |r: &str| stats.get(&format!("rule_{r}_hits")).copied();
        assert_eq!(hits("shop-no-debug"), Some(2), "{stats:?}");
        assert_eq!(hits("shop-open"), Some(1), "not for the listener's deny");
        assert_eq!(hits("sqlmap"), Some(2));
        assert_eq!(hits("trusted"), Some(2));
        assert_eq!(hits("shop-hygiene"), Some(4), "{stats:?}");
        assert_eq!(stats.get("stack_ambiguous_paths"), Some(&4), "{stats:?}");

        // The access log names the rule and its tag.
        let log = lab.state_dir().join("access.log");
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("\"tag\":\"scanner\"") && text.contains("\"tag\":\"shop\"") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let line = text
            .lines()
            .find(|l| l.contains("\"rule\":\"wp\""))
            .unwrap_or_else(|| panic!("no record of the wp rule in:\n{text}"));
        assert!(
            line.contains("\"tag\":\"scanner\"") && line.contains("\"status\":403"),
            "{line}"
        );
        // A route rule's record: its name, its tag, the route.
        let line = text
            .lines()
            .find(|l| l.contains("\"rule\":\"shop-no-debug\""))
            .unwrap_or_else(|| panic!("no record of the shop-no-debug rule in:\n{text}"));
        assert!(
            line.contains("\"tag\":\"shop\"")
                && line.contains("\"status\":409")
                && line.contains("\"route\":\"shop\""),
            "{line}"
        );
        drop(engine);
    });
}
