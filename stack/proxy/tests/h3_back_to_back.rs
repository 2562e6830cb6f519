//! HTTP/3 back to back: a quinn-proto client (`ferrogate_quic::client`)
//! sends its QUIC datagrams as frames into the stack's UDP path on the
//! TLS listener's port; each request goes through the routes to the
//! harness's origin over HTTP/1.1, and the response comes back as HTTP/3.

mod common;

use std::net::SocketAddr;

use common::Response as Response1;
use common::*;
use ferrogate_proxy::quic::QuicConfig;
use ferrogate_proxy::quic::client::{H3Client, Response, client_config};
use ferrogate_proxy::route::Http3Listener;
use ferrogate_proxy::tls::{CertSpec, ListenerTls, TlsListenerConfig, TlsServer};
use ferrogate_proxy::wire::{FrameClass, classify};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const H3_PORT: u16 = 443;

struct H3Lab {
    lab: Lab,
    ca: ferrogate_testkit::Ca,
    client: H3Client,
    client_addr: SocketAddr,
    /// The std clock the client runs on, at the lab's start.
    base: std::time::Instant,
    /// Datagrams the edge sent the client.
    datagrams_in: usize,
}

/// The harness's routes on a TLS listener on 443 with HTTP/3 on.
fn h3_routes(quic: QuicConfig) -> (Arc<RouteTable>, ferrogate_testkit::Ca) {
    let ca = ferrogate_testkit::Ca::new("h3 b2b CA");
    let leaf = ca.leaf(Some("edge"), &["edge.example"]);
    let d = ferrogate_testkit::temp_dir("fg-h3-b2b");
    let (cert, key) = leaf.write(&d, "edge");
    let server = TlsServer::build(&TlsListenerConfig {
        certs: vec![CertSpec {
            cert,
            key,
            names: vec!["edge.example".into()],
            default: true,
        }],
        alpn: vec![b"http/1.1".to_vec()],
        ..Default::default()
    })
    .unwrap();
    let base = routes();
    let l = base.listeners[0].clone();
    let http3 = Http3Listener {
        quic,
        alt_svc_max_age: 3600,
    };
    let listener = Listener::new(H3_PORT, l.routes().to_vec())
        .with_tls(Arc::new(ListenerTls::new(server)))
        .with_http3(Some(Arc::new(http3)));
    let routes = Arc::new(RouteTable::new(2, vec![listener], base.upstreams.clone()));
    (routes, ca)
}

impl H3Lab {
    fn new() -> Self {
        Self::with_quic(QuicConfig::default())
    }

    fn with_quic(quic: QuicConfig) -> Self {
        let (routes, ca) = h3_routes(quic);
        let root = CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap();
        let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
        lab.udp_to_client = Some(Vec::new());
        let server: SocketAddr = (VIP, H3_PORT).into();
        let mut h = H3Lab {
            lab,
            ca,
            client: H3Client::new(client_config(&[root]), server),
            client_addr: (CLIENT, 50_443).into(),
            base: std::time::Instant::now(),
            datagrams_in: 0,
        };
        // The edge resolves the origin ahead of the first request.
        for _ in 0..3 {
            h.lab.step(1);
        }
        h
    }

    fn client_now(&self) -> std::time::Instant {
        self.base + std::time::Duration::from_micros(self.lab.now.total_micros() as u64)
    }

    fn connect(&mut self) {
        let now = self.client_now();
        self.client.connect(now, "edge.example").unwrap();
        self.run(30);
        assert!(self.client.connected, "handshake: {:?}", self.client.lost);
        self.client.open_control();
    }

    /// One millisecond: the client's datagrams in, the lab (edge and
    /// origin) on, the edge's datagrams back to the client.
    fn step(&mut self) {
        let now = self.client_now();
        let mut buf = Vec::new();
        while let Some(n) = self.client.poll_transmit(now, &mut buf) {
            if let Some(l) = &mut self.lab.lossy
                && l.drop_next()
            {
                l.dropped_to_edge += 1;
                continue;
            }
            let f = udp_frame(self.client_addr, self.client.server, &buf[..n]);
            assert!(self.lab.edge.handle_frame(&f));
        }
        self.lab.step(1);
        let out = std::mem::take(self.lab.udp_to_client.as_mut().unwrap());
        let now = self.client_now();
        for f in out {
            let FrameClass::Udp(m) = classify(&f) else {
                panic!("not UDP")
            };
            // The frame's `local` is its destination: the client.
            assert_eq!(m.key.local_port, self.client_addr.port());
            let from = SocketAddr::new(m.key.remote.into(), m.key.remote_port);
            assert_eq!(from, self.client.server, "replies come from the VIP:443");
            self.datagrams_in += 1;
            self.client.handle_datagram(now, from, m.payload(&f));
        }
        self.client.handle_timeout(now);
    }

