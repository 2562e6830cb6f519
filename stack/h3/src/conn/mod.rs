//! The server side of one HTTP/3 connection, sans-IO (RFC 9114): the QUIC
//! endpoint feeds it each stream's bytes as they arrive
//! (`handle_stream_data` for request streams, `handle_uni_stream` for the
//! peer's unidirectional streams), takes events out (`poll_event`), and
//! writes what it queues per stream (`pending_output` / `consume_output`):
//! the control stream's SETTINGS and GOAWAY, and the responses the
//! application sends (`send_response_head`, `send_data`, `send_trailers`,
//! `finish`). No clock, no socket, no QUIC type.
//!
//! What the QUIC layer must do with the events:
//! - `ConnectionError`: close the connection with the code; nothing after
//!   it is read or emitted.
//! - `StreamError`: reset the stream (RESET_STREAM and STOP_SENDING with the
//!   code); its queued output is dropped.
//! - `HeadTooLarge`: a 431 response with FIN is queued on the stream; stop
//!   reading it with H3_NO_ERROR (§4.1.2) and call `stop_receiving`, so the
//!   stream is forgotten once the 431 is written without waiting for a FIN.
//!
//! Request streams are client-initiated bidirectional ones; one fed after
//! it ended (both sides done, or reset) is ignored, so late data does not
//! read as a new request.

mod reader;
mod request;
#[cfg(test)]
mod tests;
mod uni;

use std::collections::{BTreeSet, HashMap, VecDeque};

use ferrogate_h2::{Field, Request};

use crate::error::{ErrorCode, H3Error, Scope};
use crate::frame;
use crate::qpack;
use crate::settings::{LocalSettings, PeerSettings};
use crate::stream::{UniStreamType, is_client_bidi};
use request::ReqStream;
use uni::UniStream;

/// Most request stream ids tracked as skipped and not yet fed; QUIC's
/// MAX_STREAMS normally keeps far below it.
const MAX_UNSEEN: usize = 4096;

/// What the server advertises and enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// SETTINGS_MAX_FIELD_SECTION_SIZE: a request head past it (decoded, or
    /// its HEADERS frame alone) gets a 431.
    pub max_field_section_size: u64,
    /// Most open request streams; QUIC's MAX_STREAMS should be this too,
    /// and a stream past it is refused with H3_REQUEST_REJECTED.
    pub max_concurrent_requests: usize,
    /// Most frames on one request stream that carry no body octets
    /// (HEADERS, unknown and grease frames, empty DATA): past it the peer
    /// is making us work for nothing, H3_EXCESSIVE_LOAD.
    pub max_frames_per_stream: u32,
    /// Largest SETTINGS, GOAWAY, MAX_PUSH_ID or CANCEL_PUSH payload read
    /// whole; past it, H3_EXCESSIVE_LOAD.
    pub max_control_frame_size: u64,
    /// Most unidirectional streams the peer may open (control, QPACK, and
    /// ignored ones); QUIC's MAX_STREAMS for them should match.
    pub max_uni_streams: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_field_section_size: 16 * 1024,
            max_concurrent_requests: 100,
            max_frames_per_stream: 64,
            max_control_frame_size: 4096,
            max_uni_streams: 16,
        }
    }
}

/// What the connection reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A well-formed request head (RFC 9114 §4.3.1); once per stream,
    /// before its other events.
    RequestHead { stream: u64, request: Request },
    /// Octets were appended to the stream's `request_body`; consecutive
    /// ones not yet polled coalesce.
    RequestData { stream: u64 },
    /// The request's trailer section; the body is complete.
    RequestTrailers { stream: u64, fields: Vec<Field> },
    /// The request ended cleanly (FIN after a complete frame).
    RequestEnd { stream: u64 },
    /// The head was past `max_field_section_size`: a 431 is queued.
    HeadTooLarge { stream: u64 },
    /// The peer reset a request stream the application knows.
    PeerReset { stream: u64, code: ErrorCode },
    StreamError {
        stream: u64,
        code: ErrorCode,
        reason: &'static str,
    },
    ConnectionError {
        code: ErrorCode,
        reason: &'static str,
    },
}

/// Where queued output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SendStream {
    /// Our control stream: the QUIC layer opens one unidirectional stream
    /// for it at once and writes these octets (type, SETTINGS, GOAWAY).
    Control,
    Request(u64),
}

