//! Parser rules and emit round trips, one test per rule of RFC 9113 §4-6.

use crate::error::{ErrorCode, FrameError, Scope};
use crate::frame::{Frame, PrioritySpec, parse};
use crate::header::{FrameHeader, FrameType, HEADER_LEN, flags};
use crate::settings::{Setting, SettingId};
use crate::{PREFACE, check_preface, emit};

const MAX: u32 = 16_384;

/// A raw frame, so tests can build what the emitters never would.
fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
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

fn err(bytes: &[u8]) -> FrameError {
    parse(bytes, MAX).expect_err("frame should be refused")
}

fn one(bytes: &[u8]) -> Frame<'_> {
    let (frame, used) = parse(bytes, MAX).unwrap().expect("whole frame");
    assert_eq!(used, bytes.len());
    frame
}

fn conn(e: FrameError, code: ErrorCode) {
    assert_eq!((e.code, e.scope), (code, Scope::Connection), "{e}");
}

fn on_stream(e: FrameError, stream: u32, code: ErrorCode) {
    assert_eq!((e.code, e.scope), (code, Scope::Stream(stream)), "{e}");
}

use ErrorCode::{FlowControlError, FrameSizeError, ProtocolError};

#[test]
fn partial_input_returns_none() {
    let bytes = raw(0x0, flags::END_STREAM, 1, b"hello");
    for n in 0..bytes.len() {
        assert_eq!(parse(&bytes[..n], MAX), Ok(None), "at {n} octets");
    }
    assert!(parse(&bytes, MAX).unwrap().is_some());
}

#[test]
fn parse_consumes_one_frame_and_leaves_the_rest() {
    let mut bytes = raw(0x6, 0, 0, &[7; 8]);
    bytes.extend(raw(0x6, flags::ACK, 0, &[8; 8]));
    let (f, used) = parse(&bytes, MAX).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::Ping {
            ack: false,
            data: [7; 8]
        }
    );
    assert_eq!(
        one(&bytes[used..]),
        Frame::Ping {
            ack: true,
            data: [8; 8]
        }
    );
}

#[test]
fn frame_larger_than_max_frame_size_is_frame_size_error_before_the_payload_arrives() {
    let bytes = raw(0x0, 0, 1, &vec![0; MAX as usize + 1]);
    conn(err(&bytes[..HEADER_LEN]), FrameSizeError);
    assert!(
        parse(&raw(0x0, 0, 1, &vec![0; MAX as usize]), MAX)
            .unwrap()
            .is_some()
    );
    // A larger advertised limit admits it.
    assert!(parse(&bytes, MAX + 1).unwrap().is_some());
}

#[test]
fn stream_frames_on_stream_0_are_protocol_errors() {
    for (kind, payload) in [
        (0x0, &[][..]),
        (0x1, &[]),
        (0x2, &[0, 0, 0, 1, 16]),
        (0x3, &[0, 0, 0, 8]),
        (0x5, &[0, 0, 0, 2]),
        (0x9, &[]),
    ] {
        conn(err(&raw(kind, 0, 0, payload)), ProtocolError);
    }
}

#[test]
fn connection_frames_on_a_stream_are_protocol_errors() {
    conn(err(&raw(0x4, 0, 1, &[])), ProtocolError);
    conn(err(&raw(0x6, 0, 1, &[0; 8])), ProtocolError);
    conn(err(&raw(0x7, 0, 1, &[0; 8])), ProtocolError);
}

#[test]
fn data_padding_is_removed() {
    let bytes = raw(
        0x0,
        flags::PADDED | flags::END_STREAM,
        3,
        &[2, b'a', b'b', 0, 0],
    );
    assert_eq!(
        one(&bytes),
        Frame::Data {
            stream: 3,
            end_stream: true,
            data: b"ab"
        }
    );
    // Padding of length 0 and an empty body are fine.
    assert_eq!(
        one(&raw(0x0, flags::PADDED, 3, &[0])),
        Frame::Data {
            stream: 3,
            end_stream: false,
            data: b""
        }
    );
    assert_eq!(
        one(&raw(0x0, flags::PADDED, 3, &[1, 0])),
        Frame::Data {
            stream: 3,
            end_stream: false,
            data: b""
        }
    );
}

