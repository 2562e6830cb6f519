//! proxy-wasm plugins (issue #22) in the lab: filters built with a real SDK
//! (AssemblyScript + @solo-io/proxy-runtime, `stack/plugins/tests/as`) run
//! on a listener at the viewer phases over HTTP/1.1 and HTTP/2 — a header
//! adder (request and response headers) and an authorizer (a local 403) —
//! and a module that traps answers 500, or lets the request through when
//! the plugin is `fail_open`, with every failure counted; and on routes at
//! the origin phases, after the listener's plugins on the request and
//! before them on the response.

use ferrogate_tests::{Lab, VIP, lab_test, workspace};

const ORIGIN: &str = "10.77.0.3:8094";

/// Traps on a request with `x-trap`, passes the others.
const TRAP_WAT: &str = r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (data (i32.const 256) "x-trap")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get (i32.const 0) (i32.const 256) (i32.const 6) (i32.const 0) (i32.const 4)))
      (then unreachable))
    (i32.const 0)))"#;

fn as_filter(name: &str) -> String {
    let p = workspace().join(format!("stack/plugins/tests/as/build/{name}.wasm"));
    assert!(
        p.exists(),
        "{} missing: run stack/plugins/tests/as/build.sh (vendor-setup.sh does)",
        p.display()
    );
    p.display().to_string()
}

fn config(trap: &str) -> String {
    let adder = as_filter("header_adder");
    let auth = as_filter("authorizer");
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[[plugins]]
name = "adder"
wasm = "{adder}"
root_id = "header_adder"
configuration = "from-wasm"

[[plugins]]
name = "auth"
wasm = "{auth}"
root_id = "authorizer"
# proxy-runtime 0.1.8 reads its configuration at start and traps on an
# empty one (the file is refused, naming this plugin).
configuration = "{{}}"

[[plugins]]
name = "trap"
wasm = "{trap}"

[[plugins]]
name = "trap-open"
wasm = "{trap}"
fail_open = true

[[upstreams]]
name = "origin"
endpoints = ["{ORIGIN}"]

[[listeners]]
port = 80
http2 = true
plugins = ["adder"]

[[listeners.routes]]
path_prefix = "/"
upstream = "origin"

[[listeners]]
port = 8082
plugins = ["auth", "adder"]

[[listeners.routes]]
path_prefix = "/"
upstream = "origin"

[[listeners]]
port = 8080
plugins = ["trap"]

[[listeners.routes]]
path_prefix = "/"
upstream = "origin"

[[listeners]]
port = 8081
plugins = ["trap-open"]

[[listeners.routes]]
path_prefix = "/"
upstream = "origin"
"#
    )
}

