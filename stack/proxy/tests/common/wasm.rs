//! proxy-wasm modules for the body-phase tests, in WAT (kept out of
//! `common/mod.rs`: the fuzz targets include that file and have no `wat`).

/// Holds the response body to its end (StopIterationAndBuffer), then
/// wraps it: `open` prepended, `close` appended. It removes
/// `content-length` at the response head, as a proxy-wasm filter that
/// changes the length must.
pub fn body_wrapper(name: &str, open: char, close: char) -> ferrogate_proxy::plugins::Plugin {
    body_wrapper_that(name, open, close, true)
}

/// [`body_wrapper`]; `drop_length` false: one that forgets to remove
/// `content-length` (its change of the length is its failure).
pub fn body_wrapper_that(
    name: &str,
    open: char,
    close: char,
    drop_length: bool,
) -> ferrogate_proxy::plugins::Plugin {
    let on_headers = if drop_length {
        "(drop (call $remove (i32.const 2) (i32.const 272) (i32.const 14)))"
    } else {
        ""
    };
    let text = format!(
        r#"(module
  (import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 272) "content-length")
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    {on_headers}
    (i32.const 0))
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (data (i32.const 256) "{open}{close}")
  (func (export "proxy_on_response_body") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (drop (call $set (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 256) (i32.const 1)))
    (drop (call $set (i32.const 1) (i32.add (local.get $len) (i32.const 1)) (i32.const 0)
      (i32.const 257) (i32.const 1)))
    (i32.const 0)))"#
    );
    let bytes = wat::parse_str(&text).unwrap();
    let module = ferrogate_proxy::plugins::PluginModule::compile(
        &bytes,
        &ferrogate_proxy::plugins::PluginLimits::default(),
    )
    .expect("compile");
    ferrogate_proxy::plugins::Plugin::new(
        module,
        ferrogate_proxy::plugins::PluginConfig {
            name: name.into(),
            ..Default::default()
        },
    )
}

/// Holds the request body to its end, then wraps it in `[` `]`;
/// `drop_length`: removes `content-length` at the request head first, as a
/// filter that changes the length must.
pub fn request_body_wrapper(name: &str, drop_length: bool) -> ferrogate_proxy::plugins::Plugin {
    let on_headers = if drop_length {
        "(drop (call $remove (i32.const 0) (i32.const 272) (i32.const 14)))"
    } else {
        ""
    };
    let text = format!(
        r#"(module
  (import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (data (i32.const 256) "[]")
  (data (i32.const 272) "content-length")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    {on_headers}
    (i32.const 0))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (drop (call $set (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 256) (i32.const 1)))
    (drop (call $set (i32.const 0) (i32.add (local.get $len) (i32.const 1)) (i32.const 0)
      (i32.const 257) (i32.const 1)))
    (i32.const 0)))"#
    );
    let bytes = wat::parse_str(&text).unwrap();
    let module = ferrogate_proxy::plugins::PluginModule::compile(
        &bytes,
        &ferrogate_proxy::plugins::PluginLimits::default(),
    )
    .expect("compile");
    ferrogate_proxy::plugins::Plugin::new(
        module,
        ferrogate_proxy::plugins::PluginConfig {
            name: name.into(),
            ..Default::default()
        },
    )
}

/// At `proxy_on_response_trailers` (and `proxy_on_request_trailers`):
/// replaces `x-checksum` with `def`, adds `x-plugin: yes` and
/// `content-length: y` (a field that never goes as a trailer: the proxy
/// leaves it out); `trap`: then traps. It has no body callbacks.
pub fn trailer_editor(name: &str, trap: bool) -> ferrogate_proxy::plugins::Plugin {
    let trap = if trap { "unreachable" } else { "" };
    let body = format!(
        r#"
    (drop (call $rep (local.get $map) (i32.const 256) (i32.const 10) (i32.const 272) (i32.const 3)))
    (drop (call $add (local.get $map) (i32.const 288) (i32.const 8) (i32.const 304) (i32.const 3)))
    (drop (call $add (local.get $map) (i32.const 320) (i32.const 14) (i32.const 304) (i32.const 1)))
    {trap}
    (i32.const 0)"#
    );
    let text = format!(
        r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $rep (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (data (i32.const 256) "x-checksum")
  (data (i32.const 272) "def")
  (data (i32.const 288) "x-plugin")
  (data (i32.const 304) "yes")
  (data (i32.const 320) "content-length")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32) (local $map i32)
    (local.set $map (i32.const 3)){body})
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) (local $map i32)
    (local.set $map (i32.const 1)){body}))"#
    );
    let bytes = wat::parse_str(&text).unwrap();
    let module = ferrogate_proxy::plugins::PluginModule::compile(
        &bytes,
        &ferrogate_proxy::plugins::PluginLimits::default(),
    )
    .expect("compile");
    ferrogate_proxy::plugins::Plugin::new(
        module,
        ferrogate_proxy::plugins::PluginConfig {
            name: name.into(),
            ..Default::default()
        },
    )
}
