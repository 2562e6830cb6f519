//! A test client for [`Connection`]: builds client frames (the crate's
//! emitters plus a `loona_hpack` encoder for request blocks), feeds them to
//! `recv`, and reads back what the server queued as owned frames (header
//! blocks decoded with a client-side HPACK decoder).

use std::time::Duration;

use crate::conn::{Connection, Event, ServerConfig};
use crate::error::ErrorCode;
use crate::frame::{Frame, decode};
use crate::header::{FrameHeader, HEADER_LEN};
use crate::settings::SettingId;
use crate::{PREFACE, emit};

/// A frame the server sent, owned; a header block's CONTINUATIONs are
/// merged into its `Headers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Out {
    Settings {
        ack: bool,
        params: Vec<(SettingId, u32)>,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Ping {
        ack: bool,
        data: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        code: ErrorCode,
        debug: Vec<u8>,
    },
    Rst {
        stream: u32,
        code: ErrorCode,
    },
    Headers {
        stream: u32,
        end_stream: bool,
        fields: Vec<(String, String)>,
        /// HEADERS plus CONTINUATION frames.
        frames: usize,
    },
    Data {
        stream: u32,
        end_stream: bool,
        data: Vec<u8>,
    },
}

pub(crate) const GET: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "example.com"),
    (":path", "/"),
];

pub(crate) const POST: [(&str, &str); 4] = [
    (":method", "POST"),
    (":scheme", "https"),
    (":authority", "example.com"),
    (":path", "/upload"),
];

pub(crate) struct Client {
    pub conn: Connection,
    pub enc: loona_hpack::Encoder<'static>,
    dec: loona_hpack::Decoder<'static>,
    pub now: Duration,
    /// Events polled so far, not yet taken by `events()`.
    pending_events: Vec<Event>,
    block: Option<(u32, bool, Vec<u8>, usize)>,
}

impl Client {
    /// A connection; nothing sent yet.
    pub fn new(cfg: ServerConfig) -> Self {
        Self {
            conn: Connection::new(cfg, Duration::ZERO),
            enc: loona_hpack::Encoder::new(),
            dec: loona_hpack::Decoder::new(),
            now: Duration::ZERO,
            pending_events: Vec::new(),
            block: None,
        }
    }

    /// Preface, empty SETTINGS, ACK of the server's; the server's greeting
    /// is read and dropped.
    pub fn handshake(cfg: ServerConfig) -> Self {
        Self::handshake_with(cfg, &[])
    }

    pub fn handshake_with(cfg: ServerConfig, settings: &[(SettingId, u32)]) -> Self {
        let mut c = Self::new(cfg);
        let mut b = PREFACE.to_vec();
        emit::settings(&mut b, settings);
        emit::settings_ack(&mut b);
        c.send(&b);
        let greeting = c.read();
        assert!(
            greeting.contains(&Out::Settings {
                ack: true,
                params: vec![]
            }),
            "{greeting:?}"
        );
        c
    }

    /// Feeds `bytes` whole, draining events between calls as an
    /// application would. Returns the octets consumed.
    pub fn send(&mut self, bytes: &[u8]) -> usize {
        let mut off = 0;
        loop {
            let n = self.conn.recv(&bytes[off..], self.now);
            off += n;
            let mut drained = false;
            while let Some(e) = self.conn.poll_event() {
                self.pending_events.push(e);
                drained = true;
            }
            if off == bytes.len() || (n == 0 && !drained) {
                return off;
            }
        }
    }

