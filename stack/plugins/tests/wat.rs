//! Hand-written modules: a well-behaved filter that exercises the host
//! functions, and misbehaving ones the sandbox must contain and count.

use std::time::{Duration, Instant};

use ferrogate_plugins::{
    CompileError, FailureKind, HeaderList, MetricKind, Now, Outcome, Plugin, PluginConfig,
    PluginInstance, PluginLimits, PluginModule, PluginStats, Properties,
};

/// A module with the exports every test needs (ABI marker, memory, a bump
/// `malloc`, `proxy_on_context_create`), `imports` first and `body` after.
fn wat(imports: &str, body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  {body})"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad test module: {e}\n{text}"))
}

fn now(ms: u64) -> Now {
    Now {
        monotonic_ms: ms,
        unix_nanos: 1_700_000_000_000_000_000 + ms * 1_000_000,
    }
}

fn plugin(bytes: &[u8], limits: &PluginLimits, configuration: &[u8]) -> Plugin {
    let module = PluginModule::compile(bytes, limits).expect("compile");
    Plugin::new(
        module,
        PluginConfig {
            name: "test".into(),
            root_id: "test".into(),
            configuration: configuration.to_vec(),
            ..Default::default()
        },
    )
}

fn h(pairs: &[(&str, &str)]) -> HeaderList {
    HeaderList::from_pairs(pairs.iter().copied())
}

