//! HTTP/2 (h2c) through the proxy back to back (`common/`): a raw client
//! built from the codec's emitters and HPACK, the HTTP/1.1 origin of the
//! harness, a simulated clock. What the lab tests cannot pin down: the
//! exact bytes upstream, retries, and framings the real origins never send.

mod common;
#[path = "common/wasm.rs"]
mod wasm;

use common::*;
use ferrogate_proxy::h2::{ErrorCode, FrameHeader, FrameType, PREFACE, SettingId, emit, flags};
use wasm::*;

/// The harness's routes with HTTP/2 on the listener.
fn h2_routes() -> Arc<RouteTable> {
    let base = routes();
    let upstream = base.upstreams[0].clone();
    let listener = Listener::new(80, base.listeners[0].routes().to_vec()).with_http2(true);
    Arc::new(RouteTable::new(1, vec![listener], vec![upstream]))
}

/// h2 routes to one pool with `tune`d policy (endpoint: the origin).
fn h2_routes_with(tune: impl FnOnce(&mut PoolPolicy)) -> Arc<RouteTable> {
    let upstream = origin_pool(tune);
    let route = Route::new("origin", RouteAction::Proxy(upstream.clone()));
    let listener = Listener::new(80, vec![route]).with_http2(true);
    Arc::new(RouteTable::new(1, vec![listener], vec![upstream]))
}

fn h2_lab() -> Lab {
    Lab::with_routes(Origin::Serving, h2_routes(), |_| {})
}

/// One response as the client saw it.
#[derive(Debug, Default)]
struct H2Response {
    /// Every head in order (1xx first): status and fields.
    heads: Vec<(u16, Vec<(String, String)>)>,
    body: Vec<u8>,
    reset: Option<u32>,
    /// Trailing HEADERS (no `:status`), if the stream ended with them.
    trailers: Option<Vec<(String, String)>>,
}

impl H2Response {
    fn status(&self) -> u16 {
        self.heads.last().map_or(0, |h| h.0)
    }

    fn field(&self, name: &str) -> Option<&str> {
        let (_, fields) = self.heads.last()?;
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct H2Client {
    h: SocketHandle,
    enc: loona_hpack::Encoder<'static>,
    dec: loona_hpack::Decoder<'static>,
    buf: Vec<u8>,
}

impl H2Client {
    fn connect(lab: &mut Lab) -> H2Client {
        let h = lab.connect();
        let mut out = PREFACE.to_vec();
        emit::settings(&mut out, &[(SettingId::InitialWindowSize, 1 << 20)]);
        lab.send(h, &out);
        H2Client {
            h,
            enc: loona_hpack::Encoder::new(),
            dec: loona_hpack::Decoder::new(),
            buf: Vec::new(),
        }
    }

    fn headers(&mut self, lab: &mut Lab, stream: u32, method: &str, path: &str, end: bool) {
        self.headers_with(lab, stream, method, path, &[], end);
    }

    /// HEADERS with `extra` fields after the pseudo-headers.
    fn headers_with(
        &mut self,
        lab: &mut Lab,
        stream: u32,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        end: bool,
    ) {
        let mut block = Vec::new();
        let pseudo = [
            (&b":method"[..], method.as_bytes()),
            (b":scheme", b"http"),
            (b":authority", b"x.example"),
            (b":path", path.as_bytes()),
        ];
        self.enc
            .encode_into(
                pseudo
                    .into_iter()
                    .chain(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))),
                &mut block,
            )
            .unwrap();
        let mut out = Vec::new();
        emit::headers(&mut out, stream, &block, end, 16_384);
        lab.send(self.h, &out);
    }

    /// Trailing HEADERS (END_STREAM) with `fields`.
    fn trailers(&mut self, lab: &mut Lab, stream: u32, fields: &[(&str, &str)]) {
        let mut block = Vec::new();
        self.enc
            .encode_into(
                fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
                &mut block,
            )
            .unwrap();
        let mut out = Vec::new();
        emit::headers(&mut out, stream, &block, true, 16_384);
        lab.send(self.h, &out);
    }

    fn data(&mut self, lab: &mut Lab, stream: u32, bytes: &[u8], end: bool) {
        let mut out = Vec::new();
        emit::data(&mut out, stream, bytes, end, 16_384);
        lab.send(self.h, &out);
    }

    /// Runs `steps` of time, reading (and decoding, to keep HPACK in step)
    /// whatever comes; the frames of `stream` go into the response.
    fn pump(&mut self, lab: &mut Lab, steps: usize) {
        let mut sink = H2Response::default();
        for _ in 0..steps {
            self.read_frames(lab, 0, &mut sink);
        }
    }

    /// Reads until `stream` ends (END_STREAM or RST_STREAM); ACKs SETTINGS.
    fn response(&mut self, lab: &mut Lab, stream: u32) -> H2Response {
        let mut r = H2Response::default();
        for _ in 0..3_000 {
            if self.read_frames(lab, stream, &mut r) {
                return r;
            }
        }
        panic!("stream {stream} did not end: {r:?}");
    }

    /// One step of reading; true once `stream` ended.
    fn read_frames(&mut self, lab: &mut Lab, stream: u32, r: &mut H2Response) -> bool {
        {
            let got = lab.read_until(self.h, 1, |_| true);
            self.buf.extend_from_slice(&got);
            while let Some(h) = FrameHeader::parse(&self.buf) {
                let total = 9 + h.length as usize;
                if self.buf.len() < total {
                    break;
                }
                let payload: Vec<u8> = self.buf[9..total].to_vec();
                self.buf.drain(..total);
                let end = h.flags & flags::END_STREAM != 0;
                // As a real client: what arrives is given back to the
                // connection's window, also DATA of a stream it reset.
                if h.kind == FrameType::Data && h.length > 0 {
                    let mut wu = Vec::new();
                    emit::window_update(&mut wu, 0, h.length);
                    lab.send(self.h, &wu);
                }
                match h.kind {
                    FrameType::Settings if h.flags & flags::ACK == 0 => {
                        let mut ack = Vec::new();
                        emit::settings_ack(&mut ack);
                        lab.send(self.h, &ack);
                    }
                    FrameType::Headers if h.stream == stream => {
                        let fields = self.dec.decode(&payload).expect("HPACK");
                        let mut status = 0;
                        let mut list = Vec::new();
                        for (n, v) in fields {
                            let (n, v) =
                                (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap());
                            if n == ":status" {
                                status = v.parse().unwrap();
                            } else {
                                list.push((n, v));
                            }
                        }
                        if status == 0 && !r.heads.is_empty() {
                            r.trailers = Some(list);
                        } else {
                            r.heads.push((status, list));
                        }
                        if end {
                            return true;
                        }
                    }
                    FrameType::Headers => {
                        self.dec.decode(&payload).expect("HPACK");
                    }
                    FrameType::Data if h.stream == stream => {
                        r.body.extend_from_slice(&payload);
                        if end {
                            return true;
                        }
                    }
                    FrameType::RstStream if h.stream == stream => {
                        r.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                        return true;
                    }
                    _ => {}
                }
            }
        }
        false
    }
}

