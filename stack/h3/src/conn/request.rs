//! A request stream's receiving side (RFC 9114 §4.1): HEADERS, DATA,
//! optional trailers, with unknown frames skipped anywhere; the frame
//! sequence, the limits, and the request rules.

use ferrogate_h2::{join_cookies, validate_request, validate_trailers};

use super::reader::{FrameReader, Mode, Read};
use super::{Event, H3Conn};
use crate::error::{ErrorCode, H3Error};
use crate::frame::FrameType;
use crate::qpack::{self, DecodeError};

/// Where a request's frame sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Recv {
    #[default]
    Head,
    Body,
    /// Trailers read: only unknown frames and FIN may follow.
    Trailers,
    /// FIN read after a complete request.
    Ended,
    /// The rest of the request is read and dropped (a 431 was queued).
    Discard,
    /// Discarding, and FIN read.
    DiscardEnded,
}

#[derive(Debug, Default)]
pub(super) struct ReqStream {
    reader: FrameReader,
    recv: Recv,
    frames: u32,
    /// The frame being streamed is DATA (else one being skipped).
    in_data: bool,
    body_len: u64,
    content_length: Option<u64>,
    pub body: Vec<u8>,
    pub data_event_queued: bool,
    pub head_delivered: bool,
    pub out: Vec<u8>,
    pub head_sent: bool,
    pub finished: bool,
    pub fin_sent: bool,
}

impl ReqStream {
    pub fn recv_done(&self) -> bool {
        matches!(self.recv, Recv::Ended | Recv::DiscardEnded)
    }

    /// Nothing more will be read: the rest of the request is dropped.
    pub fn stop_receiving(&mut self) {
        if !self.recv_done() {
            self.recv = Recv::DiscardEnded;
        }
        self.body.clear();
    }
}

fn unexpected(reason: &'static str) -> H3Error {
    H3Error::connection(ErrorCode::FrameUnexpected, reason)
}

/// What a frame boundary asks of the connection besides events.
enum Outcome {
    Continue,
    /// Answer 431 and drop the rest.
    TooLarge,
    /// The stream was reset; stop reading.
    Reset(H3Error),
}

