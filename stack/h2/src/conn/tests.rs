//! The server connection's rules, one test per rule or transition of
//! RFC 9113 §3-8 (and the edge limits), driven through the test client.

use std::time::Duration;

use proptest::prelude::*;

use super::harness::*;
use crate::conn::{Event, SendError, ServerConfig};
use crate::error::ErrorCode::{self, *};
use crate::header::flags;
use crate::settings::SettingId;
use crate::{PREFACE, emit};

fn cfg() -> ServerConfig {
    ServerConfig::default()
}

fn request_of(events: &[Event]) -> (u32, crate::Request, bool) {
    events
        .iter()
        .find_map(|e| match e {
            Event::Request {
                stream,
                request,
                end_stream,
            } => Some((*stream, request.clone(), *end_stream)),
            _ => None,
        })
        .expect("a Request event")
}

fn assert_conn_error(c: &mut Client, code: ErrorCode) {
    let out = c.read();
    assert_goaway(c, &out, code);
}

/// `out` (already read) holds a GOAWAY with `code`, and the connection is done.
fn assert_goaway(c: &Client, out: &[Out], code: ErrorCode) {
    assert_eq!(goaway(out).map(|g| g.1), Some(code), "{out:?}");
    assert!(c.conn.is_done());
    assert_eq!(c.conn.error().map(|e| e.code), Some(code));
}

#[test]
fn new_queues_settings_and_connection_window_update() {
    let mut c = Client::new(cfg());
    let out = c.read();
    assert_eq!(
        out,
        [
            Out::Settings {
                ack: false,
                params: vec![
                    (SettingId::MaxConcurrentStreams, 100),
                    (SettingId::InitialWindowSize, 65_536),
                    (SettingId::MaxFrameSize, 16_384),
                    (SettingId::MaxHeaderListSize, 16_384),
                ]
            },
            Out::WindowUpdate {
                stream: 0,
                increment: 1024 * 1024 - 65_535
            },
        ]
    );
    let small = ServerConfig {
        header_table_size: 1024,
        connection_window: 1000,
        ..cfg()
    };
    let out = Client::new(small).read();
    assert_eq!(out.len(), 1, "no WINDOW_UPDATE below the default window");
    let Out::Settings { params, .. } = &out[0] else {
        panic!()
    };
    assert!(params.contains(&(SettingId::HeaderTableSize, 1024)));
}

#[test]
fn preface_and_settings_are_acked_and_our_ack_stops_the_timer() {
    let mut c = Client::new(cfg());
    c.read();
    let mut b = PREFACE.to_vec();
    b.extend(settings(&[(SettingId::InitialWindowSize, 1000)]));
    assert_eq!(c.send(&b), b.len());
    assert_eq!(
        c.read(),
        [Out::Settings {
            ack: true,
            params: vec![]
        }]
    );
    assert_eq!(c.conn.poll_timeout(), Some(Duration::from_secs(10)));
    let mut ack = Vec::new();
    emit::settings_ack(&mut ack);
    c.send(&ack);
    assert_eq!(c.conn.poll_timeout(), None);
    assert!(!c.conn.is_done());
}

#[test]
fn preface_split_across_reads_is_waited_for() {
    let mut c = Client::new(cfg());
    assert_eq!(c.conn.recv(&PREFACE[..10], c.now), 0);
    let mut b = PREFACE.to_vec();
    b.extend(settings(&[]));
    assert_eq!(c.send(&b), b.len());
    assert!(!c.conn.is_done());
}

#[test]
fn settings_not_acked_in_time_is_goaway_settings_timeout() {
    let mut c = Client::new(cfg());
    let mut b = PREFACE.to_vec();
    b.extend(settings(&[]));
    c.send(&b);
    c.read();
    c.conn.handle_timeout(Duration::from_secs(9));
    assert!(!c.conn.is_done());
    c.conn.handle_timeout(Duration::from_secs(10));
    assert_conn_error(&mut c, SettingsTimeout);
    assert_eq!(c.conn.stats().settings_timeouts, 1);
    assert_eq!(c.conn.poll_timeout(), None);
}

#[test]
fn http1_request_instead_of_preface_is_goaway_protocol_error() {
    let mut c = Client::new(cfg());
    c.read();
    let b = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(c.send(b), b.len());
    assert_conn_error(&mut c, ProtocolError);
}

#[test]
fn first_frame_after_preface_must_be_settings() {
    let mut c = Client::new(cfg());
    c.read();
    let mut b = PREFACE.to_vec();
    b.extend(ping([0; 8]));
    c.send(&b);
    assert_conn_error(&mut c, ProtocolError);
}

#[test]
fn get_request_is_one_event_and_the_stream_leaves_the_table_after_the_response() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    let ev = c.events();
    assert_eq!(ev.len(), 1);
    let (stream, req, end) = request_of(&ev);
    assert_eq!((stream, end), (1, true));
    assert_eq!(req.method, b"GET");
    assert_eq!(req.path.as_deref(), Some(&b"/"[..]));
    assert_eq!(c.conn.active_streams(), 1);
    c.conn
        .send_headers(1, 200, &[(b"Content-Type", b"text/plain")], true)
        .unwrap();
    let out = c.read();
    assert_eq!(
        out,
        [Out::Headers {
            stream: 1,
            end_stream: true,
            fields: vec![
                (":status".into(), "200".into()),
                ("content-type".into(), "text/plain".into())
            ],
            frames: 1
        }]
    );
    assert_eq!(c.conn.active_streams(), 0);
    assert_eq!(c.conn.stats().streams_opened, 1);
    assert_eq!(
        c.conn.send_data(1, b"x", true),
        Err(SendError::StreamClosed(1))
    );
}