#[test]
fn padding_length_at_or_over_payload_is_protocol_error() {
    conn(err(&raw(0x0, flags::PADDED, 1, &[1])), ProtocolError);
    conn(err(&raw(0x0, flags::PADDED, 1, &[5, 0, 0])), ProtocolError);
    conn(err(&raw(0x1, flags::PADDED, 1, &[3, 0, 0])), ProtocolError);
    // Padding that eats into HEADERS' priority fields.
    let mut p = vec![1, 0, 0, 0, 0, 16];
    conn(
        err(&raw(0x1, flags::PADDED | flags::PRIORITY, 1, &p)),
        ProtocolError,
    );
    p.push(0);
    assert!(parse(&raw(0x1, flags::PADDED | flags::PRIORITY, 1, &p), MAX).is_ok());
}

#[test]
fn padded_flag_without_pad_length_octet_is_frame_size_error() {
    conn(err(&raw(0x0, flags::PADDED, 1, &[])), FrameSizeError);
    conn(err(&raw(0x1, flags::PADDED, 1, &[])), FrameSizeError);
}

#[test]
fn headers_with_padding_and_priority() {
    let payload = [1, 0x80, 0, 0, 3, 255, b'h', b'b', 0];
    let bytes = raw(
        0x1,
        flags::PADDED | flags::PRIORITY | flags::END_HEADERS,
        5,
        &payload,
    );
    let f = one(&bytes);
    assert_eq!(
        f,
        Frame::Headers {
            stream: 5,
            end_stream: false,
            end_headers: true,
            priority: Some(PrioritySpec {
                exclusive: true,
                dependency: 3,
                weight: 255
            }),
            fragment: b"hb",
        }
    );
}

#[test]
fn headers_too_short_for_priority_is_frame_size_error() {
    conn(
        err(&raw(0x1, flags::PRIORITY, 1, &[0, 0, 0, 0])),
        FrameSizeError,
    );
}

#[test]
fn headers_depending_on_itself_parses_so_hpack_stays_in_step() {
    // The block must still be decoded; the connection then resets the stream.
    let bytes = raw(0x1, flags::PRIORITY, 7, &[0, 0, 0, 7, 0, b'x']);
    let Frame::Headers {
        priority: Some(p),
        fragment: b"x",
        ..
    } = one(&bytes)
    else {
        panic!()
    };
    on_stream(p.check(7).unwrap_err(), 7, ProtocolError);
}

#[test]
fn priority_depending_on_itself_is_stream_protocol_error() {
    on_stream(err(&raw(0x2, 0, 9, &[0x80, 0, 0, 9, 0])), 9, ProtocolError);
    let bytes = raw(0x2, 0, 9, &[0, 0, 0, 1, 15]);
    let ok = one(&bytes);
    assert_eq!(
        ok,
        Frame::Priority {
            stream: 9,
            priority: PrioritySpec {
                exclusive: false,
                dependency: 1,
                weight: 15
            }
        }
    );
}

#[test]
fn priority_length_not_5_is_stream_frame_size_error() {
    on_stream(err(&raw(0x2, 0, 3, &[0; 4])), 3, FrameSizeError);
    on_stream(err(&raw(0x2, 0, 3, &[0; 6])), 3, FrameSizeError);
}

#[test]
fn rst_stream_length_not_4_is_frame_size_error() {
    conn(err(&raw(0x3, 0, 1, &[0; 3])), FrameSizeError);
    conn(err(&raw(0x3, 0, 1, &[0; 5])), FrameSizeError);
    assert_eq!(
        one(&raw(0x3, 0, 1, &[0, 0, 0, 0x8])),
        Frame::RstStream {
            stream: 1,
            code: ErrorCode::Cancel
        }
    );
}

#[test]
fn settings_ack_with_payload_is_frame_size_error() {
    conn(
        err(&raw(0x4, flags::ACK, 0, &[0, 3, 0, 0, 0, 1])),
        FrameSizeError,
    );
}

