//! The connection driven with stream bytes as a QUIC endpoint would feed them.

use super::*;
use crate::frame::{
    Frame, FrameHeader, FrameType, emit_data_header, emit_goaway, emit_headers, parse,
};
use crate::qpack::encoder::encode_field;
use crate::qpack::{decode_section, prefix::encode_int};
use crate::varint;

const CONTROL: u64 = 2;
const ENCODER: u64 = 6;

fn section(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![0, 0];
    for (n, v) in fields {
        encode_field(n.as_bytes(), v.as_bytes(), &mut out);
    }
    out
}

fn headers(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    emit_headers(&section(fields), &mut out);
    out
}

fn data(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    emit_data_header(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

fn raw_frame(kind: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    FrameHeader {
        kind: kind.into(),
        length: payload.len() as u64,
    }
    .emit(&mut out);
    out.extend_from_slice(payload);
    out
}

fn get(path: &str) -> Vec<u8> {
    headers(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "example.com"),
        (":path", path),
    ])
}

/// A client control stream's opening: type 0x00 and an empty SETTINGS.
fn control_open() -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(raw_frame(0x04, &[]));
    out
}

fn conn() -> H3Conn {
    let mut c = H3Conn::new(Config::default());
    c.handle_uni_stream(CONTROL, &control_open(), false);
    c
}

fn events(c: &mut H3Conn) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn connection_error(c: &mut H3Conn) -> ErrorCode {
    match events(c).pop() {
        Some(Event::ConnectionError { code, .. }) => code,
        other => panic!("expected a connection error, got {other:?}"),
    }
}

fn stream_error(c: &mut H3Conn) -> (u64, ErrorCode, &'static str) {
    match events(c).pop() {
        Some(Event::StreamError {
            stream,
            code,
            reason,
        }) => (stream, code, reason),
        other => panic!("expected a stream error, got {other:?}"),
    }
}

/// Every frame queued on a stream, with whether FIN follows, drained.
fn take_frames(c: &mut H3Conn, to: SendStream) -> (Vec<(FrameType, Vec<u8>)>, bool) {
    let (bytes, fin) = c.pending_output(to);
    let mut buf = bytes.to_vec();
    let n = buf.len();
    c.consume_output(to, n);
    if to == SendStream::Control {
        // The stream type first.
        let (_, used) = varint::decode(&buf).unwrap();
        buf.drain(..used);
    }
    let mut frames = Vec::new();
    let mut rest = &buf[..];
    while !rest.is_empty() {
        let (h, n) = FrameHeader::parse(rest).unwrap();
        let end = n + h.length as usize;
        frames.push((h.kind, rest[n..end].to_vec()));
        rest = &rest[end..];
    }
    (frames, fin)
}

#[test]
fn server_control_stream_opens_with_settings_of_a_zero_table() {
    let c = H3Conn::new(Config::default());
    let (bytes, fin) = c.pending_output(SendStream::Control);
    assert!(!fin);
    assert_eq!(bytes[0], 0x00, "control stream type");
    let (frame, _) = parse(&bytes[1..], 1024).unwrap().unwrap();
    let Frame::Settings(params) = frame else {
        panic!("{frame:?}")
    };
    let s = PeerSettings::from_frame(params).unwrap();
    assert_eq!(s.qpack_max_table_capacity, 0);
    assert_eq!(s.qpack_blocked_streams, 0);
    assert_eq!(s.max_field_section_size, Some(16 * 1024));
}