    fn run(&mut self, ms: usize) {
        for _ in 0..ms {
            self.step();
        }
    }

    /// Runs until `stream`'s response is complete (at most `ms`).
    fn response(&mut self, stream: u64, ms: usize) -> Response {
        for _ in 0..ms {
            if let Some(r) = self.client.response(stream) {
                return r;
            }
            self.step();
        }
        panic!(
            "no response on {stream}: {:?} lost {:?} stats {:?}",
            self.client.streams.get(&stream),
            self.client.lost,
            self.lab.edge.stats().h3
        );
    }
}

#[test]
fn a_get_over_http3_is_answered_by_a_direct_route() {
    let mut h = H3Lab::new();
    h.connect();
    let s = h.client.get("edge.example", "/direct");
    let r = h.response(s, 200);
    assert_eq!(r.status, b"200");
    assert_eq!(r.body, b"hello from ferrogate");
    let st = h.lab.edge.stats().h3;
    assert_eq!((st.connections, st.requests), (1, 1), "{st:?}");
    assert!(st.datagrams_received > 0 && st.datagrams_sent > 0);
    assert_eq!(st.datagrams_dropped, 0);
}

#[test]
fn a_get_over_http3_goes_upstream_as_http11_without_a_body() {
    let mut h = H3Lab::new();
    h.connect();
    let s = h.client.get("edge.example", "/page");
    let r = h.response(s, 300);
    assert_eq!(r.status, b"200");
    assert_eq!(r.body, b"origin:/page");
    let up = &h.lab.origin_requests[0];
    assert!(up.starts_with("GET /page HTTP/1.1\r\n"), "{up}");
    let lower = up.to_ascii_lowercase();
    assert!(lower.contains("host: edge.example\r\n"), "{up}");
    // The head said the request ended: no chunked body upstream.
    assert!(!lower.contains("transfer-encoding"), "{up}");
    assert!(lower.contains("x-forwarded-proto: https"), "{up}");
}

#[test]
fn a_large_download_and_an_upload_cross_http3_intact() {
    let mut h = H3Lab::new();
    h.connect();
    let s = h.client.get("edge.example", "/big");
    let r = h.response(s, 3_000);
    assert_eq!(r.status, b"200");
    let want: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(r.body.len(), want.len());
    assert!(r.body == want, "the body arrived changed");
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let s = h.client.post("edge.example", "/upload", &body);
    let r = h.response(s, 3_000);
    assert_eq!(r.status, b"200");
    let got = h.lab.origin_bodies.last().expect("the origin read a body");
    assert!(got == &body, "the origin got {} bytes", got.len());
    let up = h.lab.origin_requests.last().unwrap().to_ascii_lowercase();
    assert!(up.contains("content-length: 100000\r\n"), "{up}");
}

#[test]
fn many_requests_on_one_connection_are_each_answered() {
    let mut h = H3Lab::new();
    h.connect();
    // Rounds of concurrent streams (the harness's origin takes 8
    // connections at once); later rounds reuse the pooled upstreams.
    for round in 0..4 {
        let streams: Vec<(u64, String)> = (0..6)
            .map(|i| {
                let path = format!("/item/{round}/{i}");
                (h.client.get("edge.example", &path), path)
            })
            .collect();
        for (s, path) in streams {
            let r = h.response(s, 1_000);
            assert_eq!(r.status, b"200", "{path}");
            assert_eq!(r.body, format!("origin:{path}").into_bytes());
        }
    }
    let st = h.lab.edge.stats();
    assert_eq!(st.h3.requests, 24);
    assert_eq!(st.h3.connections, 1);
}

#[test]
fn a_client_reset_mid_response_is_counted_and_frees_the_request() {
    let mut h = H3Lab::new();
    h.lab.big_body = 2_000_000;
    h.connect();
    let s = h.client.get("edge.example", "/big");
    h.run(20);
    assert!(h.client.response(s).is_none(), "not complete yet");
    h.client.reset_request(s, 0x10c);
    let id = ferrogate_proxy::quic::quinn_proto::StreamId::from(
        ferrogate_proxy::quic::quinn_proto::VarInt::from_u64(s).unwrap(),
    );
    let code = ferrogate_proxy::quic::quinn_proto::VarInt::from_u32(0x10c);
    let _ = h.client.quic().recv_stream(id).stop(code);
    h.run(50);
    let st = h.lab.edge.stats();
    assert_eq!(st.h3.client_resets, 1, "{:?}", st.h3);
    assert!(st.client_aborts >= 1);
    // The connection still serves.
    let s = h.client.get("edge.example", "/direct");
    assert_eq!(h.response(s, 200).status, b"200");
}