#[test]
fn settings_length_not_multiple_of_6_is_frame_size_error() {
    conn(err(&raw(0x4, 0, 0, &[0; 5])), FrameSizeError);
    conn(err(&raw(0x4, 0, 0, &[0; 7])), FrameSizeError);
}

fn setting(id: u16, value: u32) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend(value.to_be_bytes());
    raw(0x4, 0, 0, &p)
}

#[test]
fn settings_enable_push_not_0_or_1_is_protocol_error() {
    conn(err(&setting(0x2, 2)), ProtocolError);
    assert!(parse(&setting(0x2, 0), MAX).is_ok());
    assert!(parse(&setting(0x2, 1), MAX).is_ok());
}

#[test]
fn settings_initial_window_size_over_2_31_minus_1_is_flow_control_error() {
    conn(err(&setting(0x4, 1 << 31)), FlowControlError);
    assert!(parse(&setting(0x4, (1 << 31) - 1), MAX).is_ok());
}

#[test]
fn settings_max_frame_size_out_of_range_is_protocol_error() {
    conn(err(&setting(0x5, 16_383)), ProtocolError);
    conn(err(&setting(0x5, 16_777_216)), ProtocolError);
    assert!(parse(&setting(0x5, 16_384), MAX).is_ok());
    assert!(parse(&setting(0x5, 16_777_215), MAX).is_ok());
}

#[test]
fn settings_unknown_ids_and_unchecked_values_pass() {
    let mut payload = Vec::new();
    for (id, v) in [(0x1u16, u32::MAX), (0x3, 0), (0x6, u32::MAX), (0xff, 42)] {
        payload.extend(id.to_be_bytes());
        payload.extend(v.to_be_bytes());
    }
    let bytes = raw(0x4, 0, 0, &payload);
    let Frame::Settings { ack: false, params } = one(&bytes) else {
        panic!()
    };
    assert_eq!(params.len(), 4);
    assert_eq!(
        params.last(),
        Some(Setting {
            id: SettingId::Unknown(0xff),
            value: 42
        })
    );
}

#[test]
fn ping_length_not_8_is_frame_size_error() {
    conn(err(&raw(0x6, 0, 0, &[0; 7])), FrameSizeError);
    conn(err(&raw(0x6, flags::ACK, 0, &[0; 9])), FrameSizeError);
}

#[test]
fn goaway_shorter_than_8_is_frame_size_error() {
    conn(err(&raw(0x7, 0, 0, &[0; 7])), FrameSizeError);
}

#[test]
fn goaway_reserved_bit_of_last_stream_is_ignored() {
    let bytes = raw(0x7, 0, 0, &[0x80, 0, 0, 5, 0, 0, 0, 0x0b, b'x']);
    let f = one(&bytes);
    assert_eq!(
        f,
        Frame::GoAway {
            last_stream: 5,
            code: ErrorCode::EnhanceYourCalm,
            debug: b"x"
        }
    );
}

#[test]
fn window_update_length_not_4_is_frame_size_error() {
    conn(err(&raw(0x8, 0, 1, &[0, 0, 1])), FrameSizeError);
    conn(err(&raw(0x8, 0, 0, &[0, 0, 0, 0, 1])), FrameSizeError);
}

#[test]
fn window_update_increment_0_is_stream_error_on_a_stream() {
    on_stream(err(&raw(0x8, 0, 5, &[0; 4])), 5, ProtocolError);
    // The reserved bit does not count towards the increment.
    on_stream(err(&raw(0x8, 0, 5, &[0x80, 0, 0, 0])), 5, ProtocolError);
}

#[test]
fn window_update_increment_0_is_connection_error_on_stream_0() {
    conn(err(&raw(0x8, 0, 0, &[0; 4])), ProtocolError);
}

#[test]
fn push_promise_from_a_client_is_protocol_error() {
    let bytes = raw(0x5, flags::END_HEADERS, 1, &[0, 0, 0, 2, b'h']);
    conn(err(&bytes), ProtocolError);
    // The role-agnostic decoder still reads it.
    let header = FrameHeader::parse(&bytes).unwrap();
    let f = crate::decode(&header, &bytes[HEADER_LEN..]).unwrap();
    assert_eq!(
        f,
        Frame::PushPromise {
            stream: 1,
            end_headers: true,
            promised: 2,
            fragment: b"h"
        }
    );
}

