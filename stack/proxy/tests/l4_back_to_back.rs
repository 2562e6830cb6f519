//! TCP (L4) listeners back to back (`common/`): the harness's peer plays
//! the client and, on 10.0.0.3:9000, a raw echo origin this file drives
//! (the harness's HTTP origin on :8080 serves where bytes must be exact).

mod common;

use common::*;
use ferrogate_proxy::L4Listener;

const TCP_PORT: u16 = 7000;
const ECHO: u16 = 9000;

fn l4_table(endpoints: &[&str], tune: impl FnOnce(&mut L4Listener)) -> Arc<RouteTable> {
    let eps: Vec<std::net::SocketAddr> = endpoints.iter().map(|e| e.parse().unwrap()).collect();
    let pool = Arc::new(Upstream::simple("tcp-pool", 0, &eps));
    let mut l4 = L4Listener {
        upstream: pool.clone(),
        idle_timeout: std::time::Duration::from_secs(300),
        max_connections: None,
        sni: Vec::new().into(),
        proxy_from: Vec::new().into(),
    };
    tune(&mut l4);
    Arc::new(RouteTable::new(
        1,
        vec![Listener::tcp(TCP_PORT, l4)],
        vec![pool],
    ))
}

/// A raw origin on 10.0.0.3:`ECHO`: accepts, and echoes what it reads
/// unless told otherwise by the test.
struct Echo {
    listeners: Vec<SocketHandle>,
    conns: Vec<SocketHandle>,
    echo: bool,
}

fn big_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
    )
}

impl Echo {
    fn new(lab: &mut Lab) -> Self {
        let mut e = Echo {
            listeners: vec![],
            conns: vec![],
            echo: true,
        };
        for _ in 0..4 {
            e.listen(lab);
        }
        e
    }

    fn listen(&mut self, lab: &mut Lab) {
        let mut s = big_socket();
        s.listen((IpAddress::from(Ipv4Address::from(ORIGIN)), ECHO))
            .unwrap();
        self.listeners.push(lab.sockets.add(s));
    }

    /// One lab step, then the origin's turn.
    fn step(&mut self, lab: &mut Lab) {
        lab.step(1);
        let mut accepted = 0;
        self.listeners.retain(|h| {
            if lab.sockets.get::<tcp::Socket>(*h).state() != tcp::State::Listen {
                self.conns.push(*h);
                accepted += 1;
                false
            } else {
                true
            }
        });
        for _ in 0..accepted {
            self.listen(lab);
        }
        if self.echo {
            for h in &self.conns {
                let s = lab.sockets.get_mut::<tcp::Socket>(*h);
                let mut buf = [0u8; 8192];
                while s.can_recv() && s.send_capacity() - s.send_queue() > 0 {
                    let room = (s.send_capacity() - s.send_queue()).min(buf.len());
                    let n = s.recv_slice(&mut buf[..room]).unwrap();
                    if n == 0 {
                        break;
                    }
                    s.send_slice(&buf[..n]).unwrap();
                }
                if !s.may_recv() && s.send_queue() == 0 && s.state() == tcp::State::CloseWait {
                    s.close();
                }
            }
        }
    }
}

fn read_all(lab: &mut Lab, h: SocketHandle, out: &mut Vec<u8>) {
    let s = lab.sockets.get_mut::<tcp::Socket>(h);
    while s.can_recv() {
        s.recv(|b| {
            out.extend_from_slice(b);
            (b.len(), ())
        })
        .unwrap();
    }
}

#[test]
fn bytes_go_through_untouched_both_ways() {
    let mut lab = Lab::with_routes(
        Origin::Serving,
        l4_table(&["10.0.0.3:8080"], |_| {}),
        |_| {},
    );
    let h = lab.connect_to(TCP_PORT);
    // An HTTP request, and no proxy header added to it.
    let req = b"GET /raw HTTP/1.1\r\nHost: x\r\n\r\n";
    let resp = lab.exchange(h, req);
    assert_eq!(resp.body, b"origin:/raw");
    assert_eq!(
        lab.origin_requests,
        vec![String::from_utf8_lossy(req).to_string()]
    );
    let l4 = lab.edge.stats().l4;
    assert_eq!(l4.connections, 1);
    assert_eq!(l4.active, 1);
    assert_eq!(l4.bytes_up, req.len() as u64);
    assert!(l4.bytes_down > 11);
    assert_eq!(lab.edge.stats().requests, 0, "not parsed as HTTP");
}

