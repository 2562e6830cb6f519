//! The L7 proxy against real origins in the lab: bad-request corpus,
//! slowloris, bodies of every size both ways with bounded memory.

use std::time::{Duration, Instant};

use ferrogate_tests::{HttpConn, Lab, VIP, lab_test, raw_exchange, workspace};

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
        let dir = workspace().join("tests/corpus/http-bad");
        let mut cases: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        cases.sort();
        assert!(cases.len() >= 20, "corpus missing: {}", dir.display());
        let failures = lab.in_client(|| {
            let mut failures = Vec::new();
            for case in &cases {
                let raw = std::fs::read(case).unwrap();
                let (resp, closed) =
                    raw_exchange(&format!("{VIP}:80"), &raw, Duration::from_secs(3)).unwrap();
                let text = String::from_utf8_lossy(&resp);
                let name = case.file_name().unwrap().to_string_lossy().to_string();
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
        assert!(
            elapsed < Duration::from_secs(4),
            "408 after {elapsed:?} (timeout 2 s)"
        );
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
