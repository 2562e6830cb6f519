//! Two endpoints back to back in memory on a simulated clock, in the
//! style of quinn-proto's `Pair`: a quinn-proto client speaking HTTP/3 by
//! hand (ferrogate-h3's frame and QPACK helpers) and a `QuicEndpoint`
//! whose application answers by path. The clock only moves by jumping to
//! the next timeout.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrogate_quic::client::{H3Client, Response, client_config};
use ferrogate_quic::quinn_proto::{Connection, VarInt};
use ferrogate_quic::{Event, QuicConfig, QuicEndpoint, StreamHandle};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const BIG: usize = 1 << 20;

pub fn big_body() -> Vec<u8> {
    (0..BIG)
        .map(|i| (i * 31 + 7) as u8 ^ (i >> 10) as u8)
        .collect()
}

/// FNV-1a, 64 bits: enough to catch a reordered or lost chunk.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub struct Certs {
    pub cert: CertificateDer<'static>,
    pub key: Vec<u8>,
}

pub fn certs() -> Certs {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Certs {
        cert: ck.cert.der().clone(),
        key: ck.signing_key.serialize_der(),
    }
}

pub fn server_tls(c: &Certs) -> rustls::ServerConfig {
    rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![c.cert.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.clone())),
    )
    .unwrap()
}

pub struct Pair {
    pub now: Instant,
    pub server: QuicEndpoint,
    pub client: H3Client,
    pub client_addr: SocketAddr,
    pub server_addr: SocketAddr,
    /// Every datagram the client sent, for header checks.
    pub sent_to_server: Vec<Vec<u8>>,
    pub to_server: VecDeque<Vec<u8>>,
    pub to_client: VecDeque<Vec<u8>>,
    pub server_events: Vec<Event>,
    paths: HashMap<StreamHandle, Vec<u8>>,
    /// Request bodies the server application took, per stream.
    bodies: HashMap<StreamHandle, Vec<u8>>,
    /// The most body octets the server ever had buffered on one stream.
    pub max_buffered_seen: usize,
}

impl Pair {
    pub fn new(config: QuicConfig) -> Self {
        let c = certs();
        let server = QuicEndpoint::new(config, server_tls(&c)).unwrap();
        let server_addr: SocketAddr = "10.77.0.10:443".parse().unwrap();
        Self {
            now: Instant::now(),
            server,
            client: H3Client::new(client_config(&[c.cert]), server_addr),
            client_addr: "10.77.0.2:50000".parse().unwrap(),
            server_addr,
            sent_to_server: Vec::new(),
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            server_events: Vec::new(),
            paths: HashMap::new(),
            bodies: HashMap::new(),
            max_buffered_seen: 0,
        }
    }

    /// Starts the handshake and runs until nothing moves.
    pub fn connect(&mut self) {
        self.client.connect(self.now, "localhost").unwrap();
        self.drive();
    }

    pub fn quic(&mut self) -> &mut Connection {
        self.client.quic()
    }

    /// Opens the client's control stream (type 0, empty SETTINGS).
    pub fn open_control(&mut self) {
        self.client.open_control();
    }

    /// Sends a request head (and FIN): `fields` as given, pseudo-headers
    /// included, so a test can make it malformed.
    pub fn request_fields(&mut self, fields: &[(&[u8], &[u8])]) -> u64 {
        self.client.request_fields(fields, None)
    }

    /// Resets the client's sending side of `stream` (RESET_STREAM) and
    /// stops writing its upload.
    pub fn reset_request(&mut self, stream: u64, code: u64) {
        self.client.reset_request(stream, code);
    }

    /// A POST with `body` in one DATA frame, written as flow control
    /// allows.
    pub fn post(&mut self, path: &str, body: &[u8]) -> u64 {
        self.client.post("localhost", path, body)
    }

    /// Request octets (frames included) the client's QUIC stream took so
    /// far for a POST still being written: what flow control allowed.
    pub fn uploaded(&self, stream: u64) -> Option<usize> {
        self.client.uploaded(stream)
    }

    pub fn get(&mut self, path: &str) -> u64 {
        self.client.get("localhost", path)
    }

    /// The response on `stream`, once its FIN arrived.
    pub fn response(&self, stream: u64) -> Option<Response> {
        self.client.response(stream)
    }

