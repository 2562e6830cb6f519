//! What a reload cannot change while running is reported (no root,
//! in-memory ports).

use std::sync::Arc;

use ferrogate_engine::{Engine, EngineConfig, mem_port};
use ferrogate_proxy::route::Http3Listener;
use ferrogate_proxy::{RouteTable, Upstream};

fn config(http3: bool) -> EngineConfig {
    let origin: std::net::SocketAddr = "10.0.0.3:8080".parse().unwrap();
    let mut routes = RouteTable::proxy_all(1, 80, Upstream::simple("origin", 0, &[origin]));
    if http3 {
        let h3 = Http3Listener {
            quic: ferrogate_proxy::quic::QuicConfig::default(),
            alt_svc_max_age: 86_400,
        };
        let l = routes.listeners.remove(0).with_http3(Some(Arc::new(h3)));
        routes.listeners.push(l);
    }
    EngineConfig::new(
        "mem0",
        vec![("10.0.0.10".parse().unwrap(), 24)],
        Arc::new(routes),
    )
}

#[test]
fn a_listener_gaining_or_losing_http3_needs_a_restart() {
    const H3: &str = "listeners (HTTP/3 ports)";
    let mut engine = Engine::start_on_memory(config(false), vec![mem_port(64).0]).unwrap();
    let r = engine.reload(&config(false)).unwrap();
    assert!(!r.ignored.contains(&H3), "{:?}", r.ignored);
    let r = engine.reload(&config(true)).unwrap();
    assert!(r.ignored.contains(&H3), "{:?}", r.ignored);
    engine.shutdown().unwrap();
}