#[test]
fn post_body_across_data_frames_and_consume_body_batches_window_updates() {
    let mut c = Client::handshake(cfg());
    let h = c.headers(1, &POST, false);
    c.send(&h);
    let mut b = data(1, &[1; 10_000], false);
    b.extend(data(1, &[2; 30_000], false));
    c.send(&b);
    let ev = c.events();
    assert!(matches!(
        ev[0],
        Event::Request {
            stream: 1,
            end_stream: false,
            ..
        }
    ));
    // Consecutive DATA frames of a stream coalesce into one event.
    assert_eq!(
        ev[1..],
        [Event::Data {
            stream: 1,
            end_stream: false
        }]
    );
    assert_eq!(c.conn.request_body(1).len(), 40_000);
    c.conn.consume_body(1, 10_000);
    assert!(window_updates(&c.read()).is_empty(), "batched below half");
    c.conn.consume_body(1, 30_000);
    // Half of the 65,536 stream window is owed: the stream gets its update;
    // the connection's waits for half of its 1 MiB.
    assert_eq!(window_updates(&c.read()), [(1, 40_000)]);
    assert!(c.conn.request_body(1).is_empty());
    c.send(&data(1, b"end", true));
    assert_eq!(
        c.events(),
        [Event::Data {
            stream: 1,
            end_stream: true
        }]
    );
    assert_eq!(c.conn.request_body(1), b"end");
}

#[test]
fn connection_window_update_once_half_the_connection_window_is_consumed() {
    let mut c = Client::handshake(ServerConfig {
        connection_window: 100_000,
        stream_window: 100_000,
        ..cfg()
    });
    let h = c.headers(1, &POST, false);
    c.send(&h);
    c.send(&data(1, &[0; 50_000], false));
    c.conn.consume_body(1, 50_000);
    assert_eq!(window_updates(&c.read()), [(1, 50_000), (0, 50_000)]);
}

#[test]
fn request_body_is_bounded_by_the_stream_window_and_overflow_is_flow_control_error() {
    let mut c = Client::handshake(ServerConfig {
        stream_window: 20_000,
        ..cfg()
    });
    let h = c.headers(1, &POST, false);
    c.send(&h);
    c.send(&data(1, &[0; 20_000], false));
    assert_eq!(c.conn.request_body(1).len(), 20_000);
    c.events();
    c.send(&data(1, &[0; 1], false));
    assert_eq!(rsts(&c.read()), [(1, FlowControlError)]);
    assert_eq!(
        c.events(),
        [Event::Reset {
            stream: 1,
            code: FlowControlError
        }]
    );
    assert!(c.conn.request_body(1).is_empty());
    assert!(!c.conn.is_done());
}

#[test]
fn data_beyond_the_connection_window_is_connection_flow_control_error() {
    let mut c = Client::handshake(ServerConfig {
        connection_window: 65_535,
        stream_window: 65_535,
        ..cfg()
    });
    for id in [1, 3] {
        let h = c.headers(id, &POST, false);
        c.send(&h);
    }
    c.send(&data(1, &[0; 40_000], false));
    c.send(&data(3, &[0; 30_000], false));
    assert_conn_error(&mut c, FlowControlError);
}

#[test]
fn data_on_a_reset_stream_gives_the_connection_window_back() {
    let mut c = Client::handshake(ServerConfig {
        connection_window: 65_535,
        ..cfg()
    });
    let h = c.headers(1, &POST, false);
    c.send(&h);
    c.conn.reset_stream(1, Cancel);
    assert_eq!(rsts(&c.read()), [(1, Cancel)]);
    for _ in 0..4 {
        c.send(&data(1, &[0; 16_000], false));
    }
    // Ignored, but the connection window came back.
    let ups = window_updates(&c.read());
    // Batched: one update once half the 65,535 window was owed.
    assert_eq!(ups, [(0, 48_000)]);
    assert!(ups.iter().all(|u| u.0 == 0));
    let h = c.headers(3, &POST, false);
    c.send(&h);
    c.send(&data(3, &[0; 49_000], false));
    assert!(!c.conn.is_done());
    assert_eq!(c.conn.request_body(3).len(), 49_000);
    assert!(
        !c.events()
            .iter()
            .any(|e| matches!(e, Event::Reset { stream: 1, .. }))
    );
}

