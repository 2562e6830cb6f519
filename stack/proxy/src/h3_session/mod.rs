//! HTTP/3 on a TLS listener's port: one QUIC endpoint per worker and port
//! (`ferrogate-quic`), fed with the port's datagrams straight from the
//! stack's UDP path, and one [`MuxStream`] exchange per request — the
//! same phases, router, pools, cache and plugins as HTTP/1 and HTTP/2,
//! upstream as HTTP/1.1 from the worker's pools.

mod client_side;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ferrogate_h3::ErrorCode;
use ferrogate_quic::{EndpointStats, Event, QuicEndpoint, StreamHandle};

use crate::mux_stream::{MuxStream, Peer, StreamBufs};
use crate::net::{Datagram, Instant, StreamId};
use crate::phases::ProxyHttp;
use crate::proxy::Ctx;
use crate::route::{Http3Listener, Listener};
use crate::tls::ListenerTls;

/// Buffer pairs kept from finished streams for the next ones.
const SPARE_STREAM_BUFS: usize = 32;
/// Most responses read on into the store after their client left.
const MAX_FILLS: usize = 64;
/// Client link-layer addresses remembered (replies go straight back to
/// the sender, as the UDP listeners' do); past it, one is forgotten per
/// new source and its replies go by the neighbour cache.
const MAX_MACS: usize = 16 * 1024;
/// Rounds of one drive: events, streams, transmits.
const MAX_ROUNDS: usize = 16;

/// quinn's clock from the stack's: a fixed pair of instants read once, so
/// no clock is read per datagram and a test's simulated time carries over.
#[derive(Clone, Copy)]
struct QuicClock {
    std_base: std::time::Instant,
    base: Instant,
}

impl QuicClock {
    fn new(now: Instant) -> Self {
        Self {
            std_base: std::time::Instant::now(),
            base: now,
        }
    }

    fn quic(&self, now: Instant) -> std::time::Instant {
        let micros = (now - self.base).total_micros();
        self.std_base + Duration::from_micros(micros)
    }

    /// Rounded up, so a timer converted back is never before quinn's.
    fn stack(&self, t: std::time::Instant) -> Instant {
        let d = t.saturating_duration_since(self.std_base);
        let micros = d.as_nanos().div_ceil(1_000) as u64;
        self.base + crate::net::Duration::from_micros(micros)
    }
}

/// Where each client's datagrams came from on the link, bounded.
#[derive(Default)]
struct MacTable {
    macs: HashMap<IpAddr, [u8; 6]>,
}

impl MacTable {
    /// Remembers `ip`'s sender; true when another entry was forgotten.
    fn learn(&mut self, ip: IpAddr, mac: [u8; 6]) -> bool {
        if let Some(m) = self.macs.get_mut(&ip) {
            *m = mac;
            return false;
        }
        let mut evicted = false;
        if self.macs.len() >= MAX_MACS
            && let Some(&old) = self.macs.keys().next()
        {
            self.macs.remove(&old);
            evicted = true;
        }
        self.macs.insert(ip, mac);
        evicted
    }

    fn get(&self, ip: IpAddr) -> Option<[u8; 6]> {
        self.macs.get(&ip).copied()
    }
}

pub(crate) struct QuicListener<P: ProxyHttp> {
    port: u16,
    endpoint: QuicEndpoint,
    /// What the endpoint was built from, to notice a reload's changes.
    tls: Arc<ListenerTls>,
    http3: Arc<Http3Listener>,
    clock: QuicClock,
    macs: MacTable,
    /// The address clients last sent to, for a reply quinn gives no
    /// source for.
    last_local: Option<IpAddr>,
    streams: Vec<MuxStream<P, QuicEndpoint>>,
    /// Streams whose client is gone while their response is stored.
    fills: Vec<MuxStream<P, QuicEndpoint>>,
    spare: Vec<StreamBufs>,
    turn: usize,
    /// Datagrams arrived since the last drive.
    dirty: bool,
    /// The transmit queue was full with datagrams left to send.
    tx_blocked: bool,
    /// When the listener must be driven next (cached for `poll_at`).
    next: Option<Instant>,
    tx_buf: Vec<u8>,
    reported: EndpointStats,
    draining: bool,
}