#[test]
fn h2c_get_is_proxied_and_direct_routes_answer_on_the_stream() {
    let mut lab = h2_lab();
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/hello", true);
    let r = c.response(&mut lab, 1);
    assert_eq!((r.status(), &r.body[..]), (200, &b"origin:/hello"[..]));
    // The origin saw HTTP/1.1 with Host from :authority, no pseudo-headers.
    let head = &lab.origin_requests[0];
    assert!(head.starts_with("GET /hello HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("host: x.example\r\n"), "{head}");
    assert!(!head.contains(":authority"), "{head}");
    c.headers(&mut lab, 3, "GET", "/direct", true);
    let r = c.response(&mut lab, 3);
    assert_eq!(
        (r.status(), &r.body[..]),
        (200, &b"hello from ferrogate"[..])
    );
    assert_eq!(lab.edge.stats().h2.requests, 2);
}

#[test]
fn h2c_body_without_length_goes_upstream_chunked_one_write_per_chunk() {
    let mut lab = h2_lab();
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "POST", "/upload", false);
    c.data(&mut lab, 1, b"hello", false);
    c.pump(&mut lab, 20);
    c.data(&mut lab, 1, b" world", true);
    let r = c.response(&mut lab, 1);
    assert_eq!(
        (r.status(), &r.body[..]),
        (200, &b"got 11: hello world"[..])
    );
    assert!(
        lab.origin_requests[0].contains("Transfer-Encoding: chunked\r\n"),
        "{}",
        lab.origin_requests[0]
    );
    assert_eq!(
        lab.origin_bodies[0],
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
}

#[test]
fn h2c_retry_on_a_fresh_connection_resends_the_whole_chunked_request() {
    let mut lab = h2_lab();
    let mut c = H2Client::connect(&mut lab);
    // A pooled upstream connection, then the origin forgets it: the next
    // request on it meets a reset and is retried on a fresh connection.
    c.headers(&mut lab, 1, "GET", "/warm", true);
    assert_eq!(c.response(&mut lab, 1).status(), 200);
    lab.origin_forgets_all();
    // PUT (idempotent) whose body is known to be empty only at its end.
    c.headers(&mut lab, 3, "PUT", "/upload", false);
    c.data(&mut lab, 3, b"", true);
    let r = c.response(&mut lab, 3);
    assert_eq!((r.status(), &r.body[..]), (200, &b"got 0: "[..]));
    assert_eq!(lab.edge.stats().retries, 1);
    assert_eq!(lab.origin_bodies.last().unwrap(), b"0\r\n\r\n");
}

#[test]
fn h2c_response_with_both_framings_carries_no_content_length() {
    let mut lab = h2_lab();
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/te-cl", true);
    let r = c.response(&mut lab, 1);
    assert_eq!((r.status(), &r.body[..]), (200, &b"hello"[..]));
    assert_eq!(r.field("content-length"), None, "{r:?}");
    assert_eq!(r.field("transfer-encoding"), None, "{r:?}");
}

#[test]
fn h2c_early_hints_reach_the_client_before_the_response() {
    let mut lab = h2_lab();
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/hints", true);
    let r = c.response(&mut lab, 1);
    assert_eq!(r.heads.len(), 2, "{r:?}");
    assert_eq!(r.heads[0].0, 103);
    assert!(
        r.heads[0]
            .1
            .contains(&("link".into(), "</a.css>; rel=preload".into()))
    );
    assert_eq!((r.status(), &r.body[..]), (200, &b"ok"[..]));
}

#[test]
fn h2c_chunked_response_ends_although_the_client_window_is_spent_by_the_payload() {
    let mut lab = h2_lab();
    let h = lab.connect();
    // A stream window of exactly the payload (12 octets, "hello, world"):
    // the chunked framing after it must not wait for more window.
    let mut out = PREFACE.to_vec();
    emit::settings(&mut out, &[(SettingId::InitialWindowSize, 12)]);
    lab.send(h, &out);
    let mut c = H2Client {
        h,
        enc: loona_hpack::Encoder::new(),
        dec: loona_hpack::Decoder::new(),
        buf: Vec::new(),
    };
    c.headers(&mut lab, 1, "GET", "/chunked", true);
    let r = c.response(&mut lab, 1);
    assert_eq!((r.status(), &r.body[..]), (200, &b"hello, world"[..]));
    assert_eq!(r.reset, None);
}

/// A chunked body of many chunks to a client that reads late: the
/// connection's output room fills (the client's TCP window is shut), then
/// opens a little at a time. Each chunk is sent against the room the
/// previous one's DATA frame header left (a capacity read once per turn and
/// spent over several sends passed it: `send_data` asserts in debug builds,
/// a worker panicked in the lab).
#[test]
fn h2c_chunked_body_of_many_chunks_fills_the_output_room_and_arrives_whole() {
    let mut lab = h2_cache_lab();
    lab.big_body = 900_000;
    let mut c = H2Client::connect(&mut lab);
    // Connection window wide open: only the output room binds.
    let mut out = Vec::new();
    emit::window_update(&mut out, 0, 1 << 24);
    lab.send(c.h, &out);
    let want: Vec<u8> = (0..900_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    // From the origin (a miss), then from the store (a hit, served in
    // pieces of the stored body: the same room, the same headers).
    for stream in [1, 3] {
        c.headers(&mut lab, stream, "GET", "/cached/bigchunked", true);
        for _ in 0..300 {
            lab.step(1);
        }
        let r = c.response(&mut lab, stream);
        assert_eq!((r.status(), r.body.len(), r.reset), (200, 900_000, None));
        assert!(r.body == want, "stream {stream}: the body differs");
    }
    assert_eq!(origin_hits(&lab, "/cached/bigchunked"), 1);
}

#[test]
fn h2c_client_reset_mid_response_gives_the_upstream_back_and_counts() {
    let mut lab = h2_lab();
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/big", true);
    c.pump(&mut lab, 5);
    let mut out = Vec::new();
    emit::rst_stream(&mut out, 1, ErrorCode::Cancel);
    lab.send(c.h, &out);
    c.pump(&mut lab, 50);
    let s = lab.edge.stats();
    assert_eq!(s.h2.client_resets, 1, "{:?}", s.h2);
    // The connection goes on.
    c.headers(&mut lab, 3, "GET", "/after", true);
    assert_eq!(c.response(&mut lab, 3).body, b"origin:/after");
    // Nothing leaked: one upstream in use at most, then idle or closed.
    c.pump(&mut lab, 50);
    assert!(lab.edge.upstream_ports_in_use() <= 2);
}

/// A pool's read timeout outlasts the response timeout mid-body on h2 as
/// on HTTP/1: a pause within it goes on, the body completes.
#[test]
fn h2c_body_pause_within_the_pool_read_timeout_goes_on() {
    let routes = h2_routes_with(|p| {
        p.timeouts.response = Some(std::time::Duration::from_secs(1));
        p.timeouts.read = Some(std::time::Duration::from_secs(5));
    });
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let mut c = H2Client::connect(&mut lab);
    let errors = lab.edge.stats().upstream_errors;
    c.headers(&mut lab, 1, "GET", "/stall-body", true);
    let mut r = H2Response::default();
    // 3 s: past the response timeout, within the read timeout.
    for _ in 0..3_000 {
        assert!(!c.read_frames(&mut lab, 1, &mut r), "ended early: {r:?}");
    }
    assert_eq!(r.body, b"0123456789");
    assert_eq!(lab.edge.stats().upstream_errors, errors);
    let rest: Vec<u8> = (10..100).map(|i| b'a' + (i % 26) as u8).collect();
    lab.origin_conns.last_mut().unwrap().out.extend(&rest);
    let mut ended = false;
    for _ in 0..1_000 {
        if c.read_frames(&mut lab, 1, &mut r) {
            ended = true;
            break;
        }
    }
    assert!(ended, "{r:?}");
    assert_eq!(r.reset, None, "{r:?}");
    assert_eq!(r.body.len(), 100);
    assert_eq!(lab.edge.stats().upstream_errors, errors);
}

#[test]
fn h2c_origin_silent_mid_body_is_reset_after_the_response_timeout_and_counted() {
    let mut lab = Lab::with_routes(Origin::Serving, h2_routes(), |c| {
        c.timeouts.upstream_response = std::time::Duration::from_secs(1);
    });
    let mut c = H2Client::connect(&mut lab);
    let errors = lab.edge.stats().upstream_errors;
    c.headers(&mut lab, 1, "GET", "/stall-body", true);
    // The head and 10 of 100 bytes, then silence: a reset (not a 60 s
    // client-idle wait, and not a stalled-reader count).
    let r = c.response(&mut lab, 1);
    assert_eq!(r.status(), 200);
    assert_eq!(r.body, b"0123456789");
    assert_eq!(r.reset, Some(ErrorCode::InternalError.to_u32()), "{r:?}");
    let s = lab.edge.stats();
    assert_eq!(s.upstream_errors, errors + 1);
    assert_eq!(s.h2.stalled_resets, 0, "{:?}", s.h2);
    // The connection goes on.
    c.headers(&mut lab, 3, "GET", "/after", true);
    assert_eq!(c.response(&mut lab, 3).body, b"origin:/after");
}

/// h2 routes where `/cached` is cached.
fn h2_cache_lab() -> Lab {
    h2_cache_lab_with(|_| {})
}

fn h2_cache_lab_with(tune: impl FnOnce(&mut StackConfig)) -> Lab {
    let upstream = origin_pool(|_| {});
    let cached = Route {
        path: PathMatch::Prefix("/cached".into()),
        cache: Some(Arc::new(ferrogate_proxy::cache::RouteCache::default())),
        ..Route::new("cached", RouteAction::Proxy(upstream.clone()))
    };
    let other = Route::new("origin", RouteAction::Proxy(upstream.clone()));
    let listener = Listener::new(80, vec![cached, other]).with_http2(true);
    let routes = Arc::new(RouteTable::new(1, vec![listener], vec![upstream]));
    Lab::with_routes(Origin::Serving, routes, tune)
}

#[test]
fn h2c_cached_route_serves_hits_from_the_store_within_flow_control() {
    let mut lab = h2_cache_lab();
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/cached/a", true);
    let r1 = c.response(&mut lab, 1);
    assert_eq!(r1.status(), 200);
    assert_eq!(r1.field("x-cache"), Some("MISS"), "{r1:?}");
    c.headers(&mut lab, 3, "GET", "/cached/a", true);
    let r2 = c.response(&mut lab, 3);
    assert_eq!(r2.field("x-cache"), Some("HIT"), "{r2:?}");
    assert_eq!(r2.body, r1.body);
    assert_eq!(r2.field("etag"), Some("\"v1\""));
    assert!(r2.field("age").is_some(), "{r2:?}");
    assert_eq!(
        r2.field("content-length"),
        Some(r1.body.len().to_string().as_str())
    );
    // HEAD: the stored GET's head, END_STREAM on HEADERS.
    c.headers(&mut lab, 5, "HEAD", "/cached/a", true);
    let r3 = c.response(&mut lab, 5);
    assert_eq!((r3.status(), r3.body.len()), (200, 0));
    assert_eq!(r3.field("x-cache"), Some("HIT"));
    // A body larger than the initial stream window (64 KiB), from a
    // chunked origin: stored de-chunked, served as DATA as the window opens.
    lab.big_body = 200_000;
    c.headers(&mut lab, 7, "GET", "/cached/big", true);
    let big1 = c.response(&mut lab, 7);
    assert_eq!(big1.body.len(), 200_000);
    c.headers(&mut lab, 9, "GET", "/cached/big", true);
    let big2 = c.response(&mut lab, 9);
    assert_eq!(big2.field("x-cache"), Some("HIT"));
    assert_eq!(big2.body, big1.body);
    c.headers(&mut lab, 11, "GET", "/cached/chunked", true);
    let ch1 = c.response(&mut lab, 11);
    c.headers(&mut lab, 13, "GET", "/cached/chunked", true);
    let ch2 = c.response(&mut lab, 13);
    assert_eq!(ch2.field("x-cache"), Some("HIT"), "{ch2:?}");
    assert_eq!(ch2.body, ch1.body);
    let hits = |p: &str| {
        lab.origin_requests
            .iter()
            .filter(|r| r.split(' ').nth(1) == Some(p))
            .count()
    };
    assert_eq!(
        (
            hits("/cached/a"),
            hits("/cached/big"),
            hits("/cached/chunked")
        ),
        (1, 1, 1)
    );
    let s = lab.edge.stats().cache;
    assert_eq!((s.hit, s.miss), (4, 3), "{s:?}");
}

#[test]
fn h2c_and_http1_share_the_store_and_revalidate_with_304() {
    let mut lab = h2_cache_lab();
    lab.cache_control = "max-age=2".into();
    // Ages are whole seconds: with max-age=1 a hit right after a store
    // or a refresh is stale whenever the wall clock crosses a second.
    let h1 = lab.connect();
    let r = lab.exchange(h1, b"GET /cached/s HTTP/1.1\r\nHost: x.example\r\n\r\n");
    assert_eq!(r.status, 200);
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/cached/s", true);
    let r1 = c.response(&mut lab, 1);
    assert_eq!(r1.field("x-cache"), Some("HIT"), "{r1:?}");
    assert_eq!(r1.body, r.body);
    for _ in 0..30 {
        lab.step(100);
    }
    c.headers(&mut lab, 3, "GET", "/cached/s", true);
    let r2 = c.response(&mut lab, 3);
    assert_eq!(r2.field("x-cache"), Some("REVALIDATED"), "{r2:?}");
    assert_eq!(r2.body, r.body);
    let last = lab.origin_requests.last().unwrap().to_ascii_lowercase();
    assert!(last.contains("if-none-match: \"v1\""), "{last}");
}

#[test]
fn h2c_stale_while_revalidate_serves_stale_at_once_and_refreshes_in_the_background() {
    let mut lab = h2_cache_lab();
    lab.cache_control = "max-age=1, stale-while-revalidate=60".into();
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/cached/swr", true);
    let r1 = c.response(&mut lab, 1);
    assert_eq!(r1.field("x-cache"), Some("MISS"), "{r1:?}");
    for _ in 0..30 {
        lab.step(100);
    }
    // The origin holds its answer; two stale requests are answered within
    // 50 ms anyway.
    lab.origin = Origin::BlackHole;
    lab.cache_control = "max-age=60".into();
    for id in [3, 5] {
        c.headers(&mut lab, id, "GET", "/cached/swr", true);
        let mut r = H2Response::default();
        let ended = (0..50).any(|_| c.read_frames(&mut lab, id, &mut r));
        assert!(ended, "stream {id} waits for the origin: {r:?}");
        assert_eq!(r.field("x-cache"), Some("STALE"), "{r:?}");
        assert_eq!(r.body, r1.body);
    }
    let hits = |lab: &Lab| {
        lab.origin_requests
            .iter()
            .filter(|r| r.split(' ').nth(1) == Some("/cached/swr"))
            .count()
    };
    assert_eq!(hits(&lab), 1);
    lab.origin = Origin::Serving;
    for _ in 0..100 {
        lab.step(100);
        if hits(&lab) > 1 {
            break;
        }
    }
    for _ in 0..10 {
        lab.step(10);
    }
    assert_eq!(hits(&lab), 2, "{:?}", lab.origin_requests);
    let last = lab.origin_requests.last().unwrap().to_ascii_lowercase();
    assert!(last.contains("if-none-match: \"v1\""), "{last}");
    c.headers(&mut lab, 7, "GET", "/cached/swr", true);
    let r = c.response(&mut lab, 7);
    assert_eq!(r.field("x-cache"), Some("HIT"), "{r:?}");
    assert_eq!(r.field("cache-control"), Some("max-age=60"), "{r:?}");
    assert_eq!(r.body, r1.body);
    let s = lab.edge.stats();
    assert_eq!(
        (
            s.cache_background_revalidations,
            s.cache_background_refreshed
        ),
        (1, 1)
    );
}

/// A listener with a proxy-wasm plugin that adds `x-plugin: 1` to
/// responses (a request it changed would bypass the cache), HTTP/2 on, a
/// cached route.
fn plugin_lab() -> Lab {
    plugin_lab_with(
        r#"(drop (call $add (i32.const 2) (i32.const 256) (i32.const 8) (i32.const 264) (i32.const 1)))"#,
        |_| {},
    )
}

/// The plugin lab with `on_response` as the response callback's body and
/// the stack's configuration `tune`d.
fn plugin_lab_with(on_response: &str, tune: impl FnOnce(&mut StackConfig)) -> Lab {
    use ferrogate_proxy::plugin_phase::AttachedPlugin;
    use ferrogate_proxy::plugins::{Plugin, PluginConfig, PluginLimits, PluginModule};
    let wasm = wat::parse_str(format!(
        r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (data (i32.const 256) "x-plugin")
  (data (i32.const 264) "1")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    {on_response}
    (i32.const 0)))"#
    ))
    .unwrap();
    let module = PluginModule::compile(&wasm, &PluginLimits::default()).unwrap();
    let plugin = Plugin::new(
        module,
        PluginConfig {
            name: "adder".into(),
            ..Default::default()
        },
    );
    let upstream = origin_pool(|_| {});
    let cached = Route {
        path: PathMatch::Prefix("/cached".into()),
        cache: Some(Arc::new(ferrogate_proxy::cache::RouteCache::default())),
        ..Route::new("cached", RouteAction::Proxy(upstream.clone()))
    };
    let other = Route::new("origin", RouteAction::Proxy(upstream.clone()));
    let listener = Listener::new(80, vec![cached, other])
        .with_http2(true)
        .with_plugins(vec![AttachedPlugin {
            plugin,
            fail_open: false,
        }]);
    let routes = Arc::new(RouteTable::new(1, vec![listener], vec![upstream]));
    Lab::with_routes(Origin::Serving, routes, tune)
}

/// Every plugin context a request starts ends (`on_done`, `on_log`,
/// `on_delete`) however the request ends: a response over keep-alive, a
/// cache hit, a client that resets its connection mid-response, an h2
/// stream reset, a cache hit on h2.
#[test]
fn plugin_contexts_end_on_every_path() {
    let mut lab = plugin_lab();
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: x.example\r\n\r\n").into_bytes();
    let c = lab.connect();
    let r = lab.exchange(c, &get("/hello"));
    assert_eq!(r.status, 200);
    assert!(r.head.contains("x-plugin: 1"), "{}", r.head);
    assert_eq!(lab.exchange(c, &get("/cached/a")).status, 200);
    // A hit, and the last request on this connection for now.
    assert_eq!(lab.exchange(c, &get("/cached/a")).status, 200);
    lab.step(10);
    let s = lab.edge.stats();
    assert_eq!(s.cache.hit, 1);
    assert_eq!(
        (s.plugin_contexts_created, s.plugin_contexts_ended),
        (3, 3),
        "a cache hit ends its contexts"
    );
    // A client that leaves mid-response.
    let c2 = lab.connect();
    lab.send(c2, &get("/big"));
    for _ in 0..5 {
        lab.step(1);
    }
    lab.sockets.get_mut::<tcp::Socket>(c2).abort();
    for _ in 0..50 {
        lab.step(1);
    }
    // HTTP/2: a response, a hit, a reset mid-response.
    let mut h2 = H2Client::connect(&mut lab);
    h2.headers(&mut lab, 1, "GET", "/hello", true);
    assert_eq!(h2.response(&mut lab, 1).field("x-plugin"), Some("1"));
    h2.headers(&mut lab, 3, "GET", "/cached/a", true);
    assert_eq!(h2.response(&mut lab, 3).field("x-cache"), Some("HIT"));
    h2.headers(&mut lab, 5, "GET", "/big", true);
    h2.pump(&mut lab, 5);
    let mut out = Vec::new();
    emit::rst_stream(&mut out, 5, ErrorCode::Cancel);
    lab.send(h2.h, &out);
    h2.pump(&mut lab, 50);
    let s = lab.edge.stats();
    assert_eq!(s.h2.client_resets, 1, "{:?}", s.h2);
    assert_eq!(s.plugin_contexts_created, 7, "{s:?}");
    assert_eq!(s.plugin_contexts_ended, s.plugin_contexts_created, "{s:?}");
    assert_eq!(s.plugin_failures, 0);
}

/// A cache hit's stored head goes through the response phase as the
/// miss's did, on h2 (and HTTP/1 from the same store).
#[test]
fn plugin_response_phase_runs_on_cache_hits() {
    let mut lab = plugin_lab();
    let mut h2 = H2Client::connect(&mut lab);
    h2.headers(&mut lab, 1, "GET", "/cached/a", true);
    let miss = h2.response(&mut lab, 1);
    assert_eq!(miss.field("x-cache"), Some("MISS"), "{miss:?}");
    assert_eq!(miss.field("x-plugin"), Some("1"), "{miss:?}");
    h2.headers(&mut lab, 3, "GET", "/cached/a", true);
    let hit = h2.response(&mut lab, 3);
    assert_eq!(hit.field("x-cache"), Some("HIT"), "{hit:?}");
    assert_eq!(hit.field("x-plugin"), Some("1"), "{hit:?}");
    let c = lab.connect();
    let r = lab.exchange(c, b"GET /cached/a HTTP/1.1\r\nHost: x.example\r\n\r\n");
    assert!(r.head.contains("x-cache: HIT"), "{}", r.head);
    assert!(r.head.contains("x-plugin: 1"), "{}", r.head);
    let s = lab.edge.stats();
    assert_eq!(s.cache.hit, 2);
    assert_eq!((s.plugin_contexts_created, s.plugin_contexts_ended), (3, 3));
    // One request call and one response call per request.
    assert_eq!(s.plugin_calls, 6);
    assert_eq!(s.plugin_failures, 0);
}

/// Lines a plugin adds that overflow the head buffer are the plugin's
/// failure: 500 plugin_failed, no retry, nothing held against the origin.
#[test]
fn plugin_lines_that_overflow_the_head_are_a_plugin_failure() {
    // `x-plugin: aaaa…` (6000 bytes: under the plugins' 8 KiB, over a
    // 4 KiB head buffer).
    let mut lab = plugin_lab_with(
        r#"(memory.fill (i32.const 1024) (i32.const 97) (i32.const 6000))
           (drop (call $add (i32.const 2) (i32.const 256) (i32.const 8) (i32.const 1024) (i32.const 6000)))"#,
        |c| c.head_buffer = 4096,
    );
    let c = lab.connect();
    let r = lab.exchange(c, b"GET /hello HTTP/1.1\r\nHost: x.example\r\n\r\n");
    assert_eq!(r.status, 500, "{}", r.head);
    let s = lab.edge.stats();
    assert_eq!((s.retries, s.upstream_errors), (0, 0), "{s:?}");
    assert_eq!(s.plugin_failures, 1);
    assert_eq!(lab.origin_requests.len(), 1);
    let mut h2 = H2Client::connect(&mut lab);
    h2.headers(&mut lab, 1, "GET", "/hello", true);
    assert_eq!(h2.response(&mut lab, 1).status(), 500);
    let s = lab.edge.stats();
    assert_eq!((s.retries, s.upstream_errors), (0, 0), "{s:?}");
    assert_eq!(s.plugin_failures, 2);
}

/// Reads stream `stream` of `c` until more than `octets` of its body came.
fn read_some(c: &mut H2Client, lab: &mut Lab, stream: u32, octets: usize) {
    let mut r = H2Response::default();
    for _ in 0..3_000 {
        if c.read_frames(lab, stream, &mut r) || r.body.len() > octets {
            break;
        }
    }
    assert!(
        r.body.len() > octets,
        "stream {stream}: {} octets",
        r.body.len()
    );
    assert!(r.body.len() < 200_000, "the body was all through already");
}

fn origin_hits(lab: &Lab, path: &str) -> usize {
    lab.origin_requests
        .iter()
        .filter(|r| r.split(' ').nth(1) == Some(path))
        .count()
}

#[test]
fn h2c_client_reset_mid_store_reads_the_body_on_for_the_next_hit() {
    for path in ["/cached/big", "/cached/bigchunked"] {
        let mut lab = h2_cache_lab();
        lab.origin_pace = Some(2000);
        let mut c = H2Client::connect(&mut lab);
        c.headers(&mut lab, 1, "GET", path, true);
        read_some(&mut c, &mut lab, 1, 20_000);
        let mut out = Vec::new();
        emit::rst_stream(&mut out, 1, ErrorCode::Cancel);
        lab.send(c.h, &out);
        c.pump(&mut lab, 300);
        c.headers(&mut lab, 3, "GET", path, true);
        let r = c.response(&mut lab, 3);
        assert_eq!(r.field("x-cache"), Some("HIT"), "{path}: {:?}", r.heads);
        assert_eq!(r.body.len(), 200_000, "{path}");
        assert_eq!(origin_hits(&lab, path), 1, "{path}");
        let s = lab.edge.stats();
        assert_eq!(s.h2.client_resets, 1, "{path}");
        // The upstream connection went back to the pool or was closed.
        c.pump(&mut lab, 50);
        assert!(lab.edge.upstream_ports_in_use() <= 1, "{path}");
    }
}

#[test]
fn h2c_connection_gone_mid_store_reads_the_body_on_for_the_next_hit() {
    let mut lab = h2_cache_lab();
    lab.origin_pace = Some(2000);
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/cached/big", true);
    read_some(&mut c, &mut lab, 1, 20_000);
    lab.sockets.get_mut::<tcp::Socket>(c.h).abort();
    for _ in 0..300 {
        lab.step(1);
    }
    let h1 = lab.connect();
    let r = lab.exchange(h1, b"GET /cached/big HTTP/1.1\r\nHost: x.example\r\n\r\n");
    assert_eq!(r.body.len(), 200_000);
    assert!(
        r.head.to_ascii_lowercase().contains("x-cache: hit"),
        "{}",
        r.head
    );
    assert_eq!(origin_hits(&lab, "/cached/big"), 1);
}

#[test]
fn h2c_client_that_stops_reading_mid_store_is_reset_and_the_body_read_on() {
    let mut lab = h2_cache_lab_with(|c| c.timeouts.client_idle = std::time::Duration::from_secs(5));
    lab.origin_pace = Some(2000);
    // A stream window of 16 KiB the client never opens.
    let h = lab.connect();
    let mut out = PREFACE.to_vec();
    emit::settings(&mut out, &[(SettingId::InitialWindowSize, 16_384)]);
    lab.send(h, &out);
    let mut c = H2Client {
        h,
        enc: loona_hpack::Encoder::new(),
        dec: loona_hpack::Decoder::new(),
        buf: Vec::new(),
    };
    c.headers(&mut lab, 1, "GET", "/cached/big", true);
    for _ in 0..80 {
        lab.step(100);
    }
    assert_eq!(lab.edge.stats().h2.stalled_resets, 1);
    for _ in 0..300 {
        lab.step(1);
    }
    let h1 = lab.connect();
    let r = lab.exchange(h1, b"GET /cached/big HTTP/1.1\r\nHost: x.example\r\n\r\n");
    assert_eq!(r.body.len(), 200_000);
    assert!(
        r.head.to_ascii_lowercase().contains("x-cache: hit"),
        "{}",
        r.head
    );
    assert_eq!(origin_hits(&lab, "/cached/big"), 1);
}

#[test]
fn h2c_one_connection_reads_on_a_bounded_number_of_stored_bodies() {
    let mut lab = h2_cache_lab();
    lab.origin_pace = Some(500);
    // The lab's origin takes eight connections at once: room for twelve.
    for _ in 0..8 {
        let mut s = tcp_socket();
        s.listen((IpAddress::from(Ipv4Address::from(ORIGIN)), 8080))
            .unwrap();
        let h = lab.sockets.add(s);
        lab.origin_listeners.push(h);
    }
    let mut c = H2Client::connect(&mut lab);
    let n = 12u32;
    for k in 0..n {
        c.headers(&mut lab, 1 + 2 * k, "GET", &format!("/cached/big{k}"), true);
    }
    // Every request reached the origin and its head came back (the paced
    // bodies have barely begun).
    for _ in 0..3_000 {
        c.pump(&mut lab, 1);
        if lab.origin_requests.len() == n as usize {
            break;
        }
    }
    assert_eq!(lab.origin_requests.len(), n as usize);
    c.pump(&mut lab, 20);
    let mut out = Vec::new();
    for k in 0..n {
        emit::rst_stream(&mut out, 1 + 2 * k, ErrorCode::Cancel);
    }
    lab.send(c.h, &out);
    c.pump(&mut lab, 20);
    let s = lab.edge.stats();
    assert_eq!(s.h2.client_resets, u64::from(n), "{:?}", s.h2);
    assert_eq!(s.cache_fills_refused, u64::from(n) - 8, "{s:?}");
    // Eight bodies are read on: at most their eight upstreams stay busy.
    assert!(lab.edge.upstream_ports_in_use() <= 8);
    for _ in 0..2_000 {
        lab.step(1);
    }
    let stored = (0..n)
        .filter(|k| {
            let h1 = lab.connect();
            let r = lab.exchange(
                h1,
                format!("GET /cached/big{k} HTTP/1.1\r\nHost: x.example\r\n\r\n").as_bytes(),
            );
            r.head.to_ascii_lowercase().contains("x-cache: hit")
        })
        .count();
    assert_eq!(stored, 8);
}

/// The response body phase on HTTP/2: the plugins' output goes out as
/// DATA with no `content-length` (they may change the length), for a
/// chunked and a long body alike, and the contexts end with the body.
#[test]
fn h2c_body_plugin_output_goes_out_as_data_without_a_length() {
    use ferrogate_proxy::plugin_phase::AttachedPlugin;
    let upstream = origin_pool(|_| {});
    let listener = Listener::new(
        80,
        vec![Route::new("origin", RouteAction::Proxy(upstream.clone()))],
    )
    .with_http2(true)
    .with_plugins(vec![AttachedPlugin {
        plugin: body_wrapper("square", '[', ']'),
        fail_open: false,
    }]);
    let routes = Arc::new(RouteTable::new(1, vec![listener], vec![upstream]));
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let mut h2 = H2Client::connect(&mut lab);
    h2.headers(&mut lab, 1, "GET", "/chunked", true);
    let r = h2.response(&mut lab, 1);
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.body, b"[hello, world]", "{r:?}");
    h2.headers(&mut lab, 3, "GET", "/hello", true);
    let r = h2.response(&mut lab, 3);
    assert_eq!(r.field("content-length"), None, "{r:?}");
    assert!(r.body.starts_with(b"[") && r.body.ends_with(b"]"), "{r:?}");
    h2.headers(&mut lab, 5, "GET", "/big", true);
    let r = h2.response(&mut lab, 5);
    let big: Vec<u8> = (0..lab.big_body).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(r.body.len(), big.len() + 2, "{:?}", r.reset);
    assert!(
        r.body[1..r.body.len() - 1] == big[..],
        "the body in between differs"
    );
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 0);
    assert_eq!(s.plugin_contexts_created, 3);
    assert_eq!(s.plugin_contexts_ended, 3);
}