#[test]
fn get_request_gives_head_and_end_and_the_response_is_framed() {
    let mut c = conn();
    c.handle_stream_data(0, &get("/index.html"), true);
    let ev = events(&mut c);
    let Event::RequestHead { stream: 0, request } = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(request.method, b"GET");
    assert_eq!(request.path.as_deref(), Some(&b"/index.html"[..]));
    assert_eq!(request.authority, b"example.com");
    assert_eq!(ev[1], Event::RequestEnd { stream: 0 });
    assert_eq!(ev.len(), 2);

    c.send_response_head(0, 200, &[(b"content-type", b"text/plain")])
        .unwrap();
    c.send_data(0, b"hello").unwrap();
    c.finish(0).unwrap();
    let pending: Vec<_> = c.pending_streams().collect();
    assert!(pending.contains(&SendStream::Request(0)), "{pending:?}");
    let (frames, fin) = take_frames(&mut c, SendStream::Request(0));
    assert!(fin);
    assert_eq!(frames[0].0, FrameType::Headers);
    let fields = decode_section(&frames[0].1, 1 << 20).unwrap();
    assert_eq!(fields[0], Field::new(":status", "200"));
    assert_eq!(frames[1], (FrameType::Data, b"hello".to_vec()));
    assert_eq!(c.open_requests(), 0, "both sides done: forgotten");
    assert_eq!(c.stats().requests, 1);
}

#[test]
fn request_fed_one_octet_at_a_time_is_the_same_request() {
    let mut whole = conn();
    let mut bytes = get("/a");
    bytes.extend(raw_frame(0x21, b"grease"));
    bytes.extend(data(b"body"));
    whole.handle_stream_data(0, &bytes, true);
    let want = events(&mut whole);

    let mut c = H3Conn::new(Config::default());
    for b in control_open() {
        c.handle_uni_stream(CONTROL, &[b], false);
    }
    for (i, b) in bytes.iter().enumerate() {
        c.handle_stream_data(0, std::slice::from_ref(b), i + 1 == bytes.len());
    }
    let got = events(&mut c);
    assert_eq!(got, want);
    assert_eq!(c.request_body(0).unwrap(), b"body");
}

#[test]
fn body_with_unknown_frames_between_and_trailers() {
    let mut c = conn();
    let mut bytes = headers(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "example.com"),
        (":path", "/upload"),
        ("content-length", "6"),
    ]);
    bytes.extend(data(b"abc"));
    bytes.extend(raw_frame(0x40, &[1, 2, 3]));
    bytes.extend(data(b""));
    bytes.extend(data(b"def"));
    bytes.extend(headers(&[("x-checksum", "1234")]));
    c.handle_stream_data(0, &bytes, true);
    let ev = events(&mut c);
    assert!(matches!(ev[0], Event::RequestHead { stream: 0, .. }));
    assert_eq!(ev[1], Event::RequestData { stream: 0 }, "coalesced");
    assert_eq!(
        ev[2],
        Event::RequestTrailers {
            stream: 0,
            fields: vec![Field::new("x-checksum", "1234")]
        }
    );
    assert_eq!(ev[3], Event::RequestEnd { stream: 0 });
    assert_eq!(c.request_body(0).unwrap(), b"abcdef");
    assert_eq!(c.stats().frames_skipped, 1);
}

#[test]
fn content_length_mismatch_is_a_message_error() {
    for body in [&b"abc"[..], b"abcdefgh"] {
        let mut c = conn();
        let mut bytes = headers(&[
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "a"),
            (":path", "/"),
            ("content-length", "5"),
        ]);
        bytes.extend(data(body));
        c.handle_stream_data(0, &bytes, true);
        assert_eq!(stream_error(&mut c).1, ErrorCode::MessageError);
    }
}

