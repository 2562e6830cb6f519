//! The frames a server sends, appended to a caller's buffer. Each function
//! returns the octets it appended. Arguments a peer could not have produced
//! (ids over 31 bits, a zero increment) are the caller's bug: debug-asserted.

use crate::error::ErrorCode;
use crate::header::{FrameHeader, FrameType, HEADER_LEN, MAX_LENGTH, flags};
use crate::settings::{MAX_WINDOW_SIZE, SETTING_LEN, SettingId};

fn header(out: &mut Vec<u8>, kind: FrameType, flags: u8, stream: u32, length: usize) {
    debug_assert!(
        stream <= crate::header::STREAM_ID_MASK,
        "stream id over 31 bits"
    );
    let mut buf = [0; HEADER_LEN];
    FrameHeader {
        length: length as u32,
        kind,
        flags,
        stream,
    }
    .emit(&mut buf);
    out.extend_from_slice(&buf);
}

/// SETTINGS with `params` in order (§6.5).
pub fn settings(out: &mut Vec<u8>, params: &[(SettingId, u32)]) -> usize {
    let len = params.len() * SETTING_LEN;
    header(out, FrameType::Settings, 0, 0, len);
    for &(id, value) in params {
        out.extend_from_slice(&u16::from(id).to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
    HEADER_LEN + len
}

/// The empty SETTINGS that acknowledges the peer's.
pub fn settings_ack(out: &mut Vec<u8>) -> usize {
    header(out, FrameType::Settings, flags::ACK, 0, 0);
    HEADER_LEN
}

/// PING; a server answers a peer's with `ack` and the same data (§6.7).
pub fn ping(out: &mut Vec<u8>, ack: bool, data: [u8; 8]) -> usize {
    header(out, FrameType::Ping, if ack { flags::ACK } else { 0 }, 0, 8);
    out.extend_from_slice(&data);
    HEADER_LEN + 8
}

/// GOAWAY (§6.8); `debug` is opaque diagnostic data.
pub fn goaway(out: &mut Vec<u8>, last_stream: u32, code: ErrorCode, debug: &[u8]) -> usize {
    debug_assert!(last_stream <= crate::header::STREAM_ID_MASK);
    let len = 8 + debug.len();
    header(out, FrameType::GoAway, 0, 0, len);
    out.extend_from_slice(&last_stream.to_be_bytes());
    out.extend_from_slice(&code.to_u32().to_be_bytes());
    out.extend_from_slice(debug);
    HEADER_LEN + len
}

/// RST_STREAM (§6.4).
pub fn rst_stream(out: &mut Vec<u8>, stream: u32, code: ErrorCode) -> usize {
    debug_assert_ne!(stream, 0);
    header(out, FrameType::RstStream, 0, stream, 4);
    out.extend_from_slice(&code.to_u32().to_be_bytes());
    HEADER_LEN + 4
}

/// WINDOW_UPDATE (§6.9); stream 0 is the connection window.
pub fn window_update(out: &mut Vec<u8>, stream: u32, increment: u32) -> usize {
    debug_assert!(
        (1..=MAX_WINDOW_SIZE).contains(&increment),
        "increment out of range"
    );
    header(out, FrameType::WindowUpdate, 0, stream, 4);
    out.extend_from_slice(&increment.to_be_bytes());
    HEADER_LEN + 4
}

/// A frame size to split by: the peer's SETTINGS_MAX_FRAME_SIZE, kept in the
/// 24-bit field and above zero so splitting always ends.
fn chunk_size(max_frame_size: u32) -> usize {
    max_frame_size.clamp(1, MAX_LENGTH) as usize
}

/// An encoded header block as HEADERS plus as many CONTINUATION frames as
/// `max_frame_size` needs; END_HEADERS goes on the last, END_STREAM on the
/// HEADERS frame (§6.2, §6.10).
pub fn headers(
    out: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame_size: u32,
) -> usize {
    debug_assert_ne!(stream, 0);
    let start = out.len();
    let mut chunks = block.chunks(chunk_size(max_frame_size));
    let first = chunks.next().unwrap_or(&[]);
    let mut rest = chunks.peekable();
    let mut f = if end_stream { flags::END_STREAM } else { 0 };
    if rest.peek().is_none() {
        f |= flags::END_HEADERS;
    }
    header(out, FrameType::Headers, f, stream, first.len());
    out.extend_from_slice(first);
    while let Some(chunk) = rest.next() {
        let f = if rest.peek().is_none() {
            flags::END_HEADERS
        } else {
            0
        };
        header(out, FrameType::Continuation, f, stream, chunk.len());
        out.extend_from_slice(chunk);
    }
    out.len() - start
}

/// Body octets as DATA frames of at most `max_frame_size`, END_STREAM on the
/// last; an empty `data` still sends one (empty) frame to carry END_STREAM.
/// Flow control is the caller's: `data` must fit the windows.
pub fn data(
    out: &mut Vec<u8>,
    stream: u32,
    data: &[u8],
    end_stream: bool,
    max_frame_size: u32,
) -> usize {
    debug_assert_ne!(stream, 0);
    let start = out.len();
    let mut chunks = data.chunks(chunk_size(max_frame_size)).peekable();
    if chunks.peek().is_none() {
        header(
            out,
            FrameType::Data,
            if end_stream { flags::END_STREAM } else { 0 },
            stream,
            0,
        );
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let f = if last && end_stream {
            flags::END_STREAM
        } else {
            0
        };
        header(out, FrameType::Data, f, stream, chunk.len());
        out.extend_from_slice(chunk);
    }
    out.len() - start
}
