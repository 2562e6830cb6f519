//! An HTTP/2 client connection (ALPN `h2` on TLS listeners, or the h2c
//! preface on plain listeners with `http2` on): the sans-IO protocol from
//! `ferrogate-h2` over the client's byte stream, and one [`MuxStream`]
//! exchange per request, each with its own upstream attempt (the
//! connection is the streams' [`crate::client_side::ClientSide`]).

use std::time::Duration;

use ferrogate_h2::{Connection, ErrorCode, Event};

use crate::client_io::ClientIo;
use crate::http::ByteBuf;
use crate::net::{Instant, StreamId};
use crate::phases::ProxyHttp;
use crate::proxy::{Ctx, after};

use crate::mux_stream::{MuxStream, Peer, StreamBufs};

/// Buffer pairs a connection keeps from finished streams for its next ones.
const SPARE_STREAM_BUFS: usize = 8;
/// Most responses one connection reads on into the store after their
/// client left: each holds an upstream connection and port, which HTTP/2's
/// stream limit no longer bounds once the stream is reset.
const MAX_FILLS_PER_CONN: usize = 8;

/// The protocol's clock: the stack's, as a duration since its start.
fn clock(now: Instant) -> Duration {
    Duration::from_micros(now.total_micros().max(0) as u64)
}

fn instant(d: Duration) -> Instant {
    Instant::from_micros(d.as_micros() as i64)
}

pub(crate) struct H2Conn<P: ProxyHttp> {
    client: StreamId,
    io: ClientIo,
    listener_port: u16,
    h2: Connection,
    /// Received plaintext not yet taken by the protocol (at most a frame).
    from_client: ByteBuf,
    streams: Vec<MuxStream<P, Connection>>,
    /// Buffers of finished streams, for the next ones: a busy connection
    /// does not allocate per request.
    spare: Vec<StreamBufs>,
    /// Where the streams' round robin starts this pass.
    turn: usize,
    /// With no stream open: when the connection is closed as idle.
    idle_deadline: Instant,
    /// The protocol's counters already added to the worker's.
    reported: ferrogate_h2::ConnStats,
    /// Streams whose client is gone while their response is stored: the
    /// rest of the body goes into the object for its other readers.
    fills: Vec<MuxStream<P, Connection>>,
    /// The client connection ended; only `fills` keep this alive.
    client_gone: bool,
    finished: bool,
}

impl<P: ProxyHttp> H2Conn<P> {
    /// Takes over a client connection that chose HTTP/2; `received` is
    /// what was read already (the preface, perhaps more).
    pub(crate) fn new(
        client: StreamId,
        listener_port: u16,
        io: ClientIo,
        received: &[u8],
        cx: &mut Ctx<'_, P>,
    ) -> Self {
        let cfg = cx.cfg.h2.clone();
        // A whole frame must fit, or the protocol could never take it.
        let size = cx
            .cfg
            .head_buffer
            .max(cfg.max_frame_size.max(16_384) as usize + 9);
        let mut from_client = ByteBuf::with_capacity(size);
        let ok = from_client.extend(received);
        debug_assert!(ok, "received bytes fit a head buffer");
        cx.stats.h2.connections += 1;
        Self {
            client,
            io,
            listener_port,
            h2: Connection::new(cfg, clock(cx.now)),
            from_client,
            streams: Vec::new(),
            spare: Vec::new(),
            turn: 0,
            idle_deadline: after(cx.now, cx.cfg.timeouts.client_idle),
            reported: Default::default(),
            fills: Vec::new(),
            client_gone: false,
            finished: false,
        }
    }

