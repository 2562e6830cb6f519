//! One connection: quinn-proto's `Connection` with an `H3Conn` on its
//! streams. Peer stream bytes go into H3Conn, its queued output into
//! quinn's send streams, and H3's errors become QUIC resets and closes.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use ferrogate_h3::{ErrorCode, H3Conn, SendError, SendStream};
use quinn_proto::{Connection, Dir, ReadError, StreamEvent, StreamId, VarInt, WriteError};

use crate::event::{CloseReason, ConnId, Event, StreamHandle};

pub(crate) struct Conn {
    /// What the application knows this connection by.
    pub id: ConnId,
    pub quic: Connection,
    pub h3: H3Conn,
    /// Our HTTP/3 control stream, opened once the handshake completes.
    control: Option<StreamId>,
    /// Something may be left to write or to report: drive before sending.
    pub dirty: bool,
    /// In the endpoint's ready queue (may have datagrams to send).
    pub ready: bool,
    /// ConnectionLost was reported (once).
    pub lost: bool,
    /// The handshake completed (`Connected`).
    pub established: bool,
    /// Counted in the endpoint's handshakes in progress.
    pub handshaking: bool,
    /// Where the connection came from (its per-source count).
    pub source: std::net::IpAddr,
    /// Reused list of H3 streams with output.
    pending: Vec<SendStream>,
    /// Request streams left unread because their body buffer is full:
    /// the data stays in quinn, so stream flow control holds the client.
    /// Each at most once (every STREAM frame on a paused stream makes it
    /// readable again), so it is bounded by the open streams.
    paused: Vec<StreamId>,
    /// `paused` being read again (kept, so a drive allocates nothing).
    resumed: Vec<StreamId>,
    /// Most request body octets buffered per stream.
    max_body: usize,
}

pub(crate) fn stream_id(id: u64) -> Option<StreamId> {
    VarInt::from_u64(id).ok().map(StreamId::from)
}

pub(crate) fn code(c: ErrorCode) -> VarInt {
    // Every H3 code (and every code a peer sent us) fits a varint.
    VarInt::from_u64(c.to_u64()).unwrap_or(VarInt::from_u32(0x102))
}

/// Remembers `id` as paused once: a linear check is cheap at the bound
/// (open request streams, MAX_STREAMS).
fn pause(paused: &mut Vec<StreamId>, id: StreamId) {
    if !paused.contains(&id) {
        paused.push(id);
    }
}

/// The peer reset its side of `id` (RESET_STREAM): H3 drops the stream,
/// and on a request stream whose response is not complete our side is
/// reset too (H3_REQUEST_CANCELLED), so no one sends a response nobody
/// reads and QUIC frees the stream, and with it the peer's stream credit.
/// A complete response still in flight is left to arrive.
fn on_peer_reset(quic: &mut Connection, h3: &mut H3Conn, id: StreamId, c: VarInt) {
    let sid = u64::from(id);
    if id.dir() == Dir::Bi && !h3.response_complete(sid) {
        let _ = quic
            .send_stream(id)
            .reset(code(ErrorCode::RequestCancelled));
    }
    h3.handle_stream_reset(sid, c.into_inner());
}

impl Conn {
    pub fn new(id: ConnId, quic: Connection, h3: ferrogate_h3::Config, max_body: usize) -> Self {
        let source = quic.remote_address().ip();
        Self {
            established: false,
            handshaking: true,
            source,
            id,
            quic,
            h3: H3Conn::new(h3),
            control: None,
            dirty: true,
            ready: false,
            lost: false,
            pending: Vec::new(),
            paused: Vec::new(),
            resumed: Vec::new(),
            max_body: max_body.max(1),
        }
    }

    /// Runs everything that is ready: quinn's events into H3, H3's events
    /// out (to `events`) and H3's output into quinn.
    pub fn drive(&mut self, ch: ConnId, now: Instant, events: &mut VecDeque<Event>) {
        self.dirty = false;
        // Streams paused on a full body buffer: the application may have
        // taken some of it since.
        if self.lost {
            self.paused.clear();
        }
        std::mem::swap(&mut self.paused, &mut self.resumed);
        for i in 0..self.resumed.len() {
            self.read(self.resumed[i]);
        }
        self.resumed.clear();
        // Nothing is reported after ConnectionLost (the application has
        // forgotten the connection), not even what was read just before.
        while let Some(ev) = self.quic.poll() {
            if !self.lost {
                self.on_quic_event(ch, now, ev, events);
            }
        }
        while let Some(ev) = self.h3.poll_event() {
            if !self.lost {
                self.on_h3_event(ch, now, ev, events);
            }
        }
        if !self.lost {
            self.flush(ch, now, events);
        }
        // After our GOAWAY, the last request done and every response
        // acknowledged (a close drops what is unacknowledged: only our
        // control stream may be left): close now rather than wait out the
        // idle timeout, so a drain ends sooner.
        let control_only = usize::from(self.control.is_some());
        if !self.lost
            && self.h3.is_drained()
            && self.h3.pending_streams().next().is_none()
            && self.quic.streams().send_streams() <= control_only
        {
            let done = CloseReason::Local(ErrorCode::NoError);
            self.close(ch, now, ErrorCode::NoError, done, events);
        }
    }