/// Why a response call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no open request stream {0}")]
    UnknownStream(u64),
    #[error("response head already sent")]
    HeadSent,
    #[error("response head not sent yet")]
    NoHead,
    #[error("response already finished")]
    Finished,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub requests: u64,
    pub stream_errors: u64,
    /// Request heads answered with 431.
    pub heads_too_large: u64,
    /// Streams refused past `max_concurrent_requests` or after GOAWAY.
    pub refused_streams: u64,
    /// Unknown and grease frames skipped, on any stream.
    pub frames_skipped: u64,
    /// Encoded field-section octets received (HEADERS payloads decoded).
    pub field_section_bytes: u64,
}

/// The server side of one HTTP/3 connection.
pub struct H3Conn {
    config: Config,
    requests: HashMap<u64, ReqStream>,
    /// Client bidirectional ids below this have been seen (fed, refused
    /// or reset): each has ended unless still in `requests` or `unseen`.
    /// Only open streams are tracked, so a long-lived request does not make
    /// the ones after it pile up.
    next_new: u64,
    /// Ids below `next_new` not fed yet: QUIC opens lower streams
    /// implicitly and their first octets may come later. These are open
    /// QUIC streams, so MAX_STREAMS bounds them; `MAX_UNSEEN` caps them
    /// should the QUIC layer not.
    unseen: BTreeSet<u64>,
    /// The highest request stream id accepted, for GOAWAY.
    highest_accepted: Option<u64>,
    uni: HashMap<u64, UniStream>,
    /// Which critical streams the peer has opened (each at most once).
    opened: Vec<UniStreamType>,
    peer_settings: Option<PeerSettings>,
    peer_goaway: Option<u64>,
    peer_max_push_id: Option<u64>,
    /// The id our GOAWAY carried; streams at or above it are refused.
    goaway: Option<u64>,
    control_out: Vec<u8>,
    events: VecDeque<Event>,
    error: Option<H3Error>,
    stats: ConnStats,
    /// Reused for encoding a field section before its frame header.
    section: Vec<u8>,
}

