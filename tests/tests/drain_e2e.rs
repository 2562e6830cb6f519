//! Graceful drain (issue #24) in the lab: SIGTERM under keep-alive and
//! new-connection load — every request that started before the signal is
//! answered, keep-alive responses after it say `Connection: close`, new
//! connections are refused, an HTTP/2 stream in flight completes, and the
//! engine exits once all is done; `ferrogate ctl drain` does the same, and
//! a request longer than `timeouts.drain_ms` is cut when the bound expires.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrogate_tests::{Lab, VIP, lab_test};

const ORIGIN: &str = "10.77.0.3:8093";

fn config(drain_ms: u64) -> String {
    format!(
        r#"vips = ["10.77.0.10/24"]

[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[timeouts]
drain_ms = {drain_ms}

[[upstreams]]
name = "origin"
endpoints = ["{ORIGIN}"]

[[listeners]]
port = 80
http2 = true

[[listeners.routes]]
path_prefix = "/"
upstream = "origin"
"#
    )
}

/// One request's fate on a load connection.
#[derive(Debug)]
struct Outcome {
    started: Instant,
    /// The status, and whether the response said `Connection: close`.
    result: Result<(u16, bool), String>,
}

/// Reads one response (Content-Length bodies only, as the origin sends).
fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, bool), String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => return Err("closed before the response".into()),
        Err(e) => return Err(format!("status line: {e}")),
        Ok(_) => {}
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut len, mut close) = (0usize, false);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| format!("head: {e}"))?;
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if h == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    Ok((status, close))
}

/// A keep-alive client: requests `path` back to back on one connection,
/// reconnecting when the server closes it, until `stop` or a refused
/// connection (the drain has begun).
fn keep_alive_client(path: &str, stop: &AtomicBool) -> Vec<Outcome> {
    let mut out = Vec::new();
    'conns: while !stop.load(Ordering::Relaxed) {
        let Ok(s) = TcpStream::connect_timeout(
            &format!("{VIP}:80").parse().unwrap(),
            Duration::from_secs(2),
        ) else {
            break;
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let req = format!("GET {path} HTTP/1.1\r\nHost: {VIP}\r\n\r\n");
            if let Err(e) = w.write_all(req.as_bytes()) {
                out.push(Outcome {
                    started,
                    result: Err(format!("write: {e}")),
                });
                continue 'conns;
            }
            let result = read_response(&mut r);
            let close = matches!(result, Ok((_, true)) | Err(_));
            out.push(Outcome { started, result });
            if close {
                continue 'conns;
            }
        }
    }
    out
}