#[test]
fn bad_pseudo_headers_are_message_errors_and_the_connection_goes_on() {
    let cases: [&[(&str, &str)]; 8] = [
        &[(":scheme", "https"), (":authority", "a"), (":path", "/")],
        &[(":method", "GET"), (":authority", "a"), (":path", "/")],
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "a"),
            (":path", ""),
        ],
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "a"),
            (":path", "/"),
            ("X-Upper", "1"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "a"),
            (":path", "/"),
            ("connection", "close"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "https"),
            ("accept", "*/*"),
            (":authority", "a"),
            (":path", "/"),
        ],
        &[
            (":method", "CONNECT"),
            (":authority", "a:443"),
            (":path", "/"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/"),
            (":status", "200"),
        ],
    ];
    for (i, fields) in cases.iter().enumerate() {
        let mut c = conn();
        c.handle_stream_data(0, &headers(fields), true);
        let (stream, code, reason) = stream_error(&mut c);
        assert_eq!(
            (stream, code),
            (0, ErrorCode::MessageError),
            "case {i}: {reason}"
        );
        c.handle_stream_data(4, &get("/next"), true);
        assert!(
            matches!(events(&mut c)[0], Event::RequestHead { stream: 4, .. }),
            "case {i}"
        );
    }
    // CONNECT with only :method and :authority is well-formed.
    let mut c = conn();
    c.handle_stream_data(
        0,
        &headers(&[(":method", "CONNECT"), (":authority", "a:443")]),
        false,
    );
    assert!(matches!(
        events(&mut c)[0],
        Event::RequestHead { stream: 0, .. }
    ));
}

#[test]
fn dynamic_table_reference_is_a_decompression_failure() {
    let mut c = conn();
    // Indexed field line, dynamic (T=0), relative index 0.
    let mut bytes = Vec::new();
    emit_headers(&[0, 0, 0x80], &mut bytes);
    c.handle_stream_data(0, &bytes, true);
    assert_eq!(
        connection_error(&mut c),
        ErrorCode::QpackDecompressionFailed
    );
    // Nothing is taken after a connection error.
    c.handle_stream_data(4, &get("/"), true);
    assert!(events(&mut c).is_empty());
}

fn assert_431(c: &mut H3Conn, stream: u64) {
    assert_eq!(events(c), [Event::HeadTooLarge { stream }]);
    let (frames, fin) = take_frames(c, SendStream::Request(stream));
    assert!(fin);
    let fields = decode_section(&frames[0].1, 1 << 20).unwrap();
    assert_eq!(fields, [Field::new(":status", "431")]);
}

#[test]
fn stopping_a_refused_stream_releases_its_request_slot() {
    let mut c = H3Conn::new(Config {
        max_field_section_size: 200,
        max_concurrent_requests: 1,
        ..Config::default()
    });
    let big = "x".repeat(300);
    // The QUIC layer stops reading after the 431, so no FIN is ever fed.
    c.handle_stream_data(0, &get(&format!("/{big}"))[..10], false);
    assert_431(&mut c, 0);
    assert_eq!(c.open_requests(), 1, "still waiting for a FIN");
    c.stop_receiving(0);
    assert_eq!(c.open_requests(), 0);
    c.handle_stream_data(4, &get("/"), true);
    assert!(matches!(
        events(&mut c)[..],
        [
            Event::RequestHead { stream: 4, .. },
            Event::RequestEnd { stream: 4 }
        ]
    ));
}

#[test]
fn stop_receiving_drops_the_body_and_waits_for_the_response() {
    let mut c = conn();
    c.handle_stream_data(0, &get("/"), false);
    c.handle_stream_data(0, &data(b"unwanted"), false);
    events(&mut c);
    c.stop_receiving(0);
    assert_eq!(c.request_body(0).map(|b| b.len()), Some(0));
    // Still open: the response goes out, then the stream is forgotten.
    c.send_response_head(0, 204, &[]).unwrap();
    c.finish(0).unwrap();
    take_frames(&mut c, SendStream::Request(0));
    assert_eq!(c.open_requests(), 0);
    c.handle_stream_data(0, &data(b"late"), true);
    assert!(events(&mut c).is_empty());
}

