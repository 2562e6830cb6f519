use super::*;

/// A proxy-wasm module; `body` adds callbacks.
fn module(body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  {body})"#
    ))
    .unwrap()
}

fn config(plugins: &str, listener: &str) -> String {
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
{plugins}
[[listeners]]
port = 80
{listener}
[[listeners.routes]]
respond = {{ status = 200, body = "hi" }}
"#
    )
}

fn compile_in(d: &Path, text: &str) -> Result<Compiled, Vec<String>> {
    let path = d.join("edge.toml");
    std::fs::write(&path, text).unwrap();
    load(&path).map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

#[test]
fn plugins_compile_relative_to_the_config_and_attach_in_order() {
    let d = ferrogate_testkit::temp_dir("fg-cfg-plugins");
    std::fs::write(d.join("a.wasm"), module("")).unwrap();
    let text = config(
        r#"
[[plugins]]
name = "a"
wasm = "a.wasm"
fail_open = true
memory_mb = 8

[[plugins]]
name = "b"
wasm = "a.wasm"
"#,
        r#"plugins = ["b", "a"]"#,
    );
    let c = compile_in(&d, &text).expect("compiles");
    let l = &c.engine.routes.listeners()[0];
    let names: Vec<_> = l.plugins().iter().map(|p| p.plugin.name()).collect();
    assert_eq!(names, ["b", "a"]);
    assert!(l.plugins()[1].fail_open && !l.plugins()[0].fail_open);
}

#[test]
fn plugin_errors_name_file_line_and_field() {
    let d = ferrogate_testkit::temp_dir("fg-cfg-plugins-bad");
    std::fs::write(d.join("ok.wasm"), module("")).unwrap();
    std::fs::write(d.join("junk.wasm"), b"not wasm").unwrap();
    // Traps in proxy_on_configure: refused before any worker runs it.
    std::fs::write(
        d.join("refuses.wasm"),
        module(r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) unreachable)"#),
    )
    .unwrap();
    std::fs::write(
        d.join("says-no.wasm"),
        module(r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 0)"#),
    )
    .unwrap();
    let text = config(
        r#"
[[plugins]]
name = "missing"
wasm = "nowhere.wasm"

[[plugins]]
name = "junk"
wasm = "junk.wasm"

[[plugins]]
name = "refuses"
wasm = "refuses.wasm"
configuration = "{}"

[[plugins]]
name = "big"
wasm = "ok.wasm"
memory_mb = 0

[[plugins]]
name = "ok"
wasm = "ok.wasm"

[[plugins]]
name = "ok"
wasm = "ok.wasm"

[[plugins]]
name = "says-no"
wasm = "says-no.wasm"
configuration = "no"

[[plugins]]
name = "hungry"
wasm = "ok.wasm"
fuel_per_call = 10000000000
"#,
        r#"plugins = ["ok", "unknown", "ok"]"#,
    );
    let errs = compile_in(&d, &text).expect_err("refused");
    let line = |needle: &str, last: bool| {
        let at = if last {
            text.rfind(needle)
        } else {
            text.find(needle)
        };
        text[..at.expect(needle)].matches('\n').count() + 1
    };
    let has = |line: usize, field: &str, what: &str| {
        assert!(
            errs.iter()
                .any(|e| e.contains(&format!("edge.toml:{line}:"))
                    && e.contains(field)
                    && e.contains(what)),
            "no error at line {line} for {field} ({what}): {errs:#?}"
        );
    };
    has(
        line("\"nowhere.wasm\"", false),
        "plugins[0].wasm",
        "nowhere.wasm",
    );
    has(
        line("\"junk.wasm\"", false),
        "plugins[1].wasm",
        "not a valid WebAssembly module",
    );
    // A trap at start is the module's, though it came in on_configure.
    has(
        line("\"refuses.wasm\"", false),
        "plugins[2].wasm",
        "plugin \"refuses\" did not start",
    );
    has(
        line("configuration = \"no\"", false),
        "plugins[6].configuration",
        "plugin \"says-no\" rejected its configuration",
    );
    has(
        line("fuel_per_call = ", false),
        "plugins[7].fuel_per_call",
        "1000..=1000000000",
    );
    has(
        line("memory_mb = 0", false),
        "plugins[3].memory_mb",
        "1..=4096",
    );
    has(line("name = \"ok\"", true), "plugins[5].name", "duplicate");
    has(
        line("plugins = [", false),
        "listeners[0].plugins[1]",
        "no [[plugins]] named \"unknown\"",
    );
    has(
        line("plugins = [", false),
        "listeners[0].plugins[2]",
        "named twice",
    );
    assert_eq!(errs.len(), 9, "{errs:#?}");
}

#[test]
fn tcp_listeners_run_no_plugins() {
    let d = ferrogate_testkit::temp_dir("fg-cfg-plugins-tcp");
    std::fs::write(d.join("ok.wasm"), module("")).unwrap();
    let text = r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"

[[plugins]]
name = "ok"
wasm = "ok.wasm"

[[upstreams]]
name = "db"
endpoints = ["10.77.0.3:5432"]

[[listeners]]
port = 5432
protocol = "tcp"
upstream = "db"
plugins = ["ok"]
"#;
    let errs = compile_in(&d, text).expect_err("refused");
    assert!(
        errs.iter()
            .any(|e| e.contains("listeners[0].plugins[0]") && e.contains("only HTTP listeners")),
        "{errs:#?}"
    );
}