/// A new-connection client: one request per connection.
fn new_conn_client(path: &str, stop: &AtomicBool) -> Vec<Outcome> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = TcpStream::connect_timeout(
            &format!("{VIP}:80").parse().unwrap(),
            Duration::from_secs(2),
        )
        .map_err(|e| format!("connect: {e}"))
        .and_then(|s| {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut w = s.try_clone().unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: {VIP}\r\nConnection: close\r\n\r\n");
            w.write_all(req.as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            read_response(&mut BufReader::new(s))
        });
        let refused = result.is_err();
        out.push(Outcome { started, result });
        if refused {
            // The drain refuses new connections: pause rather than spin.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    out
}

/// The engine with `drain_ms`, serving.
fn start(lab: &Lab, drain_ms: u64) -> ferrogate_tests::Engine {
    let path = lab.state_dir().join("drain.toml");
    std::fs::write(&path, config(drain_ms)).unwrap();
    lab.start_engine_with(&path, "af_xdp", 1)
}

/// A counter of the stats the engine printed as it exited.
fn final_stat(log: &str, name: &str) -> u64 {
    log.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn sigterm_drains_keep_alive_new_connection_and_h2_load_without_failing_started_requests() {
    lab_test("drain", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("drain", ORIGIN);
        let mut engine = start(&lab, 20_000);
        let stop = Arc::new(AtomicBool::new(false));
        let (signalled, keep_alive, new_conns, h2, probe) = lab.in_client(|| {
            std::thread::scope(|s| {
                let ka: Vec<_> = (0..6)
                    .map(|_| s.spawn(|| keep_alive_client("/slow/300", &stop)))
                    .collect();
                let nc: Vec<_> = (0..2)
                    .map(|_| s.spawn(|| new_conn_client("/slow/50", &stop)))
                    .collect();
                // A keep-alive connection (one request done) whose second
                // request is in flight across the signal.
                let probe = s.spawn(|| {
                    let s = TcpStream::connect(format!("{VIP}:80")).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut w = s.try_clone().unwrap();
                    let mut r = BufReader::new(s);
                    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: {VIP}\r\n\r\n");
                    w.write_all(get("/slow/10").as_bytes()).unwrap();
                    let first = read_response(&mut r);
                    std::thread::sleep(Duration::from_millis(600));
                    w.write_all(get("/slow/1500").as_bytes()).unwrap();
                    (first, read_response(&mut r))
                });
                // An HTTP/2 stream in flight across the signal.
                let h2 = s.spawn(|| {
                    std::process::Command::new("curl")
                        .args([
                            "-sS",
                            "-m",
                            "15",
                            "--http2-prior-knowledge",
                            "-o",
                            "/dev/null",
                        ])
                        .args(["-w", "%{http_code} %{http_version}"])
                        .arg(format!("http://{VIP}/slow/1500"))
                        .output()
                        .expect("curl")
                });
                std::thread::sleep(Duration::from_millis(1000));
                let signalled = Instant::now();
                engine.sigterm();
                // The load runs on across the drain.
                std::thread::sleep(Duration::from_millis(2500));
                stop.store(true, Ordering::Relaxed);
                let join = |v: Vec<std::thread::ScopedJoinHandle<'_, Vec<Outcome>>>| {
                    v.into_iter()
                        .flat_map(|h| h.join().unwrap())
                        .collect::<Vec<_>>()
                };
                (
                    signalled,
                    join(ka),
                    join(nc),
                    h2.join().unwrap(),
                    probe.join().unwrap(),
                )
            })
        });
        let status = engine.wait_exit(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "exit {status:?}\n{}",
            engine.log()
        );
        let log = engine.log();
        assert!(log.contains("drained: every connection is done"), "{log}");

        // A request whose bytes left the client this close to the signal
        // may meet a connection closed as idle (the server cannot see
        // bytes still on the wire); anything earlier must be answered.
        let margin = Duration::from_millis(20);
        let before = |o: &Outcome| o.started + margin < signalled;
        let all: Vec<&Outcome> = keep_alive.iter().chain(&new_conns).collect();
        let failed: Vec<_> = all
            .iter()
            .filter(|o| before(o))
            .filter(|o| !matches!(o.result, Ok((200, _))))
            .collect();
        assert!(
            failed.is_empty(),
            "requests started before the signal failed: {failed:?}"
        );
        let started_before = all.iter().filter(|o| before(o)).count();
        assert!(
            started_before >= 20,
            "too little load before the signal: {started_before}"
        );
        // The drain waited for the request in flight at the signal, and its
        // response closed the keep-alive connection.
        assert_eq!(
            probe.0,
            Ok((200, false)),
            "the probe's first request keeps alive"
        );
        assert_eq!(
            probe.1,
            Ok((200, true)),
            "the in-flight request: answered, Connection: close"
        );
        // After the signal, new connections are refused (none is served).
        let late_ok = new_conns
            .iter()
            .filter(|o| o.started > signalled + Duration::from_millis(500))
            .filter(|o| o.result.is_ok())
            .count();
        assert_eq!(late_ok, 0, "a connection made during the drain was served");
        assert!(
            new_conns
                .iter()
                .any(|o| o.started > signalled && o.result.is_err()),
            "no refused connection seen"
        );
        let h2_out = String::from_utf8_lossy(&h2.stdout).to_string();
        assert_eq!(
            h2_out,
            "200 2",
            "the h2 stream in flight: {h2_out} {}",
            String::from_utf8_lossy(&h2.stderr)
        );
        let refused = final_stat(&log, "stack_drain_refused");
        assert!(
            refused >= 1,
            "stack_drain_refused in the final stats:\n{log}"
        );
    });
}

#[test]
fn ctl_drain_stops_gracefully_and_the_bound_cuts_what_is_left() {
    lab_test("drain-ctl", || {
        let lab = Lab::up(1);
        let _origin = lab.start_origin("drain", ORIGIN);
        let mut engine = start(&lab, 1_000);
        let (short, long, reply, took) = lab.in_client(|| {
            std::thread::scope(|s| {
                let get = |p: &'static str| {
                    s.spawn(move || {
                        let c = std::process::Command::new("curl")
                            .args(["-sS", "-m", "15", "-o", "/dev/null", "-w", "%{http_code}"])
                            .arg(format!("http://{VIP}{p}"))
                            .output()
                            .expect("curl");
                        String::from_utf8_lossy(&c.stdout).to_string()
                    })
                };
                let short = get("/slow/500");
                let long = get("/slow/6000");
                std::thread::sleep(Duration::from_millis(200));
                let t0 = Instant::now();
                let reply = lab.ctl(&["drain"]);
                let (short, long) = (short.join().unwrap(), long.join().unwrap());
                (short, long, reply, t0.elapsed())
            })
        });
        assert_eq!(reply.0, 0, "{reply:?}");
        assert!(
            reply.1.contains("draining: 2 connections open"),
            "{reply:?}"
        );
        assert_eq!(short, "200", "a request shorter than the bound is answered");
        assert_ne!(long, "200", "a request longer than the bound is cut");
        assert!(
            took < Duration::from_secs(5),
            "the bound (1 s) cut the long request: {took:?}"
        );
        let status = engine.wait_exit(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "exit {status:?}\n{}",
            engine.log()
        );
        let log = engine.log();
        assert!(
            log.contains("drain timed out; cutting what is still open"),
            "{log}"
        );
        let cut = final_stat(&log, "stack_drain_cut");
        assert_eq!(cut, 1, "the long request's connection was reset:\n{log}");
    });
}