#[test]
fn push_promise_too_short_for_promised_id_is_frame_size_error() {
    let bytes = raw(0x5, 0, 1, &[0, 0, 2]);
    let header = FrameHeader::parse(&bytes).unwrap();
    conn(
        crate::decode(&header, &bytes[HEADER_LEN..]).unwrap_err(),
        FrameSizeError,
    );
}

#[test]
fn continuation_carries_its_fragment() {
    let bytes = raw(0x9, flags::END_HEADERS | flags::PADDED, 3, b"abc");
    let f = one(&bytes);
    // CONTINUATION has no padding: PADDED is an undefined flag here, ignored.
    assert_eq!(
        f,
        Frame::Continuation {
            stream: 3,
            end_headers: true,
            fragment: b"abc"
        }
    );
}

#[test]
fn unknown_types_are_returned_to_be_skipped() {
    let mut bytes = raw(0xfa, 0xff, 0, b"whatever");
    bytes.extend(settings_ack_bytes());
    let (f, used) = parse(&bytes, MAX).unwrap().unwrap();
    assert_eq!(
        f,
        Frame::Unknown {
            kind: 0xfa,
            flags: 0xff,
            stream: 0,
            payload: b"whatever"
        }
    );
    assert!(matches!(
        one(&bytes[used..]),
        Frame::Settings { ack: true, .. }
    ));
}

#[test]
fn stream_error_leaves_frame_len_to_skip() {
    let mut bytes = raw(0x2, 0, 3, &[0; 4]);
    let first = bytes.len();
    bytes.extend(settings_ack_bytes());
    assert!(!err(&bytes).is_connection_error());
    assert_eq!(crate::frame_len(&bytes), Some(first));
    assert!(matches!(
        one(&bytes[first..]),
        Frame::Settings { ack: true, .. }
    ));
}

fn settings_ack_bytes() -> Vec<u8> {
    let mut v = Vec::new();
    emit::settings_ack(&mut v);
    v
}

#[test]
fn preface_is_checked_by_prefix() {
    assert_eq!(check_preface(b""), Ok(None));
    assert_eq!(check_preface(&PREFACE[..10]), Ok(None));
    assert_eq!(check_preface(PREFACE), Ok(Some(24)));
    let mut more = PREFACE.to_vec();
    more.extend(settings_ack_bytes());
    assert_eq!(check_preface(&more), Ok(Some(24)));
    conn(
        check_preface(b"GET / HTTP/1.1\r\n").unwrap_err(),
        ProtocolError,
    );
    conn(
        check_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r").unwrap_err(),
        ProtocolError,
    );
}

// Emit round trips: every emitted frame parses back to what was emitted.

fn emitted(f: impl FnOnce(&mut Vec<u8>) -> usize) -> Vec<u8> {
    let mut out = b"prefix".to_vec();
    let n = f(&mut out);
    assert_eq!(n, out.len() - 6, "returned length is what was appended");
    out.split_off(6)
}

/// Parses every frame in `bytes`.
fn all(bytes: &[u8], max: u32) -> Vec<Frame<'_>> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (f, used) = parse(&bytes[at..], max).unwrap().unwrap();
        frames.push(f);
        at += used;
    }
    frames
}

#[test]
fn emit_settings_round_trips() {
    let params = [
        (SettingId::MaxConcurrentStreams, 100),
        (SettingId::InitialWindowSize, 65_535),
        (SettingId::EnablePush, 0),
    ];
    let bytes = emitted(|o| emit::settings(o, &params));
    let Frame::Settings {
        ack: false,
        params: got,
    } = one(&bytes)
    else {
        panic!()
    };
    let got: Vec<_> = got.map(|s| (s.id, s.value)).collect();
    assert_eq!(got, params);
}

#[test]
fn emit_settings_ack_round_trips() {
    let bytes = emitted(emit::settings_ack);
    let Frame::Settings { ack: true, params } = one(&bytes) else {
        panic!()
    };
    assert!(params.is_empty());
}

