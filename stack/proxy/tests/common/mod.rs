//! The back-to-back harness the proxy's integration tests share: the
//! ferrogate stack under test and a peer smoltcp interface that plays both
//! the client (10.0.0.2) and the origin (10.0.0.3), over in-memory frames
//! with a simulated clock.
#![allow(dead_code, unused_imports)]

pub use std::collections::VecDeque;
pub use std::sync::Arc;

pub use ferrogate_proxy::lb::Endpoint;
pub use ferrogate_proxy::{
    DirectResponse, Instant, Listener, PathMatch, PoolPolicy, ProxyHttp, Route, RouteAction,
    RouteTable, Stack, StackConfig, StandardPhases, Upstream,
};
pub use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
pub use smoltcp::phy::{self, DeviceCapabilities, Medium};
pub use smoltcp::socket::tcp;
pub use smoltcp::time::Duration;
pub use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket,
    UdpRepr,
};

pub const EDGE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const VIP: [u8; 4] = [10, 0, 0, 10];
pub const CLIENT: [u8; 4] = [10, 0, 0, 2];
pub const ORIGIN: [u8; 4] = [10, 0, 0, 3];

#[derive(Default)]
pub struct PeerDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    /// Neither compute nor verify checksums (set when the edge does not
    /// either: the fuzz target's speed, the wire is in memory).
    pub no_checksums: bool,
}

pub struct PeerRx(pub Vec<u8>);
pub struct PeerTx<'a>(pub &'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for PeerRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for PeerTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl phy::Device for PeerDevice {
    type RxToken<'a> = PeerRx;
    type TxToken<'a> = PeerTx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(PeerRx, PeerTx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((PeerRx(f), PeerTx(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<PeerTx<'_>> {
        Some(PeerTx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        if self.no_checksums {
            caps.checksum = phy::ChecksumCapabilities::ignored();
        }
        caps
    }
}

/// A link that drops frames at random, the same ones for the same seed.
#[derive(Debug, Clone, Copy)]
pub struct Lossy {
    /// Drop probability in parts per million, each direction.
    pub ppm: u32,
    pub rng: u64,
    /// Frames dropped towards the edge and from it.
    pub dropped_to_edge: u64,
    pub dropped_from_edge: u64,
}

impl Lossy {
    pub fn new(percent: f64, seed: u64) -> Self {
        Lossy {
            ppm: (percent * 10_000.0) as u32,
            rng: seed.max(1),
            dropped_to_edge: 0,
            dropped_from_edge: 0,
        }
    }

    /// xorshift64: deterministic, no dependency.
    pub fn drop_next(&mut self) -> bool {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 1_000_000) < u64::from(self.ppm)
    }
}

/// How the simulated origin behaves.
#[derive(Clone, Copy, PartialEq)]
pub enum Origin {
    Serving,
    /// Nothing listens: SYNs get RST.
    Refusing,
    /// Frames to the origin address vanish (connect timeout).
    BlackHole,
}

pub struct OriginConn {
    pub handle: SocketHandle,
    pub buf: Vec<u8>,
    pub out: Vec<u8>,
    pub close_after: bool,
    /// The origin's TLS session when it serves TLS (`Lab::origin_tls`).
    pub tls: Option<rustls::ServerConnection>,
}

pub struct Lab<P: ProxyHttp = StandardPhases> {
    pub now: Instant,
    pub edge: Stack<P>,
    pub peer: Interface,
    pub dev: PeerDevice,
    pub sockets: SocketSet<'static>,
    pub origin: Origin,
    pub origin_listeners: Vec<SocketHandle>,
    pub origin_conns: Vec<OriginConn>,
    pub origin_requests: Vec<String>,
    /// Request bodies `/upload` received, framing included.
    pub origin_bodies: Vec<Vec<u8>>,
    /// Set: the origin speaks TLS with this config on every new connection.
    pub origin_tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS sessions the origin saw fail (e.g. the proxy's alert).
    pub origin_tls_errors: usize,
    pub next_client_port: u16,
    /// Body length of `/big` (200 000: beyond every buffer of the default
    /// config).
    pub big_body: u32,
    /// Set: frames are dropped at random both ways.
    pub lossy: Option<Lossy>,
    /// The origin's link is lossy too (default), not just the client's.
    pub lossy_origin: bool,
    /// One-way delay of the client's link (IPv4 frames between the edge
    /// and anyone but the origin): a long path, RTT twice this.
    pub client_delay_ms: u64,
    /// Frames on the delayed link, with the time each arrives.
    delayed_to_edge: VecDeque<(Instant, Vec<u8>)>,
    delayed_from_edge: VecDeque<(Instant, Vec<u8>)>,
    /// Paths under `/cached`: the `Cache-Control` they carry, their
    /// version (in the body and the ETag `"vN"`; a request whose
    /// If-None-Match names it gets 304), and whether they answer 503.
    pub cache_control: String,
    pub cached_version: u32,
    pub cached_fail: bool,
    /// Set: `/cached` answers any conditional request 304 with this ETag.
    pub cached_304_etag: Option<String>,
    /// Set: `/cached` answers 200 with a body cut short (Content-Length
    /// past what is sent, then the connection closes).
    pub cached_short_body: bool,
    /// Set: the origin sends at most this many bytes per step (a slow
    /// body, read while it is being stored).
    pub origin_pace: Option<usize>,
    /// Set: UDP frames to the client are taken here (an HTTP/3 client
    /// reads them) rather than given to the peer interface.
    pub udp_to_client: Option<Vec<Vec<u8>>>,
}

pub fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
    )
}