const GOOD_IMPORTS: &str = r#"
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $getbuf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $setbuf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $defm (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $incm (param i32 i64) (result i32)))
  (import "env" "proxy_get_shared_data" (func $getsh (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $setsh (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
"#;

// Out-pointers at 0 (ptr), 4 (size), 8 (cas), 16 (metric id); strings
// from 256; a serialized header map at 512; the heap from 4096.
const GOOD_BODY: &str = r#"
  (global $cfg_ptr (mut i32) (i32.const 0))
  (global $cfg_len (mut i32) (i32.const 0))
  (global $ticks (mut i32) (i32.const 0))
  (data (i32.const 256) "x-wat")
  (data (i32.const 264) "1")
  (data (i32.const 272) "request\00path\00")
  (data (i32.const 288) "x-path")
  (data (i32.const 296) "x-config")
  (data (i32.const 312) "server")
  (data (i32.const 320) "wat")
  (data (i32.const 328) "x-secret")
  (data (i32.const 336) "rewritten")
  (data (i32.const 352) "x-deny")
  (data (i32.const 360) "denied")
  (data (i32.const 368) "no")
  (data (i32.const 376) "ticks")
  (data (i32.const 384) "x-set")
  (data (i32.const 392) "k")
  (data (i32.const 400) "x-shared")
  (data (i32.const 416) "x-stub")
  (data (i32.const 424) "12")
  (data (i32.const 512) "\01\00\00\00\07\00\00\00\01\00\00\00x-local\001\00")
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 100)))
    (drop (call $defm (i32.const 0) (i32.const 376) (i32.const 5) (i32.const 16)))
    (global.set $ticks (i32.load (i32.const 16)))
    (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.gt_u (local.get $size) (i32.const 0)) (then
      (drop (call $getbuf (i32.const 7) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4)))
      (global.set $cfg_ptr (i32.load (i32.const 0)))
      (global.set $cfg_len (i32.load (i32.const 4)))))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $incm (global.get $ticks) (i64.const 1))))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (i32.eqz (call $get (i32.const 0) (i32.const 352) (i32.const 6) (i32.const 0) (i32.const 4))) (then
      (drop (call $local (i32.const 403) (i32.const 360) (i32.const 6) (i32.const 368) (i32.const 2)
                         (i32.const 512) (i32.const 22) (i32.const -1)))
      (return (i32.const 1))))
    (drop (call $add (i32.const 0) (i32.const 256) (i32.const 5) (i32.const 264) (i32.const 1)))
    (if (i32.eqz (call $prop (i32.const 272) (i32.const 13) (i32.const 0) (i32.const 4))) (then
      (drop (call $add (i32.const 0) (i32.const 288) (i32.const 6) (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    (drop (call $add (i32.const 0) (i32.const 296) (i32.const 8) (global.get $cfg_ptr) (global.get $cfg_len)))
    (if (i32.eqz (call $get (i32.const 0) (i32.const 384) (i32.const 5) (i32.const 0) (i32.const 4))) (then
      (drop (call $setsh (i32.const 392) (i32.const 1) (i32.load (i32.const 0)) (i32.load (i32.const 4)) (i32.const 0)))))
    (if (i32.eqz (call $getsh (i32.const 392) (i32.const 1) (i32.const 0) (i32.const 4) (i32.const 8))) (then
      (drop (call $add (i32.const 0) (i32.const 400) (i32.const 8) (i32.load (i32.const 0)) (i32.load (i32.const 4))))))
    (if (i32.eq (i32.const 12) (call $http (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                                           (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))) (then
      (drop (call $add (i32.const 0) (i32.const 416) (i32.const 6) (i32.const 424) (i32.const 2)))))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $replace (i32.const 2) (i32.const 312) (i32.const 6) (i32.const 320) (i32.const 3)))
    (drop (call $remove (i32.const 2) (i32.const 328) (i32.const 8)))
    (i32.const 0))
  (func (export "proxy_on_response_body") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (drop (call $setbuf (i32.const 1) (i32.const 0) (local.get $len) (i32.const 336) (i32.const 9)))
    (i32.const 0))
  (func (export "proxy_on_log") (param i32)
    (drop (call $log (i32.const 2) (i32.const 256) (i32.const 5))))
"#;

fn good() -> Vec<u8> {
    wat(GOOD_IMPORTS, GOOD_BODY)
}

#[test]
fn well_behaved_module_edits_headers_and_body() {
    let p = plugin(&good(), &PluginLimits::default(), b"cfg-value");
    assert_eq!(p.name(), "test");
    let mut inst = PluginInstance::new(&p, now(0)).expect("start");
    let mut props = Properties::new();
    props.set("request.path", "/p");
    let ctx = inst.create_http_context(props).unwrap();

    let mut req = h(&[(":path", "/p"), ("host", "a")]);
    assert_eq!(
        inst.on_request_headers(ctx, &mut req, true),
        Outcome::Continue
    );
    assert_eq!(req.get(b"x-wat"), Some(&b"1"[..]));
    assert_eq!(req.get(b"x-path"), Some(&b"/p"[..]));
    assert_eq!(req.get(b"x-config"), Some(&b"cfg-value"[..]));
    // proxy_http_call is a stub: it answers Unimplemented (12).
    assert_eq!(req.get(b"x-stub"), Some(&b"12"[..]));
    assert_eq!(req.get(b"host"), Some(&b"a"[..]));

    let mut resp = h(&[(":status", "200"), ("Server", "origin"), ("x-secret", "s")]);
    assert_eq!(
        inst.on_response_headers(ctx, &mut resp, false),
        Outcome::Continue
    );
    assert_eq!(resp, h(&[(":status", "200"), ("Server", "wat")]));

    // The body is buffered until its end, then replaced.
    let mut body = b"hello ".to_vec();
    assert_eq!(inst.on_response_body(ctx, &mut body, false), Outcome::Pause);
    assert_eq!(body, b"hello ");
    body.extend_from_slice(b"world");
    assert_eq!(
        inst.on_response_body(ctx, &mut body, true),
        Outcome::Continue
    );
    assert_eq!(body, b"rewritten");

    // No callback exported: Continue, the body untouched.
    let mut rb = b"req".to_vec();
    assert_eq!(inst.on_request_body(ctx, &mut rb, true), Outcome::Continue);
    assert_eq!(rb, b"req");

    assert_eq!(inst.open_contexts(), 1);
    inst.finish(ctx).unwrap();
    assert_eq!(inst.open_contexts(), 0);
    // A finished context is gone.
    let mut again = h(&[]);
    match inst.on_request_headers(ctx, &mut again, true) {
        Outcome::Failed(f) => assert_eq!(f.kind, FailureKind::UnknownContext),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(p.stats(), PluginStats::default());
}

#[test]
fn local_response_is_the_phase_outcome() {
    let p = plugin(&good(), &PluginLimits::default(), b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    let mut req = h(&[(":path", "/"), ("x-deny", "yes")]);
    match inst.on_request_headers(ctx, &mut req, true) {
        Outcome::LocalResponse(r) => {
            assert_eq!(r.status, 403);
            assert_eq!(r.body, b"no");
            assert_eq!(r.details, b"denied");
            assert_eq!(r.headers, h(&[("x-local", "1")]));
        }
        other => panic!("expected a local response, got {other:?}"),
    }
    inst.finish(ctx).unwrap();
}

#[test]
fn shared_data_crosses_instances_of_a_plugin() {
    let p = plugin(&good(), &PluginLimits::default(), b"");
    let mut a = PluginInstance::new(&p, now(0)).unwrap();
    let mut b = PluginInstance::new(&p, now(0)).unwrap();
    let ca = a.create_http_context(Properties::new()).unwrap();
    let mut req = h(&[("x-set", "hello")]);
    assert_eq!(a.on_request_headers(ca, &mut req, true), Outcome::Continue);
    let cb = b.create_http_context(Properties::new()).unwrap();
    let mut req = h(&[]);
    assert_eq!(b.on_request_headers(cb, &mut req, true), Outcome::Continue);
    assert_eq!(req.get(b"x-shared"), Some(&b"hello"[..]));
    assert_eq!(p.shared_data().get(b"k").unwrap().0, b"hello");
    // Another plugin (even of the same module) has its own store.
    let other = plugin(&good(), &PluginLimits::default(), b"");
    assert!(other.shared_data().get(b"k").is_none());
}

#[test]
fn ticks_follow_the_period_and_feed_a_metric() {
    let p = plugin(&good(), &PluginLimits::default(), b"");
    let mut inst = PluginInstance::new(&p, now(1000)).unwrap();
    assert_eq!(inst.next_tick(), Some(1100));
    assert!(!inst.tick_due(now(1050)));
    assert!(inst.tick_due(now(1100)));
    inst.on_tick(now(1100)).unwrap();
    assert_eq!(inst.next_tick(), Some(1200));
    inst.on_tick(now(1230)).unwrap();
    let ticks = p.metrics().into_iter().find(|m| m.name == "ticks").unwrap();
    assert_eq!(ticks.kind, MetricKind::Counter);
    assert_eq!(ticks.value, 2);
}

const GET_IMPORT: &str = r#"(import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))"#;

#[test]
fn trap_fails_the_call_and_the_instance_is_replaced() {
    // Traps only when the request has `x-trap`.
    let bytes = wat(
        GET_IMPORT,
        r#"(data (i32.const 256) "x-trap")
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (if (i32.eqz (call $get (i32.const 0) (i32.const 256) (i32.const 6) (i32.const 0) (i32.const 4)))
               (then unreachable))
             (i32.const 0))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let c1 = inst.create_http_context(Properties::new()).unwrap();
    let c2 = inst.create_http_context(Properties::new()).unwrap();
    match inst.on_request_headers(c1, &mut h(&[("x-trap", "1")]), true) {
        Outcome::Failed(f) => {
            assert_eq!(f.kind, FailureKind::Trap);
            assert!(f.reason.contains("unreachable"), "{}", f.reason);
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(inst.is_poisoned());
    assert_eq!(p.stats().traps, 1);
    // Contexts of the failed instance are gone.
    match inst.on_request_headers(c2, &mut h(&[]), true) {
        Outcome::Failed(f) => assert_eq!(f.kind, FailureKind::Poisoned),
        other => panic!("expected poisoned, got {other:?}"),
    }
    inst.delete_context(c2).unwrap();
    // The next request gets a fresh instance.
    let c3 = inst.create_http_context(Properties::new()).unwrap();
    assert!(!inst.is_poisoned());
    assert_eq!(p.stats().reinstantiations, 1);
    assert_eq!(
        inst.on_request_headers(c3, &mut h(&[]), true),
        Outcome::Continue
    );
    assert_eq!(p.stats().traps, 1);
}

#[test]
fn endless_loop_is_stopped_by_the_fuel_deadline() {
    let bytes = wat(
        "",
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (loop $l (br $l))
             (i32.const 0))"#,
    );
    let limits = PluginLimits {
        fuel_per_call: 2_000_000,
        ..PluginLimits::default()
    };
    let p = plugin(&bytes, &limits, b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    let t = Instant::now();
    match inst.on_request_headers(ctx, &mut h(&[]), true) {
        Outcome::Failed(f) => assert_eq!(f.kind, FailureKind::Timeout, "{}", f.reason),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(p.stats().timeouts, 1);
    assert_eq!(p.stats().traps, 0);
}

#[test]
fn unbounded_memory_grow_is_stopped_by_the_memory_limit() {
    let bytes = wat(
        "",
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (loop $l (drop (memory.grow (i32.const 1))) (br $l))
             (i32.const 0))"#,
    );
    let limits = PluginLimits {
        memory_bytes: 1 << 20,
        ..PluginLimits::default()
    };
    let p = plugin(&bytes, &limits, b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    match inst.on_request_headers(ctx, &mut h(&[]), true) {
        Outcome::Failed(f) => assert_eq!(f.kind, FailureKind::OutOfMemory, "{}", f.reason),
        other => panic!("expected out-of-memory, got {other:?}"),
    }
    assert!(inst.memory_bytes() <= 1 << 20, "{}", inst.memory_bytes());
    assert_eq!(p.stats().out_of_memory, 1);
    assert_eq!(p.stats().timeouts, 0);
}

#[test]
fn bad_pointer_in_a_host_call_is_an_abi_violation() {
    let bytes = wat(
        r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (drop (call $add (i32.const 0) (i32.const 0xfffffff0) (i32.const 64) (i32.const 0) (i32.const 0)))
             (i32.const 0))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    let mut req = h(&[("a", "b")]);
    match inst.on_request_headers(ctx, &mut req, true) {
        Outcome::Failed(f) => {
            assert_eq!(f.kind, FailureKind::AbiViolation);
            assert!(f.reason.contains("outside guest memory"), "{}", f.reason);
        }
        other => panic!("expected an ABI violation, got {other:?}"),
    }
    // The lent headers came back.
    assert_eq!(req, h(&[("a", "b")]));
    assert_eq!(p.stats().abi_errors, 1);
    assert_eq!(p.stats().traps, 0);
}

#[test]
fn out_of_range_action_is_an_abi_violation() {
    let bytes = wat(
        "",
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (i32.const 77))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    match inst.on_request_headers(ctx, &mut h(&[]), true) {
        Outcome::Failed(f) => assert_eq!(f.kind, FailureKind::AbiViolation),
        other => panic!("expected an ABI violation, got {other:?}"),
    }
    assert_eq!(p.stats().abi_errors, 1);
}

#[test]
fn proc_exit_is_a_counted_trap() {
    let bytes = wat(
        r#"(import "wasi_unstable" "proc_exit" (func $exit (param i32)))"#,
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (call $exit (i32.const 255))
             (i32.const 0))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    match inst.on_request_headers(ctx, &mut h(&[]), true) {
        Outcome::Failed(f) => {
            assert_eq!(f.kind, FailureKind::Trap);
            assert!(f.reason.contains("exited with code 255"), "{}", f.reason);
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(p.stats().traps, 1);
}

#[test]
fn configure_returning_false_rejects_the_instance() {
    let bytes = wat(
        "",
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 0))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"x");
    let err = PluginInstance::new(&p, now(0)).unwrap_err();
    assert_eq!(err.kind, FailureKind::Rejected);
    assert!(err.reason.contains("proxy_on_configure"), "{}", err.reason);
}

fn compile_err(text: &str) -> CompileError {
    let bytes = wat::parse_str(text).unwrap();
    PluginModule::compile(&bytes, &PluginLimits::default()).unwrap_err()
}

#[test]
fn modules_without_the_abi_exports_are_refused() {
    let no_malloc = r#"(module (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_context_create") (param i32 i32)))"#;
    let e = compile_err(no_malloc);
    assert!(
        matches!(e, CompileError::MissingExport(m) if m.contains("malloc")),
        "{e}"
    );

    let no_abi = r#"(module (memory (export "memory") 1)
        (func (export "malloc") (param i32) (result i32) (i32.const 0))
        (func (export "proxy_on_context_create") (param i32 i32)))"#;
    let e = compile_err(no_abi);
    assert!(
        matches!(e, CompileError::MissingExport("proxy_abi_version_0_2_1")),
        "{e}"
    );

    let old = r#"(module (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_1_0"))
        (func (export "malloc") (param i32) (result i32) (i32.const 0))
        (func (export "proxy_on_context_create") (param i32 i32)))"#;
    assert!(matches!(
        compile_err(old),
        CompileError::UnsupportedAbi("0.1.0")
    ));

    let no_ctx = r#"(module (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "malloc") (param i32) (result i32) (i32.const 0)))"#;
    let e = compile_err(no_ctx);
    assert!(
        matches!(e, CompileError::MissingExport("proxy_on_context_create")),
        "{e}"
    );

    let e = PluginModule::compile(b"not wasm", &PluginLimits::default()).unwrap_err();
    assert!(matches!(e, CompileError::Invalid(_)), "{e}");
}

#[test]
fn callbacks_of_the_wrong_type_are_refused() {
    let bytes = wat(
        "",
        r#"(func (export "proxy_on_request_headers") (param i32 i32) (result i32) (i32.const 0))"#,
    );
    match PluginModule::compile(&bytes, &PluginLimits::default()).unwrap_err() {
        CompileError::ExportType { name, found, .. } => {
            assert_eq!(name, "proxy_on_request_headers");
            assert_eq!(found, "(i32,i32)->(i32)");
        }
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn unknown_imports_are_named() {
    let bytes = wat(
        r#"(import "env" "proxy_teleport" (func (param i32) (result i32)))
           (import "elsewhere" "thing" (func))
           (import "env" "proxy_grpc_call" (func (param i32) (result i32)))"#,
        "",
    );
    let e = PluginModule::compile(&bytes, &PluginLimits::default()).unwrap_err();
    match &e {
        // proxy_grpc_call is in the stub list, whatever its signature.
        CompileError::UnknownImports(names) => {
            assert_eq!(names, &["env::proxy_teleport", "elsewhere::thing"])
        }
        e => panic!("unexpected {e}"),
    }
    assert!(e.to_string().contains("env::proxy_teleport"), "{e}");
}

#[test]
fn host_functions_imported_with_the_wrong_type_are_refused() {
    let bytes = wat(
        r#"(import "env" "proxy_log" (func (param i32 i32) (result i32)))"#,
        "",
    );
    let e = PluginModule::compile(&bytes, &PluginLimits::default()).unwrap_err();
    assert!(matches!(e, CompileError::Link(_)), "{e}");
    assert!(e.to_string().contains("proxy_log"), "{e}");
}

#[test]
fn every_implemented_host_function_links() {
    // One import per host function, each with the ABI's type: compile
    // links them all, so a name in the list without a definition (or the
    // reverse) fails here.
    let sigs: &[(&str, &str)] = &[
        ("proxy_log", "(param i32 i32 i32) (result i32)"),
        ("proxy_get_log_level", "(param i32) (result i32)"),
        ("proxy_get_status", "(param i32 i32 i32) (result i32)"),
        (
            "proxy_set_tick_period_milliseconds",
            "(param i32) (result i32)",
        ),
        (
            "proxy_get_current_time_nanoseconds",
            "(param i32) (result i32)",
        ),
        ("proxy_get_property", "(param i32 i32 i32 i32) (result i32)"),
        ("proxy_set_property", "(param i32 i32 i32 i32) (result i32)"),
        ("proxy_continue_stream", "(param i32) (result i32)"),
        ("proxy_clear_route_cache", "(result i32)"),
        (
            "proxy_send_local_response",
            "(param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)",
        ),
        (
            "proxy_get_shared_data",
            "(param i32 i32 i32 i32 i32) (result i32)",
        ),
        (
            "proxy_set_shared_data",
            "(param i32 i32 i32 i32 i32) (result i32)",
        ),
        (
            "proxy_add_header_map_value",
            "(param i32 i32 i32 i32 i32) (result i32)",
        ),
        (
            "proxy_replace_header_map_value",
            "(param i32 i32 i32 i32 i32) (result i32)",
        ),
        (
            "proxy_remove_header_map_value",
            "(param i32 i32 i32) (result i32)",
        ),
        (
            "proxy_get_header_map_value",
            "(param i32 i32 i32 i32 i32) (result i32)",
        ),
        (
            "proxy_get_header_map_pairs",
            "(param i32 i32 i32) (result i32)",
        ),
        (
            "proxy_set_header_map_pairs",
            "(param i32 i32 i32) (result i32)",
        ),
        ("proxy_get_header_map_size", "(param i32 i32) (result i32)"),
        (
            "proxy_get_buffer_bytes",
            "(param i32 i32 i32 i32 i32) (result i32)",
        ),
        (
            "proxy_get_buffer_status",
            "(param i32 i32 i32) (result i32)",
        ),
        (
            "proxy_set_buffer_bytes",
            "(param i32 i32 i32 i32 i32) (result i32)",
        ),
        (
            "proxy_define_metric",
            "(param i32 i32 i32 i32) (result i32)",
        ),
        ("proxy_increment_metric", "(param i32 i64) (result i32)"),
        ("proxy_record_metric", "(param i32 i64) (result i32)"),
        ("proxy_get_metric", "(param i32 i32) (result i32)"),
        ("proxy_set_effective_context", "(param i32) (result i32)"),
    ];
    let imports: String = sigs
        .iter()
        .map(|(n, t)| format!("(import \"env\" \"{n}\" (func {t}))\n"))
        .collect();
    let bytes = wat(&imports, "");
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    PluginInstance::new(&p, now(0)).unwrap();
}

#[test]
fn instances_can_move_to_a_worker_thread() {
    fn send<T: Send>(_: &T) {}
    let p = plugin(&good(), &PluginLimits::default(), b"");
    let inst = PluginInstance::new(&p, now(0)).unwrap();
    send(&inst);
    let p2 = p.clone();
    std::thread::spawn(move || {
        let mut inst = inst;
        let ctx = inst.create_http_context(Properties::new()).unwrap();
        let mut req = h(&[]);
        assert_eq!(
            inst.on_request_headers(ctx, &mut req, true),
            Outcome::Continue
        );
        assert_eq!(req.get(b"x-wat"), Some(&b"1"[..]));
        drop(p2);
    })
    .join()
    .unwrap();
}

#[test]
fn gauges_histograms_and_metric_reads() {
    // 16: gauge id, 20: histogram id, 24: counter id, 32: get_metric out.
    let bytes = wat(
        r#"(import "env" "proxy_define_metric" (func $defm (param i32 i32 i32 i32) (result i32)))
           (import "env" "proxy_increment_metric" (func $incm (param i32 i64) (result i32)))
           (import "env" "proxy_record_metric" (func $recm (param i32 i64) (result i32)))
           (import "env" "proxy_get_metric" (func $getm (param i32 i32) (result i32)))"#,
        r#"(data (i32.const 256) "g")
           (data (i32.const 260) "h")
           (data (i32.const 264) "c")
           (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
             (drop (call $defm (i32.const 1) (i32.const 256) (i32.const 1) (i32.const 16)))
             (drop (call $defm (i32.const 2) (i32.const 260) (i32.const 1) (i32.const 20)))
             (drop (call $defm (i32.const 0) (i32.const 264) (i32.const 1) (i32.const 24)))
             (i32.const 1))
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (drop (call $recm (i32.load (i32.const 16)) (i64.const 7)))
             (drop (call $incm (i32.load (i32.const 16)) (i64.const -2)))
             (drop (call $recm (i32.load (i32.const 20)) (i64.const 5)))
             (drop (call $recm (i32.load (i32.const 20)) (i64.const 10)))
             ;; A counter does not go down: BadArgument (2), value kept.
             (drop (call $incm (i32.load (i32.const 24)) (i64.const 3)))
             (if (i32.ne (call $incm (i32.load (i32.const 24)) (i64.const -1)) (i32.const 2))
               (then unreachable))
             ;; get_metric reads what the plugin wrote; unknown ids are NotFound (1).
             (drop (call $getm (i32.load (i32.const 16)) (i32.const 32)))
             (if (i64.ne (i64.load (i32.const 32)) (i64.const 5)) (then unreachable))
             (if (i32.ne (call $getm (i32.const 999) (i32.const 32)) (i32.const 1)) (then unreachable))
             (i32.const 0))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    assert_eq!(
        inst.on_request_headers(ctx, &mut h(&[]), true),
        Outcome::Continue
    );
    let m = p.metrics();
    let get = |n: &str| m.iter().find(|s| s.name == n).unwrap().clone();
    assert_eq!((get("g").kind, get("g").value), (MetricKind::Gauge, 5));
    let hist = get("h");
    assert_eq!(
        (hist.kind, hist.value, hist.count),
        (MetricKind::Histogram, 15, 2)
    );
    assert_eq!((get("c").kind, get("c").value), (MetricKind::Counter, 3));
}

#[test]
fn header_pairs_round_trip_through_the_guest() {
    // Reads the pairs (checking the size call agrees), then replaces the
    // map with the serialized one at 512.
    let bytes = wat(
        r#"(import "env" "proxy_get_header_map_pairs" (func $getp (param i32 i32 i32) (result i32)))
           (import "env" "proxy_set_header_map_pairs" (func $setp (param i32 i32 i32) (result i32)))
           (import "env" "proxy_get_header_map_size" (func $size (param i32 i32) (result i32)))"#,
        r#"(data (i32.const 512) "\02\00\00\00\01\00\00\00\01\00\00\00\01\00\00\00\00\00\00\00a\00b\00c\00\00")
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (drop (call $getp (i32.const 0) (i32.const 0) (i32.const 4)))
             (drop (call $size (i32.const 0) (i32.const 8)))
             (if (i32.ne (i32.load (i32.const 4)) (i32.load (i32.const 8))) (then unreachable))
             ;; count == 1 for the one-header request
             (if (i32.ne (i32.load (i32.load (i32.const 0))) (i32.const 1)) (then unreachable))
             (drop (call $setp (i32.const 0) (i32.const 512) (i32.const 27)))
             (i32.const 0))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    let mut req = h(&[("old", "v")]);
    assert_eq!(
        inst.on_request_headers(ctx, &mut req, true),
        Outcome::Continue
    );
    assert_eq!(req, h(&[("a", "b"), ("c", "")]));
    assert_eq!(p.stats(), PluginStats::default());
}

#[test]
fn the_guest_reads_the_time_the_proxy_passed_in() {
    // Writes proxy_get_current_time_nanoseconds at 32, WASI's realtime
    // clock at 40 and its monotonic clock at 48, and hands the 24 bytes
    // back as a local response's body; exercises the other WASI stubs.
    let bytes = wat(
        r#"(import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
           (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
           (import "wasi_snapshot_preview1" "random_get" (func $rand (param i32 i32) (result i32)))
           (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
           (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
           (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 256) "hi\n")
           (data (i32.const 264) "\00\01\00\00\03\00\00\00")
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (drop (call $now (i32.const 32)))
             (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 40)))
             (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 48)))
             (if (call $rand (i32.const 64) (i32.const 16)) (then unreachable))
             ;; fd_write of "hi\n" to stdout (logged), 3 bytes written.
             (if (call $write (i32.const 1) (i32.const 264) (i32.const 1) (i32.const 80)) (then unreachable))
             (if (i32.ne (i32.load (i32.const 80)) (i32.const 3)) (then unreachable))
             ;; Other WASI calls answer ENOSYS (52).
             (if (i32.ne (call $open (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                                     (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 0)) (i32.const 52))
               (then unreachable))
             (drop (call $local (i32.const 200) (i32.const 0) (i32.const 0) (i32.const 32) (i32.const 24)
                                (i32.const 0) (i32.const 0) (i32.const -1)))
             (i32.const 1))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let t = Now {
        monotonic_ms: 5_000,
        unix_nanos: 1_234_567_890_123,
    };
    inst.set_time(t);
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    match inst.on_request_headers(ctx, &mut h(&[]), true) {
        Outcome::LocalResponse(r) => {
            let word = |i: usize| u64::from_le_bytes(r.body[i * 8..i * 8 + 8].try_into().unwrap());
            assert_eq!(word(0), t.unix_nanos);
            assert_eq!(word(1), t.unix_nanos);
            assert_eq!(word(2), 5_000 * 1_000_000);
        }
        other => panic!("expected the time back, got {other:?}"),
    }
}

#[test]
fn a_guest_that_grows_a_header_map_past_its_limit_is_refused_not_failed() {
    // Adds `x: v` until the host says no (or the fuel runs out), then
    // traps unless the no was BadArgument (2).
    let bytes = wat(
        r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 256) "xv")
           (global $st (mut i32) (i32.const 0))
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (loop $l
               (global.set $st (call $add (i32.const 0) (i32.const 256) (i32.const 1) (i32.const 257) (i32.const 1)))
               (br_if $l (i32.eqz (global.get $st))))
             (if (i32.ne (global.get $st) (i32.const 2)) (then unreachable))
             (i32.const 0))"#,
    );
    // Fuel for thousands of adds, not millions: without the limit the call
    // would run out of fuel instead.
    let limits = PluginLimits {
        fuel_per_call: 200_000,
        ..PluginLimits::default()
    };
    let p = plugin(&bytes, &limits, b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let other = inst.create_http_context(Properties::new()).unwrap();
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    let mut req = h(&[("a", "b")]);
    assert_eq!(
        inst.on_request_headers(ctx, &mut req, true),
        Outcome::Continue
    );
    assert_eq!(req.len(), ferrogate_plugins::MAX_MAP_FIELDS);
    // Nothing failed: the other request's context is still live.
    assert!(!inst.is_poisoned());
    assert_eq!(p.stats().abi_errors, 0);
    assert_eq!(p.stats().timeouts, 0);
    assert_eq!(
        inst.on_request_headers(other, &mut h(&[]), true),
        Outcome::Continue
    );
}

#[test]
fn a_map_handed_over_past_the_limit_may_change_but_not_grow() {
    // Traps unless adding `x: v` answers BadArgument (2) and replacing
    // `a` (there) with `v` (no bigger) answers Ok.
    let bytes = wat(
        r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
           (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 256) "xva")
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (if (i32.ne (call $add (i32.const 0) (i32.const 256) (i32.const 1) (i32.const 257) (i32.const 1)) (i32.const 2))
               (then unreachable))
             (if (i32.ne (call $replace (i32.const 0) (i32.const 258) (i32.const 1) (i32.const 257) (i32.const 1)) (i32.const 0))
               (then unreachable))
             (i32.const 0))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    let mut inst = PluginInstance::new(&p, now(0)).unwrap();
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    let n = ferrogate_plugins::MAX_MAP_FIELDS + 44;
    let mut req = HeaderList::from_pairs((0..n).map(|i| {
        (
            if i == 0 {
                "a".to_string()
            } else {
                format!("h{i}")
            },
            "b",
        )
    }));
    assert_eq!(
        inst.on_request_headers(ctx, &mut req, true),
        Outcome::Continue
    );
    assert_eq!(req.len(), n);
    assert_eq!(req.get(b"a"), Some(&b"v"[..]));
    assert!(!inst.is_poisoned());
    assert_eq!(p.stats().abi_errors + p.stats().traps, 0);
}

#[test]
fn a_new_instance_does_not_answer_for_an_old_instances_context() {
    let bytes = wat(
        "",
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (i32.const 0))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    let mut old = PluginInstance::new(&p, now(0)).unwrap();
    let stale = old.create_http_context(Properties::new()).unwrap();
    // A worker replaces `old` with a fresh instance of the same plugin: the
    // fresh one hands out the same ids, but not the same contexts.
    let mut new = PluginInstance::new(&p, now(0)).unwrap();
    let fresh = new.create_http_context(Properties::new()).unwrap();
    assert_eq!(stale.id(), fresh.id());
    assert_ne!(stale, fresh);
    match new.on_request_headers(stale, &mut h(&[]), true) {
        Outcome::Failed(f) => assert_eq!(f.kind, FailureKind::Poisoned),
        other => panic!("expected the old context refused, got {other:?}"),
    }
    assert!(new.finish(stale).is_err());
    assert_eq!(new.open_contexts(), 1);
}

#[test]
fn a_plugin_defining_metrics_in_a_loop_is_bounded_and_counted() {
    // Defines 100 counters "A0".."J9" at start: the first MAX_METRICS
    // succeed, the rest answer BadArgument (2) and are counted. The 10th
    // name is also redefined as a gauge (refused: another kind).
    let bytes = wat(
        r#"(import "env" "proxy_define_metric" (func $defm (param i32 i32 i32 i32) (result i32)))"#,
        r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (local $i i32) (local $bad i32)
             (loop $l
               (i32.store8 (i32.const 256) (i32.add (i32.const 65) (i32.div_u (local.get $i) (i32.const 10))))
               (i32.store8 (i32.const 257) (i32.add (i32.const 48) (i32.rem_u (local.get $i) (i32.const 10))))
               (if (i32.eq (call $defm (i32.const 0) (i32.const 256) (i32.const 2) (i32.const 16)) (i32.const 2))
                 (then (local.set $bad (i32.add (local.get $bad) (i32.const 1)))))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (i32.const 100))))
             (if (i32.ne (local.get $bad) (i32.const 36)) (then unreachable))
             ;; "A9" again, as a gauge.
             (i32.store8 (i32.const 256) (i32.const 65))
             (i32.store8 (i32.const 257) (i32.const 57))
             (if (i32.ne (call $defm (i32.const 1) (i32.const 256) (i32.const 2) (i32.const 16)) (i32.const 2))
               (then unreachable))
             ;; An empty name.
             (if (i32.ne (call $defm (i32.const 0) (i32.const 256) (i32.const 0) (i32.const 16)) (i32.const 2))
               (then unreachable))
             (i32.const 1))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    let _inst = PluginInstance::new(&p, now(0)).unwrap();
    assert_eq!(p.metrics().len(), ferrogate_plugins::MAX_METRICS);
    assert_eq!(p.stats().metrics_refused, 36 + 2);
}

#[test]
fn metrics_written_by_many_instances_sum_and_a_counter_record_sets_the_sum() {
    // Each request adds 2 to "c" and records 9 into "h"; a request with
    // `x-set` records 100 into "c" (sets it).
    let bytes = wat(
        r#"(import "env" "proxy_define_metric" (func $defm (param i32 i32 i32 i32) (result i32)))
           (import "env" "proxy_increment_metric" (func $incm (param i32 i64) (result i32)))
           (import "env" "proxy_record_metric" (func $recm (param i32 i64) (result i32)))
           (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 256) "c")
           (data (i32.const 260) "h")
           (data (i32.const 264) "x-set")
           (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
             (drop (call $defm (i32.const 0) (i32.const 256) (i32.const 1) (i32.const 16)))
             (drop (call $defm (i32.const 2) (i32.const 260) (i32.const 1) (i32.const 20)))
             (i32.const 1))
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (if (i32.eqz (call $get (i32.const 0) (i32.const 264) (i32.const 5) (i32.const 0) (i32.const 4)))
               (then (drop (call $recm (i32.load (i32.const 16)) (i64.const 100))))
               (else (drop (call $incm (i32.load (i32.const 16)) (i64.const 2)))))
             (drop (call $recm (i32.load (i32.const 20)) (i64.const 9)))
             (i32.const 0))"#,
    );
    let p = plugin(&bytes, &PluginLimits::default(), b"");
    // More instances than stripes: some share one, the sums stay exact.
    let mut insts: Vec<PluginInstance> = (0..20)
        .map(|_| PluginInstance::new(&p, now(0)).unwrap())
        .collect();
    let request = |inst: &mut PluginInstance, set: bool| {
        let ctx = inst.create_http_context(Properties::new()).unwrap();
        let mut hd = if set { h(&[("x-set", "1")]) } else { h(&[]) };
        assert_eq!(
            inst.on_request_headers(ctx, &mut hd, true),
            Outcome::Continue
        );
        inst.finish(ctx).unwrap();
    };
    for (i, inst) in insts.iter_mut().enumerate() {
        for _ in 0..=i {
            request(inst, false);
        }
    }
    let get = |n: &str| p.metrics().into_iter().find(|s| s.name == n).unwrap();
    // 1 + 2 + … + 20 = 210 requests.
    assert_eq!(get("c").value, 2 * 210);
    assert_eq!((get("h").value, get("h").count), (9 * 210, 210));
    // A record on a counter sets the plugin's value, whichever instance.
    request(&mut insts[7], true);
    assert_eq!(get("c").value, 100);
    request(&mut insts[3], false);
    assert_eq!(get("c").value, 102);
}
