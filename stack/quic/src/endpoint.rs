//! One worker's QUIC endpoint: quinn-proto's `Endpoint` and its
//! connections, each with HTTP/3 on top, driven with datagrams and a
//! clock the caller supplies (quinn's style: handle, poll_transmit,
//! poll_timeout, handle_timeout). No socket, no clock read here.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use ferrogate_h3::ErrorCode;
use quinn_proto::{
    ConnectionHandle, DatagramEvent, EcnCodepoint, Endpoint, Incoming, ServerConfig, Transmit,
};

use crate::config::{ConfigError, QuicConfig};
use crate::conn::Conn;
use crate::event::{CloseReason, ConnId, Event, StreamHandle};

/// Why a call about a stream or connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no such connection")]
    UnknownConnection,
    #[error(transparent)]
    H3(#[from] ferrogate_h3::SendError),
}

/// Endpoint counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub accepted: u64,
    /// Refused past `max_connections` (or while draining).
    pub refused: u64,
    /// Refused past `max_connections_per_source`.
    pub refused_per_source: u64,
    /// Retry packets sent (address validation).
    pub retries: u64,
    /// Stateless packets sent: version negotiation, stateless reset,
    /// Retry, refusals.
    pub stateless_sent: u64,
    /// Stateless packets not sent: too many waiting already.
    pub stateless_dropped: u64,
}

pub struct QuicEndpoint {
    endpoint: Endpoint,
    config: QuicConfig,
    conns: HashMap<ConnectionHandle, Conn>,
    /// Stateless responses (retry, refusal, version negotiation, reset)
    /// waiting for `poll_transmit`; rare, so an owned buffer each.
    responses: VecDeque<(Transmit, Vec<u8>)>,
    events: VecDeque<Event>,
    /// Connections that may have datagrams to send (each once): only
    /// these are asked, so sending costs no scan of every connection.
    ready: VecDeque<ConnectionHandle>,
    scratch: Vec<u8>,
    /// Received datagrams are copied into parts of this buffer.
    rx: BytesMut,
    handles: Vec<ConnectionHandle>,
    stats: EndpointStats,
    /// The serial number of the next connection (see `ConnId`).
    next_serial: u64,
    /// A graceful stop: new connections are refused.
    draining: bool,
    /// Live connections per source address (entries only for sources
    /// with one: bounded by the connections).
    per_source: HashMap<IpAddr, u32>,
    /// Connections whose handshake has not completed.
    handshaking: usize,
}

/// What the datagram buffer grows by: several datagrams per allocation
/// while quinn still holds earlier ones.
const RX_CHUNK: usize = 64 * 1024;

/// Stateless responses queued at most (a flood of spoofed Initials while
/// the transmit queue is full): beyond, they are dropped and counted.
const MAX_QUEUED_RESPONSES: usize = 256;

impl QuicEndpoint {
    /// An endpoint serving HTTP/3 with `tls` (its ALPN is replaced by "h3").
    pub fn new(config: QuicConfig, tls: rustls::ServerConfig) -> Result<Self, ConfigError> {
        let server: Arc<ServerConfig> = Arc::new(config.server_config(tls)?);
        let endpoint = Endpoint::new(
            Arc::new(config.endpoint_config()),
            Some(server),
            config.mtu_discovery,
            None,
        );
        Ok(Self {
            endpoint,
            config,
            conns: HashMap::new(),
            responses: VecDeque::new(),
            events: VecDeque::new(),
            ready: VecDeque::new(),
            scratch: Vec::new(),
            rx: BytesMut::new(),
            handles: Vec::new(),
            stats: EndpointStats::default(),
            next_serial: 0,
            draining: false,
            per_source: HashMap::new(),
            handshaking: 0,
        })
    }

    pub fn config(&self) -> &QuicConfig {
        &self.config
    }

    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// Live connections (handshaking, open or draining).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// `conn` if it is still the connection in its slot.
    fn get(&self, conn: ConnId) -> Option<&Conn> {
        self.conns.get(&conn.handle).filter(|c| c.id == conn)
    }