/// `curl -si` in the client namespace: (status, whole output).
fn curl(lab: &Lab, args: &str) -> (u16, String) {
    let (_, out) = lab.client_sh(&format!("curl -sS -i -m 10 {args}"));
    let status = out
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[test]
fn wasm_filters_add_headers_authorize_and_fail_closed_or_open() {
    lab_test("plugins", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("plugins", ORIGIN);
        let trap = lab.state_dir().join("trap.wasm");
        std::fs::write(&trap, wat::parse_str(TRAP_WAT).expect("trap module")).unwrap();
        let path = lab.state_dir().join("plugins.toml");
        std::fs::write(&path, config(&trap.display().to_string())).unwrap();
        let engine = lab.start_engine_with(&path, "af_xdp", 1);
        // The start-up probe went through the adder: count from here.
        let base = engine.stats();

        // The adder's request header reaches the origin (which echoes the
        // header lines it got), its response header the client.
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let (status, out) = curl(&lab, &format!("{proto} http://{VIP}/headers"));
            assert_eq!(status, 200, "{proto}: {out}");
            assert!(
                out.to_ascii_lowercase().contains("x-plugin: from-wasm"),
                "{proto}: the origin did not get the plugin's header: {out}"
            );
            assert!(
                out.to_ascii_lowercase()
                    .contains("x-served-through: ferrogate-wasm"),
                "{proto}: {out}"
            );
        }

        // The authorizer answers locally, before routing: the origin never
        // sees the request, the adder after it is not called.
        let (status, out) = curl(&lab, &format!("http://{VIP}:8082/headers"));
        assert_eq!(status, 403, "{out}");
        assert!(out.ends_with("forbidden\n"), "{out}");
        assert!(!out.contains("X-Origin"), "{out}");
        assert!(!out.contains("x-served-through"), "{out}");
        let (status, out) = curl(
            &lab,
            &format!("-H 'Authorization: Bearer t' http://{VIP}:8082/headers"),
        );
        assert_eq!(status, 200, "{out}");
        assert!(
            out.to_ascii_lowercase().contains("x-plugin: from-wasm"),
            "{out}"
        );

        // A trap answers 500 on a fail-closed plugin; the next request gets
        // a fresh instance and passes.
        let (status, out) = curl(&lab, &format!("-H 'x-trap: 1' http://{VIP}:8080/headers"));
        assert_eq!(status, 500, "{out}");
        assert!(!out.contains("X-Origin"), "the origin answered: {out}");
        let (status, out) = curl(&lab, &format!("http://{VIP}:8080/headers"));
        assert_eq!(status, 200, "{out}");
        // fail_open: the same trap lets the request through.
        let (status, out) = curl(&lab, &format!("-H 'x-trap: 1' http://{VIP}:8081/headers"));
        assert_eq!(status, 200, "{out}");
        assert!(out.contains("X-Origin: plugins"), "{out}");

        let stats = engine.stats_until(|s| s["stack_plugin_failed_open"] >= 1);
        let delta = |k: &str| stats[k] - base[k];
        assert_eq!(delta("stack_plugin_failures"), 2, "{stats:?}");
        assert_eq!(delta("stack_plugin_failed_open"), 1, "{stats:?}");
        assert_eq!(delta("stack_plugin_local_responses"), 1, "{stats:?}");
        // :80: a head and a response call for each protocol (4); :8082:
        // the authorizer's 403 (1), then both heads and both responses
        // (4); :8080: the trap, then a head and a response call (3);
        // :8081: the trap let through (its response call skipped: the
        // context went with the instance) (1). Plus the body phase of the
        // AssemblyScript filters (they export it), once per short body:
        // :80's adder on each protocol (2), :8082's authorizer and adder (2).
        assert_eq!(delta("stack_plugin_calls"), 13 + 4, "{stats:?}");
        // One instance per plugin on the one worker, started with the
        // snapshot (a trapped one is replaced inside the plugin crate).
        assert_eq!(stats["stack_plugin_instances_started"], 4, "{stats:?}");
        // Every request's contexts ended (the local 403, the 500, the
        // responses, the trap let through).
        assert_eq!(
            stats["stack_plugin_contexts_created"], stats["stack_plugin_contexts_ended"],
            "{stats:?}"
        );
        assert_eq!(delta("stack_plugin_contexts_created"), 8, "{stats:?}");
    });
}

/// Loops forever in `proxy_on_request_headers`: the fuel deadline stops it.
const LOOP_WAT: &str = r#"(module
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 0)))"#;

/// Grows its memory 1 MiB at a time for as long as it is let:
/// the instance memory limit stops it.
const GROW_WAT: &str = r#"(module
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $more
      (drop (memory.grow (i32.const 16)))
      (br $more))
    (i32.const 0)))"#;

