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
//!
//! What the application can rely on:
//! - `Event::Request` comes once per accepted stream, before any other event
//!   of it. `Event::Data` means octets were appended to `request_body` (or
//!   the body ended); consecutive ones of a stream not yet polled coalesce.
//!   `Event::Trailers` ends the body. `Event::Reset` comes for a stream the
//!   application knows when the client resets it, a stream error of ours
//!   resets it, or the connection fails (one per open stream); never after
//!   `reset_stream` or after the stream finished.
//! - A stream leaves the table (and `request_body` becomes empty) when both
//!   sides have ended (request END_STREAM received and response END_STREAM
//!   sent), or on any reset. Ending the response while the request body is
//!   still arriving resets the request side (RST_STREAM NO_ERROR, §8.1) and
//!   discards the rest of the body.
//! - Stream errors, refusals (MAX_CONCURRENT_STREAMS, after a GOAWAY) and
//!   client resets all count toward `max_resets_per_window`.
//! - Our own answers (ACKs, RST_STREAM, WINDOW_UPDATE) may take the pending
//!   output up to [`ANSWER_HEADROOM`] past `max_pending_output` before the
//!   connection calls it a flood; the application's own frames are bounded
//!   by `send_capacity` only for DATA.

mod flow;
#[cfg(test)]
mod harness;
mod limits;
mod recv;
mod state;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::emit;
use crate::error::{ErrorCode, FrameError, Scope};
use crate::fields::Field;
use crate::frame;
use crate::header::{HEADER_LEN, MAX_LENGTH};
use crate::hpack::{HeaderDecoder, ResponseEncoder};
use crate::request::Request;
use crate::settings::{DEFAULT_MAX_FRAME_SIZE, MAX_WINDOW_SIZE, SettingId};
use flow::{DEFAULT_WINDOW, RecvWindow};
use limits::Limits;
use stream::{Closed, ClosedRing, SendState, Stream};

/// `recv` stops taking frames once this many events wait, so a large read
/// cannot queue an unbounded list of them.
const MAX_QUEUED_EVENTS: usize = 16;

/// How far past `max_pending_output` our answers (PING and SETTINGS ACKs,
/// RST_STREAM, WINDOW_UPDATE) may go: response DATA may fill the output up
/// to the cap (`send_capacity`), and an honest client's PING must still be
/// answered then. Beyond it the client is not reading: GOAWAY.
pub const ANSWER_HEADROOM: usize = 16 * 1024;

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
    cfg: ServerConfig,
    /// Output; `out[out_start..]` is pending.
    out: Vec<u8>,
    out_start: usize,
    events: VecDeque<Event>,
    preface_done: bool,
    /// The client's first SETTINGS arrived (it must be its first frame).
    peer_settings_seen: bool,
    /// Our SETTINGS were ACKed; until then `settings_deadline` runs.
    settings_acked: bool,
    settings_deadline: Duration,
    /// The stream window the client currently assumes for new streams:
    /// 65,535 until it ACKs our SETTINGS, `stream_window` after.
    recv_initial: i64,
    decoder: HeaderDecoder,
    encoder: ResponseEncoder,
    block: Option<recv::Block>,
    /// Most octets of one header block (CONTINUATION flood guard).
    block_cap: usize,
    /// Open and half-closed streams; at most `max_concurrent_streams`.
    streams: HashMap<u32, Stream>,
    closed: ClosedRing,
    /// The highest client stream id seen on a HEADERS (all below are not idle).
    highest: u32,
    /// The highest stream id accepted (processed), for GOAWAY.
    last_accepted: u32,
    conn_recv: RecvWindow,
    send_conn_window: i64,
    peer_initial_window: u32,
    peer_max_frame: u32,
    goaway_sent: bool,
    peer_goaway: Option<u32>,
    error: Option<FrameError>,
    /// The last stream error we answered with RST_STREAM, for logs.
    last_stream_error: Option<FrameError>,
    /// Reused for encoding response and trailer blocks.
    scratch: Vec<u8>,
    /// A connection error's GOAWAY is queued: nothing more is read.
    dead: bool,
    limits: Limits,
    now: Duration,
    stats: ConnStats,
}