#[test]
fn a_drain_sends_goaway_and_the_stack_is_drained_once_requests_end() {
    let mut h = H3Lab::new();
    h.connect();
    let s = h.client.get("edge.example", "/page");
    assert_eq!(h.response(s, 300).status, b"200");
    let now = h.lab.now;
    h.lab.edge.begin_drain(now);
    for _ in 0..2_000 {
        if h.lab.edge.drained() {
            break;
        }
        h.step();
    }
    assert!(h.lab.edge.drained(), "HTTP/3 kept the stack from draining");
    assert!(
        h.client.lost.is_some(),
        "the client was told the connection closed"
    );
}

#[test]
fn with_retry_on_a_new_connection_proves_its_address_first() {
    let mut h = H3Lab::with_quic(QuicConfig {
        retry: true,
        ..QuicConfig::default()
    });
    h.connect();
    let s = h.client.get("edge.example", "/direct");
    assert_eq!(h.response(s, 200).status, b"200");
    let st = h.lab.edge.stats().h3;
    assert_eq!((st.retries, st.connections), (1, 1), "{st:?}");
}

/// An HTTP/1.1 request over TLS (TCP) to the same listener: the raw
/// response once complete.
fn https_exchange(h: &mut H3Lab, req: &[u8]) -> Response1 {
    use std::io::{Read, Write};
    let cfg = ferrogate_testkit::client_config(
        ferrogate_proxy::tls::provider(),
        &h.ca,
        &[b"http/1.1"],
        None,
    );
    let name = rustls::pki_types::ServerName::try_from("edge.example").unwrap();
    let mut tls = rustls::ClientConnection::new(cfg, name).unwrap();
    tls.writer().write_all(req).unwrap();
    let sock = h.lab.connect_to(H3_PORT);
    let mut plain = Vec::new();
    for _ in 0..2_000 {
        let s = h.lab.sockets.get_mut::<tcp::Socket>(sock);
        while tls.wants_write() && s.can_send() {
            let n = s
                .send(|buf| {
                    let n = tls.write_tls(&mut std::io::Cursor::new(buf)).unwrap_or(0);
                    (n, n)
                })
                .unwrap();
            if n == 0 {
                break;
            }
        }
        h.step();
        let s = h.lab.sockets.get_mut::<tcp::Socket>(sock);
        while s.can_recv() {
            s.recv(|b| {
                let n = tls.read_tls(&mut &b[..]).unwrap_or(0);
                (n, ())
            })
            .unwrap();
            tls.process_new_packets().expect("TLS");
            let _ = tls.reader().read_to_end(&mut plain);
        }
        if let Some(r) = Response1::parse(&plain) {
            return r;
        }
    }
    panic!("no response: {:?}", String::from_utf8_lossy(&plain));
}

#[test]
fn http3_is_advertised_on_the_tcp_listeners_responses_and_not_over_http3() {
    let mut h = H3Lab::new();
    let r = https_exchange(&mut h, b"GET /page HTTP/1.1\r\nHost: edge.example\r\n\r\n");
    assert_eq!(r.status, 200);
    let alt_svc = "\r\nalt-svc: h3=\":443\"; ma=3600";
    assert!(r.head.to_ascii_lowercase().contains(alt_svc), "{}", r.head);
    // A direct answer carries it too.
    let r = https_exchange(
        &mut h,
        b"GET /direct HTTP/1.1\r\nHost: edge.example\r\n\r\n",
    );
    assert!(r.head.to_ascii_lowercase().contains(alt_svc), "{}", r.head);
    h.connect();
    let s = h.client.get("edge.example", "/page");
    let r = h.response(s, 300);
    assert_eq!(r.header("alt-svc"), None, "{:?}", r.headers);
}

#[test]
fn an_origins_trailers_reach_the_http3_client_and_the_upstream_is_kept() {
    let mut h = H3Lab::new();
    h.connect();
    for _ in 0..2 {
        let s = h.client.get("edge.example", "/trailers");
        let r = h.response(s, 300);
        assert_eq!(r.status, b"200");
        assert_eq!(r.body, b"hello");
        let names: Vec<&[u8]> = r.trailers.iter().map(|(n, _)| &n[..]).collect();
        assert!(names.contains(&&b"x-checksum"[..]), "{:?}", r.trailers);
        // RFC 9110 §6.5.1: framing and hop-by-hop names never pass.
        assert!(!names.contains(&&b"content-length"[..]), "{:?}", r.trailers);
    }
    let st = h.lab.edge.stats();
    assert_eq!(st.trailers_forwarded, 2);
    // The second exchange reused the first one's upstream connection: the
    // stream ended cleanly, it did not reset the origin.
    assert_eq!(st.upstream_connects, 1, "{st:?}");
}