    pub fn events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.pending_events)
    }

    /// Takes and parses everything the server queued.
    pub fn read(&mut self) -> Vec<Out> {
        let bytes = self.conn.pending_output().to_vec();
        self.conn.consume_output(bytes.len());
        self.parse_out(&bytes)
    }

    pub fn parse_out(&mut self, mut bytes: &[u8]) -> Vec<Out> {
        let mut frames = Vec::new();
        while let Some(h) = FrameHeader::parse(bytes) {
            let total = HEADER_LEN + h.length as usize;
            let payload = &bytes[HEADER_LEN..total];
            let frame = decode(&h, payload).expect("server frames are well-formed");
            if let Some(out) = self.owned(frame) {
                frames.push(out);
            }
            bytes = &bytes[total..];
        }
        assert!(bytes.is_empty(), "partial frame in output");
        frames
    }

    fn owned(&mut self, frame: Frame<'_>) -> Option<Out> {
        Some(match frame {
            Frame::Settings { ack, params } => Out::Settings {
                ack,
                params: params.map(|s| (s.id, s.value)).collect(),
            },
            Frame::WindowUpdate { stream, increment } => Out::WindowUpdate { stream, increment },
            Frame::Ping { ack, data } => Out::Ping { ack, data },
            Frame::GoAway {
                last_stream,
                code,
                debug,
            } => Out::GoAway {
                last_stream,
                code,
                debug: debug.to_vec(),
            },
            Frame::RstStream { stream, code } => Out::Rst { stream, code },
            Frame::Data {
                stream,
                end_stream,
                data,
            } => Out::Data {
                stream,
                end_stream,
                data: data.to_vec(),
            },
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                fragment,
                ..
            } => {
                assert!(self.block.is_none(), "HEADERS inside a header block");
                self.block = Some((stream, end_stream, fragment.to_vec(), 1));
                if !end_headers {
                    return None;
                }
                self.finish_block()
            }
            Frame::Continuation {
                stream,
                end_headers,
                fragment,
            } => {
                let b = self.block.as_mut().expect("CONTINUATION without HEADERS");
                assert_eq!(b.0, stream);
                b.2.extend_from_slice(fragment);
                b.3 += 1;
                if !end_headers {
                    return None;
                }
                self.finish_block()
            }
            other => panic!("unexpected server frame {other:?}"),
        })
    }

    fn finish_block(&mut self) -> Out {
        let (stream, end_stream, block, frames) = self.block.take().unwrap();
        let fields = self
            .dec
            .decode(&block)
            .expect("server blocks decode")
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        Out::Headers {
            stream,
            end_stream,
            fields,
            frames,
        }
    }

    /// A request block as HEADERS (+ CONTINUATION at 16 KiB).
    pub fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
        let block = self.block_of(fields);
        let mut b = Vec::new();
        emit::headers(&mut b, stream, &block, end_stream, 16_384);
        b
    }

    pub fn block_of(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.enc
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    /// Sends a GET on `stream` (END_STREAM) and returns the server's frames.
    pub fn get(&mut self, stream: u32) -> Vec<Out> {
        let b = self.headers(stream, &GET, true);
        self.send(&b);
        self.read()
    }
}

pub(crate) fn data(stream: u32, body: &[u8], end_stream: bool) -> Vec<u8> {
    let mut b = Vec::new();
    emit::data(&mut b, stream, body, end_stream, 16_384);
    b
}

/// A raw frame, for what the emitters would never build.
pub(crate) fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = [0; HEADER_LEN];
    FrameHeader {
        length: payload.len() as u32,
        kind: kind.into(),
        flags,
        stream,
    }
    .emit(&mut buf);
    let mut v = buf.to_vec();
    v.extend_from_slice(payload);
    v
}

pub(crate) fn ping(data: [u8; 8]) -> Vec<u8> {
    let mut b = Vec::new();
    emit::ping(&mut b, false, data);
    b
}

pub(crate) fn rst(stream: u32, code: ErrorCode) -> Vec<u8> {
    let mut b = Vec::new();
    emit::rst_stream(&mut b, stream, code);
    b
}

pub(crate) fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    let mut b = Vec::new();
    emit::window_update(&mut b, stream, increment);
    b
}

pub(crate) fn settings(params: &[(SettingId, u32)]) -> Vec<u8> {
    let mut b = Vec::new();
    emit::settings(&mut b, params);
    b
}

/// The GOAWAY among `frames`, as (last stream, code).
pub(crate) fn goaway(frames: &[Out]) -> Option<(u32, ErrorCode)> {
    frames.iter().find_map(|f| match f {
        Out::GoAway {
            last_stream, code, ..
        } => Some((*last_stream, *code)),
        _ => None,
    })
}

pub(crate) fn rsts(frames: &[Out]) -> Vec<(u32, ErrorCode)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Out::Rst { stream, code } => Some((*stream, *code)),
            _ => None,
        })
        .collect()
}

pub(crate) fn window_updates(frames: &[Out]) -> Vec<(u32, u32)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Out::WindowUpdate { stream, increment } => Some((*stream, *increment)),
            _ => None,
        })
        .collect()
}

/// The :status of the response HEADERS on `stream`.
pub(crate) fn status(frames: &[Out], stream: u32) -> Option<String> {
    frames.iter().find_map(|f| match f {
        Out::Headers {
            stream: s, fields, ..
        } if *s == stream => fields
            .iter()
            .find(|(n, _)| n == ":status")
            .map(|(_, v)| v.clone()),
        _ => None,
    })
}
