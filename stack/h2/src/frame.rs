//! Frame payloads (RFC 9113 §6) as borrowed views, and the parser with every
//! check that needs only the frame itself. Sequencing rules (CONTINUATION
//! order, stream states, flow-control windows) belong to the connection.

use crate::error::{ErrorCode, FrameError};
use crate::header::{FrameHeader, FrameType, HEADER_LEN, STREAM_ID_MASK, flags};
use crate::settings::SettingsIter;

use ErrorCode::{FrameSizeError, ProtocolError};

/// A stream dependency (§5.3.2, deprecated by RFC 9113 but still on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrioritySpec {
    pub exclusive: bool,
    pub dependency: u32,
    /// The wire value; the weight is this plus one.
    pub weight: u8,
}

impl PrioritySpec {
    const LEN: usize = 5;

    fn parse(b: &[u8; Self::LEN]) -> Self {
        let dep = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        Self {
            exclusive: dep & !STREAM_ID_MASK != 0,
            dependency: dep & STREAM_ID_MASK,
            weight: b[4],
        }
    }

    /// §5.3.1: a stream cannot depend on itself (a stream error). [`decode`]
    /// applies this to PRIORITY only: a HEADERS frame's field block must still
    /// go through HPACK to keep the decoder in step, so the connection calls
    /// this on `Frame::Headers::priority` after decoding, then resets.
    pub fn check(&self, stream: u32) -> Result<(), FrameError> {
        if self.dependency == stream {
            return Err(FrameError::stream(
                stream,
                ProtocolError,
                "stream depends on itself",
            ));
        }
        Ok(())
    }
}

/// One received frame; payload slices borrow the input buffer and have any
/// padding removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Data {
        stream: u32,
        end_stream: bool,
        data: &'a [u8],
    },
    Headers {
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        priority: Option<PrioritySpec>,
        fragment: &'a [u8],
    },
    Priority {
        stream: u32,
        priority: PrioritySpec,
    },
    RstStream {
        stream: u32,
        code: ErrorCode,
    },
    Settings {
        ack: bool,
        params: SettingsIter<'a>,
    },
    /// Only [`decode`] yields this; [`parse`] (the server's entry) refuses it (§8.4).
    PushPromise {
        stream: u32,
        end_headers: bool,
        promised: u32,
        fragment: &'a [u8],
    },
    Ping {
        ack: bool,
        data: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        code: ErrorCode,
        debug: &'a [u8],
    },
    /// `stream` 0 is the connection window.
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        end_headers: bool,
        fragment: &'a [u8],
    },
    /// An extension or unknown type: to be ignored (§5.5), except inside a
    /// header block, which the connection checks.
    Unknown {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &'a [u8],
    },
}

/// Parses one frame from the front of `buf`, as a server receives it.
///
/// `max_frame_size` is the SETTINGS_MAX_FRAME_SIZE this endpoint advertised.
/// Returns `Ok(None)` until the whole frame is buffered, and the frame with the
/// octets it used otherwise. An oversized frame is refused as soon as its
/// header arrives, so a peer cannot make us buffer it. On a stream error the
/// frame's octets are [`frame_len`] and the connection may go on past them.
pub fn parse(buf: &[u8], max_frame_size: u32) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(header) = FrameHeader::parse(buf) else {
        return Ok(None);
    };
    if header.length > max_frame_size {
        // §4.2: a connection error is allowed for any frame, and required for
        // most; one rule is simpler and safe.
        return Err(FrameError::connection(
            FrameSizeError,
            "frame larger than SETTINGS_MAX_FRAME_SIZE",
        ));
    }
    let total = HEADER_LEN + header.length as usize;
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    let frame = decode(&header, payload)?;
    if let Frame::PushPromise { .. } = frame {
        return Err(FrameError::connection(
            ProtocolError,
            "PUSH_PROMISE sent by a client",
        ));
    }
    Ok(Some((frame, total)))
}

/// The octets of the frame at the front of `buf` (header plus declared
/// length), once its header is there: what to skip after a stream error.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    FrameHeader::parse(buf).map(|h| HEADER_LEN + h.length as usize)
}

