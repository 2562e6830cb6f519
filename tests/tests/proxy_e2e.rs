//! The L7 proxy against real origins in the lab: bad-request corpus,
//! slowloris, bodies of every size both ways with bounded memory.

use std::time::{Duration, Instant};

use ferrogate_tests::{HttpConn, Lab, VIP, lab_test, raw_exchange};

/// A config for the lab whose routes go to test origins.
fn config(lab: &Lab, name: &str, body: &str) -> std::path::PathBuf {
    let path = lab.state_dir().join(name);
    let text = format!(
        r#"vips = ["10.77.0.10/24", "fd77::10/64"]
[engine]
interface = "eth0"
queues = 1
{body}
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

const ONE_ORIGIN: &str = r#"
[timeouts]
client_header_ms = 2000

[[upstreams]]
name = "t"
endpoints = ["10.77.0.3:9001"]

[[listeners]]
port = 80
[[listeners.routes]]
upstream = "t"
"#;

#[test]
fn every_bad_request_in_the_corpus_gets_400_and_close() {
    lab_test("corpus", || {
        let lab = Lab::up(1);
        let _o = lab.start_origin("t1", "10.77.0.3:9001");
        let cfg = config(&lab, "corpus.toml", ONE_ORIGIN);
        let mut engine = lab.start_engine_probe(&cfg, "af_xdp", 1, false);
        let cases = ferrogate_testkit::corpus_files("http-bad");
        assert!(cases.len() >= 20, "corpus missing");
        let failures = lab.in_client(|| {
            let mut failures = Vec::new();
            for (name, raw) in &cases {
                let (resp, closed) =
                    raw_exchange(&format!("{VIP}:80"), raw, Duration::from_secs(3)).unwrap();
                let text = String::from_utf8_lossy(&resp);
                let status_ok =
                    text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 501");
                if !status_ok || !closed || text.contains("X-Origin") {
                    failures.push(format!(
                        "{name}: closed={closed} response={:?}",
                        text.lines().next()
                    ));
                }
            }
            failures
        });
        assert!(failures.is_empty(), "{failures:#?}");
        assert!(engine.is_running(), "{}", engine.log());
        // Still serving.
        assert!(
            lab.curl(&format!("http://{VIP}/fine"))
                .unwrap()
                .contains("path=/fine")
        );
    });
}

#[test]
fn http10_without_host_reaches_nginx_with_the_endpoint_as_host() {
    lab_test("http10", || {
        let lab = Lab::up(1);
        let _engine = lab.start_engine("af_xdp", 1);
        let (resp, closed) = lab.in_client(|| {
            raw_exchange(
                &format!("{VIP}:80"),
                b"GET /h10 HTTP/1.0\r\n\r\n",
                Duration::from_secs(5),
            )
            .unwrap()
        });
        let text = String::from_utf8_lossy(&resp);
        // nginx answers 400 to an HTTP/1.1 request without Host.
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("path=/h10"), "{text}");
        assert!(
            closed,
            "HTTP/1.0 without keep-alive: closed after the answer"
        );
    });
}

/// A POST whose 100-byte body arrives 10 bytes at a time, to an origin that
/// answers `status` at once and closes 1.5 s later with the body unread.
/// Returns (what the client read, whether the answer came before the body
/// was complete).
fn slow_body_post(status: u16) -> (String, bool) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(format!("{VIP}:80")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    write!(
        s,
        "POST /early/{status}/1500 HTTP/1.1\r\nHost: lab\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut early = false;
    let mut sent = 10;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read after {} bytes: {e}", got.len()),
        }
        let answered = got.windows(4).any(|w| w == b"\r\n\r\n");
        if answered && sent < 100 {
            early = true;
        }
        // The rest of the body trickles in only once the answer is here
        // (or after 4 s, when the answer would never come early).
        if sent < 100 && (answered || deadline - Instant::now() < Duration::from_secs(16)) {
            if s.write_all(b"0123456789").is_err() {
                sent = 100;
            } else {
                sent += 10;
            }
            std::thread::sleep(Duration::from_millis(150));
            if sent == 100 {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), early)
}

#[test]
fn an_early_answer_from_the_origin_reaches_slow_body_clients_never_a_502() {
    lab_test("early", || {
        let lab = Lab::up(1);
        let _o = lab.start_origin("t1", "10.77.0.3:9001");
        let cfg = config(&lab, "early.toml", ONE_ORIGIN);
        let engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let before = engine.stats();
        let results = lab.in_client(|| {
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..20)
                    .map(|i| s.spawn(move || slow_body_post(if i % 2 == 0 { 200 } else { 413 })))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
        });
        for (i, (text, early)) in results.iter().enumerate() {
            let want = if i % 2 == 0 { 200 } else { 413 };
            assert!(
                text.starts_with(&format!("HTTP/1.1 {want} ")),
                "client {i}: {text:?}"
            );
            assert!(
                text.contains(&format!("early {want} from t1")),
                "client {i}: {text:?}"
            );
            assert!(text.contains("Connection: close"), "client {i}: {text:?}");
            assert!(*early, "client {i}: the answer waited for the whole body");
        }
        let after = engine.stats();
        assert_eq!(
            after["stack_early_responses"]
                - before.get("stack_early_responses").copied().unwrap_or(0),
            20,
            "{after:?}"
        );
    });
}