#[test]
fn response_data_is_split_by_peer_max_frame_size_and_limited_by_its_window() {
    let mut c = Client::handshake_with(
        cfg(),
        &[
            (SettingId::MaxFrameSize, 20_000),
            (SettingId::InitialWindowSize, 50_000),
        ],
    );
    c.get(1);
    c.conn.send_headers(1, 200, &[], false).unwrap();
    assert_eq!(c.conn.send_capacity(1), 50_000);
    let body = vec![7u8; 50_000];
    c.conn.send_data(1, &body, false).unwrap();
    let out = c.read();
    let sizes: Vec<usize> = out
        .iter()
        .filter_map(|f| match f {
            Out::Data { data, .. } => Some(data.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, [20_000, 20_000, 10_000]);
    assert_eq!(c.conn.send_capacity(1), 0);
    // The stream window reopens; the connection window (65,535) still binds.
    c.send(&window_update(1, 100_000));
    assert_eq!(c.conn.send_capacity(1), 15_535);
    c.send(&window_update(0, 100_000));
    assert_eq!(c.conn.send_capacity(1), 100_000);
    c.conn.send_data(1, &[1; 100], true).unwrap();
    assert_eq!(c.conn.send_capacity(1), 0);
}

#[test]
fn send_capacity_is_bounded_by_max_pending_output() {
    let mut c = Client::handshake_with(
        ServerConfig {
            max_pending_output: 10_000,
            ..cfg()
        },
        &[(SettingId::InitialWindowSize, 1 << 20)],
    );
    c.send(&window_update(0, 1 << 20));
    c.get(1);
    c.conn.send_headers(1, 200, &[], false).unwrap();
    let pending = c.conn.pending_output().len();
    assert_eq!(c.conn.send_capacity(1), 10_000 - pending);
    c.read();
    assert_eq!(c.conn.send_capacity(1), 10_000);
}

#[test]
fn initial_window_size_change_adjusts_open_stream_send_windows_even_below_zero() {
    let mut c = Client::handshake(cfg());
    c.send(&window_update(0, 1 << 20));
    c.get(1);
    c.conn.send_headers(1, 200, &[], false).unwrap();
    c.conn.send_data(1, &[0; 60_000], false).unwrap();
    assert_eq!(c.conn.send_capacity(1), 5_535);
    c.send(&settings(&[(SettingId::InitialWindowSize, 10_000)]));
    // 10,000 - 60,000: negative, so no capacity.
    assert_eq!(c.conn.send_capacity(1), 0);
    c.send(&window_update(1, 50_001));
    assert_eq!(c.conn.send_capacity(1), 1);
    c.send(&settings(&[(SettingId::InitialWindowSize, 100_000)]));
    assert_eq!(c.conn.send_capacity(1), 90_001);
    // Past 2^31-1 on an open stream: a connection FLOW_CONTROL_ERROR.
    c.send(&window_update(1, (1 << 31) - 1 - 90_001));
    c.read();
    c.send(&settings(&[(SettingId::InitialWindowSize, 100_001)]));
    assert_conn_error(&mut c, FlowControlError);
}

#[test]
fn window_update_overflow_is_stream_or_connection_flow_control_error() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    c.send(&window_update(1, (1 << 31) - 1));
    assert_eq!(rsts(&c.read()), [(1, FlowControlError)]);
    c.send(&window_update(0, (1 << 31) - 1));
    assert_conn_error(&mut c, FlowControlError);
}

#[test]
fn continuation_interleaved_with_another_frame_is_protocol_error() {
    let mut c = Client::handshake(cfg());
    let block = c.block_of(&GET);
    let (a, b) = block.split_at(3);
    let mut bytes = raw(0x1, flags::END_STREAM, 1, a);
    bytes.extend(ping([0; 8]));
    bytes.extend(raw(0x9, flags::END_HEADERS, 1, b));
    c.send(&bytes);
    assert_conn_error(&mut c, ProtocolError);
}

#[test]
fn continuation_on_another_stream_is_protocol_error() {
    let mut c = Client::handshake(cfg());
    let block = c.block_of(&GET);
    let (a, b) = block.split_at(3);
    let mut bytes = raw(0x1, flags::END_STREAM, 1, a);
    bytes.extend(raw(0x9, flags::END_HEADERS, 3, b));
    c.send(&bytes);
    assert_conn_error(&mut c, ProtocolError);
}

#[test]
fn header_block_split_across_continuations_decodes() {
    let mut c = Client::handshake(cfg());
    let block = c.block_of(&GET);
    let mut bytes = raw(0x1, flags::END_STREAM, 1, &block[..2]);
    bytes.extend(raw(0x9, 0, 1, &block[2..4]));
    bytes.extend(raw(0x9, flags::END_HEADERS, 1, &block[4..]));
    c.send(&bytes);
    assert_eq!(request_of(&c.events()).0, 1);
}

#[test]
fn continuation_flood_is_goaway_enhance_your_calm() {
    let mut c = Client::handshake(cfg());
    let mut bytes = raw(0x1, 0, 1, &[0x82]);
    for _ in 0..100 {
        bytes.extend(raw(0x9, 0, 1, &[0x40; 1000]));
    }
    c.send(&bytes);
    assert_conn_error(&mut c, EnhanceYourCalm);
    assert_eq!(c.conn.stats().continuation_flood_goaways, 1);
}

#[test]
fn empty_continuation_flood_is_goaway_enhance_your_calm() {
    let mut c = Client::handshake(ServerConfig {
        max_control_frames_per_window: 10,
        ..cfg()
    });
    let mut bytes = raw(0x1, 0, 1, &[0x82]);
    for _ in 0..11 {
        bytes.extend(raw(0x9, 0, 1, &[]));
    }
    c.send(&bytes);
    assert_conn_error(&mut c, EnhanceYourCalm);
    assert_eq!(c.conn.stats().flood_goaways, 1);
}

#[test]
fn oversize_header_list_gets_431_and_the_next_request_still_decodes() {
    let mut c = Client::handshake(cfg());
    let big = "x".repeat(20_000);
    let mut fields = GET.to_vec();
    fields.push(("x-big", &big));
    // Indexed: the next block refers to it, so HPACK must be in step.
    fields.push(("x-next", "1"));
    let h = c.headers(1, &fields, false);
    c.send(&h);
    let out = c.read();
    assert_eq!(status(&out, 1).as_deref(), Some("431"));
    assert_eq!(rsts(&out), [(1, NoError)]);
    assert!(c.events().is_empty());
    assert_eq!(c.conn.stats().headers_too_large, 1);
    let mut fields = GET.to_vec();
    fields.push(("x-next", "1"));
    let h = c.headers(3, &fields, true);
    c.send(&h);
    let (id, req, _) = request_of(&c.events());
    assert_eq!(id, 3);
    assert!(
        req.headers
            .iter()
            .any(|f| f.name == b"x-next" && f.value == b"1")
    );
    // DATA the client sent before seeing the RST is ignored.
    c.send(&data(1, b"late", true));
    assert!(rsts(&c.read()).is_empty());
    assert!(!c.conn.is_done());
}

#[test]
fn headers_beyond_max_concurrent_streams_are_refused_and_still_decoded() {
    let mut c = Client::handshake(ServerConfig {
        max_concurrent_streams: 2,
        ..cfg()
    });
    for id in [1, 3, 5] {
        let mut fields = GET.to_vec();
        let v = format!("v{id}");
        fields.push(("x-id", &v));
        let h = c.headers(id, &fields, false);
        c.send(&h);
    }
    assert_eq!(rsts(&c.read()), [(5, RefusedStream)]);
    assert_eq!(c.conn.stats().streams_refused, 1);
    assert_eq!(c.events().len(), 2);
    // A slot frees: the next stream (which uses the table) is accepted.
    c.conn.reset_stream(1, Cancel);
    let mut fields = GET.to_vec();
    fields.push(("x-id", "v5"));
    let h = c.headers(7, &fields, true);
    c.send(&h);
    let (id, req, _) = request_of(&c.events());
    assert_eq!(id, 7);
    assert!(req.headers.iter().any(|f| f.value == b"v5"));
}

#[test]
fn rapid_reset_is_goaway_enhance_your_calm() {
    let mut c = Client::handshake(ServerConfig {
        max_resets_per_window: 10,
        ..cfg()
    });
    let mut bytes = Vec::new();
    for i in 0..11 {
        let id = 1 + 2 * i;
        bytes.extend(c.headers(id, &GET, false));
        bytes.extend(rst(id, Cancel));
    }
    c.send(&bytes);
    assert_conn_error(&mut c, EnhanceYourCalm);
    assert_eq!(c.conn.stats().rapid_reset_goaways, 1);
    assert_eq!(c.conn.stats().streams_reset_by_peer, 11);
}

#[test]
fn resets_spread_over_windows_are_allowed() {
    let mut c = Client::handshake(ServerConfig {
        max_resets_per_window: 10,
        ..cfg()
    });
    for i in 0..30u32 {
        c.now = Duration::from_millis(200 * u64::from(i));
        let id = 1 + 2 * i;
        let mut bytes = c.headers(id, &GET, false);
        bytes.extend(rst(id, Cancel));
        c.send(&bytes);
    }
    assert!(!c.conn.is_done());
}

#[test]
fn ping_is_answered_with_the_same_data_and_ping_ack_is_ignored() {
    let mut c = Client::handshake(cfg());
    c.send(&ping(*b"12345678"));
    assert_eq!(
        c.read(),
        [Out::Ping {
            ack: true,
            data: *b"12345678"
        }]
    );
    let mut b = Vec::new();
    emit::ping(&mut b, true, [9; 8]);
    c.send(&b);
    assert!(c.read().is_empty());
    assert_eq!(c.conn.stats().pings_answered, 1);
}

#[test]
fn ping_flood_is_goaway_enhance_your_calm() {
    let mut c = Client::handshake(ServerConfig {
        max_control_frames_per_window: 50,
        ..cfg()
    });
    let bytes: Vec<u8> = (0..51).flat_map(|_| ping([0; 8])).collect();
    c.send(&bytes);
    assert_conn_error(&mut c, EnhanceYourCalm);
    assert_eq!(c.conn.stats().flood_goaways, 1);
    assert_eq!(c.conn.stats().pings_answered, 50);
}

#[test]
fn settings_flood_is_goaway_enhance_your_calm() {
    let mut c = Client::handshake(ServerConfig {
        max_control_frames_per_window: 20,
        ..cfg()
    });
    // The handshake's SETTINGS and ACK counted 2.
    let bytes: Vec<u8> = (0..19).flat_map(|_| settings(&[])).collect();
    c.send(&bytes);
    assert_conn_error(&mut c, EnhanceYourCalm);
}

#[test]
fn client_that_never_reads_is_goaway_enhance_your_calm() {
    let mut c = Client::handshake(ServerConfig {
        max_pending_output: 1000,
        ..cfg()
    });
    let bytes: Vec<u8> = (0..2000).flat_map(|_| ping([1; 8])).collect();
    c.send(&bytes);
    assert!(c.conn.is_done());
    let pending = c.conn.pending_output().len();
    assert!(pending <= 1000 + super::ANSWER_HEADROOM + 64, "{pending}");
    assert_conn_error(&mut c, EnhanceYourCalm);
    assert_eq!(c.conn.stats().flood_goaways, 1);
}

#[test]
fn even_stream_id_is_protocol_error() {
    let mut c = Client::handshake(cfg());
    let out = c.get(2);
    assert_goaway(&c, &out, ProtocolError);
}

#[test]
fn decreasing_stream_id_is_protocol_error() {
    let mut c = Client::handshake(cfg());
    c.get(5);
    let out = c.get(3);
    assert_goaway(&c, &out, ProtocolError);
}

#[test]
fn headers_on_a_stream_closed_both_ways_is_connection_stream_closed() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    c.conn.send_headers(1, 204, &[], true).unwrap();
    c.read();
    let out = c.get(1);
    assert_goaway(&c, &out, StreamClosed);
}

