//! A sans-IO HTTP/3 client on quinn-proto, for tests and the load
//! generator (feature `client`): datagrams and a clock in, datagrams out,
//! requests written and responses read by hand with ferrogate-h3's frame
//! and QPACK helpers. Not a general client: no QPACK dynamic table, no
//! server push, responses buffered whole.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use ferrogate_h3::{Frame, frame, qpack};
use quinn_proto::crypto::rustls::QuicClientConfig;
use quinn_proto::{
    ClientConfig, Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint,
    EndpointConfig, ReadError, StreamEvent, StreamId, VarInt, WriteError,
};
use rustls::pki_types::CertificateDer;

use crate::config::ALPN_H3;

/// What the client received on one stream.
#[derive(Default, Debug)]
pub struct ClientStream {
    pub data: Vec<u8>,
    pub fin: bool,
    /// The server reset it with this code.
    pub reset: Option<u64>,
}

/// A response read back from a request stream.
#[derive(Debug, Default)]
pub struct Response {
    pub status: Vec<u8>,
    /// The statuses of interim (1xx) heads before it.
    pub interim: Vec<Vec<u8>>,
    /// Fields of the final head, pseudo-headers left out.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| &v[..])
    }
}

/// A QUIC client config that trusts `roots` and offers ALPN h3 (TLS 1.3).
pub fn client_config(roots: &[CertificateDer<'static>]) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        // A root the store refuses fails the handshake, which says so.
        let _ = store.add(r.clone());
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported")
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_H3.to_vec()];
    ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).expect("TLS 1.3 has an initial suite"),
    ))
}

fn varint(v: u64) -> VarInt {
    VarInt::from_u64(v).unwrap_or(VarInt::MAX)
}

pub struct H3Client {
    endpoint: Endpoint,
    config: ClientConfig,
    conn: Option<(ConnectionHandle, Connection)>,
    pub server: SocketAddr,
    pub streams: HashMap<u64, ClientStream>,
    pub lost: Option<ConnectionError>,
    pub connected: bool,
    /// Request bytes not yet taken by their send stream.
    uploads: HashMap<StreamId, (Vec<u8>, usize)>,
}