/// The value of the series `name{labels}` (labels as written) in an
/// exposition; None when absent.
fn series(text: &str, name_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn sandbox_config(looper: &str, grower: &str) -> String {
    let counter = as_filter("counter");
    let mut c = format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[[plugins]]
name = "counter"
wasm = "{counter}"
root_id = "counter"
configuration = "{{}}"

[[plugins]]
name = "loop"
wasm = "{looper}"
fuel_per_call = 5000000

[[plugins]]
name = "loop-open"
wasm = "{looper}"
fuel_per_call = 5000000
fail_open = true

[[plugins]]
name = "grow"
wasm = "{grower}"
memory_mb = 4

[[plugins]]
name = "grow-open"
wasm = "{grower}"
memory_mb = 4
fail_open = true

[[upstreams]]
name = "origin"
endpoints = ["{ORIGIN}"]

[[listeners]]
port = 80

[[listeners.routes]]
path_prefix = "/"
upstream = "origin"

[[listeners]]
port = 8085
http2 = true
plugins = ["counter"]

[[listeners.routes]]
path_prefix = "/"
upstream = "origin"
"#
    );
    for (port, plugin) in [
        (8080, "loop"),
        (8081, "loop-open"),
        (8083, "grow"),
        (8084, "grow-open"),
    ] {
        c.push_str(&format!(
            r#"
[[listeners]]
port = {port}
plugins = ["{plugin}"]

[[listeners.routes]]
path_prefix = "/"
upstream = "origin"
"#
        ));
    }
    c
}

/// The AssemblyScript counter's `define_metric` counter reaches the
/// engine's `/metrics` exactly; a guest that loops forever or grows its
/// memory without bound answers 500 (200 under `fail_open`), is counted,
/// and the one worker serves the next request at once.
#[test]
fn plugin_metrics_reach_prometheus_and_runaway_guests_are_contained() {
    lab_test("plugsbx", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("plugins", ORIGIN);
        let looper = lab.state_dir().join("loop.wasm");
        std::fs::write(&looper, wat::parse_str(LOOP_WAT).expect("loop module")).unwrap();
        let grower = lab.state_dir().join("grow.wasm");
        std::fs::write(&grower, wat::parse_str(GROW_WAT).expect("grow module")).unwrap();
        let path = lab.state_dir().join("sandbox.toml");
        std::fs::write(
            &path,
            sandbox_config(&looper.display().to_string(), &grower.display().to_string()),
        )
        .unwrap();
        let engine = lab.start_engine_with(&path, "af_xdp", 1);
        let base = engine.stats();

        // N requests through the counter plugin, over both protocols.
        const N: usize = 5;
        for i in 0..N {
            let proto = if i % 2 == 0 {
                "--http1.1"
            } else {
                "--http2-prior-knowledge"
            };
            let (status, out) = curl(&lab, &format!("{proto} http://{VIP}:8085/"));
            assert_eq!(status, 200, "{proto}: {out}");
        }
        let (code, metrics, err) = lab.ctl(&["metrics"]);
        assert_eq!(code, 0, "{err}");
        let counted =
            r#"ferrogate_plugin_counter_total{plugin="counter",name="as_requests_total"}"#;
        assert_eq!(series(&metrics, counted), Some(N as f64), "{metrics}");

        // Runaway guests: each answers 500 fail-closed, 200 fail-open, and
        // a normal request on another listener right after is served by
        // the same (only) worker.
        for (port, expect, what) in [
            (8080, 500, "loop"),
            (8081, 200, "loop-open"),
            (8083, 500, "grow"),
            (8084, 200, "grow-open"),
        ] {
            let (status, out) = curl(&lab, &format!("http://{VIP}:{port}/"));
            assert_eq!(status, expect, "{what}: {out}");
            // Within curl's own bound: a worker stuck in the guest would
            // not answer at all (no wall-clock assert on a loaded machine).
            let (status, out) = curl(&lab, &format!("http://{VIP}/"));
            assert_eq!(status, 200, "after {what}: {out}");
        }
        // And the failing plugins serve again (a fresh instance), still failing.
        let (status, _) = curl(&lab, &format!("http://{VIP}:8080/"));
        assert_eq!(status, 500);

        let stats = engine.stats_until(|s| s["stack_plugin_failed_open"] >= 2);
        let delta = |k: &str| stats[k] - base[k];
        // Every failure, the ones let through included: loop ×2, grow,
        // loop-open, grow-open.
        assert_eq!(delta("stack_plugin_failures"), 5, "{stats:?}");
        assert_eq!(delta("stack_plugin_failed_open"), 2, "{stats:?}");
        // The worker publishes its instances' linear memory: five plugins,
        // each at least the 2 pages (128 KiB) its module declares.
        assert!(
            stats["stack_plugin_memory_bytes"] >= 5 * 128 * 1024,
            "{stats:?}"
        );
        let (_, metrics, _) = lab.ctl(&["metrics"]);
        let failures = |plugin: &str, kind: &str| {
            series(
                &metrics,
                &format!(r#"ferrogate_plugin_failures_total{{plugin="{plugin}",kind="{kind}"}}"#),
            )
        };
        assert_eq!(failures("loop", "timeout"), Some(2.0), "{metrics}");
        assert_eq!(failures("loop-open", "timeout"), Some(1.0), "{metrics}");
        assert_eq!(failures("grow", "out_of_memory"), Some(1.0), "{metrics}");
        assert_eq!(
            failures("grow-open", "out_of_memory"),
            Some(1.0),
            "{metrics}"
        );
        assert_eq!(failures("counter", "trap"), Some(0.0), "{metrics}");
        // The counter saw none of this.
        assert_eq!(series(&metrics, counted), Some(N as f64), "{metrics}");
    });
}