/// Decodes a payload of `header.length` octets, for either role.
pub fn decode<'a>(header: &FrameHeader, payload: &'a [u8]) -> Result<Frame<'a>, FrameError> {
    debug_assert_eq!(payload.len(), header.length as usize);
    let stream = header.stream;
    let stream_only = |what| {
        if stream == 0 {
            Err(FrameError::connection(ProtocolError, what))
        } else {
            Ok(())
        }
    };
    let connection_only = |what| {
        if stream != 0 {
            Err(FrameError::connection(ProtocolError, what))
        } else {
            Ok(())
        }
    };
    let frame = match header.kind {
        FrameType::Data => {
            stream_only("DATA on stream 0")?;
            let (_, data) = unpad(header, payload, 0)?;
            Frame::Data {
                stream,
                end_stream: header.has(flags::END_STREAM),
                data,
            }
        }
        FrameType::Headers => {
            stream_only("HEADERS on stream 0")?;
            let fixed = if header.has(flags::PRIORITY) {
                PrioritySpec::LEN
            } else {
                0
            };
            let (spec, fragment) = unpad(header, payload, fixed)?;
            // Self-dependency is checked by the connection (see `PrioritySpec::check`).
            let priority = <&[u8; PrioritySpec::LEN]>::try_from(spec)
                .ok()
                .map(PrioritySpec::parse);
            Frame::Headers {
                stream,
                end_stream: header.has(flags::END_STREAM),
                end_headers: header.has(flags::END_HEADERS),
                priority,
                fragment,
            }
        }
        FrameType::Priority => {
            stream_only("PRIORITY on stream 0")?;
            let Ok(spec) = <&[u8; PrioritySpec::LEN]>::try_from(payload) else {
                return Err(FrameError::stream(
                    stream,
                    FrameSizeError,
                    "PRIORITY length not 5",
                ));
            };
            let priority = PrioritySpec::parse(spec);
            priority.check(stream)?;
            Frame::Priority { stream, priority }
        }
        FrameType::RstStream => {
            stream_only("RST_STREAM on stream 0")?;
            let code = u32_exact(payload, "RST_STREAM length not 4")?;
            Frame::RstStream {
                stream,
                code: code.into(),
            }
        }
        FrameType::Settings => {
            connection_only("SETTINGS on a stream")?;
            let ack = header.has(flags::ACK);
            if ack && !payload.is_empty() {
                return Err(FrameError::connection(
                    FrameSizeError,
                    "SETTINGS ACK with a payload",
                ));
            }
            Frame::Settings {
                ack,
                params: SettingsIter::new(payload)?,
            }
        }
        FrameType::PushPromise => {
            stream_only("PUSH_PROMISE on stream 0")?;
            let (promised, fragment) = unpad(header, payload, 4)?;
            let promised = <[u8; 4]>::try_from(promised).map_or(0, u32::from_be_bytes);
            Frame::PushPromise {
                stream,
                end_headers: header.has(flags::END_HEADERS),
                promised: promised & STREAM_ID_MASK,
                fragment,
            }
        }
        FrameType::Ping => {
            connection_only("PING on a stream")?;
            let Ok(data) = <[u8; 8]>::try_from(payload) else {
                return Err(FrameError::connection(FrameSizeError, "PING length not 8"));
            };
            Frame::Ping {
                ack: header.has(flags::ACK),
                data,
            }
        }
        FrameType::GoAway => {
            connection_only("GOAWAY on a stream")?;
            let Some((fixed, debug)) = payload.split_first_chunk::<8>() else {
                return Err(FrameError::connection(
                    FrameSizeError,
                    "GOAWAY shorter than 8",
                ));
            };
            let last = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
            let code = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
            Frame::GoAway {
                last_stream: last & STREAM_ID_MASK,
                code: code.into(),
                debug,
            }
        }
        FrameType::WindowUpdate => {
            let increment = u32_exact(payload, "WINDOW_UPDATE length not 4")? & STREAM_ID_MASK;
            if increment == 0 {
                // §6.9: the scope follows the window the frame was for.
                let what = "WINDOW_UPDATE increment 0";
                return Err(if stream == 0 {
                    FrameError::connection(ProtocolError, what)
                } else {
                    FrameError::stream(stream, ProtocolError, what)
                });
            }
            Frame::WindowUpdate { stream, increment }
        }
        FrameType::Continuation => {
            stream_only("CONTINUATION on stream 0")?;
            Frame::Continuation {
                stream,
                end_headers: header.has(flags::END_HEADERS),
                fragment: payload,
            }
        }
        FrameType::Unknown(kind) => Frame::Unknown {
            kind,
            flags: header.flags,
            stream,
            payload,
        },
    };
    Ok(frame)
}

/// Splits a payload laid out as [Pad Length?] fixed-fields body [padding]
/// (§6.1, §6.2, §6.6): returns the `fixed` octets and the unpadded body.
fn unpad<'a>(
    header: &FrameHeader,
    payload: &'a [u8],
    fixed: usize,
) -> Result<(&'a [u8], &'a [u8]), FrameError> {
    let padded = header.has(flags::PADDED);
    let (pad, rest) = match (padded, payload.split_first()) {
        (false, _) => (0, payload),
        (true, Some((&pad, rest))) => (pad as usize, rest),
        (true, None) => {
            return Err(FrameError::connection(
                FrameSizeError,
                "PADDED frame without Pad Length",
            ));
        }
    };
    if rest.len() < fixed {
        return Err(FrameError::connection(
            FrameSizeError,
            "frame too short for its fixed fields",
        ));
    }
    let (fixed, rest) = rest.split_at(fixed);
    // The RFC's "padding >= payload length" (the payload counts the Pad
    // Length octet and the fixed fields): padding must fit in what is left.
    let Some(end) = rest.len().checked_sub(pad) else {
        return Err(FrameError::connection(
            ProtocolError,
            "padding fills the frame",
        ));
    };
    Ok((fixed, &rest[..end]))
}

/// The one 32-bit field of RST_STREAM and WINDOW_UPDATE; both demand a
/// connection error on another length (§6.4, §6.9).
fn u32_exact(payload: &[u8], what: &'static str) -> Result<u32, FrameError> {
    <[u8; 4]>::try_from(payload)
        .map(u32::from_be_bytes)
        .map_err(|_| FrameError::connection(FrameSizeError, what))
}