    /// Closes the connection (CONNECTION_CLOSE with `c`) and reports it.
    pub fn close(
        &mut self,
        ch: ConnId,
        now: Instant,
        c: ErrorCode,
        reason: CloseReason,
        events: &mut VecDeque<Event>,
    ) {
        if self.lost {
            return;
        }
        let text = match &reason {
            CloseReason::H3 { reason, .. } => Bytes::from_static(reason.as_bytes()),
            _ => Bytes::new(),
        };
        self.quic.close(now, code(c), text);
        self.lost(ch, reason, events);
    }

    fn lost(&mut self, conn: ConnId, reason: CloseReason, events: &mut VecDeque<Event>) {
        if !self.lost {
            self.lost = true;
            events.push_back(Event::ConnectionLost { conn, reason });
        }
    }

    fn on_quic_event(
        &mut self,
        ch: ConnId,
        now: Instant,
        ev: quinn_proto::Event,
        events: &mut VecDeque<Event>,
    ) {
        use quinn_proto::Event as Q;
        match ev {
            Q::Connected => {
                self.established = true;
                self.control = self.quic.streams().open(Dir::Uni);
                events.push_back(Event::Connected(ch));
            }
            Q::ConnectionLost { reason } => self.lost(ch, CloseReason::Quic(reason), events),
            Q::Stream(StreamEvent::Opened { dir }) => {
                while let Some(id) = self.quic.streams().accept(dir) {
                    self.read(id);
                }
            }
            Q::Stream(StreamEvent::Readable { id }) => self.read(id),
            Q::Stream(StreamEvent::Stopped { id, error_code }) => {
                if Some(id) == self.control {
                    // §6.2.1: our control stream must stay open.
                    let reason = CloseReason::H3 {
                        code: ErrorCode::ClosedCriticalStream,
                        reason: "control stream stopped",
                    };
                    self.close(ch, now, ErrorCode::ClosedCriticalStream, reason, events);
                } else {
                    // The client no longer wants the response: drop it and
                    // reset our side with its code (RFC 9000 §3.5).
                    let _ = self.quic.send_stream(id).reset(error_code);
                    self.h3
                        .handle_stream_reset(u64::from(id), error_code.into_inner());
                }
            }
            // Writable: the next flush writes. Finished, Available,
            // HandshakeDataReady, datagrams: nothing to do.
            _ => {}
        }
    }

    /// Feeds what is readable on `id` into H3: all of it on a
    /// unidirectional stream (H3 bounds those), on a request stream no more
    /// than the room left in its body buffer.
    fn read(&mut self, id: StreamId) {
        let Self {
            quic,
            h3,
            paused,
            max_body,
            ..
        } = self;
        let sid = u64::from(id);
        let bidi = id.dir() == Dir::Bi;
        let mut room = if bidi {
            let buffered = h3.request_body(sid).map_or(0, |b| b.len());
            max_body.saturating_sub(buffered)
        } else {
            usize::MAX
        };
        if room == 0 {
            // A reset must not wait for the application to take the body.
            let reset = quic.recv_stream(id).received_reset();
            match reset {
                Ok(Some(c)) => on_peer_reset(quic, h3, id, c),
                Ok(None) => pause(paused, id),
                Err(_) => {}
            }
            return;
        }
        let mut reset = None;
        let mut feed = |data: &[u8], fin: bool| {
            if bidi {
                h3.handle_stream_data(sid, data, fin);
            } else {
                h3.handle_uni_stream(sid, data, fin);
            }
        };
        let mut recv = quic.recv_stream(id);
        // Closed already (stopped, or fully read): nothing more to feed.
        let Ok(mut chunks) = recv.read(true) else {
            return;
        };
        loop {
            match chunks.next(room) {
                Ok(Some(chunk)) => {
                    room -= chunk.bytes.len();
                    feed(&chunk.bytes, false);
                    if room == 0 {
                        pause(paused, id);
                        break;
                    }
                }
                Ok(None) => {
                    feed(&[], true);
                    break;
                }
                Err(ReadError::Blocked) => break,
                Err(ReadError::Reset(c)) => {
                    reset = Some(c);
                    break;
                }
            }
        }
        // Whether to send MAX_STREAM_DATA is the transmit path's business.
        let _ = chunks.finalize();
        if let Some(c) = reset {
            on_peer_reset(quic, h3, id, c);
        }
    }