impl<P: ProxyHttp> QuicListener<P> {
    /// The endpoint for `listener`'s HTTP/3; None (logged) when it has
    /// none or its TLS cannot do QUIC (`ferrogate check` refuses that).
    pub(crate) fn new(
        listener: &Listener,
        worker: u8,
        generation: u8,
        now: Instant,
    ) -> Option<Self> {
        let http3 = listener.http3.clone()?;
        let tls = listener.tls.clone()?;
        let mut quic = http3.quic.clone();
        quic.worker = worker;
        quic.generation = generation;
        let endpoint = match QuicEndpoint::new(quic, (*tls.server.config).clone()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(port = listener.port, error = %e, "HTTP/3 not served");
                return None;
            }
        };
        Some(Self {
            port: listener.port,
            endpoint,
            tls,
            http3,
            clock: QuicClock::new(now),
            macs: MacTable::default(),
            last_local: None,
            streams: Vec::new(),
            fills: Vec::new(),
            spare: Vec::new(),
            turn: 0,
            dirty: false,
            tx_blocked: false,
            next: None,
            tx_buf: Vec::with_capacity(1500),
            reported: EndpointStats::default(),
            draining: false,
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Live QUIC connections.
    pub(crate) fn connections(&self) -> usize {
        self.endpoint.connections()
    }

    /// A reload: new handshakes use the listener's new certificates and
    /// limits; connections keep theirs.
    pub(crate) fn sync(&mut self, listener: &Listener) {
        let (Some(http3), Some(tls)) = (&listener.http3, &listener.tls) else {
            return;
        };
        if Arc::ptr_eq(http3, &self.http3) && Arc::ptr_eq(tls, &self.tls) {
            return;
        }
        match self
            .endpoint
            .reconfigure(http3.quic.clone(), (*tls.server.config).clone())
        {
            Ok(()) => {
                self.http3 = http3.clone();
                self.tls = tls.clone();
            }
            Err(e) => tracing::warn!(port = self.port, error = %e, "HTTP/3 keeps its old TLS"),
        }
    }

    /// One datagram to the port: into QUIC now, answered when the
    /// listener is next driven (after the rest of the burst).
    pub(crate) fn datagram(
        &mut self,
        d: &Datagram<'_>,
        now: Instant,
        stats: &mut crate::stats::StackStats,
    ) {
        stats.h3.datagrams_received += 1;
        if self.macs.learn(d.remote.ip(), d.peer_mac) {
            stats.h3.mac_evictions += 1;
        }
        self.last_local = Some(d.local.ip());
        let now = self.clock.quic(now);
        self.endpoint
            .handle_datagram(now, d.remote, Some(d.local.ip()), None, d.payload);
        self.dirty = true;
    }

    /// Whether the listener must be driven at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.dirty || self.tx_blocked || self.next.is_some_and(|t| t <= now)
    }

    /// When the listener must be driven next, without datagrams.
    pub(crate) fn next_at(&self) -> Option<Instant> {
        self.next
    }

    /// The upstream sockets of the requests in flight.
    pub(crate) fn upstream_sockets(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.streams
            .iter()
            .chain(&self.fills)
            .filter_map(MuxStream::upstream_socket)
    }

    /// A graceful stop: GOAWAY on every connection (open requests finish).
    pub(crate) fn go_away(&mut self) {
        self.draining = true;
        self.endpoint.goaway_all();
        self.dirty = true;
    }

    /// A stop that cannot wait: every connection is closed now (the
    /// requests end with them on the next drive, their upstreams reset).
    pub(crate) fn close_all(&mut self, now: Instant) {
        self.draining = true;
        let now = self.clock.quic(now);
        self.endpoint.close_all(now, ErrorCode::NoError);
        self.dirty = true;
    }

    /// Draining and nothing left: no connection, no request, no fill.
    pub(crate) fn is_finished(&self) -> bool {
        self.draining
            && self.endpoint.connections() == 0
            && self.streams.is_empty()
            && self.fills.is_empty()
    }

    /// Runs QUIC's timers, its events, every request and the transmits
    /// until nothing moves (bounded); true if anything did.
    pub(crate) fn drive(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        self.dirty = false;
        let qnow = self.clock.quic(cx.now);
        if self.endpoint.poll_timeout().is_some_and(|t| t <= qnow) {
            self.endpoint.handle_timeout(qnow);
        }
        let mut progressed = false;
        let mut quiet = false;
        for _ in 0..MAX_ROUNDS {
            let mut moved = false;
            while let Some(ev) = self.endpoint.poll_event() {
                moved = true;
                self.on_event(cx, ev);
            }
            moved |= self.drive_streams(cx);
            moved |= self.flush(cx);
            progressed |= moved;
            if !moved {
                quiet = true;
                break;
            }
        }
        self.report(cx);
        // Stopped with work left: run again in the next poll.
        self.next = if quiet {
            self.deadline(cx.now)
        } else {
            Some(cx.now)
        };
        progressed
    }

    fn peer<'a>(tls: &'a ListenerTls, client: Option<SocketAddr>, listener_port: u16) -> Peer<'a> {
        Peer {
            tls: true,
            client_cn: None,
            // No client certificates over QUIC (refused by the config
            // check): the identity headers are still cleared.
            identity: Some((&tls.identity_headers, None)),
            client,
            listener_port,
        }
    }

    fn on_event(&mut self, cx: &mut Ctx<'_, P>, ev: Event) {
        match ev {
            Event::Connected(_) => {}
            Event::RequestHead {
                stream,
                request,
                end_stream,
            } => {
                let client = self.endpoint.remote_address(stream.conn);
                let peer = Self::peer(&self.tls, client, self.port);
                let bufs = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| StreamBufs::new(cx.cfg.head_buffer));
                let mut st = MuxStream::start(
                    cx,
                    &mut self.endpoint,
                    &peer,
                    stream,
                    request,
                    end_stream,
                    bufs,
                );
                if st.is_done() {
                    st.end_plugins(cx);
                    keep_spare(&mut self.spare, st.into_bufs());
                } else {
                    self.streams.push(st);
                }
            }
            // The body waits in the endpoint; the stream takes it when it
            // runs.
            Event::RequestData(_) => {}
            Event::RequestTrailers { stream, fields } => {
                if let Some(st) = self.live(stream) {
                    st.request_ended = true;
                    let mut t: Vec<_> = fields.into_iter().map(|f| (f.name, f.value)).collect();
                    crate::trailers::clean(&mut t, cx.stats);
                    st.request_trailers = t;
                }
            }
            Event::RequestEnd(stream) => {
                if let Some(st) = self.live(stream) {
                    st.request_ended = true;
                }
            }
            Event::StreamAborted { stream, .. } => {
                // Only a request still being answered: our own resets (a
                // stalled or failed response) and refused streams come
                // back here too, with no live request.
                if self.live(stream).is_some() {
                    cx.stats.h3.client_resets += 1;
                    self.abort(cx, |h| h == stream);
                }
            }
            Event::ConnectionLost { conn, .. } => self.abort(cx, |h| h.conn == conn),
        }
    }

    fn live(&mut self, stream: StreamHandle) -> Option<&mut MuxStream<P, QuicEndpoint>> {
        self.streams
            .iter_mut()
            .find(|s| s.id == stream && !s.is_detached())
    }

    /// The client is gone from the streams `gone` names: a body being
    /// stored is read on for its other readers, the rest end.
    fn abort(&mut self, cx: &mut Ctx<'_, P>, gone: impl Fn(StreamHandle) -> bool) {
        let mut i = 0;
        while i < self.streams.len() {
            let st = &mut self.streams[i];
            if !gone(st.id) || st.is_detached() {
                i += 1;
                continue;
            }
            cx.stats.client_aborts += 1;
            st.fill_allowed = self.fills.len() < MAX_FILLS;
            let mut st = self.streams.swap_remove(i);
            if st.detach_fill(cx) {
                st.end_plugins(cx);
                self.fills.push(st);
            } else {
                st.finish(cx, true);
                st.end_plugins(cx);
                keep_spare(&mut self.spare, st.into_bufs());
            }
        }
    }

    /// Every request once, in turn (each pass starts one further on).
    fn drive_streams(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let mut moved = false;
        let n = self.streams.len();
        self.turn = self.turn.wrapping_add(1);
        let mut room = MAX_FILLS.saturating_sub(self.fills.len());
        for k in 0..n {
            let st = &mut self.streams[(self.turn + k) % n];
            let client = self.endpoint.remote_address(st.id.conn);
            let peer = Self::peer(&self.tls, client, self.port);
            st.fill_allowed = room > 0;
            moved |= st.drive(cx, &mut self.endpoint, &peer);
            if st.is_detached() {
                room = room.saturating_sub(1);
            }
        }
        let mut i = 0;
        while i < self.streams.len() {
            if self.streams[i].is_done() {
                let mut st = self.streams.swap_remove(i);
                if !st.request_ended {
                    // Answered before the whole body came (413, a direct
                    // answer, an early origin response): the rest is not
                    // read (RFC 9114 §4.1.2), so the request slot and the
                    // client's upload are released.
                    let _ = self.endpoint.stop_reading(st.id, ErrorCode::NoError);
                }
                st.end_plugins(cx);
                keep_spare(&mut self.spare, st.into_bufs());
            } else if self.streams[i].is_detached() {
                let mut st = self.streams.swap_remove(i);
                st.end_plugins(cx);
                self.fills.push(st);
            } else {
                i += 1;
            }
        }
        if !self.fills.is_empty() {
            let peer = Self::peer(&self.tls, None, self.port);
            for st in &mut self.fills {
                moved |= st.drive(cx, &mut self.endpoint, &peer);
            }
            self.fills.retain(|st| !st.is_done());
        }
        moved
    }

    /// Sends what QUIC has built, as long as the transmit queue has room.
    fn flush(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let qnow = self.clock.quic(cx.now);
        let mut sent = false;
        self.tx_blocked = false;
        loop {
            if cx.net.tx_room() == 0 {
                // Left in QUIC (not built yet): sent on the next poll.
                self.tx_blocked = true;
                break;
            }
            let Some(t) = self.endpoint.poll_transmit(qnow, &mut self.tx_buf) else {
                break;
            };
            sent = true;
            let Some(src) = t.src_ip.or(self.last_local) else {
                cx.stats.h3.datagrams_dropped += 1;
                continue;
            };
            let mac = self.macs.get(t.destination.ip());
            let local = SocketAddr::new(src, self.port);
            let payload = &self.tx_buf[..t.size.min(self.tx_buf.len())];
            match cx.net.send_datagram(local, t.destination, mac, payload) {
                Ok(()) => cx.stats.h3.datagrams_sent += 1,
                // Lost like any datagram: QUIC's recovery sends it again.
                Err(_) => cx.stats.h3.datagrams_dropped += 1,
            }
        }
        sent
    }

    /// The endpoint's counters since the last report.
    fn report(&mut self, cx: &mut Ctx<'_, P>) {
        let now = self.endpoint.stats();
        let h3 = &mut cx.stats.h3;
        h3.connections += now.accepted - self.reported.accepted;
        h3.connections_refused += now.refused - self.reported.refused;
        h3.connections_refused_per_source +=
            now.refused_per_source - self.reported.refused_per_source;
        h3.retries += now.retries - self.reported.retries;
        h3.stateless_sent += now.stateless_sent - self.reported.stateless_sent;
        h3.stateless_dropped += now.stateless_dropped - self.reported.stateless_dropped;
        self.reported = now;
    }

    /// The earliest of QUIC's timer and each request's.
    fn deadline(&mut self, now: Instant) -> Option<Instant> {
        if self.tx_blocked {
            return Some(now);
        }
        let quic = self.endpoint.poll_timeout().map(|t| self.clock.stack(t));
        self.streams
            .iter()
            .chain(&self.fills)
            .map(MuxStream::deadline)
            .chain(quic)
            .min()
    }
}

fn keep_spare(spare: &mut Vec<StreamBufs>, bufs: StreamBufs) {
    if spare.len() < SPARE_STREAM_BUFS {
        spare.push(bufs);
    }
}
