//! HTTP/2 in the lab with real clients: h2c with prior knowledge and h2
//! over TLS (ALPN) with curl, nghttp and h2load, uploads and downloads
//! through the HTTP/1.1 pool, a stalled reader, and the known attacks on
//! raw connections (rapid reset, CONTINUATION, PING and SETTINGS floods, an
//! HPACK bomb) while other clients keep being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrogate_h2::{ErrorCode, FrameHeader, FrameType, PREFACE, emit, flags};
use ferrogate_testkit::Ca;
use ferrogate_tests::{Lab, VIP, lab_test};

fn write_config(lab: &Lab, extra: &str) -> PathBuf {
    let path = lab.state_dir().join("h2.toml");
    std::fs::write(
        &path,
        format!(
            r#"vips = ["10.77.0.10/24"]
[engine]
interface = "eth0"
queues = 1

[timeouts]
client_idle_ms = 2000

[[upstreams]]
name = "t"
endpoints = ["10.77.0.3:9001"]

[[listeners]]
port = 80
http2 = true
[[listeners.routes]]
name = "direct"
path_prefix = "/direct"
respond = {{ status = 200, body = "direct answer" }}
[[listeners.routes]]
upstream = "t"

[[listeners]]
port = 443
http2 = true
[listeners.tls]
certificates = [{{ cert = "a.crt", key = "a.key", names = ["a.example"] }}]
[[listeners.routes]]
upstream = "t"

[[listeners]]
port = 8080
[[listeners.routes]]
upstream = "t"
{extra}
"#
        ),
    )
    .unwrap();
    path
}

fn certs(lab: &Lab) -> PathBuf {
    let dir = lab.state_dir();
    let ca = Ca::new("fg h2 test CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    ca.leaf(Some("cert-a"), &["a.example"]).write(&dir, "a");
    dir
}

fn tls_curl(dir: &Path, extra: &str, path: &str) -> String {
    format!(
        "curl -v -sS -m 20 --fail-with-body --http2 --cacert {d}/ca.pem --resolve a.example:443:{VIP} {extra} https://a.example:443{path}",
        d = dir.display()
    )
}

/// The origin's checksum of a body (fg-test-origin's `/echo`).
fn origin_sum(data: &[u8]) -> u64 {
    data.iter()
        .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(b as u64))
}

