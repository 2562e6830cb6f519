//! The server side of one HTTP/2 connection, sans-IO (RFC 9113 §3-6, §8):
//! plaintext bytes in (`recv`), events out (`poll_event`), responses in
//! (`send_headers`, `send_data`, `send_trailers`), bytes out
//! (`pending_output` / `consume_output`), time in (`handle_timeout`) and
//! out (`poll_timeout`). No clock, no socket, no allocation per frame beyond
//! a stream's decoded header list.
//!
//! It owns the preface and SETTINGS exchange (with an ACK timeout),
//! CONTINUATION sequencing, stream states, both directions of flow control
//! (connection and stream windows), PING, GOAWAY, and the limits an edge
//! needs against hostile peers (concurrent streams, rapid reset, control
//! frame floods, CONTINUATION floods, unbounded output). Stream and
//! connection errors are answered here (RST_STREAM, GOAWAY, a 431 for an
//! over-size header list); the application only sees well-formed requests.

use std::time::Duration;

use crate::error::ErrorCode;
use crate::fields::Field;
use crate::request::Request;

/// What the server advertises and enforces. Defaults follow Envoy's edge
/// recommendations where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// SETTINGS_MAX_CONCURRENT_STREAMS; a HEADERS beyond it is refused
    /// (RST_STREAM REFUSED_STREAM) and counted.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: the most request-body octets buffered
    /// per stream before the application consumes them.
    pub stream_window: u32,
    /// The connection receive window (raised from 65,535 with a
    /// WINDOW_UPDATE on stream 0 right after SETTINGS): bounds the request
    /// body octets buffered over all streams.
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we accept (16,384 ..= 16,777,215).
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE; a larger request head gets 431.
    pub max_header_list_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE for the decoder.
    pub header_table_size: usize,
    /// How long the client may take to ACK our SETTINGS (GOAWAY
    /// SETTINGS_TIMEOUT after).
    pub settings_timeout: Duration,
    /// Rapid reset (CVE-2023-44487): most streams the client may reset (or
    /// have refused) per `flood_window` before GOAWAY ENHANCE_YOUR_CALM.
    pub max_resets_per_window: u32,
    /// Control-frame floods: most PING, SETTINGS, PRIORITY, empty DATA (no
    /// END_STREAM), empty CONTINUATION and WINDOW_UPDATE frames per
    /// `flood_window`, each kind counted alone, before GOAWAY
    /// ENHANCE_YOUR_CALM.
    pub max_control_frames_per_window: u32,
    pub flood_window: Duration,
    /// Most octets of output (frames not yet taken by `consume_output`) the
    /// connection queues; a peer that makes us answer (PING, SETTINGS) but
    /// does not read gets GOAWAY ENHANCE_YOUR_CALM. `send_capacity` never
    /// lets response DATA fill more than this.
    pub max_pending_output: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            stream_window: 64 * 1024,
            connection_window: 1024 * 1024,
            max_frame_size: crate::settings::DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: crate::hpack::DEFAULT_MAX_HEADER_LIST_SIZE,
            header_table_size: crate::hpack::DEFAULT_HEADER_TABLE_SIZE,
            settings_timeout: Duration::from_secs(10),
            max_resets_per_window: 100,
            max_control_frames_per_window: 1000,
            flood_window: Duration::from_secs(1),
            max_pending_output: 256 * 1024,
        }
    }
}

/// What the application learns from `poll_event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A well-formed request head (cookie crumbs joined, §8.2.3).
    /// `end_stream`: no body follows.
    Request {
        stream: u32,
        request: Request,
        end_stream: bool,
    },
    /// More request-body octets are buffered for `stream` (read them with
    /// `request_body`), and/or the body ended (`end_stream`).
    Data { stream: u32, end_stream: bool },
    /// The request's trailers; the body has ended.
    Trailers { stream: u32, fields: Vec<Field> },
    /// The stream is gone (the client reset it, or it broke a rule and the
    /// connection reset it): drop what serves it.
    Reset { stream: u32, code: ErrorCode },
}

/// Why a send call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("stream {0} is not open for sending")]
    StreamClosed(u32),
    #[error("the connection is closing")]
    ConnectionClosed,
}

/// Counters of one connection, for the worker to sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub frames_received: u64,
    pub streams_opened: u64,
    /// HEADERS beyond max_concurrent_streams (RST_STREAM REFUSED_STREAM).
    pub streams_refused: u64,
    pub streams_reset_by_peer: u64,
    /// Stream errors we answered with RST_STREAM (malformed requests etc.).
    pub stream_errors: u64,
    /// Requests answered 431 (header list over the limit).
    pub headers_too_large: u64,
    /// Connection errors (GOAWAY with an error code), by cause below.
    pub connection_errors: u64,
    pub rapid_reset_goaways: u64,
    pub flood_goaways: u64,
    pub continuation_flood_goaways: u64,
    pub settings_timeouts: u64,
    pub pings_answered: u64,
}