impl Connection {
    /// Starts a connection; our SETTINGS (and the connection WINDOW_UPDATE)
    /// are queued as output at once. The client preface is expected first
    /// in `recv`.
    pub fn new(cfg: ServerConfig, now: Duration) -> Self {
        let mut cfg = cfg;
        cfg.max_frame_size = cfg.max_frame_size.clamp(DEFAULT_MAX_FRAME_SIZE, MAX_LENGTH);
        cfg.stream_window = cfg.stream_window.min(MAX_WINDOW_SIZE);
        cfg.connection_window = cfg.connection_window.min(MAX_WINDOW_SIZE);
        let mut out = Vec::with_capacity(128);
        let mut params = vec![
            (SettingId::MaxConcurrentStreams, cfg.max_concurrent_streams),
            (SettingId::InitialWindowSize, cfg.stream_window),
            (SettingId::MaxFrameSize, cfg.max_frame_size),
            (
                SettingId::MaxHeaderListSize,
                u32::try_from(cfg.max_header_list_size).unwrap_or(u32::MAX),
            ),
        ];
        if cfg.header_table_size != crate::hpack::DEFAULT_HEADER_TABLE_SIZE {
            params.push((
                SettingId::HeaderTableSize,
                u32::try_from(cfg.header_table_size).unwrap_or(u32::MAX),
            ));
        }
        emit::settings(&mut out, &params);
        let target = cfg.connection_window.max(DEFAULT_WINDOW);
        let mut conn_recv = RecvWindow::new(target);
        if target > DEFAULT_WINDOW {
            emit::window_update(&mut out, 0, target - DEFAULT_WINDOW);
            conn_recv.window = i64::from(target);
        }
        // A compressed block is rarely larger than its decoded list; twice
        // the list (at least the list plus 16 KiB) leaves room for an
        // over-size list to still be decoded and answered 431.
        let block_cap = cfg
            .max_header_list_size
            .saturating_mul(2)
            .max(cfg.max_header_list_size.saturating_add(16 * 1024));
        // Enough closed ids to recognise frames in flight on recent streams,
        // bounded with the stream table.
        let ring = (cfg.max_concurrent_streams as usize)
            .saturating_mul(2)
            .clamp(16, 1024);
        Self {
            decoder: HeaderDecoder::new(cfg.header_table_size, cfg.max_header_list_size),
            encoder: ResponseEncoder::new(),
            settings_deadline: now.saturating_add(cfg.settings_timeout),
            cfg,
            out,
            out_start: 0,
            events: VecDeque::new(),
            preface_done: false,
            peer_settings_seen: false,
            settings_acked: false,
            recv_initial: i64::from(DEFAULT_WINDOW),
            block: None,
            block_cap,
            streams: HashMap::new(),
            closed: ClosedRing::new(ring),
            highest: 0,
            last_accepted: 0,
            conn_recv,
            send_conn_window: i64::from(DEFAULT_WINDOW),
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: DEFAULT_MAX_FRAME_SIZE,
            goaway_sent: false,
            peer_goaway: None,
            error: None,
            last_stream_error: None,
            scratch: Vec::new(),
            dead: false,
            limits: Limits::new(now),
            now,
            stats: ConnStats::default(),
        }
    }