#[test]
fn emit_ping_ack_round_trips() {
    let bytes = emitted(|o| emit::ping(o, true, *b"12345678"));
    assert_eq!(
        one(&bytes),
        Frame::Ping {
            ack: true,
            data: *b"12345678"
        }
    );
}

#[test]
fn emit_goaway_round_trips() {
    let bytes = emitted(|o| emit::goaway(o, 41, ErrorCode::ProtocolError, b"bad"));
    assert_eq!(
        one(&bytes),
        Frame::GoAway {
            last_stream: 41,
            code: ProtocolError,
            debug: b"bad"
        }
    );
}

#[test]
fn emit_rst_stream_round_trips() {
    let bytes = emitted(|o| emit::rst_stream(o, 3, ErrorCode::Unknown(0x99)));
    assert_eq!(
        one(&bytes),
        Frame::RstStream {
            stream: 3,
            code: ErrorCode::Unknown(0x99)
        }
    );
}

#[test]
fn emit_window_update_round_trips() {
    for stream in [0, 7] {
        let bytes = emitted(|o| emit::window_update(o, stream, (1 << 31) - 1));
        assert_eq!(
            one(&bytes),
            Frame::WindowUpdate {
                stream,
                increment: (1 << 31) - 1
            }
        );
    }
}

#[test]
fn emit_headers_fits_one_frame() {
    let bytes = emitted(|o| emit::headers(o, 1, b"block", true, MAX));
    assert_eq!(
        one(&bytes),
        Frame::Headers {
            stream: 1,
            end_stream: true,
            end_headers: true,
            priority: None,
            fragment: b"block"
        }
    );
}

#[test]
fn emit_headers_splits_into_continuation_by_max_frame_size() {
    let block: Vec<u8> = (0..=255).cycle().take(40_000).collect();
    let bytes = emitted(|o| emit::headers(o, 5, &block, false, MAX));
    let frames = all(&bytes, MAX);
    assert_eq!(frames.len(), 3);
    let mut joined = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let last = i == frames.len() - 1;
        match (i, f) {
            (
                0,
                Frame::Headers {
                    stream: 5,
                    end_stream: false,
                    end_headers,
                    fragment,
                    ..
                },
            ) => {
                assert_eq!(*end_headers, last);
                assert_eq!(fragment.len(), MAX as usize);
                joined.extend_from_slice(fragment);
            }
            (
                _,
                Frame::Continuation {
                    stream: 5,
                    end_headers,
                    fragment,
                },
            ) if i > 0 => {
                assert_eq!(*end_headers, last);
                joined.extend_from_slice(fragment);
            }
            _ => panic!("unexpected {f:?}"),
        }
    }
    assert_eq!(joined, block);
}

#[test]
fn emit_headers_empty_block_is_one_headers_frame() {
    let bytes = emitted(|o| emit::headers(o, 1, b"", false, MAX));
    assert_eq!(
        one(&bytes),
        Frame::Headers {
            stream: 1,
            end_stream: false,
            end_headers: true,
            priority: None,
            fragment: b""
        }
    );
}

#[test]
fn emit_data_round_trips_and_splits() {
    let bytes = emitted(|o| emit::data(o, 3, b"hello world", true, 4));
    let frames = all(&bytes, MAX);
    let want: [&[u8]; 3] = [b"hell", b"o wo", b"rld"];
    assert_eq!(frames.len(), 3);
    for (i, (f, w)) in frames.iter().zip(want).enumerate() {
        assert_eq!(
            *f,
            Frame::Data {
                stream: 3,
                end_stream: i == 2,
                data: w
            }
        );
    }
}

#[test]
fn emit_data_empty_still_carries_end_stream() {
    let bytes = emitted(|o| emit::data(o, 3, b"", true, MAX));
    assert_eq!(
        one(&bytes),
        Frame::Data {
            stream: 3,
            end_stream: true,
            data: b""
        }
    );
}

#[test]
fn frame_type_of_emitted_header_is_right() {
    let bytes = emitted(|o| emit::window_update(o, 1, 1));
    assert_eq!(
        FrameHeader::parse(&bytes).unwrap().kind,
        FrameType::WindowUpdate
    );
}
