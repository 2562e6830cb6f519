//! Frames in: what each received frame does to the connection and its
//! streams (RFC 9113 §5.1 states, §6 frame rules, §8 requests). Split from
//! `conn.rs` so the public API there reads alone.

use super::flow::grow;
use super::limits::Kind;
use super::stream::{Closed, Stream};
use super::{Connection, Event};
use crate::emit;
use crate::error::ErrorCode;
use crate::fields::{Field, join_cookies};
use crate::frame::{Frame, PrioritySpec};
use crate::hpack::HeaderError;
use crate::request::{validate_request, validate_trailers};
use crate::settings::{SettingId, SettingsIter};

/// A header block being received: HEADERS then CONTINUATIONs of one stream.
pub(super) struct Block {
    pub stream: u32,
    pub end_stream: bool,
    pub priority: Option<PrioritySpec>,
    pub buf: Vec<u8>,
}

/// Receiving frames.
impl Connection {
    pub(super) fn on_frame(&mut self, frame: Frame<'_>, flow_len: u32) {
        if !self.peer_settings_seen && !matches!(frame, Frame::Settings { ack: false, .. }) {
            return self.conn_error(
                ErrorCode::ProtocolError,
                "first frame after the preface is not SETTINGS",
            );
        }
        if let Some(b) = &self.block {
            // §6.10: nothing may come between HEADERS and its last CONTINUATION.
            if !matches!(frame, Frame::Continuation { stream, .. } if stream == b.stream) {
                return self.conn_error(
                    ErrorCode::ProtocolError,
                    "frame interleaved in a header block",
                );
            }
        }
        match frame {
            Frame::Data {
                stream,
                end_stream,
                data,
            } => self.on_data(stream, end_stream, data, flow_len),
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                priority,
                fragment,
            } => {
                if end_headers {
                    // The common case: one frame, decoded in place.
                    return self.on_header_block(stream, end_stream, priority, fragment);
                }
                if fragment.is_empty() && self.flood(Kind::EmptyFragment) {
                    return;
                }
                self.block = Some(Block {
                    stream,
                    end_stream,
                    priority,
                    buf: Vec::new(),
                });
                self.on_fragment(fragment, false);
            }
            Frame::Continuation {
                end_headers,
                fragment,
                ..
            } => {
                if self.block.is_none() {
                    return self.conn_error(
                        ErrorCode::ProtocolError,
                        "CONTINUATION without a header block",
                    );
                }
                if fragment.is_empty() && !end_headers && self.flood(Kind::EmptyFragment) {
                    return;
                }
                self.on_fragment(fragment, end_headers);
            }
            // Deprecated signalling (RFC 9113 §5.3.2); the self-dependency
            // check was the parser's. Counted, else ignored.
            Frame::Priority { .. } => {
                self.flood(Kind::Priority);
            }
            Frame::RstStream { stream, code } => self.on_rst(stream, code),
            Frame::Settings { ack, params } => self.on_settings(ack, params),
            Frame::PushPromise { .. } => {
                self.conn_error(ErrorCode::ProtocolError, "PUSH_PROMISE sent by a client")
            }
            Frame::Ping { ack, data } => {
                if self.flood(Kind::Ping) || ack {
                    return;
                }
                if self.answer(|out| emit::ping(out, true, data)) {
                    self.stats.pings_answered += 1;
                }
            }
            Frame::GoAway { last_stream, .. } => self.peer_goaway = Some(last_stream),
            Frame::WindowUpdate { stream, increment } => self.on_window_update(stream, increment),
            Frame::Unknown { .. } => {
                self.flood(Kind::Ignored);
            }
        }
    }

    pub(super) fn on_fragment(&mut self, fragment: &[u8], end_headers: bool) {
        let Some(block) = self.block.as_mut() else {
            return;
        };
        if block.buf.len() + fragment.len() > self.block_cap {
            // CVE-2024-27316: a block that never ends must not grow forever.
            self.block = None;
            self.stats.continuation_flood_goaways += 1;
            return self.conn_error(
                ErrorCode::EnhanceYourCalm,
                "header block over the size cap (CONTINUATION flood)",
            );
        }
        block.buf.extend_from_slice(fragment);
        if end_headers && let Some(b) = self.block.take() {
            self.on_header_block(b.stream, b.end_stream, b.priority, &b.buf);
        }
    }

    /// A complete header block. It is decoded first whatever becomes of
    /// the stream, so the HPACK table stays in step with the client's.
    pub(super) fn on_header_block(
        &mut self,
        id: u32,
        end_stream: bool,
        priority: Option<PrioritySpec>,
        block: &[u8],
    ) {
        let (fields, too_large) = match self.decoder.decode(id, block) {
            Ok(fields) => (fields, false),
            Err(HeaderError::ListTooLarge { .. }) => (Vec::new(), true),
            Err(HeaderError::Frame(e)) => return self.fail(e, e.reason.as_bytes()),
        };
        if self.streams.contains_key(&id) {
            return self.on_trailers(id, fields, too_large, end_stream, priority);
        }
        match self.closed.get(id) {
            // Trailers (or anything) the client sent before seeing our reset.
            Some(Closed::ResetByUs) => return,
            Some(Closed::ResetByPeer) => {
                return self.stream_error(
                    id,
                    ErrorCode::StreamClosed,
                    "HEADERS on a stream the client reset",
                );
            }
            Some(Closed::Finished) => {
                return self.conn_error(ErrorCode::StreamClosed, "HEADERS on a closed stream");
            }
            None => {}
        }
        if id.is_multiple_of(2) {
            return self.conn_error(ErrorCode::ProtocolError, "HEADERS on an even stream id");
        }
        if id <= self.highest {
            return self.conn_error(
                ErrorCode::ProtocolError,
                "new stream id not above the highest seen",
            );
        }
        self.highest = id;
        if self.is_going_away() {
            // After a GOAWAY no new stream is processed; REFUSED_STREAM tells
            // the client it may retry it elsewhere.
            self.stats.streams_refused += 1;
            self.closed.push(id, Closed::ResetByUs);
            self.answer(|out| emit::rst_stream(out, id, ErrorCode::RefusedStream));
            return;
        }
        if self.streams.len() >= self.cfg.max_concurrent_streams as usize {
            self.stats.streams_refused += 1;
            self.closed.push(id, Closed::ResetByUs);
            if self.answer(|out| emit::rst_stream(out, id, ErrorCode::RefusedStream)) {
                self.count_reset();
            }
            return;
        }
        if let Some(Err(e)) = priority.map(|p| p.check(id)) {
            return self.stream_error(id, e.code, e.reason);
        }
        if too_large {
            return self.answer_431(id, !end_stream);
        }
        let mut request = match validate_request(id, fields) {
            Ok(r) => r,
            Err(e) => return self.stream_error(id, e.code, e.reason),
        };
        join_cookies(&mut request.headers);
        if end_stream && request.content_length.is_some_and(|n| n != 0) {
            return self.stream_error(
                id,
                ErrorCode::ProtocolError,
                "content-length does not match the DATA received",
            );
        }
        let mut s = Stream::new(
            self.recv_initial,
            i64::from(self.peer_initial_window),
            request.content_length,
        );
        s.recv_open = !end_stream;
        self.streams.insert(id, s);
        self.last_accepted = id;
        self.stats.streams_opened += 1;
        self.events.push_back(Event::Request {
            stream: id,
            request,
            end_stream,
        });
    }

    /// A second HEADERS block on an open stream: the request's trailers.
    pub(super) fn on_trailers(
        &mut self,
        id: u32,
        fields: Vec<Field>,
        too_large: bool,
        end_stream: bool,
        priority: Option<PrioritySpec>,
    ) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        if !s.recv_open {
            return self.stream_error(
                id,
                ErrorCode::StreamClosed,
                "HEADERS on a half-closed (remote) stream",
            );
        }
        let declared = s.content_length;
        let received = s.received;
        if let Some(Err(e)) = priority.map(|p| p.check(id)) {
            return self.stream_error(id, e.code, e.reason);
        }
        if too_large {
            // The response may have started: no 431 then; reset it.
            self.stats.headers_too_large += 1;
            return self.stream_error(id, ErrorCode::ProtocolError, "trailer list too large");
        }
        let fields = match validate_trailers(id, fields, end_stream) {
            Ok(f) => f,
            Err(e) => return self.stream_error(id, e.code, e.reason),
        };
        if declared.is_some_and(|n| n != received) {
            return self.stream_error(
                id,
                ErrorCode::ProtocolError,
                "content-length does not match the DATA received",
            );
        }
        if let Some(s) = self.streams.get_mut(&id) {
            s.recv_open = false;
        }
        self.events
            .push_back(Event::Trailers { stream: id, fields });
        self.maybe_finish(id);
    }

    /// §10.5.1: an over-size request head is answered 431 (a reason the
    /// client can see), the request side reset if it is still open.
    pub(super) fn answer_431(&mut self, id: u32, request_open: bool) {
        self.stats.headers_too_large += 1;
        self.last_accepted = id;
        let block = self.encode_head(Some(431), &[]);
        let max_frame = self.peer_max_frame;
        let sent = self.answer(|out| {
            let mut n = emit::headers(out, id, &block, true, max_frame);
            if request_open {
                n += emit::rst_stream(out, id, ErrorCode::NoError);
            }
            n
        });
        if sent {
            let how = if request_open {
                Closed::ResetByUs
            } else {
                Closed::Finished
            };
            self.closed.push(id, how);
        }
        self.scratch = block;
    }

    pub(super) fn on_data(&mut self, id: u32, end_stream: bool, data: &[u8], flow_len: u32) {
        // §6.9.1: every DATA octet, padding included, counts against the
        // connection window, whatever the stream's state.
        if !self.conn_recv.take(flow_len) {
            return self.conn_error(
                ErrorCode::FlowControlError,
                "DATA beyond the connection window",
            );
        }
        if data.is_empty() && !end_stream && self.flood(Kind::EmptyData) {
            return;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            // Not delivered: give the connection window back at once.
            self.conn_give_back(flow_len);
            return match self.closed.get(id) {
                Some(Closed::ResetByUs) => {}
                Some(Closed::Finished | Closed::ResetByPeer) => {
                    self.stream_error(id, ErrorCode::StreamClosed, "DATA on a closed stream")
                }
                None if !id.is_multiple_of(2) && id <= self.highest => {
                    self.stream_error(id, ErrorCode::StreamClosed, "DATA on a closed stream")
                }
                None => self.conn_error(ErrorCode::ProtocolError, "DATA on an idle stream"),
            };
        };
        if !s.recv_open {
            self.conn_give_back(flow_len);
            return self.stream_error(
                id,
                ErrorCode::StreamClosed,
                "DATA on a half-closed (remote) stream",
            );
        }
        if i64::from(flow_len) > s.recv_window {
            self.conn_give_back(flow_len);
            return self.stream_error(
                id,
                ErrorCode::FlowControlError,
                "DATA beyond the stream window",
            );
        }
        s.recv_window -= i64::from(flow_len);
        s.received += data.len() as u64;
        let length_broken = s
            .content_length
            .is_some_and(|n| s.received > n || (end_stream && s.received != n));
        if length_broken {
            self.conn_give_back(flow_len);
            return self.stream_error(
                id,
                ErrorCode::ProtocolError,
                "content-length does not match the DATA received",
            );
        }
        s.body.extend_from_slice(data);
        if end_stream {
            s.recv_open = false;
        }
        // Padding is never delivered: owed back at once.
        let pad = flow_len - data.len() as u32;
        if pad > 0 {
            self.stream_give_back(id, pad);
            self.conn_give_back(pad);
        }
        if !data.is_empty() || end_stream {
            match self.events.back_mut() {
                Some(Event::Data {
                    stream,
                    end_stream: ended,
                }) if *stream == id && !*ended => *ended = end_stream,
                _ => self.events.push_back(Event::Data {
                    stream: id,
                    end_stream,
                }),
            }
        }
        if end_stream {
            self.maybe_finish(id);
        }
    }

    pub(super) fn on_rst(&mut self, id: u32, code: ErrorCode) {
        if self.remove_stream(id).is_some() {
            self.stats.streams_reset_by_peer += 1;
            self.closed.push(id, Closed::ResetByPeer);
            self.events.push_back(Event::Reset { stream: id, code });
            self.count_reset();
            return;
        }
        if self.is_idle(id) {
            return self.conn_error(ErrorCode::ProtocolError, "RST_STREAM on an idle stream");
        }
        self.flood(Kind::Ignored);
    }

    pub(super) fn on_window_update(&mut self, id: u32, increment: u32) {
        if self.flood(Kind::WindowUpdate) {
            return;
        }
        let inc = i64::from(increment);
        if id == 0 {
            match grow(self.send_conn_window, inc) {
                Some(w) => self.send_conn_window = w,
                None => self.conn_error(
                    ErrorCode::FlowControlError,
                    "connection send window over 2^31-1",
                ),
            }
            return;
        }
        if let Some(s) = self.streams.get_mut(&id) {
            match grow(s.send_window, inc) {
                Some(w) => s.send_window = w,
                None => self.stream_error(
                    id,
                    ErrorCode::FlowControlError,
                    "stream send window over 2^31-1",
                ),
            }
            return;
        }
        if self.is_idle(id) {
            self.conn_error(ErrorCode::ProtocolError, "WINDOW_UPDATE on an idle stream");
        }
        // A closed stream: allowed for a while (§5.1), ignored.
    }

    pub(super) fn on_settings(&mut self, ack: bool, params: SettingsIter<'_>) {
        if self.flood(Kind::Settings) {
            return;
        }
        if ack {
            if !self.settings_acked {
                self.settings_acked = true;
                // The client now counts our INITIAL_WINDOW_SIZE (§6.9.2).
                let target = i64::from(self.cfg.stream_window);
                let delta = target - self.recv_initial;
                self.recv_initial = target;
                for s in self.streams.values_mut() {
                    s.recv_window += delta;
                }
            }
            return;
        }
        self.peer_settings_seen = true;
        for p in params {
            match p.id {
                SettingId::HeaderTableSize => self.encoder.set_peer_table_size(p.value),
                SettingId::InitialWindowSize => {
                    let delta = i64::from(p.value) - i64::from(self.peer_initial_window);
                    for s in self.streams.values_mut() {
                        match grow(s.send_window, delta) {
                            Some(w) => s.send_window = w,
                            None => {
                                return self.conn_error(
                                    ErrorCode::FlowControlError,
                                    "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window",
                                );
                            }
                        }
                    }
                    self.peer_initial_window = p.value;
                }
                SettingId::MaxFrameSize => self.peer_max_frame = p.value,
                // MAX_CONCURRENT_STREAMS and ENABLE_PUSH concern pushes we
                // never make; MAX_HEADER_LIST_SIZE is advisory.
                _ => {}
            }
        }
        self.answer(emit::settings_ack);
    }
}