#[test]
fn head_past_the_limit_gets_431_whether_seen_in_the_frame_or_decoded() {
    let config = Config {
        max_field_section_size: 200,
        ..Config::default()
    };
    // The HEADERS frame alone is past the limit: refused unread.
    let mut c = H3Conn::new(config.clone());
    let big = "x".repeat(300);
    let mut bytes = get(&format!("/{big}"));
    bytes.extend(data(b"ignored"));
    c.handle_stream_data(0, &bytes[..10], false);
    assert_431(&mut c, 0);
    c.handle_stream_data(0, &bytes[10..], true);
    assert!(events(&mut c).is_empty(), "the rest is dropped");
    assert_eq!(c.open_requests(), 0);

    // A small frame that decodes past the limit (indexed fields cost 32+).
    let mut c = H3Conn::new(config);
    let mut fields = vec![
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "a"),
        (":path", "/"),
    ];
    fields.extend([("accept", "*/*"); 4]);
    let bytes = headers(&fields);
    assert!(bytes.len() < 200);
    c.handle_stream_data(0, &bytes, true);
    assert_431(&mut c, 0);
    assert_eq!(c.stats().heads_too_large, 1);
}

#[test]
fn data_before_headers_and_frames_after_trailers_are_unexpected() {
    let mut c = conn();
    c.handle_stream_data(0, &data(b"x"), false);
    assert_eq!(connection_error(&mut c), ErrorCode::FrameUnexpected);

    let mut c = conn();
    let mut bytes = get("/");
    bytes.extend(headers(&[("x-t", "1")]));
    bytes.extend(data(b"x"));
    c.handle_stream_data(0, &bytes, false);
    assert_eq!(connection_error(&mut c), ErrorCode::FrameUnexpected);
}

#[test]
fn control_push_and_http2_frames_on_a_request_stream_are_unexpected() {
    // SETTINGS, GOAWAY, MAX_PUSH_ID, CANCEL_PUSH, PUSH_PROMISE, and HTTP/2's
    // PRIORITY, PING, WINDOW_UPDATE, CONTINUATION.
    for kind in [0x4, 0x7, 0xd, 0x3, 0x5, 0x2, 0x6, 0x8, 0x9] {
        let mut c = conn();
        let mut bytes = get("/");
        bytes.extend(raw_frame(kind, &[0]));
        c.handle_stream_data(0, &bytes, false);
        assert_eq!(
            connection_error(&mut c),
            ErrorCode::FrameUnexpected,
            "{kind:#x}"
        );
    }
}

#[test]
fn stream_ending_inside_a_frame_is_a_frame_error() {
    let bytes = get("/");
    // Inside the header, inside the HEADERS payload, inside a DATA payload.
    let mut with_data = bytes.clone();
    with_data.extend(&data(b"abcdef")[..4]);
    for cut in [&bytes[..1], &bytes[..bytes.len() - 1], &with_data] {
        let mut c = conn();
        c.handle_stream_data(0, cut, true);
        assert_eq!(connection_error(&mut c), ErrorCode::FrameError);
    }
}

#[test]
fn stream_ending_without_headers_is_request_incomplete() {
    let mut c = conn();
    c.handle_stream_data(0, &raw_frame(0x21, b""), true);
    assert_eq!(
        stream_error(&mut c),
        (
            0,
            ErrorCode::RequestIncomplete,
            "request stream ends without HEADERS"
        )
    );
}

#[test]
fn frames_without_body_past_the_limit_are_excessive_load() {
    let mut c = H3Conn::new(Config {
        max_frames_per_stream: 8,
        ..Config::default()
    });
    let mut bytes = get("/");
    for _ in 0..7 {
        bytes.extend(data(b""));
    }
    c.handle_stream_data(0, &bytes, false);
    assert!(matches!(events(&mut c)[..], [Event::RequestHead { .. }]));
    c.handle_stream_data(0, &raw_frame(0x21, b""), false);
    assert_eq!(connection_error(&mut c), ErrorCode::ExcessiveLoad);
}

#[test]
fn control_stream_must_open_with_settings_once() {
    let mut c = H3Conn::new(Config::default());
    let mut bytes = vec![0x00];
    emit_goaway(0, &mut bytes);
    c.handle_uni_stream(CONTROL, &bytes, false);
    assert_eq!(connection_error(&mut c), ErrorCode::MissingSettings);

    let mut c = conn();
    c.handle_uni_stream(CONTROL, &raw_frame(0x04, &[]), false);
    assert_eq!(connection_error(&mut c), ErrorCode::FrameUnexpected);
}

