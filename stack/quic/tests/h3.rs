//! The endpoint against a quinn-proto client in memory (see `pair`).

mod pair;

use std::time::Duration;

use ferrogate_h3::ErrorCode;
use ferrogate_quic::quinn_proto::ConnectionError;
use ferrogate_quic::{CloseReason, Event, QuicConfig, owner_of, owner_of_datagram};
use pair::{BIG, Pair, big_body, checksum, short_dcid};

fn connected(config: QuicConfig) -> Pair {
    let mut p = Pair::new(config);
    p.connect();
    assert!(p.client.connected, "handshake did not complete");
    assert!(matches!(p.server_events.first(), Some(Event::Connected(_))));
    p.open_control();
    p
}

#[test]
fn get_is_answered_with_a_body() {
    let mut p = connected(QuicConfig::default());
    let s = p.get("/hello");
    p.drive();
    let r = p.response(s).expect("a complete response");
    assert_eq!(r.status, b"200");
    assert_eq!(r.body, b"you asked for /hello");
    let head = p.server_events.iter().find_map(|e| match e {
        Event::RequestHead { request, .. } => Some(request.clone()),
        _ => None,
    });
    let head = head.expect("a request head event");
    assert_eq!(head.method, b"GET");
    assert_eq!(head.authority, b"localhost");
    assert!(
        p.server_events.iter().any(
            |e| matches!(e, Event::RequestHead { stream: h, end_stream: true, .. } if h.stream == s)
        ),
        "a GET's FIN rides with its head: the head says the request ended"
    );
    // The server's control stream (server-initiated uni id 3) carried
    // its SETTINGS.
    let control = p.client.streams.get(&3).expect("server control stream");
    assert_eq!(control.data.first(), Some(&0x00));
}

#[test]
fn several_streams_at_once() {
    let mut p = connected(QuicConfig::default());
    let ids: Vec<u64> = (0..10).map(|i| p.get(&format!("/s{i}"))).collect();
    p.drive();
    for (i, id) in ids.iter().enumerate() {
        let r = p.response(*id).expect("every stream answered");
        assert_eq!(r.status, b"200");
        assert_eq!(r.body, format!("you asked for /s{i}").as_bytes());
    }
    let heads = p
        .server_events
        .iter()
        .filter(|e| matches!(e, Event::RequestHead { .. }))
        .count();
    assert_eq!(heads, 10);
}

#[test]
fn large_response_arrives_whole() {
    let mut p = connected(QuicConfig::default());
    let s = p.get("/big");
    // Flow control and congestion control pace it: timers (ACK delay,
    // loss detection) may be needed along the way.
    for _ in 0..1000 {
        p.drive();
        if p.response(s).is_some() {
            break;
        }
        p.advance();
    }
    let r = p.response(s).expect("the whole 1 MiB response");
    assert_eq!(r.body.len(), BIG);
    assert_eq!(checksum(&r.body), checksum(&big_body()));
}

#[test]
fn connection_ids_name_the_worker() {
    let config = QuicConfig {
        worker: 3,
        ..QuicConfig::default()
    };
    let mut p = connected(config);
    let s = p.get("/x");
    p.drive();
    assert!(p.response(s).is_some());
    // The client's first Initial carries its own random DCID: no owner.
    assert_eq!(owner_of_datagram(&p.sent_to_server[0]), None);
    let short: Vec<&Vec<u8>> = p
        .sent_to_server
        .iter()
        .filter(|d| short_dcid(d).is_some())
        .collect();
    assert!(!short.is_empty(), "no 1-RTT packets");
    for d in &short {
        assert_eq!(owner_of(short_dcid(d).unwrap()), Some(3));
        assert_eq!(owner_of_datagram(d), Some(3));
    }
    assert_eq!(owner_of(&[3, 1, 2]), None, "wrong length");

    // Another worker's endpoint drops such a packet silently (no
    // stateless reset that would kill the live connection)...
    let certs = pair::certs();
    let other = |worker| {
        let config = QuicConfig {
            worker,
            ..QuicConfig::default()
        };
        ferrogate_quic::QuicEndpoint::new(config, pair::server_tls(&certs)).unwrap()
    };
    let mut buf = Vec::new();
    let mut w1 = other(1);
    w1.handle_datagram(p.now, p.client_addr, None, None, short[0]);
    assert!(w1.poll_transmit(p.now, &mut buf).is_none());
    // ...while the owner's index with no such connection answers with one,
    // so the check above is not vacuous.
    let mut w3 = other(3);
    w3.handle_datagram(p.now, p.client_addr, None, None, short[0]);
    assert!(w3.poll_transmit(p.now, &mut buf).is_some());
}