    /// Takes received plaintext. Returns the octets consumed: whole frames
    /// (and the preface) only; the caller keeps the rest and calls again
    /// with more. Stops early (returns less than `buf` holds while whole
    /// frames remain) once events are waiting, so the caller drains
    /// `poll_event` and calls again: events never pile up.
    ///
    /// Once the connection has failed (`is_done` after a connection error)
    /// everything is consumed and ignored.
    pub fn recv(&mut self, buf: &[u8], now: Duration) -> usize {
        self.now = now;
        if self.dead {
            return buf.len();
        }
        let mut used = 0;
        if !self.preface_done {
            match crate::check_preface(buf) {
                Ok(None) => return 0,
                Ok(Some(n)) => {
                    used = n;
                    self.preface_done = true;
                }
                Err(e) => {
                    self.fail(e, e.reason.as_bytes());
                    return buf.len();
                }
            }
        }
        while !self.dead && self.events.len() < MAX_QUEUED_EVENTS {
            let rest = &buf[used..];
            match frame::parse(rest, self.cfg.max_frame_size) {
                Ok(None) => break,
                Ok(Some((frame, n))) => {
                    used += n;
                    self.stats.frames_received += 1;
                    self.on_frame(frame, (n - HEADER_LEN) as u32);
                }
                Err(e) => {
                    self.stats.frames_received += 1;
                    match e.scope {
                        Scope::Stream(id) => {
                            // The header was there, or parse could not fail.
                            used +=
                                frame::frame_len(rest).map_or(rest.len(), |n| n.min(rest.len()));
                            if self.block.is_some() {
                                self.conn_error(
                                    ErrorCode::ProtocolError,
                                    "frame interleaved in a header block",
                                );
                            } else if !self.peer_settings_seen {
                                self.conn_error(
                                    ErrorCode::ProtocolError,
                                    "first frame after the preface is not SETTINGS",
                                );
                            } else {
                                self.stream_error(id, e.code, e.reason);
                            }
                        }
                        Scope::Connection => self.fail(e, e.reason.as_bytes()),
                    }
                }
            }
        }
        if self.dead { buf.len() } else { used }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Frames waiting to be written to the transport.
    pub fn pending_output(&self) -> &[u8] {
        &self.out[self.out_start..]
    }

    /// The transport took `n` octets of `pending_output`.
    pub fn consume_output(&mut self, n: usize) {
        self.out_start = (self.out_start + n).min(self.out.len());
        if self.out_start == self.out.len() {
            self.out.clear();
            self.out_start = 0;
        } else if self.out_start >= 64 * 1024 && self.out_start * 2 >= self.out.len() {
            self.out.drain(..self.out_start);
            self.out_start = 0;
        }
    }

    /// Sends a response head (`status` 100..=999; 1xx any number of times
    /// before the final one). `headers` are HTTP/1-style fields: names are
    /// lowercased and connection-specific fields dropped here.
    ///
    /// A 1xx head never ends the stream (`end_stream` is ignored for it). A
    /// second final head is refused with `StreamClosed`.
    pub fn send_headers(
        &mut self,
        stream: u32,
        status: u16,
        headers: &[(&[u8], &[u8])],
        end_stream: bool,
    ) -> Result<(), SendError> {
        self.check_send(stream, SendState::AwaitingHead)?;
        let s = self.streams.get_mut(&stream).expect("checked");
        let informational = status < 200;
        debug_assert!(
            !(informational && end_stream),
            "a 1xx head cannot end a stream"
        );
        let end = end_stream && !informational;
        if !informational {
            s.send = SendState::Body;
        }
        let block = self.encode_head(Some(status), headers);
        emit::headers(&mut self.out, stream, &block, end, self.peer_max_frame);
        self.scratch = block;
        if end {
            self.end_send(stream);
        }
        Ok(())
    }

    /// How many DATA octets `stream` may send now: the least of its send
    /// window, the connection's, and the room left under
    /// `max_pending_output`. 0 for a stream not open for sending.
    ///
    /// "Open for sending" means the final response head went and the
    /// response has not ended.
    pub fn send_capacity(&self, stream: u32) -> usize {
        if self.dead {
            return 0;
        }
        let Some(s) = self.streams.get(&stream) else {
            return 0;
        };
        if s.send != SendState::Body {
            return 0;
        }
        let window = s.send_window.min(self.send_conn_window).max(0);
        let room = self
            .cfg
            .max_pending_output
            .saturating_sub(self.pending_len());
        usize::try_from(window).unwrap_or(usize::MAX).min(room)
    }

    /// Queues body octets (at most `send_capacity`, split by the peer's max
    /// frame size); `end_stream` ends the response. Ending a response while
    /// the request body is still arriving resets the stream with NO_ERROR
    /// (§8.1) after the last frame.
    ///
    /// More than `send_capacity` is the caller's bug (debug-asserted); in a
    /// release build it is sent and the windows go negative.
    pub fn send_data(
        &mut self,
        stream: u32,
        data: &[u8],
        end_stream: bool,
    ) -> Result<(), SendError> {
        self.check_send(stream, SendState::Body)?;
        debug_assert!(
            data.len() <= self.send_capacity(stream),
            "send_data beyond send_capacity"
        );
        let s = self.streams.get_mut(&stream).expect("checked");
        let n = i64::try_from(data.len()).unwrap_or(i64::MAX);
        s.send_window = s.send_window.saturating_sub(n);
        self.send_conn_window = self.send_conn_window.saturating_sub(n);
        emit::data(&mut self.out, stream, data, end_stream, self.peer_max_frame);
        if end_stream {
            self.end_send(stream);
        }
        Ok(())
    }

    /// Whether `stream` may send what its `state` allows next (the
    /// connection alive, the stream known and at that point).
    fn check_send(&self, stream: u32, state: SendState) -> Result<(), SendError> {
        if self.dead {
            return Err(SendError::ConnectionClosed);
        }
        match self.streams.get(&stream) {
            Some(s) if s.send == state => Ok(()),
            _ => Err(SendError::StreamClosed(stream)),
        }
    }

    /// Ends the response with trailers.
    pub fn send_trailers(
        &mut self,
        stream: u32,
        headers: &[(&[u8], &[u8])],
    ) -> Result<(), SendError> {
        self.check_send(stream, SendState::Body)?;
        let block = self.encode_head(None, headers);
        emit::headers(&mut self.out, stream, &block, true, self.peer_max_frame);
        self.scratch = block;
        self.end_send(stream);
        Ok(())
    }

    /// Request-body octets buffered for `stream` and not yet consumed.
    pub fn request_body(&self, stream: u32) -> &[u8] {
        self.streams.get(&stream).map_or(&[], |s| &s.body[..])
    }

    /// The application took `n` octets of `request_body`: they are freed
    /// and the windows re-opened (WINDOW_UPDATE once enough is owed).
    pub fn consume_body(&mut self, stream: u32, n: usize) {
        if self.dead {
            return;
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let n = n.min(s.body.len());
        if n == 0 {
            return;
        }
        s.body.drain(..n);
        // n <= the body, itself under a 31-bit window.
        let n = n as u32;
        self.stream_give_back(stream, n);
        self.conn_give_back(n);
    }

    /// Ends a stream from our side (RST_STREAM with `code`); no event follows for it.
    pub fn reset_stream(&mut self, stream: u32, code: ErrorCode) {
        if self.dead {
            return;
        }
        if self.remove_stream(stream).is_some() {
            emit::rst_stream(&mut self.out, stream, code);
            self.closed.push(stream, Closed::ResetByUs);
        }
    }

    /// GOAWAY: with NO_ERROR a graceful close (the streams already opened
    /// finish, new ones are refused); with another code the connection ends
    /// now. The last stream id is the highest one accepted.
    pub fn go_away(&mut self, code: ErrorCode, debug: &[u8]) {
        if self.dead {
            return;
        }
        if code == ErrorCode::NoError {
            if !self.goaway_sent {
                self.goaway_sent = true;
                emit::goaway(&mut self.out, self.last_accepted, code, debug);
            }
            return;
        }
        self.fail(
            FrameError {
                code,
                scope: Scope::Connection,
                reason: "connection closed by the application",
            },
            debug,
        );
    }

    /// When `handle_timeout` must run next (the SETTINGS ACK deadline).
    pub fn poll_timeout(&self) -> Option<Duration> {
        (!self.dead && !self.settings_acked).then_some(self.settings_deadline)
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        self.now = now;
        if !self.dead && !self.settings_acked && now >= self.settings_deadline {
            self.stats.settings_timeouts += 1;
            self.conn_error(
                ErrorCode::SettingsTimeout,
                "SETTINGS not acknowledged in time",
            );
        }
    }

    /// Streams open (not closed in both directions, not reset).
    pub fn active_streams(&self) -> usize {
        self.streams.len()
    }

    /// We sent a GOAWAY (graceful, or for a connection error).
    pub fn goaway_sent(&self) -> bool {
        self.dead || self.goaway_sent
    }

    /// A GOAWAY was sent or received: no new streams will come.
    pub fn is_going_away(&self) -> bool {
        self.dead || self.goaway_sent || self.peer_goaway.is_some()
    }

    /// Nothing more will happen: a connection error's GOAWAY is queued, or
    /// our graceful GOAWAY's streams are all done. Flush `pending_output`,
    /// then close the transport. A client's GOAWAY alone does not end the
    /// connection: the client closes it when it is done (and may still
    /// PING until then).
    pub fn is_done(&self) -> bool {
        self.dead || (self.goaway_sent && self.streams.is_empty())
    }

    /// The connection error that ended the connection, if one did.
    pub fn error(&self) -> Option<crate::FrameError> {
        self.error
    }

    pub fn stats(&self) -> &ConnStats {
        &self.stats
    }

    /// The highest stream id accepted so far (what a GOAWAY would carry).
    pub fn last_stream_id(&self) -> u32 {
        self.last_accepted
    }

    /// The last stream error this connection answered with RST_STREAM
    /// (malformed request, flow control, state), with the rule's reason: for
    /// logs; `stats().stream_errors` counts them.
    pub fn last_stream_error(&self) -> Option<FrameError> {
        self.last_stream_error
    }

    /// The GOAWAY the client sent, if it did: its last stream id.
    pub fn peer_goaway(&self) -> Option<u32> {
        self.peer_goaway
    }
}