/// Adds `x-order: <tag>` to the request head and to the response head.
fn tag_wat(tag: char) -> String {
    format!(
        r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
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
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 256) (i32.const 7) (i32.const 264) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 256) (i32.const 7) (i32.const 264) (i32.const 1)))
    (i32.const 0)))"#
    )
}

/// :80 — the AssemblyScript adder on the route only; :8083 — the adder
/// and the tagger `L` on the listener, the adder (another configuration)
/// and the tagger `R` on the route.
fn route_config(tag_l: &str, tag_r: &str) -> String {
    let adder = as_filter("header_adder");
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[[plugins]]
name = "adder-listener"
wasm = "{adder}"
root_id = "header_adder"
configuration = "from-listener"

[[plugins]]
name = "adder-route"
wasm = "{adder}"
root_id = "header_adder"
configuration = "from-route"

[[plugins]]
name = "tag-l"
wasm = "{tag_l}"

[[plugins]]
name = "tag-r"
wasm = "{tag_r}"

[[upstreams]]
name = "origin"
endpoints = ["{ORIGIN}"]

[[listeners]]
port = 80
http2 = true

[[listeners.routes]]
path_prefix = "/"
upstream = "origin"
plugins = ["adder-route"]

[[listeners]]
port = 8083
http2 = true
plugins = ["adder-listener", "tag-l"]

[[listeners.routes]]
path_prefix = "/"
upstream = "origin"
plugins = ["adder-route", "tag-r"]
"#
    )
}