#[test]
fn idle_connection_times_out() {
    let config = QuicConfig {
        idle_timeout: Duration::from_secs(5),
        ..QuicConfig::default()
    };
    let mut p = connected(config);
    let start = p.now;
    for _ in 0..100 {
        if p.server.connections() == 0 {
            break;
        }
        assert!(p.advance(), "no timer while a connection is open");
    }
    assert_eq!(p.server.connections(), 0);
    let lost = p.server_events.iter().find_map(|e| match e {
        Event::ConnectionLost { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(lost, Some(CloseReason::Quic(ConnectionError::TimedOut)));
    let waited = p.elapsed_since(start);
    assert!(
        waited >= Duration::from_secs(5),
        "timed out early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(6),
        "timed out late: {waited:?}"
    );
}

#[test]
fn malformed_request_resets_the_stream() {
    let mut p = connected(QuicConfig::default());
    // No :method: malformed (RFC 9114 §4.3.1), a stream error.
    let bad = p.request_fields(&[
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b":path", b"/"),
    ]);
    p.drive();
    let code = ErrorCode::MessageError.to_u64();
    let s = p.client.streams.get(&bad).expect("the stream saw a reset");
    assert_eq!(s.reset, Some(code), "RESET_STREAM with H3_MESSAGE_ERROR");
    assert!(p.server_events.iter().any(|e| matches!(
        e,
        Event::StreamAborted { stream, code: ErrorCode::MessageError } if stream.stream == bad
    )));
    // The connection goes on.
    let good = p.get("/after");
    p.drive();
    assert_eq!(p.response(good).unwrap().body, b"you asked for /after");
    assert!(p.client.lost.is_none());
}

#[test]
fn connection_error_closes_with_the_h3_code() {
    let mut p = connected(QuicConfig::default());
    // A second control stream is H3_STREAM_CREATION_ERROR (§6.2.1).
    p.open_control();
    p.drive();
    let code = ErrorCode::StreamCreationError.to_u64();
    match &p.client.lost {
        Some(ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, pair::varint(code))
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[test]
fn retry_validates_the_address_first() {
    let config = QuicConfig {
        retry: true,
        ..QuicConfig::default()
    };
    let mut p = connected(config);
    assert_eq!(p.server.stats().retries, 1);
    let s = p.get("/r");
    p.drive();
    assert_eq!(p.response(s).unwrap().status, b"200");
}

#[test]
fn connections_past_the_limit_are_refused() {
    let config = QuicConfig {
        max_connections: 0,
        ..QuicConfig::default()
    };
    let mut p = Pair::new(config);
    p.connect();
    assert!(!p.client.connected);
    assert_eq!(p.server.stats().refused, 1);
    assert!(matches!(
        p.client.lost,
        Some(ConnectionError::ConnectionClosed(_))
    ));
}

#[test]
fn large_upload_is_read_no_faster_than_taken() {
    let config = QuicConfig {
        max_buffered_body: 16 * 1024,
        ..QuicConfig::default()
    };
    let mut p = connected(config);
    let body = big_body();
    let s = p.post("/upload", &body);
    for _ in 0..1000 {
        p.drive();
        if p.response(s).is_some() {
            break;
        }
        p.advance();
    }
    let r = p.response(s).expect("the upload was answered");
    assert_eq!(r.body, format!("{} {}", BIG, checksum(&body)).into_bytes());
    // The endpoint never buffered more than the limit for the application.
    assert!(p.max_buffered_seen > 0);
    assert!(
        p.max_buffered_seen <= 16 * 1024,
        "buffered {}",
        p.max_buffered_seen
    );
}

#[test]
fn app_close_reaches_the_client_and_drains() {
    let mut p = connected(QuicConfig::default());
    let conn = match p.server_events[0] {
        Event::Connected(c) => c,
        _ => unreachable!(),
    };
    p.server
        .close(p.now, conn, ErrorCode::NoError)
        .expect("an open connection");
    p.drive();
    match &p.client.lost {
        Some(ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, pair::varint(ErrorCode::NoError.to_u64()))
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    assert!(p.server_events.iter().any(|e| matches!(
        e,
        Event::ConnectionLost {
            reason: CloseReason::Local(ErrorCode::NoError),
            ..
        }
    )));
    // Closed, then drained after the draining period: forgotten.
    for _ in 0..100 {
        if p.server.connections() == 0 {
            break;
        }
        p.advance();
    }
    assert_eq!(p.server.connections(), 0);
    assert!(p.server.close(p.now, conn, ErrorCode::NoError).is_err());
}

#[test]
fn stop_sending_from_the_client_resets_the_response() {
    let mut p = connected(QuicConfig::default());
    // The response has started and is still open when the client says it
    // no longer wants it.
    let s = p.get("/hold");
    p.drive();
    let got = p.client.streams.get(&s).expect("response started");
    assert!(!got.fin && !got.data.is_empty());
    let handle = p
        .server_events
        .iter()
        .find_map(|e| match e {
            Event::RequestHead { stream: h, .. } => Some(*h),
            _ => None,
        })
        .unwrap();
    let id = ferrogate_quic::quinn_proto::StreamId::from(pair::varint(s));
    let code = ErrorCode::RequestCancelled.to_u64();
    p.quic().recv_stream(id).stop(pair::varint(code)).unwrap();
    p.drive();
    assert!(
        p.server_events.iter().any(|e| matches!(
            e,
            Event::StreamAborted { stream, code: ErrorCode::RequestCancelled } if *stream == handle
        )),
        "{:?}",
        p.server_events
    );
    // The stream is gone for the application...
    assert!(p.server.send_data(handle, b"more").is_err());
    // ...and the connection is still usable.
    assert!(p.client.lost.is_none());
    let after = p.get("/after");
    p.drive();
    assert_eq!(p.response(after).unwrap().body, b"you asked for /after");
}

fn conn_handle(p: &Pair) -> ferrogate_quic::ConnId {
    match p.server_events[0] {
        Event::Connected(c) => c,
        _ => unreachable!(),
    }
}

#[test]
fn a_paused_stream_is_listed_once_however_many_frames_arrive() {
    let config = QuicConfig {
        max_buffered_body: 16 * 1024,
        ..QuicConfig::default()
    };
    let mut p = connected(config);
    let conn = conn_handle(&p);
    // The application never takes this body: the stream pauses while
    // STREAM frames keep arriving on it (each one a readable event).
    let s = p.post("/stall", &big_body());
    p.run_for(Duration::from_secs(5));
    assert!(
        p.server_events
            .iter()
            .any(|e| matches!(e, Event::RequestData(h) if h.stream == s))
    );
    assert_eq!(p.server.paused_streams(conn), Some(1));
}

#[test]
fn refused_heads_release_their_request_slots() {
    let h3 = ferrogate_h3::Config {
        max_concurrent_requests: 2,
        ..ferrogate_h3::Config::default()
    };
    let config = QuicConfig {
        h3,
        ..QuicConfig::default()
    };
    let mut p = connected(config);
    // Heads past the 16 KiB limit, spread over several packets: the 431
    // goes out and the stream is stopped before its FIN is read.
    let big = "x".repeat(40 * 1024);
    let mut refused = Vec::new();
    for i in 0..5 {
        let s = p.request_fields(&[
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", format!("/{i}").as_bytes()),
            (b"x-big", big.as_bytes()),
        ]);
        p.run_for(Duration::from_secs(1));
        refused.push(s);
    }
    for s in refused {
        let r = p
            .response(s)
            .expect("a 431 with FIN, not a reset for lack of request slots");
        assert_eq!(r.status, b"431");
    }
    let s = p.get("/after");
    p.run_for(Duration::from_secs(1));
    let r = p
        .response(s)
        .expect("served, not refused for lack of slots");
    assert_eq!(r.body, b"you asked for /after");
}

#[test]
fn quic_datagrams_are_not_offered() {
    let mut p = connected(QuicConfig::default());
    // No max_datagram_frame_size transport parameter from the server: the
    // client may not send any (RFC 9221 §3).
    assert_eq!(p.quic().datagrams().max_size(), None);
    let sent = p
        .quic()
        .datagrams()
        .send(bytes::Bytes::from_static(b"x"), false);
    assert!(sent.is_err(), "{sent:?}");
}

#[test]
fn a_client_faster_than_the_application_is_held_by_flow_control() {
    let max_body = 64 * 1024;
    let config = QuicConfig {
        max_buffered_body: max_body,
        ..QuicConfig::default()
    };
    let mut p = connected(config);
    let conn = conn_handle(&p);
    // The application takes none of this 1 MiB body.
    let s = p.post("/stall", &big_body());
    p.run_for(Duration::from_secs(5));
    let handle = ferrogate_quic::StreamHandle { conn, stream: s };
    let buffered = p.server.request_body(handle).expect("open").len();
    assert_eq!(buffered, max_body, "the body buffer is full");
    // What the client could send past that is what QUIC holds unread for
    // us: one stream window (about the body buffer), not quinn's default.
    let sent = p.uploaded(s).expect("the upload is still held back");
    let head = 64;
    assert!(
        sent <= buffered + max_body + head,
        "client sent {sent}, {} past the application's buffer",
        sent - buffered
    );
}

#[test]
fn a_reset_request_resets_the_response_and_frees_the_stream() {
    let h3 = ferrogate_h3::Config {
        max_concurrent_requests: 1,
        ..ferrogate_h3::Config::default()
    };
    let config = QuicConfig {
        max_bidi_streams: 1,
        max_buffered_body: 16 * 1024,
        h3,
        ..QuicConfig::default()
    };
    let mut p = connected(config);
    let conn = conn_handle(&p);
    let cancelled = ErrorCode::RequestCancelled.to_u64();
    // Twice, each time on the only stream allowed: a body the application
    // takes none of (its stream is paused on a full buffer), then one it
    // takes and answers only at its end.
    for path in ["/stall", "/upload"] {
        let s = p.post(path, &big_body());
        if path == "/stall" {
            p.run_for(Duration::from_secs(1));
            assert_eq!(p.server.paused_streams(conn), Some(1));
        } else {
            // A few rounds: the head and some of the body, not all of it.
            for _ in 0..3 {
                p.step();
            }
        }
        assert!(
            p.server_events
                .iter()
                .any(|e| matches!(e, Event::RequestHead { stream, .. } if stream.stream == s))
        );
        assert!(p.response(s).is_none());
        p.reset_request(s, cancelled);
        p.run_for(Duration::from_secs(1));
        let handle = ferrogate_quic::StreamHandle { conn, stream: s };
        assert!(
            p.server_events.iter().any(|e| matches!(
                e,
                Event::StreamAborted { stream, code: ErrorCode::RequestCancelled } if *stream == handle
            )),
            "{path}: {:?}",
            p.server_events
        );
        assert_eq!(p.server.paused_streams(conn), Some(0));
        // Our response side was reset as well...
        let got = p.client.streams.get(&s).map(|c| c.reset);
        assert_eq!(got, Some(Some(cancelled)), "{path}");
        assert!(p.server.send_response_head(handle, 200, &[]).is_err());
    }
    // ...so QUIC freed the stream and the client may open the next one.
    let s = p.get("/after");
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.response(s).unwrap().body, b"you asked for /after");
}

#[test]
fn no_events_after_connection_lost() {
    let config = QuicConfig {
        max_buffered_body: 16 * 1024,
        ..QuicConfig::default()
    };
    let mut p = connected(config);
    let conn = conn_handle(&p);
    let s = p.post("/stall", &big_body());
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.server.paused_streams(conn), Some(1));
    // The client goes away while the stream is paused...
    let now = p.now;
    p.quic().close(now, pair::varint(0), bytes::Bytes::new());
    p.drive();
    let lost = p
        .server_events
        .iter()
        .position(|e| matches!(e, Event::ConnectionLost { .. }))
        .expect("the close was reported");
    // ...and the application, still working through earlier events, takes
    // the body, which would have the paused stream read again.
    let handle = ferrogate_quic::StreamHandle { conn, stream: s };
    if let Some(body) = p.server.request_body(handle) {
        body.clear();
    }
    p.drive();
    // What the last round queued, not yet served.
    let late = std::iter::from_fn(|| p.server.poll_event());
    let mut after = p.server_events.split_off(lost + 1);
    after.extend(late);
    assert_eq!(after, [], "events after ConnectionLost");
}

#[test]
fn stop_reading_an_abandoned_body_frees_the_stream_after_the_response() {
    let h3 = ferrogate_h3::Config {
        max_concurrent_requests: 1,
        ..ferrogate_h3::Config::default()
    };
    let config = QuicConfig {
        max_bidi_streams: 1,
        max_buffered_body: 16 * 1024,
        h3,
        ..QuicConfig::default()
    };
    let mut p = connected(config);
    let conn = conn_handle(&p);
    let s = p.post("/stall", &big_body());
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.server.paused_streams(conn), Some(1));
    let handle = ferrogate_quic::StreamHandle { conn, stream: s };
    // The application answers without the rest of the body.
    p.server.stop_reading(handle, ErrorCode::NoError).unwrap();
    assert_eq!(p.server.paused_streams(conn), Some(0));
    assert_eq!(p.server.request_body(handle).map(|b| b.len()), Some(0));
    p.server.send_response_head(handle, 413, &[]).unwrap();
    p.server.finish(handle).unwrap();
    let data_events = |p: &Pair| {
        p.server_events
            .iter()
            .filter(|e| matches!(e, Event::RequestData(_)))
            .count()
    };
    let before = data_events(&p);
    p.run_for(Duration::from_secs(1));
    assert_eq!(data_events(&p), before, "no body read after stop_reading");
    assert_eq!(p.response(s).expect("the response").status, b"413");
    assert!(p.uploaded(s).is_none(), "the client was told to stop");
    // Request slot and QUIC stream are free again.
    let next = p.get("/next");
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.response(next).unwrap().body, b"you asked for /next");
    assert!(p.server.stop_reading(handle, ErrorCode::NoError).is_err());
}

#[test]
fn a_handle_kept_past_its_connection_does_not_reach_the_next_one() {
    let mut p = connected(QuicConfig::default());
    let first = conn_handle(&p);
    let s = p.post("/stall", &big_body());
    p.drive();
    let old = ferrogate_quic::StreamHandle {
        conn: first,
        stream: s,
    };
    assert!(p.server.request_body(old).is_some());
    p.server.close(p.now, first, ErrorCode::NoError).unwrap();
    for _ in 0..100 {
        if p.server.connections() == 0 {
            break;
        }
        p.advance();
    }
    assert_eq!(p.server.connections(), 0);
    // A new connection takes the freed slot, with a request on the same
    // stream id.
    p.connect();
    let second = p
        .server_events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Connected(c) => Some(*c),
            _ => None,
        })
        .unwrap();
    assert_eq!(second.handle, first.handle, "the slot is reused");
    assert_ne!(second, first);
    p.open_control();
    let s2 = p.post("/stall", &big_body());
    p.drive();
    assert_eq!(s2, s);
    // The old handle is gone: no answer lands on the new client's stream.
    assert!(p.server.request_body(old).is_none());
    assert_eq!(
        p.server.send_response_head(old, 200, &[]),
        Err(ferrogate_quic::SendError::UnknownConnection)
    );
    assert!(p.server.queued_output(old).is_none());
    assert!(p.server.close(p.now, first, ErrorCode::NoError).is_err());
    let new = ferrogate_quic::StreamHandle {
        conn: second,
        stream: s,
    };
    assert!(p.server.request_body(new).is_some_and(|b| !b.is_empty()));
}