#[test]
fn bad_settings_on_the_control_stream_end_the_connection() {
    for payload in [
        &[0x06, 0x01, 0x06, 0x02][..],
        &[0x02, 0x00],
        &[0x05, 0x40, 0x00],
    ] {
        let mut c = H3Conn::new(Config::default());
        let mut bytes = vec![0x00];
        bytes.extend(raw_frame(0x04, payload));
        c.handle_uni_stream(CONTROL, &bytes, false);
        assert_eq!(
            connection_error(&mut c),
            ErrorCode::SettingsError,
            "{payload:?}"
        );
    }
    // A parameter cut short inside the frame.
    let mut c = H3Conn::new(Config::default());
    let mut bytes = vec![0x00];
    bytes.extend(raw_frame(0x04, &[0x06]));
    c.handle_uni_stream(CONTROL, &bytes, false);
    assert_eq!(connection_error(&mut c), ErrorCode::FrameError);
}

#[test]
fn peer_settings_are_recorded() {
    let mut c = H3Conn::new(Config::default());
    let mut bytes = vec![0x00];
    bytes.extend(raw_frame(0x04, &[0x06, 0x44, 0x00, 0x21, 0x00]));
    c.handle_uni_stream(CONTROL, &bytes, false);
    assert!(events(&mut c).is_empty());
    assert_eq!(
        c.peer_settings().unwrap().max_field_section_size,
        Some(0x400)
    );
}

#[test]
fn oversized_control_frame_is_excessive_load() {
    let mut c = conn();
    let mut bytes = Vec::new();
    FrameHeader {
        kind: FrameType::GoAway,
        length: 1 << 20,
    }
    .emit(&mut bytes);
    c.handle_uni_stream(CONTROL, &bytes, false);
    assert_eq!(connection_error(&mut c), ErrorCode::ExcessiveLoad);
}

#[test]
fn push_ids_from_the_client_follow_the_id_rules() {
    let mut c = conn();
    c.handle_uni_stream(CONTROL, &raw_frame(0xd, &[10]), false);
    c.handle_uni_stream(CONTROL, &raw_frame(0x7, &[5]), false);
    c.handle_uni_stream(CONTROL, &raw_frame(0x7, &[5]), false);
    assert!(events(&mut c).is_empty());
    c.handle_uni_stream(CONTROL, &raw_frame(0xd, &[9]), false);
    assert_eq!(connection_error(&mut c), ErrorCode::IdError);

    let mut c = conn();
    c.handle_uni_stream(CONTROL, &raw_frame(0x7, &[5]), false);
    c.handle_uni_stream(CONTROL, &raw_frame(0x7, &[6]), false);
    assert_eq!(
        connection_error(&mut c),
        ErrorCode::IdError,
        "GOAWAY id increased"
    );

    let mut c = conn();
    c.handle_uni_stream(CONTROL, &raw_frame(0x3, &[0]), false);
    assert_eq!(
        connection_error(&mut c),
        ErrorCode::IdError,
        "CANCEL_PUSH never promised"
    );
}

#[test]
fn request_and_data_frames_on_the_control_stream_are_unexpected() {
    for kind in [0x0, 0x1, 0x5, 0x2, 0x6, 0x8, 0x9] {
        let mut c = conn();
        c.handle_uni_stream(CONTROL, &raw_frame(kind, &[0]), false);
        assert_eq!(
            connection_error(&mut c),
            ErrorCode::FrameUnexpected,
            "{kind:#x}"
        );
    }
}