/// One HTTP/2 server connection.
pub struct Connection {
    _private: (),
}

impl Connection {
    /// Starts a connection; our SETTINGS (and the connection WINDOW_UPDATE)
    /// are queued as output at once. The client preface is expected first
    /// in `recv`.
    pub fn new(_cfg: ServerConfig, _now: Duration) -> Self {
        todo!()
    }

    /// Takes received plaintext. Returns the octets consumed: whole frames
    /// (and the preface) only; the caller keeps the rest and calls again
    /// with more. Stops early (returns less than `buf` holds while whole
    /// frames remain) once events are waiting, so the caller drains
    /// `poll_event` and calls again: events never pile up.
    pub fn recv(&mut self, _buf: &[u8], _now: Duration) -> usize {
        todo!()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        todo!()
    }

    /// Frames waiting to be written to the transport.
    pub fn pending_output(&self) -> &[u8] {
        todo!()
    }

    /// The transport took `n` octets of `pending_output`.
    pub fn consume_output(&mut self, _n: usize) {
        todo!()
    }

    /// Sends a response head (`status` 100..=999; 1xx any number of times
    /// before the final one). `headers` are HTTP/1-style fields: names are
    /// lowercased and connection-specific fields dropped here.
    pub fn send_headers(
        &mut self,
        _stream: u32,
        _status: u16,
        _headers: &[(&[u8], &[u8])],
        _end_stream: bool,
    ) -> Result<(), SendError> {
        todo!()
    }

    /// How many DATA octets `stream` may send now: the least of its send
    /// window, the connection's, and the room left under
    /// `max_pending_output`. 0 for a stream not open for sending.
    pub fn send_capacity(&self, _stream: u32) -> usize {
        todo!()
    }

    /// Queues body octets (at most `send_capacity`, split by the peer's max
    /// frame size); `end_stream` ends the response. Ending a response while
    /// the request body is still arriving resets the stream with NO_ERROR
    /// (§8.1) after the last frame.
    pub fn send_data(
        &mut self,
        _stream: u32,
        _data: &[u8],
        _end_stream: bool,
    ) -> Result<(), SendError> {
        todo!()
    }

    /// Ends the response with trailers.
    pub fn send_trailers(
        &mut self,
        _stream: u32,
        _headers: &[(&[u8], &[u8])],
    ) -> Result<(), SendError> {
        todo!()
    }

    /// Request-body octets buffered for `stream` and not yet consumed.
    pub fn request_body(&self, _stream: u32) -> &[u8] {
        todo!()
    }

    /// The application took `n` octets of `request_body`: they are freed
    /// and the windows re-opened (WINDOW_UPDATE once enough is owed).
    pub fn consume_body(&mut self, _stream: u32, _n: usize) {
        todo!()
    }

    /// Ends a stream from our side (RST_STREAM with `code`); no event follows for it.
    pub fn reset_stream(&mut self, _stream: u32, _code: ErrorCode) {
        todo!()
    }

    /// GOAWAY: with NO_ERROR a graceful close (the streams already opened
    /// finish, new ones are refused); with another code the connection ends
    /// now. The last stream id is the highest one accepted.
    pub fn go_away(&mut self, _code: ErrorCode, _debug: &[u8]) {
        todo!()
    }

    /// When `handle_timeout` must run next (the SETTINGS ACK deadline).
    pub fn poll_timeout(&self) -> Option<Duration> {
        todo!()
    }

    pub fn handle_timeout(&mut self, _now: Duration) {
        todo!()
    }

    /// Streams open (not closed in both directions, not reset).
    pub fn active_streams(&self) -> usize {
        todo!()
    }

    /// A GOAWAY was sent or received: no new streams will come.
    pub fn is_going_away(&self) -> bool {
        todo!()
    }

    /// Nothing more will happen: a connection error's GOAWAY is queued, or
    /// a graceful GOAWAY's streams are all done. Flush `pending_output`, then
    /// close the transport.
    pub fn is_done(&self) -> bool {
        todo!()
    }

    /// The connection error that ended the connection, if one did.
    pub fn error(&self) -> Option<crate::FrameError> {
        todo!()
    }

    pub fn stats(&self) -> &ConnStats {
        todo!()
    }
}
