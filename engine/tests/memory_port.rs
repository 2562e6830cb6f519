//! The real engine on an in-memory port (no NIC, no kernel, no root): a
//! userspace peer with its own TCP/IP stack plays keep-alive clients and the
//! origin; every request is proxied through the worker's filter tier, stack
//! and proxy, and every response comes back whole. The same setup is the
//! L7 ceiling bench (`ferrogate-bench ceiling`).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use ferrogate_engine::{Engine, EngineConfig, MemPeer, PollingMode, mem_port};
use ferrogate_proxy::{Listener, Route, RouteAction, RouteTable, Upstream};
use ferrogate_testkit::peer::{HttpPeer, Link, PeerConfig};

struct PeerLink(MemPeer);

impl Link for PeerLink {
    fn send(&mut self, frame: &[u8]) -> bool {
        self.0.send(frame)
    }

    fn recv(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        self.0.recv(max, f)
    }
}

fn routes() -> Arc<RouteTable> {
    let pool = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.99.0.3:8080".parse().unwrap()],
    ));
    Arc::new(RouteTable::new(
        1,
        vec![Listener::new(
            80,
            vec![Route::new("all", RouteAction::Proxy(pool.clone()))],
        )],
        vec![pool],
    ))
}

#[test]
fn keep_alive_requests_cross_the_real_engine_on_an_in_memory_port() {
    let (port, peer_end) = mem_port(1024);
    let mut cfg = EngineConfig::new("mem0", vec![("10.99.0.10".parse().unwrap(), 24)], routes());
    cfg.polling = PollingMode::Adaptive {
        spin: Duration::from_micros(50),
    };
    let engine = Engine::start_on_memory(cfg, vec![port]).expect("engine on a memory port");
    let mut peer = HttpPeer::new(
        PeerLink(peer_end),
        PeerConfig {
            mac: [0x02, 0, 0, 0, 0, 0x02],
            client_ip: Ipv4Addr::new(10, 99, 0, 2),
            origin_ip: Ipv4Addr::new(10, 99, 0, 3),
            prefix_len: 24,
            vip: Ipv4Addr::new(10, 99, 0, 10),
            vip_port: 80,
            origin_port: 8080,
            clients: 8,
            body_len: 20_000,
            path: "/x".into(),
        },
        smoltcp::time::Instant::from_millis(0),
    );
    let start = StdInstant::now();
    let want = 2_000;
    while peer.stats().ok < want && start.elapsed() < Duration::from_secs(60) {
        peer.poll(smoltcp::time::Instant::from_micros(
            start.elapsed().as_micros() as i64,
        ));
    }
    let p = peer.stats();
    let stats = engine.shutdown().expect("clean stop");
    let s = stats.stack_total();
    println!(
        "peer {p:?}; engine requests {}, upstream connects {}, reused {}, rx frames {}",
        s.requests, s.upstream_connects, s.upstream_reused, s.net.rx_frames
    );
    assert!(p.ok >= want, "only {} responses in 60 s: {p:?}", p.ok);
    assert_eq!(p.bad, 0, "{p:?}");
    assert_eq!(p.client_drops, 0, "keep-alive connections stayed: {p:?}");
    assert!(s.requests >= want);
    assert!(
        s.upstream_connects <= 8 + 8,
        "pooled upstream connections, not one per request: {}",
        s.upstream_connects
    );
    assert_eq!(s.upstream_errors, 0);
}