#[test]
fn a_megabyte_each_way_arrives_intact_through_small_buffers() {
    let mut lab = Lab::with_routes(
        Origin::Refusing,
        l4_table(&["10.0.0.3:9000"], |_| {}),
        |c| {
            c.net.tcp_rx_buffer = 16 * 1024;
            c.net.tcp_tx_buffer = 16 * 1024;
        },
    );
    let mut echo = Echo::new(&mut lab);
    let h = lab.connect_to(TCP_PORT);
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let (mut sent, mut got) = (0, vec![]);
    for _ in 0..200_000 {
        let s = lab.sockets.get_mut::<tcp::Socket>(h);
        if sent < data.len() && s.may_send() {
            sent += s.send_slice(&data[sent..]).unwrap();
            if sent == data.len() {
                s.close();
            }
        }
        echo.step(&mut lab);
        read_all(&mut lab, h, &mut got);
        if got.len() == data.len() && !lab.sockets.get::<tcp::Socket>(h).may_recv() {
            break;
        }
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ");
    let l4 = lab.edge.stats().l4;
    assert_eq!((l4.bytes_up, l4.bytes_down), (1_000_000, 1_000_000));
    // Both FINs crossed: the connection ended in order.
    for _ in 0..100 {
        echo.step(&mut lab);
    }
    assert_eq!(lab.edge.stats().l4.active, 0);
    assert_eq!(lab.edge.stats().l4.resets, 0);
}

#[test]
fn half_close_keeps_the_reply_direction_open() {
    let mut lab = Lab::with_routes(
        Origin::Refusing,
        l4_table(&["10.0.0.3:9000"], |_| {}),
        |_| {},
    );
    let mut echo = Echo::new(&mut lab);
    echo.echo = false;
    let h = lab.connect_to(TCP_PORT);
    lab.send(h, b"question");
    lab.sockets.get_mut::<tcp::Socket>(h).close();
    let mut seen = vec![];
    for _ in 0..200 {
        echo.step(&mut lab);
        if let Some(&o) = echo.conns.first() {
            let s = lab.sockets.get_mut::<tcp::Socket>(o);
            let mut b = [0u8; 64];
            let n = s.recv_slice(&mut b).unwrap_or(0);
            seen.extend_from_slice(&b[..n]);
            if s.state() == tcp::State::CloseWait {
                break;
            }
        }
    }
    assert_eq!(seen, b"question");
    let o = echo.conns[0];
    assert_eq!(
        lab.sockets.get::<tcp::Socket>(o).state(),
        tcp::State::CloseWait,
        "client FIN reached the origin"
    );
    // The origin answers after the client's FIN, then ends.
    let s = lab.sockets.get_mut::<tcp::Socket>(o);
    s.send_slice(b"answer").unwrap();
    s.close();
    let mut got = vec![];
    for _ in 0..200 {
        echo.step(&mut lab);
        read_all(&mut lab, h, &mut got);
        if !lab.sockets.get::<tcp::Socket>(h).may_recv() {
            break;
        }
    }
    assert_eq!(got, b"answer");
    assert!(
        !lab.sockets.get::<tcp::Socket>(h).may_recv(),
        "origin FIN reached the client"
    );
    assert_eq!(lab.edge.stats().l4.resets, 0);
}

#[test]
fn a_reset_from_the_origin_resets_the_client() {
    let mut lab = Lab::with_routes(
        Origin::Refusing,
        l4_table(&["10.0.0.3:9000"], |_| {}),
        |_| {},
    );
    let mut echo = Echo::new(&mut lab);
    let h = lab.connect_to(TCP_PORT);
    lab.send(h, b"ping");
    let mut got = vec![];
    for _ in 0..100 {
        echo.step(&mut lab);
        read_all(&mut lab, h, &mut got);
    }
    assert_eq!(got, b"ping");
    lab.sockets.get_mut::<tcp::Socket>(echo.conns[0]).abort();
    for _ in 0..50 {
        echo.step(&mut lab);
    }
    assert_eq!(lab.client_state(h), tcp::State::Closed, "client was reset");
    let l4 = lab.edge.stats().l4;
    assert_eq!((l4.resets, l4.active), (1, 0));
}

#[test]
fn a_refused_endpoint_is_retried_on_the_next_one() {
    // :9001 refuses (nothing listens: RST); every connection still lands.
    let mut lab = Lab::with_routes(
        Origin::Serving,
        l4_table(&["10.0.0.3:9001", "10.0.0.3:8080"], |_| {}),
        |_| {},
    );
    for i in 0..4 {
        let h = lab.connect_to(TCP_PORT);
        let resp = lab.exchange(h, format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
        assert_eq!(resp.body, format!("origin:/{i}").as_bytes());
    }
    let l4 = lab.edge.stats().l4;
    assert!(l4.connect_failures >= 1, "{l4:?}");
    assert_eq!(l4.no_upstream, 0);
}

#[test]
fn no_endpoint_resets_the_client() {
    let mut lab = Lab::with_routes(
        Origin::Refusing,
        l4_table(&["10.0.0.3:9001"], |_| {}),
        |_| {},
    );
    let h = lab.connect_to(TCP_PORT);
    for _ in 0..200 {
        lab.step(1);
    }
    assert_eq!(lab.client_state(h), tcp::State::Closed);
    let l4 = lab.edge.stats().l4;
    assert_eq!(l4.no_upstream, 1);
    assert!(l4.connect_failures >= 1);
    assert_eq!(l4.active, 0);
}

#[test]
fn a_connect_timeout_fires_without_traffic() {
    let mut lab = Lab::with_routes(
        Origin::BlackHole,
        l4_table(&["10.0.0.3:9000"], |_| {}),
        |_| {},
    );
    let h = lab.connect_to(TCP_PORT);
    for _ in 0..200 {
        lab.step(100);
    }
    // 20 s: past the connect timeout (and its retry).
    assert_eq!(lab.client_state(h), tcp::State::Closed);
    let l4 = lab.edge.stats().l4;
    assert_eq!(l4.no_upstream, 1, "{l4:?}");
}

#[test]
fn an_idle_connection_is_closed_on_both_sides() {
    let mut lab = Lab::with_routes(
        Origin::Refusing,
        l4_table(&["10.0.0.3:9000"], |l| {
            l.idle_timeout = std::time::Duration::from_secs(2)
        }),
        |_| {},
    );
    let mut echo = Echo::new(&mut lab);
    let h = lab.connect_to(TCP_PORT);
    lab.send(h, b"hi");
    for _ in 0..100 {
        echo.step(&mut lab);
    }
    assert_eq!(lab.edge.stats().l4.idle_timeouts, 0);
    assert_eq!(lab.client_state(h), tcp::State::Established);
    for _ in 0..30 {
        lab.step(100);
    }
    assert_eq!(lab.edge.stats().l4.idle_timeouts, 1);
    assert_eq!(
        lab.client_state(h),
        tcp::State::CloseWait,
        "client got a FIN"
    );
    let o = echo.conns[0];
    assert_eq!(
        lab.sockets.get::<tcp::Socket>(o).state(),
        tcp::State::CloseWait,
        "origin got a FIN"
    );
}

#[test]
fn max_connections_resets_one_more() {
    let mut lab = Lab::with_routes(
        Origin::Refusing,
        l4_table(&["10.0.0.3:9000"], |l| l.max_connections = Some(1)),
        |_| {},
    );
    let mut echo = Echo::new(&mut lab);
    let a = lab.connect_to(TCP_PORT);
    for _ in 0..20 {
        echo.step(&mut lab);
    }
    let b = lab.connect_to(TCP_PORT);
    for _ in 0..20 {
        echo.step(&mut lab);
    }
    assert_eq!(lab.client_state(a), tcp::State::Established);
    assert_eq!(lab.client_state(b), tcp::State::Closed);
    assert_eq!(lab.edge.stats().l4.refused_over_limit, 1);
    // Once the first ends, a new one is taken.
    lab.sockets.get_mut::<tcp::Socket>(a).abort();
    for _ in 0..20 {
        echo.step(&mut lab);
    }
    let c = lab.connect_to(TCP_PORT);
    for _ in 0..20 {
        echo.step(&mut lab);
    }
    assert_eq!(lab.client_state(c), tcp::State::Established);
}

#[test]
fn a_pool_shared_with_http_routes_never_lends_its_idle_connections() {
    // Port 80 proxies HTTP to the pool and keeps the upstream connection
    // idle for reuse; a TCP connection to the same pool opens its own.
    let pool = Arc::new(Upstream::simple(
        "shared",
        0,
        &["10.0.0.3:8080".parse().unwrap()],
    ));
    let table = Arc::new(RouteTable::new(
        1,
        vec![
            Listener::new(
                80,
                vec![Route::new("all", RouteAction::Proxy(pool.clone()))],
            ),
            Listener::tcp(
                TCP_PORT,
                L4Listener {
                    upstream: pool.clone(),
                    idle_timeout: std::time::Duration::from_secs(300),
                    max_connections: None,
                    sni: Vec::new().into(),
                    proxy_from: Vec::new().into(),
                },
            ),
        ],
        vec![pool],
    ));
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let h = lab.connect();
    assert_eq!(
        lab.exchange(h, b"GET /http HTTP/1.1\r\nHost: x\r\n\r\n")
            .status,
        200
    );
    assert_eq!(lab.edge.stats().upstream_idle, 1);
    let t = lab.connect_to(TCP_PORT);
    let resp = lab.exchange(t, b"GET /tcp HTTP/1.1\r\n\r\n");
    assert_eq!(resp.body, b"origin:/tcp");
    assert_eq!(lab.edge.stats().upstream_reused, 0);
    assert_eq!(lab.origin_conns.len(), 2, "the TCP connection has its own");
    assert_eq!(lab.edge.stats().upstream_idle, 1);
}

/// Steps the lab and the echo origin until `h` has received something
/// ending with `tail` (or 300 steps); what it received.
fn echo_until(lab: &mut Lab, echo: &mut Echo, h: SocketHandle, tail: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..300 {
        echo.step(lab);
        read_all(lab, h, &mut got);
        if got.ends_with(tail) {
            break;
        }
    }
    got
}

/// A real ClientHello for `name` (rustls's first flight).
fn client_hello(name: &str) -> Vec<u8> {
    let cfg = rustls::ClientConfig::builder_with_provider(ferrogate_proxy::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut c = rustls::ClientConnection::new(Arc::new(cfg), server).unwrap();
    let mut out = Vec::new();
    c.write_tls(&mut out).unwrap();
    out
}

#[test]
fn passthrough_routes_by_the_client_hello_name_and_forwards_it_untouched() {
    let echo_pool = Arc::new(Upstream::simple(
        "by-sni",
        1,
        &[format!("10.0.0.3:{ECHO}").parse().unwrap()],
    ));
    let table = {
        let base = l4_table(&["10.0.0.3:8080"], |l4| {
            l4.sni = vec![("*.b.example".to_string(), echo_pool.clone())].into();
        });
        let listener = base.listeners[0].clone();
        Arc::new(RouteTable::new(
            1,
            vec![listener],
            vec![base.upstreams[0].clone(), echo_pool.clone()],
        ))
    };
    let mut lab = Lab::with_routes(Origin::Serving, table, |_| {});
    let mut echo = Echo::new(&mut lab);
    let hello = client_hello("x.B.example");
    let h = lab.connect_to(TCP_PORT);
    lab.send(h, &hello);
    let got = echo_until(&mut lab, &mut echo, h, &hello);
    // The echo origin (picked by the name) got the hello byte for byte.
    assert_eq!(got, hello);
    assert!(lab.origin_requests.is_empty(), "the default pool was used");

    // Not a ClientHello: reset, counted, nothing sent upstream.
    let g = lab.connect_to(TCP_PORT);
    lab.send(g, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    for _ in 0..50 {
        echo.step(&mut lab);
    }
    assert_eq!(lab.client_state(g), tcp::State::Closed);
    assert_eq!(lab.edge.stats().l4.bad_client_hello, 1);
    assert!(lab.origin_requests.is_empty());
}

#[test]
fn a_proxy_protocol_pool_gets_the_client_address_first() {
    let mut lab = Lab::with_routes(
        Origin::Serving,
        l4_table(&[&format!("10.0.0.3:{ECHO}")], |l4| {
            let mut pool = (*l4.upstream).clone();
            pool.proxy_protocol = Some(ferrogate_proxy::lb::ProxyProtocol::V1);
            l4.upstream = Arc::new(pool);
        }),
        |_| {},
    );
    let mut echo = Echo::new(&mut lab);
    let h = lab.connect_to(TCP_PORT);
    lab.send(h, b"hello");
    let got = echo_until(&mut lab, &mut echo, h, b"hello");
    let port = lab
        .sockets
        .get::<tcp::Socket>(h)
        .local_endpoint()
        .unwrap()
        .port;
    let want = format!("PROXY TCP4 10.0.0.2 10.0.0.10 {port} {TCP_PORT}\r\nhello");
    assert_eq!(String::from_utf8_lossy(&got), want);
}

#[test]
fn a_trusted_balancers_proxy_header_is_read_and_its_client_used() {
    let mut lab = Lab::with_routes(
        Origin::Serving,
        l4_table(&[&format!("10.0.0.3:{ECHO}")], |l4| {
            // The client of the lab (10.0.0.2) plays the balancer.
            l4.proxy_from = vec![("10.0.0.2".parse().unwrap(), 32)].into();
            let mut pool = (*l4.upstream).clone();
            pool.proxy_protocol = Some(ferrogate_proxy::lb::ProxyProtocol::V1);
            l4.upstream = Arc::new(pool);
        }),
        |_| {},
    );
    let mut echo = Echo::new(&mut lab);
    let real: std::net::SocketAddr = "203.0.113.9:5555".parse().unwrap();
    let vip: std::net::SocketAddr = format!("10.0.0.10:{TCP_PORT}").parse().unwrap();
    let mut first = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (real, vip),
    )
    .build()
    .unwrap();
    first.extend_from_slice(b"hello");
    let h = lab.connect_to(TCP_PORT);
    lab.send(h, &first);
    let got = echo_until(&mut lab, &mut echo, h, b"hello");
    // Stripped, and the origin is told of the real client, not the balancer.
    let want = format!("PROXY TCP4 203.0.113.9 10.0.0.10 5555 {TCP_PORT}\r\nhello");
    assert_eq!(String::from_utf8_lossy(&got), want);

    // From the balancer, anything but a header: reset and counted.
    let g = lab.connect_to(TCP_PORT);
    lab.send(g, b"hello without a header\r\n");
    for _ in 0..50 {
        echo.step(&mut lab);
    }
    assert_eq!(lab.client_state(g), tcp::State::Closed);
    assert_eq!(lab.edge.stats().l4.bad_proxy_header, 1);
}

// ---- TLS termination on a TCP listener: a rustls client, plain origin ----

mod tls {
    use super::*;
    use ferrogate_proxy::tls::{CertSpec, ClientAuth, ListenerTls, TlsListenerConfig, TlsServer};
    pub use ferrogate_testkit::Ca;
    use rustls::ClientConnection;
    use rustls::pki_types::ServerName;
    use std::io::{Read, Write};

    /// `l4_table` with TLS terminated on the listener (a certificate for
    /// edge.example from the CA returned, no ALPN; with `client_ca`,
    /// client certificates signed by it are required; `tune` as in
    /// `l4_table`).
    pub fn table(
        endpoints: &[&str],
        client_ca: Option<&Ca>,
        tune: impl FnOnce(&mut L4Listener),
    ) -> (Arc<RouteTable>, Ca) {
        let ca = Ca::new("l4 b2b CA");
        let d = ferrogate_testkit::temp_dir("fg-l4-tls");
        let (cert, key) = ca.leaf(Some("edge"), &["edge.example"]).write(&d, "edge");
        let client_auth = match client_ca {
            None => ClientAuth::None,
            Some(c) => ClientAuth::Required {
                ca: ferrogate_testkit::write(&d, "clients.pem", c.pem()),
            },
        };
        let server = TlsServer::build(&TlsListenerConfig {
            certs: vec![CertSpec {
                cert,
                key,
                names: vec!["edge.example".into()],
                default: true,
            }],
            alpn: Vec::new(),
            client_auth,
            session_tickets: true,
            ..Default::default()
        })
        .unwrap();
        let mut lt = ListenerTls::new(server);
        lt.handshake_timeout = std::time::Duration::from_secs(2);
        let base = l4_table(endpoints, tune);
        let listener = base.listeners[0].clone().with_tls(Arc::new(lt));
        let table = Arc::new(RouteTable::new(1, vec![listener], base.upstreams.clone()));
        (table, ca)
    }

    /// A client config that trusts `ca` (and presents `id`).
    pub fn client(ca: &Ca, id: Option<&ferrogate_testkit::Pem>) -> Arc<rustls::ClientConfig> {
        ferrogate_testkit::client_config(ferrogate_proxy::tls::provider(), ca, &[], id)
    }

    pub struct TlsClient {
        pub h: SocketHandle,
        pub conn: ClientConnection,
        /// Plaintext received.
        pub plain: Vec<u8>,
        /// The edge's close_notify came.
        pub peer_closed: bool,
    }

    impl TlsClient {
        pub fn new(lab: &mut Lab, cfg: Arc<rustls::ClientConfig>) -> Self {
            let h = lab.connect_to(TCP_PORT);
            let name = ServerName::try_from("edge.example").unwrap();
            TlsClient {
                h,
                conn: ClientConnection::new(cfg, name).unwrap(),
                plain: Vec::new(),
                peer_closed: false,
            }
        }

        /// Queues plaintext; returns how much rustls took.
        pub fn write(&mut self, data: &[u8]) -> usize {
            self.conn.writer().write(data).unwrap()
        }

        /// Ciphertext out as far as the socket takes it, a step of the lab
        /// and the echo origin, ciphertext in.
        pub fn pump(&mut self, lab: &mut Lab, echo: &mut Echo) -> Result<(), rustls::Error> {
            let s = lab.sockets.get_mut::<tcp::Socket>(self.h);
            while self.conn.wants_write() && s.can_send() {
                let conn = &mut self.conn;
                let n = s
                    .send(|buf| {
                        let n = conn.write_tls(&mut std::io::Cursor::new(buf)).unwrap_or(0);
                        (n, n)
                    })
                    .unwrap();
                if n == 0 {
                    break;
                }
            }
            echo.step(lab);
            let s = lab.sockets.get_mut::<tcp::Socket>(self.h);
            while s.can_recv() {
                let conn = &mut self.conn;
                s.recv(|b| {
                    let mut rd: &[u8] = b;
                    let n = conn.read_tls(&mut rd).unwrap_or(0);
                    (n, ())
                })
                .unwrap();
                let st = self.conn.process_new_packets()?;
                self.peer_closed |= st.peer_has_closed();
                let _ = self.conn.reader().read_to_end(&mut self.plain);
            }
            Ok(())
        }

        /// Pumps until the plaintext received ends with `tail`.
        pub fn until(&mut self, lab: &mut Lab, echo: &mut Echo, tail: &[u8]) {
            for _ in 0..2_000 {
                self.pump(lab, echo).expect("TLS client");
                if self.plain.ends_with(tail) {
                    return;
                }
            }
            panic!(
                "never got {:?}: {:?}",
                String::from_utf8_lossy(tail),
                self.plain.len()
            );
        }
    }

    /// The access records the stack logs, popped as they come.
    pub fn access_log(lab: &mut Lab) -> Arc<ferrogate_proxy::access::AccessQueue> {
        let q = Arc::new(ferrogate_proxy::access::AccessQueue::new(64));
        lab.edge
            .set_access_log(ferrogate_proxy::access::AccessSink::new(q.clone()));
        q
    }
}

#[test]
fn tls_is_terminated_and_plaintext_spliced_with_half_close_both_ways() {
    let (table, ca) = tls::table(&["10.0.0.3:9000"], None, |_| {});
    let cfg = tls::client(&ca, None);
    let mut lab = Lab::with_routes(Origin::Refusing, table, |_| {});
    let log = tls::access_log(&mut lab);
    let mut echo = Echo::new(&mut lab);
    echo.echo = false;
    let mut c = tls::TlsClient::new(&mut lab, cfg);
    c.write(b"question");
    for _ in 0..100 {
        c.pump(&mut lab, &mut echo).unwrap();
    }
    assert!(!c.conn.is_handshaking());
    // The client ends its side: close_notify after its bytes, then FIN.
    c.conn.send_close_notify();
    let mut seen = Vec::new();
    let mut fin_sent = false;
    for _ in 0..500 {
        c.pump(&mut lab, &mut echo).unwrap();
        if !fin_sent && !c.conn.wants_write() {
            lab.sockets.get_mut::<tcp::Socket>(c.h).close();
            fin_sent = true;
        }
        if let Some(&o) = echo.conns.first() {
            read_all(&mut lab, o, &mut seen);
            if lab.sockets.get::<tcp::Socket>(o).state() == tcp::State::CloseWait {
                break;
            }
        }
    }
    // The origin reads plaintext, then the FIN the close_notify became.
    assert_eq!(seen, b"question");
    let o = echo.conns[0];
    assert_eq!(
        lab.sockets.get::<tcp::Socket>(o).state(),
        tcp::State::CloseWait
    );
    // It answers after the client's end, then ends: close_notify + FIN.
    let s = lab.sockets.get_mut::<tcp::Socket>(o);
    s.send_slice(b"answer").unwrap();
    s.close();
    for _ in 0..500 {
        c.pump(&mut lab, &mut echo).unwrap();
        if c.peer_closed && !lab.sockets.get::<tcp::Socket>(c.h).may_recv() {
            break;
        }
    }
    assert_eq!(c.plain, b"answer");
    assert!(c.peer_closed, "the origin's FIN became a close_notify");
    assert!(
        !lab.sockets.get::<tcp::Socket>(c.h).may_recv(),
        "and a FIN after it"
    );
    for _ in 0..50 {
        echo.step(&mut lab);
    }
    let l4 = lab.edge.stats().l4;
    assert_eq!(l4.tls_handshakes, 1);
    assert_eq!((l4.resets, l4.tls_handshake_failed, l4.active), (0, 0, 0));
    assert_eq!((l4.bytes_up, l4.bytes_down), (8, 6), "plaintext counted");
    let r = log.pop().expect("an access record");
    assert!(r.tls);
    assert_eq!(r.error, "closed");
}

#[test]
fn tls_megabyte_each_way_through_small_buffers_holds_back_pressure() {
    let (table, ca) = tls::table(&["10.0.0.3:9000"], None, |_| {});
    let cfg = tls::client(&ca, None);
    let mut lab = Lab::with_routes(Origin::Refusing, table, |c| {
        c.net.tcp_rx_buffer = 16 * 1024;
        c.net.tcp_tx_buffer = 16 * 1024;
    });
    let mut echo = Echo::new(&mut lab);
    let mut c = tls::TlsClient::new(&mut lab, cfg);
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut sent = 0;
    for _ in 0..200_000 {
        // Small writes: the client's own buffer stays small too.
        if sent < data.len() && !c.conn.wants_write() {
            sent += c.write(&data[sent..(sent + 16 * 1024).min(data.len())]);
        }
        c.pump(&mut lab, &mut echo).unwrap();
        if c.plain.len() == data.len() {
            break;
        }
    }
    assert_eq!(c.plain.len(), data.len());
    assert!(c.plain == data, "bytes differ");
    let l4 = lab.edge.stats().l4;
    assert_eq!((l4.bytes_up, l4.bytes_down), (1_000_000, 1_000_000));
    assert_eq!((l4.resets, l4.tls_record_errors), (0, 0));
}

#[test]
fn garbage_instead_of_a_client_hello_is_reset_and_counted() {
    let (table, _) = tls::table(&["10.0.0.3:9000"], None, |_| {});
    let mut lab = Lab::with_routes(Origin::Refusing, table, |_| {});
    let log = tls::access_log(&mut lab);
    let mut echo = Echo::new(&mut lab);
    let h = lab.connect_to(TCP_PORT);
    lab.send(h, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    for _ in 0..50 {
        echo.step(&mut lab);
    }
    assert_eq!(lab.client_state(h), tcp::State::Closed, "client reset");
    assert!(echo.conns.is_empty(), "no upstream connection");
    let l4 = lab.edge.stats().l4;
    assert_eq!((l4.tls_handshake_failed, l4.tls_handshakes), (1, 0));
    assert_eq!(l4.active, 0);
    // Published beside the other l4_* counters (stats file, metrics).
    let fields = lab.edge.stats().fields();
    assert!(
        fields.contains(&("l4_tls_handshake_failed", 1)),
        "{fields:?}"
    );
    let r = log.pop().expect("an access record");
    assert_eq!(r.error, "tls_handshake_failed");
    assert!(r.tls);
}

#[test]
fn a_bad_record_after_the_handshake_resets_both_sides() {
    let (table, ca) = tls::table(&["10.0.0.3:9000"], None, |_| {});
    let cfg = tls::client(&ca, None);
    let mut lab = Lab::with_routes(Origin::Refusing, table, |_| {});
    let log = tls::access_log(&mut lab);
    let mut echo = Echo::new(&mut lab);
    let mut c = tls::TlsClient::new(&mut lab, cfg);
    c.write(b"ping");
    c.until(&mut lab, &mut echo, b"ping");
    // An application_data record no key opens.
    let mut bad = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    bad.extend([0x5a; 32]);
    lab.send(c.h, &bad);
    for _ in 0..50 {
        echo.step(&mut lab);
    }
    assert_eq!(lab.client_state(c.h), tcp::State::Closed, "client reset");
    let o = echo.conns[0];
    assert_eq!(
        lab.sockets.get::<tcp::Socket>(o).state(),
        tcp::State::Closed,
        "origin reset"
    );
    let l4 = lab.edge.stats().l4;
    assert_eq!((l4.tls_record_errors, l4.active), (1, 0));
    let r = log.pop().expect("an access record");
    assert_eq!(r.error, "tls_record_error");
    assert_eq!(r.bytes_up, 4);
}

#[test]
fn a_client_without_a_required_certificate_is_reset() {
    // mTLS on a TCP listener: the same [listeners.tls] keys as HTTPS.
    let clients = tls::Ca::new("l4 client CA");
    let (table, ca) = tls::table(&["10.0.0.3:9000"], Some(&clients), |_| {});
    let mut lab = Lab::with_routes(Origin::Refusing, table, |_| {});
    let mut echo = Echo::new(&mut lab);
    let alice = clients.leaf(Some("alice"), &["alice.example"]);
    let mut c = tls::TlsClient::new(&mut lab, tls::client(&ca, Some(&alice)));
    c.write(b"with a certificate");
    c.until(&mut lab, &mut echo, b"with a certificate");
    let mut a = tls::TlsClient::new(&mut lab, tls::client(&ca, None));
    a.write(b"without");
    for _ in 0..100 {
        if a.pump(&mut lab, &mut echo).is_err() {
            break;
        }
    }
    for _ in 0..20 {
        echo.step(&mut lab);
    }
    assert_eq!(lab.client_state(a.h), tcp::State::Closed);
    let l4 = lab.edge.stats().l4;
    assert_eq!((l4.tls_handshakes, l4.tls_handshake_failed), (1, 1));
    assert_eq!(echo.conns.len(), 1, "no upstream for the refused client");
}

#[test]
fn a_proxy_header_from_an_untrusted_client_is_reset_and_counted() {
    let client: std::net::SocketAddr = "203.0.113.9:5555".parse().unwrap();
    let vip: std::net::SocketAddr = format!("10.0.0.10:{TCP_PORT}").parse().unwrap();
    let v1 = format!("PROXY TCP4 203.0.113.9 10.0.0.10 5555 {TCP_PORT}\r\nhello").into_bytes();
    let mut v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, vip),
    )
    .build()
    .unwrap();
    v2.extend_from_slice(b"hello");
    // A plain listener, and one that terminates TLS (the header would come
    // before the ClientHello).
    let (tls_table, _) = tls::table(&["10.0.0.3:9000"], None, |_| {});
    for (table, kind) in [
        (l4_table(&["10.0.0.3:9000"], |_| {}), "plain"),
        (tls_table, "tls"),
    ] {
        let mut lab = Lab::with_routes(Origin::Refusing, table, |_| {});
        let log = tls::access_log(&mut lab);
        let mut echo = Echo::new(&mut lab);
        for (i, first) in [&v1, &v2].into_iter().enumerate() {
            let h = lab.connect_to(TCP_PORT);
            lab.send(h, first);
            for _ in 0..50 {
                echo.step(&mut lab);
            }
            assert_eq!(lab.client_state(h), tcp::State::Closed, "{kind} {i}");
            let l4 = lab.edge.stats().l4;
            assert_eq!(l4.untrusted_proxy_header, i as u64 + 1, "{kind} {i}");
            assert_eq!(l4.tls_handshake_failed, 0, "{kind} {i}");
            let r = log.pop().expect("an access record");
            assert_eq!(r.error, "untrusted_proxy_header");
            assert_eq!(r.bytes_up, 0, "nothing went upstream");
        }
        for o in &echo.conns {
            let mut seen = vec![];
            read_all(&mut lab, *o, &mut seen);
            assert!(seen.is_empty(), "{kind}: {seen:?}");
        }
    }
    // An ordinary first read goes through, and so does a signature split
    // over two reads (the documented limit: no waiting for more bytes).
    let mut lab = Lab::with_routes(
        Origin::Refusing,
        l4_table(&["10.0.0.3:9000"], |_| {}),
        |_| {},
    );
    let mut echo = Echo::new(&mut lab);
    let h = lab.connect_to(TCP_PORT);
    lab.send(h, b"PRO");
    assert_eq!(echo_until(&mut lab, &mut echo, h, b"PRO"), b"PRO");
    lab.send(h, b"XY is a word here");
    let got = echo_until(&mut lab, &mut echo, h, b"here");
    assert_eq!(got, b"XY is a word here");
    assert_eq!(lab.edge.stats().l4.untrusted_proxy_header, 0);
    let fields = lab.edge.stats().fields();
    assert!(
        fields.contains(&("l4_untrusted_proxy_header", 0)),
        "{fields:?}"
    );
}

#[test]
fn a_trusted_balancers_header_comes_before_the_client_hello() {
    // The balancer's PROXY v2 header and the ClientHello arrive together:
    // the header is stripped, the rest goes to the TLS session, and the
    // origin gets its own header (the real client) before the plaintext.
    let (table, ca) = tls::table(&["10.0.0.3:9000"], None, |l4| {
        l4.proxy_from = vec![("10.0.0.2".parse().unwrap(), 32)].into();
        let mut pool = (*l4.upstream).clone();
        pool.proxy_protocol = Some(ferrogate_proxy::lb::ProxyProtocol::V1);
        l4.upstream = Arc::new(pool);
    });
    let mut lab = Lab::with_routes(Origin::Refusing, table, |_| {});
    let mut echo = Echo::new(&mut lab);
    let real: std::net::SocketAddr = "203.0.113.9:5555".parse().unwrap();
    let vip: std::net::SocketAddr = format!("10.0.0.10:{TCP_PORT}").parse().unwrap();
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (real, vip),
    )
    .build()
    .unwrap();
    let mut c = tls::TlsClient::new(&mut lab, tls::client(&ca, None));
    lab.send(c.h, &header);
    c.write(b"hello");
    c.until(&mut lab, &mut echo, b"hello");
    let want = format!("PROXY TCP4 203.0.113.9 10.0.0.10 5555 {TCP_PORT}\r\nhello");
    assert_eq!(String::from_utf8_lossy(&c.plain), want);
    let l4 = lab.edge.stats().l4;
    assert_eq!((l4.tls_handshakes, l4.bad_proxy_header), (1, 0));
    assert_eq!(l4.untrusted_proxy_header, 0);
}