/// The origin (10.0.0.3:8080) as pool 0 with a `tune`d policy.
pub fn origin_pool(tune: impl FnOnce(&mut PoolPolicy)) -> Arc<Upstream> {
    let mut policy = PoolPolicy::default();
    tune(&mut policy);
    Arc::new(Upstream::new(
        "origin",
        0,
        &[Endpoint::new("10.0.0.3:8080".parse().unwrap())],
        policy,
    ))
}

pub fn routes() -> Arc<RouteTable> {
    let upstream = Arc::new(Upstream::simple(
        "origin",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    Arc::new(RouteTable::new(
        1,
        vec![Listener::new(
            80,
            vec![
                Route {
                    path: PathMatch::Prefix("/direct".into()),
                    ..Route::new(
                        "direct",
                        RouteAction::Respond(Arc::new(DirectResponse {
                            status: 200,
                            content_type: "text/plain".into(),
                            body: b"hello from ferrogate".to_vec(),
                            location: None,
                            retry_after: None,
                            www_authenticate: None,
                        })),
                    )
                },
                Route::new("origin", RouteAction::Proxy(upstream.clone())),
            ],
        )],
        vec![upstream],
    ))
}

impl Lab {
    pub fn new(origin: Origin) -> Self {
        Self::with_config(origin, |_| {})
    }

    pub fn with_config(origin: Origin, tune: impl FnOnce(&mut StackConfig)) -> Self {
        Self::with_routes(origin, routes(), tune)
    }

    pub fn with_routes(
        origin: Origin,
        routes: Arc<RouteTable>,
        tune: impl FnOnce(&mut StackConfig),
    ) -> Self {
        Lab::with_phases(origin, routes, tune, StandardPhases)
    }
}

impl<P: ProxyHttp> Lab<P> {
    pub fn with_phases(
        origin: Origin,
        routes: Arc<RouteTable>,
        tune: impl FnOnce(&mut StackConfig),
        phases: P,
    ) -> Self {
        let now = Instant::from_millis(1_000);
        let mut cfg = StackConfig::new(EDGE_MAC, vec![(VIP.into(), 24)], 40_000..41_000);
        tune(&mut cfg);
        let mut dev = PeerDevice {
            no_checksums: !cfg.net.verify_rx_checksums && cfg.net.tx_checksum_offload,
            ..PeerDevice::default()
        };
        let edge = Stack::with_phases(cfg, routes, now, phases).expect("stack");
        let mut peer = Interface::new(
            Config::new(HardwareAddress::Ethernet(EthernetAddress(PEER_MAC))),
            &mut dev,
            now,
        );
        peer.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 0, 2), 24)).unwrap();
            a.push(IpCidr::new(IpAddress::v4(10, 0, 0, 3), 24)).unwrap();
        });
        let mut lab = Lab {
            now,
            edge,
            peer,
            dev,
            sockets: SocketSet::new(vec![]),
            origin,
            origin_listeners: vec![],
            origin_conns: vec![],
            origin_requests: vec![],
            origin_bodies: vec![],
            origin_tls: None,
            origin_tls_errors: 0,
            next_client_port: 50_000,
            big_body: 200_000,
            lossy: None,
            lossy_origin: true,
            client_delay_ms: 0,
            delayed_to_edge: VecDeque::new(),
            delayed_from_edge: VecDeque::new(),
            cache_control: "max-age=60".into(),
            cached_version: 1,
            cached_fail: false,
            cached_304_etag: None,
            cached_short_body: false,
            origin_pace: None,
            udp_to_client: None,
        };
        if origin == Origin::Serving {
            for _ in 0..8 {
                let mut s = tcp_socket();
                s.listen((IpAddress::from(Ipv4Address::from(ORIGIN)), 8080))
                    .unwrap();
                let h = lab.sockets.add(s);
                lab.origin_listeners.push(h);
            }
        }
        lab
    }

    pub fn connect(&mut self) -> SocketHandle {
        self.connect_to(80)
    }

    pub fn connect_to(&mut self, port: u16) -> SocketHandle {
        self.connect_with(port, tcp_socket())
    }

    /// Connects a client socket of the caller's making (e.g. with small
    /// buffers) from the next client port.
    pub fn connect_with(&mut self, port: u16, mut s: tcp::Socket<'static>) -> SocketHandle {
        self.next_client_port += 1;
        s.connect(
            self.peer.context(),
            (IpAddress::from(Ipv4Address::from(VIP)), port),
            (
                IpAddress::from(Ipv4Address::from(CLIENT)),
                self.next_client_port,
            ),
        )
        .unwrap();
        self.sockets.add(s)
    }

    /// One step of simulated time: move frames both ways, run both sides.
    pub fn step(&mut self, dt_ms: u64) {
        self.now += Duration::from_millis(dt_ms);
        self.peer.poll(self.now, &mut self.dev, &mut self.sockets);
        self.serve_origin();
        self.peer.poll(self.now, &mut self.dev, &mut self.sockets);
        let black_hole = self.origin == Origin::BlackHole;
        let (now, delay) = (self.now, Duration::from_millis(self.client_delay_ms));
        let lossy_origin = self.lossy_origin;
        while let Some(f) = self.dev.tx.pop_front() {
            // IPv4 source at 26..30.
            let client_link = f.len() >= 34 && f[12..14] == [8, 0] && f[26..30] != ORIGIN;
            if let Some(l) = &mut self.lossy
                && (client_link || lossy_origin)
                && l.drop_next()
            {
                l.dropped_to_edge += 1;
                continue;
            }
            if self.client_delay_ms > 0 && client_link {
                self.delayed_to_edge.push_back((now + delay, f));
                continue;
            }
            assert!(self.edge.handle_frame(&f));
        }
        while self
            .delayed_to_edge
            .front()
            .is_some_and(|(at, _)| *at <= now)
        {
            let (_, f) = self.delayed_to_edge.pop_front().expect("front");
            assert!(self.edge.handle_frame(&f));
        }
        self.edge.poll(self.now);
        let dev = &mut self.dev;
        let lossy = &mut self.lossy;
        let delayed = &mut self.delayed_from_edge;
        let udp_to_client = &mut self.udp_to_client;
        self.edge.drain_tx(|f| {
            // IPv4 destination at 30..34; ARP target at 38..42.
            let ipv4 = f.len() >= 34 && f[12..14] == [8, 0];
            let to_origin = (ipv4 && f[30..34] == ORIGIN)
                || (f.len() >= 42 && f[12..14] == [8, 6] && f[38..42] == ORIGIN);
            if let Some(l) = lossy
                && (!to_origin || lossy_origin)
                && l.drop_next()
            {
                l.dropped_from_edge += 1;
                return;
            }
            // IPv4 protocol at 23 (17: UDP).
            if let Some(udp) = udp_to_client
                && ipv4
                && f[23] == 17
                && f[30..34] == CLIENT
            {
                udp.push(f.to_vec());
                return;
            }
            if ipv4 && !to_origin && delay > Duration::ZERO {
                delayed.push_back((now + delay, f.to_vec()));
            } else if !(black_hole && to_origin) {
                dev.rx.push_back(f.to_vec());
            }
        });
        while self
            .delayed_from_edge
            .front()
            .is_some_and(|(at, _)| *at <= now)
        {
            let (_, f) = self.delayed_from_edge.pop_front().expect("front");
            self.dev.rx.push_back(f);
        }
    }

    pub fn serve_origin(&mut self) {
        for h in self.origin_listeners.iter_mut() {
            let state = self.sockets.get::<tcp::Socket>(*h).state();
            if state != tcp::State::Listen {
                self.origin_conns.push(OriginConn {
                    handle: *h,
                    buf: vec![],
                    out: vec![],
                    close_after: false,
                    tls: self
                        .origin_tls
                        .as_ref()
                        .map(|c| rustls::ServerConnection::new(c.clone()).unwrap()),
                });
                let mut s = tcp_socket();
                s.listen((IpAddress::from(Ipv4Address::from(ORIGIN)), 8080))
                    .unwrap();
                *h = self.sockets.add(s);
            }
        }
        for c in &mut self.origin_conns {
            let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
            while s.can_recv() {
                let errors = &mut self.origin_tls_errors;
                s.recv(|b| {
                    match &mut c.tls {
                        None => c.buf.extend_from_slice(b),
                        Some(t) => {
                            let mut rd: &[u8] = b;
                            while !rd.is_empty() {
                                if t.read_tls(&mut rd).unwrap_or(0) == 0 {
                                    break;
                                }
                                if t.process_new_packets().is_err() {
                                    *errors += 1;
                                    break;
                                }
                            }
                            let _ = std::io::Read::read_to_end(&mut t.reader(), &mut c.buf);
                        }
                    }
                    (b.len(), ())
                })
                .unwrap();
            }
            while let Some(end) = find(&c.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&c.buf[..end + 4]).to_string();
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                // `/upload` reads its whole body (chunked or with a length)
                // before it answers "got <n>: <body>"; other paths answer
                // at the head, like an origin that ignores a body.
                let mut upload = None;
                if path.starts_with("/upload") {
                    let lower = head.to_ascii_lowercase();
                    let rest = &c.buf[end + 4..];
                    let mut body = vec![];
                    let used = if lower.contains("transfer-encoding: chunked") {
                        let mut dec = ferrogate_proxy::http::ChunkedDecoder::new();
                        match dec.feed_with(rest, |d| body.extend_from_slice(d)) {
                            Ok(n) if dec.is_done() => n,
                            _ => break,
                        }
                    } else {
                        let n: usize = lower
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if rest.len() < n {
                            break;
                        }
                        body.extend_from_slice(&rest[..n]);
                        n
                    };
                    self.origin_bodies.push(rest[..used].to_vec());
                    upload = Some((used, body));
                }
                c.buf.drain(..end + 4 + upload.as_ref().map_or(0, |u| u.0));
                self.origin_requests.push(head.clone());
                let resp: Vec<u8> = match path.as_str() {
                    p if p.starts_with("/cached") => {
                        let lower = head.to_ascii_lowercase();
                        let etag = format!("\"v{}\"", self.cached_version);
                        let inm = lower
                            .lines()
                            .find_map(|l| l.strip_prefix("if-none-match: "))
                            .map(|v| v.trim().to_string());
                        let vary = if p.contains("vary") { "Vary: Accept-Language\r\n" } else { "" };
                        let lang = lower
                            .lines()
                            .find_map(|l| l.strip_prefix("accept-language: "))
                            .unwrap_or("-")
                            .trim()
                            .to_string();
                        let cc = &self.cache_control;
                        let rid = lower
                            .lines()
                            .find_map(|l| l.strip_prefix("x-request-id: "))
                            .map(|v| format!("X-Request-Id: {}\r\n", v.trim()))
                            .unwrap_or_default();
                        let vary = if p.contains("varyxff") { "Vary: X-Forwarded-For\r\n" } else { vary };
                        if p.contains("err500") {
                            format!("HTTP/1.1 500 Internal Server Error\r\nCache-Control: {cc}\r\nContent-Length: 4\r\n\r\nfail").into_bytes()
                        } else if p.contains("closebody") {
                            format!("HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\nConnection: close\r\n\r\nuntil-close").into_bytes()
                        } else if self.cached_fail {
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown".to_vec()
                        } else if self.cached_short_body {
                            format!("HTTP/1.1 200 OK\r\nContent-Length: 100\r\nETag: {etag}\r\nCache-Control: {cc}\r\n\r\nshort").into_bytes()
                        } else if let (Some(e), Some(_)) = (&self.cached_304_etag, &inm) {
                            format!("HTTP/1.1 304 Not Modified\r\nETag: {e}\r\nCache-Control: {cc}\r\n\r\n").into_bytes()
                        } else if inm.as_deref() == Some(etag.as_str()) {
                            format!("HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nCache-Control: {cc}\r\n{vary}\r\n").into_bytes()
                        } else if p.contains("nocontent") {
                            format!("HTTP/1.1 204 No Content\r\nETag: {etag}\r\nCache-Control: {cc}\r\n\r\n").into_bytes()
                        } else if p.contains("bigchunked") {
                            let body: Vec<u8> = (0..self.big_body).map(|i| b'a' + (i % 26) as u8).collect();
                            let mut r = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: {etag}\r\nCache-Control: {cc}\r\n\r\n").into_bytes();
                            for c in body.chunks(3000) {
                                r.extend(format!("{:x}\r\n", c.len()).as_bytes());
                                r.extend(c);
                                r.extend(b"\r\n");
                            }
                            r.extend(b"0\r\n\r\n");
                            r
                        } else if p.contains("tecl") {
                            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nETag: {etag}\r\nCache-Control: {cc}\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").into_bytes()
                        } else if p.contains("chunked") {
                            let body = format!("v{} {p} {lang}", self.cached_version);
                            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: {etag}\r\nCache-Control: {cc}\r\n{vary}\r\n3\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n", &body[..3], body.len() - 3, &body[3..]).into_bytes()
                        } else if p.contains("big") {
                            let body: Vec<u8> = (0..self.big_body).map(|i| b'a' + (i % 26) as u8).collect();
                            let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\nCache-Control: {cc}\r\n\r\n", body.len()).into_bytes();
                            r.extend(body);
                            r
                        } else {
                            let body = format!("v{} {p} {lang}", self.cached_version);
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\nCache-Control: {cc}\r\nSurrogate-Key: all {}\r\n{vary}{rid}\r\n{body}", body.len(), p.trim_start_matches('/').replace('/', "-")).into_bytes()
                        }
                    }
                    _ if upload.is_some() => {
                        let (_, body) = upload.take().unwrap();
                        let text = format!("got {}: {}", body.len(), String::from_utf8_lossy(&body));
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len()).into_bytes()
                    }
                    // Both framings (RFC 9112 §6.3: chunked wins).
                    "/te-cl" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
                    "/hints" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                    "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n".to_vec(),
                    // Trailers, two that go on and two that never may.
                    "/trailers" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\nContent-Length: 5\r\nProxy-Thing: p\r\nGrpc-Status: 0\r\n\r\n".to_vec(),
                    // 40 trailer fields: past the proxy's bound of 32.
                    "/trailers-many" => {
                        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n".to_vec();
                        for i in 0..40 {
                            r.extend(format!("X-T{i}: v\r\n").as_bytes());
                        }
                        r.extend(b"\r\n");
                        r
                    }
                    "/big" => {
                        let body: Vec<u8> = (0..self.big_body).map(|i| b'a' + (i % 26) as u8).collect();
                        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                        r.extend(body);
                        r
                    }
                    "/close" => b"HTTP/1.0 200 OK\r\n\r\nuntil-close".to_vec(),
                    "/503" => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    // The head and 10 of the 100 bytes it announces, then
                    // nothing (the connection stays open).
                    "/stall-body" => b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec(),
                    // Out of step: bytes after a response that has no body.
                    "/204-junk" => b"HTTP/1.1 204 No Content\r\n\r\nJUNK 500 out of step\r\n\r\n".to_vec(),
                    "/headers" => {
                        let body = head.clone();
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
                    }
                    _ => {
                        let body = format!("origin:{path}");
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}", body.len()).into_bytes()
                    }
                };
                c.out.extend(resp);
                c.close_after |= path == "/close"
                    || path.contains("closebody")
                    || (self.cached_short_body && path.starts_with("/cached"));
            }
            if let Some(t) = &mut c.tls {
                if !c.out.is_empty() && !t.is_handshaking() {
                    let n = std::io::Write::write(&mut t.writer(), &c.out).unwrap_or(0);
                    c.out.drain(..n);
                }
                while t.wants_write() && s.can_send() {
                    let n = s
                        .send(|buf| {
                            let mut w = std::io::Cursor::new(buf);
                            let n = t.write_tls(&mut w).unwrap_or(0);
                            (n, n)
                        })
                        .unwrap();
                    if n == 0 {
                        break;
                    }
                }
            } else if !c.out.is_empty() && s.may_send() {
                let pace = self.origin_pace.unwrap_or(usize::MAX).min(c.out.len());
                let n = s.send_slice(&c.out[..pace]).unwrap();
                c.out.drain(..n);
            }
            if c.out.is_empty() && c.close_after {
                s.close();
            }
        }
    }

    pub fn send(&mut self, h: SocketHandle, data: &[u8]) {
        for _ in 0..200 {
            if self.sockets.get::<tcp::Socket>(h).may_send() {
                break;
            }
            self.step(1);
        }
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        assert_eq!(s.send_slice(data).unwrap(), data.len());
    }

    /// Reads from a client socket until `done(bytes)` or the step budget ends.
    pub fn read_until(
        &mut self,
        h: SocketHandle,
        steps: usize,
        done: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        let mut out = vec![];
        for _ in 0..steps {
            self.step(1);
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            while s.can_recv() {
                s.recv(|b| {
                    out.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if done(&out) {
                break;
            }
        }
        out
    }

    pub fn exchange(&mut self, h: SocketHandle, req: &[u8]) -> Response {
        self.send(h, req);
        let raw = self.read_until(h, 3_000, |b| Response::parse(b).is_some());
        Response::parse(&raw)
            .unwrap_or_else(|| panic!("no complete response: {:?}", String::from_utf8_lossy(&raw)))
    }

    /// The origin ends every connection it holds: FIN, sent on the next
    /// step.
    pub fn origin_closes_all(&mut self) {
        for c in self.origin_conns.drain(..) {
            self.sockets.get_mut::<tcp::Socket>(c.handle).close();
        }
    }

    /// The origin loses every connection without a word (a restart, an
    /// idle timeout whose FIN was lost): the next segment the proxy sends
    /// on one gets a RST.
    pub fn origin_forgets_all(&mut self) {
        for c in self.origin_conns.drain(..) {
            self.sockets.remove(c.handle);
        }
    }

    pub fn client_state(&self, h: SocketHandle) -> tcp::State {
        self.sockets.get::<tcp::Socket>(h).state()
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    /// A chunked body's trailer lines, as sent.
    pub trailers: Vec<String>,
}

impl Response {
    /// A complete response with Content-Length or chunked framing.
    pub fn parse(raw: &[u8]) -> Option<Response> {
        let end = find(raw, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let rest = &raw[end + 4..];
        let lower = head.to_ascii_lowercase();
        // No body, whatever the head says (RFC 9112 §6.3).
        if status == 204 || status == 304 {
            return Some(Response {
                status,
                head,
                body: Vec::new(),
                trailers: Vec::new(),
            });
        }
        if let Some(cl) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            let n: usize = cl.trim().parse().ok()?;
            return (rest.len() >= n).then(|| Response {
                status,
                head,
                body: rest[..n].to_vec(),
                trailers: Vec::new(),
            });
        }
        if lower.contains("transfer-encoding: chunked") {
            let mut body = vec![];
            let mut r = rest;
            loop {
                let e = find(r, b"\r\n")?;
                let n = usize::from_str_radix(std::str::from_utf8(&r[..e]).ok()?, 16).ok()?;
                r = &r[e + 2..];
                if n == 0 {
                    let mut trailers = vec![];
                    loop {
                        let e = find(r, b"\r\n")?;
                        if e == 0 {
                            return Some(Response {
                                status,
                                head,
                                body,
                                trailers,
                            });
                        }
                        trailers.push(String::from_utf8_lossy(&r[..e]).to_string());
                        r = &r[e + 2..];
                    }
                }
                if r.len() < n + 2 {
                    return None;
                }
                body.extend_from_slice(&r[..n]);
                r = &r[n + 2..];
            }
        }
        None
    }
}

/// Ethernet (peer → edge) + IPv4 `src` → `dst`, its payload written by
/// `l4` (`l4_len` bytes).
pub fn ipv4_frame(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    proto: IpProtocol,
    l4_len: usize,
    l4: impl FnOnce(&mut [u8], &ChecksumCapabilities),
) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    let mut buf = vec![0u8; 14 + 20 + l4_len];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(PEER_MAC),
        dst_addr: EthernetAddress(EDGE_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len: l4_len,
        hop_limit: 64,
    };
    let mut p = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut p, &caps);
    l4(p.payload_mut(), &caps);
    buf
}

/// A UDP datagram from the client side (peer → edge) as an Ethernet frame.
pub fn udp_frame(from: std::net::SocketAddr, to: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (std::net::SocketAddr::V4(f), std::net::SocketAddr::V4(t)) = (from, to) else {
        panic!("v4 only")
    };
    ipv4_frame(
        *f.ip(),
        *t.ip(),
        IpProtocol::Udp,
        8 + payload.len(),
        |l4, caps| {
            UdpRepr {
                src_port: f.port(),
                dst_port: t.port(),
            }
            .emit(
                &mut UdpPacket::new_unchecked(l4),
                &(*f.ip()).into(),
                &(*t.ip()).into(),
                payload.len(),
                |b| b.copy_from_slice(payload),
                caps,
            )
        },
    )
}