/// A cached route with a body plugin: the object stores the origin's
/// body, and a hit goes through the plugin as the miss did (one wrap, not
/// two), on HTTP/1 and HTTP/2 alike.
#[test]
fn body_plugin_runs_on_cache_hits_and_the_store_keeps_the_origins_body() {
    use ferrogate_proxy::plugin_phase::AttachedPlugin;
    let upstream = origin_pool(|_| {});
    let cached = Route {
        path: PathMatch::Prefix("/cached".into()),
        cache: Some(Arc::new(ferrogate_proxy::cache::RouteCache::default())),
        ..Route::new("cached", RouteAction::Proxy(upstream.clone()))
    };
    let listener = Listener::new(80, vec![cached])
        .with_http2(true)
        .with_plugins(vec![AttachedPlugin {
            plugin: body_wrapper("square", '[', ']'),
            fail_open: false,
        }]);
    let routes = Arc::new(RouteTable::new(1, vec![listener], vec![upstream]));
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: x.example\r\n\r\n").into_bytes();
    let c = lab.connect();
    let miss = lab.exchange(c, &get("/cached/a"));
    assert!(miss.head.contains("x-cache: MISS"), "{}", miss.head);
    assert!(
        miss.body.starts_with(b"[") && miss.body.ends_with(b"]"),
        "{miss:?}"
    );
    let hit = lab.exchange(c, &get("/cached/a"));
    assert!(hit.head.contains("x-cache: HIT"), "{}", hit.head);
    assert_eq!(hit.body, miss.body, "a hit looks like the miss");
    assert_eq!(values_of(&hit.head, "transfer-encoding"), ["chunked"]);
    let mut h2 = H2Client::connect(&mut lab);
    h2.headers(&mut lab, 1, "GET", "/cached/a", true);
    let r = h2.response(&mut lab, 1);
    assert_eq!(r.field("x-cache"), Some("HIT"), "{r:?}");
    assert_eq!(r.field("content-length"), None, "{r:?}");
    assert_eq!(r.body, miss.body);
    let s = lab.edge.stats();
    assert_eq!(s.cache.hit, 2);
    assert_eq!(s.plugin_failures, 0);
    assert_eq!(s.plugin_contexts_created, 3);
    assert_eq!(s.plugin_contexts_ended, 3);
}

