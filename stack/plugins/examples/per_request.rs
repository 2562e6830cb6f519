//! What one request costs in a plugin, without the network: the
//! AssemblyScript header adder (tests/as, built by tests/as/build.sh)
//! through a request's calls (context, request and response headers, done,
//! log, delete), timed over many requests on one instance.
//!
//! `minimal` instead of a filter's name runs `header_adder.wat`, which
//! adds the same two headers with one host call each: the host's own cost
//! (wasmtime's calls, the ABI, the header lists), without an SDK's.
//!
//!     cargo run --release -p ferrogate-plugins --example per_request [FILTER|minimal] [N]

use std::time::Instant;

use ferrogate_plugins::{
    HeaderList, Now, Plugin, PluginConfig, PluginInstance, PluginLimits, PluginModule, Properties,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "header_adder".into());
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let wasm = if name == "minimal" {
        wat::parse_str(include_str!("header_adder.wat")).expect("header_adder.wat")
    } else {
        let path = format!("{}/tests/as/build/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e} (run tests/as/build.sh)"))
    };
    let module = PluginModule::compile(&wasm, &PluginLimits::default()).expect("compile");
    let plugin = Plugin::new(
        module,
        PluginConfig {
            name: name.clone(),
            root_id: name.clone(),
            configuration: b"bench".to_vec(),
            ..Default::default()
        },
    );
    let mut inst = PluginInstance::new(&plugin, Now::default()).expect("start");
    let request = HeaderList::from_pairs([
        (":method", "GET"),
        (":path", "/"),
        (":authority", "10.77.0.10"),
        (":scheme", "http"),
        ("user-agent", "wrk"),
    ]);
    let response = HeaderList::from_pairs([
        (":status", "200"),
        ("server", "nginx/1.22.1"),
        ("content-type", "text/plain"),
        ("content-length", "2"),
    ]);
    let one = |inst: &mut PluginInstance| {
        let ctx = inst.create_http_context(Properties::new()).unwrap();
        let mut req = request.clone();
        inst.on_request_headers(ctx, &mut req, true);
        let mut resp = response.clone();
        inst.on_response_headers(ctx, &mut resp, false);
        inst.finish(ctx).unwrap();
    };
    for _ in 0..n / 10 {
        one(&mut inst);
    }
    let t0 = Instant::now();
    for _ in 0..n {
        one(&mut inst);
    }
    let per = t0.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{name}: {per:.0} ns per request over {n} requests; guest memory {} KiB",
        inst.memory_bytes() / 1024
    );
}