#[test]
fn goaway_closes_the_connection_once_its_last_request_is_answered() {
    let mut p = connected(QuicConfig::default());
    let held = p.get("/hold");
    p.drive();
    p.server.goaway_all();
    p.drive();
    // A response is still open: the connection stays.
    assert!(p.client.lost.is_none(), "closed with a response open");
    assert_eq!(p.server.connections(), 1);
    // The client gives up on it; nothing is left: closed at once with
    // H3_NO_ERROR, not after the idle timeout.
    p.reset_request(held, ErrorCode::RequestCancelled.to_u64());
    let id = ferrogate_quic::quinn_proto::StreamId::from(pair::varint(held));
    let code = pair::varint(ErrorCode::RequestCancelled.to_u64());
    p.quic().recv_stream(id).stop(code).unwrap();
    // Closed once our reset is acknowledged (a delayed ACK away).
    p.run_for(Duration::from_millis(200));
    let lost = p.server_events.iter().find_map(|e| match e {
        Event::ConnectionLost { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(lost, Some(CloseReason::Local(ErrorCode::NoError)));
    match &p.client.lost {
        Some(ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, pair::varint(ErrorCode::NoError.to_u64()))
        }
        other => panic!("client saw {other:?}"),
    }
}

#[test]
fn a_draining_endpoint_refuses_new_connections() {
    let mut p = connected(QuicConfig::default());
    p.server.goaway_all();
    p.drive();
    // A second client arrives after the drain began.
    let c = pair::certs();
    let config = ferrogate_quic::client::client_config(&[c.cert]);
    p.client = ferrogate_quic::client::H3Client::new(config, p.server_addr);
    p.client_addr = "10.77.0.3:50001".parse().unwrap();
    p.connect();
    for _ in 0..20 {
        if p.client.lost.is_some() {
            break;
        }
        p.advance();
    }
    assert!(!p.client.connected, "accepted while draining");
    assert!(
        matches!(p.client.lost, Some(ConnectionError::ConnectionClosed(_))),
        "{:?}",
        p.client.lost
    );
    assert_eq!(p.server.stats().refused, 1);
}

#[test]
fn a_drain_lets_a_response_in_flight_arrive_whole_before_closing() {
    let mut p = connected(QuicConfig::default());
    let s = p.get("/big");
    // The head and part of the body are out when the drain begins.
    for _ in 0..3 {
        p.step();
    }
    assert!(p.response(s).is_none(), "already complete");
    p.server.goaway_all();
    p.run_for(Duration::from_secs(2));
    let r = p.response(s).expect("the response in flight completed");
    assert_eq!(r.body.len(), BIG);
    assert_eq!(checksum(&r.body), checksum(&big_body()));
    // Then the connection closed with H3_NO_ERROR, not at idle timeout.
    match &p.client.lost {
        Some(ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, pair::varint(ErrorCode::NoError.to_u64()))
        }
        other => panic!("client saw {other:?}"),
    }
}

#[test]
fn one_source_may_hold_only_its_share_of_connections() {
    let config = QuicConfig {
        max_connections_per_source: 1,
        ..QuicConfig::default()
    };
    let mut p = connected(config);
    let cert = pair::certs().cert;
    // A second connection from the same address: refused.
    p.client = ferrogate_quic::client::H3Client::new(
        ferrogate_quic::client::client_config(std::slice::from_ref(&cert)),
        p.server_addr,
    );
    p.connect();
    p.run_for(Duration::from_millis(500));
    assert!(!p.client.connected, "a second connection from one source");
    assert_eq!(p.server.stats().refused_per_source, 1);
    // Another source is still served.
    p.client_addr = "10.77.0.3:50000".parse().unwrap();
    p.client = ferrogate_quic::client::H3Client::new(
        ferrogate_quic::client::client_config(&[cert]),
        p.server_addr,
    );
    p.connect();
    assert_eq!(p.server.stats().accepted, 2, "{:?}", p.server.stats());
}

#[test]
fn past_the_handshake_threshold_new_connections_prove_their_address_first() {
    let config = QuicConfig {
        retry_above_handshakes: 0,
        ..QuicConfig::default()
    };
    let p = connected(config);
    let s = p.server.stats();
    assert_eq!((s.retries, s.accepted), (1, 1), "{s:?}");
}