impl H3Conn {
    pub(super) fn recv_request(
        &mut self,
        id: u64,
        mut data: &[u8],
        fin: bool,
    ) -> Result<(), H3Error> {
        let limit = self.config.max_field_section_size;
        let max_frames = self.config.max_frames_per_stream;
        loop {
            let s = self.requests.get_mut(&id).expect("caller checked");
            if matches!(s.recv, Recv::Discard | Recv::DiscardEnded) {
                break;
            }
            let (read, used) = s.reader.read(data);
            let rest = &data[used..];
            let outcome = match read {
                Read::NeedMore => break,
                Read::Header(h) => {
                    let counts = !matches!(h.kind, FrameType::Data) || h.length == 0;
                    if counts {
                        s.frames += 1;
                        if s.frames > max_frames {
                            return Err(H3Error::connection(
                                ErrorCode::ExcessiveLoad,
                                "too many frames without body octets on a request stream",
                            ));
                        }
                    }
                    match h.kind {
                        FrameType::Data => {
                            match s.recv {
                                Recv::Head => return Err(unexpected("DATA before HEADERS")),
                                Recv::Trailers => return Err(unexpected("DATA after trailers")),
                                _ => {}
                            }
                            s.in_data = true;
                            s.reader.begin(Mode::Stream);
                            Outcome::Continue
                        }
                        FrameType::Headers => {
                            if s.recv == Recv::Trailers {
                                return Err(unexpected("HEADERS after trailers"));
                            }
                            if h.length > limit {
                                // No table state hangs on an unread section
                                // (capacity 0), so it need not be read at all.
                                Outcome::TooLarge
                            } else {
                                s.reader.begin(Mode::Collect);
                                Outcome::Continue
                            }
                        }
                        FrameType::Unknown(_) => {
                            self.stats.frames_skipped += 1;
                            s.in_data = false;
                            s.reader.begin(Mode::Stream);
                            Outcome::Continue
                        }
                        // §7.2.5: a client never sends PUSH_PROMISE; the
                        // control frames and HTTP/2's have no place here.
                        FrameType::PushPromise => {
                            return Err(unexpected("PUSH_PROMISE from a client"));
                        }
                        _ => return Err(unexpected("control or HTTP/2 frame on a request stream")),
                    }
                }
                Read::Chunk(bytes) => {
                    if s.in_data {
                        s.body_len += bytes.len() as u64;
                        if s.content_length.is_some_and(|cl| s.body_len > cl) {
                            Outcome::Reset(H3Error::stream(
                                id,
                                ErrorCode::MessageError,
                                "body longer than content-length",
                            ))
                        } else {
                            if !bytes.is_empty() {
                                s.body.extend_from_slice(bytes);
                                if !s.data_event_queued {
                                    s.data_event_queued = true;
                                    self.events.push_back(Event::RequestData { stream: id });
                                }
                            }
                            Outcome::Continue
                        }
                    } else {
                        // A skipped frame's payload.
                        Outcome::Continue
                    }
                }
                Read::Frame { payload, .. } => {
                    self.stats.field_section_bytes += payload.len() as u64;
                    let trailers = s.recv == Recv::Body;
                    match qpack::decode_section(payload, limit) {
                        Err(DecodeError::Failed(reason)) => {
                            return Err(H3Error::connection(
                                ErrorCode::QpackDecompressionFailed,
                                reason,
                            ));
                        }
                        Err(DecodeError::TooLarge { .. }) => Outcome::TooLarge,
                        Ok(fields) if !trailers => match validate_request(0, fields) {
                            Err(e) => Outcome::Reset(H3Error::stream(
                                id,
                                ErrorCode::MessageError,
                                e.reason,
                            )),
                            Ok(mut request) => {
                                // RFC 9114 §4.2.1: crumbs are one field
                                // again before an HTTP/1.1 upstream.
                                join_cookies(&mut request.headers);
                                s.recv = Recv::Body;
                                s.content_length = request.content_length;
                                s.head_delivered = true;
                                self.stats.requests += 1;
                                self.events.push_back(Event::RequestHead {
                                    stream: id,
                                    request,
                                });
                                Outcome::Continue
                            }
                        },
                        Ok(fields) => match validate_trailers(0, fields, true) {
                            Err(e) => Outcome::Reset(H3Error::stream(
                                id,
                                ErrorCode::MessageError,
                                e.reason,
                            )),
                            Ok(_) if s.content_length.is_some_and(|cl| cl != s.body_len) => {
                                Outcome::Reset(H3Error::stream(
                                    id,
                                    ErrorCode::MessageError,
                                    "body length differs from content-length",
                                ))
                            }
                            Ok(fields) => {
                                s.recv = Recv::Trailers;
                                self.events
                                    .push_back(Event::RequestTrailers { stream: id, fields });
                                Outcome::Continue
                            }
                        },
                    }
                }
            };
            match outcome {
                Outcome::Continue => {}
                Outcome::TooLarge => {
                    self.head_too_large(id);
                    break;
                }
                Outcome::Reset(e) => {
                    self.stream_error(e);
                    return Ok(());
                }
            }
            data = rest;
        }
        if fin {
            self.recv_fin(id)?;
        }
        Ok(())
    }

    fn recv_fin(&mut self, id: u64) -> Result<(), H3Error> {
        let Some(s) = self.requests.get_mut(&id) else {
            return Ok(());
        };
        match s.recv {
            Recv::Discard => s.recv = Recv::DiscardEnded,
            Recv::Ended | Recv::DiscardEnded => return Ok(()),
            _ if !s.reader.is_idle() => {
                // §7.1: a truncated last frame.
                return Err(H3Error::connection(
                    ErrorCode::FrameError,
                    "request stream ends inside a frame",
                ));
            }
            Recv::Head => {
                self.stream_error(H3Error::stream(
                    id,
                    ErrorCode::RequestIncomplete,
                    "request stream ends without HEADERS",
                ));
                return Ok(());
            }
            Recv::Body if s.content_length.is_some_and(|cl| cl != s.body_len) => {
                self.stream_error(H3Error::stream(
                    id,
                    ErrorCode::MessageError,
                    "body length differs from content-length",
                ));
                return Ok(());
            }
            Recv::Body | Recv::Trailers => {
                s.recv = Recv::Ended;
                self.events.push_back(Event::RequestEnd { stream: id });
            }
        }
        self.reap(id);
        Ok(())
    }

    /// Answers 431 (RFC 9114 §4.2.2) to a head past the limit. Trailers
    /// past it reset the stream instead: the application has the head and
    /// may be answering already.
    fn head_too_large(&mut self, id: u64) {
        self.stats.heads_too_large += 1;
        let s = self.requests.get_mut(&id).expect("caller checked");
        if s.head_delivered {
            return self.stream_error(H3Error::stream(
                id,
                ErrorCode::ExcessiveLoad,
                "trailer section past the limit",
            ));
        }
        s.recv = Recv::Discard;
        s.body.clear();
        self.events.push_back(Event::HeadTooLarge { stream: id });
        self.send_response_head(id, 431, &[])
            .and_then(|()| self.finish(id))
            .expect("a stream with no response head takes one");
    }
}
