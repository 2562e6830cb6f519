//! The real engine on an in-memory port (no NIC, no kernel, no root): a
//! userspace peer with its own TCP/IP stack plays keep-alive clients and the
//! origin; every request is proxied through the worker's filter tier, stack
//! and proxy, and every response comes back whole. The same setup is the
//! L7 ceiling bench (`ferrogate-bench ceiling`).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use ferrogate_engine::{Engine, EngineConfig, MemPeer, PollingMode, mem_port};
use ferrogate_proxy::{RouteTable, Upstream};
use ferrogate_testkit::peer::{HttpPeer, Link, PeerConfig};

/// The peer's link, counting the engine's IPv4 frames by whether their
/// header checksum is filled.
struct PeerLink {
    port: MemPeer,
    ipv4_with_checksum: Rc<Cell<u64>>,
    ipv4_without: Rc<Cell<u64>>,
}

impl Link for PeerLink {
    fn send(&mut self, frame: &[u8]) -> bool {
        self.port.send(frame)
    }

    fn recv(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let (with, without) = (&self.ipv4_with_checksum, &self.ipv4_without);
        self.port.recv(max, &mut |frame| {
            if frame.len() >= 34 && frame[12..14] == [8, 0] {
                let c = if frame[24..26] == [0, 0] {
                    without
                } else {
                    with
                };
                c.set(c.get() + 1);
            }
            f(frame)
        })
    }
}

#[test]
fn keep_alive_requests_cross_the_real_engine_on_an_in_memory_port() {
    let (with, without) = run(false);
    assert!(
        with > 0 && without == 0,
        "checksums filled: {with} / {without}"
    );
}

/// A port that offloads checksums (as a NIC does): the stack leaves them
/// to it, and everything still works.
#[test]
fn with_checksum_offload_the_stack_computes_no_checksum_and_still_serves() {
    let (with, without) = run(true);
    assert!(
        without > 0 && with == 0,
        "checksums left out: {with} / {without}"
    );
}

/// Runs 2,000 requests; returns the engine's IPv4 frames with and without a
/// header checksum.
fn run(offload: bool) -> (u64, u64) {
    let (port, peer_end) = mem_port(1024);
    let port = port.with_checksum_offload(offload);
    let (with, without) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let peer_cfg = PeerConfig {
        path: "/x".into(),
        checksum_offload: offload,
        ..PeerConfig::memory_lab(8, 20_000)
    };
    let routes = RouteTable::proxy_all(1, 80, Upstream::simple("origin", 0, &[peer_cfg.origin()]));
    let mut cfg = EngineConfig::new("mem0", vec![peer_cfg.vip_cidr()], Arc::new(routes));
    cfg.polling = PollingMode::Adaptive {
        spin: Duration::from_micros(50),
    };
    let engine = Engine::start_on_memory(cfg, vec![port]).expect("engine on a memory port");
    let mut peer = HttpPeer::new(
        PeerLink {
            port: peer_end,
            ipv4_with_checksum: with.clone(),
            ipv4_without: without.clone(),
        },
        peer_cfg,
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
    (with.get(), without.get())
}