    /// One round: client out, server in and out, client in, events.
    /// Returns whether any datagram moved.
    pub fn step(&mut self) -> bool {
        let mut moved = false;
        let mut buf = Vec::new();
        while let Some(n) = self.client.poll_transmit(self.now, &mut buf) {
            self.to_server.push_back(buf[..n].to_vec());
        }
        while let Some(d) = self.to_server.pop_front() {
            moved = true;
            self.sent_to_server.push(d.clone());
            self.server.handle_datagram(
                self.now,
                self.client_addr,
                Some(self.server_addr.ip()),
                None,
                &d,
            );
        }
        // Events the application handled count as progress: answering
        // them may need another round even when no datagram moved.
        moved |= self.serve();
        while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
            assert_eq!(t.destination, self.client_addr);
            self.to_client.push_back(buf[..t.size].to_vec());
        }
        while let Some(d) = self.to_client.pop_front() {
            moved = true;
            self.client.handle_datagram(self.now, self.server_addr, &d);
        }
        moved
    }

    /// Steps until nothing moves.
    pub fn drive(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// Jumps the clock to the next timeout of either side and runs it.
    /// False when neither side has one.
    pub fn advance(&mut self) -> bool {
        let client = self.client.poll_timeout();
        let server = self.server.poll_timeout();
        let Some(next) = [client, server].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.drive();
        true
    }

    /// Drives and runs the timers due within `d` of now, and no later
    /// ones (the idle timeout of a stalled connection stays in the future).
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..10_000 {
            self.drive();
            let client = self.client.poll_timeout();
            let server = self.server.poll_timeout();
            match [client, server].into_iter().flatten().min() {
                Some(next) if next <= end => {
                    self.advance();
                }
                _ => return,
            }
        }
        panic!("timers keep firing");
    }

    pub fn elapsed_since(&self, start: Instant) -> Duration {
        self.now - start
    }

    /// The test server: answers each request once it ended, by path.
    /// Returns whether there were events.
    fn serve(&mut self) -> bool {
        let mut any = false;
        while let Some(ev) = self.server.poll_event() {
            any = true;
            match &ev {
                Event::RequestHead {
                    stream,
                    request,
                    end_stream,
                } => {
                    let path = request.path.clone().unwrap_or_default();
                    self.paths.insert(*stream, path);
                    if *end_stream {
                        self.answer(*stream);
                    }
                }
                Event::RequestData(stream) => {
                    if self.paths.get(stream).is_some_and(|p| p == b"/stall") {
                        // An application that does not take the body.
                        self.server_events.push(ev);
                        continue;
                    }
                    let Some(body) = self.server.request_body(*stream) else {
                        panic!(
                            "no body for {stream:?}; events so far {:?}",
                            self.server_events
                        );
                    };
                    self.max_buffered_seen = self.max_buffered_seen.max(body.len());
                    let taken = std::mem::take(body);
                    self.bodies.entry(*stream).or_default().extend(taken);
                }
                Event::RequestEnd(stream) => self.answer(*stream),
                _ => {}
            }
            self.server_events.push(ev);
        }
        any
    }

    /// Answers the request on `stream`, which has ended, by its path.
    fn answer(&mut self, stream: StreamHandle) {
        let path = self.paths.remove(&stream).unwrap_or_default();
        let got = self.bodies.remove(&stream).unwrap_or_default();
        if path == b"/hold" {
            // A response that has started and does not end.
            self.server.send_response_head(stream, 200, &[]).unwrap();
            self.server.send_data(stream, b"partial").unwrap();
            return;
        }
        let body = match &path[..] {
            b"/big" => big_body(),
            b"/upload" => format!("{} {}", got.len(), checksum(&got)).into_bytes(),
            p => [b"you asked for ", p].concat(),
        };
        let len = body.len().to_string();
        self.server
            .send_response_head(stream, 200, &[(b"content-length", len.as_bytes())])
            .unwrap();
        self.server.send_data(stream, &body).unwrap();
        self.server.finish(stream).unwrap();
    }
}

/// A short-header datagram's destination connection id.
pub fn short_dcid(d: &[u8]) -> Option<&[u8]> {
    (d.first()? & 0x80 == 0).then(|| &d[1..1 + ferrogate_quic::CID_LEN])
}

pub fn varint(v: u64) -> VarInt {
    VarInt::from_u64(v).unwrap()
}