impl H3Client {
    pub fn new(config: ClientConfig, server: SocketAddr) -> Self {
        Self {
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None),
            config,
            conn: None,
            server,
            streams: HashMap::new(),
            lost: None,
            connected: false,
            uploads: HashMap::new(),
        }
    }

    /// Starts the handshake with `server_name` (SNI and certificate name).
    pub fn connect(
        &mut self,
        now: Instant,
        server_name: &str,
    ) -> Result<(), quinn_proto::ConnectError> {
        let (ch, conn) =
            self.endpoint
                .connect(now, self.config.clone(), self.server, server_name)?;
        self.conn = Some((ch, conn));
        Ok(())
    }

    /// The QUIC connection (after `connect`).
    pub fn quic(&mut self) -> &mut Connection {
        &mut self.conn.as_mut().expect("connect first").1
    }

    /// Opens the client's control stream (type 0, empty SETTINGS).
    pub fn open_control(&mut self) {
        let id = self.quic().streams().open(Dir::Uni).expect("a uni stream");
        let _ = self.quic().send_stream(id).write(&[0x00, 0x04, 0x00]);
    }

    /// Queues a request: `fields` as given (pseudo-headers included, so a
    /// test can make one malformed), then `body` in one DATA frame if any,
    /// then FIN. Returns the stream id.
    pub fn request_fields(&mut self, fields: &[(&[u8], &[u8])], body: Option<&[u8]>) -> u64 {
        let mut section = vec![0, 0];
        for (n, v) in fields {
            qpack::encoder::encode_field(n, v, &mut section);
        }
        let mut out = Vec::new();
        frame::emit_headers(&section, &mut out);
        if let Some(b) = body {
            frame::emit_data_header(b.len(), &mut out);
            out.extend_from_slice(b);
        }
        let id = self
            .quic()
            .streams()
            .open(Dir::Bi)
            .expect("a request stream");
        self.uploads.insert(id, (out, 0));
        self.write_uploads();
        u64::from(id)
    }

    pub fn get(&mut self, authority: &str, path: &str) -> u64 {
        self.request_fields(
            &[
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.as_bytes()),
                (b":path", path.as_bytes()),
            ],
            None,
        )
    }

    /// A POST with a content-length and `body` in one DATA frame, written
    /// as flow control allows.
    pub fn post(&mut self, authority: &str, path: &str, body: &[u8]) -> u64 {
        let len = body.len().to_string();
        self.request_fields(
            &[
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", authority.as_bytes()),
                (b":path", path.as_bytes()),
                (b"content-length", len.as_bytes()),
            ],
            Some(body),
        )
    }

    /// Resets the sending side of `stream` (RESET_STREAM) and drops what
    /// is left of its upload.
    pub fn reset_request(&mut self, stream: u64, code: u64) {
        let id = StreamId::from(varint(stream));
        self.uploads.remove(&id);
        let _ = self.quic().send_stream(id).reset(varint(code));
    }

    /// Request octets (frames included) its stream took so far, while the
    /// upload is still being written.
    pub fn uploaded(&self, stream: u64) -> Option<usize> {
        let id = StreamId::from(varint(stream));
        self.uploads.get(&id).map(|(_, off)| *off)
    }

    /// Uploads still being written.
    pub fn uploads_pending(&self) -> usize {
        self.uploads.len()
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
            let _ = send.finish();
            false
        });
    }

    /// The next datagram to send into `buf` (cleared first); its length.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<usize> {
        self.write_uploads();
        let (ch, conn) = self.conn.as_mut()?;
        buf.clear();
        let t = conn.poll_transmit(now, 1, buf);
        while let Some(ev) = conn.poll_endpoint_events() {
            if let Some(ev) = self.endpoint.handle_event(*ch, ev) {
                conn.handle_event(ev);
            }
        }
        t.map(|t| t.size)
    }

    /// One datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let mut buf = Vec::new();
        let ev = self
            .endpoint
            .handle(now, from, None, None, BytesMut::from(data), &mut buf);
        if let (Some(DatagramEvent::ConnectionEvent(_, ev)), Some((_, conn))) =
            (ev, self.conn.as_mut())
        {
            conn.handle_event(ev);
        }
        self.read_events();
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.conn.as_mut().and_then(|(_, c)| c.poll_timeout())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((_, c)) = self.conn.as_mut()
            && c.poll_timeout().is_some_and(|t| t <= now)
        {
            c.handle_timeout(now);
        }
        self.read_events();
    }

    /// Closes the connection (H3_NO_ERROR).
    pub fn close(&mut self, now: Instant) {
        if let Some((_, c)) = self.conn.as_mut() {
            c.close(now, VarInt::from_u32(0x100), bytes::Bytes::new());
        }
    }

    /// Takes the connection's events: handshake, loss, readable streams.
    pub fn read_events(&mut self) {
        let Some((_, conn)) = self.conn.as_mut() else {
            return;
        };
        let mut readable = Vec::new();
        while let Some(ev) = conn.poll() {
            match ev {
                quinn_proto::Event::Connected => self.connected = true,
                quinn_proto::Event::ConnectionLost { reason } => self.lost = Some(reason),
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
            read_stream(conn, id, self.streams.entry(u64::from(id)).or_default());
        }
    }

    /// The response on `stream`, once its FIN arrived; None before, or
    /// when it does not parse.
    pub fn response(&self, stream: u64) -> Option<Response> {
        let s = self.streams.get(&stream)?;
        if !s.fin {
            return None;
        }
        parse_response(&s.data)
    }
}

/// A request stream's frames as a response: the first non-1xx HEADERS is
/// the head, DATA the body, a HEADERS after the body the trailers.
pub fn parse_response(mut buf: &[u8]) -> Option<Response> {
    let mut r = Response::default();
    let mut head = false;
    while !buf.is_empty() {
        let (f, n) = frame::parse(buf, u64::MAX).ok()??;
        match f {
            Frame::Headers(section) => {
                let fields = qpack::decode_section(section, 1 << 20).ok()?;
                if head {
                    r.trailers = fields.into_iter().map(|f| (f.name, f.value)).collect();
                } else {
                    let status = fields.iter().find(|f| f.name == b":status")?;
                    if status.value.first() == Some(&b'1') {
                        r.interim.push(status.value.clone());
                        buf = &buf[n..];
                        continue;
                    }
                    r.status = status.value.clone();
                    r.headers = fields
                        .into_iter()
                        .filter(|f| !f.name.starts_with(b":"))
                        .map(|f| (f.name, f.value))
                        .collect();
                    head = true;
                }
            }
            Frame::Data(d) => r.body.extend_from_slice(d),
            _ => {}
        }
        buf = &buf[n..];
    }
    head.then_some(r)
}

fn read_stream(conn: &mut Connection, id: StreamId, s: &mut ClientStream) {
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