#[test]
fn data_on_a_stream_closed_both_ways_is_stream_closed() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    c.conn.send_headers(1, 204, &[], true).unwrap();
    c.read();
    c.send(&data(1, b"x", false));
    assert_eq!(rsts(&c.read()), [(1, StreamClosed)]);
    assert!(!c.conn.is_done());
}

#[test]
fn data_on_an_idle_stream_is_protocol_error() {
    let mut c = Client::handshake(cfg());
    c.send(&data(1, b"x", false));
    assert_conn_error(&mut c, ProtocolError);
}

#[test]
fn rst_stream_on_an_idle_stream_is_protocol_error() {
    let mut c = Client::handshake(cfg());
    c.send(&rst(3, Cancel));
    assert_conn_error(&mut c, ProtocolError);
}

#[test]
fn window_update_on_an_idle_stream_is_protocol_error() {
    let mut c = Client::handshake(cfg());
    c.send(&window_update(1, 10));
    assert_conn_error(&mut c, ProtocolError);
}

#[test]
fn priority_is_allowed_on_an_idle_stream_and_self_dependency_is_a_stream_error() {
    let mut c = Client::handshake(cfg());
    c.send(&raw(0x2, 0, 9, &[0, 0, 0, 1, 16]));
    assert!(c.read().is_empty());
    c.send(&raw(0x2, 0, 11, &[0, 0, 0, 11, 16]));
    assert_eq!(rsts(&c.read()), [(11, ProtocolError)]);
    // HEADERS whose priority names itself: decoded, then reset.
    let block = c.block_of(&GET);
    let mut payload = vec![0, 0, 0, 13, 16];
    payload.extend(&block);
    c.send(&raw(
        0x1,
        flags::END_HEADERS | flags::END_STREAM | flags::PRIORITY,
        13,
        &payload,
    ));
    assert_eq!(rsts(&c.read()), [(13, ProtocolError)]);
    assert!(c.events().is_empty());
    c.get(15);
    assert_eq!(request_of(&c.events()).0, 15);
}