#[test]
fn h2c_and_h2_over_tls_with_curl_nghttp_and_h2load() {
    lab_test("h2-clients", || {
        let lab = Lab::up(1);
        let _o = lab.start_origin("t1", "10.77.0.3:9001");
        let dir = certs(&lab);
        let cfg = write_config(&lab, "[access_log]\npath = \"access.log\"\n");
        let mut engine = lab.start_engine_with(&cfg, "af_xdp", 1);

        // h2c with prior knowledge, and HTTP/1.1 on the same port.
        let (ok, out) = lab.client_sh(&format!(
            "curl -v -sS -m 10 --fail-with-body --http2-prior-knowledge http://{VIP}/hello"
        ));
        assert!(ok, "{out}");
        assert!(out.contains("< HTTP/2 200"), "{out}");
        assert!(out.contains("origin t1 method=GET path=/hello"), "{out}");
        let (ok, out) = lab.client_sh(&format!("curl -v -sS -m 10 http://{VIP}/hello"));
        assert!(ok && out.contains("< HTTP/1.1 200"), "{out}");
        // A listener without http2 answers the preface as a bad HTTP/1 request.
        let (ok, out) = lab.client_sh(&format!(
            "curl -sS -m 5 --http2-prior-knowledge http://{VIP}:8080/hello"
        ));
        assert!(!ok, "h2c on a listener without http2 must fail: {out}");
        // A direct route answers on the stream itself.
        let (ok, out) = lab.client_sh(&format!(
            "curl -sS -m 10 --http2-prior-knowledge http://{VIP}/direct"
        ));
        assert!(ok && out.contains("direct answer"), "{out}");

        // h2 over TLS through ALPN.
        let (ok, out) = lab.client_sh(&tls_curl(&dir, "", "/hello"));
        assert!(ok, "{out}");
        assert!(out.contains("ALPN: server accepted h2"), "{out}");
        assert!(out.contains("< HTTP/2 200"), "{out}");
        assert!(out.contains("origin t1 method=GET path=/hello"), "{out}");
        // HTTP/1.1-only clients still get http/1.1 on the same listener.
        let (ok, out) = lab.client_sh(&tls_curl(&dir, "--http1.1", "/hello"));
        assert!(
            ok && out.contains("ALPN: server accepted http/1.1"),
            "{out}"
        );

        // What the origin sees: Host from :authority, the cookie crumbs
        // joined (RFC 9113 §8.2.3), forwarding headers, no h2 pseudo-headers.
        let (ok, out) = lab.client_sh(&format!(
            "nghttp -H 'cookie: a=1' -H 'cookie: b=2' -H 'x-test: yes' http://{VIP}/headers"
        ));
        assert!(ok, "{out}");
        assert!(
            out.to_ascii_lowercase().contains("host: 10.77.0.10"),
            "{out}"
        );
        assert!(out.contains("a=1; b=2"), "{out}");
        assert!(out.to_ascii_lowercase().contains("x-test: yes"), "{out}");
        assert!(!out.contains(":authority"), "{out}");

        // 1xx from the origin (103 Early Hints) reach the client ahead of
        // the response.
        let (ok, out) = lab.client_sh(&format!(
            "curl -v -sS -m 10 --http2-prior-knowledge http://{VIP}/hints"
        ));
        assert!(ok && out.contains("< HTTP/2 103"), "{out}");
        assert!(out.contains("< link: </style.css>; rel=preload"), "{out}");
        assert!(
            out.contains("< HTTP/2 200") && out.contains("hinted by t1"),
            "{out}"
        );

        // Uploads: with a content-length, and without one (chunked upstream).
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = dir.join("upload.bin");
        std::fs::write(&file, &data).unwrap();
        let want = format!("len={} sum={}", data.len(), origin_sum(&data));
        let f = file.display();
        for (how, cmd) in [
            (
                "length",
                format!(
                    "curl -sS -m 30 --http2-prior-knowledge --data-binary @{f} http://{VIP}/echo"
                ),
            ),
            (
                "unknown length",
                format!(
                    "cat {f} | curl -v -sS -m 30 --http2-prior-knowledge -T - http://{VIP}/echo"
                ),
            ),
            (
                "tls",
                tls_curl(&dir, &format!("--data-binary @{f}"), "/echo"),
            ),
        ] {
            let (ok, out) = lab.client_sh(&cmd);
            assert!(
                ok && out.contains(&want),
                "{how}: {out}\n{:?}",
                engine.stats()
            );
        }

        // Downloads, content-length and chunked from the origin.
        for path in ["/bytes/20000000", "/chunked/20000000"] {
            let (ok, out) = lab.client_sh(&format!(
                    "curl -sS -m 60 --http2-prior-knowledge -o /dev/null -w '%{{http_version}} %{{size_download}}' http://{VIP}{path}"
                ),
            );
            assert!(ok && out.trim() == "2 20000000", "{path}: {out}");
        }

        // Many streams on few connections.
        let (ok, out) = lab.client_sh(&format!("h2load -n 4000 -c 8 -m 16 http://{VIP}/hello"));
        assert!(ok, "{out}");
        assert!(out.contains("4000 succeeded, 0 failed, 0 errored"), "{out}");
        let (ok, out) = lab.client_sh(&format!(
            "h2load -n 1000 -c 4 -m 10 --connect-to={VIP}:443 https://a.example/hello"
        ));
        assert!(ok, "{out}");
        assert!(out.contains("1000 succeeded, 0 failed, 0 errored"), "{out}");

        // The access log says which protocol each request came in.
        let log = lab.state_dir().join("access.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut text = String::new();
        while Instant::now() < deadline {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("\"protocol\":\"HTTP/2\"")
                && text.contains("\"protocol\":\"HTTP/1.1\"")
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let h2_line = text
            .lines()
            .find(|l| l.contains("\"protocol\":\"HTTP/2\"") && l.contains("/hello"));
        assert!(
            h2_line.is_some(),
            "no HTTP/2 record in {}:\n{}",
            log.display(),
            &text[..text.len().min(2000)]
        );
        assert!(
            text.contains("\"protocol\":\"HTTP/1.1\""),
            "{}",
            &text[..text.len().min(2000)]
        );

        let stats = engine.stats();
        assert!(stats["stack_h2_connections"] >= 20, "{stats:?}");
        assert!(stats["stack_h2_requests"] >= 5000, "{stats:?}");
        assert_eq!(
            stats.get("stack_h2_connection_errors"),
            Some(&0),
            "{stats:?}"
        );
        assert!(engine.is_running());
    });
}

/// A raw HTTP/2 client: the preface, SETTINGS, and frames built by the
/// codec's own emitters; requests encoded with HPACK.
struct RawClient {
    sock: TcpStream,
    enc: loona_hpack::Encoder<'static>,
    buf: Vec<u8>,
}

impl RawClient {
    fn connect() -> RawClient {
        let sock = TcpStream::connect((VIP, 80)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut c = RawClient {
            sock,
            enc: loona_hpack::Encoder::new(),
            buf: Vec::new(),
        };
        let mut out = PREFACE.to_vec();
        emit::settings(&mut out, &[]);
        c.send(&out);
        c
    }

    fn send(&mut self, bytes: &[u8]) -> bool {
        self.sock.write_all(bytes).is_ok()
    }

    fn request_block(&mut self, path: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut block = Vec::new();
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"10.77.0.10"),
            (b":path", path.as_bytes()),
        ];
        fields.extend_from_slice(extra);
        self.enc.encode_into(fields, &mut block).unwrap();
        block
    }

    /// Reads frames until `until` says stop or `limit` passes; returns
    /// every frame header seen and whether the peer closed.
    fn read_frames(
        &mut self,
        limit: Duration,
        mut until: impl FnMut(&FrameHeader, &[u8]) -> bool,
    ) -> (Vec<(FrameHeader, Vec<u8>)>, bool) {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        let mut tmp = [0u8; 65536];
        while Instant::now() < deadline {
            while let Some(h) = FrameHeader::parse(&self.buf) {
                let total = 9 + h.length as usize;
                if self.buf.len() < total {
                    break;
                }
                let payload = self.buf[9..total].to_vec();
                self.buf.drain(..total);
                let stop = until(&h, &payload);
                seen.push((h, payload));
                if stop {
                    return (seen, false);
                }
            }
            match self.sock.read(&mut tmp) {
                Ok(0) => return (seen, true),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return (seen, true),
            }
        }
        (seen, false)
    }

    /// Waits for a GOAWAY; its error code.
    fn goaway(&mut self) -> Option<ErrorCode> {
        let (frames, _) =
            self.read_frames(Duration::from_secs(5), |h, _| h.kind == FrameType::GoAway);
        frames
            .iter()
            .find(|(h, _)| h.kind == FrameType::GoAway)
            .map(|(_, p)| ErrorCode::from_u32(u32::from_be_bytes([p[4], p[5], p[6], p[7]])))
    }
}

fn curl_ok(lab: &Lab) -> bool {
    let (ok, out) = lab.client_sh(&format!(
        "curl -sS -m 5 --http2-prior-knowledge http://{VIP}/hello"
    ));
    ok && out.contains("origin t1")
}

#[test]
fn h2_attacks_get_goaway_and_other_clients_keep_being_served() {
    lab_test("h2-attacks", || {
        let lab = Lab::up(1);
        let _o = lab.start_origin("t1", "10.77.0.3:9001");
        certs(&lab);
        let cfg = write_config(&lab, "");
        let mut engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        assert!(curl_ok(&lab));

        let got = lab.in_client(|| {
            let mut results = Vec::new();

            // Rapid reset (CVE-2023-44487): open and cancel streams at once.
            let mut c = RawClient::connect();
            let mut out = Vec::new();
            for i in 0..400u32 {
                let id = 1 + 2 * i;
                let block = c.request_block("/slow/500", &[]);
                emit::headers(&mut out, id, &block, true, 16_384);
                emit::rst_stream(&mut out, id, ErrorCode::Cancel);
            }
            c.send(&out);
            results.push(("rapid reset", c.goaway()));

            // CONTINUATION flood (CVE-2024-27316): a header block that never ends.
            let mut c = RawClient::connect();
            let block = c.request_block("/hello", &[]);
            let mut out = Vec::new();
            let mut h = [0u8; 9];
            FrameHeader {
                length: block.len() as u32,
                kind: FrameType::Headers,
                flags: flags::END_STREAM,
                stream: 1,
            }
            .emit(&mut h);
            out.extend_from_slice(&h);
            out.extend_from_slice(&block);
            let junk = vec![b'a'; 16_000];
            for _ in 0..64 {
                FrameHeader {
                    length: junk.len() as u32,
                    kind: FrameType::Continuation,
                    flags: 0,
                    stream: 1,
                }
                .emit(&mut h);
                out.extend_from_slice(&h);
                out.extend_from_slice(&junk);
                if !c.send(&out) {
                    break;
                }
                out.clear();
            }
            results.push(("continuation flood", c.goaway()));

            // PING flood.
            let mut c = RawClient::connect();
            let mut out = Vec::new();
            for i in 0..3000u64 {
                emit::ping(&mut out, false, i.to_be_bytes());
            }
            c.send(&out);
            results.push(("ping flood", c.goaway()));

            // SETTINGS flood.
            let mut c = RawClient::connect();
            let mut out = Vec::new();
            for _ in 0..3000 {
                emit::settings(&mut out, &[]);
            }
            c.send(&out);
            results.push(("settings flood", c.goaway()));

            // An HPACK bomb: one large field referenced many times from the
            // dynamic table; the decoded list is over the limit → 431, and
            // the connection goes on (the next request on it is served).
            let mut c = RawClient::connect();
            let big = vec![b'x'; 4000];
            let mut extra: Vec<(&[u8], &[u8])> = Vec::new();
            for _ in 0..64 {
                extra.push((b"x-bomb", &big));
            }
            let block = c.request_block("/hello", &extra);
            let mut out = Vec::new();
            emit::headers(&mut out, 1, &block, true, 16_384);
            let block = c.request_block("/hello", &[]);
            emit::headers(&mut out, 3, &block, true, 16_384);
            c.send(&out);
            let mut dec = loona_hpack::Decoder::new();
            let mut statuses = Vec::new();
            c.read_frames(Duration::from_secs(5), |h, p| {
                if h.kind == FrameType::Headers
                    && let Ok(list) = dec.decode(p)
                {
                    for (n, v) in list {
                        if n == b":status" {
                            statuses.push((h.stream, String::from_utf8_lossy(&v).into_owned()));
                        }
                    }
                }
                statuses.len() >= 2
            });
            results.push((
                "hpack bomb",
                (statuses.contains(&(1, "431".into())) && statuses.contains(&(3, "200".into())))
                    .then_some(ErrorCode::NoError),
            ));
            results
        });
        for (what, code) in &got {
            let want = if *what == "hpack bomb" {
                ErrorCode::NoError
            } else {
                ErrorCode::EnhanceYourCalm
            };
            assert_eq!(*code, Some(want), "{what}: {got:?}");
        }
        // Other clients are served throughout and after.
        assert!(curl_ok(&lab));
        let stats = engine.stats();
        assert!(stats["stack_h2_rapid_reset_goaways"] >= 1, "{stats:?}");
        assert!(
            stats["stack_h2_continuation_flood_goaways"] >= 1,
            "{stats:?}"
        );
        assert!(stats["stack_h2_flood_goaways"] >= 2, "{stats:?}");
        assert!(stats["stack_h2_headers_too_large"] >= 1, "{stats:?}");
        assert!(engine.is_running());
    });
}

#[test]
fn h2_stalled_reader_is_reset_and_memory_stays_bounded() {
    lab_test("h2-stall", || {
        let lab = Lab::up(1);
        let _o = lab.start_origin("t1", "10.77.0.3:9001");
        certs(&lab);
        let cfg = write_config(&lab, "");
        let mut engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let rss_before = Lab::rss_kib(engine.pid());
        // A client that announces a zero window and never opens it, asking
        // for 100 MiB: the origin is held back by the proxy (no unbounded
        // buffering), the stream is reset after the idle timeout.
        let reset = lab.in_client(|| {
            let mut c = RawClient::connect();
            let mut out = Vec::new();
            emit::settings(&mut out, &[(ferrogate_h2::SettingId::InitialWindowSize, 0)]);
            let block = c.request_block("/bytes/104857600", &[]);
            emit::headers(&mut out, 1, &block, true, 16_384);
            c.send(&out);
            let (frames, _) = c.read_frames(Duration::from_secs(10), |h, _| {
                h.kind == FrameType::RstStream
            });
            frames.iter().any(|(h, p)| {
                h.kind == FrameType::RstStream
                    && u32::from_be_bytes([p[0], p[1], p[2], p[3]]) == ErrorCode::Cancel.to_u32()
            })
        });
        assert!(reset, "the stalled stream must be reset");
        // A 100 MiB download by a reader that does read: RSS stays flat.
        let (ok, out) = lab.client_sh(&format!(
                "curl -sS -m 120 --http2-prior-knowledge -o /dev/null -w '%{{size_download}}' http://{VIP}/bytes/104857600"
            ),
        );
        assert!(ok && out.trim() == "104857600", "{out}");
        // A 100 MiB upload: the body streams through the stream window
        // (64 KiB) and the upstream socket, never buffered whole.
        let data: Vec<u8> = (0..100u32 << 20).map(|i| (i % 253) as u8).collect();
        let file = lab.state_dir().join("big-upload.bin");
        std::fs::write(&file, &data).unwrap();
        let want = format!("len={} sum={}", data.len(), origin_sum(&data));
        drop(data);
        let (ok, out) = lab.client_sh(&format!(
            "curl -sS -m 120 --http2-prior-knowledge --data-binary @{} http://{VIP}/echo",
            file.display()
        ));
        assert!(ok && out.contains(&want), "{out}");
        let _ = std::fs::remove_file(&file);
        let rss_after = Lab::rss_kib(engine.pid());
        assert!(
            rss_after < rss_before + 64 * 1024,
            "RSS grew from {rss_before} to {rss_after} KiB"
        );
        let stats = engine.stats();
        assert!(stats["stack_h2_stalled_resets"] >= 1, "{stats:?}");
        assert!(curl_ok(&lab));
        assert!(engine.is_running());
    });
}

/// `httpwg` (httpwg-cli, a Rust port of h2spec; installed by
/// vendor-setup.sh) against the h2c listener: every case passes.
#[test]
fn httpwg_conformance_suite_passes_over_h2c() {
    lab_test("h2-httpwg", || {
        let lab = Lab::up(1);
        let _o = lab.start_origin("t1", "10.77.0.3:9001");
        certs(&lab);
        let cfg = write_config(&lab, "");
        let mut engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let (ok, out) = lab.client_sh(&format!(
            "timeout 300 httpwg --connect-timeout 2000 --frame-timeout 2000 -a {VIP}:80 2>&1"
        ));
        // "Passed 107/107 tests …" (with colour codes around the figures).
        let plain: String = out
            .split('\u{1b}')
            .map(|part| part.split_once('m').map_or(part, |(_, rest)| rest))
            .collect();
        let summary = plain
            .lines()
            .find(|l| l.contains("Passed") && l.contains("tests in"))
            .unwrap_or_else(|| panic!("no httpwg summary:\n{out}"));
        let figures = summary
            .split_whitespace()
            .find(|w| w.contains('/'))
            .and_then(|w| w.split_once('/'))
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
        let Some((passed, total)) = figures else {
            panic!("unreadable httpwg summary {summary:?}");
        };
        assert!(
            ok && passed == total && total >= 100,
            "httpwg: {summary}\n{}",
            plain
                .lines()
                .filter(|l| l.contains("panicked") || l.contains("Message") || l.contains("failed"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(engine.is_running());
        assert!(curl_ok(&lab));
    });
}

/// Connects a raw HTTP/2 client, waits until its SETTINGS are
/// acknowledged, runs `trigger`, and returns the payload of the GOAWAY the
/// connection then gets (None if none comes within 15 s).
fn goaway_after(lab: &Lab, trigger: impl FnOnce()) -> Option<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = lab.ns("client");
    std::thread::scope(|s| {
        let client = s.spawn(move || {
            ferrogate_tests::enter_netns(&ns).expect("enter client namespace");
            let mut c = RawClient::connect();
            let (frames, _) = c.read_frames(Duration::from_secs(5), |h, _| {
                h.kind == FrameType::Settings && h.flags & flags::ACK != 0
            });
            assert!(!frames.is_empty(), "no SETTINGS ACK");
            tx.send(()).unwrap();
            let (frames, _) =
                c.read_frames(Duration::from_secs(15), |h, _| h.kind == FrameType::GoAway);
            frames
                .into_iter()
                .find(|(h, _)| h.kind == FrameType::GoAway)
                .map(|(_, p)| p)
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("client connected");
        trigger();
        client.join().expect("client thread")
    })
}

/// A GOAWAY's error code is NO_ERROR and its debug data `why`.
fn assert_graceful(goaway: Option<Vec<u8>>, why: &[u8]) {
    let p = goaway.expect("a GOAWAY before the close");
    assert_eq!(u32::from_be_bytes([p[4], p[5], p[6], p[7]]), 0, "NO_ERROR");
    assert_eq!(&p[8..], why);
}

/// A clean stop says GOAWAY (NO_ERROR, "shutdown") to HTTP/2 clients.
#[test]
fn h2_clients_get_goaway_on_shutdown() {
    lab_test("h2-shutdown", || {
        let lab = Lab::up(1);
        let _o = lab.start_origin("t1", "10.77.0.3:9001");
        certs(&lab);
        let cfg = write_config(&lab, "");
        let mut engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let goaway = goaway_after(&lab, || {
            engine.stop();
        });
        assert_graceful(goaway, b"shutdown");
    });
}

/// A reload that turns HTTP/2 off on a listener drains its HTTP/2
/// connections: GOAWAY (NO_ERROR, "reload"), and the port serves HTTP/1.1.
#[test]
fn h2_clients_get_goaway_when_a_reload_turns_http2_off() {
    lab_test("h2-reload", || {
        let lab = Lab::up(1);
        let _o = lab.start_origin("t1", "10.77.0.3:9001");
        certs(&lab);
        let cfg = write_config(&lab, "");
        let mut engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let goaway = goaway_after(&lab, || {
            let text = std::fs::read_to_string(&cfg).unwrap();
            let off = text.replacen("port = 80\nhttp2 = true\n", "port = 80\n", 1);
            assert_ne!(text, off);
            std::fs::write(&cfg, off).unwrap();
            engine.sighup();
        });
        assert_graceful(goaway, b"reload");
        // The port still answers HTTP/1.1, and no longer h2c.
        let (ok, out) = lab.client_sh(&format!("curl -sS -m 5 http://{VIP}/hello"));
        assert!(ok && out.contains("origin t1"), "{out}");
        assert!(!curl_ok(&lab), "h2c after http2 was turned off");
        assert!(engine.is_running());
    });
}