#[test]
fn uni_stream_types_are_checked() {
    // A second control stream; a push stream from a client.
    let mut c = conn();
    c.handle_uni_stream(10, &control_open(), false);
    assert_eq!(connection_error(&mut c), ErrorCode::StreamCreationError);
    let mut c = conn();
    c.handle_uni_stream(10, &[0x01], false);
    assert_eq!(connection_error(&mut c), ErrorCode::StreamCreationError);
    // A second encoder stream.
    let mut c = conn();
    c.handle_uni_stream(ENCODER, &[0x02], false);
    c.handle_uni_stream(10, &[0x02], false);
    assert_eq!(connection_error(&mut c), ErrorCode::StreamCreationError);
    // Request data on a unidirectional id.
    let mut c = conn();
    c.handle_stream_data(2, &get("/"), true);
    assert_eq!(connection_error(&mut c), ErrorCode::StreamCreationError);
}

#[test]
fn grease_and_unknown_uni_streams_are_ignored_whatever_they_carry() {
    let mut c = conn();
    let mut bytes = Vec::new();
    varint::encode(0x1f * 7 + 0x21, &mut bytes);
    bytes.extend([0xff; 64]);
    c.handle_uni_stream(10, &bytes[..3], false);
    c.handle_uni_stream(10, &bytes[3..], true);
    assert!(events(&mut c).is_empty());
    assert!(c.error().is_none());
}

#[test]
fn closing_a_critical_stream_ends_the_connection() {
    let mut c = conn();
    c.handle_uni_stream(CONTROL, &[], true);
    assert_eq!(connection_error(&mut c), ErrorCode::ClosedCriticalStream);
    let mut c = conn();
    c.handle_uni_stream(ENCODER, &[0x02, 0x20], true);
    assert_eq!(connection_error(&mut c), ErrorCode::ClosedCriticalStream);
    let mut c = conn();
    c.handle_stream_reset(CONTROL, 0x100);
    assert_eq!(connection_error(&mut c), ErrorCode::ClosedCriticalStream);
}

#[test]
fn qpack_encoder_stream_may_not_insert() {
    let mut c = conn();
    c.handle_uni_stream(ENCODER, &[0x02, 0x20], false);
    assert!(events(&mut c).is_empty(), "capacity 0 is fine");
    // Insert with literal name "a" = "b".
    let mut insert = Vec::new();
    encode_int(1, 5, 0x40, &mut insert);
    insert.extend([b'a', 0x01, b'b']);
    c.handle_uni_stream(ENCODER, &insert, false);
    assert_eq!(connection_error(&mut c), ErrorCode::QpackEncoderStreamError);
}

#[test]
fn goaway_refuses_later_streams_and_the_connection_drains() {
    let mut c = conn();
    c.handle_stream_data(0, &get("/a"), true);
    c.handle_stream_data(4, &get("/b"), false);
    events(&mut c);
    take_frames(&mut c, SendStream::Control);
    c.send_goaway();
    let (frames, _) = {
        let (bytes, fin) = c.pending_output(SendStream::Control);
        (parse(bytes, 64).unwrap().unwrap().0.clone(), fin)
    };
    assert_eq!(frames, Frame::GoAway(8));
    c.handle_stream_data(8, &get("/c"), true);
    assert_eq!(stream_error(&mut c).1, ErrorCode::RequestRejected);
    c.send_goaway();
    assert_eq!(c.goaway, Some(8), "never raised");
    assert!(!c.is_drained());
    for id in [0, 4] {
        c.send_response_head(id, 204, &[]).unwrap();
        c.finish(id).unwrap();
        take_frames(&mut c, SendStream::Request(id));
    }
    assert!(!c.is_drained(), "stream 4's request has not ended");
    c.handle_stream_data(4, &[], true);
    assert!(c.is_drained());
    assert_eq!(c.stats().refused_streams, 1);
}

#[test]
fn streams_past_the_concurrency_limit_are_rejected() {
    let mut c = H3Conn::new(Config {
        max_concurrent_requests: 1,
        ..Config::default()
    });
    c.handle_stream_data(0, &get("/"), false);
    c.handle_stream_data(4, &get("/"), false);
    assert_eq!(
        stream_error(&mut c),
        (
            4,
            ErrorCode::RequestRejected,
            "stream refused (limit or GOAWAY)"
        )
    );
    // Late data of the refused stream is not a new request.
    c.handle_stream_data(4, &get("/"), true);
    assert!(events(&mut c).is_empty());
}