#[test]
fn unknown_frame_types_are_ignored() {
    let mut c = Client::handshake(cfg());
    c.send(&raw(0xfa, 0xff, 0, b"whatever"));
    c.send(&raw(0xfa, 0, 7, b""));
    assert!(c.read().is_empty());
    assert!(!c.conn.is_done());
}

#[test]
fn data_on_a_half_closed_remote_stream_is_stream_closed() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    c.events();
    c.send(&data(1, b"x", false));
    assert_eq!(rsts(&c.read()), [(1, StreamClosed)]);
    assert_eq!(
        c.events(),
        [Event::Reset {
            stream: 1,
            code: StreamClosed
        }]
    );
    assert_eq!(c.conn.active_streams(), 0);
}

#[test]
fn malformed_request_is_rst_protocol_error_without_an_event() {
    let mut c = Client::handshake(cfg());
    let h = c.headers(1, &[(":method", "GET"), (":path", "/")], true);
    c.send(&h);
    assert_eq!(rsts(&c.read()), [(1, ProtocolError)]);
    assert!(c.events().is_empty());
    assert_eq!(c.conn.stats().stream_errors, 1);
}

#[test]
fn content_length_mismatch_is_rst_protocol_error() {
    let mut c = Client::handshake(cfg());
    let mut fields = POST.to_vec();
    fields.push(("content-length", "5"));
    // Too few octets at END_STREAM.
    let h = c.headers(1, &fields, false);
    c.send(&h);
    c.send(&data(1, b"abc", true));
    assert_eq!(rsts(&c.read()), [(1, ProtocolError)]);
    // Too many, before END_STREAM.
    let h = c.headers(3, &fields, false);
    c.send(&h);
    c.send(&data(3, b"abcdef", false));
    assert_eq!(rsts(&c.read()), [(3, ProtocolError)]);
    // Declared but END_STREAM on HEADERS: no event at all.
    let h = c.headers(5, &fields, true);
    c.send(&h);
    assert_eq!(rsts(&c.read()), [(5, ProtocolError)]);
    let resets: Vec<_> = c
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Reset { .. }))
        .collect();
    assert_eq!(resets.len(), 2);
    // Exact: fine.
    let h = c.headers(7, &fields, false);
    c.send(&h);
    c.send(&data(7, b"abcde", true));
    assert!(rsts(&c.read()).is_empty());
}

#[test]
fn trailers_end_the_request_with_an_event() {
    let mut c = Client::handshake(cfg());
    let h = c.headers(1, &POST, false);
    c.send(&h);
    c.send(&data(1, b"body", false));
    let t = c.headers(1, &[("x-checksum", "abc")], true);
    c.send(&t);
    let ev = c.events();
    assert_eq!(
        ev.last(),
        Some(&Event::Trailers {
            stream: 1,
            fields: vec![crate::Field::new("x-checksum", "abc")]
        })
    );
}

#[test]
fn trailers_without_end_stream_are_rst_protocol_error() {
    let mut c = Client::handshake(cfg());
    let h = c.headers(1, &POST, false);
    c.send(&h);
    let t = c.headers(1, &[("x-checksum", "abc")], false);
    c.send(&t);
    assert_eq!(rsts(&c.read()), [(1, ProtocolError)]);
    assert!(c.events().contains(&Event::Reset {
        stream: 1,
        code: ProtocolError
    }));
}

#[test]
fn response_ending_before_the_request_resets_with_no_error() {
    let mut c = Client::handshake(cfg());
    let h = c.headers(1, &POST, false);
    c.send(&h);
    c.conn.send_headers(1, 413, &[], true).unwrap();
    let out = c.read();
    assert_eq!(status(&out, 1).as_deref(), Some("413"));
    assert_eq!(rsts(&out), [(1, NoError)]);
    assert_eq!(c.conn.active_streams(), 0);
    // Body in flight is ignored.
    c.send(&data(1, b"late", true));
    assert!(c.read().is_empty());
    assert!(!c.events().iter().any(|e| matches!(e, Event::Reset { .. })));
}

#[test]
fn graceful_go_away_names_the_last_stream_and_is_done_after_it_finishes() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    c.get(3);
    c.conn.go_away(NoError, b"");
    assert_eq!(goaway(&c.read()), Some((3, NoError)));
    assert!(c.conn.is_going_away());
    // A new stream is refused; its block still goes through HPACK.
    let out = c.get(5);
    assert_eq!(rsts(&out), [(5, RefusedStream)]);
    c.conn.send_headers(1, 200, &[], true).unwrap();
    assert!(!c.conn.is_done());
    c.conn.send_headers(3, 200, &[], false).unwrap();
    c.conn.send_trailers(3, &[(b"x-t", b"1")]).unwrap();
    assert!(c.conn.is_done());
    assert_eq!(c.conn.error(), None);
    let out = c.read();
    let Some(Out::Headers {
        fields, end_stream, ..
    }) = out.last()
    else {
        panic!("{out:?}")
    };
    assert!(*end_stream);
    assert_eq!(fields, &[("x-t".to_string(), "1".to_string())]);
}