    /// A graceful GOAWAY: the streams already open finish, no new ones.
    pub(crate) fn go_away(&mut self, why: &[u8]) {
        if !self.h2.goaway_sent() {
            self.h2.go_away(ErrorCode::NoError, why);
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    pub(crate) fn listener_port(&self) -> u16 {
        self.listener_port
    }

    pub(crate) fn client(&self) -> StreamId {
        self.client
    }

    /// The upstream sockets of the streams in flight.
    pub(crate) fn upstream_sockets(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.streams
            .iter()
            .chain(&self.fills)
            .filter_map(MuxStream::upstream_socket)
    }

    /// The earliest of: the idle close, the protocol's timer, each stream's.
    pub(crate) fn deadline(&self) -> Instant {
        let fills = self.fills.iter().map(MuxStream::deadline);
        if self.client_gone {
            return fills.min().unwrap_or(self.idle_deadline);
        }
        let mut d = self.idle_deadline;
        if let Some(t) = self.h2.poll_timeout() {
            d = d.min(instant(t));
        }
        for st in &self.streams {
            d = d.min(st.deadline());
        }
        fills.fold(d, Instant::min)
    }

    /// Runs the protocol and every stream until nothing moves (bounded).
    pub(crate) fn drive(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.client_gone {
            let moved = self.drive_fills(cx);
            self.finished = self.fills.is_empty();
            return moved;
        }
        let mut progressed = false;
        self.io.stream.flush(&mut cx.net.stream(self.client));
        for _ in 0..16 {
            if self.client_gone {
                break;
            }
            let moved = self.step(cx);
            self.report(cx);
            if !moved {
                break;
            }
            progressed = true;
        }
        progressed
    }

    fn step(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if !cx.net.stream(self.client).is_active() || self.io.stream.failed() {
            self.finish(cx, false);
            return true;
        }
        let now = clock(cx.now);
        let mut moved = self.fill(cx) > 0;
        let peer = Peer::of_io(
            &self.io,
            cx.net.stream(self.client).remote(),
            self.listener_port,
        );
        loop {
            let used = self.h2.recv(self.from_client.filled(), now);
            self.from_client.consume(used);
            let mut events = false;
            while let Some(ev) = self.h2.poll_event() {
                events = true;
                let fills = self.fills.len();
                let mut streams = Streams {
                    live: &mut self.streams,
                    spare: &mut self.spare,
                    fills,
                };
                on_event(cx, &mut self.h2, &peer, &mut streams, ev);
            }
            moved |= used > 0 || events;
            if used == 0 && !events {
                break;
            }
        }
        let client_done = !self.io.stream.may_recv(&cx.net.stream(self.client));
        // Round robin: each pass starts one stream further on.
        let n = self.streams.len();
        self.turn = self.turn.wrapping_add(1);
        let mut room = self.fill_room();
        for k in 0..n {
            let st = &mut self.streams[(self.turn + k) % n];
            if st.is_detached() {
                // Reset by the client this pass: a fill, moved below.
                moved |= st.drive(cx, &mut self.h2, &peer);
                continue;
            }
            st.fill_allowed = room > 0;
            if client_done && st.awaits_body() {
                // The client closed its side with a body still owed: nothing
                // sensible can go upstream (as HTTP/1 aborts).
                cx.stats.client_aborts += 1;
                st.finish(cx, true);
                moved = true;
                continue;
            }
            moved |= st.drive(cx, &mut self.h2, &peer);
            if st.is_detached() {
                room = room.saturating_sub(1);
            }
        }
        let mut i = 0;
        while i < self.streams.len() {
            if self.streams[i].is_done() {
                let mut st = self.streams.swap_remove(i);
                st.end_plugins(cx);
                keep_spare(&mut self.spare, st.into_bufs());
            } else if self.streams[i].is_detached() {
                // Its client stream is gone: it no longer counts as the
                // connection's (idle close, round robin).
                let mut st = self.streams.swap_remove(i);
                st.end_plugins(cx);
                self.fills.push(st);
            } else {
                i += 1;
            }
        }
        moved |= self.drive_fills(cx);
        if self.h2.poll_timeout().is_some_and(|t| t <= now) {
            self.h2.handle_timeout(now);
            moved = true;
        }
        moved |= self.flush(cx);
        // Only streams keep a connection alive: PINGs or WINDOW_UPDATEs
        // alone do not.
        if !self.streams.is_empty() {
            self.idle_deadline = after(cx.now, cx.cfg.timeouts.client_idle);
        } else if cx.now >= self.idle_deadline {
            if !self.h2.goaway_sent() {
                // Idle: say goodbye properly rather than drop the socket, and
                // give the close as long again.
                self.h2.go_away(ErrorCode::NoError, b"idle");
                self.idle_deadline = after(cx.now, cx.cfg.timeouts.client_idle);
                moved |= self.flush(cx);
            } else {
                // Our GOAWAY and close could not get out in time.
                self.finish(cx, true);
                return true;
            }
        }
        let quiet = self.streams.is_empty() && self.h2.pending_output().is_empty();
        if quiet && (self.h2.is_done() || client_done) {
            // A TLS close_notify that does not fit yet is no progress: the
            // idle deadline above bounds the wait.
            return self.close(cx) || moved;
        }
        moved
    }

    /// Reads what the client sent (decrypted on TLS) behind what is left.
    fn fill(&mut self, cx: &mut Ctx<'_, P>) -> usize {
        let sock = &mut cx.net.stream(self.client);
        match self.io.recv(sock, &mut self.from_client) {
            Ok(n) => n,
            Err(e) => {
                cx.stats.tls_record_errors += 1;
                if self
                    .io
                    .stream
                    .tls_failure()
                    .is_some_and(crate::tls::FailAlert::sent)
                {
                    cx.stats.tls_alerts_sent += 1;
                }
                tracing::debug!(error = %e, "TLS error on an HTTP/2 connection");
                0
            }
        }
    }

    /// Writes what the protocol has queued; true if any went out.
    fn flush(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let out = self.h2.pending_output();
        if out.is_empty() {
            return false;
        }
        let n = self.io.stream.send(&mut cx.net.stream(self.client), out);
        self.h2.consume_output(n);
        n > 0
    }

    /// Adds what the protocol counted since the last report.
    fn report(&mut self, cx: &mut Ctx<'_, P>) {
        let now = *self.h2.stats();
        cx.stats.h2.conn.add(&now.since(&self.reported));
        self.reported = now;
    }

    /// Everything is said: close the client connection in order. False
    /// while a TLS close_notify waits for room.
    fn close(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let sock = &mut cx.net.stream(self.client);
        if !self.io.stream.close(sock) {
            return false;
        }
        sock.close();
        self.finish(cx, false);
        true
    }

    /// How many more streams may detach into fills.
    fn fill_room(&self) -> usize {
        let detached = self.streams.iter().filter(|s| s.is_detached()).count();
        MAX_FILLS_PER_CONN.saturating_sub(self.fills.len() + detached)
    }

    /// Ends the connection now; `reset` aborts the client socket. Bodies
    /// being stored are read on (`fills`) before the session is finished.
    fn finish(&mut self, cx: &mut Ctx<'_, P>, reset: bool) {
        let mut room = self.fill_room();
        for mut st in self.streams.drain(..) {
            if st.is_detached() {
                self.fills.push(st);
                continue;
            }
            st.fill_allowed = room > 0;
            if st.detach_fill(cx) {
                room -= 1;
                st.end_plugins(cx);
                self.fills.push(st);
            } else {
                st.finish(cx, true);
            }
        }
        if reset {
            cx.net.stream(self.client).abort();
        } else {
            cx.net.stream(self.client).close();
        }
        self.report(cx);
        self.client_gone = true;
        self.finished = self.fills.is_empty();
    }

    /// Reads on the bodies being stored without a client; drops the ones
    /// that ended.
    fn drive_fills(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.fills.is_empty() {
            return false;
        }
        let peer = Peer::of_io(&self.io, None, self.listener_port);
        let mut moved = false;
        for st in &mut self.fills {
            moved |= st.drive(cx, &mut self.h2, &peer);
        }
        self.fills.retain(|st| !st.is_done());
        moved
    }
}

fn keep_spare(spare: &mut Vec<StreamBufs>, bufs: StreamBufs) {
    if spare.len() < SPARE_STREAM_BUFS {
        spare.push(bufs);
    }
}

/// The connection's streams and their spare buffers.
struct Streams<'s, P: ProxyHttp> {
    live: &'s mut Vec<MuxStream<P, Connection>>,
    spare: &'s mut Vec<StreamBufs>,
    /// The connection's fills (for the cap on detached streams).
    fills: usize,
}

fn on_event<P: ProxyHttp>(
    cx: &mut Ctx<'_, P>,
    h2: &mut Connection,
    peer: &Peer<'_>,
    streams: &mut Streams<'_, P>,
    ev: Event,
) {
    match ev {
        Event::Request {
            stream,
            request,
            end_stream,
        } => {
            let bufs = streams
                .spare
                .pop()
                .unwrap_or_else(|| StreamBufs::new(cx.cfg.head_buffer));
            let mut st = MuxStream::start(cx, h2, peer, stream, request, end_stream, bufs);
            if st.is_done() {
                st.end_plugins(cx);
                keep_spare(streams.spare, st.into_bufs());
            } else {
                streams.live.push(st);
            }
        }
        Event::Data { stream, end_stream } => {
            if let Some(st) = streams.live.iter_mut().find(|s| s.id == stream) {
                st.request_ended |= end_stream;
            }
        }
        // The body is complete; the trailers go up in the chunked trailer
        // section when the upstream request is chunked (else they are
        // dropped: a length-framed HTTP/1.1 request has no place for them).
        Event::Trailers { stream, fields } => {
            if let Some(st) = streams.live.iter_mut().find(|s| s.id == stream) {
                st.request_ended = true;
                // Bounded and checked as an origin's are (an over-bound
                // section is dropped whole and counted).
                let mut t: Vec<_> = fields.into_iter().map(|f| (f.name, f.value)).collect();
                crate::trailers::clean(&mut t, cx.stats);
                st.request_trailers = t;
            }
        }
        Event::Reset { stream, .. } => {
            let detached = streams.live.iter().filter(|s| s.is_detached()).count();
            let room = MAX_FILLS_PER_CONN.saturating_sub(streams.fills + detached);
            let streams = &mut *streams.live;
            if let Some(i) = streams
                .iter()
                .position(|s| s.id == stream && !s.is_detached())
            {
                streams[i].fill_allowed = room > 0;
                // Our own connection error resets every stream too: not the
                // client's doing.
                if h2.error().is_none() {
                    cx.stats.h2.client_resets += 1;
                    cx.stats.client_aborts += 1;
                }
                // A body being stored is read on for its other readers
                // (moved to the connection's fills after this pass).
                if !streams[i].detach_fill(cx) {
                    let mut st = streams.swap_remove(i);
                    st.finish(cx, true);
                }
            }
        }
    }
}