/// The values of header `name` in `lines` (`Name: value` lines), in order.
fn values(lines: &str, name: &str) -> Vec<String> {
    lines
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

#[test]
fn route_plugins_run_at_the_origin_phases_inside_the_listeners() {
    lab_test("plugins-route", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("plugins", ORIGIN);
        let mut tags = Vec::new();
        for tag in ['L', 'R'] {
            let p = lab.state_dir().join(format!("tag-{tag}.wasm"));
            std::fs::write(&p, wat::parse_str(tag_wat(tag)).expect("tag module")).unwrap();
            tags.push(p.display().to_string());
        }
        let path = lab.state_dir().join("route-plugins.toml");
        std::fs::write(&path, route_config(&tags[0], &tags[1])).unwrap();
        let engine = lab.start_engine_with(&path, "af_xdp", 1);
        let base = engine.stats();

        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            // The route's adder alone: its request header reaches the
            // origin (which echoes the lines it got), its response header
            // the client.
            let (status, out) = curl(&lab, &format!("{proto} http://{VIP}/headers"));
            assert_eq!(status, 200, "{proto}: {out}");
            let (head, body) = out.split_once("\r\n\r\n").expect("a head");
            assert_eq!(values(body, "x-plugin"), ["from-route"], "{proto}: {out}");
            assert_eq!(
                values(head, "x-served-through"),
                ["ferrogate-wasm"],
                "{proto}: {out}"
            );

            // Listener and route: viewer request, then origin request on
            // the head as the listener's plugins left it; origin response,
            // then viewer response (each side's plugins in reverse).
            let (status, out) = curl(&lab, &format!("{proto} http://{VIP}:8083/headers"));
            assert_eq!(status, 200, "{proto}: {out}");
            let (head, body) = out.split_once("\r\n\r\n").expect("a head");
            assert_eq!(
                values(body, "x-plugin"),
                ["from-listener", "from-route"],
                "{proto}: {out}"
            );
            assert_eq!(values(body, "x-order"), ["L", "R"], "{proto}: {out}");
            assert_eq!(values(head, "x-order"), ["R", "L"], "{proto}: {out}");
            assert_eq!(values(head, "x-served-through").len(), 2, "{proto}: {out}");
        }

        let stats = engine.stats_until(|s| {
            s["stack_plugin_contexts_ended"] - base["stack_plugin_contexts_ended"] >= 10
        });
        let delta = |k: &str| stats[k] - base[k];
        assert_eq!(delta("stack_plugin_failures"), 0, "{stats:?}");
        // Per protocol: :80 one context, :8083 four.
        assert_eq!(delta("stack_plugin_contexts_created"), 10, "{stats:?}");
        assert_eq!(
            stats["stack_plugin_contexts_created"], stats["stack_plugin_contexts_ended"],
            "{stats:?}"
        );
        // Each context: its request head and its response head; the
        // adders' body phase too, once per short body (the `tag` modules
        // have none): per protocol :80 one, :8083 two.
        assert_eq!(delta("stack_plugin_calls"), 20 + 6, "{stats:?}");
        // The route's plugins start with the snapshot like the listener's.
        assert_eq!(stats["stack_plugin_instances_started"], 4, "{stats:?}");
        // A plugin only routes run is in /metrics like a listener's.
        let (code, metrics, err) = lab.ctl(&["metrics"]);
        assert_eq!(code, 0, "{err}");
        assert!(
            metrics.contains(r#"ferrogate_plugin_failures_total{plugin="tag-r",kind="trap"} 0"#),
            "{metrics}"
        );
    });
}

/// Listener 80: the AssemblyScript body rewriter (removes content-length
/// at the head, buffers the response body until its end, then replaces
/// "origin" with "edge"); listener 8086: the header adder, whose default
/// body callback passes every piece on.
fn body_config() -> String {
    let rewriter = as_filter("body_rewriter");
    let adder = as_filter("header_adder");
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[[plugins]]
name = "rewriter"
wasm = "{rewriter}"
root_id = "body_rewriter"
configuration = "{{}}"
# A whole-body rewrite is millions of guest instructions, not a header
# filter's thousands.
fuel_per_call = 1_000_000_000

[[plugins]]
name = "adder"
wasm = "{adder}"
root_id = "header_adder"
configuration = "from-wasm"

[[upstreams]]
name = "nginx"
endpoints = ["10.77.0.3:8080"]

[[listeners]]
port = 80
http2 = true
plugins = ["rewriter"]

[[listeners.routes]]
path_prefix = "/"
upstream = "nginx"

[[listeners]]
port = 8086
plugins = ["adder"]

[[listeners.routes]]
path_prefix = "/"
upstream = "nginx"
"#
    )
}