#[test]
fn go_away_with_an_error_ends_now_and_resets_the_open_streams() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    c.events();
    c.conn.go_away(InternalError, b"bye");
    let out = c.read();
    assert!(out.contains(&Out::GoAway {
        last_stream: 1,
        code: InternalError,
        debug: b"bye".to_vec()
    }));
    assert!(c.conn.is_done());
    assert_eq!(c.conn.stats().connection_errors, 1);
    assert_eq!(
        c.conn.send_headers(1, 200, &[], true),
        Err(SendError::ConnectionClosed)
    );
    assert_eq!(
        c.conn.poll_event(),
        Some(Event::Reset {
            stream: 1,
            code: InternalError
        })
    );
    // Everything after is consumed and ignored.
    let junk = [0xffu8; 100];
    assert_eq!(c.conn.recv(&junk, c.now), 100);
    assert!(c.read().is_empty());
}

#[test]
fn client_goaway_means_going_away_but_the_client_closes_and_may_still_ping() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    let mut b = Vec::new();
    emit::goaway(&mut b, 0, NoError, b"");
    c.send(&b);
    assert!(c.conn.is_going_away());
    assert!(!c.conn.is_done());
    c.conn.send_headers(1, 200, &[], true).unwrap();
    // Done is ours to say (our GOAWAY, a connection error); until then a
    // PING after the client's GOAWAY is still answered (h2spec 7 checks it).
    assert!(!c.conn.is_done());
    c.read();
    let mut b = Vec::new();
    emit::ping(&mut b, false, *b"after-go");
    c.send(&b);
    let out = c.read();
    assert!(
        out.contains(&Out::Ping {
            ack: true,
            data: *b"after-go"
        }),
        "{out:?}"
    );
    c.conn.go_away(NoError, b"");
    assert!(c.conn.is_done());
}

#[test]
fn peer_reset_of_a_known_stream_is_an_event_but_our_reset_is_not() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    c.get(3);
    c.events();
    c.send(&rst(1, Cancel));
    assert_eq!(
        c.events(),
        [Event::Reset {
            stream: 1,
            code: Cancel
        }]
    );
    c.conn.reset_stream(3, InternalError);
    assert!(c.events().is_empty());
    assert_eq!(rsts(&c.read()), [(3, InternalError)]);
    // Frames on our reset stream are ignored; RST on a reset one too.
    c.send(&rst(3, Cancel));
    c.send(&window_update(3, 5));
    assert!(c.read().is_empty());
    assert!(!c.conn.is_done());
}

#[test]
fn cookie_crumbs_are_joined_in_the_request() {
    let mut c = Client::handshake(cfg());
    let mut fields = GET.to_vec();
    fields.extend([("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2")]);
    let h = c.headers(1, &fields, true);
    c.send(&h);
    let (_, req, _) = request_of(&c.events());
    let cookies: Vec<_> = req.headers.iter().filter(|f| f.name == b"cookie").collect();
    assert_eq!(cookies.len(), 1);
    assert_eq!(cookies[0].value, b"a=1; b=2");
}

#[test]
fn recv_stops_once_events_are_waiting() {
    let mut c = Client::handshake(cfg());
    let mut bytes = Vec::new();
    for i in 0..40 {
        bytes.extend(c.headers(1 + 2 * i, &GET, true));
    }
    let n = c.conn.recv(&bytes, c.now);
    assert!(n < bytes.len());
    let mut events = 0;
    while c.conn.poll_event().is_some() {
        events += 1;
    }
    assert_eq!(events, 16);
    assert_eq!(c.send(&bytes[n..]), bytes.len() - n);
    assert_eq!(c.events().len(), 24);
}

#[test]
fn response_headers_split_into_continuation_by_peer_max_frame_size() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    let long = vec![b'v'; 40_000];
    c.conn
        .send_headers(1, 200, &[(b"x-long", &long)], true)
        .unwrap();
    let out = c.read();
    let Some(Out::Headers { frames, .. }) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(*frames, 3);
}

#[test]
fn informational_heads_precede_the_final_one() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    c.conn
        .send_headers(1, 103, &[(b"link", b"</a>")], false)
        .unwrap();
    assert_eq!(c.conn.send_capacity(1), 0, "no DATA before the final head");
    c.conn.send_headers(1, 200, &[], false).unwrap();
    assert_eq!(
        c.conn.send_headers(1, 200, &[], false),
        Err(SendError::StreamClosed(1))
    );
    c.conn.send_data(1, b"ok", true).unwrap();
    let out = c.read();
    assert_eq!(out.len(), 3);
    assert_eq!(status(&out, 1).as_deref(), Some("103"));
}

#[test]
fn our_settings_ack_applies_a_smaller_stream_window_to_open_streams() {
    let mut c = Client::new(ServerConfig {
        stream_window: 1000,
        ..cfg()
    });
    let mut b = PREFACE.to_vec();
    b.extend(settings(&[]));
    c.send(&b);
    c.read();
    // Before the ACK the client may use the default 65,535.
    let h = c.headers(1, &POST, false);
    c.send(&h);
    c.send(&data(1, &[0; 5000], false));
    assert_eq!(c.conn.request_body(1).len(), 5000);
    let mut ack = Vec::new();
    emit::settings_ack(&mut ack);
    c.send(&ack);
    // 65,535 - 5,000 - 64,535 = -4,000 left: any more is too much.
    c.send(&data(1, &[0; 1], false));
    assert_eq!(rsts(&c.read()), [(1, FlowControlError)]);
}