#[test]
fn peer_reset_drops_the_stream_and_late_data_is_ignored() {
    let mut c = conn();
    c.handle_stream_data(0, &get("/"), false);
    events(&mut c);
    c.handle_stream_reset(0, 0x10c);
    assert_eq!(
        events(&mut c),
        [Event::PeerReset {
            stream: 0,
            code: ErrorCode::RequestCancelled
        }]
    );
    assert_eq!(
        c.send_response_head(0, 200, &[]),
        Err(SendError::UnknownStream(0))
    );
    c.handle_stream_data(0, &data(b"late"), true);
    assert!(events(&mut c).is_empty());
}

#[test]
fn response_is_complete_once_its_fin_is_handed_over() {
    let mut c = conn();
    c.handle_stream_data(0, &get("/"), false);
    assert!(!c.response_complete(0));
    c.send_response_head(0, 204, &[]).unwrap();
    c.finish(0).unwrap();
    assert!(!c.response_complete(0), "queued, not written");
    take_frames(&mut c, SendStream::Request(0));
    assert!(c.response_complete(0));
    assert!(!c.response_complete(4));
}

#[test]
fn interim_heads_may_precede_the_final_one() {
    let mut c = conn();
    c.handle_stream_data(0, &get("/"), false);
    c.send_response_head(0, 103, &[(b"link", b"</s.css>; rel=preload")])
        .unwrap();
    c.send_response_head(0, 200, &[]).unwrap();
    c.finish(0).unwrap();
    let (frames, fin) = take_frames(&mut c, SendStream::Request(0));
    assert!(fin);
    let status = |f: &(FrameType, Vec<u8>)| decode_section(&f.1, 1 << 20).unwrap()[0].clone();
    assert_eq!(status(&frames[0]), Field::new(":status", "103"));
    assert_eq!(status(&frames[1]), Field::new(":status", "200"));
}

#[test]
fn response_calls_out_of_order_are_refused() {
    let mut c = conn();
    c.handle_stream_data(0, &get("/"), false);
    assert_eq!(c.send_data(0, b"x"), Err(SendError::NoHead));
    assert_eq!(c.finish(0), Err(SendError::NoHead));
    c.send_response_head(0, 200, &[]).unwrap();
    assert_eq!(c.send_response_head(0, 200, &[]), Err(SendError::HeadSent));
    c.send_trailers(0, &[(b"x-t", b"1")]).unwrap();
    assert_eq!(c.send_data(0, b"x"), Err(SendError::Finished));
}

#[test]
fn ended_streams_stay_bounded_when_one_is_reset_before_any_data() {
    let mut c = conn();
    c.handle_stream_data(0, &get("/"), true);
    c.handle_stream_reset(4, 0x10c);
    c.handle_stream_data(8, &get("/"), true);
    for id in [0, 8] {
        c.send_response_head(id, 204, &[]).unwrap();
        c.finish(id).unwrap();
        take_frames(&mut c, SendStream::Request(id));
    }
    assert_eq!(c.open_requests(), 0);
    assert!(c.unseen.is_empty(), "{:?}", c.unseen);
    assert_eq!(c.next_new, 12);
}

#[test]
fn ended_streams_stay_bounded_behind_a_long_lived_one() {
    let mut c = conn();
    // Stream 0 stays open; a thousand after it come and go.
    c.handle_stream_data(0, &get("/held"), false);
    for i in 1..=1000u64 {
        let id = 4 * i;
        c.handle_stream_data(id, &get("/"), true);
        c.send_response_head(id, 204, &[]).unwrap();
        c.finish(id).unwrap();
        take_frames(&mut c, SendStream::Request(id));
    }
    assert_eq!(c.open_requests(), 1);
    assert!(c.unseen.is_empty(), "{} tracked", c.unseen.len());
    events(&mut c);
    // Ended ones stay ended, the held one is still served.
    c.handle_stream_data(40, &get("/late"), true);
    assert!(events(&mut c).is_empty());
    c.handle_stream_data(0, &[], true);
    assert_eq!(events(&mut c), [Event::RequestEnd { stream: 0 }]);
}

