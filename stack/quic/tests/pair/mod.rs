//! Two endpoints back to back in memory on a simulated clock, in the
//! style of quinn-proto's `Pair`: a quinn-proto client speaking HTTP/3 by
//! hand (ferrogate-h3's frame and QPACK helpers) and a `QuicEndpoint`
//! whose application answers by path. The clock only moves by jumping to
//! the next timeout.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferrogate_h3::{Frame, frame, qpack};
use ferrogate_quic::quinn_proto::{
    self, ClientConfig, Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir,
    Endpoint, EndpointConfig, ReadError, StreamEvent, StreamId, VarInt, WriteError,
    crypto::rustls::QuicClientConfig,
};
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
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
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![c.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.clone())),
        )
        .unwrap()
}

pub fn client_config(c: &Certs) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.cert.clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()))
}

/// What the client saw on one stream the server sent on.
#[derive(Default, Debug)]
pub struct ClientStream {
    pub data: Vec<u8>,
    pub fin: bool,
    pub reset: Option<u64>,
}

/// A response read back from a request stream.
#[derive(Debug)]
pub struct Response {
    pub status: Vec<u8>,
    pub body: Vec<u8>,
}

pub struct Pair {
    pub now: Instant,
    pub server: QuicEndpoint,
    pub client: Endpoint,
    pub client_config: ClientConfig,
    pub conn: Option<(ConnectionHandle, Connection)>,
    pub client_addr: SocketAddr,
    pub server_addr: SocketAddr,
    /// Every datagram the client sent, for header checks.
    pub sent_to_server: Vec<Vec<u8>>,
    pub to_server: VecDeque<Vec<u8>>,
    pub to_client: VecDeque<Vec<u8>>,
    pub server_events: Vec<Event>,
    pub client_streams: HashMap<u64, ClientStream>,
    pub client_lost: Option<ConnectionError>,
    pub client_connected: bool,
    paths: HashMap<StreamHandle, Vec<u8>>,
    /// Request bodies the server application took, per stream.
    bodies: HashMap<StreamHandle, Vec<u8>>,
    /// The most body octets the server ever had buffered on one stream.
    pub max_buffered_seen: usize,
    /// Client request bytes not yet taken by its send stream.
    uploads: HashMap<StreamId, (Vec<u8>, usize)>,
}

impl Pair {
    pub fn new(config: QuicConfig) -> Self {
        let c = certs();
        let server = QuicEndpoint::new(config, server_tls(&c)).unwrap();
        let client = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
        Self {
            now: Instant::now(),
            server,
            client,
            client_config: client_config(&c),
            conn: None,
            client_addr: "10.77.0.2:50000".parse().unwrap(),
            server_addr: "10.77.0.10:443".parse().unwrap(),
            sent_to_server: Vec::new(),
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            server_events: Vec::new(),
            client_streams: HashMap::new(),
            client_lost: None,
            client_connected: false,
            paths: HashMap::new(),
            bodies: HashMap::new(),
            max_buffered_seen: 0,
            uploads: HashMap::new(),
        }
    }

    /// Starts the handshake and runs until nothing moves.
    pub fn connect(&mut self) {
        let (ch, conn) = self
            .client
            .connect(
                self.now,
                self.client_config.clone(),
                self.server_addr,
                "localhost",
            )
            .unwrap();
        self.conn = Some((ch, conn));
        self.drive();
    }

    pub fn quic(&mut self) -> &mut Connection {
        &mut self.conn.as_mut().unwrap().1
    }

    /// Opens the client's control stream (type 0, empty SETTINGS).
    pub fn open_control(&mut self) {
        let id = self.quic().streams().open(Dir::Uni).unwrap();
        self.quic()
            .send_stream(id)
            .write(&[0x00, 0x04, 0x00])
            .unwrap();
    }