#[test]
fn headers_after_the_client_reset_the_stream_is_stream_closed() {
    let mut c = Client::handshake(cfg());
    let h = c.headers(1, &POST, false);
    c.send(&h);
    c.send(&rst(1, Cancel));
    c.read();
    let t = c.headers(1, &[("x-t", "1")], true);
    c.send(&t);
    assert_eq!(rsts(&c.read()), [(1, StreamClosed)]);
    assert!(!c.conn.is_done());
}

#[test]
fn a_stream_error_on_an_idle_stream_leaves_it_openable() {
    let mut c = Client::handshake(cfg());
    c.send(&raw(0x2, 0, 3, &[0, 0, 0, 3, 16]));
    assert_eq!(rsts(&c.read()), [(3, ProtocolError)]);
    c.get(3);
    assert_eq!(request_of(&c.events()).0, 3);
}

#[test]
fn padding_counts_against_the_windows_and_is_given_back_at_once() {
    let mut c = Client::handshake(ServerConfig {
        stream_window: 500,
        ..cfg()
    });
    let h = c.headers(1, &POST, false);
    c.send(&h);
    // 1 (pad length) + 10 data + 255 padding = 266 flow-controlled octets.
    let mut payload = vec![255];
    payload.extend([7; 10]);
    payload.extend([0; 255]);
    c.send(&raw(0x0, flags::PADDED, 1, &payload));
    assert_eq!(c.conn.request_body(1), [7; 10]);
    // The 256 padding octets are owed back: over half the stream window.
    assert_eq!(window_updates(&c.read()), [(1, 256)]);
    // The window really is 500 - 10 now: 490 more fit, 491 do not.
    c.send(&data(1, &[0; 490], false));
    assert!(rsts(&c.read()).is_empty());
    c.send(&data(1, &[0; 1], false));
    assert_eq!(rsts(&c.read()), [(1, FlowControlError)]);
}

#[test]
fn unknown_frame_inside_a_header_block_is_protocol_error() {
    let mut c = Client::handshake(cfg());
    let block = c.block_of(&GET);
    let mut bytes = raw(0x1, flags::END_STREAM, 1, &block[..2]);
    bytes.extend(raw(0xfa, 0, 0, b""));
    bytes.extend(raw(0x9, flags::END_HEADERS, 1, &block[2..]));
    c.send(&bytes);
    assert_conn_error(&mut c, ProtocolError);
}

#[test]
fn continuation_without_headers_is_protocol_error() {
    let mut c = Client::handshake(cfg());
    c.send(&raw(0x9, flags::END_HEADERS, 1, &[0x82]));
    assert_conn_error(&mut c, ProtocolError);
}

#[test]
fn push_promise_from_a_client_is_protocol_error() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    c.send(&raw(0x5, flags::END_HEADERS, 1, &[0, 0, 0, 2, 0x82]));
    assert_conn_error(&mut c, ProtocolError);
}

#[test]
fn our_max_frame_size_applies_to_received_frames() {
    let mut c = Client::handshake(ServerConfig {
        max_frame_size: 32_768,
        ..cfg()
    });
    let h = c.headers(1, &POST, false);
    c.send(&h);
    c.send(&raw(0x0, 0, 1, &[0; 20_000]));
    assert_eq!(c.conn.request_body(1).len(), 20_000);
    c.send(&raw(0x0, 0, 1, &[0; 32_769]));
    assert_conn_error(&mut c, FrameSizeError);
}

#[test]
fn frame_over_the_default_max_frame_size_is_frame_size_error() {
    let mut c = Client::handshake(cfg());
    c.send(&raw(0x0, 0, 1, &[0; 16_385]));
    assert_conn_error(&mut c, FrameSizeError);
}

#[test]
fn stream_scoped_frame_error_resets_the_stream_and_tells_the_application() {
    let mut c = Client::handshake(cfg());
    c.get(1);
    c.events();
    c.send(&raw(0x8, 0, 1, &[0, 0, 0, 0]));
    assert_eq!(rsts(&c.read()), [(1, ProtocolError)]);
    assert_eq!(
        c.events(),
        [Event::Reset {
            stream: 1,
            code: ProtocolError
        }]
    );
    let e = c.conn.last_stream_error().unwrap();
    assert_eq!(e.scope, crate::Scope::Stream(1));
    assert_eq!(e.reason, "WINDOW_UPDATE increment 0");
}

#[test]
fn peer_header_table_size_is_announced_to_the_client_decoder() {
    let mut c = Client::handshake_with(cfg(), &[(SettingId::HeaderTableSize, 0)]);
    c.get(1);
    c.conn
        .send_headers(1, 200, &[(b"x-a", b"1")], true)
        .unwrap();
    // The harness decoder follows the size update; the fields come through.
    let out = c.read();
    assert_eq!(status(&out, 1).as_deref(), Some("200"));
}

#[test]
fn empty_data_flood_is_goaway_enhance_your_calm() {
    let mut c = Client::handshake(ServerConfig {
        max_control_frames_per_window: 10,
        ..cfg()
    });
    let h = c.headers(1, &POST, false);
    c.send(&h);
    let bytes: Vec<u8> = (0..11).flat_map(|_| data(1, b"", false)).collect();
    c.send(&bytes);
    assert_conn_error(&mut c, EnhanceYourCalm);
}