#[test]
fn a_stream_fed_after_a_higher_one_is_a_new_request() {
    let mut c = conn();
    c.handle_stream_data(8, &get("/8"), true);
    c.send_response_head(8, 204, &[]).unwrap();
    c.finish(8).unwrap();
    take_frames(&mut c, SendStream::Request(8));
    events(&mut c);
    // 0 and 4 were opened implicitly by 8; their octets come late.
    c.handle_stream_data(4, &get("/4"), true);
    assert!(matches!(
        events(&mut c)[..],
        [
            Event::RequestHead { stream: 4, .. },
            Event::RequestEnd { stream: 4 }
        ]
    ));
    assert_eq!(c.unseen.iter().copied().collect::<Vec<_>>(), [0]);
    c.handle_stream_reset(0, 0x10c);
    assert!(c.unseen.is_empty());
    c.handle_stream_data(0, &get("/0"), true);
    assert!(events(&mut c).is_empty(), "reset before any data: ended");
}

#[test]
fn closed_ignored_uni_streams_stop_counting_toward_the_limit() {
    let mut c = conn();
    for i in 0..40u64 {
        c.handle_uni_stream(10 + 4 * i, &[0x21, 0xaa], true);
    }
    assert!(c.error().is_none());
    // Open ones do count.
    for i in 0..40u64 {
        c.handle_uni_stream(1002 + 4 * i, &[0x21], false);
    }
    assert_eq!(connection_error(&mut c), ErrorCode::ExcessiveLoad);
}

#[test]
fn request_head_encoded_by_ls_qpack_is_accepted() {
    // The GET section of qpack::tests (pylsqpack 1.0.0, table capacity 0).
    let hex = "0000d1d750882f91d35d055c87a7518860d5485f2bce9a685f508825b650c3cbb6b83fdd";
    let section: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let mut bytes = Vec::new();
    emit_headers(&section, &mut bytes);
    let mut c = conn();
    c.handle_stream_data(0, &bytes, true);
    let ev = events(&mut c);
    let Event::RequestHead { request, .. } = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(request.path.as_deref(), Some(&b"/index.html"[..]));
    assert_eq!(request.headers[0], Field::new("user-agent", "curl/8.5.0"));
    assert_eq!(ev[1], Event::RequestEnd { stream: 0 });
}

proptest::proptest! {
    #[test]
    fn a_request_split_anywhere_gives_the_same_events(cuts in proptest::collection::vec(0usize..200, 0..6)) {
        let mut bytes = headers(&[
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "example.com"),
            (":path", "/p"),
            ("content-length", "10"),
        ]);
        bytes.extend(raw_frame(0x21, b"grease"));
        bytes.extend(data(b"01234"));
        bytes.extend(data(b"56789"));
        bytes.extend(headers(&[("x-t", "1")]));

        let mut whole = conn();
        whole.handle_stream_data(0, &bytes, true);
        let want = events(&mut whole);
        proptest::prop_assert_eq!(want.len(), 4);

        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut c = conn();
        let mut got = Vec::new();
        let mut at = 0;
        for (i, &cut) in cuts.iter().enumerate() {
            c.handle_stream_data(0, &bytes[at..cut], i + 1 == cuts.len());
            at = cut;
            got.extend(events(&mut c));
        }
        // Data events coalesce only while unpolled, so compare without them.
        let strip = |ev: Vec<Event>| -> Vec<Event> {
            ev.into_iter().filter(|e| !matches!(e, Event::RequestData { .. })).collect()
        };
        proptest::prop_assert_eq!(strip(got), strip(want));
        proptest::prop_assert_eq!(&c.request_body(0).unwrap()[..], b"0123456789");
    }
}