#[test]
fn an_answer_before_the_whole_upload_releases_the_request_slot() {
    let mut quic = QuicConfig {
        max_bidi_streams: 2,
        ..QuicConfig::default()
    };
    quic.h3.max_concurrent_requests = 2;
    let mut h = H3Lab::with_quic(quic);
    h.connect();
    // A direct route answers at the head; 300 kB of body are left unread.
    // Without STOP_SENDING each upload would hold its stream: the third
    // could not open.
    let body = vec![7u8; 300_000];
    for _ in 0..5 {
        let s = h.client.post("edge.example", "/direct", &body);
        let r = h.response(s, 2_000);
        assert_eq!(r.status, b"200");
        assert_eq!(r.body, b"hello from ferrogate");
        // STOP_SENDING, the client's RESET_STREAM, MAX_STREAMS: a few
        // round trips.
        h.run(20);
    }
    assert_eq!(h.client.uploads_pending(), 0, "uploads were stopped");
}

#[test]
fn cookie_crumbs_go_upstream_as_one_field() {
    let mut h = H3Lab::new();
    h.connect();
    let s = h.client.request_fields(
        &[
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"edge.example"),
            (b":path", b"/headers"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ],
        None,
    );
    let r = h.response(s, 300);
    let head = String::from_utf8_lossy(&r.body).to_ascii_lowercase();
    assert_eq!(head.matches("cookie:").count(), 1, "{head}");
    assert!(head.contains("cookie: a=1; b=2\r\n"), "{head}");
}

#[test]
fn a_drain_lets_a_download_in_flight_finish_whole() {
    let mut h = H3Lab::new();
    h.lab.big_body = 1_000_000;
    h.connect();
    let s = h.client.get("edge.example", "/big");
    h.run(15);
    assert!(h.client.response(s).is_none(), "already complete");
    let now = h.lab.now;
    h.lab.edge.begin_drain(now);
    for _ in 0..5_000 {
        if h.lab.edge.drained() {
            break;
        }
        h.step();
    }
    let r = h.client.response(s).expect("the download finished");
    assert_eq!(r.body.len(), 1_000_000);
    assert!(h.lab.edge.drained(), "HTTP/3 kept the stack from draining");
}

#[test]
fn an_origins_early_hints_reach_the_http3_client_before_the_response() {
    let mut h = H3Lab::new();
    h.connect();
    let s = h.client.get("edge.example", "/hints");
    let r = h.response(s, 300);
    assert_eq!(r.interim, vec![b"103".to_vec()]);
    assert_eq!(r.status, b"200");
    assert_eq!(r.body, b"ok");
}

#[test]
fn expect_100_continue_is_answered_over_http3_and_not_sent_upstream() {
    let mut h = H3Lab::new();
    h.connect();
    let body = b"hello upload";
    let len = body.len().to_string();
    let s = h.client.request_fields(
        &[
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"edge.example"),
            (b":path", b"/upload"),
            (b"content-length", len.as_bytes()),
            (b"expect", b"100-continue"),
        ],
        Some(body),
    );
    let r = h.response(s, 500);
    assert_eq!(r.interim, vec![b"100".to_vec()]);
    assert_eq!(r.status, b"200");
    let up = h.lab.origin_requests.last().unwrap().to_ascii_lowercase();
    assert!(!up.contains("expect:"), "{up}");
    assert_eq!(h.lab.origin_bodies.last().unwrap(), body);
}

#[test]
fn a_download_and_an_upload_arrive_whole_over_a_lossy_link() {
    let mut h = H3Lab::new();
    h.lab.big_body = 1_000_000;
    h.connect();
    // 3 % of the client's datagrams lost each way (the origin's link is
    // clean): QUIC's loss recovery on both ends carries the exchange.
    h.lab.lossy = Some(Lossy::new(3.0, 0x5eed));
    h.lab.lossy_origin = false;
    let s = h.client.get("edge.example", "/big");
    let r = h.response(s, 30_000);
    assert_eq!(r.status, b"200");
    let want: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    assert!(
        r.body == want,
        "the download arrived changed: {} bytes",
        r.body.len()
    );
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let s = h.client.post("edge.example", "/upload", &body);
    assert_eq!(h.response(s, 30_000).status, b"200");
    assert!(
        h.lab.origin_bodies.last() == Some(&body),
        "the upload arrived changed"
    );
    let l = h.lab.lossy.expect("lossy");
    assert!(l.dropped_to_edge > 0 && l.dropped_from_edge > 0, "{l:?}");
    let lost = h.client.quic().stats().path.lost_packets;
    assert!(lost > 0, "the client's QUIC saw no loss");
    assert_eq!(
        h.lab.edge.stats().h3.connections,
        1,
        "one connection throughout"
    );
}
