//! HTTP/3 frames (RFC 9114 §7): the type and length header, borrowed views
//! of the payloads a server reads whole, the checks a frame allows alone,
//! and the frames a server emits. Where a frame may appear (request or
//! control stream, first or not) is the connection's to check.

use crate::error::{ErrorCode, H3Error};
use crate::settings::SettingsIter;
use crate::varint;

/// A frame type. Unknown and reserved (grease) types are kept so they can
/// be skipped (§9); the HTTP/2 types with no HTTP/3 meaning are told apart
/// because receiving one is an error (§7.2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    Data,
    Headers,
    CancelPush,
    Settings,
    PushPromise,
    GoAway,
    MaxPushId,
    /// 0x02, 0x06, 0x08, 0x09: PRIORITY, PING, WINDOW_UPDATE, CONTINUATION.
    ReservedHttp2(u8),
    Unknown(u64),
}

impl From<u64> for FrameType {
    fn from(kind: u64) -> Self {
        match kind {
            0x0 => Self::Data,
            0x1 => Self::Headers,
            0x3 => Self::CancelPush,
            0x4 => Self::Settings,
            0x5 => Self::PushPromise,
            0x7 => Self::GoAway,
            0xd => Self::MaxPushId,
            0x2 | 0x6 | 0x8 | 0x9 => Self::ReservedHttp2(kind as u8),
            other => Self::Unknown(other),
        }
    }
}

impl From<FrameType> for u64 {
    fn from(kind: FrameType) -> Self {
        match kind {
            FrameType::Data => 0x0,
            FrameType::Headers => 0x1,
            FrameType::CancelPush => 0x3,
            FrameType::Settings => 0x4,
            FrameType::PushPromise => 0x5,
            FrameType::GoAway => 0x7,
            FrameType::MaxPushId => 0xd,
            FrameType::ReservedHttp2(k) => u64::from(k),
            FrameType::Unknown(other) => other,
        }
    }
}

/// Whether `kind` is a reserved grease value (0x1f * N + 0x21, §7.2.8).
pub fn is_grease(kind: u64) -> bool {
    kind >= 0x21 && (kind - 0x21).is_multiple_of(0x1f)
}

/// The longest frame header: two 8-octet varints.
pub const MAX_HEADER_LEN: usize = 2 * varint::MAX_LEN;

/// A frame's type and payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameType,
    pub length: u64,
}

impl FrameHeader {
    /// Reads a header from the front of `buf`: `None` while truncated.
    pub fn parse(buf: &[u8]) -> Option<(Self, usize)> {
        let (kind, a) = varint::decode(buf)?;
        let (length, b) = varint::decode(&buf[a..])?;
        Some((
            Self {
                kind: kind.into(),
                length,
            },
            a + b,
        ))
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        varint::encode(self.kind.into(), out);
        varint::encode(self.length, out);
    }
}

/// A frame read whole; slices borrow the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Data(&'a [u8]),
    /// An encoded field section (QPACK).
    Headers(&'a [u8]),
    CancelPush(u64),
    Settings(SettingsIter<'a>),
    PushPromise {
        push_id: u64,
        fields: &'a [u8],
    },
    /// A stream id (from a server) or push id (from a client).
    GoAway(u64),
    MaxPushId(u64),
    ReservedHttp2(u8),
    Unknown {
        kind: u64,
        payload: &'a [u8],
    },
}

fn frame_error(reason: &'static str) -> H3Error {
    H3Error::connection(ErrorCode::FrameError, reason)
}

/// A payload that is exactly one varint (§7.1: extra or missing octets are
/// an H3_FRAME_ERROR).
fn single_varint(payload: &[u8], reason: &'static str) -> Result<u64, H3Error> {
    match varint::decode(payload) {
        Some((v, n)) if n == payload.len() => Ok(v),
        _ => Err(frame_error(reason)),
    }
}

/// Decodes a whole payload of type `kind`, with the checks it allows alone.
pub fn decode(kind: FrameType, payload: &[u8]) -> Result<Frame<'_>, H3Error> {
    Ok(match kind {
        FrameType::Data => Frame::Data(payload),
        FrameType::Headers => Frame::Headers(payload),
        FrameType::CancelPush => {
            Frame::CancelPush(single_varint(payload, "CANCEL_PUSH is not one varint")?)
        }
        FrameType::Settings => Frame::Settings(SettingsIter::new(payload)?),
        FrameType::PushPromise => {
            let (push_id, n) =
                varint::decode(payload).ok_or(frame_error("PUSH_PROMISE without a push id"))?;
            Frame::PushPromise {
                push_id,
                fields: &payload[n..],
            }
        }
        FrameType::GoAway => Frame::GoAway(single_varint(payload, "GOAWAY is not one varint")?),
        FrameType::MaxPushId => {
            Frame::MaxPushId(single_varint(payload, "MAX_PUSH_ID is not one varint")?)
        }
        FrameType::ReservedHttp2(k) => Frame::ReservedHttp2(k),
        FrameType::Unknown(kind) => Frame::Unknown { kind, payload },
    })
}