impl H3Conn {
    pub fn new(config: Config) -> Self {
        let mut control_out = Vec::new();
        crate::varint::encode(UniStreamType::Control.into(), &mut control_out);
        LocalSettings {
            max_field_section_size: config.max_field_section_size,
        }
        .emit(&mut control_out);
        Self {
            config,
            requests: HashMap::new(),
            next_new: 0,
            unseen: BTreeSet::new(),
            highest_accepted: None,
            uni: HashMap::new(),
            opened: Vec::new(),
            peer_settings: None,
            peer_goaway: None,
            peer_max_push_id: None,
            goaway: None,
            control_out,
            events: VecDeque::new(),
            error: None,
            stats: ConnStats::default(),
            section: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// The peer's SETTINGS, once its control stream delivered them.
    pub fn peer_settings(&self) -> Option<&PeerSettings> {
        self.peer_settings.as_ref()
    }

    /// The connection error that ended this connection, if one did.
    pub fn error(&self) -> Option<&H3Error> {
        self.error.as_ref()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        if let Event::RequestData { stream } = event
            && let Some(s) = self.requests.get_mut(&stream)
        {
            s.data_event_queued = false;
        }
        Some(event)
    }

    /// The request body octets received on `stream` and not yet taken.
    /// Not bounded here: the QUIC layer reads a stream no faster than the
    /// application takes its body, so stream flow control bounds it.
    pub fn request_body(&mut self, stream: u64) -> Option<&mut Vec<u8>> {
        self.requests.get_mut(&stream).map(|s| &mut s.body)
    }

    /// Open request streams.
    pub fn open_requests(&self) -> usize {
        self.requests.len()
    }

    /// Feeds octets of client bidirectional stream `stream`; `fin` when the
    /// peer's side ended with them.
    pub fn handle_stream_data(&mut self, stream: u64, data: &[u8], fin: bool) {
        if self.error.is_some() {
            return;
        }
        if !is_client_bidi(stream) {
            return self.fail(H3Error::connection(
                ErrorCode::StreamCreationError,
                "request data on a stream that is not client bidirectional",
            ));
        }
        if self.has_ended(stream) {
            return;
        }
        if !self.requests.contains_key(&stream) && !self.accept(stream) {
            return;
        }
        if let Err(e) = self.recv_request(stream, data, fin) {
            self.fail(e);
        }
    }

    /// Feeds octets of the peer's unidirectional stream `stream`.
    pub fn handle_uni_stream(&mut self, stream: u64, data: &[u8], fin: bool) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.recv_uni(stream, data, fin) {
            self.fail(e);
        }
    }

    /// The peer reset `stream` (RESET_STREAM): a request stream is dropped
    /// (an event if the application knew it); a critical one ends the
    /// connection (§6.2.1).
    pub fn handle_stream_reset(&mut self, stream: u64, code: u64) {
        if self.error.is_some() {
            return;
        }
        if is_client_bidi(stream) {
            if let Some(s) = self.requests.remove(&stream)
                && s.head_delivered
            {
                self.events.push_back(Event::PeerReset {
                    stream,
                    code: ErrorCode::from_u64(code),
                });
            }
            // Also one never fed: it has ended too.
            self.mark_seen(stream);
            return;
        }
        if self.uni.get(&stream).is_some_and(UniStream::is_critical) {
            return self.fail(H3Error::connection(
                ErrorCode::ClosedCriticalStream,
                "critical stream reset",
            ));
        }
        self.uni.remove(&stream);
    }

    /// The QUIC layer stopped reading request stream `stream`
    /// (STOP_SENDING, after a 431 or when the application abandons the
    /// body): no FIN will be fed, so its receiving side is done now and
    /// its buffered body dropped. The stream is forgotten once its
    /// response is written, releasing its request slot.
    pub fn stop_receiving(&mut self, stream: u64) {
        let Some(s) = self.requests.get_mut(&stream) else {
            return;
        };
        s.stop_receiving();
        self.reap(stream);
    }

    fn accept(&mut self, stream: u64) -> bool {
        let refused = self.goaway.is_some_and(|g| stream >= g)
            || self.requests.len() >= self.config.max_concurrent_requests;
        if refused {
            // §5.2, §4.1.1: not processed at all, so the client may retry.
            self.stats.refused_streams += 1;
            self.stream_error(H3Error::stream(
                stream,
                ErrorCode::RequestRejected,
                "stream refused (limit or GOAWAY)",
            ));
            return false;
        }
        self.highest_accepted = Some(self.highest_accepted.map_or(stream, |h| h.max(stream)));
        self.requests.insert(stream, ReqStream::default());
        self.mark_seen(stream);
        true
    }

    fn has_ended(&self, stream: u64) -> bool {
        stream < self.next_new
            && !self.requests.contains_key(&stream)
            && !self.unseen.contains(&stream)
    }

    /// `stream` was fed, refused or reset: it is open while in `requests`,
    /// ended once out of it.
    fn mark_seen(&mut self, stream: u64) {
        if stream < self.next_new {
            self.unseen.remove(&stream);
            return;
        }
        // The ids skipped over, newest first: past the cap the oldest
        // count as ended (the QUIC layer let through more than it allows).
        let skipped = (stream - self.next_new) / 4;
        for i in 1..=skipped.min(MAX_UNSEEN as u64) {
            if self.unseen.len() >= MAX_UNSEEN {
                break;
            }
            self.unseen.insert(stream - 4 * i);
        }
        self.next_new = stream + 4;
    }

    /// A stream error: the stream is forgotten and the QUIC layer resets it.
    fn stream_error(&mut self, e: H3Error) {
        let Scope::Stream(stream) = e.scope else {
            return self.fail(e);
        };
        self.stats.stream_errors += 1;
        self.requests.remove(&stream);
        self.mark_seen(stream);
        self.events.push_back(Event::StreamError {
            stream,
            code: e.code,
            reason: e.reason,
        });
    }

    /// A connection error: reported once; the connection takes nothing more.
    fn fail(&mut self, e: H3Error) {
        if e.scope != Scope::Connection {
            return self.stream_error(e);
        }
        if self.error.is_some() {
            return;
        }
        self.error = Some(e);
        self.requests.clear();
        self.uni.clear();
        self.events.push_back(Event::ConnectionError {
            code: e.code,
            reason: e.reason,
        });
    }

    /// Starts a graceful drain (§5.2): queues GOAWAY with the first request
    /// stream id we will not process; requests already accepted go on.
    /// Called again, it never raises the id.
    pub fn send_goaway(&mut self) {
        let id = self.highest_accepted.map_or(0, |h| h + 4);
        let id = self.goaway.map_or(id, |g| g.min(id));
        self.goaway = Some(id);
        frame::emit_goaway(id, &mut self.control_out);
    }

    /// GOAWAY sent and every request stream done: the QUIC layer may close
    /// the connection with H3_NO_ERROR.
    pub fn is_drained(&self) -> bool {
        self.goaway.is_some() && self.requests.is_empty()
    }

    /// Queues a response head on `stream`: interim ones (1xx, not 101,
    /// which HTTP/3 does not have, §4.5), then the final one.
    pub fn send_response_head(
        &mut self,
        stream: u64,
        status: u16,
        headers: &[(&[u8], &[u8])],
    ) -> Result<(), SendError> {
        let s = sendable(&mut self.requests, stream)?;
        if s.head_sent {
            return Err(SendError::HeadSent);
        }
        // Interim (1xx) heads may come first, any number of them (§4.1).
        s.head_sent = status >= 200;
        self.section.clear();
        qpack::encode_response(status, headers, &mut self.section);
        frame::emit_headers(&self.section, &mut s.out);
        Ok(())
    }

    /// Queues body octets on `stream` as one DATA frame.
    pub fn send_data(&mut self, stream: u64, data: &[u8]) -> Result<(), SendError> {
        let s = sendable(&mut self.requests, stream)?;
        if !s.head_sent {
            return Err(SendError::NoHead);
        }
        if !data.is_empty() {
            frame::emit_data_header(data.len(), &mut s.out);
            s.out.extend_from_slice(data);
        }
        Ok(())
    }

    /// Queues the trailer section and ends the response.
    pub fn send_trailers(
        &mut self,
        stream: u64,
        headers: &[(&[u8], &[u8])],
    ) -> Result<(), SendError> {
        let s = sendable(&mut self.requests, stream)?;
        if !s.head_sent {
            return Err(SendError::NoHead);
        }
        self.section.clear();
        qpack::encode_trailers(headers, &mut self.section);
        frame::emit_headers(&self.section, &mut s.out);
        s.finished = true;
        Ok(())
    }

    /// Ends the response: FIN after the queued octets.
    pub fn finish(&mut self, stream: u64) -> Result<(), SendError> {
        let s = sendable(&mut self.requests, stream)?;
        if !s.head_sent {
            return Err(SendError::NoHead);
        }
        s.finished = true;
        Ok(())
    }

    /// The whole response on `stream`, FIN included, was handed to the
    /// QUIC layer (so a reset of the request need not cut it short).
    pub fn response_complete(&self, stream: u64) -> bool {
        self.requests.get(&stream).is_some_and(|s| s.fin_sent)
    }

    /// Streams with octets (or a FIN) to write.
    pub fn pending_streams(&self) -> impl Iterator<Item = SendStream> + '_ {
        let control = (!self.control_out.is_empty()).then_some(SendStream::Control);
        control.into_iter().chain(
            self.requests
                .iter()
                .filter(|(_, s)| !s.out.is_empty() || (s.finished && !s.fin_sent))
                .map(|(&id, _)| SendStream::Request(id)),
        )
    }

