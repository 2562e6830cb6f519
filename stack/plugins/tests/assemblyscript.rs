//! Filters built from source with a real proxy-wasm SDK: AssemblyScript
//! 0.17.14 and @solo-io/proxy-runtime 0.1.8 (tests/as/, built by
//! tests/as/build.sh, which vendor-setup.sh runs).

use ferrogate_plugins::{
    FailureKind, HeaderList, MetricKind, Now, Outcome, Plugin, PluginConfig, PluginInstance,
    PluginLimits, PluginModule, PluginStats, Properties,
};

/// A built filter; missing builds fail the test, they do not skip it.
fn load(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/as/build/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{path}: {e}. Build the AssemblyScript test filters first: \
             stack/plugins/tests/as/build.sh (vendor-setup.sh runs it; needs node and npm)"
        )
    })
}

fn config(name: &str, root_id: &str, configuration: &[u8]) -> Plugin {
    let module = PluginModule::compile(&load(name), &PluginLimits::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(module.abi_version(), "0.2.0");
    Plugin::new(
        module,
        PluginConfig {
            name: name.into(),
            // The SDK picks the root context registered under this id.
            root_id: root_id.into(),
            configuration: configuration.to_vec(),
            ..Default::default()
        },
    )
}

/// Starts `name` with a non-empty configuration: proxy-runtime 0.1.8's
/// `onConfigure` passes the configuration size where the ABI wants a size
/// *pointer*, so with an empty configuration it reads a stale buffer and
/// traps (see `sdk_with_empty_configuration_is_contained`); Envoy users
/// always give one.
fn start(name: &str) -> (Plugin, PluginInstance) {
    let configuration: &[u8] = if name == "header_adder" {
        b"header-adder"
    } else {
        b"{}"
    };
    let plugin = config(name, name, configuration);
    let inst = PluginInstance::new(&plugin, Now::default())
        .unwrap_or_else(|e| panic!("{name}: start: {e}"));
    (plugin, inst)
}

fn h(pairs: &[(&str, &str)]) -> HeaderList {
    HeaderList::from_pairs(pairs.iter().copied())
}

fn request() -> HeaderList {
    h(&[
        (":method", "GET"),
        (":path", "/index.html"),
        (":authority", "example.test"),
        (":scheme", "http"),
    ])
}

#[test]
fn header_adder_adds_a_request_and_a_response_header() {
    let (plugin, mut inst) = start("header_adder");
    for _ in 0..3 {
        let ctx = inst.create_http_context(Properties::new()).unwrap();
        let mut req = request();
        assert_eq!(
            inst.on_request_headers(ctx, &mut req, true),
            Outcome::Continue
        );
        assert_eq!(req.get(b"x-plugin"), Some(&b"header-adder"[..]));
        assert_eq!(req.len(), 5);
        let mut resp = h(&[(":status", "200"), ("content-length", "2")]);
        assert_eq!(
            inst.on_response_headers(ctx, &mut resp, false),
            Outcome::Continue
        );
        assert_eq!(resp.get(b"x-served-through"), Some(&b"ferrogate-wasm"[..]));
        let mut body = b"ok".to_vec();
        assert_eq!(
            inst.on_response_body(ctx, &mut body, true),
            Outcome::Continue
        );
        assert_eq!(body, b"ok");
        inst.finish(ctx).unwrap();
    }
    assert_eq!(inst.open_contexts(), 0);
    assert_eq!(plugin.stats(), PluginStats::default());
}

#[test]
fn authorizer_answers_403_without_authorization() {
    let (plugin, mut inst) = start("authorizer");

    let ctx = inst.create_http_context(Properties::new()).unwrap();
    let mut req = request();
    match inst.on_request_headers(ctx, &mut req, true) {
        Outcome::LocalResponse(r) => {
            assert_eq!(r.status, 403);
            assert_eq!(r.body, b"forbidden\n");
            assert_eq!(r.details, b"missing authorization");
            assert_eq!(r.headers, h(&[("content-type", "text/plain")]));
        }
        other => panic!("expected a local 403, got {other:?}"),
    }
    inst.finish(ctx).unwrap();

    let ctx = inst.create_http_context(Properties::new()).unwrap();
    let mut req = request();
    req.add(b"authorization", b"Bearer t");
    assert_eq!(
        inst.on_request_headers(ctx, &mut req, true),
        Outcome::Continue
    );
    inst.finish(ctx).unwrap();
    assert_eq!(plugin.stats(), PluginStats::default());
}

#[test]
fn body_rewriter_buffers_then_replaces_the_response_body() {
    let (plugin, mut inst) = start("body_rewriter");
    let ctx = inst.create_http_context(Properties::new()).unwrap();
    let mut resp = h(&[(":status", "200")]);
    assert_eq!(
        inst.on_response_headers(ctx, &mut resp, false),
        Outcome::Continue
    );
    let mut body = b"hello from the ori".to_vec();
    assert_eq!(inst.on_response_body(ctx, &mut body, false), Outcome::Pause);
    assert_eq!(body, b"hello from the ori");
    body.extend_from_slice(b"gin, origin!");
    assert_eq!(
        inst.on_response_body(ctx, &mut body, true),
        Outcome::Continue
    );
    assert_eq!(String::from_utf8_lossy(&body), "hello from the edge, edge!");
    inst.finish(ctx).unwrap();
    assert_eq!(plugin.stats(), PluginStats::default());
}

#[test]
fn counter_metric_counts_requests_across_instances() {
    let (plugin, mut a) = start("counter");
    let mut b = PluginInstance::new(&plugin, Now::default()).unwrap();
    for i in 0..3 {
        let inst = if i == 1 { &mut b } else { &mut a };
        let ctx = inst.create_http_context(Properties::new()).unwrap();
        assert_eq!(
            inst.on_request_headers(ctx, &mut request(), true),
            Outcome::Continue
        );
        inst.finish(ctx).unwrap();
    }
    let m = plugin.metrics();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].name, "as_requests_total");
    assert_eq!(m[0].kind, MetricKind::Counter);
    assert_eq!(m[0].value, 3);
}

#[test]
fn sdk_abort_without_root_id_is_contained() {
    // The SDK throws (abort → proc_exit) when no root context is registered
    // under `plugin_root_id`: the start fails as a counted trap.
    let plugin = config("header_adder", "no_such_root", b"x");
    let err = PluginInstance::new(&plugin, Now::default()).unwrap_err();
    assert_eq!(err.kind, FailureKind::Trap, "{err}");
    assert_eq!(plugin.stats().traps, 1);
}

#[test]
fn sdk_with_empty_configuration_is_contained() {
    let plugin = config("counter", "counter", b"");
    let err = PluginInstance::new(&plugin, Now::default()).unwrap_err();
    assert_eq!(err.kind, FailureKind::Trap, "{err}");
    assert_eq!(plugin.stats().traps, 1);
}