    /// Where `conn`'s client is now (it changes when the client migrates).
    pub fn remote_address(&self, conn: ConnId) -> Option<SocketAddr> {
        self.get(conn).map(|c| c.quic.remote_address())
    }

    /// New handshakes use `config`'s limits and `tls` from now on (a
    /// reload); established connections keep theirs. The worker index and
    /// the connection ids stay as they were.
    pub fn reconfigure(
        &mut self,
        mut config: QuicConfig,
        tls: rustls::ServerConfig,
    ) -> Result<(), ConfigError> {
        config.worker = self.config.worker;
        config.generation = self.config.generation;
        let server = config.server_config(tls)?;
        self.endpoint.set_server_config(Some(Arc::new(server)));
        self.config = config;
        Ok(())
    }

    /// quinn's counters for one connection.
    pub fn connection_stats(&self, conn: ConnId) -> Option<quinn_proto::ConnectionStats> {
        self.get(conn).map(|c| c.quic.stats())
    }

    /// Request streams of `conn` whose reading waits for the application
    /// to take their body (`request_body`), for metrics.
    pub fn paused_streams(&self, conn: ConnId) -> Option<usize> {
        self.get(conn).map(Conn::paused_streams)
    }

    /// One received UDP datagram, addressed to `local` (the VIP) from
    /// `remote`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        datagram: &[u8],
    ) {
        // quinn decrypts in place: the datagram is copied out of the rx
        // ring, into a buffer split off a reused one (reserve reclaims it
        // once quinn has let go of the earlier datagrams: no allocation
        // per datagram in the steady state).
        if self.rx.capacity() < datagram.len() {
            self.rx.reserve(datagram.len().max(RX_CHUNK));
        }
        self.rx.extend_from_slice(datagram);
        let data = self.rx.split();
        self.scratch.clear();
        let mut buf = std::mem::take(&mut self.scratch);
        match self
            .endpoint
            .handle(now, remote, local, ecn, data, &mut buf)
        {
            None => {}
            Some(DatagramEvent::Response(t)) => self.queue_response(t, &buf),
            Some(DatagramEvent::NewConnection(incoming)) => self.incoming(now, incoming, &mut buf),
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    c.quic.handle_event(ev);
                    self.drive(ch, now);
                }
            }
        }
        self.scratch = buf;
    }

    fn queue_response(&mut self, t: Transmit, buf: &[u8]) {
        if self.responses.len() >= MAX_QUEUED_RESPONSES {
            self.stats.stateless_dropped += 1;
            return;
        }
        self.stats.stateless_sent += 1;
        let bytes = buf[..t.size.min(buf.len())].to_vec();
        self.responses.push_back((t, bytes));
    }

    fn incoming(&mut self, now: Instant, incoming: Incoming, buf: &mut Vec<u8>) {
        let source = incoming.remote_address().ip();
        let from_source = self.per_source.get(&source).copied().unwrap_or(0);
        let over_source = from_source >= self.config.max_connections_per_source;
        if self.draining || self.conns.len() >= self.config.max_connections || over_source {
            if over_source {
                self.stats.refused_per_source += 1;
            } else {
                self.stats.refused += 1;
            }
            buf.clear();
            let t = self.endpoint.refuse(incoming, buf);
            return self.queue_response(t, buf);
        }
        // Under a handshake flood, a source proves its address first.
        let validate = self.config.retry || self.handshaking >= self.config.retry_above_handshakes;
        if validate && !incoming.remote_address_validated() {
            buf.clear();
            match self.endpoint.retry(incoming, buf) {
                Ok(t) => {
                    self.stats.retries += 1;
                    self.queue_response(t, buf);
                }
                Err(e) => self.endpoint.ignore(e.into_incoming()),
            }
            return;
        }
        buf.clear();
        match self.endpoint.accept(incoming, now, buf, None) {
            Ok((ch, quic)) => {
                self.stats.accepted += 1;
                let id = ConnId {
                    handle: ch,
                    serial: self.next_serial,
                };
                self.next_serial += 1;
                let (h3, max_body) = (self.config.h3.clone(), self.config.max_buffered_body);
                let conn = Conn::new(id, quic, h3, max_body);
                *self.per_source.entry(conn.source).or_default() += 1;
                self.handshaking += 1;
                self.conns.insert(ch, conn);
                self.drive(ch, now);
            }
            Err(e) => {
                if let Some(t) = e.response {
                    self.queue_response(t, buf);
                }
            }
        }
    }

    /// Runs one connection and its endpoint events; forgets it once drained.
    fn drive(&mut self, ch: ConnectionHandle, now: Instant) {
        let Some(c) = self.conns.get_mut(&ch) else {
            return;
        };
        c.drive(c.id, now, &mut self.events);
        let mut drained = false;
        while let Some(ev) = c.quic.poll_endpoint_events() {
            drained |= ev.is_drained();
            if let Some(ev) = self.endpoint.handle_event(ch, ev) {
                c.quic.handle_event(ev);
            }
        }
        if c.established && c.handshaking {
            c.handshaking = false;
            self.handshaking -= 1;
        }
        if drained {
            let c = self.conns.remove(&ch).expect("driven connection");
            if c.handshaking {
                self.handshaking -= 1;
            }
            if let Some(n) = self.per_source.get_mut(&c.source) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&c.source);
                }
            }
        } else if !c.ready {
            // Whatever moved it may have given it something to send.
            c.ready = true;
            self.ready.push_back(ch);
        }
    }

    /// The next datagram to send, written into `buf` (cleared first): one
    /// datagram per call (no GSO on the rings).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        buf.clear();
        if let Some((t, bytes)) = self.responses.pop_front() {
            buf.extend_from_slice(&bytes);
            return Some(t);
        }
        // Congestion control bounds how long one connection goes first.
        while let Some(&ch) = self.ready.front() {
            if self.conns.get(&ch).is_some_and(|c| c.dirty) {
                self.drive(ch, now);
            }
            // Gone (drained) since it was queued.
            let Some(c) = self.conns.get_mut(&ch) else {
                self.ready.pop_front();
                continue;
            };
            if let Some(t) = c.quic.poll_transmit(now, 1, buf) {
                return Some(t);
            }
            // Nothing more until an event, a timer or a call wakes it.
            c.ready = false;
            self.ready.pop_front();
        }
        None
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.conns
            .values_mut()
            .filter_map(|c| c.quic.poll_timeout())
            .min()
    }

    /// Runs every connection's timers due at `now` (loss detection, idle,
    /// draining).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handles.clear();
        for (&ch, c) in self.conns.iter_mut() {
            if c.quic.poll_timeout().is_some_and(|t| t <= now) {
                c.quic.handle_timeout(now);
                self.handles.push(ch);
            }
        }
        for i in 0..self.handles.len() {
            self.drive(self.handles[i], now);
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn conn(&mut self, conn: ConnId) -> Result<&mut Conn, SendError> {
        let c = self
            .conns
            .get_mut(&conn.handle)
            .filter(|c| c.id == conn && !c.lost)
            .ok_or(SendError::UnknownConnection)?;
        c.dirty = true;
        if !c.ready {
            c.ready = true;
            self.ready.push_back(conn.handle);
        }
        Ok(c)
    }

    /// Request body octets received on `s` and not yet taken: drain what
    /// is used; a stream whose buffer was full is read again on the next
    /// `poll_transmit`.
    pub fn request_body(&mut self, s: StreamHandle) -> Option<&mut Vec<u8>> {
        let c = self
            .conns
            .get_mut(&s.conn.handle)
            .filter(|c| c.id == s.conn)?;
        // Taking body octets matters to QUIC only when a stream waits for
        // room (its reading resumes, its window reopens).
        if c.paused_streams() > 0 {
            c.dirty = true;
            if !c.ready {
                c.ready = true;
                self.ready.push_back(s.conn.handle);
            }
        }
        c.h3.request_body(s.stream)
    }

    pub fn send_response_head(
        &mut self,
        s: StreamHandle,
        status: u16,
        headers: &[(&[u8], &[u8])],
    ) -> Result<(), SendError> {
        Ok(self
            .conn(s.conn)?
            .h3
            .send_response_head(s.stream, status, headers)?)
    }

    /// Response octets queued on `s` and not yet taken by QUIC flow
    /// control: a proxy stops reading its upstream while this is large.
    pub fn queued_output(&self, s: StreamHandle) -> Option<usize> {
        let c = self.get(s.conn)?;
        Some(
            c.h3.pending_output(ferrogate_h3::SendStream::Request(s.stream))
                .0
                .len(),
        )
    }

    /// Queues `data` as one DATA frame; it goes out as flow control allows.
    pub fn send_data(&mut self, s: StreamHandle, data: &[u8]) -> Result<(), SendError> {
        Ok(self.conn(s.conn)?.h3.send_data(s.stream, data)?)
    }

    pub fn send_trailers(
        &mut self,
        s: StreamHandle,
        headers: &[(&[u8], &[u8])],
    ) -> Result<(), SendError> {
        Ok(self.conn(s.conn)?.h3.send_trailers(s.stream, headers)?)
    }

    /// Ends the response (FIN after what is queued).
    pub fn finish(&mut self, s: StreamHandle) -> Result<(), SendError> {
        Ok(self.conn(s.conn)?.h3.finish(s.stream)?)
    }

    /// Stops reading the request body of `s` with `code` (STOP_SENDING):
    /// for an application that abandons the body, e.g. H3_NO_ERROR once a
    /// complete response does not need the rest (RFC 9114 §4.1.2). What is
    /// buffered is dropped and no more body events come; the response may
    /// still be sent.
    pub fn stop_reading(&mut self, s: StreamHandle, code: ErrorCode) -> Result<(), SendError> {
        Ok(self.conn(s.conn)?.stop_reading(s.stream, code)?)
    }

    /// Aborts a request stream both ways with `code` (e.g.
    /// H3_REQUEST_CANCELLED when the upstream failed mid-body).
    pub fn reset_stream(&mut self, s: StreamHandle, code: ErrorCode) -> Result<(), SendError> {
        let c = self.conn(s.conn)?;
        c.reset(s.stream, code);
        c.h3.handle_stream_reset(s.stream, code.to_u64());
        Ok(())
    }

    /// Starts a graceful drain of `conn` (HTTP/3 GOAWAY).
    pub fn goaway(&mut self, conn: ConnId) -> Result<(), SendError> {
        self.conn(conn)?.h3.send_goaway();
        Ok(())
    }

    /// A graceful drain of every connection (HTTP/3 GOAWAY): open
    /// requests finish, no new ones are taken.
    pub fn goaway_all(&mut self) {
        self.draining = true;
        for (&ch, c) in self.conns.iter_mut().filter(|(_, c)| !c.lost) {
            c.h3.send_goaway();
            c.dirty = true;
            if !c.ready {
                c.ready = true;
                self.ready.push_back(ch);
            }
        }
    }

    /// Closes every connection now (CONNECTION_CLOSE with `code`): a stop
    /// that cannot wait.
    pub fn close_all(&mut self, now: Instant, code: ErrorCode) {
        self.draining = true;
        self.handles.clear();
        self.handles.extend(self.conns.keys().copied());
        for i in 0..self.handles.len() {
            let ch = self.handles[i];
            if let Some(c) = self.conns.get_mut(&ch) {
                let id = c.id;
                c.close(id, now, code, CloseReason::Local(code), &mut self.events);
            }
            self.drive(ch, now);
        }
    }

    /// Closes `conn` with `code` now (CONNECTION_CLOSE).
    pub fn close(&mut self, now: Instant, conn: ConnId, code: ErrorCode) -> Result<(), SendError> {
        let Some(c) = self
            .conns
            .get_mut(&conn.handle)
            .filter(|c| c.id == conn && !c.lost)
        else {
            return Err(SendError::UnknownConnection);
        };
        c.close(conn, now, code, CloseReason::Local(code), &mut self.events);
        self.drive(conn.handle, now);
        Ok(())
    }
}