#[test]
fn a_body_plugin_rewrites_whole_bodies_and_a_pass_through_one_streams_them_intact() {
    lab_test("plugbody", || {
        let lab = Lab::up(1);
        // Files the lab's nginx origin serves under /files/: a text body
        // many reads long, and one past what a plugin may hold.
        let www = lab.state_dir().join("www");
        let text: String = (0..20_000).map(|i| format!("origin line {i}\n")).collect();
        std::fs::write(www.join("text.txt"), &text).unwrap();
        std::fs::write(www.join("big.txt"), "origin\n".repeat(300_000)).unwrap();
        let path = lab.state_dir().join("body.toml");
        std::fs::write(&path, body_config()).unwrap();
        let engine = lab.start_engine_with(&path, "af_xdp", 1);
        let base = engine.stats();
        let want = text.replace("origin", "edge");
        let dir = lab.state_dir().display().to_string();

        // HTTP/1.1: the rewritten body, re-framed (chunked, no length).
        let (ok, head) = lab.client_sh(&format!(
            "curl -sS -m 20 -D - -o {dir}/fg-body-11.txt http://{VIP}/files/text.txt"
        ));
        assert!(ok, "{head}");
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
        let got = std::fs::read_to_string(lab.state_dir().join("fg-body-11.txt")).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the rewritten body differs");

        // HTTP/2: the same body as DATA, no length announced.
        let (ok, head) = lab.client_sh(&format!(
            "curl --http2-prior-knowledge -sS -m 20 -D - -o {dir}/fg-body-h2.txt http://{VIP}/files/text.txt"
        ));
        assert!(ok, "{head}");
        assert!(head.starts_with("HTTP/2 200"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("content-length"),
            "{head}"
        );
        let got = std::fs::read_to_string(lab.state_dir().join("fg-body-h2.txt")).unwrap();
        assert!(got == want, "the HTTP/2 body differs");

        // HTTP/1.0: close-delimited.
        let (ok, head) = lab.client_sh(&format!(
            "curl -0 -sS -m 20 -D - -o {dir}/fg-body-10.txt http://{VIP}/files/text.txt"
        ));
        assert!(ok, "{head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        let got = std::fs::read_to_string(lab.state_dir().join("fg-body-10.txt")).unwrap();
        assert!(got == want, "the HTTP/1.0 body differs");

        // Past what the rewriter may hold (it buffers to the end): its
        // failure, counted; the client sees the body cut, and the next
        // request is served.
        let (ok, out) = lab.client_sh(&format!(
            "curl -sS -m 20 -o /dev/null http://{VIP}/files/big.txt"
        ));
        assert!(!ok, "a cut body must fail the client: {out}");
        let (ok, out) = lab.client_sh(&format!("curl -sS -m 20 http://{VIP}/hello"));
        assert!(ok && out.contains("edge"), "{out}");

        // The header adder passes each piece on: 1 MiB of random bytes
        // arrive intact, through several plugin calls.
        let (ok, head) = lab.client_sh(&format!(
            "curl -sS -m 20 -D - -o {dir}/fg-body-1m http://{VIP}:8086/files/1m"
        ));
        assert!(ok, "{head}");
        // It changes nothing: the origin's length stands (no re-framing).
        assert!(
            head.to_ascii_lowercase()
                .contains("content-length: 1048576"),
            "{head}"
        );
        let got = std::fs::read(lab.state_dir().join("fg-body-1m")).unwrap();
        let origin = std::fs::read(www.join("1m")).unwrap();
        assert_eq!(got.len(), origin.len());
        assert!(got == origin, "the 1 MiB body differs");

        let stats =
            engine.stats_until(|s| s["stack_plugin_failures"] > base["stack_plugin_failures"]);
        assert_eq!(
            stats["stack_plugin_failures"] - base["stack_plugin_failures"],
            1,
            "the oversized body is the one failure: {stats:?}"
        );
        assert!(
            stats["stack_plugin_calls"] - base["stack_plugin_calls"] > 16,
            "{stats:?}"
        );
    });
}