fn values_of(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// A cached 204 (or a HEAD) through a body plugin has no body to re-frame:
/// on a kept-alive HTTP/1.1 connection the next response is read in step.
#[test]
fn body_plugin_leaves_a_cached_204_without_a_body() {
    use ferrogate_proxy::plugin_phase::AttachedPlugin;
    let upstream = origin_pool(|_| {});
    let cached = Route {
        path: PathMatch::Prefix("/cached".into()),
        cache: Some(Arc::new(ferrogate_proxy::cache::RouteCache::default())),
        ..Route::new("cached", RouteAction::Proxy(upstream.clone()))
    };
    let listener = Listener::new(80, vec![cached]).with_plugins(vec![AttachedPlugin {
        plugin: body_wrapper("square", '[', ']'),
        fail_open: false,
    }]);
    let routes = Arc::new(RouteTable::new(1, vec![listener], vec![upstream]));
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: x.example\r\n\r\n").into_bytes();
    let c = lab.connect();
    for want in ["MISS", "HIT"] {
        let r = lab.exchange(c, &get("/cached/nocontent"));
        assert_eq!(r.status, 204, "{r:?}");
        assert!(r.head.contains(&format!("x-cache: {want}")), "{}", r.head);
        assert!(
            values_of(&r.head, "transfer-encoding").is_empty(),
            "{}",
            r.head
        );
    }
    // In step: the next response on the connection is whole.
    let r = lab.exchange(c, &get("/cached/a"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with(b"[") && r.body.ends_with(b"]"), "{r:?}");
    // HEAD: the head alone (its content-length announces no body here).
    lab.send(c, b"HEAD /cached/a HTTP/1.1\r\nHost: x.example\r\n\r\n");
    let head = lab.read_until(c, 3_000, |b| find(b, b"\r\n\r\n").is_some());
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    assert!(
        head.ends_with(b"\r\n\r\n"),
        "no body after a HEAD's head: {head:?}"
    );
    let r = lab.exchange(c, &get("/cached/a"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(lab.edge.stats().plugin_failures, 0);
}

/// The request body phase on HTTP/2: the client's DATA through the plugin,
/// up to the origin chunked (the plugin removed the length).
#[test]
fn h2c_request_body_plugin_output_goes_up_chunked() {
    use ferrogate_proxy::plugin_phase::AttachedPlugin;
    let upstream = origin_pool(|_| {});
    let listener = Listener::new(
        80,
        vec![Route::new("origin", RouteAction::Proxy(upstream.clone()))],
    )
    .with_http2(true)
    .with_plugins(vec![AttachedPlugin {
        plugin: request_body_wrapper("req-wrap", true),
        fail_open: false,
    }]);
    let routes = Arc::new(RouteTable::new(1, vec![listener], vec![upstream]));
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let mut h2 = H2Client::connect(&mut lab);
    h2.headers(&mut lab, 1, "POST", "/upload", false);
    h2.data(&mut lab, 1, b"hel", false);
    h2.pump(&mut lab, 5);
    h2.data(&mut lab, 1, b"lo", true);
    let r = h2.response(&mut lab, 1);
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.body, b"got 7: [hello]", "{r:?}");
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 0, "{s:?}");
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}

/// A chunked origin's trailers end the HTTP/2 stream as trailing HEADERS:
/// names lower-cased, framing and hop-by-hop fields left out; through a
/// body plugin (the body re-framed) as without one.
#[test]
fn h2c_chunked_origin_trailers_reach_the_client_as_trailing_headers() {
    use ferrogate_proxy::plugin_phase::AttachedPlugin;
    let want = Some(vec![
        ("x-checksum".to_string(), "abc".to_string()),
        ("grpc-status".to_string(), "0".to_string()),
    ]);
    let mut lab = h2_lab();
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/trailers", true);
    let r = c.response(&mut lab, 1);
    assert_eq!((r.status(), &r.body[..]), (200, &b"hello"[..]), "{r:?}");
    assert_eq!(r.trailers, want, "{r:?}");
    // A response without trailers still ends with DATA.
    c.headers(&mut lab, 3, "GET", "/chunked", true);
    let r = c.response(&mut lab, 3);
    assert_eq!((r.trailers, r.reset), (None, None));
    assert_eq!(lab.edge.stats().trailers_forwarded, 1);

    let upstream = origin_pool(|_| {});
    let listener = Listener::new(
        80,
        vec![Route::new("origin", RouteAction::Proxy(upstream.clone()))],
    )
    .with_http2(true)
    .with_plugins(vec![AttachedPlugin {
        plugin: body_wrapper("square", '[', ']'),
        fail_open: false,
    }]);
    let routes = Arc::new(RouteTable::new(1, vec![listener], vec![upstream]));
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/trailers", true);
    let r = c.response(&mut lab, 1);
    assert_eq!((r.status(), &r.body[..]), (200, &b"[hello]"[..]), "{r:?}");
    assert_eq!(r.trailers, want, "{r:?}");
    assert_eq!(lab.edge.stats().trailers_forwarded, 1);
}

/// A trailer section past 32 fields is dropped and counted; the body
/// still arrives whole and the stream ends cleanly.
#[test]
fn h2c_an_oversized_trailer_section_is_dropped_and_counted() {
    let mut lab = h2_lab();
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/trailers-many", true);
    let r = c.response(&mut lab, 1);
    assert_eq!((r.status(), &r.body[..]), (200, &b"hello"[..]), "{r:?}");
    assert_eq!((r.trailers, r.reset), (None, None));
    let s = lab.edge.stats();
    assert_eq!((s.trailers_dropped, s.trailers_forwarded), (1, 0));
}

/// A trailers plugin's output is what an HTTP/2 client gets as trailing
/// HEADERS.
#[test]
fn h2c_a_trailers_plugin_changes_the_trailing_headers() {
    use ferrogate_proxy::plugin_phase::AttachedPlugin;
    let upstream = origin_pool(|_| {});
    let listener = Listener::new(
        80,
        vec![Route::new("origin", RouteAction::Proxy(upstream.clone()))],
    )
    .with_http2(true)
    .with_plugins(vec![AttachedPlugin {
        plugin: trailer_editor("editor", false),
        fail_open: false,
    }]);
    let routes = Arc::new(RouteTable::new(1, vec![listener], vec![upstream]));
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "GET", "/trailers", true);
    let r = c.response(&mut lab, 1);
    assert_eq!((r.status(), &r.body[..]), (200, &b"hello"[..]), "{r:?}");
    let mut got = r.trailers.clone().expect("trailers");
    got.sort();
    let want: Vec<(String, String)> = [
        ("grpc-status", "0"),
        ("x-checksum", "def"),
        ("x-plugin", "yes"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, want);
    let s = lab.edge.stats();
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}

/// An HTTP/2 client's trailing HEADERS go up in the chunked trailer
/// section (the upstream request is chunked: no length), cleaned of the
/// fields that never go as trailers; through a trailers plugin, as it
/// left them.
#[test]
fn h2c_request_trailers_reach_the_origin_in_the_chunked_trailer_section() {
    use ferrogate_proxy::plugin_phase::AttachedPlugin;
    let mut lab = h2_lab();
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "POST", "/upload", false);
    c.data(&mut lab, 1, b"hello", false);
    c.pump(&mut lab, 5);
    c.trailers(&mut lab, 1, &[("x-checksum", "abc"), ("te", "trailers")]);
    let r = c.response(&mut lab, 1);
    assert_eq!(
        (r.status(), &r.body[..]),
        (200, &b"got 5: hello"[..]),
        "{r:?}"
    );
    let sent = String::from_utf8_lossy(&lab.origin_bodies[0]).to_string();
    assert!(sent.ends_with("0\r\nx-checksum: abc\r\n\r\n"), "{sent:?}");
    assert_eq!(lab.edge.stats().trailers_forwarded, 1);
    // With a content-length the body goes up with it: the trailers have
    // no place there and are dropped, counted.
    let mut lab = h2_lab();
    let mut c = H2Client::connect(&mut lab);
    c.headers_with(
        &mut lab,
        1,
        "POST",
        "/upload",
        &[("content-length", "5")],
        false,
    );
    // (No pump in between: the response may come as soon as the length
    // is in, and a pump would read it away.)
    c.data(&mut lab, 1, b"hello", false);
    c.trailers(&mut lab, 1, &[("x-checksum", "abc")]);
    let r = c.response(&mut lab, 1);
    assert_eq!(
        (r.status(), &r.body[..]),
        (200, &b"got 5: hello"[..]),
        "{r:?}"
    );
    let sent = String::from_utf8_lossy(&lab.origin_bodies[0]).to_string();
    assert_eq!(sent, "hello");
    let s = lab.edge.stats();
    assert_eq!((s.trailers_forwarded, s.trailers_dropped), (0, 1), "{s:?}");

    let upstream = origin_pool(|_| {});
    let listener = Listener::new(
        80,
        vec![Route::new("origin", RouteAction::Proxy(upstream.clone()))],
    )
    .with_http2(true)
    .with_plugins(vec![AttachedPlugin {
        plugin: trailer_editor("editor", false),
        fail_open: false,
    }]);
    let routes = Arc::new(RouteTable::new(1, vec![listener], vec![upstream]));
    let mut lab = Lab::with_routes(Origin::Serving, routes, |_| {});
    let mut c = H2Client::connect(&mut lab);
    c.headers(&mut lab, 1, "POST", "/upload", false);
    c.data(&mut lab, 1, b"hello", false);
    c.pump(&mut lab, 5);
    c.trailers(&mut lab, 1, &[("x-checksum", "abc")]);
    let r = c.response(&mut lab, 1);
    assert_eq!(
        (r.status(), &r.body[..]),
        (200, &b"got 5: hello"[..]),
        "{r:?}"
    );
    let sent = String::from_utf8_lossy(&lab.origin_bodies[0]).to_string();
    assert!(sent.contains("x-checksum: def\r\n"), "{sent:?}");
    assert!(sent.contains("x-plugin: yes\r\n"), "{sent:?}");
    assert!(!sent.contains("content-length"), "{sent:?}");
    let s = lab.edge.stats();
    assert_eq!(s.plugin_failures, 0, "{s:?}");
    assert_eq!(s.plugin_contexts_created, s.plugin_contexts_ended);
}