    /// The octets queued for `to`, and whether FIN follows them.
    pub fn pending_output(&self, to: SendStream) -> (&[u8], bool) {
        match to {
            SendStream::Control => (&self.control_out, false),
            SendStream::Request(id) => self.requests.get(&id).map_or((&[][..], false), |s| {
                (&s.out[..], s.finished && !s.fin_sent)
            }),
        }
    }

    /// The QUIC layer wrote the first `n` octets of `to`'s output (and its
    /// FIN, if all of it and FIN was pending).
    pub fn consume_output(&mut self, to: SendStream, n: usize) {
        match to {
            SendStream::Control => {
                self.control_out.drain(..n.min(self.control_out.len()));
            }
            SendStream::Request(id) => {
                let Some(s) = self.requests.get_mut(&id) else {
                    return;
                };
                s.out.drain(..n.min(s.out.len()));
                if s.out.is_empty() && s.finished {
                    s.fin_sent = true;
                    self.reap(id);
                }
            }
        }
    }

    /// Forgets a stream both of whose sides are done.
    fn reap(&mut self, stream: u64) {
        if self
            .requests
            .get(&stream)
            .is_some_and(|s| s.fin_sent && s.recv_done())
        {
            self.requests.remove(&stream);
            self.mark_seen(stream);
        }
    }
}

fn sendable(
    requests: &mut HashMap<u64, ReqStream>,
    stream: u64,
) -> Result<&mut ReqStream, SendError> {
    let s = requests
        .get_mut(&stream)
        .ok_or(SendError::UnknownStream(stream))?;
    if s.finished {
        return Err(SendError::Finished);
    }
    Ok(s)
}