/// Parses one whole frame from the front of `buf`: `Ok(None)` until it is
/// all there, else the frame and the octets it took. A payload longer than
/// `max_payload` is refused as soon as its header arrives (H3_EXCESSIVE_LOAD)
/// so a peer cannot make us buffer it; the connection streams DATA and
/// unknown frames instead of calling this.
pub fn parse(buf: &[u8], max_payload: u64) -> Result<Option<(Frame<'_>, usize)>, H3Error> {
    let Some((header, n)) = FrameHeader::parse(buf) else {
        return Ok(None);
    };
    if header.length > max_payload {
        return Err(H3Error::connection(
            ErrorCode::ExcessiveLoad,
            "frame larger than the limit",
        ));
    }
    let end = n + header.length as usize;
    let Some(payload) = buf.get(n..end) else {
        return Ok(None);
    };
    Ok(Some((decode(header.kind, payload)?, end)))
}

/// Appends a DATA frame header for `len` payload octets (the payload is
/// written after it, so it need not be copied into a frame first).
pub fn emit_data_header(len: usize, out: &mut Vec<u8>) {
    FrameHeader {
        kind: FrameType::Data,
        length: len as u64,
    }
    .emit(out);
}

/// Appends a HEADERS frame holding `section`, an encoded field section.
pub fn emit_headers(section: &[u8], out: &mut Vec<u8>) {
    FrameHeader {
        kind: FrameType::Headers,
        length: section.len() as u64,
    }
    .emit(out);
    out.extend_from_slice(section);
}

/// Appends a GOAWAY frame (§5.2): from a server, the first client request
/// stream id it will not process.
pub fn emit_goaway(id: u64, out: &mut Vec<u8>) {
    FrameHeader {
        kind: FrameType::GoAway,
        length: varint::len(id) as u64,
    }
    .emit(out);
    varint::encode(id, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_types_round_trip_and_h2_types_are_reserved() {
        for kind in 0..=0x40u64 {
            assert_eq!(u64::from(FrameType::from(kind)), kind);
        }
        for k in [2u8, 6, 8, 9] {
            assert_eq!(FrameType::from(u64::from(k)), FrameType::ReservedHttp2(k));
        }
        assert!(is_grease(0x21) && is_grease(0x40) && is_grease(0x1f * 1000 + 0x21));
        assert!(!is_grease(0x20) && !is_grease(0x22) && !is_grease(0));
    }

    #[test]
    fn truncated_frame_waits_for_the_rest() {
        let mut out = Vec::new();
        emit_goaway(0x1234, &mut out);
        for n in 0..out.len() {
            assert_eq!(parse(&out[..n], 64), Ok(None), "{n} octets");
        }
        assert_eq!(
            parse(&out, 64),
            Ok(Some((Frame::GoAway(0x1234), out.len())))
        );
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        // HEADERS claiming 2^20 octets, none of them here yet.
        let mut out = Vec::new();
        FrameHeader {
            kind: FrameType::Headers,
            length: 1 << 20,
        }
        .emit(&mut out);
        let err = parse(&out, 16 * 1024).unwrap_err();
        assert_eq!(err.code, ErrorCode::ExcessiveLoad);
        assert!(err.is_connection_error());
    }

    #[test]
    fn single_varint_frames_with_extra_or_missing_octets_are_frame_errors() {
        for kind in [
            FrameType::GoAway,
            FrameType::MaxPushId,
            FrameType::CancelPush,
        ] {
            let err = decode(kind, &[0x04, 0x00]).unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::FrameError,
                "{kind:?} with an extra octet"
            );
            let err = decode(kind, &[0x40]).unwrap_err();
            assert_eq!(err.code, ErrorCode::FrameError, "{kind:?} truncated");
            let err = decode(kind, &[]).unwrap_err();
            assert_eq!(err.code, ErrorCode::FrameError, "{kind:?} empty");
        }
        assert_eq!(
            decode(FrameType::MaxPushId, &[0x07]),
            Ok(Frame::MaxPushId(7))
        );
    }

    #[test]
    fn unknown_and_grease_frames_are_views_to_skip() {
        let buf = [0x40, 0x21, 0x02, 0xaa, 0xbb, 0xff];
        let (frame, used) = parse(&buf, 64).unwrap().unwrap();
        assert_eq!(
            frame,
            Frame::Unknown {
                kind: 0x21,
                payload: &[0xaa, 0xbb]
            }
        );
        assert_eq!(used, 5);
    }

    proptest! {
        #[test]
        fn frame_header_round_trips(kind in 0..=crate::varint::MAX, length in 0..=crate::varint::MAX) {
            let h = FrameHeader { kind: kind.into(), length };
            let mut out = Vec::new();
            h.emit(&mut out);
            prop_assert_eq!(FrameHeader::parse(&out), Some((h, out.len())));
            for n in 0..out.len() {
                prop_assert_eq!(FrameHeader::parse(&out[..n]), None);
            }
        }

        #[test]
        fn data_and_headers_frames_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..300), headers: bool) {
            let mut out = Vec::new();
            if headers {
                emit_headers(&payload, &mut out);
            } else {
                emit_data_header(payload.len(), &mut out);
                out.extend_from_slice(&payload);
            }
            let (frame, used) = parse(&out, 1024).unwrap().unwrap();
            prop_assert_eq!(used, out.len());
            let expected = if headers { Frame::Headers(&payload) } else { Frame::Data(&payload) };
            prop_assert_eq!(frame, expected);
        }
    }
}