/// A reload that leaves a plugin as it was hands the engine the same
/// plugin (workers keep their instances and the requests in flight their
/// contexts); a changed configuration or module is a new one.
#[test]
fn an_unchanged_plugin_is_the_same_plugin_after_a_reload() {
    let d = ferrogate_testkit::temp_dir("fg-cfg-plugins-reuse");
    std::fs::write(d.join("a.wasm"), module("")).unwrap();
    let text = |configuration: &str| {
        config(
            &format!(
                r#"
[[plugins]]
name = "reuse-test"
wasm = "a.wasm"
configuration = "{configuration}"
"#
            ),
            r#"plugins = ["reuse-test"]"#,
        )
    };
    let plugin = |c: &Compiled| c.engine.routes.listeners()[0].plugins()[0].plugin.clone();
    let first = plugin(&compile_in(&d, &text("one")).unwrap());
    let again = plugin(&compile_in(&d, &text("one")).unwrap());
    assert!(first.ptr_eq(&again), "recompiled although unchanged");
    let changed = plugin(&compile_in(&d, &text("two")).unwrap());
    assert!(
        !changed.ptr_eq(&again),
        "a new configuration is a new plugin"
    );
    std::fs::write(
        d.join("a.wasm"),
        module(r#"(func (export "proxy_on_tick") (param i32))"#),
    )
    .unwrap();
    let rebuilt = plugin(&compile_in(&d, &text("two")).unwrap());
    assert!(!rebuilt.ptr_eq(&changed), "a new module is a new plugin");
}

/// `[[upstreams]] origin` and a listener on 80 with `listener` in it,
/// then `routes` (whole `[[listeners.routes]]` tables).
fn route_config(plugins: &str, listener: &str, routes: &str) -> String {
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
{plugins}
[[upstreams]]
name = "origin"
endpoints = ["10.77.0.3:8080"]

[[listeners]]
port = 80
{listener}
{routes}"#
    )
}

const TWO_PLUGINS: &str = r#"
[[plugins]]
name = "a"
wasm = "a.wasm"

[[plugins]]
name = "b"
wasm = "a.wasm"
fail_open = true
"#;

#[test]
fn route_plugins_reach_the_snapshots_route_in_order() {
    let d = ferrogate_testkit::temp_dir("fg-cfg-route-plugins");
    std::fs::write(d.join("a.wasm"), module("")).unwrap();
    let text = route_config(
        TWO_PLUGINS,
        r#"plugins = ["a"]"#,
        r#"
[[listeners.routes]]
name = "api"
path_prefix = "/api"
upstream = "origin"
plugins = ["b"]

[[listeners.routes]]
name = "rest"
upstream = "origin"
"#,
    );
    let c = compile_in(&d, &text).expect("compiles");
    let l = &c.engine.routes.listeners()[0];
    let names = |ps: &[ferrogate_proxy::plugin_phase::AttachedPlugin]| -> Vec<String> {
        ps.iter().map(|p| p.plugin.name().to_string()).collect()
    };
    assert_eq!(names(l.plugins()), ["a"]);
    let api = l.routes().iter().find(|r| r.name == "api").unwrap();
    let rest = l.routes().iter().find(|r| r.name == "rest").unwrap();
    assert_eq!(names(&api.plugins), ["b"]);
    assert!(api.plugins[0].fail_open);
    assert!(rest.plugins.is_empty());
}

#[test]
fn route_plugin_errors_name_file_line_and_field() {
    let d = ferrogate_testkit::temp_dir("fg-cfg-route-plugins-bad");
    std::fs::write(d.join("a.wasm"), module("")).unwrap();
    let text = route_config(
        TWO_PLUGINS,
        r#"plugins = ["a"]"#,
        r#"
[[listeners.routes]]
path_prefix = "/x"
upstream = "origin"
plugins = ["b", "nope", "b"]

[[listeners.routes]]
path_prefix = "/y"
upstream = "origin"
plugins = ["a"]

[[listeners.routes]]
respond = { status = 200, body = "hi" }
plugins = ["b"]
"#,
    );
    let errs = compile_in(&d, &text).expect_err("refused");
    let line = |needle: &str| {
        text[..text.find(needle).expect(needle)]
            .matches('\n')
            .count()
            + 1
    };
    let has = |line: usize, field: &str, what: &str| {
        assert!(
            errs.iter()
                .any(|e| e.contains(&format!("edge.toml:{line}:"))
                    && e.contains(field)
                    && e.contains(what)),
            "no error at line {line} for {field} ({what}): {errs:#?}"
        );
    };
    has(
        line(r#"plugins = ["b", "nope""#),
        "listeners[0].routes[0].plugins[1]",
        "no [[plugins]] named \"nope\"",
    );
    has(
        line(r#"plugins = ["b", "nope""#),
        "listeners[0].routes[0].plugins[2]",
        "named twice",
    );
    has(
        line("/y") + 2,
        "listeners[0].routes[1].plugins[0]",
        "on the listener too",
    );
    has(
        line("respond = {") + 1,
        "listeners[0].routes[2].plugins[0]",
        "responds itself",
    );
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn tcp_listeners_routes_run_no_plugins() {
    let d = ferrogate_testkit::temp_dir("fg-cfg-route-plugins-tcp");
    std::fs::write(d.join("a.wasm"), module("")).unwrap();
    let text = route_config(
        TWO_PLUGINS,
        r#"protocol = "tcp""#,
        r#"
[[listeners.routes]]
upstream = "origin"
plugins = ["a"]
"#,
    );
    let errs = compile_in(&d, &text).expect_err("refused");
    assert!(
        errs.iter()
            .any(|e| e.contains("listeners[0].routes[0].plugins[0]")
                && e.contains("only HTTP listeners")),
        "{errs:#?}"
    );
}