    /// Sends a request head (and FIN): `fields` as given, pseudo-headers
    /// included, so a test can make it malformed.
    pub fn request_fields(&mut self, fields: &[(&[u8], &[u8])]) -> u64 {
        let mut section = vec![0, 0];
        for (n, v) in fields {
            qpack::encoder::encode_field(n, v, &mut section);
        }
        let mut out = Vec::new();
        frame::emit_headers(&section, &mut out);
        let id = self.quic().streams().open(Dir::Bi).unwrap();
        let n = self.quic().send_stream(id).write(&out).unwrap();
        assert_eq!(n, out.len());
        self.quic().send_stream(id).finish().unwrap();
        u64::from(id)
    }

    /// Resets the client's sending side of `stream` (RESET_STREAM) and
    /// stops writing its upload.
    pub fn reset_request(&mut self, stream: u64, code: u64) {
        let id = StreamId::from(varint(stream));
        self.uploads.remove(&id);
        self.quic().send_stream(id).reset(varint(code)).unwrap();
    }

    /// A POST with `body` in one DATA frame, written as flow control
    /// allows.
    pub fn post(&mut self, path: &str, body: &[u8]) -> u64 {
        let mut section = vec![0, 0];
        let len = body.len().to_string();
        for (n, v) in [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path.as_bytes()),
            (b"content-length", len.as_bytes()),
        ] {
            qpack::encoder::encode_field(n, v, &mut section);
        }
        let mut out = Vec::new();
        frame::emit_headers(&section, &mut out);
        frame::emit_data_header(body.len(), &mut out);
        out.extend_from_slice(body);
        let id = self.quic().streams().open(Dir::Bi).unwrap();
        self.uploads.insert(id, (out, 0));
        u64::from(id)
    }

    /// Request octets (frames included) the client's QUIC stream took so
    /// far for a POST still being written: what flow control allowed.
    pub fn uploaded(&self, stream: u64) -> Option<usize> {
        let id = StreamId::from(varint(stream));
        self.uploads.get(&id).map(|(_, off)| *off)
    }

    fn write_uploads(&mut self) {
        let Some((_, conn)) = self.conn.as_mut() else {
            return;
        };
        self.uploads.retain(|&id, (data, off)| {
            let mut send = conn.send_stream(id);
            match send.write(&data[*off..]) {
                Ok(n) => *off += n,
                // STOP_SENDING: answered with RESET_STREAM (RFC 9000 §3.5).
                Err(WriteError::Stopped(code)) => {
                    let _ = send.reset(code);
                    return false;
                }
                Err(_) => {}
            }
            if *off < data.len() {
                return true;
            }
            send.finish().unwrap();
            false
        });
    }

    pub fn get(&mut self, path: &str) -> u64 {
        self.request_fields(&[
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path.as_bytes()),
        ])
    }

    /// The response on `stream`, once its FIN arrived.
    pub fn response(&self, stream: u64) -> Option<Response> {
        let s = self.client_streams.get(&stream)?;
        if !s.fin {
            return None;
        }
        let mut buf = &s.data[..];
        let mut status = None;
        let mut body = Vec::new();
        while !buf.is_empty() {
            let (f, n) = frame::parse(buf, u64::MAX).unwrap().expect("whole frame");
            match f {
                Frame::Headers(section) => {
                    let fields = qpack::decode_section(section, 1 << 20).unwrap();
                    let st = fields.iter().find(|f| f.name == b":status");
                    status.get_or_insert(st.unwrap().value.clone());
                }
                Frame::Data(d) => body.extend_from_slice(d),
                _ => {}
            }
            buf = &buf[n..];
        }
        Some(Response {
            status: status?,
            body,
        })
    }

    /// One round: client out, server in and out, client in, events.
    /// Returns whether any datagram moved.
    pub fn step(&mut self) -> bool {
        let mut moved = false;
        let mut buf = Vec::new();
        self.write_uploads();
        if let Some((ch, conn)) = self.conn.as_mut() {
            loop {
                buf.clear();
                let Some(t) = conn.poll_transmit(self.now, 1, &mut buf) else {
                    break;
                };
                self.to_server.push_back(buf[..t.size].to_vec());
            }
            while let Some(ev) = conn.poll_endpoint_events() {
                if let Some(ev) = self.client.handle_event(*ch, ev) {
                    conn.handle_event(ev);
                }
            }
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
            let ev = self.client.handle(
                self.now,
                self.server_addr,
                None,
                None,
                BytesMut::from(&d[..]),
                &mut buf,
            );
            if let (Some(DatagramEvent::ConnectionEvent(_, ev)), Some((_, conn))) =
                (ev, self.conn.as_mut())
            {
                conn.handle_event(ev);
            }
        }
        self.client_events();
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
        let client = self.conn.as_mut().and_then(|(_, c)| c.poll_timeout());
        let server = self.server.poll_timeout();
        let Some(next) = [client, server].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        if let Some((_, c)) = self.conn.as_mut()
            && client.is_some_and(|t| t <= self.now)
        {
            c.handle_timeout(self.now);
        }
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
            let client = self.conn.as_mut().and_then(|(_, c)| c.poll_timeout());
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

    fn client_events(&mut self) {
        let Some((_, conn)) = self.conn.as_mut() else {
            return;
        };
        let mut readable = Vec::new();
        while let Some(ev) = conn.poll() {
            match ev {
                quinn_proto::Event::Connected => self.client_connected = true,
                quinn_proto::Event::ConnectionLost { reason } => self.client_lost = Some(reason),
                quinn_proto::Event::Stream(StreamEvent::Readable { id }) => readable.push(id),
                quinn_proto::Event::Stream(StreamEvent::Opened { dir }) => {
                    while let Some(id) = conn.streams().accept(dir) {
                        readable.push(id);
                    }
                }
                _ => {}
            }
        }
        for id in readable {
            read_client(
                conn,
                id,
                self.client_streams.entry(u64::from(id)).or_default(),
            );
        }
    }

    /// The test server: answers each request once it ended, by path.
    /// Returns whether there were events.
    fn serve(&mut self) -> bool {
        let mut any = false;
        while let Some(ev) = self.server.poll_event() {
            any = true;
            match &ev {
                Event::RequestHead { stream, request } => {
                    let path = request.path.clone().unwrap_or_default();
                    self.paths.insert(*stream, path);
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
                Event::RequestEnd(stream) => {
                    let path = self.paths.remove(stream).unwrap_or_default();
                    let got = self.bodies.remove(stream).unwrap_or_default();
                    if path == b"/hold" {
                        // A response that has started and does not end.
                        self.server.send_response_head(*stream, 200, &[]).unwrap();
                        self.server.send_data(*stream, b"partial").unwrap();
                        self.server_events.push(ev);
                        continue;
                    }
                    let body = match &path[..] {
                        b"/big" => big_body(),
                        b"/upload" => format!("{} {}", got.len(), checksum(&got)).into_bytes(),
                        p => [b"you asked for ", p].concat(),
                    };
                    let len = body.len().to_string();
                    self.server
                        .send_response_head(*stream, 200, &[(b"content-length", len.as_bytes())])
                        .unwrap();
                    self.server.send_data(*stream, &body).unwrap();
                    self.server.finish(*stream).unwrap();
                }
                _ => {}
            }
            self.server_events.push(ev);
        }
        any
    }
}

fn read_client(conn: &mut Connection, id: StreamId, s: &mut ClientStream) {
    let mut recv = conn.recv_stream(id);
    let Ok(mut chunks) = recv.read(true) else {
        return;
    };
    loop {
        match chunks.next(usize::MAX) {
            Ok(Some(c)) => s.data.extend_from_slice(&c.bytes),
            Ok(None) => {
                s.fin = true;
                break;
            }
            Err(ReadError::Blocked) => break,
            Err(ReadError::Reset(code)) => {
                s.reset = Some(code.into_inner());
                break;
            }
        }
    }
    let _ = chunks.finalize();
}

/// A short-header datagram's destination connection id.
pub fn short_dcid(d: &[u8]) -> Option<&[u8]> {
    (d.first()? & 0x80 == 0).then(|| &d[1..1 + ferrogate_quic::CID_LEN])
}

pub fn varint(v: u64) -> VarInt {
    VarInt::from_u64(v).unwrap()
}