#[test]
fn slowloris_gets_408_within_the_header_timeout() {
    lab_test("slowloris", || {
        let lab = Lab::up(1);
        let _o = lab.start_origin("t1", "10.77.0.3:9001");
        let cfg = config(&lab, "slow.toml", ONE_ORIGIN);
        let _engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let (elapsed, resp) = lab.in_client(|| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(format!("{VIP}:80")).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let t0 = Instant::now();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 1024];
            // One header byte every 300 ms, for up to 6 s.
            while t0.elapsed() < Duration::from_secs(6) {
                if s.write_all(b"X").is_err() {
                    break;
                }
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            (t0.elapsed(), String::from_utf8_lossy(&out).to_string())
        });
        assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
        // The timeout bounds the whole head, not the gap between bytes
        // (the 408 came while a byte still arrived every 300 ms); not early.
        eprintln!("408 after {elapsed:?} (timeout 2 s)");
        assert!(elapsed >= Duration::from_secs(2), "408 after {elapsed:?}");
    });
}

/// Streams `len` bytes of body through the proxy (upload to /echo) and back
/// (download of /bytes/len and /chunked/len), checking sizes.
fn transfer(lab: &Lab, len: u64) {
    let down = lab
        .exec(
            "client",
            &[
                "curl",
                "-sS",
                "-m",
                "120",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{http_code}",
                &format!("http://{VIP}/bytes/{len}"),
            ],
        )
        .unwrap();
    assert_eq!(down, format!("{len} 200"), "download of {len} bytes");
    let chunked = lab
        .exec(
            "client",
            &[
                "curl",
                "-sS",
                "-m",
                "120",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{http_code}",
                &format!("http://{VIP}/chunked/{len}"),
            ],
        )
        .unwrap();
    assert_eq!(
        chunked,
        format!("{len} 200"),
        "chunked download of {len} bytes"
    );
    let file = lab.state_dir().join(format!("up-{len}"));
    let block: Vec<u8> = (0..len.min(1 << 20)).map(|i| (i % 251) as u8).collect();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).unwrap();
        let mut left = len;
        while left > 0 {
            let k = left.min(block.len() as u64) as usize;
            f.write_all(&block[..k]).unwrap();
            left -= k as u64;
        }
    }
    let up = lab
        .exec(
            "client",
            &[
                "curl",
                "-sS",
                "-m",
                "120",
                "--data-binary",
                &format!("@{}", file.display()),
                "-H",
                "Content-Type: application/octet-stream",
                &format!("http://{VIP}/echo"),
            ],
        )
        .unwrap();
    assert!(
        up.starts_with(&format!("len={len} ")),
        "upload of {len}: {up}"
    );
    let up_chunked = lab
        .exec(
            "client",
            &[
                "curl",
                "-sS",
                "-m",
                "120",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &format!("@{}", file.display()),
                &format!("http://{VIP}/echo"),
            ],
        )
        .unwrap();
    assert!(
        up_chunked.starts_with(&format!("len={len} ")),
        "chunked upload of {len}: {up_chunked}"
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn bodies_from_0_bytes_to_100_mib_stream_both_ways_with_bounded_memory() {
    lab_test("bodies", || {
        let lab = Lab::up(1);
        let _o = lab.start_origin("t1", "10.77.0.3:9001");
        let cfg = config(&lab, "bodies.toml", ONE_ORIGIN);
        let engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let rss_start = Lab::rss_kib(engine.pid());
        for len in [0u64, 1 << 20] {
            transfer(&lab, len);
        }
        let rss_small = Lab::rss_kib(engine.pid());
        transfer(&lab, 100 << 20);
        let rss_big = Lab::rss_kib(engine.pid());
        eprintln!(
            "engine RSS: start {rss_start} KiB, after 1 MiB {rss_small} KiB, after 100 MiB {rss_big} KiB"
        );
        // Streaming: 100 MiB through must not grow memory by anything like its size.
        assert!(
            rss_big < rss_small + 16 * 1024,
            "RSS grew from {rss_small} to {rss_big} KiB"
        );
        // Keep-alive still fine afterwards.
        let (status, body) = lab.in_client(|| {
            HttpConn::connect(&format!("{VIP}:80"))
                .unwrap()
                .get("a", "/after")
                .unwrap()
        });
        assert_eq!(status, 200, "{body}");
    });
}

/// One `Connection: close` GET from the client namespace's current thread;
/// returns (status, head, body).
fn get_close(path: &str, host: &str, extra: &str) -> Result<(u16, String, String), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    let (raw, _) = raw_exchange(&format!("{VIP}:80"), req.as_bytes(), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no head in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok((status, head.to_string(), body.to_string()))
}

fn origin_of(body: &str) -> String {
    body.split_whitespace().nth(1).unwrap_or("?").to_string()
}

#[test]
fn routes_pick_pools_by_host_path_method_and_header() {
    lab_test("routing", || {
        let lab = Lab::up(1);
        let _a = lab.start_origin("a", "10.77.0.3:9001");
        let _b = lab.start_origin("b", "10.77.0.3:9002");
        let _c = lab.start_origin("c", "10.77.0.3:9003");
        let cfg = config(
            &lab,
            "routing.toml",
            r#"
[[upstreams]]
name = "a"
endpoints = ["10.77.0.3:9001"]
[[upstreams]]
name = "b"
endpoints = ["10.77.0.3:9002"]
[[upstreams]]
name = "c"
endpoints = ["10.77.0.3:9003"]

[[listeners]]
port = 80
[[listeners.routes]]
name = "canary"
host = "api.test"
headers = { "X-Env" = "canary" }
upstream = "c"
[[listeners.routes]]
name = "writes"
methods = ["POST", "PUT"]
upstream = "b"
[[listeners.routes]]
name = "v2"
host = "*.test"
path_prefix = "/v2/"
upstream = "b"
[[listeners.routes]]
name = "exact"
path_exact = "/only"
query = { q = "1" }
upstream = "c"
[[listeners.routes]]
name = "rest"
upstream = "a"
"#,
        );
        let engine = lab.start_engine_probe(&cfg, "af_xdp", 1, false);
        let cases = lab.in_client(|| {
            let mut out = vec![];
            for (path, host, extra, want) in [
                ("/x", "api.test", "X-Env: canary\r\n", "c"),
                ("/x", "api.test", "X-Env: prod\r\n", "a"),
                ("/v2/users", "www.test", "", "b"),
                ("/v2/users", "test", "", "a"),
                ("/only?q=1", "any", "", "c"),
                ("/only?q=2", "any", "", "a"),
                ("/only/more?q=1", "any", "", "a"),
            ] {
                let (status, head, body) = get_close(path, host, extra).unwrap();
                out.push((path, host, want, status, origin_of(&body), head));
            }
            out
        });
        for (path, host, want, status, got, head) in cases {
            assert_eq!((status, got.as_str()), (200, want), "{host}{path}: {head}");
            assert!(head.contains("X-Request-Id: "), "request id echoed: {head}");
        }
        let post = lab
            .exec(
                "client",
                &[
                    "curl",
                    "-sS",
                    "-m",
                    "3",
                    "-X",
                    "POST",
                    "-d",
                    "x=1",
                    &format!("http://{VIP}/form"),
                ],
            )
            .unwrap();
        assert!(post.contains("origin b method=POST"), "{post}");
        let s = engine.stats();
        assert_eq!(s["route_canary_requests"], 1, "{s:?}");
        assert!(s["route_rest_requests"] >= 3);
    });
}

#[test]
fn weights_hold_within_5_percent_over_10000_requests() {
    lab_test("weights", || {
        let lab = Lab::up(1);
        let _a = lab.start_origin("a", "10.77.0.3:9001");
        let _b = lab.start_origin("b", "10.77.0.3:9002");
        let cfg = config(
            &lab,
            "weights.toml",
            r#"
[[upstreams]]
name = "w"
balancer = "weighted"
endpoints = [{ address = "10.77.0.3:9001", weight = 3 }, { address = "10.77.0.3:9002", weight = 1 }]
[[listeners]]
port = 80
[[listeners.routes]]
upstream = "w"
"#,
        );
        let _engine = lab.start_engine_probe(&cfg, "af_xdp", 1, false);
        let counts = lab.in_client(|| {
            let (mut a, mut b, mut other) = (0u32, 0u32, 0u32);
            for i in 0..10_000 {
                match get_close(&format!("/w{i}"), "w", "").map(|(_, _, body)| origin_of(&body)) {
                    Ok(o) if o == "a" => a += 1,
                    Ok(o) if o == "b" => b += 1,
                    _ => other += 1,
                }
            }
            (a, b, other)
        });
        let (a, b, other) = counts;
        eprintln!("weights 3:1 -> a {a}, b {b}, failed {other}");
        assert_eq!(other, 0);
        let share = a as f64 / (a + b) as f64;
        assert!(
            (share - 0.75).abs() <= 0.75 * 0.05,
            "a's share {share:.4}, want 0.75 ± 5 %"
        );
    });
}

#[test]
fn a_killed_origin_is_ejected_requests_keep_succeeding_and_it_returns() {
    lab_test("eject", || {
        let lab = Lab::up(1);
        let _a = lab.start_origin("a", "10.77.0.3:9001");
        let mut b = lab.start_origin("b", "10.77.0.3:9002");
        let _c = lab.start_origin("c", "10.77.0.3:9003");
        let cfg = config(
            &lab,
            "eject.toml",
            r#"
[[upstreams]]
name = "p"
endpoints = ["10.77.0.3:9001", "10.77.0.3:9002", "10.77.0.3:9003"]
[upstreams.health]
type = "tcp"
interval_ms = 200
timeout_ms = 150
rise = 2
fall = 2
[upstreams.passive]
consecutive_failures = 2
eject_ms = 1000
[upstreams.retry]
attempts = 3
budget_percent = 50
min_per_sec = 50
[[listeners]]
port = 80
[[listeners.routes]]
upstream = "p"
"#,
        );
        let engine = lab.start_engine_probe(&cfg, "af_xdp", 1, false);
        b.kill();
        let (ok, seen) = lab.in_client(|| {
            let mut ok = 0;
            let mut seen = std::collections::HashMap::new();
            for i in 0..300 {
                if let Ok((200, _, body)) = get_close(&format!("/k{i}"), "p", "") {
                    ok += 1;
                    *seen.entry(origin_of(&body)).or_insert(0) += 1;
                }
            }
            (ok, seen)
        });
        assert_eq!(ok, 300, "every request succeeds on the others: {seen:?}");
        assert!(!seen.contains_key("b"), "{seen:?}");
        let s = engine.stats();
        assert_eq!(s["pool_p_endpoint_10.77.0.3:9002_healthy"], 0, "{s:?}");
        // Back: the active check sees it and it takes traffic again.
        let _b2 = lab.start_origin("b", "10.77.0.3:9002");
        let s = engine.stats_until(|s| s.get("pool_p_endpoint_10.77.0.3:9002_healthy") == Some(&1));
        assert_eq!(s["pool_p_endpoint_10.77.0.3:9002_healthy"], 1, "{s:?}");
        let seen = lab.in_client(|| {
            (0..30)
                .filter_map(|i| get_close(&format!("/r{i}"), "p", "").ok())
                .map(|(_, _, body)| origin_of(&body))
                .collect::<Vec<_>>()
        });
        assert!(seen.iter().any(|o| o == "b"), "b never came back: {seen:?}");
    });
}

#[test]
fn every_endpoint_down_answers_502_or_503_quickly_never_hangs() {
    lab_test("all_down", || {
        let lab = Lab::up(1);
        let cfg = config(
            &lab,
            "down.toml",
            r#"
[[upstreams]]
name = "open"
endpoints = ["10.77.0.3:9011", "10.77.0.3:9012"]
[[upstreams]]
name = "closed"
endpoints = ["10.77.0.3:9013"]
fail_open = false
[upstreams.health]
type = "tcp"
interval_ms = 100
timeout_ms = 80
fall = 1
[[listeners]]
port = 80
[[listeners.routes]]
host = "closed"
upstream = "closed"
[[listeners.routes]]
upstream = "open"
"#,
        );
        let engine = lab.start_engine_probe(&cfg, "af_xdp", 1, false);
        // The first check has marked the checked pool's endpoint down.
        let s = engine
            .stats_until(|s| s.get("pool_closed_endpoint_10.77.0.3:9013_healthy") == Some(&0));
        assert_eq!(s["pool_closed_endpoint_10.77.0.3:9013_healthy"], 0, "{s:?}");
        let (open, closed) = lab.in_client(|| {
            let t0 = Instant::now();
            let open = get_close("/", "open", "").unwrap();
            let t_open = t0.elapsed();
            let t1 = Instant::now();
            let closed = get_close("/", "closed", "").unwrap();
            ((open.0, t_open), (closed.0, closed.1, t1.elapsed()))
        });
        assert_eq!(open.0, 502, "refused endpoints give 502");
        eprintln!("502 from refused endpoints after {:?}", open.1);
        assert_eq!(closed.0, 503);
        assert!(
            closed.1.contains("X-Ferrogate-Error: no-healthy-endpoint"),
            "{}",
            closed.1
        );
        eprintln!("503 without a healthy endpoint after {:?}", closed.2);
    });
}

#[test]
fn the_breaker_opens_on_failures_and_answers_503_saying_so() {
    lab_test("breaker", || {
        let lab = Lab::up(1);
        let _a = lab.start_origin("a", "10.77.0.3:9001");
        let cfg = config(
            &lab,
            "breaker.toml",
            r#"
[[upstreams]]
name = "flaky"
endpoints = ["10.77.0.3:9001"]
[upstreams.breaker]
failure_percent = 100
min_requests = 3
cooldown_ms = 60000
[[listeners]]
port = 80
[[listeners.routes]]
upstream = "flaky"
"#,
        );
        let engine = lab.start_engine_probe(&cfg, "af_xdp", 1, false);
        let statuses = lab.in_client(|| {
            (0..6)
                .map(|_| {
                    let (s, head, _) = get_close("/status/503", "flaky", "").unwrap();
                    (s, head.contains("X-Ferrogate-Error: breaker-open"))
                })
                .collect::<Vec<_>>()
        });
        assert_eq!(&statuses[..3], &[(503, false); 3], "the origin's own 503s");
        assert!(
            statuses[3..].iter().all(|&(s, b)| s == 503 && b),
            "{statuses:?}"
        );
        assert!(engine.stats()["pool_flaky_breaker_rejected"] >= 3);
    });
}

#[test]
fn websocket_upgrade_is_tunnelled_and_oversized_bodies_get_413() {
    lab_test("upgrade", || {
        let lab = Lab::up(1);
        let _a = lab.start_origin("a", "10.77.0.3:9001");
        let body = ONE_ORIGIN.replace(
            "[timeouts]",
            "[limits]\nmax_request_body_bytes = 1000\n\n[timeouts]",
        );
        let cfg = config(&lab, "ws.toml", &body);
        let _engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let echoed = lab.in_client(|| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(format!("{VIP}:80")).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
            let mut buf = vec![0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "closed before the 101");
                head.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
            let mut echoed = Vec::new();
            for msg in [&b"ping-1"[..], b"ping-2 longer", &[0u8, 1, 2, 255]] {
                s.write_all(msg).unwrap();
                let mut got = vec![0u8; msg.len()];
                s.read_exact(&mut got).unwrap();
                echoed.push(got == msg);
            }
            echoed
        });
        assert_eq!(echoed, vec![true, true, true]);
        let big = "x".repeat(2000);
        let out = lab
            .exec(
                "client",
                &[
                    "curl",
                    "-sS",
                    "-m",
                    "3",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--data-binary",
                    &big,
                    &format!("http://{VIP}/echo"),
                ],
            )
            .unwrap();
        assert_eq!(out, "413");
        let small = lab
            .exec(
                "client",
                &[
                    "curl",
                    "-sS",
                    "-m",
                    "3",
                    "--data-binary",
                    "hello",
                    &format!("http://{VIP}/echo"),
                ],
            )
            .unwrap();
        assert!(small.starts_with("len=5 "), "{small}");
    });
}

