//! HTTP/3 across workers: a connection made through one worker's queue
//! keeps working when its datagrams start arriving on another queue (the
//! client's address changed and RSS chose another worker): its connection
//! ids name the owner, and the other worker hands the datagrams over.
//! Two in-memory ports, the real engine, a quinn-proto client.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrogate_engine::{Engine, EngineConfig, MEMORY_MAC, MemPeer, PollingMode, mem_port};
use ferrogate_proxy::quic::client::{H3Client, client_config};
use ferrogate_proxy::route::{Http3Listener, Listener, Route, RouteAction, RouteTable};
use ferrogate_proxy::tls::{CertSpec, ListenerTls, TlsListenerConfig, TlsServer};
use ferrogate_proxy::wire::{FrameClass, classify};
use ferrogate_proxy::{DirectResponse, Upstream};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, UdpPacket, UdpRepr,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 10);
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];

/// A UDP datagram from the client as an Ethernet frame to the engine.
fn frame(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let mut buf = vec![0u8; 14 + 20 + 8 + payload.len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(CLIENT_MAC),
        dst_addr: EthernetAddress(MEMORY_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    Ipv4Repr {
        src_addr: *from.ip(),
        dst_addr: *to.ip(),
        next_header: IpProtocol::Udp,
        payload_len: 8 + payload.len(),
        hop_limit: 64,
    }
    .emit(&mut Ipv4Packet::new_unchecked(eth.payload_mut()), &caps);
    let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
    UdpRepr {
        src_port: from.port(),
        dst_port: to.port(),
    }
    .emit(
        &mut UdpPacket::new_unchecked(ip.payload_mut()),
        &(*from.ip()).into(),
        &(*to.ip()).into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

fn routes(d: &std::path::Path) -> (RouteTable, CertificateDer<'static>) {
    let ca = ferrogate_testkit::Ca::new("h3 handoff CA");
    let (cert, key) = ca.leaf(Some("edge"), &["edge.example"]).write(d, "edge");
    let server = TlsServer::build(&TlsListenerConfig {
        certs: vec![CertSpec {
            cert,
            key,
            names: vec!["edge.example".into()],
            default: true,
        }],
        ..Default::default()
    })
    .unwrap();
    let hello = Route::new(
        "hello",
        RouteAction::Respond(Arc::new(DirectResponse {
            status: 200,
            content_type: "text/plain".into(),
            body: b"hello over h3".to_vec(),
            location: None,
            retry_after: None,
            www_authenticate: None,
        })),
    );
    let listener = Listener::new(443, vec![hello])
        .with_tls(Arc::new(ListenerTls::new(server)))
        .with_http3(Some(Arc::new(Http3Listener {
            quic: Default::default(),
            alt_svc_max_age: 0,
        })));
    let pool = Arc::new(Upstream::simple(
        "unused",
        0,
        &["10.9.0.3:80".parse().unwrap()],
    ));
    let root = CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap();
    (RouteTable::new(1, vec![listener], vec![pool]), root)
}

struct Client {
    h3: H3Client,
    base: Instant,
    /// The port the client's datagrams go in through, and its source.
    via: usize,
    source: SocketAddrV4,
}

impl Client {
    /// Sends what the client has through `ports[via]`, takes what either
    /// port gives back; until `done` or the time is up.
    fn run(&mut self, ports: &[MemPeer], limit: Duration, done: impl Fn(&H3Client) -> bool) {
        let start = Instant::now();
        let server = SocketAddr::V4(SocketAddrV4::new(VIP, 443));
        let mut buf = Vec::new();
        while start.elapsed() < limit && !done(&self.h3) {
            let now = Instant::now();
            while let Some(n) = self.h3.poll_transmit(now, &mut buf) {
                let f = frame(self.source, SocketAddrV4::new(VIP, 443), &buf[..n]);
                assert!(ports[self.via].send(&f), "port full");
            }
            for p in ports {
                p.recv(64, &mut |f| {
                    if let FrameClass::Udp(m) = classify(f) {
                        self.h3
                            .handle_datagram(Instant::now(), server, m.payload(f));
                    }
                });
            }
            self.h3.handle_timeout(Instant::now());
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = self.base;
    }
}

#[test]
fn a_connection_whose_datagrams_move_to_another_worker_is_served_by_its_owner() {
    let d = ferrogate_testkit::temp_dir("fg-h3-handoff");
    let (routes, root) = routes(&d);
    let mut cfg = EngineConfig::new("mem0", vec![(VIP.into(), 24)], Arc::new(routes));
    cfg.polling = PollingMode::Adaptive {
        spin: Duration::from_micros(50),
    };
    let (p0, e0) = mem_port(1024);
    let (p1, e1) = mem_port(1024);
    let engine = Engine::start_on_memory(cfg, vec![p0, p1]).expect("engine");
    let ports = [e0, e1];
    let server = SocketAddr::V4(SocketAddrV4::new(VIP, 443));
    let mut c = Client {
        h3: H3Client::new(client_config(&[root]), server),
        base: Instant::now(),
        via: 0,
        source: SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 2), 40_001),
    };
    c.h3.connect(Instant::now(), "edge.example").unwrap();
    c.run(&ports, Duration::from_secs(10), |h| h.connected);
    assert!(
        c.h3.connected,
        "handshake through worker 0: {:?}",
        c.h3.lost
    );
    c.h3.open_control();
    let s = c.h3.get("edge.example", "/a");
    c.run(&ports, Duration::from_secs(10), |h| h.response(s).is_some());
    assert_eq!(
        c.h3.response(s).expect("first response").body,
        b"hello over h3"
    );
    let before = engine.stats().handoff_total();
    // The client's address changes; its datagrams now reach worker 1.
    c.via = 1;
    c.source = SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 2), 40_002);
    let streams: Vec<u64> = (0..5)
        .map(|i| c.h3.get("edge.example", &format!("/b{i}")))
        .collect();
    c.run(&ports, Duration::from_secs(10), |h| {
        streams.iter().all(|&s| h.response(s).is_some())
    });
    for &s in &streams {
        let r = c.h3.response(s).expect("answered after the move");
        assert_eq!(r.status, b"200");
        assert_eq!(r.body, b"hello over h3");
    }
    assert!(c.h3.lost.is_none(), "{:?}", c.h3.lost);
    let stats = engine.shutdown().expect("clean stop");
    let (out, _, dropped) = stats.handoff_total();
    assert!(
        out > before.0,
        "worker 1 handed the datagrams to worker 0: {before:?} → {out}"
    );
    assert_eq!(dropped, 0);
    let h3 = stats.stack_total().h3;
    assert_eq!(h3.connections, 1, "one connection, on its owner: {h3:?}");
    assert_eq!(h3.requests, 6, "{h3:?}");
}