#[test]
fn window_update_flood_is_goaway_enhance_your_calm() {
    let mut c = Client::handshake(ServerConfig {
        max_control_frames_per_window: 10,
        ..cfg()
    });
    let bytes: Vec<u8> = (0..11).flat_map(|_| window_update(0, 1)).collect();
    c.send(&bytes);
    assert_conn_error(&mut c, EnhanceYourCalm);
}

#[test]
fn malformed_requests_count_toward_the_reset_budget() {
    let mut c = Client::handshake(ServerConfig {
        max_resets_per_window: 5,
        ..cfg()
    });
    let mut bytes = Vec::new();
    for i in 0..6 {
        bytes.extend(c.headers(1 + 2 * i, &[(":method", "GET")], true));
    }
    c.send(&bytes);
    assert_conn_error(&mut c, EnhanceYourCalm);
    assert_eq!(c.conn.stats().rapid_reset_goaways, 1);
}

#[test]
fn peer_reset_with_a_buffered_body_gives_the_connection_window_back() {
    let mut c = Client::handshake(ServerConfig {
        connection_window: 65_535,
        ..cfg()
    });
    let h = c.headers(1, &POST, false);
    c.send(&h);
    c.send(&data(1, &[0; 40_000], false));
    c.send(&rst(1, Cancel));
    assert_eq!(window_updates(&c.read()), [(0, 40_000)]);
}

/// Client frames for the property: well-formed ones on a few streams, and
/// garbage.
#[derive(Debug, Clone)]
enum Step {
    Get(u8),
    Post(u8),
    Data(u8, u16, bool),
    Rst(u8),
    Ping,
    Settings(u32),
    Window(u8, u32),
    Garbage(Vec<u8>),
    Raw(u8, u8, u8, Vec<u8>),
    Consume(u8, u16),
    Respond(u8, u16, bool),
    Tick(u16),
}

fn step() -> impl Strategy<Value = Step> {
    let id = 0u8..12;
    // Garbage mostly ends the connection at once: rarer, so that sequences
    // also reach deep states.
    prop_oneof![
        4 => id.clone().prop_map(Step::Get),
        4 => id.clone().prop_map(Step::Post),
        6 => (id.clone(), any::<u16>(), any::<bool>()).prop_map(|(i, n, e)| Step::Data(i, n, e)),
        2 => id.clone().prop_map(Step::Rst),
        2 => Just(Step::Ping),
        1 => (0u32..200_000).prop_map(Step::Settings),
        2 => (id.clone(), 1u32..100_000).prop_map(|(i, n)| Step::Window(i, n)),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Step::Garbage),
        1 => (
            0u8..12,
            any::<u8>(),
            id.clone(),
            proptest::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(|(k, f, i, p)| Step::Raw(k, f, i, p)),
        4 => (id.clone(), any::<u16>()).prop_map(|(i, n)| Step::Consume(i, n)),
        4 => (id.clone(), any::<u16>(), any::<bool>()).prop_map(|(i, n, e)| Step::Respond(i, n, e)),
        1 => (0u16..3000).prop_map(Step::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_frames_never_panic_and_buffers_stay_bounded(steps in proptest::collection::vec(step(), 1..60)) {
        let cfg = ServerConfig {
            stream_window: 20_000,
            connection_window: 100_000,
            max_concurrent_streams: 4,
            max_pending_output: 8_000,
            max_control_frames_per_window: 30,
            max_resets_per_window: 10,
            settings_timeout: Duration::from_secs(2),
            ..ServerConfig::default()
        };
        let max_pending = cfg.max_pending_output;
        let mut c = Client::handshake(cfg);
        // The connection window (100,000) bounds all buffered bodies.
        let body_bound = 100_000usize;
        for s in steps {
            let bytes = match s {
                Step::Get(i) => c.headers(u32::from(i) * 2 + 1, &GET, true),
                Step::Post(i) => c.headers(u32::from(i) * 2 + 1, &POST, false),
                Step::Data(i, n, e) => data(u32::from(i) * 2 + 1, &vec![0; usize::from(n) % 20_000], e),
                Step::Rst(i) => rst(u32::from(i) * 2 + 1, Cancel),
                Step::Ping => ping([0; 8]),
                Step::Settings(w) => settings(&[(SettingId::InitialWindowSize, w)]),
                Step::Window(i, n) => window_update(u32::from(i), n),
                Step::Garbage(g) => g,
                Step::Raw(k, f, i, p) => raw(k, f, u32::from(i), &p),
                Step::Consume(i, n) => {
                    c.conn.consume_body(u32::from(i) * 2 + 1, usize::from(n));
                    Vec::new()
                }
                Step::Respond(i, n, e) => {
                    let id = u32::from(i) * 2 + 1;
                    let _ = c.conn.send_headers(id, 200, &[], false);
                    let cap = c.conn.send_capacity(id);
                    let _ = c.conn.send_data(id, &vec![1; usize::from(n).min(cap)], e);
                    Vec::new()
                }
                Step::Tick(ms) => {
                    c.now += Duration::from_millis(u64::from(ms));
                    c.conn.handle_timeout(c.now);
                    Vec::new()
                }
            };
            // Never read: the pending output must stay bounded anyway.
            let mut off = 0;
            loop {
                let n = c.conn.recv(&bytes[off..], c.now);
                off += n;
                while c.conn.poll_event().is_some() {}
                if n == 0 || off == bytes.len() { break; }
            }
            let buffered: usize = (0..24).map(|i| c.conn.request_body(i).len()).sum();
            prop_assert!(buffered <= body_bound, "{buffered}");
            prop_assert!(c.conn.active_streams() <= 4);
            let pending = c.conn.pending_output().len();
            // Our greeting, DATA up to the cap, answers up to the headroom,
            // and one GOAWAY or response head over it.
            prop_assert!(pending <= max_pending + super::ANSWER_HEADROOM + 1024, "{pending}");
        }
    }
}