#[test]
fn ten_thousand_idle_connections_cost_memory_not_throughput() {
    lab_test("idle", || {
        let lab = Lab::up(1);
        let _a = lab.start_origin("a", "10.77.0.3:9001");
        // Idle means no request yet: keep them past the header timeout.
        let body = ONE_ORIGIN.replace("client_header_ms = 2000", "client_header_ms = 120000");
        let cfg = config(&lab, "idle.toml", &body);
        // Smaller socket buffers: what an operator sets for many idle clients.
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("queues = 1", "queues = 1\ntcp_buffer = 16384");
        std::fs::write(&cfg, text).unwrap();
        let engine = lab.start_engine_with(&cfg, "af_xdp", 1);
        let rate = |lab: &Lab| {
            lab.in_client(|| {
                let mut c = HttpConn::connect(&format!("{VIP}:80")).unwrap();
                let t0 = Instant::now();
                let mut n = 0;
                while t0.elapsed() < Duration::from_secs(2) {
                    assert_eq!(c.get("a", "/r").unwrap().0, 200);
                    n += 1;
                }
                n as f64 / t0.elapsed().as_secs_f64()
            })
        };
        let before = rate(&lab);
        let rss0 = Lab::rss_kib(engine.pid());
        // SAFETY: raising our own soft limit to the hard limit.
        unsafe {
            let mut l: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
            l.rlim_cur = l.rlim_max.max(20_000);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
        let idle = lab.in_client(|| {
            (0..10_000)
                .map(|_| {
                    std::net::TcpStream::connect(format!("{VIP}:80")).expect("idle connection")
                })
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(500));
        let rss1 = Lab::rss_kib(engine.pid());
        let s = engine.stats();
        assert!(
            s["stack_active_connections"] >= 10_000,
            "{}",
            s["stack_active_connections"]
        );
        let during = rate(&lab);
        let per_conn = (rss1.saturating_sub(rss0)) as f64 / 10_000.0;
        eprintln!(
            "keep-alive req/s: {before:.0} without, {during:.0} with 10,000 idle connections (ratio {:.2}); memory per idle connection {per_conn:.1} KiB",
            during / before
        );
        drop(idle);
        // Functional: every idle connection was accepted and the load ran.
        assert!(during > 0.0 && before > 0.0);
    });
}

/// An nginx in the origin namespace on `addr` that closes idle keep-alive
/// connections after `keepalive_timeout`; stopped by its PID on drop.
struct IdleClosingNginx {
    pid_file: std::path::PathBuf,
}

impl IdleClosingNginx {
    fn start(lab: &Lab, addr: &str, keepalive_timeout: &str) -> Self {
        let dir = lab
            .state_dir()
            .join(format!("nginx-{}", addr.replace([':', '.'], "-")));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\nuser root;\ndaemon on;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 keepalive_timeout {keepalive_timeout};\n\
                 server {{\n    listen {addr};\n    location / {{ default_type text/plain; return 200 \"idle-nginx path=$request_uri\\n\"; }}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        lab.exec("origin", &["nginx", "-c", &conf.display().to_string()])
            .expect("start nginx");
        let n = IdleClosingNginx {
            pid_file: dir.join("nginx.pid"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while lab
            .exec(
                "origin",
                &["curl", "-sf", "-m", "1", &format!("http://{addr}/ready")],
            )
            .is_err()
        {
            assert!(Instant::now() < deadline, "nginx on {addr} never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        n
    }
}

impl Drop for IdleClosingNginx {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) on the nginx master this test started (its
            // pid file); it takes its worker with it.
            unsafe { libc::kill(pid, libc::SIGQUIT) };
            ferrogate_tests::wait_gone(&[pid]);
        }
    }
}

#[test]
fn an_origin_closing_idle_pooled_connections_fails_no_request() {
    lab_test("idle_close", || {
        let lab = Lab::up(1);
        let _nginx = IdleClosingNginx::start(&lab, "10.77.0.3:8090", "1s");
        // One that keeps idle connections a minute: for the stop check.
        let _long = IdleClosingNginx::start(&lab, "10.77.0.3:8091", "60s");
        let cfg = config(
            &lab,
            "pool.toml",
            r#"
[[upstreams]]
name = "ka"
endpoints = ["10.77.0.3:8090"]
[[upstreams]]
name = "long"
endpoints = ["10.77.0.3:8091"]
[[listeners]]
port = 80
[[listeners.routes]]
host = "long"
upstream = "long"
[[listeners.routes]]
upstream = "ka"
"#,
        );
        let mut engine = lab.start_engine_probe(&cfg, "af_xdp", 1, false);
        let before = engine.stats();
        // `Connection: close` clients one after another: each request can
        // take the connection the previous one left in the pool. Pauses
        // around nginx's 1 s idle timeout make it close pooled connections
        // before, while and after they are taken.
        let pauses_ms = [0, 0, 0, 1200, 0, 950, 1000, 1050, 0, 1500, 980, 1020, 0, 0];
        let statuses = lab.in_client(|| {
            let mut statuses = Vec::new();
            for (i, pause) in pauses_ms.iter().enumerate() {
                std::thread::sleep(Duration::from_millis(*pause));
                let r = get_close(&format!("/k{i}"), "lab", "");
                statuses.push(r.map(|(status, _, body)| (status, body)));
            }
            statuses
        });
        for (i, r) in statuses.iter().enumerate() {
            let (status, body) = r.as_ref().unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(*status, 200, "request {i}: {body}");
            assert!(body.contains(&format!("path=/k{i}")), "{body}");
        }
        let s = engine.stats();
        let grew = |k: &str| s.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        eprintln!(
            "{} requests: {} upstream connects, {} reused, {} closed by nginx while idle, {} retried",
            pauses_ms.len(),
            grew("stack_upstream_connects"),
            grew("stack_upstream_reused"),
            grew("stack_upstream_pool_stale"),
            grew("stack_retries"),
        );
        assert!(grew("stack_upstream_reused") >= 6, "{s:?}");
        assert!(
            grew("stack_upstream_pool_stale") >= 1,
            "nginx's idle close was noticed: {s:?}"
        );
        assert!(
            grew("stack_upstream_connects") < pauses_ms.len() as u64,
            "{s:?}"
        );
        // A clean stop ends the pooled connections with a FIN: the origin
        // (which would keep them a minute) holds none of them open.
        let established = || {
            lab.exec(
                "origin",
                &["ss", "-Htn", "state", "established", "( sport = :8091 )"],
            )
            .unwrap_or_default()
        };
        let last = lab.in_client(|| get_close("/last", "long", ""));
        assert_eq!(last.map(|r| r.0), Ok(200));
        assert!(
            established().contains("10.77.0.10"),
            "a pooled connection is open before the stop: {}",
            established()
        );
        assert!(engine.stop().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(5);
        while established().contains("10.77.0.10") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !established().contains("10.77.0.10"),
            "the origin still holds the stopped engine's connections:\n{}",
            established()
        );
    });
}