    /// Request streams waiting for the application to take body octets.
    pub fn paused_streams(&self) -> usize {
        self.paused.len()
    }

    fn on_h3_event(
        &mut self,
        ch: ConnId,
        now: Instant,
        ev: ferrogate_h3::Event,
        events: &mut VecDeque<Event>,
    ) {
        use ferrogate_h3::Event as H;
        let handle = |stream| StreamHandle { conn: ch, stream };
        match ev {
            H::RequestHead { stream, request } => events.push_back(Event::RequestHead {
                stream: handle(stream),
                request,
                end_stream: false,
            }),
            H::RequestData { stream } => events.push_back(Event::RequestData(handle(stream))),
            H::RequestTrailers { stream, fields } => events.push_back(Event::RequestTrailers {
                stream: handle(stream),
                fields,
            }),
            H::RequestEnd { stream } => {
                // The end right behind its head: said on the head.
                if let Some(Event::RequestHead {
                    stream: s,
                    end_stream,
                    ..
                }) = events.back_mut()
                    && *s == handle(stream)
                {
                    *end_stream = true;
                } else {
                    events.push_back(Event::RequestEnd(handle(stream)));
                }
            }
            H::HeadTooLarge { stream } => {
                // The 431 goes out; the rest of the request is not read
                // (§4.1.2).
                if let Some(id) = stream_id(stream) {
                    let _ = self.quic.recv_stream(id).stop(code(ErrorCode::NoError));
                }
                // No FIN will be read now: H3 must not wait for one to
                // free the request slot.
                self.h3.stop_receiving(stream);
            }
            H::PeerReset { stream, code } => events.push_back(Event::StreamAborted {
                stream: handle(stream),
                code,
            }),
            H::StreamError {
                stream, code: c, ..
            } => {
                self.reset(stream, c);
                events.push_back(Event::StreamAborted {
                    stream: handle(stream),
                    code: c,
                });
            }
            H::ConnectionError { code: c, reason } => {
                let reason = CloseReason::H3 { code: c, reason };
                self.close(ch, now, c, reason, events);
            }
        }
    }

    /// Stops reading the request body of `stream` (STOP_SENDING with `c`):
    /// its buffered body is dropped and no more body events come; the
    /// response may still be sent, and the request slot is freed once it is.
    pub fn stop_reading(&mut self, stream: u64, c: ErrorCode) -> Result<(), SendError> {
        let id = stream_id(stream).filter(|_| self.h3.request_body(stream).is_some());
        let Some(id) = id else {
            return Err(SendError::UnknownStream(stream));
        };
        let _ = self.quic.recv_stream(id).stop(code(c));
        self.paused.retain(|&p| p != id);
        self.h3.stop_receiving(stream);
        Ok(())
    }

    /// Aborts both directions of `stream` with `c` (RESET_STREAM and
    /// STOP_SENDING).
    pub fn reset(&mut self, stream: u64, c: ErrorCode) {
        let Some(id) = stream_id(stream) else {
            return;
        };
        let _ = self.quic.recv_stream(id).stop(code(c));
        let _ = self.quic.send_stream(id).reset(code(c));
    }

    /// Writes H3's queued output into quinn's send streams, as much as
    /// flow control takes; the rest waits for the next drive.
    fn flush(&mut self, ch: ConnId, now: Instant, events: &mut VecDeque<Event>) {
        let mut pending = std::mem::take(&mut self.pending);
        pending.clear();
        pending.extend(self.h3.pending_streams());
        for &to in &pending {
            let id = match to {
                SendStream::Control => self.control,
                SendStream::Request(id) => stream_id(id),
            };
            let Some(id) = id else { continue };
            let (data, fin) = self.h3.pending_output(to);
            let mut send = self.quic.send_stream(id);
            let written = if data.is_empty() {
                Ok(0)
            } else {
                send.write(data)
            };
            let all = data.len();
            match written {
                Ok(n) => {
                    if fin && n == all {
                        let _ = send.finish();
                    }
                    self.h3.consume_output(to, n);
                }
                Err(WriteError::Blocked) => {}
                Err(WriteError::Stopped(_) | WriteError::ClosedStream) => match to {
                    SendStream::Control => {
                        let reason = CloseReason::H3 {
                            code: ErrorCode::ClosedCriticalStream,
                            reason: "control stream closed",
                        };
                        self.close(ch, now, ErrorCode::ClosedCriticalStream, reason, events);
                        break;
                    }
                    // Dropped: the Stopped event (or the reset) tells H3.
                    SendStream::Request(sid) => self
                        .h3
                        .handle_stream_reset(sid, ErrorCode::RequestCancelled.to_u64()),
                },
            }
        }
        self.pending = pending;
    }
}
